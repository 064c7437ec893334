"""One site of the guide, from what its head or parameters propose to its value.

A head proposes a distribution over the site's unconstrained value; the site's
bijection maps a draw to the support, and the draw's log density carries the
log-det-Jacobian (:class:`SiteSampler`). Point estimates are sampled in
constrained space, as Pyro's ``AutoDelta``; discrete sites are enumerated or
scored. At test time the same bijections give medians and quantiles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost
from torch.distributions import ComposeTransform, Transform, TransformedDistribution
from torch.distributions.kl import register_kl
from torch.distributions.transforms import IndependentTransform

from .discrete_heads import SATURATED, is_saturated
from .encoders import ADAM_STEPS, all_finite
from .heads import point_mass
from .latent_sites import LatentSite
from .quantiles import discrete_quantiles, unconstrained_quantiles
from .transforms import guard_saturation
from .user_warnings import warn


class TransformedDraw(dist.Delta):
    """A draw mapped to a site's support: a Delta whose ``log_density`` is the
    log-det-Jacobian of the inverse map, so that, with the draw's auxiliary
    unconstrained site, the site scores as its proposal pushed through the
    bijection.

    Its KL divergence to a prior (which ``TraceMeanField_ELBO`` takes) keeps
    that term; Pyro's KL divergence of a plain Delta drops it.

    Usage::

        TransformedDraw(torch.tensor(2.0), log_density=torch.tensor(-0.7))
    """


@register_kl(TransformedDraw, dist.Distribution)
def _kl_transformed_draw(p: TransformedDraw, q: dist.Distribution) -> torch.Tensor:
    return p.log_density - q.log_prob(p.v)


def is_identity(transform: Transform) -> bool:
    """Whether a site's bijection is the identity (a real support)."""
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, ComposeTransform) and not transform.parts


class SiteSampler:
    """Samples the guide's sites from their proposals, and reads them back.

    :param transforms: each continuous site's bijection from unconstrained space.
    :param saturation_bounds: where each non-identity bijection saturates (see
        :func:`~pyro_amortized.transforms.saturation_bound`): point estimates
        are kept inside.
    :param jacobian: whether a draw's log density carries the log-det-Jacobian
        (always, but for tests of a known wrong guide).
    :param enumerate_discrete: the guide's ``enumerate_discrete`` option.
    """

    def __init__(
        self,
        transforms: Mapping[str, Transform],
        saturation_bounds: Mapping[str, float | None],
        *,
        jacobian: bool,
        enumerate_discrete: str | None,
    ) -> None:
        self.transforms = dict(transforms)
        self.saturation_bounds = dict(saturation_bounds)
        self.jacobian = jacobian
        self.enumerate_discrete = enumerate_discrete
        self.saturation_warned: set[str] = set()  # discrete sites warned about once

    def sample(
        self, site: LatentSite, unconstrained: dist.Distribution
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples a site: its value, and the value heads downstream read, the
        unconstrained sample itself (never ``transform.inv(transform(latent))``,
        which overflows for exp-like bijections), or the unconstrained image of
        a value the guide was conditioned or replayed on."""
        if site.discrete is not None:
            infer = self.discrete_infer(site)
            if "enumerate" not in infer and torch.is_grad_enabled():
                self._warn_if_saturated(site.name, unconstrained)
            value = pyro.sample(site.name, unconstrained, infer=infer)
            return value, value
        transform = self.transforms[site.name]
        if is_identity(transform):  # real support: no auxiliary site, no Jacobian
            value = pyro.sample(site.name, unconstrained)
            return value, value
        if isinstance(unconstrained, dist.Delta):  # a MAP estimate: no density to carry
            return self._point_estimate(site, unconstrained.v, transform)
        latent = pyro.sample(
            site.name + "_unconstrained", unconstrained, infer={"is_auxiliary": True}
        )
        value = transform(latent)
        if not all_finite(value):
            raise ValueError(
                f"The guide drew non-finite values of site '{site.name}': draws of its "
                "unconstrained proposal overflow the bijection to its support, so the "
                "head's parameters have diverged (look for a huge or NaN loss in earlier "
                f"steps). Lower the learning rate: {ADAM_STEPS}"
            )
        log_density = 0.0
        if self.jacobian and poutine.get_mask() is not False:
            log_density = transform.inv.log_abs_det_jacobian(value, latent)
            log_density = sum_rightmost(
                log_density, log_density.dim() - value.dim() + site.event_dim
            )
        delta = TransformedDraw(value, log_density=log_density, event_dim=site.event_dim)
        return _sample_value(site, delta, value, latent, transform)

    def _point_estimate(
        self, site: LatentSite, latent: torch.Tensor, transform: Transform
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A point estimate, in constrained space as Pyro's ``AutoDelta``: the
        value where the bijection still responds, mapped to the support."""
        bound = self.saturation_bounds.get(site.name)
        latent = latent if bound is None else guard_saturation(latent, bound)
        value = transform(latent)
        delta = point_mass(value, site.event_dim)
        return _sample_value(site, delta, value, latent, transform)

    def _warn_if_saturated(self, name: str, distribution: dist.Distribution) -> None:
        if name in self.saturation_warned or not is_saturated(distribution):
            return
        self.saturation_warned.add(name)
        warn(
            f"The head of the discrete site {name!r} proposes the same value with "
            f"probability above 1 - {SATURATED:g} for every row of this batch: its "
            "score-function gradient has vanished, so it cannot move off that value. "
            "Unless the posterior is that sure, standardize the encoder's inputs "
            "(standardize_inputs=True: on inputs far from zero and unit scale, a large "
            "step throws the logits far), train with a smaller learning rate, or sum the "
            "site out (enumerate_discrete='parallel' with TraceEnum_ELBO).",
        )

    def discrete_infer(self, site: LatentSite) -> dict:
        """How ELBOs treat a discrete local site: enumerated by TraceEnum_ELBO when
        ``enumerate_discrete`` is set and the site is one categorical choice (Pyro
        does not enumerate cartesian products of event dimensions), its values
        expanded over the rows (``config_enumerate(expand=True)``: a model may
        concatenate them with a row's tensors), else a score-function term with
        Pyro's decaying-average baseline."""
        single_choice = site.event_dim == (1 if site.discrete == "one_hot" else 0)
        if self.enumerate_discrete is not None and single_choice:
            return {"enumerate": self.enumerate_discrete, "expand": True}
        return {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}

    def constrained(self, unconstrained: dist.Distribution, site: LatentSite) -> dist.Distribution:
        """A proposal over the site's support."""
        if site.discrete is not None:
            return unconstrained
        transform = self.transforms[site.name]
        if isinstance(unconstrained, dist.Delta):
            return point_mass(transform(unconstrained.v), site.event_dim)
        if is_identity(transform):
            return unconstrained  # real support: the head's distribution as it is
        return TransformedDistribution(unconstrained, [transform])

    def unconstrain(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """A site's value as heads read it."""
        transform = self.transforms.get(name)  # none for a discrete site
        return value if transform is None else transform.inv(value)

    def held(
        self,
        values: Mapping[str, torch.Tensor],
        unconstrained: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Values to condition the guide on, for its density at ``values``: a
        site drawn through an auxiliary unconstrained site is held there, at
        its ``unconstrained`` value where given (held at its constrained value,
        the site's Delta would differ from it by rounding and its density be
        zero); the others as they are."""
        held = {}
        for name, value in values.items():
            transform = self.transforms.get(name)
            if transform is None or is_identity(transform):
                held[name] = value
            elif unconstrained is not None and name in unconstrained:
                held[name + "_unconstrained"] = unconstrained[name]
            else:
                held[name + "_unconstrained"] = transform.inv(value)
        return held

    def median_read(self, name: str, distribution: dist.Distribution) -> torch.Tensor:
        """A site's median as a head reads it: in unconstrained space."""
        if name not in self.transforms:  # a discrete site
            return discrete_quantiles(distribution, [0.5])[0]
        return unconstrained_quantiles(distribution, [0.5])[0]

    def quantiles(
        self, name: str, distribution: dist.Distribution, levels: Sequence[float] | torch.Tensor
    ) -> torch.Tensor:
        """A site's coordinate-wise quantiles on its support."""
        if name not in self.transforms:  # a discrete site
            return discrete_quantiles(distribution, levels)
        return self.transforms[name](unconstrained_quantiles(distribution, levels))


def _sample_value(
    site: LatentSite,
    delta: dist.Delta,
    value: torch.Tensor,
    latent: torch.Tensor,
    transform: Transform,
) -> tuple[torch.Tensor, torch.Tensor]:
    sampled = pyro.sample(site.name, delta)
    # The Delta returns a view of ``value``, unless conditioned or replayed.
    own = sampled.shape == value.shape and sampled.data_ptr() == value.data_ptr()
    return sampled, latent if own else transform.inv(sampled)
