"""What the dashboard reads survives the batched writes: every trial's learning curve and
the same user attrs as before, read back through Optuna's API from a fresh connection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.data.dataset import load_dataset
from hpo.spec import load_spec
from hpo.storage.backend import open_artifacts, open_storage
from hpo.studies import reporting
from hpo.studies.gbm import GBM
from hpo.studies.nn import NN
from hpo.studies.study import run_study

# The user attrs each kind of trial carried before the writes were batched.
NN_COMPLETE = {
    "worker", "architecture", "val_loss", "val_accuracy", "test_accuracy", "epochs_run",
    "best_epoch", "train_seconds", "device", "mlp_spec", "artifact_format", "artifact_id",
}  # fmt: skip
NN_PRUNED = {"worker", "architecture", "pruned_reason", "epochs_run", "device"}
GBM_COMPLETE = {
    "worker", "device", "val_loss", "val_accuracy", "test_accuracy", "n_estimators_used",
    "best_iteration", "rounds_run", "train_seconds", "architecture", "artifact_id",
}  # fmt: skip
GBM_PRUNED = {"worker", "device", "pruned_reason"}


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, workdir: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{workdir / 'hpo.db'}"
    return request.getfixturevalue("pg_url")


def test_curves_and_attrs_read_back_through_optuna(
    write_spec: Callable[..., Path], storage_url: str
) -> None:
    path = write_spec({"name": f"curves-{storage_url[:6]}", "nn": {"trials": 8, "epochs": 10}})
    spec, base = load_spec(path)
    data = load_dataset(spec.data, spec.task, base, spec.seed)
    storage = open_storage(storage_url)
    for family in (NN, GBM):
        run_study(family, spec, data, storage, open_artifacts(), n_trials=8)

    # A new storage object, as the dashboard or another process would open it.
    fresh = optuna.storages.RDBStorage(storage_url)
    nn = optuna.load_study(study_name=f"{spec.name}-nn", storage=fresh).trials
    gbm = optuna.load_study(study_name=f"{spec.name}-gbm", storage=fresh).trials
    for trials in (nn, gbm):
        states = {t.state for t in trials}
        assert states == {TrialState.COMPLETE, TrialState.PRUNED}  # both paths are checked
        for t in trials:  # every step from 0 on, one value each
            assert sorted(t.intermediate_values) == list(range(len(t.intermediate_values)))
    for t in nn:
        attrs, curve = t.user_attrs, t.intermediate_values
        assert len(curve) == attrs["epochs_run"] > 0
        if t.state == TrialState.COMPLETE:
            assert set(attrs) == NN_COMPLETE
            assert attrs["val_loss"] == min(curve.values()) == curve[attrs["best_epoch"]]
        else:
            assert set(attrs) == NN_PRUNED
    for t in gbm:
        attrs = {k: v for k, v in t.user_attrs.items() if k != "baseline"}
        if t.state == TrialState.COMPLETE:
            assert set(attrs) == GBM_COMPLETE
            assert len(t.intermediate_values) == attrs["rounds_run"]
            assert attrs["val_loss"] == t.intermediate_values[attrs["best_iteration"]]
        else:
            assert set(attrs) == GBM_PRUNED and t.intermediate_values


def test_a_slow_trials_curve_is_written_while_it_runs(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{workdir / 'hpo.db'}"
    study = optuna.create_study(study_name="live", storage=open_storage(url))
    trial = study.ask()
    curve = reporting.Curve(trial)
    fresh = optuna.storages.RDBStorage(url)
    curve.report(0.9, 0)
    assert fresh.get_trial(trial._trial_id).intermediate_values == {}  # batched
    monkeypatch.setattr(reporting, "FLUSH_S", 0.0)  # as if FLUSH_S had passed since
    curve.report(0.8, 1)
    assert fresh.get_trial(trial._trial_id).intermediate_values == {0: 0.9, 1: 0.8}
    assert trial.should_prune() is False and not curve.pending
    with pytest.warns(UserWarning, match="reported already"):
        curve.report(0.1, 1)  # as trial.report: the first value of a step stays
    curve.flush()
    assert fresh.get_trial(trial._trial_id).intermediate_values == {0: 0.9, 1: 0.8}
