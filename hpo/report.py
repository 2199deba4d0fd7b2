"""``hpo report``: one self-contained HTML file that shows how a study went.

The plots are optuna.visualization's (plotly), lightly restyled; plotly.js is inlined once
so that the file opens anywhere, offline. Everything is read back from the studies.
"""

from __future__ import annotations

import datetime as dt
import html
import os
from pathlib import Path
from typing import Any

import optuna
import plotly.colors
import plotly.graph_objects as go
import plotly.offline
from optuna.importance import FanovaImportanceEvaluator
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.storage import stored
from hpo.storage.stored import METRIC_KEYS, Leaderboard, state_counts

FEW_TRIALS = 20  # below this many completed trials, importances come with a caveat
PLOT_HEIGHT = 420  # px: readable on a laptop screen without scrolling inside a plot
STATE_STYLE = {  # learning curves: colour and dash by trial state
    "COMPLETE": ("#1f77b4", "solid"),
    "PRUNED": ("#d62728", "dot"),
    "RUNNING": ("#7f7f7f", "dash"),
}
# Best trials blue, worst red: both ends stay visible on white (optuna's Blues ends in white).
PARALLEL_SCALE = [[0.0, "rgb(33,102,172)"], [1.0, "rgb(214,96,77)"]]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1280px; margin: 0 auto; padding: 24px 32px 64px; line-height: 1.45; }
h1 { font-size: 1.8em; margin-bottom: 0.1em; }
h2 { font-size: 1.4em; margin-top: 2.2em; padding-bottom: 0.2em; border-bottom: 2px solid #ddd; }
h3 { font-size: 1.1em; margin: 1.6em 0 0.3em; }
p.meta, p.hint { color: #666; margin-top: 0; }
p.empty { color: #666; font-style: italic; }
table { border-collapse: collapse; font-size: 0.92em; }
td, th { padding: 4px 14px 4px 0; text-align: left; vertical-align: top; }
th { color: #555; font-weight: 600; white-space: nowrap; }
table.leaderboard th, table.leaderboard td { border-bottom: 1px solid #eee; padding-right: 18px; }
table.leaderboard td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.ensemble td { font-weight: 600; }
code { font-size: 0.95em; }
div.wide { overflow-x: auto; }
"""


def write_report(studies: list[optuna.Study], path: str | Path, *, title: str) -> Path:
    """Write the report of ``studies`` (``<name>-nn`` and ``<name>-gbm``) to ``path``.

    The file appears whole or not at all: it is written beside ``path`` and renamed.

    Raises:
        HpoError: the file cannot be written there.
    """
    path = Path(path)
    page = render_report(studies, title=title)
    if path.is_dir():
        raise HpoError(f"cannot write the report: {path} is a directory")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder: rename is atomic
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise HpoError(f"cannot write the report to {path}: {e.strerror or e}") from None
    return path


def render_report(studies: list[optuna.Study], *, title: str) -> str:
    """The report as one HTML page."""
    body: list[str] = [
        f"<h1>hpo report: {_esc(title)}</h1>",
        f"<p class='meta'>Studies {', '.join(_esc(s.study_name) for s in studies)}; "
        f"written {dt.datetime.now():%Y-%m-%d %H:%M}.</p>",
    ]
    for study in studies:
        board = Leaderboard.from_json(study.user_attrs.get(stored.LEADERBOARD))
        if board is not None:
            body += _ensemble_section(board)
    for study in studies:
        body += _study_section(study)
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>hpo report: {_esc(title)}</title>\n<style>{CSS}</style>\n"
        f"<script>{plotly.offline.get_plotlyjs()}</script>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _study_section(study: optuna.Study) -> list[str]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    is_nn = stored.study_kind(study) == "nn"
    # The named objective (val_log_loss, val_rmse); older studies have no name.
    objective = study.metric_names[0] if study.metric_names else "objective"
    step = "epoch" if is_nn else "step"
    parts = [f"<h2>{_esc(study.study_name)}</h2>", _facts_table(study, complete)]
    if not complete:
        return [*parts, "<p class='empty'>No completed trial yet: nothing to plot.</p>"]

    parts.append("<h3>Optimization history</h3>")
    parts.append("<p class='hint'>Each dot is a completed trial; the line is the best so far.</p>")
    history = optuna.visualization.plot_optimization_history(study, target_name=objective)
    history.update_traces(selector={"name": "Best Value"}, name="best so far")
    history.update_layout(xaxis_title="trial")
    parts.append(_figure_html(history))

    parts.append("<h3>Learning curves</h3>")
    if any(t.intermediate_values for t in trials):
        parts.append(
            f"<p class='hint'>The {objective} reported each {step}; pruned trials are dotted "
            "and end where they were stopped.</p>"
        )
        parts.append(_figure_html(_learning_curves(study, trials, objective, step)))
    else:
        parts.append("<p class='empty'>No trial reported intermediate values.</p>")

    # Pinned parameters (one value in the spec) carry no information: leave them out.
    varying = sorted({n for t in complete for n, d in t.distributions.items() if not d.single()})
    parts.append("<h3>Parameter importances</h3>")
    parts.append(_importances_html(study, len(complete), varying))

    parts.append("<h3>Parallel coordinates</h3>")
    parts.append(
        "<p class='hint'>One line per completed trial, coloured by its objective value.</p>"
    )
    parallel = optuna.visualization.plot_parallel_coordinate(
        study, params=varying, target_name=objective
    )
    # About 100 px per axis (and the colour bar) keeps tick labels apart; a narrow window
    # scrolls sideways rather than overprinting them.
    width = 100 * (len(varying) + 1) + 100
    parts.append(
        f"<div class='wide'><div style='min-width: {width}px'>"
        + _figure_html(_restyle_parallel(parallel, study), height=480)
        + "</div></div>"
    )
    return parts


def _facts_table(study: optuna.Study, complete: list[optuna.trial.FrozenTrial]) -> str:
    attrs = study.user_attrs
    counts = ", ".join(f"{k.lower()} {v}" for k, v in state_counts(study).items()) or "none"
    rows: list[tuple[str, str]] = [
        ("dataset", str(attrs.get(stored.DATASET, "?"))),
        ("task", str(attrs.get(stored.TASK, "?"))),
        ("trials", counts),
    ]
    if stored.SPLIT_SIZES in attrs:
        train, val, test = attrs[stored.SPLIT_SIZES]
        rows.append(("rows", f"train {train}, validation {val}, test {test}"))
    if stored.SPEC_HASH in attrs:
        rows.append(("spec hash", f"<code>{_esc(attrs[stored.SPEC_HASH])}</code>"))
    if complete:
        best = study.best_trial
        metrics = ", ".join(
            f"{k} {best.user_attrs[k]:.4f}" for k in METRIC_KEYS if k in best.user_attrs
        )
        rows.append(
            (
                "best value",
                f"{best.value:.4f} (trial {best.number}{'; ' + metrics if metrics else ''})",
            )
        )
        if stored.ARCHITECTURE in best.user_attrs:
            rows.append(("best architecture", str(best.user_attrs[stored.ARCHITECTURE])))
        params = ", ".join(f"{k}={_fmt_param(v)}" for k, v in best.params.items())
        rows.append(("best params", params))
    cells = "".join(
        f"<tr><th>{_esc(k)}</th><td>{v if k == 'spec hash' else _esc(v)}</td></tr>" for k, v in rows
    )
    return f"<table class='facts'>{cells}</table>"


def _learning_curves(
    study: optuna.Study, trials: list[optuna.trial.FrozenTrial], objective: str, step: str
) -> go.Figure:
    """optuna's intermediate-values plot, coloured by state with one legend entry per state."""
    fig = optuna.visualization.plot_intermediate_values(study)
    state_of = {f"Trial{t.number}": t.state.name for t in trials}
    shown: set[str] = set()
    for trace in fig.data:
        state = state_of.get(trace.name, "RUNNING")
        color, dash = STATE_STYLE.get(state, STATE_STYLE["RUNNING"])
        number = trace.name.removeprefix("Trial")
        trace.update(
            line={"color": color, "dash": dash, "width": 1.5},
            marker={"color": color, "size": 4},
            opacity=0.75,
            legendgroup=state,
            name=state.lower(),
            showlegend=state not in shown,
            hovertemplate=f"trial {number} ({state.lower()})<br>{step} %{{x}}: %{{y:.4f}}"
            "<extra></extra>",
        )
        shown.add(state)
    fig.update_layout(showlegend=True, xaxis_title=step, yaxis_title=objective)
    return fig


def _restyle_parallel(fig: go.Figure, study: optuna.Study) -> go.Figure:
    """Recolour optuna's parallel-coordinate lines on a scale with no white end (the worst
    trial vanished on the white background) and drop axis ticks that overprint each other."""
    bar = next(t for t in fig.data if t.mode == "markers")
    low, high = float(bar.marker.cmin), float(bar.marker.cmax)
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE  # best is always blue
    for trace in fig.data:
        if trace.mode != "lines":
            continue
        value = float(trace.customdata[0][1])
        # customdata holds the value rounded to 3 digits: clamp to the scale.
        t = min(max((value - low) / (high - low), 0.0), 1.0) if high > low else 0.0
        color = plotly.colors.sample_colorscale(PARALLEL_SCALE, 1 - t if reverse else t)[0]
        trace.update(line={"color": color, "width": 1.5}, opacity=0.7)
    bar.marker.update(colorscale=PARALLEL_SCALE, reversescale=reverse)
    kept: list[Any] = []
    for note in sorted(fig.layout.annotations, key=lambda a: (a.x, a.y not in (0.0, 1.0))):
        if all(k.x != note.x or abs(k.y - note.y) > 0.06 for k in kept):
            kept.append(note)
    fig.layout.annotations = kept
    return fig


def _importances_html(study: optuna.Study, n_complete: int, params: list[str]) -> str:
    if n_complete < 2:
        return "<p class='empty'>Needs at least two completed trials.</p>"
    if not params:
        return "<p class='empty'>Every parameter is pinned to one value.</p>"
    try:
        fig = optuna.visualization.plot_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=0), params=params
        )
    except (ValueError, RuntimeError) as e:  # e.g. every parameter pinned to one value
        return f"<p class='empty'>Not available: {_esc(str(e))}</p>"
    caveat = (
        f" Only {n_complete} completed trials: read these as a rough hint, not a ranking "
        f"(fANOVA needs a few dozen to be stable)."
        if n_complete < FEW_TRIALS
        else ""
    )
    return (
        "<p class='hint'>How much of the variation in the objective each parameter explains "
        f"(fANOVA over the completed trials).{caveat}</p>" + _figure_html(fig)
    )


def _ensemble_section(board: Leaderboard) -> list[str]:
    """The ensemble leaderboard that the ensemble step stores in the NN study's user attrs.

    Ranked by validation, as the ensemble was chosen: ranking on test would invite
    choosing on test.
    """
    metric, sign = board.metric, -1.0 if board.higher_is_better else 1.0
    rows = sorted(
        (r.model_dump() for r in board.rows), key=lambda r: _sort_key(r["val_metric"], sign)
    )
    parts = [f"<h2>Members against the ensemble ({_esc(board.method)})</h2>"]
    if not rows:
        return [*parts, "<p class='empty'>The ensemble has no rows.</p>"]
    parts.append(
        f"<p class='hint'>Validation and test {_esc(metric)} of each member and of the "
        f"ensemble ({'higher' if board.higher_is_better else 'lower'} is better); best on "
        "validation first. Test scores are for reading only: choose on validation.</p>"
    )
    parts.append(_figure_html(_ensemble_figure(rows, metric), height=max(260, 60 + 34 * len(rows))))
    parts.append(_leaderboard_table(rows, metric, board.loss))
    return parts


def _ensemble_figure(rows: list[dict[str, Any]], metric: str) -> go.Figure:
    """One row per model: validation (open circle) and test (diamond); ensembles shaded."""
    names = [
        f"<b>{_esc(r['name'])}</b>" if r.get("kind") == "ensemble" else _esc(r.get("name", "?"))
        for r in rows
    ]
    fig = go.Figure()
    for split, label, symbol, color in (
        ("val", "validation", "circle-open", "#7f7f7f"),
        ("test", "test", "diamond", "#1f77b4"),
    ):
        fig.add_scatter(
            x=[r.get(f"{split}_metric") for r in rows],
            y=names,
            mode="markers",
            name=label,
            marker={"symbol": symbol, "size": 12, "color": color, "line": {"width": 2}},
            hovertemplate=f"%{{y}}<br>{label} {metric} %{{x:.4f}}<extra></extra>",
        )
    for i, r in enumerate(rows):
        if r.get("kind") == "ensemble":
            fig.add_hrect(y0=i - 0.5, y1=i + 0.5, fillcolor="#fde8e8", line_width=0, layer="below")
    fig.update_layout(
        xaxis_title=metric,
        legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        margin={"t": 40},
    )
    fig.update_yaxes(autorange="reversed", gridcolor="#eee")
    return fig


def _leaderboard_table(rows: list[dict[str, Any]], metric: str, loss: str = "loss") -> str:
    head = (
        f"<tr><th>model</th><th>kind</th><th>trial</th><th>weight</th><th>val {_esc(loss)}</th>"
        f"<th>val {_esc(metric)}</th><th>test {_esc(metric)}</th></tr>"
    )
    lines = []
    for r in rows:
        css = " class='ensemble'" if r.get("kind") == "ensemble" else ""
        cells = [_esc(r.get("name", "")), _esc(r.get("kind", ""))]
        cells.append("" if r.get("trial") is None else str(r["trial"]))
        nums = [r.get("weight"), r.get("val_loss"), r.get("val_metric"), r.get("test_metric")]
        tds = "".join(f"<td>{c}</td>" for c in cells) + "".join(
            f"<td class='num'>{'' if v is None else f'{v:.4f}'}</td>" for v in nums
        )
        lines.append(f"<tr{css}>{tds}</tr>")
    return f"<table class='leaderboard'>{head}{''.join(lines)}</table>"


def _figure_html(fig: go.Figure, *, height: int = PLOT_HEIGHT) -> str:
    """A plotly div without its own title (the section heading says it) or plotly.js."""
    fig.update_layout(
        title=None,
        height=height,
        margin={"l": 70, "r": 30, "t": fig.layout.margin.t or 30, "b": 60},
        template="plotly_white",
        font={"size": 13},
    )
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        config={"responsive": True, "displaylogo": False},
        default_width="100%",
        default_height=f"{height}px",
    )


def _fmt_param(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _sort_key(value: Any, sign: float) -> tuple[bool, float]:
    """Best first; a row without the number last."""
    is_number = isinstance(value, int | float)
    return (not is_number, sign * float(value) if is_number else 0.0)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)
