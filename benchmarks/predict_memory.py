"""Peak memory of ``hpo predict`` on a large CSV: this checkout against an earlier commit.

python benchmarks/predict_memory.py [--rows 250000 1000000] [--before ada2718]

A tiny binary bundle is trained on 2,000 rows of 64 numeric columns; ``hpo predict
--proba`` then reads CSVs of the same 64 columns (plus the target, ignored) with the
given numbers of rows. Each predict runs in its own process under ``/usr/bin/time``, whose
maximum resident set size is the peak. The earlier commit (``git archive``) predicts from
the same weights (its manifest rewritten to its own format), and both outputs must be
byte-identical. Writes ``benchmarks/results/predict_memory.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from _common import REPO, write_result

N_FEATURES = 64
TRAIN_ROWS = 2000
SPEC: dict[str, Any] = {
    "name": "wide",
    "task": "binary",
    "data": {"source": "csv", "path": "train.csv", "target": "y"},
    "seed": 0,
    "nn": {
        "trials": 2,
        "epochs": 3,
        "search_space": {"depth": 1, "width": 32, "batch_size": [128]},
    },
    "gbm": {"trials": 2, "n_jobs": 1, "search_space": {"n_estimators": 20, "max_depth": 3}},
    "ensemble": {"nn_members": 1, "gbm_members": 1},
}


def write_csv(path: Path, rows: int, seed: int) -> None:
    """Integers 0..99 in 64 feature columns and a 0/1 target ``y``, written in blocks."""
    rng = np.random.default_rng(seed)
    header = ",".join([f"f{i}" for i in range(N_FEATURES)] + ["y"])
    with path.open("w") as f:
        f.write(header + "\n")
        for start in range(0, rows, 100_000):
            x = rng.integers(0, 100, size=(min(100_000, rows - start), N_FEATURES))
            y = (x[:, 0] + x[:, 1] > 100).astype(int)
            np.savetxt(f, np.column_stack([x, y]), fmt="%d", delimiter=",")


def hpo(code: Path, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "hpo", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"hpo {' '.join(map(str, args))} failed:\n{done.stderr}")
    return done


def peak_predict(code: Path, bundle: Path, data: Path, out: Path) -> dict[str, Any]:
    """Peak RSS (MB), seconds and output sha256 of one ``hpo predict --proba``."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "hpo", "predict", str(bundle),
         "--input", str(data), "--output", str(out), "--proba"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"predict failed:\n{done.stderr}")
    peak_kb = int(done.stderr.strip().splitlines()[-1])
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return {"peak_rss_mb": round(peak_kb / 1024), "seconds": round(seconds, 1), "sha256": digest}


def old_format(bundle: Path, dest: Path) -> Path:
    """The bundle with ``files`` as the earlier format wrote it (name: sha256)."""
    dest.mkdir()
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in manifest["files"]:
        (dest / name).write_bytes((bundle / name).read_bytes())
    manifest["files"] = {name: f["sha256"] for name, f in manifest["files"].items()}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument("--before", default="ada2718", help="the commit to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="predict-memory-") as tmp:
        root = Path(tmp)
        before = root / "before"
        before.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.before], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        write_csv(root / "train.csv", TRAIN_ROWS, seed=0)
        (root / "spec.yaml").write_text(yaml.safe_dump(SPEC))
        hpo(REPO, "run", "spec.yaml", "-q", cwd=root)
        hpo(REPO, "export", "wide", "--out", "bundle", cwd=root)
        bundles = {"after": root / "bundle", "before": old_format(root / "bundle", root / "old")}
        rows = []
        for n in args.rows:
            data = root / f"predict-{n}.csv"
            write_csv(data, n, seed=1)
            size_mb = round(data.stat().st_size / 2**20)
            after = peak_predict(REPO, bundles["after"], data, root / "out.csv")
            earlier = peak_predict(before, bundles["before"], data, root / "out.csv")
            data.unlink()
            row = {
                "rows": n,
                "csv_mb": size_mb,
                "before_peak_rss_mb": earlier["peak_rss_mb"],
                "after_peak_rss_mb": after["peak_rss_mb"],
                "before_s": earlier["seconds"],
                "after_s": after["seconds"],
                "same_output": after["sha256"] == earlier["sha256"],
            }
            print(row)
            rows.append(row)
    write_result(
        "predict_memory",
        {"features": N_FEATURES, "before": args.before, "task": "binary --proba", "rows": rows},
    )


if __name__ == "__main__":
    main()
