"""The contract with storage: what hpo writes into an Optuna study and how it reads it back.

Every user attr key, every study name and the ensemble leaderboard's shape are defined
here once; writers (the studies, the ensemble) and readers (``status``, ``best``,
``ensemble``, ``export``, ``report``) both use these names.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import optuna
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from hpo.errors import HpoError
from hpo.models.metrics import (
    CLASSIFICATION_METRICS,
    HIGHER_IS_BETTER,
    REGRESSION_METRICS,
    default_metric,
)
from hpo.spec import GBMSpace, NNSpace, StudySpec
from hpo.storage.backend import ARTIFACT_ID as ARTIFACT_ID  # the trial's model file
from hpo.storage.backend import load_study, trial_state_counts

if TYPE_CHECKING:
    from hpo.data.dataset import Dataset

Kind = Literal["nn", "gbm"]
KINDS: tuple[Kind, ...] = ("nn", "gbm")  # the model families, in the order a run tunes them
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)

# Study user attrs.
SPEC = "spec"  # the spec of the latest run (JSON)
CREATED_SPEC = "created_spec"  # the spec the study was made from
KIND = "kind"  # "nn" or "gbm": which search space of the spec the study searches
DATASET = "dataset"  # where the run found the data (absolute)
TASK = "task"
SPEC_HASH = "spec_hash"
N_FEATURES = "n_features"
CLASSES = "classes"
SPLIT_SIZES = "split_sizes"
LEADERBOARD = "ensemble"  # the ensemble leaderboard, on the first family's study
# Trial user attrs.
ARTIFACT_FORMAT = "artifact_format"  # "safetensors"; absent: a torch .pt of older studies
MLP_SPEC = "mlp_spec"
LAYERS = "layers"  # a hand-built NN baseline's explicit layers
BASELINE = "baseline"
ARCHITECTURE = "architecture"
WORKER = "worker"
DEVICE = "device"
PRUNED_REASON = "pruned_reason"
EPOCHS_RUN = "epochs_run"
TRAIN_SECONDS = "train_seconds"
LEARNING_RATES = "learning_rates"  # NN with a plateau schedule: the rate of each epoch
ROUNDS_USED = "n_estimators_used"  # GBM: boosting rounds kept (up to the best one)
# data.validation {kfold: K} (hpo.studies.folds): K, the fold models' artifact ids in fold
# order (artifact_id is fold 0's), and the out-of-fold predictions (float32 .npy).
FOLDS = "folds"
FOLD_ARTIFACT_IDS = "fold_artifact_ids"
OOF_ARTIFACT_ID = "oof_artifact_id"
# Every metric a trial may record (hpo.models.metrics.recorded_metrics), val then test.
METRIC_KEYS = tuple(
    f"{part}_{name}"
    for name in CLASSIFICATION_METRICS + REGRESSION_METRICS
    for part in ("val", "test")
)


def study_name(spec_name: str, kind: Kind) -> str:
    """``digits`` and ``nn`` -> ``digits-nn``; also archives (``digits@20260101-120000``)."""
    return f"{spec_name}-{kind}"


def archive_name(spec_name: str, stamp: str, kind: Kind) -> str:
    """Where ``--fresh`` keeps an earlier study: ``<name>@<UTC time>-<kind>``."""
    return study_name(f"{spec_name}@{stamp}", kind)


def split_name(name: str) -> tuple[str, Kind | None]:
    """``digits-nn`` -> (``digits``, ``nn``); a name without a kind suffix -> (name, None)."""
    for kind in KINDS:
        if name.endswith(f"-{kind}"):
            return name.removesuffix(f"-{kind}"), kind
    return name, None


def study_kind(study: optuna.Study) -> Kind:
    """The family a study belongs to: its ``kind`` attr, else its name's suffix."""
    kind = study.user_attrs.get(KIND)
    if kind in KINDS:
        return kind
    return split_name(study.study_name)[1] or "nn"


@dataclass(frozen=True)
class TrialCounts:
    """A study's trials as progress shows them: finished = complete + pruned."""

    complete: int = 0
    pruned: int = 0
    running: int = 0
    best: float | None = None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def count_trials(storage: optuna.storages.BaseStorage, name: str) -> TrialCounts:
    """The one count of a study's trials (zeros before it exists): targets, bars, workers."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        return TrialCounts()
    states = trial_state_counts(storage, study_id)
    try:
        best = storage.get_best_trial(study_id).value
    except ValueError:
        best = None
    return TrialCounts(
        complete=states[TrialState.COMPLETE],
        pruned=states[TrialState.PRUNED],
        running=states[TrialState.RUNNING],
        best=best,
    )


def validated_spec(raw: Any) -> StudySpec | None:
    """A stored spec read with today's defaults (so a key added since is no change)."""
    if not isinstance(raw, dict):
        return None
    try:
        return StudySpec.model_validate(raw)
    except ValidationError:
        return None


def space_of(spec: StudySpec, kind: Kind) -> NNSpace | GBMSpace:
    return spec.nn.search_space if kind == "nn" else spec.gbm.search_space


def current_space(study: optuna.Study) -> NNSpace | GBMSpace | None:
    """The search space of the study's latest run, from its attrs (None if not recorded)."""
    spec = validated_spec(study.user_attrs.get(SPEC))
    return None if spec is None else space_of(spec, study_kind(study))


def outside_current_space(study: optuna.Study) -> int:
    """How many completed trials lie outside the study's current search space."""
    space = current_space(study)
    if space is None:
        return 0
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sum(not space.contains_params(t.params) for t in done)


def best_trials(study: optuna.Study, top: int = 5) -> list[optuna.trial.FrozenTrial]:
    """The best completed trials inside the study's current search space (a narrowed space
    leaves out trials the spec no longer asks for)."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    space = current_space(study)
    if space is not None:
        done = [t for t in done if space.contains_params(t.params)]
    return sorted(done, key=lambda t: t.value if t.value is not None else math.inf)[:top]


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state name, in Optuna's order, states with no trial left out."""
    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    return {state.name: counts[state.name] for state in TrialState if counts.get(state.name)}


def trial_summary(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A JSON-ready description of one finished trial (exact numbers)."""
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "value": trial.value,
        "params": trial.params,
        "metrics": {k: attrs[k] for k in METRIC_KEYS if k in attrs},
        "architecture": attrs.get(ARCHITECTURE),
        "epochs_run": attrs.get(EPOCHS_RUN),
        "train_seconds": attrs.get(TRAIN_SECONDS),
        "device": attrs.get(DEVICE),
        "artifact_id": attrs.get(ARTIFACT_ID),
    }


def best_summary(study: optuna.Study) -> dict[str, Any]:
    """:func:`trial_summary` of the study's best trial, with the objective's name.

    Raises:
        HpoError: the study has no completed trial yet.
    """
    try:
        best = study.best_trial
    except ValueError:
        raise HpoError(f"{study.study_name}: no completed trial yet") from None
    return trial_summary(best) | {"objective": objective_name(study)}


def objective_name(study: optuna.Study) -> str:
    """The objective's name (``val_log_loss``, ``val_rmse``); studies made before it was
    named say ``val loss``."""
    return (study.metric_names or ["val loss"])[0]


def study_metric(study: optuna.Study) -> str:
    """The spec's ``metric:`` of a study, or its task's default."""
    attrs = study.user_attrs
    return attrs.get(SPEC, {}).get("metric") or default_metric(attrs.get(TASK, "multiclass"))


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class LeaderboardRow(_Model):
    """One model on the leaderboard; further ``val_*``/``test_*`` scores ride as extras."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str
    kind: str  # "nn", "gbm" or "ensemble"
    trial: int | None
    weight: float | None
    val_loss: float
    val_metric: float
    test_metric: float

    def score(self, key: str) -> float | None:
        """A recorded score by key (``val_roc_auc``), or None."""
        value = (self.model_extra or {}).get(key, getattr(self, key, None))
        return None if value is None else float(value)


class NoSkill(_Model):
    name: str
    val_loss: float
    val_metric: float


class Leaderboard(_Model):
    """Members ranked by the validation metric, then both ensembles, and the no-skill model.

    Stored as JSON in the first family's study (user attr :data:`LEADERBOARD`) and in a
    bundle's manifest; :meth:`to_json` and :meth:`from_json` are each other's inverse.
    """

    method: str  # the weighting chosen: the spec's, or ``--method``
    metric: str
    higher_is_better: bool
    loss: str = "loss"
    baseline: NoSkill | None = None
    rows: list[LeaderboardRow]
    left_out: dict[str, int] = {}  # per study: completed trials outside the current space

    @model_validator(mode="before")
    @classmethod
    def _direction(cls, raw: Any) -> Any:
        """Leaderboards stored before the direction was recorded: the metric's own."""
        if isinstance(raw, dict) and "higher_is_better" not in raw:
            higher = {str(k): v for k, v in HIGHER_IS_BETTER.items()}.get(str(raw.get("metric")))
            higher = True if higher is None else higher
            return {**raw, "higher_is_better": higher}
        return raw

    @staticmethod
    def ensemble_name(method: str) -> str:
        return f"ensemble ({method})"

    def ensemble_row(self, method: str | None = None) -> LeaderboardRow:
        """The row of the ``method`` ensemble (the exported one by default)."""
        wanted = self.ensemble_name(method or self.method)
        return next(r for r in self.rows if r.name == wanted)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="python")

    @classmethod
    def from_json(cls, raw: Any) -> Leaderboard | None:
        """The stored leaderboard, or None when absent or unreadable (older hpo)."""
        try:
            return cls.model_validate(raw)
        except ValidationError:
            return None


@dataclass(frozen=True)
class StoredStudy:
    """A tuned spec read back from storage: its studies, its spec and (on demand) its data.

    ``selected`` holds what the user named: every family's study for ``digits``, just one
    for ``digits-gbm``; ``studies`` always holds every family's study that exists.
    """

    name: str
    studies: dict[Kind, optuna.Study]
    selected: tuple[optuna.Study, ...]

    @classmethod
    def open(cls, name: str, storage: optuna.storages.BaseStorage) -> StoredStudy:
        """``digits``, ``digits-nn`` or an archive such as ``digits@20260101-120000-gbm``.

        Raises:
            HpoError: no such study, with the spec names that exist.
        """
        names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
        base, kind = split_name(name)
        if kind is None or name not in names:
            base, kind = name, None
        present = {k: study_name(base, k) for k in KINDS if study_name(base, k) in names}
        if not present and name in names:  # a study that hpo did not make: itself alone
            return cls(name, {}, (load_study(name, storage),))
        if not present:
            specs = sorted({split_name(n)[0] for n in names})
            known = ", ".join(specs) if specs else "none"
            close = difflib.get_close_matches(base, specs, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise HpoError(f"no study named {name!r} (studies here: {known}{hint})")
        studies = {k: load_study(n, storage) for k, n in present.items()}
        selected = tuple(studies.values()) if kind is None else (studies[kind],)
        return cls(base, studies, selected)

    @property
    def nn_study(self) -> optuna.Study:
        if "nn" not in self.studies:
            raise HpoError(f"{self.name}: no NN study ({study_name(self.name, 'nn')}) here")
        return self.studies["nn"]

    @property
    def gbm_study(self) -> optuna.Study | None:
        return self.studies.get("gbm")

    @property
    def spec(self) -> StudySpec:
        """The spec of the latest run, as stored (the data path is where the run found it).

        Raises:
            HpoError: the stored spec is missing or unreadable by this hpo.
        """
        study = self.nn_study
        spec = validated_spec(study.user_attrs.get(SPEC))
        if spec is None:
            raise HpoError(
                f"{study.study_name}: its stored spec is missing or unreadable by this hpo"
            )
        if spec.data.source != "sklearn":
            # The run stored where it found the data (absolute), not the spec-relative path.
            path = study.user_attrs[DATASET]
            spec = spec.model_copy(update={"data": spec.data.model_copy(update={"path": path})})
        return spec

    @functools.cached_property
    def data(self) -> Dataset:
        """The data, loaded (once) from where the run found it, split as the run split it.

        Raises:
            HpoError: the data is gone or no longer splits to the stored sizes.
        """
        from hpo.data.dataset import load_dataset

        spec, attrs = self.spec, self.nn_study.user_attrs
        data = load_dataset(spec.data, spec.task, Path("/"), spec.seed)
        sizes = [len(data.train.y), len(data.val.y), len(data.test.y)]
        if sizes != attrs.get(SPLIT_SIZES) or data.n_features != attrs.get(N_FEATURES):
            raise HpoError(
                f"{self.name}: the data at {data.source} no longer matches the study "
                f"(splits {sizes} and {data.n_features} features; "
                f"the study has {attrs.get(SPLIT_SIZES)} and {attrs.get(N_FEATURES)})"
            )
        return data

    @property
    def leaderboard(self) -> Leaderboard | None:
        study = self.studies.get(KINDS[0])
        return None if study is None else Leaderboard.from_json(study.user_attrs.get(LEADERBOARD))


def store_leaderboard(studies: dict[Kind, optuna.Study], leaderboard: Leaderboard) -> None:
    """Keep the leaderboard on the first family's study, where readers look for it."""
    studies[KINDS[0]].set_user_attr(LEADERBOARD, leaderboard.to_json())
