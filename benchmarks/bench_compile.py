"""Whether a compiled encoder pays: ``torch.compile`` on the default encoder.

The digits VAE of :mod:`pyro_amortized.models` (latent dimension 10,
minibatches of 128) is trained with two amortized guides, one with the default
encoder as it is and one with the same encoder wrapped in ``torch.compile``.
After warm-up steps (which include the compilation), blocks of steps of the two
alternate; the script reports the median time per step of each and the median
over blocks of the ratio (compiled / eager), in process CPU time.

Usage::

    python benchmarks/bench_compile.py
    python benchmarks/bench_compile.py --blocks 11
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import pyro
import torch
from common import Figure, machine_line, print_table, save_figure
from pyro.infer import SVI, Trace_ELBO

from pyro_amortized import AutoAmortizedGuide, MLPEncoder
from pyro_amortized.datasets import train_test_split_digits
from pyro_amortized.models import Decoder, digits_vae_model


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=30, help="steps before timing")
    parser.add_argument("--blocks", type=int, default=31, help="timed blocks per guide")
    parser.add_argument("--block-steps", type=int, default=10, help="steps per block")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args()


def make_svi(x: torch.Tensor, compiled: bool) -> SVI:
    name = "compiled" if compiled else "eager"
    model = digits_vae_model(Decoder(10, 256, x.shape[1]), 10, batch_size=128, name=name)
    encoder = MLPEncoder((256,))
    if compiled:
        encoder = torch.compile(encoder, dynamic=False)
    guide = AutoAmortizedGuide(model, encoder=encoder)
    return SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    pyro.set_rng_seed(0)
    x, _, _, _ = train_test_split_digits(seed=0)
    print(machine_line(args.threads))
    svis = {"eager": make_svi(x, False), "compiled": make_svi(x, True)}
    for kind, svi in svis.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            svi.step(x)
        print(f"{kind}: {args.warmup} warm-up steps in {time.perf_counter() - start:.1f} s")
    per_step = {kind: [] for kind in svis}
    ratios = []
    for block in range(args.blocks):
        order = ("eager", "compiled") if block % 2 == 0 else ("compiled", "eager")
        for kind in order:
            start = time.process_time()
            for _ in range(args.block_steps):
                svis[kind].step(x)
            per_step[kind].append((time.process_time() - start) / args.block_steps)
        ratios.append(per_step["compiled"][-1] / per_step["eager"][-1])
    print_table(
        "Step time, digits VAE (median over blocks)",
        ("encoder", "ms per step"),
        [(kind, f"{1e3 * statistics.median(times):.2f}") for kind, times in per_step.items()],
    )
    print(f"\nratio compiled / eager (median over blocks): {statistics.median(ratios):.3f}")
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    axes.plot(ratios, marker="o", linestyle="")
    axes.axhline(1.0, color="grey", linewidth=1)
    axes.set_xlabel("block")
    axes.set_ylabel("step time, compiled / eager")
    save_figure(figure, "compile.png")


if __name__ == "__main__":
    main()
