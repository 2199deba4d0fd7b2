"""Ensemble weightings compared on the same members, from runs kept on disk.

    python benchmarks/tabular_suite.py --only hpo --budget 40 --keep runs/suite
    python benchmarks/ensemble_weighting.py runs/suite/*  [--results NAME]

Each argument is a folder that ``tabular_suite.py --keep`` or ``end_to_end.py --keep`` left:
a SQLite file and the model files of one ``hpo run``. For each, the members its ensemble
holds (the spec's best ``nn_members`` and ``gbm_members`` trials) predict the validation
rows (or, with folds, their out-of-fold predictions) and the test rows once; then every
weighting below is fitted on validation and scored on test. Nothing is retrained, so the
weightings differ only in their weights.

hpo's two methods, ``average`` and ``greedy`` (:mod:`hpo.ensemble.selection`), and remedies
from the ensemble-selection literature for greedy's overfitting of a small validation set
(Caruana et al. 2004; auto-sklearn's ``EnsembleSelection``), none of them in hpo:

- ``greedy_loss``: greedy on the validation loss alone (log loss or MSE), not the metric;
- ``from_average``: sorted initialization with every member, so the greedy picks start
  from the average, and the best prefix may be the average itself;
- ``bagged_members``: greedy on 20 random halves of the members, weights averaged;
- ``bagged_rows``: greedy on 20 bootstrap samples of the validation rows, weights averaged;
- ``half``: the mean of the greedy and the average weights;
- ``cv_choice``: average or greedy, whichever scores better when greedy is fitted on one
  half of the validation rows and scored on the other (both ways).

Results: ``benchmarks/results/ensemble_weighting.json``, each weighting's test metric
against the average's, relative (positive is better), per run and per dataset (mean over
its seeds, or its several runs), and over datasets.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import write_result

from hpo.ensemble.selection import (
    average_weights,
    build_ensemble,
    greedy_weights,
    validation_predictions,
)
from hpo.errors import HpoError
from hpo.models.members import combine
from hpo.models.metrics import (
    HIGHER_IS_BETTER,
    score,
    selection_key,
    validation_loss,
)
from hpo.storage.stored import StoredStudy

BAGS = 20


@dataclass(frozen=True)
class Members:
    """One kept run's ensemble members, as predictions."""

    val: list[np.ndarray]
    val_y: np.ndarray
    test: list[np.ndarray]
    test_y: np.ndarray
    task: str
    metric: Any
    rounds: int

    def key(self, rows: np.ndarray | None = None, loss: bool = False) -> Callable[..., Any]:
        y = self.val_y if rows is None else self.val_y[rows]
        if loss:
            return lambda p: validation_loss(self.task, p, y)  # type: ignore[arg-type]
        return selection_key(self.task, self.metric, y)  # type: ignore[arg-type]

    def greedy(self, rows: np.ndarray | None = None, loss: bool = False) -> np.ndarray:
        val = self.val if rows is None else [v[rows] for v in self.val]
        return greedy_weights(val, self.key(rows, loss), self.rounds)[0]


def load(run: Path) -> tuple[str, Members, dict[str, np.ndarray]]:
    """The run's spec name, its members' predictions, and hpo's own weights of them
    (:func:`hpo.ensemble.selection.build_ensemble`, as ``hpo ensemble`` builds them)."""
    databases = list(run.glob("*.db"))
    if not databases:
        sys.exit(f"{run}: no SQLite file here (a folder that --keep left is expected)")
    storage = optuna.storages.RDBStorage(f"sqlite:///{databases[0]}")
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    found = StoredStudy.open(
        min(n.removesuffix("-nn") for n in names if n.endswith("-nn")), storage
    )
    spec, data = found.spec, found.data
    artifacts = optuna.artifacts.FileSystemArtifactStore(str(run / "artifacts"))
    report = build_ensemble(
        found.name, found.studies, data, spec.ensemble, artifacts, metric=spec.metric
    )
    members = list(report.members)
    val, val_y = validation_predictions(members, data)
    test = [m.predict(data.view(m.kind, "test")) for m in members]
    m = Members(val, val_y, test, data.test.y, data.task, spec.metric, spec.ensemble.greedy_rounds)
    return found.name, m, dict(report.weights)


def from_average(m: Members) -> np.ndarray:
    counts, total = np.ones(len(m.val)), np.sum(m.val, axis=0)
    key = m.key()
    best, best_counts = key(total / counts.sum()), counts.copy()
    for _ in range(m.rounds):
        losses = [key((total + p) / (counts.sum() + 1)) for p in m.val]
        j = min(range(len(m.val)), key=losses.__getitem__)
        counts[j] += 1
        total = total + m.val[j]
        if losses[j] < best:
            best, best_counts = losses[j], counts.copy()
    return best_counts / best_counts.sum()


def bagged_members(m: Members) -> np.ndarray:
    rng, n, weights = np.random.default_rng(0), len(m.val), np.zeros(len(m.val))
    for _ in range(BAGS):
        pick = np.sort(rng.choice(n, max(1, round(n / 2)), replace=False))
        sub = Members([m.val[j] for j in pick], m.val_y, [], m.test_y, m.task, m.metric, m.rounds)
        weights[pick] += sub.greedy()
    return weights / BAGS


def bagged_rows(m: Members) -> np.ndarray:
    rng, n = np.random.default_rng(0), len(m.val_y)
    return np.mean([m.greedy(rng.integers(0, n, n)) for _ in range(BAGS)], axis=0)


def cv_choice(m: Members) -> np.ndarray:
    halves = np.array_split(np.random.default_rng(0).permutation(len(m.val_y)), 2)
    sign = -1.0 if HIGHER_IS_BETTER[m.metric] else 1.0
    totals = {"average": 0.0, "greedy": 0.0}
    for fit, held in (halves, halves[::-1]):
        for name, w in (("average", average_weights(len(m.val))), ("greedy", m.greedy(fit))):
            pred = combine([v[held] for v in m.val], w)
            totals[name] += sign * score(m.metric, pred, m.val_y[held]) * len(held)
    return m.greedy() if totals["greedy"] < totals["average"] else average_weights(len(m.val))


# Besides hpo's own two, "average" and "greedy", which load() takes from build_ensemble.
VARIANTS: dict[str, Callable[[Members], np.ndarray]] = {
    "greedy_loss": lambda m: m.greedy(loss=True),
    "from_average": from_average,
    "bagged_members": bagged_members,
    "bagged_rows": bagged_rows,
    "half": lambda m: (m.greedy() + average_weights(len(m.val))) / 2,
    "cv_choice": cv_choice,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="folders of kept runs")
    parser.add_argument("--results", default="ensemble_weighting", help="results file's name")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    runs, gains = [], {}
    for folder in sorted(args.runs):
        try:
            name, m, weights = load(folder)
        except HpoError as e:  # the run's data or model files moved: one line, not a trace
            sys.exit(f"{folder}: {e}")
        weights |= {w: f(m) for w, f in VARIANTS.items()}
        test = {w: score(m.metric, combine(m.test, ws), m.test_y) for w, ws in weights.items()}
        sign = 1.0 if HIGHER_IS_BETTER[m.metric] else -1.0
        gain = {w: sign * (t - test["average"]) / abs(test["average"]) for w, t in test.items()}
        runs.append({"run": str(folder), "study": name, "metric": m.metric, "test": test})
        # The suite's studies are named tab-<table>-s<seed>: a dataset's seeds go together.
        dataset = re.sub(r"^tab-|-s\d+$", "", name)
        gains.setdefault(dataset, []).append(gain)
        print(name, {w: round(t, 4) for w, t in test.items()}, flush=True)
    per_dataset = {
        d: {w: float(np.mean([g[w] for g in gs])) for w in gs[0]} for d, gs in gains.items()
    }
    rows = []
    for w in next(iter(per_dataset.values())):
        values = [p[w] for p in per_dataset.values()]
        rows.append(
            {
                "weighting": w,
                "vs_average_pct": round(100 * float(np.mean(values)), 3),
                "better": sum(v > 1e-12 for v in values),
                "level": sum(abs(v) <= 1e-12 for v in values),
                "worse": sum(v < -1e-12 for v in values),
            }
        )
        print(rows[-1])
    write_result(args.results, {"datasets": len(per_dataset), "rows": rows, "runs": runs})


if __name__ == "__main__":
    main()
