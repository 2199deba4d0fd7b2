"""Turn a search space from the spec into Optuna suggestions."""

from __future__ import annotations

from typing import Any

import optuna
from pydantic import BaseModel

from hpo.spec import FloatRange, IntRange
from hpo.storage.backend import params_in_one_write
from hpo.studies.fast_tpe import draw_next_now


def suggest(trial: optuna.Trial, space: BaseModel) -> dict[str, Any]:
    """Suggest every dimension of ``space``, pinned ones included, in declaration order;
    the params are written together (one transaction, not one per param)."""
    params: dict[str, Any] = {}
    with params_in_one_write(trial):
        for name in type(space).model_fields:
            dim = getattr(space, name)
            if isinstance(dim, IntRange):
                params[name] = trial.suggest_int(name, dim.low, dim.high, log=dim.log)
            elif isinstance(dim, FloatRange):
                params[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
            else:
                params[name] = trial.suggest_categorical(name, dim)
    draw_next_now(trial.study.sampler)  # not during the write: see hpo.studies.sample_ahead
    return params
