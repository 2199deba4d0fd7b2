"""hpo's faster TPE samples what Optuna's own TPE samples (hpo.studies.fast_tpe)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import scipy.special
from optuna.samplers._tpe import _truncnorm

from hpo.spec import load_spec
from hpo.studies.fast_tpe import OPTUNAS_LOG_NDTR, FastTPESampler, use_scipy_log_ndtr
from hpo.studies.study import make_sampler

REPO = Path(__file__).resolve().parent.parent


def test_log_ndtr_agrees_with_optunas(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.concatenate([np.linspace(-60.0, 60.0, 4001), [-1e3, -20.0, 0.0, 6.0, 1e3]])
    # Optuna's own, even where an earlier test's make_sampler replaced it; restored after.
    monkeypatch.setattr(_truncnorm, "_log_ndtr", OPTUNAS_LOG_NDTR)
    optunas = _truncnorm._log_ndtr(x)
    use_scipy_log_ndtr()
    assert _truncnorm._log_ndtr is scipy.special.log_ndtr
    scipys = _truncnorm._log_ndtr(x)
    assert scipys.shape == x.shape and scipys.dtype == np.float64
    np.testing.assert_allclose(scipys, optunas, rtol=1e-7, atol=1e-300)


def _sampled(n_trials: int) -> list[dict[str, Any]]:
    """A seeded study like hpo's (multivariate TPE, constant liar) on a mixed space."""
    sampler = optuna.samplers.TPESampler(seed=1, multivariate=True, constant_liar=True)
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        depth = trial.suggest_int("depth", 1, 4)
        act = trial.suggest_categorical("act", ["relu", "elu", "gelu"])
        dropout = trial.suggest_float("dropout", 0.0, 0.5, step=0.05)
        width = trial.suggest_int("width", 16, 512, log=True)
        return abs(math.log10(lr) + 3) + abs(depth - 2) + (act != "elu") + dropout + width / 500

    study.optimize(objective, n_trials=n_trials)
    return [t.params for t in study.trials]


def test_a_seeded_study_samples_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_truncnorm, "_log_ndtr", OPTUNAS_LOG_NDTR)
    optunas = _sampled(80)
    use_scipy_log_ndtr()
    scipys = _sampled(80)
    for before, after in zip(optunas, scipys, strict=True):
        assert before.keys() == after.keys()
        for name, value in before.items():
            if isinstance(value, float):
                assert math.isclose(after[name], value, rel_tol=1e-9), (name, value, after)
            else:
                assert after[name] == value


def test_hpos_tpe_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_truncnorm, "_log_ndtr", OPTUNAS_LOG_NDTR)
    sampler = make_sampler(load_spec(REPO / "studies" / "digits.yaml")[0])
    assert isinstance(sampler, FastTPESampler)
    assert _truncnorm._log_ndtr is scipy.special.log_ndtr


def _pruned_study(sampler: optuna.samplers.BaseSampler, n_trials: int) -> optuna.Study:
    """Pruned and complete trials, a param that only some trials have, and a trial that
    lacks the study's params: every path of TPE's split and of its conversion of params.
    Trials are told by hand, two running at once, so the constant liar sees one."""
    study = optuna.create_study(sampler=sampler)
    study.enqueue_trial({"lr": 1e-3}, skip_if_exists=False)  # only lr: it lacks the others
    waiting = study.ask()
    waiting.suggest_float("lr", 1e-5, 1e-1, log=True)
    for _ in range(n_trials):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        depth = trial.suggest_int("depth", 1, 4)
        act = trial.suggest_categorical("act", ["relu", "elu", "gelu"])
        if act == "gelu":  # conditional: TPE samples it on its own
            trial.suggest_float("gelu_scale", 0.5, 2.0)
        loss = abs(np.log10(lr) + 3) + abs(depth - 2) + (act != "elu")
        # Most trials pruned, the worse ones sooner: TPE then ranks pruned trials too.
        last = 3 if trial.number % 12 == 0 else min(int(2 * loss), 2)
        for step in range(last + 1):
            trial.report(loss * (1 + 1 / (step + 1)), step)
        if last == 3:
            study.tell(trial, loss)
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    study.tell(waiting, 10.0)
    return study


def test_fast_tpe_samples_what_optunas_tpe_samples() -> None:
    # Both with scipy's log_ndtr: this compares the rest, which must agree exactly.
    use_scipy_log_ndtr()
    kwargs: dict[str, Any] = {"seed": 3, "multivariate": True, "constant_liar": True}
    optunas = _pruned_study(optuna.samplers.TPESampler(**kwargs), 120)
    fast = _pruned_study(FastTPESampler(**kwargs), 120)
    states = [t.state for t in optunas.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 100  # the split ranks pruned ones
    assert sum("gelu_scale" in t.params for t in optunas.trials) >= 5
    assert [t.state for t in fast.trials] == states
    assert [t.params for t in fast.trials] == [t.params for t in optunas.trials]
