"""Per-site parameters of global sites: a Normal over the unconstrained value
(as Pyro's ``AutoNormal``), a point estimate (as ``AutoDelta``) or the prior's
own family with free parameters."""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch.distributions.transforms import Transform

from .heads import point_mass


class GlobalNormal(PyroModule):
    """Per-site Normal over a global site's unconstrained value, as Pyro's AutoNormal.

    With ``num_reads``, the site reads the noise of earlier global sites (see
    :mod:`pyro_amortized.upstream`), ``(value - loc) / scale`` of each, and its
    location moves linearly with it: a coefficient on a read noise is a
    covariance, so that the global sites read this way are jointly Normal, with
    the coefficients as the off-diagonal entries of a Cholesky factor (as
    Pyro's ``AutoMultivariateNormal``, site by site). The coefficients start at
    zero.

    :param init_loc: initial location (the full unconstrained value).
    :param init_scale: initial scale.
    :param event_dim: unconstrained event dimensions; parameters are subsampled
        along any subsampled plate the site sits in.
    :param num_reads: the number of noise values read (for a site outside plates).
    """

    num_reads = 0  # also for guides pickled before global sites read one another

    def __init__(
        self, init_loc: torch.Tensor, init_scale: float, event_dim: int, *, num_reads: int = 0
    ) -> None:
        super().__init__()
        self.event_dim = event_dim
        self.loc = PyroParam(init_loc, constraints.real, event_dim)
        self.scale = PyroParam(
            torch.full_like(init_loc, init_scale),
            constraints.softplus_positive,
            event_dim,
        )
        self.num_reads = num_reads
        if num_reads:
            self.coupling = PyroParam(init_loc.new_zeros(init_loc.numel(), num_reads))

    def forward(self, reads: torch.Tensor | None = None) -> dist.Distribution:
        """The site's Normal; given the noise ``reads`` of the sites it reads
        (shape ``(*batch, num_reads)``), the Normal given them."""
        loc = self.loc
        if reads is not None:
            shift = reads @ self.coupling.T
            loc = loc + shift.reshape(shift.shape[:-1] + loc.shape)
        return dist.Normal(loc, self.scale).to_event(self.event_dim)

    def marginal(self) -> dist.Distribution:
        """The site's Normal with the sites it reads integrated out: each
        coordinate's variance is its scale's square plus its coefficients'."""
        if not self.num_reads:
            return self.forward()
        spread = self.coupling.pow(2).sum(-1).reshape(self.loc.shape)
        return dist.Normal(self.loc, (self.scale.pow(2) + spread).sqrt()).to_event(self.event_dim)


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
        return point_mass(self.loc, self.event_dim)


PRIOR_FAMILY_PARAMETERS: dict[type, dict[str, constraints.Constraint]] = {}
"""The priors a global site of the ``"prior"`` family may have: per distribution
class, its parameters and their constraints (filled in below)."""

MIN_CONCENTRATION = 0.5
"""The smallest concentration of a ``"prior"``-family global site. Below about
0.3, float32 draws of a Gamma, Beta or Dirichlet underflow to exactly zero with
probability above 1e-12 per coordinate, where a prior of concentration below 1
has an infinite density (as Pyro's LDA example, whose guide's Dirichlet
concentrations are bounded below by 0.5)."""

_CONCENTRATION = constraints.greater_than(MIN_CONCENTRATION)
PRIOR_FAMILY_PARAMETERS.update(
    {
        dist.Dirichlet: {"concentration": _CONCENTRATION},
        dist.Gamma: {"concentration": _CONCENTRATION, "rate": constraints.positive},
        dist.Beta: {"concentration1": _CONCENTRATION, "concentration0": _CONCENTRATION},
    }
)


def prior_family(prior: dist.Distribution) -> tuple[dist.Distribution, int]:
    """The distribution of a global site's prior inside its ``Independent``
    wrappers, and the dimensions those wrappers reinterpret as events.

    :raises ValueError: if it is not one of :data:`PRIOR_FAMILY_PARAMETERS`.
    """
    reinterpreted = 0
    while isinstance(prior, dist.Independent):
        reinterpreted += prior.reinterpreted_batch_ndims
        prior = prior.base_dist
    if type(prior) not in PRIOR_FAMILY_PARAMETERS:
        names = ", ".join(kind.__name__ for kind in PRIOR_FAMILY_PARAMETERS)
        raise ValueError(
            f"The 'prior' family needs a prior among {names} (the families of conjugate "
            f"priors), but the site's prior is {type(prior).__name__}. Give this site "
            "the 'normal' family."
        )
    return prior, reinterpreted


class GlobalPriorFamily(PyroModule):
    """A global site's posterior in the family of its prior (Dirichlet, Gamma or
    Beta), with free parameters: the conjugate form, which fits the sparse
    posteriors of, for example, topic-word distributions under a Dirichlet prior
    with small concentrations, where a Normal over the unconstrained value has
    a KL floor of nats per coordinate.

    Parameters start at the prior's, concentrations raised to at least
    ``2 * MIN_CONCENTRATION`` (see :data:`MIN_CONCENTRATION`). The head returns,
    as the others do, a distribution over the unconstrained value: the family's
    image under the inverse of the site's bijection (the guide maps draws back,
    and its log density is then the family's).

    :param prior: the site's prior in the model.
    :param transform: the site's bijection from unconstrained space.
    :param full_size: maps a parameter (with its number of event dimensions)
        from the prior's batch shape to the site's full batch shape, along
        subsampled plates.
    """

    def __init__(
        self,
        prior: dist.Distribution,
        transform: Transform,
        full_size: Callable[[torch.Tensor, int], torch.Tensor],
    ) -> None:
        super().__init__()
        family, self.reinterpreted = prior_family(prior)
        self.family = type(family)
        self.transform = transform
        self.parameter_names = tuple(PRIOR_FAMILY_PARAMETERS[self.family])
        event_dim = self.reinterpreted + family.event_dim
        for name, constraint in PRIOR_FAMILY_PARAMETERS[self.family].items():
            init = getattr(family, name).detach().expand(family.batch_shape + family.event_shape)
            if constraint is _CONCENTRATION:
                init = init.clamp(min=2 * MIN_CONCENTRATION)
            init = full_size(init, event_dim).clone()
            setattr(self, name, PyroParam(init, constraint, event_dim))

    def forward(self) -> dist.Distribution:
        family = self.family(**{name: getattr(self, name) for name in self.parameter_names})
        if self.reinterpreted:
            family = family.to_event(self.reinterpreted)
        return dist.TransformedDistribution(family, [self.transform.inv])
