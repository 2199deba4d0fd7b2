"""The ensemble: the best NN and GBM trials, read back from storage, weighted on validation.

Nothing is retrained: members are the saved models of finished trials. With
``data.validation: {kfold: K}`` a member is a :class:`BaggedMember`: the K fold models of
its trial, averaged, and "validation" means the trial's stored out-of-fold predictions of
every non-test row (:mod:`hpo.studies.folds`), so the weights below are fitted on those,
never on test, as AutoGluon fits its weighted ensemble on out-of-fold predictions. Two
weightings:

- ``average``: the plain mean of the members' probabilities (or predictions, for regression);
- ``greedy``: Caruana et al. (2004) ensemble selection with replacement, fitted on the
  validation split as AutoGluon and auto-sklearn do. Each round adds the member that most
  improves the spec's ``metric`` of the running mean on validation (ties: the lower
  validation loss); the best prefix of the picks is kept, and a member's weight is the
  share of picks that chose it.

The leaderboard (:class:`hpo.storage.stored.Leaderboard`: members ranked by the validation metric,
then both ensembles, with validation and test scores, and the no-skill baseline) is stored
in the NN study's user attrs; the HTML report and ``hpo export`` read it back.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import optuna
import safetensors
import safetensors.torch
import torch
from optuna.trial import TrialState
from pydantic import ValidationError

from hpo.data.dataset import Dataset
from hpo.data.tables import note
from hpo.ensemble.sanity import check_studies_have_values, check_useful
from hpo.errors import HpoError
from hpo.models.members import MODEL_ERRORS, GBMMember, Member, NNMember, combine
from hpo.models.metrics import (
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
from hpo.models.mlp import MLPSpec
from hpo.spec import EnsembleConfig, StudySpec, check_overrides
from hpo.storage import stored
from hpo.storage.stored import (
    Kind,
    Leaderboard,
    LeaderboardRow,
    NoSkill,
    StoredStudy,
    best_trials,
    outside_current_space,
    store_leaderboard,
)
from hpo.studies.folds import read_npy

Method = Literal["average", "greedy"]
METHODS: tuple[Method, ...] = ("average", "greedy")


@dataclass(frozen=True)
class BaggedMember:
    """A k-fold trial as one member: its K fold models, averaged (as AutoGluon's bagged
    models predict), and their out-of-fold predictions of the non-test rows."""

    trial: int
    kind: Kind
    folds: tuple[Member, ...]
    oof: np.ndarray  # rows in pool order (hpo.data.dataset.Dataset.pool)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return combine([m.predict(x) for m in self.folds], average_weights(len(self.folds)))


EnsembleMember = Member | BaggedMember


def fold_models(member: EnsembleMember, weight: float) -> list[tuple[Member, float, int | None]]:
    """What a bundle or an ONNX graph holds of a member: itself, or each of its K fold
    models with weight ``weight / K`` (their sum is the member's average), with its fold."""
    if isinstance(member, BaggedMember):
        share = weight / len(member.folds)
        return [(m, share, k) for k, m in enumerate(member.folds)]
    return [(member, weight, None)]


@dataclass(frozen=True)
class Ensemble:
    """Members and their weights (summing to one); predicts from preprocessed features."""

    members: tuple[EnsembleMember, ...]
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
    members: tuple[EnsembleMember, ...]
    trials: tuple[optuna.trial.FrozenTrial, ...]  # the members' trials, in member order
    weights: dict[Method, np.ndarray]
    method: Method
    leaderboard: Leaderboard

    def ensemble(self, method: Method | None = None) -> Ensemble:
        return Ensemble(self.members, self.weights[method or self.method])


def average_weights(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def greedy_weights(
    predictions: list[np.ndarray], score: Callable[[np.ndarray], Any], rounds: int
) -> tuple[np.ndarray, list[Any]]:
    """Caruana ensemble selection with replacement; ``score(pred)`` is what to minimize: a
    loss, or a tuple compared in order (see :func:`hpo.models.metrics.selection_key`).

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
    artifact_id: str | None = None,
) -> bytes:
    """A trial's model file (``artifact_id``: another of its files, e.g. a fold model)."""
    artifact_id = artifact_id or trial.user_attrs.get(stored.ARTIFACT_ID)
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


def load_member(
    kind: Kind,
    trial: optuna.trial.FrozenTrial,
    study_name: str,
    artifacts: optuna.artifacts.FileSystemArtifactStore,
    data: Dataset,
) -> EnsembleMember:
    """The saved model of ``trial`` in study ``study_name`` (a ``kind`` study), ready to
    predict on ``data``'s views; a k-fold trial's K fold models as one bagged member.

    Raises:
        HpoError: no saved model, not in the artifact store, or not readable.
    """
    fold_ids = trial.user_attrs.get(stored.FOLD_ARTIFACT_IDS)
    if fold_ids:
        folds = tuple(
            _load_one(kind, trial, read_artifact(artifacts, study_name, trial, i), data, study_name)
            for i in fold_ids
        )
        oof_id = trial.user_attrs.get(stored.OOF_ARTIFACT_ID)
        if not oof_id:
            raise HpoError(f"{study_name}: trial {trial.number} has no out-of-fold predictions")
        try:
            oof = read_npy(read_artifact(artifacts, study_name, trial, oof_id))
        except ValueError as e:
            raise HpoError(
                f"{study_name}: cannot read the out-of-fold predictions of trial "
                f"{trial.number}: {e}"
            ) from None
        return BaggedMember(trial.number, kind, folds, oof.astype(np.float64))
    return _load_one(kind, trial, read_artifact(artifacts, study_name, trial), data, study_name)


def _load_one(
    kind: Kind, trial: optuna.trial.FrozenTrial, raw: bytes, data: Dataset, study_name: str
) -> Member:
    try:
        return _nn_member(trial, raw, data) if kind == "nn" else _gbm_member(trial, raw, data)
    except MODEL_ERRORS as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HpoError(
            f"{study_name}: cannot load the model of trial {trial.number}: {first}"
        ) from None


def _nn_member(trial: optuna.trial.FrozenTrial, raw: bytes, data: Dataset) -> NNMember:
    return NNMember.from_state_dict(
        trial.number,
        MLPSpec.from_dict(trial.user_attrs[stored.MLP_SPEC]),
        read_weights(raw, trial.user_attrs.get(stored.ARTIFACT_FORMAT)),
        task=data.task,
        n_features=data.n_features,
        n_classes=len(data.classes or []),
        y_mean=data.y_mean,
        y_std=data.y_std,
        embedding_sizes=data.embedding_sizes,
    )


def _gbm_member(trial: optuna.trial.FrozenTrial, raw: bytes, data: Dataset) -> GBMMember:
    return GBMMember.from_bytes(trial.number, raw, task=data.task)


def read_weights(raw: bytes, artifact_format: str | None) -> dict[str, torch.Tensor]:
    """A trial's MLP weights: safetensors, or a torch file of a study made before them."""
    if artifact_format == "safetensors":
        return safetensors.torch.load(raw)
    # weights_only: a tensor dict, never arbitrary pickled objects.
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def build_ensemble(
    name: str,
    studies: Mapping[Kind, optuna.Study],
    data: Dataset,
    config: EnsembleConfig,
    artifacts: optuna.artifacts.FileSystemArtifactStore,
    metric: MetricName | None = None,
) -> EnsembleReport:
    """Load each family's best ``<kind>_members`` trials, weight them both ways, score.

    ``metric`` (the spec's; the task's default if None) is what greedy selection optimizes
    and the leaderboard ranks.

    Raises:
        HpoError: no finished trial in any study, or a saved model is missing.
    """
    chosen = {
        kind: best_trials(study, getattr(config, f"{kind}_members"))
        for kind, study in studies.items()
        if getattr(config, f"{kind}_members")
    }
    trials = [t for ts in chosen.values() for t in ts]
    if not trials:
        raise HpoError(
            f"{name}: no finished trials to build an ensemble from "
            "(none has run yet, or every one was pruned or failed)"
        )
    for kind, ts in chosen.items():
        line = underfilled_note(kind, studies[kind], len(ts), getattr(config, f"{kind}_members"))
        if line:
            note(line)
    members: list[EnsembleMember] = [
        load_member(kind, t, studies[kind].study_name, artifacts, data)
        for kind, ts in chosen.items()
        for t in ts
    ]
    metric = metric or default_metric(data.task)
    val, val_y = validation_predictions(members, data)
    test = [m.predict(data.view(m.kind, "test")) for m in members]
    weights: dict[Method, np.ndarray] = {
        "average": average_weights(len(members)),
        "greedy": greedy_weights(
            val, selection_key(data.task, metric, val_y), config.greedy_rounds
        )[0],
    }
    leaderboard = _leaderboard(members, val, val_y, test, weights, data, config.method, metric)
    leaderboard = leaderboard.model_copy(
        update={"left_out": {s.study_name: outside_current_space(s) for s in studies.values()}}
    )
    return EnsembleReport(
        name=name,
        members=tuple(members),
        trials=tuple(trials),
        weights=weights,
        method=config.method,
        leaderboard=leaderboard,
    )


def validation_predictions(
    members: list[EnsembleMember], data: Dataset
) -> tuple[list[np.ndarray], np.ndarray]:
    """What the weights are fitted on and the leaderboard's ``val`` columns score: each
    member's prediction of the validation split, or with folds its out-of-fold prediction
    of every non-test row; and the true labels of those rows."""
    if data.pool is None:
        return [m.predict(data.view(m.kind, "val")) for m in members], data.val.y
    val = []
    for m in members:
        if not isinstance(m, BaggedMember) or len(m.oof) != len(data.pool.y):
            raise HpoError(
                f"{m.kind}#{m.trial} has no out-of-fold predictions of this data's "
                f"{len(data.pool.y)} non-test rows"
            )
        val.append(m.oof)
    return val, data.pool.y


def underfilled_note(kind: Kind, study: optuna.Study, got: int, asked: int) -> str | None:
    """One line when the ensemble holds fewer ``kind`` members than the spec asks, and why,
    e.g. ``ensemble: 1 of 3 GBM members (1 of the study's trials completed, 7 pruned)``."""
    if got >= asked:
        return None
    states = Counter(t.state for t in study.get_trials(deepcopy=False))
    complete = states[TrialState.COMPLETE]
    why = [f"{complete} of the study's trials completed"]
    if complete > got:
        why.append(f"{complete - got} outside the current search space")
    why += [
        f"{states[state]} {label}"
        for state, label in ((TrialState.PRUNED, "pruned"), (TrialState.FAIL, "failed"))
        if states[state]
    ]
    return f"ensemble: {got} of {asked} {kind.upper()} members ({', '.join(why)})"


def _leaderboard(
    members: list[EnsembleMember],
    val: list[np.ndarray],
    val_y: np.ndarray,
    test: list[np.ndarray],
    weights: dict[Method, np.ndarray],
    data: Dataset,
    method: Method,
    metric: MetricName,
) -> Leaderboard:
    """Members ranked by the validation metric, then both ensembles, and the no-skill model."""
    task, names = data.task, recorded_metrics(data.task, metric)

    def row(
        name: str, kind: str, trial: int | None, weight: float | None, v: Any, t: Any
    ) -> LeaderboardRow:
        return LeaderboardRow(
            name=name,
            kind=kind,
            trial=trial,
            weight=weight,
            val_loss=validation_loss(task, v, val_y),
            val_metric=score(metric, v, val_y),
            test_metric=score(metric, t, data.test.y),
            **scores(names, "val", v, val_y),
            **scores(names, "test", t, data.test.y),
        )

    rows = [
        row(f"{m.kind}#{m.trial}", m.kind, m.trial, float(weights[method][i]), val[i], test[i])
        for i, m in enumerate(members)
    ]
    sign = -1.0 if HIGHER_IS_BETTER[metric] else 1.0
    rows.sort(key=lambda r: sign * r.val_metric if np.isfinite(r.val_metric) else np.inf)
    for m in METHODS:
        w = weights[m]
        rows.append(
            row(
                Leaderboard.ensemble_name(m),
                "ensemble",
                None,
                None,
                combine(val, w),
                combine(test, w),
            )
        )
    # The class frequencies (or mean) of the rows the members trained on: with folds, all.
    fit_y = data.train.y if data.pool is None else data.pool.y
    no_skill = constant_prediction(task, fit_y, len(val_y), len(data.classes or []))
    return Leaderboard(
        method=method,
        metric=metric,
        higher_is_better=HIGHER_IS_BETTER[metric],
        loss=loss_name(task),
        baseline=NoSkill(
            name=no_skill_name(task),
            val_loss=validation_loss(task, no_skill, val_y),
            val_metric=score(metric, no_skill, val_y),
        ),
        rows=rows,
    )


def make_ensemble(
    spec: StudySpec,
    studies: Mapping[Kind, optuna.Study],
    data: Dataset,
    artifacts: optuna.artifacts.FileSystemArtifactStore,
    *,
    config: EnsembleConfig | None = None,
    require_useful: bool = True,
) -> EnsembleReport:
    """Build the ensemble of a spec's studies and store its leaderboard: ``hpo run``,
    ``hpo ensemble`` and ``hpo export`` all come through here.

    Args:
        config: the spec's ensemble settings with overrides (default: the spec's).
        require_useful: refuse studies without values and an ensemble no better than
            the no-skill model (:mod:`hpo.ensemble.sanity`); the leaderboard is stored either way.
    """
    if require_useful:
        check_studies_have_values(spec.name, list(studies.values()))
    report = build_ensemble(
        spec.name, studies, data, config or spec.ensemble, artifacts, metric=spec.metric
    )
    store_leaderboard(dict(studies), report.leaderboard)
    if require_useful:
        check_useful(spec.name, report.leaderboard)
    return report


def ensemble_stored(
    found: StoredStudy,
    artifacts: optuna.artifacts.FileSystemArtifactStore,
    *,
    require_useful: bool = True,
    **overrides: Any,
) -> tuple[StoredStudy, EnsembleReport]:
    """The ensemble of a study read back from storage, with command-line ``overrides`` of
    its spec's ensemble settings (``None`` keeps the spec's), built and stored.

    Raises:
        HpoError: a bad override, data that changed, or (``require_useful``) no model
            worth using.
    """
    spec = found.spec
    check_overrides(spec, **{k: v for k, v in overrides.items() if k != "method"})
    config = ensemble_config(spec, **overrides)
    data, studies = found.data, found.studies
    report = make_ensemble(
        spec, studies, data, artifacts, config=config, require_useful=require_useful
    )
    return found, report


def ensemble_config(spec: StudySpec, **overrides: Any) -> EnsembleConfig:
    """The spec's ensemble settings with command-line overrides (``None`` keeps the spec's)."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    try:
        return EnsembleConfig.model_validate(spec.ensemble.model_dump() | changes)
    except ValidationError as e:
        raise HpoError(str(e.errors()[0]["msg"]).removeprefix("Value error, ")) from None
