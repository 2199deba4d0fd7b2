"""A trial's params are written in one transaction, and are the params Optuna would write.

hpo.storage.backend.params_in_one_write relies on how Optuna's Trial stores a suggested
param (through ``trial.storage.set_trial_param``): if that changes, these tests fail.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy

from hpo.spec import load_spec
from hpo.storage.backend import open_storage, params_in_one_write
from hpo.studies import search_space
from hpo.studies.search_space import suggest


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, workdir: Path) -> Callable[[str], str]:
    """A URL per name: two SQLite files, or the tests' PostgreSQL database (one study each)."""
    if request.param == "sqlite":
        return lambda name: f"sqlite:///{workdir / name}.db"
    pg = request.getfixturevalue("pg_url")
    return lambda name: pg


def _run(url: str, name: str, space: Any, trials: int) -> tuple[list[Any], int]:
    """A TPE study (multivariate, constant liar: hpo's) whose objective suggests ``space``;
    its trials' params and distributions, and how many param inserts it made."""
    storage = open_storage(url)
    inserts = 0

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal inserts
        inserts += statement.lstrip().upper().startswith("INSERT INTO TRIAL_PARAMS")

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", count)  # type: ignore[attr-defined]
    sampler = optuna.samplers.TPESampler(seed=3, multivariate=True, constant_liar=True)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        assert params == trial.params  # what the trial itself now holds
        return float(params["width"]) * params["dropout"] + params["depth"]

    study.optimize(objective, n_trials=trials)
    fresh = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(url))
    return [(list(t.params.items()), t.distributions) for t in fresh.trials], inserts


def test_params_are_optunas_in_one_insert(
    storage_url: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _ = load_spec(Path(__file__).parent.parent / "studies" / "digits.yaml")
    space = spec.nn.search_space
    trials = 14  # past TPE's 10 random start-up trials: relative sampling is covered too
    batched, batched_inserts = _run(storage_url("a"), "batched", space, trials)
    monkeypatch.setattr(search_space, "params_in_one_write", lambda t: contextlib.nullcontext())
    plain, plain_inserts = _run(storage_url("b"), "plain", space, trials)
    assert batched == plain  # same values, names, order and distributions
    assert plain_inserts == trials * len(type(space).model_fields)  # Optuna: one per param
    assert batched_inserts == trials


def test_an_incompatible_distribution_is_refused_as_optuna_does(workdir: Path) -> None:
    storage = open_storage(f"sqlite:///{workdir / 'x.db'}")
    study = optuna.create_study(storage=storage)
    study.optimize(lambda t: t.suggest_int("depth", 1, 3), n_trials=1)
    trial = study.ask()
    with pytest.raises(ValueError), params_in_one_write(trial):
        trial.suggest_float("depth", 0.0, 1.0)
    # Nothing was written for the refused param, and the trial can still take others.
    with params_in_one_write(trial):
        trial.suggest_int("width", 1, 4)
    assert set(study.trials[-1].params) == {"width"}
