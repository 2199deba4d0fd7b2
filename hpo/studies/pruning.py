"""Optuna's Hyperband pruner, deciding the same, without a storage round trip every step.

On every ``should_prune`` Optuna's Hyperband builds a bracket study (a query) and its
successive-halving bracket reads the trial's system attrs from storage (several queries)
to learn which rungs the trial has passed. Yet a bracket can only prune at a rung's
promotion step, ``min_resource * reduction_factor ** (bracket + rung)``: below it,
Optuna's answer is "continue", with nothing read that matters and nothing written. This
pruner gives that answer itself and asks Optuna only at promotion steps: with 30 epochs
that is at most 4 of the 30 checks, and in most brackets 1 or 2.

When it does ask, Optuna's successive halving walks every trial of the bracket for the
values at the trial's rung, and its bracket study finds those trials by hashing every
trial's number with the study's name, through a method call per trial: at 1000 trials
either took longer than the rest of the check. A trial's bracket never changes, nor do a
finished trial's rungs, so this pruner computes each number's bracket once and keeps each
bracket's values by rung as its trials finish; only running trials are read each time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import optuna
from optuna.pruners._successive_halving import (
    _completed_rung_key,
    _get_current_rung,
    _is_trial_promotable_to_next_rung,
)
from optuna.trial import FrozenTrial, TrialState

from hpo.storage.trial_cache import FINISHED, RUNNING, not_seen


class LeanHyperbandPruner(optuna.pruners.HyperbandPruner):
    """:class:`optuna.pruners.HyperbandPruner` (same arguments, same decisions), which
    consults Optuna only at the steps where Hyperband can prune.

    Why the decisions are the same: Optuna's bracket pruner returns False, and writes
    nothing, whenever the step is below the promotion step of the trial's current rung.
    Before the first call for a trial, its current rung is at least 0, so every step below
    rung 0's promotion step gets that answer. After a call that returned False at step
    ``s``, Optuna has passed the trial through every rung whose promotion step is at most
    ``s`` (it walks up the rungs until one lies above ``s``), so every step below the next
    promotion step above ``s`` gets that answer too, until Optuna is asked again. Only this
    process writes a running trial's rungs, so nothing else moves them in between.
    """

    def __init__(self, min_resource: int, max_resource: int, reduction_factor: int = 3) -> None:
        super().__init__(min_resource, max_resource, reduction_factor)
        self._next_check: dict[int, int] = {}  # trial id -> the next step Optuna must see
        self._brackets: dict[str, list[int]] = {}  # study name -> bracket id by trial number
        self._done: dict[tuple[str, int], _RungValues] = {}  # by (study name, bracket)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not self._pruners:  # Optuna sets its brackets up on the first call
            return super().prune(study, trial)
        bracket = self._get_bracket_id(study, trial)
        if step < self._next_check.get(trial._trial_id, self._promotion_step(bracket, 0)):
            return False
        pruned = self._successive_halving(study, trial, bracket, step)
        if pruned:
            self._next_check.pop(trial._trial_id, None)
        else:
            self._next_check[trial._trial_id] = self._next_promotion_step(bracket, step)
        return pruned

    def _successive_halving(
        self, study: optuna.Study, trial: FrozenTrial, bracket: int, step: int
    ) -> bool:
        """Optuna's ``SuccessiveHalvingPruner.prune`` for ``bracket`` (the same rungs, the
        same writes, the same answer), with the values the trial competes with at a rung
        taken from the bracket's finished trials' values kept by rung, and from its
        running trials read at the point where Optuna reads the bracket's trials."""
        halving = self._pruners[bracket]
        rung = _get_current_rung(trial)
        value = trial.intermediate_values[step]
        done: dict[str, list[float]] | None = None
        running: list[FrozenTrial] = []
        while True:
            if step < self._promotion_step(bracket, rung):
                return False
            if math.isnan(value):
                return True
            if done is None:
                done, running = self._bracket_values(study, bracket)
            rung_key = _completed_rung_key(rung)
            study._storage.set_trial_system_attr(trial._trial_id, rung_key, value)
            competing = [
                *done.get(rung_key, ()),
                *(t.system_attrs[rung_key] for t in running if rung_key in t.system_attrs),
                value,
            ]
            if len(competing) <= halving._bootstrap_count:
                return True
            if not _is_trial_promotable_to_next_rung(
                value, competing, self._reduction_factor, study.direction
            ):
                return True
            rung += 1

    def _bracket_values(
        self, study: optuna.Study, bracket: int
    ) -> tuple[dict[str, list[float]], list[FrozenTrial]]:
        """What successive halving compares a trial of ``bracket`` with: the values by rung
        of the bracket's trials that are done (kept: they never change), and its running
        and waiting trials, itself among them, as Optuna's bracket study holds them."""
        done = study.get_trials(deepcopy=False, states=DONE)
        running = study.get_trials(deepcopy=False, states=LIVE)
        last = max((t.number for t in (*done[-1:], *running)), default=-1)
        ids = self._bracket_ids(study, last)
        kept = self._done.setdefault((study.study_name, bracket), _RungValues())
        for t in not_seen(done, kept.seen):
            kept.seen.add(t.number)
            if ids[t.number] == bracket:
                for key, value in t.system_attrs.items():
                    if key.startswith(RUNG_KEY_PREFIX):
                        kept.values.setdefault(key, []).append(value)
        return kept.values, [t for t in running if ids[t.number] == bracket]

    def _get_bracket_id(self, study: optuna.Study, trial: FrozenTrial) -> int:
        if not self._pruners:  # not set up yet: Optuna answers 0
            return super()._get_bracket_id(study, trial)
        return self._bracket_ids(study, trial.number)[trial.number]

    def _bracket_ids(self, study: optuna.Study, up_to: int) -> list[int]:
        """The bracket of each of the study's trial numbers, at least up to ``up_to``."""
        ids = self._brackets.setdefault(study.study_name, [])
        while len(ids) <= up_to:
            ids.append(super()._get_bracket_id(study, _Numbered(len(ids))))  # type: ignore[arg-type]
        return ids

    def _promotion_step(self, bracket: int, rung: int) -> int:
        """The step at which a trial of ``bracket`` is judged for rung ``rung``."""
        return self._min_resource * self._reduction_factor ** (bracket + rung)

    def _next_promotion_step(self, bracket: int, step: int) -> int:
        rung = 0
        while self._promotion_step(bracket, rung) <= step:
            rung += 1
        return self._promotion_step(bracket, rung)


@dataclass(frozen=True)
class _Numbered:
    """A trial number, all Optuna's bracket hash reads of a trial."""

    number: int


# Trials whose rungs never change again, and those whose rungs may (a retried trial waits
# with the rungs of the one that failed); Optuna's bracket study holds both.
DONE = (*FINISHED, TrialState.FAIL)
LIVE = (*RUNNING, TrialState.WAITING)
RUNG_KEY_PREFIX = _completed_rung_key(0).removesuffix("0")  # "completed_rung_"


@dataclass
class _RungValues:
    """A bracket's done trials' values by rung (by the rung's system attr), gathered as
    they are read, and the numbers of the done trials looked at."""

    values: dict[str, list[float]] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)
