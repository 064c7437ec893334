"""Reweighted wake-sleep taken per data point.

The ELBO fits the guide by the reverse KL, which is mode-seeking, and needs
score-function gradients for discrete local sites. Reweighted wake-sleep
(Bornschein and Bengio, 2015; Le, Kosiorek, Siddharth, Teh and Wood, 2019)
draws ``K`` particles of the local sites per data point from the guide and
weighs them by ``w_nk = p(x_n, z_nk | g) / q(z_nk | x_n, g)``, normalized per
data point:

* the model's parameters follow ``sum_k w~_nk grad log p(x_n, z_nk | g)``,
  the self-normalized estimate of ``grad log p(x_n | g)``;
* the guide's local heads follow ``sum_k w~_nk grad log q(z_nk | x_n, g)`` (the
  wake phase): an estimate of minus the gradient of ``KL(p(z | x_n) || q)``,
  which covers every mode, with no reparameterization, so discrete local sites
  train as continuous ones do; and, for a share ``sleep``, the sleep phase:
  ``grad log q(z | x)`` on the model's own simulations ``(z, x)``, the fit of
  amortized posterior estimation, which reaches modes that a narrow guide's
  particles miss.

The particles are held fixed (no gradient flows through their values). The
global sites are drawn once per step from the guide and shared by every
particle of every data point, as in :class:`~pyro_amortized.LocalIWAE`; their
guide follows the ELBO of the globals with the locals summed out,
``log p(g) - log q(g) + sum_n log p(x_n | g)``, by reparameterization, with
``grad_g log p(x_n | g)`` estimated as above (so the globals must be
reparameterized, and the local heads' reading of ``g`` is left out of the wake
phase). The reported loss is minus the per-data-point importance-weighted bound,
as :class:`~pyro_amortized.LocalIWAE` reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro import poutine

from .iwae import (
    PerPointObjective,
    logmeanexp,
    outside_sites,
    per_row_log_prob,
    trace_particles,
)
from .simulation import fitted_log_q, latent_values, simulate


class LocalRWS(PerPointObjective):
    """Reweighted wake-sleep with ``K`` particles per data point (see the
    module's description), as the loss of :class:`pyro.infer.SVI` with one
    optimizer: one ``svi.step`` updates the model by the importance-weighted
    estimate of ``log p(x_n | g)`` and the guide's local heads by the wake
    phase.

    The guide must be an amortized guide of this package; its local sites may
    be continuous or discrete (not enumerated). Subsampled data plates are
    scaled as in Pyro's ELBOs.

    Usage::

        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
                             LocalRWS(num_particles=10))

    :param int num_particles: ``K``, particles per data point (at least 2: with
        one, every normalized weight is 1 and the wake phase fits q to itself).
    :param float sleep: the sleep phase's share of the local heads' update
        (0 to 1; the wake phase has the rest): the heads also fit, by maximum
        likelihood, the local values of the model's own simulation of the
        minibatch, drawn with the step's globals, read from the simulated data
        (see :mod:`pyro_amortized.simulation`). Covers modes that the wake
        phase's particles do not reach. It draws one simulation per row, so the
        minibatch sets its gradient's noise: a flow fitting two narrow modes
        ended within 0.08 nats of the exact posterior with minibatches of 1,024
        and a learning rate decayed 100-fold, where minibatches of 256 and a
        10-fold decay left its KL wandering between 0.1 and 0.9 (see the docs'
        diagnostics page).
    :param int max_plate_nesting: the model's plate nesting; guessed from one run
        of the model and guide when not given.
    """

    min_particles = 2

    def __init__(
        self,
        num_particles: int = 10,
        *,
        sleep: float = 0.0,
        max_plate_nesting: int | None = None,
    ) -> None:
        super().__init__(num_particles, max_plate_nesting)
        if not (isinstance(sleep, (int, float)) and 0.0 <= sleep <= 1.0):
            raise ValueError(f"sleep must be a number from 0 to 1, got {sleep!r}.")
        self.sleep = float(sleep)

    def loss(self, model: Callable, guide: Any, *args: Any, **kwargs: Any) -> float:
        """Minus the importance-weighted bound per data point (a float)."""
        with torch.no_grad():
            return self._losses(model, guide, args, kwargs)[0].item()

    def loss_and_grads(self, model: Callable, guide: Any, *args: Any, **kwargs: Any) -> float:
        """Minus the bound; the reweighted wake-sleep gradients are left in the
        parameters' ``.grad``."""
        loss, surrogate = self._losses(model, guide, args, kwargs)
        surrogate.backward()
        return loss.item()

    def _losses(
        self, model: Callable, guide: Any, args: tuple, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Minus the bound, and the surrogate whose gradient is the update."""
        plate = self._data_plate(model, guide, args, kwargs)
        global_values, log_q_globals = outside_sites(
            poutine.trace(guide).get_trace(*args, **kwargs), plate
        )
        fixed = {name: value.detach() for name, value in global_values.items()}
        options = {"num_particles": self.num_particles, "nesting": self.nesting}
        with torch.no_grad():  # the particles, and the minibatch both runs replay
            particles = trace_particles(guide, args, kwargs, **options, held=fixed)
        model_trace = trace_particles(
            model, args, kwargs, **options, held=global_values, replayed=particles
        )
        guide_trace = trace_particles(
            guide, args, kwargs, **options, held=fixed, replayed=particles
        )
        model_part = per_row_log_prob(model_trace, plate, self.nesting)
        log_q = per_row_log_prob(guide_trace, plate, self.nesting).local
        _check_finite(log_q)
        log_w = (model_part.local - log_q).detach()
        normalized = log_w.softmax(0)
        outside = torch.as_tensor(model_part.outside).mean() - log_q_globals
        scale = model_part.scale
        bound = outside + scale * logmeanexp(log_w, 0).sum()
        wake = (normalized * log_q).sum()
        surrogate = outside + scale * (normalized * model_part.local).sum()
        surrogate = surrogate + scale * (1.0 - self.sleep) * wake
        if self.sleep > 0:
            simulation = simulate(model, guide, plate, args, kwargs, fixed)
            held = latent_values(simulation.trace)
            dreamt, _ = fitted_log_q(
                guide, held, simulation.args, simulation.kwargs, plate, self.nesting
            )
            surrogate = surrogate + scale * self.sleep * dreamt
        return -bound, -surrogate


def _check_finite(log_q: torch.Tensor) -> None:
    if not torch.isfinite(log_q).all():
        raise ValueError(
            "The guide's log density at its own particles is not finite: the wake phase "
            "evaluates q at fixed values, which a normalizing flow reaches through its "
            "inverse, and a spline's inverse can lose precision there. Train with "
            "LocalRWS(sleep=1.0) (no wake phase for the guide), or with a Gaussian family."
        )
