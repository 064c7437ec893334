"""What the benchmark scripts share: the machine line, tables and plots."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import pyro
import torch

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402  (after choosing the backend)

OUTPUT_DIR = Path(os.environ.get("PYRO_AMORTIZED_BENCH_DIR", "benchmark-results"))
"""Where the plots go (``PYRO_AMORTIZED_BENCH_DIR``, by default
``benchmark-results/`` under the working directory)."""


CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
"""The clocks a benchmark may time with: the process's CPU time, which other
programs on the machine disturb much less, or wall-clock time."""


def add_clock_option(parser: argparse.ArgumentParser) -> None:
    """``--clock cpu`` (the default) or ``--clock wall``: a key of :data:`CLOCKS`."""
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="cpu",
        help="process CPU time (default) or wall-clock time",
    )


def machine_line(threads: int, clock: str = "cpu") -> str:
    """Versions, threads, clock and processor: the context of every figure."""
    return (
        f"torch {torch.__version__}, pyro {pyro.__version__}, {threads} torch thread(s), "
        f"{clock} clock, {os.cpu_count()} CPU cores "
        f"({platform.processor() or platform.machine()})"
    )


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Markdown table under a title."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print()
    print(title)
    print()
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))


def save_figure(figure: Figure, name: str) -> Path:
    """Writes ``figure`` to ``OUTPUT_DIR / name`` and says where."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIR / name
    figure.savefig(path, dpi=120, bbox_inches="tight")
    print(f"\nplot: {path}")
    return path
