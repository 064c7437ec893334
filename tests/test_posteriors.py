"""The amortized guide against exact posteriors of conjugate models."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import kl_diag_normal, train

from pyro_amortized import AutoAmortizedGuide

# ----------------------------------------------------------------- linear Gaussian

K, D, NOISE = 2, 4, 0.5
_Q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(3)))
LOADINGS = _Q[:, :K] * torch.tensor([2.0, 0.7])  # orthogonal columns: diagonal posterior


def linear_gaussian(x):
    with pyro.plate("data", x.shape[0], subsample_size=min(256, x.shape[0])):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
        pyro.sample(
            "x",
            dist.Normal(z @ LOADINGS.T, NOISE).to_event(1),
            obs=pyro.subsample(x, event_dim=1),
        )


def simulate_linear_gaussian(num_points):
    z = torch.randn(num_points, K)
    return z @ LOADINGS.T + NOISE * torch.randn(num_points, D)


def exact_linear_gaussian(x):
    precision = 1.0 + (LOADINGS**2).sum(0) / NOISE**2
    variance = 1.0 / precision
    return variance * (x @ LOADINGS) / NOISE**2, variance.sqrt().expand(x.shape[0], K)


@pytest.mark.parametrize("hidden_dims", [(), (256,)], ids=["linear", "mlp"])
def test_linear_gaussian_kl_to_exact_posterior(hidden_dims):
    guide = AutoAmortizedGuide(linear_gaussian, hidden_dims=hidden_dims)
    train(
        linear_gaussian,
        guide,
        simulate_linear_gaussian(2000),
        steps=3000,
        lr=0.01,
        lrd=0.999,
    )

    held_out = simulate_linear_gaussian(1000)
    q = guide.encode(held_out)["z"]
    loc, scale = exact_linear_gaussian(held_out)
    kl = kl_diag_normal(q.mean, q.stddev, loc, scale)
    assert kl.mean() <= 0.02, kl.mean()


# ------------------------------------------------------------------ Gamma-Poisson

RATE_PRIOR = (2.0, 2.0)
NUM_COUNTS = 3


def gamma_poisson(counts):
    with pyro.plate("data", counts.shape[0], subsample_size=200):
        rate = pyro.sample("rate", dist.Gamma(*RATE_PRIOR))
        rates = rate.unsqueeze(-1).expand(rate.shape + (NUM_COUNTS,))
        pyro.sample(
            "counts",
            dist.Poisson(rates).to_event(1),
            obs=pyro.subsample(counts, event_dim=1),
        )


def simulate_gamma_poisson(num_points):
    rate = dist.Gamma(*RATE_PRIOR).sample([num_points])
    return dist.Poisson(rate.unsqueeze(-1).expand(num_points, NUM_COUNTS)).sample()


class _WithoutJacobian(AutoAmortizedGuide):
    """The same guide with the log-det-Jacobian dropped: a known wrong guide."""

    _jacobian = False


@pytest.mark.parametrize("guide_class", [AutoAmortizedGuide, _WithoutJacobian])
def test_gamma_poisson_posterior_mean(guide_class):
    guide = guide_class(gamma_poisson, hidden_dims=(64,))
    train(gamma_poisson, guide, simulate_gamma_poisson(1000), steps=1500, lrd=0.999)

    held_out = simulate_gamma_poisson(500)
    q = guide.encode(held_out)["rate"].base_dist  # Normal over log rate
    mean = (q.loc + q.scale**2 / 2).exp()
    exact = (RATE_PRIOR[0] + held_out.sum(-1)) / (RATE_PRIOR[1] + NUM_COUNTS)
    relative_error = ((mean - exact) / exact).abs().mean()
    # The Gaussian in log space that maximizes the ELBO has exactly the
    # posterior mean, so only amortization and optimization error remain.
    # Measured: 0.024 with the Jacobian, 0.26 without.
    if guide_class is AutoAmortizedGuide:
        assert relative_error <= 0.04
    else:
        assert relative_error > 0.15


# ----------------------------------------------------------- Dirichlet-Multinomial

CONCENTRATION = torch.tensor([1.0, 2.0, 1.5])
TOTAL_COUNT = 20


def dirichlet_multinomial(counts):
    with pyro.plate("data", counts.shape[0], subsample_size=200):
        proportions = pyro.sample("proportions", dist.Dirichlet(CONCENTRATION))
        pyro.sample(
            "counts",
            dist.Multinomial(TOTAL_COUNT, proportions),
            obs=pyro.subsample(counts, event_dim=1),
        )


def simulate_dirichlet_multinomial(num_points):
    proportions = dist.Dirichlet(CONCENTRATION).sample([num_points])
    return dist.Multinomial(TOTAL_COUNT, proportions).sample()


@pytest.mark.parametrize("guide_class", [AutoAmortizedGuide, _WithoutJacobian])
def test_dirichlet_multinomial_posterior_mean(guide_class):
    guide = guide_class(dirichlet_multinomial, hidden_dims=(64,), init_scale=0.1)
    train(
        dirichlet_multinomial,
        guide,
        simulate_dirichlet_multinomial(1000),
        steps=1500,
        lrd=0.999,
    )

    held_out = simulate_dirichlet_multinomial(500)
    mean = guide.encode(held_out)["proportions"].sample([2000]).mean(0)
    exact = (CONCENTRATION + held_out) / (CONCENTRATION.sum() + TOTAL_COUNT)
    error = (mean - exact).abs().max(-1).values.mean()
    # The logistic-normal family's mean is close to, not exactly, the Dirichlet
    # mean: the tolerance covers that and the amortization error (0.0098
    # measured); dropping the stick-breaking Jacobian moves it to 0.036.
    if guide_class is AutoAmortizedGuide:
        assert error <= 0.015
    else:
        assert error > 0.025
