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

The encoder has one hidden layer of ``--hidden`` units (256 for the VAE and
32 for the factor model by default).

For ``--new`` rows it has not seen, the amortized guide infers the local
posteriors by one forward pass (``guide.encode``). ``AutoNormal``, which keeps
a location and a scale per row, must be optimized on the new rows (Adam, full
batch, the learning rate falling tenfold over ``--max-steps``, or to
``--decay`` of itself) until its ELBO reaches the amortized guide's; only its
steps are timed, not the ELBO checks. At each check five amortized passes are
timed in a row, so that the two are timed under the same load; the pass's time
is the median of those. Times are the process's CPU time (``--clock cpu``, the
default) or wall-clock time (``--clock wall``). ``AutoNormal`` is run once for
each initial learning rate in ``--lrs``, and the smallest ratio counts, so
that the baseline is tuned. Both ELBOs are per row, estimated with
``--particles`` particles.

Usage::

    python benchmarks/bench_new_data.py
    python benchmarks/bench_new_data.py --model factor
    python benchmarks/bench_new_data.py --data digits --hidden 32
    python benchmarks/bench_new_data.py --data digits --train-steps 500 --new 200 --lrs 0.1
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from common import CLOCKS, Figure, add_clock_option, machine_line, print_table, save_figure
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
PASSES_PER_CHECK = 5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("vae", "factor"), default="vae")
    parser.add_argument("--data", choices=("fashion", "digits"), default=None, help="VAE data")
    parser.add_argument("--fashion-root", default=str(FASHION_MNIST_ROOT))
    parser.add_argument("--train-steps", type=int, default=3000, help="amortized training")
    parser.add_argument("--new", type=int, default=1000, help="new rows to infer")
    parser.add_argument("--hidden", type=int, help="encoder width (VAE 256, factor 32)")
    parser.add_argument(
        "--lrs",
        type=lambda text: [float(rate) for rate in text.split(",")],
        default=[0.05, 0.1, 0.2, 0.5],
        help="AutoNormal's initial Adam rates, comma-separated: each is run, the best counts",
    )
    parser.add_argument("--max-steps", type=int, default=5000, help="AutoNormal's limit")
    parser.add_argument(
        "--decay", type=float, default=0.1, help="AutoNormal's final rate over its initial rate"
    )
    parser.add_argument("--check-every", type=int, default=10, help="steps between checks")
    parser.add_argument("--particles", type=int, default=100, help="ELBO particles")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_clock_option(parser)
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
    guide = AutoAmortizedGuide(model, hidden_dims=(args.hidden or HIDDEN_DIM,))
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

    guide = AutoAmortizedGuide(model, hidden_dims=(args.hidden or 32,), dependencies="mean_field")
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


def timed(function: Callable[[], object], clock: Callable[[], float]) -> float:
    """Seconds that one call of ``function`` takes on ``clock``."""
    start = clock()
    function()
    return clock() - start


@dataclass
class Run:
    """AutoNormal re-optimized from one initial learning rate."""

    seconds: float  # its steps' time, until the target ELBO or until it stopped
    steps: int | None  # steps to the target ELBO; None if not reached
    elbo: float  # its ELBO per row at the last check
    curve: list[tuple[float, float]]  # (seconds, ELBO) at each check
    pass_seconds: list[float]  # amortized passes, timed at each check

    @property
    def ratio(self) -> float:
        """Its time over the median time of one amortized pass."""
        return self.seconds / statistics.median(self.pass_seconds)


def optimize_autonormal(
    model,
    x: torch.Tensor,
    target: float,
    lr: float,
    one_pass: Callable[[], object],
    args: argparse.Namespace,
    limit: float,
) -> Run:
    """AutoNormal's steps from the initial rate ``lr`` until its ELBO reaches
    ``target``, within ``--max-steps`` and within ``limit`` seconds (a faster
    rate's time). At each check, ``PASSES_PER_CHECK`` amortized passes
    (``one_pass``) are timed in a row too, so that both are timed under the
    same load of the machine."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    guide = AutoNormal(model)
    decay = args.decay ** (1 / args.max_steps)  # the rate falls to lr * decay over max_steps
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": lr, "lrd": decay}), Trace_ELBO())
    clock = CLOCKS[args.clock]
    run = Run(0.0, None, -math.inf, [], [])
    for step in range(1, args.max_steps + 1):
        run.seconds += timed(lambda: svi.step(x), clock)
        if step % args.check_every == 0:
            with torch.no_grad():
                run.pass_seconds += [timed(one_pass, clock) for _ in range(PASSES_PER_CHECK)]
            run.elbo = elbo_per_row(model, guide, x, args.particles)
            run.curve.append((run.seconds, run.elbo))
            if run.elbo >= target:
                run.steps = step
                break
            if run.seconds > limit:
                break
    return run


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
    print(machine_line(args.threads, args.clock))
    train = train_factor if args.model == "factor" else train_vae
    model, guide, fixed = train(x_train, args)
    amortized_elbo = elbo_per_row(model, local_guide(guide), x_new, args.particles)
    runs, fastest = {}, math.inf
    one_pass = partial(guide.encode, x_new)
    for lr in args.lrs:
        runs[lr] = optimize_autonormal(model, x_new, amortized_elbo, lr, one_pass, args, fastest)
        if runs[lr].steps is not None:
            fastest = min(fastest, runs[lr].seconds)
    forward = statistics.median(t for run in runs.values() for t in run.pass_seconds)
    print_results(runs, forward, amortized_elbo, len(x_new), args.particles)
    if fixed is not None:
        optimum = best_diagonal_elbo(fixed, x_new)
        print(f"\nthe family's best ELBO per row (closed form): {optimum:.3f}")
    print_ratio(runs)
    curves = {lr: run.curve for lr, run in runs.items()}
    width = "" if args.hidden is None else f"_hidden{args.hidden}"
    plot(curves, forward, amortized_elbo, f"new_data_{args.model}{width}.png")


def print_results(
    runs: dict[float, Run], forward: float, amortized_elbo: float, num_rows: int, particles: int
) -> None:
    """The table: the amortized pass, then AutoNormal from each learning rate."""
    rows = [
        (
            "AutoAmortizedGuide, one forward pass",
            f"{1e3 * forward:.2f} ms",
            "-",
            f"{amortized_elbo:.3f}",
            "-",
        )
    ]
    for lr, run in runs.items():
        reached = run.steps is not None
        rows.append(
            (
                f"AutoNormal, re-optimized, lr {lr:g}"
                + ("" if reached else " (not reached, or slower: stopped)"),
                f"{1e3 * run.seconds:.0f} ms",
                str(run.steps) if reached else "-",
                f"{run.elbo:.3f}",
                f"{run.ratio:.0f}" if reached else "-",
            )
        )
    print_table(
        f"Inferring {num_rows} new rows (ELBO per row, {particles} particles; "
        "time ratio against the passes timed during its run)",
        ("method", "time", "steps", "ELBO", "time ratio"),
        rows,
    )


def print_ratio(runs: dict[float, Run]) -> None:
    """The smallest ratio among the learning rates that reached the target."""
    reached = [(run.ratio, lr) for lr, run in runs.items() if run.steps is not None]
    if reached:
        ratio, lr = min(reached)
        print(f"\ntime ratio, AutoNormal at its best rate (lr {lr:g}) / one pass: {ratio:.0f}x")
    else:
        print("\nno learning rate took AutoNormal to the amortized ELBO: raise --max-steps")


def plot(
    curves: dict[float, list[tuple[float, float]]],
    forward: float,
    amortized_elbo: float,
    name: str,
) -> None:
    figure = Figure(figsize=(6.5, 4))
    axes = figure.subplots()
    for lr, curve in curves.items():
        times, elbos = zip(*curve, strict=True)
        axes.plot(times, elbos, label=f"AutoNormal, re-optimized, lr {lr:g}")
    axes.scatter([forward], [amortized_elbo], color="black", zorder=3, label="amortized: one pass")
    axes.axhline(amortized_elbo, color="black", linestyle=":", linewidth=1)
    axes.set_xscale("log")
    best = max(elbo for curve in curves.values() for _, elbo in curve)
    axes.set_ylim(amortized_elbo - 15, best + 2)
    axes.set_xlabel("seconds (log scale)")
    axes.set_ylabel("ELBO per new row (nats)")
    axes.legend(loc="lower left", fontsize="small")
    save_figure(figure, name)


if __name__ == "__main__":
    main()
