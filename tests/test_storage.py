"""Where studies live (hpo.storage.backend): opening by URL, saying where, and model files."""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg
import pytest
import sqlalchemy
from conftest import PG_ADMIN
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

import hpo.storage.backend
from hpo.errors import HpoError
from hpo.storage.backend import (
    finish_trial,
    lock_and_count,
    new_sqlite_file,
    open_artifacts,
    open_storage,
    params_in_one_write,
    save_trial_results,
    storage_url,
    write_trial,
)
from hpo.storage.locks import study_lock
from hpo.storage.trial_cache import TrialCache


def test_the_default_url_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert storage_url() == "sqlite:///storage/hpo.db"
    monkeypatch.setenv("HPO_STORAGE", "sqlite:///elsewhere.db")
    assert storage_url() == "sqlite:///elsewhere.db"
    assert storage_url("postgresql://h/db") == "postgresql://h/db"


def test_a_new_sqlite_file_is_named_by_its_absolute_path(workdir: Path) -> None:
    assert new_sqlite_file(None) == workdir.resolve() / "storage" / "hpo.db"
    assert new_sqlite_file("postgresql://u@h/db") is None
    open_storage()
    assert new_sqlite_file(None) is None  # there now: nothing new to announce


def test_a_read_only_command_names_the_missing_file_absolutely(workdir: Path) -> None:
    with pytest.raises(HpoError) as e:
        open_storage(must_exist=True)
    assert str(e.value).startswith(f"no database at {workdir.resolve() / 'storage' / 'hpo.db'} ")
    assert not (workdir / "storage").exists()


def test_model_files_carry_a_content_type(workdir: Path) -> None:
    study = optuna.create_study(study_name="m-nn", storage=open_storage())
    trial = study.ask()
    artifacts = open_artifacts()
    save_trial_results(
        trial,
        artifacts,
        "nn-trial-0.safetensors",
        b"weights",
        {"val_loss": 0.5},
    )
    study.tell(trial, 0.5)
    (meta,) = optuna.artifacts.get_all_artifact_meta(study.trials[0], storage=study._storage)
    assert meta.mimetype == "application/octet-stream"  # not guessed from the extension
    assert meta.filename == "nn-trial-0.safetensors"
    assert study.trials[0].user_attrs == {"val_loss": 0.5, "artifact_id": meta.artifact_id}
    with artifacts.open_reader(meta.artifact_id) as f:
        assert f.read() == b"weights"


def _setting(storage: optuna.storages.BaseStorage, name: str) -> str:
    with storage.engine.connect() as conn:  # type: ignore[attr-defined]
        return str(conn.execute(sqlalchemy.text(f"SHOW {name}")).scalar())


def test_postgresql_commits_do_not_wait_for_the_disk_unless_the_url_says(pg_url: str) -> None:
    """A commit returns before the server's flush (the SQLite twin: synchronous=NORMAL);
    a URL that sets synchronous_commit keeps its own."""
    assert _setting(open_storage(pg_url), "synchronous_commit") == "off"
    strict = f"{pg_url}?options=-c%20synchronous_commit%3Don"
    assert _setting(open_storage(strict), "synchronous_commit") == "on"


def _drop_connections(pg_url: str) -> None:
    """End every server connection to the URL's database, as a restarted server would,
    and wait until they are gone (a backend ends a moment after it is told to)."""
    database = sqlalchemy.engine.make_url(pg_url).database
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        )
        gone = "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = %s"
        deadline = time.monotonic() + 5
        while admin.execute(gone, (database,)).fetchone() != (True,):
            assert time.monotonic() < deadline, "the server's connections did not end"
            time.sleep(0.01)


def test_postgresql_pings_only_connections_left_idle(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection back in the pool a moment ago is used as is (a ping is a round trip);
    one left idle is pinged, and a dead one (a restarted server) replaced, not failed."""
    storage = open_storage(pg_url)
    engine = storage.engine  # type: ignore[attr-defined]
    pings = []
    real_ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda conn: pings.append(1) or real_ping(conn))
    assert _setting(storage, "synchronous_commit") == "off"
    assert _setting(storage, "synchronous_commit") == "off"
    assert pings == []  # new, then back a moment ago
    _drop_connections(pg_url)
    monkeypatch.setattr(hpo.storage.backend, "PING_AFTER_IDLE_S", 0.0)
    assert _setting(storage, "synchronous_commit") == "off"  # a new connection, set up alike
    assert pings  # the dead one was pinged first


def test_a_write_on_a_connection_the_server_dropped_fails_once_with_its_reason(
    pg_url: str,
) -> None:
    """A pooled connection back a moment ago is not pinged, so a write on one that the
    server dropped meanwhile fails, as Optuna's writes fail, with the driver's reason (not
    SQLAlchemy's complaint about a broken transaction); the next write gets a new one."""
    storage = TrialCache(open_storage(pg_url, heartbeat_interval=60))
    study = optuna.create_study(study_name="dropped", storage=storage)
    trial = study.ask()
    write_trial(trial, {"a": 1})
    _drop_connections(pg_url)
    with pytest.raises(optuna.exceptions.StorageInternalError) as e:
        write_trial(trial, {"b": 2})
    assert "(psycopg." in str(e.value) and "rolled back" not in str(e.value)
    write_trial(trial, {"c": 3})
    stored = optuna.load_study(study_name="dropped", storage=pg_url).trials[0]
    assert stored.user_attrs == {"a": 1, "c": 3}


@contextlib.contextmanager
def _waits_for_the_server(engine: sqlalchemy.Engine, trace: Path) -> Iterator[list[int]]:
    """How many times the block waited for PostgreSQL (once per Sync or simple Query that
    a connection sent, in libpq's trace of the protocol): its round trips."""
    waits: list[int] = []

    @sqlalchemy.event.listens_for(engine, "checkout")
    def _trace(dbapi_connection: psycopg.Connection, _record: object, _proxy: object) -> None:
        dbapi_connection.pgconn.trace(out.fileno())
        dbapi_connection.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    @sqlalchemy.event.listens_for(engine, "checkin")
    def _untrace(dbapi_connection: psycopg.Connection, _record: object) -> None:
        dbapi_connection.pgconn.untrace()

    with trace.open("w") as out:
        yield waits
    sqlalchemy.event.remove(engine, "checkout", _trace)
    sqlalchemy.event.remove(engine, "checkin", _untrace)
    sent = [line.split("\t") for line in trace.read_text().splitlines()]
    waits.append(sum(1 for f in sent if f[0] == "F" and f[2] in ("Sync", "Query")))


def test_a_trial_waits_for_postgresql_five_times(pg_url: str, tmp_path: Path) -> None:
    """A trial's writes are pipelined: its creation waits for the server once (the study
    locked, the trial inserted with its heartbeat, the commit, its id and number back), and
    so does each write of its params, its curve and its end (the trial locked, the rows
    written where it may still be, its state back, in one statement); each wait is a round trip
    across a network. The BEGIN goes with the first query, not alone. The worker's lock and
    its count of the study before each trial wait once together. (A study's first params
    wait twice: their distributions are read from the study first.)"""
    storage = TrialCache(open_storage(pg_url, heartbeat_interval=60), refresh_s=3600)
    database = storage._backend
    study = optuna.create_study(study_name="waits", storage=storage)
    waits = []
    for number in (0, 1):  # the first trial's params are new to the study: read it first
        assert len(study.trials) == number  # read once: then the cache's
        lock = study_lock(storage, "waits")
        with _waits_for_the_server(database.engine, tmp_path / "count") as count:
            counts = lock_and_count(lock, storage, study._study_id)
        lock.release()
        assert counts == collections.Counter({TrialState.COMPLETE: number})
        with _waits_for_the_server(database.engine, tmp_path / "create") as create:
            trial = study.ask()
        with (
            _waits_for_the_server(database.engine, tmp_path / "params") as params,
            params_in_one_write(trial),
        ):
            trial.suggest_float("x", 0.0, 1.0)
            trial.suggest_int("y", 0, 1)  # ints and floats in one array
        with _waits_for_the_server(database.engine, tmp_path / "curve") as curve:
            write_trial(trial, {"loss": 0.5}, {0: 1, 1: 0.4})
        with _waits_for_the_server(database.engine, tmp_path / "end") as end:
            assert finish_trial(storage, database, trial._trial_id, TrialState.COMPLETE, [0.5])
        waits.append((count, create, params, curve, end))
    assert waits[1] == ([1], [1], [1], [1], [1])
    stored = optuna.load_study(study_name="waits", storage=pg_url).trials[1]
    assert stored.state == TrialState.COMPLETE and stored.value == 0.5
    assert stored.distributions == {"x": FloatDistribution(0, 1), "y": IntDistribution(0, 1)}
    assert stored.intermediate_values == {0: 1.0, 1: 0.4} and stored.user_attrs == {"loss": 0.5}


def test_sqlite_syncs_at_checkpoints_only(workdir: Path) -> None:
    storage = open_storage(f"sqlite:///{workdir}/sync.db")
    with storage.engine.connect() as conn:  # type: ignore[attr-defined]
        assert conn.execute(sqlalchemy.text("PRAGMA synchronous")).scalar() == 1  # NORMAL


def test_a_write_in_one_round_trip_to_a_finished_trial_writes_nothing(pg_url: str) -> None:
    """Where a peer failed the trial meanwhile, a write whose check went with it is refused
    as Optuna refuses it, and none of its rows is stored."""
    storage = TrialCache(open_storage(pg_url))
    database = storage._backend
    study = optuna.create_study(study_name="late", storage=storage)
    first = study.ask()
    with params_in_one_write(first):  # the study's first params: their distributions known
        first.suggest_float("x", 0.0, 1.0)
    trial = study.ask()
    database.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # a peer's write
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError), params_in_one_write(trial):
        trial.suggest_float("x", 0.0, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        write_trial(trial, {"loss": 0.5}, {0: 0.5})
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        finish_trial(storage, database, trial._trial_id, TrialState.COMPLETE, [0.5])
    stored = optuna.load_study(study_name="late", storage=pg_url).trials[1]
    assert stored.state == TrialState.FAIL and stored.values is None
    assert stored.params == {} and stored.user_attrs == {} and stored.intermediate_values == {}
