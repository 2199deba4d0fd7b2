"""Ensemble members: one trained model each, predicting from its own preprocessed view
(the MLP's matrix or XGBoost's, see :mod:`hpo.data.preprocess`).

The in-study ensemble (models read from the artifact store) and a loaded bundle (models
read from its files) both predict through these classes, so they agree to rounding.

A prediction is, for classification, an ``(n, n_classes)`` float64 array of class
probabilities (binary included: ``[1 - p, p]``), and for regression an ``(n,)`` float64
array in the target's own units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import safetensors
import torch
import xgboost as xgb

from hpo.models.mlp import MLPSpec, build_mlp
from hpo.models.train import predict_raw, to_prediction
from hpo.spec import Task

# What a damaged or foreign model file raises while a member is built from it.
MODEL_ERRORS = (
    RuntimeError,
    ValueError,
    KeyError,
    TypeError,
    safetensors.SafetensorError,
    xgb.core.XGBoostError,
)

MemberKind = Literal["nn", "gbm"]


def n_outputs(task: Task, n_classes: int) -> int:
    """The network's last-layer width: one logit for binary and regression."""
    return n_classes if task == "multiclass" else 1


@dataclass(frozen=True)
class NNMember:
    """An MLP on the CPU, in eval mode; regression outputs are de-standardized."""

    trial: int
    mlp_spec: MLPSpec
    model: torch.nn.Module
    task: Task
    y_mean: float = 0.0
    y_std: float = 1.0
    kind: MemberKind = "nn"

    @classmethod
    def from_state_dict(
        cls,
        trial: int,
        mlp_spec: MLPSpec,
        state: dict[str, torch.Tensor],
        *,
        task: Task,
        n_features: int,
        n_classes: int,
        y_mean: float = 0.0,
        y_std: float = 1.0,
        embedding_sizes: Sequence[int] = (),
    ) -> NNMember:
        """Build the network from its spec and load the weights (strict: every key must fit).

        Raises:
            RuntimeError, ValueError: the weights do not fit the spec's network.
        """
        model = build_mlp(mlp_spec, n_features, n_outputs(task, n_classes), embedding_sizes)
        model.load_state_dict(state, strict=True)
        model.eval()
        return cls(trial, mlp_spec, model, task, y_mean, y_std)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = predict_raw(self.model, torch.as_tensor(x, dtype=torch.float32))
        return to_prediction(self.task, out, self.y_mean, self.y_std)


@dataclass(frozen=True)
class GBMMember:
    """An XGBoost booster cut to its best iteration, so that every tree it holds is used."""

    trial: int
    booster: xgb.Booster
    task: Task
    kind: MemberKind = "gbm"

    @classmethod
    def from_bytes(cls, trial: int, raw: bytes, *, task: Task) -> GBMMember:
        """Load a JSON or UBJSON model (XGBoost tells them apart by their first byte).

        Raises:
            xgboost.core.XGBoostError: not an XGBoost model.
        """
        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        # Prediction runs where the data is (numpy, CPU), whatever device trained it.
        booster.set_param({"device": "cpu"})
        return cls(trial, booster, task)

    def to_bytes(self) -> bytes:
        return bytes(self.booster.save_raw("ubj"))

    def predict(self, x: np.ndarray) -> np.ndarray:
        p = np.asarray(self.booster.inplace_predict(np.asarray(x, dtype=np.float32)), np.float64)
        if self.task == "binary":
            return np.stack([1.0 - p, p], axis=1)
        return p


Member = NNMember | GBMMember


def combine(predictions: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """The weighted sum of member predictions (weights sum to one)."""
    total = np.zeros_like(predictions[0])
    for p, w in zip(predictions, weights, strict=True):
        if w:
            total += w * p
    return total


def state_shapes(
    spec: MLPSpec, n_features: int, n_out: int, embedding_sizes: Sequence[int] = ()
) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in the network's state dict, without allocating it.

    The network is built on PyTorch's meta device: modules and shapes, no memory, so a
    declared width can be checked against stored weights before anything is allocated.
    """
    with torch.device("meta"):
        model = build_mlp(spec, n_features, n_out, embedding_sizes)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}
