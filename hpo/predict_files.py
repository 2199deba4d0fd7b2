"""Files for ``hpo predict``: raw features in (CSV, ``.npy`` or IDX), predictions out (CSV)."""

from __future__ import annotations

import csv
import io
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hpo.errors import HpoError
from hpo.idx import read_idx
from hpo.tables import TABLE_SUFFIXES, Dialect, read_table


def read_features(path: Path, *, dialect: Dialect = Dialect()) -> np.ndarray | pd.DataFrame:
    """Raw features: a table (CSV, Parquet) as a DataFrame, to be matched by column name;
    ``.npy`` (no pickle) and IDX as a 2-D float array, one row per sample, images flattened.

    A CSV is read as the training data was (same reader, the bundle's separator, thousands
    and decimal marks).

    Raises:
        HpoError: missing or unreadable file, or a 1-D array.
    """
    if not path.is_file():
        raise HpoError(f"{path}: no such input file")
    if path.suffix.lower() in TABLE_SUFFIXES:
        return read_table(path, dialect)
    if path.suffix.lower() == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise HpoError(f"{path}: cannot read as .npy ({e})") from None
    else:
        try:
            x = read_idx(path)
        except HpoError:
            raise HpoError(
                f"{path}: not a table (.csv, .parquet), NumPy (.npy) or IDX file"
            ) from None
    if x.ndim < 2:
        raise HpoError(f"{path}: expected one row per sample, got an array of shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise HpoError(f"{path}: expected numbers, got an array of {x.dtype}")
    return x.reshape(len(x), -1).astype(np.float64)


def predictions_csv(
    predictions: np.ndarray, *, probabilities: np.ndarray | None, classes: Sequence[object] | None
) -> str:
    """``label`` (or ``prediction`` for regression), then ``proba_<class>`` columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["label" if classes is not None else "prediction"]
    if probabilities is not None and classes is not None:
        header += [f"proba_{c}" for c in classes]
    writer.writerow(header)
    for i, value in enumerate(predictions.tolist()):
        row = [repr(value) if isinstance(value, float) else str(value)]
        if probabilities is not None:
            row += [repr(float(p)) for p in probabilities[i]]
        writer.writerow(row)
    return buffer.getvalue()


def write_text(text: str, output: Path | None) -> None:
    """To ``output`` through a temporary file and a rename, or to stdout."""
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    except OSError as e:
        raise HpoError(f"cannot write {output}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an output file is not a secret
        os.replace(tmp, output)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise HpoError(f"cannot write {output}: {e.strerror}") from None
