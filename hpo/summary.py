"""Read a study back from storage and summarize it (for ``status``, ``best`` and ``run``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.table import Table

from hpo.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, default_metric
from hpo.resume import current_space

# Every metric a trial may record (hpo.metrics.recorded_metrics), val then test.
METRIC_KEYS = tuple(
    f"{part}_{name}"
    for name in CLASSIFICATION_METRICS + REGRESSION_METRICS
    for part in ("val", "test")
)


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


def objective_name(study: optuna.Study) -> str:
    """The objective's name (``val_log_loss``, ``val_rmse``); studies made before it was
    named say ``val loss``."""
    return (study.metric_names or ["val loss"])[0]


def study_metric(study: optuna.Study) -> str:
    """The spec's ``metric:`` of a study, or its task's default."""
    attrs = study.user_attrs
    return attrs.get("spec", {}).get("metric") or default_metric(attrs.get("task", "multiclass"))


def trials_table(study: optuna.Study, top: int = 5) -> Table:
    table = Table(title=f"{study.study_name}: best {top} trials", title_justify="left")
    metric = study_metric(study)
    objective = objective_name(study)
    # Regression's default metric is its objective (val_rmse): one column, not two.
    metric_columns = [part for part in ("val", "test") if f"{part}_{metric}" != objective]
    for column, width in (
        ("#", 3),
        (objective, 8),
        *[(f"{part} {metric}", 6) for part in metric_columns],
        ("epochs", 6),
        ("secs", 5),
    ):
        table.add_column(column, justify="right", min_width=width)
    table.add_column("optimizer", min_width=12)
    table.add_column("architecture", overflow="fold", ratio=1)
    for t in best_trials(study, top):
        a = t.user_attrs
        table.add_row(
            str(t.number),
            f"{t.value:.4f}",
            *[_fmt(a.get(f"{part}_{metric}")) for part in metric_columns],
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
    """The ensemble leaderboard: members ranked by the validation metric, then both ensembles,
    then the no-skill baseline; ``*`` marks the exported ensemble. Binary tasks add ROC AUC."""
    metric = leaderboard["metric"]
    loss = leaderboard.get("loss", "loss")
    rows = leaderboard["rows"]
    extra = [m for m in ("roc_auc",) if m != metric and any(f"val_{m}" in row for row in rows)]
    title = f"{name}: ensemble leaderboard (exported: {leaderboard['method']}, * below)"
    left_out = ", ".join(f"{n} {k}" for n, k in leaderboard.get("left_out", {}).items() if k)
    caption = f"left out, outside the current search space: {left_out}" if left_out else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("member")
    table.add_column("kind")
    # The loss column unless the metric is the loss (regression's rmse): then once.
    show_loss = loss != metric
    columns = ["weight", *([f"val {loss}"] if show_loss else []), f"val {metric}", f"test {metric}"]
    columns += [f"{part} {m}" for m in extra for part in ("val", "test")]
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        exported = row["name"] == f"ensemble ({leaderboard['method']})"
        table.add_row(
            row["name"] + (" *" if exported else ""),
            row["kind"],
            _fmt(row["weight"], 3),
            *([_fmt(row["val_loss"])] if show_loss else []),
            _fmt(row["val_metric"]),
            _fmt(row["test_metric"]),
            *[_fmt(row.get(f"{part}_{m}")) for m in extra for part in ("val", "test")],
            style="bold" if row["kind"] == "ensemble" else None,
        )
    baseline = leaderboard.get("baseline")
    if baseline:
        table.add_row(
            f"no skill ({baseline['name']})",
            "baseline",
            "",
            *([_fmt(baseline["val_loss"])] if show_loss else []),
            _fmt(baseline["val_metric"]),
            style="dim",
        )
    return table
