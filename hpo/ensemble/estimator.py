"""An exported bundle as a scikit-learn style estimator.

>>> import hpo
>>> model = hpo.load_ensemble("models/digits")
>>> model.predict(X)            # original class labels (or values, for regression)
>>> model.predict_proba(X)      # columns in the order of model.classes_

``X`` is raw features, as in the data the study was tuned on: the bundle's own fitted
preprocessing (imputation, categories, scaling) is applied here. A pandas DataFrame is
matched to the training columns by name, like scikit-learn's ``feature_names_in_``: extra
columns are ignored with a warning, a missing one is an error. A numpy array is taken
positionally, for all-numeric data only, and must hold no NaN or infinity.

The estimator follows scikit-learn's conventions: ``__init__`` only stores the bundle path,
fitted state ends in ``_``, and ``clone`` gives an unfitted estimator of the same path.

- ``load_ensemble(path)`` and ``fit()`` (no ``X``) give the trained ensemble, as exported.
- ``fit(X, y)`` trains it again on ``X`` and ``y``: the preprocessing is fitted on ``X``,
  and every member is trained with its hyperparameters for the epochs (MLP) or boosting
  rounds (XGBoost) its trial found best, with the ensemble's weights kept (see
  :mod:`hpo.ensemble.refit`). So ``cross_val_score(model, X, y)`` scores members on rows
  they never saw, as it does any scikit-learn estimator. A bundle exported before hpo
  recorded training recipes cannot be refitted: re-export it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from hpo.data.preprocess import Preprocessor
from hpo.ensemble.bundle import LoadedBundle, load_bundle
from hpo.ensemble.refit import check_refittable, refit_bundle
from hpo.ensemble.untrusted import numeric_array
from hpo.errors import InputError
from hpo.models.members import Member, combine

# Values per block of rows predicted at once: memory stays flat, however many rows come.
BLOCK_VALUES = 2**20


def block_rows(width: int) -> int:
    """Rows per block for a matrix ``width`` columns wide (about 4 MB of float32)."""
    return max(1, BLOCK_VALUES // max(1, width))


class _BundleEstimator(BaseEstimator):
    def __init__(self, path: str | Path) -> None:
        self.path = path

    def fit(self, X: Any = None, y: Any = None) -> Self:
        """Without ``X``: load the trained bundle at ``path``. With ``X`` and ``y``: train
        its members again on them (see the module docstring).

        Raises:
            HpoError: the bundle is missing, changed, malformed, of an unknown version, or
                (with ``X``) exported without a training recipe.
            InputError: bad ``X`` or ``y`` (missing columns, one class, NaN target...).
        """
        bundle = load_bundle(self.path)
        if X is None and y is None:
            return self._set_bundle(bundle)
        if X is None or y is None:
            raise InputError("fit needs both X and y (or neither, to load the trained bundle)")
        check_refittable(bundle, self.path)
        rows = self._checked_rows(X, bundle.preprocessor)
        return self._set_bundle(refit_bundle(bundle, rows, y, self.path))

    def _set_bundle(self, bundle: LoadedBundle) -> Self:
        m = bundle.manifest
        self.manifest_ = m
        self.members_: tuple[Member, ...] = bundle.members
        self.weights_ = bundle.weights
        self.preprocessor_ = bundle.preprocessor
        self.n_features_in_ = m.n_features
        self.feature_names_in_ = np.asarray(m.feature_names, dtype=object)
        widest = max(m.n_features, len(bundle.preprocessor.nn_feature_names))
        self.block_rows_ = block_rows(widest)
        return self

    def _combined(self, X: Any) -> np.ndarray:
        """Checked once, then predicted in blocks of ``block_rows_`` rows."""
        check_is_fitted(self, "members_")
        rows = self._checked_rows(X, self.preprocessor_)
        step = self.block_rows_
        if len(rows) <= step:
            return self._predict_block(rows)
        take = rows.iloc if isinstance(rows, pd.DataFrame) else rows
        blocks = [take[i : i + step] for i in range(0, len(rows), step)]
        return np.concatenate([self._predict_block(block) for block in blocks])

    def _predict_block(self, rows: pd.DataFrame | np.ndarray) -> np.ndarray:
        views = self.preprocessor_.transform(rows)
        return combine([m.predict(views[m.kind]) for m in self.members_], self.weights_)

    def _checked_rows(self, X: Any, pre: Preprocessor) -> pd.DataFrame | np.ndarray:
        """A DataFrame's training columns by name, or a checked numeric array."""
        if isinstance(X, pd.DataFrame):
            return pre.select_columns(X)
        return self._check_input(X, pre)

    def _check_input(self, X: Any, pre: Preprocessor) -> np.ndarray:
        n = len(pre.feature_names)
        x = numeric_array(X, pre.feature_names, categorical=bool(pre.categorical), dtype=np.float64)
        if x.ndim != 2:
            raise InputError(f"X must be 2-D (n_samples, n_features), got shape {x.shape}")
        if x.shape[1] != n:
            names = pre.feature_names
            raise InputError(
                f"X has {x.shape[1]} features, but this ensemble expects {n} "
                f"({names[0]} ... {names[-1]})"
            )
        if not np.isfinite(x).all():
            raise InputError("X contains NaN or infinity")
        return x


class EnsembleClassifier(ClassifierMixin, _BundleEstimator):
    """A classification bundle: ``predict``, ``predict_proba``, ``classes_``, ``n_features_in_``."""

    def _set_bundle(self, bundle: LoadedBundle) -> Self:
        super()._set_bundle(bundle)
        self.classes_ = np.asarray(bundle.manifest.classes)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, ``(n_samples, n_classes)``, in the order of ``classes_``."""
        return self._combined(X)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable original class label per row."""
        proba = self.predict_proba(X)  # checks fitted state first
        return self.classes_[proba.argmax(axis=1)]


class EnsembleRegressor(RegressorMixin, _BundleEstimator):
    """A regression bundle: ``predict`` and ``n_features_in_``."""

    def predict(self, X: Any) -> np.ndarray:
        """Predictions in the target's own units."""
        return self._combined(X)


def load_ensemble(path: str | Path) -> EnsembleClassifier | EnsembleRegressor:
    """Load an exported bundle as a fitted estimator.

    Example:
        >>> model = load_ensemble("models/digits")
        >>> model.predict(X)

    Raises:
        HpoError: the bundle is missing, changed (checksum), malformed or of an unknown
            format version.
    """
    bundle = load_bundle(path)
    cls = EnsembleRegressor if bundle.manifest.task == "regression" else EnsembleClassifier
    return cls(path)._set_bundle(bundle)
