"""Optuna's TPE, drawing the same samples, with less work per sample.

TPE reads the whole study on every sample: at 1000 trials that cost more than a digits
trial's training (benchmarks/optuna_overhead.py). Two changes keep its answers and cut its
time (tests/test_fast_tpe.py checks that a seeded study samples the same params):

- **Φ and log Φ in C.** TPE scores its candidates under truncated normal kernels and
  computes the log of the normal CDF (``log_ndtr``) with a Python function applied
  element by element (``np.frompyfunc`` in ``optuna.samplers._tpe._truncnorm``), and the
  CDF itself (``_ndtr``) with ``math.erf`` element by element on arrays under 2000
  elements, because Optuna does not depend on scipy (optuna/optuna#5478). hpo does, and
  ``scipy.special.log_ndtr`` and ``ndtr`` are the same functions vectorized (they agree
  to 6e-8 relative and 1e-16 absolute). Optuna's module looks the names up on every call, so
  replacing them is enough.
- **A finished trial's part done once.** On every sample TPE converts every trial's params
  to its internal numbers and scores every pruned and infeasible trial to split the study
  into good and bad trials: Python work per trial and param, most of TPE's time at 1000
  trials. A finished trial never changes, so :class:`FastTPESampler` keeps both for each.

And with ``ahead``, a helper process draws the next trial's params while the current
trial trains (:mod:`hpo.studies.sample_ahead`), from when :func:`draw_next_now` says the
current trial's params are stored.

Should a later Optuna 5 move these private names, the tests fail in CI.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import optuna
import scipy.special
from optuna.distributions import BaseDistribution
from optuna.samplers._tpe import sampler as _tpe
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from hpo.storage.trial_cache import FINISHED, RUNNING
from hpo.studies.sample_ahead import DrawAhead

_truncnorm: ModuleType | None
try:
    from optuna.samplers._tpe import _truncnorm
except ImportError:  # pragma: no cover - a later Optuna; its TPE is used as it is
    _truncnorm = None

# As Optuna defines them (this module replaces them).
OPTUNAS_LOG_NDTR = getattr(_truncnorm, "_log_ndtr", None)
OPTUNAS_NDTR = getattr(_truncnorm, "_ndtr", None)

Score = Callable[[FrozenTrial], Any]  # Optuna's key to rank a finished trial by

# Finished trials before a helper process draws ahead (AHEAD_FROM) and before it is
# started, so that it has imported TPE by then (AHEAD_START). Below ~50 trials TPE's draw
# takes a few ms, no more than sending the study to the helper; shorter studies (the
# tests') start none.
AHEAD_START = 30
AHEAD_FROM = 50


def use_scipys_normal_cdf() -> None:
    """Make Optuna's TPE compute Φ and log Φ with scipy (idempotent; for the whole process)."""
    if OPTUNAS_LOG_NDTR is not None and OPTUNAS_NDTR is not None:
        _truncnorm._log_ndtr = scipy.special.log_ndtr  # type: ignore[union-attr]
        _truncnorm._ndtr = scipy.special.ndtr  # type: ignore[union-attr]


def draw_next_now(sampler: optuna.samplers.BaseSampler) -> None:
    """Let ``sampler``'s helper start drawing the next trial's params, if it has one and
    was asked: the current trial's params are drawn and stored, and it trains now."""
    if isinstance(sampler, FastTPESampler) and sampler.ahead is not None:
        sampler.ahead.send()


class FastTPESampler(optuna.samplers.TPESampler):
    """:class:`optuna.samplers.TPESampler` (same arguments, same samples) that converts and
    scores each finished trial once. One instance samples one study (trials are known by
    number), as hpo makes them (:func:`hpo.studies.study.make_sampler`)."""

    def __init__(self, *, ahead: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        use_scipys_normal_cdf()
        # A helper that draws each next trial's relative params while a trial trains.
        self.ahead = DrawAhead(kwargs) if ahead else None
        self._space: tuple[tuple[str, BaseDistribution], ...] = ()
        # Finished trial number -> its params' internal values in the order of ``_space``
        # (None where it lacks one of them).
        self._rows: dict[int, tuple[float, ...] | None] = {}
        # Finished trial number -> Optuna's scores to split it by: infeasibility, pruned rank.
        self._infeasible: dict[int, float] = {}
        self._pruned: dict[int, tuple[float, float]] = {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        params = super().sample_relative(study, trial, search_space)
        if self.ahead is not None and self.ahead.usable and search_space:
            self._draw_ahead(study, trial, search_space)
        return params

    def _sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self.ahead is not None and search_space:
            drawn = self.ahead.take(trial.number, search_space)
            if drawn is not None:
                return drawn
        return super()._sample_relative(study, trial, search_space)

    def _draw_ahead(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> None:
        """Ask the helper for the draw of trial ``trial.number + 1`` over the same space,
        from the trials ``_sample`` reads now, this one running. (The study is the one this
        trial drew from: a Hyperband bracket's view of it, whose ``_get_trials``, what TPE
        reads, is the whole study's for every bracket.)"""
        assert self.ahead is not None
        if study._is_multi_objective() or not self._constant_liar:
            return  # only the single-objective draw with the running trials is done ahead
        if trial.number < max(AHEAD_START, self._n_startup_trials):
            return  # fewer finished trials than that: no need to read the study to know
        # Finished ones first: a trial that ends between the two reads is then in neither
        # (drawn without, as if it had ended a moment later), never in both.
        finished = study._get_trials(deepcopy=False, states=FINISHED, use_cache=False)
        if len(finished) < max(AHEAD_START, self._n_startup_trials):
            return
        if len(finished) < max(AHEAD_FROM, self._n_startup_trials):
            self.ahead.start()  # warm it up
            return
        running = study._get_trials(deepcopy=False, states=RUNNING, use_cache=False)
        seed = int(self._rng.rng.randint(2**31 - 1))
        self.ahead.request(
            trial.number + 1, finished, running, study.directions, search_space, seed
        )

    def _get_internal_repr(
        self, trials: list[FrozenTrial], search_space: dict[str, BaseDistribution], study: Study
    ) -> dict[str, np.ndarray]:
        # Optuna's, with each finished trial's row kept for the next sample.
        space = tuple(search_space.items())
        if space != self._space:
            self._space, self._rows = space, {}
        rows = []
        for trial in trials:
            if not trial.state.is_finished():  # a running trial's params may still come
                row = self._row(trial, search_space, study)
            elif trial.number in self._rows:
                row = self._rows[trial.number]
            else:
                row = self._rows[trial.number] = self._row(trial, search_space, study)
            if row is not None:
                rows.append(row)
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in search_space]
        return {name: np.asarray(col) for name, col in zip(search_space, columns, strict=True)}

    def _row(
        self, trial: FrozenTrial, search_space: dict[str, BaseDistribution], study: Study
    ) -> tuple[float, ...] | None:
        params = self._get_params(trial, study)
        if not search_space.keys() <= params.keys():
            return None
        return tuple(d.to_internal_repr(params[name]) for name, d in search_space.items())

    def _sample(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if study._is_multi_objective():
            return super()._sample(study, trial, search_space)
        # Optuna 5's TPESampler._sample for one objective, splitting with _split_trials below.
        if self._constant_liar:
            states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]
        else:
            states = [TrialState.COMPLETE, TrialState.PRUNED]
        trials = study._get_trials(deepcopy=False, states=states, use_cache=not self._constant_liar)
        if self._constant_liar:
            trials = [t for t in trials if trial.number != t.number]
        if self._gamma is None:
            self._gamma = _tpe.default_gamma
        n = sum(t.state != TrialState.RUNNING for t in trials)
        below_trials, above_trials = self._split_trials(study, trials, self._gamma(n))
        mpe_below = self._build_parzen_estimator(study, search_space, below_trials, True)
        mpe_above = self._build_parzen_estimator(study, search_space, above_trials, False)
        samples_below = mpe_below.sample(self._rng.rng, self._n_ei_candidates)
        acq_func_vals = self._compute_acquisition_func(samples_below, mpe_below, mpe_above)
        ret = self._compare(samples_below, acq_func_vals)
        for param_name, dist in search_space.items():
            ret[param_name] = dist.to_external_repr(ret[param_name])
        return ret

    def _split_trials(
        self, study: Study, trials: list[FrozenTrial], n_below: int
    ) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
        """Optuna 5's ``_split_trials`` for one objective, with each finished trial's
        scores kept."""
        complete, pruned, running, infeasible = [], [], [], []
        for trial in trials:
            if trial.state == TrialState.RUNNING:
                running.append(trial)
            elif self._score(self._infeasible, trial, _tpe._get_infeasible_trial_score) > 0:
                infeasible.append(trial)
            elif trial.state == TrialState.COMPLETE:
                complete.append(trial)
            elif trial.state == TrialState.PRUNED:
                pruned.append(trial)
            else:
                raise AssertionError(trial.state)
        below_complete, above_complete = _tpe._split_complete_trials(complete, study, n_below)
        n_below = max(0, n_below - len(below_complete))
        below_pruned, above_pruned = self._split_by(
            pruned, n_below, self._pruned, lambda t: _tpe._get_pruned_trial_score(t, study)
        )
        n_below = max(0, n_below - len(below_pruned))
        below_infeasible, above_infeasible = self._split_by(
            infeasible, n_below, self._infeasible, _tpe._get_infeasible_trial_score
        )
        below = below_complete + below_pruned + below_infeasible
        above = above_complete + above_pruned + above_infeasible + running
        below.sort(key=lambda t: t.number)
        above.sort(key=lambda t: t.number)
        return below, above

    def _split_by(
        self, trials: list[FrozenTrial], n_below: int, memo: dict[int, Any], score: Score
    ) -> tuple[list[FrozenTrial], list[FrozenTrial]]:
        """The ``n_below`` lowest-scored ``trials``, and the rest (a stable sort, as Optuna's)."""
        n_below = min(n_below, len(trials))
        ranked = sorted(trials, key=lambda t: self._score(memo, t, score))
        return ranked[:n_below], ranked[n_below:]

    @staticmethod
    def _score(memo: dict[int, Any], trial: FrozenTrial, score: Score) -> Any:
        """``score(trial)``, computed once per finished trial."""
        if trial.number not in memo:
            memo[trial.number] = score(trial)
        return memo[trial.number]
