"""Amortized posterior estimation (LocalNPE): the exact posterior of a
conjugate model from fresh simulations and from a fixed budget of them, the
budget drawn once, global values held, and bad input."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI

from pyro_amortized import AutoAmortizedGuide, LocalNPE

NOISE = 0.5
SHRINK = 1 / (1 + NOISE**2)  # z | x ~ N(SHRINK x, SHRINK NOISE^2)


def simulator(x):
    with pyro.plate("data", x.shape[0], subsample_size=min(128, x.shape[0])):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, NOISE), obs=pyro.subsample(x, event_dim=0))


def _kl_to_exact(guide):
    x = torch.linspace(-2.0, 2.0, 81)  # the simulated x has scale 1.12
    q = guide.encode(x)["z"]
    exact = dist.Normal(SHRINK * x, SHRINK**0.5 * NOISE)
    kl = torch.distributions.kl_divergence(exact, dist.Normal(q.mean, q.stddev)).mean()
    print(f"KL {kl:.4f}, largest loc error {(q.mean - exact.loc).abs().max():.4f}")
    return kl.item()


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "budget"])
def test_the_local_heads_fit_the_exact_posterior_from_simulations(reuse):
    guide = AutoAmortizedGuide(simulator, hidden_dims=(32,))
    svi = SVI(simulator, guide, pyro.optim.Adam({"lr": 3e-3}), LocalNPE(reuse_simulations=reuse))
    data = torch.zeros(2000)  # the layout only: the rows are simulated
    for _ in range(800):
        svi.step(data)
    # 800 steps at seeds 0-2: KL 0.001-0.003 fresh, 0.004-0.007 from 2,000 simulations
    assert _kl_to_exact(guide) < 0.03


def test_a_budget_of_simulations_is_drawn_once_with_the_global_values_held():
    runs = []

    def hierarchical(x):
        runs.append(1)
        mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
        with pyro.plate("data", x.shape[0], subsample_size=64):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, NOISE), obs=pyro.subsample(x, event_dim=0))

    guide = AutoAmortizedGuide(hierarchical)
    loss = LocalNPE(reuse_simulations=True)
    svi = SVI(hierarchical, guide, pyro.optim.Adam({"lr": 1e-3}), loss)
    data = torch.zeros(300)  # five minibatches, the last overlapping the fourth
    svi.step(data)
    runs.clear()
    for _ in range(5):
        svi.step(data)
    assert not runs  # the later steps reuse the simulations
    bank = loss.simulations
    (simulated,) = bank.args
    _, z = bank.local_values["z"]
    mu = bank.global_values["mu"]
    assert z.shape == (300,) and bank.subsample_size == 64
    # one mu for every row: the rows' z about mu, each x about its z
    assert abs((z - mu).mean().item()) < 4 / 300**0.5
    assert (simulated - z).std().item() == pytest.approx(NOISE, rel=0.2)


def test_bad_input():
    with pytest.raises(ValueError, match="reuse_simulations"):
        LocalNPE(reuse_simulations=1)


def rate_simulator(x):
    with pyro.plate("data", x.shape[0], subsample_size=min(128, x.shape[0])):
        rate = pyro.sample("rate", dist.Gamma(4.0, 1.0))
        pyro.sample("x", dist.Poisson(rate), obs=pyro.subsample(x, event_dim=0))


def test_a_positive_local_site_is_fitted_through_its_unconstrained_value():
    # The guide draws the rate through an auxiliary site on the real line; the
    # simulated rates are held there. The exact posterior is Gamma(4 + x, 2);
    # the forward KL fits the Normal over log(rate) to its moments:
    # digamma(4 + x) - log 2 and trigamma(4 + x).
    guide = AutoAmortizedGuide(rate_simulator, hidden_dims=(32,))
    optim = pyro.optim.ClippedAdam({"lr": 3e-3, "lrd": 0.1 ** (1 / 1500)})
    svi = SVI(rate_simulator, guide, optim, LocalNPE())
    for _ in range(1500):
        svi.step(torch.zeros(2000))
    x = torch.arange(0.0, 7.0)  # the simulated counts are 4 on average
    log_rate = guide.encode(x)["rate"].sample((4000,)).log()
    shape = 4.0 + x
    loc_error = (log_rate.mean(0) - (torch.digamma(shape) - math.log(2.0))).abs().max().item()
    sd_error = (log_rate.std(0) / torch.polygamma(1, shape).sqrt() - 1).abs().max().item()
    print(
        f"largest errors: means of log(rate) {loc_error:.3f}, their sds {sd_error:.3f} (relative)"
    )
    assert loc_error < 0.05
    assert sd_error < 0.12
