"""Inferring new data: one forward pass against re-optimising per-point parameters.

Two models are trained with ``AutoAmortizedGuide`` and then frozen:

* ``--model vae``: a VAE (:mod:`pyro_amortized.models`) on binarized images,
  Fashion-MNIST by default when its files are present (``--data fashion``, the
  training images and 1,000 test images; ``--fashion-root`` to find them), or
  scikit-learn's 8x8 digits (``--data digits``: the first 797 images, and the
  other 1,000); its decoder is frozen.
* ``--model factor``: Bayesian factor analysis of the 8x8 digits' grey levels
  (the pixels whose grey level varies, with a standard deviation above 1 of 16,
  each centred, all scaled by one standard deviation; loadings, offset and
  noise are global latent sites, five factors per image), trained on the
  first 797 images; its global sites are then fixed at the guide's medians,
  and the family's best ELBO (closed form) is printed for reference.

For ``--new`` rows it has not seen, the amortized guide infers the local
posteriors by one forward pass (``guide.encode``), timed as the median of
repeated passes. ``AutoNormal``, which keeps a location and a scale per row,
must be optimized on the new rows (Adam, full batch, the learning rate falling
tenfold over ``--max-steps``, or to ``--decay`` of itself) until its ELBO
reaches the amortized guide's; only its steps are timed, not the ELBO checks.
Both ELBOs are per row, estimated with ``--particles`` particles.

Usage::

    python benchmarks/bench_new_data.py
    python benchmarks/bench_new_data.py --model factor
    python benchmarks/bench_new_data.py --data digits --train-steps 500 --new 200
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from common import Figure, machine_line, print_table, save_figure
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from sklearn.datasets import load_digits

from pyro_amortized import AutoAmortizedGuide
from pyro_amortized.datasets import FASHION_MNIST_ROOT, load_digits_binarized, load_fashion_mnist
from pyro_amortized.models import Decoder, digits_vae_model

LATENT_DIM = 5
HIDDEN_DIM = 256
FACTOR_GLOBALS = ("loadings", "offset", "noise")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("vae", "factor"), default="vae")
    parser.add_argument("--data", choices=("fashion", "digits"), default=None, help="VAE data")
    parser.add_argument("--fashion-root", default=str(FASHION_MNIST_ROOT))
    parser.add_argument("--train-steps", type=int, default=3000, help="amortized training")
    parser.add_argument("--new", type=int, default=1000, help="new rows to infer")
    parser.add_argument("--lr", type=float, default=0.05, help="AutoNormal's Adam rate")
    parser.add_argument("--max-steps", type=int, default=5000, help="AutoNormal's limit")
    parser.add_argument(
        "--decay", type=float, default=0.1, help="AutoNormal's final rate, as a fraction of --lr"
    )
    parser.add_argument("--check-every", type=int, default=10, help="steps between checks")
    parser.add_argument("--particles", type=int, default=100, help="ELBO particles")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def elbo_per_row(model, guide, x: torch.Tensor, particles: int) -> float:
    """The ELBO per row, with vectorized particles and a fixed seed. The random
    state of the run is restored after: an optimizer checked every few steps
    must not see the same draws again and again."""
    estimator = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(0)
        return -estimator.loss(model, guide, x) / len(x)


def local_guide(guide: AutoAmortizedGuide) -> Callable[[torch.Tensor], None]:
    """The amortized guide's local sites alone, from one forward pass: the
    guide of the frozen model, whose global sites are fixed."""

    def sample_locals(x: torch.Tensor) -> None:
        with pyro.plate("data", len(x)):
            pyro.sample("z", guide.encode(x)["z"])

    return sample_locals


def train_vae(x: torch.Tensor, args: argparse.Namespace):
    decoder = Decoder(LATENT_DIM, HIDDEN_DIM, x.shape[1])
    model = digits_vae_model(decoder, LATENT_DIM, batch_size=128)
    guide = AutoAmortizedGuide(model, hidden_dims=(HIDDEN_DIM,))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    for _ in range(args.train_steps):
        svi.step(x)
    # Every row at once, decoder frozen: the model the new rows are scored under.
    frozen = poutine.block(digits_vae_model(decoder, LATENT_DIM), hide_types=["param"])
    return frozen, guide, None


def factor_model(x: torch.Tensor, batch_size: int | None = None) -> None:
    """Bayesian factor analysis: global loadings, offset and noise; five factors a row."""
    features = x.shape[1]
    loadings = pyro.sample(
        "loadings", dist.Normal(0.0, 1.0).expand([LATENT_DIM, features]).to_event(2)
    )
    offset = pyro.sample("offset", dist.Normal(0.0, 1.0).expand([features]).to_event(1))
    noise = pyro.sample("noise", dist.LogNormal(-1.0, 1.0).expand([features]).to_event(1))
    subsample_size = min(batch_size, len(x)) if batch_size else None
    with pyro.plate("data", len(x), subsample_size=subsample_size):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT_DIM]).to_event(1))
        batch = pyro.subsample(x, event_dim=1)
        pyro.sample("x", dist.Normal(z @ loadings + offset, noise).to_event(1), obs=batch)


def train_factor(x: torch.Tensor, args: argparse.Namespace):
    def model(x):
        factor_model(x, batch_size=128)

    guide = AutoAmortizedGuide(model, hidden_dims=(32,), dependencies="mean_field")
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.01, "lrd": 0.9995}), Trace_ELBO())
    for _ in range(args.train_steps):
        svi.step(x)
    with torch.no_grad():
        medians = guide.median(x)
    fixed = {name: medians[name] for name in FACTOR_GLOBALS}
    frozen = poutine.block(poutine.condition(factor_model, data=fixed), hide=list(FACTOR_GLOBALS))
    return frozen, guide, fixed


def best_diagonal_elbo(fixed: dict[str, torch.Tensor], x: torch.Tensor) -> float:
    """The factor model's highest ELBO per row over diagonal Normals q(z_i), in
    closed form: the mean of the exact posterior, and the inverse square root of
    its precision's diagonal as the scales."""
    loadings, offset, noise = (fixed[name] for name in FACTOR_GLOBALS)
    precision = torch.eye(LATENT_DIM) + (loadings / noise**2) @ loadings.T
    loc = torch.linalg.solve(precision, (loadings / noise**2) @ (x - offset).T).T
    scale = precision.diagonal().rsqrt().expand_as(loc)
    squared_error = (x - loc @ loadings - offset) ** 2 + scale**2 @ loadings**2
    expected_log_likelihood = (
        -0.5 * math.log(2 * math.pi) - noise.log() - squared_error / (2 * noise**2)
    ).sum(-1)
    kl = 0.5 * (loc**2 + scale**2 - 1 - 2 * scale.log()).sum(-1)
    return (expected_log_likelihood - kl).mean().item()


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
    decay = args.decay ** (1 / args.max_steps)  # the rate falls to lr * decay over max_steps
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": args.lr, "lrd": decay}), Trace_ELBO())
    seconds, curve = 0.0, []
    for step in range(1, args.max_steps + 1):
        start = time.perf_counter()
        svi.step(x)
        seconds += time.perf_counter() - start
        if step % args.check_every == 0:
            elbo = elbo_per_row(model, guide, x, args.particles)
            curve.append((seconds, elbo))
            if elbo >= target:
                return seconds, step, elbo, curve
    return seconds, None, curve[-1][1], curve


def load_rows(args: argparse.Namespace) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The training rows and ``args.new`` new ones."""
    if args.model == "factor":
        grey = torch.tensor(load_digits().data, dtype=torch.float32)
        train, new = grey[: -args.new], grey[-args.new :]
        varied = train.std(0) > 1.0  # drop the border pixels, near 0 in every image
        train, new = train[:, varied], new[:, varied]
        mean, std = train.mean(0), train.std()  # pixels centred, one scale for all
        return "digits factor analysis", (train - mean) / std, (new - mean) / std
    data = args.data or ("fashion" if Path(args.fashion_root).is_dir() else "digits")
    if data == "fashion":
        x_train, _ = load_fashion_mnist("train", root=args.fashion_root)
        x_test, _ = load_fashion_mnist("test", root=args.fashion_root)
        return "Fashion-MNIST VAE", x_train, x_test[: args.new]
    images, _ = load_digits_binarized()
    return "digits VAE", images[: -args.new], images[-args.new :]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    name, x_train, x_new = load_rows(args)
    print(
        f"{name}, latent {LATENT_DIM}: trained on {len(x_train)} rows for "
        f"{args.train_steps} steps; {len(x_new)} new rows"
    )
    print(machine_line(args.threads, "wall"))
    train = train_factor if args.model == "factor" else train_vae
    model, guide, fixed = train(x_train, args)
    forward = time_forward_pass(guide, x_new)
    amortized_elbo = elbo_per_row(model, local_guide(guide), x_new, args.particles)
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
        f"Inferring {len(x_new)} new rows (ELBO per row, {args.particles} particles)",
        ("method", "time", "steps", "ELBO"),
        rows,
    )
    if fixed is not None:
        optimum = best_diagonal_elbo(fixed, x_new)
        print(f"\nthe family's best ELBO per row (closed form): {optimum:.3f}")
    print(f"\ntime ratio (AutoNormal / forward pass): {seconds / forward:.0f}x")
    plot(curve, forward, amortized_elbo, f"new_data_{args.model}.png")


def plot(
    curve: list[tuple[float, float]], forward: float, amortized_elbo: float, name: str
) -> None:
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
    axes.set_ylabel("ELBO per new row (nats)")
    axes.legend(loc="lower right")
    save_figure(figure, name)


if __name__ == "__main__":
    main()
