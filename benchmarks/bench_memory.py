"""Growth with the number of rows: parameters and peak memory against AutoNormal.

The factor model of ``examples/streaming.py`` is trained from a memory-mapped
file of ``N`` rows (``--rows``, 1e3 to 1e6 by default), in shuffled
minibatches of 256 read through a ``DataLoader`` (the model's plate takes the
minibatch's indices), for ``--steps`` steps, with ``AutoAmortizedGuide`` and
with ``AutoNormal``. Each run is a fresh process, so its peak memory is its
own: the peak anonymous resident memory (Linux ``RssAnon``: the heap, not the
file's pages) read after every step. The table gives the guide's parameter
count and that peak; the plot shows both against ``N``.

Usage::

    python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --rows 1000,100000 --steps 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyro
import torch
from common import Figure, machine_line, print_table, save_figure
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from streaming import MemmapRows, anonymous_memory_mb, minibatches, model, write_rows  # noqa: E402

from pyro_amortized import AutoAmortizedGuide  # noqa: E402

GUIDES = ("AutoAmortizedGuide", "AutoNormal")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000,10000,100000,1000000", help="values of N")
    parser.add_argument("--steps", type=int, default=50, help="SVI steps per run")
    parser.add_argument("--child", nargs=2, metavar=("GUIDE", "PATH"), help=argparse.SUPPRESS)
    return parser.parse_args()


def make_guide(name: str):
    if name == "AutoAmortizedGuide":
        return AutoAmortizedGuide(model, dependencies="mean_field")
    # AutoNormal keeps parameters per row; its plate must take the model's rows.
    return AutoNormal(
        model,
        create_plates=lambda x, indices, num_data: pyro.plate("data", num_data, subsample=indices),
    )


def child(guide_name: str, path: Path, steps: int) -> None:
    """One run, in its own process: prints its figures as JSON."""
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    rows = MemmapRows(path)
    guide = make_guide(guide_name)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    batches = endless(minibatches(rows, 256))
    peak = 0.0
    for _ in range(steps):
        indices, x = next(batches)
        svi.step(x, indices, len(rows))
        peak = max(peak, anonymous_memory_mb() or 0.0)
    count = sum(p.numel() for p in pyro.get_param_store().values())
    print(json.dumps({"parameters": count, "peak_mb": peak}))


def endless(loader):
    """Epoch after epoch of a loader."""
    while True:
        yield from loader


def run(guide: str, path: Path, steps: int) -> dict:
    command = [sys.executable, __file__, "--steps", str(steps), "--child", guide, str(path)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{guide} on {path.name} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args.steps)
        return
    sizes = [int(float(n)) for n in args.rows.split(",")]
    print(f"factor model, minibatches of 256, {args.steps} steps per run, one process per run")
    print(machine_line(1))
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            path = Path(folder) / f"rows_{size}.npy"
            write_rows(path, size)
            for guide in GUIDES:
                results[guide, size] = run(guide, path, args.steps)
                print(f"  N={size:,} {guide}: {results[guide, size]}", flush=True)
            path.unlink()
    rows = [
        (
            f"{size:,}",
            *(f"{results[guide, size]['parameters']:,}" for guide in GUIDES),
            *(f"{results[guide, size]['peak_mb']:.1f} MB" for guide in GUIDES),
        )
        for size in sizes
    ]
    header = ("N", *(f"parameters, {g}" for g in GUIDES), *(f"peak, {g}" for g in GUIDES))
    print_table("Parameters and peak anonymous memory against N", header, rows)
    first, last = sizes[0], sizes[-1]
    for guide in GUIDES:
        growth = results[guide, last]["peak_mb"] / results[guide, first]["peak_mb"] - 1
        print(f"{guide}: peak memory at N={last:,} is {100 * growth:+.1f}% of N={first:,}")
    plot(results, sizes)


def plot(results: dict, sizes: list[int]) -> None:
    figure = Figure(figsize=(10, 3.8))
    count_axes, memory_axes = figure.subplots(1, 2)
    for guide in GUIDES:
        count_axes.plot(sizes, [results[guide, n]["parameters"] for n in sizes], "o-", label=guide)
        memory_axes.plot(sizes, [results[guide, n]["peak_mb"] for n in sizes], "o-", label=guide)
    for axes, label in ((count_axes, "parameters"), (memory_axes, "peak memory (MB)")):
        axes.set_xscale("log")
        axes.set_xlabel("rows N")
        axes.set_ylabel(label)
        axes.legend()
    count_axes.set_yscale("log")
    save_figure(figure, "memory.png")


if __name__ == "__main__":
    main()
