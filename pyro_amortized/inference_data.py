"""Posteriors in ArviZ: an amortized guide's draws as an ``InferenceData``.

:func:`to_inference_data` draws the global sites once per posterior draw,
then runs the guide and the model on every row of the data (passed as model
arguments, or as the batches of a ``DataLoader`` encoded one at a time): the
local sites' draws, the posterior predictive of the observed sites and their
pointwise log-likelihood. Each dimension of a site that a plate indexes is
named after the plate (the data plate's dimension carries the data plate's
name), so ``az.summary``, ``az.loo`` and ``az.plot_*`` read it as they read
MCMC output. ArviZ is an optional extra: ``pip install pyro-amortized[arviz]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from .guides import AutoAmortizedGuide
from .rows import check_every_row, every_row

GROUPS = ("posterior", "posterior_predictive", "log_likelihood", "observed_data")
"""The groups of the returned ``InferenceData``."""


def to_inference_data(
    model: Callable,
    guide: AutoAmortizedGuide,
    *args: Any,
    num_samples: int = 500,
    batches: Iterable[Any] | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> Any:
    """An ArviZ ``InferenceData`` of the guide's posterior on the data in
    ``args`` (or in ``batches``): groups ``posterior`` (every latent site, the
    local ones with a dimension named after the data plate),
    ``posterior_predictive`` and ``log_likelihood`` (each observed site,
    pointwise: ``az.loo`` works on it) and ``observed_data``; one chain of
    ``num_samples`` draws.

    Every row is encoded, with no subsampling. Each draw's global values are
    shared by every row: they are drawn first, then each batch's guide is
    conditioned on them, so a data set larger than memory is exported batch by
    batch with the same posterior as in one call. A site that a plate indexes
    has that dimension named after the plate; a site's other dimensions are
    named ``{site}_dim_{i}``. The log-likelihood is each observed site's
    ``log_prob`` under the model's masks (masked entries read 0), not scaled.

    Usage::

        idata = to_inference_data(model, guide, x_test, num_samples=500)
        az.summary(idata, var_names=["z"])
        az.loo(idata)

        loader = DataLoader(x_big, batch_size=1024)      # batches of model arguments
        idata = to_inference_data(model, guide, batches=loader, progress=True)

    :param model: the guide's model.
    :param guide: a trained amortized guide.
    :param args: the model's arguments (not with ``batches``).
    :param num_samples: posterior draws.
    :param batches: an iterable of batches of model arguments, each a tuple (or
        list) of positional arguments or a single tensor; ``kwargs`` are passed
        to every batch. The batches are concatenated along the data plate.
    :param progress: show a progress bar over the batches.
    :raises ImportError: ArviZ is not installed.
    :raises ValueError: bad options, or a latent site of the model that the
        guide does not sample (a site enumerated in the model).
    """
    az = _import_arviz()
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
    if batches is not None and args:
        raise ValueError("Pass the model's arguments either as args or as batches, not both.")
    calls = [args] if batches is None else (_batch_args(batch) for batch in batches)
    total = None if batches is None else _length(batches)
    exported = _Exported()
    with torch.no_grad():
        for batch_args in tqdm(calls, total=total, disable=not progress, desc="batches"):
            check_every_row(model, guide, batch_args, kwargs, reader="to_inference_data reads")
            if exported.global_draws is None:
                exported.global_draws = _global_draws(guide, batch_args, kwargs, num_samples)
            exported.add(_draw_batch(model, guide, batch_args, kwargs, exported.global_draws))
    if exported.global_draws is None:
        raise ValueError("batches is empty: there is nothing to export.")
    return exported.inference_data(az, set(guide.data_plates))


def _import_arviz() -> Any:
    try:
        import arviz
    except ImportError as error:
        raise ImportError(
            "to_inference_data needs ArviZ: pip install 'pyro-amortized[arviz]' (or arviz)."
        ) from error
    return arviz


def _batch_args(batch: Any) -> tuple:
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def _length(batches: Iterable[Any]) -> int | None:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None


def _global_draws(
    guide: AutoAmortizedGuide, args: tuple, kwargs: dict, num_samples: int
) -> list[poutine.Trace]:
    """Each draw's global sites, from the guide on one batch: traces that hold
    those sites alone, for the guide to replay on every batch."""
    draws = []
    for _ in range(num_samples):
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
        for name in [name for name in trace.nodes if name not in guide.global_sites]:
            trace.remove_node(name)
        draws.append(trace)
    return draws


class _Site:
    """One site's arrays over the draws, with the names of its dimensions."""

    def __init__(self, dims: list[str]) -> None:
        self.dims = dims
        self.arrays: list[np.ndarray] = []


def _draw_batch(
    model: Callable,
    guide: AutoAmortizedGuide,
    args: tuple,
    kwargs: dict,
    global_draws: list[poutine.Trace],
) -> dict[str, dict[str, _Site]]:
    """Per group, each site's draws on one batch (every row of it)."""
    groups: dict[str, dict[str, _Site]] = {group: {} for group in GROUPS}
    for index, global_trace in enumerate(global_draws):
        guided = poutine.replay(every_row(guide), trace=global_trace)
        guide_trace = poutine.trace(guided).get_trace(*args, **kwargs)
        replayed = poutine.replay(model, trace=guide_trace)
        model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
        predictive = poutine.trace(poutine.uncondition(replayed)).get_trace(*args, **kwargs)
        for name, site in _sample_sites(model_trace):
            if not site["is_observed"]:
                _check_guided(name, guide_trace)
                _append(groups["posterior"], name, site, site["value"])
                continue
            log_prob = site["fn"].log_prob(site["value"])
            if site["mask"] is not None:
                log_prob = torch.where(torch.as_tensor(site["mask"]), log_prob, 0.0)
            _append(groups["log_likelihood"], name, site, log_prob, event=False)
            _append(groups["posterior_predictive"], name, site, predictive.nodes[name]["value"])
            if index == 0:
                _append(groups["observed_data"], name, site, site["value"])
    return groups


def _sample_sites(trace: poutine.Trace) -> Iterable[tuple[str, dict]]:
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            yield name, site


def _check_guided(name: str, guide_trace: poutine.Trace) -> None:
    if name not in guide_trace.nodes:
        raise ValueError(
            f"The model's latent site {name!r} is not sampled by the guide (it is summed out "
            "by enumeration in the model): its posterior draws and the pointwise "
            "log-likelihood would not be the model's. Export a model whose latent sites "
            "the guide samples (for discrete sites, infer_discrete draws them)."
        )


def _append(
    group: dict[str, _Site], name: str, site: dict, value: torch.Tensor, event: bool = True
) -> None:
    array = value.detach().cpu().numpy()
    if name not in group:
        group[name] = _Site(_dims(name, site, array.shape, event))
    group[name].arrays.append(array)


def _dims(name: str, site: dict, shape: tuple[int, ...], event: bool) -> list[str]:
    """The names of a value's dimensions: a plate's name where the plate
    indexes it at full size, ``{site}_dim_{i}`` elsewhere."""
    event_dims = len(site["fn"].event_shape) if event else 0
    batch_dims = len(shape) - event_dims
    dims = [f"{name}_dim_{i}" for i in range(len(shape))]
    for frame in site["cond_indep_stack"]:
        position = batch_dims + frame.dim
        if frame.vectorized and 0 <= position < batch_dims and shape[position] == frame.size:
            dims[position] = frame.name
    return dims


class _Exported:
    """The draws of every batch, joined into the groups ArviZ reads."""

    def __init__(self) -> None:
        self.global_draws: list[poutine.Trace] | None = None
        self.batches: list[dict[str, dict[str, _Site]]] = []

    def add(self, batch: dict[str, dict[str, _Site]]) -> None:
        self.batches.append(batch)

    def inference_data(self, az: Any, data_plates: set[str]) -> Any:
        """The ``InferenceData``: per group, each site's array (one chain and
        the draws first, but in ``observed_data``) with its dimensions' names."""
        groups = {}
        for group in GROUPS:
            drawn = group != "observed_data"
            arrays, dims = {}, {}
            for name, first in self.batches[0][group].items():
                parts = [batch[group][name] for batch in self.batches]
                joined = _join(parts, first.dims, data_plates, stacked=drawn)
                arrays[name], dims[name] = joined[None] if drawn else joined, first.dims
            if arrays:
                groups[group] = az.dict_to_dataset(
                    arrays, library=None, dims=dims, default_dims=None if drawn else []
                )
        return az.InferenceData(**groups)


def _join(parts: list[_Site], dims: list[str], data_plates: set[str], stacked: bool) -> np.ndarray:
    """One site's array: its draws stacked (``stacked``), the batches joined
    along its data plate's dimension (a site outside every data plate has the
    same values in every batch: the first is kept)."""
    arrays = [np.stack(part.arrays) if stacked else part.arrays[0] for part in parts]
    axis = next((i for i, dim in enumerate(dims) if dim in data_plates), None)
    if axis is None:
        return arrays[0]
    return np.concatenate(arrays, axis=axis + int(stacked))
