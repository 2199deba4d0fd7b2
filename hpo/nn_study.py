"""The NN study: an Optuna objective that trains one MLP per trial, and the run loop."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
import optuna_dashboard
import torch
import yaml
from optuna.trial import TrialState

from hpo.data import Dataset
from hpo.locks import study_lock
from hpo.metrics import loss_name
from hpo.model import MLPSpec
from hpo.parallel import DONE_STATES, INTERRUPTS, create_or_load, optimize_to_target
from hpo.resume import Kind, spec_attrs
from hpo.search_space import suggest
from hpo.spec import StudySpec, Task, spec_hash
from hpo.storage import save_trial_results
from hpo.threads import configure_threads
from hpo.train import NonFiniteLoss, TrainResult, pick_device, train_mlp


def make_sampler(spec: StudySpec, started: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler for a study in which ``started`` trials have already begun."""
    seed = sampler_seed(spec.seed, started)
    match spec.sampler:
        case "tpe":
            # constant_liar keeps parallel workers from sampling the same point.
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
        case "random":
            return optuna.samplers.RandomSampler(seed=seed)
        case "gp":
            return optuna.samplers.GPSampler(seed=seed)
        case "qmc":
            return optuna.samplers.QMCSampler(seed=seed)
    raise ValueError(spec.sampler)


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


def trials_started(study: optuna.Study) -> int:
    """Trials that have begun (any state but WAITING): each drew its params when it began."""
    return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def make_pruner(
    spec: StudySpec, max_epochs: int, *, min_steps: int = 1, warmup_steps: int = 2
) -> optuna.pruners.BasePruner:
    """The spec's pruner over ``max_epochs`` steps (boosting rounds for the GBM study)."""
    match spec.pruner:
        case "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=min_steps, max_resource=max_epochs)
        case "median":
            return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup_steps)
        case "percentile":
            return optuna.pruners.PercentilePruner(
                25.0, n_startup_trials=5, n_warmup_steps=warmup_steps
            )
        case "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner()
        case "none":
            return optuna.pruners.NopPruner()
    raise ValueError(spec.pruner)


def count_done(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=DONE_STATES))


class NNObjective:
    """One trial: suggest, build the MLP spec, train with pruning, keep weights and metrics."""

    def __init__(
        self,
        spec: StudySpec,
        data: Dataset,
        artifacts: optuna.artifacts.FileSystemArtifactStore,
        *,
        device: str | None = None,
    ) -> None:
        self.spec, self.data, self.artifacts = spec, data, artifacts
        self.device = device or pick_device()

    def __call__(self, trial: optuna.Trial) -> float:
        params = suggest(trial, self.spec.nn.search_space)
        configure_threads(len(self.data.train.y), self.data.n_features)
        # An enqueued hand-built baseline carries explicit layers in its user attrs.
        mlp = MLPSpec.from_params(params, trial.user_attrs.get("layers"))
        trial.set_user_attr("architecture", mlp.describe())

        def report(epoch: int, val_loss: float) -> None:
            INTERRUPTS.check()  # a Ctrl-C that Python dropped in a finalizer ends the trial here
            trial.report(val_loss, epoch)
            if trial.should_prune():
                self._record_stop(
                    trial, epoch + 1, f"pruned by {self.spec.pruner} at epoch {epoch}"
                )
                raise optuna.TrialPruned(f"val_loss {val_loss:.4g} at epoch {epoch}")

        try:
            result = train_mlp(
                mlp,
                self.data,
                epochs=self.spec.nn.epochs,
                patience=self.spec.nn.patience,
                seed=self.spec.seed,
                device=self.device,
                on_epoch=report,
                metric=self.spec.metric,
            )
        except NonFiniteLoss as e:
            self._record_stop(trial, e.epoch + 1, str(e))
            raise optuna.TrialPruned(str(e)) from None
        self._record(trial, mlp, result)
        return result.val_loss

    def _record_stop(self, trial: optuna.Trial, epochs_run: int, reason: str) -> None:
        trial.set_user_attr("pruned_reason", reason)
        trial.set_user_attr("epochs_run", epochs_run)
        trial.set_user_attr("device", self.device)

    def _record(self, trial: optuna.Trial, mlp: MLPSpec, result: TrainResult) -> None:
        attrs: dict[str, Any] = {
            "val_loss": result.val_loss,
            **result.metrics,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "train_seconds": round(result.seconds, 3),
            "device": result.device,
            "mlp_spec": mlp.to_dict(),
        }
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, buffer)
        save_trial_results(
            trial,
            self.artifacts,
            filename=f"nn-trial-{trial.number}.pt",
            model_bytes=buffer.getvalue(),
            attrs=attrs,
        )


def open_nn_study(
    spec: StudySpec, storage: optuna.storages.BaseStorage, data: Dataset
) -> optuna.Study:
    """Create or load ``<name>-nn``, describe it in study attrs, enqueue baselines once.

    Under the study lock, so that workers starting together enqueue each baseline once.
    """
    with study_lock(storage, spec.nn_study_name) as exclusive:
        study, created = create_or_load(
            storage,
            spec.nn_study_name,
            sampler=make_sampler(spec),
            pruner=make_pruner(spec, spec.nn.epochs),
        )
        study.sampler = make_sampler(spec, trials_started(study))  # continue, never replay
        describe_study(study, spec, data, "nn")
        name_objective(study, spec.task)
        if not (exclusive or created):
            return study  # no lock to make skip_if_exists safe: the creator enqueued them
        for baseline in spec.nn.baselines:
            user_attrs: dict[str, Any] = {"baseline": True}
            if baseline.layers:
                user_attrs["layers"] = [layer.model_dump() for layer in baseline.layers]
            study.enqueue_trial(baseline.params(), user_attrs=user_attrs, skip_if_exists=True)
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
        "dataset": data.source,
        "task": spec.task,
        "spec_hash": spec_hash(spec),
        "n_features": data.n_features,
        "classes": data.classes,
        "split_sizes": [len(data.train.y), len(data.val.y), len(data.test.y)],
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


def run_nn_study(
    spec: StudySpec,
    data: Dataset,
    storage: optuna.storages.BaseStorage,
    artifacts: optuna.artifacts.FileSystemArtifactStore,
    *,
    n_trials: int,
    timeout: float | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    worker: bool = False,
    log: Callable[[str], None] = lambda message: None,
) -> optuna.Study:
    """Top the study up to ``n_trials`` finished (complete or pruned) trials, together with
    any other process working on it (``worker``: this is one of several, see
    :func:`hpo.parallel.optimize_to_target`)."""
    study = open_nn_study(spec, storage, data)
    # Exact with any number of workers on the study (MaxTrialsCallback would overshoot).
    optimize_to_target(
        study,
        NNObjective(spec, data, artifacts),
        storage,
        target=n_trials,
        timeout=timeout,
        callbacks=[on_trial] if on_trial is not None else (),
        worker=worker,
        log=log,
    )
    return study
