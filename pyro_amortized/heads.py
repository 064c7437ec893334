"""Per-site parameter heads and global parameters.

A *head* is an ``nn.Module`` whose ``forward(features)`` returns a distribution
over one local site's unconstrained values for each data point: batch shape
``(batch, *point_batch_shape)``, event shape the site's unconstrained event
shape. A *global parameter module* is the same for a global site with no input.
A family of guides is a choice of head and global parameter module.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions import transforms as T
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions.transforms import ReshapeTransform, Transform
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
        return dist.Normal(loc, self.widening * scale).to_event(self.event_dim)


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
        scale_tril = self.widening * scale_tril
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
        factor = self.widening * self._outputs(self.factor, features, self.size, self.rank)
        diagonal = self.widening**2 * diagonal
        return self._reshaped(dist.LowRankMultivariateNormal(loc, factor, diagonal))


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
    heads = [head for head in heads if hasattr(head, "widening")]
    previous = [head.widening for head in heads]
    for head in heads:
        head.widening = factor
    try:
        yield
    finally:
        for head, value in zip(heads, previous, strict=True):
            head.widening = value


FLOWS = ("spline", "iaf")
"""The conditional flows :class:`FlowHead` stacks."""


def _conditional_flow(
    flow: str,
    size: int,
    num_features: int,
    hidden_dims: list[int],
    count_bins: int,
    bound: float,
) -> nn.Module:
    """One conditional flow layer over a vector of ``size`` given ``num_features``,
    starting near the identity whatever the features: the conditioner's last
    layer starts at zero (uniform spline bins, or a zero shift and unit scale),
    so a fresh flow cannot throw samples far from the affine map's start."""
    if flow == "spline" and size == 1:
        layer = T.conditional_spline(
            1, num_features, hidden_dims, count_bins=count_bins, bound=bound
        )
    elif flow == "spline":
        layer = T.conditional_spline_autoregressive(
            size, num_features, hidden_dims, count_bins=count_bins, bound=bound
        )
    else:
        with warnings.catch_warnings():
            # In one dimension an autoregressive affine map is an affine map of
            # the features, which is what it should be; Pyro warns all the same.
            warnings.filterwarnings("ignore", "ConditionalAutoRegressiveNN input_dim = 1")
            layer = T.conditional_affine_autoregressive(size, num_features, hidden_dims)
    last = layer.nn.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return layer


class FlowHead(_CorrelatedHead):
    """Conditional normalizing flow per data point over a site's unconstrained
    event: standard Normal noise ``u``, ``num_flows`` conditional flows whose
    context is the encoder's features, then an affine map whose ``loc`` and
    ``softplus`` scale are linear in the features,
    ``z = loc + scale * f_K(... f_1(u; h) ...; h)``.

    ``flow="spline"`` uses Pyro's rational-quadratic neural splines (elementwise
    in one dimension, autoregressive in several), which can put mass on several
    modes; ``flow="iaf"`` uses affine autoregressive flows (an inverse
    autoregressive flow), which in one dimension is an affine map. Between layers
    the coordinates are reversed.

    :param num_features: size of the encoder's features.
    :param shape: per-point batch shape + unconstrained event shape.
    :param event_dim: number of event dimensions at the right of ``shape``.
    :param init_loc: initial location, of shape ``shape``.
    :param init_scale: initial scale of the final affine map.
    :param flow: ``"spline"`` or ``"iaf"``.
    :param num_flows: number of flow layers.
    :param hidden_dims: hidden widths of each layer's conditioner network; by
        default one layer as wide as the features.
    :param count_bins: spline segments per coordinate.
    :param bound: the splines act on ``[-bound, bound]`` and are the identity
        outside it. The noise is standard Normal, so the default 6 leaves about
        ``2e-9`` of it unshaped; with 3, the 0.27% of samples beyond it would
        land at ``loc + scale * u``, far from narrow modes, and cost the ELBO
        dearly (see the docs' normalizing flows).

    Usage::

        head = FlowHead(64, torch.Size([1]), 1, init_loc=torch.zeros(1), init_scale=1.0)
        q = head(torch.randn(10, 64))     # batch (10,), event (1,)
        z = q.rsample()
    """

    def __init__(
        self,
        num_features: int,
        shape: torch.Size,
        event_dim: int,
        *,
        init_loc: torch.Tensor,
        init_scale: float,
        flow: str = "spline",
        num_flows: int = 2,
        hidden_dims: Sequence[int] | None = None,
        count_bins: int = 16,
        bound: float = 6.0,
    ) -> None:
        if not (isinstance(count_bins, int) and count_bins > 0) or not bound > 0:
            raise ValueError(
                "count_bins must be a positive integer and bound a positive number, but got "
                f"count_bins={count_bins!r}, bound={bound!r}."
            )
        super().__init__(num_features, shape, event_dim)
        self.loc = self._linear(init_loc.reshape(self.batch_shape + (self.size,)))
        raw_scale = _raw_scale(init_scale)
        self.scale = self._linear(torch.full(self.batch_shape + (self.size,), raw_scale))
        hidden = list(hidden_dims) if hidden_dims is not None else [num_features]
        self.flow = flow
        self.flows = nn.ModuleList(
            _conditional_flow(flow, self.size, num_features, hidden, count_bins, bound)
            for _ in range(num_flows)
        )
        self.register_buffer("reversal", torch.arange(self.size - 1, -1, -1))

    def forward(self, features: torch.Tensor) -> dist.Distribution:
        loc = self._outputs(self.loc, features, self.size)
        scale = self.widening * (
            softplus(self._outputs(self.scale, features, self.size)) + MIN_SCALE
        )
        context = features.reshape(
            features.shape[:-1] + (1,) * len(self.batch_shape) + features.shape[-1:]
        ).expand(loc.shape[:-1] + features.shape[-1:])
        transforms = []
        for layer, flow in enumerate(self.flows):
            if layer and self.size > 1:
                transforms.append(T.Permute(self.reversal, cache_size=1))
            transforms.append(flow.condition(context))
        # Cached: the log density of a sample reuses the forward pass instead
        # of inverting the splines numerically.
        transforms.append(T.AffineTransform(loc, scale, event_dim=1, cache_size=1))
        noise = dist.Normal(torch.zeros_like(loc), torch.ones_like(scale)).to_event(1)
        return self._reshaped(dist.TransformedDistribution(noise, transforms))


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


SATURATED = 1e-6
"""A discrete head is saturated where it gives one value a probability within
this of 1 for every row: its score-function gradient has then vanished."""

MIN_SATURATED_ROWS = 16
"""Rows a batch needs before :func:`is_saturated` judges it: a few rows may
well all be sure of one value."""


def is_saturated(distribution: dist.Distribution) -> bool:
    """Whether a discrete head proposes one and the same value, with probability
    above ``1 - SATURATED``, for each of at least ``MIN_SATURATED_ROWS`` rows.

    A head there has stopped learning by the score function: the gradient of
    ``log q`` at the value it always samples is ``1 - q``, about zero.

    Usage::

        is_saturated(dist.Categorical(logits=torch.tensor([[50.0, 0.0]]).expand(20, 2)))  # True
    """
    while isinstance(distribution, dist.Independent):
        distribution = distribution.base_dist
    if isinstance(distribution, dist.Bernoulli):
        probs = torch.stack([1 - distribution.probs, distribution.probs], -1)
    else:
        probs = distribution.probs
    probs = probs.detach().reshape(probs.shape[0], -1, probs.shape[-1])
    if probs.shape[0] < MIN_SATURATED_ROWS:
        return False
    top, value = probs.max(-1)
    return bool((top > 1 - SATURATED).all() and (value == value[:1]).all())


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


def _gaussian(distribution: dist.Distribution) -> tuple[dist.Distribution, Transform | None]:
    """A head's Gaussian or Delta distribution and its reshape, or ``(None, None)``
    for a distribution with no closed-form marginals (a flow, a user's head)."""
    reshape = None
    if isinstance(distribution, dist.TransformedDistribution):
        if len(distribution.transforms) != 1 or not isinstance(
            distribution.transforms[0], ReshapeTransform
        ):
            return None, None
        (reshape,) = distribution.transforms
        distribution = distribution.base_dist
    while isinstance(distribution, dist.Independent):
        distribution = distribution.base_dist
    if not isinstance(distribution, _CLOSED_FORM):
        return None, None
    return distribution, reshape


_CLOSED_FORM = (
    dist.Normal,
    dist.MultivariateNormal,
    dist.LowRankMultivariateNormal,
    dist.Delta,
)
"""Distributions whose marginals are Gaussian (or a point): exact quantiles."""


def marginal_loc_scale(distribution: dist.Distribution) -> tuple[torch.Tensor, torch.Tensor]:
    """Each coordinate's marginal location (median) and standard deviation under a
    head's Gaussian or Delta distribution, in the shape of its values."""
    distribution, reshape = _gaussian(distribution)
    if isinstance(distribution, dist.Delta):
        loc, scale = distribution.v, torch.zeros_like(distribution.v)
    else:
        loc, scale = distribution.mean, distribution.variance.sqrt()
    if reshape is not None:
        loc, scale = reshape(loc), reshape(scale)
    return loc, scale


NUM_QUANTILE_SAMPLES = 4096
"""Samples behind the Monte Carlo quantiles of a flow."""


def unconstrained_quantiles(
    distribution: dist.Distribution, quantiles: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Coordinate-wise quantiles of a head's distribution: exact marginals for the
    Gaussian families, and for any other (a flow, a user's head) empirical quantiles of
    :data:`NUM_QUANTILE_SAMPLES` samples drawn with a fixed seed (repeatable,
    leaving the global random state untouched).

    :returns: a tensor with a leading dimension over ``quantiles``.
    """
    if _gaussian(distribution)[0] is None:
        # Every CUDA generator is forked too: the samples may be drawn on any device.
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            torch.manual_seed(0)
            samples = distribution.sample((NUM_QUANTILE_SAMPLES,))
        levels = torch.as_tensor(quantiles, dtype=samples.dtype, device=samples.device)
        return torch.quantile(samples, levels, dim=0)
    loc, scale = marginal_loc_scale(distribution)
    levels = torch.as_tensor(quantiles, dtype=loc.dtype, device=loc.device)
    standard = dist.Normal(0.0, 1.0).icdf(levels).reshape((-1,) + (1,) * loc.dim())
    return loc + scale * standard
