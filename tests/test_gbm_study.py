"""The GBM study: XGBoost trials with early stopping, pruning, saved models and metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import TINY_SPEC
from optuna.trial import TrialState

from hpo.data.dataset import load_dataset
from hpo.ensemble.selection import load_member
from hpo.errors import HpoError
from hpo.models.metrics import score
from hpo.spec import GBMSpace, StudySpec, load_spec
from hpo.storage.backend import open_artifacts, open_storage
from hpo.studies.gbm import GBM, GBMObjective, baseline_params, xgb_params
from hpo.studies.study import run_study


def _spec(**changes: object) -> StudySpec:
    return StudySpec.model_validate(TINY_SPEC | changes)


def test_gbm_trials_keep_models_that_reproduce_their_metrics(workdir: Path) -> None:
    spec = _spec()
    data = load_dataset(spec.data, spec.task, workdir, spec.seed)
    storage, artifacts = open_storage(), open_artifacts()
    study = run_study(GBM, spec, data, storage, artifacts, n_trials=3)

    assert study.study_name == "tiny-gbm"
    assert study.user_attrs["task"] == "multiclass"
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert done, "at least the enqueued XGBoost-defaults trial completes"
    assert done[0].user_attrs.get("baseline") is True
    for trial in done:
        attrs = trial.user_attrs
        for key in ("val_loss", "val_accuracy", "test_accuracy", "train_seconds", "device"):
            assert key in attrs
        assert attrs["device"] == "cpu"
        assert trial.value == pytest.approx(attrs["val_loss"])
        assert 1 <= attrs["n_estimators_used"] == attrs["best_iteration"] + 1 <= 30
        assert attrs["rounds_run"] >= attrs["n_estimators_used"]
        # The saved model holds exactly the trees it was scored with.
        member = load_member("gbm", trial, study.study_name, artifacts, data)
        assert member.booster.num_boosted_rounds() == attrs["n_estimators_used"]
        proba = member.predict(data.val.x)
        assert proba.shape == (len(data.val.y), 10)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
        assert score("accuracy", proba, data.val.y) == pytest.approx(attrs["val_accuracy"])
        assert score("accuracy", member.predict(data.test.x), data.test.y) == pytest.approx(
            attrs["test_accuracy"]
        )


def test_gbm_study_tops_up_to_its_target(workdir: Path) -> None:
    spec = _spec()
    data = load_dataset(spec.data, spec.task, workdir, spec.seed)
    storage, artifacts = open_storage(), open_artifacts()
    run_study(GBM, spec, data, storage, artifacts, n_trials=2)
    study = run_study(GBM, spec, data, storage, artifacts, n_trials=3)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 3


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.last_step is not None and trial.last_step >= 2


def test_the_pruner_sees_the_validation_loss_of_each_round(workdir: Path) -> None:
    spec = _spec()
    data = load_dataset(spec.data, spec.task, workdir, spec.seed)
    study = optuna.create_study(pruner=_AlwaysPrune())
    study.optimize(GBMObjective(spec, data, open_artifacts()), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [0, 1, 2]
    assert all(0 < v < 2.31 for v in trial.intermediate_values.values())  # mlogloss < log(10)
    assert "pruned" in trial.user_attrs["pruned_reason"].lower()
    assert "artifact_id" not in trial.user_attrs


def test_the_gbm_search_space_has_defaults_and_pins(write_spec: Callable[..., Path]) -> None:
    spec, _ = load_spec(
        write_spec({"gbm": {"search_space": {"max_depth": 3, "learning_rate": 0.1}}})
    )
    space = spec.gbm.search_space
    assert (space.max_depth.low, space.max_depth.high) == (3, 3)
    assert (space.learning_rate.low, space.learning_rate.high) == (0.1, 0.1)
    assert space.reg_alpha == GBMSpace().reg_alpha  # an unnamed key keeps its default range
    baseline = baseline_params(space)
    assert baseline["max_depth"] == 3 and baseline["n_estimators"] == 30


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"gbm": {"search_space": {"subsample": 1.5}}}, "subsample must lie in (0, 1]"),
        ({"gbm": {"search_space": {"gamma": {"low": -1, "high": 1}}}}, "gamma must be >= 0"),
        ({"gbm": {"early_stopping_rounds": 0}}, "gbm.early_stopping_rounds"),
        ({"gbm": {"n_jobs": 0}}, "gbm.n_jobs"),
        ({"ensemble": {"nn_members": 0, "gbm_members": 0}}, "at least 1"),
        ({"ensemble": {"method": "vote"}}, "ensemble.method"),
    ],
)
def test_bad_gbm_and_ensemble_settings_are_one_clear_error(
    write_spec: Callable[..., Path], changes: dict[str, object], message: str
) -> None:
    with pytest.raises(HpoError, match=r".*") as e:
        load_spec(write_spec(changes))
    assert message in str(e.value)


def test_threads_are_left_to_openmp_unless_pinned(workdir: Path) -> None:
    spec = _spec()
    data = load_dataset(spec.data, spec.task, workdir, spec.seed)
    params = {"max_depth": 3, "learning_rate": 0.1, "n_estimators": 10}
    unpinned = xgb_params(params, data, seed=0, device="cpu")
    assert "nthread" not in unpinned  # all cores, or OMP_NUM_THREADS
    assert "n_estimators" not in unpinned and unpinned["num_class"] == 10
    pinned = xgb_params(params, data, seed=0, device="cpu", n_jobs=3, max_bin=32)
    assert pinned["nthread"] == 3 and pinned["max_bin"] == 32
