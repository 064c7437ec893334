"""Three standard simulation-based inference tasks as Pyro models, with
reference posteriors: Gaussian linear, two moons and SLCP, as the ``sbibm``
benchmark defines them (Lueckmann, Boelts, Greenberg, Goncalves and Macke, 2021).

Each model takes data ``x`` of shape ``(simulations, *x_shape)`` and samples
the parameters ``theta`` of every simulation in a plate ``"simulations"``
(subsampled to ``batch_size`` rows), then observes ``x``: a simulator with a
plate over simulations, whose guide :class:`~pyro_amortized.LocalNPE` trains.
:func:`reference_posterior` draws from each task's posterior given one
observation: exactly for the first two, by Markov chain Monte Carlo for SLCP;
:func:`c2st` scores a posterior's draws against them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

GAUSSIAN_VARIANCE = 0.1
"""Gaussian linear: the variance of the prior and of the noise, per dimension."""

SLCP_DRAWS = 4
"""SLCP: the bivariate Normal draws of one simulation."""


@dataclass(frozen=True)
class SimulationTask:
    """A simulation task: its model and shapes.

    :param name: the task's name in ``sbibm``.
    :param model: ``model(x, batch_size=...)``, a Pyro model over simulations.
    :param theta_dim: the dimension of the parameters.
    :param x_shape: the shape of one simulation's data.
    """

    name: str
    model: Callable
    theta_dim: int
    x_shape: tuple[int, ...]


def _simulations(x: torch.Tensor, batch_size: int) -> pyro.plate:
    return pyro.plate("simulations", x.shape[0], subsample_size=min(batch_size, x.shape[0]))


def gaussian_linear(x: torch.Tensor, batch_size: int = 200) -> None:
    """``theta ~ N(0, 0.1 I_10)``, ``x | theta ~ N(theta, 0.1 I_10)``.

    Usage::

        pyro.poutine.trace(gaussian_linear).get_trace(torch.zeros(5, 10))
    """
    scale = GAUSSIAN_VARIANCE**0.5
    with _simulations(x, batch_size):
        theta = pyro.sample("theta", dist.Normal(0.0, scale).expand([10]).to_event(1))
        pyro.sample("x", dist.Normal(theta, scale).to_event(1), obs=pyro.subsample(x, event_dim=1))


class MoonNoise(dist.TorchDistribution):
    """Two moons' observation: ``x = c + (r cos a + 0.25, r sin a)`` with
    ``a ~ U(-pi/2, pi/2)`` and ``r ~ N(0.1, 0.01^2)``, around a centre ``c``.

    Usage::

        MoonNoise(torch.zeros(2)).sample()   # a point on a half circle of radius 0.1
    """

    arg_constraints = {"centre": constraints.real_vector}
    support = constraints.real_vector

    def __init__(self, centre: torch.Tensor, validate_args: bool | None = None) -> None:
        self.centre = centre
        super().__init__(centre.shape[:-1], centre.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> MoonNoise:
        return MoonNoise(self.centre.expand(torch.Size(batch_shape) + (2,)))

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))[:-1]
        with torch.no_grad():
            angle = (torch.rand(shape) - 0.5) * math.pi
            radius = 0.1 + 0.01 * torch.randn(shape)
            offset = torch.stack([radius * angle.cos() + 0.25, radius * angle.sin()], -1)
            return self.centre + offset

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        u = value - self.centre - value.new_tensor([0.25, 0.0])
        radius = u.norm(dim=-1)
        log_radius = dist.Normal(0.1, 0.01).log_prob(radius)
        inside = u[..., 0] > 0  # the angle within (-pi/2, pi/2)
        log_p = log_radius - math.log(math.pi) - radius.log()
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf))


def moon_centre(theta: torch.Tensor) -> torch.Tensor:
    """Two moons' centre for parameters ``theta``: ``(-|t1 + t2| / sqrt 2, (t2 - t1) / sqrt 2)``."""
    t1, t2 = theta[..., 0], theta[..., 1]
    return torch.stack([-(t1 + t2).abs(), t2 - t1], -1) / math.sqrt(2)


def two_moons(x: torch.Tensor, batch_size: int = 200) -> None:
    """``theta ~ U([-1, 1]^2)``, ``x ~ MoonNoise(moon_centre(theta))``: a posterior of
    two crescents.

    Usage::

        pyro.poutine.trace(two_moons).get_trace(torch.zeros(5, 2))
    """
    with _simulations(x, batch_size):
        theta = pyro.sample("theta", dist.Uniform(-1.0, 1.0).expand([2]).to_event(1))
        pyro.sample("x", MoonNoise(moon_centre(theta)), obs=pyro.subsample(x, event_dim=1))


def slcp_scale_tril(theta: torch.Tensor) -> torch.Tensor:
    """SLCP's Cholesky factor: standard deviations ``theta_3^2``, ``theta_4^2``,
    correlation ``tanh(theta_5)``."""
    s1, s2, rho = theta[..., 2] ** 2, theta[..., 3] ** 2, theta[..., 4].tanh()
    zero = torch.zeros_like(s1)
    rows = [torch.stack([s1, zero], -1), torch.stack([rho * s2, s2 * (1 - rho**2).sqrt()], -1)]
    return torch.stack(rows, -2)


def slcp(x: torch.Tensor, batch_size: int = 200) -> None:
    """Simple likelihood, complex posterior: ``theta ~ U([-3, 3]^5)``, then four
    draws of a bivariate Normal with mean ``(theta_1, theta_2)`` and
    :func:`slcp_scale_tril`; ``x`` of shape ``(simulations, 4, 2)``. The
    posterior has four modes (the signs of ``theta_3`` and ``theta_4``).

    Usage::

        pyro.poutine.trace(slcp).get_trace(torch.zeros(5, 4, 2))
    """
    with _simulations(x, batch_size):
        theta = pyro.sample("theta", dist.Uniform(-3.0, 3.0).expand([5]).to_event(1))
        draws = dist.MultivariateNormal(
            theta[..., None, :2], scale_tril=slcp_scale_tril(theta)[..., None, :, :]
        )
        draws = draws.expand(theta.shape[:-1] + (SLCP_DRAWS,)).to_event(1)
        pyro.sample("x", draws, obs=pyro.subsample(x, event_dim=2))


TASKS = {
    "gaussian_linear": SimulationTask("gaussian_linear", gaussian_linear, 10, (10,)),
    "two_moons": SimulationTask("two_moons", two_moons, 2, (2,)),
    "slcp": SimulationTask("slcp", slcp, 5, (4, 2)),
}
"""The tasks by name."""


def simulate_task(task: SimulationTask, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` draws ``(theta, x)`` from a task's model."""
    x = torch.zeros((num, *task.x_shape))
    model = pyro.poutine.uncondition(task.model)
    with torch.no_grad():
        trace = pyro.poutine.trace(model).get_trace(x, batch_size=num)
    return trace.nodes["theta"]["value"], trace.nodes["x"]["value"]


def reference_posterior(task: SimulationTask, x_o: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` draws from the posterior of ``theta`` given one observation ``x_o``.

    Gaussian linear: the closed form, ``N(x_o / 2, 0.05 I)``. Two moons: exact,
    by drawing the observation's noise and solving for ``theta`` (each of the two
    solutions with probability one half, those outside the prior's box
    rejected; the map from ``theta`` to the centre has unit Jacobian). SLCP:
    random-walk Metropolis in 4,000 parallel chains started from the prior's
    draws resampled by their likelihood (one step size for all, adapted in the
    first half of the run), the signs of ``theta_3`` and ``theta_4`` then
    flipped at random (the posterior does not change under them).
    """
    if task.name == "gaussian_linear":
        variance = GAUSSIAN_VARIANCE / 2
        return x_o / 2 + variance**0.5 * torch.randn(num, 10)
    if task.name == "two_moons":
        return _two_moons_posterior(x_o, num)
    if task.name == "slcp":
        return _slcp_posterior(x_o, num)
    raise ValueError(f"No reference posterior for task {task.name!r}.")


def _two_moons_posterior(x_o: torch.Tensor, num: int) -> torch.Tensor:
    accepted: list[torch.Tensor] = []
    while sum(len(a) for a in accepted) < num:
        centre = x_o - MoonNoise(torch.zeros(2)).sample((4 * num,))
        total = -math.sqrt(2) * centre[:, 0] * torch.where(torch.rand(4 * num) < 0.5, 1.0, -1.0)
        difference = math.sqrt(2) * centre[:, 1]
        theta = torch.stack([(total - difference) / 2, (total + difference) / 2], -1)
        keep = (centre[:, 0] <= 0) & (theta.abs() <= 1).all(-1)
        accepted.append(theta[keep])
    return torch.cat(accepted)[:num]


def _slcp_log_posterior(theta: torch.Tensor, x_o: torch.Tensor) -> torch.Tensor:
    inside = (theta.abs() <= 3).all(-1)
    draws = dist.MultivariateNormal(
        theta[:, None, :2], scale_tril=slcp_scale_tril(theta)[:, None], validate_args=False
    )
    log_p = draws.log_prob(x_o).sum(-1)
    return torch.where(inside & torch.isfinite(log_p), log_p, torch.full_like(log_p, -math.inf))


def _slcp_posterior(
    x_o: torch.Tensor, num: int, chains: int = 4000, steps: int = 6000
) -> torch.Tensor:
    with torch.no_grad():
        candidates = dist.Uniform(-3.0, 3.0).sample((2_000_000, 5))
        log_w = torch.cat([_slcp_log_posterior(c, x_o) for c in candidates.split(500_000)])
        theta = candidates[torch.multinomial((log_w - log_w.max()).exp(), chains, True)]
        log_p = _slcp_log_posterior(theta, x_o)
        step = 0.5 * theta.std(0)  # one step for every chain: a chain's own would bias them
        samples = []
        for t in range(steps):
            proposal = theta + step * torch.randn_like(theta)
            proposed = _slcp_log_posterior(proposal, x_o)
            accept = torch.rand(chains).log() < proposed - log_p
            theta = torch.where(accept[:, None], proposal, theta)
            log_p = torch.where(accept, proposed, log_p)
            if t < steps // 2:  # adapt the step towards a quarter accepted
                step = step * math.exp(0.02 * (accept.float().mean().item() - 0.25))
            elif t % 100 == 0:
                samples.append(theta.clone())
        draws = torch.cat(samples)
        draws = draws[torch.randperm(len(draws))[:num]]
        signs = torch.where(torch.rand(len(draws), 2) < 0.5, 1.0, -1.0)
        draws[:, 2:4] = draws[:, 2:4] * signs
        return draws


def c2st(first: torch.Tensor, second: torch.Tensor, *, folds: int = 5, seed: int = 0) -> float:
    """The classifier two-sample test as ``sbibm`` computes it: the accuracy of
    an MLP (two layers of ``10 * dim`` ReLU units) telling draws ``(n, dim)`` of
    ``first`` from those of ``second``, cross-validated over ``folds`` folds,
    the data standardized by ``first``'s. 0.5 for samples of one distribution,
    1.0 for disjoint ones. Needs scikit-learn.

    Usage::

        c2st(reference_posterior(task, x_o, 10_000), draws)   # 0.5 is perfect
    """
    try:
        from sklearn.model_selection import KFold, cross_val_score
        from sklearn.neural_network import MLPClassifier
        from sklearn.preprocessing import StandardScaler
    except ImportError as error:
        raise ImportError("c2st needs scikit-learn: pip install scikit-learn.") from error
    first, second = first.detach().cpu().double().numpy(), second.detach().cpu().double().numpy()
    data = StandardScaler().fit(first).transform(np.concatenate([first, second]))
    labels = np.concatenate([np.zeros(len(first)), np.ones(len(second))])
    dim = first.shape[1]
    classifier = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(10 * dim, 10 * dim),
        max_iter=10_000,
        solver="adam",
        random_state=seed,
    )
    splits = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(classifier, data, labels, cv=splits, scoring="accuracy").mean())
