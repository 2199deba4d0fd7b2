"""The lean Hyperband pruner decides exactly as Optuna's, with fewer storage reads."""

from __future__ import annotations

import math

import optuna
import pytest

from hpo.studies.pruning import LeanHyperbandPruner

EPOCHS = 30


def curve_objective(trial: optuna.Trial) -> float:
    """A noisy learning curve per trial; a few trials go NaN (which Hyperband prunes)."""
    x = trial.suggest_float("x", 0.0, 1.0)
    value = math.nan
    for step in range(EPOCHS):
        value = x + 1 / (step + 1) + 0.05 * math.sin(step * (1 + 10 * x))
        if x > 0.93 and step >= 5:
            value = math.nan
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def run(pruner: optuna.pruners.BasePruner, min_resource: int) -> list[tuple[object, ...]]:
    # Hyperband's brackets hash the study name: both runs use the same one. TPE samples
    # from the trial's bracket only (Optuna's _filter_study), so it sees the pruner's view.
    sampler = optuna.samplers.TPESampler(seed=min_resource, n_startup_trials=10)
    study = optuna.create_study(
        study_name="same-name",
        storage=optuna.storages.InMemoryStorage(),
        sampler=sampler,
        pruner=pruner,
    )
    study.optimize(curve_objective, n_trials=80)
    return [(t.state, t.last_step, t.system_attrs) for t in study.trials]


@pytest.mark.parametrize("min_resource", [1, 2])
def test_lean_hyperband_prunes_the_same_trials_at_the_same_steps(min_resource: int) -> None:
    plain = run(optuna.pruners.HyperbandPruner(min_resource, EPOCHS), min_resource)
    lean = run(LeanHyperbandPruner(min_resource, EPOCHS), min_resource)
    assert lean == plain
    states = [state for state, _, _ in plain]
    # Pruned at several rungs and complete ones too, so the comparison means something.
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 4
    assert len({step for state, step, _ in plain if state.name == "PRUNED"}) >= 3


def test_lean_hyperband_asks_storage_only_at_promotion_steps() -> None:
    reads = 0
    storage = optuna.storages.InMemoryStorage()
    get = storage.get_trial_system_attrs

    def counted(trial_id: int) -> dict[str, object]:
        nonlocal reads
        reads += 1
        return get(trial_id)

    storage.get_trial_system_attrs = counted  # type: ignore[method-assign]
    study = optuna.create_study(storage=storage, pruner=LeanHyperbandPruner(1, EPOCHS))
    study.optimize(curve_objective, n_trials=30)
    checks = sum(len(t.intermediate_values) for t in study.trials)
    # Brackets judge at steps 1, 3, 9, 27 (or a later subset): at most 4 reads a trial.
    assert reads <= 4 * len(study.trials) < checks / 2
