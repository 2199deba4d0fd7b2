"""The lean Hyperband pruner decides exactly as Optuna's, with fewer storage reads."""

from __future__ import annotations

import math
from typing import cast

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


def rung_values(trials: list[optuna.trial.FrozenTrial]) -> dict[str, list[float]]:
    """The values by rung in ``trials``' system attrs, each list sorted (order is not
    compared: successive halving sorts them)."""
    values: dict[str, list[float]] = {}
    for t in trials:
        for key, value in t.system_attrs.items():
            if key.startswith("completed_rung_"):
                values.setdefault(key, []).append(value)
    return {key: sorted(v) for key, v in values.items()}


def test_lean_hyperband_compares_the_values_optunas_brackets_hold() -> None:
    pruner = LeanHyperbandPruner(1, EPOCHS)
    study = optuna.create_study(study_name="brackets", pruner=pruner)
    study.optimize(curve_objective, n_trials=40)
    plain = optuna.pruners.HyperbandPruner(1, EPOCHS)
    plain._try_initialization(study)
    pruner._done.clear()  # gathered afresh from the finished study
    sizes = []
    for bracket in range(len(pruner._pruners)):
        done, running = pruner._bracket_values(study, bracket)
        optunas = plain._create_bracket_study(study, bracket).get_trials(deepcopy=False)
        assert {k: sorted(v) for k, v in done.items()} == rung_values(optunas)
        assert running == []
        sizes.append(len(optunas))
    assert sum(sizes) == 40 and min(sizes) < 40  # several brackets, none missed
    assert sum(len(v) for v in done.values()) > 0  # a bracket with values to compare


class _View:
    """A study as a worker's cache shows it: only the trials given, in number order."""

    def __init__(self, study: optuna.Study, shown: list[optuna.trial.FrozenTrial]) -> None:
        self.study_name = study.study_name
        self._storage = study._storage
        self.direction = study.direction
        self.shown = shown

    def get_trials(
        self, deepcopy: bool = False, states: tuple[optuna.trial.TrialState, ...] = ()
    ) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.shown if t.state in states]


def test_a_bracket_keeps_each_finished_trials_values_once_whenever_it_is_read() -> None:
    """The values by rung kept for each bracket are its finished trials', each counted
    once however often they are read, another worker's trial read late (below the
    newest) included."""
    pruner = LeanHyperbandPruner(1, EPOCHS)
    study = optuna.create_study(study_name="ranked", pruner=pruner)
    study.optimize(curve_objective, n_trials=40)
    trials = study.get_trials(deepcopy=False)
    late = next(t for t in trials if "completed_rung_0" in t.system_attrs and t.number < 30)
    pruner._done.clear()
    ids = pruner._bracket_ids(study, 39)
    for shown in ([t for t in trials if t is not late], trials, trials):
        for bracket in range(len(pruner._pruners)):
            view = cast(optuna.Study, _View(study, shown))
            done, _ = pruner._bracket_values(view, bracket)
            expected = rung_values([t for t in shown if ids[t.number] == bracket])
            assert {k: sorted(v) for k, v in done.items()} == expected
    assert any(late.number in r.seen for r in pruner._done.values())


def judged_beside_running_trials(
    pruner: optuna.pruners.BasePruner, others: optuna.trial.TrialState
) -> list[bool]:
    """Trials that all stay running (as other workers' would), each judged at its
    bracket's first promotion step: the first of a bracket reports the best value, so the
    later ones are pruned only where the running trials' values are compared. Beside
    them, trials in state ``others`` with values better still at the first rung: failed
    ones, or retries of failed ones waiting with their rungs (Optuna's
    RetryFailedTrialCallback copies them)."""
    study = optuna.create_study(
        study_name="beside", storage=optuna.storages.InMemoryStorage(), pruner=pruner
    )
    brackets = optuna.pruners.HyperbandPruner(1, EPOCHS)
    brackets._try_initialization(study)
    trials = [study.ask() for _ in range(12)]
    for _ in range(4):
        study.add_trial(optuna.create_trial(state=others, system_attrs={"completed_rung_0": 0.05}))
    decisions = []
    for i, trial in enumerate(trials):
        bracket = brackets._get_bracket_id(study, study._storage.get_trial(trial._trial_id))
        trial.report(0.1 if i < 4 else 0.5 + i / 100, 3**bracket)
        decisions.append(trial.should_prune())
    return decisions


@pytest.mark.parametrize("others", ["WAITING", "FAIL"])
def test_lean_hyperband_compares_other_workers_trials_as_optuna_does(others: str) -> None:
    state = optuna.trial.TrialState[others]
    plain = judged_beside_running_trials(optuna.pruners.HyperbandPruner(1, EPOCHS), state)
    assert judged_beside_running_trials(LeanHyperbandPruner(1, EPOCHS), state) == plain
    assert plain.count(True) >= 3  # pruned for the other trials' better values
