"""Real studies on real SQLite storage, through the library."""

from __future__ import annotations

import safetensors.torch
import torch
from optuna.artifacts import download_artifact
from optuna.trial import TrialState

from hpo.data.dataset import load_dataset
from hpo.models.mlp import MLPSpec, build_mlp
from hpo.spec import NNSpace, load_spec
from hpo.storage.backend import open_artifacts, open_storage
from hpo.studies.nn import NN
from hpo.studies.study import run_study


def _run(write_spec, changes, n_trials):
    spec, base_dir = load_spec(write_spec(changes))
    data = load_dataset(spec.data, spec.task, base_dir, spec.seed)
    study = run_study(NN, spec, data, open_storage(), open_artifacts(), n_trials=n_trials)
    return spec, data, study


def test_pruning_prunes(write_spec) -> None:
    # Learning rates from hopeless to good: the median pruner stops the hopeless ones early.
    changes = {
        "pruner": "median",
        "sampler": "random",
        "nn": {
            "epochs": 8,
            "patience": 8,
            "search_space": {
                "learning_rate": {"low": 1e-6, "high": 1e-1, "log": True},
                "optimizer": "sgd",
            },
        },
    }
    _, _, study = _run(write_spec, changes, 14)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "no trial was pruned"
    for trial in pruned:
        assert trial.user_attrs["pruned_reason"].startswith("pruned by median at epoch")
        assert len(trial.intermediate_values) == trial.user_attrs["epochs_run"] < 8


def test_nan_blowup_is_pruned_with_reason_and_the_study_goes_on(write_spec) -> None:
    space = {
        "optimizer": "sgd",
        "normalization": "none",
        "learning_rate": {"low": 1e-3, "high": 1e6, "log": True},
    }
    # The first trial diverges at once; the second is sane and must still run and complete.
    baselines = [{"learning_rate": 1e6}, {"learning_rate": 1e-2}]
    changes = {"pruner": "none", "nn": {"search_space": space, "baselines": baselines}}
    _, _, study = _run(write_spec, changes, 3)
    first, second = study.trials[:2]
    assert first.state == TrialState.PRUNED
    assert first.user_attrs["pruned_reason"].startswith("non-finite loss at epoch ")
    assert second.state == TrialState.COMPLETE
    assert len(study.trials) == 3


def test_finished_trials_carry_every_dimension_metrics_and_weights(write_spec) -> None:
    _spec, data, study = _run(write_spec, {"pruner": "none"}, 3)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    for trial in complete:
        assert set(trial.params) == set(NNSpace.model_fields)
        for key in (
            "val_loss",
            "val_accuracy",
            "test_accuracy",
            "epochs_run",
            "train_seconds",
            "device",
        ):
            assert key in trial.user_attrs
        path = f"weights-{trial.number}.safetensors"
        download_artifact(
            artifact_store=open_artifacts(),
            file_path=path,
            artifact_id=trial.user_attrs["artifact_id"],
        )
        mlp = MLPSpec.from_dict(trial.user_attrs["mlp_spec"])
        model = build_mlp(mlp, data.n_features, data.n_outputs)
        model.load_state_dict(safetensors.torch.load_file(path))
        model.eval()
        with torch.no_grad():
            x = torch.as_tensor(data.val.x)
            accuracy = (model(x).argmax(1).numpy() == data.val.y).mean()
        # The stored weights reproduce the stored metric.
        assert abs(accuracy - trial.user_attrs["val_accuracy"]) < 1e-6


def test_hand_built_baseline_runs_first_with_its_own_layers(write_spec) -> None:
    layers = [
        {
            "width": 48,
            "activation": "elu",
            "initializer": "he_normal",
            "normalization": "batchnorm_after",
        },
        {"width": 24, "activation": "selu", "initializer": "lecun_normal"},
    ]
    changes = {"nn": {"baselines": [{"layers": layers, "optimizer": "nadam", "batch_size": 64}]}}
    _, _, study = _run(write_spec, changes, 2)
    first = study.trials[0]
    assert first.user_attrs["baseline"] is True
    assert first.params["optimizer"] == "nadam" and first.params["depth"] == 2
    assert (
        first.user_attrs["architecture"]
        == "48 elu he_normal batchnorm_after | 24 selu lecun_normal"
    )
    # Enqueued once: a rerun does not enqueue it again.
    _, _, study = _run(write_spec, changes, 3)
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1


def test_training_dimensions_are_searched_and_recorded(write_spec) -> None:
    space = {
        "optimizer": ["adam", "adamw"],
        "beta2": {"low": 0.9, "high": 0.999},
        "lr_schedule": ["cosine", "flat_cosine", "plateau"],
        "label_smoothing": {"low": 0.0, "high": 0.2},
    }
    baseline = {"optimizer": "adamw", "beta2": 0.95, "lr_schedule": "flat_cosine"}
    changes = {"pruner": "none", "nn": {"search_space": space, "baselines": [baseline]}}
    _, _, study = _run(write_spec, changes, 3)
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        mlp = MLPSpec.from_dict(trial.user_attrs["mlp_spec"])
        assert (mlp.optimizer, mlp.beta2, mlp.lr_schedule, mlp.label_smoothing) == (
            trial.params["optimizer"],
            trial.params["beta2"],
            trial.params["lr_schedule"],
            trial.params["label_smoothing"],
        )
    first = study.trials[0].params
    assert (first["optimizer"], first["beta2"], first["lr_schedule"]) == (
        "adamw",
        0.95,
        "flat_cosine",
    )
