"""The path-derivative gradient of the ELBO ("sticking the landing"; Roeder, Wu
and Duvenaud, 2017) for the guide's Gaussian local heads.

The reparameterized gradient of the ELBO with respect to the guide's parameters
``phi`` is the sum of two parts: the path through the sampled value
``z = z(eps, phi)``, and the score ``grad_phi log q(z | x; phi)`` at ``z``
held fixed. The score's expectation under ``q`` is zero, so dropping it leaves
the gradient unbiased; what it removes is variance that does not vanish as
``q`` reaches the posterior. Where the posterior is in the guide's family, the
path derivative's variance goes to zero at the optimum, and the guide settles
on it instead of jittering about it.

:class:`PathDerivativeELBO` is ``Trace_ELBO`` with that gradient for each local
site whose head is Gaussian (``NormalHead``, ``MultivariateNormalHead``,
``LowRankMultivariateNormalHead``): the site is sampled from its head as usual,
and its density is the head's evaluated with the guide's parameters detached
and the values it reads (upstream sites, globals) attached. The other sites
(flows, discrete, global, point estimates) keep the usual estimator. The loss's
value is the ELBO, unchanged.

Only for the ELBO: importance-weighted objectives (``LocalIWAE``, Pyro's
``RenyiELBO``) and wake-sleep updates (``LocalRWS``, ``LocalNPE``) need the
score, so the detached density is used inside :class:`PathDerivativeELBO`'s
calls only, never by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from torch import nn
from torch.distributions import constraints
from torch.func import functional_call

from .switches import switched


class PathDerivative(dist.TorchDistribution):
    """Samples as ``sampler`` and scores by ``density``: the same distribution
    with its parameters detached, whose gradient is then only the path through
    the scored value.

    :param sampler: the distribution that draws the values.
    :param density: the same distribution, parameters detached.

    Usage::

        loc = torch.zeros(3, requires_grad=True)
        q = PathDerivative(dist.Normal(loc, 1.0), dist.Normal(loc.detach(), 1.0))
        q.log_prob(q.rsample()).sum().backward()   # the path's gradient only
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, sampler: dist.Distribution, density: dist.Distribution) -> None:
        self.sampler = sampler
        self.density = density
        super().__init__(sampler.batch_shape, sampler.event_shape, validate_args=False)

    @constraints.dependent_property
    def support(self) -> constraints.Constraint:
        return self.sampler.support

    @property
    def mean(self) -> torch.Tensor:
        return self.sampler.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.sampler.variance

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> PathDerivative:
        return PathDerivative(self.sampler.expand(batch_shape), self.density.expand(batch_shape))

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        return self.sampler.rsample(sample_shape)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        return self.sampler.sample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.density.log_prob(value)


def detached_call(head: nn.Module, inputs: torch.Tensor) -> dist.Distribution:
    """``head(inputs)`` with the head's parameters detached (gradients still
    flow through ``inputs``)."""
    parameters = {name: value.detach() for name, value in head.named_parameters()}
    return functional_call(head, parameters, (inputs,))


class PathDerivativeELBO(Trace_ELBO):
    """``Trace_ELBO`` with the path-derivative gradient for the Gaussian local
    heads of the amortized guides it trains (see the module's description):
    unbiased, and with less variance near the optimum, so a guide whose family
    holds the posterior (correlated Gaussian heads on a linear-Gaussian model)
    converges closer to it in the same steps. Takes ``Trace_ELBO``'s options.

    Usage::

        guide = AutoAmortizedMultivariateNormal(model)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}),
                             PathDerivativeELBO())

    :raises ValueError: when the guide holds no amortized guide of this package.
    """

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        with path_derivatives(guide):
            return super().loss(model, guide, *args, **kwargs)

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        with path_derivatives(guide):
            return super().differentiable_loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        with path_derivatives(guide):
            return super().loss_and_grads(model, guide, *args, **kwargs)


@contextmanager
def path_derivatives(guide: Callable) -> Iterator[None]:
    """Within the block, the modules of ``guide`` (itself, or those of a guide
    list) that have a ``path_derivative`` attribute (this package's amortized
    guides, or a user's guide that honours it) score their Gaussian local sites
    by :class:`PathDerivative`."""
    guides = [
        module
        for module in (guide.modules() if isinstance(guide, nn.Module) else ())
        if hasattr(module, "path_derivative")
    ]
    if not guides:
        raise ValueError(
            "PathDerivativeELBO trains the local heads of this package's amortized guides, "
            f"but {type(guide).__name__} holds none: use pyro.infer.Trace_ELBO for other guides."
        )
    with switched(guides, "path_derivative", True):
        yield
