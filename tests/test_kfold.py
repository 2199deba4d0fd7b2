"""``data.validation: {kfold: K}``: fold splits, k-fold trials scored out of fold, the
ensemble fitted on out-of-fold predictions, bundles that average the fold models; and the
small-data rules (no pruning where it saves nothing, a word on an under-filled ensemble)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import sklearn.base
import sklearn.datasets
from helpers import tune_and_export
from optuna.trial import TrialState

import hpo
from hpo.data.dataset import Dataset, load_dataset
from hpo.ensemble.selection import (
    BaggedMember,
    EnsembleReport,
    build_ensemble,
    greedy_weights,
    read_artifact,
)
from hpo.errors import HpoError
from hpo.models.metrics import selection_key, validation_loss
from hpo.models.train import calibrated_validation_loss
from hpo.spec import StudySpec, load_spec
from hpo.storage import stored
from hpo.storage.backend import open_artifacts, open_storage
from hpo.studies.folds import read_npy
from hpo.studies.gbm import GBM
from hpo.studies.nn import NN
from hpo.studies.runner import small_table_hint
from hpo.studies.study import PRUNE_MIN_ROWS, prunes, run_study

K = 3
# Iris (150 rows) in 3 folds, few short trials: the whole module tunes in seconds.
KFOLD = {
    "name": "iris",
    "data": {"name": "iris", "validation": {"kfold": K}},
    "pruner": "none",
    "nn": {"trials": 2, "epochs": 8, "patience": 4},
    "gbm": {"trials": 2, "search_space": {"n_estimators": 20}},
    "ensemble": {"nn_members": 2, "gbm_members": 2, "greedy_rounds": 10},
}


def _data(write_spec: Callable[..., Path], changes: dict) -> tuple[StudySpec, Dataset]:
    spec, base_dir = load_spec(write_spec(changes))
    return spec, load_dataset(spec.data, spec.task, base_dir, spec.seed)


# --- the spec and the splits -------------------------------------------------------------


@pytest.mark.parametrize("bad", [{"kfold": 1}, {"kfold": "five"}, "kfold", {"folds": 5}, 3])
def test_a_bad_validation_is_one_clear_line(write_spec, cli, bad) -> None:
    path = write_spec({"data": {"validation": bad}})
    with pytest.raises(HpoError, match=r"data\.validation: must be 'holdout' or \{kfold: K\}"):
        load_spec(path)
    result = cli("run", path, "-q")
    assert result.exit_code != 0
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_holdout_stays_the_default(write_spec) -> None:
    spec, data = _data(write_spec, {})
    assert spec.data.validation == "holdout" and spec.data.n_folds == 0
    assert data.n_folds == 0 and data.pool is None


@pytest.mark.parametrize("name", ["wine", "diabetes"])
def test_folds_cover_every_non_test_row_once_in_validation(write_spec, name) -> None:
    task = "regression" if name == "diabetes" else "multiclass"
    _, data = _data(write_spec, {"task": task, "data": {"name": name, "validation": {"kfold": 5}}})
    assert data.pool is not None and data.n_folds == 5
    n_pool = len(data.pool.y)
    validated = np.concatenate([val for _, val in data.folds])
    assert np.array_equal(np.sort(validated), np.arange(n_pool))  # each row exactly once
    for train_rows, val_rows in data.folds:
        assert not set(train_rows) & set(val_rows)
        assert len(train_rows) + len(val_rows) == n_pool
    # The held-out test split is today's; the pool is every other row.
    holdout = _data(write_spec, {"task": task, "data": {"name": name}})[1]
    assert np.array_equal(data.test.y, holdout.test.y)
    assert n_pool + len(data.test.y) == len(getattr(sklearn.datasets, f"load_{name}")().target)
    if task == "multiclass":  # stratified: every fold holds each class in its share
        share = np.bincount(data.pool.y) / n_pool
        for _, val_rows in data.folds:
            counts = np.bincount(data.pool.y[val_rows], minlength=len(share))
            assert np.all(np.abs(counts - share * len(val_rows)) <= 1)


def test_a_fold_is_a_holdout_dataset_on_the_one_pool_preprocessing(write_spec) -> None:
    _, data = _data(write_spec, {"data": {"name": "wine", "validation": {"kfold": 4}}})
    assert data.pool is not None
    # Standard scaling fitted on every non-test row: the pool's columns have mean 0.
    assert np.allclose(data.pool.x.mean(axis=0), 0, atol=1e-5)
    for k, (train_rows, val_rows) in enumerate(data.folds):
        fold = data.fold(k)
        assert fold.n_folds == 0 and fold.preprocessor is data.preprocessor
        assert np.array_equal(fold.val.x, data.pool.x[val_rows])
        assert np.array_equal(fold.train.y, data.pool.y[train_rows])
        assert np.array_equal(fold.test.x, data.test.x)
    # Code that knows nothing of folds sees fold 0: disjoint training and validation rows.
    assert np.array_equal(data.val.x, data.fold(0).val.x)
    assert data.fold(1) is data.fold(1)  # made once, tensors too


def test_more_folds_than_a_class_has_rows_is_one_clear_line(write_spec) -> None:
    with pytest.raises(HpoError, match="cannot split the data"):
        _data(write_spec, {"data": {"name": "iris", "validation": {"kfold": 60}}})


# --- k-fold studies ----------------------------------------------------------------------


@dataclass(frozen=True)
class Tuned:
    spec: StudySpec
    data: Dataset
    studies: dict[str, optuna.Study]
    artifacts: optuna.artifacts.FileSystemArtifactStore
    report: EnsembleReport


@pytest.fixture
def tuned(write_spec) -> Tuned:
    spec, data = _data(write_spec, KFOLD)
    storage, artifacts = open_storage(), open_artifacts()
    studies = {f.kind: run_study(f, spec, data, storage, artifacts) for f in (NN, GBM)}
    report = build_ensemble(spec.name, studies, data, spec.ensemble, artifacts, spec.metric)
    return Tuned(spec, data, studies, artifacts, report)


def test_a_kfold_trial_stores_k_fold_models_and_its_oof_predictions(tuned: Tuned) -> None:
    data = tuned.data
    assert data.pool is not None
    for kind, study in tuned.studies.items():
        trial = study.best_trial
        ids = trial.user_attrs[stored.FOLD_ARTIFACT_IDS]
        assert len(ids) == len(set(ids)) == K and trial.user_attrs[stored.FOLDS] == K
        assert trial.user_attrs[stored.ARTIFACT_ID] == ids[0]
        raw = read_artifact(
            tuned.artifacts, study.study_name, trial, trial.user_attrs["oof_artifact_id"]
        )
        assert raw.startswith(b"\x93NUMPY")  # a .npy file, not a pickle
        oof = read_npy(raw)
        assert oof.dtype == np.float32 and oof.shape == (len(data.pool.y), 3)
        assert np.allclose(oof.sum(axis=1), 1, atol=1e-5)
        # The objective is the loss of the out-of-fold predictions over every non-test row
        # (the NN's at its best temperature).
        loss = calibrated_validation_loss if kind == "nn" else validation_loss
        assert trial.value == pytest.approx(loss(data.task, oof, data.pool.y), rel=1e-5)
        # ... and each fold's rows are predicted by the model that never trained on them.
        member = next(m for m in tuned.report.members if (m.kind, m.trial) == (kind, trial.number))
        assert isinstance(member, BaggedMember) and len(member.folds) == K
        for k, (_, val_rows) in enumerate(data.folds):
            own = member.folds[k].predict(data.fold(k).view(kind, "val"))
            assert np.allclose(own, oof[val_rows], atol=1e-5)
            other = member.folds[(k + 1) % K].predict(data.fold(k).view(kind, "val"))
            assert not np.allclose(other, oof[val_rows], atol=1e-5)


def test_fold_0_alone_reports_to_the_pruner(tuned: Tuned) -> None:
    for study in tuned.studies.values():
        for trial in study.get_trials(states=(TrialState.COMPLETE,)):
            steps = max(trial.intermediate_values) + 1
            first = trial.user_attrs.get(
                "fold_epochs_run", trial.user_attrs.get("fold_rounds_used")
            )
            assert first is not None and len(first) == K
            if study is tuned.studies["nn"]:
                assert steps == first[0]  # one report per epoch of fold 0, none of the others


def test_greedy_weights_are_fitted_on_oof_predictions_not_test(tuned: Tuned) -> None:
    data, report = tuned.data, tuned.report
    assert data.pool is not None
    oofs = [m.oof for m in report.members if isinstance(m, BaggedMember)]
    assert len(oofs) == len(report.members) == 4
    key = selection_key(data.task, tuned.spec.metric, data.pool.y)
    expected, _ = greedy_weights(oofs, key, tuned.spec.ensemble.greedy_rounds)
    assert np.array_equal(report.weights["greedy"], expected)
    # The leaderboard's validation columns are out-of-fold scores over the whole pool.
    for row in report.leaderboard.rows[:4]:
        member = next(m for m in report.members if f"{m.kind}#{m.trial}" == row.name)
        assert row.val_loss == pytest.approx(validation_loss(data.task, member.oof, data.pool.y))


def test_a_member_predicts_the_average_of_its_fold_models(tuned: Tuned) -> None:
    member = tuned.report.members[0]
    assert isinstance(member, BaggedMember)
    x = tuned.data.view(member.kind, "test")
    folds = [m.predict(x) for m in member.folds]
    assert np.allclose(member.predict(x), np.mean(folds, axis=0))
    assert not np.allclose(folds[0], folds[1])  # K different models


def test_the_bundle_holds_every_fold_model_and_predicts_their_average(
    write_spec, workdir: Path, cli
) -> None:
    spec_path = write_spec({**KFOLD, "ensemble": {**KFOLD["ensemble"], "method": "average"}})
    bundle = tune_and_export(spec_path, "iris", workdir)
    manifest = json.loads((bundle / "manifest.json").read_text())
    members = manifest["members"]
    by_trial: dict[tuple[str, int], list[dict]] = {}
    for m in members:
        by_trial.setdefault((m["kind"], m["trial"]), []).append(m)
    assert len(by_trial) == 4 and len(members) == 4 * K
    for folds in by_trial.values():
        assert [m["fold"] for m in folds] == list(range(K))
        assert all(m["weight"] == pytest.approx(1 / (4 * K)) for m in folds)
    # The estimator's prediction is the mean of the in-study bagged members on test rows.
    spec, data = _data(write_spec, KFOLD)
    storage = open_storage(f"sqlite:///{workdir / 'hpo.db'}")
    studies = {k: optuna.load_study(study_name=f"iris-{k}", storage=storage) for k in ("nn", "gbm")}
    config = spec.ensemble.model_copy(update={"method": "average"})
    report = build_ensemble(
        spec.name, studies, data, config, open_artifacts(str(workdir / "art")), spec.metric
    )
    x, y = sklearn.datasets.load_iris(return_X_y=True)
    raw_test = data.preprocessor.transform(x)["nn"]
    test_rows = [int(np.flatnonzero((raw_test == row).all(axis=1))[0]) for row in data.test.x]
    model = hpo.load_ensemble(bundle)
    got = model.predict_proba(x[test_rows])
    want = report.ensemble("average").predict({"nn": data.test.x, "gbm": data.test.x})
    assert np.allclose(got, want, atol=1e-6)
    assert np.array_equal(y[test_rows], data.test.y)
    # `hpo predict` from the bundle alone gives the same classes.
    names = sklearn.datasets.load_iris().feature_names
    pd.DataFrame(x[test_rows], columns=names).to_csv(workdir / "in.csv", index=False)
    result = cli("predict", bundle, "--input", workdir / "in.csv", "--engine", "native")
    assert result.exit_code == 0, result.stderr
    labels = [int(v) for v in result.stdout.split()[1:]]
    assert labels == want.argmax(axis=1).tolist()
    # Each fold model's refit recipe is its own fold's: seed + k, its best epoch or rounds.
    for (kind, number), folds in by_trial.items():
        attrs = studies[kind].trials[number].user_attrs
        stops = attrs["fold_best_epochs"] if kind == "nn" else attrs["fold_rounds_used"]
        for k, m in enumerate(folds):
            recipe = m["refit"]
            assert recipe["seed"] == spec.seed + k
            assert (recipe["epochs"] - 1 if kind == "nn" else recipe["rounds"]) == stops[k]
    refit = sklearn.base.clone(model).fit(x, y)
    assert len(refit.members_) == 4 * K
    assert (refit.predict(x[test_rows]) == y[test_rows]).mean() > 0.8


def test_onnx_averages_the_fold_models_in_the_graph(write_spec, workdir: Path, cli) -> None:
    from hpo.ensemble.onnx_runtime import OnnxEnsemble

    bundle = tune_and_export(write_spec(KFOLD), "iris", workdir)
    storage = ["--storage", f"sqlite:///{workdir / 'hpo.db'}", "--artifacts", str(workdir / "art")]
    onnx_out = workdir / "onnx"
    result = cli("export", "iris", "--out", onnx_out, "--format", "onnx", *storage)
    assert result.exit_code == 0, result.stderr
    x = sklearn.datasets.load_iris().data[:40]
    native = hpo.load_ensemble(bundle).predict_proba(x)
    graph = OnnxEnsemble(onnx_out).predict_proba(x)
    assert np.allclose(native, graph, atol=1e-5)
    # K sub-graphs per member, as the manifest lists the fold models.
    manifest = json.loads((onnx_out / "manifest.json").read_text())
    folds = [m["fold"] for m in manifest["members"]]
    assert len(folds) % K == 0 and sorted(set(folds)) == list(range(K))


# --- small data --------------------------------------------------------------------------


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_small_data_is_not_pruned_large_data_is(write_spec, monkeypatch) -> None:
    import hpo.studies.study as study_module

    monkeypatch.setattr(study_module, "make_pruner", lambda spec, steps: _AlwaysPrune())
    space = {"n_estimators": 10}
    small_spec, small = _data(
        write_spec, {"name": "small", "data": {"name": "wine"}, "gbm": {"search_space": space}}
    )
    big_spec, big = _data(write_spec, {"name": "big", "gbm": {"search_space": space}})
    assert len(small.train.y) < PRUNE_MIN_ROWS <= len(big.train.y)
    assert not prunes(small) and prunes(big)
    storage, artifacts = open_storage(), open_artifacts()
    lines: list[str] = []
    kept = run_study(GBM, small_spec, small, storage, artifacts, n_trials=2, log=lines.append)
    assert [t.state for t in kept.trials] == [TrialState.COMPLETE] * 2
    assert lines == [
        f"small-gbm: no pruning: {len(small.train.y)} training rows (below {PRUNE_MIN_ROWS} "
        "a trial costs too little to be worth stopping early)"
    ]
    cut = run_study(GBM, big_spec, big, storage, artifacts, n_trials=2)
    assert [t.state for t in cut.trials] == [TrialState.PRUNED] * 2


def test_a_small_holdout_table_gets_the_kfold_hint(write_spec) -> None:
    spec, small = _data(write_spec, {"name": "small", "data": {"name": "wine"}})
    assert small_table_hint(spec, small) == (
        f"small: {len(small.val.y)} validation rows pick the best trials; on a table this "
        f"small, data.validation: {{kfold: 5}} scores each trial on all "
        f"{len(small.train.y) + len(small.val.y)} non-test rows and bags its fold models"
    )
    folded = _data(write_spec, {"data": {"name": "wine", "validation": {"kfold": 3}}})
    assert small_table_hint(*folded) is None
    assert small_table_hint(*_data(write_spec, {})) is None  # digits: 1,077 training rows


def test_an_ensemble_with_fewer_members_than_asked_says_so(write_spec, capsys) -> None:
    spec, data = _data(write_spec, {"pruner": "none", "gbm": {"trials": 1}})
    storage, artifacts = open_storage(), open_artifacts()
    studies = {"gbm": run_study(GBM, spec, data, storage, artifacts)}
    capsys.readouterr()
    build_ensemble(spec.name, studies, data, spec.ensemble, artifacts, spec.metric)
    assert (
        capsys.readouterr().err
        == "ensemble: 1 of 2 GBM members (1 of the study's trials completed)\n"
    )
    full = spec.ensemble.model_copy(update={"gbm_members": 1})
    build_ensemble(spec.name, studies, data, full, artifacts, spec.metric)
    assert capsys.readouterr().err == ""
