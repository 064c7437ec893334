"""Correlated local posteriors: the multivariate families reach the exact
posterior of a linear-Gaussian model, the diagonal family its analytic floor."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import train
from torch.distributions import kl_divergence

from pyro_amortized import (
    AutoAmortizedGuide,
    AutoAmortizedLowRankMultivariateNormal,
    AutoAmortizedMultivariateNormal,
)

K, D, NOISE = 3, 6, 0.5
LOADINGS = torch.randn(D, K, generator=torch.Generator().manual_seed(7))
LOADINGS[:, 1] += 0.9 * LOADINGS[:, 0]  # correlated columns: a correlated posterior
PRECISION = torch.eye(K) + LOADINGS.T @ LOADINGS / NOISE**2
COVARIANCE = torch.linalg.inv(PRECISION)


def linear_gaussian(x):
    with pyro.plate("data", x.shape[0], subsample_size=min(256, x.shape[0])):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
        pyro.sample(
            "x", dist.Normal(z @ LOADINGS.T, NOISE).to_event(1), obs=pyro.subsample(x, event_dim=1)
        )


def simulate(num_points):
    return torch.randn(num_points, K) @ LOADINGS.T + NOISE * torch.randn(num_points, D)


def exact_posterior(x):
    loc = (x @ LOADINGS / NOISE**2) @ COVARIANCE
    return dist.MultivariateNormal(loc, covariance_matrix=COVARIANCE)


def diagonal_floor():
    """min over diagonal Gaussians q of KL(q || p): q's precisions are diag(Lambda)."""
    return 0.5 * (PRECISION.diagonal().log().sum() - torch.logdet(PRECISION)).item()


@pytest.mark.parametrize(
    "guide_class, options",
    [
        (AutoAmortizedMultivariateNormal, {}),
        (AutoAmortizedLowRankMultivariateNormal, {"rank": 2}),
        (AutoAmortizedGuide, {}),
    ],
    ids=["multivariate", "lowrank", "diagonal"],
)
def test_kl_to_a_correlated_exact_posterior(guide_class, options):
    guide = guide_class(linear_gaussian, hidden_dims=(), **options)
    train(linear_gaussian, guide, simulate(2000), steps=3000, lr=0.01, lrd=0.999)

    held_out = simulate(1000)
    q = guide.encode(held_out)["z"]
    q = dist.MultivariateNormal(q.mean, covariance_matrix=_covariance(q))
    kl = kl_divergence(q, exact_posterior(held_out)).mean().item()
    floor = diagonal_floor()
    assert floor > 0.3  # the model is correlated enough to tell the families apart
    if guide_class is AutoAmortizedGuide:
        assert floor - 0.01 <= kl <= 1.1 * floor
    else:
        assert kl <= 0.02


def _covariance(q):
    if isinstance(q, dist.Independent):
        return torch.diag_embed(q.base_dist.scale**2)
    return q.covariance_matrix
