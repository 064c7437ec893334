"""An amortized guide run on every row of its data, for the functions that
read a whole data set at once (the diagnostics, the export to ArviZ)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .guides import AutoAmortizedGuide
from .prototype import plate_sizes, trace_prototype


def every_row(guide: AutoAmortizedGuide) -> Callable[..., dict[str, torch.Tensor]]:
    """The guide run on every row of its arguments: its data plates are not
    subsampled, and a model that subsamples replays that."""

    def every_row_guide(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return guide._run(args, kwargs, guide._encoded_features, every_row=True)

    return every_row_guide


def check_every_row(
    model: Callable, guide: AutoAmortizedGuide, args: tuple, kwargs: dict, *, reader: str
) -> None:
    """Raises a ``ValueError`` where the model subsamples a data plate on these
    arguments: ``reader`` (for example "the diagnostics score") every row."""
    trace, _ = trace_prototype(model, guide.init_loc_fn, args, kwargs)
    for name, (size, subsample_size) in plate_sizes(trace, list(guide.data_plates)).items():
        if subsample_size < size:
            raise ValueError(
                f"The model subsamples plate '{name}' to {subsample_size} of {size} rows; "
                f"{reader} every row at once. Pass a model that does not subsample (for "
                "example the same model built without a batch size, sharing its networks), "
                f"or at most {subsample_size} rows at a time."
            )
