"""``hpo dashboard``: clear errors, the study note, and a run that survives the dashboard."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import optuna_dashboard
import pytest
import yaml

from hpo.storage.backend import open_storage

NOTE_VERSION = "dashboard:note_ver"  # optuna-dashboard's system attr for the study note


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test instead of serving forever if the command gets as far as the server."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("run_server was reached")

    monkeypatch.setattr(optuna_dashboard, "run_server", refuse)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///missing/hpo.db",
        "postgresql://postgres@127.0.0.1:1/test",  # nothing listens on port 1
        "postgresql://postgres@127.0.0.1:5432/no_such_database",
        "nosuchdb://127.0.0.1/hpo",
        "not a url",
    ],
)
@pytest.mark.usefixtures("no_server")
def test_dashboard_on_a_storage_that_does_not_exist_is_one_error_line(
    cli: Callable[..., Any], url: str
) -> None:
    result = cli("dashboard", "--storage", url)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert not Path("missing").exists()


@pytest.mark.usefixtures("no_server")
def test_dashboard_without_a_database_is_an_error(cli: Callable[..., Any]) -> None:
    result = cli("dashboard")
    assert result.exit_code == 1
    missing = Path("storage/hpo.db").resolve()
    assert result.stderr.startswith(f"Error: no database at {missing} "), result.stderr


def test_dashboard_on_a_taken_port_is_an_error(
    cli: Callable[..., Any], write_spec: Callable[..., Path]
) -> None:
    assert cli("run", write_spec(), "--trials", "1", "-q").exit_code == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("dashboard", "--port", str(port))
    assert result.exit_code == 1
    assert f"Error: cannot serve the dashboard on 127.0.0.1:{port}" in result.stderr


def test_run_writes_the_spec_as_a_study_note_once(
    cli: Callable[..., Any], write_spec: Callable[..., Path]
) -> None:
    spec_path = write_spec()
    assert cli("run", spec_path, "--trials", "1", "-q").exit_code == 0
    storage = open_storage()
    study = optuna.load_study(study_name="tiny-nn", storage=storage)

    def note_version() -> int:
        return storage.get_study_system_attrs(study._study_id)[NOTE_VERSION]

    note = optuna_dashboard.get_note(study)
    assert note.startswith("## tiny\n")
    yaml_text = note.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(yaml_text)["nn"]["epochs"] == 6
    assert note_version() == 1

    # Opening the study again with the same spec leaves the note alone ...
    assert cli("run", spec_path, "--trials", "1", "-q").exit_code == 0
    assert note_version() == 1
    # ... a changed spec rewrites it.
    assert cli("run", write_spec({"nn": {"epochs": 5}}), "--trials", "1", "-q").exit_code == 0
    assert note_version() == 2
    assert "epochs: 5" in optuna_dashboard.get_note(study)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def test_run_finishes_while_the_dashboard_polls_the_same_sqlite_file(
    cli: Callable[..., Any],
    write_spec: Callable[..., Path],
    dashboard: Callable[..., str],
    hpo_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """optuna-dashboard#545: a dashboard reading the SQLite file crashed the run with
    "database is locked". WAL mode and the busy timeout in hpo.storage.backend must prevent it."""
    spec_path = write_spec()
    assert cli("run", spec_path, "--trials", "1", "-q").exit_code == 0
    url = dashboard()
    trials = 8
    with (tmp_path / "run.err").open("wb") as run_err:
        run = subprocess.Popen(
            [sys.executable, "-m", "hpo", "run", str(spec_path), "--trials", str(trials), "-q"],
            env=hpo_env,
            stdout=subprocess.DEVNULL,
            stderr=run_err,
        )
    polls = 0
    try:
        while run.poll() is None:
            for study in _get(f"{url}/api/studies")["study_summaries"]:
                _get(f"{url}/api/studies/{study['study_id']}")
            polls += 1
    finally:
        run.wait(timeout=300)
    run_log = (tmp_path / "run.err").read_text()
    dashboard_log = (tmp_path / "dashboard.err").read_text()
    assert run.returncode == 0, run_log
    assert polls > 5  # the dashboard really read while the run wrote
    for log in (run_log, dashboard_log):
        assert "database is locked" not in log
        assert "Traceback" not in log

    study = optuna.load_study(study_name="tiny-nn", storage=open_storage())
    states = [t.state for t in study.get_trials()]
    assert len(states) == trials
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    # The dashboard sees them all (its trial cache lives two seconds).
    deadline = time.monotonic() + 30
    while len(_get(f"{url}/api/studies/1")["trials"]) != trials:
        assert time.monotonic() < deadline, "the dashboard never showed every trial"
        time.sleep(0.5)
