"""The variational autoencoder of Pyro's ``examples/vae/vae.py``.

Kept: the ``VAE`` module with its ``model`` and ``guide`` methods, the sites
``latent`` (a ``Normal(0, 1)`` of ``z_dim`` dimensions per image) and ``obs`` (a
``Bernoulli`` over the pixels, validation off), the sized plate ``"data"`` over
the minibatch passed in, the registered modules ``"decoder"`` and
``"encoder"``, the softplus encoder and decoder with one hidden layer, and the
program's training: ``Adam(lr=1e-3)``, ``Trace_ELBO``, minibatches of 256 drawn
from a shuffled data set, the test loss per image by ``svi.evaluate_loss``.

Data: scikit-learn's 8x8 digits, binarized
(:func:`pyro_amortized.datasets.train_test_split_digits`), stand in for MNIST's
28x28 images, so the networks read 64 pixels instead of 784.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn

from pyro_amortized import AutoAmortizedGuide
from pyro_amortized.datasets import train_test_split_digits

from ._shared import check_guide_kind, minibatch_indices, result, timed_steps

NUM_PIXELS = 64
"""Pixels of an 8x8 digit."""

DEFAULT_BATCH_SIZE = 256
DEFAULT_HIDDEN = 400


class Encoder(nn.Module):
    """``q(z | x)``: a softplus hidden layer, then the mean and the scale of ``z``."""

    def __init__(self, z_dim: int, hidden_dim: int, num_pixels: int = NUM_PIXELS) -> None:
        super().__init__()
        self.num_pixels = num_pixels
        self.hidden = nn.Linear(num_pixels, hidden_dim)
        self.to_loc = nn.Linear(hidden_dim, z_dim)
        self.to_log_scale = nn.Linear(hidden_dim, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = nn.functional.softplus(self.hidden(x.reshape(-1, self.num_pixels)))
        return self.to_loc(features), torch.exp(self.to_log_scale(features))


class Decoder(nn.Module):
    """``p(x | z)``: a softplus hidden layer, then a probability per pixel."""

    def __init__(self, z_dim: int, hidden_dim: int, num_pixels: int = NUM_PIXELS) -> None:
        super().__init__()
        self.hidden = nn.Linear(z_dim, hidden_dim)
        self.to_pixels = nn.Linear(hidden_dim, num_pixels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.to_pixels(nn.functional.softplus(self.hidden(z))))


class VAE(nn.Module):
    """The model ``p(x | z) p(z)`` and the guide ``q(z | x)`` of the program.

    :param z_dim: dimension of the latent code (50 in the program).
    :param hidden_dim: width of the hidden layers (400 in the program).
    :param num_pixels: pixels of an image.
    """

    def __init__(
        self, z_dim: int = 50, hidden_dim: int = DEFAULT_HIDDEN, num_pixels: int = NUM_PIXELS
    ) -> None:
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim, num_pixels)
        self.decoder = Decoder(z_dim, hidden_dim, num_pixels)
        self.z_dim = z_dim
        self.num_pixels = num_pixels

    def model(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``x`` of shape ``(batch, pixels)`` given a latent code each."""
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = torch.zeros(x.shape[0], self.z_dim, dtype=x.dtype, device=x.device)
            z_scale = torch.ones(x.shape[0], self.z_dim, dtype=x.dtype, device=x.device)
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                obs=x.reshape(-1, self.num_pixels),
            )
            return loc_img

    def guide(self, x: torch.Tensor) -> None:
        """A diagonal Normal over each image's code, from the encoder."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def make_data(*, small: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Binarized 8x8 digits: ``(x_train, x_test)``, each ``(n, 64)``.

    :param small: 200 training and 100 test images instead of 1438 and 359.
    :param seed: seed of the train/test split.
    """
    x_train, _, x_test, _ = train_test_split_digits(seed=seed)
    if small:
        return x_train[:200], x_test[:100]
    return x_train, x_test


def held_out_elbo_per_image(svi: SVI, x_test: torch.Tensor, batch_size: int) -> float:
    """The program's test figure: the summed loss over test batches, per image."""
    total = sum(svi.evaluate_loss(batch) for batch in x_test.split(batch_size))
    return -total / len(x_test)


def run(
    guide_kind: str,
    *,
    steps: int = 100,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    hidden: int = DEFAULT_HIDDEN,
    z_dim: int = 50,
    learning_rate: float = 1e-3,
    small: bool = False,
) -> dict:
    """Trains the VAE with one guide and measures the test ELBO per image.

    :param guide_kind: ``"hand"`` (the program's encoder guide) or
        ``"amortized"`` (``AutoAmortizedGuide(vae.model)``, one hidden layer of
        width ``hidden``).
    :param steps: SVI steps (minibatches).
    :param batch_size: images per minibatch.
    :param seed: seed of the parameters, the split and the batches.
    :param hidden: width of the hidden layers.
    :param z_dim: dimension of the latent code.
    :param learning_rate: Adam's learning rate.
    :param small: train on the tiny data set of :func:`make_data`.
    :returns: see :func:`examples.ports._shared.result`; the metric is the test
        ELBO per image (higher is better).
    """
    check_guide_kind(guide_kind)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    x_train, x_test = make_data(small=small, seed=seed)
    vae = VAE(z_dim=z_dim, hidden_dim=hidden, num_pixels=x_train.shape[1])
    if guide_kind == "hand":
        guide = vae.guide
    else:
        guide = AutoAmortizedGuide(vae.model, hidden_dims=(hidden,))
    svi = SVI(vae.model, guide, Adam({"lr": learning_rate}), loss=Trace_ELBO())
    batches = minibatch_indices(len(x_train), batch_size, seed)

    def step(_: int) -> float:
        return svi.step(x_train[next(batches)])

    losses, step_seconds = timed_steps(step, steps)
    metric = held_out_elbo_per_image(svi, x_test, batch_size)
    return result("test ELBO per image", metric, losses, step_seconds, step)
