"""Train one MLP from its spec: whole dataset on the device, shuffled index batches.

Shaped like an objective: every setting is an argument and the result is the metric.
No Optuna here; the caller's ``on_epoch`` reports and prunes.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from hpo.data.dataset import Dataset
from hpo.models.metrics import (
    MetricName,
    default_metric,
    recorded_metrics,
    scores,
    validation_loss,
)
from hpo.models.mlp import MLPSpec, build_mlp, heads_of
from hpo.spec import LRSchedule, Task

EVAL_CHUNK = 16384  # rows per forward pass at evaluation; bounds memory on big splits


class NonFiniteLoss(Exception):
    """Training diverged (NaN or inf loss); the trial should end as pruned."""

    def __init__(self, epoch: int, train_loss: float, val_loss: float) -> None:
        super().__init__(f"non-finite loss at epoch {epoch} (train {train_loss}, val {val_loss})")
        self.epoch = epoch


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainResult:
    model: nn.Module  # holds the weights of the best validation epoch
    val_loss: float
    metrics: dict[str, float]  # val_/test_<name> of hpo.models.metrics.recorded_metrics
    epochs_run: int
    best_epoch: int
    seconds: float
    device: str
    history: list[float] = field(default_factory=list)  # validation loss per epoch
    learning_rates: list[float] = field(default_factory=list)  # at the start of each epoch


def loss_function(
    task: str, label_smoothing: float = 0.0
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy for classes, binary cross-entropy for binary, MSE for regression.

    ``label_smoothing`` ε trains on soft targets: cross-entropy's own (1 - ε on the class,
    ε spread evenly over all classes), and for binary the 0/1 target moved to ε/2 and
    1 - ε/2, the same rule with two classes. Regression ignores it.
    """
    if task == "multiclass":
        if label_smoothing > 0:
            return functools.partial(nn.functional.cross_entropy, label_smoothing=label_smoothing)
        return nn.functional.cross_entropy

    def on_single_output(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        return lambda out, y: fn(out.squeeze(-1), y)

    if task == "binary":
        bce = nn.functional.binary_cross_entropy_with_logits
        if label_smoothing > 0:
            eps = label_smoothing
            return on_single_output(lambda out, y: bce(out, y * (1 - eps) + eps / 2))
        return on_single_output(bce)
    return on_single_output(nn.functional.mse_loss)


# Optimizers with a fused (one kernel for all parameters) implementation, and the device
# types it runs on (torch 2.13; NAdam and RMSprop have none). Fused Adam is 1.3x the
# per-parameter loop at batch 32 on CPU (issue 14); where there is none, PyTorch's own
# default applies (foreach on CUDA, the per-parameter loop on CPU).
FUSED_DEVICES: dict[str, tuple[str, ...]] = {
    "sgd": ("cpu", "cuda"),
    "momentum": ("cpu", "cuda"),
    "adam": ("cpu", "cuda"),
    "adamw": ("cpu", "cuda"),
    "adagrad": ("cpu",),
}


def make_optimizer(spec: MLPSpec, model: nn.Module, *, fast: bool = True) -> torch.optim.Optimizer:
    """The spec's optimizer over the model's parameters.

    The L2 penalty λ‖w‖² has gradient 2λw: that is coupled ``weight_decay = 2λ``,
    applied to weight matrices only (biases, norm and PReLU parameters are not penalized).
    ``adamw`` takes the same ``weight_decay = 2λ`` but decoupled (Loshchilov and Hutter):
    each step shrinks the weights by ``lr · 2λ · w`` directly, outside Adam's adaptive
    scaling, which is what plain SGD does with the coupled penalty. ``beta2`` is the
    second-moment decay of adam, adamw and nadam.

    ``fast`` picks the fused implementation where the optimizer has one on the model's
    device; ``fast=False`` is the plain per-parameter loop (``foreach=False``), the
    reference the fast one is tested against.
    """
    weights = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": weights, "weight_decay": 2 * spec.l2},
        {"params": others, "weight_decay": 0.0},
    ]
    device = next(model.parameters()).device.type
    impl: dict[str, Any] = {"foreach": False}
    if fast:
        impl = {"fused": True} if device in FUSED_DEVICES.get(spec.optimizer, ()) else {}
    lr, betas = spec.learning_rate, (0.9, spec.beta2)
    match spec.optimizer:
        case "sgd":
            return torch.optim.SGD(groups, lr=lr, **impl)
        case "momentum":
            return torch.optim.SGD(groups, lr=lr, momentum=0.9, **impl)
        case "rmsprop":
            return torch.optim.RMSprop(groups, lr=lr, **impl)
        case "adam":
            return torch.optim.Adam(groups, lr=lr, betas=betas, **impl)
        case "adamw":
            return torch.optim.AdamW(groups, lr=lr, betas=betas, **impl)
        case "nadam":
            return torch.optim.NAdam(groups, lr=lr, betas=betas, **impl)
        case "adagrad":
            return torch.optim.Adagrad(groups, lr=lr, **impl)
    raise ValueError(f"unknown optimizer {spec.optimizer}")


WARMUP_FRACTION = 0.05  # flat_cosine: linear warm-up over the first 5% of steps
FLAT_UNTIL = 0.5  # flat_cosine: full rate until half-way, as pytabkit's flat_cos
PLATEAU_FACTOR = 0.1  # plateau: the course's ReduceLROnPlateau(factor=0.1)


def lr_factor(schedule: LRSchedule, t: float) -> float:
    """The learning rate's multiplier at training progress ``t`` in [0, 1] (the fraction of
    ``epochs`` x steps per epoch done): cosine decays from 1 to 0; flat_cosine warms up
    linearly, holds 1, then decays like cosine over its last half (RealMLP's flat_cos
    with a warm-up). ``constant`` and ``plateau`` are 1 (plateau reacts to the loss)."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if schedule == "flat_cosine":
        if t < WARMUP_FRACTION:
            return (t + 1e-3) / (WARMUP_FRACTION + 1e-3)  # never exactly 0 at the first step
        if t < FLAT_UNTIL:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min((t - FLAT_UNTIL) / (1 - FLAT_UNTIL), 1.0)))
    return 1.0


def make_schedule(
    spec: MLPSpec, optimizer: torch.optim.Optimizer, *, epochs: int, steps: int, patience: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, ReduceLROnPlateau | None]:
    """``(per-batch scheduler, per-epoch plateau scheduler)``, either or both None.

    cosine and flat_cosine step after every batch (smooth even over few epochs) over
    ``epochs`` x ``steps`` steps, the most a trial may run: early stopping ends it on the way.
    plateau divides the rate by 10 when the validation loss has not improved for half the
    early-stopping patience, so that it acts before early stopping does.
    """
    if spec.lr_schedule in ("cosine", "flat_cosine"):
        total = max(1, epochs * steps)
        schedule = spec.lr_schedule
        return LambdaLR(optimizer, lambda step: lr_factor(schedule, step / total)), None
    if spec.lr_schedule == "plateau":
        return None, ReduceLROnPlateau(
            optimizer, mode="min", factor=PLATEAU_FACTOR, patience=max(1, patience // 2)
        )
    return None, None


def mean_of_head_losses(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of a k-head network (outputs ``(rows, k, outputs)``): the mean of its k
    losses, each head trained on its own (TabM), never the loss of the mean prediction.
    Each head's outputs become rows of their own, so any mean-reduced loss applies."""

    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if out.ndim == 3:
            out, y = out.flatten(0, 1), y.repeat_interleave(out.shape[1], dim=0)
        return loss_fn(out, y)

    return loss


def mean_of_heads(task: str, out: torch.Tensor) -> torch.Tensor:
    """Outputs of the heads' mean prediction, as one head would give them: the log of the
    mean probabilities for classes (softmax leaves them as they are), the logit of the mean
    probability for binary, the mean value for regression. One head's pass through."""
    if out.ndim == 2:
        return out
    log_k = math.log(out.shape[1])
    if task == "multiclass":
        return torch.logsumexp(torch.log_softmax(out, dim=-1), dim=1) - log_k
    if task == "binary":
        log_p = torch.logsumexp(nn.functional.logsigmoid(out), dim=1) - log_k
        log_not_p = torch.logsumexp(nn.functional.logsigmoid(-out), dim=1) - log_k
        return log_p - log_not_p
    return out.mean(dim=1)


@torch.no_grad()
def predict_raw(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Network outputs (logits, or standardized regression values) in eval mode; a k-head
    network's are ``(rows, k, outputs)``."""
    model.eval()
    chunk = max(1, EVAL_CHUNK // heads_of(model))  # k heads run k rows per input row
    return torch.cat([model(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def _validation_loss(task: str, out: torch.Tensor, y: torch.Tensor, y_std: float) -> torch.Tensor:
    """The study's objective as a device tensor, so the caller syncs once: log loss at the
    best temperature for classes (:func:`calibrated_log_loss`), RMSE in target units for
    regression (a monotone function of the standardized MSE it trains on, on the GBM
    study's scale). Of the heads' mean prediction, the one that is scored and predicted."""
    if task == "regression":
        return loss_function(task)(mean_of_heads(task, out), y).sqrt() * y_std
    return calibrated_log_loss(task, mean_of_heads(task, out), y)


TEMPERATURE_RANGE = (0.25, 4.0)  # logit scales tried: wider lets a perfect split score ~0
NEWTON_STEPS = 8  # the loss is convex in the scale: a few steps from 1 settle it


def calibrated_log_loss(task: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Log loss of ``logits`` scaled by the factor in :data:`TEMPERATURE_RANGE` that fits
    these rows best (temperature scaling, Guo et al. 2017), never above the raw log loss.

    Why the NN objective is this and not the raw log loss: label smoothing ε caps a
    network's confidence (at most 1 - ε + ε/C on a class), so its raw log loss carries a
    floor that says nothing of how well it ranks. On digits, RealMLP-TD's trial (ε 0.1) was
    the best of six on test and the worst on raw validation log loss, so the study never
    kept it. pytabkit picks RealMLP's best epoch by class error for this reason; one
    fitted scale keeps the loss smooth for pruning and TPE, and fair to every trial.
    """
    # Binary's one logit z is the two-class softmax of (0, z): one path for both tasks.
    z = torch.nn.functional.pad(logits, (1, 0)) if task == "binary" else logits
    picked = z.gather(1, y.long().unsqueeze(1)).squeeze(1)
    scale = torch.ones((), dtype=z.dtype, device=z.device)
    for _ in range(NEWTON_STEPS):  # d/ds and d2/ds2 of the log loss of s * z
        p = torch.softmax(scale * z, dim=-1)
        mean_z = (p * z).sum(-1)
        grad, curv = (mean_z - picked).mean(), ((p * z * z).sum(-1) - mean_z**2).mean()
        scale = (scale - grad / curv.clamp_min(1e-12)).clamp(*TEMPERATURE_RANGE)
    loss = loss_function(task)
    return torch.minimum(loss(scale * logits, y), loss(logits, y))


def calibrated_validation_loss(task: Task, pred: np.ndarray, y: np.ndarray) -> float:
    """:func:`_validation_loss` of predictions (probabilities, or values in target units)."""
    if task == "regression":
        return validation_loss(task, pred, y)
    log_p = torch.from_numpy(np.log(np.clip(pred, 1e-15, 1.0)))
    logits = log_p[:, 1:] - log_p[:, :1] if task == "binary" else log_p
    target = torch.from_numpy(y).to(torch.float64 if task == "binary" else torch.long)
    return float(calibrated_log_loss(task, logits, target))


def to_prediction(task: str, out: torch.Tensor, y_mean: float, y_std: float) -> np.ndarray:
    """Network outputs as members predict: class probabilities, or target-unit values; of a
    k-head network, the mean of its heads' probabilities or values (k=1: exactly one's)."""
    out = out.detach().double().cpu()
    if out.ndim == 2:
        out = out.unsqueeze(1)  # one head
    if task == "multiclass":
        return torch.softmax(out, dim=-1).mean(dim=1).numpy()
    if task == "binary":
        p = torch.sigmoid(out[..., 0]).mean(dim=1).numpy()
        return np.stack([1.0 - p, p], axis=1)
    return out[..., 0].mean(dim=1).numpy() * y_std + y_mean


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> torch.Tensor:
    """One pass over shuffled index batches of device tensors; returns the mean loss as a
    device tensor, so the caller decides when to synchronize. ``scheduler`` steps per batch."""
    model.train()
    n = len(x)
    perm = torch.randperm(n, device=x.device, generator=generator)
    running = torch.zeros((), device=x.device)
    steps = range(0, n - 1, batch_size)  # a last batch of one row is skipped: BatchNorm needs 2
    for s in steps:
        idx = perm[s : s + batch_size]
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        running += loss.detach()
    return running / len(steps)


@dataclass
class TrainingRun:
    """What one training run starts from: the seeded network, its optimizer, its loss and
    learning-rate schedules, and the generator that shuffles its batches."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    shuffle: torch.Generator
    per_batch: torch.optim.lr_scheduler.LRScheduler | None
    plateau: ReduceLROnPlateau | None


def start_training(
    spec: MLPSpec,
    task: str,
    *,
    n_inputs: int,
    n_outputs: int,
    embedding_sizes: Sequence[int],
    rows: int,
    seed: int,
    device: str,
    epochs: int,
    patience: int,
) -> TrainingRun:
    """The study's trainer and a refit (:mod:`hpo.models.refit`) start here alike, so that
    the same seed gives the same weights, batches, loss and schedule. A cosine runs over
    ``epochs`` x the batches of ``rows`` rows."""
    torch.manual_seed(seed)  # weights and dropout masks
    shuffle = torch.Generator(device=device).manual_seed(seed)
    model = build_mlp(spec, n_inputs, n_outputs, embedding_sizes).to(device)
    optimizer = make_optimizer(spec, model)
    loss_fn = mean_of_head_losses(loss_function(task, spec.label_smoothing))
    steps = len(range(0, rows - 1, spec.batch_size))  # batches per epoch, as train_epoch
    per_batch, plateau = make_schedule(
        spec, optimizer, epochs=epochs, steps=steps, patience=patience
    )
    return TrainingRun(model, optimizer, loss_fn, shuffle, per_batch, plateau)


def train_mlp(
    spec: MLPSpec,
    data: Dataset,
    *,
    epochs: int,
    patience: int,
    seed: int = 0,
    device: str | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    metric: MetricName | None = None,
) -> TrainResult:
    """Train with early stopping on validation loss; returns the best epoch's model.

    Early stopping ends training ``patience`` epochs after the best one, except under
    flat_cosine, which runs all ``epochs`` (pruning, outside, may still stop it).

    The validation loss (``on_epoch``'s value, ``val_loss``, ``history``) is log loss for
    classes and RMSE in target units for regression; ``metrics`` holds the task's default
    metrics and ``metric`` (see :func:`hpo.models.metrics.recorded_metrics`) on val and test.

    Raises:
        NonFiniteLoss: when the training or validation loss stops being finite.
    """
    device = device or pick_device()
    t = data.tensors(device)
    x, y = t["train_x"], t["train_y"]
    run = start_training(
        spec,
        data.task,
        n_inputs=data.n_features,
        n_outputs=data.n_outputs,
        embedding_sizes=data.embedding_sizes,
        rows=len(x),
        seed=seed,
        device=device,
        epochs=epochs,
        patience=patience,
    )
    model, optimizer, loss_fn = run.model, run.optimizer, run.loss_fn
    shuffle, per_batch, plateau = run.shuffle, run.per_batch, run.plateau

    start_time = time.perf_counter()
    best_loss, best_epoch, best_state = math.inf, -1, None
    # flat_cosine is RealMLP's schedule, trained as RealMLP trains it: every epoch, the best
    # kept. Stopped early, RealMLP-TD's trial on diamonds ended in the flat half at RMSE 574;
    # through the decay it reached 535, as pytabkit's own (README, "Tables").
    stops_early = spec.lr_schedule != "flat_cosine"
    history: list[float] = []
    learning_rates: list[float] = []
    epoch = 0
    for epoch in range(epochs):
        learning_rates.append(float(optimizer.param_groups[0]["lr"]))
        running = train_epoch(model, optimizer, loss_fn, x, y, spec.batch_size, shuffle, per_batch)
        val = _validation_loss(data.task, predict_raw(model, t["val_x"]), t["val_y"], data.y_std)
        train_loss, val_loss = torch.stack([running, val]).tolist()  # one sync per epoch
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise NonFiniteLoss(epoch, train_loss, val_loss)
        history.append(val_loss)
        if plateau is not None:
            plateau.step(val_loss)
        if on_epoch is not None:
            on_epoch(epoch, val_loss)
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif stops_early and epoch - best_epoch >= patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    seconds = time.perf_counter() - start_time

    names = recorded_metrics(data.task, metric or default_metric(data.task))
    metrics: dict[str, float] = {}
    for part in ("val", "test"):
        out = predict_raw(model, t[f"{part}_x"])
        pred = to_prediction(data.task, out, data.y_mean, data.y_std)
        metrics |= scores(names, part, pred, getattr(data, part).y)
    return TrainResult(
        model,
        best_loss,
        metrics,
        epoch + 1,
        best_epoch,
        seconds,
        device,
        history,
        learning_rates,
    )
