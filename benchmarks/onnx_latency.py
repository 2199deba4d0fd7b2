"""ONNX Runtime against the native bundle: latency of one row, throughput of 10,000 rows,
and the installed size of the slim set (onnxruntime, numpy, typer) against the full one.

python benchmarks/onnx_latency.py [--repeats 200] [--fashion-limit 3000] [--no-fashion]

A tiny digits study (and a 2-trial Fashion-MNIST study on ``data.limit`` rows, when the
IDX files are in ``shared/data/fashion-mnist``) is tuned and exported with
``--format onnx``; both engines then predict the same rows in this process
(``hpo.load_ensemble(path, engine=...)``), after a warm-up. One-row latency is the median
of ``--repeats`` calls; throughput is 10,000 rows (repeated test rows) in one call, best of
5. Installed sizes are the bytes of every file the installed distributions' RECORDs list,
over the dependency closure of each set in this environment (what ``du`` of a venv's
site-packages holding only that set counts, less block rounding).
Writes ``benchmarks/results/onnx_latency.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from _common import FASHION, REPO, write_result

import hpo

SLIM = ["onnxruntime", "numpy", "typer"]
FULL_EXTRAS = ["onnxruntime"]  # the full install serving a bundle: hpo's deps plus the runtime


def spec(name: str, data: dict[str, Any], task: str) -> dict[str, Any]:
    return {
        "name": name,
        "task": task,
        "data": data,
        "seed": 0,
        "nn": {"trials": 2, "epochs": 4, "search_space": {"depth": 2, "width": 128}},
        "gbm": {"trials": 2, "n_jobs": 1, "search_space": {"n_estimators": 100, "max_depth": 6}},
        "ensemble": {"method": "average", "nn_members": 2, "gbm_members": 2},
    }


def export(work: Path, name: str, body: dict[str, Any]) -> Path:
    (work / f"{name}.yaml").write_text(yaml.safe_dump(body))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args in (
        ["run", f"{name}.yaml", "-q"],
        ["export", name, "--out", name, "--format", "onnx"],
    ):
        subprocess.run([sys.executable, "-m", "hpo", *args], cwd=work, env=env, check=True)
    return work / name


def timings(bundle: Path, rows: np.ndarray, repeats: int) -> dict[str, Any]:
    big = np.resize(rows, (10_000, rows.shape[1]))
    out: dict[str, Any] = {}
    native, graph = (hpo.load_ensemble(bundle, engine=e) for e in ("native", "onnx"))
    p_native, p_graph = native.predict_proba(rows), graph.predict_proba(rows)
    out["max_abs_proba_diff"] = float(np.abs(p_native - p_graph).max())
    out["labels_equal"] = bool((p_native.argmax(1) == p_graph.argmax(1)).all())
    for engine, model in (("native", native), ("onnx", graph)):
        model.predict(big[:100])  # warm-up
        one = []
        for i in range(repeats):
            row = rows[i % len(rows) : i % len(rows) + 1]
            start = time.perf_counter()
            model.predict(row)
            one.append(time.perf_counter() - start)
        many = []
        for _ in range(5):
            start = time.perf_counter()
            model.predict(big)
            many.append(time.perf_counter() - start)
        out[engine] = {
            "one_row_ms_median": 1000 * statistics.median(one),
            "one_row_ms_p90": 1000 * float(np.percentile(one, 90)),
            "rows_per_s_10k": len(big) / min(many),
        }
    out["onnx_speedup_one_row"] = (
        out["native"]["one_row_ms_median"] / out["onnx"]["one_row_ms_median"]
    )
    out["onnx_speedup_10k"] = out["onnx"]["rows_per_s_10k"] / out["native"]["rows_per_s_10k"]
    return out


def closure(names: list[str]) -> set[str]:
    """Installed distributions ``names`` need (their non-extra requirements, recursively)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = re.split(r"[ ;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo += [r for r in dist.requires or [] if "extra ==" not in r]
    return seen


def installed_mb(names: set[str]) -> float:
    total = 0
    for name in names:
        for file in metadata.distribution(name).files or []:
            path = Path(file.locate())
            if path.is_file():
                total += path.stat().st_size
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--fashion-limit", type=int, default=3000)
    parser.add_argument("--no-fashion", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        import sklearn.datasets

        digits = export(
            work, "digits", spec("digits", {"source": "sklearn", "name": "digits"}, "multiclass")
        )
        x = sklearn.datasets.load_digits().data
        results["digits"] = timings(digits, x, args.repeats)
        if not args.no_fashion and FASHION.is_dir():
            data = {"source": "idx", "path": str(FASHION), "limit": args.fashion_limit}
            fashion = export(work, "fashion", spec("fashion", data, "multiclass"))
            from hpo.data.idx import read_idx

            images = sorted(FASHION.glob("t10k-images*"))[0]
            rows = read_idx(images).reshape(-1, 784)[:2000].astype(np.float64)
            results["fashion_mnist"] = timings(fashion, rows, args.repeats)
    slim = closure(SLIM) | {"hpo"}
    full = closure(["hpo", *FULL_EXTRAS])
    results["installed_mb"] = {
        "slim": round(installed_mb(slim), 1),
        "full": round(installed_mb(full), 1),
        "slim_set": sorted(slim),
        "full_set_count": len(full),
    }
    for key, value in results.items():
        print(key, value)
    write_result("onnx_latency", results)


if __name__ == "__main__":
    main()
