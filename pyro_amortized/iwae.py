"""Importance weights per data point, and the per-data-point IWAE bound.

Pyro's importance-weighted ELBOs weigh whole traces: with local latents in a
plate, the log-mean-exp is taken over the sum of every data point's weight, so
the bound tightens only as fast as for one big latent. Here the local sites get
``K`` particles per data point and the log-mean-exp is taken per data point:

.. math::

    \\mathcal{L}_K = \\mathbb{E}_{q(g)}\\Big[\\log \\frac{p(g)}{q(g)}
        + \\sum_n \\mathbb{E}\\log \\frac{1}{K} \\sum_k
        \\frac{p(x_n, z_{nk} \\mid g)}{q(z_{nk} \\mid x_n, g)}\\Big]
    \\le \\log p(x).

Global sites ``g`` are drawn once per step and shared by every particle of every
data point, so their part is an ordinary ELBO term; this keeps the bound valid
(an average over per-particle globals inside a data point's log-mean-exp would
not be a bound).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.poutine.util import prune_subsample_sites

from .guides import AutoAmortizedGuide

PARTICLE_PLATE = "local_particles"
"""Name of the vectorized plate over particles."""


@dataclass
class LogWeights:
    """Log importance weights of one vectorized run.

    :param local: ``(num_particles, num_rows)``: ``log p(x_n, z_nk | g) -
        log q(z_nk | x_n, g)`` for the rows of the data plate in this run.
    :param outside: ``(num_particles,)``: model terms outside the data plate
        (the globals' prior, observations outside it), per particle.
    :param scale: the data plate's subsampling scale (full size / rows).
    :param guide_trace: the guide's vectorized trace of the run.
    """

    local: torch.Tensor
    outside: torch.Tensor
    scale: float
    guide_trace: poutine.Trace | None = None


def max_plate_nesting(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
    """The number of nested vectorized plates in the model and guide."""
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    dims = [
        -frame.dim
        for trace in (model_trace, guide_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


def log_weights(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    plate: str,
    num_particles: int,
    nesting: int,
    condition: dict[str, torch.Tensor] | None = None,
) -> LogWeights:
    """Runs ``num_particles`` vectorized particles of the guide and the model
    and splits their log weights per data point of ``plate``.

    :param plate: the name of the data plate.
    :param nesting: the model's max plate nesting (see :func:`max_plate_nesting`).
    :param condition: guide site values to hold fixed (the globals); these
        sites are the same in every particle and left out of the guide's part.
    :raises ValueError: if a site is enumerated (not supported here).
    """
    options = {"num_particles": num_particles, "nesting": nesting, "held": condition}
    guide_trace = trace_particles(guide, args, kwargs, **options)
    model_trace = trace_particles(model, args, kwargs, **options, replayed=guide_trace)
    model_part = per_row_log_prob(model_trace, plate, nesting)
    guide_part = per_row_log_prob(guide_trace, plate, nesting, observed=False)
    zeros = torch.zeros(num_particles, 1, device=_trace_device(model_trace))
    return LogWeights(
        local=zeros + model_part.local - guide_part.local,
        outside=zeros[:, 0] + model_part.outside - guide_part.outside,
        scale=model_part.scale,
        guide_trace=guide_trace,
    )


def log_weights_in_chunks(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    chunk_size: int,
    **options: Any,
) -> list[LogWeights]:
    """:func:`log_weights` of ``num_particles`` particles, in vectorized runs
    of at most ``chunk_size`` (memory); ``options`` as :func:`log_weights`'s."""
    return [
        log_weights(model, guide, args, kwargs, num_particles=size, **options)
        for size in chunk_sizes(num_particles, chunk_size)
    ]


def chunk_sizes(total: int, size: int) -> list[int]:
    """``total`` particles as runs of at most ``size``."""
    return [min(size, total - start) for start in range(0, total, size)]


def trace_particles(
    fn: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    nesting: int,
    held: dict[str, torch.Tensor] | None = None,
    replayed: poutine.Trace | None = None,
) -> poutine.Trace:
    """``fn``'s trace over ``num_particles`` vectorized particles (the plate
    :data:`PARTICLE_PLATE`, left of the model's ``nesting`` plates), with the
    ``held`` values fixed (observed, as in both the model and the guide) and
    the sites of ``replayed`` replayed."""
    if held:
        fn = poutine.condition(fn, data=held)
    if replayed is not None:
        fn = poutine.replay(fn, trace=replayed)
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-nesting - 1):
        return poutine.trace(fn).get_trace(*args, **kwargs)


def per_row_log_prob(
    trace: poutine.Trace, plate: str, nesting: int, observed: bool = True
) -> LogWeights:
    """A vectorized trace's log density split per row of ``plate``: ``local``
    ``(particles, rows)``, each row's terms as one data point's (the plate's
    subsampling scale, which the trace applies, taken out and returned as
    ``scale``), and ``outside`` ``(particles,)`` (or 0.0 where no site adds to
    them); observed sites left out unless ``observed``.

    :raises ValueError: if a site is enumerated (not supported here).
    """
    local = outside = 0.0  # tensors once a site adds to them
    scale = 1.0
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or (not observed and site["is_observed"]):
            continue
        if site["infer"].get("enumerate"):
            raise ValueError(
                f"Site '{name}' is enumerated; per-data-point importance weights need "
                "sampled sites. Remove its infer={'enumerate': ...} in the model, or "
                "build the guide without enumerate_discrete."
            )
        log_prob = site["log_prob"]
        full = log_prob.reshape((1,) * (nesting + 1 - log_prob.dim()) + log_prob.shape)
        frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
        if frame is None:
            outside = outside + full.reshape(full.shape[0], -1).sum(-1)
            continue
        # The trace scaled the term up to the plate's full size: per row it is
        # taken at its own size, and the scale returned for the sum over rows.
        scale = frame.full_size / frame.size if frame.full_size else 1.0
        per_row = full.movedim(nesting + 1 + frame.dim, 1) / scale
        local = local + per_row.reshape(per_row.shape[:2] + (-1,)).sum(-1)
    return LogWeights(local=local, outside=outside, scale=scale)


def _trace_device(trace: poutine.Trace) -> torch.device:
    """The device of a trace's sample values (the data's device)."""
    for site in trace.nodes.values():
        if site["type"] == "sample" and isinstance(site["value"], torch.Tensor):
            return site["value"].device
    return torch.device("cpu")


def logmeanexp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log(mean(exp(values)))`` along ``dim``, computed stably."""
    return torch.logsumexp(values, dim) - math.log(values.shape[dim])


def renyi_mean(log_weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per data point, the Renyi bound of order ``alpha`` from ``(K, rows)`` log
    weights: ``log mean_k w^(1 - alpha) / (1 - alpha)``; the importance-weighted
    bound at ``alpha = 0`` and the ELBO (the mean log weight) at ``alpha = 1``."""
    if alpha == 1.0:
        return log_weights.mean(0)
    return logmeanexp((1.0 - alpha) * log_weights, 0) / (1.0 - alpha)


class PerPointObjective(ELBO):
    """Shared plumbing of the objectives that draw ``K`` particles of the local
    sites per data point (:class:`LocalIWAE`, :class:`~pyro_amortized.LocalRWS`):
    the particle count, the model's plate nesting, and the data plate.

    :param num_particles: ``K``, at least :attr:`min_particles`.
    :param max_plate_nesting: guessed from one run of the model and guide when
        not given.
    """

    min_particles = 1
    """The fewest particles the objective takes."""

    def __init__(self, num_particles: int, max_plate_nesting: int | None) -> None:
        if not (isinstance(num_particles, int) and num_particles >= self.min_particles):
            least = "" if self.min_particles == 1 else f" of at least {self.min_particles}"
            raise ValueError(
                f"num_particles must be a positive integer{least}, got {num_particles!r}."
            )
        super().__init__(num_particles=num_particles)
        self.nesting = max_plate_nesting

    def _get_trace(self, model: Callable, guide: Any, args: tuple, kwargs: dict):
        raise NotImplementedError(f"{type(self).__name__} runs its particles itself.")

    def _data_plate(self, model: Callable, guide: Any, args: tuple, kwargs: dict) -> str:
        """The guide's data plate; the plate nesting found on the first call."""
        plate = data_plate_of(guide, args, kwargs, f"{type(self).__name__} weighs")
        if self.nesting is None:
            self.nesting = max_plate_nesting(model, guide, args, kwargs)
        return plate


class LocalIWAE(PerPointObjective):
    """The importance-weighted bound taken per data point: ``K`` particles of
    the local sites per data point, the log-mean-exp per data point, the global
    sites drawn once per step and shared (see the module's formula). An ELBO for
    :class:`pyro.infer.SVI`; ``K = 1`` is the ELBO.

    The guide must be an amortized guide of this package (its data plate names
    the local sites) with reparameterized local sites; subsampled data plates
    are scaled as in Pyro's ELBOs.

    Usage::

        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
                             LocalIWAE(num_particles=50))

    :param int num_particles: ``K``, particles per data point.
    :param float alpha: the order of the Renyi bound taken per data point
        (:func:`renyi_mean`): 0 (default) is the importance-weighted bound, 1 the
        ELBO; between them the bound is tighter than the ELBO but looser than
        IWAE, with less variance in the guide's gradient.
    :param int max_plate_nesting: the model's plate nesting; guessed from one run
        of the model and guide when not given.
    """

    def __init__(
        self,
        num_particles: int = 10,
        *,
        alpha: float = 0.0,
        max_plate_nesting: int | None = None,
    ) -> None:
        super().__init__(num_particles, max_plate_nesting)
        if not isinstance(alpha, (int, float)) or alpha < 0:
            raise ValueError(f"alpha must be a number >= 0, but got {alpha!r}.")
        self.alpha = float(alpha)

    def differentiable_loss(self, model: Callable, guide: Any, *args: Any, **kwargs: Any):
        """The negative bound, differentiable with respect to every parameter."""
        plate = self._data_plate(model, guide, args, kwargs)
        outside_guide = poutine.trace(guide).get_trace(*args, **kwargs)
        condition, log_q_outside = outside_sites(outside_guide, plate)
        weights = log_weights(
            model,
            guide,
            args,
            kwargs,
            plate=plate,
            num_particles=self.num_particles,
            nesting=self.nesting,
            condition=condition,
        )
        per_row = renyi_mean(weights.local, self.alpha)
        bound = weights.outside.mean() - log_q_outside + weights.scale * per_row.sum()
        return -bound

    def loss(self, model: Callable, guide: Any, *args: Any, **kwargs: Any) -> float:
        """The negative bound (a float), like Pyro's ELBOs."""
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model: Callable, guide: Any, *args: Any, **kwargs: Any) -> float:
        """The negative bound; its gradient is left in the parameters' ``.grad``."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


def data_plate_of(guide: Any, args: tuple, kwargs: dict, caller: str) -> str:
    """The data plate of an amortized guide (built on these arguments if not
    yet); ``caller`` starts the error messages, e.g. ``"LocalIWAE weighs"``.

    :raises ValueError: if the guide is not an amortized guide of this package,
        or its model has no single data plate (see :func:`single_data_plate`).
    """
    if not isinstance(guide, AutoAmortizedGuide):
        name = caller.split()[0]
        raise ValueError(
            f"{name} needs an amortized guide of pyro_amortized (it reads the data plate "
            f"from it), but got {type(guide).__name__}."
        )
    if guide._built is None:
        with poutine.block():
            guide(*args, **kwargs)
    return single_data_plate(guide, caller)


def single_data_plate(guide: AutoAmortizedGuide, caller: str) -> str:
    """The name of the guide's one data plate.

    :param caller: how the error message starts, e.g. ``"LocalIWAE weighs"``.
    :raises ValueError: if the model has more than one data plate.
    """
    plates = list(guide.data_plates)
    if len(plates) != 1:
        raise ValueError(f"{caller} one data plate, but the model has {len(plates)}: {plates}.")
    plate = guide._require_built().structure.data_plates[plates[0]]
    if plate.group_index is not None:
        raise ValueError(
            f"{caller} one data plate whose data points hold their own likelihood terms, but "
            f"the local sites of plate '{plate.name}' are groups of the rows of plate "
            f"'{plate.rows_plate}' (by '{plate.group_index}'), whose terms sit in that plate. "
            "Score the model with pyro.infer.Trace_ELBO or TraceMeanField_ELBO instead."
        )
    return plates[0]


def outside_sites(trace: poutine.Trace, plate: str) -> tuple[dict[str, torch.Tensor], Any]:
    """The guide's sites outside the data plate (the globals): their values, to
    hold fixed across particles, and their summed log density."""
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    values, log_q = {}, 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if not any(frame.name == plate for frame in site["cond_indep_stack"]):
            values[name] = site["value"]
            log_q = log_q + site["log_prob"].sum()
    return values, log_q
