"""The input scalings robust and quantile: the statistics of the columns they make, their
JSON, and their ONNX graph against the NumPy transform."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper
from scipy.special import ndtri
from scipy.stats import skew
from sklearn.preprocessing import QuantileTransformer

from hpo.data.preprocess import Preprocessor
from hpo.data.scaler import CLIP, Scaler, smooth_clip
from hpo.ensemble.onnx_export import INPUT, _Graph, _preprocessing


def skewed(n: int = 2000, seed: int = 0) -> np.ndarray:
    """A log-normal column, one with far outliers, one with half its rows 0 (an IQR of 0
    in the next), and a constant one."""
    rng = np.random.default_rng(seed)
    lognormal = rng.lognormal(0.0, 1.0, n)
    outliers = rng.normal(size=n)
    outliers[:10] = 1e4
    zeros = np.where(rng.random(n) < 0.5, 0.0, rng.exponential(5.0, n))
    spiky = np.where(rng.random(n) < 0.8, 1.0, rng.normal(size=n))
    return np.column_stack([lognormal, outliers, zeros, spiky, np.full(n, 7.0)])


def test_smooth_clip_is_realmlps() -> None:
    z = np.array([-1e6, -3.0, 0.0, 0.1, 3.0, 1e6], np.float32)
    np.testing.assert_allclose(smooth_clip(z), z / np.sqrt(1 + (z / 3) ** 2), rtol=1e-6)
    assert abs(smooth_clip(np.float32(0.1)) - 0.1) < 1e-3 and smooth_clip(np.float32(1e6)) <= CLIP


def test_robust_centres_on_the_median_and_bounds_the_outliers() -> None:
    x = skewed()
    scaler = Scaler.fit("robust", x)
    z = scaler.transform(x)
    np.testing.assert_allclose(np.median(z[:, :3], axis=0), 0, atol=1e-6)
    assert np.abs(z).max() <= CLIP and z[:10, 1].min() > 2.99  # outliers squashed near 3
    q25, q75 = np.percentile(x, [25, 75], axis=0)
    np.testing.assert_allclose(scaler.scale[:3], (q75 - q25)[:3], rtol=1e-6)
    # An IQR of 0 falls back to half the range, as pytabkit's robust_scale.
    assert q75[3] == q25[3] and scaler.scale[3] == pytest.approx(
        (x[:, 3].max() - x[:, 3].min()) / 2
    )
    assert np.all(z[:, 4] == 0)  # a constant column is centred, not divided by 0


def test_quantile_makes_skewed_columns_standard_normal() -> None:
    x, later = skewed(seed=0), skewed(seed=1)
    scaler = Scaler.fit("quantile", x)
    assert abs(skew(x[:, 0])) > 3 and abs(skew(scaler.transform(x)[:, 0])) < 0.1
    z = scaler.transform(later)  # rows it was not fitted on
    assert abs(z[:, 0].mean()) < 0.05 and abs(z[:, 0].std() - 1) < 0.05
    assert abs(z[:, 1].mean()) < 0.05 and abs(z[:, 1].std() - 1) < 0.05  # outliers: no pull
    assert np.abs(z).max() <= 5.2  # scikit-learn's bounds: the normal score of 1e-7
    sklearn = QuantileTransformer(n_quantiles=1000, output_distribution="normal").fit(x)
    want = sklearn.transform(later)
    body = np.abs(want[:, :2]) < 2.5  # all but the outermost quantiles (see hpo.data.scaler)
    np.testing.assert_allclose(z[:, :2][body], want[:, :2][body], atol=0.01)
    # A value shared by half the rows maps to the normal score of the middle of its ranks
    # (scikit-learn sends a tied minimum to its lower bound, -5.2: an outlier to an MLP).
    zero = z[later[:, 2] == 0, 2]
    middle = ndtri(np.mean(x[:, 2] == 0) / 2)
    assert np.all(zero == zero[0]) and zero[0] == pytest.approx(middle, abs=0.02)
    assert np.all(z[:, 4] == 0)  # a constant column: the middle rank


@pytest.mark.parametrize("kind", ["robust", "quantile", "standard"])
def test_scaler_round_trips_through_json(kind: str) -> None:
    x = skewed()
    scaler = Scaler.fit(kind, x)  # type: ignore[arg-type]
    again = Scaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert np.array_equal(again.transform(x), scaler.transform(x))
    assert ("quantiles" in scaler.to_dict()) is (kind == "quantile")


def test_malformed_quantiles_are_refused() -> None:
    d = Scaler.fit("quantile", skewed()).to_dict()
    d["quantiles"][0] = d["quantiles"][0][::-1]
    with pytest.raises(ValueError, match="non-decreasing"):
        Scaler.from_dict(d)
    d = Scaler.fit("quantile", skewed()).to_dict()
    d["references"] = d["references"][:-1]
    with pytest.raises(ValueError, match="references"):
        Scaler.from_dict(d)


def test_a_preprocessing_with_inconsistent_quantiles_is_refused() -> None:
    x = skewed()
    d = Preprocessor.fit_array(x, [f"f{i}" for i in range(x.shape[1])], "quantile").to_dict()
    d["scaler"]["quantiles"] = d["scaler"]["quantiles"][:-1]
    with pytest.raises(ValueError, match="quantiles are not 5 rows"):
        Preprocessor.from_dict(d)
    d["scaler"]["kind"] = "bogus"
    with pytest.raises(ValueError, match="unknown scaling 'bogus'"):
        Preprocessor.from_dict(d)


@pytest.mark.parametrize("kind", ["robust", "quantile"])
def test_onnx_scaling_matches_numpy(kind: str) -> None:
    x = skewed()
    pre = Preprocessor.fit_array(x, [f"f{i}" for i in range(x.shape[1])], kind)  # type: ignore[arg-type]
    rng = np.random.default_rng(3)
    probe = np.vstack(
        [
            skewed(500, seed=2),
            pre.scaler.quantiles.T if pre.scaler.quantiles is not None else x[:50],  # knots
            x.min(axis=0) - 100 * rng.random((5, x.shape[1])),  # below training range
            x.max(axis=0) + 100 * rng.random((5, x.shape[1])),  # above
        ]
    ).astype(np.float32)
    graph = _Graph()
    nn_view, _ = _preprocessing(graph, pre)
    graph.node("Identity", [nn_view], ["scaled"])
    graph.outputs.append(helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [None, None]))
    model = graph.model(pre)
    onnx.checker.check_model(model, full_check=True)
    session = onnxruntime.InferenceSession(model.SerializeToString())
    (got,) = session.run(None, {INPUT: probe})
    np.testing.assert_allclose(got, pre.transform(probe)["nn"], rtol=1e-5, atol=1e-5)
