"""The MLP spec (one trial's frozen choices) and the model built from it.

The builder takes a spec, never a trial, so it is testable without Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from hpo.models.embeddings import FeatureScale, PeriodicEmbedding
from hpo.models.tabm import TabMMini
from hpo.spec import (
    Activation,
    Initializer,
    LRSchedule,
    Normalization,
    NumericEmbedding,
    Optimizer,
)

_LEAKY_SLOPE = 0.01
_PRELU_INIT = 0.25

# Gain for Glorot and He initializers: the factor that keeps the activation's output
# variance equal to its input's (PyTorch's calculate_gain where it has one; ELU and GELU
# behave like ReLU for positive inputs; SELU is self-normalizing with gain 1, i.e. LeCun).
GAINS: dict[str, float] = {
    "relu": math.sqrt(2.0),
    "leaky_relu": math.sqrt(2.0 / (1 + _LEAKY_SLOPE**2)),
    "prelu": math.sqrt(2.0 / (1 + _PRELU_INIT**2)),
    "elu": math.sqrt(2.0),
    "gelu": math.sqrt(2.0),
    "selu": 1.0,
    "tanh": 5.0 / 3.0,
    "sigmoid": 1.0,
    "linear": 1.0,
}


def make_activation(name: Activation) -> nn.Module:
    return {
        "relu": lambda: nn.ReLU(),
        "leaky_relu": lambda: nn.LeakyReLU(_LEAKY_SLOPE),
        "prelu": lambda: nn.PReLU(init=_PRELU_INIT),
        "elu": lambda: nn.ELU(),
        "selu": lambda: nn.SELU(),
        "gelu": lambda: nn.GELU(),
        "tanh": lambda: nn.Tanh(),
        "sigmoid": lambda: nn.Sigmoid(),
    }[name]()


@dataclass(frozen=True)
class LayerSpec:
    width: int
    activation: Activation
    initializer: Initializer
    normalization: Normalization


@dataclass(frozen=True)
class MLPSpec:
    """Everything that decides one network and its training, and nothing else."""

    layers: tuple[LayerSpec, ...]
    dropout: float
    l2: float  # the λ of a λ‖w‖² penalty on weight matrices (not biases or norm parameters)
    learning_rate: float
    optimizer: Optimizer
    batch_size: int
    embedding_dim: int = 8  # width of each category embedding, when the data has any
    # Defaults are the behaviour before these fields existed, so old trials load unchanged.
    beta2: float = 0.999  # Adam's second-moment decay (adam, adamw, nadam)
    lr_schedule: LRSchedule = "constant"
    label_smoothing: float = 0.0  # classification only
    # RealMLP's and TabM's ingredients (hpo.models.embeddings, hpo.models.tabm); the
    # defaults are the plain MLP, and what a stored trial without them meant. The periodic
    # settings default to RealMLP-TD's (16 frequencies, sigma 0.1, 3 learned values).
    numeric_embedding: NumericEmbedding = "none"
    n_frequencies: int = 16
    frequency_scale: float = 0.1
    periodic_width: int = 3
    feature_scale: bool = False
    heads: int = 1  # k members of a TabM-mini network; 1 is the plain MLP

    def __post_init__(self) -> None:
        # A spec also comes from a bundle's manifest, which the search space never checked.
        if self.numeric_embedding not in ("none", "periodic"):
            raise ValueError(f"unknown numeric_embedding {self.numeric_embedding!r}")
        for name in ("n_frequencies", "periodic_width", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def from_params(
        cls, params: dict[str, Any], layers: list[dict[str, Any]] | None = None
    ) -> MLPSpec:
        """Build from a trial's flat params; ``layers`` overrides the uniform hidden layers."""
        if layers is None:
            layers = [
                {k: params[k] for k in ("width", "activation", "initializer", "normalization")}
            ] * int(params["depth"])
        return cls(
            layers=tuple(LayerSpec(**layer) for layer in layers),
            dropout=float(params["dropout"]),
            l2=float(params["l2"]),
            learning_rate=float(params["learning_rate"]),
            optimizer=params["optimizer"],
            batch_size=int(params["batch_size"]),
            embedding_dim=int(params.get("embedding_dim", 8)),
            beta2=float(params.get("beta2", 0.999)),
            lr_schedule=params.get("lr_schedule", "constant"),
            label_smoothing=float(params.get("label_smoothing", 0.0)),
            numeric_embedding=params.get("numeric_embedding", "none"),
            n_frequencies=int(params.get("n_frequencies", 16)),
            frequency_scale=float(params.get("frequency_scale", 0.1)),
            periodic_width=int(params.get("periodic_width", 3)),
            feature_scale=bool(params.get("feature_scale", False)),
            heads=int(params.get("heads", 1)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"layers": [asdict(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MLPSpec:
        return cls.from_params(d, layers=d["layers"])

    def describe(self) -> str:
        """A short summary, e.g. ``2x128 relu he_normal batchnorm_after``."""
        parts = [
            f"{ly.width} {ly.activation} {ly.initializer}"
            + ("" if ly.normalization == "none" else f" {ly.normalization}")
            for ly in self.layers
        ]
        extras = [
            f"periodic {self.n_frequencies}f" if self.numeric_embedding == "periodic" else "",
            "scaled" if self.feature_scale else "",
            f"k={self.heads}" if self.heads > 1 else "",
        ]
        body = f"{len(parts)}x{parts[0]}" if len(set(parts)) == 1 else " | ".join(parts)
        return " ".join([body, *(e for e in extras if e)])


class EmbeddingMLP(nn.Module):
    """An MLP behind input layers: embeddings of the category codes, a periodic embedding
    of the dense columns, a learnable feature scale (each optional, ``None`` when unused).

    The input stays one float matrix: its first ``n_dense`` columns are dense, the rest
    hold the integer codes; each code is looked up in its own table and the vectors join
    the dense columns (or their periodic embedding) before the scale and the MLP.
    """

    def __init__(
        self,
        mlp: nn.Module,
        n_dense: int,
        embedding_sizes: Sequence[int] = (),
        dim: int = 8,
        periodic: PeriodicEmbedding | None = None,
        scale: FeatureScale | None = None,
    ) -> None:
        super().__init__()
        self.n_dense = n_dense
        self.embeddings = nn.ModuleList(nn.Embedding(n, dim) for n in embedding_sizes)
        self.periodic = periodic
        self.scale = scale
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense, codes = x[:, : self.n_dense], x[:, self.n_dense :].long()
        if self.periodic is not None:
            dense = self.periodic(dense)
        vectors = [emb(codes[:, i]) for i, emb in enumerate(self.embeddings)]
        features = torch.cat([dense, *vectors], dim=1) if vectors else dense
        if self.scale is not None:
            features = self.scale(features)
        return self.mlp(features)


def build_mlp(
    spec: MLPSpec, n_inputs: int, n_outputs: int, embedding_sizes: Sequence[int] = ()
) -> nn.Module:
    """The network of a spec, for ``n_inputs`` columns of which the last
    ``len(embedding_sizes)`` hold category codes (rows per embedding table).

    The plain MLP is a flat ``nn.Sequential`` (per hidden layer Linear, [norm], activation,
    [norm], dropout; then the output layer); with ``heads`` > 1 it is a :class:`TabMMini`
    of that many members, output ``(rows, heads, n_outputs)``. With category codes, a
    periodic embedding or a feature scale, it is wrapped in an :class:`EmbeddingMLP`. Built
    from the same spec, the same modules and state-dict keys, so stored weights load.
    """
    n_dense = n_inputs - len(embedding_sizes)
    periodic = None
    chunks = [1] * n_dense  # input columns per feature: TabM's adapter draws per feature
    if spec.numeric_embedding == "periodic":
        periodic = PeriodicEmbedding(
            n_dense, spec.n_frequencies, spec.frequency_scale, spec.periodic_width
        )
        chunks = [periodic.width_per_column] * n_dense
    chunks += [spec.embedding_dim] * len(embedding_sizes)
    width = sum(chunks)
    scale = FeatureScale(width) if spec.feature_scale else None
    hidden, last = _hidden_layers(spec, width)
    heads = [_output_layer(spec, last, n_outputs) for _ in range(spec.heads)]
    mlp: nn.Module
    if spec.heads == 1:
        mlp = nn.Sequential(*hidden, *heads)
    else:
        embedded = periodic is not None or bool(embedding_sizes)
        mlp = TabMMini(nn.Sequential(*hidden), heads, chunks, random_signs=not embedded)
    if periodic is None and scale is None and not embedding_sizes:
        return mlp
    return EmbeddingMLP(mlp, n_dense, embedding_sizes, spec.embedding_dim, periodic, scale)


def heads_of(model: nn.Module) -> int:
    """k of a network from :func:`build_mlp`: its TabM-mini members, else 1."""
    return next((m.k for m in model.modules() if isinstance(m, TabMMini)), 1)


def _hidden_layers(spec: MLPSpec, n_inputs: int) -> tuple[list[nn.Module], int]:
    """The hidden layers' modules in order, and the width they end with."""
    modules: list[nn.Module] = []
    width_in = n_inputs
    for layer in spec.layers:
        norm_before = layer.normalization.endswith("_before")
        # A norm right after Linear subtracts the mean, which makes the bias redundant.
        linear = nn.Linear(width_in, layer.width, bias=not norm_before)
        init_linear(linear, layer.initializer, layer.activation)
        modules.append(linear)
        norm = _make_norm(layer.normalization, layer.width)
        if norm is not None and norm_before:
            modules.append(norm)
        modules.append(make_activation(layer.activation))
        if norm is not None and not norm_before:
            modules.append(norm)
        if spec.dropout > 0:
            modules.append(nn.Dropout(spec.dropout))
        width_in = layer.width
    return modules, width_in


def _output_layer(spec: MLPSpec, n_inputs: int, n_outputs: int) -> nn.Linear:
    head = nn.Linear(n_inputs, n_outputs)
    init_linear(head, spec.layers[-1].initializer if spec.layers else "default", "linear")
    return head


def _make_norm(normalization: Normalization, width: int) -> nn.Module | None:
    if normalization.startswith("batchnorm"):
        return nn.BatchNorm1d(width)  # momentum 0.1 here is Keras' momentum 0.9
    if normalization.startswith("layernorm"):
        return nn.LayerNorm(width)
    return None


def init_linear(linear: nn.Linear, initializer: Initializer, activation: str) -> None:
    """Initialize weights with the named scheme and the activation's gain; zero the bias."""
    if initializer == "default":
        return  # PyTorch's own (Kaiming uniform with a=sqrt(5))
    fan_out, fan_in = linear.weight.shape
    gain = GAINS[activation]
    std = {
        "glorot_uniform": gain * math.sqrt(2.0 / (fan_in + fan_out)),
        "glorot_normal": gain * math.sqrt(2.0 / (fan_in + fan_out)),
        "he_uniform": gain / math.sqrt(fan_in),
        "he_normal": gain / math.sqrt(fan_in),
        "lecun_normal": 1.0 / math.sqrt(fan_in),
    }[initializer]
    with torch.no_grad():
        if initializer.endswith("uniform"):
            bound = math.sqrt(3.0) * std  # a uniform on [-b, b] has std b/sqrt(3)
            linear.weight.uniform_(-bound, bound)
        else:
            linear.weight.normal_(0.0, std)
        if linear.bias is not None:
            linear.bias.zero_()
