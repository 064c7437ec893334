"""Published Pyro programs: the hand-written guide against ``AutoAmortizedGuide``.

Each program of :mod:`examples.ports` (Pyro's VAE, semi-supervised VAE,
conditional VAE, LDA, HMM, the Gaussian mixture tutorial with assignments
summed out or sampled, ProdLDA, the deep Markov model) is trained twice with
the same optimizer, ELBO, steps, batch size, widths and seed: once with its own
guide, once with ``AutoAmortizedGuide(model)``. The table gives the program's metric for each
(an ELBO per data point on held-out data, or the test accuracy of the
semi-supervised VAE), the relative difference ``(amortized - hand) / |hand|``
and the ratio of step times (amortized / hand-written). Where the amortized
guide cannot run on a program, the row says so and the error follows the
table.

Step times are CPU time of the process, on ``--threads`` torch threads (one by
default). After both trainings, each goes on for ``--repeats`` blocks of
steps, the two alternating (each in its own param store), a block about
:data:`BLOCK_SECONDS` long; the ratio is the median over the blocks of the
ratio of the two guides' time per step. Timed so, side by side, the ratio does
not drift with the machine's state between the two trainings.

Usage::

    python benchmarks/bench_programs.py
    python benchmarks/bench_programs.py --programs vae,ss_vae --steps 500
    python benchmarks/bench_programs.py --short          # tiny data, a few steps
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from common import machine_line, print_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the examples package

from examples.ports import PROGRAMS, cvae, dmm, gmm, hmm, lda, prodlda, ss_vae, vae  # noqa: E402
from pyro_amortized.datasets import FASHION_MNIST_ROOT  # noqa: E402

RUNS: dict[str, tuple[Callable[..., dict], dict]] = {
    "vae": (vae.run, {"steps": 300}),
    "ss_vae": (ss_vae.run, {"steps": 250}),
    "ss_vae_aux": (ss_vae.run, {"steps": 250, "aux_loss": True}),
    "cvae": (cvae.run, {"steps": 300}),
    "lda": (lda.run, {"steps": 100}),
    "hmm": (hmm.run, {"steps": 100}),
    "gmm": (gmm.run, {"steps": 200}),
    "gmm_sampled": (gmm.run_sampled, {"steps": 200}),
    "prodlda": (prodlda.run, {"steps": 300}),
    "dmm": (dmm.run, {"steps": 500}),
}
"""Each program's ``run`` and its default budget."""

SHORT_STEPS = 5
"""Steps of each training with ``--short``."""

BLOCK_SECONDS = 0.25
"""About how long each timed block of steps lasts (at least one step)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--programs", default=",".join(PROGRAMS), help="comma-separated programs to compare"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="SVI steps per training (default: per program)"
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help=f"tiny data sets and (unless --steps) {SHORT_STEPS} steps",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--repeats", type=int, default=21, help="timed blocks per guide (3 with --short)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    unknown = set(args.programs.split(",")) - set(RUNS)
    if unknown:
        parser.error(f"unknown programs {sorted(unknown)}; choose among {', '.join(PROGRAMS)}")
    return args


def options(program: str, args: argparse.Namespace) -> dict:
    """The keyword arguments of both trainings of a program."""
    _, defaults = RUNS[program]
    steps = args.steps or (SHORT_STEPS if args.short else defaults["steps"])
    chosen = {"steps": steps, "seed": args.seed, "small": args.short}
    chosen.update({key: value for key, value in defaults.items() if key != "steps"})
    if program in ("gmm", "gmm_sampled") and args.short:
        chosen["tries"] = 5
    if program.startswith("ss_vae"):
        # One epoch of the program's split of Fashion-MNIST where Debian's
        # package is installed; the 8x8 digits otherwise.
        fashion = (FASHION_MNIST_ROOT / "train-images-idx3-ubyte.gz").is_file()
        chosen["dataset"] = "fashion_mnist" if fashion and not args.short else "digits"
    return chosen


def compare(program: str, args: argparse.Namespace) -> dict[str, dict | Exception]:
    """Both trainings of one program: each result, or the ``ValueError`` raised."""
    run, _ = RUNS[program]
    outcomes: dict[str, dict | Exception] = {}
    for kind in ("hand", "amortized"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outcomes[kind] = run(kind, **options(program, args))
                outcomes[kind]["params"] = pyro.get_param_store().get_state()
        except ValueError as error:
            outcomes[kind] = error
    if all(isinstance(outcome, dict) for outcome in outcomes.values()):
        repeats = 3 if args.short else args.repeats
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcomes["amortized"]["ratio"] = step_time_ratio(outcomes, repeats)
    return outcomes


def step_time_ratio(outcomes: dict[str, dict], repeats: int) -> float:
    """The median over ``repeats`` pairs of interleaved blocks of steps of the
    ratio of CPU time per step, amortized / hand-written. Each block continues
    a training in its own param store; one untimed block each warms up."""
    slowest = max(outcome["step_seconds"] for outcome in outcomes.values())
    steps = max(1, round(BLOCK_SECONDS / slowest))
    store = pyro.get_param_store()

    def block(kind: str) -> float:
        outcome = outcomes[kind]
        store.clear()
        store.set_state(outcome["params"])
        start = time.process_time()
        for index in range(steps):
            outcome["step"](index)
        seconds = (time.process_time() - start) / steps
        outcome["params"] = store.get_state()
        return seconds

    block("hand"), block("amortized")
    ratios = []
    for repeat in range(repeats):
        order = ("hand", "amortized") if repeat % 2 == 0 else ("amortized", "hand")
        seconds = {kind: block(kind) for kind in order}
        ratios.append(seconds["amortized"] / seconds["hand"])
    return statistics.median(ratios)


def row(program: str, outcomes: dict[str, dict | Exception]) -> tuple[str, ...]:
    """A table row: the metric of each guide, their relative difference and the
    step-time ratio (amortized / hand-written)."""
    hand, amortized = outcomes["hand"], outcomes["amortized"]
    metric_name = hand["metric_name"] if isinstance(hand, dict) else "-"
    cells = [
        f"{outcome['metric']:.4g}" if isinstance(outcome, dict) else "ValueError"
        for outcome in (hand, amortized)
    ]
    if isinstance(hand, dict) and isinstance(amortized, dict):
        difference = (amortized["metric"] - hand["metric"]) / abs(hand["metric"])
        cells += [f"{difference:+.1%}", f"{amortized['ratio']:.2f}"]
    else:
        cells += ["-", "-"]
    return (program, metric_name, *cells)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    programs = args.programs.split(",")
    print(machine_line(args.threads, "cpu"))
    results = {}
    for program in programs:
        results[program] = compare(program, args)
        print(
            f"  {program}: {', '.join(summary(o) for o in results[program].values())}", flush=True
        )
    header = ("program", "metric", "hand-written", "amortized", "rel. difference", "time ratio")
    rows = [row(program, outcomes) for program, outcomes in results.items()]
    budget = "--short: tiny data sets" if args.short else "full data sets"
    print_table(
        f"Hand-written guide against AutoAmortizedGuide ({budget}; metric higher is better; "
        "time ratio: amortized / hand-written, CPU time per step, median of interleaved blocks)",
        header,
        rows,
    )
    for program, outcomes in results.items():
        for kind, outcome in outcomes.items():
            if isinstance(outcome, Exception):
                message = str(outcome).split("\nTrace Shapes:")[0]  # Pyro appends the shapes
                print(f"\n{program}, {kind} guide: {type(outcome).__name__}: {message}")


def summary(outcome: dict | Exception) -> str:
    """One training's outcome in a few words, for the progress lines."""
    if isinstance(outcome, Exception):
        return f"{type(outcome).__name__}"
    return f"{outcome['metric']:.4g} ({1e3 * outcome['step_seconds']:.1f} ms/step)"


if __name__ == "__main__":
    main()
