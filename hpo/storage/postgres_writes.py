"""A running trial's rows written to PostgreSQL in one statement, one round trip.

Through SQLAlchemy a write to a trial waits for the server twice: once for the trial's
state (Optuna refuses a write to a finished trial), then for the rows and the commit. Here
the check is part of the write: one statement locks the trial's row, writes each table
only where the trial may still be written, and returns the state it found, which says
afterwards whether it could (where it could not, nothing was written). A single statement
is its own transaction, so there is no BEGIN or COMMIT to send either.

The rows travel as JSON, one parameter per table (``json_to_recordset``): the statement
is the same for every write, so the server prepares it once; SQLAlchemy's multi-row
``VALUES`` made a new statement for each row count, which psycopg and the server parsed
every time, and psycopg's arrays are dumped element by element in Python. Both cost more
than the round trip (benchmarks/optuna_overhead.py).

Not for a trial's creation (:func:`hpo.storage.backend.create_running_trial`): its number
counts the study's trials after the study's row is locked, which one statement, whose
snapshot is taken before the lock, would not see.

The statement names Optuna's tables and columns, which its migrations keep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from optuna.storages._rdb.models import TrialIntermediateValueModel, TrialValueModel
from optuna.trial import TrialState

_STILL_WRITABLE = ", ".join(f"'{s.name}'" for s in TrialState if not s.is_finished())


def _insert(table: str, columns: dict[str, str], upsert: bool = False) -> str:
    """An insert into ``table`` of the rows in the JSON parameter named after it (objects
    keyed by column; ``columns``: name -> type) for the trial, where it is writable; with
    ``upsert``, a row of the same key replaces the stored one (as Optuna writes attrs)."""
    names = ", ".join(columns)
    typed = ", ".join(f"{name} {kind}" for name, kind in columns.items())
    conflict = " ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json"
    return (
        f"INSERT INTO {table} (trial_id, {names})"
        f" SELECT w.trial_id, {', '.join(f'r.{name}' for name in columns)}"
        f" FROM writable w, json_to_recordset(%({table})s::json) AS r({typed})"
        + (conflict if upsert else "")
    )


_ATTR = {"key": "text", "value_json": "text"}
_WRITE = f"""
WITH trial AS (
    SELECT trial_id, state FROM trials WHERE trial_id = %(trial_id)s FOR UPDATE
), writable AS (
    SELECT trial_id FROM trial WHERE state IN ({_STILL_WRITABLE})
), params AS (
    {
    _insert(
        "trial_params", {"param_name": "text", "param_value": "float8", "distribution_json": "text"}
    )
}
), curve AS (
    {
    _insert(
        "trial_intermediate_values",
        {
            "step": "int",
            "intermediate_value": "float8",
            "intermediate_value_type": "trialintermediatevaluetype",
        },
    )
}
), user_attrs AS (
    {_insert("trial_user_attributes", _ATTR, upsert=True)}
), system_attrs AS (
    {_insert("trial_system_attributes", _ATTR, upsert=True)}
), scores AS (
    {
    _insert("trial_values", {"objective": "int", "value": "float8", "value_type": "trialvaluetype"})
}
), ended AS (
    UPDATE trials SET state = %(end_state)s::trialstate, datetime_complete = %(ended_at)s
    FROM writable w
    WHERE trials.trial_id = w.trial_id AND %(end_state)s::trialstate IS NOT NULL
)
SELECT state FROM trial"""


@dataclass
class TrialRows:
    """What one write puts on a running trial: params (name -> internal value and the
    distribution's JSON), intermediate values (step -> value), attrs, and its end."""

    params: dict[str, tuple[float, str]] = field(default_factory=dict)
    curve: dict[int, float] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    end: tuple[TrialState, list[float] | None] | None = None


def write(driver: Any, trial_id: int, rows: TrialRows) -> str | None:
    """Write ``rows`` on the trial with ``driver`` (a psycopg connection in autocommit);
    the name of the trial's state before the write, None where there is no such trial.
    Where that state is a finished one, nothing was written."""
    found = driver.execute(_WRITE, _parameters(trial_id, rows)).fetchone()
    return None if found is None else str(found[0])


def _parameters(trial_id: int, rows: TrialRows) -> dict[str, Any]:
    """The statement's parameters: each table's rows as JSON, keyed by column."""
    curve = [
        (step, *TrialIntermediateValueModel.intermediate_value_to_stored_repr(value))
        for step, value in rows.curve.items()
    ]
    state, values = rows.end if rows.end is not None else (None, None)
    scores = [TrialValueModel.value_to_stored_repr(v) for v in values or ()]
    return {
        "trial_id": trial_id,
        "trial_params": json.dumps(
            [
                {"param_name": name, "param_value": value, "distribution_json": distribution}
                for name, (value, distribution) in rows.params.items()
            ]
        ),
        "trial_intermediate_values": json.dumps(
            [
                {"step": step, "intermediate_value": value, "intermediate_value_type": kind.name}
                for step, value, kind in curve
            ]
        ),
        "trial_user_attributes": _attrs_json(rows.user_attrs),
        "trial_system_attributes": _attrs_json(rows.system_attrs),
        "trial_values": json.dumps(
            [
                {"objective": objective, "value": value, "value_type": kind.name}
                for objective, (value, kind) in enumerate(scores)
            ]
        ),
        "end_state": state.name if state is not None else None,
        "ended_at": datetime.now() if state is not None else None,
    }


def _attrs_json(attrs: dict[str, Any]) -> str:
    return json.dumps([{"key": k, "value_json": json.dumps(v)} for k, v in attrs.items()])
