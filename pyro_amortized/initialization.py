"""Where a local site's head starts: at the centre and spread of its prior.

A head's weights start at zero, so at the first step it proposes the same
distribution for every data point: the one given here. Drawn from the site's
prior (its distribution in the model's prototype run, given the initial values
of the sites it depends on) and mapped to unconstrained space, the draws' mean
is the head's initial location and their standard deviation its initial scale.
The ELBO's KL term then starts near zero whatever the prior's location and
spread are: a fixed scale of 0.1 would cost about 1.8 nats per dimension of a
standard-normal latent, and a positive site started at 1 would sit thousands of
standard deviations from a prior whose median is ``e^7.5``.
"""

from __future__ import annotations

import torch
from pyro.ops.tensor_utils import periodic_repeat
from torch.distributions.transforms import Transform

from .latent_sites import LatentSite
from .prototype import model_value, quietly
from .user_warnings import warn

PRIOR_DRAWS = 256
"""Draws from a local site's prior that set its head's start."""

INIT_SCALE_RANGE = (1e-3, 1.0)
"""The range a prior's spread is clipped to as an initial scale: broader starts
make the first samples of a positive site overflow, and the MLP encoder's
features are scaled for unit spreads."""

CORRELATED_MAX_INIT_SCALE = 0.1
"""The largest initial scale of the correlated families (full and low-rank
covariance). From a unit spread, the first steps of a strongly informative
likelihood shrink their diagonal to the scale floor while the off-diagonal
terms grow, and the ill-conditioned Cholesky factor's log density is then
exploited by the optimizer (measured: a factor model of 30 measurements
diverged within 8 steps)."""


def initial_unconstrained(node: dict, outer: frozenset[str], transform: Transform) -> torch.Tensor:
    """A site's value in the prototype trace (the one ``init_loc_fn`` chose), in
    unconstrained space and detached."""
    with torch.no_grad():
        return transform.inv(model_value(node, outer).detach())


def prior_start(
    node: dict, outer: frozenset[str], transform: Transform, max_scale: float = INIT_SCALE_RANGE[1]
) -> tuple[torch.Tensor, float]:
    """A local site's initial unconstrained location and scale, from its prior.

    :param node: the site in the prototype trace.
    :param outer: plates that enclosed the model call (see
        :func:`~pyro_amortized.prototype.model_value`).
    :param transform: the site's bijection from unconstrained space.
    :param max_scale: the top of the initial scale's range (see
        :data:`CORRELATED_MAX_INIT_SCALE`).
    :returns: the mean of the unconstrained prior draws over draws and data
        points (shaped as one data point's unconstrained value), and their
        standard deviation averaged over elements, clipped to
        :data:`INIT_SCALE_RANGE` and ``max_scale``. Where the prior cannot be
        drawn from, or its draws reach the edge of the support, the site's
        prototype value and the top of the range.
    """
    with torch.no_grad():
        try:
            draws = node["fn"].sample((PRIOR_DRAWS,))
        except NotImplementedError:
            draws = None
        if draws is not None:
            latent = transform.inv(model_value({**node, "value": draws}, outer))
            if torch.isfinite(latent).all():
                scale = float(latent.std(0).mean().clamp(INIT_SCALE_RANGE[0], max_scale))
                return latent.mean(0).mean(0), scale
    return initial_unconstrained(node, outer, transform).mean(0), max_scale


FAR_FROM_PRIOR = 5.0
"""How many of its prior's spreads (interquartile ranges / 1.35, in
unconstrained space) a global site's default start may lie from its prior's
median before the guide warns."""

FAR_FROM_PRIOR_CHECKED = 2**16
"""The largest global site (in unconstrained values) whose start is checked
against its prior: larger ones are network weights, whose 64 prior draws would
fill memory."""


def global_start(
    node: dict, outer: frozenset[str], transform: Transform, *, default: bool
) -> torch.Tensor:
    """A global site's initial unconstrained value, ``init_loc_fn``'s. With the
    default ``init_to_feasible`` (unconstrained zero), warns where that lies
    more than :data:`FAR_FROM_PRIOR` spreads from the prior's median: an
    informative prior far from zero (a mean of 10, a temperature of 100) takes
    many steps to reach, and the large gradients of those steps can stall Adam
    on a global scale for thousands more. The check's prior draws leave the
    random state as it was."""
    start = initial_unconstrained(node, outer, transform)
    if not default or start.numel() > FAR_FROM_PRIOR_CHECKED:
        return start
    try:
        with quietly():
            draws = transform.inv(model_value({**node, "value": node["fn"].sample((64,))}, outer))
    except NotImplementedError:
        return start
    if torch.isfinite(draws).all():
        low, median, high = draws.quantile(torch.tensor([0.25, 0.5, 0.75]), dim=0)
        distance = (start - median).abs() / ((high - low) / 1.35).clamp_min(1e-6)
        if float(distance.max()) > FAR_FROM_PRIOR:
            warn(
                f"Global site '{node['name']}' starts at unconstrained zero (init_to_feasible, "
                f"as AutoNormal), {float(distance.max()):.0f} of its prior's spreads from the "
                "prior's median: the first steps spend themselves getting there, and can stall "
                "the optimizer on other global sites. Pass init_loc_fn=init_to_median or "
                "init_to_mean (pyro.infer.autoguide.initialization) to start at the prior."
            )
    return start


def full_size_init(init: torch.Tensor, event_dim: int, site: LatentSite) -> torch.Tensor:
    """Repeats an initial value (with ``event_dim`` event dimensions) along the
    site's subsampled plates to their full size."""
    for frame in site.frames:
        full_size = frame.full_size or frame.size
        if full_size != frame.size:
            init = periodic_repeat(init, full_size, frame.dim - event_dim).contiguous()
    return init
