"""The trial cache answers this process's reads of its own trials from memory, and still
gives the sampler and the pruner what Optuna's own cache gives them."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy

from hpo.storage.backend import open_storage, write_trial
from hpo.storage.trial_cache import TrialCache
from hpo.studies.pruning import LeanHyperbandPruner
from hpo.studies.reporting import Curve

EPOCHS = 9


def _objective(trial: optuna.Trial) -> float:
    """A made-up learning curve that depends on the params, pruned by the study's pruner,
    with user attrs written past Optuna's API (as hpo's trainers write them; the last
    write goes with the trial's state where the storage is a TrialCache)."""
    x = trial.suggest_float("x", -3, 3)
    depth = trial.suggest_int("depth", 1, 3)
    widths = [trial.suggest_int(f"width_{i}", 4, 64, log=True) for i in range(depth)]
    curve = Curve(trial)
    loss = (x - 1) ** 2 + 1 / sum(widths)
    for epoch in range(EPOCHS):
        value = loss * (1 + 1 / (epoch + 1))
        if curve.report(value, epoch):
            write_trial(trial, {"stopped": epoch}, curve.take(), last=True)
            raise optuna.TrialPruned
    write_trial(trial, {"architecture": str(widths)}, curve.take(), last=True)
    return loss


def _run(storage: optuna.storages.BaseStorage, trials: int) -> list[tuple[Any, ...]]:
    """hpo's sampler and pruner on ``_objective``; what each trial holds, as stored."""
    study = optuna.create_study(
        study_name="cache",
        storage=storage,
        sampler=optuna.samplers.TPESampler(
            seed=0, multivariate=True, constant_liar=True, n_startup_trials=5
        ),
        pruner=LeanHyperbandPruner(min_resource=1, max_resource=EPOCHS),
    )
    study.optimize(_objective, n_trials=trials)
    url = str(_database(storage).engine.url)
    return [
        (
            t.number,
            t.state,
            t.values,
            t.params,
            t.intermediate_values,
            json.dumps(t.user_attrs, sort_keys=True),
            json.dumps(t.system_attrs, sort_keys=True),
        )
        for t in optuna.load_study(study_name="cache", storage=url).trials
    ]


def _database(storage: optuna.storages.BaseStorage) -> optuna.storages.RDBStorage:
    return getattr(storage, "_backend", storage)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_study_through_the_cache_samples_prunes_and_stores_as_through_optunas(
    database: str, workdir: Path, request: pytest.FixtureRequest
) -> None:
    trials = 40
    if database == "sqlite":
        optunas = _run(open_storage(f"sqlite:///{workdir}/optuna.db"), trials)
        ours = _run(TrialCache(open_storage(f"sqlite:///{workdir}/hpo.db")), trials)
    else:
        url = request.getfixturevalue("pg_url")
        optunas = _run(open_storage(url), trials)
        optuna.delete_study(study_name="cache", storage=url)
        ours = _run(TrialCache(open_storage(url)), trials)
    states = {t[1] for t in ours}
    # Both kinds of trial happened, so both the sampler and the pruner were exercised.
    assert optuna.trial.TrialState.PRUNED in states
    assert optuna.trial.TrialState.COMPLETE in states
    assert ours == optunas


def test_trials_that_workers_create_at_once_are_numbered_in_turn(pg_url: str) -> None:
    """Each worker's cache creates its trials past Optuna's ORM: the numbers stay Optuna's
    (a trial's is the count of the study's earlier trials), none taken twice."""
    study_id = optuna.create_study(study_name="numbers", storage=pg_url)._study_id
    workers = [TrialCache(open_storage(pg_url)) for _ in range(4)]
    with ThreadPoolExecutor(len(workers)) as pool:
        created = pool.map(lambda w: [w.create_new_trial(study_id) for _ in range(15)], workers)
        ids = {trial_id for batch in created for trial_id in batch}
    stored = optuna.load_study(study_name="numbers", storage=pg_url).trials
    assert {t._trial_id for t in stored} == ids
    assert [t.number for t in sorted(stored, key=lambda t: t._trial_id)] == list(range(60))
    assert all(t.state == optuna.trial.TrialState.RUNNING for t in stored)


def test_a_new_trial_has_its_first_heartbeat_from_its_creation(workdir: Path) -> None:
    url = f"sqlite:///{workdir}/beat.db"
    cache = TrialCache(open_storage(url, heartbeat_interval=60))
    commits = [0]
    sqlalchemy.event.listen(
        _database(cache).engine, "commit", lambda conn: commits.__setitem__(0, commits[0] + 1)
    )
    trial = optuna.create_study(study_name="beat", storage=cache).ask()
    with open_storage(url).engine.connect() as conn:  # type: ignore[attr-defined]
        beats = conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats")).all()
    assert [b.trial_id for b in beats] == [trial._trial_id]
    created = commits[0]
    cache.record_heartbeat(trial._trial_id)  # the heartbeat thread's first: written already
    assert commits[0] == created
    cache.record_heartbeat(trial._trial_id)  # its next ones are written
    assert commits[0] == created + 1
    # A trial that ends before its heartbeat thread beats leaves nothing held for it.
    study = optuna.load_study(study_name="beat", storage=cache)
    quick = study.ask()
    study.tell(quick, 1.0)
    assert quick._trial_id not in cache._first_heartbeat_written


@pytest.mark.parametrize("heartbeat", [60, None])
def test_a_trial_created_in_one_round_trip_on_postgresql_is_optunas(
    pg_url: str, heartbeat: int | None
) -> None:
    """The study locked, the trial and its first heartbeat inserted, and the commit, sent
    together: the trial is Optuna's (number, state, start), its heartbeat is there where the
    storage has them, and a study that is not there is refused as Optuna refuses it."""
    name = f"one-trip-{heartbeat}"
    cache = TrialCache(open_storage(pg_url, heartbeat_interval=heartbeat))
    study = optuna.create_study(study_name=name, storage=cache)
    study.enqueue_trial({"x": 1.0})  # number 0, by Optuna's ORM
    created = [cache.create_new_trial(study._study_id) for _ in range(3)]
    stored = optuna.load_study(study_name=name, storage=pg_url).trials
    assert [(t._trial_id, t.number, t.state) for t in stored[1:]] == [
        (trial_id, number, optuna.trial.TrialState.RUNNING)
        for trial_id, number in zip(created, [1, 2, 3], strict=True)
    ]
    assert all(t.datetime_start is not None for t in stored[1:])
    with open_storage(pg_url).engine.connect() as conn:  # type: ignore[attr-defined]
        beats = conn.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats")).all()
    assert {b.trial_id for b in beats} >= (set(created) if heartbeat else set())
    assert not {b.trial_id for b in beats} & (set() if heartbeat else set(created))
    with pytest.raises(KeyError):
        cache.create_new_trial(study._study_id + 1000)


def _trial_reads(storage: optuna.storages.RDBStorage) -> list[int]:
    """A counter of the full reads of trials (a study's, or one) that ``storage`` makes:
    each loads the trials' params, as no write does."""
    reads = [0]

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        query = " ".join(statement.split())
        if query.startswith("SELECT trial_params.trial_id"):
            reads[0] += 1

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", count)
    return reads


def test_one_worker_reads_the_study_only_every_refresh_s(workdir: Path) -> None:
    plain = open_storage(f"sqlite:///{workdir}/optuna.db")
    cached = open_storage(f"sqlite:///{workdir}/hpo.db")
    plain_reads, cached_reads = _trial_reads(plain), _trial_reads(cached)
    trials = 30
    _run(plain, trials)
    # No refresh due during the run: a lone worker's trials are all its own.
    _run(TrialCache(cached, refresh_s=3600), trials)
    # Optuna's cache reads the running trial again on every sample, pruning check and tell.
    assert plain_reads[0] > 5 * trials
    assert cached_reads[0] <= 1


def test_other_workers_trials_are_read_after_refresh_s(workdir: Path) -> None:
    url = f"sqlite:///{workdir}/shared.db"
    optuna.create_study(study_name="shared", storage=url)
    cache = TrialCache(open_storage(url), refresh_s=3600)
    mine = optuna.load_study(study_name="shared", storage=cache)
    mine.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert len(mine.trials) == 1  # its own finished trial makes the next read go to storage
    # Another worker finishes a trial: not read yet, as the last read is recent.
    optuna.load_study(study_name="shared", storage=url).enqueue_trial({"x": 0.5})
    other = optuna.load_study(study_name="shared", storage=url)
    other.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert len(mine.trials) == 1
    cache.expire()
    assert [t.params["x"] for t in mine.trials][1] == 0.5
    assert len(mine.trials) == 2


def test_trials_a_worker_ended_are_not_read_again_until_it_expires(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{workdir}/kept.db"
    cache = TrialCache(open_storage(url), refresh_s=0)  # reads on every get_all_trials
    read: list[tuple[int, optuna.trial.TrialState]] = []  # each trial read in full
    backend_read = cache._backend._get_trials

    def spy(*args: Any, **kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        trials = backend_read(*args, **kwargs)
        read.extend((t.number, t.state) for t in trials)
        return trials

    monkeypatch.setattr(cache._backend, "_get_trials", spy)
    mine = optuna.create_study(study_name="kept", storage=cache)
    mine.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=10)
    assert read == []  # its own trials, running or ended, are held as written
    # Another worker's trial is read, ended.
    optuna.load_study(study_name="kept", storage=url).optimize(lambda t: 0.5, n_trials=1)
    assert len(mine.trials) == 11
    assert read == [(10, optuna.trial.TrialState.COMPLETE)]
    # expire() reads them all as stored.
    cache.expire()
    held = [(t.number, t.state, t.values, t.params, t.datetime_complete) for t in mine.trials]
    stored = optuna.load_study(study_name="kept", storage=url).trials
    assert held == [(t.number, t.state, t.values, t.params, t.datetime_complete) for t in stored]
    assert {n for n, state in read if state.is_finished()} == set(range(11))


def test_own_running_trial_is_kept_as_written_and_handed_out_as_a_copy(workdir: Path) -> None:
    url = f"sqlite:///{workdir}/own.db"
    cache = TrialCache(open_storage(url))
    study = optuna.create_study(study_name="own", storage=cache)
    trial = study.ask()
    trial.suggest_int("n", 1, 9)
    write_trial(trial, {"note": "kept"}, {0: 0.5})  # past Optuna's API, as hpo writes
    trial.set_user_attr("more", 1)

    held = cache.get_trial(trial._trial_id)
    stored = optuna.load_study(study_name="own", storage=url).trials[0]
    for attr in ("params", "distributions", "user_attrs", "intermediate_values", "state"):
        assert getattr(held, attr) == getattr(stored, attr)
    held.user_attrs["changed"] = True  # a caller's copy
    assert "changed" not in cache.get_trial(trial._trial_id).user_attrs
    study.tell(trial, 1.0)
    assert cache.get_trial(trial._trial_id).values == [1.0]


def _url(database: str, workdir: Path, request: pytest.FixtureRequest) -> str:
    return (
        f"sqlite:///{workdir}/hpo.db" if database == "sqlite" else request.getfixturevalue("pg_url")
    )


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_write_to_own_trial_that_another_process_failed_is_refused(
    database: str, workdir: Path, request: pytest.FixtureRequest
) -> None:
    url = _url(database, workdir, request)
    cache = TrialCache(open_storage(url))
    study = optuna.create_study(study_name="failed", storage=cache)
    trial = study.ask()
    # Another process (a peer that took this worker for dead) fails the trial.
    open_storage(url).set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        trial.set_user_attr("late", 1)


def _stored_trial(url: str, name: str) -> optuna.trial.FrozenTrial:
    return optuna.load_study(study_name=name, storage=url).trials[0]


def _stored_system_attrs(url: str, name: str) -> dict[str, Any]:
    return _stored_trial(url, name).system_attrs


def test_system_attrs_of_own_trial_go_with_its_next_write(workdir: Path) -> None:
    url = f"sqlite:///{workdir}/system.db"
    database = open_storage(url)
    commits = [0]
    sqlalchemy.event.listen(
        database.engine, "commit", lambda conn: commits.__setitem__(0, commits[0] + 1)
    )
    cache = TrialCache(database, refresh_s=0)  # every read goes to the database
    study = optuna.create_study(study_name="system", storage=cache)
    trial = study.ask()
    before = commits[0]
    # As TPE's constant liar and successive halving set them, mid-trial.
    cache.set_trial_system_attr(trial._trial_id, "completed_rung_0", 0.25)
    cache.set_trial_system_attr(trial._trial_id, "relative_params:0", '{"x": 1}')
    assert commits[0] == before
    assert _stored_system_attrs(url, "system") == {}
    # The process sees them at once, also after it reads the study again (the pruner reads
    # the trial's rungs from here).
    assert len(study.trials) == 1  # read from the database again (refresh_s=0)
    assert cache.get_trial(trial._trial_id).system_attrs == {
        "completed_rung_0": 0.25,
        "relative_params:0": '{"x": 1}',
    }
    before = commits[0]  # (a read is a transaction too)
    write_trial(trial, {"note": 1}, {0: 0.5})  # the trial's next write takes them along
    assert commits[0] == before + 1
    assert _stored_system_attrs(url, "system")["completed_rung_0"] == 0.25
    # Set after the last write: written when the trial ends, before its state.
    cache.set_trial_system_attr(trial._trial_id, "completed_rung_1", 0.2)
    study.tell(trial, 0.2)
    assert _stored_system_attrs(url, "system") == {
        "completed_rung_0": 0.25,
        "completed_rung_1": 0.2,
        "relative_params:0": '{"x": 1}',
    }
    # Another process's trial (not running here): written at once, as Optuna writes.
    other = optuna.load_study(study_name="system", storage=url).ask()
    cache.set_trial_system_attr(other._trial_id, "mark", 1)
    assert optuna.load_study(study_name="system", storage=url).trials[1].system_attrs == {"mark": 1}


@pytest.mark.parametrize("end", ["complete", "pruned"])
def test_a_trials_last_write_goes_with_its_state(workdir: Path, end: str) -> None:
    url = f"sqlite:///{workdir}/last.db"
    database = open_storage(url)
    commits = [0]
    sqlalchemy.event.listen(
        database.engine, "commit", lambda conn: commits.__setitem__(0, commits[0] + 1)
    )
    cache = TrialCache(database)
    study = optuna.create_study(study_name="last", storage=cache)
    trial = study.ask()
    write_trial(trial, {}, {0: 0.9})  # mid-trial: written at once
    cache.set_trial_system_attr(trial._trial_id, "completed_rung_0", 0.9)
    before = commits[0]
    write_trial(trial, {"val_loss": 0.5}, {1: 0.7, 2: 0.5}, last=True)
    # Not in the database yet, but this process sees it (Optuna's tell reads the curve).
    assert commits[0] == before
    assert _stored_trial(url, "last").user_attrs == {}
    assert trial.user_attrs == {"val_loss": 0.5}
    assert cache.get_trial(trial._trial_id).intermediate_values == {0: 0.9, 1: 0.7, 2: 0.5}
    if end == "complete":
        study.tell(trial, 0.5)
    else:  # Optuna gives a pruned trial its last reported value
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert commits[0] == before + 1  # rows and state in one transaction
    stored = _stored_trial(url, "last")
    assert stored.state.name == end.upper()
    assert stored.value == 0.5 and stored.datetime_complete is not None
    assert stored.user_attrs == {"val_loss": 0.5}
    assert stored.intermediate_values == {0: 0.9, 1: 0.7, 2: 0.5}
    assert stored.system_attrs == {"completed_rung_0": 0.9}
    assert cache.get_trial(trial._trial_id).state == stored.state


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_last_write_is_refused_with_the_state_where_another_process_ended_it(
    database: str, workdir: Path, request: pytest.FixtureRequest
) -> None:
    url = _url(database, workdir, request)
    cache = TrialCache(open_storage(url))
    study = optuna.create_study(study_name="ended", storage=cache)
    trial = study.ask()
    write_trial(trial, {"val_loss": 0.5}, {0: 0.5}, last=True)
    # A peer took this worker for dead and failed its trial meanwhile.
    open_storage(url).set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        cache.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.COMPLETE, [0.5])
    stored = _stored_trial(url, "ended")
    assert stored.state.name == "FAIL"
    assert stored.user_attrs == {} and stored.intermediate_values == {}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_write_that_fails_writes_nothing(
    database: str, workdir: Path, request: pytest.FixtureRequest
) -> None:
    """A trial's rows go in one transaction (on PostgreSQL, sent together with its commit):
    one row the database refuses, and none of them is stored."""
    url = _url(database, workdir, request)
    study = optuna.create_study(study_name="atomic", storage=TrialCache(open_storage(url)))
    trial = study.ask()
    write_trial(trial, {"first": 1}, {0: 0.5})
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        write_trial(trial, {"second": 2}, {1: 0.4, 0: 0.6})  # step 0 is stored already
    stored = _stored_trial(url, "atomic")
    assert stored.user_attrs == {"first": 1}
    assert stored.intermediate_values == {0: 0.5}
    write_trial(trial, {"third": 3}, {1: 0.4})  # the connection is usable again
    assert _stored_trial(url, "atomic").user_attrs == {"first": 1, "third": 3}


def test_trials_by_state_stay_in_number_order_as_trials_come_and_change(workdir: Path) -> None:
    """The lists kept per state follow every write: this worker's trials as they run and
    end, another worker's read late (numbers below this worker's newest), enqueued ones
    taken, and a study read anew after expire()."""
    url = f"sqlite:///{workdir}/order.db"
    cache = TrialCache(open_storage(url), refresh_s=0)
    mine = optuna.create_study(study_name="order", storage=cache)
    other = optuna.load_study(study_name="order", storage=url)
    State = optuna.trial.TrialState
    asked = [
        None,
        (State.COMPLETE, State.PRUNED),
        (State.COMPLETE, State.PRUNED, State.RUNNING),
        (State.RUNNING,),
        [State.WAITING],
        {State.FAIL, State.COMPLETE},
    ]
    study_id = mine._study_id

    def check() -> None:
        for states in asked:
            held = cache.get_all_trials(study_id, deepcopy=False, states=states)
            by_number = cache._studies[study_id].trials  # Optuna's own dict, the truth
            expected = [
                by_number[n]
                for n in sorted(by_number)
                if states is None or by_number[n].state in states
            ]
            assert [(t.number, t.state) for t in held] == [(t.number, t.state) for t in expected]
            assert all(a is b for a, b in zip(held, expected, strict=True))

    check()  # the lists are made on the first reads, then followed
    running = mine.ask()
    later = other.ask()  # another worker's, read while it runs, then ended there
    check()
    mine.tell(running, 1.0)
    check()
    other.tell(later, 2.0)
    other.enqueue_trial({"x": 0.5})
    check()
    taken = mine.ask()  # the enqueued trial
    assert taken.number == 2
    check()
    mine.tell(taken, state=State.PRUNED)
    failed = mine.ask()
    mine.tell(failed, state=State.FAIL)
    check()
    cache.expire()
    check()
    assert [t.state for t in mine.get_trials(deepcopy=False)] == [
        State.COMPLETE,
        State.COMPLETE,
        State.PRUNED,
        State.FAIL,
    ]
