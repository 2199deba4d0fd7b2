"""The ensemble: greedy selection, the leaderboard of `hpo run` and `hpo ensemble`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
from typer.testing import Result

from hpo.ensemble.selection import average_weights, build_ensemble, greedy_weights
from hpo.models.metrics import validation_loss
from hpo.storage.backend import open_artifacts, open_storage
from hpo.storage.stored import StoredStudy

Y = np.array([0, 1, 2, 0, 1, 2, 0, 1])


def _onehot(labels: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    p = np.full((len(labels), 3), (1 - confidence) / 2)
    p[np.arange(len(labels)), labels] = confidence
    return p


def _score(p: np.ndarray) -> float:
    return validation_loss("multiclass", p, Y)


def test_greedy_gives_all_weight_to_a_member_that_cannot_be_improved() -> None:
    good = _onehot(Y)
    wrong = _onehot((Y + 1) % 3)
    weights, trajectory = greedy_weights([wrong, good, wrong], _score, rounds=10)
    np.testing.assert_array_equal(weights, [0.0, 1.0, 0.0])
    assert trajectory[0] == pytest.approx(_score(good))


def test_greedy_mixes_members_whose_errors_differ() -> None:
    # Each member is confidently wrong on a different half; their mean is right everywhere.
    a = _onehot(np.where(np.arange(8) < 4, Y, (Y + 1) % 3), 0.6)
    b = _onehot(np.where(np.arange(8) >= 4, Y, (Y + 2) % 3), 0.6)
    weights, trajectory = greedy_weights([a, b], _score, rounds=20)
    assert weights.sum() == pytest.approx(1.0)
    assert 0.3 < weights[0] < 0.7 and 0.3 < weights[1] < 0.7
    assert min(trajectory) < min(_score(a), _score(b))


def test_greedy_keeps_the_best_prefix_of_its_picks() -> None:
    good = _onehot(Y, 0.95)
    worse = _onehot(Y, 0.6)
    weights, trajectory = greedy_weights([worse, good], _score, rounds=5)
    # Adding the worse member never helps: the kept prefix is the first pick alone.
    np.testing.assert_array_equal(weights, [0.0, 1.0])
    assert min(trajectory) == trajectory[0]


def test_average_weights_are_uniform() -> None:
    np.testing.assert_allclose(average_weights(4), [0.25] * 4)


def _rows(result: Result) -> list[str]:
    return [line for line in result.stdout.splitlines() if "│" in line]


def test_run_ends_with_a_leaderboard_of_nn_gbm_and_ensemble_rows(
    write_spec: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    result = cli("run", write_spec(), "--quiet")
    assert result.exit_code == 0, result.output
    tail = result.stdout[result.stdout.index("ensemble leaderboard") :]
    assert "val accuracy" in tail and "test accuracy" in tail
    rows = [line.split("│")[1].strip() for line in tail.splitlines() if "│" in line]
    assert [r for r in rows if r.startswith("nn#")], rows
    assert [r for r in rows if r.startswith("gbm#")], rows
    assert "ensemble (average)" in rows
    assert "ensemble (greedy) *" in rows  # the spec's method, the one export writes

    # The same leaderboard is in the NN study's user attrs, in the report's contract.
    study = optuna.load_study(study_name="tiny-nn", storage="sqlite:///storage/hpo.db")
    gbm = optuna.load_study(study_name="tiny-gbm", storage="sqlite:///storage/hpo.db")
    board = study.user_attrs["ensemble"]
    assert board["method"] == "greedy" and board["metric"] == "accuracy"
    kinds = [r["kind"] for r in board["rows"]]
    assert kinds.count("nn") == 2 and kinds.count("gbm") == 2 and kinds.count("ensemble") == 2
    for row in board["rows"]:
        assert set(row) == {
            "name",
            "kind",
            "trial",
            "weight",
            "val_loss",
            "val_metric",
            "test_metric",
            "val_accuracy",
            "test_accuracy",
        }
        if row["kind"] == "ensemble":
            assert row["trial"] is None and row["weight"] is None
        else:
            assert row["name"] == f"{row['kind']}#{row['trial']}"
            assert 0.0 <= row["weight"] <= 1.0
            # Member rows repeat their trial's own metrics, recomputed from the saved model.
            trial = (study if row["kind"] == "nn" else gbm).trials[row["trial"]]
            assert row["val_metric"] == pytest.approx(trial.user_attrs["val_accuracy"])
            assert row["test_metric"] == pytest.approx(trial.user_attrs["test_accuracy"])
            if row["kind"] == "gbm":
                assert row["val_loss"] == pytest.approx(trial.value, rel=1e-4)
            else:  # the NN objective is the log loss at the best temperature: never above
                assert trial.value <= row["val_loss"] * (1 + 1e-4)
    member_weights = [r["weight"] for r in board["rows"] if r["kind"] != "ensemble"]
    assert sum(member_weights) == pytest.approx(1.0)


def test_ensemble_command_rebuilds_from_storage_with_overrides(
    write_spec: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    assert cli("run", write_spec(), "--quiet").exit_code == 0
    result = cli("ensemble", "tiny", "--method", "average", "--gbm-members", "1")
    assert result.exit_code == 0, result.output
    rows = [line.split("│")[1].strip() for line in _rows(result)]
    assert len([r for r in rows if r.startswith("gbm#")]) == 1
    assert "ensemble (average) *" in rows

    store = open_storage(must_exist=True)
    stored = StoredStudy.open("tiny-gbm", store)  # a full study name means its spec too
    board = stored.nn_study.user_attrs["ensemble"]
    assert board["method"] == "average"
    weights = [r["weight"] for r in board["rows"] if r["kind"] != "ensemble"]
    assert weights == pytest.approx([1 / 3] * 3)

    # Deterministic: building again from storage gives the same numbers.
    again = build_ensemble(
        "tiny",
        stored.studies,
        stored.data,
        stored.spec.ensemble.model_copy(update={"method": "average", "gbm_members": 1}),
        open_artifacts(),
        metric=stored.spec.metric,
    )
    assert again.leaderboard.to_json() == board


def test_ensemble_of_an_unknown_study_is_one_clear_error(
    write_spec: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    assert cli("run", write_spec(), "--quiet").exit_code == 0
    result = cli("ensemble", "nope")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: no study named 'nope' (studies here: tiny)"


def test_missing_artifacts_are_one_clear_error(
    write_spec: Callable[..., Path], cli: Callable[..., Result], workdir: Path
) -> None:
    assert cli("run", write_spec(), "--quiet").exit_code == 0
    result = cli("ensemble", "tiny", "--artifacts", str(workdir / "elsewhere"))
    assert result.exit_code == 1
    assert "is not in the artifact store" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
