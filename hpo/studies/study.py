"""The shape every model family's study shares; a family brings its objective and baselines.

A study is opened (created or loaded) under its lock, described in its attrs, seeded with
the family's baselines once, and run until it holds its target of finished trials
together with any other worker on it. :class:`Family` is what differs: the NN study
(:mod:`hpo.studies.nn`) and the GBM study (:mod:`hpo.studies.gbm`) are one subclass each.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import optuna_dashboard
import yaml
from optuna.trial import TrialState

from hpo.data.dataset import Dataset
from hpo.models.metrics import loss_name
from hpo.spec import StudySpec, Task, spec_hash
from hpo.storage import stored
from hpo.storage.locks import study_lock
from hpo.storage.stored import Kind
from hpo.storage.trial_cache import TrialCache
from hpo.studies.fast_tpe import FastTPESampler
from hpo.studies.parallel import create_or_load, optimize_to_target
from hpo.studies.pruning import LeanHyperbandPruner
from hpo.studies.resume import spec_attrs

Objective = Callable[[optuna.Trial], float]
TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
ArtifactStore = optuna.artifacts.FileSystemArtifactStore


class TrialObjective(ABC):
    """A family's Optuna objective, made once per process: ``__call__`` runs one trial."""

    def __init__(
        self,
        spec: StudySpec,
        data: Dataset,
        artifacts: ArtifactStore,
        *,
        device: str | None = None,
    ) -> None:
        self.spec, self.data, self.artifacts = spec, data, artifacts
        self.device = device or self.default_device()

    @staticmethod
    @abstractmethod
    def default_device() -> str:
        """Where trials train unless told (``cuda`` when there is one)."""

    @abstractmethod
    def __call__(self, trial: optuna.Trial) -> float: ...


@dataclass(frozen=True)
class Baseline:
    """A trial enqueued once when a study is made: fixed params, and user attrs to carry."""

    params: dict[str, Any]
    user_attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PrunerSteps:
    """The steps (epochs, boosting rounds) a family's pruner counts in."""

    max_steps: int
    min_steps: int = 1
    warmup_steps: int = 2


class Family(ABC):
    """One model family: its spec section is ``spec.<kind>`` (``trials``, ``timeout``,
    ``search_space``), its study ``<name>-<kind>``."""

    kind: Kind
    # The Optuna objective of one trial (train, record metrics, save the model), made from
    # (spec, data, artifacts) once per process.
    objective_type: Callable[[StudySpec, Dataset, ArtifactStore], Objective]

    def objective(self, spec: StudySpec, data: Dataset, artifacts: ArtifactStore) -> Objective:
        return self.objective_type(spec, data, artifacts)

    @abstractmethod
    def pruner_steps(self, spec: StudySpec) -> PrunerSteps: ...

    @abstractmethod
    def baselines(self, spec: StudySpec) -> list[Baseline]:
        """Trials to try first, enqueued once when the study is made."""

    def study_name(self, spec: StudySpec) -> str:
        return stored.study_name(spec.name, self.kind)

    def target(self, spec: StudySpec, trials: int | None = None) -> int:
        """Finished trials to reach: ``trials`` (``--trials``) or the spec's."""
        return int(getattr(spec, self.kind).trials) if trials is None else trials

    def timeout(self, spec: StudySpec) -> float | None:
        return getattr(spec, self.kind).timeout


def sampler_seed(seed: int, started: int) -> int:
    """The spec's seed for a new study; for a top-up, one derived from it and ``started``.

    Seeded with the spec's seed again, a top-up would draw the same start-up trials as the
    first run (a random sampler replays its stream; TPE and GP sample at random until they
    have enough trials). Reseeding from fresh entropy would avoid that but make a top-up
    irreproducible. The count of trials started so far differs between any two runs that
    drew a trial, so each such run draws from its own stream, and the same history gives the
    same seed. A new study keeps the plain spec seed: same spec, same first trials.
    """
    if started == 0:
        return seed
    entropy = [seed & 0xFFFF_FFFF_FFFF_FFFF, started]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def make_sampler(spec: StudySpec, started: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler for a study in which ``started`` trials have already begun."""
    seed = sampler_seed(spec.seed, started)
    match spec.sampler:
        case "tpe":
            # Optuna's TPE, faster, drawing the next trial while one trains (ahead).
            # constant_liar keeps parallel workers apart.
            return FastTPESampler(seed=seed, multivariate=True, constant_liar=True, ahead=True)
        case "random":
            return optuna.samplers.RandomSampler(seed=seed)
        case "gp":
            return optuna.samplers.GPSampler(seed=seed)
        case "qmc":
            return optuna.samplers.QMCSampler(seed=seed)
    raise ValueError(spec.sampler)


# Pruning pays only where a trial is worth stopping. Below this many training rows a whole
# trial takes about a second or less (wine and breast_cancer, default spaces: median 0.6 to
# 0.9 s per NN or XGBoost trial on a busy 2-core machine), so stopping it early saves next
# to nothing, while the curve it would be stopped on is the loss of a few dozen validation
# rows: too noisy to rank trials after a few epochs or rounds. On the 344-row penguins
# table Hyperband pruned 7 of 8 XGBoost trials and left the ensemble one boosted member.
# A row count, not a clock, so a rerun prunes alike.
PRUNE_MIN_ROWS = 1000


def prunes(data: Dataset) -> bool:
    """Whether a study on ``data`` uses the spec's pruner; if not, every trial runs to its
    end (its curve is still reported, for the dashboard)."""
    return len(data.train.y) >= PRUNE_MIN_ROWS


def make_pruner(spec: StudySpec, steps: PrunerSteps) -> optuna.pruners.BasePruner:
    """The spec's pruner over ``steps`` (epochs, or boosting rounds)."""
    match spec.pruner:
        case "hyperband":
            # Optuna's Hyperband, asking storage only where it can prune (same decisions).
            return LeanHyperbandPruner(min_resource=steps.min_steps, max_resource=steps.max_steps)
        case "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=5, n_warmup_steps=steps.warmup_steps
            )
        case "percentile":
            return optuna.pruners.PercentilePruner(
                25.0, n_startup_trials=5, n_warmup_steps=steps.warmup_steps
            )
        case "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner()
        case "none":
            return optuna.pruners.NopPruner()
    raise ValueError(spec.pruner)


def trials_started(study: optuna.Study) -> int:
    """Trials that have begun (any state but WAITING): each drew its params when it began."""
    return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def open_study(
    family: Family, spec: StudySpec, storage: optuna.storages.BaseStorage, data: Dataset
) -> optuna.Study:
    """Create or load the family's study, describe it in study attrs, enqueue baselines once.

    Under the study lock, so that workers starting together enqueue each baseline once.
    """
    name = family.study_name(spec)
    with study_lock(storage, name) as exclusive:
        study, created = create_or_load(
            storage,
            name,
            sampler=make_sampler(spec),
            pruner=(
                make_pruner(spec, family.pruner_steps(spec))
                if prunes(data)
                else optuna.pruners.NopPruner()
            ),
        )
        study.sampler = make_sampler(spec, trials_started(study))  # continue, never replay
        describe_study(study, spec, data, family.kind)
        name_objective(study, spec.task)
        if not (exclusive or created):
            return study  # no lock to make skip_if_exists safe: the creator enqueued them
        for baseline in family.baselines(spec):
            user_attrs = {stored.BASELINE: True, **baseline.user_attrs}
            study.enqueue_trial(baseline.params, user_attrs=user_attrs, skip_if_exists=True)
    return study


def name_objective(study: optuna.Study, task: Task) -> None:
    """Name the objective (``val_log_loss`` or ``val_rmse``) for the dashboard and tables."""
    names = [f"val_{loss_name(task)}"]
    if study.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)


def describe_study(study: optuna.Study, spec: StudySpec, data: Dataset, kind: Kind) -> None:
    """Study user attrs and the dashboard note: what a reader of the dashboard or ``hpo status``
    needs to know. The spec the study was made from stays; ``spec`` is the latest run's."""
    attrs = {
        stored.DATASET: data.source,
        stored.TASK: spec.task,
        stored.SPEC_HASH: spec_hash(spec),
        stored.N_FEATURES: data.n_features,
        stored.CLASSES: data.classes,
        stored.SPLIT_SIZES: [len(data.train.y), len(data.val.y), len(data.test.y)],
        **spec_attrs(spec, kind, study.user_attrs),
    }
    for key, value in attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    note = spec_note(spec)
    # Each save bumps the note's version in the study's system attrs: write only on change.
    if optuna_dashboard.get_note(study) != note:
        optuna_dashboard.save_note(study, note)


def spec_note(spec: StudySpec) -> str:
    """The dashboard note of a study: its spec as YAML (Markdown)."""
    # Flow style for leaf ranges and lists reads like the YAML files in studies/.
    text = yaml.safe_dump(
        spec.model_dump(mode="json", exclude_none=True),
        sort_keys=False,
        default_flow_style=None,
        width=100,
    )
    return f"## {spec.name}\n\nStudy spec (hash `{spec_hash(spec)}`):\n\n```yaml\n{text}```\n"


def run_study(
    family: Family,
    spec: StudySpec,
    data: Dataset,
    storage: optuna.storages.BaseStorage,
    artifacts: ArtifactStore,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    on_trial: TrialCallback | None = None,
    worker: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> optuna.Study:
    """Top the family's study up to ``n_trials`` (default: the spec's) finished trials,
    together with any other process working on it (``worker``: this is one of several, see
    :func:`hpo.studies.parallel.optimize_to_target`)."""
    study = open_study(family, spec, storage, data)
    if spec.pruner != "none" and not prunes(data):
        log(
            f"{study.study_name}: no pruning: {len(data.train.y)} training rows (below "
            f"{PRUNE_MIN_ROWS} a trial costs too little to be worth stopping early)"
        )
    # Exact with any number of workers on the study (MaxTrialsCallback would overshoot).
    optimize_to_target(
        study,
        family.objective(spec, data, artifacts),
        storage,
        target=family.target(spec, n_trials),
        timeout=timeout,
        callbacks=[on_trial] if on_trial is not None else (),
        worker=worker,
        log=log,
    )
    if isinstance(study._storage, TrialCache):
        study._storage.expire()  # what follows (the ensemble) reads the study as stored
    return study
