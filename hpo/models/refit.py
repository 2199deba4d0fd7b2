"""Train a member again from its recorded hyperparameters, on given arrays.

No validation split, no early stopping, no Optuna: an MLP trains for the epoch count its
trial found best, a booster for the rounds its trial kept. An exported estimator's
``fit(X, y)`` (so that ``clone`` plus ``fit`` in cross-validation is honest) and k-fold
bagging both train members this way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xgboost as xgb
from torch import nn

from hpo.models.members import n_outputs
from hpo.models.mlp import MLPSpec
from hpo.models.train import NonFiniteLoss, pick_device, start_training, train_epoch
from hpo.spec import Task


def fit_mlp(
    spec: MLPSpec,
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: Task,
    n_classes: int,
    epochs: int,
    seed: int,
    embedding_sizes: Sequence[int] = (),
    device: str | None = None,
    schedule_epochs: int | None = None,
    learning_rates: Sequence[float] | None = None,
) -> nn.Module:
    """The network of ``spec`` trained ``epochs`` epochs on all of ``x``; on the CPU, in eval mode.

    ``y`` is the class index (multiclass), 0/1 (binary) or the standardized target
    (regression), as :meth:`hpo.data.dataset.Dataset.tensors` feeds the study's trainer.
    The same seed gives the same initial weights, dropout masks and batch order as there.
    A cosine or flat_cosine schedule runs over ``schedule_epochs`` (the study's ``nn.epochs``,
    as in the trial, where early stopping cut it short); a plateau schedule, which needs a
    validation loss, replays the trial's ``learning_rates`` (one per epoch).

    Raises:
        NonFiniteLoss: the training loss stopped being finite.
    """
    device = device or pick_device()
    xt = torch.as_tensor(x, dtype=torch.float32).to(device)
    yt = torch.as_tensor(y, dtype=torch.int64 if task == "multiclass" else torch.float32)
    yt = yt.to(device)
    run = start_training(
        spec,
        task,
        n_inputs=x.shape[1],
        n_outputs=n_outputs(task, n_classes),
        embedding_sizes=embedding_sizes,
        rows=len(x),
        seed=seed,
        device=device,
        epochs=schedule_epochs or epochs,
        patience=1,  # unused: a plateau schedule is replayed from learning_rates below
    )
    model, optimizer = run.model, run.optimizer
    losses = []
    for epoch in range(epochs):
        if learning_rates and spec.lr_schedule == "plateau":
            for group in optimizer.param_groups:
                group["lr"] = learning_rates[min(epoch, len(learning_rates) - 1)]
        losses.append(
            train_epoch(
                model, optimizer, run.loss_fn, xt, yt, spec.batch_size, run.shuffle, run.per_batch
            )
        )
    history = torch.stack(losses).tolist()  # one sync, at the end
    for epoch, loss in enumerate(history):
        if not math.isfinite(loss):
            raise NonFiniteLoss(epoch, loss, math.nan)
    return model.cpu().eval()


def fit_booster(
    params: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    *,
    rounds: int,
    feature_types: list[str] | None = None,
) -> xgb.Booster:
    """A booster of ``params`` (:func:`hpo.studies.gbm.xgb_params`) boosted ``rounds`` rounds
    on all of ``x`` (XGBoost's view: NaN and native categories where ``feature_types`` says).
    """
    train = xgb.QuantileDMatrix(
        x,
        y,
        max_bin=params.get("max_bin", 256),  # binned as the study binned it
        feature_types=feature_types,
        enable_categorical=feature_types is not None,
    )
    return xgb.train(params, train, num_boost_round=rounds, verbose_eval=False)
