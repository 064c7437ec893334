"""Sites observed in some calls and latent in others: the semi-supervised
pattern ``obs=ys`` with ``ys=None`` for unlabelled batches."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEED, train
from pyro import poutine
from pyro.contrib.cevae import TraceCausalEffect_ELBO
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO

from pyro_amortized import AutoAmortizedGuide

SHIFT, NOISE = 2.0, 0.5


def semi_supervised(xs, ys=None):
    """z ~ N(0, 1), a coin y (observed where labelled), x ~ N(z + 2 y, 0.5):
    given x and y, z ~ N(0.8 (x - 2 y), 0.2)."""
    with pyro.plate("data", xs.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        y = pyro.sample("y", dist.Bernoulli(0.5), obs=ys)
        pyro.sample("x", dist.Normal(z + SHIFT * y, NOISE), obs=xs)


def simulate(num_rows, seed):
    generator = torch.Generator().manual_seed(seed)
    y = (torch.rand(num_rows, generator=generator) < 0.5).float()
    z = torch.randn(num_rows, generator=generator)
    return z + SHIFT * y + NOISE * torch.randn(num_rows, generator=generator), y


def exact_probability_of_one(x):
    spread = (1 + NOISE**2) ** 0.5
    one, zero = (dist.Normal(SHIFT * y, spread).log_prob(x) for y in (1.0, 0.0))
    return torch.sigmoid(one - zero)


@pytest.mark.parametrize("first", ["labelled", "unlabelled"])
def test_the_first_call_of_either_kind_reads_the_site_as_sometimes_observed(first):
    xs, ys = simulate(10, seed=0)
    guide = AutoAmortizedGuide(semi_supervised, enumerate_discrete="parallel")
    guide(xs, ys) if first == "labelled" else guide(xs)
    assert set(guide.local_sites) == {"y", "z"}
    assert guide.data_plates == {"data": ("xs",)}  # ys is missing from some calls
    assert guide.upstream_sites == {"z": ("y",)}  # q(y | x) q(z | x, y)
    labelled = poutine.trace(guide).get_trace(xs, ys)
    assert "y" not in labelled.nodes  # observed: the guide does not sample it
    unlabelled = poutine.trace(guide).get_trace(xs)
    assert unlabelled.nodes["y"]["infer"]["enumerate"] == "parallel"


def test_one_guide_trains_on_labelled_and_unlabelled_batches():
    xs, ys = simulate(2000, seed=SEED)
    guide = AutoAmortizedGuide(semi_supervised, hidden_dims=(32,), enumerate_discrete="parallel")
    optim = pyro.optim.ClippedAdam({"lr": 0.01, "lrd": 0.999})
    svi = SVI(semi_supervised, guide, optim, TraceEnum_ELBO(max_plate_nesting=1))
    generator = torch.Generator().manual_seed(SEED)
    for step in range(2000):
        rows = torch.randint(2000, (100,), generator=generator)
        svi.step(xs[rows], ys[rows]) if step % 2 else svi.step(xs[rows])
    x = torch.linspace(-1.0, 3.0, 21)
    # q(y | x) against the exact posterior of the coin.
    q_y = guide.encode(x)["y"]
    y_error = (q_y.probs - exact_probability_of_one(x)).abs().max()
    # q(z | x, y) read the given labels: its loc against 0.8 (x - 2 y).
    z_error = 0.0
    for label in (0.0, 1.0):
        q_z = guide.encode(x, torch.full_like(x, label))["z"]
        exact = (x - SHIFT * label) / NOISE**2 / (1 + 1 / NOISE**2)
        z_error = max(z_error, (q_z.loc - exact).abs().max().item())
    print(f"largest error: q(y | x) {y_error:.3f}, loc of q(z | x, y) {z_error:.3f}")
    assert y_error < 0.1
    assert z_error < 0.15


def labels_only(xs, ys=None):
    """A coin y (observed where labelled) and x ~ N(2 y, 0.5): no other latent."""
    with pyro.plate("data", xs.shape[0]):
        y = pyro.sample("y", dist.Bernoulli(0.5), obs=ys)
        pyro.sample("x", dist.Normal(SHIFT * y, NOISE), obs=xs)


@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO, TraceCausalEffect_ELBO])
def test_supervise_adds_the_weighted_log_density_of_the_labels(elbo):
    """The same term under every ELBO: the causal effect VAE's, which adds the
    log-density of the guide's observed sites, flipped the sign of a factor."""
    xs, ys = simulate(50, seed=0)
    guide = AutoAmortizedGuide(labels_only, supervise={"y": 0.5})
    guide(xs)
    log_joint = poutine.trace(labels_only).get_trace(xs, ys).log_prob_sum()
    log_q = guide.encode(xs)["y"].log_prob(ys).sum()
    svi = SVI(labels_only, guide, pyro.optim.Adam({"lr": 0.0}), elbo())
    # Training: the objective with the labels' term; evaluation: the ELBO alone.
    assert torch.isclose(torch.tensor(svi.step(xs, ys)), -log_joint - 0.5 * log_q, rtol=1e-5)
    assert torch.isclose(torch.tensor(svi.evaluate_loss(xs, ys)), -log_joint, rtol=1e-5)


def test_a_head_trained_by_supervise_is_not_said_to_be_untrained():
    xs, ys = simulate(50, seed=0)
    for supervise in (None, {"y": 1.0}):
        guide = AutoAmortizedGuide(labels_only, supervise=supervise)
        SVI(labels_only, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO()).step(xs, ys)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            guide.encode(xs)
        untrained = [w for w in caught if "untrained" in str(w.message)]
        assert len(untrained) == (1 if supervise is None else 0)


def test_supervise_trains_the_head_from_labelled_batches_alone():
    """Trained on labelled batches only, the head of y is untrained without
    ``supervise`` and learns the exact posterior of the coin with it."""
    xs, ys = simulate(2000, seed=SEED)
    x = torch.linspace(-1.0, 3.0, 21)
    errors = {}
    for weight in (None, 1.0):
        pyro.set_rng_seed(SEED)
        pyro.clear_param_store()
        supervise = None if weight is None else {"y": weight}
        guide = AutoAmortizedGuide(semi_supervised, hidden_dims=(32,), supervise=supervise)
        svi = SVI(semi_supervised, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
        generator = torch.Generator().manual_seed(SEED)
        guide(xs)  # the first call leaves y latent
        for _ in range(1000):
            rows = torch.randint(2000, (100,), generator=generator)
            svi.step(xs[rows], ys[rows])
        q_y = guide.encode(x)["y"]
        errors[weight] = (q_y.probs - exact_probability_of_one(x)).abs().max().item()
    print(
        f"largest error of q(y | x): without supervise {errors[None]:.3f}, with {errors[1.0]:.3f}"
    )
    assert errors[None] > 0.4  # uniform: 0.5 off where the coin is sure
    assert errors[1.0] < 0.1


def test_supervise_names_local_sites():
    with pytest.raises(ValueError, match="supervise names \\['w'\\]"):
        AutoAmortizedGuide(semi_supervised, supervise={"w": 1.0})(*simulate(5, seed=0))
    for bad in ({"y": 0.0}, {"y": "1"}, ["y"]):
        with pytest.raises(ValueError, match="supervise"):
            AutoAmortizedGuide(semi_supervised, supervise=bad)


def regression(xs, ys=None):
    """z ~ N(x, 1) per row, y ~ N(z + w, 0.1) observed where given."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", xs.shape[0]):
        z = pyro.sample("z", dist.Normal(xs, 1.0))
        return pyro.sample("y", dist.Normal(z + w, 0.1), obs=ys)


def test_a_plate_without_its_observed_values_leaves_its_locals_to_the_model():
    """The encoder reads xs and ys; predicting with ys=None, the model generates
    y, and the posterior of z given no y is its prior N(x, 1)."""
    pyro.set_rng_seed(SEED)
    xs = torch.linspace(-2.0, 2.0, 5)
    guide = AutoAmortizedGuide(regression)
    guide(xs, xs + 1.0)
    assert guide.data_plates == {"data": ("xs", "ys")}
    trace = poutine.trace(guide).get_trace(xs)
    assert [n for n, site in trace.nodes.items() if site["type"] == "sample"] == ["w"]
    samples = Predictive(regression, guide=guide, num_samples=4000)(xs)
    assert torch.allclose(samples["z"].mean(0), xs, atol=0.1)
    assert torch.allclose(samples["z"].std(0), torch.ones(5), atol=0.1)


def partially_observed(xs, observed):
    """z ~ N(0, 1), x ~ N(z, 0.5) observed where ``observed``: the hidden x
    become Pyro's latent site ``x_unobserved``."""
    with pyro.plate("data", xs.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, NOISE), obs=xs, obs_mask=observed)


def test_rows_hidden_by_obs_mask_keep_the_elbo_a_bound_and_the_exact_posteriors():
    """Where x is observed, z ~ N(0.8 x, 0.2); where it is hidden, z and x keep
    their prior. The guide mirrors the mask of ``x_unobserved`` (without it, the
    proposal's entropy on the observed rows would lift the ELBO above the log
    evidence), and the encoder reads the mask, an argument."""
    generator = torch.Generator().manual_seed(SEED)
    xs = (1 + NOISE**2) ** 0.5 * torch.randn(1000, generator=generator)
    observed = torch.rand(1000, generator=generator) < 0.7
    xs[~observed] = 0.0  # placeholders the model never reads
    pyro.set_rng_seed(SEED)
    guide = AutoAmortizedGuide(partially_observed, hidden_dims=(32,))
    train(partially_observed, guide, xs, observed, steps=1000, lr=0.01, lrd=0.999)
    assert guide.data_plates == {"data": ("xs", "observed")}
    assert guide.upstream_sites == {"z": ("x_unobserved",)}  # q(x_unobserved) q(z | x)

    spread = (1 + NOISE**2) ** 0.5
    log_evidence = dist.Normal(0.0, spread).log_prob(xs[observed]).sum() / len(xs)
    with torch.no_grad():
        elbo = -Trace_ELBO(num_particles=200, vectorize_particles=True).loss(
            partially_observed, guide, xs, observed
        )
        draws = torch.stack([guide(xs, observed)["z"] for _ in range(1000)])
    print(f"ELBO per point {elbo / len(xs):.4f}, log evidence {log_evidence:.4f}")
    assert log_evidence - 0.03 < elbo / len(xs) < log_evidence + 0.005

    mean = torch.where(observed, 0.8 * xs, 0.0)
    sd = torch.where(observed, 0.2**0.5, 1.0)
    mean_error, sd_error = (draws.mean(0) - mean).abs(), (draws.std(0) - sd).abs()
    print(
        f"errors, average and largest: mean {mean_error.mean():.3f} {mean_error.max():.3f}, "
        f"sd {sd_error.mean():.3f} {sd_error.max():.3f}"
    )
    assert mean_error.mean() < 0.05 and mean_error.max() < 0.3
    assert sd_error.mean() < 0.05 and sd_error.max() < 0.15
