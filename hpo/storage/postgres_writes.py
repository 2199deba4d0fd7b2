"""A running trial's rows written to PostgreSQL in one round trip.

Through SQLAlchemy a write to a trial waits for the server twice: once for the trial's
state (Optuna refuses a write to a finished trial), then for the rows and the commit. Here
the state check goes with the writes: the trial's row is locked, every statement writes
only where the trial may still be written, and the state read first says afterwards
whether it could. So all of it goes out at once in psycopg's pipeline, with the commit,
and nothing is written to a finished trial. Each statement's rows travel as arrays, one
fixed statement per table, which the server prepares once: SQLAlchemy's multi-row
``VALUES`` made a new statement for each row count, parsed every time, which cost more
than the round trip it was in (benchmarks/optuna_overhead.py).

Statements in Optuna's schema, which its migrations keep (tables ``trials``,
``trial_params``, ``trial_values``, ``trial_intermediate_values``, and the two attribute
tables).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from optuna.storages._rdb.models import TrialIntermediateValueModel, TrialValueModel
from optuna.trial import TrialState

# The trial, where it may still be written (as Optuna's check_trial_is_updatable).
_WRITABLE = "trial_id = %(trial_id)s AND state IN ({})".format(
    ", ".join(f"'{s.name}'" for s in TrialState if not s.is_finished())
)
_LOCK_TRIAL = "SELECT state FROM trials WHERE trial_id = %(trial_id)s FOR UPDATE"
_INSERT_PARAMS = f"""
INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)
SELECT trial_id, p.* FROM trials,
    unnest(%(param_names)s::text[], %(param_values)s::float8[], %(distributions)s::text[]) p
WHERE {_WRITABLE}"""
_INSERT_CURVE = f"""
INSERT INTO trial_intermediate_values
    (trial_id, step, intermediate_value, intermediate_value_type)
SELECT trial_id, v.* FROM trials,
    unnest(%(steps)s::int[], %(step_values)s::float8[],
           %(step_value_types)s::trialintermediatevaluetype[]) v
WHERE {_WRITABLE}"""
_INSERT_VALUES = f"""
INSERT INTO trial_values (trial_id, objective, value, value_type)
SELECT trial_id, v.* FROM trials,
    unnest(%(objectives)s::int[], %(values)s::float8[], %(value_types)s::trialvaluetype[]) v
WHERE {_WRITABLE}"""
_UPSERT_ATTRS = """
INSERT INTO {table} (trial_id, key, value_json)
SELECT trial_id, a.* FROM trials, unnest(%(keys)s::text[], %(jsons)s::text[]) a
WHERE {writable}
ON CONFLICT (trial_id, key) DO UPDATE SET value_json = excluded.value_json"""
_UPSERT_USER_ATTRS = _UPSERT_ATTRS.format(table="trial_user_attributes", writable=_WRITABLE)
_UPSERT_SYSTEM_ATTRS = _UPSERT_ATTRS.format(table="trial_system_attributes", writable=_WRITABLE)
# Last: the statements above see the trial still writable.
_END_TRIAL = f"""
UPDATE trials SET state = %(end_state)s, datetime_complete = %(ended_at)s
WHERE {_WRITABLE}"""


@dataclass
class TrialRows:
    """What one write puts on a running trial: params (name -> internal value and the
    distribution's JSON), intermediate values (step -> value), attrs, and its end."""

    params: dict[str, tuple[float, str]] = field(default_factory=dict)
    curve: dict[int, float] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    end: tuple[TrialState, list[float] | None] | None = None


def send(driver: Any, trial_id: int, rows: TrialRows) -> Any:
    """Queue ``rows``' statements on ``driver`` (a psycopg connection, in a pipeline and a
    transaction); the cursor whose row, once the pipeline is synced, is the trial's state
    before the write (none where there is no such trial). Where that state is finished,
    nothing was written."""
    state = driver.execute(_LOCK_TRIAL, {"trial_id": trial_id})
    for sql, params in _statements(trial_id, rows):
        driver.execute(sql, params)
    return state


def _statements(trial_id: int, rows: TrialRows) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if rows.params:
        internal = [float(value) for value, _ in rows.params.values()]
        dists = [dist for _, dist in rows.params.values()]
        out.append(
            (
                _INSERT_PARAMS,
                {
                    "param_names": list(rows.params),
                    "param_values": internal,
                    "distributions": dists,
                },
            )
        )
    if rows.curve:
        stored = [
            TrialIntermediateValueModel.intermediate_value_to_stored_repr(v)
            for v in rows.curve.values()
        ]
        out.append(
            (
                _INSERT_CURVE,
                {
                    "steps": list(rows.curve),
                    "step_values": [_float(value) for value, _ in stored],
                    "step_value_types": [kind.name for _, kind in stored],
                },
            )
        )
    for sql, attrs in (
        (_UPSERT_USER_ATTRS, rows.user_attrs),
        (_UPSERT_SYSTEM_ATTRS, rows.system_attrs),
    ):
        if attrs:
            jsons = [json.dumps(value) for value in attrs.values()]
            out.append((sql, {"keys": list(attrs), "jsons": jsons}))
    if rows.end is not None:
        state, values = rows.end
        if values:
            scores = [TrialValueModel.value_to_stored_repr(v) for v in values]
            out.append(
                (
                    _INSERT_VALUES,
                    {
                        "objectives": list(range(len(scores))),
                        "values": [_float(value) for value, _ in scores],
                        "value_types": [kind.name for _, kind in scores],
                    },
                )
            )
        out.append((_END_TRIAL, {"end_state": state.name, "ended_at": datetime.now()}))
    for _, params in out:
        params["trial_id"] = trial_id
    return out


def _float(value: float | None) -> float | None:
    """A float for a ``float8[]`` (psycopg refuses a list of ints and floats), or None."""
    return None if value is None else float(value)
