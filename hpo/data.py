"""Datasets: load, split with a fixed seed, scale on the training split only.

Every source ends in the same :class:`Dataset`: float32 feature matrices for train,
validation and test, integer class labels (or float targets), and the :class:`Scaler` that
the exported bundle repeats on raw inputs.
"""

from __future__ import annotations

import csv
import functools
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from hpo.errors import HpoError
from hpo.idx import FILES, find_idx_file, read_idx
from hpo.spec import DataSpec, Scaling, Task

SKLEARN_DATASETS = ("digits", "wine", "breast_cancer", "iris", "diabetes")


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


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # float32, scaled, (n, n_features)
    y: np.ndarray  # int64 class index, or float32 target in original units


@dataclass(frozen=True)
class Dataset:
    """Scaled splits plus what is needed to undo or repeat the preprocessing."""

    task: Task
    train: Split
    val: Split
    test: Split
    scaler: Scaler
    feature_names: list[str]
    classes: list[Any] | None  # original labels, index = class id; None for regression
    source: str
    # Regression targets are standardized for training; these undo it (0 and 1 otherwise).
    y_mean: float = 0.0
    y_std: float = 1.0
    _tensors: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_features(self) -> int:
        return self.train.x.shape[1]

    @property
    def n_outputs(self) -> int:
        """Width of the network's last layer: one logit for binary and regression."""
        return len(self.classes) if self.task == "multiclass" and self.classes else 1

    def tensors(self, device: str) -> dict[str, Any]:
        """The splits as tensors on ``device``, made once per dataset and device."""
        if device not in self._tensors:
            import torch

            target_dtype = torch.int64 if self.task == "multiclass" else torch.float32
            tensors = {}
            for part in ("train", "val", "test"):
                split: Split = getattr(self, part)
                y = (split.y - self.y_mean) / self.y_std if self.task == "regression" else split.y
                tensors[f"{part}_x"] = torch.as_tensor(split.x).to(device)
                tensors[f"{part}_y"] = torch.as_tensor(y, dtype=target_dtype).to(device)
            self._tensors[device] = tensors
        return self._tensors[device]


@functools.cache
def load_dataset(spec: DataSpec, task: Task, base_dir: Path, seed: int) -> Dataset:
    """Load, split and scale once per process (the spec is frozen, so it is a cache key)."""
    x, y, x_test, y_test, names, source = _load_raw(spec, base_dir)
    if spec.limit is not None:
        x, y = x[: spec.limit], y[: spec.limit]
        if x_test is not None and y_test is not None:
            x_test, y_test = x_test[: spec.limit], y_test[: spec.limit]
    y, y_test, classes = _encode_targets(task, y, y_test, source)
    stratify = task != "regression"
    try:
        if x_test is None:
            x, x_test, y, y_test = train_test_split(
                x,
                y,
                test_size=spec.test_fraction,
                random_state=seed,
                stratify=y if stratify else None,
            )
            val_size = spec.validation_fraction / (1 - spec.test_fraction)
        else:
            val_size = spec.validation_fraction
        x_train, x_val, y_train, y_val = train_test_split(
            x, y, test_size=val_size, random_state=seed, stratify=y if stratify else None
        )
    except ValueError as e:
        raise HpoError(f"{source}: cannot split the data ({e})") from None
    assert y_test is not None
    scaler = Scaler.fit(spec.scaling, x_train.astype(np.float64))
    y_mean, y_std = (
        (float(y_train.mean()), float(y_train.std()) or 1.0) if task == "regression" else (0.0, 1.0)
    )
    return Dataset(
        task=task,
        train=Split(scaler.transform(x_train), y_train),
        val=Split(scaler.transform(x_val), y_val),
        test=Split(scaler.transform(x_test), y_test),
        scaler=scaler,
        feature_names=names,
        classes=classes,
        source=source,
        y_mean=y_mean,
        y_std=y_std,
    )


def _encode_targets(
    task: Task, y: np.ndarray, y_test: np.ndarray | None, source: str
) -> tuple[np.ndarray, np.ndarray | None, list[Any] | None]:
    if task == "regression":
        try:
            to_float = (y.astype(np.float32), None if y_test is None else y_test.astype(np.float32))
        except ValueError:
            raise HpoError(f"{source}: a regression target must be numeric") from None
        return *to_float, None
    classes = np.unique(y if y_test is None else np.concatenate([y, y_test]))
    if task == "binary" and len(classes) != 2:
        raise HpoError(f"{source}: task 'binary' needs 2 classes, found {len(classes)}")
    if len(classes) < 2:
        raise HpoError(f"{source}: classification needs at least 2 classes")
    encode = {c: i for i, c in enumerate(classes.tolist())}
    y_idx = np.array([encode[v] for v in y.tolist()], dtype=np.int64)
    y_test_idx = None if y_test is None else np.array([encode[v] for v in y_test.tolist()])
    return y_idx, y_test_idx, classes.tolist()


RawData = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, list[str], str]


def _load_raw(spec: DataSpec, base_dir: Path) -> RawData:
    if spec.source == "sklearn":
        return _load_sklearn(str(spec.name))
    path = resolve_data_path(str(spec.path), base_dir, spec.source)
    if spec.source == "idx":
        return _load_idx_dir(path)
    return _load_csv(path, str(spec.target))


def resolve_data_path(path: str, base_dir: Path, source: str) -> Path:
    """Relative to the spec file; for IDX, ``HPO_DATA_DIR/<folder name>`` wins when set."""
    resolved = (base_dir / path).resolve()
    if source == "idx" and os.environ.get("HPO_DATA_DIR"):
        resolved = Path(os.environ["HPO_DATA_DIR"]) / resolved.name
    if not resolved.exists():
        hint = " (set HPO_DATA_DIR, or run `hpo data fetch`)" if source == "idx" else ""
        raise HpoError(f"data path not found: {resolved}{hint}")
    # A FIFO would hang the read and /dev/zero fill the memory: only the expected kind.
    mode = resolved.stat().st_mode
    if source == "idx" and not stat.S_ISDIR(mode):
        raise HpoError(f"data path is not a folder of IDX files: {resolved}")
    if source != "idx" and not stat.S_ISREG(mode):
        raise HpoError(f"data path is not a regular file (a FIFO, device or folder): {resolved}")
    return resolved


def _load_sklearn(name: str) -> RawData:
    if name not in SKLEARN_DATASETS:
        raise HpoError(
            f"unknown sklearn dataset {name!r}; choose one of {', '.join(SKLEARN_DATASETS)}"
        )
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")()
    names = [str(n) for n in getattr(bunch, "feature_names", [])] or [
        f"x{i}" for i in range(bunch.data.shape[1])
    ]
    return bunch.data, bunch.target, None, None, names, f"sklearn:{name}"


def _load_idx_dir(path: Path) -> RawData:
    def images(stem: str) -> np.ndarray:
        arr = read_idx(find_idx_file(path, stem))
        return arr.reshape(len(arr), -1)  # images are flattened to pixel features

    x = images(FILES["train_images"])
    y = read_idx(find_idx_file(path, FILES["train_labels"]))
    x_test = images(FILES["test_images"])
    y_test = read_idx(find_idx_file(path, FILES["test_labels"]))
    if len(x) != len(y) or len(x_test) != len(y_test):
        raise HpoError(f"{path}: image and label counts differ")
    names = [f"pixel{i}" for i in range(x.shape[1])]
    return x, y, x_test, y_test, names, str(path)


def _load_csv(path: Path, target: str) -> RawData:
    header, body = read_csv(path)
    if target not in header:
        raise HpoError(f"{path}: no target column {target!r}; columns are {', '.join(header)}")
    t = header.index(target)
    features = [i for i in range(len(header)) if i != t]
    x = numeric_columns(path, header, body, features)
    y = np.array([row[t].strip() for row in body])
    if all(v.lstrip("-").isdigit() for v in y):  # integer labels stay numbers: 0, 1, not '0'
        y = y.astype(np.int64)
    return x, y, None, None, [header[i] for i in features], str(path)


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """A CSV's header (stripped) and its non-blank data rows, each as long as the header."""
    try:
        with path.open(newline="") as f:
            rows = [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError) as e:
        raise HpoError(f"{path}: cannot read CSV ({e})") from None
    if len(rows) < 2:
        raise HpoError(f"{path}: a CSV needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise HpoError(f"{path}: line {r} has {len(row)} fields, the header has {len(header)}")
    return header, rows[1:]


def numeric_columns(
    path: Path, header: list[str], body: list[list[str]], columns: list[int]
) -> np.ndarray:
    """The given columns as a float matrix; a non-number names its line and column."""
    x = np.empty((len(body), len(columns)), dtype=np.float64)
    for r, row in enumerate(body):
        for j, i in enumerate(columns):
            try:
                x[r, j] = float(row[i])
            except ValueError:
                raise HpoError(
                    f"{path}: line {r + 2}, column {header[i]!r}: {row[i]!r} is not a number"
                ) from None
    return x
