"""Optuna's Hyperband pruner, deciding the same, without a storage round trip every step.

On every ``should_prune`` Optuna's Hyperband builds a bracket study (a query) and its
successive-halving bracket reads the trial's system attrs from storage (several queries)
to learn which rungs the trial has passed. Yet a bracket can only prune at a rung's
promotion step, ``min_resource * reduction_factor ** (bracket + rung)``: below it,
Optuna's answer is "continue", with nothing read that matters and nothing written. This
pruner gives that answer itself and asks Optuna only at promotion steps: with 30 epochs
that is at most 4 of the 30 checks, and in most brackets 1 or 2.

When it does ask, Optuna's bracket study finds the trials of the bracket by hashing every
trial's number with the study's name, through a method call per trial: at 1000 trials
that took longer than the rest of the check. A trial's bracket never changes, so this
pruner computes it once per number and picks the bracket's trials from a list.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field
from typing import cast

import optuna
from optuna.pruners._successive_halving import _completed_rung_key
from optuna.study import StudyDirection
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
        self._ranked: dict[tuple[str, int], _Ranked] = {}  # by (study name, bracket)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not self._pruners:  # Optuna sets its brackets up on the first call
            return super().prune(study, trial)
        bracket = self._get_bracket_id(study, trial)
        if step < self._next_check.get(trial._trial_id, self._promotion_step(bracket, 0)):
            return False
        # Optuna's Hyperband.prune from here on, with its bracket study made leaner.
        view = cast(optuna.Study, _RankedBracket(self, study, bracket))
        pruned = self._pruners[bracket].prune(view, trial)
        if pruned:
            self._next_check.pop(trial._trial_id, None)
        else:
            self._next_check[trial._trial_id] = self._next_promotion_step(bracket, step)
        return pruned

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


class _Bracket:
    """What a successive-halving bracket reads of the study: its trials in the bracket, its
    direction, its storage (Optuna's ``_BracketStudy`` gives it the same, and more)."""

    def __init__(self, pruner: LeanHyperbandPruner, study: optuna.Study, bracket: int) -> None:
        self._pruner = pruner
        self._study = study
        self._bracket = bracket
        self._storage = study._storage

    @property
    def direction(self) -> StudyDirection:
        return self._study.direction

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        if not trials:
            return trials
        last = trials[-1].number  # Optuna's storages give trials in number order
        ids = self._pruner._bracket_ids(self._study, last)
        if len(trials) == last + 1:  # numbers 0..n-1: each trial's bracket is at its index
            return [t for t, bracket in zip(trials, ids, strict=False) if bracket == self._bracket]
        return [t for t in trials if ids[t.number] == self._bracket]


FIRST_RUNG = _completed_rung_key(0)  # the system attr of a trial past a bracket's first rung


@dataclass
class _Ranked:
    """A bracket's finished trials past its first rung, gathered as trials finish (their
    rungs never change then), and the numbers of the finished trials looked at."""

    trials: list[FrozenTrial] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)


class _RankedBracket(_Bracket):
    """The bracket as successive halving reads it when it judges a trial: only its trials
    past the first rung, the only ones whose values it compares (a trial passes its rungs
    from the first up), in no particular order (it sorts the values). At 1000 trials,
    walking every trial of the bracket for a rung's values on each judgement took longer
    than the rest of the check. The finished ones are kept as they finish."""

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        if deepcopy or states is not None:  # not successive halving's read
            return super().get_trials(deepcopy, states)
        finished = self._study.get_trials(deepcopy=False, states=FINISHED)
        running = self._study.get_trials(deepcopy=False, states=RUNNING)
        last = max((t.number for t in (*finished[-1:], *running)), default=-1)
        ids = self._pruner._bracket_ids(self._study, last)
        key = (self._study.study_name, self._bracket)
        ranked = self._pruner._ranked.setdefault(key, _Ranked())
        for t in not_seen(finished, ranked.seen):
            ranked.seen.add(t.number)
            if self._compares(t, ids):
                ranked.trials.append(t)
        return ranked.trials + [t for t in running if self._compares(t, ids)]

    def _compares(self, trial: FrozenTrial, ids: list[int]) -> bool:
        """Whether ``trial`` is of this bracket and past its first rung."""
        return ids[trial.number] == self._bracket and FIRST_RUNG in trial.system_attrs
