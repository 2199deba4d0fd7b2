from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from hpo.data.dataset import Scaler, load_dataset
from hpo.data.idx import read_idx
from hpo.errors import HpoError
from hpo.spec import DataSpec

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_sklearn_split_is_stratified_and_seeded() -> None:
    spec = DataSpec(source="sklearn", name="digits", validation_fraction=0.2, test_fraction=0.2)
    data = load_dataset(spec, "multiclass", Path("."), 0)
    sizes = [len(data.train.y), len(data.val.y), len(data.test.y)]
    assert sum(sizes) == 1797 and sizes[1] == sizes[2] == 360
    # Stratified: each class keeps its share in every split (within one sample).
    for part in (data.train, data.val, data.test):
        shares = np.bincount(part.y, minlength=10) / len(part.y)
        assert np.all(np.abs(shares - 0.1) < 0.02)
    again = load_dataset(spec.model_copy(update={"scaling": "none"}), "multiclass", Path("."), 0)
    assert np.array_equal(again.test.y, data.test.y)  # same seed, same split


@pytest.mark.parametrize(("kind", "low", "high"), [("minmax", 0, 1), ("minmax_symmetric", -1, 1)])
def test_minmax_scalings_fit_on_train_only(kind: str, low: float, high: float) -> None:
    data = load_dataset(
        DataSpec(source="sklearn", name="wine", scaling=kind), "multiclass", Path("."), 0
    )
    assert np.allclose(data.train.x.min(axis=0), low, atol=1e-6)
    assert np.allclose(data.train.x.max(axis=0), high, atol=1e-6)
    # Validation rows were not seen by the fit, so they may fall outside the range.
    assert data.val.x.min() < low + 0.5


def test_standardization_and_constant_features() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    scaler = Scaler.fit("standard", x)
    z = scaler.transform(x)
    assert np.allclose(z[:, 0].mean(), 0) and np.allclose(z[:, 0].std(), 1)
    assert np.allclose(z[:, 1], 0)  # a constant column is shifted, never divided by zero
    assert Scaler.from_dict(scaler.to_dict()).transform(x).tolist() == z.tolist()


def test_regression_targets_stay_in_original_units() -> None:
    data = load_dataset(DataSpec(source="sklearn", name="diabetes"), "regression", Path("."), 0)
    assert data.classes is None and data.n_outputs == 1
    assert 100 < data.y_mean < 200 and data.y_std > 10
    tensors = data.tensors("cpu")
    assert abs(float(tensors["train_y"].mean())) < 1e-4  # trained on standardized targets


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _idx_dir(directory: Path, n: int = 60) -> Path:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    for prefix, count in (("train", n), ("t10k", n // 2)):
        _write_idx(
            directory / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 4, 4))
        )
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 3)
    return directory


def test_idx_directory_uses_the_shipped_test_set(tmp_path: Path) -> None:
    _idx_dir(tmp_path / "toy")
    data = load_dataset(
        DataSpec(source="idx", path="toy", scaling="minmax", validation_fraction=0.2),
        "multiclass",
        tmp_path,
        0,
    )
    assert data.n_features == 16 and len(data.test.y) == 30
    assert len(data.train.y) == 48 and len(data.val.y) == 12
    assert data.train.x.min() >= 0 and data.train.x.max() <= 1


def test_hpo_data_dir_overrides_the_spec_path(tmp_path: Path, monkeypatch) -> None:
    _idx_dir(tmp_path / "elsewhere" / "toy")
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "elsewhere"))
    spec = DataSpec(source="idx", path="../does/not/exist/toy")
    assert load_dataset(spec, "multiclass", tmp_path, 1).n_features == 16


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="needs ../shared/data beside the checkout")
def test_real_idx_file_reads_with_numpy() -> None:
    labels = read_idx(SHARED_DATA / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and set(labels.tolist()) == set(range(10))


def test_not_an_idx_file(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"hello world")
    with pytest.raises(HpoError, match="bad magic number"):
        read_idx(path)


def test_csv_with_named_target(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(
        "a,b,label\n" + "".join(f"{i},{i % 7},{'yes' if i % 2 else 'no'}\n" for i in range(40))
    )
    data = load_dataset(DataSpec(source="csv", path="t.csv", target="label"), "binary", tmp_path, 0)
    assert data.classes == ["no", "yes"] and data.feature_names == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n3,4\n", "no target column 'label'; columns are a, b"),
        ("a,b,label\n1,,0\n2,,1\n", "column(s) 'b' are empty in every row"),
        ("a,label\n1,0\n2,1,5\n", "Expected 2 fields in line 3, saw 3"),
    ],
)
def test_bad_csv(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(HpoError, match=re.escape(message)):
        load_dataset(DataSpec(source="csv", path="t.csv", target="label"), "binary", tmp_path, 0)


def test_missing_data_path(tmp_path: Path) -> None:
    with pytest.raises(HpoError, match="data path not found"):
        load_dataset(DataSpec(source="idx", path="nowhere"), "multiclass", tmp_path, 0)
