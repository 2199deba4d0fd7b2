from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpo.data.dataset import load_dataset
from hpo.models.mlp import MLPSpec
from hpo.models.train import (
    TEMPERATURE_RANGE,
    NonFiniteLoss,
    calibrated_log_loss,
    calibrated_validation_loss,
    loss_function,
    train_mlp,
)
from hpo.spec import DataSpec

PARAMS = {
    "depth": 1,
    "width": 32,
    "activation": "relu",
    "initializer": "he_normal",
    "normalization": "batchnorm_after",
    "dropout": 0.1,
    "l2": 1e-5,
    "learning_rate": 3e-3,
    "optimizer": "adam",
    "batch_size": 64,
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataSpec(source="sklearn", name="digits"), "multiclass", Path("."), 0)


def test_training_learns_and_is_reproducible(digits) -> None:
    spec = MLPSpec.from_params(PARAMS)
    first = train_mlp(spec, digits, epochs=8, patience=3, seed=1, device="cpu")
    second = train_mlp(spec, digits, epochs=8, patience=3, seed=1, device="cpu")
    assert first.metrics["val_accuracy"] > 0.9
    assert first.history == second.history and first.metrics == second.metrics
    assert first.val_loss == min(first.history)  # the best epoch's model is the one returned


def test_early_stopping_stops(digits) -> None:
    # A learning rate this small barely moves, a patience of 1 ends it at the first stall;
    # a large rate overfits quickly. Either way fewer epochs run than allowed.
    spec = MLPSpec.from_params({**PARAMS, "learning_rate": 3e-2, "dropout": 0.0})
    result = train_mlp(spec, digits, epochs=60, patience=1, device="cpu")
    assert result.epochs_run < 60 and result.epochs_run == result.best_epoch + 2


def test_divergence_raises_non_finite(digits) -> None:
    spec = MLPSpec.from_params(
        {**PARAMS, "optimizer": "sgd", "learning_rate": 1e6, "normalization": "none"}
    )
    with pytest.raises(NonFiniteLoss, match="non-finite loss at epoch 0"):
        train_mlp(spec, digits, epochs=5, patience=3, device="cpu")


def test_each_task_trains() -> None:
    for name, task, metric in (
        ("diabetes", "regression", "val_rmse"),
        ("breast_cancer", "binary", "val_accuracy"),
    ):
        data = load_dataset(DataSpec(source="sklearn", name=name), task, Path("."), 0)
        result = train_mlp(MLPSpec.from_params(PARAMS), data, epochs=20, patience=5, device="cpu")
        assert metric in result.metrics
    assert result.metrics["val_accuracy"] > 0.9


def test_flat_cosine_runs_all_its_epochs(digits) -> None:
    # The same overfitting run as above stops within a few epochs at a constant rate; with
    # flat_cosine it trains to the end of its schedule, and the best epoch is kept.
    params = {**PARAMS, "learning_rate": 3e-2, "dropout": 0.0}
    constant = train_mlp(MLPSpec.from_params(params), digits, epochs=20, patience=1, device="cpu")
    flat = MLPSpec.from_params({**params, "lr_schedule": "flat_cosine"})
    result = train_mlp(flat, digits, epochs=20, patience=1, device="cpu")
    assert constant.epochs_run < 10
    assert result.epochs_run == 20 and result.best_epoch < 19
    assert result.val_loss == min(result.history)


@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_calibrated_log_loss_is_the_log_loss_at_the_best_scale(task: str) -> None:
    gen = torch.Generator().manual_seed(0)
    n, c = 200, 4 if task == "multiclass" else 1
    logits = torch.randn(n, c, generator=gen)
    y = torch.randint(0, max(c, 2), (n,), generator=gen)
    target = y.float() if task == "binary" else y
    if task == "binary":
        logits[:, 0] = 2 * logits[:, 0] + 4 * (2 * target - 1)  # best scale inside 0.5..2
    else:
        logits[torch.arange(n), y] += 2  # best scale inside 0.5..2
    loss = loss_function(task)
    grid = torch.linspace(*TEMPERATURE_RANGE, 4000)
    best = min(float(loss(s * logits, target)) for s in grid)
    got = float(calibrated_log_loss(task, logits, target))
    assert got == pytest.approx(best, abs=1e-5)
    assert got < float(loss(logits, target))  # these logits are not at their best scale
    # A smoothed network's shrunken logits score as the network does (the point of it).
    assert float(calibrated_log_loss(task, logits / 2, target)) == pytest.approx(got, abs=1e-5)


def test_calibrated_loss_of_probabilities_matches_that_of_logits() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(100, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (100,), generator=gen)
    probs = torch.softmax(logits, dim=-1).numpy()
    from_probs = calibrated_validation_loss("multiclass", probs, y.numpy())
    assert from_probs == pytest.approx(float(calibrated_log_loss("multiclass", logits, y)))
    p1 = torch.sigmoid(logits[:, :1])
    binary = torch.cat([1 - p1, p1], dim=1).numpy()
    yb = (y > 0).double()
    from_binary = calibrated_validation_loss("binary", binary, yb.numpy())
    expected = float(calibrated_log_loss("binary", logits[:, :1], yb))
    assert from_binary == pytest.approx(expected)
