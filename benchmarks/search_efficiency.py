"""Same wall-clock budget, same search space: hpo against the plain-Optuna reference.

    python benchmarks/search_efficiency.py [--budget 300] [--epochs 10]

Three searches on Fashion-MNIST run one after the other in this process, each for
``--budget`` seconds: hpo with its Hyperband pruner, hpo without pruning, and the
reference (Optuna's official PyTorch example style: per-item dataset, DataLoader, median
pruner, TPE). Reported: best validation accuracy and the test accuracy of that trial,
trials finished and pruned, and the seconds until a trial first reached 0.88 validation
accuracy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FASHION, REPO, write_result
from reference import ImageItems, reference_objective

from hpo.data.dataset import load_dataset
from hpo.data.idx import read_idx
from hpo.models.mlp import MLPSpec, build_mlp
from hpo.spec import load_spec
from hpo.storage.backend import open_artifacts
from hpo.studies.nn import NNObjective
from hpo.studies.search_space import suggest
from hpo.studies.study import PrunerSteps, make_pruner, make_sampler

TARGET = 0.88


def summarize(study: optuna.Study, start: float, accuracy_of: Any) -> dict[str, Any]:
    states = [t.state for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=accuracy_of) if complete else None
    reached = sorted(
        (t.datetime_complete.timestamp() - start)
        for t in complete
        if t.datetime_complete and accuracy_of(t) >= TARGET
    )
    return {
        "trials_complete": len(complete),
        "trials_pruned": states.count(optuna.trial.TrialState.PRUNED),
        "best_val_accuracy": round(accuracy_of(best), 4) if best else None,
        "test_accuracy_of_best": round(best.user_attrs["test_accuracy"], 4) if best else None,
        "seconds_to_0.88_val": round(reached[0], 1) if reached else None,
    }


def run_hpo(pruner: str, budget: float, epochs: int) -> dict[str, Any]:
    spec, base = load_spec(REPO / "studies" / "fashion_mnist.yaml")
    # Same space for everyone; no hand-built baseline, so no one starts with a head start.
    spec = spec.model_copy(
        update={
            "pruner": pruner,
            "nn": spec.nn.model_copy(update={"epochs": epochs, "baselines": []}),
        }
    )
    data = load_dataset(spec.data, spec.task, base, spec.seed)
    data.tensors("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(
            sampler=make_sampler(spec), pruner=make_pruner(spec, PrunerSteps(epochs))
        )
        start = time.time()
        study.optimize(NNObjective(spec, data, open_artifacts(tmp)), timeout=budget)
    return summarize(study, start, lambda t: t.user_attrs["val_accuracy"])


def run_reference(budget: float, epochs: int) -> dict[str, Any]:
    spec, _ = load_spec(REPO / "studies" / "fashion_mnist.yaml")
    images = read_idx(FASHION / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION / "train-labels-idx1-ubyte.gz")
    # The same 54000/6000 split as hpo (seeded, stratified), on raw uint8 images.
    from sklearn.model_selection import train_test_split

    tr_x, va_x, tr_y, va_y = train_test_split(
        images, labels, test_size=0.1, random_state=spec.seed, stratify=labels
    )
    test = ImageItems(
        read_idx(FASHION / "t10k-images-idx3-ubyte.gz"),
        read_idx(FASHION / "t10k-labels-idx1-ubyte.gz"),
    )
    train = ImageItems(tr_x, tr_y)
    objective = reference_objective(
        lambda trial: suggest(trial, spec.nn.search_space),
        lambda params: build_mlp(MLPSpec.from_params(params), 784, 10),
        lambda batch: DataLoader(train, batch_size=batch, shuffle=True),
        DataLoader(ImageItems(va_x, va_y), batch_size=1000),
        DataLoader(test, batch_size=1000),
        "cpu",
        epochs,
    )
    study = optuna.create_study(direction="maximize")  # the example's defaults: TPE, median
    start = time.time()
    study.optimize(objective, timeout=budget)
    return summarize(study, start, lambda t: t.value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per search")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    for name, run in (
        ("hpo (hyperband)", lambda: run_hpo("hyperband", args.budget, args.epochs)),
        ("hpo (no pruning)", lambda: run_hpo("none", args.budget, args.epochs)),
        ("reference (optuna example)", lambda: run_reference(args.budget, args.epochs)),
    ):
        row = {"search": name, **run()}
        print(row)
        rows.append(row)
    write_result(
        "search_efficiency",
        {
            "budget_s": args.budget,
            "epochs": args.epochs,
            "threads": torch.get_num_threads(),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
