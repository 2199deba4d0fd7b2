"""The ensemble: the best NN and GBM trials, read back from storage, weighted on validation.

Nothing is retrained: members are the saved models of finished trials. Two weightings:

- ``average``: the plain mean of the members' probabilities (or predictions, for regression);
- ``greedy``: Caruana et al. (2004) ensemble selection with replacement, fitted on the
  validation split as AutoGluon and auto-sklearn do. Each round adds the member that most
  improves the spec's ``metric`` of the running mean on validation (ties: the lower
  validation loss); the best prefix of the picks is kept, and a member's weight is the
  share of picks that chose it.

The leaderboard (members ranked by the validation metric, then both ensembles, with
validation and test scores, and the no-skill baseline) is stored in the NN study's user
attrs under ``"ensemble"``; the HTML report reads that contract.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import optuna
import torch
import xgboost as xgb
from pydantic import ValidationError

from hpo.data import Dataset, load_dataset
from hpo.errors import HpoError
from hpo.members import GBMMember, Member, NNMember, combine
from hpo.metrics import (
    HIGHER_IS_BETTER,
    MetricName,
    constant_prediction,
    default_metric,
    loss_name,
    no_skill_name,
    recorded_metrics,
    score,
    scores,
    selection_key,
    validation_loss,
)
from hpo.model import MLPSpec
from hpo.resume import outside_current_space
from hpo.spec import EnsembleConfig, StudySpec
from hpo.storage import load_study
from hpo.summary import best_trials

Method = Literal["average", "greedy"]
METHODS: tuple[Method, ...] = ("average", "greedy")
LEADERBOARD_KEY = "ensemble"


@dataclass(frozen=True)
class Ensemble:
    """Members and their weights (summing to one); predicts from preprocessed features."""

    members: tuple[Member, ...]
    weights: np.ndarray

    def predict(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """``x``: one matrix for every member, or one per member kind (``nn``, ``gbm``)."""
        used = [(m, w) for m, w in zip(self.members, self.weights, strict=True) if w > 0]
        views = [x[m.kind] if isinstance(x, Mapping) else x for m, _ in used]
        return combine(
            [m.predict(v) for (m, _), v in zip(used, views, strict=True)],
            np.array([w for _, w in used]),
        )


@dataclass(frozen=True)
class EnsembleReport:
    """Everything one ensemble build found: members, both weightings, the leaderboard."""

    name: str
    members: tuple[Member, ...]
    trials: tuple[optuna.trial.FrozenTrial, ...]  # the members' trials, in member order
    weights: dict[Method, np.ndarray]
    method: Method
    leaderboard: dict[str, Any]

    def ensemble(self, method: Method | None = None) -> Ensemble:
        return Ensemble(self.members, self.weights[method or self.method])


def average_weights(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def greedy_weights(
    predictions: list[np.ndarray], score: Callable[[np.ndarray], Any], rounds: int
) -> tuple[np.ndarray, list[Any]]:
    """Caruana ensemble selection with replacement; ``score(pred)`` is what to minimize: a
    loss, or a tuple compared in order (see :func:`hpo.metrics.selection_key`).

    Returns the weights of the best prefix of picks and the score after each pick.
    Ties go to the earlier member (better ranked, as members come sorted by their study).
    """
    n = len(predictions)
    picks: list[int] = []
    trajectory: list[Any] = []
    running = np.zeros_like(predictions[0])
    for r in range(rounds):
        losses = [score((running * r + p) / (r + 1)) for p in predictions]
        best = min(range(n), key=losses.__getitem__)  # the first of equals
        picks.append(best)
        trajectory.append(losses[best])
        running = (running * r + predictions[best]) / (r + 1)
    keep = min(range(rounds), key=trajectory.__getitem__) + 1
    counts = np.bincount(picks[:keep], minlength=n).astype(np.float64)
    return counts / counts.sum(), trajectory


def read_artifact(
    artifacts: optuna.artifacts.FileSystemArtifactStore,
    study_name: str,
    trial: optuna.trial.FrozenTrial,
) -> bytes:
    artifact_id = trial.user_attrs.get("artifact_id")
    if not artifact_id:
        raise HpoError(f"{study_name}: trial {trial.number} has no saved model")
    try:
        with artifacts.open_reader(artifact_id) as f:
            return f.read()
    except (optuna.artifacts.exceptions.ArtifactNotFound, OSError):
        raise HpoError(
            f"{study_name}: the model of trial {trial.number} is not in the artifact store "
            f"(pass the --artifacts directory the run used)"
        ) from None


def load_nn_member(
    trial: optuna.trial.FrozenTrial,
    study_name: str,
    artifacts: optuna.artifacts.FileSystemArtifactStore,
    data: Dataset,
) -> NNMember:
    raw = read_artifact(artifacts, study_name, trial)
    try:
        # weights_only: a tensor dict, never arbitrary pickled objects.
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        return NNMember.from_state_dict(
            trial.number,
            MLPSpec.from_dict(trial.user_attrs["mlp_spec"]),
            state,
            task=data.task,
            n_features=data.n_features,
            n_classes=len(data.classes or []),
            y_mean=data.y_mean,
            y_std=data.y_std,
            embedding_sizes=data.embedding_sizes,
        )
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HpoError(
            f"{study_name}: cannot load the model of trial {trial.number}: {first}"
        ) from None


def load_gbm_member(
    trial: optuna.trial.FrozenTrial,
    study_name: str,
    artifacts: optuna.artifacts.FileSystemArtifactStore,
    data: Dataset,
) -> GBMMember:
    raw = read_artifact(artifacts, study_name, trial)
    try:
        return GBMMember.from_bytes(trial.number, raw, task=data.task)
    except xgb.core.XGBoostError:
        raise HpoError(
            f"{study_name}: the model of trial {trial.number} is not an XGBoost model"
        ) from None


def build_ensemble(
    name: str,
    nn_study: optuna.Study | None,
    gbm_study: optuna.Study | None,
    data: Dataset,
    config: EnsembleConfig,
    artifacts: optuna.artifacts.FileSystemArtifactStore,
    metric: MetricName | None = None,
) -> EnsembleReport:
    """Load the best ``nn_members`` and ``gbm_members`` trials, weight them both ways, score.

    ``metric`` (the spec's; the task's default if None) is what greedy selection optimizes
    and the leaderboard ranks.

    Raises:
        HpoError: no finished trial in either study, or a saved model is missing.
    """
    nn_trials = best_trials(nn_study, config.nn_members) if nn_study and config.nn_members else []
    gbm_trials = (
        best_trials(gbm_study, config.gbm_members) if gbm_study and config.gbm_members else []
    )
    if not nn_trials and not gbm_trials:
        raise HpoError(
            f"{name}: no finished trials to build an ensemble from "
            "(none has run yet, or every one was pruned or failed)"
        )
    members: list[Member] = []
    if nn_study is not None:
        members += [load_nn_member(t, nn_study.study_name, artifacts, data) for t in nn_trials]
    if gbm_study is not None:
        members += [load_gbm_member(t, gbm_study.study_name, artifacts, data) for t in gbm_trials]

    task = data.task
    metric = metric or default_metric(task)
    names = recorded_metrics(task, metric)
    val = [m.predict(data.view(m.kind, "val")) for m in members]
    test = [m.predict(data.view(m.kind, "test")) for m in members]
    weights: dict[Method, np.ndarray] = {
        "average": average_weights(len(members)),
        "greedy": greedy_weights(
            val, selection_key(task, metric, data.val.y), config.greedy_rounds
        )[0],
    }

    def row_scores(v: np.ndarray, t: np.ndarray) -> dict[str, float]:
        return {
            "val_loss": validation_loss(task, v, data.val.y),
            "val_metric": score(metric, v, data.val.y),
            "test_metric": score(metric, t, data.test.y),
            **scores(names, "val", v, data.val.y),
            **scores(names, "test", t, data.test.y),
        }

    rows: list[dict[str, Any]] = [
        {
            "name": f"{m.kind}#{m.trial}",
            "kind": m.kind,
            "trial": m.trial,
            "weight": float(weights[config.method][i]),
            **row_scores(val[i], test[i]),
        }
        for i, m in enumerate(members)
    ]
    sign = -1.0 if HIGHER_IS_BETTER[metric] else 1.0
    rows.sort(key=lambda r: sign * r["val_metric"] if np.isfinite(r["val_metric"]) else np.inf)
    for method in METHODS:
        w = weights[method]
        rows.append(
            {
                "name": f"ensemble ({method})",
                "kind": "ensemble",
                "trial": None,
                "weight": None,
                **row_scores(combine(val, w), combine(test, w)),
            }
        )
    n_classes = len(data.classes or [])
    no_skill = constant_prediction(task, data.train.y, len(data.val.y), n_classes)
    # left_out: completed trials that best_trials passed over, outside the current space.
    leaderboard: dict[str, Any] = {
        "method": config.method,
        "metric": metric,
        "higher_is_better": HIGHER_IS_BETTER[metric],
        "loss": loss_name(task),
        "baseline": {
            "name": no_skill_name(task),
            "val_loss": validation_loss(task, no_skill, data.val.y),
            "val_metric": score(metric, no_skill, data.val.y),
        },
        "rows": rows,
        "left_out": {
            s.study_name: outside_current_space(s) for s in (nn_study, gbm_study) if s is not None
        },
    }
    return EnsembleReport(
        name=name,
        members=tuple(members),
        trials=tuple(nn_trials + gbm_trials),
        weights=weights,
        method=config.method,
        leaderboard=leaderboard,
    )


def store_leaderboard(study: optuna.Study, leaderboard: dict[str, Any]) -> None:
    study.set_user_attr(LEADERBOARD_KEY, leaderboard)


@dataclass(frozen=True)
class StoredStudy:
    """A tuned study read back from storage: its spec, both Optuna studies, and its data."""

    spec: StudySpec
    nn_study: optuna.Study
    gbm_study: optuna.Study | None
    data: Dataset


def open_stored(name: str, storage: optuna.storages.BaseStorage) -> StoredStudy:
    """``digits`` (or ``digits-nn``, ``digits-gbm``) to its spec, studies and data.

    The spec is the one stored in the NN study's attrs; the data is loaded from where the
    run found it and must split to the same sizes.

    Raises:
        HpoError: unknown name, a spec this version cannot read, or data that changed.
    """
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    base = name
    for suffix in ("-nn", "-gbm"):
        if name.endswith(suffix) and f"{name.removesuffix(suffix)}-nn" in names:
            base = name.removesuffix(suffix)
    if f"{base}-nn" not in names:
        specs = sorted(n.removesuffix("-nn") for n in names if n.endswith("-nn"))
        known = ", ".join(specs) if specs else "none"
        raise HpoError(f"no study named {name!r} (studies here: {known})")
    nn_study = load_study(f"{base}-nn", storage)
    gbm_study = load_study(f"{base}-gbm", storage) if f"{base}-gbm" in names else None
    attrs = nn_study.user_attrs
    try:
        spec = StudySpec.model_validate(attrs["spec"])
    except (KeyError, ValidationError):
        raise HpoError(
            f"{nn_study.study_name}: its stored spec is missing or unreadable by this hpo"
        ) from None
    if spec.data.source != "sklearn":
        # The run stored where it found the data (absolute), not the spec-relative path.
        spec = spec.model_copy(
            update={"data": spec.data.model_copy(update={"path": attrs["dataset"]})}
        )
    data = load_dataset(spec.data, spec.task, Path("/"), spec.seed)
    sizes = [len(data.train.y), len(data.val.y), len(data.test.y)]
    if sizes != attrs.get("split_sizes") or data.n_features != attrs.get("n_features"):
        raise HpoError(
            f"{base}: the data at {data.source} no longer matches the study "
            f"(splits {sizes} and {data.n_features} features; "
            f"the study has {attrs.get('split_sizes')} and {attrs.get('n_features')})"
        )
    return StoredStudy(spec, nn_study, gbm_study, data)


def ensemble_config(spec: StudySpec, **overrides: Any) -> EnsembleConfig:
    """The spec's ensemble settings with command-line overrides (``None`` keeps the spec's)."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    try:
        return EnsembleConfig.model_validate(spec.ensemble.model_dump() | changes)
    except ValidationError as e:
        raise HpoError(str(e.errors()[0]["msg"]).removeprefix("Value error, ")) from None
