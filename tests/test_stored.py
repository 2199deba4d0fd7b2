"""The contract with storage (hpo.storage.stored): names, reading a study back, the typed
leaderboard, trial counts, and model files old and new."""

from __future__ import annotations

import io
import math

import optuna
import pytest
import safetensors.torch
import torch

from hpo.ensemble.selection import read_weights
from hpo.errors import HpoError
from hpo.spec import load_spec
from hpo.storage.backend import open_storage
from hpo.storage.stored import (
    LEADERBOARD,
    SPEC,
    Leaderboard,
    StoredStudy,
    archive_name,
    count_trials,
    split_name,
    study_kind,
    study_name,
)

BOARD = {
    "method": "greedy",
    "metric": "accuracy",
    "higher_is_better": True,
    "loss": "log_loss",
    "baseline": {"name": "majority class", "val_loss": 2.3, "val_metric": 0.1},
    "rows": [
        {"name": "nn#2", "kind": "nn", "trial": 2, "weight": 0.5, "val_loss": 0.21,
         "val_metric": 0.941, "test_metric": 0.936, "val_roc_auc": 0.99},
        {"name": "gbm#3", "kind": "gbm", "trial": 3, "weight": 0.5, "val_loss": math.nan,
         "val_metric": math.nan, "test_metric": 0.947},
        {"name": "ensemble (average)", "kind": "ensemble", "trial": None, "weight": None,
         "val_loss": 0.19, "val_metric": 0.95, "test_metric": 0.955},
        {"name": "ensemble (greedy)", "kind": "ensemble", "trial": None, "weight": None,
         "val_loss": 0.18, "val_metric": 0.952, "test_metric": 0.958},
    ],
    "left_out": {"tiny-nn": 1, "tiny-gbm": 0},
}  # fmt: skip


def test_names_round_trip() -> None:
    assert study_name("digits", "nn") == "digits-nn"
    assert split_name("digits-gbm") == ("digits", "gbm")
    assert split_name("digits") == ("digits", None)
    archived = archive_name("digits", "20260101-120000", "nn")
    assert archived == "digits@20260101-120000-nn"
    assert split_name(archived) == ("digits@20260101-120000", "nn")


def test_the_leaderboard_survives_the_user_attr_round_trip() -> None:
    storage = open_storage()
    study = optuna.create_study(study_name="tiny-nn", storage=storage)
    board = Leaderboard.model_validate(BOARD)
    study.set_user_attr(LEADERBOARD, board.to_json())
    back = Leaderboard.from_json(
        optuna.load_study(study_name="tiny-nn", storage=storage).user_attrs[LEADERBOARD]
    )
    assert back is not None
    assert back.rows[0].score("val_roc_auc") == 0.99 and back.rows[1].score("val_roc_auc") is None
    assert math.isnan(back.rows[1].val_metric)  # NaN stays NaN, not null
    assert (
        back.ensemble_row().test_metric == 0.958 and back.ensemble_row("average").val_loss == 0.19
    )
    assert back.left_out == {"tiny-nn": 1, "tiny-gbm": 0}
    assert back.to_json()["rows"][0] == BOARD["rows"][0]  # flat rows, extras included


def test_an_older_leaderboard_reads_with_its_metric_direction() -> None:
    old = {k: v for k, v in BOARD.items() if k not in ("higher_is_better", "loss", "baseline")}
    board = Leaderboard.from_json(old | {"metric": "rmse"})
    assert board is not None and board.higher_is_better is False and board.loss == "loss"
    assert Leaderboard.from_json({"rows": "nonsense"}) is None


def _studies(write_spec, *names: str) -> optuna.storages.BaseStorage:
    storage = open_storage()
    spec, _ = load_spec(write_spec())
    for name in names:
        study = optuna.create_study(study_name=name, storage=storage)
        study.set_user_attr(SPEC, spec.model_dump(mode="json"))
    return storage


def test_a_spec_name_a_study_name_and_an_archive_each_resolve(write_spec) -> None:
    storage = _studies(write_spec, "tiny-nn", "tiny-gbm", "tiny@20260101-120000-nn")
    whole = StoredStudy.open("tiny", storage)
    assert whole.name == "tiny" and [s.study_name for s in whole.selected] == [
        "tiny-nn",
        "tiny-gbm",
    ]
    one = StoredStudy.open("tiny-gbm", storage)
    assert [s.study_name for s in one.selected] == ["tiny-gbm"]
    assert one.nn_study.study_name == "tiny-nn"  # its spec's other studies come along
    assert one.spec.name == "tiny" and study_kind(one.selected[0]) == "gbm"
    archived = StoredStudy.open("tiny@20260101-120000", storage)
    assert list(archived.studies) == ["nn"]


def test_an_unknown_name_lists_spec_names_and_suggests_the_closest(write_spec) -> None:
    storage = _studies(write_spec, "digits-nn", "digits-gbm", "iris-nn")
    with pytest.raises(HpoError) as e:
        StoredStudy.open("digit", storage)
    assert str(e.value) == (
        "no study named 'digit' (studies here: digits, iris; did you mean digits?)"
    )


def test_a_study_without_a_readable_spec_is_one_clear_error() -> None:
    storage = open_storage()
    optuna.create_study(study_name="x-nn", storage=storage)
    with pytest.raises(HpoError, match="x-nn: its stored spec is missing or unreadable"):
        _ = StoredStudy.open("x", storage).spec


def test_counts_split_finished_into_complete_and_pruned() -> None:
    storage = open_storage()
    assert count_trials(storage, "none-nn").finished == 0  # not made yet: zeros
    study = optuna.create_study(study_name="c-nn", storage=storage)

    def objective(trial: optuna.Trial) -> float:
        if trial.number % 3 == 2:
            raise optuna.TrialPruned
        return float(trial.number)

    study.optimize(objective, n_trials=6)
    study.ask()  # one left RUNNING
    counts = count_trials(storage, "c-nn")
    assert (counts.complete, counts.pruned, counts.running) == (4, 2, 1)
    assert counts.finished == 6 and counts.best == 0.0


def test_model_weights_read_as_safetensors_and_as_older_torch_files() -> None:
    state = {"0.weight": torch.arange(6.0).reshape(2, 3), "0.bias": torch.zeros(2)}
    new = read_weights(safetensors.torch.save(state), "safetensors")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    old = read_weights(buffer.getvalue(), None)  # a .pt artifact of a study made before
    for loaded in (new, old):
        assert set(loaded) == set(state)
        assert all(torch.equal(loaded[k], state[k]) for k in state)
