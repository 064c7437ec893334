"""The export to ArviZ: groups, dimensions named after the plates, the
pointwise log-likelihood that ``az.loo`` reads, the posterior against a
conjugate model's, and a data set exported batch by batch."""

import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEED, train
from models import factor_data, factor_model, minibatch_model, mixture_data, mixture_model
from torch.utils.data import DataLoader

from pyro_amortized import AutoAmortizedGuide
from pyro_amortized.inference_data import to_inference_data

az = pytest.importorskip("arviz")

NOISE = 0.5
SHRINK = 1 / (1 + NOISE**2)
"""Given ``x`` and ``mu``, ``z`` is ``N(mu + SHRINK (x - mu), SHRINK NOISE^2)``."""


def conjugate_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Normal(z, NOISE).to_event(1), obs=x)


@pytest.fixture(scope="module")
def trained():
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    x = 1.0 + 1.3 * torch.randn(400, 2)
    guide = AutoAmortizedGuide(conjugate_model)
    train(conjugate_model, guide, x, steps=1500, lr=0.02, lrd=0.999)
    return x, guide


def test_groups_dims_and_loo(trained):
    x, guide = trained
    pyro.set_rng_seed(SEED)
    idata = to_inference_data(conjugate_model, guide, x, num_samples=300)
    assert set(idata.groups()) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
    }
    assert idata.posterior["z"].dims == ("chain", "draw", "data", "z_dim_1")
    assert idata.posterior["z"].shape == (1, 300, 400, 2)
    assert idata.posterior["mu"].shape == (1, 300)
    assert idata.posterior_predictive["x"].dims == ("chain", "draw", "data", "x_dim_1")
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "data")
    assert torch.equal(torch.as_tensor(idata.observed_data["x"].values), x)
    # the pointwise log-likelihood is the model's at each draw
    z = torch.as_tensor(idata.posterior["z"].values[0])
    expected = dist.Normal(z, NOISE).log_prob(x).sum(-1)
    assert torch.allclose(torch.as_tensor(idata.log_likelihood["x"].values[0]), expected)
    # the posterior predictive is drawn around each draw's z
    residual = torch.as_tensor(idata.posterior_predictive["x"].values[0]) - z
    assert abs(residual.std().item() - NOISE) < 0.02
    loo = az.loo(idata)
    assert loo.n_data_points == 400 and torch.isfinite(torch.tensor(loo.elpd_loo))


def test_posterior_matches_the_conjugate_posterior(trained):
    x, guide = trained
    pyro.set_rng_seed(SEED)
    idata = to_inference_data(conjugate_model, guide, x, num_samples=400)
    mu = torch.as_tensor(idata.posterior["mu"].values[0])[:, None, None]
    z = torch.as_tensor(idata.posterior["z"].values[0])
    exact_mean = (mu + SHRINK * (x - mu)).mean(0)
    assert (z.mean(0) - exact_mean).abs().mean() < 0.08
    assert abs(z.std(0).mean().item() / (SHRINK**0.5 * NOISE) - 1) < 0.1
    summary = az.summary(idata, var_names=["mu"], kind="stats")
    assert abs(summary.loc["mu", "mean"] - x.mean().item()) < 0.05


def test_batches_give_the_one_call_posterior(trained):
    x, guide = trained
    pyro.set_rng_seed(SEED)
    whole = to_inference_data(conjugate_model, guide, x, num_samples=300)
    batched = to_inference_data(
        conjugate_model, guide, batches=DataLoader(x, batch_size=64), num_samples=300
    )
    assert batched.posterior["z"].shape == whole.posterior["z"].shape
    assert batched.posterior["mu"].shape == (1, 300)  # one draw of the globals for every batch
    assert torch.equal(torch.as_tensor(batched.observed_data["x"].values), x)
    z_whole = torch.as_tensor(whole.posterior["z"].values[0])
    z_batched = torch.as_tensor(batched.posterior["z"].values[0])
    assert (z_whole.mean(0) - z_batched.mean(0)).abs().max() < 0.2


def test_nested_plates_name_their_dimensions():
    pyro.set_rng_seed(SEED)
    x = factor_data(40)
    guide = AutoAmortizedGuide(minibatch_model)
    train(minibatch_model, guide, x, steps=5)
    idata = to_inference_data(minibatch_model, guide, x, num_samples=3)
    assert idata.posterior["w"].dims == ("chain", "draw", "w_dim_0", "w_dim_1")
    assert idata.posterior["z"].dims == ("chain", "draw", "data", "z_dim_1")
    assert idata.observed_data["x"].dims == ("data", "x_dim_1")


def test_a_subsampling_model_is_refused():
    x = factor_data(64)
    guide = AutoAmortizedGuide(factor_model)
    train(factor_model, guide, x, steps=2)
    with pytest.raises(ValueError, match="to_inference_data reads every row"):
        to_inference_data(factor_model, guide, x, num_samples=2)


def test_a_site_summed_out_in_the_model_is_refused():
    x = mixture_data(30)
    guide = AutoAmortizedGuide(mixture_model)
    train(mixture_model, guide, x, steps=2, elbo=pyro.infer.TraceEnum_ELBO())
    with pytest.raises(ValueError, match="'assignment' is not sampled by the guide"):
        to_inference_data(mixture_model, guide, x, num_samples=2)


def test_bad_options(trained, monkeypatch):
    x, guide = trained
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        to_inference_data(conjugate_model, guide, x, num_samples=0)
    with pytest.raises(ValueError, match="either as args or as batches"):
        to_inference_data(conjugate_model, guide, x, batches=[x])
    with pytest.raises(ValueError, match="batches is empty"):
        to_inference_data(conjugate_model, guide, batches=[])
    monkeypatch.setitem(sys.modules, "arviz", None)
    with pytest.raises(ImportError, match=r"pyro-amortized\[arviz\]"):
        to_inference_data(conjugate_model, guide, x)
