"""RealMLP's and TabM's ingredients (numeric_embedding, feature_scale, heads): each changes
the network it names, k heads train on the mean of k losses and predict the mean of k
predictions, and their bundles and ONNX graphs predict as the study did."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY_SPEC
from helpers import raw_test_split
from sklearn.metrics import log_loss
from torch import nn
from typer.testing import CliRunner

import hpo
from hpo.cli import app
from hpo.data.dataset import load_dataset
from hpo.ensemble.selection import build_ensemble
from hpo.models.embeddings import FeatureScale, PeriodicEmbedding
from hpo.models.members import state_shapes
from hpo.models.mlp import EmbeddingMLP, MLPSpec, build_mlp
from hpo.models.tabm import TabMMini
from hpo.models.train import (
    calibrated_validation_loss,
    loss_function,
    mean_of_head_losses,
    mean_of_heads,
    predict_raw,
    to_prediction,
    train_mlp,
)
from hpo.spec import DataSpec, NNSpace
from hpo.storage.backend import open_artifacts, open_storage
from hpo.storage.stored import StoredStudy

# A trial's params as studies stored them before these dimensions existed.
OLD_PARAMS: dict[str, Any] = {
    "depth": 2,
    "width": 16,
    "activation": "relu",
    "initializer": "he_normal",
    "normalization": "batchnorm_after",
    "dropout": 0.1,
    "l2": 1e-5,
    "learning_rate": 3e-3,
    "optimizer": "adam",
    "batch_size": 64,
}


def spec(**changes: Any) -> MLPSpec:
    return MLPSpec.from_params(OLD_PARAMS | changes)


def built(s: MLPSpec, n_inputs: int = 6, n_outputs: int = 3, sizes: tuple[int, ...] = ()):
    torch.manual_seed(0)
    return build_mlp(s, n_inputs, n_outputs, sizes)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataSpec(source="sklearn", name="digits"), "multiclass", Path("."), 0)


# --- the network each setting builds ---------------------------------------------------


def test_defaults_build_todays_network_with_todays_keys_and_weights() -> None:
    old = spec()
    assert (old.numeric_embedding, old.feature_scale, old.heads) == ("none", False, 1)
    explicit = spec(numeric_embedding="none", feature_scale=False, heads=1, n_frequencies=40)
    plain, same = built(old), built(explicit)
    assert isinstance(plain, nn.Sequential)
    # Linear, ReLU, BatchNorm, Dropout per hidden layer, then the output layer: the keys a
    # bundle written before these dimensions stores.
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    want = [f"{i}.{p}" for i in (0, 2, 4, 6, 8) for p in (bn if i in (2, 6) else bn[:2])]
    assert list(plain.state_dict()) == want
    for key, value in plain.state_dict().items():
        assert torch.equal(value, same.state_dict()[key]), key
    with_codes = built(old, sizes=(5, 7))
    assert isinstance(with_codes, EmbeddingMLP)
    assert [k for k in with_codes.state_dict() if not k.startswith("mlp.")] == [
        "embeddings.0.weight",
        "embeddings.1.weight",
    ]


@pytest.mark.parametrize(
    ("changes", "layer", "keys"),
    [
        (
            {"numeric_embedding": "periodic"},
            PeriodicEmbedding,
            {"periodic.frequencies", "periodic.phases", "periodic.weight", "periodic.bias"},
        ),
        ({"feature_scale": True}, FeatureScale, {"scale.scale"}),
        ({"heads": 3}, TabMMini, {"adapter", "head_weight", "head_bias"}),
    ],
)
def test_each_setting_adds_its_layer(changes: dict, layer: type, keys: set[str]) -> None:
    model = built(spec(**changes))
    assert any(isinstance(m, layer) for m in model.modules())
    assert not any(isinstance(m, layer) for m in built(spec()).modules())
    assert keys <= set(model.state_dict())
    # The shapes a bundle check compares, without building on a real device.
    shapes = state_shapes(spec(**changes), 6, 3)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes


def test_all_settings_together_with_category_codes() -> None:
    s = spec(
        numeric_embedding="periodic", n_frequencies=8, periodic_width=2, feature_scale=True, heads=4
    )
    model = built(s, n_inputs=6, sizes=(5, 7))
    x = torch.rand(10, 6)
    x[:, 4:] = torch.randint(0, 5, (10, 2)).float()
    assert model(x).shape == (10, 4, 3)
    state = model.state_dict()
    # 4 dense columns, each [x, 2 learned values], then two 8-wide category vectors.
    assert state["scale.scale"].shape == (4 * 3 + 2 * 8,)
    assert state["mlp.adapter"].shape == (4, 28)


def test_feature_scale_starts_at_one_and_is_trained(digits) -> None:
    s = spec(feature_scale=True, depth=1, width=32)
    model = built(s, 64, 10)
    assert torch.equal(model.scale.scale.detach(), torch.ones(64))
    trained = train_mlp(s, digits, epochs=2, patience=2, device="cpu").model
    assert not torch.equal(trained.scale.scale.detach(), torch.ones(64))


# --- the periodic embedding -----------------------------------------------------------


def test_periodic_embedding_shape_keeps_the_raw_value_and_draws_frequencies_from_sigma() -> None:
    torch.manual_seed(0)
    layer = PeriodicEmbedding(n_columns=200, n_frequencies=16, sigma=0.3, width=3)
    x = torch.randn(7, 200)
    out = layer(x)
    assert out.shape == (7, 200 * 4)
    assert torch.equal(out.view(7, 200, 4)[..., 0], x)  # the "densenet" raw column
    assert layer.frequencies.std().item() == pytest.approx(0.3, rel=0.05)
    assert float(layer.phases.detach().abs().max()) <= np.pi


def test_periodic_frequencies_are_learned(digits) -> None:
    s = spec(numeric_embedding="periodic", depth=1, width=32, learning_rate=1e-2)
    before = built(s, 64, 10).periodic.frequencies.detach().clone()
    layer = built(s, 64, 10).periodic
    layer(torch.randn(5, 64)).sum().backward()
    assert layer.frequencies.grad is not None and layer.frequencies.grad.abs().sum() > 0
    torch.manual_seed(0)  # train_mlp seeds itself: the same start as ``before``
    trained = train_mlp(s, digits, epochs=2, patience=2, seed=0, device="cpu").model
    after = trained.periodic.frequencies.detach()
    assert before.shape == after.shape == (64, 16)
    assert not torch.allclose(before, after)


# --- k heads ----------------------------------------------------------------------------


def test_k_heads_give_k_different_outputs() -> None:
    model = built(spec(heads=3, dropout=0.0)).eval()
    out = model(torch.randn(20, 6))
    assert out.shape == (20, 3, 3)
    for i in range(3):
        for j in range(i):
            assert not torch.allclose(out[:, i], out[:, j])


@pytest.mark.parametrize("task", ["multiclass", "binary", "regression"])
def test_the_prediction_is_the_mean_of_the_heads_predictions(task: str) -> None:
    n_out = 3 if task == "multiclass" else 1
    out = torch.randn(50, 4, n_out, dtype=torch.float64)
    pred = to_prediction(task, out, 10.0, 2.0)
    each = [to_prediction(task, out[:, i], 10.0, 2.0) for i in range(4)]
    np.testing.assert_allclose(pred, np.mean(each, axis=0), rtol=1e-12)
    # mean_of_heads (what the validation loss sees) is one head's output with that prediction.
    np.testing.assert_allclose(to_prediction(task, mean_of_heads(task, out), 10.0, 2.0), pred)


@pytest.mark.parametrize("task", ["multiclass", "binary", "regression"])
def test_training_loss_is_the_mean_of_the_heads_losses(task: str) -> None:
    n_out = 3 if task == "multiclass" else 1
    out = torch.randn(30, 4, n_out)
    y = torch.randint(0, 3, (30,)) if task == "multiclass" else torch.randint(0, 2, (30,)).float()
    base = loss_function(task)
    each = torch.stack([base(out[:, i], y) for i in range(4)])
    assert mean_of_head_losses(base)(out, y).item() == pytest.approx(each.mean().item(), rel=1e-6)
    # Not the loss of the mean prediction (TabM: heads trained on their own).
    assert mean_of_head_losses(base)(out, y).item() != pytest.approx(
        base(mean_of_heads(task, out), y).item(), rel=1e-3
    )
    one = out[:, 0]
    assert mean_of_head_losses(base)(one, y).item() == base(one, y).item()


def test_a_k_head_trial_is_scored_on_the_mean_of_its_heads(digits) -> None:
    s = spec(heads=3, depth=1, width=32)
    result = train_mlp(s, digits, epochs=3, patience=3, device="cpu")
    out = predict_raw(result.model, torch.as_tensor(digits.val.x))
    assert out.shape == (len(digits.val.y), 3, 10)
    mean = to_prediction("multiclass", out, 0.0, 1.0)
    assert result.metrics["val_accuracy"] == pytest.approx(np.mean(mean.argmax(1) == digits.val.y))
    labels = list(range(10))
    calibrated = calibrated_validation_loss("multiclass", mean, digits.val.y)
    assert result.val_loss == pytest.approx(calibrated, rel=1e-4)
    heads = [to_prediction("multiclass", out[:, i], 0.0, 1.0) for i in range(3)]
    mean_of_losses = np.mean([log_loss(digits.val.y, p, labels=labels) for p in heads])
    assert result.val_loss < mean_of_losses  # the ensemble, not its members, is scored


# --- the spec ---------------------------------------------------------------------------


def test_spec_keys_pin_or_range_and_old_params_load_as_today() -> None:
    space = NNSpace.model_validate(
        {"numeric_embedding": "periodic", "feature_scale": True, "heads": 4, "n_frequencies": 8}
    )
    assert space.numeric_embedding == ["periodic"] and space.feature_scale == [True]
    assert (space.heads.low, space.heads.high) == (4, 4)
    assert (space.n_frequencies.low, space.n_frequencies.high) == (8, 8)
    default = NNSpace()
    assert default.numeric_embedding == ["none"] and default.feature_scale == [False]
    assert (default.heads.low, default.heads.high) == (1, 1)
    with pytest.raises(ValueError, match="frequency_scale must be > 0"):
        NNSpace.model_validate({"frequency_scale": 0})
    s = spec(heads=2, numeric_embedding="periodic", feature_scale=True)
    assert MLPSpec.from_dict(s.to_dict()) == s
    assert "periodic 16f scaled k=2" in s.describe()
    for bad in ({"heads": 0}, {"numeric_embedding": "fourier"}, {"n_frequencies": -1}):
        with pytest.raises(ValueError):
            spec(**bad)


# --- studies, bundles and ONNX ------------------------------------------------------------

VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "periodic": ("digits", "multiclass", {"numeric_embedding": "periodic", "n_frequencies": 8}),
    "scale": ("breast_cancer", "binary", {"feature_scale": True}),
    "heads": ("digits", "multiclass", {"heads": 3}),
    "heads-binary": ("breast_cancer", "binary", {"heads": 3}),
    "heads-regression": ("diabetes", "regression", {"heads": 3, "feature_scale": True}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bundle_and_onnx_predict_as_the_study(variant: str, tmp_path: Path) -> None:
    dataset, task, pinned = VARIANTS[variant]
    spec_ = copy.deepcopy(TINY_SPEC) | {"name": variant, "task": task}
    spec_["data"] = {"source": "sklearn", "name": dataset}
    spec_["nn"] = spec_["nn"] | {"trials": 2, "epochs": 3}
    spec_["nn"]["search_space"] = spec_["nn"]["search_space"] | pinned
    spec_["gbm"] = spec_["gbm"] | {"trials": 0}
    spec_["ensemble"] = {"method": "average", "nn_members": 2, "gbm_members": 0}
    if task == "regression":
        spec_["metric"] = "rmse"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_))
    storage = ["--storage", f"sqlite:///{tmp_path / 'hpo.db'}", "--artifacts", str(tmp_path / "a")]
    runner = CliRunner()
    ran = runner.invoke(app, ["run", "spec.yaml", "-q", *storage])
    assert ran.exit_code == 0, ran.output
    args = ["export", variant, "--out", "bundle", "--format", "onnx", *storage]
    exported = runner.invoke(app, args)
    assert exported.exit_code == 0, exported.output

    stored = StoredStudy.open(variant, open_storage(f"sqlite:///{tmp_path / 'hpo.db'}"))
    for trial in stored.nn_study.trials:  # every new dimension recorded in every trial
        assert {"numeric_embedding", "n_frequencies", "frequency_scale"} <= set(trial.params)
        assert {"periodic_width", "feature_scale", "heads"} <= set(trial.params)
        for key, value in pinned.items():
            assert trial.params[key] == value
    report = build_ensemble(
        variant,
        stored.studies,
        stored.data,
        stored.spec.ensemble,
        open_artifacts(str(tmp_path / "a")),
    )
    in_study = report.ensemble().predict(stored.data.test.x)
    x_test = raw_test_split(dataset, stored.data)
    native = hpo.load_ensemble(tmp_path / "bundle", engine="native")
    graph = hpo.load_ensemble(tmp_path / "bundle", engine="onnx")
    for model in (native, graph):
        got = model.predict(x_test) if task == "regression" else model.predict_proba(x_test)
        assert got.shape == in_study.shape
        if task == "regression":
            np.testing.assert_allclose(got, in_study, rtol=1e-6, atol=1e-4)
        else:
            np.testing.assert_allclose(got, in_study, rtol=0, atol=1e-5)


def test_all_settings_on_a_table_with_embedded_categories_export_to_onnx(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 300
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "city": rng.choice([f"c{i}" for i in range(30)], n),  # embedded (> max_onehot)
            "color": rng.choice(["red", "green"], n),  # one-hot
        }
    )
    even = df["city"].isin([f"c{i}" for i in range(0, 30, 2)])
    df["label"] = (df["a"] + even > 0.5).astype(int)
    df.to_csv(tmp_path / "t.csv", index=False)
    all_on = {"numeric_embedding": "periodic", "feature_scale": True, "heads": 3}
    spec_ = copy.deepcopy(TINY_SPEC) | {"name": "t", "task": "binary"}
    spec_["data"] = {"source": "csv", "path": "t.csv", "target": "label"}
    spec_["nn"] = spec_["nn"] | {"trials": 1, "epochs": 8}
    spec_["nn"]["search_space"] = spec_["nn"]["search_space"] | all_on
    spec_["gbm"] = spec_["gbm"] | {"trials": 0}
    spec_["ensemble"] = {"method": "average", "nn_members": 1, "gbm_members": 0}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_))
    storage = ["--storage", f"sqlite:///{tmp_path / 'hpo.db'}", "--artifacts", str(tmp_path / "a")]
    runner = CliRunner()
    ran = runner.invoke(app, ["run", "spec.yaml", "-q", *storage])
    assert ran.exit_code == 0, ran.output
    args = ["export", "t", "--out", "bundle", "--format", "onnx", *storage]
    exported = runner.invoke(app, args)
    assert exported.exit_code == 0, exported.output
    native = hpo.load_ensemble(tmp_path / "bundle", engine="native")
    member = native.members_[0]  # type: ignore[attr-defined]
    assert isinstance(member.model, EmbeddingMLP) and isinstance(member.model.mlp, TabMMini)
    x = df.drop(columns="label")
    want = native.predict_proba(x)  # type: ignore[attr-defined]
    got = hpo.load_ensemble(tmp_path / "bundle", engine="onnx").predict_proba(x)  # type: ignore[attr-defined]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_evaluation_chunks_shrink_with_the_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    import hpo.models.train as train

    model = built(spec(heads=4, dropout=0.0))
    rows: list[int] = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: rows.append(len(x)) or forward(x))
    monkeypatch.setattr(train, "EVAL_CHUNK", 40)
    assert predict_raw(model, torch.randn(25, 6)).shape == (25, 4, 3)
    assert rows == [10, 10, 5]  # 40 rows of hidden activations per pass: 10 inputs x 4 heads
