"""Per-site parameter heads and global parameters.

A *head* is an ``nn.Module`` whose ``forward(features)`` returns a distribution
over one local site's unconstrained values for each data point: batch shape
``(batch, *point_batch_shape)``, event shape the site's unconstrained event
shape. A *global parameter module* is the same for a global site with no input.
A family of guides is a choice of head and global parameter module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions.transforms import ReshapeTransform
from torch.nn.functional import softplus

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

    def _linear(self, bias: torch.Tensor) -> nn.Linear:
        """A linear map to ``bias.numel()`` outputs that starts at ``bias``
        whatever the features (zero weights)."""
        layer = nn.Linear(self.num_features, bias.numel())
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
        raw_scale = _raw_scale(init_scale)
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
            gaussian, [ReshapeTransform((self.size,), self.event_shape)]
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
        factor = torch.randn(self.batch_shape + (self.size * self.rank,))
        self.factor = self._linear(factor * init_scale / (2 * self.rank) ** 0.5)

    def forward(self, features: torch.Tensor) -> dist.Distribution:
        loc = self._outputs(self.loc, features, self.size)
        diagonal = softplus(self._outputs(self.diagonal, features, self.size)) + MIN_SCALE
        factor = self._outputs(self.factor, features, self.size, self.rank)
        return self._reshaped(dist.LowRankMultivariateNormal(loc, factor, diagonal))


class DiscreteHead(_LinearHead):
    """Amortized logits of a discrete local site: Bernoulli, Categorical or
    OneHotCategorical per data point, starting uniform.

    :param num_features: size of the encoder's features.
    :param shape: per-point batch shape + the site's event shape.
    :param event_dim: the site's event dimensions.
    :param kind: ``"bernoulli"``, ``"categorical"`` or ``"one_hot"``.
    :param num_categories: number of values (categories) of the site.

    Usage::

        head = DiscreteHead(64, torch.Size([]), 0, kind="categorical", num_categories=3)
        q = head(torch.randn(10, 64))     # Categorical, batch (10,)
    """

    def __init__(
        self,
        num_features: int,
        shape: torch.Size,
        event_dim: int,
        *,
        kind: str,
        num_categories: int,
    ) -> None:
        logits_shape = torch.Size(shape) + ((num_categories,) if kind == "categorical" else ())
        super().__init__(num_features, logits_shape, event_dim)
        self.kind = kind
        self.logits = self._linear(torch.zeros(logits_shape))

    def forward(self, features: torch.Tensor) -> dist.Distribution:
        logits = self._output(self.logits, features)
        if self.kind == "bernoulli":
            return dist.Bernoulli(logits=logits).to_event(self.event_dim)
        if self.kind == "categorical":
            return dist.Categorical(logits=logits).to_event(self.event_dim)
        return dist.OneHotCategorical(logits=logits).to_event(self.event_dim - 1)


def discrete_quantiles(
    distribution: dist.Distribution, quantiles: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Quantiles of a discrete head's distribution: per level, the smallest value
    whose cumulative probability reaches it (one-hot values stay one-hot).

    :returns: a tensor with a leading dimension over ``quantiles``.
    """
    while isinstance(distribution, dist.Independent):
        distribution = distribution.base_dist
    probs = distribution.probs
    if isinstance(distribution, dist.Bernoulli):
        probs = torch.stack([1 - probs, probs], -1)
    levels = torch.as_tensor(quantiles, dtype=probs.dtype, device=probs.device)
    cdf = probs.cumsum(-1)
    below = cdf.unsqueeze(0) < levels.reshape((-1,) + (1,) * cdf.dim())
    index = below.sum(-1).clamp(max=probs.shape[-1] - 1)
    if isinstance(distribution, dist.OneHotCategorical):
        return torch.nn.functional.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return index.to(probs.dtype)


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


def marginal_loc_scale(distribution: dist.Distribution) -> tuple[torch.Tensor, torch.Tensor]:
    """Each coordinate's marginal location (median) and standard deviation under a
    head's Gaussian or Delta distribution, in the shape of its values."""
    reshape = None
    if isinstance(distribution, dist.TransformedDistribution):
        (reshape,) = distribution.transforms
        distribution = distribution.base_dist
    while isinstance(distribution, dist.Independent):
        distribution = distribution.base_dist
    if isinstance(distribution, dist.Delta):
        loc, scale = distribution.v, torch.zeros_like(distribution.v)
    else:
        loc, scale = distribution.mean, distribution.variance.sqrt()
    if reshape is not None:
        loc, scale = reshape(loc), reshape(scale)
    return loc, scale


def unconstrained_quantiles(
    distribution: dist.Distribution, quantiles: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Coordinate-wise quantiles of a head's distribution (marginals for the
    correlated families).

    :returns: a tensor with a leading dimension over ``quantiles``.
    """
    loc, scale = marginal_loc_scale(distribution)
    levels = torch.as_tensor(quantiles, dtype=loc.dtype, device=loc.device)
    standard = dist.Normal(0.0, 1.0).icdf(levels).reshape((-1,) + (1,) * loc.dim())
    return loc + scale * standard
