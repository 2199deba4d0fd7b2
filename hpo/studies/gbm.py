"""The GBM family: an Optuna objective that boosts one XGBoost model per trial, and its baseline.

Same splits as the NN study; on a table XGBoost reads its own view of the data (missing
values as NaN, categories natively), otherwise the NN study's matrix. Early stopping
watches the validation loss, and so does the pruner, every round (:class:`_PruningCheck`).
With ``data.validation: {kfold: K}`` a trial boosts one model per fold
(:mod:`hpo.studies.folds`); fold 0's rounds are the pruner's curve.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import optuna
import xgboost as xgb

from hpo.data.dataset import Dataset
from hpo.models.members import GBMMember
from hpo.models.metrics import recorded_metrics, scores
from hpo.models.threads import choose_threads
from hpo.models.train import pick_device
from hpo.spec import GBMSpace, StudySpec, Task
from hpo.storage import stored
from hpo.storage.backend import defer_user_attrs, save_trial_results, write_trial
from hpo.studies.folds import fold_scores, out_of_fold, save_fold_results
from hpo.studies.parallel import INTERRUPTS
from hpo.studies.reporting import Curve
from hpo.studies.search_space import suggest
from hpo.studies.study import ArtifactStore, Baseline, Family, PrunerSteps, TrialObjective

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


class _PruningCheck(xgb.callback.TrainingCallback):
    """``optuna_integration.XGBoostPruningCallback``, reporting through a :class:`Curve`:
    the pruner sees every round, storage gets the rounds in a few writes."""

    def __init__(self, curve: Curve, metric: str) -> None:
        self.curve, self.metric = curve, metric

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        if self.curve.report(evals_log["validation"][self.metric][-1], epoch):
            raise optuna.TrialPruned(f"Trial was pruned at iteration {epoch}.")
        return False


class GBMObjective(TrialObjective):
    """One trial: suggest, boost with early stopping and pruning, keep the model and metrics."""

    default_device = staticmethod(xgb_device)

    def __init__(self, spec: StudySpec, data: Dataset, artifacts: ArtifactStore, **kw: Any):
        super().__init__(spec, data, artifacts, **kw)
        # Binned once per process and reused by every trial (hist needs quantiles only once);
        # with folds, one (train, validation) pair per fold.
        views = [data.fold(k) for k in range(data.n_folds)] or [data]
        self.matrices = [_matrices(view, spec.gbm.max_bin) for view in views]
        self.dtrain, self.dval = self.matrices[0]

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
        defer_user_attrs(trial, {stored.DEVICE: self.device})  # with its next write
        curve = Curve(trial)  # pruned every round, written in few transactions
        if self.data.n_folds:
            return self._run_folds(curve, params, booster_params)
        start = time.perf_counter()
        booster = self._boost(curve, params, booster_params, self.dtrain, self.dval, prune=True)
        seconds = time.perf_counter() - start
        rounds_run = booster.num_boosted_rounds()
        best_iteration = int(booster.best_iteration)
        val_loss = float(booster.best_score)
        # Keep only the trees up to the best round: the saved model then predicts as scored.
        model = GBMMember(trial.number, booster[: best_iteration + 1], self.data.task)
        self._record(curve, model, val_loss, params, rounds_run, best_iteration, seconds)
        return val_loss

    def _boost(
        self,
        curve: Curve,
        params: dict[str, Any],
        booster_params: dict[str, Any],
        dtrain: xgb.DMatrix,
        dval: xgb.DMatrix,
        *,
        prune: bool,
    ) -> xgb.Booster:
        """Boost with early stopping on ``dval``; with ``prune``, each round goes to the pruner."""
        callbacks: list[xgb.callback.TrainingCallback] = [_InterruptCheck()]
        if prune:
            callbacks.append(_PruningCheck(curve, EVAL_METRIC[self.data.task]))
        try:
            return xgb.train(
                booster_params,
                dtrain,
                num_boost_round=params["n_estimators"],
                evals=[(dval, "validation")],
                early_stopping_rounds=self.spec.gbm.early_stopping_rounds,
                callbacks=callbacks,
                verbose_eval=False,
            )
        except optuna.TrialPruned as e:
            reason = f"{e} (by {self.spec.pruner})"
            write_trial(curve.trial, {stored.PRUNED_REASON: reason}, curve.take(), last=True)
            raise

    def _run_folds(
        self, curve: Curve, params: dict[str, Any], booster_params: dict[str, Any]
    ) -> float:
        """K boosters, fold 0 first and alone on the pruner's curve; the objective is the
        out-of-fold loss over every non-test row (see :mod:`hpo.studies.folds`)."""
        start = time.perf_counter()
        number = curve.trial.number
        models: list[GBMMember] = []
        val_preds: list[np.ndarray] = []
        test_preds: list[np.ndarray] = []
        for k, (dtrain, dval) in enumerate(self.matrices):
            fold_params = booster_params | {"seed": self.spec.seed + k}
            booster = self._boost(curve, params, fold_params, dtrain, dval, prune=k == 0)
            model = GBMMember(number, booster[: booster.best_iteration + 1], self.data.task)
            view = self.data.fold(k)
            val_preds.append(model.predict(view.view("gbm", "val")))
            test_preds.append(model.predict(view.view("gbm", "test")))
            models.append(model)
        seconds = time.perf_counter() - start
        oof = out_of_fold(self.data, val_preds)
        objective, metrics = fold_scores(self.data, oof, test_preds, self.spec.metric)
        rounds = [m.booster.num_boosted_rounds() for m in models]
        attrs: dict[str, Any] = {
            "val_loss": objective,
            **metrics,
            stored.ROUNDS_USED: rounds[0],
            "best_iteration": rounds[0] - 1,
            "fold_rounds_used": rounds,
            stored.TRAIN_SECONDS: round(seconds, 3),
            stored.ARCHITECTURE: (
                f"xgboost {len(models)} folds of {min(rounds)}-{max(rounds)} rounds, "
                f"depth {params['max_depth']}"
            ),
        }
        number = curve.trial.number
        files = [(f"gbm-trial-{number}-fold{k}.ubj", m.to_bytes()) for k, m in enumerate(models)]
        save_fold_results(curve.trial, self.artifacts, files, oof, attrs, curve=curve.take())
        return objective

    def _record(
        self,
        curve: Curve,
        model: GBMMember,
        val_loss: float,
        params: dict[str, Any],
        rounds_run: int,
        best_iteration: int,
        seconds: float,
    ) -> None:
        trial = curve.trial
        names = recorded_metrics(self.data.task, self.spec.metric)
        attrs: dict[str, Any] = {"val_loss": val_loss}
        for part in ("val", "test"):
            split = getattr(self.data, part)
            attrs |= scores(names, part, model.predict(self.data.view("gbm", part)), split.y)
        attrs |= {
            stored.ROUNDS_USED: best_iteration + 1,
            "best_iteration": best_iteration,
            "rounds_run": rounds_run,
            stored.TRAIN_SECONDS: round(seconds, 3),
            stored.ARCHITECTURE: (
                f"xgboost {best_iteration + 1} rounds, depth {params['max_depth']}"
            ),
        }
        name = f"gbm-trial-{trial.number}.ubj"
        model_bytes = bytes(model.to_bytes())
        save_trial_results(trial, self.artifacts, name, model_bytes, attrs, curve=curve.take())


def _matrices(data: Dataset, max_bin: int) -> tuple[xgb.DMatrix, xgb.DMatrix]:
    """XGBoost's (training, validation) matrices of ``data``: a table's own view keeps NaN
    and carries category codes as native categoricals."""
    types = data.gbm_feature_types
    dtrain = xgb.QuantileDMatrix(
        data.view("gbm", "train"),
        data.train.y,
        max_bin=max_bin,
        feature_types=types,
        enable_categorical=types is not None,
    )
    dval = xgb.DMatrix(
        data.view("gbm", "val"),
        data.val.y,
        feature_types=types,
        enable_categorical=types is not None,
    )
    return dtrain, dval


class GBMFamily(Family):
    """XGBoost boosters: one per trial, pruned by boosting round."""

    kind = "gbm"

    objective_type = GBMObjective

    def pruner_steps(self, spec: StudySpec) -> PrunerSteps:
        max_rounds = spec.gbm.search_space.n_estimators.high
        # Boosting needs some rounds before losses compare: low learning rates start slow.
        min_rounds = max(1, min(max_rounds, max_rounds // 27, spec.gbm.early_stopping_rounds))
        return PrunerSteps(max_rounds, min_steps=min_rounds, warmup_steps=min_rounds)

    def baselines(self, spec: StudySpec) -> list[Baseline]:
        return [Baseline(baseline_params(spec.gbm.search_space))]


GBM = GBMFamily()
