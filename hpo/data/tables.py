"""Reading a user's table (CSV or Parquet) with pandas, as the user saved it.

The CSV dialect is what spreadsheets and pandas write: an Excel BOM is stripped, the
separator is sniffed from the header line (or given), thousands and decimal marks are the
spec's, and the usual missing markers (empty, ``NA``, ``NaN``, ``null``, ...) read as
missing, text cells included. Infinite numbers are read as missing with one warning line.
A leading unnamed column holding 0..n-1 or 1..n is a saved pandas index: it is dropped
with one line, because training on it is a leak.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from hpo.errors import HpoError

SEPARATORS = (",", ";", "\t", "|")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


@dataclass(frozen=True)
class Dialect:
    """How a CSV is written; ``sep=None`` sniffs it from the header line."""

    sep: str | None = None
    thousands: str | None = None
    decimal: str = "."


def note(message: str) -> None:
    """One line on stderr about what was done to the data (not an error)."""
    print(message, file=sys.stderr)


def read_table(path: Path, dialect: Dialect = Dialect()) -> pd.DataFrame:
    """Read a CSV or Parquet file into a DataFrame, cleaned as the module docstring says.

    Raises:
        HpoError: the file is missing, unreadable, or has no data rows.
    """
    if not path.is_file():
        raise HpoError(f"{path}: no such file")
    try:
        df = pd.read_parquet(path) if _is_parquet(path) else _read_csv(path, dialect)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise _unreadable(path, e) from None
    df = _check_columns(df, path)
    if len(df) == 0:
        raise HpoError(f"{path}: a table needs a header row and at least one data row")
    df = _drop_saved_index(df, path)
    infinite: Counter[str] = Counter()
    df = _clean_cells(df, infinite)
    _note_infinite(path, infinite)
    return df


def iter_table(path: Path, dialect: Dialect, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Read a table in chunks of ``chunk_rows`` rows (pandas ``chunksize``, Arrow batches),
    each cleaned as :func:`read_table` cleans the whole table, so that memory stays flat.

    A saved row index is recognized on the first chunk; infinite values are noted once, at
    the end.

    Raises:
        HpoError: the file is missing, unreadable (at any chunk), or has no data rows.
    """
    if not path.is_file():
        raise HpoError(f"{path}: no such file")
    rows = 0
    drop_first: bool | None = None
    infinite: Counter[str] = Counter()
    try:
        for raw in _raw_chunks(path, dialect, chunk_rows):
            df = _check_columns(raw, path)
            if len(df) == 0:
                continue
            if drop_first is None:
                kept = _drop_saved_index(df, path)
                drop_first = kept.shape[1] < df.shape[1]
                df = kept
            elif drop_first:
                df = df.iloc[:, 1:]
            rows += len(df)
            yield _clean_cells(df, infinite)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise _unreadable(path, e) from None
    if rows == 0:
        raise HpoError(f"{path}: a table needs a header row and at least one data row")
    _note_infinite(path, infinite)


def _raw_chunks(path: Path, dialect: Dialect, chunk_rows: int) -> Iterator[pd.DataFrame]:
    if _is_parquet(path):
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
        return
    with _read_csv(path, dialect, chunk_rows) as reader:
        yield from reader


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _unreadable(path: Path, e: Exception) -> HpoError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return HpoError(f"{path}: cannot read the table ({first})")


def _check_columns(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Stripped column names; no columns or a duplicate name is an error."""
    if len(df.columns) == 0:
        raise HpoError(f"{path}: a table needs a header row and at least one data row")
    df.columns = [str(c).strip() for c in df.columns]
    duplicates = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if duplicates:
        raise HpoError(f"{path}: duplicate column names: {', '.join(duplicates)}")
    return df


def sniff_separator(header_line: str) -> str:
    """The candidate separator that occurs most often in the header line (``,`` if none)."""
    counts = {sep: header_line.count(sep) for sep in SEPARATORS}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] > 0 else ","


def _read_csv(path: Path, dialect: Dialect, chunk_rows: int | None = None) -> Any:
    """The whole CSV as a DataFrame, or a reader of ``chunk_rows``-row DataFrames."""
    sep = dialect.sep
    if sep is None:
        with path.open(encoding="utf-8-sig", newline="") as f:
            sep = sniff_separator(f.readline())
    return pd.read_csv(
        path,
        sep=sep,
        encoding="utf-8-sig",  # strips an Excel BOM before the first header
        thousands=dialect.thousands,
        decimal=dialect.decimal,
        skipinitialspace=True,
        skip_blank_lines=True,
        chunksize=chunk_rows,
    )


def _drop_saved_index(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    first = str(df.columns[0])
    if first not in ("", "Unnamed: 0") or not pd.api.types.is_integer_dtype(df.iloc[:, 0]):
        return df
    values = df.iloc[:, 0].to_numpy()
    n = len(values)
    if np.array_equal(values, np.arange(n)) or np.array_equal(values, np.arange(1, n + 1)):
        note(f"{path}: dropped the unnamed first column (a saved row index, 0..n-1 or 1..n)")
        return df.iloc[:, 1:]
    return df


def _clean_cells(df: pd.DataFrame, infinite: Counter[str]) -> pd.DataFrame:
    """Strip text cells (an all-blank cell is missing) and read infinite numbers as missing
    (counted per column in ``infinite``)."""
    out = {}
    for name in df.columns:
        col = df[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            values = col.to_numpy(dtype=np.float64, na_value=np.nan)
            is_inf = np.isinf(values)
            if is_inf.any():
                infinite[name] += int(is_inf.sum())
                values = np.where(is_inf, np.nan, values)
                col = pd.Series(values, index=col.index, name=name)
        elif col.dtype == object or pd.api.types.is_string_dtype(col):
            col = col.map(lambda v: v.strip() if isinstance(v, str) else v)
            col = col.mask(col.map(lambda v: isinstance(v, str) and v == ""))
        out[name] = col
    return pd.DataFrame(out, index=df.index)


def _note_infinite(path: Path, infinite: Counter[str]) -> None:
    for name, count in infinite.items():
        note(f"{path}: column {name!r}: {count} infinite value(s) read as missing")
