"""The dashboard and the report in a real headless browser: Debian's chromium via Playwright.

Not skipped when chromium is missing: ``.ci/run`` installs it (``apt-get install chromium``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from hpo.storage.backend import open_storage
from hpo.storage.stored import LEADERBOARD as ENSEMBLE_ATTR

CHROMIUM = Path("/usr/bin/chromium")
# Headless and offline: no sandbox (CI runs as root), no calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "browser tests need Debian's chromium: apt-get install chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(30_000)
    yield page
    page.close()


def test_dashboard_shows_the_study_and_its_trials(
    cli: Callable[..., Any],
    write_spec: Callable[..., Path],
    dashboard: Callable[..., str],
    page: Page,
) -> None:
    assert cli("run", write_spec(), "-q").exit_code == 0
    n_trials = len(optuna.load_study(study_name="tiny-nn", storage=open_storage()).trials)
    url = dashboard()

    page.goto(f"{url}/dashboard")
    card = page.get_by_text("tiny-nn")
    expect(card).to_be_visible()
    card.click()
    expect(page).to_have_url(re.compile(r"/dashboard/studies/\d+$"))
    # The study page: its name in the header, the study attrs the run wrote.
    expect(page.get_by_text("tiny-nn (id=")).to_be_visible()
    expect(page.get_by_text("sklearn:digits")).to_be_visible()

    page.goto(f"{page.url}/trials")
    expect(page.get_by_text(f"{n_trials} Trials", exact=True)).to_be_visible()
    # The artifact store is attached: the first trial's model file is listed.
    expect(page.get_by_text("nn-trial-0.safetensors")).to_be_visible()


def test_report_opens_without_errors_and_shows_its_plots(
    cli: Callable[..., Any],
    write_spec: Callable[..., Path],
    page: Page,
    tmp_path: Path,
) -> None:
    # `hpo run` tunes the NN and GBM studies and stores the ensemble's leaderboard.
    assert cli("run", write_spec(), "-q").exit_code == 0
    study = optuna.load_study(study_name="tiny-nn", storage=open_storage())
    assert study.user_attrs[ENSEMBLE_ATTR]["rows"]
    assert cli("report", "tiny", "--out", "report.html").exit_code == 0

    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((tmp_path / "report.html").as_uri())
    expect(page.get_by_role("heading", name="hpo report: tiny")).to_be_visible()
    # Nine plots, each drawn by plotly.js into an SVG: the ensemble against its members, then
    # per study (tiny-nn, tiny-gbm) history, learning curves, importances, parallel coordinates.
    graphs = page.locator(".plotly-graph-div")
    expect(graphs).to_have_count(9)
    expect(page.locator(".plotly-graph-div .main-svg").first).to_be_visible()
    for i in range(9):
        expect(graphs.nth(i).locator(".main-svg").first).to_be_attached()
        assert graphs.nth(i).bounding_box()["height"] > 200  # type: ignore[index]
    expect(page.get_by_text("ensemble (greedy)").first).to_be_visible()
    assert errors == []
