"""Wine (178 rows): ``validation: {kfold: 5}`` against today's holdout split, seeds 0, 1, 2.

    python benchmarks/kfold_wine.py [--trials 15] [--seeds 0 1 2]

For each seed (which also draws the split) and each validation, one NN and one GBM study
of ``--trials`` trials each, then the greedy ensemble. Holdout validates on 36 rows,
k-fold on all 142 non-test rows out of fold; both test on the same 36 held-out rows.
Reported per run: the ensemble's and the best trials' validation estimates (accuracy and
log loss) and test accuracy, and how far the estimate lies from test; per validation:
the mean and the spread (standard deviation) across seeds. Accuracy, not time: the
numbers are meant to hold on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

from hpo.data.dataset import load_dataset
from hpo.ensemble.selection import build_ensemble
from hpo.spec import StudySpec
from hpo.storage.backend import open_artifacts, open_storage
from hpo.studies.gbm import GBM
from hpo.studies.nn import NN
from hpo.studies.study import run_study

VALIDATIONS: dict[str, Any] = {"holdout": "holdout", "kfold5": {"kfold": 5}}


def one_run(validation: str, seed: int, trials: int, folder: Path) -> dict[str, Any]:
    spec = StudySpec.model_validate(
        {
            "name": f"wine-{validation}-{seed}",
            "task": "multiclass",
            "data": {"source": "sklearn", "name": "wine", "validation": VALIDATIONS[validation]},
            "seed": seed,
            "nn": {"trials": trials},
            "gbm": {"trials": trials, "n_jobs": 1},
            "ensemble": {"nn_members": 3, "gbm_members": 3},
        }
    )
    data = load_dataset(spec.data, spec.task, Path("."), seed)
    storage = open_storage(f"sqlite:///{folder / 'hpo.db'}")
    artifacts = open_artifacts(str(folder / "artifacts"))
    start = time.perf_counter()
    studies = {f.kind: run_study(f, spec, data, storage, artifacts) for f in (NN, GBM)}
    report = build_ensemble(spec.name, studies, data, spec.ensemble, artifacts, spec.metric)
    seconds = time.perf_counter() - start
    rows = {r.name: r for r in report.leaderboard.rows}
    ensemble = rows["ensemble (greedy)"]
    result: dict[str, Any] = {
        "validation_rows": len(data.val.y) if data.pool is None else len(data.pool.y),
        "test_rows": len(data.test.y),
        "ensemble_val_accuracy": ensemble.val_metric,
        "ensemble_val_log_loss": ensemble.val_loss,
        "ensemble_test_accuracy": ensemble.test_metric,
        "seconds_under_load": round(seconds, 1),
    }
    for kind, study in studies.items():
        best = study.best_trial
        result |= {
            f"best_{kind}_val_accuracy": best.user_attrs["val_accuracy"],
            f"best_{kind}_val_log_loss": best.value,
            f"best_{kind}_test_accuracy": best.user_attrs["test_accuracy"],
            f"{kind}_pruned": len(study.get_trials(states=(optuna.trial.TrialState.PRUNED,))),
        }
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread across seeds; the gap is |validation estimate - test| per seed."""
    out: dict[str, Any] = {}
    for key in ("ensemble_val_accuracy", "ensemble_val_log_loss", "ensemble_test_accuracy"):
        values = np.array([r[key] for r in runs])
        out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1))}
    gap = [abs(r["ensemble_val_accuracy"] - r["ensemble_test_accuracy"]) for r in runs]
    out["ensemble_val_test_gap_mean"] = float(np.mean(gap))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, Any] = {}
    for validation in VALIDATIONS:
        runs = []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                run = one_run(validation, seed, args.trials, Path(tmp))
            print(validation, seed, run, flush=True)
            runs.append({"seed": seed, **run})
        results[validation] = {"runs": runs, "summary": summary(runs)}
        print(validation, results[validation]["summary"], flush=True)
    write_result(
        "kfold_wine",
        {"trials_per_study": args.trials, "seeds": args.seeds, "results": results},
    )


if __name__ == "__main__":
    main()
