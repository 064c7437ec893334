"""Medians and quantiles of what heads propose: exact marginals for the
Gaussian families and point estimates, Monte Carlo for flows and users' heads,
and the values of discrete heads at given levels."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch.distributions.transforms import ReshapeTransform, Transform


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
