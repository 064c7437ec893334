"""Shared helpers for the tests: training loops and closed-form divergences."""

import os

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_amortized import (
    AutoAmortizedDelta,
    AutoAmortizedGuide,
    AutoAmortizedLowRankMultivariateNormal,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormalizingFlow,
)

FAMILIES = [
    AutoAmortizedGuide,
    AutoAmortizedDelta,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedLowRankMultivariateNormal,
    AutoAmortizedNormalizingFlow,
]
"""Every guide family, for tests parametrized over them."""

SEED = int(os.environ.get("PYRO_AMORTIZED_TEST_SEED", "0"))
"""Base of every seed the tests train or sample with: run the suite with
``PYRO_AMORTIZED_TEST_SEED=1`` (or any integer) to check that no test depends on
a lucky seed."""


def train(model, guide, *args, steps=1000, lr=0.01, lrd=1.0, elbo=None, **kwargs):
    """Runs SVI with ClippedAdam and returns the list of losses."""
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": lrd})
    svi = SVI(model, guide, optim, elbo or Trace_ELBO())
    return [svi.step(*args, **kwargs) for _ in range(steps)]


def kl_diag_normal(loc_q, scale_q, loc_p, scale_p):
    """KL(q || p) between diagonal Normals, summed over the last dimension."""
    var_ratio = (scale_q / scale_p) ** 2
    mahalanobis = ((loc_q - loc_p) / scale_p) ** 2
    return 0.5 * (var_ratio + mahalanobis - 1 - var_ratio.log()).sum(-1)


def decrease(losses, window=100):
    """Mean loss of the last window minus mean loss of the first window."""
    losses = torch.tensor(losses)
    return (losses[-window:].mean() - losses[:window].mean()).item()
