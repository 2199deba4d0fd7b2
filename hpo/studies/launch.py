"""What ``hpo run`` and ``hpo worker`` do, without the printing: the CLI only parses,
calls these, and shows what they return.

Progress is the caller's: it passes a factory of :class:`ProgressView` (the CLI's Rich
bars), and this module never prints.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import optuna

from hpo.errors import HpoError, interrupted
from hpo.spec import RunOptions, StudySpec, check_overrides, load_spec
from hpo.storage.backend import (
    mask_text,
    mask_url,
    new_sqlite_file,
    open_artifacts,
    open_storage,
    storage_url,
)
from hpo.storage.stored import KINDS, WORKER, count_trials, study_name
from hpo.studies.parallel import INTERRUPTS, worker_id
from hpo.studies.workers import (
    FAILURE_ENV,
    LocalWorkers,
    WorkerJob,
    pin_threads,
    quiet_optuna,
    stop_on_sigterm,
)

if TYPE_CHECKING:
    from hpo.studies.runner import RunResult

Log = Callable[[str], None]
SQLITE_WORKERS = 2  # more local workers than this on SQLite: suggest PostgreSQL
SQLITE_NOTE = "note: SQLite serves {} workers well; {} want PostgreSQL (README)"


class ProgressView(Protocol):
    """Progress of the studies: advanced by trials of this process (``on_trial``), or
    polled each second while local workers run (``poll``)."""

    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: object) -> None: ...
    def poll(self) -> None: ...
    def study_started(self, name: str) -> None: ...
    def on_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None: ...


# targets (study name -> finished trials), and the storage to poll (None: in this process)
Bars = Callable[[dict[str, int], optuna.storages.BaseStorage | None], ProgressView]


class NoProgress:
    """Shows nothing."""

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def poll(self) -> None:
        pass

    def study_started(self, name: str) -> None:
        pass

    def on_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        pass


def no_bars(targets: dict[str, int], storage: optuna.storages.BaseStorage | None) -> ProgressView:
    return NoProgress()


def _targets(spec: StudySpec, trials: int | None) -> dict[str, int]:
    from hpo.studies.runner import study_targets  # torch: imported only once it is needed

    return study_targets(spec, trials)


def run_all(
    spec: StudySpec,
    base_dir: Path,
    spec_path: Path,
    options: RunOptions,
    *,
    n_workers: int = 1,
    fresh: bool = False,
    bars: Bars = no_bars,
    log: Log = lambda line: None,
) -> RunResult:
    """``hpo run``: tune every study of the spec (in ``n_workers`` local processes when
    more than one), then build and store the ensemble in this process.

    Raises:
        HpoError: see :func:`hpo.studies.runner.run_spec` and :func:`run_local`.
    """
    prepared = n_workers > 1
    if prepared:
        watch = functools.partial(_watch, bars, spec, options.trials)
        timeout = run_local(spec, spec_path, n_workers, options, fresh=fresh, watch=watch, log=log)
        options = dataclasses.replace(options, timeout=timeout)
    # The workers' progress was shown; what follows only finishes the run.
    view = NoProgress() if prepared else _watch(bars, spec, options.trials, None)
    return _run_here(spec, base_dir, options, view, log, fresh=fresh, prepared=prepared)


def _watch(
    bars: Bars, spec: StudySpec, trials: int | None, storage: optuna.storages.BaseStorage | None
) -> ProgressView:
    from hpo.studies.runner import study_targets  # torch: imported only once it is needed

    return bars(study_targets(spec, trials), storage)


def _run_here(
    spec: StudySpec,
    base_dir: Path,
    options: RunOptions,
    view: ProgressView,
    log: Log,
    **flags: bool,
) -> RunResult:
    """Run the spec in this process. Ctrl-C: the training trial ends as FAIL at once, no
    storage write is cut short, and a signal that Python would drop (raised inside a
    finalizer) is kept, not lost."""
    from hpo.studies.runner import run_spec

    with INTERRUPTS.installed(), view:
        return run_spec(
            spec,
            base_dir,
            options,
            on_trial=view.on_trial,
            on_study_start=view.study_started,
            log=log,
            **flags,
        )


@dataclass(frozen=True)
class WorkerShare:
    """One study after a worker ran: finished trials, the target, and this worker's part."""

    study_name: str
    finished: int
    target: int
    mine: int


def run_worker(
    spec: StudySpec,
    base_dir: Path,
    options: RunOptions,
    *,
    threads: int | None = None,
    bars: Bars = no_bars,
    log: Log = lambda line: None,
) -> list[WorkerShare]:
    """``hpo worker``: join the spec's studies (creating them if needed) and run trials
    until they reach their targets; the ensemble is left to ``hpo run``/``hpo ensemble``.

    Raises:
        HpoError: a bad spec, data or storage (see :func:`hpo.studies.runner.run_spec`).
    """
    pin_threads(threads)
    log(f"{spec.name}: worker {worker_id()}")
    from hpo.studies.runner import study_targets  # torch: imported once the spec is good

    targets = study_targets(spec, options.trials)
    view = bars(targets, None)
    result = _run_here(spec, base_dir, options, view, log, worker=True)
    return [_share(study, targets[study.study_name]) for study in result.studies.values()]


def _share(study: optuna.Study, target: int) -> WorkerShare:
    finished = count_trials(study._storage, study.study_name).finished
    mine = sum(t.user_attrs.get(WORKER) == worker_id() for t in study.get_trials(deepcopy=False))
    return WorkerShare(study.study_name, finished, target, mine)


def child_main() -> None:
    """A local worker of ``hpo run --workers``: the job in argv, the storage URL in
    ``HPO_STORAGE``; log lines on stdout, and on failure its reason in ``HPO_WORKER_FAILURE``
    and exit code 1 (130 when interrupted)."""
    quiet_optuna()
    job = WorkerJob(**json.loads(sys.argv[1]))

    def log(line: str) -> None:
        print(line, flush=True)

    try:
        spec, base_dir = load_spec(job.spec_path)
        options = RunOptions(None, job.artifacts_path, job.trials, job.timeout)
        check_overrides(spec, trials=job.trials, timeout=job.timeout)
        run_worker(spec, base_dir, options, threads=job.threads, log=log)
    except HpoError as e:
        Path(os.environ[FAILURE_ENV]).write_text(mask_text(str(e), storage_url()) + "\n")
        sys.exit(1)
    except (KeyboardInterrupt, Exception) as e:
        if not interrupted(e):
            raise
        sys.exit(130)


def run_local(
    spec: StudySpec,
    spec_path: Path,
    n_workers: int,
    options: RunOptions,
    *,
    fresh: bool = False,
    watch: Callable[[optuna.storages.BaseStorage], ProgressView],
    log: Log = lambda line: None,
) -> float | None:
    """``hpo run --workers N``: check the spec (or archive, ``fresh``) once, then run N
    local workers to the targets.

    ``watch(storage)`` shows progress while they run (polled each second). Returns what
    is left of the run's time budget (the timeout, else the spec's NN timeout) for the
    parent to finish the run in, or None without a budget.

    Raises:
        HpoError: a bad storage URL, a changed data section, or a failed worker.
    """
    stop_on_sigterm()  # stop the workers too, not leave them orphaned
    url = storage_url(options.storage)
    new_database = new_sqlite_file(url)
    store = open_storage(url)  # a bad URL fails here, once, not in N workers
    open_artifacts(options.artifacts)
    from hpo.studies.runner import open_spec_storage, prepare_run

    lines = prepare_run(spec, open_spec_storage(spec, url), fresh=fresh, trials=options.trials)
    if new_database is not None:
        lines.insert(0, f"{spec.name}: a new SQLite database at {new_database}")
    lines.append(f"{study_name(spec.name, KINDS[0])}: {n_workers} workers, storage {mask_url(url)}")
    if url.startswith("sqlite") and n_workers > SQLITE_WORKERS:
        lines.append(
            f"note: SQLite serves {SQLITE_WORKERS} workers well; {n_workers} want PostgreSQL"
        )
    for line in lines:
        log(line)
    pool = LocalWorkers(
        spec_path,
        n_workers,
        storage_url=url,
        artifacts_path=options.artifacts,
        trials=options.trials,
        timeout=options.timeout,
        log=log,
    )
    started = time.monotonic()
    pool.start()
    try:
        watcher = watch(store)
    except BaseException:
        pool.stop()
        raise
    with watcher:
        pool.wait(watcher.poll)
    return remaining_budget(options.timeout or spec.nn.timeout, time.monotonic() - started)


def remaining_budget(budget: float | None, spent: float) -> float | None:
    """What is left of ``budget`` seconds after ``spent``: the run then finishes in the
    parent, tuning at most what the workers left undone (nothing, unless time ran out)."""
    return None if budget is None else max(budget - spent, 1e-3)
