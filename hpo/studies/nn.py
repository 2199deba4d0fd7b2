"""The NN family: an Optuna objective that trains one MLP per trial, and its baselines."""

from __future__ import annotations

from typing import Any

import optuna
import safetensors.torch

from hpo.models.mlp import MLPSpec
from hpo.models.threads import configure_threads
from hpo.models.train import NonFiniteLoss, TrainResult, pick_device, train_mlp
from hpo.spec import StudySpec
from hpo.storage import stored
from hpo.storage.backend import save_trial_results, write_trial
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
        trial.set_user_attr(stored.ARCHITECTURE, mlp.describe())

        curve = Curve(trial)  # pruned every epoch, written in few transactions

        def report(epoch: int, val_loss: float) -> None:
            INTERRUPTS.check()  # a Ctrl-C that Python dropped in a finalizer ends the trial here
            if curve.report(val_loss, epoch):
                self._record_stop(
                    curve, epoch + 1, f"pruned by {self.spec.pruner} at epoch {epoch}"
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
            self._record_stop(curve, e.epoch + 1, str(e))
            raise optuna.TrialPruned(str(e)) from None
        self._record(curve, mlp, result)
        return result.val_loss

    def _record_stop(self, curve: Curve, epochs_run: int, reason: str) -> None:
        """Why and when the trial stopped early, with its curve: one transaction."""
        attrs = {
            stored.PRUNED_REASON: reason,
            stored.EPOCHS_RUN: epochs_run,
            stored.DEVICE: self.device,
        }
        write_trial(curve.trial, attrs, curve.take())

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
            stored.ARTIFACT_FORMAT: "safetensors",
        }
        # safetensors, as in a bundle: loading it runs no pickle (old studies hold .pt files).
        weights = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
        name = f"nn-trial-{trial.number}.safetensors"
        model_bytes = safetensors.torch.save(weights)
        save_trial_results(trial, self.artifacts, name, model_bytes, attrs, curve=curve.take())


class NNFamily(Family):
    """PyTorch MLPs: one trained per trial, pruned by epoch."""

    kind = "nn"

    objective_type = NNObjective

    def pruner_steps(self, spec: StudySpec) -> PrunerSteps:
        return PrunerSteps(max_steps=spec.nn.epochs)

    def baselines(self, spec: StudySpec) -> list[Baseline]:
        return [
            Baseline(
                b.params(),
                {stored.LAYERS: [layer.model_dump() for layer in b.layers]} if b.layers else {},
            )
            for b in spec.nn.baselines
        ]


NN = NNFamily()
