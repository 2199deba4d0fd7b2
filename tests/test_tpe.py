"""hpo's TPE (hpo.studies.study.LeanTPESampler, vectorize_tpe_log_ndtr) is Optuna's TPE,
cheaper: these tests fail if the Optuna internals it relies on change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
from optuna.samplers._tpe import _truncnorm

from hpo.spec import load_spec
from hpo.studies.search_space import suggest
from hpo.studies.study import LeanTPESampler, vectorize_tpe_log_ndtr

SPEC = Path(__file__).parent.parent / "studies" / "digits.yaml"


def test_scipys_log_ndtr_matches_optunas() -> None:
    vectorize_tpe_log_ndtr()
    ours = _truncnorm._log_ndtr
    optunas = ours.optuna  # type: ignore[attr-defined]
    a = np.concatenate([np.linspace(-60, 60, 4001), -np.logspace(-8, 3, 200)])
    assert ours(a).shape == optunas(a).shape
    np.testing.assert_allclose(ours(a), optunas(a), rtol=1e-7, atol=1e-300)
    # And TPE still goes through it: its Gaussian mass is built on _log_ndtr.
    assert np.isclose(_truncnorm._log_gauss_mass(np.array([-1.0]), np.array([1.0]))[0],
                      np.log(0.6826894921370859))  # fmt: skip


def _trials(sampler: optuna.samplers.BaseSampler) -> tuple[list[dict[str, object]], int]:
    """A TPE study's trials (params) past the random start-up, and its storage reads."""
    space = load_spec(SPEC)[0].nn.search_space
    study = optuna.create_study(sampler=sampler)
    reads = 0
    read = study._storage.get_all_trials

    def counted(*args: object, **kwargs: object) -> list[optuna.trial.FrozenTrial]:
        nonlocal reads
        reads += 1
        return read(*args, **kwargs)  # type: ignore[arg-type]

    study._storage.get_all_trials = counted  # type: ignore[method-assign]
    study.optimize(lambda t: float(suggest(t, space)["dropout"]), n_trials=14)
    return [t.params for t in study.trials], reads


def test_lean_tpe_samples_as_optunas_with_one_read_less_per_trial() -> None:
    lean, lean_reads = _trials(LeanTPESampler(seed=1, multivariate=True, constant_liar=True))
    plain, plain_reads = _trials(
        optuna.samplers.TPESampler(seed=1, multivariate=True, constant_liar=True)
    )
    assert lean == plain  # one worker: no trial starts between the two reads
    assert plain_reads - lean_reads == 14 - 10  # one per trial past the 10 start-up trials
