"""How the default encoder reads a plate's inputs: the labels of a categorical
site one-hot, the inputs standardized where asked, and warnings about inputs
it would read badly.

An argument observed by a ``Categorical`` site (an annotator's label, an
ordinal rating) holds category numbers, whose order and spacing mean nothing:
read as numbers, an item's class among three annotators' labels must be
recovered from their codes by the layers. Read one-hot (:class:`OneHotInputs`),
the same encoder finds it: on a MACE annotation model with known annotator
parameters (60 items, four annotators, three classes, 1,500 steps), the
amortized guide's ELBO was -556.9 with the labels as numbers and -254.8
one-hot (exact log evidence -197.6).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.nn.functional import one_hot

from .encoders import MLPEncoder, StandardizingEncoder
from .prototype import subsample_of
from .structure import DataPlate
from .user_warnings import warn

LARGE_INPUT = (100.0, 10.0)
"""An input's largest magnitude and root mean square above which the guide warns
that the default encoder's inputs need scaling (see :ref:`numerical-stability`)."""

MAX_ONE_HOT = 4096
"""The most values a data point's one-hot labels may take; wider ones (a
vocabulary of thousands of words for each of a document's words) stay numbers,
with a warning."""


def label_counts(trace: poutine.Trace, plate: DataPlate, arguments: Mapping[str, Any]) -> tuple:
    """The number of categories of each of the plate's inputs that a
    ``Categorical`` site of the prototype ``trace`` observes (its value is the
    argument, or the argument's rows that the data plate took, in any dtype),
    else 0.

    Usage::

        label_counts(trace, plate, {"labels": labels})   # (3,) for three classes
    """
    rows = subsample_of(trace, plate.rows_plate or plate.name)
    observed = [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample" and site["is_observed"] and _categories(site["fn"])
    ]
    counts = []
    for name in plate.inputs:
        value = arguments[name]
        held = [site for site in observed if _holds(site["value"], value, rows)]
        counts.append(_categories(held[0]["fn"]) if held else 0)
    return tuple(counts)


def _holds(observed: Any, argument: Any, rows: torch.Tensor | None) -> bool:
    """Whether an observed value is the argument, or its ``rows``."""
    if observed is argument:
        return True
    if not isinstance(observed, torch.Tensor) or not isinstance(argument, torch.Tensor):
        return False
    if rows is not None and argument.dim() and len(argument) != len(rows):
        argument = argument[rows]
    return observed.shape == argument.shape and torch.equal(observed.double(), argument.double())


def _categories(fn: dist.Distribution) -> int:
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return fn.param_shape[-1] if isinstance(fn, dist.Categorical) else 0


class OneHotInputs(nn.Module):
    """An encoder whose inputs holding category numbers are read one-hot:
    input ``i`` with ``counts[i] > 0`` categories becomes a one-hot vector per
    value (a value outside ``0 .. counts[i] - 1``, an entry that an
    ``obs_mask`` hides, becomes zeros); the others pass as they are.

    :param encoder: the encoder of the encoded inputs.
    :param counts: per input, its number of categories, or 0.

    Usage::

        encoder = OneHotInputs(MLPEncoder((64,)), (3,))
        encoder(torch.tensor([[0, 2, 1, 1]]))     # 12 one-hot values per row
    """

    def __init__(self, encoder: nn.Module, counts: Sequence[int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.counts = tuple(int(count) for count in counts)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.encoder(*self.encode(inputs))

    def encode(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The inputs with category numbers one-hot (float, in the inputs' dtype)."""
        return tuple(
            value if count == 0 else _one_hot(value, count)
            for value, count in zip(inputs, self.counts, strict=True)
        )


def _one_hot(value: torch.Tensor, count: int) -> torch.Tensor:
    valid = (value >= 0) & (value < count) & (value == value.round())
    codes = torch.where(valid, value, torch.zeros_like(value)).long()
    return one_hot(codes, count).to(value.dtype) * valid.unsqueeze(-1).to(value.dtype)


def reading_encoder(
    encoder: nn.Module,
    plate: DataPlate,
    inputs: tuple[torch.Tensor, ...],
    counts: Sequence[int],
    *,
    standardize: bool,
) -> nn.Module:
    """A plate's ``encoder`` made to read its ``inputs`` (the rows of the
    guide's first call): labels one-hot where ``counts`` says (for the default
    encoder; at most :data:`MAX_ONE_HOT` values a data point), then
    standardized with ``standardize``. Warns where labels stay numbers, and
    where the default encoder's inputs are large or standardized ones constant.
    """
    counts, numbers = list(counts), set()
    for index, (value, count) in enumerate(zip(inputs, counts, strict=True)):
        if count and value.shape[1:].numel() * count > MAX_ONE_HOT:
            counts[index] = 0
            numbers.add(index)
            warn(
                f"Argument '{plate.inputs[index]}' holds the labels of a Categorical site "
                f"with {count} categories, {value.shape[1:].numel()} per data point: too "
                f"many to read one-hot, so the encoder of plate '{plate.name}' reads them "
                "as numbers, whose order means nothing. Pass an encoder= that reads them "
                "(counts per category, or an embedding)."
            )
    reader = OneHotInputs(encoder, counts)
    encoded = reader.encode(inputs)
    if standardize:
        reader.encoder = StandardizingEncoder(encoder, encoded)
        _warn_if_constant(plate, reader.encoder)
    elif isinstance(encoder, MLPEncoder):  # labels kept as numbers are warned of above
        _warn_if_large(plate, [value for i, value in enumerate(encoded) if i not in numbers])
    return reader if any(counts) else reader.encoder


def _warn_if_large(plate: DataPlate, inputs: Sequence[torch.Tensor]) -> None:
    largest = max((float(v.abs().max()) for v in inputs if v.numel()), default=0.0)
    typical = max((float(v.pow(2).mean().sqrt()) for v in inputs if v.numel()), default=0.0)
    if largest > LARGE_INPUT[0] or typical > LARGE_INPUT[1]:
        warn(
            f"The encoder of plate '{plate.name}' reads inputs as large as {largest:,.0f} "
            f"(root mean square {typical:,.1f}). "
            "An encoder fed unscaled inputs can throw its outputs far in its first steps "
            "(NaN losses, diverged parameters, or a fit stuck far below its best). Pass "
            "standardize_inputs=True, or an encoder= that scales them (for example log1p "
            "for counts).",
        )


def _warn_if_constant(plate: DataPlate, encoder: StandardizingEncoder) -> None:
    if encoder.all_constant:
        warn(
            f"standardize_inputs=True, but the rows of data plate '{plate.name}' in the "
            "guide's first call are all alike (a layout of zeros that the model simulates "
            "into, as for LocalNPE?), so nothing is standardized. Pass encoder="
            "pyro_amortized.encoders.StandardizingEncoder(MLPEncoder(...), (x,)) with rows x "
            "of real or simulated data instead.",
        )
