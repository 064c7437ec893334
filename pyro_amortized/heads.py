"""The Gaussian and point-estimate heads of local sites.

A *head* is an ``nn.Module`` whose ``forward(features)`` returns a distribution
over one local site's unconstrained values for each data point: batch shape
``(batch, *point_batch_shape)``, event shape the site's unconstrained event
shape. A family of guides is a choice of head (here, and in
:mod:`~pyro_amortized.flow_heads` and :mod:`~pyro_amortized.discrete_heads`)
and of global parameter module (:mod:`~pyro_amortized.global_heads`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions.transforms import ReshapeTransform
from torch.nn.functional import softplus

from .switches import switched

MIN_SCALE = 1e-5
"""Floor added to every softplus scale, so a scale never reaches zero."""


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


def _raw_scale(scale: float) -> float:
    """The pre-softplus value whose scale (with the floor added) is ``scale``."""
    return _inverse_softplus(max(scale - MIN_SCALE, MIN_SCALE))


class _LinearHead(nn.Module):
    """Shared plumbing: linear maps from features to tensors of a fixed shape."""

    def __init__(self, num_features: int, shape: torch.Size, event_dim: int) -> None:
        super().__init__()
        self.shape = torch.Size(shape)
        self.event_dim = event_dim
        self.num_features = num_features
        # Factor on the spread of the distribution: 1 except inside widened().
        self.widening = 1.0

    def _linear(self, bias: torch.Tensor) -> nn.Linear:
        """A linear map to ``bias.numel()`` outputs that starts at ``bias``
        whatever the features (zero weights)."""
        layer = nn.Linear(self.num_features, bias.numel())
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.copy_(bias.reshape(-1))
        return layer

    def _widened(self, spread: torch.Tensor, power: int = 1) -> torch.Tensor:
        """A spread times the widening (untouched outside :func:`widened`)."""
        return spread if self.widening == 1.0 else self.widening**power * spread

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
        raw_scale = _raw_scale(init_scale)
        self.scale = self._linear(torch.full(self.shape, raw_scale))

    def forward(self, features: torch.Tensor) -> dist.Distribution:
        loc = self._output(self.loc, features)
        scale = softplus(self._output(self.scale, features)) + MIN_SCALE
        return dist.Normal(loc, self._widened(scale)).to_event(self.event_dim)


def point_mass(value: torch.Tensor, event_dim: int) -> dist.Delta:
    """The guide's Delta at ``value``, unvalidated: a Delta validates only its
    log-density, here zero, so the check would cost a call and find nothing.

    Usage::

        q = point_mass(torch.zeros(10, 2), event_dim=1)
    """
    return dist.Delta(value, event_dim=event_dim, validate_args=False)


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
        return point_mass(self._output(self.loc, features), self.event_dim)


class _CorrelatedHead(_LinearHead):
    """Shared plumbing of the correlated Gaussian heads: one Gaussian per point
    (and per position of the per-point batch) over the flattened unconstrained
    event of size ``k``, reshaped back to the event shape."""

    def __init__(self, num_features: int, shape: torch.Size, event_dim: int) -> None:
        super().__init__(num_features, shape, event_dim)
        self.batch_shape = self.shape[: len(self.shape) - event_dim]
        self.event_shape = self.shape[len(self.shape) - event_dim :]
        self.size = self.event_shape.numel()

    def _outputs(self, layer: nn.Linear, features: torch.Tensor, *trailing: int) -> torch.Tensor:
        return layer(features).reshape(features.shape[:-1] + self.batch_shape + trailing)

    def _reshaped(self, gaussian: dist.Distribution) -> dist.Distribution:
        if self.event_shape == (self.size,):
            return gaussian
        return dist.TransformedDistribution(
            gaussian, [ReshapeTransform((self.size,), self.event_shape, cache_size=1)]
        )


class MultivariateNormalHead(_CorrelatedHead):
    """Full-covariance Gaussian per data point over a site's unconstrained event:
    ``loc`` and a lower-triangular ``scale_tril`` (softplus diagonal) from linear
    maps of the features.

    :param num_features: size of the encoder's features.
    :param shape: per-point batch shape + unconstrained event shape.
    :param event_dim: number of event dimensions at the right of ``shape``.
    :param init_loc: initial location, of shape ``shape``.
    :param init_scale: initial standard deviation of every coordinate.

    Usage::

        head = MultivariateNormalHead(64, torch.Size([3]), 1, init_loc=torch.zeros(3),
                                      init_scale=0.1)
        q = head(torch.randn(10, 64))     # MultivariateNormal, batch (10,), event (3,)
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
        self.loc = self._linear(init_loc.reshape(self.batch_shape + (self.size,)))
        raw_scale = _raw_scale(init_scale)
        self.diagonal = self._linear(torch.full(self.batch_shape + (self.size,), raw_scale))
        num_off_diagonal = self.size * (self.size - 1) // 2
        self.off_diagonal = (
            self._linear(torch.zeros(self.batch_shape + (num_off_diagonal,)))
            if num_off_diagonal
            else None
        )

    def forward(self, features: torch.Tensor) -> dist.Distribution:
        loc = self._outputs(self.loc, features, self.size)
        diagonal = softplus(self._outputs(self.diagonal, features, self.size)) + MIN_SCALE
        scale_tril = torch.diag_embed(diagonal)
        if self.off_diagonal is not None:
            lower = self._outputs(self.off_diagonal, features, self.size * (self.size - 1) // 2)
            rows, cols = torch.tril_indices(self.size, self.size, -1, device=features.device)
            scale_tril[..., rows, cols] = lower
        scale_tril = self._widened(scale_tril)
        return self._reshaped(dist.MultivariateNormal(loc, scale_tril=scale_tril))


class LowRankMultivariateNormalHead(_CorrelatedHead):
    """Gaussian per data point with covariance ``F F^T + diag(d)``, a low-rank
    factor ``F`` (``size x rank``) and a softplus diagonal ``d``, from linear maps
    of the features: linear in the event size, for large events.

    :param num_features: size of the encoder's features.
    :param shape: per-point batch shape + unconstrained event shape.
    :param event_dim: number of event dimensions at the right of ``shape``.
    :param init_loc: initial location, of shape ``shape``.
    :param init_scale: initial standard deviation scale.
    :param rank: rank of ``F``; by default about the square root of the size.

    Usage::

        head = LowRankMultivariateNormalHead(64, torch.Size([50]), 1,
                                             init_loc=torch.zeros(50), init_scale=0.1, rank=3)
        q = head(torch.randn(10, 64))
    """

    def __init__(
        self,
        num_features: int,
        shape: torch.Size,
        event_dim: int,
        *,
        init_loc: torch.Tensor,
        init_scale: float,
        rank: int | None = None,
    ) -> None:
        super().__init__(num_features, shape, event_dim)
        self.rank = rank or max(1, int(round(self.size**0.5)))
        self.loc = self._linear(init_loc.reshape(self.batch_shape + (self.size,)))
        diagonal = _inverse_softplus(max(init_scale**2 / 2, MIN_SCALE))
        self.diagonal = self._linear(torch.full(self.batch_shape + (self.size,), diagonal))
        # A nonzero start: at F = 0 the gradient with respect to F vanishes.
        # Random directions, each row of F of norm init_scale / sqrt(2): every
        # coordinate starts with standard deviation init_scale exactly.
        factor = torch.randn(self.batch_shape + (self.size, self.rank))
        factor = factor / factor.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.factor = self._linear(factor.flatten(-2) * init_scale / 2**0.5)

    def forward(self, features: torch.Tensor) -> dist.Distribution:
        loc = self._outputs(self.loc, features, self.size)
        diagonal = softplus(self._outputs(self.diagonal, features, self.size)) + MIN_SCALE
        factor = self._widened(self._outputs(self.factor, features, self.size, self.rank))
        diagonal = self._widened(diagonal, power=2)
        return self._reshaped(dist.LowRankMultivariateNormal(loc, factor, diagonal))


GAUSSIAN_HEADS = (NormalHead, MultivariateNormalHead, LowRankMultivariateNormalHead)
"""The heads whose density :class:`~pyro_amortized.PathDerivativeELBO` detaches."""


@contextmanager
def widened(heads: Iterable[nn.Module], factor: float) -> Iterator[None]:
    """Within the block, the heads among ``heads`` that have a ``widening``
    attribute (the Gaussian and flow heads, and a user's head that honours it)
    spread their distributions ``factor`` times wider about the same location
    (their scales, or scale factors, times ``factor``); Delta and discrete
    heads are unchanged. A wider proposal keeps importance weights light-tailed.

    Usage::

        with widened(guide.network.heads.values(), 1.5):
            ...
    """
    with switched([head for head in heads if hasattr(head, "widening")], "widening", factor):
        yield
