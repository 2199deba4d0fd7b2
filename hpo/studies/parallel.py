"""Many processes, one study: race-free creation and an exact trial target.

Optuna gives the pieces (RDB storage, heartbeats, retries) but leaves three races to the
caller, and every study (NN, GBM) that workers share goes through here to close them:

- ``create_study(load_if_exists=True)`` survives a creation race, but
  ``enqueue_trial(skip_if_exists=True)`` does not: two workers that start together both
  see no baseline and both enqueue it. Opening happens under the study's lock, so the
  check and the enqueue are one step; where no lock exists (the gRPC proxy) only the
  process whose ``create_new_study`` succeeded enqueues.
- ``MaxTrialsCallback`` stops a worker only after its own trial ends, so N workers that
  each start a trial when one is missing overshoot by up to N-1. Here a worker starts a
  trial only under the lock and only while finished plus running trials are below the
  target. The lock is let go inside the trial, once it is RUNNING and so counted by
  everyone else; training itself runs in parallel.
- A worker that waits for the last running trials also fails stale ones (heartbeat
  older than the grace period), whose retries it or another worker then runs. A trial
  left RUNNING by a client with no heartbeat (``optuna ask``, ``study.ask()``) never goes
  stale that way, so one that also makes no progress for the grace period is failed too.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from types import FrameType
from typing import Any

import optuna
import sqlalchemy
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages._rdb.models import TrialHeartbeatModel
from optuna.trial import FrozenTrial, TrialState

from hpo.storage.backend import (
    defer_user_attrs,
    flush_user_attrs,
    lock_and_count,
    trial_state_counts,
)
from hpo.storage.locks import study_lock
from hpo.storage.stored import WORKER
from hpo.storage.trial_cache import TrialCache

WAIT_S = 1.0  # how often a worker with no free trial looks again

Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def worker_id() -> str:
    """``host:pid``, kept in each trial's ``worker`` user attr (a function: forks differ)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Interrupts:
    """Ctrl-C and SIGTERM in a worker, timed so that the storage stays consistent.

    While a trial trains they interrupt it at once, and Optuna records it as FAIL. While
    the worker does its bookkeeping between trials (the lock, asking for a trial, telling
    its result) they wait for the next safe point: interrupted in the middle of a storage
    write, a trial would stay RUNNING until its heartbeat went stale. A second signal
    interrupts at once, wherever it lands. Outside :func:`optimize_to_target` nothing is
    deferred. Without :meth:`installed`, signals keep Python's default behaviour.
    """

    def __init__(self) -> None:
        self.pending = False
        self.deferring = False

    @contextmanager
    def installed(self) -> Iterator[None]:
        saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)
        try:
            with self.keeping_dropped():
                yield
        finally:
            signal.signal(signal.SIGINT, saved[0])
            signal.signal(signal.SIGTERM, saved[1])
            self.pending = self.deferring = False

    @contextmanager
    def keeping_dropped(self) -> Iterator[None]:
        """A Ctrl-C raised inside a finalizer or weakref callback, where Python drops it
        (with a traceback), is kept for the next :meth:`check` instead."""
        saved_hook = sys.unraisablehook

        def unraisable(info: sys.UnraisableHookArgs) -> None:
            if isinstance(info.exc_value, KeyboardInterrupt):
                # (Raising it again from here, even via another thread, can land inside
                # this hook.)
                self.pending = True
            else:
                saved_hook(info)

        sys.unraisablehook = unraisable
        try:
            yield
        finally:
            sys.unraisablehook = saved_hook
            self.pending = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.deferring and not self.pending:
            self.pending = True
            return
        raise KeyboardInterrupt

    def check(self) -> None:
        """A safe point: raise a deferred interrupt here."""
        if self.pending:
            raise KeyboardInterrupt

    @contextmanager
    def deferred(self, defer: bool = True) -> Iterator[None]:
        before, self.deferring = self.deferring, defer
        try:
            self.check()
            yield
        finally:
            self.deferring = before


INTERRUPTS = Interrupts()


def create_or_load(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> tuple[optuna.Study, bool]:
    """The study ``name`` (minimized) and whether this call created it."""
    try:
        storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    if isinstance(storage, optuna.storages.RDBStorage):
        storage = TrialCache(storage)  # instead of Optuna's cache: reads once per trial
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    return study, created


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail the trials of dead workers; the storage's retry callback enqueues their retries."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def heartbeat_ages(storage: optuna.storages.BaseStorage, trial_ids: list[int]) -> dict[int, float]:
    """Seconds since the last heartbeat of each trial among ``trial_ids`` that has one.

    Optuna offers no public call for this; its heartbeat table is part of its RDB schema.
    The age is taken on the database's clock, which wrote the heartbeat.
    """
    if not trial_ids or not isinstance(storage, optuna.storages.RDBStorage):
        return {}
    model = TrialHeartbeatModel
    query = sqlalchemy.select(model.trial_id, model.heartbeat).where(model.trial_id.in_(trial_ids))
    with storage.engine.connect() as connection:
        now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        rows = connection.execute(query).all()
    # As Optuna's own staleness check does: naive, so PostgreSQL's aware clock compares.
    now = now.replace(tzinfo=None)
    return {trial_id: max(0.0, (now - beat).total_seconds()) for trial_id, beat in rows}


class StuckTrials:
    """Watches the RUNNING trials that a waiting worker waits for, and fails stuck ones.

    Stuck: no heartbeat row (a heartbeat trial goes stale through Optuna instead), started
    more than ``grace_period`` seconds ago, and no new intermediate value or user attr
    seen here for ``grace_period`` seconds. Such a trial was left by a client that asked
    for it and went away; counted as running, it would keep the study from its target
    forever. A trial of a worker behind the gRPC proxy (no heartbeat either) reports every
    epoch or boosting round, and so is not taken for stuck.
    """

    def __init__(
        self,
        study: optuna.Study,
        storage: optuna.storages.BaseStorage,
        grace_period: float,
        log: Callable[[str], None],
    ):
        # The storage as opened, not study._storage: Optuna wraps that in a cache.
        self.study, self.storage, self.grace_period, self.log = study, storage, grace_period, log
        self.progress: dict[int, tuple[Any, float]] = {}  # trial id -> (progress, since)
        self.announced: list[int] = []

    def check(self) -> None:
        """Say what the worker waits for (when that changes) and fail stuck trials."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        ages = heartbeat_ages(self.storage, [t._trial_id for t in running])
        numbers = [t.number for t in running]
        if numbers and numbers != self.announced:
            waits = "; ".join(self._why(t, ages.get(t._trial_id)) for t in running)
            self.log(f"{self.study.study_name}: waiting for {waits}")
        self.announced = numbers
        now = time.monotonic()
        for trial in running:
            mark = (len(trial.intermediate_values), len(trial.user_attrs))
            seen = self.progress.get(trial._trial_id)
            if seen is None or seen[0] != mark:
                self.progress[trial._trial_id] = (mark, now)
        for trial in running:
            if trial._trial_id not in ages and self._idle(trial, now):
                self._fail(trial)

    def _why(self, trial: FrozenTrial, heartbeat_age: float | None) -> str:
        """What the wait for one trial hangs on, and how long it can last at most."""
        grace = self.grace_period
        if heartbeat_age is None:
            return (
                f"trial {trial.number}, RUNNING with no heartbeat (marked FAIL once it "
                f"makes no progress for {grace:g} s)"
            )
        left = max(0.0, grace - heartbeat_age)
        return (
            f"trial {trial.number}, whose worker's last heartbeat was {heartbeat_age:.0f} s "
            f"ago (if that worker died, the trial is failed and retried in at most {left:.0f} s)"
        )

    def _idle(self, trial: FrozenTrial, now: float) -> bool:
        started = trial.datetime_start or datetime.now()
        age = (datetime.now() - started).total_seconds()
        return min(age, now - self.progress[trial._trial_id][1]) > self.grace_period

    def _fail(self, trial: FrozenTrial) -> None:
        try:
            self.storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # it finished (or another worker failed it) meanwhile
        self.log(
            f"{self.study.study_name}: trial {trial.number} made no progress for "
            f"{self.grace_period:g} s and has no heartbeat: marked FAIL"
        )


def optimize_to_target(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    storage: optuna.storages.BaseStorage,
    *,
    target: int,
    timeout: float | None = None,
    callbacks: Iterable[Callback] = (),
    worker: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> int:
    """Run trials until the study holds ``target`` finished trials; returns how many ran here.

    With a heartbeat, a worker that finds the remaining trials all running waits: one of
    them may belong to a dead worker, and its retry will need running. Without one (the
    gRPC proxy) a dead worker's trial can never be told apart from a slow one, so workers
    count finished trials only and stop at the target; trials still running then finish,
    so the study may end up to (workers - 1) trials above it. While it waits, it says for
    which trials (one line each time that changes), and fails trials left RUNNING with no
    heartbeat and no progress (:class:`StuckTrials`).

    Args:
        worker: other processes share the study. The sampler then draws from fresh
            entropy: every worker builds it from the spec's seed, and would otherwise
            propose the very same random trials as its peers.
    """
    if worker:
        study.sampler.reseed_rng()
    lock = study_lock(storage, study.study_name)
    heartbeat = is_heartbeat_enabled(storage)
    stuck = StuckTrials(study, storage, _grace_period(storage), log) if heartbeat else None
    callbacks = list(callbacks)
    started = time.monotonic()
    ran = 0

    def run_trial(trial: optuna.Trial) -> float:
        lock.release()  # the trial is RUNNING now: every other worker counts it
        defer_user_attrs(trial, {WORKER: worker_id()})  # written with the trial's params
        try:
            with INTERRUPTS.deferred(False):  # training: Ctrl-C stops it at once
                return objective(trial)
        finally:
            flush_user_attrs(trial)  # where the objective wrote nothing

    with INTERRUPTS.deferred():
        while timeout is None or time.monotonic() - started < timeout:
            wait = False
            INTERRUPTS.check()
            counts = lock_and_count(lock, storage, study._study_id)
            try:
                INTERRUPTS.check()
                done, running = _done_and_running(counts)
                if heartbeat and done + running >= target:
                    # A dead worker's trial may be what holds the study back. (Below the
                    # target there is no need: Optuna fails stale trials before each trial.)
                    fail_stale_trials(study)
                    done, running = _finished_and_running(storage, study)
                if done >= target:
                    break
                if stuck is not None and done + running >= target:
                    stuck.check()
                    wait = True
                else:
                    study.optimize(run_trial, n_trials=1, callbacks=callbacks)
                    ran += 1
            finally:
                lock.release()
            if wait:
                time.sleep(WAIT_S)
    return ran


def _finished_and_running(
    storage: optuna.storages.BaseStorage, study: optuna.Study
) -> tuple[int, int]:
    """The study's finished and running trials, in one query (count_trials also reads the
    best trial, which is no concern of the worker loop)."""
    return _done_and_running(trial_state_counts(storage, study._study_id))


def _done_and_running(counts: collections.Counter[TrialState]) -> tuple[int, int]:
    return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED], counts[TrialState.RUNNING]


def _grace_period(storage: optuna.storages.BaseStorage) -> float:
    """The storage's grace period (Optuna's default: two heartbeat intervals)."""
    grace = getattr(storage, "grace_period", None)
    interval = getattr(storage, "heartbeat_interval", None) or 0
    return float(grace if grace is not None else 2 * interval)
