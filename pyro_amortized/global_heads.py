"""Per-site parameters of global sites: a Normal over the unconstrained value
(as Pyro's ``AutoNormal``) or a point estimate (as ``AutoDelta``)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam


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
