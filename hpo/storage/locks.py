"""Locks that every process sharing a storage sees: a PostgreSQL advisory lock, or a lock
file beside a SQLite database. Both vanish with the process that holds them, so a killed
worker never leaves one behind.

They guard the few steps that Optuna leaves racy between processes: creating the schema of
a fresh database, creating a study and enqueueing its baselines, and deciding whether the
study needs one more trial. Each is held for milliseconds, never while a trial trains.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy.engine import Connection, Engine

# Built once: text() parses its SQL for parameters each time it is made.
_LOCK = sqlalchemy.text("SELECT pg_advisory_lock(:k)")
_LOCK_SQL = "SELECT pg_advisory_lock(%(k)s)"  # the same, for psycopg itself
_UNLOCK = sqlalchemy.text("SELECT pg_advisory_unlock(:k)")


class StorageLock:
    """A lock with no effect: for storages no lock can reach (gRPC proxy, in-memory, MySQL).

    ``exclusive`` tells the caller whether holding the lock really excludes other processes.
    ``release`` may be called when the lock is not held; it then does nothing.
    """

    exclusive = False

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass

    def __enter__(self) -> bool:
        self.acquire()
        return self.exclusive

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class AdvisoryLock(StorageLock):
    """``pg_advisory_lock`` on a connection of its own, for the whole database server."""

    exclusive = True

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        # Advisory locks take a bigint key; a hash of the name keeps studies apart.
        self.key = int.from_bytes(hashlib.sha256(f"hpo:{name}".encode()).digest()[:8], signed=True)
        self._conn: Connection | None = None

    def acquire(self) -> None:
        self.acquire_then(None)

    def acquire_then(self, query: tuple[str, dict[str, Any]] | None) -> list[tuple[Any, ...]]:
        """Acquire, then run ``query`` (psycopg's SQL and its parameters) on the lock's
        connection, sent with the lock in one round trip; its rows."""
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            if query is None:
                conn.execute(_LOCK, {"k": self.key})
                rows = []
            else:
                driver: Any = conn.connection.driver_connection  # psycopg's Connection
                with driver.pipeline():  # both sent, then both waited for
                    driver.execute(_LOCK_SQL, {"k": self.key})
                    cursor = driver.execute(*query)
                rows = cursor.fetchall()
        except BaseException:
            conn.close()  # the lock, if granted, goes with the session
            raise
        self._conn = conn
        return rows

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(_UNLOCK, {"k": self.key})
        finally:
            conn.close()  # closing the session would release the lock anyway


class FileLock(StorageLock):
    """``flock`` on ``<database>.lock``: SQLite's writers all live on one machine.

    A file of its own, not the database: on NFS flock falls back to the same POSIX locks
    that SQLite takes on the database file, and the two would block each other. One lock
    per database, whatever the name: the sections it guards are short.
    """

    exclusive = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing drops the flock


def sqlite_lock_path(database: str) -> Path:
    return Path(f"{database}.lock")


def engine_lock(engine: Engine, name: str) -> StorageLock:
    """The lock ``name`` on the database behind ``engine``."""
    backend = engine.url.get_backend_name()
    if backend == "postgresql":
        return AdvisoryLock(engine, name)
    database = engine.url.database
    if backend == "sqlite" and database and database != ":memory:":
        return FileLock(sqlite_lock_path(database))
    return StorageLock()


def study_lock(storage: optuna.storages.BaseStorage, name: str) -> StorageLock:
    """The lock for study ``name`` in ``storage``; a no-op one where none can be had."""
    if isinstance(storage, optuna.storages.RDBStorage):
        return engine_lock(storage.engine, name)
    return StorageLock()
