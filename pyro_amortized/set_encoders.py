"""Encoders of groups of rows: the features of a group plate's groups.

A group's local posterior depends on the rows of the group as a set: on their
number and on what they hold, not on their order. :class:`SetEncoder` is a
permutation-invariant encoder of the form of Deep Sets (Zaheer et al., 2017):
each row is encoded alone, the rows' features are pooled per group, and a
second network maps the pooled features and the group's size to the group's
features. A group without rows (a new group, or one left out) gets the
features of the empty set, from which its heads learn the prior.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .encoders import MLPEncoder

POOLINGS = ("mean", "sum")
"""The ways :class:`SetEncoder` can pool a group's row features."""


class SetEncoder(nn.Module):
    """Features per group from rows and each row's group.

    Each row's inputs go through ``row_encoder``; the rows' features are pooled
    per group (``"mean"``; ``"sum"``, divided by ``reference_count`` so that it
    reads at the scale of the mean), joined with ``log(1 + n)`` for a group of
    ``n`` rows, and mapped by fully connected layers of widths ``hidden_dims``.

    :param row_encoder: maps the rows' inputs ``(rows, ...)`` to ``(rows, features)``.
    :param hidden_dims: widths of the layers after pooling.
    :param reference_count: a typical number of rows per group.
    :param pooling: the poolings to join, among :data:`POOLINGS`.

    Usage::

        encoder = SetEncoder(MLPEncoder((32,)), (32,), reference_count=10.0)
        groups = torch.tensor([0, 0, 1, 2, 2, 2])
        features = encoder(groups, 4, torch.randn(6, 3))     # (4, 32): group 3 is empty
    """

    buffers_from_data = True
    """Its ``reference_count`` comes from data (the guide's first call), not
    from Pyro's param store (see :func:`~pyro_amortized.params.register`)."""

    def __init__(
        self,
        row_encoder: nn.Module,
        hidden_dims: Sequence[int],
        *,
        reference_count: float,
        pooling: Sequence[str] = POOLINGS,
    ) -> None:
        super().__init__()
        unknown = set(pooling) - set(POOLINGS)
        if not pooling or unknown:
            raise ValueError(f"pooling must name some of {POOLINGS}, but got {tuple(pooling)}.")
        if not reference_count > 0:
            raise ValueError(f"reference_count must be positive, but got {reference_count}.")
        self.row_encoder = row_encoder
        self.pooling = tuple(pooling)
        self.register_buffer("reference_count", torch.tensor(float(reference_count)))
        self.group_encoder = MLPEncoder(hidden_dims)

    def forward(self, groups: torch.Tensor, num_groups: int, *rows: torch.Tensor) -> torch.Tensor:
        """Maps rows and their groups ``(rows,)`` to ``(num_groups, features)``."""
        features = self.row_encoder(*rows)
        features = features.reshape(features.shape[0], -1)
        groups = groups.to(features.device)
        sums = features.new_zeros(num_groups, features.shape[-1]).index_add(0, groups, features)
        counts = torch.bincount(groups, minlength=num_groups).to(features.dtype)
        pooled = []
        if "mean" in self.pooling:
            pooled.append(sums / counts.clamp(min=1.0).unsqueeze(-1))
        if "sum" in self.pooling:
            pooled.append(sums / self.reference_count)
        pooled.append(torch.log1p(counts).unsqueeze(-1))
        return self.group_encoder(torch.cat(pooled, dim=-1))
