"""Per-feature scaling of numeric columns, fitted on the training split only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hpo.spec import Scaling


@dataclass(frozen=True)
class Scaler:
    """``x' = (x - offset) / scale`` per feature; fitted on the training split only."""

    kind: Scaling
    offset: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, kind: Scaling, x: np.ndarray) -> Scaler:
        lo, hi = x.min(axis=0), x.max(axis=0)
        if kind == "minmax":  # to [0, 1]
            offset, scale = lo, hi - lo
        elif kind == "minmax_symmetric":  # to [-1, 1]
            offset, scale = (hi + lo) / 2, (hi - lo) / 2
        elif kind == "standard":
            offset, scale = x.mean(axis=0), x.std(axis=0)
        else:
            offset, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
        # A constant feature (an always-black MNIST corner) is shifted, not divided by zero.
        scale = np.where(scale > 0, scale, 1.0)
        return cls(kind, offset.astype(np.float32), scale.astype(np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x.astype(np.float32) - self.offset) / self.scale).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        return cls(
            d["kind"], np.asarray(d["offset"], np.float32), np.asarray(d["scale"], np.float32)
        )
