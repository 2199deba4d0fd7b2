"""The shape every family's study shares (hpo.studies.study): open under the lock, baselines once,
a top-up that never replays, and an exact target, for the NN family and a toy one."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.data.dataset import Dataset, load_dataset
from hpo.spec import StudySpec, load_spec
from hpo.storage.backend import open_artifacts, open_storage
from hpo.storage.stored import count_trials
from hpo.studies.nn import NN
from hpo.studies.runner import open_spec_storage
from hpo.studies.study import (
    ArtifactStore,
    Baseline,
    Family,
    Objective,
    PrunerSteps,
    make_pruner,
    open_study,
    run_study,
    sampler_seed,
)

BASELINES = [
    {"depth": 1, "width": 32, "optimizer": "adam"},
    {"depth": 2, "width": 16, "optimizer": "sgd"},
    {"depth": 1, "width": 64, "batch_size": 128},
]


class Quadratic(Family):
    """A third family in a dozen lines: one float to tune, a known optimum, no model."""

    kind = "gbm"  # borrows the GBM section of the spec for its trials and timeout

    def objective(self, spec: StudySpec, data: Dataset, artifacts: ArtifactStore) -> Objective:
        def objective(trial: optuna.Trial) -> float:
            x = trial.suggest_float("x", -1.0, 1.0)
            if x > 0.9:
                raise optuna.TrialPruned("too far out")
            return (x - 0.25) ** 2

        return objective

    def pruner_steps(self, spec: StudySpec) -> PrunerSteps:
        return PrunerSteps(max_steps=10)

    def baselines(self, spec: StudySpec) -> list[Baseline]:
        return [Baseline({"x": 0.25}, {"note": "optimum"})]


def _setup(write_spec, changes: dict[str, Any] | None = None):
    spec, base_dir = load_spec(write_spec(changes or {}))
    return spec, load_dataset(spec.data, spec.task, base_dir, spec.seed)


def _run(write_spec, changes, n_trials):
    spec, data = _setup(write_spec, changes)
    study = run_study(NN, spec, data, open_storage(), open_artifacts(), n_trials=n_trials)
    return spec, data, study


def test_a_family_of_its_own_runs_to_its_target_with_its_baseline_once(write_spec) -> None:
    spec, data = _setup(write_spec, {"sampler": "random", "gbm": {"trials": 6}})
    storage = open_storage()
    study = run_study(Quadratic(), spec, data, storage, open_artifacts())
    counts = count_trials(storage, "tiny-gbm")
    assert counts.finished == 6 and counts.running == 0  # the spec's target, exactly
    first = study.trials[0]
    assert first.params == {"x": 0.25} and first.user_attrs == {
        "baseline": True,
        "note": "optimum",
        "worker": first.user_attrs["worker"],
    }
    assert study.best_value == 0.0 and study.user_attrs["kind"] == "gbm"
    # A top-up: 3 more, new draws (never a replay of the first run's), no second baseline.
    again = run_study(Quadratic(), spec, data, storage, open_artifacts(), n_trials=9)
    xs = [t.params["x"] for t in again.trials]
    assert len(xs) == 9 and len(set(xs)) == 9
    assert sum(bool(t.user_attrs.get("baseline")) for t in again.trials) == 1


def test_the_pruner_counts_in_the_family_steps(write_spec) -> None:
    spec, _ = _setup(write_spec, {"pruner": "hyperband"})
    pruner = make_pruner(spec, PrunerSteps(max_steps=81, min_steps=3))
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource) == (3, 81)


def test_a_top_up_draws_from_its_own_stream() -> None:
    assert sampler_seed(7, 0) == 7  # a new study: the spec's seed, same first trials
    assert sampler_seed(7, 5) == sampler_seed(7, 5) != sampler_seed(7, 6) != 7


def test_rerun_tops_up_to_the_target(write_spec) -> None:
    _run(write_spec, {}, 3)
    _, _, study = _run(write_spec, {}, 5)
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 5 and len(study.trials) == 5
    _, _, study = _run(write_spec, {}, 5)  # already there: nothing more runs
    assert len(study.trials) == 5


def test_study_attrs_describe_the_study(write_spec) -> None:
    _, _, _study = _run(write_spec, {}, 1)
    loaded = optuna.load_study(study_name="tiny-nn", storage=open_storage())
    assert loaded.user_attrs["dataset"] == "sklearn:digits"
    assert loaded.user_attrs["task"] == "multiclass" and len(loaded.user_attrs["spec_hash"]) == 12
    assert loaded.metric_names == ["val_log_loss"]


def _open_at_once(spec_path: Path, url: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    spec, base_dir = load_spec(spec_path)
    data = load_dataset(spec.data, spec.task, base_dir, spec.seed)
    storage = open_spec_storage(spec, url)
    barrier.wait()  # every process creates the study in the same instant
    open_study(NN, spec, storage, data)


def test_workers_creating_one_study_at_once_enqueue_each_baseline_once(
    write_spec, pg_url: str
) -> None:
    spec_path = write_spec({"name": "race", "nn": {"baselines": BASELINES}})
    ctx = multiprocessing.get_context("fork")  # fast: nothing to import again
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_at_once, args=(spec_path, pg_url, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    storage = optuna.storages.RDBStorage(pg_url)
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["race-nn"]
    waiting = optuna.load_study(study_name="race-nn", storage=storage).get_trials()
    assert len(waiting) == len(BASELINES)
