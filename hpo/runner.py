"""Run everything a study spec asks for, in order, against one storage.

``hpo run`` and ``hpo worker`` both come through here, so a worker on another machine
(or one of ``hpo run --workers N``) does exactly what a local run does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from hpo.data import Dataset, load_dataset
from hpo.ensemble import EnsembleReport, build_ensemble, store_leaderboard
from hpo.gbm_study import run_gbm_study
from hpo.nn_study import run_nn_study
from hpo.resume import archive_studies, check_rerun, note_target_met
from hpo.sanity import check_studies_have_values, check_useful
from hpo.spec import StudySpec
from hpo.storage import mask_url, open_artifacts, open_storage
from hpo.storage import storage_url as resolve_url

TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


@dataclass
class RunResult:
    nn_study: optuna.Study
    gbm_study: optuna.Study
    data: Dataset
    ensemble: EnsembleReport | None  # None in a worker: the run builds it once

    @property
    def leaderboard(self) -> dict[str, Any]:
        assert self.ensemble is not None, "workers build no ensemble"
        return self.ensemble.leaderboard


def open_spec_storage(spec: StudySpec, storage_url: str | None) -> optuna.storages.BaseStorage:
    """The storage with the spec's heartbeat and retry settings."""
    return open_storage(
        storage_url,
        heartbeat_interval=spec.heartbeat_interval,
        grace_period=spec.grace_period,
        max_retry=spec.max_retry,
    )


def study_targets(spec: StudySpec, trials: int | None = None) -> dict[str, int]:
    """Each study ``run_spec`` tunes, with the finished trials it tunes it to."""
    return {
        spec.nn_study_name: spec.nn.trials if trials is None else trials,
        spec.gbm_study_name: spec.gbm.trials if trials is None else trials,
    }


def run_spec(
    spec: StudySpec,
    base_dir: Path,
    *,
    storage_url: str | None = None,
    artifacts_path: str | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    on_trial: TrialCallback | None = None,
    log: Callable[[str], None] = lambda message: None,
    worker: bool = False,
    fresh: bool = False,
    prepared: bool = False,
) -> RunResult:
    """Load the data, tune the NN study, then the GBM study, then build the ensemble.

    ``trials`` and ``timeout`` override both studies' settings (the timeout is per study).
    Data and storage are opened before anything is written, so a bad path or URL leaves
    the database untouched.

    Args:
        worker: this process is one of several on the studies (``hpo worker``): its
            samplers draw their own random numbers, and the ensemble, built once per run
            rather than once per worker, is left to ``hpo run`` (or ``hpo ensemble``).
        fresh: keep the spec's existing studies under a dated name and start new ones
            (:func:`hpo.resume.archive_studies`); otherwise the spec must match the data,
            task and seed the studies were made with (:func:`hpo.resume.check_rerun`).
        prepared: the caller has done that already, and said which targets were met
            before its workers ran (``hpo run --workers``): no check and no notes here.

    Raises:
        HpoError: bad data or storage, a spec whose data no longer matches its studies, a
            study whose trials all ended without a value, or no model better than the
            no-skill baseline (see :mod:`hpo.sanity`).
    """
    data = load_dataset(spec.data, spec.task, base_dir, spec.seed)
    storage = open_spec_storage(spec, storage_url)
    artifacts = open_artifacts(artifacts_path)
    # Raises before anything is written.
    notes = [] if fresh or prepared else check_rerun(spec, storage)
    log(
        f"{spec.name}: {data.source}, {len(data.train.y)}/{len(data.val.y)}/{len(data.test.y)} "
        f"train/val/test rows; storage {mask_url(resolve_url(storage_url))}"
    )
    for note in notes:
        log(note)
    if fresh and not prepared:
        archive_studies(spec, storage, log)
    targets = study_targets(spec, trials)
    # A worker among others finds targets met by its peers: no news.
    notes_met = not (worker or prepared)
    if notes_met:
        note_target_met(storage, spec.nn_study_name, targets[spec.nn_study_name], "nn.trials", log)
    nn_study = run_nn_study(
        spec,
        data,
        storage,
        artifacts,
        n_trials=targets[spec.nn_study_name],
        timeout=timeout or spec.nn.timeout,
        on_trial=on_trial,
        worker=worker,
        log=log,
    )
    if notes_met:
        note_target_met(
            storage, spec.gbm_study_name, targets[spec.gbm_study_name], "gbm.trials", log
        )
    gbm_study = run_gbm_study(
        spec,
        data,
        storage,
        artifacts,
        n_trials=targets[spec.gbm_study_name],
        timeout=timeout or spec.gbm.timeout,
        on_trial=on_trial,
        worker=worker,
        log=log,
    )
    if worker:
        return RunResult(nn_study=nn_study, gbm_study=gbm_study, data=data, ensemble=None)
    check_studies_have_values(spec.name, [nn_study, gbm_study])
    report = build_ensemble(
        spec.name, nn_study, gbm_study, data, spec.ensemble, artifacts, metric=spec.metric
    )
    store_leaderboard(nn_study, report.leaderboard)
    check_useful(spec.name, report.leaderboard)
    return RunResult(nn_study=nn_study, gbm_study=gbm_study, data=data, ensemble=report)
