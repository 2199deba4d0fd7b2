"""Datasets: load, split with a fixed seed, preprocess on the training split only.

Every source ends in the same :class:`Dataset`: float32 matrices for train, validation and
test (the MLP's, plus XGBoost's own where a table needs one), integer class labels (or
float targets), and the fitted :class:`~hpo.data.preprocess.Preprocessor` that the exported
bundle repeats on raw inputs.

With ``validation: {kfold: K}`` the test split is held out as always and the other rows
(the *pool*) are cut into K folds, stratified for classes and seeded. ``Dataset.fold(k)``
is a plain holdout Dataset (train: the other folds, val: fold k) and ``train``/``val`` are
fold 0's, so code that knows nothing of folds still trains and validates on disjoint rows.
The preprocessing is fitted once on the whole pool, not per fold: the K fold models then
share the one preprocessing a bundle stores (as AutoGluon's bagged models share its feature
generators), and it learns no labels (medians, scales, category levels), so a fold's
validation rows lend its training only column statistics. Regression's target scaling
(``y_mean``, ``y_std``) comes from the pool for the same reason.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from hpo.data.idx import FILES, find_idx_file, read_idx
from hpo.data.preprocess import Preprocessor, as_text
from hpo.data.scaler import Scaler
from hpo.data.tables import Dialect, note, read_table
from hpo.errors import HpoError
from hpo.spec import DataSpec, Task

__all__ = ["Dataset", "Scaler", "Split", "load_dataset", "read_table", "resolve_data_path"]

SKLEARN_DATASETS = ("digits", "wine", "breast_cancer", "iris", "diabetes")


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # the MLP's float32 matrix, (n, n_features)
    y: np.ndarray  # int64 class index, or float32 target in original units
    x_gbm: np.ndarray | None = None  # XGBoost's own matrix (NaN, category codes), if any

    def take(self, rows: np.ndarray) -> Split:
        return Split(self.x[rows], self.y[rows], None if self.x_gbm is None else self.x_gbm[rows])


@dataclass(frozen=True)
class Dataset:
    """Preprocessed splits plus what is needed to undo or repeat the preprocessing."""

    task: Task
    train: Split
    val: Split
    test: Split
    preprocessor: Preprocessor
    feature_names: list[str]  # the raw input columns
    classes: list[Any] | None  # original labels, index = class id; None for regression
    source: str
    # Regression targets are standardized for training; these undo it (0 and 1 otherwise).
    y_mean: float = 0.0
    y_std: float = 1.0
    # validation: {kfold: K}: every non-test row (train and val are fold 0's share of it),
    # and per fold its (training rows, validation rows) as indices into the pool.
    pool: Split | None = None
    folds: tuple[tuple[np.ndarray, np.ndarray], ...] = field(default=(), compare=False)
    _tensors: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _fold_views: dict[int, Dataset] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_folds(self) -> int:
        """K with k-fold validation, 0 with a holdout split."""
        return len(self.folds)

    def fold(self, k: int) -> Dataset:
        """Fold ``k`` as a holdout Dataset (train: the other folds, val: fold k, the same
        test split and preprocessing); made once, so its tensors are made once too."""
        if k not in self._fold_views:
            assert self.pool is not None, "fold() needs validation: {kfold: K}"
            train_rows, val_rows = self.folds[k]
            self._fold_views[k] = dataclasses.replace(
                self,
                train=self.pool.take(train_rows),
                val=self.pool.take(val_rows),
                pool=None,
                folds=(),
                _tensors={},
                _fold_views={},
            )
        return self._fold_views[k]

    @property
    def scaler(self) -> Scaler:
        return self.preprocessor.scaler

    @property
    def n_features(self) -> int:
        """Columns of the MLP's matrix (one-hot and indicator columns included)."""
        return self.train.x.shape[1]

    @property
    def n_outputs(self) -> int:
        """Width of the network's last layer: one logit for binary and regression."""
        return len(self.classes) if self.task == "multiclass" and self.classes else 1

    @property
    def embedding_sizes(self) -> list[int]:
        """Rows of each category embedding (its code columns end the MLP's matrix)."""
        return self.preprocessor.embedding_sizes

    @property
    def gbm_feature_types(self) -> list[str] | None:
        return self.preprocessor.gbm_feature_types

    def view(self, kind: str, part: str) -> np.ndarray:
        """The ``part`` split's matrix for a member ``kind`` (``nn`` or ``gbm``)."""
        split: Split = getattr(self, part)
        return split.x_gbm if kind == "gbm" and split.x_gbm is not None else split.x

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
    """Load, split and preprocess once per process (the frozen spec is a cache key)."""
    raw = _load_raw(spec, base_dir)
    x, y, x_test, y_test = raw.x, raw.y, raw.x_test, raw.y_test
    if spec.limit is not None:
        x, y = x[: spec.limit], y[: spec.limit]
        if x_test is not None and y_test is not None:
            x_test, y_test = x_test[: spec.limit], y_test[: spec.limit]
    y, y_test, classes = _encode_targets(task, y, y_test, raw.source)
    stratify = task != "regression"
    rows = np.arange(len(y))
    try:
        if x_test is None:
            rows, test_rows = train_test_split(
                rows,
                test_size=spec.test_fraction,
                random_state=seed,
                stratify=y if stratify else None,
            )
            val_size = spec.validation_fraction / (1 - spec.test_fraction)
        else:
            test_rows = None
            val_size = spec.validation_fraction
        if spec.n_folds:
            folds = fold_rows(y[rows], spec.n_folds, seed=seed, stratify=stratify)
            train_rows, val_rows = rows[folds[0][0]], rows[folds[0][1]]
        else:
            folds = ()
            train_rows, val_rows = train_test_split(
                rows,
                test_size=val_size,
                random_state=seed,
                stratify=y[rows] if stratify else None,
            )
    except ValueError as e:
        raise HpoError(f"{raw.source}: cannot split the data ({e})") from None

    def take(rows_: np.ndarray) -> pd.DataFrame | np.ndarray:
        return x.iloc[rows_] if isinstance(x, pd.DataFrame) else x[rows_]

    x_train = take(train_rows)
    # With folds, fitted on the whole pool that the K fold models share (module docstring).
    fit_rows = take(rows) if folds else x_train
    if isinstance(fit_rows, pd.DataFrame):
        pre = Preprocessor.fit_frame(
            fit_rows,
            categorical=spec.categorical,
            max_onehot=spec.max_onehot,
            scaling=spec.scaling,
            ignored=[str(spec.target), *spec.drop],
            read_options={"sep": spec.sep, "thousands": spec.thousands, "decimal": spec.decimal},
        )
    else:
        pre = Preprocessor.fit_array(fit_rows, raw.names, spec.scaling)

    def split(features: pd.DataFrame | np.ndarray, target: np.ndarray) -> Split:
        views = pre.transform(features)
        return Split(views["nn"], target, views["gbm"] if pre.gbm_own_view else None)

    if test_rows is None:
        assert x_test is not None and y_test is not None
        test = split(x_test, y_test)
    else:
        test = split(take(test_rows), y[test_rows])
    y_fit = y[rows] if folds else y[train_rows]
    y_mean, y_std = (
        (float(y_fit.mean()), float(y_fit.std()) or 1.0) if task == "regression" else (0.0, 1.0)
    )
    if folds:
        pool = split(take(rows), y[rows])
        train, val = pool.take(folds[0][0]), pool.take(folds[0][1])
    else:
        pool, train, val = None, split(x_train, y[train_rows]), split(take(val_rows), y[val_rows])
    return Dataset(
        task=task,
        train=train,
        val=val,
        test=test,
        preprocessor=pre,
        feature_names=raw.names,
        classes=classes,
        source=raw.source,
        y_mean=y_mean,
        y_std=y_std,
        pool=pool,
        folds=folds,
    )


def fold_rows(
    y: np.ndarray, k: int, *, seed: int, stratify: bool
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """K (training rows, validation rows) pairs over ``len(y)`` rows: shuffled with
    ``seed``, stratified by class for classification; each row validates in one fold.

    Raises:
        ValueError: fewer rows (or, stratified, members of every class) than folds.
    """
    splitter = (StratifiedKFold if stratify else KFold)(n_splits=k, shuffle=True, random_state=seed)
    return tuple((a, b) for a, b in splitter.split(np.zeros(len(y)), y))


def _encode_targets(
    task: Task, y: np.ndarray, y_test: np.ndarray | None, source: str
) -> tuple[np.ndarray, np.ndarray | None, list[Any] | None]:
    if task == "regression":
        try:
            to_float = (y.astype(np.float32), None if y_test is None else y_test.astype(np.float32))
        except ValueError:
            raise HpoError(f"{source}: a regression target must be numeric") from None
        return *to_float, None
    everything = y if y_test is None else np.concatenate([y, y_test])
    classes, y_idx = np.unique(everything, return_inverse=True)
    found = f"found {len(classes)}: {', '.join(map(str, classes[:5].tolist()))}"
    if task == "binary" and len(classes) != 2:
        raise HpoError(f"{source}: task 'binary' needs 2 classes in the target, {found}")
    if len(classes) < 2:
        raise HpoError(f"{source}: classification needs at least 2 classes in the target, {found}")
    y_idx = y_idx.astype(np.int64)
    if y_test is None:
        return y_idx, None, classes.tolist()
    return y_idx[: len(y)], y_idx[len(y) :], classes.tolist()


@dataclass(frozen=True)
class RawData:
    x: pd.DataFrame | np.ndarray
    y: np.ndarray
    x_test: pd.DataFrame | np.ndarray | None
    y_test: np.ndarray | None
    names: list[str]
    source: str


def _load_raw(spec: DataSpec, base_dir: Path) -> RawData:
    if spec.source == "sklearn":
        return _load_sklearn(str(spec.name))
    path = resolve_data_path(str(spec.path), base_dir, spec.source)
    if spec.source == "idx":
        return _load_idx_dir(path)
    return _load_table(spec, path)


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
    return RawData(bunch.data, bunch.target, None, None, names, f"sklearn:{name}")


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
    return RawData(x, y, x_test, y_test, names, str(path))


def _load_table(spec: DataSpec, path: Path) -> RawData:
    """Features as a DataFrame and the target as an array, after the spec's drops.

    Raises:
        HpoError: a named column is missing, or a feature column is empty in every row.
    """
    dialect = Dialect(spec.sep, spec.thousands, spec.decimal)
    df = read_table(path, dialect)
    columns = list(df.columns)
    target = str(spec.target)
    if target not in columns:
        raise HpoError(f"{path}: no target column {target!r}; columns are {', '.join(columns)}")
    for key in ("drop", "categorical"):
        unknown = [c for c in getattr(spec, key) if c not in columns]
        if unknown:
            raise HpoError(f"{path}: data.{key} names no column {', '.join(map(repr, unknown))}")
    kept = df[df[target].notna()]
    if len(kept) < len(df):
        note(f"{path}: dropped {len(df) - len(kept)} row(s) whose target {target!r} is missing")
    if len(kept) == 0:
        raise HpoError(f"{path}: the target column {target!r} is empty in every row")
    features = kept.drop(columns=[target, *spec.drop])
    if features.shape[1] == 0:
        raise HpoError(f"{path}: no feature columns left besides the target")
    empty = [str(c) for c in features.columns if features[c].isna().all()]
    if empty:
        raise HpoError(
            f"{path}: column(s) {', '.join(map(repr, empty))} are empty in every row; "
            "leave them out with data.drop"
        )
    y_col = kept[target]
    if pd.api.types.is_numeric_dtype(y_col) and not pd.api.types.is_bool_dtype(y_col):
        y = y_col.to_numpy()
        if np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)  # 0.0/1.0 labels stay the numbers 0 and 1
    else:
        y = as_text(y_col).to_numpy(dtype=object).astype(str)
    return RawData(features, y, None, None, [str(c) for c in features.columns], str(path))
