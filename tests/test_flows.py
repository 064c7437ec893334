"""The normalizing-flow family."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEED, decrease, train
from pyro.infer import SVI, Trace_ELBO

from pyro_amortized import AutoAmortizedGuide, AutoAmortizedNormalizingFlow
from pyro_amortized.datasets import load_digits_binarized
from pyro_amortized.flow_heads import FlowHead
from pyro_amortized.models import Decoder, DigitsEncoderGuide, digits_vae_model


@pytest.mark.parametrize("flow", ["spline", "iaf"])
@pytest.mark.parametrize("size", [1, 2])
def test_flow_head_density_integrates_to_one(flow, size):
    head = FlowHead(8, torch.Size([size]), 1, init_loc=torch.zeros(size), init_scale=0.7, flow=flow)
    for layer in head.flows:  # a non-trivial flow: random conditioner outputs
        torch.nn.init.normal_(layer.nn.layers[-1].weight, std=0.5)
    q = head(torch.randn(1, 8))
    grid = torch.linspace(-8, 8, 801 if size == 2 else 20001)
    points = torch.cartesian_prod(grid, grid) if size == 2 else grid.unsqueeze(-1)
    with torch.no_grad():
        mass = q.log_prob(points.unsqueeze(1)).exp().sum() * (grid[1] - grid[0]) ** size
    assert mass.item() == pytest.approx(1.0, abs=0.01)


def test_hand_written_flow_reference_matches_the_flow_family():
    """The benchmark's hand-written flow guide has the architecture of
    AutoAmortizedNormalizingFlow(flow="iaf"), and both train."""
    x = load_digits_binarized()[0][:256]
    sizes = {}
    for kind in ("ours", "hand"):
        decoder = Decoder(3, 32, x.shape[1])
        model = digits_vae_model(decoder, 3, batch_size=64, name=f"decoder_{kind}")
        if kind == "ours":
            guide = AutoAmortizedNormalizingFlow(model, flow="iaf", hidden_dims=(32,))
        else:
            guide = DigitsEncoderGuide(x.shape[1], 3, 32, batch_size=64, family="normalizing_flow")
        losses = train(model, guide, x, steps=150, lr=3e-3)
        assert decrease(losses, window=30) < 0
        sizes[kind] = sum(p.numel() for p in guide.parameters())
    assert sizes["ours"] == sizes["hand"]


def squared_model(x):
    """z ~ N(0, 1), x ~ N(z^2, 0.1^2): for x well above 0 the posterior of z has
    two narrow modes, at -sqrt(x) and +sqrt(x)."""
    with pyro.plate("data", len(x), subsample_size=min(256, len(x))):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z**2, 0.1), obs=pyro.subsample(x, event_dim=0))


def simulate_squared(num_rows, seed):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(num_rows, generator=generator)
    return z**2 + 0.1 * torch.randn(num_rows, generator=generator)


def log_joint(z, x):
    return dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z**2, 0.1).log_prob(x)


def kl_to_exact(guide, x, num_samples=2000):
    """KL(q || exact posterior) per point: the log evidence by quadrature on a
    grid of 24,001 points minus a Monte Carlo ELBO."""
    grid = torch.linspace(-6, 6, 24001)
    log_evidence = torch.logsumexp(log_joint(grid, x[:, None]), -1) + math.log(grid[1] - grid[0])
    with torch.no_grad():
        q = guide.encode(x)["z"]
        z = q.sample((num_samples,))
        return log_evidence - (log_joint(z, x) - q.log_prob(z)).mean(0)


def sleep_phase(guide, steps, lr):
    """Maximum likelihood of q(z | x) on pairs (z, x) drawn from the model: the
    sleep phase of wake-sleep, which covers every mode of the posterior."""
    optimizer = torch.optim.Adam(guide.parameters(), lr=lr)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.1 ** (step / steps)
        z = torch.randn(256)
        x = z**2 + 0.1 * torch.randn(256)
        loss = -guide.encode(x)["z"].log_prob(z).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_spline_flow_fits_a_bimodal_posterior():
    pyro.set_rng_seed(SEED)
    x, held_out = simulate_squared(4000, seed=100), simulate_squared(1000, seed=999)
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True)
    flow = AutoAmortizedNormalizingFlow(
        squared_model, flow="spline", hidden_dims=(64, 64), init_scale=1.0
    )
    flow(x)
    sleep_phase(flow, steps=2000, lr=3e-3)  # both modes, roughly
    # Then the ELBO at a low rate, with Adam (ClippedAdam's clipping of the
    # data-scaled gradients let the flow drift off a mode).
    decay = {"optimizer": torch.optim.Adam, "optim_args": {"lr": 1e-4}, "gamma": 0.1 ** (1 / 2000)}
    optimizer = pyro.optim.ExponentialLR(decay)
    svi = SVI(squared_model, flow, optimizer, elbo)
    for _ in range(2000):
        svi.step(x)
        optimizer.step()
    normal = AutoAmortizedGuide(squared_model, hidden_dims=(64, 64), init_scale=1.0)
    train(squared_model, normal, x, steps=4000, lr=3e-3, lrd=0.1 ** (1 / 4000), elbo=elbo)

    flow_kl, normal_kl = kl_to_exact(flow, held_out), kl_to_exact(normal, held_out)
    bimodal = held_out > 1.0  # modes at least 2 apart, each 0.05 wide or less
    # A Normal covers one mode at best: log 2 or worse on the bimodal points
    # (0.77 measured). The flow, on the bimodal points, at seeds 0-2: 0.094,
    # 0.066, 0.138 (overall 0.042, 0.032, 0.054); 0.284 on another CPU, where
    # the ELBO phase let it drift partly off a mode. The bound, half of log 2,
    # still tells two modes covered from one.
    print(f"KL flow {flow_kl.mean():.4f} ({flow_kl[bimodal].mean():.4f} bimodal)")
    print(f"KL Normal {normal_kl.mean():.4f} ({normal_kl[bimodal].mean():.4f} bimodal)")
    assert normal_kl[bimodal].mean() > math.log(2) - 0.1
    assert flow_kl.mean() <= 0.15
    assert flow_kl[bimodal].mean() <= 0.35
