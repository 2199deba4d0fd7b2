"""The fitted preprocessing: raw columns in, one matrix per model kind out.

Fitted on the training split only, and JSON-serializable (``to_dict``/``from_dict``), so the
studies, the ensemble and an exported bundle all apply the very same transformation.

- Numeric columns: the MLP gets the training median for a missing value, plus a 0/1
  missing-indicator column for each column that had missing values in training, then the
  spec's scaling. XGBoost gets the raw numbers with NaN: it handles missing values itself.
- Category columns (text, booleans, ``data.categorical``): levels learned on training rows.
  Up to ``max_onehot`` levels they are one-hot columns (plus one for missing; a level never
  seen in training is all zeros); beyond that, an integer code for an embedding (0 missing,
  1 unseen or rare, 2.. the levels), at the end of the matrix. XGBoost gets the level
  index as a native categorical feature; missing and unseen levels are NaN to it.
- Without category or missing-indicator columns (sklearn and IDX data), XGBoost reads the
  MLP's matrix, as before: trees do not care about scaling, and nothing is copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import pandas as pd

from hpo.data.scaler import Scaler
from hpo.data.tables import note
from hpo.errors import InputError
from hpo.spec import Scaling

MISSING_CODE, UNSEEN_CODE = 0, 1  # reserved embedding codes; levels start at 2
# An embedded level seen fewer times in training is folded into the unseen code, so that
# code is trained too (AutoGluon's CategoryFeatureGenerator uses minimum_cat_count=2).
MIN_EMBED_COUNT = 2
MEDIAN_ROWS = 10_000


def as_text(values: pd.Series) -> pd.Series:
    """Category values as text: ``True``, ``3`` (not ``3.0``), ``basic``; missing stays NaN."""

    def one(v: Any) -> Any:
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            return np.nan
        if isinstance(v, float | np.floating) and float(v).is_integer():
            return str(int(v))
        return str(v)

    return values.astype(object).map(one)


@dataclass(frozen=True)
class CategoryColumn:
    name: str
    levels: list[str]  # learned on training rows, sorted
    embed: bool  # integer code for an embedding (else one-hot)

    def codes(self, values: pd.Series) -> np.ndarray:
        """0-based level index per row, -1 for missing, -2 for a level not in ``levels``."""
        text = as_text(values)
        index = {level: i for i, level in enumerate(self.levels)}
        missing = text.isna().to_numpy()
        known = text.map(index).to_numpy(dtype=np.float64, na_value=np.nan)
        return np.where(missing, -1, np.where(np.isnan(known), -2, known)).astype(np.int64)


@dataclass(frozen=True)
class FitSettings:
    """How the preprocessing was fitted, besides the rows: enough to fit it again on new
    rows (:meth:`Preprocessor.refit`, for an exported estimator's ``fit``)."""

    table: bool  # fitted on a DataFrame (:meth:`Preprocessor.fit_frame`), else an array
    scaling: Scaling
    max_onehot: int  # tables: category columns with more levels get an embedding

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "scaling": self.scaling, "max_onehot": self.max_onehot}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitSettings:
        if d["scaling"] not in get_args(Scaling):
            raise ValueError(f"unknown scaling {d['scaling']!r}")
        return cls(bool(d["table"]), d["scaling"], int(d["max_onehot"]))


@dataclass(frozen=True)
class Preprocessor:
    """Raw features to the MLP's matrix and XGBoost's matrix; see the module docstring."""

    feature_names: list[str]  # the input columns, in training order
    numeric: list[str]
    categorical: list[CategoryColumn]
    medians: np.ndarray  # per numeric column
    indicators: list[str]  # numeric columns that get a missing-indicator column
    scaler: Scaler  # over the imputed numeric columns
    ignored: list[str]  # target and dropped columns: silently ignored in prediction input
    read_options: dict[str, Any]  # the CSV dialect, so predict inputs read like the data
    settings: FitSettings | None = None  # None: from a bundle older than refitting

    @classmethod
    def fit_array(cls, x: np.ndarray, names: list[str], scaling: Scaling) -> Preprocessor:
        """All-numeric data without missing values (sklearn, IDX): vectorized, no copies.

        The medians only fill gaps in later inputs, so at most ``MEDIAN_ROWS`` evenly
        spaced training rows estimate them (a full median of MNIST takes a second).
        """
        sample = x[:: max(1, len(x) // MEDIAN_ROWS)]
        return cls(
            feature_names=names,
            numeric=names,
            categorical=[],
            medians=np.median(sample, axis=0).astype(np.float64),
            indicators=[],
            scaler=Scaler.fit(scaling, x.astype(np.float64)),
            ignored=[],
            read_options={},
            settings=FitSettings(table=False, scaling=scaling, max_onehot=0),
        )

    @classmethod
    def fit_frame(
        cls,
        df: pd.DataFrame,
        *,
        categorical: Sequence[str],
        max_onehot: int,
        scaling: Scaling,
        ignored: list[str],
        read_options: dict[str, Any],
    ) -> Preprocessor:
        """Fit on the training rows of a table; column kinds follow the dtypes pandas read."""
        numeric, categories = [], []
        for name in df.columns:
            col = df[name]
            is_number = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
            if is_number and name not in categorical:
                numeric.append(str(name))
                continue
            counts = as_text(col).value_counts()
            embed = len(counts) > max_onehot
            kept = counts[counts >= MIN_EMBED_COUNT] if embed else counts
            if embed and len(kept) == 0:
                note(f"Warning: column {name!r}: no value repeats (an ID?); see data.drop")
            categories.append(CategoryColumn(str(name), sorted(map(str, kept.index)), embed))
        x = df[numeric].to_numpy(dtype=np.float64, na_value=np.nan)
        has_missing = np.isnan(x).any(axis=0)
        with np.errstate(all="ignore"):
            medians = np.nan_to_num(np.nanmedian(x, axis=0) if len(x) else np.zeros(len(numeric)))
        imputed = np.where(np.isnan(x), medians, x)
        return cls(
            feature_names=[str(c) for c in df.columns],
            numeric=numeric,
            categorical=categories,
            medians=medians,
            indicators=[n for n, m in zip(numeric, has_missing, strict=True) if m],
            scaler=Scaler.fit(scaling, imputed),
            ignored=ignored,
            read_options=read_options,
            settings=FitSettings(table=True, scaling=scaling, max_onehot=max_onehot),
        )

    def refit(self, rows: pd.DataFrame | np.ndarray) -> Preprocessor:
        """The same preprocessing fitted again on new raw rows (already checked by the caller:
        a DataFrame of the training columns, or an all-numeric finite array).

        Column kinds stay as fitted: a numeric column stays numeric (a text cell is an
        error), a category column stays a category; levels, medians, missing indicators,
        scaling and the one-hot or embedding choice are learned from ``rows``.

        Raises:
            ValueError: no :class:`FitSettings` (a bundle older than refitting).
            InputError: a cell of a numeric column is not a number, or a missing value in
                data that was all-numeric and complete (an array).
        """
        s = self.settings
        if s is None:
            raise ValueError("the preprocessing records no fit settings")
        if not s.table:
            x = self._numbers(rows) if isinstance(rows, pd.DataFrame) else np.asarray(rows)
            if not np.isfinite(x).all():  # as in prediction: arrays of all-numeric data only
                raise InputError("X contains NaN or infinity")
            return Preprocessor.fit_array(x, self.feature_names, s.scaling)
        if isinstance(rows, np.ndarray):
            rows = pd.DataFrame(rows, columns=self.feature_names)
        df = rows.copy()
        if self.numeric:
            df[self.numeric] = self._numbers(df)  # numbers (NaN for missing): kinds kept
        return Preprocessor.fit_frame(
            df,
            categorical=[c.name for c in self.categorical],
            max_onehot=s.max_onehot,
            scaling=s.scaling,
            ignored=self.ignored,
            read_options=self.read_options,
        )

    # --- shapes -----------------------------------------------------------------------

    @property
    def gbm_own_view(self) -> bool:
        """Whether XGBoost needs a matrix of its own (NaN kept, native categories)."""
        return bool(self.categorical or self.indicators)

    @property
    def embedding_sizes(self) -> list[int]:
        """Rows of each embedding table (levels plus the missing and unseen codes)."""
        return [len(c.levels) + 2 for c in self.categorical if c.embed]

    @property
    def nn_feature_names(self) -> list[str]:
        names = list(self.numeric) + [f"{n}__missing" for n in self.indicators]
        for c in self.categorical:
            if not c.embed:
                names += [f"{c.name}={level}" for level in c.levels] + [f"{c.name}=<missing>"]
        return names + [f"{c.name}__code" for c in self.categorical if c.embed]

    @property
    def gbm_feature_types(self) -> list[str] | None:
        """XGBoost ``feature_types``: ``q`` numbers, ``c`` categories (None: the MLP's view)."""
        if not self.gbm_own_view:
            return None
        return ["q"] * len(self.numeric) + ["c"] * len(self.categorical)

    # --- transforming -----------------------------------------------------------------

    def transform(self, data: pd.DataFrame | np.ndarray) -> dict[str, np.ndarray]:
        """The MLP's (``"nn"``) and XGBoost's (``"gbm"``) float32 matrices for raw rows.

        A DataFrame is matched to the training columns by name; an array by position
        (all-numeric data only).
        """
        if isinstance(data, np.ndarray) and self.gbm_own_view:
            data = pd.DataFrame(data, columns=self.feature_names)
        if isinstance(data, np.ndarray):
            x = data
            if np.issubdtype(x.dtype, np.floating) and np.isnan(x).any():
                x = np.where(np.isnan(x), self.medians, x)
            nn = self.scaler.transform(x)
            return {"nn": nn, "gbm": nn}
        df = data
        x = self._numbers(df)
        missing = np.isnan(x)
        parts = [self.scaler.transform(np.where(missing, self.medians, x))]
        flags = [self.numeric.index(n) for n in self.indicators]
        parts.append(missing[:, flags].astype(np.float32))
        codes = {c.name: c.codes(df[c.name]) for c in self.categorical}
        for c in self.categorical:
            if not c.embed:
                k = codes[c.name]
                onehot = np.zeros((len(df), len(c.levels) + 1), np.float32)
                rows = np.arange(len(df))
                known = k >= 0
                onehot[rows[known], k[known]] = 1.0
                onehot[rows[k == -1], len(c.levels)] = 1.0  # the missing column
                parts.append(onehot)
        for c in self.categorical:
            if c.embed:
                k = codes[c.name]
                code = np.where(k == -1, MISSING_CODE, np.where(k == -2, UNSEEN_CODE, k + 2))
                parts.append(code.astype(np.float32)[:, None])
        nn = np.concatenate(parts, axis=1).astype(np.float32)
        if not self.gbm_own_view:
            return {"nn": nn, "gbm": nn}
        cats = [np.where(codes[c.name] >= 0, codes[c.name], np.nan) for c in self.categorical]
        gbm = np.column_stack([x, *cats]) if cats else x
        return {"nn": nn, "gbm": gbm.astype(np.float32)}

    def _numbers(self, df: pd.DataFrame) -> np.ndarray:
        """The numeric columns as floats, infinity as missing.

        Raises:
            InputError: a cell of a numeric column is not a number.
        """
        columns = []
        for name in self.numeric:
            col = df[name]
            if not pd.api.types.is_numeric_dtype(col):
                try:
                    col = pd.to_numeric(col)
                except (ValueError, TypeError):
                    bad = col[pd.to_numeric(col, errors="coerce").isna() & col.notna()]
                    raise InputError(f"column {name!r}: {bad.iloc[0]!r} is not a number") from None
            columns.append(col.to_numpy(dtype=np.float64, na_value=np.nan))
        x = np.column_stack(columns) if columns else np.empty((len(df), 0))
        return np.where(np.isinf(x), np.nan, x)

    def select_columns(self, df: pd.DataFrame) -> pd.DataFrame:
        """The training columns of ``df`` by name, in training order.

        Raises:
            InputError: a training column is missing (all of them are named).
        """
        columns = [str(c) for c in df.columns]
        missing = [n for n in self.feature_names if n not in columns]
        if missing:
            raise InputError(f"the input has no column {', '.join(map(repr, missing))}")
        extra = [c for c in columns if c not in self.feature_names and c not in self.ignored]
        if extra:
            note(f"Warning: ignoring column(s) not used in training: {', '.join(extra)}")
        out = df.copy()
        out.columns = columns
        return out[self.feature_names]

    # --- JSON -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_names": self.feature_names,
            "numeric": self.numeric,
            "categorical": [
                {"name": c.name, "levels": c.levels, "embed": c.embed} for c in self.categorical
            ],
            "medians": self.medians.tolist(),
            "indicators": self.indicators,
            "scaler": self.scaler.to_dict(),
            "ignored": self.ignored,
            "read_options": self.read_options,
            **({"settings": self.settings.to_dict()} if self.settings else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessor:
        """Rebuild from :meth:`to_dict`'s output.

        Raises:
            ValueError, KeyError, TypeError: the dict is not a consistent preprocessing.
        """
        pre = cls(
            feature_names=[str(n) for n in d["feature_names"]],
            numeric=[str(n) for n in d["numeric"]],
            categorical=[
                CategoryColumn(str(c["name"]), [str(v) for v in c["levels"]], bool(c["embed"]))
                for c in d["categorical"]
            ],
            medians=np.asarray(d["medians"], np.float64),
            indicators=[str(n) for n in d["indicators"]],
            scaler=Scaler.from_dict(d["scaler"]),
            ignored=[str(n) for n in d.get("ignored", [])],
            read_options=dict(d.get("read_options", {})),
            settings=FitSettings.from_dict(d["settings"]) if d.get("settings") else None,
        )
        n = len(pre.numeric)
        if len(pre.medians) != n or len(pre.scaler.offset) != n or len(pre.scaler.scale) != n:
            raise ValueError(f"medians and scaler parameters are not {n} long")
        if pre.scaler.quantiles is not None and len(pre.scaler.quantiles) != n:
            raise ValueError(f"the scaler's quantiles are not {n} rows")
        used = pre.numeric + [c.name for c in pre.categorical]
        if sorted(used) != sorted(pre.feature_names) or not set(pre.indicators) <= set(used):
            raise ValueError("numeric and categorical columns do not match feature_names")
        return pre
