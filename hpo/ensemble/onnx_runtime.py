"""Predict from a bundle's ``model.onnx`` with ONNX Runtime: numpy and onnxruntime only.

This module imports neither torch, xgboost, scikit-learn, optuna nor pandas, so a slim
install (see the README) can serve a bundle. The manifest and ``model.onnx`` are checked as
:func:`hpo.ensemble.bundle.load_bundle` checks every file (regular file, recorded size and sha256),
and the graph must be the one exported with this bundle: the members and weights in its
metadata, its input width and its classes must match the manifest.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hpo.ensemble.untrusted import load_json, numeric_array, probability_text, read_regular_file
from hpo.errors import HpoError, InputError

Engine = Literal["auto", "native", "onnx"]
ONNX_FILE = "model.onnx"  # as hpo.ensemble.onnx_export.ONNX_FILE (no torch import here)
META_MEMBERS = "hpo.members"
MANIFEST_MAX_BYTES = 16 * 2**20
FILE_MAX_BYTES = 4 * 2**30
BLOCK_VALUES = 2**20
NA_CELLS = {
    "",
    "NA",
    "N/A",
    "NaN",
    "nan",
    "null",
    "None",
}  # values per block of rows: memory stays flat, as in hpo.ensemble.estimator


def native_available() -> bool:
    """Whether the training stack (torch and xgboost) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "xgboost"))


def use_onnx(engine: Engine) -> bool:
    """``auto`` picks ONNX Runtime only when torch or xgboost is missing."""
    return engine == "onnx" or (engine == "auto" and not native_available())


def load_ensemble(path: str | Path, engine: Engine = "auto") -> Any:
    """Load a bundle with the native members or, with ``engine="onnx"``, its ONNX graph.

    Raises:
        HpoError: the bundle (or its ``model.onnx``) is missing, changed or malformed.
    """
    if use_onnx(engine):
        return OnnxEnsemble(path)
    from hpo.ensemble.estimator import load_ensemble as load_native

    return load_native(path)


class OnnxEnsemble:
    """A bundle's graph: ``predict``, ``predict_proba`` (classification), ``classes_``."""

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        manifest = _read_manifest(self.path)
        raw = _read_onnx(self.path, manifest)
        file = self.path / ONNX_FILE
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self.session_ = ort.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad graphs
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise HpoError(f"{file}: not a valid ONNX model ({first})") from None
        _check_matches(self.session_, manifest, file)
        self.manifest_ = manifest
        self.task_: str = manifest["task"]
        self.classes_ = np.asarray(manifest["classes"]) if manifest["classes"] is not None else None
        self.feature_names_in_ = list(manifest["feature_names"])
        self.n_features_in_ = len(self.feature_names_in_)
        pre = manifest["preprocessing"]
        self.ignored_ = set(pre.get("ignored", []))
        self.read_options_ = dict(pre.get("read_options", {}))
        self.block_rows_ = max(1, BLOCK_VALUES // self.n_features_in_)
        self.numeric_ = [str(n) for n in pre["numeric"]]
        self.categories_ = [str(c["name"]) for c in pre["categorical"]]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, ``(n_samples, n_classes)``, in the order of ``classes_``."""
        if self.classes_ is None:
            raise InputError("predict_proba needs a classification bundle; this one is regression")
        return self._run(X, "probabilities")

    def predict(self, X: Any) -> np.ndarray:
        """Original class labels, or values in the target's units for regression."""
        if self.classes_ is None:
            return self._run(X, "prediction")
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def _run(self, X: Any, output: str) -> np.ndarray:
        feeds = X if isinstance(X, dict) else self._feeds(X)
        rows = len(feeds["X"])
        step = self.block_rows_
        parts = [
            self.session_.run([output], {k: v[i : i + step] for k, v in feeds.items()})[0]
            for i in range(0, rows, step)
        ]
        return np.concatenate(parts) if parts else np.empty((0,))

    def _feeds(self, X: Any) -> dict[str, np.ndarray]:
        """The graph's inputs: ``X`` float32 (the numeric columns) and, for each category
        column, its values as text; a DataFrame is matched by column name."""
        if hasattr(X, "columns") and hasattr(X, "to_numpy"):
            names = [str(c) for c in X.columns]
            missing = [n for n in self.feature_names_in_ if n not in names]
            if missing:
                raise InputError(f"the input has no column {', '.join(map(repr, missing))}")
            X = X.set_axis(names, axis=1)
            columns = {
                n: X[n].to_numpy(dtype=object, na_value=None) for n in self.feature_names_in_
            }
            return self.feeds_from_columns(columns, len(X))
        names, categorical = self.feature_names_in_, bool(self.categories_)
        x = numeric_array(X, names, categorical=categorical, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features_in_:
            raise InputError(
                f"X must be 2-D with {self.n_features_in_} features, got shape {x.shape}"
            )
        return {"X": x}

    def feeds_from_columns(self, columns: dict[str, Any], rows: int) -> dict[str, np.ndarray]:
        """Feeds from raw column values (numbers, text, None or NaN for missing)."""
        numbers = [_numbers(name, columns[name]) for name in self.numeric_]
        x = np.column_stack(numbers) if numbers else np.empty((rows, 0), np.float32)
        feeds = {"X": x.astype(np.float32)}
        for i, name in enumerate(self.categories_):
            feeds[f"category_{i}"] = np.asarray([as_text(v) for v in columns[name]], dtype=object)
        return feeds


def as_text(value: Any) -> str:
    """A category value as :func:`hpo.data.preprocess.as_text` writes it; "" for missing."""
    if value is None or (isinstance(value, float | np.floating) and value != value):
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _csv_category(cells: list[str]) -> list[Any]:
    """CSV cells of a category column as pandas reads them (per block, as its chunks do):
    numbers if all are numbers, booleans if all are true/false, else text; None missing."""
    values: list[Any] = [None if c.strip() in NA_CELLS else c for c in cells]
    present = [v for v in values if v is not None]
    if present and all(v.strip().lower() in ("true", "false") for v in present):
        return [None if v is None else v.strip().lower() == "true" for v in values]
    try:
        return [None if v is None else float(v) for v in values]
    except ValueError:
        return values


def _numbers(name: str, values: Any) -> np.ndarray:
    """A numeric column as float32; text that is not a number is an error."""
    try:
        return np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        pass
    out = np.empty(len(values), np.float32)
    for i, v in enumerate(values):
        if (
            v is None
            or (isinstance(v, float) and v != v)
            or (isinstance(v, str) and v.strip() in NA_CELLS)
        ):
            out[i] = np.nan
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise InputError(f"column {name!r}: {v!r} is not a number") from None
    return out


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest's fields the graph needs, checked for type (no pydantic, no torch)."""
    if not path.is_dir():
        raise HpoError(f"{path}: no such bundle directory")
    file = path / "manifest.json"
    if not os.path.lexists(file):
        raise HpoError(f"{path}: not a bundle (no manifest.json)")
    raw = load_json(
        read_regular_file(file, limit=MANIFEST_MAX_BYTES),
        file,
        max_depth=32,
        what="malformed manifest",
    )
    if not isinstance(raw, dict) or raw.get("format") != "hpo-ensemble":
        raise HpoError(f"{file}: malformed manifest (not an hpo-ensemble manifest)")
    if raw.get("format_version") != 2:
        raise HpoError(
            f"{file}: unknown bundle format version {raw.get('format_version')!r} "
            "(this hpo reads version 2; use the hpo that exported it)"
        )
    shapes = {
        "task": str,
        "feature_names": list,
        "members": list,
        "files": dict,
        "preprocessing": dict,
    }
    for key, kind in shapes.items():
        if not isinstance(raw.get(key), kind):
            raise HpoError(f"{file}: malformed manifest: {key}: missing or of the wrong type")
    pre = raw["preprocessing"]
    categorical = pre.get("categorical")
    if (
        not isinstance(pre.get("numeric"), list)
        or not isinstance(categorical, list)
        or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in categorical)
    ):
        raise HpoError(f"{file}: malformed manifest: preprocessing: no numeric or categorical list")
    if (raw["task"] == "regression") != (raw.get("classes") is None):
        raise HpoError(f"{file}: malformed manifest: classes do not fit the task")
    if ONNX_FILE not in raw["files"]:
        raise HpoError(
            f"{path}: the bundle has no {ONNX_FILE}; export it with `hpo export NAME --out DIR "
            "--format onnx`, or predict with the native engine"
        )
    return raw


def _read_onnx(path: Path, manifest: dict[str, Any]) -> bytes:
    recorded = manifest["files"][ONNX_FILE]
    file = path / ONNX_FILE
    if not isinstance(recorded, dict) or not isinstance(recorded.get("size"), int):
        raise HpoError(f"{path / 'manifest.json'}: malformed manifest: files.{ONNX_FILE}")
    raw = read_regular_file(file, limit=FILE_MAX_BYTES, exact_size=recorded["size"])
    if hashlib.sha256(raw).hexdigest() != recorded.get("sha256"):
        raise HpoError(
            f"{file}: checksum mismatch (the file changed after export); "
            "refusing to load the bundle"
        )
    return raw


def _check_matches(session: Any, manifest: dict[str, Any], file: Path) -> None:
    """The graph must be this bundle's: the same members (their files' sha256) and weights,
    input width and classes."""
    meta = session.get_modelmeta().custom_metadata_map.get(META_MEMBERS)
    files = manifest["files"]
    try:
        listed = [
            [m["kind"], int(m["trial"]), round(float(m["weight"]), 12), files[m["file"]]["sha256"]]
            for m in manifest["members"]
        ]
        held = json.loads(meta) if meta is not None else None
    except (KeyError, TypeError, ValueError):
        raise HpoError(f"{file}: the graph or the manifest does not list its members") from None
    if held != listed:
        raise HpoError(
            f"{file}: the graph holds other members than the manifest lists "
            "(a model.onnx from another export); refusing to load the bundle"
        )
    width = session.get_inputs()[0].shape[1]
    n = len(manifest["preprocessing"].get("numeric", []))
    if width != n or len(session.get_inputs()) != 1 + len(manifest["preprocessing"]["categorical"]):
        raise HpoError(
            f"{file}: the graph reads {width} numeric columns and "
            f"{len(session.get_inputs()) - 1} category columns, not the manifest's"
        )
    outputs = {o.name: o.shape for o in session.get_outputs()}
    classes = manifest["classes"]
    if classes is not None and outputs.get("probabilities", [None, None])[1] != len(classes):
        raise HpoError(f"{file}: the graph's probabilities do not fit the {len(classes)} classes")


# --- files: `hpo predict --engine onnx` ------------------------------------------------


def predict_file(
    model: OnnxEnsemble, input_path: Path, output: Path | None, *, proba: bool = False
) -> int:
    """Predict a CSV or ``.npy`` file into a CSV (or stdout), as ``hpo predict`` writes it.

    Returns:
        The number of rows predicted.

    Raises:
        HpoError: unreadable input, a missing column, a cell that is not a number, or
            ``proba`` for a regression bundle.
    """
    classes = model.classes_
    if proba and classes is None:
        raise HpoError("--proba needs a classification bundle; this one is regression")
    header = ["label" if classes is not None else "prediction"]
    header += [f"proba_{c}" for c in model.manifest_["classes"]] if proba else []
    out_dir = (output.parent if output else Path(tempfile.gettempdir())).resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=".predict.", suffix=".tmp")
    except OSError as e:
        raise HpoError(f"cannot write {output or 'the output'}: {e.strerror}") from None
    tmp = Path(tmp_name)
    done = 0
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            for chunk in _iter_rows(model, input_path):
                if classes is not None:
                    p = model.predict_proba(chunk)
                    labels = classes[p.argmax(axis=1)].tolist()
                    for i, label in enumerate(labels):
                        row = [repr(label) if isinstance(label, float) else str(label)]
                        writer.writerow(
                            row + ([probability_text(v) for v in p[i]] if proba else [])
                        )
                else:
                    writer.writerows([repr(float(v))] for v in model.predict(chunk))
                done += len(chunk["X"]) if isinstance(chunk, dict) else len(chunk)
        if done == 0:
            raise HpoError(f"{input_path}: no data rows")
        if output is None:
            sys.stdout.write(tmp.read_text())
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, output)
    except OSError as e:
        raise HpoError(f"cannot write {output or 'the output'}: {e.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return done


def _iter_rows(model: OnnxEnsemble, path: Path) -> Iterator[Any]:
    """Float32 blocks of rows in training column order, from a CSV or ``.npy`` file."""
    if not path.is_file():
        raise HpoError(f"{path}: no such input file")
    step = model.block_rows_
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if model.categories_:
            raise HpoError(f"{path}: this bundle has category columns; give a .csv with them")
        try:
            x = np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise HpoError(f"{path}: cannot read as .npy ({e})") from None
        if x.ndim < 2:
            raise HpoError(f"{path}: expected one row per sample, got an array of shape {x.shape}")
        x = x.reshape(len(x), -1)
        for start in range(0, len(x), step):
            yield np.asarray(x[start : start + step], dtype=np.float32)
        return
    if suffix not in (".csv", ".txt", ".tsv"):
        raise HpoError(f"{path}: the onnx engine reads .csv and .npy inputs only")
    yield from _iter_csv(model, path, step)


def _iter_csv(model: OnnxEnsemble, path: Path, step: int) -> Iterator[Any]:
    opts = model.read_options_
    sep, thousands, decimal = opts.get("sep"), opts.get("thousands"), opts.get("decimal", ".")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            if sep is None:
                sample = f.readline()
                sep = max(",;\t|", key=sample.count)
                f.seek(0)
            reader = csv.reader(f, delimiter=sep)
            header = [h.strip() for h in next(reader, [])]
            missing = [n for n in model.feature_names_in_ if n not in header]
            if missing:
                raise InputError(f"the input has no column {', '.join(map(repr, missing))}")
            extra = [h for h in header if h and h not in model.feature_names_in_]
            extra = [h for h in extra if h not in model.ignored_]
            if extra:
                print(
                    f"Warning: ignoring column(s) not used in training: {', '.join(extra)}",
                    file=sys.stderr,
                )
            index = [header.index(n) for n in model.feature_names_in_]
            block: list[list[str]] = []
            for cells in reader:
                if cells:
                    block.append([cells[i] if i < len(cells) else "" for i in index])
                if len(block) == step:
                    yield _block_feeds(model, block, thousands, decimal)
                    block = []
            if block:
                yield _block_feeds(model, block, thousands, decimal)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise HpoError(f"{path}: cannot read as CSV ({e})") from None


def _block_feeds(
    model: OnnxEnsemble, block: list[list[str]], thousands: str | None, decimal: str
) -> dict[str, np.ndarray]:
    """CSV cells (in training column order) as the graph's feeds."""
    numeric = set(model.numeric_)
    columns: dict[str, Any] = {}
    for j, name in enumerate(model.feature_names_in_):
        cells = [row[j] for row in block]
        if name in numeric:
            if thousands:
                cells = [c.replace(thousands, "") for c in cells]
            if decimal != ".":
                cells = [c.replace(decimal, ".") for c in cells]
            columns[name] = [c.strip() or "nan" for c in cells]
        else:
            columns[name] = _csv_category(cells)
    return model.feeds_from_columns(columns, len(block))


def predict_with_engine(
    bundle: Path, input_path: Path, output: Path | None, *, proba: bool, engine: str
) -> bool:
    """``hpo predict`` on ONNX Runtime when ``engine`` asks for it; False: use the native one.

    Raises:
        HpoError: an unknown engine, or what :func:`predict_file` raises.
    """
    if engine not in ("auto", "native", "onnx"):
        raise HpoError(f"unknown engine {engine!r} (choose auto, native or onnx)")
    if not use_onnx(engine):  # type: ignore[arg-type]
        return False
    predict_file(OnnxEnsemble(bundle), input_path, output, proba=proba)
    return True
