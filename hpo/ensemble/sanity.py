"""Refuse a useless run: a study whose trials all ended without a value, or an ensemble no
better on validation than a model that knows nothing (the majority class, the mean).

``hpo run`` and ``hpo export`` both check, so such a run exits non-zero with one ``Error:``
line instead of presenting or exporting it; its trials stay in storage.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import optuna
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.models.metrics import HIGHER_IS_BETTER, MetricName, is_better

if TYPE_CHECKING:
    from hpo.storage.stored import Leaderboard


def check_studies_have_values(name: str, studies: list[optuna.Study | None]) -> None:
    """Fail when a study has finished trials and none of them has a value.

    Raises:
        HpoError: naming each such study and how its trials ended.
    """
    problems = []
    for study in studies:
        if study is None:
            continue
        states = [t.state for t in study.get_trials(deepcopy=False)]
        finished = [s for s in states if s in (TrialState.PRUNED, TrialState.FAIL)]
        if finished and TrialState.COMPLETE not in states:
            pruned = states.count(TrialState.PRUNED)
            failed = states.count(TrialState.FAIL)
            problems.append(
                f"{study.study_name}: all {len(finished)} finished trials ended without a value "
                f"({pruned} pruned, {failed} failed)"
            )
    if problems:
        raise HpoError(
            f"{name}: " + "; ".join(problems) + "; no ensemble built (the trials stay in storage)"
        )


def check_useful(name: str, leaderboard: Leaderboard) -> None:
    """Fail when no member and no ensemble beats the no-skill baseline on the validation
    metric.

    Raises:
        HpoError: with the best validation score and the baseline's.
    """
    metric = cast(MetricName, leaderboard.metric)
    baseline = leaderboard.baseline
    scored = [r for r in leaderboard.rows if math.isfinite(r.val_metric)]
    if not scored:
        raise HpoError(f"{name}: no model has a finite validation {metric}")
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    best = max(scored, key=lambda r: sign * r.val_metric)
    if baseline is not None and not is_better(metric, best.val_metric, baseline.val_metric):
        # Accuracy cannot beat the majority class on rare positives: name the metrics that can.
        hint = "; for imbalanced classes try metric: balanced_accuracy or roc_auc"
        raise HpoError(
            f"{name}: the best model ({best.name}, validation {metric} "
            f"{best.val_metric:.4f}) is no better than {baseline.name} "
            f"({baseline.val_metric:.4f}); nothing worth using was found "
            f"(the trials stay in storage{hint if metric == 'accuracy' else ''})"
        )
