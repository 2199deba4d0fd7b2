"""TPE's next draw, made in a helper process while the current trial trains.

TPE reads the whole study on every draw: at 1000 trials about 12 ms of a 116 ms digits
trial (benchmarks/optuna_overhead.py), on the core that trains. A small trial trains on
one thread (:mod:`hpo.models.threads`), so on a machine with two or more cores another is
idle meanwhile. Once a trial's params are drawn and stored, the worker sends the study's
new trials to a helper process, which draws the next trial's params with the same TPE
while this trial trains; the next trial takes them. Not before they are stored: the
database server needs that idle core for the write (on PostgreSQL, at 1000 trials, a
trial's two writes waited 6.5 ms with the helper drawing beside the first, 3.8 without).
A thread would not do: the draw holds the GIL, and a digits trial trained 2.5 times
slower beside a thread that drew (0.69 to 1.76 s).

What the next trial gets is what TPE draws with the current trial still running (its
constant liar), as a second worker would see the study. The helper draws with a seed the
worker picks in turn, and the worker waits for the draw it asked for, so a seeded study
draws alike from one run to the next. Should the helper fail, hang or die, the worker
draws in process, as without it. Ctrl-C does not reach the helper (the worker handles
it); the helper ends when the worker closes its pipe, or dies.

Run as ``python -m hpo.studies.sample_ahead`` (by :class:`DrawAhead` only).
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.storage.trial_cache import not_seen

REPLY_TIMEOUT_S = 60.0  # a helper slower than this is taken for hung

Space = dict[str, BaseDistribution]


@dataclass(frozen=True)
class Request:
    """One draw: the finished trials the helper has not had yet (it draws from all it
    had, which are the worker's finished trials), the running ones, and the space."""

    id: int
    sampler: dict[str, Any]  # FastTPESampler's arguments
    new: list[FrozenTrial]  # finished trials not sent before (they never change)
    running: list[FrozenTrial]
    directions: list[StudyDirection]
    space: Space
    seed: int


class StudyView:
    """What TPE reads of a study (its trials and direction), made of sent trials."""

    def __init__(self, trials: list[FrozenTrial], directions: list[StudyDirection]) -> None:
        self.trials = sorted(trials, key=lambda t: t.number)
        self.directions = directions

    @property
    def direction(self) -> StudyDirection:
        return self.directions[0]

    def _is_multi_objective(self) -> bool:
        return len(self.directions) > 1

    def _get_trials(
        self,
        deepcopy: bool = False,
        states: Sequence[TrialState] | None = None,
        use_cache: bool = False,
    ) -> list[FrozenTrial]:
        return [t for t in self.trials if states is None or t.state in states]


@dataclass(frozen=True)
class _Next:
    """The trial to draw for, as TPE's constant liar sees it: not one of the study's."""

    number: int = -1


def draw(sampler: Any, view: StudyView, space: Space, seed: int) -> dict[str, Any]:
    """``sampler``'s TPE draw over ``view`` (a :class:`hpo.studies.fast_tpe.FastTPESampler`),
    seeded: what the helper answers, and what the worker would draw in process."""
    sampler._rng.rng.seed(seed)
    params: dict[str, Any] = sampler._sample(view, _Next(), space)
    return params


@dataclass
class _Pending:
    request: Request
    owner: int  # the number of the trial the draw is for


class DrawAhead:
    """The worker's side: asks the helper for the next trial's draw, and takes it."""

    def __init__(self, sampler_kwargs: dict[str, Any]) -> None:
        self.sampler_kwargs = {k: v for k, v in sampler_kwargs.items() if k != "seed"}
        self.taken = 0  # draws a trial took from the helper
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: Connection | None = None
        self._writer: Connection | None = None
        self._sent: set[int] = set()
        self._next_id = 0
        self._queued: _Pending | None = None  # asked for, not sent yet
        self._pending: _Pending | None = None
        self._failed = False

    @property
    def usable(self) -> bool:
        return not self._failed

    def start(self) -> None:
        """Start the helper (it imports TPE in about 0.4 s), if not yet started."""
        if self._proc is not None or self._failed:
            return
        # The hpo this worker runs, whatever folder it runs in (-P: not the current one).
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", __name__],
                env={**os.environ, "PYTHONPATH": path},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # it answers failures over its pipe
                process_group=0,  # out of the terminal's group: Ctrl-C is the worker's
            )
        except OSError:
            self._failed = True
            return
        assert proc.stdin is not None and proc.stdout is not None
        self._writer = Connection(os.dup(proc.stdin.fileno()), readable=False)
        self._reader = Connection(os.dup(proc.stdout.fileno()), writable=False)
        proc.stdin.close()
        proc.stdout.close()
        self._proc = proc
        weakref.finalize(self, _close, self._writer, self._reader, proc)

    def request(
        self,
        owner: int,
        finished: list[FrozenTrial],
        running: list[FrozenTrial],
        directions: list[StudyDirection],
        space: Space,
        seed: int,
    ) -> None:
        """Ask for trial ``owner``'s draw over the ``finished`` trials (in number order) and
        the ``running`` ones: queued until :meth:`send` (or the next :meth:`take`)."""
        self.start()
        if self._writer is None:
            return
        self._next_id += 1
        request = Request(
            self._next_id,
            self.sampler_kwargs,
            [_lean(t) for t in not_seen(finished, self._sent)],  # the helper keeps the rest
            [_lean(t) for t in running],
            list(directions),
            space,
            seed,
        )
        self._queued = _Pending(request, owner)

    def send(self) -> None:
        """Send the queued request, if any: the helper starts drawing."""
        queued, self._queued = self._queued, None
        if queued is None or self._writer is None:
            return
        try:
            self._writer.send(queued.request)
        except (OSError, ValueError):
            self.fail()
            return
        self._sent.update(t.number for t in queued.request.new)
        self._pending = queued

    def take(self, number: int, space: Space) -> dict[str, Any] | None:
        """The draw asked for trial ``number`` over ``space``, or None: none was asked for
        it (another worker took that number, or the space changed), or the helper failed."""
        self.send()  # where nothing sent it yet: the same draw, only not ahead
        pending, self._pending = self._pending, None
        if pending is None or pending.owner != number or pending.request.space != space:
            return None
        assert self._reader is not None
        try:
            while self._reader.poll(REPLY_TIMEOUT_S):
                reply_id, params = self._reader.recv()
                if reply_id == pending.request.id:  # earlier replies: draws no trial took
                    if params is None:
                        self.fail()
                        return None
                    self.taken += 1
                    return dict(params)
        except (OSError, EOFError):
            pass
        self.fail()  # hung or dead
        return None

    def fail(self) -> None:
        """Stop using the helper: the worker draws in process from now on."""
        self._failed = True
        self._queued = self._pending = None
        if self._proc is not None:
            assert self._writer is not None and self._reader is not None
            _close(self._writer, self._reader, self._proc)


def _lean(trial: FrozenTrial) -> FrozenTrial:
    """``trial`` without its user attrs, which TPE does not read (hpo's hold model specs)."""
    lean = copy.copy(trial)
    lean._user_attrs = {}
    return lean


def _close(writer: Connection, reader: Connection, proc: subprocess.Popen[bytes]) -> None:
    for end in (writer, reader):
        with contextlib.suppress(OSError):
            end.close()
    try:
        proc.wait(timeout=5)  # it ends when its pipe closes
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve(reader: Connection, writer: Connection) -> None:
    """The helper: answer each request with ``(id, params)``, params None where the draw
    failed; return when the worker's end of the pipe closes."""
    from hpo.studies.fast_tpe import FastTPESampler

    known: dict[int, FrozenTrial] = {}
    sampler: FastTPESampler | None = None
    while True:
        try:
            request: Request = reader.recv()
        except (EOFError, OSError):
            return
        params: dict[str, Any] | None
        try:
            known.update((t.number, t) for t in request.new)
            if sampler is None:
                sampler = FastTPESampler(**request.sampler)
            trials = [*known.values(), *request.running]
            params = draw(
                sampler, StudyView(trials, request.directions), request.space, request.seed
            )
        except Exception:  # any failure: the worker draws itself
            params = None
        try:
            writer.send((request.id, params))
        except (OSError, ValueError):
            return


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker's to handle
    reader = Connection(os.dup(0), writable=False)
    writer = Connection(os.dup(1), readable=False)
    devnull = os.open(os.devnull, os.O_RDWR)  # nothing else may write into the pipe
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    serve(reader, writer)


if __name__ == "__main__":
    main()
