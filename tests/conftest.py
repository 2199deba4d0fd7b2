"""Shared fixtures: every test runs in its own folder with its own SQLite storage."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

# Two cores: one torch thread keeps tiny models fast and steady (set before torch loads).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# A shell that starts pytest in the background ignores SIGINT, and every child would
# inherit that: the Ctrl-C tests need Python's own handler, here and in subprocesses.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from hpo.cli import app

# Digits with a small, fast search: a trial trains in well under a second on one core.
TINY_SPEC: dict[str, Any] = {
    "name": "tiny",
    "task": "multiclass",
    "data": {"source": "sklearn", "name": "digits", "scaling": "standard"},
    "seed": 0,
    "nn": {
        "trials": 4,
        "epochs": 6,
        "patience": 3,
        # Its own tests turn it on (test_defaults.py); here trials stay the sampler's.
        "realmlp_baseline": False,
        "search_space": {
            "depth": {"low": 1, "high": 2},
            "width": {"low": 16, "high": 64, "log": True},
            "batch_size": [64, 128],
        },
    },
    # `hpo run` tunes XGBoost too: a few short single-threaded trials keep every run quick.
    "gbm": {
        "trials": 3,
        "early_stopping_rounds": 5,
        "n_jobs": 1,
        "search_space": {"max_depth": {"low": 2, "high": 4}, "n_estimators": 30},
    },
    "ensemble": {"nn_members": 2, "gbm_members": 2, "greedy_rounds": 20},
}


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh folder so the default ``storage/`` is the test's own."""
    monkeypatch.chdir(tmp_path)
    for var in ("HPO_STORAGE", "HPO_ARTIFACTS", "HPO_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec (TINY_SPEC updated with ``changes``) and return its path."""

    def write(changes: dict[str, Any] | None = None, *, name: str = "spec.yaml") -> Path:
        spec = _merge(TINY_SPEC, changes or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Invoke ``hpo`` in-process; stdout and stderr are kept apart."""
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merge(base[key], value)
        else:
            merged[key] = value
    return merged


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hpo_env() -> dict[str, str]:
    """The environment for ``python -m hpo`` in a subprocess: this checkout first."""
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


@pytest.fixture
def ensemble_leaderboard() -> dict[str, Any]:
    """The leaderboard that the ensemble step stores in the NN study's user attr "ensemble"."""
    return {
        "method": "greedy",
        "metric": "accuracy",
        "rows": [
            {"name": "nn#2", "kind": "nn", "trial": 2, "weight": 0.5, "val_loss": 0.21,
             "val_metric": 0.941, "test_metric": 0.936},
            {"name": "gbm#3", "kind": "gbm", "trial": 3, "weight": 0.5, "val_loss": 0.25,
             "val_metric": 0.933, "test_metric": 0.947},
            {"name": "ensemble (greedy)", "kind": "ensemble", "trial": None, "weight": None,
             "val_loss": 0.18, "val_metric": 0.952, "test_metric": 0.958},
        ],
    }  # fmt: skip


@pytest.fixture
def dashboard(tmp_path: Path, hpo_env: dict[str, str]) -> Iterator[Callable[..., str]]:
    """Start ``hpo dashboard`` in a subprocess on a free loopback port; returns its base URL.

    The server is stopped at teardown; its stderr is in ``tmp_path / "dashboard.err"``.
    """
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with (tmp_path / "dashboard.err").open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hpo", "dashboard", "--port", str(port), *args],
                env=hpo_env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "dashboard.err").read_text()
            try:
                with urllib.request.urlopen(f"{url}/api/meta", timeout=5):
                    return url
            except OSError:
                time.sleep(0.2)
        raise AssertionError("hpo dashboard did not answer within 60 s")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=30)


# PostgreSQL at 127.0.0.1:5432 with trust auth: CI runs these tests, never skips them. The
# password in the URL is ignored by trust auth; it is there so tests can check that it is
# never printed.
PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
PG_PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the test module, dropped at its end."""
    import psycopg

    _start_postgres_if_down()
    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _start_postgres_if_down() -> None:
    import psycopg

    try:
        psycopg.connect(PG_ADMIN).close()
        return
    except psycopg.OperationalError:
        pass
    versions = sorted(os.listdir("/etc/postgresql"))
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
        check=False,
        capture_output=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(PG_ADMIN).close()
            return
        except psycopg.OperationalError as e:
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is down and would not start: {e}")
            time.sleep(0.5)
