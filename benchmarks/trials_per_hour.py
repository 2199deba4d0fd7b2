"""Trials per hour of `hpo run`, end to end, on digits and on a small real table.

    python benchmarks/trials_per_hour.py [--nn-trials 100] [--gbm-trials 40] [--repeats 1]
        [--before /path/to/old/checkout] [--postgres]

Runs ``python -m hpo run`` as a user would, in a subprocess on a fresh storage (SQLite,
or with ``--postgres`` a fresh database on the tests' server), for studies/digits.yaml
and studies/passengers.yaml (the table with real-export warts), each with its NN and
GBM study at the given trial counts. ``--before`` runs the same commands with another
checkout's hpo (its folder first on PYTHONPATH), alternating with this one, so that both
see the same machine; same seed and same specs, so both run the same trials (checked:
``same_trials``). Measured per study, from the storage: trials per hour between the
first trial's start and the last one's end, and the wall time of the whole ``hpo run``
(process start, data, both studies, the ensemble). The enqueued RealMLP-TD trial is left
out where a checkout has it (``nn.realmlp_baseline: false``), as older ones do not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, checkout_label, fresh_postgres_database, write_result

WORKLOADS = {
    "digits": REPO / "studies" / "digits.yaml",
    "passengers": REPO / "studies" / "passengers.yaml",
}


@contextmanager
def fresh_storage(tmp: str, postgres: bool) -> Iterator[str]:
    """A new SQLite file, or a new PostgreSQL database dropped at the end."""
    if not postgres:
        yield f"sqlite:///{tmp}/hpo-{uuid.uuid4().hex[:8]}.db"
        return
    with fresh_postgres_database("hpo_tph") as url:
        yield url


def study_rate(storage: str, name: str) -> dict[str, Any]:
    """Finished trials per hour between the first start and the last end, and the trials."""
    trials = optuna.load_study(study_name=name, storage=storage).trials
    done = [t for t in trials if t.datetime_complete and t.datetime_start]
    span = (
        max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)  # type: ignore[type-var]
    ).total_seconds()
    states = [t.state.name for t in trials]
    return {
        "trials": len(done),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "trials_per_hour": round(3600 * len(done) / span),
        "median_trial_ms": round(
            1000 * statistics.median(t.duration.total_seconds() for t in done)
        ),
        # What the run did, to compare two checkouts: the same params and states, in order.
        "fingerprint": [(t.state.name, t.params) for t in trials],
    }


def same_trials(before: list[Any], now: list[Any]) -> bool:
    """The same states and params, in order; params a newer version added (recorded at
    their pinned values) are left out of the comparison."""
    return len(before) == len(now) and all(
        state == state_now and params == {k: params_now.get(k) for k in params}
        for (state, params), (state_now, params_now) in zip(before, now, strict=True)
    )


def knows_realmlp_baseline(checkout: Path) -> bool:
    return "realmlp_baseline" in (checkout / "hpo" / "spec.py").read_text()


def run_once(checkout: Path, workload: str, args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    spec_file = WORKLOADS[workload]
    spec = yaml.safe_load(spec_file.read_text())
    spec["name"] = f"tph-{workload}"
    spec["nn"]["trials"], spec["gbm"]["trials"] = args.nn_trials, args.gbm_trials
    if knows_realmlp_baseline(checkout):
        # A trial (RealMLP-TD's defaults) that older versions do not have: without it, two
        # versions run the same trials, and the rates compare the same work.
        spec["nn"]["realmlp_baseline"] = False
    # Beside the original, so that the spec's relative data path still resolves.
    spec_path = spec_file.parent / f".tph-{os.getpid()}-{workload}.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    try:
        with fresh_storage(tmp, args.postgres) as storage:
            cmd = [sys.executable, "-m", "hpo", "run", str(spec_path), "--storage", storage]
            cmd += ["--artifacts", f"{tmp}/artifacts-{uuid.uuid4().hex[:8]}", "--quiet"]
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                sys.exit(f"hpo run ({checkout}) failed:\n{done.stderr}")
            studies = {
                kind: study_rate(storage, f"{spec['name']}-{kind}") for kind in ("nn", "gbm")
            }
    finally:
        spec_path.unlink()
    return {"wall_s": round(wall, 1), **studies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nn-trials", type=int, default=100)
    parser.add_argument("--gbm-trials", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--before", type=Path, help="another checkout, measured alternately")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    checkouts = {"now": REPO}
    if args.before:
        checkouts = {"before": args.before.resolve(), "now": REPO}
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for workload in args.workloads:
                for label, checkout in checkouts.items():
                    run = run_once(checkout, workload, args, tmp)
                    summary = {k: run[k]["trials_per_hour"] for k in ("nn", "gbm")}
                    print(
                        f"{workload} {label} #{repeat + 1}: {run['wall_s']} s, trials/h {summary}"
                    )
                    results.setdefault((workload, label), []).append(run)
    rows = []
    for (workload, label), runs in results.items():
        row: dict[str, Any] = {
            "workload": workload,
            "hpo": label,
            "checkout": checkout_label(checkouts[label]),
        }
        row["wall_s"] = statistics.median(r["wall_s"] for r in runs)
        for kind in ("nn", "gbm"):
            row[f"{kind}_trials"] = runs[0][kind]["trials"]
            row[f"{kind}_pruned"] = runs[0][kind]["pruned"]
            row[f"{kind}_trials_per_hour"] = statistics.median(
                r[kind]["trials_per_hour"] for r in runs
            )
            row[f"{kind}_median_trial_ms"] = statistics.median(
                r[kind]["median_trial_ms"] for r in runs
            )
        if label == "now" and (workload, "before") in results:
            before = results[(workload, "before")][0]
            row["same_trials"] = all(
                same_trials(before[k]["fingerprint"], runs[0][k]["fingerprint"])
                for k in ("nn", "gbm")
            )
            for kind in ("nn", "gbm"):
                then = statistics.median(
                    r[kind]["trials_per_hour"] for r in results[(workload, "before")]
                )
                row[f"{kind}_speedup"] = round(row[f"{kind}_trials_per_hour"] / then, 2)
        print(row)
        rows.append(row)
    write_result(
        "trials_per_hour",
        {
            "storage": "postgresql" if args.postgres else "sqlite",
            "nn_trials": args.nn_trials,
            "gbm_trials": args.gbm_trials,
            "repeats": args.repeats,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
