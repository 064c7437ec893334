"""Amortized posterior estimation against ``sbi``'s NPE on three standard tasks.

Gaussian linear, two moons and SLCP (:mod:`pyro_amortized.simulators`, as
``sbibm`` defines them) are written as Pyro models with a plate over
simulations. With the same budget of simulations (``--simulations``, drawn from
the same model), two posterior estimators are trained:

* ``sbi``'s NPE (``density_estimator="maf"``, its defaults: minibatches of 200,
  learning rate 5e-4, a tenth of the simulations held out for early stopping);
* ``AutoAmortizedNormalizingFlow(model, flow=..., num_flows=...,
  encoder=MLPEncoder(hidden_dims, include_inputs=...),
  init_loc_fn=init_to_sample)`` (``--flow``, ``--num-flows``, ``--hidden-dims``,
  by default ``(64, 64)``, and ``--include-inputs``, features that begin with
  the observation itself; SLCP's likelihood is degenerate at the prior's
  median, where the guide would read the model by default), trained by
  ``LocalNPE(reuse_simulations=True)`` on minibatches of 200 of nine tenths
  of the simulations, with no guide code, for at most ``--steps`` steps of
  ``ClippedAdam`` (learning rate 1e-3 decayed 10-fold over them), stopped
  early as sbi is: the other tenth of the simulations is held out, its
  negative log density under the guide is computed after each pass over the
  training simulations, and training stops after 20 passes without a new best,
  keeping the best guide.

Each is scored on ``--observations`` observations (parameters drawn from the
prior, seeded) by the classifier two-sample test (C2ST, as ``sbibm`` computes
it: an MLP of two layers of ``10 * dim`` units, 5-fold cross-validated
accuracy on 10,000 posterior draws against 10,000 reference draws; 0.5 is a
perfect posterior, 1.0 a disjoint one), against the reference posteriors of
:func:`~pyro_amortized.simulators.reference_posterior`.

Needs ``sbi`` (``pip install sbi``, not a dependency of the package).

Usage::

    python benchmarks/bench_npe.py
    python benchmarks/bench_npe.py --tasks two_moons --simulations 1000 --steps 500
    python benchmarks/bench_npe.py --flow iaf --num-flows 5 --include-inputs
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import pyro
import torch
from common import machine_line, print_table
from pyro.infer.autoguide.initialization import init_to_sample

from pyro_amortized import AutoAmortizedNormalizingFlow, LocalNPE
from pyro_amortized.encoders import MLPEncoder
from pyro_amortized.simulators import (
    TASKS,
    SimulationTask,
    c2st,
    reference_posterior,
    simulate_task,
)

BATCH_SIZE = 200
POSTERIOR_DRAWS = 10_000
HELD_OUT = 0.1
"""Share of the simulations held out for early stopping (as sbi's NPE)."""
PATIENCE = 20
"""Passes over the training simulations without a better held-out loss before
training stops (sbi's ``stop_after_epochs``)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=list(TASKS))
    parser.add_argument("--simulations", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=10_000, help="most steps (early stopping)")
    parser.add_argument("--observations", type=int, default=3)
    parser.add_argument("--flow", choices=("spline", "iaf"), default="spline")
    parser.add_argument("--num-flows", type=int, default=2)
    parser.add_argument(
        "--hidden-dims",
        default="64,64",
        help="the encoder's hidden widths, comma-separated; empty for linear features",
    )
    parser.add_argument(
        "--include-inputs",
        action="store_true",
        help="features that begin with the data themselves (MLPEncoder's include_inputs)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def sbi_prior(task: SimulationTask) -> torch.distributions.Distribution:
    from sbi.utils import BoxUniform

    if task.name == "gaussian_linear":
        return torch.distributions.MultivariateNormal(torch.zeros(10), 0.1 * torch.eye(10))
    bound = 1.0 if task.name == "two_moons" else 3.0
    return BoxUniform(-bound * torch.ones(task.theta_dim), bound * torch.ones(task.theta_dim))


def train_sbi(task: SimulationTask, simulations: int):
    from sbi.inference import NPE

    theta, x = simulate_task(task, simulations)
    inference = NPE(prior=sbi_prior(task), density_estimator="maf", show_progress_bars=False)
    inference.append_simulations(theta, x.reshape(simulations, -1)).train(
        training_batch_size=BATCH_SIZE
    )
    posterior = inference.build_posterior()

    def sample(x_o: torch.Tensor) -> torch.Tensor:
        return posterior.sample((POSTERIOR_DRAWS,), x=x_o.reshape(1, -1), show_progress_bars=False)

    return sample


def fit_with_early_stopping(
    svi: pyro.infer.SVI,
    layout: torch.Tensor,
    steps: int,
    held_out: tuple[torch.Tensor, torch.Tensor],
) -> int:
    """Steps ``svi`` on ``layout`` until ``PATIENCE`` passes over it bring no
    better held-out loss (``-log q(theta | x)`` on ``held_out = (theta, x)``),
    or for ``steps`` steps; puts the best guide back and returns the steps run."""
    guide, (theta, x) = svi.guide, held_out
    steps_per_pass = max(1, len(layout) // BATCH_SIZE)
    best, best_state, passes_since_best = float("inf"), None, 0
    for step in range(1, steps + 1):
        svi.step(layout)
        if step % steps_per_pass == 0:
            with torch.no_grad():
                loss = -guide.encode(x)["theta"].log_prob(theta).mean().item()
            if loss < best:
                best, best_state, passes_since_best = loss, copy.deepcopy(guide.state_dict()), 0
            else:
                passes_since_best += 1
            if passes_since_best == PATIENCE:
                break
    if best_state is not None:
        guide.load_state_dict(best_state)
    return step


def train_amortized(task: SimulationTask, args: argparse.Namespace):
    steps = args.steps
    num_held_out = int(HELD_OUT * args.simulations)
    held_out_theta, held_out_x = simulate_task(task, num_held_out)
    pyro.clear_param_store()
    # SLCP's likelihood is degenerate at the prior's median (zero scales)
    guide = AutoAmortizedNormalizingFlow(
        task.model,
        flow=args.flow,
        num_flows=args.num_flows,
        encoder=MLPEncoder(
            tuple(int(width) for width in args.hidden_dims.split(",") if width),
            include_inputs=args.include_inputs,
        ),
        init_loc_fn=init_to_sample,
    )
    optimizer = pyro.optim.ClippedAdam({"lr": 1e-3, "lrd": 0.1 ** (1 / steps), "clip_norm": 10.0})
    svi = pyro.infer.SVI(task.model, guide, optimizer, LocalNPE(reuse_simulations=True))
    layout = torch.zeros((args.simulations - num_held_out, *task.x_shape))
    step = fit_with_early_stopping(svi, layout, steps, (held_out_theta, held_out_x))
    print(f"{task.name} LocalNPE: stopped after {step} steps", flush=True)

    def sample(x_o: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            draws = guide.encode(x_o[None])["theta"].sample((POSTERIOR_DRAWS,))
        return draws.reshape(POSTERIOR_DRAWS, -1)

    return sample


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads, "wall"))
    rows = []
    for name in args.tasks:
        task = TASKS[name]
        pyro.set_rng_seed(args.seed)
        true_theta, observations = simulate_task(task, args.observations)
        references = [reference_posterior(task, x_o, POSTERIOR_DRAWS) for x_o in observations]
        scores: dict[str, list[float]] = {}
        seconds: dict[str, float] = {}
        for method in ("sbi NPE", "LocalNPE"):
            pyro.set_rng_seed(args.seed + 1)
            start = time.perf_counter()
            if method == "sbi NPE":
                sample = train_sbi(task, args.simulations)
            else:
                sample = train_amortized(task, args)
            seconds[method] = time.perf_counter() - start
            scores[method] = [
                c2st(reference, sample(x_o))
                for reference, x_o in zip(references, observations, strict=True)
            ]
            print(f"{name} {method}: C2ST {scores[method]} ({seconds[method]:.0f} s training)")
        for method, values in scores.items():
            detail = ", ".join(f"{v:.3f}" for v in values)
            rows.append((name, method, f"{np.mean(values):.3f}", detail, f"{seconds[method]:.0f}"))
    title = (
        f"C2ST against reference posteriors, {args.simulations} simulations, "
        f"{args.observations} observations (seed {args.seed}; ours: {args.num_flows} "
        f"{args.flow} flows, hidden widths ({args.hidden_dims})"
        f"{', the inputs in the features' if args.include_inputs else ''}, at most "
        f"{args.steps} steps); "
        "lower is better, 0.5 perfect"
    )
    header = ("task", "method", "mean C2ST", "per observation", "training s")
    print_table(title, header, rows)


if __name__ == "__main__":
    main()
