"""Is cross-validation of an exported estimator honest? Refit against reload, per dataset.

    python benchmarks/refit_cv.py [--studies digits diabetes] [--trials N]

Tunes and exports each study (``studies/<name>.yaml``, on a fresh SQLite file), then
compares on the same rows: the ensemble's score on its held-out test split (accuracy, or
R² for regression, scikit-learn's ``score``); ``cross_val_score`` (3 folds, shuffled with
seeds 0, 1, 2, and scikit-learn's unshuffled default) of the exported estimator, whose
``fit(X, y)`` trains every member again on the other folds; and what the same folds gave
before refits existed, when ``fit`` only reloaded the trained bundle (its score on each
fold, most of whose rows it was trained on). A linear model (scaled ridge or logistic
regression), fitted on the study's training rows for its held-out score, shows how
optimistic or pessimistic the one test split is against cross-validation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sklearn.datasets
import yaml
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, write_result

import hpo


def tune_and_export(spec: dict[str, Any], root: Path) -> Path:
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    where = ["--storage", f"sqlite:///{root / 'hpo.db'}", "--artifacts", str(root / "art")]
    bundle = root / "bundle"
    for args in (["run", str(path), "-q"], ["export", spec["name"], "--out", str(bundle)]):
        cmd = [sys.executable, "-m", "hpo", *args, *where]
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return bundle


def r4(value: float) -> float:
    return round(float(value), 4)


def measure(name: str, trials: int | None) -> dict[str, Any]:
    spec = yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text())
    if trials is not None:
        spec["nn"]["trials"] = spec["gbm"]["trials"] = trials
    regression = spec["task"] == "regression"
    data = spec["data"]
    x, y = getattr(sklearn.datasets, f"load_{data['name']}")(return_X_y=True)
    rows = np.arange(len(y))
    seed = spec.get("seed", 0)
    rest, test = train_test_split(
        rows,
        test_size=data.get("test_fraction", 0.2),
        random_state=seed,
        stratify=None if regression else y,
    )
    val_size = data.get("validation_fraction", 0.2) / (1 - data.get("test_fraction", 0.2))
    train, _ = train_test_split(
        rest, test_size=val_size, random_state=seed, stratify=None if regression else y[rest]
    )
    linear = make_pipeline(
        StandardScaler(), Ridge() if regression else LogisticRegression(max_iter=5000)
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model = hpo.load_ensemble(tune_and_export(spec, Path(tmp)))
        tune_s = time.perf_counter() - start
        held_out = model.score(x[test], y[test])
        result: dict[str, Any] = {
            "rows": len(y),
            "trials": {"nn": spec["nn"]["trials"], "gbm": spec["gbm"]["trials"]},
            "score": "R2" if regression else "accuracy",
            "tune_and_export_s": round(tune_s, 1),
            "held_out_test": r4(held_out),
            "trained_bundle_on_all_rows": r4(model.score(x, y)),
            "linear_held_out_test": r4(linear.fit(x[train], y[train]).score(x[test], y[test])),
        }
        folds = KFold if regression else StratifiedKFold
        for label, cv in [
            *((f"shuffled_seed{s}", folds(3, shuffle=True, random_state=s)) for s in (0, 1, 2)),
            ("unshuffled", folds(3)),
        ]:
            start = time.perf_counter()
            refit = cross_val_score(model, x, y, cv=cv, error_score="raise")
            seconds = time.perf_counter() - start
            reload = [model.score(x[b], y[b]) for _, b in cv.split(x, y)]
            result[label] = {
                "refit_folds": [r4(s) for s in refit],
                "refit_mean": r4(np.mean(refit)),
                "reload_folds": [r4(s) for s in reload],
                "reload_mean": r4(np.mean(reload)),
                "refit_seconds": round(seconds, 1),
                "linear_mean": r4(np.mean(cross_val_score(linear, x, y, cv=cv))),
            }
    print(name, json.dumps(result, indent=1), sep="\n", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", default=["digits", "diabetes"])
    parser.add_argument("--trials", type=int, default=None, help="per family (spec's own)")
    args = parser.parse_args()
    write_result("refit_cv", {name: measure(name, args.trials) for name in args.studies})


if __name__ == "__main__":
    main()
