"""Time of one SVI step: the amortized guides against hand-written guides.

Each local family (``--families``: diagonal Normal, full and low-rank
multivariate Normal, Delta, normalizing flow with ``flow="iaf"``) is compared
with the hand-written guide of the same family.

Both guides run on the same model (the digits VAE of
:mod:`pyro_amortized.models`, minibatches drawn by a subsampled data plate) and
have the same encoder: ``Linear(64, hidden) + ReLU``, then linear heads for the
``loc`` and the softplus ``scale`` of ``z``. The hand-written guide is
:class:`~pyro_amortized.models.DigitsEncoderGuide`.

The two are timed in one process, interleaved: after a warm-up, each repetition
times a block of ``--steps`` steps of each guide, alternating which goes first.
The table gives the median time per step of each and the median over
repetitions of the ratio of the two blocks' times (ours / hand-written), for
``Trace_ELBO`` and ``JitTrace_ELBO``.

Torch runs on one thread by default (``--threads``). Time is the process's CPU
time by default (``--clock cpu``), which other programs running on the machine
disturb much less than wall-clock time; with one thread the two agree on an idle
machine. ``--clock wall`` uses wall-clock time.

Usage::

    python benchmarks/bench_step_time.py
    python benchmarks/bench_step_time.py --steps 50 --repeats 41 --clock wall
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Callable

import pyro
import torch
from common import CLOCKS, Figure, add_clock_option, machine_line, print_table, save_figure
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO

from pyro_amortized import (
    AutoAmortizedGuide,
    AutoAmortizedLowRankMultivariateNormal,
    AutoAmortizedNormalizingFlow,
)
from pyro_amortized.datasets import train_test_split_digits
from pyro_amortized.models import Decoder, DigitsEncoderGuide, digits_vae_model

LATENT_DIM = 10
HIDDEN_DIM = 256
BATCH_SIZE = 128
RANK = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=101, help="timed blocks per guide and ELBO")
    parser.add_argument("--warmup", type=int, default=100, help="untimed steps per guide first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_clock_option(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--families",
        default="normal,multivariate_normal,lowrank_multivariate_normal,delta,normalizing_flow",
        help="comma-separated local families to compare",
    )
    return parser.parse_args()


def make_svi(
    kind: str, family: str, elbo: Callable[[], object], x: torch.Tensor, batch_size: int
) -> SVI:
    """An SVI object for one guide, with its own decoder name in the param store."""
    decoder = Decoder(LATENT_DIM, HIDDEN_DIM, x.shape[1])
    model = digits_vae_model(decoder, LATENT_DIM, batch_size=batch_size, name=f"decoder_{kind}")
    if kind == "ours" and family == "lowrank_multivariate_normal":
        guide = AutoAmortizedLowRankMultivariateNormal(model, hidden_dims=(HIDDEN_DIM,), rank=RANK)
    elif kind == "ours" and family == "normalizing_flow":  # IAF: JitTrace_ELBO traces it
        guide = AutoAmortizedNormalizingFlow(model, hidden_dims=(HIDDEN_DIM,), flow="iaf")
    elif kind == "ours":
        guide = AutoAmortizedGuide(model, hidden_dims=(HIDDEN_DIM,), site_families={"z": family})
    else:
        guide = DigitsEncoderGuide(
            x.shape[1],
            LATENT_DIM,
            HIDDEN_DIM,
            batch_size=batch_size,
            name="hand_encoder",
            family=family,
            rank=RANK,
        )
    return SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo())


def time_block(svi: SVI, x: torch.Tensor, steps: int, clock: Callable[[], float]) -> float:
    """Seconds per step over ``steps`` consecutive steps."""
    start = clock()
    for _ in range(steps):
        svi.step(x)
    return (clock() - start) / steps


def bench(
    family: str,
    elbo: Callable[[], object],
    x: torch.Tensor,
    args: argparse.Namespace,
    batch_size: int = BATCH_SIZE,
) -> dict[str, float]:
    """Median seconds per step of each guide, and the median ratio ours / hand."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    clock = CLOCKS[args.clock]
    svis = {kind: make_svi(kind, family, elbo, x, batch_size) for kind in ("ours", "hand")}
    for svi in svis.values():
        time_block(svi, x, args.warmup, clock)
    times: dict[str, list[float]] = {"ours": [], "hand": []}
    ratios = []
    for repeat in range(args.repeats):
        order = ("ours", "hand") if repeat % 2 == 0 else ("hand", "ours")
        block = {kind: time_block(svis[kind], x, args.steps, clock) for kind in order}
        for kind, seconds in block.items():
            times[kind].append(seconds)
        ratios.append(block["ours"] / block["hand"])
    return {
        "ours": statistics.median(times["ours"]),
        "hand": statistics.median(times["hand"]),
        "ratio": statistics.median(ratios),
        "ratio_q1": statistics.quantiles(ratios, n=4)[0],
        "ratio_q3": statistics.quantiles(ratios, n=4)[2],
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    x_train, _, _, _ = train_test_split_digits(seed=args.seed)
    elbos = {
        "Trace_ELBO": lambda: Trace_ELBO(),
        "JitTrace_ELBO": lambda: JitTrace_ELBO(),
    }
    print(
        f"digits VAE: {len(x_train)} images of {x_train.shape[1]} pixels, latent_dim "
        f"{LATENT_DIM}, encoder hidden {HIDDEN_DIM}, batch {BATCH_SIZE}; "
        f"{args.warmup} warm-up steps, then {args.repeats} interleaved blocks of "
        f"{args.steps} steps per guide"
    )
    print(machine_line(args.threads, args.clock))
    results = {}
    for family in args.families.split(","):
        for name, elbo in elbos.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # JIT tracer warnings
                result = results[family, name] = bench(family, elbo, x_train, args)
            print(
                f"  {family}, {name}: ours {1e3 * result['ours']:.2f} ms, "
                f"hand-written {1e3 * result['hand']:.2f} ms",
                flush=True,
            )

    header = ("family", "ELBO", "amortized guide", "hand-written", "ratio", "ratio IQR")
    rows = [
        (
            *name,
            f"{1e3 * result['ours']:.2f} ms",
            f"{1e3 * result['hand']:.2f} ms",
            f"{result['ratio']:.3f}",
            f"{result['ratio_q1']:.3f}-{result['ratio_q3']:.3f}",
        )
        for name, result in results.items()
    ]
    print_table(
        "Median time per SVI step (ratio: ours / hand-written, median over blocks)", header, rows
    )
    plot(results)


def plot(results: dict[tuple[str, str], dict[str, float]]) -> None:
    """The median ratios with their interquartile ranges, one bar per row."""
    figure = Figure(figsize=(7, 0.45 * len(results) + 1.2))
    axes = figure.subplots()
    labels = [f"{family}, {elbo}" for family, elbo in results]
    ratios = [result["ratio"] for result in results.values()]
    spread = [
        [result["ratio"] - result["ratio_q1"] for result in results.values()],
        [result["ratio_q3"] - result["ratio"] for result in results.values()],
    ]
    positions = range(len(labels))
    axes.barh(positions, ratios, xerr=spread, color="tab:blue", alpha=0.7)
    axes.axvline(1.0, color="black", linewidth=1)
    axes.axvline(1.05, color="tab:red", linestyle="--", linewidth=1, label="1.05")
    axes.set_yticks(list(positions), labels)
    axes.invert_yaxis()
    axes.set_xlim(0.8, max(1.2, max(ratios) + 0.1))
    axes.set_xlabel("time per step, amortized / hand-written (median, IQR)")
    axes.legend(loc="lower right")
    save_figure(figure, "step_time.png")


if __name__ == "__main__":
    main()
