"""The training options: optimizer implementation, adamw, beta2, schedules, label smoothing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hpo.data.dataset import load_dataset
from hpo.models.mlp import MLPSpec, build_mlp
from hpo.models.train import (
    FUSED_DEVICES,
    loss_function,
    lr_factor,
    make_optimizer,
    make_schedule,
    train_epoch,
    train_mlp,
)
from hpo.spec import DataSpec, NNSpace

PARAMS = {
    "depth": 1,
    "width": 32,
    "activation": "relu",
    "initializer": "he_normal",
    "normalization": "none",
    "dropout": 0.0,
    "l2": 1e-3,
    "learning_rate": 3e-3,
    "optimizer": "adam",
    "batch_size": 64,
}


def spec(**changes: object) -> MLPSpec:
    return MLPSpec.from_params({**PARAMS, **changes})


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataSpec(source="sklearn", name="digits"), "multiclass", Path("."), 0)


def test_old_params_load_as_todays_behaviour() -> None:
    old = spec()
    assert (old.beta2, old.lr_schedule, old.label_smoothing) == (0.999, "constant", 0.0)
    space = NNSpace()
    assert "adamw" not in space.optimizer and space.lr_schedule == ["constant"]
    assert (space.beta2.low, space.beta2.high) == (0.999, 0.999)
    assert (space.label_smoothing.low, space.label_smoothing.high) == (0.0, 0.0)
    new = spec(beta2=0.95, lr_schedule="flat_cosine", label_smoothing=0.1, optimizer="adamw")
    assert MLPSpec.from_dict(new.to_dict()) == new


def test_bad_ranges_are_refused() -> None:
    with pytest.raises(ValueError, match="beta2 must lie in"):
        NNSpace(beta2=1.0)
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        NNSpace(label_smoothing=1.0)


@pytest.mark.parametrize("name", ["adam", "adamw", "nadam"])
def test_beta2_reaches_the_optimizer(name: str) -> None:
    optimizer = make_optimizer(spec(optimizer=name, beta2=0.95), build_mlp(spec(), 8, 3))
    assert all(g["betas"] == (0.9, 0.95) for g in optimizer.param_groups)


def test_adamw_decays_weights_apart_from_adam() -> None:
    """With the same gradients, AdamW shrinks the weights by lr·2λ·w outside the adaptive
    step, Adam adds 2λw to the gradient: the weights after one step differ."""
    torch.manual_seed(0)
    model = build_mlp(spec(), 8, 3)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    after = {}
    for name in ("adam", "adamw"):
        copy = build_mlp(spec(), 8, 3)
        copy.load_state_dict(model.state_dict())
        optimizer = make_optimizer(spec(optimizer=name, l2=0.05, learning_rate=0.1), copy)
        assert type(optimizer).__name__ == {"adam": "Adam", "adamw": "AdamW"}[name]
        torch.nn.functional.cross_entropy(copy(x), y).backward()
        optimizer.step()
        after[name] = copy[0].weight.detach().clone()
    start = model[0].weight.detach()
    assert not torch.allclose(after["adam"], after["adamw"])
    # AdamW's first step: Adam's unit step on the raw gradient, plus the shrink lr·2λ·w.
    shrink = (start - after["adamw"]).abs() - (start - after["adam"]).abs()
    assert shrink.abs().max() > 1e-4


@pytest.mark.parametrize("name", sorted(FUSED_DEVICES))
def test_fast_optimizer_is_fused_and_agrees_with_the_plain_loop(digits, name: str) -> None:
    t = digits.tensors("cpu")
    losses = {}
    for fast in (True, False):
        torch.manual_seed(0)
        model = build_mlp(spec(optimizer=name), digits.n_features, digits.n_outputs)
        optimizer = make_optimizer(spec(optimizer=name), model, fast=fast)
        assert bool(optimizer.defaults.get("fused")) is fast
        g = torch.Generator().manual_seed(0)
        loss_fn = loss_function("multiclass")
        for _ in range(3):
            train_epoch(model, optimizer, loss_fn, t["train_x"], t["train_y"], 64, g)
        with torch.no_grad():
            losses[fast] = float(loss_fn(model.eval()(t["val_x"]), t["val_y"]))
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_schedule_factors() -> None:
    assert [lr_factor("cosine", t) for t in (0, 0.5, 1)] == pytest.approx([1, 0.5, 0])
    flat = [lr_factor("flat_cosine", t) for t in (0, 0.025, 0.05, 0.3, 0.5, 0.75, 1)]
    assert flat[0] < 0.05 and 0.4 < flat[1] < 0.6
    assert flat[2:] == pytest.approx([1, 1, 1, 0.5, 0])
    assert lr_factor("constant", 0.7) == lr_factor("plateau", 0.7) == 1.0


@pytest.mark.parametrize("schedule", ["constant", "cosine", "flat_cosine"])
def test_learning_rate_at_each_epoch(digits, schedule: str) -> None:
    """Stepped per batch: epoch e starts at progress e / epochs of the whole budget."""
    epochs = 4
    result = train_mlp(spec(lr_schedule=schedule), digits, epochs=epochs, patience=10, device="cpu")
    expected = [3e-3 * lr_factor(schedule, e / epochs) for e in range(epochs)]  # type: ignore[arg-type]
    assert result.learning_rates == pytest.approx(expected)
    lrs = result.learning_rates
    if schedule == "cosine":
        assert lrs[0] == pytest.approx(3e-3) and lrs[0] > lrs[2] > lrs[3]
    if schedule == "flat_cosine":  # warm-up, flat, decay
        assert lrs[0] < 1e-4 and lrs[1] == lrs[2] == pytest.approx(3e-3) and lrs[3] < 3e-3


def test_plateau_divides_the_rate_after_half_the_patience() -> None:
    model = build_mlp(spec(), 8, 3)
    optimizer = make_optimizer(spec(lr_schedule="plateau"), model)
    per_batch, plateau = make_schedule(
        spec(lr_schedule="plateau"), optimizer, epochs=10, steps=5, patience=4
    )
    assert per_batch is None and plateau is not None
    lrs = []
    for val_loss in (1.0, 0.9, 0.95, 0.95, 0.95, 0.95):
        plateau.step(val_loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    # patience 4 // 2 = 2 epochs without improvement are tolerated; the third cuts the rate.
    assert lrs == pytest.approx([3e-3, 3e-3, 3e-3, 3e-3, 3e-4, 3e-4])


def test_plateau_in_training_lowers_the_rate_once_validation_stalls(digits) -> None:
    # A high rate overfits digits within a few epochs; the validation loss stalls.
    s = spec(lr_schedule="plateau", learning_rate=3e-2)
    result = train_mlp(s, digits, epochs=20, patience=6, device="cpu")
    assert result.learning_rates[0] == pytest.approx(3e-2)
    lowered = [e for e, lr in enumerate(result.learning_rates) if lr < 3e-2 * 0.5]
    assert lowered and lowered[0] > result.best_epoch


def test_label_smoothing_changes_the_training_loss() -> None:
    torch.manual_seed(0)
    logits, classes = torch.randn(32, 4), torch.randint(0, 4, (32,))
    plain, smooth = loss_function("multiclass"), loss_function("multiclass", 0.1)
    assert float(smooth(logits, classes)) != pytest.approx(float(plain(logits, classes)))
    logp = torch.log_softmax(logits, 1)
    manual = -(0.9 * logp.gather(1, classes[:, None]).squeeze(1) + 0.1 * logp.mean(1)).mean()
    assert float(smooth(logits, classes)) == pytest.approx(float(manual), rel=1e-5)

    out, y = torch.randn(32, 1), torch.randint(0, 2, (32,)).float()
    smooth_binary = loss_function("binary", 0.2)(out, y)
    p = torch.sigmoid(out[:, 0])
    soft = y * 0.8 + 0.1
    manual = -(soft * torch.log(p) + (1 - soft) * torch.log(1 - p)).mean()
    assert float(smooth_binary) == pytest.approx(float(manual), rel=1e-5)
    assert float(smooth_binary) != pytest.approx(float(loss_function("binary")(out, y)))
    assert float(loss_function("regression", 0.2)(out, y)) == float(
        loss_function("regression")(out, y)
    )


def test_label_smoothing_changes_training_not_the_validation_scale(digits) -> None:
    plain = train_mlp(spec(), digits, epochs=3, patience=5, device="cpu")
    smooth = train_mlp(spec(label_smoothing=0.2), digits, epochs=3, patience=5, device="cpu")
    assert plain.history != smooth.history
    # Both are the unsmoothed validation log loss: comparable across trials.
    assert all(math.isfinite(v) and v < 2.0 for v in smooth.history)
