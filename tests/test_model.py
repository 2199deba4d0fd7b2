"""Each search dimension really changes the model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hpo.models.mlp import GAINS, MLPSpec, build_mlp, init_linear
from hpo.models.train import make_optimizer
from hpo.spec import ACTIVATIONS, NORMALIZATIONS

BASE = {
    "depth": 2,
    "width": 32,
    "activation": "relu",
    "initializer": "default",
    "normalization": "none",
    "dropout": 0.0,
    "l2": 0.0,
    "learning_rate": 1e-3,
    "optimizer": "adam",
    "batch_size": 32,
}


def spec(**changes: object) -> MLPSpec:
    return MLPSpec.from_params({**BASE, **changes})


def layer_types(model: nn.Sequential) -> list[str]:
    return [type(m).__name__ for m in model]


@pytest.mark.parametrize(
    ("normalization", "hidden_layer"),
    [
        ("none", ["Linear", "ReLU"]),
        ("batchnorm_before", ["Linear", "BatchNorm1d", "ReLU"]),
        ("batchnorm_after", ["Linear", "ReLU", "BatchNorm1d"]),
        ("layernorm_before", ["Linear", "LayerNorm", "ReLU"]),
        ("layernorm_after", ["Linear", "ReLU", "LayerNorm"]),
    ],
)
def test_normalization_placement_sets_layer_order(
    normalization: str, hidden_layer: list[str]
) -> None:
    model = build_mlp(spec(normalization=normalization), 8, 3)
    assert layer_types(model) == hidden_layer * 2 + ["Linear"]
    # A norm right after Linear makes its bias redundant, so it is dropped.
    assert (model[0].bias is None) == normalization.endswith("_before")


def test_every_normalization_is_covered() -> None:
    assert len(NORMALIZATIONS) == 5


def test_dropout_and_depth_and_width() -> None:
    model = build_mlp(spec(depth=3, width=17, dropout=0.25), 8, 3)
    assert layer_types(model) == ["Linear", "ReLU", "Dropout"] * 3 + ["Linear"]
    assert all(m.p == 0.25 for m in model if isinstance(m, nn.Dropout))
    assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [17, 17, 17, 3]


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_modules(activation: str) -> None:
    expected = {
        "relu": nn.ReLU,
        "leaky_relu": nn.LeakyReLU,
        "prelu": nn.PReLU,
        "elu": nn.ELU,
        "selu": nn.SELU,
        "gelu": nn.GELU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
    }[activation]
    model = build_mlp(spec(activation=activation), 8, 3)
    assert sum(isinstance(m, expected) for m in model) == 2


FAN_IN, FAN_OUT = 400, 300


@pytest.mark.parametrize(
    ("initializer", "activation", "expected_std"),
    [
        ("he_normal", "relu", math.sqrt(2 / FAN_IN)),
        ("he_uniform", "relu", math.sqrt(2 / FAN_IN)),
        ("he_normal", "tanh", 5 / 3 / math.sqrt(FAN_IN)),
        ("glorot_uniform", "sigmoid", math.sqrt(2 / (FAN_IN + FAN_OUT))),
        ("glorot_normal", "tanh", 5 / 3 * math.sqrt(2 / (FAN_IN + FAN_OUT))),
        ("lecun_normal", "selu", math.sqrt(1 / FAN_IN)),
        ("default", "relu", math.sqrt(1 / (3 * FAN_IN))),  # PyTorch: U(±1/sqrt(fan_in))
    ],
)
def test_initializer_weight_statistics(
    initializer: str, activation: str, expected_std: float
) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(FAN_IN, FAN_OUT)
    init_linear(linear, initializer, activation)
    w = linear.weight.detach()
    assert abs(float(w.mean())) < 0.05 * expected_std
    assert float(w.std()) == pytest.approx(expected_std, rel=0.02)
    if initializer.endswith("uniform"):
        assert float(w.abs().max()) <= math.sqrt(3) * expected_std * 1.0001
    if initializer != "default":
        assert float(linear.bias.detach().abs().max()) == 0.0


def test_gains_follow_the_activation() -> None:
    assert GAINS["relu"] == pytest.approx(math.sqrt(2)) and GAINS["tanh"] == pytest.approx(5 / 3)
    assert GAINS["selu"] == GAINS["sigmoid"] == 1.0


def test_l2_is_coupled_weight_decay_on_weight_matrices_only() -> None:
    model = build_mlp(spec(l2=1e-3, activation="prelu", normalization="batchnorm_after"), 8, 3)
    groups = make_optimizer(spec(l2=1e-3), model).param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == pytest.approx(2e-3) and groups[1]["weight_decay"] == 0
    for m in model:
        if isinstance(m, nn.Linear):
            assert id(m.weight) in decayed
        for p in m.parameters(recurse=False):
            if p.ndim < 2:
                assert id(p) not in decayed  # biases, BatchNorm and PReLU parameters


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", torch.optim.SGD),
        ("momentum", torch.optim.SGD),
        ("rmsprop", torch.optim.RMSprop),
        ("adam", torch.optim.Adam),
        ("nadam", torch.optim.NAdam),
        ("adagrad", torch.optim.Adagrad),
        ("adamw", torch.optim.AdamW),
    ],
)
def test_optimizers(name: str, cls: type) -> None:
    optimizer = make_optimizer(spec(optimizer=name), build_mlp(spec(), 8, 3))
    assert type(optimizer) is cls
    assert optimizer.param_groups[0].get("momentum", 0) == (0.9 if name == "momentum" else 0)


def test_spec_round_trips_through_json_dict() -> None:
    s = MLPSpec.from_params(
        BASE,
        layers=[
            {
                "width": 256,
                "activation": "elu",
                "initializer": "he_normal",
                "normalization": "batchnorm_after",
            },
            {
                "width": 128,
                "activation": "selu",
                "initializer": "lecun_normal",
                "normalization": "none",
            },
        ],
    )
    assert MLPSpec.from_dict(s.to_dict()) == s
    assert s.describe() == "256 elu he_normal batchnorm_after | 128 selu lecun_normal"
