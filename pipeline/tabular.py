"""A network for tables (model=tabular): numbers embedded with periodic embeddings (PLR,
Gorishniy et al. 2022: sin and cos of learned frequencies, a linear layer and a ReLU per
feature) or taken as they are (`model.numeric_embedding`), categories with learned embeddings,
and an efficient ensemble of `members` networks that share one MLP (TabM-mini, Gorishniy et al.
2025: each member scales the input by its own vector and has its own head). The members train on
the same batches; the prediction is their mean."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.config.choices import ACTIVATIONS, NUMERIC_EMBEDDINGS


class PeriodicEmbeddings(nn.Module):
    """Per numeric feature: [sin(2πcx), cos(2πcx)] for `k` learned frequencies c ~ N(0, σ²),
    then a linear layer to `d` and a ReLU."""

    def __init__(self, n_features: int, k: int, d: int, scale: float):
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(n_features, k) * scale)
        self.width = d
        self.weight = nn.Parameter(torch.empty(n_features, 2 * k, d))
        self.bias = nn.Parameter(torch.empty(n_features, d))
        bound = 1 / math.sqrt(2 * k)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, features) -> (batch, features, d)
        angles = 2 * math.pi * self.frequencies[None] * x[..., None]
        periodic = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        return torch.relu(torch.einsum("bfk,fkd->bfd", periodic, self.weight) + self.bias)


class ScaledNumbers(nn.Module):
    """The robustly scaled numbers as they are, one value each (TabM without embeddings): a
    narrower first layer than periodic embeddings give."""

    width = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, features) -> (batch, features, 1)
        return x[..., None]


def category_width(cardinality: int) -> int:
    """An embedding width that grows slowly with the number of levels."""
    return max(2, min(16, round(1.6 * cardinality**0.56)))


class TabularNet(nn.Module):
    def __init__(self, spec: object):
        super().__init__()
        self.n_numeric, self.members = spec.n_numeric, spec.members
        self.numbers = NUMERIC_EMBEDDINGS[spec.numeric_embedding](spec) if spec.n_numeric else None
        self.categories = nn.ModuleList(nn.Embedding(c, category_width(c)) for c in spec.cardinalities)
        width = sum(category_width(c) for c in spec.cardinalities)
        width += spec.n_numeric * self.numbers.width if self.numbers is not None else 0
        # each member's own scaling of the shared input (TabM-mini), initialized at random signs
        self.adapters = nn.Parameter(torch.randint(0, 2, (spec.members, width)).float() * 2 - 1)
        layers: list[nn.Module] = []
        for hidden in spec.hidden:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[spec.activation](), nn.Dropout(spec.dropout)]
            width = hidden
        self.backbone = nn.Sequential(*layers)
        self.heads = nn.Parameter(torch.empty(spec.members, width, spec.n_outputs))
        self.head_bias = nn.Parameter(torch.zeros(spec.members, spec.n_outputs))
        nn.init.uniform_(self.heads, -1 / math.sqrt(width), 1 / math.sqrt(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, features) -> (batch, members, outputs)."""
        parts = []
        if self.numbers is not None:
            parts.append(self.numbers(x[:, : self.n_numeric]).flatten(1))
        codes = x[:, self.n_numeric :].long()
        parts += [embedding(codes[:, j]) for j, embedding in enumerate(self.categories)]
        shared = torch.cat(parts, dim=1)
        members = shared[:, None, :] * self.adapters[None]  # (batch, members, width)
        hidden = self.backbone(members)
        return torch.einsum("bmw,mwo->bmo", hidden, self.heads) + self.head_bias
