"""Optuna's trial cache, which also knows the trials this process runs: one worker reads
its study at most once a second, where Optuna's cache read it about 11 times a trial.

Optuna's own cache (``_CachedStorage``, which wraps every database storage) keeps finished
trials, but reads every unfinished one again on each ``get_all_trials`` and ``get_trial``:
the sampler, the pruner and ``tell`` did so about 11 times in each digits trial, with six
statements a read, which made most of what Optuna cost a small trial
(benchmarks/optuna_overhead.py). Yet most of those reads return what this process wrote
itself: its running trial, written only here and through here. So :class:`TrialCache`

- keeps this process's running trials as it writes them (every write still goes to the
  database first, which still checks that the trial may be written), and answers reads
  of them without a query;
- reads the rest of the study (other workers' trials, trials enqueued elsewhere) from the
  database at most every :data:`REFRESH_S`. The sampler sees every result of this worker
  at once (its trials end here, as they were written, and are not read again), and other
  workers' progress up to that much later, as if their reports had taken that much longer
  to arrive. So TPE's constant liar keeps a worker's sample away from the trials other
  workers are running only once it has read them: a trial started less than a second ago
  may be missed. Where several workers pay off (trials of seconds or more), that is a
  small part of the trials.

The system attrs that Optuna's sampler and pruner set on this process's running trial
(TPE's constant liar shares the sampled params, successive halving each rung's value)
wait for the trial's next write, which hpo makes within :data:`hpo.studies.reporting.FLUSH_S`
while it trains, and at its end at the latest: three of a digits trial's ten transactions.
Other workers see them that much later, as they see its learning curve. A trial's last
write (its results, or why it stopped) waits for its state, a moment later, and goes in
the same transaction (:meth:`TrialCache.defer`).

It creates this process's new trials past Optuna's ORM, with their first heartbeat in
the same transaction (:func:`hpo.storage.backend.create_running_trial`), and answers
Optuna's heartbeat thread's first beat, a moment later, without a write. (hpo asks for
trials only inside Optuna's ``optimize``, whose heartbeat thread starts right after. A
trial asked for outside it would have a heartbeat that never beats again, and be failed
as stale after ``grace_period``, as a dead worker's trial is.)

It also keeps each study's id by name (Optuna's Hyperband asks for it on every sample and
pruning check) and looks for other workers' stale trials at most every :data:`REFRESH_S`
(Optuna looks before every trial, for trials that go stale only after seconds).
"""

from __future__ import annotations

import bisect
import copy
import math
import time
from collections.abc import Collection, Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.trial import FrozenTrial, TrialState

REFRESH_S = 1.0  # the longest other workers' trials go unread while this process samples
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the states of trials that TPE ranks
RUNNING = (TrialState.RUNNING,)


@dataclass
class Unwritten:
    """What one of this process's running trials holds that the database has not yet: the
    system attrs its sampler and pruner set, and its last user attrs and values."""

    system_attrs: dict[str, Any] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    curve: dict[int, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.system_attrs or self.user_attrs or self.curve)


class TrialCache(_CachedStorage):
    """Optuna's ``_CachedStorage`` over ``backend``, which answers reads of this process's
    running trials from memory and rereads the rest of a study only when it must."""

    def __init__(self, backend: RDBStorage, refresh_s: float = REFRESH_S) -> None:
        super().__init__(backend)
        self.refresh_s = refresh_s
        self._own: set[int] = set()  # ids of the trials this process has set running
        self._read_at: dict[int, float] = {}  # study id -> when its trials were last read
        self._stale_checked_at: dict[int, float] = {}  # study id -> when Optuna last looked
        self._study_ids: dict[str, int] = {}
        self._unwritten: dict[int, Unwritten] = {}  # own trial id -> not yet in the database
        self._first_heartbeat_written: set[int] = set()  # trials created with their heartbeat
        self._kept: set[int] = set()  # ids of trials this process ended, held as written
        self._in_order: dict[int, InOrder] = {}  # study id -> its cached trials in order

    # Reads.

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        # Optuna's cache calls this on every get_all_trials: read only when it is time.
        if self._due(self._read_at, study_id):
            started = time.monotonic()
            self._read_new_and_unfinished(study_id)
            self._read_at[study_id] = started

    def _read_new_and_unfinished(self, study_id: int) -> None:
        """Optuna's read of a study's trials that are new or were unfinished, less this
        process's own, running (:attr:`_own`) or ended (:attr:`_kept`), which it holds
        as it wrote them.

        Optuna's cache reads every trial above the last finished one it read: a lone
        worker read again, whole, every trial it had run since its last read (one read a
        second, of ~40 digits trials on SQLite, cost about 1 ms a trial). Here one small
        query lists the new trial ids first, and only what this process does not hold is
        read in full."""
        from hpo.storage.backend import trial_ids_after  # (see set_trial_state_values)

        with self._lock:
            study = self._studies.setdefault(study_id, _StudyInfo())
            new = trial_ids_after(self._backend, study_id, study.last_finished_trial_id)
            if new is None:  # as Optuna's StudyModel.find_or_raise_by_id
                raise KeyError(f"No study with study_id {study_id} exists.")
            wanted = (study.unfinished_trial_ids | set(new)) - self._kept - self._own
            newest = max(new, default=study.last_finished_trial_id)
            # Also any trial created since the list (above ``newest``), as Optuna reads.
            trials = (
                self._backend._get_trials(study_id, None, wanted, trial_id_greater_than=newest)
                if wanted
                else []
            )
            self._add_trials_to_cache(study_id, trials)
            for trial in trials:
                if trial.state.is_finished():
                    study.unfinished_trial_ids.discard(trial._trial_id)
                else:
                    study.unfinished_trial_ids.add(trial._trial_id)
            # Every trial up to here is now held finished, or is read again as unfinished.
            study.last_finished_trial_id = max([newest, *(t._trial_id for t in trials)])

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        # Optuna's, from lists kept in number order as trials are cached (see InOrder):
        # Optuna sorts and filters the whole study on every call, and the sampler, the
        # pruner, the helper and Optuna's ask each call a few times a trial.
        self._read_trials_from_remote_storage(study_id)
        with self._lock:
            by_number = self._studies[study_id].trials
            in_order = self._in_order.get(study_id)
            if in_order is None or in_order.source is not by_number:  # a new _StudyInfo
                in_order = self._in_order[study_id] = InOrder(by_number)
            trials = in_order.select(states)
            return copy.deepcopy(trials) if deepcopy else trials

    def _add_trials_to_cache(self, study_id: int, trials: list[FrozenTrial]) -> None:
        super()._add_trials_to_cache(study_id, trials)
        in_order = self._in_order.get(study_id)
        if in_order is not None:
            if in_order.source is self._studies[study_id].trials:
                in_order.add(trials)
            else:
                del self._in_order[study_id]  # rebuilt on the next read

    def expire(self) -> None:
        """Read every study from the database on its next read (a run's trials, kept as
        written here, are then replaced by what was stored)."""
        with self._lock:
            for trial_id in self._kept:
                self._studies[self._study_of(trial_id)].unfinished_trial_ids.add(trial_id)
            self._kept.clear()
        self._read_at.clear()

    def get_study_id_from_name(self, study_name: str) -> int:
        # Optuna's Hyperband makes a study object per bracket on every pruning check and
        # every sample, each asking for the id: five queries a trial. A name keeps its id.
        if study_name not in self._study_ids:
            self._study_ids[study_name] = super().get_study_id_from_name(study_name)
        return self._study_ids[study_name]

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        # Optuna looks before every trial; a trial goes stale only after a grace period of
        # seconds, so looking more often than every REFRESH_S finds nothing sooner.
        if not self._due(self._stale_checked_at, study_id):
            return []
        self._stale_checked_at[study_id] = time.monotonic()
        return super()._get_stale_trial_ids(study_id)

    def _due(self, last: dict[int, float], study_id: int) -> bool:
        """Whether :attr:`refresh_s` has passed since ``last[study_id]`` (or it never was)."""
        return time.monotonic() - last.get(study_id, -math.inf) >= self.refresh_s

    def get_trial(self, trial_id: int) -> FrozenTrial:
        trial = self._own_trial(trial_id)
        if trial is not None:
            return _copy_trial(trial)
        return super().get_trial(trial_id)

    # Writes: to the database first (which checks the trial is still running), then here.

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if template_trial is not None:  # a trial enqueued or copied: Optuna's way
            trial_id = super().create_new_trial(study_id, template_trial)
        else:  # a new running trial, in fewer statements, kept as Optuna's cache keeps it
            from hpo.storage.backend import create_running_trial  # (see set_trial_state_values)

            trial, heartbeat = create_running_trial(self._backend, study_id)
            trial_id = trial._trial_id
            if heartbeat:
                self._first_heartbeat_written.add(trial_id)
            with self._lock:
                self._studies.setdefault(study_id, _StudyInfo())
                self._add_trials_to_cache(study_id, [trial])
        if self._cached(trial_id).state == TrialState.RUNNING:
            self._own.add(trial_id)
        return trial_id

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: BaseDistribution,
    ) -> None:
        super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        self.wrote(trial_id, params={param_name: (param_value_internal, distribution)})

    def set_trial_intermediate_value(
        self, trial_id: int, step: int, intermediate_value: float
    ) -> None:
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        self.wrote(trial_id, curve={step: intermediate_value})

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        super().set_trial_user_attr(trial_id, key, value)
        self.wrote(trial_id, user_attrs={key: value})

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if trial_id not in self._own:
            super().set_trial_system_attr(trial_id, key, value)
            return
        # TPE's constant liar (the sampled params) and successive halving (each rung's
        # value) set these mid-trial: three transactions of a digits trial's ten. They go
        # with the trial's next write instead (its params, its curve at most FLUSH_S later,
        # its results, or its end): see take_unwritten.
        self._unwritten.setdefault(trial_id, Unwritten()).system_attrs[key] = value
        self.wrote(trial_id, system_attrs={key: value})

    def record_heartbeat(self, trial_id: int) -> None:
        # Optuna's heartbeat thread beats as the trial starts: this process created it a
        # moment ago, and its first heartbeat with it.
        if trial_id in self._first_heartbeat_written:
            self._first_heartbeat_written.discard(trial_id)
            return
        super().record_heartbeat(trial_id)

    def defer(self, trial_id: int, user_attrs: dict[str, Any], curve: dict[int, float]) -> bool:
        """Keep a running trial's last user attrs and values for the write of its state,
        which follows (one transaction instead of two); they are seen here at once. False
        where the trial is not one this process runs: write them now."""
        if trial_id not in self._own:
            return False
        rows = self._unwritten.setdefault(trial_id, Unwritten())
        rows.user_attrs.update(user_attrs)
        rows.curve.update(curve)
        self.wrote(trial_id, user_attrs=user_attrs, curve=curve)
        return True

    def take_unwritten(self, trial_id: int) -> Unwritten:
        """What one of this process's running trials holds that is not yet in the database,
        for the write that puts it there (:func:`hpo.storage.backend.write_trial`)."""
        return self._unwritten.pop(trial_id, Unwritten())

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        if self._unwritten.get(trial_id) and state.is_finished():
            # Its last rows and its state in one transaction. (Imported here: the backend
            # module, which writes rows past Optuna's API, imports this one.)
            from hpo.storage.backend import finish_trial

            changed = finish_trial(self, self._backend, trial_id, state, values)
        else:
            changed = super().set_trial_state_values(trial_id, state, values)
        if not changed:
            return False
        if state == TrialState.RUNNING and trial_id in self._trial_id_to_study_id_and_number:
            # A waiting (enqueued) trial this process took, from the waiting trials it read.
            self._own.add(trial_id)
            self._replace(self._backend.get_trial(trial_id))
        elif trial_id in self._own and state.is_finished():
            trial = copy.copy(self._cached(trial_id))
            trial.state, trial.values = state, values
            trial.datetime_complete = datetime.now()  # the stored one: after expire()
            self._replace(trial)
            self._own.discard(trial_id)
            self._kept.add(trial_id)  # not read again (see _read_new_and_unfinished)
            self._studies[self._study_of(trial_id)].unfinished_trial_ids.discard(trial_id)
            self._first_heartbeat_written.discard(trial_id)  # it never beat (ended at once)
        return True

    def wrote(
        self,
        trial_id: int,
        *,
        params: dict[str, tuple[float, BaseDistribution]] | None = None,
        curve: dict[int, float] | None = None,
        user_attrs: dict[str, Any] | None = None,
        system_attrs: dict[str, Any] | None = None,
    ) -> None:
        """Keep what was just written to one of this process's running trials (params as
        internal value and distribution, intermediate values, attrs); also for writes made
        past Optuna's storage API (:mod:`hpo.storage.backend`).

        On a copy, as Optuna's in-memory storage does: a caller may hold the trial from an
        earlier read (Optuna's successive halving reads the study, then writes the trial's
        rung, then counts the rung's values in what it read).
        """
        old = self._own_trial(trial_id)
        if old is None:
            return
        params = params or {}
        trial = copy.copy(old)
        trial.params = old.params | {
            name: distribution.to_external_repr(internal)
            for name, (internal, distribution) in params.items()
        }
        trial.distributions = old.distributions | {
            name: distribution for name, (_, distribution) in params.items()
        }
        trial.intermediate_values = old.intermediate_values | (curve or {})
        trial.user_attrs = old.user_attrs | (user_attrs or {})
        trial.system_attrs = old.system_attrs | (system_attrs or {})
        self._replace(trial)

    # Where this process's trials are kept: Optuna's cache of the study.

    def _own_trial(self, trial_id: int) -> FrozenTrial | None:
        return self._cached(trial_id) if trial_id in self._own else None

    def study_and_number(self, trial_id: int) -> tuple[int, int] | None:
        """The study id and number of a trial held here, else None."""
        return self._trial_id_to_study_id_and_number.get(trial_id)

    def _study_of(self, trial_id: int) -> int:
        return self._trial_id_to_study_id_and_number[trial_id][0]

    def _cached(self, trial_id: int) -> FrozenTrial:
        study_id, number = self._trial_id_to_study_id_and_number[trial_id]
        return self._studies[study_id].trials[number]

    def _replace(self, trial: FrozenTrial) -> None:
        with self._lock:
            self._add_trials_to_cache(self._study_of(trial._trial_id), [trial])


class InOrder:
    """A study's cached trials in number order, and the lists of them in the states that
    were asked for, each kept up to date as trials are cached (a bisection and a list
    insert in C each) instead of sorted and filtered again on every read."""

    def __init__(self, by_number: dict[int, FrozenTrial]) -> None:
        self.source = by_number  # Optuna's dict of the study's trials, which this follows
        self.all = _Sorted(by_number.values())
        self.by_states: dict[frozenset[TrialState], _Sorted] = {}

    def select(self, states: Container[TrialState] | None) -> list[FrozenTrial]:
        """A new list of the trials in ``states`` (all where None), in number order."""
        if states is None:
            return list(self.all.trials)
        if not isinstance(states, (tuple, list, set, frozenset)):  # a bare Container
            return [t for t in self.all.trials if t.state in states]
        key = frozenset(states)
        chosen = self.by_states.get(key)
        if chosen is None:
            chosen = self.by_states[key] = _Sorted(t for t in self.all.trials if t.state in key)
        return list(chosen.trials)

    def add(self, trials: list[FrozenTrial]) -> None:
        """Follow :attr:`source`, where these trials were just put (new, or replacing
        the trial of their number)."""
        for trial in trials:
            self.all.put(trial, keep=True)
            for states, chosen in self.by_states.items():
                chosen.put(trial, keep=trial.state in states)


class _Sorted:
    """Trials in number order, with their numbers beside them for bisection."""

    def __init__(self, trials: Iterable[FrozenTrial]) -> None:
        self.trials = sorted(trials, key=lambda t: t.number)
        self.numbers = [t.number for t in self.trials]

    def put(self, trial: FrozenTrial, *, keep: bool) -> None:
        """Put ``trial`` in place of the one with its number, or in number order; with
        ``keep`` False, take the one with its number out."""
        i = bisect.bisect_left(self.numbers, trial.number)
        held = i < len(self.numbers) and self.numbers[i] == trial.number
        if held and keep:
            self.trials[i] = trial
        elif held:
            del self.numbers[i], self.trials[i]
        elif keep:
            self.numbers.insert(i, trial.number)
            self.trials.insert(i, trial)


def not_seen(finished: list[FrozenTrial], seen: Collection[int]) -> list[FrozenTrial]:
    """The trials of ``finished`` (a study's finished trials in number order, as
    :class:`TrialCache` gives them) whose numbers are not in ``seen`` (numbers of trials
    taken from earlier such lists), in number order. They are nearly always the newest:
    they are looked for from the end, until as many are found as ``seen`` lacks, not in
    the whole study (a trial another worker ended is read late, maybe below the newest)."""
    missing = len(finished) - len(seen)
    new: list[FrozenTrial] = []
    for t in reversed(finished):
        if len(new) >= missing:
            break
        if t.number not in seen:
            new.append(t)
    new.reverse()
    return new


def _copy_trial(trial: FrozenTrial) -> FrozenTrial:
    """A copy of ``trial`` whose dicts its caller may change: Optuna's ``Trial`` sets keys
    of the copy it keeps (a new param, user attr or value), never a value inside one.
    Several times a trial, where a deep copy of every attr and value took milliseconds."""
    new = copy.copy(trial)
    new.params, new.distributions = dict(trial.params), dict(trial.distributions)
    new.user_attrs, new.system_attrs = dict(trial.user_attrs), dict(trial.system_attrs)
    new.intermediate_values = dict(trial.intermediate_values)
    new.values = list(trial.values) if trial.values is not None else None
    return new
