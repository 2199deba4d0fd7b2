"""Read a study back from storage and summarize it (for ``status``, ``best`` and ``run``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.table import Table

from hpo.resume import current_space

METRIC_KEYS = ("val_accuracy", "test_accuracy", "val_rmse", "test_rmse")


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {state.name: counts.get(state.name, 0) for state in TrialState if counts.get(state.name)}


def best_trials(study: optuna.Study, top: int = 5) -> list[optuna.trial.FrozenTrial]:
    """The best completed trials inside the study's current search space (a narrowed space
    leaves out trials the spec no longer asks for)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    space = current_space(study)
    if space is not None:
        done = [t for t in done if space.contains_params(t.params)]
    return sorted(done, key=lambda t: t.value if t.value is not None else float("inf"))[:top]


def trial_summary(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A JSON-ready description of one finished trial."""
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "value": trial.value,
        "params": trial.params,
        "metrics": {k: attrs[k] for k in METRIC_KEYS if k in attrs},
        "architecture": attrs.get("architecture"),
        "epochs_run": attrs.get("epochs_run"),
        "train_seconds": attrs.get("train_seconds"),
        "device": attrs.get("device"),
        "artifact_id": attrs.get("artifact_id"),
    }


def trials_table(study: optuna.Study, top: int = 5) -> Table:
    table = Table(title=f"{study.study_name}: best {top} trials", title_justify="left")
    for column, width in (
        ("#", 3),
        ("val loss", 8),
        ("val", 6),
        ("test", 6),
        ("epochs", 6),
        ("secs", 5),
    ):
        table.add_column(column, justify="right", min_width=width)
    table.add_column("optimizer", min_width=12)
    table.add_column("architecture", overflow="fold", ratio=1)
    for t in best_trials(study, top):
        a = t.user_attrs
        val = a.get("val_accuracy", a.get("val_rmse"))
        test = a.get("test_accuracy", a.get("test_rmse"))
        table.add_row(
            str(t.number),
            f"{t.value:.4f}",
            _fmt(val),
            _fmt(test),
            str(a.get("epochs_run", "")),
            _fmt(a.get("train_seconds"), 1),
            f"{t.params.get('optimizer', '')} {_fmt(t.params.get('learning_rate'), sig=True)}",
            str(a.get("architecture", "")),
        )
    return table


def _fmt(value: Any, digits: int = 4, *, sig: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:.2g}" if sig else f"{value:.{digits}f}"


def leaderboard_table(name: str, leaderboard: dict[str, Any]) -> Table:
    """The ensemble leaderboard: members, then both ensembles; ``*`` marks the exported one."""
    metric = leaderboard["metric"]
    title = f"{name}: ensemble leaderboard (exported: {leaderboard['method']}, * below)"
    left_out = ", ".join(f"{n} {k}" for n, k in leaderboard.get("left_out", {}).items() if k)
    caption = f"left out, outside the current search space: {left_out}" if left_out else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("member")
    table.add_column("kind")
    for column in ("weight", "val loss", f"val {metric}", f"test {metric}"):
        table.add_column(column, justify="right")
    for row in leaderboard["rows"]:
        exported = row["name"] == f"ensemble ({leaderboard['method']})"
        table.add_row(
            row["name"] + (" *" if exported else ""),
            row["kind"],
            _fmt(row["weight"], 3),
            _fmt(row["val_loss"]),
            _fmt(row["val_metric"]),
            _fmt(row["test_metric"]),
            style="bold" if row["kind"] == "ensemble" else None,
        )
    return table
