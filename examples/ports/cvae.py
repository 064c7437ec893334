"""The conditional VAE of Pyro's ``examples/cvae/`` (``baseline.py``, ``cvae.py``,
``mnist.py``, ``util.py``): completing the masked quadrants of a digit.

Kept: the baseline network (two ReLU hidden layers, trained alone with
``torch.optim.Adam`` on the masked binary cross-entropy); the ``CVAE`` module
whose ``model(xs, ys=None)`` registers itself as ``"generation_net"`` and, in
the unsized plate ``"data"``, samples ``z`` from a prior network fed the input
and the frozen baseline's guess, and observes ``y``, the pixels hidden from the
input, as a ``Bernoulli`` (validation off), or records the predicted image as a
deterministic ``y`` when ``ys`` is ``None``; the guide that reads the
recognition network when ``ys`` is given and the prior network otherwise; the
quadrant masks (value ``-1``) of ``MaskImages``; training with
``pyro.optim.Adam(lr=1e-3)``, ``Trace_ELBO`` and batches of 128; the metric of
``generate_table``, ``Trace_ELBO(num_particles=10)`` on held-out images.

Data: scikit-learn's 8x8 digits, binarized
(:func:`pyro_amortized.datasets.train_test_split_digits`), stand in for MNIST,
with 4x4 quadrants. The program's early stopping on the validation loss is not
kept: both networks train for a fixed number of steps.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from torch import nn

from pyro_amortized import AutoAmortizedGuide
from pyro_amortized.datasets import train_test_split_digits

from ._shared import check_guide_kind, minibatch_indices, result, timed_steps

SIDE = 8
"""Pixels on a side of a digit."""

MASKED = -1.0
"""The value of a pixel hidden from the input (or absent from the target)."""

DEFAULT_BATCH_SIZE = 128
DEFAULT_HIDDEN = 500


def two_layer_relu(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    """``Linear, ReLU, Linear, ReLU, Linear``."""
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, outputs),
    )


class BaselineNet(nn.Module):
    """A deterministic guess of every pixel from the input quadrants."""

    def __init__(self, hidden: int, num_pixels: int = SIDE * SIDE) -> None:
        super().__init__()
        self.num_pixels = num_pixels
        self.layers = two_layer_relu(num_pixels, hidden, num_pixels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(x.reshape(-1, self.num_pixels)))


def masked_bce(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy summed over the target's pixels that are not masked."""
    target = target.reshape(predicted.shape)
    known = target != MASKED
    return nn.functional.binary_cross_entropy(
        predicted[known], target[known], reduction="none"
    ).sum()


class Encoder(nn.Module):
    """``(x, y) -> (loc, scale)`` of ``z``, reading ``x`` with its masked pixels
    filled in from ``y``: the prior network and the recognition network."""

    def __init__(self, z_dim: int, hidden: int, num_pixels: int = SIDE * SIDE) -> None:
        super().__init__()
        self.num_pixels = num_pixels
        self.trunk = two_layer_relu(num_pixels, hidden, hidden)[:-1]  # ends with a ReLU
        self.to_loc = nn.Linear(hidden, z_dim)
        self.to_log_scale = nn.Linear(hidden, z_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        filled = torch.where(x == MASKED, y, x).reshape(-1, self.num_pixels)
        hidden = self.trunk(filled)
        return self.to_loc(hidden), torch.exp(self.to_log_scale(hidden))


class CVAE(nn.Module):
    """The conditional VAE over a trained baseline network.

    :param z_dim: dimension of ``z`` (200 in the program).
    :param hidden: width of every network's hidden layers (500 in the program).
    :param baseline_net: the trained baseline, frozen inside the model.
    """

    def __init__(self, z_dim: int, hidden: int, baseline_net: BaselineNet) -> None:
        super().__init__()
        self.baseline_net = baseline_net
        self.num_pixels = baseline_net.num_pixels
        self.prior_net = Encoder(z_dim, hidden, self.num_pixels)
        self.generation_net = nn.Sequential(
            two_layer_relu(z_dim, hidden, self.num_pixels), nn.Sigmoid()
        )
        self.recognition_net = Encoder(z_dim, hidden, self.num_pixels)

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        """``p(z | x) p(y | x, z)`` over the pixels that the input hides."""
        pyro.module("generation_net", self)
        batch_size = xs.shape[0]
        with pyro.plate("data"):
            with torch.no_grad():
                y_hat = self.baseline_net(xs).view(xs.shape)
            prior_loc, prior_scale = self.prior_net(xs, y_hat)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            loc = self.generation_net(zs)
            if ys is not None:
                hidden_pixels = (xs == MASKED).view(-1, self.num_pixels)
                mask_loc = loc[hidden_pixels].view(batch_size, -1)
                mask_ys = ys[xs == MASKED].view(batch_size, -1)
                pyro.sample(
                    "y", dist.Bernoulli(mask_loc, validate_args=False).to_event(1), obs=mask_ys
                )
            else:
                pyro.deterministic("y", loc.detach())
            return loc

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        """``q(z | x, y)`` in training, the prior network when ``ys`` is ``None``."""
        with pyro.plate("data"):
            if ys is None:
                y_hat = self.baseline_net(xs).view(xs.shape)
                loc, scale = self.prior_net(xs, y_hat)
            else:
                loc, scale = self.recognition_net(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def mask_quadrants(
    images: torch.Tensor, num_quadrant_inputs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, outputs)`` of ``MaskImages``: the target lacks the bottom-left
    quadrant (and the top-left with 2 inputs, the whole top half with 3), and
    the input is its complement; absent pixels are :data:`MASKED`.

    :param images: ``(n, side, side)`` images.
    :param num_quadrant_inputs: 1, 2 or 3 quadrants given as input.
    """
    if num_quadrant_inputs not in (1, 2, 3):
        raise ValueError("Number of quadrants as inputs must be 1, 2 or 3")
    height, width = images.shape[-2:]
    outputs = images.clone()
    outputs[:, height // 2 :, : width // 2] = MASKED
    if num_quadrant_inputs == 2:
        outputs[:, :, : width // 2] = MASKED
    if num_quadrant_inputs == 3:
        outputs[:, : height // 2, :] = MASKED
    inputs = images.clone()
    inputs[outputs != MASKED] = MASKED
    return inputs, outputs


def make_data(
    *, small: bool = False, seed: int = 0, num_quadrant_inputs: int = 1
) -> dict[str, torch.Tensor]:
    """Masked binarized digits: ``{"train_input", "train_output", "val_input",
    "val_output"}``, each ``(n, 8, 8)``.

    :param small: 200 training and 100 held-out images.
    :param seed: seed of the split.
    :param num_quadrant_inputs: quadrants given as input.
    """
    x_train, _, x_val, _ = train_test_split_digits(seed=seed)
    if small:
        x_train, x_val = x_train[:200], x_val[:100]
    data = {}
    for phase, images in (("train", x_train), ("val", x_val)):
        inputs, outputs = mask_quadrants(images.reshape(-1, SIDE, SIDE), num_quadrant_inputs)
        data[f"{phase}_input"], data[f"{phase}_output"] = inputs, outputs
    return data


def train_baseline(
    data: dict[str, torch.Tensor], hidden: int, steps: int, batch_size: int, seed: int, lr: float
) -> BaselineNet:
    """The baseline network after ``steps`` Adam steps on the masked cross-entropy."""
    baseline_net = BaselineNet(hidden, SIDE * SIDE)
    optimizer = torch.optim.Adam(baseline_net.parameters(), lr=lr)
    batches = minibatch_indices(len(data["train_input"]), batch_size, seed)
    for _ in range(steps):
        rows = next(batches)
        inputs, outputs = data["train_input"][rows], data["train_output"][rows]
        optimizer.zero_grad()
        loss = masked_bce(baseline_net(inputs), outputs) / inputs.size(0)
        loss.backward()
        optimizer.step()
    return baseline_net.eval()


def predict(cvae: CVAE, guide: object, inputs: torch.Tensor, num_samples: int) -> torch.Tensor:
    """The program's predictions (``visualize``): ``Predictive`` with the guide
    and no target, so that the hand-written guide reads the prior network.

    :returns: ``(num_samples, n, side, side)`` pixel probabilities.
    """
    samples = Predictive(cvae.model, guide=guide, num_samples=num_samples)(inputs)
    return samples["y"].view(num_samples, len(inputs), *inputs.shape[1:])


def held_out_elbo_per_image(
    cvae: CVAE, guide: object, data: dict[str, torch.Tensor], batch_size: int
) -> float:
    """``generate_table``'s CVAE figure, negated: the ELBO of 10 particles on
    the held-out images, per image."""
    loss_fn = Trace_ELBO(num_particles=10).differentiable_loss
    inputs, outputs = data["val_input"], data["val_output"]
    total = sum(
        float(loss_fn(cvae.model, guide, x, y).detach())
        for x, y in zip(inputs.split(batch_size), outputs.split(batch_size), strict=True)
    )
    return -total / len(inputs)


def run(
    guide_kind: str,
    *,
    steps: int = 100,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    hidden: int = DEFAULT_HIDDEN,
    z_dim: int = 200,
    learning_rate: float = 1e-3,
    num_quadrant_inputs: int = 1,
    small: bool = False,
) -> dict:
    """Trains the baseline, then the CVAE with one guide, and measures the
    held-out ELBO per image.

    :param guide_kind: ``"hand"`` (the recognition network) or ``"amortized"``
        (``AutoAmortizedGuide(cvae.model, hidden_dims=(hidden, hidden))``).
    :param steps: Adam steps of the baseline, then SVI steps of the CVAE.
    :param batch_size: images per minibatch.
    :param seed: seed of the parameters, the split and the batches.
    :param hidden: width of the networks' hidden layers.
    :param z_dim: dimension of ``z``.
    :param learning_rate: learning rate of both optimizers.
    :param num_quadrant_inputs: quadrants given as input.
    :param small: train on the tiny data set of :func:`make_data`.
    :returns: see :func:`examples.ports._shared.result` (the step time is the
        CVAE's); the metric is the held-out ELBO per image (higher is better).
    """
    check_guide_kind(guide_kind)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = make_data(small=small, seed=seed, num_quadrant_inputs=num_quadrant_inputs)
    baseline_net = train_baseline(data, hidden, steps, batch_size, seed, learning_rate)
    cvae = CVAE(z_dim, hidden, baseline_net)
    if guide_kind == "hand":
        guide = cvae.guide
    else:
        guide = AutoAmortizedGuide(cvae.model, hidden_dims=(hidden, hidden))
    svi = SVI(cvae.model, guide, pyro.optim.Adam({"lr": learning_rate}), loss=Trace_ELBO())
    batches = minibatch_indices(len(data["train_input"]), batch_size, seed)

    def step(_: int) -> float:
        rows = next(batches)
        return svi.step(data["train_input"][rows], data["train_output"][rows])

    losses, step_seconds = timed_steps(step, steps)
    metric = held_out_elbo_per_image(cvae, guide, data, batch_size)
    return result("held-out ELBO per image", metric, losses, step_seconds, step)
