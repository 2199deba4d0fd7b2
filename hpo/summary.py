"""Display: a study and its ensemble as Rich tables and short lines (numbers rounded).

The only module besides the CLI and :mod:`hpo.progress` that imports Rich. ``--json``
output does not come through here: it prints :func:`hpo.storage.stored.trial_summary` exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import optuna
from rich.console import RenderableType
from rich.table import Table

from hpo.storage import stored
from hpo.storage.stored import Leaderboard, best_trials, objective_name, study_metric

if TYPE_CHECKING:
    from hpo.spec import StudySpec
    from hpo.studies.launch import WorkerShare

DIGITS = 4  # decimals of a score in tables and lines


def fmt(value: Any, digits: int = DIGITS, *, sig: bool = False) -> str:
    """A number for people: ``digits`` decimals (``sig``: two significant digits)."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.2g}" if sig else f"{value:.{digits}f}"


def fmt_mapping(values: dict[str, Any], *, significant: bool = False) -> str:
    """``key value, key value``: no Python dict on the screen. Scores get four decimals;
    ``significant`` (params such as a learning rate of 7e-05): four significant digits."""
    return ", ".join(
        f"{k} {f'{v:.4g}' if significant and isinstance(v, float) else fmt(v)}"
        for k, v in values.items()
    )


def trials_table(study: optuna.Study, top: int = 5) -> Table:
    """The best ``top`` trials: the NN study shows epochs and optimizer, the GBM study
    rounds, depth and learning rate."""
    rows = best_trials(study, top)
    metric, objective = study_metric(study), objective_name(study)
    title = f"{study.study_name}: best {len(rows)} trial{'s' if len(rows) != 1 else ''}"
    table = Table(title=title, title_justify="left")
    # Regression's default metric is its objective (val_rmse): one column, not two.
    metric_columns = [part for part in ("val", "test") if f"{part}_{metric}" != objective]
    family = _GBM_COLUMNS if stored.study_kind(study) == "gbm" else _NN_COLUMNS
    for column, width in (
        ("#", 3),
        (objective, 8),
        *[(f"{part} {metric}", 6) for part in metric_columns],
        *[(name, 6) for name, _ in family],
        ("secs", 5),
    ):
        table.add_column(column, justify="right", min_width=width)
    table.add_column("architecture", overflow="fold", ratio=1)
    for t in rows:
        a = t.user_attrs
        table.add_row(
            str(t.number),
            fmt(t.value),
            *[fmt(a.get(f"{part}_{metric}")) for part in metric_columns],
            *[cell(t) for _, cell in family],
            fmt(a.get(stored.TRAIN_SECONDS), 1),
            str(a.get(stored.ARCHITECTURE, "")),
        )
    return table


_Cell = Any  # Callable[[FrozenTrial], str]
_NN_COLUMNS: list[tuple[str, _Cell]] = [
    ("epochs", lambda t: fmt(t.user_attrs.get(stored.EPOCHS_RUN))),
    ("optimizer", lambda t: str(t.params.get("optimizer", ""))),
    ("lr", lambda t: fmt(t.params.get("learning_rate"), sig=True)),
]
_GBM_COLUMNS: list[tuple[str, _Cell]] = [
    ("rounds", lambda t: fmt(t.user_attrs.get(stored.ROUNDS_USED))),
    ("depth", lambda t: fmt(t.params.get("max_depth"))),
    ("lr", lambda t: fmt(t.params.get("learning_rate"), sig=True)),
]


def best_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """``Best trial #9: val_log_loss 0.1234 (val_accuracy 0.9694, test_accuracy 0.9611)``."""
    metrics = stored.trial_summary(trial)["metrics"]
    shown = f" ({fmt_mapping(metrics)})" if metrics else ""
    return f"Best trial #{trial.number}: {objective_name(study)} {fmt(trial.value)}{shown}"


def run_summary(
    spec: StudySpec, studies: Iterable[optuna.Study], leaderboard: Leaderboard
) -> list[RenderableType]:
    """What ``hpo run`` prints: each study's best trials and best line, then the leaderboard."""
    shown: list[RenderableType] = []
    for study in studies:
        ranked = best_trials(study, 1)  # inside the current search space
        if ranked:
            shown += [trials_table(study), best_line(study, ranked[0])]
    return [*shown, leaderboard_table(spec.name, leaderboard, spec.ensemble.method)]


def worker_line(share: WorkerShare) -> str:
    """``digits-nn: 40/40 finished trials, 11 run by this worker``."""
    done = f"{share.finished}/{share.target} finished trials"
    return f"{share.study_name}: {done}, {share.mine} run by this worker"


def best_lines(study_name: str, summary: dict[str, Any]) -> list[str]:
    """``hpo best`` as text: the :func:`hpo.storage.stored.trial_summary` fields, rounded."""
    return [
        f"[bold]{study_name}[/] best trial #{summary['number']}: "
        f"{summary['objective']} {fmt(summary['value'])}",
        f"  metrics: {fmt_mapping(summary['metrics'])}",
        f"  architecture: {summary['architecture']}",
        f"  params: {fmt_mapping(summary['params'], significant=True)}",
    ]


def status_line(study: optuna.Study) -> str:
    """``digits-nn: complete 18, pruned 2; best val_log_loss 0.1234 (trial 9)``."""
    counts = ", ".join(f"{k.lower()} {v}" for k, v in stored.state_counts(study).items())
    try:
        best = (
            f"best {objective_name(study)} {fmt(study.best_value)} "
            f"(trial {study.best_trial.number})"
        )
    except ValueError:
        best = "no completed trial yet"
    return f"[bold]{study.study_name}[/]: {counts or 'no trials'}; {best}"


def studies_table(title: str, summaries: list[optuna.study.StudySummary]) -> Table:
    """``hpo studies``: one row per study in the storage."""
    table = Table(title=title, title_justify="left")
    for column in ("study", "trials", "best value", "dataset", "task"):
        table.add_column(column)
    for s in summaries:
        best = s.best_trial.value if s.best_trial else None
        table.add_row(
            s.study_name,
            str(s.n_trials),
            fmt(best),
            str(s.user_attrs.get(stored.DATASET, "")),
            str(s.user_attrs.get(stored.TASK, "")),
        )
    return table


def leaderboard_table(name: str, leaderboard: Leaderboard, spec_method: str | None = None) -> Table:
    """The ensemble leaderboard: members ranked by the validation metric, then both ensembles,
    then the no-skill baseline; ``*`` marks the chosen ensemble, and the title says how to
    export it (``spec_method``: what ``hpo export`` writes without ``--method``). Binary
    tasks add ROC AUC."""
    metric, loss, rows = leaderboard.metric, leaderboard.loss, leaderboard.rows
    extra = [m for m in ("roc_auc",) if m != metric and any(r.score(f"val_{m}") for r in rows)]
    method = leaderboard.method
    how = (
        "`hpo export` writes it"
        if spec_method in (None, method)
        else f"`hpo export --method {method}` writes it"
    )
    title = f"{name}: ensemble leaderboard (* {method} ensemble; {how})"
    left_out = ", ".join(f"{n} {k}" for n, k in leaderboard.left_out.items() if k)
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
    exported = Leaderboard.ensemble_name(leaderboard.method)
    for row in rows:
        table.add_row(
            row.name + (" *" if row.name == exported else ""),
            row.kind,
            fmt(row.weight, 3),
            *([fmt(row.val_loss)] if show_loss else []),
            fmt(row.val_metric),
            fmt(row.test_metric),
            *[fmt(row.score(f"{part}_{m}")) for m in extra for part in ("val", "test")],
            style="bold" if row.kind == "ensemble" else None,
        )
    baseline = leaderboard.baseline
    if baseline:
        table.add_row(
            f"no skill ({baseline.name})",
            "baseline",
            "",
            *([fmt(baseline.val_loss)] if show_loss else []),
            fmt(baseline.val_metric),
            style="dim",
        )
    return table
