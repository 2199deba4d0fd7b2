"""Fashion-MNIST end to end under one wall-clock budget: NN study, GBM study, ensemble.

    python benchmarks/end_to_end.py [--budget 1800] [--spec studies/fashion_mnist.yaml]
                                    [--keep DIR] [--append]

Runs ``hpo run`` as a user would, in a subprocess on a fresh SQLite file, with the
budget split 60% NN, 30% GBM (Optuna's timeout stops new trials, so the last trial of
each may run over; the ensemble needs the rest). Reports the best single-model and
ensemble test accuracy from the leaderboard that the run stored, the wall time, and the
peak memory of the worker process. ``--append`` adds the run to the results file's runs
of the same spec and budget, to show how far one run's numbers move from the next.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=1800.0, help="seconds in all")
    parser.add_argument("--spec", type=Path, default=REPO / "studies" / "fashion_mnist.yaml")
    parser.add_argument(
        "--keep", type=Path, help="keep the run's database and model files in this new folder"
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add this run to the results file's runs of the same spec and budget",
    )
    args = parser.parse_args()
    args.spec = args.spec.resolve()
    spec = yaml.safe_load(args.spec.read_text())
    spec["nn"]["timeout"] = round(0.6 * args.budget)
    spec["gbm"]["timeout"] = round(0.3 * args.budget)
    spec["nn"]["trials"] = spec["gbm"]["trials"] = 1000  # the budget decides, not a count
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            args.keep.mkdir(parents=True)  # a new folder: never mix two runs' studies
            tmp = str(args.keep.resolve())
        # Keep relative data paths working: the spec is written beside the original.
        spec_path = args.spec.parent / f".e2e-{os.getpid()}.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        storage = f"sqlite:///{tmp}/e2e.db"
        cmd = [
            sys.executable,
            "-m",
            "hpo",
            "run",
            str(spec_path),
            "--storage",
            storage,
            "--artifacts",
            f"{tmp}/artifacts",
            "--quiet",
        ]
        start = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        finally:
            spec_path.unlink()
        wall = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if done.returncode != 0:
            sys.exit(f"hpo run failed:\n{done.stderr}")
        print(done.stdout)
        nn = optuna.load_study(study_name=f"{spec['name']}-nn", storage=storage)
        gbm = optuna.load_study(study_name=f"{spec['name']}-gbm", storage=storage)
        board = nn.user_attrs["ensemble"]
    rows = board["rows"]

    def best_of(kind: str) -> dict:  # type: ignore[type-arg]
        """The member of ``kind`` with the best validation metric (members are the top-k)."""
        return max((r for r in rows if r["kind"] == kind), key=lambda r: r["val_metric"])

    ensembles = {r["name"]: r for r in rows if r["kind"] == "ensemble"}
    counts = {
        s.study_name: {
            st: sum(t.state.name == st for t in s.trials) for st in ("COMPLETE", "PRUNED", "FAIL")
        }
        for s in (nn, gbm)
    }
    row = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "budget_s": args.budget,
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(peak_mib),
        "best_nn_test": round(best_of("nn")["test_metric"], 4),
        "best_gbm_test": round(best_of("gbm")["test_metric"], 4),
        "ensemble_average_test": round(ensembles["ensemble (average)"]["test_metric"], 4),
        "ensemble_greedy_test": round(ensembles["ensemble (greedy)"]["test_metric"], 4),
        "trials": counts,
    }
    print(row)
    spec_name = args.spec.relative_to(REPO) if args.spec.is_relative_to(REPO) else args.spec
    rows = [row]
    earlier = RESULTS / "end_to_end.json"
    if args.append and earlier.exists():
        before = json.loads(earlier.read_text())
        same_spec = before["spec"] == str(spec_name)
        kept = [r for r in before["rows"] if same_spec and r["budget_s"] == args.budget]
        if len(kept) < len(before["rows"]):
            print("--append: runs of another spec or budget are not kept", file=sys.stderr)
        rows = kept + rows
    write_result("end_to_end", {"spec": str(spec_name), "rows": rows})


if __name__ == "__main__":
    main()
