"""The GBM study: an Optuna objective that boosts one XGBoost model per trial, and its run loop.

Same splits as the NN study; on a table XGBoost reads its own view of the data (missing
values as NaN, categories natively), otherwise the NN study's matrix. Early stopping
watches the validation loss, and so does the pruner, through
``optuna_integration.XGBoostPruningCallback``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
import xgboost as xgb
from optuna_integration import XGBoostPruningCallback

from hpo.data import Dataset
from hpo.locks import study_lock
from hpo.members import GBMMember
from hpo.metrics import recorded_metrics, scores
from hpo.nn_study import (
    describe_study,
    make_pruner,
    make_sampler,
    name_objective,
    trials_started,
)
from hpo.parallel import INTERRUPTS, create_or_load, optimize_to_target
from hpo.search_space import suggest
from hpo.spec import GBMSpace, StudySpec, Task
from hpo.storage import save_trial_results
from hpo.threads import choose_threads
from hpo.train import pick_device

# The validation metric that early stopping and pruning watch, per task.
EVAL_METRIC: dict[Task, str] = {"multiclass": "mlogloss", "binary": "logloss", "regression": "rmse"}
OBJECTIVE: dict[Task, str] = {
    "multiclass": "multi:softprob",
    "binary": "binary:logistic",
    "regression": "reg:squarederror",
}
# XGBoost's own defaults (learning rate a little lower), tried first where the space allows.
DEFAULT_PARAMS: dict[str, float] = {
    "max_depth": 6,
    "learning_rate": 0.1,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "min_child_weight": 1.0,
    "reg_lambda": 1.0,
    "reg_alpha": 0.0,
    "gamma": 0.0,
}


def xgb_device() -> str:
    """CUDA when torch sees a GPU and this XGBoost build can use it (``xgboost-cpu`` cannot)."""
    if pick_device() == "cuda" and xgb.build_info().get("USE_CUDA"):
        return "cuda"
    return "cpu"


def xgb_params(
    params: dict[str, Any],
    data: Dataset,
    *,
    seed: int,
    device: str,
    n_jobs: int | None = None,
    max_bin: int = 256,
) -> dict[str, Any]:
    """Booster parameters for one trial's suggestions (``n_estimators`` is the round budget)."""
    booster: dict[str, Any] = {
        "objective": OBJECTIVE[data.task],
        "eval_metric": EVAL_METRIC[data.task],
        "tree_method": "hist",
        "max_bin": max_bin,
        "device": device,
        "seed": seed,
        "verbosity": 0,
        **{k: v for k, v in params.items() if k != "n_estimators"},
    }
    if data.task == "multiclass":
        booster["num_class"] = len(data.classes or [])
    if n_jobs is not None:
        # Unset, XGBoost takes every core OpenMP offers (OMP_NUM_THREADS, like torch).
        booster["nthread"] = n_jobs
    return booster


def baseline_params(space: GBMSpace) -> dict[str, Any]:
    """XGBoost's defaults, clipped into the search space, with the whole round budget."""
    params: dict[str, Any] = {"n_estimators": space.n_estimators.high}
    for name, value in DEFAULT_PARAMS.items():
        dim = getattr(space, name)
        params[name] = type(dim.low)(min(max(value, dim.low), dim.high))
    return params


class _InterruptCheck(xgb.callback.TrainingCallback):
    """A Ctrl-C that Python dropped in a finalizer ends the trial at the next round."""

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        INTERRUPTS.check()
        return False


class GBMObjective:
    """One trial: suggest, boost with early stopping and pruning, keep the model and metrics."""

    def __init__(
        self,
        spec: StudySpec,
        data: Dataset,
        artifacts: optuna.artifacts.FileSystemArtifactStore,
        *,
        device: str | None = None,
    ) -> None:
        self.spec, self.data, self.artifacts = spec, data, artifacts
        self.device = device or xgb_device()
        # Binned once per process and reused by every trial (hist needs quantiles only once).
        # A table's own view keeps NaN and carries category codes as native categoricals.
        types = data.gbm_feature_types
        self.dtrain = xgb.QuantileDMatrix(
            data.view("gbm", "train"),
            data.train.y,
            max_bin=spec.gbm.max_bin,
            feature_types=types,
            enable_categorical=types is not None,
        )
        self.dval = xgb.DMatrix(
            data.view("gbm", "val"),
            data.val.y,
            feature_types=types,
            enable_categorical=types is not None,
        )

    def __call__(self, trial: optuna.Trial) -> float:
        params = suggest(trial, self.spec.gbm.search_space)
        # Unpinned, the same choice as the MLP's: spinning OpenMP threads hurt XGBoost too.
        threads = self.spec.gbm.n_jobs or choose_threads(
            len(self.data.train.y), self.data.n_features
        )
        booster_params = xgb_params(
            params,
            self.data,
            seed=self.spec.seed,
            device=self.device,
            n_jobs=threads,
            max_bin=self.spec.gbm.max_bin,
        )
        trial.set_user_attr("device", self.device)
        observed = f"validation-{EVAL_METRIC[self.data.task]}"
        start = time.perf_counter()
        try:
            booster = xgb.train(
                booster_params,
                self.dtrain,
                num_boost_round=params["n_estimators"],
                evals=[(self.dval, "validation")],
                early_stopping_rounds=self.spec.gbm.early_stopping_rounds,
                callbacks=[_InterruptCheck(), XGBoostPruningCallback(trial, observed)],
                verbose_eval=False,
            )
        except optuna.TrialPruned as e:
            trial.set_user_attr("pruned_reason", f"{e} (by {self.spec.pruner})")
            raise
        seconds = time.perf_counter() - start
        rounds_run = booster.num_boosted_rounds()
        best_iteration = int(booster.best_iteration)
        val_loss = float(booster.best_score)
        # Keep only the trees up to the best round: the saved model then predicts as scored.
        model = GBMMember(trial.number, booster[: best_iteration + 1], self.data.task)
        self._record(trial, model, val_loss, params, rounds_run, best_iteration, seconds)
        return val_loss

    def _record(
        self,
        trial: optuna.Trial,
        model: GBMMember,
        val_loss: float,
        params: dict[str, Any],
        rounds_run: int,
        best_iteration: int,
        seconds: float,
    ) -> None:
        names = recorded_metrics(self.data.task, self.spec.metric)
        attrs: dict[str, Any] = {"val_loss": val_loss}
        for part in ("val", "test"):
            split = getattr(self.data, part)
            attrs |= scores(names, part, model.predict(self.data.view("gbm", part)), split.y)
        attrs |= {
            "n_estimators_used": best_iteration + 1,
            "best_iteration": best_iteration,
            "rounds_run": rounds_run,
            "train_seconds": round(seconds, 3),
            "architecture": f"xgboost {best_iteration + 1} rounds, depth {params['max_depth']}",
        }
        save_trial_results(
            trial,
            self.artifacts,
            filename=f"gbm-trial-{trial.number}.ubj",
            model_bytes=bytes(model.to_bytes()),
            attrs=attrs,
        )


def open_gbm_study(
    spec: StudySpec, storage: optuna.storages.BaseStorage, data: Dataset
) -> optuna.Study:
    """Create or load ``<name>-gbm``, describe it in study attrs, enqueue the defaults once."""
    space = spec.gbm.search_space
    max_rounds = space.n_estimators.high
    # Boosting needs some rounds before losses compare: low learning rates start slow.
    min_rounds = max(1, min(max_rounds, max_rounds // 27, spec.gbm.early_stopping_rounds))
    # Under the study lock, like the NN study, so workers enqueue the defaults once.
    with study_lock(storage, spec.gbm_study_name) as exclusive:
        study, created = create_or_load(
            storage,
            spec.gbm_study_name,
            sampler=make_sampler(spec),
            pruner=make_pruner(spec, max_rounds, min_steps=min_rounds, warmup_steps=min_rounds),
        )
        study.sampler = make_sampler(spec, trials_started(study))  # continue, never replay
        describe_study(study, spec, data, "gbm")
        name_objective(study, spec.task)
        if exclusive or created:
            study.enqueue_trial(
                baseline_params(space), user_attrs={"baseline": True}, skip_if_exists=True
            )
    return study


def run_gbm_study(
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
    any other worker on it (see :func:`hpo.parallel.optimize_to_target`)."""
    study = open_gbm_study(spec, storage, data)
    optimize_to_target(
        study,
        GBMObjective(spec, data, artifacts),
        storage,
        target=n_trials,
        timeout=timeout,
        callbacks=[on_trial] if on_trial is not None else (),
        worker=worker,
        log=log,
    )
    return study
