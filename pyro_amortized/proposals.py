"""An importance proposal per data point fitted to its posterior.

The widened guide (see :func:`~pyro_amortized.heads.widened`) is a fair
importance proposal where the guide's family holds the posterior; where it does
not (a diagonal guide of a correlated posterior) its weights are heavy-tailed
and the evidence estimate is off for the points it fits worst. A first run of
the guide widened :data:`FIT_WIDENING` times gives each data point weighted
draws of its local sites; a full-covariance Gaussian fitted to them on the
unconstrained scale (the weighted mean and covariance, the weights tempered
where a few dominate: adaptive importance sampling) and fitted again
(:data:`ADAPTATION_ROUNDS`) to draws of the mixture below follows the
posterior's correlations. The final proposal is the defensive mixture
``(1 - a) Gaussian + a widened guide`` (Hesterberg, 1995), with ``a =``
:data:`DEFENSIVE_WEIGHT`, whose weights stay bounded where the Gaussian is too
narrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from .iwae import chunk_sizes, log_weights_in_chunks, per_row_log_prob, trace_particles
from .sampling import SiteSampler

DEFENSIVE_WEIGHT = 0.2
"""The widened guide's share of the mixture proposal."""

FIT_WIDENING = 4.0
"""How much wider than the guide the first run's draws and the mixture's guide
part are. A diagonal guide of a correlated posterior is narrower than its
marginals (2.9 times on the test suite's strongly correlated model): the first
run must reach the posterior's long axes for the fit to find them."""

ADAPTATION_ROUNDS = 5
"""Fits of the Gaussian: the first to the widened guide's draws, each next one
to the previous mixture's; the last mixture's weights are the estimate's."""

MIN_EFFECTIVE_FRACTION = 0.1
"""The share of a row's draws that its tempered weights keep effective in a fit."""

TEMPERING_STEPS = 12
"""Tempering powers tried: 1, 1/2, ..., 1/2^11 (the last is taken if none is enough)."""

JITTER = 1e-4
"""Added to the fitted covariance's diagonal, relative to each coordinate's
unweighted variance among the first run's draws."""


@dataclass
class _LocalSite:
    """How one local site's values map to columns of a row's vector: the
    site's unconstrained shape with the particle and row dimensions first."""

    name: str
    transform: Any
    shape: tuple[int, ...]  # the unconstrained value, padded to the plates
    row_dim: int
    columns: slice


def fitted_weights(
    model: Callable,
    proposal: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    chunk_size: int,
    widen: Callable[[float], AbstractContextManager],
    sampler: SiteSampler,
    **options: Any,
) -> torch.Tensor | None:
    """``(num_particles, rows)`` log importance weights of the mixture proposal
    fitted to a first run of ``proposal`` (with as many particles) and refitted
    (:data:`ADAPTATION_ROUNDS`); ``None`` where a local site is discrete (the
    widened guide alone is used then). ``widen(factor)`` widens ``proposal`` in
    its block; ``sampler``, the guide's, maps each local site to its
    unconstrained space, where the Gaussian is fitted, and conditions
    ``proposal`` at the mixture's draws (:meth:`~pyro_amortized.sampling.SiteSampler.held`);
    ``options`` (``plate``, ``nesting``, ``condition``) are those of
    :func:`~pyro_amortized.iwae.log_weights`."""
    options = {**options, "sampler": sampler}
    with widen(FIT_WIDENING):
        return _adapted_weights(model, proposal, (args, kwargs), num_particles, chunk_size, options)


def _adapted_weights(
    model: Callable,
    proposal: Callable,
    call: tuple[tuple, dict],
    num_particles: int,
    chunk_size: int,
    options: dict[str, Any],
) -> torch.Tensor | None:
    args, kwargs = call
    particles = {"num_particles": num_particles, "chunk_size": chunk_size}
    weighing = {name: value for name, value in options.items() if name != "sampler"}
    pilot = log_weights_in_chunks(model, proposal, args, kwargs, **particles, **weighing)
    nesting, plate = options["nesting"], options["plate"]
    held = set(options["condition"])
    sites = _local_sites(pilot[0].guide_trace, plate, nesting, held, options["sampler"])
    if sites is None:
        return None
    draws = torch.cat([_row_vectors(run.guide_trace, sites) for run in pilot])
    weights = torch.cat([run.local for run in pilot])
    for _ in range(ADAPTATION_ROUNDS):
        fitted = _fit_gaussian(draws, weights)
        runs = [
            _mixture_weights(model, proposal, args, kwargs, fitted, sites, size, options)
            for size in chunk_sizes(num_particles, chunk_size)
        ]
        weights = torch.cat([run_weights for run_weights, _ in runs])
        draws = torch.cat([vectors for _, vectors in runs])
    return weights


def _local_sites(
    trace: poutine.Trace, plate: str, nesting: int, held: set[str], sampler: SiteSampler
) -> list[_LocalSite] | None:
    sites, start = [], 0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name in held:
            continue
        if site["infer"].get("is_auxiliary"):  # the site it draws is read instead
            continue
        if site_is_subsample(site):
            continue
        frame = next((f for f in site["cond_indep_stack"] if f.name == plate), None)
        if frame is None:
            continue
        if site["fn"].support.is_discrete:
            return None
        # the model's bijection: the guide's site is a Delta on the real line
        transform = sampler.transforms.get(name) or biject_to(site["fn"].support)
        value = transform.inv(site["value"])
        event_dim = transform.codomain.event_dim - transform.domain.event_dim
        event_dim = len(site["fn"].event_shape) - event_dim
        batch = value.shape[: value.dim() - event_dim]
        shape = (1,) * (nesting + 1 - len(batch)) + tuple(value.shape)
        width = math.prod(shape) // (shape[0] * shape[nesting + 1 + frame.dim])
        sites.append(
            _LocalSite(name, transform, shape, nesting + 1 + frame.dim, slice(start, start + width))
        )
        start += width
    return sites


def _row_vectors(trace: poutine.Trace, sites: list[_LocalSite]) -> torch.Tensor:
    """``(particles, rows, columns)``: each row's unconstrained local values."""
    parts = []
    for site in sites:
        value = site.transform.inv(trace.nodes[site.name]["value"]).reshape(site.shape)
        moved = value.movedim(site.row_dim, 1)
        parts.append(moved.reshape(moved.shape[0], moved.shape[1], -1))
    return torch.cat(parts, -1)


def _constrained(
    vectors: torch.Tensor, sites: list[_LocalSite]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """The inverse of :func:`_row_vectors`: each site's constrained and
    unconstrained values, and ``(particles, rows)``, the log |det| of the map
    from each row's vector to its constrained values."""
    values, unconstrained_values = {}, {}
    log_jacobian = torch.zeros(vectors.shape[:2], device=vectors.device)
    for site in sites:
        moved_shape = list(site.shape)
        moved_shape.insert(1, moved_shape.pop(site.row_dim))
        moved_shape[0] = vectors.shape[0]
        unconstrained = vectors[..., site.columns].reshape(moved_shape)
        constrained = site.transform(unconstrained)
        log_det = site.transform.log_abs_det_jacobian(unconstrained, constrained)
        log_jacobian = log_jacobian + log_det.reshape(log_det.shape[0], log_det.shape[1], -1).sum(
            -1
        )
        values[site.name] = constrained.movedim(1, site.row_dim)
        unconstrained_values[site.name] = unconstrained.movedim(1, site.row_dim)
    return values, unconstrained_values, log_jacobian


def _fit_gaussian(draws: torch.Tensor, weights: torch.Tensor) -> dist.MultivariateNormal:
    """Each row's weighted mean and covariance of its draws (``(K, rows, D)``),
    the weights tempered (:func:`_tempered`)."""
    normalized = _tempered(weights).unsqueeze(-1)  # (K, rows, 1)
    mean = (normalized * draws).sum(0)
    centred = draws - mean
    covariance = torch.einsum("knd,kne->nde", normalized * centred, centred)
    jitter = JITTER * draws.var(0).clamp_min(1e-8)
    return dist.MultivariateNormal(mean, covariance + torch.diag_embed(jitter))


def _tempered(weights: torch.Tensor) -> torch.Tensor:
    """Each row's normalized weights ``w^b``, with the largest ``b`` of 1, 1/2,
    1/4, ... that leaves :data:`MIN_EFFECTIVE_FRACTION` of the draws effective:
    a few dominant draws would fit a degenerate Gaussian, and a flatter fit is
    sharpened by the next round."""
    chosen = torch.zeros_like(weights)
    found = torch.zeros(weights.shape[1], dtype=torch.bool, device=weights.device)
    for power in range(TEMPERING_STEPS):
        normalized = (weights * 0.5**power).softmax(0)
        enough = 1 / normalized.square().sum(0) >= MIN_EFFECTIVE_FRACTION * weights.shape[0]
        take = enough & ~found
        if power == TEMPERING_STEPS - 1:
            take = ~found
        chosen = torch.where(take, normalized, chosen)
        found = found | take
    return chosen


def _mixture_weights(
    model: Callable,
    proposal: Callable,
    args: tuple,
    kwargs: dict,
    fitted: dist.MultivariateNormal,
    sites: list[_LocalSite],
    num_particles: int,
    options: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(num_particles, rows)`` log weights of draws from the mixture, and
    the draws, ``(num_particles, rows, columns)``."""
    nesting, condition, plate = options["nesting"], options["condition"], options["plate"]
    particles = {"num_particles": num_particles, "nesting": nesting}
    drawn = trace_particles(proposal, args, kwargs, **particles, held=condition)
    from_guide = _row_vectors(drawn, sites)
    from_fit = fitted.sample((num_particles,))
    pick_guide = torch.rand(from_fit.shape[:2], device=from_fit.device) < DEFENSIVE_WEIGHT
    vectors = torch.where(pick_guide.unsqueeze(-1), from_guide, from_fit)
    values, unconstrained, log_jacobian = _constrained(vectors, sites)
    held = {**condition, **options["sampler"].held(values, unconstrained)}
    guide_trace = trace_particles(proposal, args, kwargs, **particles, held=held)
    model_trace = trace_particles(model, args, kwargs, **particles, held={**condition, **values})
    log_guide = per_row_log_prob(guide_trace, plate, nesting).local
    log_fit = fitted.log_prob(vectors) - log_jacobian
    log_mixture = torch.logaddexp(
        math.log1p(-DEFENSIVE_WEIGHT) + log_fit, math.log(DEFENSIVE_WEIGHT) + log_guide
    )
    return per_row_log_prob(model_trace, plate, nesting).local - log_mixture, vectors
