"""A trial's learning curve: checked by the pruner every step, written in few transactions.

Optuna's ``trial.report`` commits every value on its own, so a 30-epoch digits trial or a
150-round XGBoost trial spent more time in storage than training. The pruner needs only
the trial's own values, which Optuna's ``Trial`` keeps in memory, and the values of other
trials, which it reads from storage but which Optuna's pruners take from finished trials
(or, for Hyperband, from rung attrs it writes itself). So :class:`Curve` checks the pruner
at every step as before, and writes the values in batches: with the trial's last attrs,
or when :data:`FLUSH_S` has passed, so a slow trial's curve stays live on the dashboard.
"""

from __future__ import annotations

import time
import warnings

import optuna

from hpo.storage.backend import write_trial

FLUSH_S = 2.0  # the longest a reported value waits before it is written


class Curve:
    """One trial's intermediate values: report each step, and hand what is not yet written
    to the trial's next write (:meth:`take`), or write it (:meth:`flush`)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.pending: dict[int, float] = {}
        self.written_at = time.monotonic()

    def report(self, value: float, step: int) -> bool:
        """Record ``value`` at ``step`` and ask the pruner: True means prune now.

        ``trial.report`` then ``trial.should_prune``, except that the value reaches storage
        with the trial's next write, at most :data:`FLUSH_S` later.
        """
        # Where trial.report keeps it, and where should_prune reads the trial from.
        reported = self.trial._cached_frozen_trial.intermediate_values
        if step in reported:  # as trial.report: the first value of a step stays
            warnings.warn(f"step {step} was reported already: {value} is ignored", stacklevel=2)
        else:
            reported[step] = self.pending[step] = float(value)
        if time.monotonic() - self.written_at >= FLUSH_S:
            self.flush()
        return self.trial.should_prune()

    def take(self) -> dict[int, float]:
        """The values not yet written, for a write that includes them."""
        pending, self.pending = self.pending, {}
        self.written_at = time.monotonic()
        return pending

    def flush(self) -> None:
        if self.pending:
            write_trial(self.trial, {}, self.take())
