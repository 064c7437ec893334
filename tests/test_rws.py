"""Reweighted wake-sleep per data point: the local posterior of a conjugate
model, a global site with it, a discrete local site trained with no
reparameterization, and bad input."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEED
from pyro.infer import SVI, Trace_ELBO

from pyro_amortized import AutoAmortizedGuide, LocalIWAE, LocalRWS
from pyro_amortized.simulation import simulate

NOISE = 0.5
SHRINK = 1 / (1 + NOISE**2)  # z | x, mu ~ N(mu + SHRINK (x - mu), SHRINK NOISE^2)


def conjugate_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    with pyro.plate("data", x.shape[0], subsample_size=min(128, x.shape[0])):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, NOISE), obs=pyro.subsample(x, event_dim=0))


def mixture_model(x):
    with pyro.plate("data", x.shape[0], subsample_size=min(128, x.shape[0])):
        label = pyro.sample("label", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(4.0 * label - 2.0, 1.0), obs=pyro.subsample(x, event_dim=0))


def _train(model, guide, x, steps, lr=0.01, sleep=0.0):
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / steps)})
    svi = SVI(model, guide, optim, LocalRWS(num_particles=10, sleep=sleep))
    return [svi.step(x) for _ in range(steps)]


def test_the_local_posterior_and_the_global_site_of_a_conjugate_model():
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    x = 1.0 + 1.3 * torch.randn(1000)
    guide = AutoAmortizedGuide(conjugate_model, init_scale=1.0)
    losses = _train(conjugate_model, guide, x, steps=1500)
    assert all(torch.isfinite(torch.tensor(losses)))
    mu = guide.median(x)["mu"]
    q = guide.encode(x)["z"]
    exact_loc = mu + SHRINK * (x - mu)
    print(
        f"mu {mu.item():.3f} (data mean {x.mean():.3f}), loc error "
        f"{(q.mean - exact_loc).abs().mean():.4f}, scale {q.stddev.mean():.4f} "
        f"(exact {SHRINK**0.5 * NOISE:.4f})"
    )
    assert abs(mu.item() - x.mean().item()) < 0.1
    assert (q.mean - exact_loc).abs().mean() < 0.05
    assert q.stddev.mean().item() == pytest.approx(SHRINK**0.5 * NOISE, rel=0.1)


def local_model(x):
    with pyro.plate("data", x.shape[0], subsample_size=min(128, x.shape[0])):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, NOISE), obs=pyro.subsample(x, event_dim=0))


def test_the_sleep_phase_alone_fits_the_exact_posterior():
    # Amortized posterior estimation: q(z | x) fitted to the model's simulations.
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    x = (1 + NOISE**2) ** 0.5 * torch.randn(1000)  # as the model simulates it
    guide = AutoAmortizedGuide(local_model, init_scale=1.0)
    _train(local_model, guide, x, steps=1500, sleep=1.0)
    q = guide.encode(x)["z"]
    error = (q.mean - SHRINK * x).abs().mean()
    print(f"loc error {error:.4f}, scale {q.stddev.mean():.4f} (exact {SHRINK**0.5 * NOISE:.4f})")
    assert error < 0.08
    assert q.stddev.mean().item() == pytest.approx(SHRINK**0.5 * NOISE, rel=0.1)


def test_a_discrete_local_site_trains_without_reparameterization():
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    labels = torch.rand(2000) < 0.5
    x = 4.0 * labels - 2.0 + torch.randn(2000)
    guide = AutoAmortizedGuide(mixture_model)
    _train(mixture_model, guide, x, steps=500, lr=0.02)
    probs = guide.encode(x)["label"].probs
    exact = torch.sigmoid(8.0 * x)  # the posterior's log odds are 8 x
    accuracy = ((probs > 0.5) == labels).float().mean().item()
    print(f"accuracy {accuracy:.3f}, probability error {(probs - exact).abs().mean():.4f}")
    assert accuracy > 0.95
    assert (probs - exact).abs().mean() < 0.05


def test_the_loss_is_minus_the_local_bound():
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    x = torch.randn(100)
    guide = AutoAmortizedGuide(conjugate_model, init_scale=1.0)
    guide(x)
    rws = [LocalRWS(num_particles=20).loss(conjugate_model, guide, x) for _ in range(200)]
    iwae = [LocalIWAE(num_particles=20).loss(conjugate_model, guide, x) for _ in range(200)]
    rws, iwae = torch.tensor(rws), torch.tensor(iwae)
    assert abs(rws.mean() - iwae.mean()) < 4 * (rws.std() + iwae.std()) / 200**0.5


def test_the_sleep_phase_reads_the_simulated_rows():
    pyro.set_rng_seed(SEED)
    x = torch.randn(300)
    guide = AutoAmortizedGuide(conjugate_model)
    guide(x)
    simulation = simulate(conjugate_model, guide, "data", (x,), {}, {"mu": torch.tensor(5.0)})
    assert simulation.trace.nodes["mu"]["value"].item() == 5.0  # held, not drawn again
    rows = simulation.trace.nodes["data"]["value"]
    (simulated,) = simulation.args
    assert torch.equal(simulated[rows], simulation.trace.nodes["x"]["value"])
    others = torch.ones(300, dtype=torch.bool)
    others[rows] = False
    assert torch.equal(simulated[others], x[others])  # the other rows as they were


def transformed_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=2.0 * x)


def test_a_site_that_observes_no_argument_is_refused_by_the_sleep_phase():
    x = torch.randn(20)
    guide = AutoAmortizedGuide(transformed_model)
    guide(x)
    with pytest.raises(ValueError, match="no argument that feeds the encoder of plate 'data'"):
        LocalRWS(sleep=0.5).loss(transformed_model, guide, x)


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        LocalRWS(num_particles=1)
    with pytest.raises(ValueError, match="sleep must be a number from 0 to 1"):
        LocalRWS(sleep=1.5)
    guide = pyro.infer.autoguide.AutoNormal(conjugate_model)
    with pytest.raises(ValueError, match="LocalRWS needs an amortized guide"):
        LocalRWS().loss(conjugate_model, guide, torch.randn(10))


def test_one_particle_of_the_per_point_bound_is_the_elbo_on_a_subsampled_plate():
    # Pyro scales a subsampled plate's terms to its full size; each data point's
    # weight is taken at its own size, and the scale applied once to the sum.
    x = torch.randn(1000)
    guide = AutoAmortizedGuide(local_model, init_scale=1.0)
    guide(x)
    elbo = torch.tensor([Trace_ELBO().loss(local_model, guide, x) for _ in range(300)])
    iwae = torch.tensor(
        [LocalIWAE(num_particles=1).loss(local_model, guide, x) for _ in range(300)]
    )
    assert abs(elbo.mean() - iwae.mean()) < 4 * (elbo.std() + iwae.std()) / 300**0.5
