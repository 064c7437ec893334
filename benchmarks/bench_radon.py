"""The radon model: county intercepts by NUTS, AutoNormal and the amortized guide.

The varying-intercept model of :func:`pyro_amortized.models.radon_model` on the
919 houses of :func:`pyro_amortized.datasets.load_radon`, in its gather form (a
plate over counties, a plate over houses, ``a[county]`` in the likelihood):

* Pyro's NUTS (the reference): ``--samples`` draws after ``--warmup`` steps;
  a second chain (another seed) is compared with it as the guides are, which
  measures the reference's own Monte Carlo error;
* ``AutoNormal``: per-county parameters, trained as below;
* ``AutoAmortizedGuide(radon_model)``: the county plate is a group plate, whose
  encoder pools the rows of each county; no guide code. Trained twice: by
  ``Trace_ELBO``, and by :class:`~pyro_amortized.PathDerivativeELBO`, whose
  gradient drops the score term of the local heads (its noise does not vanish
  at the optimum).

The guides train ``--steps`` steps of ``ClippedAdam`` (learning rate 0.01
decayed 100-fold) on the whole data set (``AutoNormal`` by ``Trace_ELBO``);
their posteriors are read from 10,000 draws of the guide. The table gives,
against NUTS, the absolute error of the 85 county intercepts' posterior means
(mean and largest) and the ratio of their standard deviations (mean, smallest,
largest, and the share of counties within 10%), the posterior standard
deviations of the global sites, and the parameter count.

A new county, inferred by one pass: the amortized guide is trained again with
the houses of ``--held-out`` counties left out (the counties stay in the plate,
with no rows; ``PathDerivativeELBO``), then reads the full data; the held-out
counties' intercepts are compared with NUTS on the full data.

Usage::

    python benchmarks/bench_radon.py
    python benchmarks/bench_radon.py --steps 6000 --samples 10000 --seed 1
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch
from common import machine_line, print_table
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_amortized import AutoAmortizedGuide, PathDerivativeELBO
from pyro_amortized.datasets import load_radon
from pyro_amortized.models import radon_model

GLOBALS = ("mu_a", "sigma_a", "b", "sigma_y")
DRAWS = 10_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000, help="SVI steps of each guide")
    parser.add_argument("--samples", type=int, default=10_000, help="NUTS draws per chain")
    parser.add_argument("--warmup", type=int, default=2000, help="NUTS warm-up steps")
    parser.add_argument("--hidden", type=int, default=64, help="width of the encoder's layers")
    parser.add_argument("--held-out", type=int, default=5, help="counties left out, then read")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def nuts_draws(data: dict, args: argparse.Namespace, seed: int) -> dict[str, torch.Tensor]:
    pyro.set_rng_seed(seed)
    kernel = NUTS(radon_model, jit_compile=True, ignore_jit_warnings=True)
    mcmc = MCMC(kernel, num_samples=args.samples, warmup_steps=args.warmup, disable_progbar=True)
    mcmc.run(data["county"], data["floor"], data["log_radon"], 85)
    return mcmc.get_samples()


def guide_draws(
    guide, data: dict, args: argparse.Namespace, elbo: Trace_ELBO
) -> dict[str, torch.Tensor]:
    """Trains a guide on ``data`` by ``elbo`` and draws from it on ``data``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    optim = pyro.optim.ClippedAdam({"lr": 0.01, "lrd": 0.01 ** (1 / args.steps)})
    svi = SVI(radon_model, guide, optim, elbo)
    call = data["county"], data["floor"], data["log_radon"], 85
    for _ in range(args.steps):
        svi.step(*call)
    return draws(guide, call)


@torch.no_grad()
def draws(guide, call: tuple) -> dict[str, torch.Tensor]:
    samples = [guide(*call) for _ in range(DRAWS)]
    return {name: torch.stack([s[name] for s in samples]) for name in ("a", *GLOBALS)}


def against_nuts(ours: torch.Tensor, nuts: torch.Tensor) -> list[str]:
    error = (ours.mean(0) - nuts.mean(0)).abs()
    ratio = ours.std(0) / nuts.std(0)
    within = ((ratio - 1).abs() <= 0.1).sum()
    return [
        f"{error.mean():.3f}",
        f"{error.max():.3f}",
        f"{ratio.mean():.3f}",
        f"{ratio.min():.2f} - {ratio.max():.2f}",
        f"{within} of {len(ratio)}",
    ]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    data = load_radon()
    print(machine_line(args.threads, "wall"))
    start = time.time()
    nuts = nuts_draws(data, args, args.seed)
    print(f"NUTS: {args.samples} draws in {time.time() - start:.0f} s", flush=True)
    other = nuts_draws(data, args, args.seed + 1)
    spreads = [f"{other[g].std():.3f}" for g in GLOBALS]
    rows = [("NUTS, another chain", *against_nuts(other["a"], nuts["a"]), *spreads, "-")]

    def amortized() -> AutoAmortizedGuide:
        return AutoAmortizedGuide(radon_model, hidden_dims=(args.hidden,) * 2)

    for name, make, elbo in (
        ("AutoNormal", lambda: AutoNormal(radon_model), Trace_ELBO),
        ("AutoAmortizedGuide, Trace_ELBO", amortized, Trace_ELBO),
        ("AutoAmortizedGuide, PathDerivativeELBO", amortized, PathDerivativeELBO),
    ):
        start = time.time()
        guide = make()
        ours = guide_draws(guide, data, args, elbo())
        spreads = [f"{ours[g].std():.3f}" for g in GLOBALS]
        size = sum(p.numel() for p in guide.parameters())
        rows.append((name, *against_nuts(ours["a"], nuts["a"]), *spreads, str(size)))
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
    rows.append(("NUTS", "-", "-", "-", "-", "-", *(f"{nuts[g].std():.3f}" for g in GLOBALS), "-"))
    header = ("posterior", "mean error", "largest", "sd ratio", "range", "within 10%")
    header += tuple(f"sd {g}" for g in GLOBALS) + ("parameters",)
    print_table(
        f"County intercepts against NUTS ({args.steps} steps, seed {args.seed})", header, rows
    )
    new_counties(data, nuts, args)


def new_counties(data: dict, nuts: dict, args: argparse.Namespace) -> None:
    """The held-out counties' intercepts, read by one pass of a guide trained without them."""
    counts = torch.bincount(data["county"], minlength=85)
    generator = torch.Generator().manual_seed(args.seed)
    held_out = torch.randperm(85, generator=generator)[: args.held_out]
    kept = ~torch.isin(data["county"], held_out)
    training = {key: value[kept] for key, value in data.items()}
    guide = AutoAmortizedGuide(radon_model, hidden_dims=(args.hidden,) * 2)
    guide_draws(guide, training, args, PathDerivativeELBO())
    ours = draws(guide, (data["county"], data["floor"], data["log_radon"], 85))
    rows = [
        (
            str(int(county)),
            str(int(counts[county])),
            f"{ours['a'][:, county].mean():.3f} +- {ours['a'][:, county].std():.3f}",
            f"{nuts['a'][:, county].mean():.3f} +- {nuts['a'][:, county].std():.3f}",
        )
        for county in held_out
    ]
    print_table(
        "Counties whose houses the guide never saw, read by one pass",
        ("county", "houses", "amortized", "NUTS"),
        rows,
    )


if __name__ == "__main__":
    main()
