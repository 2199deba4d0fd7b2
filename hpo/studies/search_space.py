"""Turn a search space from the spec into Optuna suggestions."""

from __future__ import annotations

from typing import Any

import optuna
from pydantic import BaseModel

from hpo.spec import FloatRange, IntRange


def suggest(trial: optuna.Trial, space: BaseModel) -> dict[str, Any]:
    """Suggest every dimension of ``space``, pinned ones included, in declaration order."""
    params: dict[str, Any] = {}
    for name in type(space).model_fields:
        dim = getattr(space, name)
        if isinstance(dim, IntRange):
            params[name] = trial.suggest_int(name, dim.low, dim.high, log=dim.log)
        elif isinstance(dim, FloatRange):
            params[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
        else:
            params[name] = trial.suggest_categorical(name, dim)
    return params
