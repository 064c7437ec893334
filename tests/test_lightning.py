"""Training with PyTorch Lightning (pyro_amortized.lightning): the Trainer takes
the same steps as a hand-written loop, and trains a conjugate model to its
exact posterior."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEED
from models import factor_data, presubsampled_model
from pyro.infer import Trace_ELBO
from torch.utils.data import DataLoader, TensorDataset

from pyro_amortized import AutoAmortizedDelta, AutoAmortizedGuide

lightning = pytest.importorskip("lightning")
from pyro_amortized.lightning import SVILightningModule  # noqa: E402  (after the skip)


@pytest.fixture(autouse=True)
def module_local_params():
    with pyro.settings.context(module_local_params=True):
        yield


def _fit(module, loader, steps):
    trainer = lightning.pytorch.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*num_workers.*")  # a tiny in-memory loader
        trainer.fit(module, loader)


def test_trainer_takes_the_steps_of_a_hand_written_loop():
    # A point-estimate guide has no sampling noise, so the two runs must agree.
    x = factor_data(64)
    loader = DataLoader(TensorDataset(x), batch_size=16, shuffle=False)
    runs = []
    for use_lightning in (True, False):
        pyro.set_rng_seed(SEED)
        guide = AutoAmortizedDelta(presubsampled_model)
        guide(x[:2], len(x))
        initial = [p.detach().clone() for p in guide.parameters()]
        if use_lightning:
            module = SVILightningModule(presubsampled_model, guide, lr=0.01, extra_args=(len(x),))
            _fit(module, loader, steps=12)
        else:
            loss_fn = Trace_ELBO()(presubsampled_model, guide)
            optimizer = torch.optim.Adam(loss_fn.parameters(), lr=0.01)
            for batch in [batch for _ in range(3) for (batch,) in loader]:  # 12 steps
                optimizer.zero_grad()
                loss_fn(batch, len(x)).backward()
                optimizer.step()
        runs.append([p.detach().clone() for p in guide.parameters()])
        assert len(pyro.get_param_store()) == 0  # every parameter lives in the modules
    moved = max(
        (after - before).abs().max().item() for after, before in zip(runs[1], initial, strict=True)
    )
    assert moved > 1e-3  # the loop trained
    for lightning_param, loop_param in zip(*runs, strict=True):
        assert torch.allclose(lightning_param, loop_param, atol=1e-6, rtol=1e-5)


def conjugate_model(x, num_data):
    """z_i ~ N(0, 1), x_i ~ N(z_i, 1): the posterior of z_i is N(x_i / 2, 1/2)."""
    with pyro.plate("data", num_data, subsample_size=x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_trainer_fits_the_exact_posterior():
    x = 2.0 * torch.randn(512, generator=torch.Generator().manual_seed(1))
    # No hidden layer: the heads are linear in x, as the exact posterior is.
    guide = AutoAmortizedGuide(conjugate_model, hidden_dims=())
    guide(x[:2], len(x))
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True)  # less gradient noise
    module = SVILightningModule(conjugate_model, guide, elbo=elbo, lr=0.005, extra_args=(len(x),))
    _fit(module, DataLoader(TensorDataset(x), batch_size=64, shuffle=True), steps=2000)
    x_new = torch.linspace(-3.0, 3.0, 13)
    low, median, high = guide.quantiles([0.1587, 0.5, 0.8413], x_new, len(x_new))["z"]
    assert (median - x_new / 2).abs().max() < 0.05
    scale = (high - low) / 2  # one standard deviation each side
    assert (scale - math.sqrt(0.5)).abs().max() < 0.05


def test_needs_module_local_params():
    x = factor_data(16)
    guide = AutoAmortizedGuide(presubsampled_model)
    guide(x[:2], len(x))
    with pyro.settings.context(module_local_params=False):
        with pytest.raises(ValueError, match="module_local_params=True"):
            SVILightningModule(presubsampled_model, guide)


def test_needs_a_guide_with_parameters():
    guide = AutoAmortizedGuide(presubsampled_model)
    with pytest.raises(ValueError, match="call it once"):
        SVILightningModule(presubsampled_model, guide)


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"lr": 0.0}, ValueError, "lr must be a positive number"),
        ({"lr": True}, ValueError, "lr must be a positive number"),
        ({"elbo": "trace"}, TypeError, "elbo must be a pyro.infer.ELBO"),
        ({"optimizer": "adam"}, TypeError, "optimizer must be"),
    ],
)
def test_rejects_bad_options(options, error, match):
    x = factor_data(16)
    guide = AutoAmortizedGuide(presubsampled_model)
    guide(x[:2], len(x))
    with pytest.raises(error, match=match):
        SVILightningModule(presubsampled_model, guide, **options)
