"""Locks every process on a storage sees (hpo.storage.locks): one holder at a time, gone with it."""

from __future__ import annotations

import multiprocessing
import threading
import time

import optuna

from hpo.storage.backend import open_storage
from hpo.storage.locks import StorageLock, study_lock


def _hold_then_die(url: str, held: multiprocessing.synchronize.Event) -> None:
    lock = study_lock(open_storage(url), "x-nn")
    lock.acquire()
    held.set()
    time.sleep(60)  # killed while holding it


def _waits_for_the_holder(lock_a: StorageLock, lock_b: StorageLock) -> None:
    """``lock_b`` is not granted while ``lock_a`` is held, and is as soon as it is let go."""
    got = threading.Event()
    with lock_a as exclusive:
        assert exclusive is True
        waiter = threading.Thread(target=lambda: (lock_b.acquire(), got.set()))
        waiter.start()
        assert not got.wait(0.5), "two holders at once"
    assert got.wait(10), "the lock was never granted after its release"
    waiter.join()
    lock_b.release()


def test_a_sqlite_lock_has_one_holder_at_a_time() -> None:
    url = "sqlite:///storage/hpo.db"
    _waits_for_the_holder(study_lock(open_storage(url), "a"), study_lock(open_storage(url), "a"))


def test_a_postgres_lock_has_one_holder_per_name(pg_url: str) -> None:
    storage = open_storage(pg_url)
    _waits_for_the_holder(study_lock(storage, "a"), study_lock(storage, "a"))
    with study_lock(storage, "a"), study_lock(storage, "b") as exclusive:
        assert exclusive  # another study's lock is another key: no wait


def test_a_killed_holder_leaves_no_lock_behind() -> None:
    url = "sqlite:///storage/hpo.db"
    open_storage(url)
    ctx = multiprocessing.get_context("fork")
    held = ctx.Event()
    holder = ctx.Process(target=_hold_then_die, args=(url, held))
    holder.start()
    assert held.wait(30)
    holder.kill()
    holder.join()
    lock = study_lock(open_storage(url), "x-nn")
    done = threading.Event()
    threading.Thread(target=lambda: (lock.acquire(), done.set()), daemon=True).start()
    assert done.wait(10), "a dead process still holds the lock"
    lock.release()


def test_storages_no_lock_reaches_get_one_that_says_so() -> None:
    lock = study_lock(optuna.storages.InMemoryStorage(), "a")
    with lock as exclusive:
        assert exclusive is False  # callers then rely on create_new_study alone
    lock.release()  # releasing twice is harmless
