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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

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
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            df = _read_csv(path, dialect)
    except HpoError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HpoError(f"{path}: cannot read the table ({first})") from None
    if len(df) == 0 or len(df.columns) == 0:
        raise HpoError(f"{path}: a table needs a header row and at least one data row")
    df.columns = [str(c).strip() for c in df.columns]
    duplicates = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if duplicates:
        raise HpoError(f"{path}: duplicate column names: {', '.join(duplicates)}")
    df = _drop_saved_index(df, path)
    return _clean_cells(df, path)


def sniff_separator(header_line: str) -> str:
    """The candidate separator that occurs most often in the header line (``,`` if none)."""
    counts = {sep: header_line.count(sep) for sep in SEPARATORS}
    best = max(counts, key=lambda s: counts[s])
    return best if counts[best] > 0 else ","


def _read_csv(path: Path, dialect: Dialect) -> pd.DataFrame:
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


def _clean_cells(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Strip text cells (an all-blank cell is missing) and read infinite numbers as missing."""
    out = {}
    for name in df.columns:
        col = df[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            values = col.to_numpy(dtype=np.float64, na_value=np.nan)
            infinite = np.isinf(values)
            if infinite.any():
                note(
                    f"{path}: column {name!r}: {int(infinite.sum())} infinite value(s) "
                    "read as missing"
                )
                values = np.where(infinite, np.nan, values)
                col = pd.Series(values, index=col.index, name=name)
        elif col.dtype == object or pd.api.types.is_string_dtype(col):
            col = col.map(lambda v: v.strip() if isinstance(v, str) else v)
            col = col.mask(col.map(lambda v: isinstance(v, str) and v == ""))
        out[name] = col
    return pd.DataFrame(out, index=df.index)
