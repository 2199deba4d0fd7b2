"""Display: one Rich bar per study on stderr, read from the storage.

The same bars serve a run in this process (advanced by an Optuna callback) and
``hpo run --workers`` (polled while other processes run the trials): both read the
counts from the storage, so they show every worker's trials. Each bar shows finished
of target, pruned trials, its own elapsed time (started with its study) and an ETA.
"""

from __future__ import annotations

import optuna
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from hpo.storage.stored import count_trials
from hpo.summary import fmt


class StudyBars:
    """Bars for ``targets`` (study name -> finished trials to reach).

    Without a terminal (piped, captured) the bars stay off and each finished trial is one
    line instead, unless ``quiet``: then nothing at all.
    """

    def __init__(
        self,
        targets: dict[str, int],
        console: Console,
        *,
        quiet: bool = False,
        storage: optuna.storages.BaseStorage | None = None,
    ) -> None:
        self.console, self.quiet, self.storage = console, quiet, storage
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[pruned]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[best]}"),
            console=console,
            disable=quiet or not console.is_terminal,
        )
        self.tasks: dict[str, TaskID] = {
            name: self.progress.add_task(name, total=target, best="", pruned="", start=False)
            for name, target in targets.items()
        }

    def __enter__(self) -> StudyBars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def study_started(self, name: str) -> None:
        """Start the clock of ``name``'s bar: its study begins now."""
        task = self.tasks.get(name)
        if task is not None and self.progress.tasks[task].start_time is None:
            self.progress.start_task(task)

    def poll(self) -> None:
        """Read every study's counts from the storage (for workers in other processes)."""
        assert self.storage is not None, "poll needs the storage"
        for name in self.tasks:
            self._update(self.storage, name)

    def on_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """The Optuna callback of a run in this process."""
        best = self._update(study._storage, study.study_name)
        if self.progress.disable and not self.quiet:
            value = f" {fmt(trial.value)}" if trial.value is not None else ""
            self.console.print(
                f"{study.study_name} trial {trial.number} {trial.state.name.lower()}{value} "
                f"{best}".rstrip(),
                highlight=False,
            )

    def _update(self, storage: optuna.storages.BaseStorage, name: str) -> str:
        counts = count_trials(storage, name)
        best = "" if counts.best is None else f"best {fmt(counts.best)}"
        task = self.tasks.get(name)
        if task is not None:
            if counts.finished or counts.running:
                self.study_started(name)
            pruned = f"{counts.pruned} pruned" if counts.pruned else ""
            self.progress.update(task, completed=counts.finished, best=best, pruned=pruned)
        return best
