"""Inferring new data: one forward pass against re-optimising per-point parameters.

A VAE (:mod:`pyro_amortized.models`) on binarized images, Fashion-MNIST by
default when its files are present (``--data fashion``, the training images
and 1,000 test images; ``--fashion-root`` to find them), or scikit-learn's 8x8
digits (``--data digits``: the first 797 images, and the other 1,000), is
trained with ``AutoAmortizedGuide``; its decoder is then frozen. For ``--new``
images it has not seen, the amortized guide infers the local posteriors by one
forward pass (``guide.encode``), timed as the median of
repeated passes. ``AutoNormal``, which keeps a location and a scale per image,
must be optimized on the new images (Adam, full batch, the learning rate
falling tenfold over ``--max-steps``) until its ELBO reaches
the amortized guide's; only its steps are timed, not the ELBO checks. Both
ELBOs are per image, estimated with ``--particles`` particles.

Usage::

    python benchmarks/bench_new_data.py
    python benchmarks/bench_new_data.py --data digits --train-steps 500 --new 200
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pyro
import torch
from common import Figure, machine_line, print_table, save_figure
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_amortized import AutoAmortizedGuide
from pyro_amortized.datasets import FASHION_MNIST_ROOT, load_digits_binarized, load_fashion_mnist
from pyro_amortized.models import Decoder, digits_vae_model

LATENT_DIM = 5
HIDDEN_DIM = 256


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("fashion", "digits"), default=None)
    parser.add_argument("--fashion-root", default=str(FASHION_MNIST_ROOT))
    parser.add_argument("--train-steps", type=int, default=3000, help="amortized training")
    parser.add_argument("--new", type=int, default=1000, help="new images to infer")
    parser.add_argument("--lr", type=float, default=0.05, help="AutoNormal's Adam rate")
    parser.add_argument("--max-steps", type=int, default=5000, help="AutoNormal's limit")
    parser.add_argument("--check-every", type=int, default=10, help="steps between checks")
    parser.add_argument("--particles", type=int, default=100, help="ELBO particles")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def elbo_per_image(model, guide, x: torch.Tensor, particles: int) -> float:
    """The ELBO per image, with vectorized particles and a fixed seed."""
    pyro.set_rng_seed(0)
    estimator = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        return -estimator.loss(model, guide, x) / len(x)


def train_amortized(x: torch.Tensor, args: argparse.Namespace):
    decoder = Decoder(LATENT_DIM, HIDDEN_DIM, x.shape[1])
    model = digits_vae_model(decoder, LATENT_DIM, batch_size=128)
    guide = AutoAmortizedGuide(model, hidden_dims=(HIDDEN_DIM,))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    for _ in range(args.train_steps):
        svi.step(x)
    # Every image at once, decoder frozen: the model the new images are scored under.
    frozen = poutine.block(digits_vae_model(decoder, LATENT_DIM), hide_types=["param"])
    return frozen, guide


def time_forward_pass(guide: AutoAmortizedGuide, x: torch.Tensor, repeats: int = 51) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            guide.encode(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def optimize_autonormal(model, x: torch.Tensor, target: float, args: argparse.Namespace):
    """AutoNormal's steps until its ELBO reaches ``target``: (seconds, steps,
    ELBO) at that point, and the curve of (seconds, ELBO) at each check."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    guide = AutoNormal(model)
    decay = 0.1 ** (1 / args.max_steps)  # the rate falls tenfold over max_steps
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": args.lr, "lrd": decay}), Trace_ELBO())
    seconds, curve = 0.0, []
    for step in range(1, args.max_steps + 1):
        start = time.perf_counter()
        svi.step(x)
        seconds += time.perf_counter() - start
        if step % args.check_every == 0:
            elbo = elbo_per_image(model, guide, x, args.particles)
            curve.append((seconds, elbo))
            if elbo >= target:
                return seconds, step, elbo, curve
    return seconds, None, curve[-1][1], curve


def load_images(args: argparse.Namespace) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The training images and ``args.new`` new ones."""
    data = args.data or ("fashion" if Path(args.fashion_root).is_dir() else "digits")
    if data == "fashion":
        x_train, _ = load_fashion_mnist("train", root=args.fashion_root)
        x_test, _ = load_fashion_mnist("test", root=args.fashion_root)
        return "Fashion-MNIST", x_train, x_test[: args.new]
    images, _ = load_digits_binarized()
    return "digits", images[: -args.new], images[-args.new :]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    name, x_train, x_new = load_images(args)
    print(
        f"{name} VAE, latent {LATENT_DIM}: trained on {len(x_train)} images for "
        f"{args.train_steps} steps; {len(x_new)} new images"
    )
    print(machine_line(args.threads, "wall"))
    model, guide = train_amortized(x_train, args)
    forward = time_forward_pass(guide, x_new)
    amortized_elbo = elbo_per_image(model, guide, x_new, args.particles)
    seconds, steps, elbo, curve = optimize_autonormal(model, x_new, amortized_elbo, args)
    reached = steps is not None
    rows = [
        (
            "AutoAmortizedGuide, one forward pass",
            f"{1e3 * forward:.2f} ms",
            "-",
            f"{amortized_elbo:.3f}",
        ),
        (
            "AutoNormal, re-optimized" + ("" if reached else " (target not reached)"),
            f"{1e3 * seconds:.0f} ms",
            str(steps if reached else args.max_steps),
            f"{elbo:.3f}",
        ),
    ]
    print_table(
        f"Inferring {len(x_new)} new images (ELBO per image, {args.particles} particles)",
        ("method", "time", "steps", "ELBO"),
        rows,
    )
    print(f"\ntime ratio (AutoNormal / forward pass): {seconds / forward:.0f}x")
    plot(curve, forward, amortized_elbo)


def plot(curve: list[tuple[float, float]], forward: float, amortized_elbo: float) -> None:
    figure = Figure(figsize=(6.5, 4))
    axes = figure.subplots()
    times, elbos = zip(*curve, strict=True)
    axes.plot(times, elbos, label="AutoNormal, re-optimized")
    axes.scatter(
        [forward], [amortized_elbo], color="tab:red", zorder=3, label="amortized: one pass"
    )
    axes.axhline(amortized_elbo, color="tab:red", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    axes.set_ylim(amortized_elbo - 15, max(elbos) + 2)
    axes.set_xlabel("seconds (log scale)")
    axes.set_ylabel("ELBO per new image (nats)")
    axes.legend(loc="lower right")
    save_figure(figure, "new_data.png")


if __name__ == "__main__":
    main()
