"""Step time against the minibatch size, for our guide and the hand-written one.

The set-up of ``bench_step_time.py`` (digits VAE, diagonal Normal family, the
same encoder in both guides, interleaved blocks, process CPU time, one torch
thread) at each minibatch size of ``--batch-sizes``. A guide's fixed cost per
step shows at small batches; at large ones both are dominated by the networks.

Usage::

    python benchmarks/bench_batch_size.py
    python benchmarks/bench_batch_size.py --batch-sizes 32,512 --repeats 21
"""

from __future__ import annotations

import argparse
import warnings

import torch
from bench_step_time import bench
from common import Figure, machine_line, print_table, save_figure
from pyro.infer import JitTrace_ELBO, Trace_ELBO

from pyro_amortized.datasets import train_test_split_digits

ELBOS = {"Trace_ELBO": Trace_ELBO, "JitTrace_ELBO": JitTrace_ELBO}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="16,64,256,1024", help="minibatch sizes")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=51, help="timed blocks per guide")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps per guide first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    x, _, _, _ = train_test_split_digits(seed=args.seed)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    print(f"digits VAE, {len(x)} images, diagonal Normal family; batch sizes {sizes}")
    print(machine_line(1, args.clock))
    results = {}
    for name, elbo in ELBOS.items():
        for size in sizes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # JIT tracer warnings
                results[name, size] = bench("normal", elbo, x, args, batch_size=size)
            print(f"  {name}, batch {size}: ratio {results[name, size]['ratio']:.3f}", flush=True)
    rows = [
        (
            name,
            str(size),
            f"{1e3 * r['ours']:.2f} ms",
            f"{1e3 * r['hand']:.2f} ms",
            f"{r['ratio']:.3f}",
        )
        for (name, size), r in results.items()
    ]
    print_table(
        "Median time per SVI step against the minibatch size (ratio: ours / hand-written)",
        ("ELBO", "batch", "amortized guide", "hand-written", "ratio"),
        rows,
    )
    plot(results, sizes)


def plot(results: dict, sizes: list[int]) -> None:
    figure = Figure(figsize=(6.5, 4))
    axes = figure.subplots()
    for name, color in zip(ELBOS, ("tab:blue", "tab:orange"), strict=True):
        for kind, style in (("ours", "o-"), ("hand", "s--")):
            label = f"{'amortized' if kind == 'ours' else 'hand-written'}, {name}"
            times = [1e3 * results[name, size][kind] for size in sizes]
            axes.plot(sizes, times, style, color=color, label=label)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("minibatch size")
    axes.set_ylabel("time per step (ms)")
    axes.legend()
    save_figure(figure, "batch_size.png")


if __name__ == "__main__":
    main()
