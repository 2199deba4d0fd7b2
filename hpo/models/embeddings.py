"""Input layers of RealMLP (Holzmüller et al., NeurIPS 2024; pytabkit's ``nn_models/nn.py``):
periodic embeddings of numeric columns and a learnable per-feature scale.

Both take and give one float matrix ``(rows, columns)``, so that they sit in front of any
MLP and export to ONNX as plain tensor operations.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PeriodicEmbedding(nn.Module):
    """Each column ``x`` becomes ``[x, W·cos(2π·c·x + b) + d]``: RealMLP's ``pbld`` embedding.

    Per column: ``n_frequencies`` learnable frequencies ``c ~ N(0, sigma)`` and phases
    ``b ~ U(-π, π)`` (the "B": a phase instead of pytabkit's cos-and-sin pairs), a linear
    map of its own to ``width`` values ("L", no activation), and the raw value kept beside
    them ("D", densenet). Output ``(rows, columns * (1 + width))``, column by column.
    """

    def __init__(self, n_columns: int, n_frequencies: int, sigma: float, width: int) -> None:
        super().__init__()
        self.frequencies = nn.Parameter(sigma * torch.randn(n_columns, n_frequencies))
        self.phases = nn.Parameter(math.pi * (2 * torch.rand(n_columns, n_frequencies) - 1))
        # nn.Linear's uniform init, one linear map per column.
        bound = 1 / math.sqrt(n_frequencies)
        self.weight = nn.Parameter(
            torch.empty(n_columns, n_frequencies, width).uniform_(-bound, bound)
        )
        self.bias = nn.Parameter(torch.empty(n_columns, width).uniform_(-bound, bound))

    @property
    def width_per_column(self) -> int:
        return 1 + self.weight.shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.cos(2 * math.pi * x.unsqueeze(-1) * self.frequencies + self.phases)
        learned = torch.einsum("rcf,cfw->rcw", z, self.weight) + self.bias
        return torch.cat([x.unsqueeze(-1), learned], dim=-1).flatten(1)


class FeatureScale(nn.Module):
    """A learnable per-feature factor, initialised at 1 (RealMLP's front scale layer): it
    lets training shrink unhelpful inputs before the first layer mixes them."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale
