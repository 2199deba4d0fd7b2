"""Files for ``hpo predict``: raw features in (CSV, ``.npy`` or IDX), predictions out (CSV).

Large inputs are streamed: read, predicted and written one chunk of rows at a time (pandas
``chunksize``, Arrow batches, slices of a memory-mapped ``.npy``), so memory stays flat as
rows grow. The output is still whole or nothing: it goes to a temporary file first.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from hpo.data.idx import read_idx
from hpo.data.tables import TABLE_SUFFIXES, Dialect, iter_table
from hpo.ensemble.estimator import EnsembleClassifier, EnsembleRegressor
from hpo.ensemble.untrusted import probability_text
from hpo.errors import HpoError


def iter_features(
    path: Path, *, dialect: Dialect = Dialect(), chunk_rows: int
) -> Iterator[np.ndarray | pd.DataFrame]:
    """Raw features in chunks of ``chunk_rows`` rows (the last one shorter).

    A table (CSV, Parquet) comes as DataFrames, to be matched by column name, read as the
    training data was (same reader, the bundle's separator, thousands and decimal marks);
    ``.npy`` (no pickle, memory-mapped) and IDX as 2-D float arrays, one row per sample,
    images flattened.

    Raises:
        HpoError: missing, not a regular file, unreadable (at the chunk where it shows), or
            a 1-D array.
    """
    if not path.exists():
        raise HpoError(f"{path}: no such input file")
    if not path.is_file():
        raise HpoError(f"{path}: not a regular file (a FIFO, device or folder)")
    if path.suffix.lower() in TABLE_SUFFIXES:
        yield from iter_table(path, dialect, chunk_rows)
        return
    x = _as_rows(_load_array(path), path)
    for start in range(0, len(x), chunk_rows):
        yield np.asarray(x[start : start + chunk_rows], dtype=np.float64)


def _load_array(path: Path) -> np.ndarray:
    """``.npy`` (no pickle, memory-mapped) or IDX."""
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise HpoError(f"{path}: cannot read as .npy ({e})") from None
    try:
        return read_idx(path)
    except HpoError:
        raise HpoError(f"{path}: not a table (.csv, .parquet), NumPy (.npy) or IDX file") from None


def _as_rows(x: np.ndarray, path: Path) -> np.ndarray:
    """One row per sample, images flattened (a view: a memory map stays one)."""
    if x.ndim < 2:
        raise HpoError(f"{path}: expected one row per sample, got an array of shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise HpoError(f"{path}: expected numbers, got an array of {x.dtype}")
    return x.reshape(len(x), -1)


def predict_to_csv(
    model: EnsembleClassifier | EnsembleRegressor,
    input_path: Path,
    output: Path | None,
    *,
    proba: bool = False,
) -> int:
    """Predict ``input_path`` chunk by chunk into a CSV at ``output`` (or stdout).

    The CSV has ``label`` (or ``prediction`` for regression), then with ``proba`` one
    ``proba_<class>`` column per class. Rows done are shown on stderr when it is a terminal.
    A chunk is the model's own block of rows (``block_rows_``), so the output is the very
    same as ``model.predict`` on the whole input: a matrix product's last bit can depend on
    how many rows it multiplies at once.

    Args:
        model: the loaded bundle.
        input_path: raw features, as :func:`read_features` reads them.
        output: the CSV to write (whole or nothing), or None for stdout (after the last
            chunk, so an error midway prints no partial output).
        proba: add the class probabilities (classification only).

    Returns:
        The number of rows predicted.

    Raises:
        HpoError: unreadable input, wrong columns or values (at the chunk where they show),
            ``proba`` for a regression bundle, or an unwritable output.
    """
    classes = model.manifest_.classes
    if proba and not isinstance(model, EnsembleClassifier):
        raise HpoError("--proba needs a classification bundle; this one is regression")
    pre = model.preprocessor_
    chunks = iter_features(
        input_path, dialect=Dialect(**pre.read_options), chunk_rows=model.block_rows_
    )
    done = 0
    try:
        with _Spool(output) as out:
            writer = csv.writer(out, lineterminator="\n")
            header = ["label" if classes is not None else "prediction"]
            writer.writerow(header + ([f"proba_{c}" for c in classes or []] if proba else []))
            for chunk in chunks:
                if isinstance(chunk, pd.DataFrame):
                    # The first chunk is matched by name (and warns of extra columns) once.
                    chunk = pre.select_columns(chunk) if done == 0 else chunk[pre.feature_names]
                if isinstance(model, EnsembleClassifier):
                    probabilities = model.predict_proba(chunk)
                    labels = model.classes_[probabilities.argmax(axis=1)]
                    _write_rows(writer, labels, probabilities if proba else None)
                else:
                    _write_rows(writer, model.predict(chunk), None)
                done += len(chunk)
                _progress(f"{done:,} rows predicted")
    finally:
        if done:
            _progress(None)  # ends the line, also before an error
    return done


def _write_rows(writer: Any, predictions: np.ndarray, probabilities: np.ndarray | None) -> None:
    for i, value in enumerate(predictions.tolist()):
        row = [repr(value) if isinstance(value, float) else str(value)]
        if probabilities is not None:
            row += [probability_text(p) for p in probabilities[i]]
        writer.writerow(row)


def _progress(line: str | None) -> None:
    """Rewrite one progress line on a terminal (None ends it); nothing when not a terminal."""
    if sys.stderr.isatty():
        sys.stderr.write(f"\r{line}" if line is not None else "\n")
        sys.stderr.flush()


class _Spool:
    """A temporary text file that becomes ``output`` (a rename) or goes to stdout on success,
    and is deleted on failure: the output is whole or nothing."""

    def __init__(self, output: Path | None) -> None:
        self.output = output
        self.tmp: Path | None = None

    def __enter__(self) -> IO[str]:
        try:
            if self.output is None:
                self.file: IO[str] = tempfile.TemporaryFile("w+", newline="")
                return self.file
            self.output.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                dir=self.output.parent, prefix=f".{self.output.name}.", suffix=".tmp"
            )
        except OSError as e:
            raise HpoError(f"cannot write {self.output or 'the output'}: {e.strerror}") from None
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "w", newline="")
        return self.file

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if kind is not None:
                return
            if self.output is None:
                self.file.seek(0)
                shutil.copyfileobj(self.file, sys.stdout)
                return
            assert self.tmp is not None
            self.file.close()
            os.chmod(self.tmp, 0o644)  # mkstemp makes it private; an output is no secret
            os.replace(self.tmp, self.output)
            self.tmp = None
        except OSError as e:
            raise HpoError(f"cannot write {self.output}: {e.strerror}") from None
        finally:
            self.file.close()
            if self.tmp is not None:
                self.tmp.unlink(missing_ok=True)
