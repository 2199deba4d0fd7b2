"""Where studies live: an Optuna storage from a URL, and the artifact store beside it.

One code path for every URL: SQLite by default (one machine), PostgreSQL or MySQL for many,
``grpc://host:port`` for Optuna's storage proxy. Passwords never leave this module unmasked.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import re
import socket
import sqlite3
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
import sqlalchemy.orm
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    distribution_to_json,
    json_to_distribution,
)
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._rdb.models import (
    StudyModel,
    TrialHeartbeatModel,
    TrialIntermediateValueModel,
    TrialModel,
    TrialParamModel,
    TrialSystemAttributeModel,
    TrialUserAttributeModel,
    TrialValueModel,
)
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from hpo.errors import HpoError
from hpo.storage import postgres_writes
from hpo.storage.locks import AdvisoryLock, StorageLock, engine_lock
from hpo.storage.masking import mask_text, mask_url
from hpo.storage.trial_cache import TrialCache, Unwritten

ARTIFACT_ID = "artifact_id"  # trial user attr: its model file (hpo.storage.stored re-exports it)

__all__ = ["mask_text", "mask_url", "open_storage", "storage_url"]

DEFAULT_STORAGE = "sqlite:///storage/hpo.db"
DEFAULT_ARTIFACTS = "storage/artifacts"
SQLITE_BUSY_TIMEOUT_S = 60  # writers wait this long for the lock instead of failing
# Model files are binary: without a type the dashboard guesses one from the extension
# (".pt" -> application/vnd.snesdev-page-table).
MODEL_MIMETYPE = "application/octet-stream"
CONNECT_TIMEOUT_S = 5  # a wrong host fails within seconds, not minutes
PING_AFTER_IDLE_S = 10.0  # a pooled server connection left idle this long is pinged first
PIPELINE = "hpo_pipeline"  # connection info: its psycopg pipeline (_pipelined_transaction)
# Insert-or-replace in one statement, per database (as Optuna writes attrs).
UPSERTS: dict[str, Any] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
# Databases whose INSERT and UPDATE can return what they wrote (not MySQL).
RETURNING = frozenset({"sqlite", "postgresql"})
# Optuna's tables, written in SQLAlchemy Core (_write_rows, create_running_trial).
STUDIES: sqlalchemy.Table = StudyModel.__table__
TRIALS: sqlalchemy.Table = TrialModel.__table__
PARAMS: sqlalchemy.Table = TrialParamModel.__table__
TRIAL_VALUES: sqlalchemy.Table = TrialValueModel.__table__
INTERMEDIATE_VALUES: sqlalchemy.Table = TrialIntermediateValueModel.__table__
USER_ATTRS: sqlalchemy.Table = TrialUserAttributeModel.__table__
SYSTEM_ATTRS: sqlalchemy.Table = TrialSystemAttributeModel.__table__
HEARTBEATS: sqlalchemy.Table = TrialHeartbeatModel.__table__

# The statements a trial runs, built once with named parameters: building each anew, and
# SQLAlchemy's cache key of it, cost about as much again as running it
# (benchmarks/optuna_overhead.py).
_bind = sqlalchemy.bindparam
_STATE_COUNTS = (  # trial_state_counts
    sqlalchemy.select(TRIALS.c.state, sqlalchemy.func.count())
    .where(TRIALS.c.study_id == _bind("study_id"))
    .group_by(TRIALS.c.state)
)
_TRIAL_IDS_AFTER = (  # trial_ids_after
    sqlalchemy.select(STUDIES.c.study_id, TRIALS.c.trial_id)
    .select_from(
        STUDIES.outerjoin(
            TRIALS,
            sqlalchemy.and_(
                TRIALS.c.study_id == STUDIES.c.study_id, TRIALS.c.trial_id > _bind("after")
            ),
        )
    )
    .where(STUDIES.c.study_id == _bind("study_id"))
)
_TRIAL_STATE = sqlalchemy.select(TRIALS.c.state, TRIALS.c.study_id).where(  # _write_rows
    TRIALS.c.trial_id == _bind("trial_id")
)
_TRIAL_STATE_LOCKED = _TRIAL_STATE.with_for_update()
_INSERT_PARAMS = PARAMS.insert().inline()  # no RETURNING: see _pipelined_transaction
_INSERT_INTERMEDIATE_VALUES = INTERMEDIATE_VALUES.insert().inline()
_INSERT_VALUES = TRIAL_VALUES.insert().inline()
_END_TRIAL = (  # _end_trial (a parameter may not take the name of a column it sets)
    TRIALS.update()
    .where(TRIALS.c.trial_id == _bind("ended_trial"))
    .values(
        state=_bind("end_state", type_=TRIALS.c.state.type),
        datetime_complete=_bind("ended_at", type_=TRIALS.c.datetime_complete.type),
    )
)
_LOCK_STUDY = (  # create_running_trial
    sqlalchemy.select(STUDIES.c.study_id)
    .where(STUDIES.c.study_id == _bind("study_id"))
    .with_for_update()
)
_INSERT_TRIAL = (
    TRIALS.insert()
    .values(
        # With the study locked, every earlier trial is in and no later one: the count is
        # Optuna's number (its trials below this one's id), in the same statement.
        number=sqlalchemy.select(sqlalchemy.func.count())
        .select_from(TRIALS)
        .where(TRIALS.c.study_id == _bind("study_id"))
        .scalar_subquery(),
        study_id=_bind("new_in_study", type_=TRIALS.c.study_id.type),
        state=_bind("new_state", type_=TRIALS.c.state.type),
        datetime_start=_bind("started_at", type_=TRIALS.c.datetime_start.type),
    )
    .returning(TRIALS.c.trial_id, TRIALS.c.number)
)
_FIRST_HEARTBEAT = (
    HEARTBEATS.insert()
    .inline()
    .values(trial_id=_bind("beating_trial", type_=HEARTBEATS.c.trial_id.type))
)
# On PostgreSQL the trial and its first heartbeat in one statement, which the study's
# lock and the commit go out with (create_running_trial).
_NEW_TRIAL = _INSERT_TRIAL.cte("new_trial")
_INSERT_TRIAL_WITH_HEARTBEAT = sqlalchemy.select(
    _NEW_TRIAL.c.trial_id, _NEW_TRIAL.c.number
).add_cte(
    HEARTBEATS.insert()
    .from_select(
        [HEARTBEATS.c.trial_id, HEARTBEATS.c.heartbeat],
        sqlalchemy.select(_NEW_TRIAL.c.trial_id, sqlalchemy.func.current_timestamp()),
    )
    .cte("first_heartbeat")
)


def storage_url(url: str | None = None) -> str:
    """``--storage``, else ``HPO_STORAGE``, else the embedded SQLite default."""
    return url or os.environ.get("HPO_STORAGE") or DEFAULT_STORAGE


def artifacts_dir(path: str | None = None) -> Path:
    return Path(path or os.environ.get("HPO_ARTIFACTS") or DEFAULT_ARTIFACTS)


def open_storage(
    url: str | None = None,
    *,
    must_exist: bool = False,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int = 0,
) -> optuna.storages.BaseStorage:
    """Open the storage at ``url``; with a heartbeat, stale trials fail and are retried.

    Args:
        must_exist: refuse a SQLite file that is not there yet (for read-only commands).

    Raises:
        HpoError: bad scheme, unreachable server, wrong credentials, missing file.
    """
    url = storage_url(url)
    if url.startswith("grpc://"):
        return _open_grpc(url)
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise HpoError(f"not a storage URL: {mask_url(url)!r} (e.g. {DEFAULT_STORAGE})") from None
    if "@" in (parsed.host or ""):
        # make_url read the end of the password as the host: the driver would look it up.
        raise HpoError(
            f"storage URL {mask_url(url)}: an unencoded '@' in its user or password "
            "(write it as %40)"
        )
    engine_kwargs: dict[str, object] = {}
    if backend == "sqlite":
        _prepare_sqlite(parsed.database, must_exist=must_exist)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif backend in ("postgresql", "mysql"):
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    retry = (
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
        if heartbeat_interval
        else None
    )
    try:
        # Workers that start together on a fresh database would all create Optuna's tables
        # at once, and all but one fail (duplicate key in pg_type): one at a time instead.
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, **engine_kwargs)
        try:
            with engine_lock(engine, "schema"):
                storage = optuna.storages.RDBStorage(
                    # Optuna fills the URL in as a str.format template: a "{" in a
                    # password would raise, with the URL in the traceback.
                    url.replace("{", "{{").replace("}", "}}"),
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period if heartbeat_interval else None,
                    heartbeat_stale_trial_callback=retry,
                )
        finally:
            engine.dispose()
        if backend == "sqlite":
            _sync_at_checkpoints(storage.engine)
        elif backend == "postgresql":
            _ping_connections_left_idle(storage.engine)
            _wait_for_rows(storage.engine)
            # Rows of one insert in one statement (INSERT ... VALUES (...), (...)), as
            # SQLAlchemy's psycopg2 dialect sends them: psycopg 3's executemany sends each
            # row as a statement of its own, and a trial's ~20 params made 20 of them.
            storage.engine.dialect.use_insertmanyvalues_wo_returning = True
            if "synchronous_commit" not in str(parsed.query):
                _commit_without_waiting_for_flush(storage.engine)
        return storage
    except (
        sqlalchemy.exc.SQLAlchemyError,
        optuna.exceptions.StorageInternalError,  # Optuna's wrapper of a failed first query
        ImportError,
        ValueError,
        RuntimeError,
        OSError,
    ) as e:
        cause = e.__cause__ if isinstance(e, optuna.exceptions.StorageInternalError) else e
        reason = str(getattr(cause, "orig", None) or cause or e).strip().splitlines()[0]
        raise HpoError(f"cannot open storage {mask_url(url)}: {mask_text(reason, url)}") from None


def _sync_at_checkpoints(engine: sqlalchemy.engine.Engine) -> None:
    """``synchronous=NORMAL`` on every SQLite connection: in WAL mode it stays corruption-safe
    and loses no committed trial when a process dies (only a power cut can drop the last
    commits), and skips an fsync per commit: a trial makes ~70 of them (one per suggest,
    report and attr), which made Optuna's share of a digits trial 30% larger (benchmarks/)."""

    @sqlalchemy.event.listens_for(engine, "connect")
    def _pragma(connection: sqlite3.Connection, _record: object) -> None:
        connection.execute("PRAGMA synchronous=NORMAL")

    engine.dispose()  # connections opened while creating the storage predate the listener


def _ping_connections_left_idle(engine: sqlalchemy.engine.Engine) -> None:
    """SQLAlchemy's ``pool_pre_ping`` for the connections that need it: one that sat in the
    pool ``PING_AFTER_IDLE_S`` or more (where a restarted server or a firewall's idle
    timeout may have dropped it) is pinged before use, and replaced if dead. A connection
    back within seconds is not: a digits trial checks connections out five times, and
    each ping was a round trip to a server that shares the worker's cores
    (benchmarks/optuna_overhead.py)."""

    @sqlalchemy.event.listens_for(engine, "checkin")
    def _idle_from(_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sqlalchemy.event.listens_for(engine, "checkout")
    def _ping(connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return  # new, or back from work a moment ago
        try:
            engine.dialect.do_ping(connection)
        except engine.dialect.loaded_dbapi.Error as e:
            # The pool drops this connection and checks out another (SQLAlchemy's
            # "pessimistic disconnect handling").
            raise sqlalchemy.exc.DisconnectionError(str(e)) from e


def _wait_for_rows(engine: sqlalchemy.engine.Engine) -> None:
    """Inside :func:`_pipelined_transaction`, a statement whose rows are read (a SELECT, a
    RETURNING) is sent at once with what was queued before it, and its rows waited for:
    SQLAlchemy reads a result's columns as soon as it executes, before psycopg would
    fetch them."""

    @sqlalchemy.event.listens_for(engine, "after_cursor_execute")
    def _sync(conn: Any, _cursor: Any, _sql: Any, _params: Any, context: Any, _many: Any) -> None:
        pipeline = conn.info.get(PIPELINE)
        compiled = context.compiled
        if pipeline is None or compiled is None:
            return
        if compiled.effective_returning or compiled.statement.is_select:
            pipeline.sync()


def _commit_without_waiting_for_flush(engine: sqlalchemy.engine.Engine) -> None:
    """``synchronous_commit=off`` on every PostgreSQL session of hpo's, the server's twin of
    SQLite's ``synchronous=NORMAL`` above: a commit returns before the server has flushed
    it to disk (within 0.6 s). Nothing is ever corrupted or half-written, and a worker
    that dies loses nothing; a server crash or power cut can drop the last commits
    whole, as if they had been rolled back (a trial then fails stale and is retried).
    The flush took 3 to 4 ms of each of a trial's commits on a 2-core machine, most of
    Optuna's share of a digits trial on PostgreSQL (benchmarks/optuna_overhead.py). A
    URL that sets it (``?options=-c%20synchronous_commit%3Don``) keeps its own."""

    @sqlalchemy.event.listens_for(engine, "connect")
    def _set(connection: Any, _record: object) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO off")
        connection.commit()

    engine.dispose()  # connections opened while creating the storage predate the listener


def new_sqlite_file(url: str | None) -> Path | None:
    """The absolute path of the SQLite file that opening ``url`` would create, if any: a
    run started from another folder makes a new ``storage/`` there, and says so."""
    url = storage_url(url)
    if not url.startswith("sqlite"):
        return None
    try:
        database = make_url(url).database
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return None
    if not database or database == ":memory:" or Path(database).exists():
        return None
    return Path(database).resolve()


def _prepare_sqlite(database: str | None, *, must_exist: bool) -> None:
    if not database or database == ":memory:":
        return
    path = Path(database)
    if must_exist and not path.exists():
        raise HpoError(
            f"no database at {path.resolve()} (run `hpo run` in the folder that holds "
            "storage/ first, or pass --storage)"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL lets readers (the dashboard, `hpo status`) work while a run writes; it is a
        # property of the file, so setting it once here covers every later connection.
        with sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
    except (OSError, sqlite3.Error) as e:
        raise HpoError(f"cannot open SQLite database {path}: {e}") from None


def _open_grpc(url: str) -> optuna.storages.BaseStorage:
    match = re.fullmatch(r"grpc://([^:/]+):(\d+)/?", url)
    if not match:
        raise HpoError(f"not a storage URL: {mask_url(url)!r} (expected grpc://HOST:PORT)")
    try:
        from optuna.storages import GrpcStorageProxy

        proxy = GrpcStorageProxy(host=match[1], port=int(match[2]))
        # The channel connects lazily; without this a wrong port hangs the first request.
        proxy.wait_server_ready(timeout=CONNECT_TIMEOUT_S)
    except ImportError as e:
        raise HpoError(f"grpc:// storage needs grpcio and protobuf ({e})") from None
    except ConnectionError:
        raise HpoError(
            f"no storage proxy answers at {mask_url(url)} within {CONNECT_TIMEOUT_S} s "
            "(is `hpo storage-proxy` running there?)"
        ) from None
    return proxy


def serve_grpc_proxy(url: str | None, *, host: str, port: int) -> None:
    """Serve the RDB storage at ``url`` to workers over gRPC until interrupted.

    The proxy holds the only database connections, so hundreds of workers cost the
    database one process. Workers behind it run without a heartbeat (Optuna keeps
    heartbeats in RDB storage only), so a worker that dies leaves its trial RUNNING.
    """
    url = storage_url(url)
    if url.startswith("grpc://"):
        raise HpoError("the storage proxy serves a database URL, not another grpc:// proxy")
    storage = open_storage(url)
    _check_port_free(host, port)
    from optuna.storages import run_grpc_proxy_server

    try:
        # get_storage adds Optuna's in-process cache, as run_grpc_proxy_server asks.
        run_grpc_proxy_server(optuna.storages.get_storage(storage), host=host, port=port)
    except RuntimeError as e:  # grpc cannot bind the address
        raise HpoError(f"cannot serve on {host}:{port}: {e}") from None


def _check_port_free(host: str, port: int) -> None:
    """gRPC binds with SO_REUSEPORT, so a second proxy on a busy port would start and
    silently share it; a plain bind first turns that into an error."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            sock.bind((host, port))
    except OSError as e:
        raise HpoError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None


def open_artifacts(path: str | None = None) -> FileSystemArtifactStore:
    """The artifact store: a directory, shared between machines for several workers."""
    directory = artifacts_dir(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HpoError(f"cannot create artifact directory {directory}: {e.strerror}") from None
    return FileSystemArtifactStore(str(directory))


def load_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Load an existing study by its Optuna name, or fail with the names that exist."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        known = f"; studies here: {', '.join(names)}" if names else "; the storage has no studies"
        raise HpoError(f"no study named {name!r}{known}") from None


def trial_state_counts(
    storage: optuna.storages.BaseStorage, study_id: int
) -> collections.Counter[TrialState]:
    """How many of the study's trials are in each state.

    One COUNT query on a database: reading every trial, as Optuna's ``get_all_trials`` does,
    grows with the study, and workers count before every trial (at 1000 trials that read
    took longer than a digits trial).
    """
    database = getattr(storage, "_backend", storage)  # Optuna's cache wraps the database
    if isinstance(database, optuna.storages.RDBStorage):
        with _autocommit(database) as connection:
            rows = connection.execute(_STATE_COUNTS, {"study_id": study_id})
            return collections.Counter({state: n for state, n in rows})
    return collections.Counter(t.state for t in storage.get_all_trials(study_id, deepcopy=False))


def lock_and_count(
    lock: StorageLock, storage: optuna.storages.BaseStorage, study_id: int
) -> collections.Counter[TrialState]:
    """Acquire ``lock``, then count the study's trials by state (:func:`trial_state_counts`):
    on PostgreSQL in the same round trip, on the lock's own connection."""
    database = getattr(storage, "_backend", storage)
    if not isinstance(lock, AdvisoryLock) or not isinstance(database, optuna.storages.RDBStorage):
        lock.acquire()
        try:
            return trial_state_counts(storage, study_id)
        except BaseException:
            lock.release()
            raise
    sql = _psycopg_sql(database.engine.dialect, _STATE_COUNTS)
    rows = lock.acquire_then((sql, {"study_id": study_id}))
    return collections.Counter({TrialState[state]: n for state, n in rows})


def _autocommit(database: optuna.storages.RDBStorage) -> sqlalchemy.Connection:
    """A connection for one statement, outside a transaction (a single statement is its
    own): on PostgreSQL a transaction costs a BEGIN and a COMMIT or ROLLBACK, each a round
    trip, around the one query that a worker makes before every trial, or the one write
    of :mod:`hpo.storage.postgres_writes`."""
    return database.engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def trial_ids_after(
    database: optuna.storages.RDBStorage, study_id: int, after: int
) -> list[int] | None:
    """The ids of the study's trials above ``after``, in one small query; None where the
    study does not exist (Optuna's reads raise KeyError there)."""
    with _autocommit(database) as connection:
        rows = connection.execute(_TRIAL_IDS_AFTER, {"study_id": study_id, "after": after}).all()
    if not rows:
        return None
    return [row.trial_id for row in rows if row.trial_id is not None]


def save_trial_results(
    trial: optuna.Trial,
    artifacts: FileSystemArtifactStore,
    filename: str,
    model_bytes: bytes,
    attrs: dict[str, Any],
    mimetype: str = MODEL_MIMETYPE,
    *,
    curve: dict[int, float] | None = None,
) -> None:
    """Upload a trial's model file to the artifact store, then write its user attrs
    (``artifact_id`` among them) and the learning ``curve`` not yet written (step ->
    intermediate value) with its state (``last``): the attrs never name a file that is
    not there."""
    artifact_id = upload_bytes(trial, artifacts, filename, model_bytes, mimetype)
    write_trial(trial, {**attrs, ARTIFACT_ID: artifact_id}, curve, last=True)


def upload_bytes(
    trial: optuna.Trial,
    artifacts: FileSystemArtifactStore,
    filename: str,
    raw: bytes,
    mimetype: str = MODEL_MIMETYPE,
) -> str:
    """Store ``raw`` as the trial's artifact ``filename``; its artifact id. (Optuna uploads
    from a path, so the bytes go through a temporary file of that name.)"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        path.write_bytes(raw)
        return upload_artifact(
            artifact_store=artifacts, file_path=str(path), study_or_trial=trial, mimetype=mimetype
        )


# Trial -> user attrs set but not yet written (defer_user_attrs).
_PENDING_ATTRS: weakref.WeakKeyDictionary[optuna.Trial, dict[str, Any]] = (
    weakref.WeakKeyDictionary()
)


def defer_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set user attrs of a running trial that reach storage with its next write (its
    params, :func:`write_trial`, or :func:`flush_user_attrs`), not in a transaction of
    their own. ``trial.user_attrs`` has them at once."""
    trial._cached_frozen_trial.user_attrs.update(attrs)
    _PENDING_ATTRS.setdefault(trial, {}).update(attrs)


def flush_user_attrs(trial: optuna.Trial) -> None:
    """Write the trial's deferred user attrs, if any are left."""
    if trial in _PENDING_ATTRS:
        write_trial(trial, {})


def write_trial(
    trial: optuna.Trial,
    attrs: dict[str, Any],
    curve: dict[int, float] | None = None,
    *,
    last: bool = False,
) -> None:
    """Set a running trial's user ``attrs`` (and any deferred ones) and new intermediate
    values (``curve``, step -> value), in one transaction where the storage is a database.

    Optuna writes each attr and each value in a transaction of its own, with three
    statements each: a trial's ~10 attrs and its per-epoch values made most of its storage
    cost (benchmarks/optuna_overhead.py). Here the trial is checked once (it exists and is
    still running, as Optuna checks), then one multi-row statement writes the values and
    one the attrs. Other storages (in memory, the gRPC proxy) take them one by one.

    Args:
        last: the trial's last write (its results, or why it stopped), which its objective
            makes just before it returns or raises. Where hpo's :class:`TrialCache` runs
            the trial, the rows then go in the transaction that sets its state (a moment
            later, as Optuna tells it), not in one of their own; the process sees them at
            once. Should the process die in between, the trial was not finished either.
    """
    attrs = {**_PENDING_ATTRS.pop(trial, {}), **attrs}
    curve = curve or {}
    storage = trial.storage
    database = getattr(storage, "_backend", storage)  # Optuna's cache wraps the database
    if last and isinstance(storage, TrialCache) and storage.defer(trial._trial_id, attrs, curve):
        pass  # written with the trial's state, in one transaction
    elif isinstance(database, optuna.storages.RDBStorage):
        _write_rows(storage, database, trial._trial_id, attrs=attrs, curve=curve)
    else:
        for step, value in curve.items():
            storage.set_trial_intermediate_value(trial._trial_id, step, value)
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial._trial_id, key, value)
    # What Trial.set_user_attr keeps in its cached copy (Trial.report keeps its values there
    # already, see hpo.studies.reporting).
    trial._cached_frozen_trial.user_attrs.update(attrs)


@contextmanager
def params_in_one_write(trial: optuna.Trial) -> Iterator[None]:
    """Inside this block, the trial's ``suggest_*`` calls draw their values as Optuna's
    do, and the params are written when it ends, in one transaction (with the trial's
    deferred user attrs) where the storage is a database, not one each as Optuna writes
    them: they made most of a small trial's commits.

    Optuna's ``Trial`` writes a new param through ``trial.storage.set_trial_param`` and
    keeps it in its cached copy of the trial, which later suggests and ``trial.params``
    read: so the block lends the trial a storage that only records those calls (every
    other call goes through), and writes what it recorded at the end. A block that raises
    writes nothing: the trial then fails, as it would have. On another storage (in memory,
    the gRPC proxy) the params are written one by one, as usual.
    """
    storage = trial.storage
    database = getattr(storage, "_backend", storage)  # Optuna's cache wraps the database
    if not isinstance(database, optuna.storages.RDBStorage):
        yield
        return
    recorder = _ParamRecorder(storage)
    trial.storage = recorder  # type: ignore[assignment]  # duck-typed: see _ParamRecorder
    try:
        yield
    finally:
        trial.storage = storage
    if recorder.params:
        attrs = _PENDING_ATTRS.pop(trial, {})
        _write_rows(storage, database, trial._trial_id, attrs=attrs, params=recorder.params)


class _ParamRecorder:
    """A trial's storage that keeps ``set_trial_param`` calls instead of writing them."""

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self.storage = storage
        self.params: dict[str, tuple[float, BaseDistribution]] = {}

    def set_trial_param(
        self, trial_id: int, name: str, internal: float, distribution: BaseDistribution
    ) -> None:
        self.params[name] = (internal, distribution)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)


def _write_rows(
    storage: optuna.storages.BaseStorage,
    database: optuna.storages.RDBStorage,
    trial_id: int,
    *,
    attrs: dict[str, Any],
    curve: dict[int, float] | None = None,
    params: dict[str, tuple[float, BaseDistribution]] | None = None,
    end: tuple[TrialState, Sequence[float] | None] | None = None,
) -> None:
    """A running trial's new params (name -> internal value, distribution), intermediate
    values and user attrs, what :class:`TrialCache` holds back for it, and with ``end``
    its finished state and values, on Optuna's tables in one transaction, as Optuna
    writes each:
    the trial checked once (it exists and still runs; locked where it ends); each param's
    distribution checked against the study's (from Optuna's cache where it has it, else
    from the first stored param of that name); params and values inserted (each is
    written once), attrs inserted or replaced. One statement each, in SQLAlchemy Core:
    Optuna's ORM session cost more than the database did (benchmarks/optuna_overhead.py).
    On PostgreSQL, where the cache knows every param's distribution (all but a study's
    first params), the check and the writes are one statement, one round trip
    (:mod:`hpo.storage.postgres_writes`); else the check waits for one round trip and the
    writes go out with the commit, in another (:func:`_pipelined_transaction`).
    """
    # What TrialCache holds for the trial: system attrs its sampler and pruner set since its
    # last write, and its last user attrs and values where it waits for the state (defer).
    unwritten = storage.take_unwritten(trial_id) if isinstance(storage, TrialCache) else Unwritten()
    params = params or {}
    rows = postgres_writes.TrialRows(
        params={n: (v, distribution_to_json(d)) for n, (v, d) in params.items()},
        curve=unwritten.curve | (curve or {}),
        user_attrs=unwritten.user_attrs | attrs,
        system_attrs=unwritten.system_attrs,
        end=(end[0], list(end[1]) if end[1] is not None else None) if end else None,
    )
    # The distributions the cache knows for the trial's study, if it knows the trial.
    cached = storage.study_and_number(trial_id) if isinstance(storage, TrialCache) else None
    known = _known_distributions(storage, cached[0]) if cached is not None else None
    if database.engine.name == "postgresql" and known is not None and params.keys() <= known.keys():
        for name, (_, distribution) in params.items():
            check_distribution_compatibility(known[name], distribution)
        with _transaction(database, one_statement=True) as conn:
            driver: Any = conn.connection.driver_connection  # psycopg's Connection
            state = postgres_writes.write(driver, trial_id, rows)
        _check_written(database, trial_id, state)
    else:
        known = _write_checked_first(storage, database, trial_id, rows, params)
    for name, (_, distribution) in params.items():
        known.setdefault(name, distribution)  # as Optuna's cache remembers the first
    if isinstance(storage, TrialCache):  # it keeps this process's running trials
        storage.wrote(trial_id, params=params, curve=rows.curve, user_attrs=rows.user_attrs)


def _check_written(database: optuna.storages.RDBStorage, trial_id: int, state: str | None) -> None:
    """Raise as Optuna's writes raise where the trial, whose state before a write in one
    statement was ``state``, could not be written (it wrote nothing then)."""
    if state is None:  # as Optuna's TrialModel.find_or_raise_by_id
        raise KeyError(f"No trial with trial-id {trial_id} exists.")
    database.check_trial_is_updatable(trial_id, TrialState[state])


def _write_checked_first(
    storage: optuna.storages.BaseStorage,
    database: optuna.storages.RDBStorage,
    trial_id: int,
    rows: postgres_writes.TrialRows,
    params: dict[str, tuple[float, BaseDistribution]],
) -> dict[str, BaseDistribution]:
    """:func:`_write_rows` where the trial is checked first, and a param's distribution
    the cache does not know is read from the study (its first stored param of that name):
    on SQLite and MySQL, and on PostgreSQL for a study's new params. The study's known
    distributions."""
    with _transaction(database) as conn:
        query = _TRIAL_STATE_LOCKED if rows.end else _TRIAL_STATE
        row = conn.execute(query, {"trial_id": trial_id}).one_or_none()
        if row is None:  # as Optuna's TrialModel.find_or_raise_by_id
            raise KeyError(f"No trial with trial-id {trial_id} exists.")
        database.check_trial_is_updatable(trial_id, row.state)
        known = _known_distributions(storage, row.study_id)
        for name, (_, distribution) in params.items():
            previous = known.get(name) or _stored_distribution(conn, row.study_id, name)
            if previous is not None:
                check_distribution_compatibility(previous, distribution)
        if rows.params:
            conn.execute(
                _INSERT_PARAMS,
                [
                    {
                        "trial_id": trial_id,
                        "param_name": name,
                        "param_value": internal,
                        "distribution_json": distribution,
                    }
                    for name, (internal, distribution) in rows.params.items()
                ],
            )
        if rows.curve:
            conn.execute(_INSERT_INTERMEDIATE_VALUES, _curve_rows(trial_id, rows.curve))
        _set_attrs(conn, USER_ATTRS, trial_id, rows.user_attrs)
        _set_attrs(conn, SYSTEM_ATTRS, trial_id, rows.system_attrs)
        if rows.end is not None:  # as Optuna's RDBStorage.set_trial_state_values ends a trial
            _end_trial(conn, trial_id, *rows.end)
    return known


def _curve_rows(trial_id: int, curve: dict[int, float]) -> list[dict[str, Any]]:
    rows = []
    for step, value in curve.items():
        stored, kind = TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
        rows.append(
            {
                "trial_id": trial_id,
                "step": step,
                "intermediate_value": stored,
                "intermediate_value_type": kind,
            }
        )
    return rows


def _end_trial(
    conn: sqlalchemy.Connection,
    trial_id: int,
    state: TrialState,
    objective_values: Sequence[float] | None,
) -> None:
    """Write a trial's values and finished state, as Optuna's ``set_trial_state_values``."""
    scores = []  # a running trial has none yet: Optuna writes them with its end
    for objective, score in enumerate(objective_values or ()):
        stored_score, score_type = TrialValueModel.value_to_stored_repr(score)
        scores.append(
            {
                "trial_id": trial_id,
                "objective": objective,
                "value": stored_score,
                "value_type": score_type,
            }
        )
    if scores:
        conn.execute(_INSERT_VALUES, scores)
    conn.execute(
        _END_TRIAL, {"ended_trial": trial_id, "end_state": state, "ended_at": datetime.now()}
    )


def create_running_trial(
    database: optuna.storages.RDBStorage, study_id: int
) -> tuple[FrozenTrial, bool]:
    """A new RUNNING trial of the study, numbered as Optuna numbers it (the count of the
    study's earlier trials), and whether its first heartbeat went with it.

    One transaction where Optuna's ``_create_new_trial`` makes four statements through its
    ORM and its heartbeat thread then a transaction of its own: the study's row locked, so
    that concurrent creations number in turn; the trial inserted with its number; its first
    heartbeat, where the storage has them (at the database's time, as Optuna's). Where
    RETURNING is missing (MySQL) or the write fails (a deadlock among many workers):
    Optuna's own, with its retries, and no heartbeat."""
    if database.engine.name not in RETURNING:
        return database._create_new_trial(study_id), False
    start = datetime.now()
    heartbeat = database.heartbeat_interval is not None
    new = {
        "study_id": study_id,  # the count's; the column's own has another name
        "new_in_study": study_id,
        "new_state": TrialState.RUNNING,
        "started_at": start,
    }
    try:
        if database.engine.name == "postgresql":
            created = _create_in_one_round_trip(database, new, heartbeat=heartbeat)
            if created is None:  # no such study: Optuna's own says so
                return database._create_new_trial(study_id), False
            trial_id, number = created
        else:
            with _transaction(database) as conn:
                locked = conn.execute(_LOCK_STUDY, {"study_id": study_id}).one_or_none()
                if locked is None:  # as Optuna's StudyModel.find_or_raise_by_id
                    raise KeyError(f"No study with study_id {study_id} exists.")
                trial_id, number = conn.execute(_INSERT_TRIAL, new).one()
                if heartbeat:
                    conn.execute(_FIRST_HEARTBEAT, {"beating_trial": trial_id})
    except optuna.exceptions.StorageInternalError:
        return database._create_new_trial(study_id), False
    trial = FrozenTrial(
        number=number,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=start,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=trial_id,
    )
    return trial, heartbeat


def _create_in_one_round_trip(
    database: optuna.storages.RDBStorage, new: dict[str, Any], *, heartbeat: bool
) -> tuple[int, int] | None:
    """A new trial's id and number, created on PostgreSQL in one round trip: the study's
    row locked, the trial (and its first heartbeat) inserted, and the commit, sent at
    once in a pipeline and read back together; None where the study does not exist.
    Through SQLAlchemy each statement whose rows are read waited for its own round trip
    (:func:`_wait_for_rows`), three a trial."""
    insert = _INSERT_TRIAL_WITH_HEARTBEAT if heartbeat else _INSERT_TRIAL
    params = new | {"new_state": TrialState.RUNNING.name}  # as SQLAlchemy's Enum stores it
    try:
        with _transaction(database) as conn:
            driver: Any = conn.connection.driver_connection  # psycopg's Connection
            locked = driver.execute(_psycopg_sql(conn.dialect, _LOCK_STUDY), params)
            created = driver.execute(_psycopg_sql(conn.dialect, insert), params)
    except sqlalchemy.exc.IntegrityError:  # the insert found no study row (foreign key)
        return None
    if locked.fetchone() is None:
        return None
    trial_id, number = created.fetchone()
    return trial_id, number


@functools.cache
def _psycopg_sql(dialect: sqlalchemy.Dialect, statement: sqlalchemy.ClauseElement) -> str:
    """``statement``'s SQL for psycopg itself (named parameters as ``%(name)s``), for
    statements sent past SQLAlchemy (in a pipeline, without waiting), compiled once."""
    return str(statement.compile(dialect=dialect))


@contextmanager
def _transaction(
    database: optuna.storages.RDBStorage, *, one_statement: bool = False
) -> Iterator[sqlalchemy.Connection]:
    """One transaction on the database, failing as Optuna's own writes fail: a constraint
    violation as itself (a concurrent write got there first), any other database error
    as Optuna's ``StorageInternalError``. On PostgreSQL it is pipelined
    (:func:`_pipelined_transaction`), or with ``one_statement`` it is the one statement
    that the block sends through psycopg itself (in autocommit: no BEGIN, no COMMIT)."""
    try:
        if database.engine.name == "postgresql" and one_statement:
            with _autocommit(database) as conn, _psycopg_errors(conn):
                yield conn
        elif database.engine.name == "postgresql":
            with database.engine.connect() as conn, _pipelined_transaction(conn):
                yield conn
        else:
            with database.engine.begin() as conn:
                yield conn
    except sqlalchemy.exc.IntegrityError:
        raise
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise optuna.exceptions.StorageInternalError(
            f"An exception is raised during the commit: {e}"
        ) from e


@contextmanager
def _pipelined_transaction(conn: sqlalchemy.Connection) -> Iterator[None]:
    """A transaction whose statements go to PostgreSQL in psycopg's pipeline mode: a
    statement waits for the server only where its rows are read (:func:`_wait_for_rows`);
    the others go out with the next that waits, or with the COMMIT at the block's end. So
    the BEGIN goes with the first query, and a write's rows with the COMMIT: a write to a
    trial waits for two round trips where it waited for three, each a wait on a server
    that shares the worker's cores or sits across a network
    (benchmarks/optuna_overhead.py). Statements that read nothing are not read: inserts
    are ``inline()`` (no RETURNING of their keys). A write the database refuses raises,
    as SQLAlchemy's error, where it is sent, and the transaction is rolled back whole.

    The BEGIN and the COMMIT are hpo's own, on a connection SQLAlchemy holds in autocommit:
    psycopg waits for the BEGIN that it sends itself, even in a pipeline."""
    conn.execution_options(isolation_level="AUTOCOMMIT")
    driver: Any = conn.connection.driver_connection  # psycopg's Connection
    # The connection's own info, held: a connection the server dropped is invalidated
    # inside the block, and reading conn.info again would raise instead.
    info = conn.info
    try:
        with _psycopg_errors(conn), driver.pipeline() as pipeline:
            info[PIPELINE] = pipeline
            try:
                driver.execute("BEGIN")
                yield
                driver.execute("COMMIT")
            finally:
                del info[PIPELINE]
    except BaseException:
        # A write refused, or the block raised: roll back, unless the connection is lost.
        if not driver.broken and driver.info.transaction_status.name != "IDLE":
            with contextlib.suppress(conn.dialect.loaded_dbapi.Error):  # lost meanwhile
                driver.execute("ROLLBACK")
        raise


@contextmanager
def _psycopg_errors(conn: sqlalchemy.Connection) -> Iterator[None]:
    """psycopg's errors raised past SQLAlchemy (by a pipeline's sync, or a statement sent
    through psycopg itself) as SQLAlchemy's own, as its execute would have raised them."""
    try:
        yield
    except conn.dialect.loaded_dbapi.Error as e:
        raise sqlalchemy.exc.DBAPIError.instance(
            "", None, e, conn.dialect.loaded_dbapi.Error
        ) from e


def finish_trial(
    storage: TrialCache,
    database: optuna.storages.RDBStorage,
    trial_id: int,
    state: TrialState,
    values: Sequence[float] | None,
) -> bool:
    """End one of ``storage``'s running trials in ``state`` with what it holds back for
    it, in one transaction; False where a concurrent write got there first, as Optuna's
    ``set_trial_state_values`` answers."""
    try:
        _write_rows(storage, database, trial_id, attrs={}, end=(state, values))
    except sqlalchemy.exc.IntegrityError:
        return False
    return True


def _set_attrs(
    conn: sqlalchemy.Connection, table: sqlalchemy.Table, trial_id: int, attrs: dict[str, Any]
) -> None:
    """Insert or replace a trial's attrs in ``table``: one upsert where the database has
    one, else a delete and an insert."""
    if not attrs:
        return
    rows = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
    dialect = conn.dialect.name
    if dialect in UPSERTS:
        conn.execute(_upsert(dialect, table), rows)
        return
    conn.execute(table.delete().where(table.c.trial_id == trial_id, table.c.key.in_(list(attrs))))
    conn.execute(table.insert(), rows)


@functools.cache
def _upsert(dialect: str, table: sqlalchemy.Table) -> Any:
    """The insert-or-replace of an attr row in ``table`` (built once: building it anew
    for every write cost more than running it)."""
    insert = UPSERTS[dialect](table).inline()  # no RETURNING: see _pipelined_transaction
    return insert.on_conflict_do_update(
        index_elements=[table.c.trial_id, table.c.key],
        set_={"value_json": insert.excluded.value_json},
    )


def _known_distributions(
    storage: optuna.storages.BaseStorage, study_id: int
) -> dict[str, BaseDistribution]:
    """The param distributions Optuna's cache knows for the study (a dict it keeps and
    reads in ``set_trial_param``), or a new empty one where there is no cache."""
    if isinstance(storage, _CachedStorage) and study_id in storage._studies:
        return storage._studies[study_id].param_distribution
    return {}


def _stored_distribution(
    conn: sqlalchemy.Connection, study_id: int, name: str
) -> BaseDistribution | None:
    """The distribution of the study's first stored param ``name``, as Optuna reads it."""
    row = conn.execute(
        sqlalchemy.select(PARAMS.c.distribution_json)
        .join(TRIALS)
        .where(TRIALS.c.study_id == study_id, PARAMS.c.param_name == name)
        .limit(1)
    ).first()
    return json_to_distribution(row[0]) if row is not None else None
