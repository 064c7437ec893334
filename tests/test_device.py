"""Devices: the guide lives with the data, moves with .to(), and says so when
the data is elsewhere. The CUDA tests run where a GPU is present."""

import io

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import FAMILIES, train
from models import FEATURES, LATENT, factor_data, factor_model, regression_data
from pyro.infer import SVI, JitTrace_ELBO, Predictive, Trace_ELBO

from pyro_amortized import AutoAmortizedGuide, LocalIWAE
from pyro_amortized.diagnostics import amortization_gap, log_evidence, refine

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def device_model(x):
    """``factor_model`` with its priors and plate on the data's device, as a
    Pyro model must be written to run on a GPU."""
    zero = x.new_zeros(())
    w = pyro.sample("w", dist.Normal(zero, 1.0).expand([LATENT, FEATURES]).to_event(2))
    noise = pyro.sample("noise", dist.LogNormal(zero, 1.0))
    with pyro.plate("data", x.shape[0], subsample_size=min(32, x.shape[0]), device=x.device):
        z = pyro.sample("z", dist.Normal(zero, 1.0).expand([LATENT]).to_event(1))
        mean = (z.unsqueeze(-2) @ w).squeeze(-2)
        pyro.sample(
            "x", dist.Normal(mean, noise[..., None]).to_event(1), obs=pyro.subsample(x, event_dim=1)
        )


def device_batch_model(x):
    """``device_model`` without subsampling, for the diagnostics."""
    zero = x.new_zeros(())
    w = pyro.sample("w", dist.Normal(zero, 1.0).expand([LATENT, FEATURES]).to_event(2))
    with pyro.plate("data", x.shape[0], device=x.device):
        z = pyro.sample("z", dist.Normal(zero, 1.0).expand([LATENT]).to_event(1))
        pyro.sample("x", dist.Normal((z.unsqueeze(-2) @ w).squeeze(-2), 0.5).to_event(1), obs=x)


def device_regression_model(covariates, y):
    """Two data arguments; priors on the data's device."""
    zero = y.new_zeros(())
    coef = pyro.sample("coef", dist.Normal(zero, 1.0).expand([3]).to_event(1))
    with pyro.plate("units", y.shape[0], device=y.device):
        effect = pyro.sample("effect", dist.Normal(zero, 1.0))
        scale = pyro.sample("scale", dist.Gamma(zero + 2.0, 2.0))
        pyro.sample("y", dist.Normal(covariates @ coef + effect, scale), obs=y)


def _devices(guide):
    return {tensor.device.type for tensor in guide.state_dict().values()}


def test_data_on_another_device_than_the_guide_is_a_clear_error():
    guide = AutoAmortizedGuide(factor_model)
    guide(factor_data(10))
    guide.to("meta")  # a second device that every machine has
    with pytest.raises(ValueError, match=r"is on cpu, but the guide is on meta.*guide.to"):
        guide(factor_data(10))
    with pytest.raises(ValueError, match=r"is on cpu, but the guide is on meta"):
        guide.median(factor_data(10))
    with pytest.raises(ValueError, match=r"is on cpu, but the guide is on meta"):
        guide.encode(factor_data(10))


@cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_guide_is_built_on_the_device_of_the_data(family):
    x = factor_data(60).cuda()
    guide = family(device_model)
    losses = train(device_model, guide, x, steps=5)
    assert torch.isfinite(torch.tensor(losses)).all()
    assert _devices(guide) == {"cuda"}
    assert {p.device.type for p in pyro.get_param_store().values()} == {"cuda"}
    x_new = factor_data(7, seed=3).cuda()
    assert guide.median(x_new)["z"].shape == (7, 2)
    assert guide.median(x_new)["z"].is_cuda
    assert guide.quantiles([0.1, 0.9], x_new)["z"].is_cuda
    assert guide.encode(x_new)["z"].sample().is_cuda
    samples = Predictive(device_model, guide=guide, num_samples=3)(x_new)
    assert samples["z"].shape == (3, 7, 2) and samples["z"].is_cuda


@cuda
def test_two_data_arguments_and_jit_on_the_device():
    covariates, y = (value.cuda() for value in regression_data(50))
    guide = AutoAmortizedGuide(device_regression_model)
    losses = train(device_regression_model, guide, covariates, y, steps=5, elbo=JitTrace_ELBO())
    assert torch.isfinite(torch.tensor(losses)).all()
    assert guide.median(covariates, y)["effect"].is_cuda


@cuda
def test_default_device_cuda():
    x = factor_data(40).cuda()
    torch.set_default_device("cuda")
    try:
        guide = AutoAmortizedGuide(factor_model)  # its constants follow the default
        losses = train(factor_model, guide, x, steps=5)
    finally:
        torch.set_default_device("cpu")
    assert torch.isfinite(torch.tensor(losses)).all()
    assert _devices(guide) == {"cuda"}


@cuda
def test_move_a_cpu_trained_guide_to_the_gpu_and_back():
    x = factor_data(60)
    guide = AutoAmortizedGuide(device_model)
    train(device_model, guide, x, steps=20)
    on_cpu = guide.median(x)["z"]
    guide.to("cuda")
    assert torch.allclose(guide.median(x.cuda())["z"].cpu(), on_cpu, atol=1e-5)
    svi = SVI(device_model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    assert torch.isfinite(torch.tensor(svi.step(x.cuda())))
    with pytest.raises(ValueError, match="is on cpu, but the guide is on cuda"):
        guide(x)
    guide.to("cpu")
    assert guide.median(x)["z"].device.type == "cpu"


@cuda
def test_save_on_the_gpu_and_load_on_the_cpu():
    x = factor_data(60).cuda()
    guide = AutoAmortizedGuide(device_model)
    train(device_model, guide, x, steps=20)
    x_new = factor_data(9, seed=4)
    expected = guide.median(x_new.cuda())["z"].cpu()

    state, whole = io.BytesIO(), io.BytesIO()
    torch.save(guide.state_dict(), state)
    torch.save(guide, whole)
    state.seek(0)
    whole.seek(0)
    pyro.clear_param_store()

    fresh = AutoAmortizedGuide(device_model)
    fresh(factor_data(10))
    fresh.load_state_dict(torch.load(state, map_location="cpu"))
    loaded = torch.load(whole, map_location="cpu", weights_only=False)
    for other in (fresh, loaded):
        assert _devices(other) == {"cpu"}
        assert torch.allclose(other.median(x_new)["z"], expected, atol=1e-5)


@cuda
def test_iwae_and_diagnostics_on_the_device():
    x = factor_data(40).cuda()
    guide = AutoAmortizedGuide(device_batch_model)
    train(device_batch_model, guide, x, steps=5, elbo=LocalIWAE(num_particles=4))
    x_test = x[:8]
    evidence = log_evidence(device_batch_model, guide, x_test, num_particles=16)
    assert evidence.shape == (8,) and evidence.is_cuda and torch.isfinite(evidence).all()
    refined = refine(device_batch_model, guide, x_test, num_steps=3)
    assert refined.encode(x_test)["z"].sample().is_cuda
    report = amortization_gap(device_batch_model, guide, x_test, num_steps=3, num_particles=16)
    assert torch.isfinite(report.elbo).all() and torch.isfinite(report.refined_elbo).all()
