"""``hpo report``: one self-contained HTML file, with the ensemble once there is one."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import plotly
import pytest

from hpo.storage.backend import open_storage
from hpo.storage.stored import LEADERBOARD as ENSEMBLE_ATTR

SECTIONS = ("Optimization history", "Learning curves", "Parameter importances")


def plot_divs(page: str) -> int:
    return len(re.findall(r'<div id="[^"]+" class="plotly-graph-div"', page))


@pytest.fixture
def tiny_study(cli: Callable[..., Any], write_spec: Callable[..., Path]) -> optuna.Study:
    assert cli("run", write_spec(), "-q").exit_code == 0
    return optuna.load_study(study_name="tiny-nn", storage=open_storage())


def test_report_is_one_self_contained_file(
    cli: Callable[..., Any], tiny_study: optuna.Study
) -> None:
    result = cli("report", "tiny", "--out", "report.html")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "report.html"
    page = Path("report.html").read_text()
    # plotly.js inline exactly once, nothing fetched from anywhere.
    plotly_js = plotly.offline.get_plotlyjs()
    assert page.count(plotly_js) == 1
    rest = page.replace(plotly_js, "")
    assert "<script src" not in rest and "https://" not in rest
    assert "<title>hpo report: tiny</title>" in page
    for text in (*SECTIONS, "Parallel coordinates", "sklearn:digits", "multiclass"):
        assert text in page
    counts = tiny_study.get_trials(deepcopy=False)
    assert f"complete {sum(t.state.name == 'COMPLETE' for t in counts)}" in page
    assert f"best value</th><td>{tiny_study.best_value:.4f}" in page
    # The run built an ensemble: its plot, then four per study (tiny-nn, tiny-gbm).
    assert "<h2>tiny-nn</h2>" in page and "<h2>tiny-gbm</h2>" in page
    assert "Members against the ensemble" in page
    assert plot_divs(page) == 1 + 4 + 4
    assert not list(Path().glob(".report.html*"))  # no temp file left behind
    # A handful of trials: the importances come with a caveat.
    complete = sum(t.state.name == "COMPLETE" for t in counts)
    assert f"Only {complete} completed trials: read these as a rough hint" in page


def test_report_shows_members_against_the_ensemble(
    cli: Callable[..., Any], tiny_study: optuna.Study, ensemble_leaderboard: dict[str, Any]
) -> None:
    tiny_study.set_user_attr(ENSEMBLE_ATTR, ensemble_leaderboard)
    assert cli("report", "tiny-nn", "--out", "r.html").exit_code == 0
    page = Path("r.html").read_text()
    assert "Members against the ensemble (greedy)" in page
    assert plot_divs(page) == 5
    # The leaderboard table: best validation accuracy first (the fixture's test scores
    # order the members the other way round), the ensemble row marked.
    table = page.split("<table class='leaderboard'>")[1].split("</table>")[0]
    names = re.findall(r"<tr(?: class='ensemble')?><td>([^<]+)</td>", table)
    assert names == ["ensemble (greedy)", "nn#2", "gbm#3"]
    assert "<tr class='ensemble'><td>ensemble (greedy)" in table
    assert "0.9580" in table


def test_report_of_a_study_without_learning_curves(
    cli: Callable[..., Any], tiny_study: optuna.Study
) -> None:
    solo = optuna.create_study(study_name="solo-gbm", storage=open_storage())
    solo.optimize(lambda t: (t.suggest_float("eta", 0.01, 0.3) - 0.1) ** 2, n_trials=4)
    assert cli("report", "solo", "--out", "solo.html").exit_code == 0
    page = Path("solo.html").read_text()
    assert "<h2>solo-gbm</h2>" in page and "tiny-nn" not in page
    # No trial reported a learning curve: three plots, and a line that says why.
    assert plot_divs(page) == 3
    assert "No trial reported intermediate values." in page


def test_report_of_a_study_without_completed_trials_says_so(cli: Callable[..., Any]) -> None:
    study = optuna.create_study(study_name="empty-nn", storage=open_storage())
    study.enqueue_trial({"x": 1.0})
    assert cli("report", "empty", "--out", "empty.html").exit_code == 0
    page = Path("empty.html").read_text()
    assert "No completed trial yet" in page
    assert plot_divs(page) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "Error: no study named 'nope' (studies here: tiny)"),
        (["tiny", "--out", "no/such/folder/r.html"], "Error: cannot write the report to"),
        (["tiny", "--out", "."], "Error: cannot write the report: . is a directory"),
    ],
)
def test_report_errors_are_one_line_and_write_nothing(
    cli: Callable[..., Any], tiny_study: optuna.Study, args: list[str], message: str
) -> None:
    before = sorted(p.name for p in Path().iterdir())
    result = cli("report", *args)
    assert result.exit_code == 1
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in Path().iterdir()) == before


def test_report_without_a_database_is_an_error(cli: Callable[..., Any]) -> None:
    result = cli("report", "tiny")
    assert result.exit_code == 1
    missing = Path("storage/hpo.db").resolve()
    assert result.stderr.startswith(f"Error: no database at {missing} "), result.stderr
    assert not Path("tiny-report.html").exists()
