"""Per-feature scaling of numeric columns, fitted on the training split only.

Every kind is ``z = (x - offset) / scale`` per feature, then for

- ``robust``: RealMLP's (pytabkit's ``median_center``, ``robust_scale``, ``smooth_clip``):
  offset the median, scale the interquartile range (half the range where that is 0), then
  the smooth clip ``z / sqrt(1 + (z/3)²)``, near the identity around 0 and bounded by ±3;
- ``quantile``: to a standard normal, like scikit-learn's
  ``QuantileTransformer(output_distribution="normal")``, which fits the quantiles: the
  value is interpolated linearly between the normal scores of the training quantiles
  around it (offset 0, scale 1). scikit-learn interpolates the rank, then takes its normal
  score; both agree within the body of the data and differ only between the outermost
  quantiles (the 0.1% tails), where the linear form is what ONNX can compute too. A value
  many training rows share maps to the normal score of the middle of its ranks, also when
  it is the minimum (scikit-learn sends a tied minimum, like MNIST's zeros, to -5.2).

All parameters are plain numbers, so a bundle stores them as JSON (no pickle).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from hpo.spec import Scaling

CLIP = 3.0  # robust: pytabkit's smooth_clip_max_abs_value
N_QUANTILES = 1000  # quantile: scikit-learn's default n_quantiles
SCALINGS: tuple[Scaling, ...] = Scaling.__args__  # type: ignore[attr-defined]
BOUNDS = 1e-7  # quantile: ranks are clipped to [BOUNDS, 1 - BOUNDS] (scikit-learn's) -> ±5.2


@dataclass(frozen=True)
class Scaler:
    """``x' = (x - offset) / scale`` per feature, then the kind's own step (see module)."""

    kind: Scaling
    offset: np.ndarray
    scale: np.ndarray
    # quantile only: [features, knots] training quantiles (non-decreasing per feature) and
    # [knots] their ranks in [0, 1]; normal_scores() gives the values they map to.
    quantiles: np.ndarray | None = None
    references: np.ndarray | None = None

    @classmethod
    def fit(cls, kind: Scaling, x: np.ndarray) -> Scaler:
        n = x.shape[1]
        lo, hi = x.min(axis=0), x.max(axis=0)
        quantiles = references = None
        if kind == "minmax":  # to [0, 1]
            offset, scale = lo, hi - lo
        elif kind == "minmax_symmetric":  # to [-1, 1]
            offset, scale = (hi + lo) / 2, (hi - lo) / 2
        elif kind == "standard":
            offset, scale = x.mean(axis=0), x.std(axis=0)
        elif kind == "robust":
            q25, offset, q75 = np.percentile(x, [25, 50, 75], axis=0)
            scale = np.where(q75 > q25, q75 - q25, (hi - lo) / 2)
        elif kind == "quantile":
            from sklearn.preprocessing import QuantileTransformer

            fitted = QuantileTransformer(
                n_quantiles=max(2, min(N_QUANTILES, len(x))), random_state=0
            ).fit(x)
            quantiles = np.ascontiguousarray(fitted.quantiles_.T, dtype=np.float32)
            references = fitted.references_.astype(np.float64)
            offset, scale = np.zeros(n), np.ones(n)
        else:
            offset, scale = np.zeros(n), np.ones(n)
        # A constant feature (an always-black MNIST corner) is shifted, not divided by zero.
        scale = np.where(scale > 0, scale, 1.0)
        return cls(kind, offset.astype(np.float32), scale.astype(np.float32), quantiles, references)

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = (x.astype(np.float32) - self.offset) / self.scale
        if self.kind == "robust":
            z = smooth_clip(z)
        elif self.kind == "quantile":
            z = self._to_normal(z)
        return z.astype(np.float32)

    @cached_property
    def normal_scores(self) -> np.ndarray:
        """quantile: ``[features, knots]`` float32, the standard-normal value of each knot.

        Where training quantiles tie (a value shared by many rows, like MNIST's zeros), all
        the tied knots map to the normal score of the middle rank of the tie, as
        scikit-learn's average of its forward and backward interpolation does.
        """
        from scipy.special import ndtri

        assert self.quantiles is not None and self.references is not None
        scores = np.empty(self.quantiles.shape, np.float64)
        for f, q in enumerate(self.quantiles):
            first = np.searchsorted(q, q, side="left")
            last = np.searchsorted(q, q, side="right") - 1
            middle = (self.references[first] + self.references[last]) / 2
            scores[f] = ndtri(np.clip(middle, BOUNDS, 1 - BOUNDS))
        return scores.astype(np.float32)

    def _to_normal(self, x: np.ndarray) -> np.ndarray:
        """Piecewise-linear between the knots, constant beyond the outermost ones; the same
        arithmetic as the ONNX graph (hpo.ensemble.onnx_export), in float32."""
        assert self.quantiles is not None
        scores, k = self.normal_scores, self.quantiles.shape[1]
        out = np.empty_like(x, dtype=np.float32)
        for f, (q, s) in enumerate(zip(self.quantiles, scores, strict=True)):
            # The last knot at or below x, kept one short of the end so that hi exists.
            i = np.clip(np.searchsorted(q, x[:, f], side="right") - 1, 0, k - 2)
            lo, hi = q[i], q[i + 1]
            width = np.where(hi > lo, hi - lo, np.float32(1))
            t = np.clip((x[:, f] - lo) / width, 0, 1)
            out[:, f] = s[i] + t * (s[i + 1] - s[i])
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "offset": self.offset.tolist(),
            "scale": self.scale.tolist(),
        }
        if self.quantiles is not None and self.references is not None:
            # float32's shortest text ("0.3", not 0.30000001192092896) reads back to the same
            # float32 and keeps a 784-feature table's 784,000 knots well under the bundle's
            # 16 MB manifest limit.
            d["quantiles"] = [[float(str(v)) for v in row] for row in self.quantiles]
            d["references"] = self.references.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        """Rebuild from :meth:`to_dict`'s output.

        Raises:
            ValueError, KeyError, TypeError: the dict is not a consistent scaler.
        """
        if d["kind"] not in SCALINGS:
            raise ValueError(f"unknown scaling {d['kind']!r}")
        scaler = cls(
            d["kind"], np.asarray(d["offset"], np.float32), np.asarray(d["scale"], np.float32)
        )
        if scaler.kind != "quantile":
            return scaler
        quantiles = np.asarray(d["quantiles"], np.float32)
        references = np.asarray(d["references"], np.float64)
        if quantiles.ndim != 2 or quantiles.shape[1] < 2 or references.shape != quantiles.shape[1:]:
            raise ValueError("quantiles must be [features, knots >= 2], references [knots]")
        if not (np.isfinite(quantiles).all() and (np.diff(quantiles, axis=1) >= 0).all()):
            raise ValueError("quantiles must be finite and non-decreasing")
        if not ((np.diff(references) > 0).all() and references[0] >= 0 and references[-1] <= 1):
            raise ValueError("references must increase within [0, 1]")
        return cls(scaler.kind, scaler.offset, scaler.scale, quantiles, references)


def smooth_clip(z: np.ndarray) -> np.ndarray:
    """RealMLP's ``x / sqrt(1 + (x / 3)²)``: about ``x`` near 0, tending to ±3."""
    return z / np.sqrt(1 + (z / np.float32(CLIP)) ** 2)
