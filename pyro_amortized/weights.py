"""The scales and masks a model puts on its latent sites, mirrored in the guide.

A model's ``poutine.scale`` (a likelihood weight, a KL annealing factor) and
``poutine.mask`` (padded time steps, missing rows) weight the log-density terms
of the sites they enclose. The ELBO is a bound only when the guide's terms of
the same sites carry the same weights: a site masked in the model but not in
the guide adds the entropy of its proposal to the ELBO, which then grows without
limit as the proposal's scale runs away; a scale on the model's term alone
trades the guide's entropy against the prior at the wrong rate.

The weights are read from a run of the model. Weights that are plain numbers
depend only on the shapes of a call and are read once per call signature;
tensor weights (masks from the data) are read again on every call, from a run
of the model on the guide's minibatch rows (or, in a call that plans a new
signature with no plate subsampled, from the run that plans it; masks that are
slices of the call's arguments, or boolean copies of slices, are sliced from
them, see :mod:`pyro_amortized.argument_masks`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.inspect import TrackProvenance
from pyro.ops.provenance import get_provenance
from pyro.poutine.util import site_is_subsample

from .prototype import quietly, trace_prototype

Weight = tuple[Any, Any]
"""A site's ``(scale, mask)``: a number or tensor, and ``None``, a bool or a tensor."""


def handler_weights(trace: poutine.Trace, names: Iterable[str]) -> dict[str, Weight]:
    """The scale and mask the model's handlers put on each named site of a trace,
    the scale of its plates' subsampling taken out (the guide's own plates apply
    that). Sites with neither are left out.

    Usage::

        handler_weights(trace, ["z"])   # {"z": (0.5, None)} under poutine.scale(scale=0.5)
    """
    weights = {}
    for name in names:
        site = trace.nodes[name]
        subsampling = math.prod(
            frame.full_size / frame.size
            for frame in site["cond_indep_stack"]
            if frame.full_size and frame.size > 0
        )
        scale = site["scale"] / subsampling
        mask = _combined(site["mask"], distribution_mask(name, site["fn"]))
        if not isinstance(scale, torch.Tensor) and math.isclose(scale, 1.0):
            scale = 1.0
        if mask is True:
            mask = None
        if isinstance(scale, torch.Tensor) or scale != 1.0 or mask is not None:
            weights[name] = (scale, mask)
    return weights


def distribution_mask(name: str, fn: Any) -> Any:
    """The mask a site's distribution puts on its own log-density
    (``dist.Normal(...).mask(m)``), over the site's batch shape: ``None`` if
    there is none. A mask over event dimensions (``.mask(m).to_event(1)``, as
    Pyro's deep Markov model pads its time steps) becomes the site's where it is
    the same over them.

    :raises ValueError: where the mask differs within one event, which no mask
        on the guide's site can mirror.
    """
    source = mask_source(fn)
    return None if source is None else site_mask(name, *source)


def mask_source(fn: Any) -> tuple[Any, torch.Size, int] | None:
    """A distribution's own mask, the batch shape it masks and the number of
    event dimensions reinterpreted outside it; ``None`` if it has none."""
    event_dims = 0
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution)):
        if isinstance(fn, dist.MaskedDistribution):
            return fn._mask, fn.batch_shape, event_dims
        event_dims += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    return None


def site_mask(name: str, mask: Any, batch_shape: torch.Size, event_dims: int) -> Any:
    """A distribution's mask as the mask of its site (see :func:`distribution_mask`)."""
    if not isinstance(mask, torch.Tensor):
        return None if mask else False
    if event_dims == 0:
        return mask.expand(batch_shape)
    outer = batch_shape[: len(batch_shape) - event_dims]
    event = range(max(mask.dim() - event_dims, 0), mask.dim())
    if all(_repeated(mask, dim) for dim in event):  # constant over the event by its layout
        return mask[(..., *[0] * len(event))].expand(outer)
    mask = mask.expand(batch_shape)
    inner = tuple(range(-event_dims, 0))
    if not torch.equal(mask.all(inner), mask.any(inner)):
        raise ValueError(
            f"Site '{name}' is masked within its event (.mask() inside .to_event()) "
            "differently from entry to entry, which the guide cannot mirror on its "
            "site. Mask whole values (a mask constant over the event dimensions), "
            "or use poutine.mask."
        )
    return mask.all(inner)


def _repeated(mask: torch.Tensor, dim: int) -> bool:
    """Whether a mask holds one value along ``dim``: of size 1 there, or that one
    value repeated without a copy (stride 0, as ``MaskedDistribution`` expands
    ``mask[:, t : t + 1]`` over its event)."""
    return mask.shape[dim] == 1 or (mask.stride(dim) == 0 and mask.shape[dim] > 0)


def _combined(handler: Any, own: Any) -> Any:
    """Both masks of a site: the handlers' (``True`` for none) and its distribution's."""
    if own is None:
        return handler
    if handler is True or handler is None:
        return own
    return handler & own if isinstance(handler, torch.Tensor) else (own if handler else False)


def vary(weights: Mapping[str, Weight]) -> bool:
    """Whether any weight is a tensor, which may change with the data of a call."""
    return any(
        isinstance(scale, torch.Tensor) or isinstance(mask, torch.Tensor)
        for scale, mask in weights.values()
    )


def check_weights_follow_data(
    model: Callable, init_loc_fn: Callable, args: tuple, kwargs: dict, names: Iterable[str]
) -> None:
    """Checks that no tensor scale or mask of the named (guided) sites is
    computed from a latent site's value, as ``.mask(z_pres)`` in Pyro's
    Attend-Infer-Repeat: the guide reads its weights from a run of the model,
    whose latent values are not the guide's draws, so its sites would be
    weighted unlike the model's and the ELBO would not be a bound. Pyro's
    provenance tracking names the latent sites; weights that differ between two
    runs of the model with other draws catch the rest.

    :raises ValueError: naming the weighted site (and the latent sites it follows).
    """
    names = list(names)
    _check_weights_by_provenance(model, init_loc_fn, args, kwargs, names)
    _check_weights_stay_with_other_draws(model, args, kwargs, names)


def _check_weights_by_provenance(
    model: Callable, init_loc_fn: Callable, args: tuple, kwargs: dict, names: list[str]
) -> None:
    try:
        with pyro.validation_enabled(False):
            trace = quiet_run(TrackProvenance()(model), init_loc_fn, args, kwargs)
    except Exception:  # noqa: BLE001 - a model that breaks on tracked values: the next check
        return
    latent = {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    for name in names:
        site = trace.nodes.get(name)
        if site is None:
            continue
        source = mask_source(site["fn"])
        weights = (site["scale"], site["mask"], None if source is None else source[0])
        followed = sorted(
            set().union(*(get_provenance(w) for w in weights if isinstance(w, torch.Tensor)))
            & latent
        )
        if followed:
            raise ValueError(
                f"The model weights the latent site '{name}' (poutine.mask, .mask() or "
                f"poutine.scale) by a value computed from the latent site(s) {followed}. "
                + _FOLLOWED_DRAWS
            )


_FOLLOWED_DRAWS = (
    "The guide mirrors weights computed from the data, not from its own draws, and "
    "with this one its ELBO would not be a bound. Sample the site unmasked and let "
    "the latent value switch its effect downstream (as z_pres * contribution; some "
    "programs have a switch for it, as AIR's use_masking=False), or guide it and the "
    "sites it follows by hand, beside this guide on the rest of the model "
    "(AutoGuideList, poutine.block(model, hide=[...]))."
)


def _check_weights_stay_with_other_draws(
    model: Callable, args: tuple, kwargs: dict, names: list[str]
) -> None:
    """Runs the model twice on the call's arguments and rows, its latent values
    drawn from their priors: tensor weights of the named sites that differ
    between the runs follow the draws, however they were computed from them
    (``torch.tensor(z.tolist())`` escapes provenance tracking). A model whose
    priors cannot be sampled is not checked so.

    :raises ValueError: naming the sites whose weights differ.
    """
    try:
        with quietly():
            first = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
            rows = {n: s["value"] for n, s in first.nodes.items() if site_is_subsample(s)}
            again = poutine.condition(model, data=rows)
            second = poutine.block(poutine.trace(again).get_trace)(*args, **kwargs)
            before, after = handler_weights(first, names), handler_weights(second, names)
    except Exception:  # noqa: BLE001 - an improper prior, a model that needs its guide
        return
    changed = changed_sites(before, after)
    if changed:
        raise ValueError(
            f"The model weights the latent site(s) {changed} (poutine.mask, .mask() or "
            "poutine.scale) by values that differ between two runs of the model on the "
            "same arguments and rows: they follow its latent draws (or random numbers "
            "of its own). " + _FOLLOWED_DRAWS
        )


def weights_on_rows(
    model: Callable,
    init_loc_fn: Callable,
    args: tuple,
    kwargs: dict,
    plates: Mapping[str, pyro.plate],
    names: Iterable[str],
) -> dict[str, Weight]:
    """The weights of the named sites in a run of the model on this call, on
    the minibatch rows of the guide's subsampled plates."""
    rows = {
        name: plate.indices
        for name, plate in plates.items()
        if 0 < plate.subsample_size < plate.size
    }
    trace = quiet_run(poutine.condition(model, data=rows), init_loc_fn, args, kwargs)
    return handler_weights(trace, names)


def quiet_run(model: Callable, init_loc_fn: Callable, args: tuple, kwargs: dict) -> poutine.Trace:
    """A trace of the model's prototype run (see
    :func:`~pyro_amortized.prototype.trace_prototype`) without gradients,
    leaving the random state as it was."""
    with quietly():  # the run draws its initial values at random
        return trace_prototype(model, init_loc_fn, args, kwargs)[0]


def weighted(weight: Weight | None) -> AbstractContextManager:
    """Enters ``poutine.scale`` and ``poutine.mask`` with a site's weight (a
    null context for a site without one, as most are: entered on every call)."""
    if weight is None:
        return nullcontext()
    stack = ExitStack()
    scale, mask = weight
    if isinstance(scale, torch.Tensor) or scale != 1.0:
        stack.enter_context(poutine.scale(scale=scale))
    if mask is not None:
        stack.enter_context(poutine.mask(mask=mask))
    return stack


def same_weights(first: Mapping[str, Weight], second: Mapping[str, Weight]) -> bool:
    """Whether two calls' weights are equal, site by site."""
    if first.keys() != second.keys():
        return False
    return all(
        _equal(a, b) for name in first for a, b in zip(first[name], second[name], strict=True)
    )


def changed_sites(first: Mapping[str, Weight], second: Mapping[str, Weight]) -> list[str]:
    """The sites whose weights differ between two calls, sorted."""
    return sorted(
        name
        for name in first.keys() | second.keys()
        if (name in first) != (name in second)
        or not same_weights({name: first[name]}, {name: second[name]})
    )


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    return a == b
