"""k MLPs in one network: TabM-mini (Gorishniy et al., ICLR 2025; the ``tabm`` package's
``MLPBackboneMiniEnsemble`` behind an ``EnsembleView``, with ``LinearEnsemble`` heads).

The k members share every hidden layer. What makes them differ is one non-shared
per-feature scaling of the input (the "adapter", random at init) and their own output
layers. The network returns ``(rows, k, outputs)``; :mod:`hpo.models.train` trains it on
the mean of the k losses and predicts the mean of the k predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TabMMini(nn.Module):
    """A shared hidden stack between a per-member input scaling and per-member heads."""

    def __init__(
        self,
        hidden: nn.Sequential,
        heads: Sequence[nn.Linear],
        chunks: Sequence[int],
        *,
        random_signs: bool,
    ) -> None:
        """
        Args:
            hidden: the shared hidden layers (any of hpo's: norms, dropout, activations).
            heads: one initialised output layer per member.
            chunks: input columns per original feature (one for a plain column, more for
                an embedded one): each member draws one scaling per feature, as TabM does.
            random_signs: draw the scalings as ±1 (TabM's choice for raw inputs), else from
                N(0, 1) (its choice behind embeddings).
        """
        super().__init__()
        k = len(heads)
        draws = torch.randn(k, len(chunks))
        if random_signs:
            draws = torch.where(draws < 0, -1.0, 1.0)
        columns = [i for i, width in enumerate(chunks) for _ in range(width)]
        self.adapter = nn.Parameter(draws[:, columns])  # (k, inputs)
        self.backbone = hidden
        self.head_weight = nn.Parameter(torch.stack([h.weight.detach() for h in heads]))
        self.head_bias = nn.Parameter(torch.stack([h.bias.detach() for h in heads]))

    @property
    def k(self) -> int:
        return self.adapter.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = x.unsqueeze(1) * self.adapter  # (rows, k, inputs)
        # The members run as rows*k rows, so BatchNorm's statistics span all of them.
        hidden = self.backbone(views.flatten(0, 1)).unflatten(0, (-1, self.k))
        return torch.einsum("rkw,kow->rko", hidden, self.head_weight) + self.head_bias
