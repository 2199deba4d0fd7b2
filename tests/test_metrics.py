"""One scale per task: metrics by hand, objectives in the same units, ROC AUC, `metric:`,
and useless runs refused."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
from typer.testing import Result

import hpo
from hpo.ensemble.selection import greedy_weights, load_member
from hpo.models.metrics import (
    constant_prediction,
    recorded_metrics,
    score,
    selection_key,
    validation_loss,
)
from hpo.models.train import calibrated_validation_loss
from hpo.storage.backend import open_artifacts, open_storage
from hpo.storage.stored import StoredStudy

STORAGE = "sqlite:///storage/hpo.db"


def _binary(p: list[float]) -> np.ndarray:
    p1 = np.array(p)
    return np.stack([1 - p1, p1], axis=1)


# --- each metric against a hand computation ------------------------------------------------

Y2 = np.array([0, 0, 1, 1])
P2 = _binary([0.2, 0.6, 0.4, 0.9])  # predicts 0, 1, 0, 1: one false positive, one miss


def test_classification_metrics_by_hand() -> None:
    assert score("accuracy", P2, Y2) == pytest.approx(2 / 4)
    # Recall 1/2 for each class.
    assert score("balanced_accuracy", P2, Y2) == pytest.approx(0.5)
    # Precision 1/2, recall 1/2 for the positive class.
    assert score("f1", P2, Y2) == pytest.approx(0.5)
    # Positive scores {0.4, 0.9} against negative {0.2, 0.6}: 3 of 4 pairs ordered right.
    assert score("roc_auc", P2, Y2) == pytest.approx(3 / 4)
    expected = -np.mean(np.log([0.8, 0.4, 0.4, 0.9]))
    assert score("log_loss", P2, Y2) == pytest.approx(expected)
    assert validation_loss("binary", P2, Y2) == pytest.approx(expected)


def test_multiclass_metrics_by_hand() -> None:
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6], [0.1, 0.5, 0.4]])
    assert score("accuracy", p, y) == pytest.approx(2 / 4)  # rows 0 and 2 right
    # Recalls: class 0 1/1, class 1 0/1, class 2 1/2.
    assert score("balanced_accuracy", p, y) == pytest.approx((1 + 0 + 0.5) / 3)
    # F1 per class: 0 -> 1, 1 -> 0 (one predicted, wrong), 2 -> P 1/2 R 1/2 = 1/2; macro.
    assert score("f1", p, y) == pytest.approx((1 + 0 + 0.5) / 3)
    assert score("log_loss", p, y) == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.6, 0.4])))
    # One-vs-rest, macro: class 0 separates perfectly (1); class 1: positive 0.3 against
    # {0.2, 0.2, 0.5}: 2/3; class 2: positives {0.6, 0.4} against {0.1, 0.6}: (1.5 + 1)/4.
    assert score("roc_auc", p, y) == pytest.approx((1 + 2 / 3 + 2.5 / 4) / 3)


def test_regression_metrics_by_hand() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 3.0, 3.0, 2.0])  # errors 0, 1, 0, -2
    assert score("rmse", pred, y) == pytest.approx(math.sqrt(5 / 4))
    assert validation_loss("regression", pred, y) == pytest.approx(math.sqrt(5 / 4))
    assert score("mae", pred, y) == pytest.approx(3 / 4)
    assert score("r2", pred, y) == pytest.approx(1 - 5 / 5)  # SS_res 5, SS_tot 5


def test_no_skill_predictions_are_the_majority_class_and_the_mean() -> None:
    train = np.array([1, 1, 1, 0])
    prior = constant_prediction("binary", train, 4, 2)
    np.testing.assert_allclose(prior, [[0.25, 0.75]] * 4)
    assert score("accuracy", prior, Y2) == pytest.approx(0.5)
    assert score("roc_auc", prior, Y2) == pytest.approx(0.5)
    mean = constant_prediction("regression", np.array([1.0, 2.0, 6.0]), 2, 0)
    np.testing.assert_allclose(mean, [3.0, 3.0])


def test_trials_record_default_metric_roc_auc_for_binary_and_the_chosen_one() -> None:
    assert recorded_metrics("multiclass", "accuracy") == ("accuracy",)
    assert recorded_metrics("binary", "f1") == ("accuracy", "roc_auc", "f1")
    assert recorded_metrics("regression", "mae") == ("rmse", "mae")


# --- the metric chooses what the greedy ensemble selects ------------------------------------

Y8 = np.array([0, 0, 0, 0, 1, 1, 1, 1])
# Thresholded well but ranked badly: accuracy 6/8, ROC AUC 15/16. (The mixes where the
# two ranks tie fall between greedy's weights k/n, so float rounding decides nothing.)
SHARP = _binary([0.1, 0.1, 0.1, 0.83, 0.9, 0.9, 0.9, 0.21])
# Ranked perfectly but all above 0.5: accuracy 4/8, ROC AUC 1.
RANKED = _binary([0.6, 0.6, 0.6, 0.6, 0.9, 0.9, 0.9, 0.9])


def test_metric_roc_auc_changes_what_greedy_selects() -> None:
    assert score("accuracy", SHARP, Y8) > score("accuracy", RANKED, Y8)
    assert score("roc_auc", SHARP, Y8) < score("roc_auc", RANKED, Y8)
    by_accuracy, _ = greedy_weights(
        [SHARP, RANKED], selection_key("binary", "accuracy", Y8), rounds=10
    )
    by_auc, trajectory = greedy_weights(
        [SHARP, RANKED], selection_key("binary", "roc_auc", Y8), rounds=10
    )
    # Each key starts from the member best on its own metric, and the weights differ.
    assert trajectory[0][0] == pytest.approx(-1.0)  # the ranked member alone: AUC 1
    assert not np.allclose(by_accuracy, by_auc)
    assert by_accuracy[0] > by_accuracy[1] and by_auc[1] > by_auc[0]
    mix_acc = by_accuracy[0] * SHARP + by_accuracy[1] * RANKED
    mix_auc = by_auc[0] * SHARP + by_auc[1] * RANKED
    assert score("roc_auc", mix_auc, Y8) == 1.0 > score("roc_auc", mix_acc, Y8)
    assert score("accuracy", mix_acc, Y8) == 7 / 8


def test_accuracy_ties_go_to_the_lower_validation_loss() -> None:
    # Same accuracy; the confident member has the lower log loss and is picked first.
    timid = _binary([0.4, 0.4, 0.4, 0.4, 0.6, 0.6, 0.6, 0.6])
    sure = _binary([0.1, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9])
    weights, _ = greedy_weights([timid, sure], selection_key("binary", "accuracy", Y8), 5)
    np.testing.assert_array_equal(weights, [0.0, 1.0])


# --- real runs ------------------------------------------------------------------------------

REGRESSION = {
    "name": "tiny",
    "task": "regression",
    "data": {"source": "sklearn", "name": "diabetes"},
}
BINARY = {"name": "tiny", "task": "binary", "data": {"source": "sklearn", "name": "breast_cancer"}}


def _completed(name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=STORAGE)
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def test_regression_studies_share_one_objective_in_target_units(
    write_spec: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    result = cli("run", write_spec(REGRESSION), "--quiet")
    assert result.exit_code == 0, result.output
    values = {}
    for kind in ("nn", "gbm"):
        study = optuna.load_study(study_name=f"tiny-{kind}", storage=STORAGE)
        assert study.metric_names == ["val_rmse"]  # the dashboard's name for the objective
        trials = _completed(f"tiny-{kind}")
        assert trials
        for trial in trials:
            # The objective is the RMSE of the saved model's predictions, in target units.
            assert trial.value == pytest.approx(trial.user_attrs["val_rmse"], rel=1e-3)
        values[kind] = min(t.value for t in trials)
    # Diabetes targets spread ~77 around ~152: both studies' RMSEs are tens, not fractions.
    assert 20 < values["nn"] < 200 and 20 < values["gbm"] < 200
    assert 0.25 < values["nn"] / values["gbm"] < 4
    assert "val_rmse" in result.stdout and "val rmse" in result.stdout
    assert "val loss" not in result.stdout


def test_binary_runs_record_and_show_roc_auc(
    write_spec: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    result = cli("run", write_spec(BINARY), "--quiet")
    assert result.exit_code == 0, result.output
    for kind in ("nn", "gbm"):
        trials = _completed(f"tiny-{kind}")
        for trial in trials:  # an untrained net may rank badly, but every trial has its AUC
            assert 0.0 <= trial.user_attrs["val_roc_auc"] <= 1.0
            assert 0.0 <= trial.user_attrs["test_roc_auc"] <= 1.0
        top = min(trials, key=lambda t: t.value)
        assert top.user_attrs["val_roc_auc"] > 0.9 and top.user_attrs["test_roc_auc"] > 0.9
        # Both objectives are the log loss of the saved model on validation: the NN's
        # binary cross-entropy (at its best temperature) and XGBoost's logloss.
        stored = StoredStudy.open("tiny", open_storage(must_exist=True))
        member = load_member(kind, top, f"tiny-{kind}", open_artifacts(), stored.data)
        pred = member.predict(stored.data.val.x)
        loss = calibrated_validation_loss if kind == "nn" else validation_loss
        assert loss("binary", pred, stored.data.val.y) == pytest.approx(top.value, rel=1e-3)
    board = optuna.load_study(study_name="tiny-nn", storage=STORAGE).user_attrs["ensemble"]
    assert board["metric"] == "accuracy" and board["loss"] == "log_loss"
    for row in board["rows"]:
        assert 0.9 < row["val_roc_auc"] <= 1.0 and 0.9 < row["test_roc_auc"] <= 1.0
    tail = result.stdout[result.stdout.index("ensemble leaderboard") :]
    assert "val roc_auc" in tail and "test roc_auc" in tail and "val log_loss" in tail
    best = cli("best", "tiny", "--json")
    assert best.exit_code == 0, best.output
    for summary in json.loads(best.stdout).values():
        assert summary["objective"] == "val_log_loss"
        assert {"val_accuracy", "val_roc_auc", "test_roc_auc"} <= set(summary["metrics"])


def test_metric_roc_auc_ranks_the_leaderboard(
    write_spec: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    result = cli("run", write_spec({**BINARY, "metric": "roc_auc"}), "--quiet")
    assert result.exit_code == 0, result.output
    board = optuna.load_study(study_name="tiny-nn", storage=STORAGE).user_attrs["ensemble"]
    assert board["metric"] == "roc_auc" and board["higher_is_better"] is True
    members = [r for r in board["rows"] if r["kind"] != "ensemble"]
    for row in board["rows"]:
        assert row["val_metric"] == row["val_roc_auc"]
    assert [r["val_metric"] for r in members] == sorted(
        (r["val_metric"] for r in members), reverse=True
    )
    tail = result.stdout[result.stdout.index("ensemble leaderboard") :]
    assert "val roc_auc" in tail and "no skill" in tail
    # The bundle's manifest names the metric its leaderboard was ranked by.
    exported = cli("export", "tiny", "--out", "bundle")
    assert exported.exit_code == 0, exported.output
    assert "test roc_auc" in exported.stderr
    manifest = json.loads(Path("bundle/manifest.json").read_text())
    assert manifest["metric"] == "roc_auc"
    assert hpo.load_ensemble("bundle").manifest_.metric == "roc_auc"


def test_a_metric_of_the_wrong_task_is_one_error(
    write_spec: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    result = cli("run", write_spec({**REGRESSION, "metric": "roc_auc"}), "--quiet")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {Path('spec.yaml').resolve()}: metric: 'roc_auc' does not score a "
        "regression task; choose one of rmse, mae, r2"
    ]


def test_a_study_whose_trials_all_end_without_a_value_fails_the_run(
    write_spec: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    # Every NN trial diverges at once and is pruned; the GBM study alone must not pass.
    space = {"optimizer": "sgd", "normalization": "none", "learning_rate": 1e6}
    result = cli("run", write_spec({"pruner": "none", "nn": {"search_space": space}}), "-q")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: tiny: tiny-nn: all 4 finished trials ended without a value (4 pruned, "
        "0 failed); no ensemble built (the trials stay in storage)"
    )
    assert len(optuna.load_study(study_name="tiny-nn", storage=STORAGE).trials) == 4
    exported = cli("export", "tiny", "--out", "bundle")
    assert exported.exit_code == 1
    assert exported.stderr.strip().startswith("Error: tiny: tiny-nn: all 4 finished trials")
    assert not Path("bundle").exists()


def test_a_run_no_better_than_the_majority_class_fails(
    write_spec: Callable[..., Path], cli: Callable[..., Result], workdir: Path
) -> None:
    # Noise features, labels 90/10 independent of them: nothing beats "always class 0".
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (rng.random(300) < 0.1).astype(int)
    lines = ["a,b,c,d,e,label"] + [
        ",".join(f"{v:.5f}" for v in row) + f",{label}" for row, label in zip(x, y, strict=True)
    ]
    (workdir / "noise.csv").write_text("\n".join(lines) + "\n")
    data = {"source": "csv", "path": "noise.csv", "target": "label", "name": None}
    result = cli("run", write_spec({"task": "binary", "data": data}), "--quiet")
    assert result.exit_code == 1
    errors = result.stderr.strip().splitlines()
    assert len([e for e in errors if e.startswith("Error:")]) == 1
    assert errors[-1].startswith("Error: tiny: the best model (")
    assert "is no better than predicting the majority class (0.9" in errors[-1]
    assert "ensemble leaderboard" not in result.stdout
    exported = cli("export", "tiny", "--out", "bundle")
    assert exported.exit_code == 1 and "no better than predicting" in exported.stderr
    assert not Path("bundle").exists()
