"""hpo's faster TPE samples what Optuna's own TPE samples (hpo.studies.fast_tpe)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import scipy.special
from helpers import mixed_space
from optuna.samplers._tpe import _truncnorm

from hpo.spec import load_spec
from hpo.studies.fast_tpe import (
    OPTUNAS_LOG_NDTR,
    OPTUNAS_NDTR,
    FastTPESampler,
    use_scipys_normal_cdf,
)
from hpo.studies.study import make_sampler

REPO = Path(__file__).resolve().parent.parent


def _optunas_normal_cdf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna's own Φ and log Φ, even where an earlier test's make_sampler replaced them;
    restored after the test."""
    monkeypatch.setattr(_truncnorm, "_log_ndtr", OPTUNAS_LOG_NDTR)
    monkeypatch.setattr(_truncnorm, "_ndtr", OPTUNAS_NDTR)


def test_the_normal_cdf_and_its_log_agree_with_optunas(monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.concatenate([np.linspace(-60.0, 60.0, 4001), [-1e3, -20.0, 0.0, 6.0, 1e3]])
    _optunas_normal_cdf(monkeypatch)
    optunas = _truncnorm._log_ndtr(x), _truncnorm._ndtr(x[:1999])  # erf per element < 2000
    use_scipys_normal_cdf()
    assert _truncnorm._log_ndtr is scipy.special.log_ndtr
    assert _truncnorm._ndtr is scipy.special.ndtr
    scipys = _truncnorm._log_ndtr(x), _truncnorm._ndtr(x[:1999])
    for ours, theirs in zip(scipys, optunas, strict=True):
        assert ours.shape == theirs.shape and ours.dtype == np.float64
    np.testing.assert_allclose(scipys[0], optunas[0], rtol=1e-7, atol=1e-300)
    # Optuna's 0.5 + 0.5 erf(x / sqrt 2) rounds to 0 in the far left tail, where scipy's does not.
    np.testing.assert_allclose(scipys[1], optunas[1], rtol=1e-14, atol=1e-16)


def _sampled(n_trials: int) -> list[dict[str, Any]]:
    """A seeded study like hpo's (multivariate TPE, constant liar) on a mixed space."""
    sampler = optuna.samplers.TPESampler(seed=1, multivariate=True, constant_liar=True)
    study = optuna.create_study(sampler=sampler)
    study.optimize(mixed_space, n_trials=n_trials)
    return [t.params for t in study.trials]


def test_a_seeded_study_samples_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    _optunas_normal_cdf(monkeypatch)
    optunas = _sampled(80)
    use_scipys_normal_cdf()
    scipys = _sampled(80)
    for before, after in zip(optunas, scipys, strict=True):
        assert before.keys() == after.keys()
        for name, value in before.items():
            if isinstance(value, float):
                assert math.isclose(after[name], value, rel_tol=1e-9), (name, value, after)
            else:
                assert after[name] == value


def test_hpos_tpe_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    _optunas_normal_cdf(monkeypatch)
    sampler = make_sampler(load_spec(REPO / "studies" / "digits.yaml")[0])
    assert isinstance(sampler, FastTPESampler)
    assert _truncnorm._log_ndtr is scipy.special.log_ndtr
    assert _truncnorm._ndtr is scipy.special.ndtr


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
    # Both with scipy's normal CDF: this compares the rest, which must agree exactly.
    use_scipys_normal_cdf()
    kwargs: dict[str, Any] = {"seed": 3, "multivariate": True, "constant_liar": True}
    optunas = _pruned_study(optuna.samplers.TPESampler(**kwargs), 120)
    fast = _pruned_study(FastTPESampler(**kwargs), 120)
    states = [t.state for t in optunas.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 100  # the split ranks pruned ones
    assert sum("gelu_scale" in t.params for t in optunas.trials) >= 5
    assert [t.state for t in fast.trials] == states
    assert [t.params for t in fast.trials] == [t.params for t in optunas.trials]
