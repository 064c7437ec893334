"""Published Pyro programs: the hand-written guide against ``AutoAmortizedGuide``.

Each program of :mod:`examples.ports` (Pyro's VAE, semi-supervised VAE,
conditional VAE, LDA, HMM, the Gaussian mixture tutorial with assignments
summed out or sampled, ProdLDA) is trained twice with the same optimizer,
ELBO, steps, batch size, widths and seed: once with its own guide, once with
``AutoAmortizedGuide(model)``. The table gives the program's metric for each
(an ELBO per data point on held-out data, or the test accuracy of the
semi-supervised VAE), the relative difference ``(amortized - hand) / |hand|``
and the ratio of the mean step times (amortized / hand-written). Where the
amortized guide cannot run on a program, the row says so and the error
follows the table.

Step times are CPU time of the process, on ``--threads`` torch threads (one by
default), the first step left out.

Usage::

    python benchmarks/bench_programs.py
    python benchmarks/bench_programs.py --programs vae,ss_vae --steps 500
    python benchmarks/bench_programs.py --short          # tiny data, a few steps
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from common import machine_line, print_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the examples package

from examples.ports import PROGRAMS, cvae, gmm, hmm, lda, prodlda, ss_vae, vae  # noqa: E402
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
}
"""Each program's ``run`` and its default budget."""

SHORT_STEPS = 5
"""Steps of each training with ``--short``."""


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
        except ValueError as error:
            outcomes[kind] = error
    return outcomes


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
        ratio = amortized["step_seconds"] / hand["step_seconds"]
        cells += [f"{difference:+.1%}", f"{ratio:.2f}"]
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
        "time ratio: amortized / hand-written, CPU time per step)",
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
