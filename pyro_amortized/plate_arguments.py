"""Which model arguments feed which plate: the plates that could be data
plates, with the arguments whose rows are their data points (the axis of each),
found from a prototype trace or named by ``amortize_on``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pyro.poutine.indep_messenger import CondIndepStackFrame

from .prototype import model_frames, model_value

AmortizeOn = None | str | Sequence[str] | Mapping[str, str | Sequence[str]]
"""The guides' ``amortize_on`` option: ``None`` (read from the model), an
argument name, a list of names, or ``{plate name: [argument names]}``."""


def _feeding_axis(frame: CondIndepStackFrame, value: Any, offsets: Sequence[int]) -> int | None:
    """The axis along which an argument holds the plate's data points (the full
    data or the minibatch): its first, else one that sits where the plate sits
    in an observed value, counted from the right (see :func:`_observed_offsets`).
    ``None`` if no axis has the plate's size."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return None
    sizes = (frame.full_size or frame.size, frame.size)
    for axis in (0, *(value.dim() - offset for offset in offsets)):
        if 0 <= axis < value.dim() and value.shape[axis] in sizes:
            return axis
    return None


def _observed_offsets(
    frame: CondIndepStackFrame,
    observed: dict,
    latent: dict,
    outer: frozenset[str],
    named: bool = False,
) -> tuple[int, ...]:
    """Where the plate indexes the data of observed sites, counted from the right
    of each value. A plate indexes a site's data where it is the site's leading
    dimension, or where it is the site's outermost plate and the plate of the
    leading dimension holds no latent site (documents around words, in a
    words x documents matrix; but data inside features, in a data x features
    matrix, keeps the data plate). A plate the user names in ``amortize_on``
    (``named``) indexes the data wherever it sits in the value. Empty where the
    plate indexes no data."""
    offsets = set()
    for site in observed.values():
        frames = model_frames(site, outer)
        if frame not in frames:
            continue
        value = model_value(site, outer)
        batch_dims = value.dim() - site["fn"].event_dim
        position = batch_dims + frame.dim
        leading = next((f for f in frames if batch_dims + f.dim == 0), None)
        outermost = frames[0] == frame and (
            leading is None or not _holds_latents(leading, latent, outer)
        )
        if (position == 0 or outermost or named) and value.shape[position] == frame.size:
            offsets.add(value.dim() - position)
    return tuple(sorted(offsets, reverse=True))


def _holds_latents(frame: CondIndepStackFrame, latent: dict, outer: frozenset[str]) -> bool:
    return any(frame in model_frames(site, outer) for site in latent.values())


def data_plate_candidates(
    latent: dict,
    observed: dict,
    frames: dict,
    arguments: dict[str, Any],
    amortize_on: AmortizeOn,
    outer: frozenset[str],
) -> dict[str, tuple[str, ...]]:
    """Plates that could be data plates, with the arguments that would feed them
    and the axis of each along which the data points lie.

    :param latent: the prototype trace's latent sites by name.
    :param observed: its observed sites that hold data, by name.
    :param frames: every plate of the model by name.
    :param arguments: the model's arguments by name.
    :param amortize_on: the user's override (see :data:`AmortizeOn`).
    :param outer: plates that enclosed the call, to be ignored.
    :raises ValueError: with the fix, where latent sites sit in a plate whose
        rows no argument holds, or ``amortize_on`` names what cannot feed.
    """
    named = amortize_on if isinstance(amortize_on, Mapping) else {}
    offsets = {
        name: _observed_offsets(frame, observed, latent, outer, named=name in named)
        for name, frame in frames.items()
    }
    if isinstance(amortize_on, Mapping):
        return _explicit_candidates(frames, arguments, amortize_on, offsets)
    if amortize_on is not None:
        names = (amortize_on,) if isinstance(amortize_on, str) else tuple(amortize_on)
        _check_argument_names(names, arguments)
        candidates = {}
        for name, frame in frames.items():
            axes = [_feeding_axis(frame, arguments[arg], offsets[name]) for arg in names]
            if _holds_latents(frame, latent, outer) and None not in axes:
                candidates[name] = tuple(zip(names, axes, strict=True))
        return candidates
    candidates = {}
    for name, frame in frames.items():
        if not offsets[name]:
            continue
        inputs = tuple(
            (arg, axis)
            for arg, value in arguments.items()
            if (axis := _feeding_axis(frame, value, offsets[name])) is not None
        )
        if inputs:
            candidates[name] = inputs
        elif _holds_latents(frame, latent, outer):
            nested = [a for a, v in arguments.items() if isinstance(v, (Mapping, list, tuple))]
            where = f", or inside argument {', '.join(nested)}" if nested else ""
            fix = (
                f"take it out of {', '.join(nested)} (amortize_on= names tensor arguments only)"
                if nested
                else "or name the inputs with amortize_on="
            )
            raise ValueError(
                f"Latent sites sit in plate '{name}' (size {frame.full_size or frame.size}), "
                "but no model argument holds its rows: the observed data seems to come "
                f"from outside the model's arguments (a closure or global variable{where}: "
                "the guide reads tensor arguments only). Pass the data as a tensor "
                "argument of the model, with one row per data point along its first "
                f"dimension; {fix}."
            )
    return candidates


def _check_argument_names(names: Sequence[str], arguments: dict[str, Any]) -> None:
    for name in names:
        if name not in arguments:
            raise ValueError(
                f"amortize_on names '{name}', which is not an argument of the model. "
                f"The model's arguments in this call are: {', '.join(arguments) or 'none'}."
            )
        if _rows(arguments[name]) is None:
            raise ValueError(
                f"amortize_on names '{name}', but that argument is "
                f"{type(arguments[name]).__name__}, not a tensor with one row per data "
                "point. Pass a tensor whose first dimension indexes the data points."
            )


def _explicit_candidates(
    frames: dict, arguments: dict[str, Any], amortize_on: Mapping, offsets: dict
) -> dict[str, tuple[tuple[str, int], ...]]:
    candidates = {}
    for plate, names in amortize_on.items():
        if plate not in frames:
            raise ValueError(
                f"amortize_on names plate '{plate}', which is not a vectorized plate of "
                f"the model. Its plates are: {', '.join(frames) or 'none'}."
            )
        names = (names,) if isinstance(names, str) else tuple(names)
        _check_argument_names(names, arguments)
        frame = frames[plate]
        axes = [_feeding_axis(frame, arguments[name], offsets[plate]) for name in names]
        for name, axis in zip(names, axes, strict=True):
            if axis is None:
                raise ValueError(
                    f"amortize_on feeds plate '{plate}' (size {frame.full_size or frame.size}"
                    f", subsample size {frame.size}) with argument '{name}', whose first "
                    f"dimension has size {arguments[name].shape[0]}. Its rows must be the "
                    "plate's data points."
                )
        candidates[plate] = tuple(zip(names, axes, strict=True))
    return candidates


def _rows(value: Any) -> int | None:
    if isinstance(value, torch.Tensor) and value.dim() >= 1:
        return value.shape[0]
    return None
