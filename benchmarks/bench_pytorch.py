"""Pyro's overhead: our guide in Pyro against the same VAE in plain PyTorch.

The digits VAE of :mod:`pyro_amortized.models` (latent 10, encoder and decoder
with one hidden layer of 256, minibatches of 128 drawn at random) is trained
two ways with Adam:

* in Pyro, ``AutoAmortizedGuide`` with ``JitTrace_ELBO`` (and ``Trace_ELBO``);
* in plain PyTorch, the same networks and the same single-sample ELBO estimator
  written by hand, ``log p(x | z) + log p(z) - log q(z | x)`` at one
  reparameterized draw, scaled to the data set, and its gradient step.

The difference is everything Pyro does per step (tracing, plates, scaling,
parameter bookkeeping): the floor a guide inside Pyro cannot go below. Both are
timed in one process, interleaved, as in ``bench_step_time.py``.

Usage::

    python benchmarks/bench_pytorch.py
    python benchmarks/bench_pytorch.py --repeats 21
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import pyro
import pyro.distributions as dist
import torch
from common import Figure, machine_line, print_table, save_figure
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
from torch import nn
from torch.nn.functional import softplus

from pyro_amortized import AutoAmortizedGuide
from pyro_amortized.datasets import train_test_split_digits
from pyro_amortized.models import MIN_SCALE, Decoder, digits_vae_model

LATENT_DIM, HIDDEN_DIM, BATCH_SIZE = 10, 256, 128


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=101, help="timed blocks per method")
    parser.add_argument("--warmup", type=int, default=100, help="untimed steps first")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


class PlainVAE(nn.Module):
    """The VAE in PyTorch alone: an encoder with ``loc`` and softplus ``scale``
    heads, and the decoder; ``forward`` is the negative ELBO estimate."""

    def __init__(self, num_pixels: int, num_data: int) -> None:
        super().__init__()
        self.num_data = num_data
        self.trunk = nn.Sequential(nn.Linear(num_pixels, HIDDEN_DIM), nn.ReLU())
        self.loc = nn.Linear(HIDDEN_DIM, LATENT_DIM)
        self.scale = nn.Linear(HIDDEN_DIM, LATENT_DIM)
        self.decoder = Decoder(LATENT_DIM, HIDDEN_DIM, num_pixels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.randperm(self.num_data)[:BATCH_SIZE]
        batch = x[rows]
        features = self.trunk(batch)
        q = dist.Normal(self.loc(features), softplus(self.scale(features)) + MIN_SCALE)
        z = q.rsample()
        log_likelihood = dist.Bernoulli(logits=self.decoder(z)).log_prob(batch).sum(-1)
        log_prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        elbo = log_likelihood + log_prior - q.log_prob(z).sum(-1)
        return -elbo.sum() * (self.num_data / BATCH_SIZE)


class PlainStep:
    """One optimizer step of the plain VAE, with the interface of ``SVI.step``."""

    def __init__(self, x: torch.Tensor) -> None:
        self.vae = PlainVAE(x.shape[1], len(x))
        self.optimizer = torch.optim.Adam(self.vae.parameters(), lr=1e-3)

    def step(self, x: torch.Tensor) -> float:
        self.optimizer.zero_grad()
        loss = self.vae(x)
        loss.backward()
        self.optimizer.step()
        return loss.item()


def pyro_step(elbo, x: torch.Tensor) -> SVI:
    decoder = Decoder(LATENT_DIM, HIDDEN_DIM, x.shape[1])
    model = digits_vae_model(decoder, LATENT_DIM, batch_size=BATCH_SIZE)
    guide = AutoAmortizedGuide(model, hidden_dims=(HIDDEN_DIM,))
    return SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)


def block(stepper, x: torch.Tensor, steps: int) -> float:
    start = time.process_time()
    for _ in range(steps):
        stepper.step(x)
    return (time.process_time() - start) / steps


def compare(elbo, x: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    steppers = {"pyro": pyro_step(elbo, x), "plain": PlainStep(x)}
    for stepper in steppers.values():
        block(stepper, x, args.warmup)
    times: dict[str, list[float]] = {"pyro": [], "plain": []}
    ratios = []
    for repeat in range(args.repeats):
        order = ("pyro", "plain") if repeat % 2 == 0 else ("plain", "pyro")
        seconds = {kind: block(steppers[kind], x, args.steps) for kind in order}
        for kind, value in seconds.items():
            times[kind].append(value)
        ratios.append(seconds["pyro"] / seconds["plain"])
    quartiles = statistics.quantiles(ratios, n=4)
    return {
        "pyro": statistics.median(times["pyro"]),
        "plain": statistics.median(times["plain"]),
        "ratio": statistics.median(ratios),
        "q1": quartiles[0],
        "q3": quartiles[2],
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    x, _, _, _ = train_test_split_digits(seed=args.seed)
    print(
        f"digits VAE: {len(x)} images, latent {LATENT_DIM}, hidden {HIDDEN_DIM}, batch "
        f"{BATCH_SIZE}; {args.warmup} warm-up steps, {args.repeats} interleaved blocks of "
        f"{args.steps} steps"
    )
    print(machine_line(1))
    results = {}
    for name, elbo in (("JitTrace_ELBO", JitTrace_ELBO), ("Trace_ELBO", Trace_ELBO)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # JIT tracer warnings
            results[name] = compare(elbo(), x, args)
    rows = [
        (
            f"AutoAmortizedGuide, {name}",
            f"{1e3 * r['pyro']:.2f} ms",
            f"{1e3 * r['plain']:.2f} ms",
            f"{r['ratio']:.2f}",
            f"{r['q1']:.2f}-{r['q3']:.2f}",
        )
        for name, r in results.items()
    ]
    print_table(
        "Time per step against plain PyTorch (ratio: Pyro / plain, median over blocks)",
        ("Pyro", "Pyro step", "plain PyTorch step", "ratio", "ratio IQR"),
        rows,
    )
    plot(results)


def plot(results: dict[str, dict[str, float]]) -> None:
    figure = Figure(figsize=(6.5, 2.6))
    axes = figure.subplots()
    names = list(results)
    axes.barh(range(len(names)), [results[n]["ratio"] for n in names], color="tab:blue")
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_yticks(range(len(names)), [f"AutoAmortizedGuide, {n}" for n in names])
    axes.set_xlabel("time per step, Pyro / plain PyTorch (median)")
    save_figure(figure, "pytorch.png")


if __name__ == "__main__":
    main()
