"""The NN family: an Optuna objective that trains one MLP per trial (one per fold with
``data.validation: {kfold: K}``, see :mod:`hpo.studies.folds`), and its baselines."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import safetensors.torch

from hpo.data.dataset import Dataset
from hpo.models.mlp import MLPSpec
from hpo.models.threads import configure_threads
from hpo.models.train import (
    NonFiniteLoss,
    TrainResult,
    calibrated_validation_loss,
    pick_device,
    predict_raw,
    to_prediction,
    train_mlp,
)
from hpo.spec import StudySpec
from hpo.storage import stored
from hpo.storage.backend import defer_user_attrs, save_trial_results, write_trial
from hpo.studies.defaults import (
    BASELINE_NAME,
    REALMLP_TD,
    fit_to_space,
    is_tabular,
    realmlp_td_params,
)
from hpo.studies.folds import fold_scores, out_of_fold, save_fold_results
from hpo.studies.parallel import INTERRUPTS
from hpo.studies.reporting import Curve
from hpo.studies.search_space import suggest
from hpo.studies.study import Baseline, Family, PrunerSteps, TrialObjective


class NNObjective(TrialObjective):
    """One trial: suggest, build the MLP spec, train with pruning, keep weights and metrics."""

    default_device = staticmethod(pick_device)

    def __call__(self, trial: optuna.Trial) -> float:
        params = suggest(trial, self.spec.nn.search_space)
        configure_threads(len(self.data.train.y), self.data.n_features)
        # An enqueued hand-built baseline carries explicit layers in its user attrs.
        mlp = MLPSpec.from_params(params, trial.user_attrs.get(stored.LAYERS))
        defer_user_attrs(trial, {stored.ARCHITECTURE: mlp.describe()})  # with its next write
        curve = Curve(trial)  # pruned every epoch, written in few transactions
        if self.data.n_folds:
            return self._run_folds(curve, mlp)
        result = self._train(curve, mlp, self.data, prune=True)
        self._record(curve, mlp, result)
        return result.val_loss

    def _train(
        self, curve: Curve, mlp: MLPSpec, data: Dataset, *, prune: bool, fold: int = 0
    ) -> TrainResult:
        """Train on ``data``; with ``prune``, report each epoch and let the pruner stop it."""

        def report(epoch: int, val_loss: float) -> None:
            INTERRUPTS.check()  # a Ctrl-C that Python dropped in a finalizer ends the trial here
            if not prune:
                return
            # After the last epoch there is nothing left to save: the trial completes.
            if curve.report(val_loss, epoch) and epoch + 1 < self.spec.nn.epochs:
                self._record_stop(
                    curve, epoch + 1, f"pruned by {self.spec.pruner} at epoch {epoch}"
                )
                raise optuna.TrialPruned(f"val_loss {val_loss:.4g} at epoch {epoch}")

        try:
            return train_mlp(
                mlp,
                data,
                epochs=self.spec.nn.epochs,
                patience=self.spec.nn.patience,
                seed=self.spec.seed + fold,
                device=self.device,
                on_epoch=report,
                metric=self.spec.metric,
            )
        except NonFiniteLoss as e:
            where = f" of fold {fold}" if self.data.n_folds else ""
            self._record_stop(curve, e.epoch + 1, f"{e}{where}")
            raise optuna.TrialPruned(str(e)) from None

    def _run_folds(self, curve: Curve, mlp: MLPSpec) -> float:
        """K models, fold 0 first and alone on the pruner's curve; the objective is the
        out-of-fold loss over every non-test row (see :mod:`hpo.studies.folds`)."""
        results: list[TrainResult] = []
        val_preds: list[np.ndarray] = []
        test_preds: list[np.ndarray] = []
        for k in range(self.data.n_folds):
            view = self.data.fold(k)
            result = self._train(curve, mlp, view, prune=k == 0, fold=k)
            t = view.tensors(result.device)
            for part, preds in (("val", val_preds), ("test", test_preds)):
                out = predict_raw(result.model, t[f"{part}_x"])
                preds.append(to_prediction(view.task, out, view.y_mean, view.y_std))
            results.append(result)
        oof = out_of_fold(self.data, val_preds)
        objective, metrics = fold_scores(
            self.data, oof, test_preds, self.spec.metric, calibrated_validation_loss
        )
        first = results[0]
        attrs: dict[str, Any] = {
            "val_loss": objective,
            **metrics,
            stored.EPOCHS_RUN: first.epochs_run,
            "best_epoch": first.best_epoch,
            "fold_epochs_run": [r.epochs_run for r in results],
            "fold_best_epochs": [r.best_epoch for r in results],
            **(
                {"fold_learning_rates": [r.learning_rates[: r.best_epoch + 1] for r in results]}
                if mlp.lr_schedule == "plateau"
                else {}
            ),
            stored.TRAIN_SECONDS: round(sum(r.seconds for r in results), 3),
            stored.DEVICE: first.device,
            stored.MLP_SPEC: mlp.to_dict(),
            stored.ARTIFACT_FORMAT: "safetensors",
        }
        number = curve.trial.number
        files = [
            (f"nn-trial-{number}-fold{k}.safetensors", _weights(r)) for k, r in enumerate(results)
        ]
        save_fold_results(curve.trial, self.artifacts, files, oof, attrs, curve=curve.take())
        return objective

    def _record_stop(self, curve: Curve, epochs_run: int, reason: str) -> None:
        """Why and when the trial stopped early, with its curve: one transaction."""
        attrs = {
            stored.PRUNED_REASON: reason,
            stored.EPOCHS_RUN: epochs_run,
            stored.DEVICE: self.device,
        }
        write_trial(curve.trial, attrs, curve.take(), last=True)

    def _record(self, curve: Curve, mlp: MLPSpec, result: TrainResult) -> None:
        """The trained model's file, metrics and curve (one transaction besides the file)."""
        trial = curve.trial
        attrs: dict[str, Any] = {
            "val_loss": result.val_loss,
            **result.metrics,
            stored.EPOCHS_RUN: result.epochs_run,
            "best_epoch": result.best_epoch,
            stored.TRAIN_SECONDS: round(result.seconds, 3),
            stored.DEVICE: result.device,
            stored.MLP_SPEC: mlp.to_dict(),
            # A refit replays a plateau schedule's rates: it has no validation loss to react to.
            **(
                {stored.LEARNING_RATES: result.learning_rates[: result.best_epoch + 1]}
                if mlp.lr_schedule == "plateau"
                else {}
            ),
            stored.ARTIFACT_FORMAT: "safetensors",
        }
        name = f"nn-trial-{trial.number}.safetensors"
        save_trial_results(trial, self.artifacts, name, _weights(result), attrs, curve=curve.take())


def _weights(result: TrainResult) -> bytes:
    """safetensors, as in a bundle: loading it runs no pickle (old studies hold .pt files)."""
    state = result.model.state_dict()
    return safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()})


class NNFamily(Family):
    """PyTorch MLPs: one trained per trial, pruned by epoch."""

    kind = "nn"

    objective_type = NNObjective

    def pruner_steps(self, spec: StudySpec) -> PrunerSteps:
        return PrunerSteps(max_steps=spec.nn.epochs)

    def baselines(self, spec: StudySpec) -> list[Baseline]:
        named = []
        if spec.nn.realmlp_baseline and is_tabular(spec.data):
            params = fit_to_space(realmlp_td_params(spec.task), spec.nn.search_space)
            named.append(Baseline(params, {BASELINE_NAME: REALMLP_TD}))
        return named + [
            Baseline(
                b.params(),
                {stored.LAYERS: [layer.model_dump() for layer in b.layers]} if b.layers else {},
            )
            for b in spec.nn.baselines
        ]


NN = NNFamily()
