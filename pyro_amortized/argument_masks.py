"""Masks a model slices from its arguments, read without running the model.

A model that pads its data often masks each latent site with a slice of a mask
argument (``mask[:, t - 1 : t]`` at time step ``t``, as Pyro's deep Markov
model does, with ``poutine.mask`` or ``.mask()``). Such a mask is a view of the
argument's storage, or lies in a boolean copy the model made of such a view
(Pyro's ``MaskedDistribution`` copies a float mask, :class:`BoolCopies` records
the copies of a run): where each tensor mask of a call is one or the other and
no plate takes a minibatch of rows, the guide records where in the argument it
lies and, on later calls of the same signature, slices the call's argument the
same way instead of running the model again for its masks (see
:mod:`pyro_amortized.weights`). The signature's calls 1, 2, 3, 5, 9, 17, ...
are checked against a run of the model, and a signature whose masks do not
match is read from runs of the model from then on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from torch.overrides import TorchFunctionMode

from .weights import Weight, mask_source, quiet_run, site_mask

_CONVERSIONS = frozenset({torch.Tensor.bool, torch.Tensor.to, torch.Tensor.type})
"""The tensor methods that copy a view to a boolean tensor as ``.bool()`` does."""


@dataclass(frozen=True)
class ArgumentView:
    """Where a tensor lies in an argument's storage.

    :param argument: the argument's name (see
        :func:`~pyro_amortized.arguments.bind_arguments`).
    :param layout: the argument's shape and strides, which a later call's
        argument must have.
    :param size: the view's shape.
    :param stride: the view's strides.
    :param offset: the view's storage offset past the argument's.
    """

    argument: str
    layout: tuple[tuple[int, ...], tuple[int, ...]]
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int

    @classmethod
    def find(cls, tensor: Any, arguments: Mapping[str, Any]) -> ArgumentView | None:
        """The view of an argument that ``tensor`` is, if it is one."""
        if not isinstance(tensor, torch.Tensor):
            return None
        storage = tensor.untyped_storage().data_ptr()
        for name, value in arguments.items():
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() == storage:
                return cls(name, _layout(value), *_within(tensor, value))
        return None

    def take(self, arguments: Mapping[str, Any]) -> torch.Tensor | None:
        """The same view of this call's argument; ``None`` where it is laid out otherwise."""
        value = arguments.get(self.argument)
        if not isinstance(value, torch.Tensor) or _layout(value) != self.layout:
            return None
        return value.as_strided(self.size, self.stride, value.storage_offset() + self.offset)


@dataclass(frozen=True)
class CopiedView:
    """Where a tensor lies in a boolean copy of a view of an argument.

    :param source: the view that was copied.
    :param layout: the copy's shape and strides.
    :param size: the tensor's shape.
    :param stride: the tensor's strides.
    :param offset: the tensor's storage offset past the copy's.
    """

    source: ArgumentView
    layout: tuple[tuple[int, ...], tuple[int, ...]]
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int

    def take(self, arguments: Mapping[str, Any]) -> torch.Tensor | None:
        """The same copy of this call's argument; ``None`` where it is laid out otherwise."""
        view = self.source.take(arguments)
        copy = None if view is None else view.bool()
        if copy is None or _layout(copy) != self.layout:
            return None
        return copy.as_strided(self.size, self.stride, copy.storage_offset() + self.offset)


class BoolCopies(TorchFunctionMode):
    """Records, while entered, the boolean copies made of views of a call's
    ``arguments`` (by ``.bool()``, ``.to(torch.bool)`` or ``.type(torch.bool)``).

    Usage::

        with BoolCopies({"mask": mask}) as copies:
            dist.Normal(0.0, 1.0).mask(mask[:, :1])    # a float mask, copied
    """

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        super().__init__()
        self.arguments = arguments
        self.copies: list[tuple[torch.Tensor, ArgumentView]] = []  # kept alive while read

    def __torch_function__(
        self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        if (
            func in _CONVERSIONS
            and isinstance(result, torch.Tensor)
            and result.dtype == torch.bool
            and args[0].dtype != torch.bool
        ):
            view = ArgumentView.find(args[0], self.arguments)
            if view is not None:
                self.copies.append((result, view))
        return result

    def find(self, tensor: torch.Tensor) -> CopiedView | None:
        """Where ``tensor`` lies in a recorded copy, if it does."""
        storage = tensor.untyped_storage().data_ptr()
        for copy, view in self.copies:
            if copy.untyped_storage().data_ptr() == storage:
                return CopiedView(view, _layout(copy), *_within(tensor, copy))
        return None


def _layout(tensor: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(tensor.shape), tensor.stride()


def _within(
    tensor: torch.Tensor, base: torch.Tensor
) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """``tensor``'s shape, strides and storage offset past ``base``'s."""
    return tuple(tensor.shape), tensor.stride(), tensor.storage_offset() - base.storage_offset()


@dataclass(frozen=True)
class SlicedMask:
    """A site's tensor mask as a slice of an argument.

    :param view: where the slice lies.
    :param masked: for a distribution's own mask (``.mask(m)``), the batch shape
        it masks and the event dimensions outside it; ``None`` for a mask of
        ``poutine.mask``.
    """

    view: ArgumentView | CopiedView
    masked: tuple[torch.Size, int] | None


def sliced_masks(
    trace: poutine.Trace,
    weights: Mapping[str, Weight],
    arguments: Mapping[str, Any],
    copies: BoolCopies | None = None,
) -> dict[str, SlicedMask] | None:
    """Each tensor mask among a run's ``weights`` (as
    :func:`~pyro_amortized.weights.handler_weights` reads them from its
    ``trace``) as a slice of one of the call's ``arguments``, or of one of the
    boolean ``copies`` the run made of them; ``None`` where any tensor weight is
    neither (a tensor scale, a mask computed from the data, a site masked
    twice)."""
    masks = {}
    for name, (scale, mask) in weights.items():
        if not isinstance(mask, torch.Tensor):
            continue
        if isinstance(scale, torch.Tensor):
            return None
        site = trace.nodes[name]
        handler, source = site["mask"], mask_source(site["fn"])
        own = None if source is None else source[0]
        if isinstance(handler, torch.Tensor) == isinstance(own, torch.Tensor):
            return None
        tensor = handler if own is None else own
        view = ArgumentView.find(tensor, arguments)
        if view is None and copies is not None:
            view = copies.find(tensor)
        if view is None:
            return None
        masks[name] = SlicedMask(view, None if source is None else tuple(source[1:]))
    return masks


def copied_masks(
    model: Callable,
    init_loc_fn: Callable,
    args: tuple,
    kwargs: dict,
    weights: Mapping[str, Weight],
    arguments: Mapping[str, Any],
) -> dict[str, SlicedMask] | None:
    """:func:`sliced_masks` of a run of the model on this call that records
    the boolean copies it makes of its ``arguments``."""
    with BoolCopies(arguments) as copies:
        trace = quiet_run(model, init_loc_fn, args, kwargs)
    return sliced_masks(trace, weights, arguments, copies)


def masks_from_arguments(
    weights: Mapping[str, Weight], masks: Mapping[str, SlicedMask], arguments: Mapping[str, Any]
) -> dict[str, Weight] | None:
    """The planned ``weights`` with each sliced mask taken from this call's
    ``arguments``; ``None`` where an argument is laid out otherwise."""
    taken = dict(weights)
    for name, mask in masks.items():
        value = mask.view.take(arguments)
        if value is None:
            return None
        if mask.masked is not None:
            value = site_mask(name, value, *mask.masked)
        taken[name] = (weights[name][0], value)
    return taken
