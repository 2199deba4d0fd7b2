"""Optuna's own cost per trial (sampler + storage), without any training.

    python benchmarks/optuna_overhead.py [--trials 1000] [--postgres postgresql://...]

Each trial does what an hpo NN trial does to the study: suggests the full search space,
reports a validation loss per epoch (checking the pruner each time), and sets the user
attrs; the model is never trained. The time per trial around 100 and around 1000 finished
trials is the overhead, compared with the median trial time of the digits study.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
import itertools

from _common import REPO, write_result

from hpo.spec import load_spec
from hpo.storage.backend import mask_url, open_storage
from hpo.studies.search_space import suggest
from hpo.studies.study import PrunerSteps, make_pruner, make_sampler

EPOCHS = 30  # digits.yaml: one report per epoch


def fake_objective(space):  # type: ignore[no-untyped-def]
    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        loss = 1.0 / params["width"]
        for epoch in range(EPOCHS):
            trial.report(loss * (1 + 1 / (epoch + 1)), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        for key in ("val_loss", "val_accuracy", "test_accuracy", "train_seconds", "epochs_run"):
            trial.set_user_attr(key, loss)
        return loss

    return objective


def measure(url: str, trials: int, windows: list[int]) -> dict[str, float]:
    spec, _ = load_spec(REPO / "studies" / "digits.yaml")
    storage = open_storage(
        url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period
    )
    study = optuna.create_study(
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec, PrunerSteps(EPOCHS)),
        study_name=f"overhead-{time.time_ns()}",
    )
    stamps: list[float] = []
    study.optimize(
        fake_objective(spec.nn.search_space),
        n_trials=trials,
        callbacks=[lambda s, t: stamps.append(time.perf_counter())],
    )
    per_trial = [b - a for a, b in itertools.pairwise(stamps)]
    out = {}
    for w in windows:  # the median of the 20 trials before the w-th finished one
        window = per_trial[max(0, w - 21) : w - 1]
        out[f"ms_per_trial_at_{w}"] = round(1000 * statistics.median(window), 2)
    optuna.delete_study(study_name=study.study_name, storage=storage)
    return out


def digits_median_trial_s() -> float:
    """Median wall time of real digits trials (train + Optuna), from a short run."""
    from hpo.data.dataset import load_dataset
    from hpo.storage.backend import open_artifacts
    from hpo.studies.nn import NNObjective

    spec, base = load_spec(REPO / "studies" / "digits.yaml")
    data = load_dataset(spec.data, spec.task, base, spec.seed)
    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            sampler=make_sampler(spec),
            pruner=make_pruner(spec, PrunerSteps(spec.nn.epochs)),
        )
        study.optimize(NNObjective(spec, data, open_artifacts(tmp)), n_trials=20)
    durations = [t.duration.total_seconds() for t in study.trials if t.duration]
    return statistics.median(durations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    windows = [100, args.trials]
    trial_s = digits_median_trial_s()
    print(f"digits median trial: {trial_s * 1000:.0f} ms")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, url in (
            ("sqlite", f"sqlite:///{tmp}/overhead.db"),
            ("postgresql", args.postgres),
        ):
            row = {"storage": name, "url": mask_url(url), **measure(url, args.trials, windows)}
            row["fraction_of_digits_trial_at_max"] = round(
                row[f"ms_per_trial_at_{args.trials}"] / 1000 / trial_s, 4
            )
            print(row)
            rows.append(row)
    write_result(
        "optuna_overhead", {"digits_median_trial_ms": round(trial_s * 1000, 1), "rows": rows}
    )


if __name__ == "__main__":
    main()
