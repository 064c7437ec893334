"""Correlated heads against a hand-written multivariate-normal guide.

A linear-Gaussian model with local latents ``z`` (3 dimensions) and
observations ``x`` (6), whose loadings make the exact posterior strongly
correlated (the diagonal family's KL floor is 1.84 nats). Three guides with the
same widths (one hidden layer of ``--hidden`` ReLU units) train ``--steps``
steps of ``ClippedAdam`` (learning rate 3e-3 decayed 100-fold) on minibatches
of 256 of 4,000 rows, with ``Trace_ELBO``:

* ``AutoAmortizedMultivariateNormal(model, hidden_dims=(hidden,))``;
* ``AutoAmortizedLowRankMultivariateNormal(..., rank=3)`` (rank 3 of 3);
* a hand-written guide: the same MLP, a linear ``loc``, a lower-triangular
  ``scale_tril`` with a softplus diagonal, PyTorch's default initialization.

The table gives, per guide, the KL divergence from each guide's posterior to
the exact one, averaged over 1,000 held-out points, at a few steps, and the
part of the last that comes from the means. With ``--path-derivative`` every
guide trains by ``PathDerivativeELBO`` instead (the hand-written guide then
scores its samples with its parameters detached, as the families do).

Usage::

    python benchmarks/bench_correlated.py
    python benchmarks/bench_correlated.py --seed 1 --standardize --path-derivative
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from common import machine_line, print_table
from torch import nn
from torch.distributions import kl_divergence
from torch.nn.functional import softplus

from pyro_amortized import (
    AutoAmortizedLowRankMultivariateNormal,
    AutoAmortizedMultivariateNormal,
    PathDerivativeELBO,
)
from pyro_amortized.path_derivative import PathDerivative

K, D, NOISE, BATCH = 3, 6, 0.5, 256
LOADINGS = torch.randn(D, K, generator=torch.Generator().manual_seed(7))
LOADINGS[:, 1:] += 1.85 * LOADINGS[:, :1]  # strongly correlated columns
PRECISION = torch.eye(K) + LOADINGS.T @ LOADINGS / NOISE**2
COVARIANCE = torch.linalg.inv(PRECISION)
CHECKPOINTS = (300, 1000, 2000)


def model(x: torch.Tensor) -> None:
    with pyro.plate("data", x.shape[0], subsample_size=min(BATCH, x.shape[0])):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([K]).to_event(1))
        x_batch = pyro.subsample(x, event_dim=1)
        pyro.sample("x", dist.Normal(z @ LOADINGS.T, NOISE).to_event(1), obs=x_batch)


class HandWrittenGuide(nn.Module):
    """The multivariate-normal guide one writes for this model."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(D, hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, K)
        self.diagonal = nn.Linear(hidden, K)
        self.lower = nn.Linear(hidden, K * (K - 1) // 2)

        self.path_derivative = False  # set by PathDerivativeELBO

    def posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        features = self.trunk(x)
        scale_tril = torch.diag_embed(softplus(self.diagonal(features)) + 1e-3)
        rows, cols = torch.tril_indices(K, K, -1)
        scale_tril[..., rows, cols] = self.lower(features)
        return dist.MultivariateNormal(self.loc(features), scale_tril=scale_tril)

    def forward(self, x: torch.Tensor) -> None:
        pyro.module("hand_written", self)
        with pyro.plate("data", x.shape[0], subsample_size=min(BATCH, x.shape[0])) as rows:
            q = self.posterior(x[rows])
            if self.path_derivative:
                detached = dist.MultivariateNormal(q.loc.detach(), scale_tril=q.scale_tril.detach())
                q = PathDerivative(q, detached)
            pyro.sample("z", q)


def simulate(num_points: int) -> torch.Tensor:
    return torch.randn(num_points, K) @ LOADINGS.T + NOISE * torch.randn(num_points, D)


def kl_to_exact(guide: object, x: torch.Tensor) -> tuple[float, float]:
    """Mean KL(q || p) over the points of ``x``, and its part from the means."""
    with torch.no_grad():
        q = guide.posterior(x) if isinstance(guide, HandWrittenGuide) else guide.encode(x)["z"]
        q = dist.MultivariateNormal(q.mean, covariance_matrix=q.covariance_matrix)
        exact = dist.MultivariateNormal((x @ LOADINGS / NOISE**2) @ COVARIANCE, COVARIANCE)
        gap = q.mean - exact.mean
        means = 0.5 * torch.einsum("ni,ij,nj->n", gap, PRECISION, gap).mean()
        return kl_divergence(q, exact).mean().item(), means.item()


def run(name: str, args: argparse.Namespace) -> list[str]:
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    x, held_out = simulate(4000), simulate(1000)
    options = {"hidden_dims": (args.hidden,), "standardize_inputs": args.standardize}
    guide = {
        "AutoAmortizedMultivariateNormal": lambda: AutoAmortizedMultivariateNormal(
            model, **options
        ),
        "AutoAmortizedLowRankMultivariateNormal": lambda: AutoAmortizedLowRankMultivariateNormal(
            model, rank=3, **options
        ),
        "hand-written": lambda: HandWrittenGuide(args.hidden),
    }[name]()
    optim = pyro.optim.ClippedAdam({"lr": 3e-3, "lrd": 0.01 ** (1 / args.steps)})
    elbo = PathDerivativeELBO() if args.path_derivative else pyro.infer.Trace_ELBO()
    svi = pyro.infer.SVI(model, guide, optim, elbo)
    row = [name]
    for step in range(1, args.steps + 1):
        svi.step(x)
        if step in CHECKPOINTS and step < args.steps:
            row.append(f"{kl_to_exact(guide, held_out)[0]:.4f}")
    kl, means = kl_to_exact(guide, held_out)
    return row + [f"{kl:.4f}", f"{means:.4f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="SVI steps of each guide")
    parser.add_argument("--hidden", type=int, default=256, help="width of the hidden layer")
    parser.add_argument("--standardize", action="store_true", help="standardize_inputs=True")
    parser.add_argument(
        "--path-derivative", action="store_true", help="train by PathDerivativeELBO"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = ("AutoAmortizedMultivariateNormal", "AutoAmortizedLowRankMultivariateNormal")
    rows = [run(name, args) for name in (*names, "hand-written")]
    header = ["guide", *(f"KL at {s}" for s in CHECKPOINTS if s < args.steps)]
    header += [f"KL at {args.steps}", "of which means"]
    print_table(
        f"KL to the exact posterior, nats per point (seed {args.seed}, "
        f"standardize_inputs={args.standardize}, path derivative {args.path_derivative})",
        header,
        rows,
    )
    print(machine_line(args.threads))


if __name__ == "__main__":
    main()
