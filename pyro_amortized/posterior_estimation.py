"""Amortized posterior estimation: the local heads fitted to the model's own
simulations.

A model with a plate over data points is a simulator of ``(z_n, x_n)`` pairs:
run with its observed sites drawn, it gives local values ``z_n`` and the data
``x_n`` they generate. Fitting the guide's local heads by maximum likelihood to
such pairs, ``max E_p(z, x) log q(z | x)``, is neural posterior estimation (the
sleep phase of the Helmholtz machine; Papamakarios and Murray, 2016; the method
of ``sbi``'s NPE and of BayesFlow): it minimizes ``E_p(x) KL(p(z | x) || q(z | x))``,
which covers every mode, and needs neither the likelihood's density nor
reparameterization. It is the whole training where the model is a simulator of
its data, and a warm start for the ELBO or :class:`~pyro_amortized.LocalRWS`
otherwise.

The simulations are drawn from the model's prior, global sites included, and
the local heads read the global values drawn with them (the guide's global
sites are not trained by this objective). The guide reads the simulated data as
it reads data (see :mod:`pyro_amortized.simulation`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine

from .iwae import PerPointObjective
from .simulation import fitted_log_q, latent_values, row_dim, simulate


class LocalNPE(PerPointObjective):
    """Neural posterior estimation of the local sites, as the loss of
    :class:`pyro.infer.SVI` (see the module's description): each step fits the
    guide's local heads by maximum likelihood to the model's simulations of the
    data plate's rows. The loss is ``-sum_n log q(z_n | x_n)`` over the
    simulated rows, scaled to the plate's full size as Pyro's ELBOs scale a
    minibatch.

    The call's data only set the layout: the model's observed sites of the data
    plate must observe rows of arguments that feed the guide's encoder (any
    values: they are replaced by simulated ones).

    Usage::

        def simulator(x):
            with pyro.plate("simulations", x.shape[0], subsample_size=256):
                theta = pyro.sample("theta", dist.Uniform(-1.0, 1.0).expand([2]).to_event(1))
                pyro.sample("x", dist.Normal(theta, 0.1).to_event(1),
                            obs=pyro.subsample(x, event_dim=1))

        guide = AutoAmortizedGuide(simulator)
        svi = pyro.infer.SVI(simulator, guide, pyro.optim.Adam({"lr": 1e-3}),
                             LocalNPE(reuse_simulations=True))
        for step in range(2000):
            svi.step(torch.zeros(10_000, 2))   # a budget of 10,000 simulations
        guide.encode(x_observed)               # the posterior of theta given x_observed

    :param bool reuse_simulations: ``False`` (default): each step simulates its
        minibatch afresh, an unlimited budget of simulations. ``True``: the first
        step simulates every row of the data plate once (a budget of the plate's
        size), and each step fits a minibatch of those rows, drawn without
        replacement at the plate's subsample size; later steps reuse the first
        step's call.
    :param int max_plate_nesting: the model's plate nesting; guessed from one run
        of the model and guide when not given.
    """

    def __init__(
        self, *, reuse_simulations: bool = False, max_plate_nesting: int | None = None
    ) -> None:
        super().__init__(1, max_plate_nesting)
        if not isinstance(reuse_simulations, bool):
            raise ValueError(f"reuse_simulations must be True or False, got {reuse_simulations!r}.")
        self.reuse_simulations = reuse_simulations
        self.simulations: SimulationBank | None = None

    def loss(self, model: Callable, guide: Any, *args: Any, **kwargs: Any) -> float:
        """Minus the log density of the simulated local values (a float)."""
        with torch.no_grad():
            return self._loss(model, guide, args, kwargs).item()

    def loss_and_grads(self, model: Callable, guide: Any, *args: Any, **kwargs: Any) -> float:
        """Minus the log density; its gradient is left in the local heads' ``.grad``."""
        loss = self._loss(model, guide, args, kwargs)
        loss.backward()
        return loss.item()

    def _loss(self, model: Callable, guide: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        plate = self._data_plate(model, guide, args, kwargs)
        if not self.reuse_simulations:
            simulation = simulate(model, guide, plate, args, kwargs, {})
            held = latent_values(simulation.trace)
            log_q, scale = fitted_log_q(
                guide, held, simulation.args, simulation.kwargs, plate, self.nesting
            )
            return -scale * log_q
        if self.simulations is None:
            self.simulations = _simulate_every_row(model, guide, plate, args, kwargs)
        bank = self.simulations
        rows = torch.randperm(bank.size)[: bank.subsample_size]
        held = {plate: rows, **bank.global_values}
        for name, (dim, value) in bank.local_values.items():
            held[name] = value.index_select(dim, rows)
        log_q, _ = fitted_log_q(guide, held, bank.args, bank.kwargs, plate, self.nesting)
        return -(bank.size / len(rows)) * log_q


@dataclass
class SimulationBank:
    """Every row of a data plate simulated once.

    :param size: the plate's rows.
    :param subsample_size: the rows of a minibatch.
    :param global_values: the global sites' values, drawn once for every row.
    :param local_values: each local site's dimension along the rows, and its
        values at every row.
    :param args: the call's positional arguments with the simulated data.
    :param kwargs: its keyword arguments with the simulated data.
    """

    size: int
    subsample_size: int
    global_values: dict[str, torch.Tensor]
    local_values: dict[str, tuple[int, torch.Tensor]]
    args: tuple
    kwargs: dict


def _simulate_every_row(
    model: Callable, guide: Any, plate: str, args: tuple, kwargs: dict
) -> SimulationBank:
    """Simulates the plate's rows a minibatch at a time (the last overlapping
    the one before), the global values of the first held for the others."""
    with torch.no_grad():
        layout = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
    frame = layout.nodes[plate]["fn"]
    size, batch = frame.size, frame.subsample_size or frame.size
    starts = list(range(0, size - batch + 1, batch))
    if starts[-1] + batch < size:
        starts.append(size - batch)
    bank = SimulationBank(size, batch, {}, {}, args, kwargs)
    for start in starts:
        rows = torch.arange(start, start + batch, device=layout.nodes[plate]["value"].device)
        condition = {plate: rows, **bank.global_values}
        simulation = simulate(model, guide, plate, bank.args, bank.kwargs, condition)
        bank.args, bank.kwargs = simulation.args, simulation.kwargs
        nodes = simulation.trace.nodes
        if not bank.global_values:
            bank.global_values = {n: nodes[n]["value"] for n in guide.global_sites if n in nodes}
        for name in guide.local_sites:
            if name in nodes:
                dim = row_dim(nodes[name], plate)
                value = nodes[name]["value"]
                if name not in bank.local_values:
                    shape = value.shape[:dim] + (size,) + value.shape[dim + 1 :]
                    bank.local_values[name] = (dim, value.new_zeros(shape))
                bank.local_values[name][1].index_copy_(dim, rows, value)
    return bank
