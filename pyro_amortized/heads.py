"""Per-site parameter heads and global parameters.

A *head* is an ``nn.Module`` whose ``forward(features)`` returns a distribution
over one local site's unconstrained values for each data point: batch shape
``(batch, *point_batch_shape)``, event shape the site's unconstrained event
shape. A *global parameter module* is the same for a global site with no input.
A family of guides is a choice of head and global parameter module.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.nn.functional import softplus

MIN_SCALE = 1e-5
"""Floor added to every softplus scale, so a scale never reaches zero."""


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


class _LinearHead(nn.Module):
    """Shared plumbing: linear maps from features to tensors of a fixed shape."""

    def __init__(self, num_features: int, shape: torch.Size, event_dim: int) -> None:
        super().__init__()
        self.shape = torch.Size(shape)
        self.event_dim = event_dim
        self.num_features = num_features

    def _linear(self, bias: torch.Tensor) -> nn.Linear:
        """A linear map whose output starts at ``bias`` whatever the features."""
        layer = nn.Linear(self.num_features, self.shape.numel())
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.copy_(bias.reshape(-1))
        return layer

    def _output(self, layer: nn.Linear, features: torch.Tensor) -> torch.Tensor:
        output = layer(features)
        return output if len(self.shape) == 1 else output.reshape(features.shape[:-1] + self.shape)


class NormalHead(_LinearHead):
    """Diagonal Normal over the unconstrained values: ``loc`` and ``softplus``
    scale from two linear maps of the features.

    :param num_features: size of the encoder's features.
    :param shape: per-point batch shape + unconstrained event shape.
    :param event_dim: number of event dimensions at the right of ``shape``.
    :param init_loc: initial location, of shape ``shape`` (weights start at zero).
    :param init_scale: initial scale.

    Usage::

        head = NormalHead(64, torch.Size([2]), 1, init_loc=torch.zeros(2), init_scale=0.1)
        q = head(torch.randn(10, 64))     # batch_shape (10,), event_shape (2,)
    """

    def __init__(
        self,
        num_features: int,
        shape: torch.Size,
        event_dim: int,
        *,
        init_loc: torch.Tensor,
        init_scale: float,
    ) -> None:
        super().__init__(num_features, shape, event_dim)
        self.loc = self._linear(init_loc)
        raw_scale = _inverse_softplus(max(init_scale - MIN_SCALE, MIN_SCALE))
        self.scale = self._linear(torch.full(self.shape, raw_scale))

    def forward(self, features: torch.Tensor) -> dist.Distribution:
        loc = self._output(self.loc, features)
        scale = softplus(self._output(self.scale, features)) + MIN_SCALE
        return dist.Normal(loc, scale).to_event(self.event_dim)


class DeltaHead(_LinearHead):
    """Point estimate: a Delta at a linear map of the features.

    :param num_features: size of the encoder's features.
    :param shape: per-point batch shape + unconstrained event shape.
    :param event_dim: number of event dimensions at the right of ``shape``.
    :param init_loc: initial value, of shape ``shape``.

    Usage::

        head = DeltaHead(64, torch.Size([2]), 1, init_loc=torch.zeros(2))
        q = head(torch.randn(10, 64))
    """

    def __init__(
        self,
        num_features: int,
        shape: torch.Size,
        event_dim: int,
        *,
        init_loc: torch.Tensor,
    ) -> None:
        super().__init__(num_features, shape, event_dim)
        self.loc = self._linear(init_loc)

    def forward(self, features: torch.Tensor) -> dist.Distribution:
        return dist.Delta(self._output(self.loc, features), event_dim=self.event_dim)


class GlobalNormal(PyroModule):
    """Per-site Normal over a global site's unconstrained value, as Pyro's AutoNormal.

    :param init_loc: initial location (the full unconstrained value).
    :param init_scale: initial scale.
    :param event_dim: unconstrained event dimensions; parameters are subsampled
        along any subsampled plate the site sits in.
    """

    def __init__(self, init_loc: torch.Tensor, init_scale: float, event_dim: int) -> None:
        super().__init__()
        self.event_dim = event_dim
        self.loc = PyroParam(init_loc, constraints.real, event_dim)
        self.scale = PyroParam(
            torch.full_like(init_loc, init_scale),
            constraints.softplus_positive,
            event_dim,
        )

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(self.event_dim)


class GlobalDelta(PyroModule):
    """A point estimate of a global site's unconstrained value, as Pyro's AutoDelta.

    :param init_loc: initial value (the full unconstrained value).
    :param event_dim: unconstrained event dimensions.
    """

    def __init__(self, init_loc: torch.Tensor, event_dim: int) -> None:
        super().__init__()
        self.event_dim = event_dim
        self.loc = PyroParam(init_loc, constraints.real, event_dim)

    def forward(self) -> dist.Distribution:
        return dist.Delta(self.loc, event_dim=self.event_dim)


def unconstrained_quantiles(
    distribution: dist.Distribution, quantiles: torch.Tensor
) -> torch.Tensor:
    """Coordinate-wise quantiles of a Normal or Delta head's distribution.

    :returns: a tensor with a leading dimension over ``quantiles``.
    """
    base = distribution
    while isinstance(base, dist.Independent):
        base = base.base_dist
    if isinstance(base, dist.Delta):
        return base.v.expand((len(quantiles),) + base.v.shape)
    shape = (-1,) + (1,) * len(base.batch_shape)
    return base.icdf(quantiles.reshape(shape))
