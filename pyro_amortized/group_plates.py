"""Group plates: local sites whose data are the rows of a group.

The usual form of a hierarchical model keeps the groups and the rows in two
plates side by side, linked by an index argument::

    def model(county, floor, log_radon=None):
        ...
        with pyro.plate("counties", num_counties):
            a = pyro.sample("a", dist.Normal(mu_a, sigma_a))
        with pyro.plate("houses", len(county)):
            pyro.sample("y", dist.Normal(a[county] + b * floor, sigma), obs=log_radon)

No data is observed in the plate over counties, yet ``a`` is local to it: the
data of county ``g`` are the rows ``i`` with ``county[i] == g``. A plate holding
latent sites and no data is a **group plate** where exactly one model argument
is such an index: an integer tensor with one entry per row of a data plate
(its full size or its minibatch), each entry below the group plate's size. The
group plate's encoder reads the other arguments of those rows, pooled per group
(:class:`~pyro_amortized.set_encoders.SetEncoder`), so its local sites are
amortized like those of any data plate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pyro.poutine.indep_messenger import CondIndepStackFrame


def is_group_index(value: Any, rows: set[int], num_groups: int) -> bool:
    """Whether ``value`` can map rows to groups: a 1-D integer tensor with one
    entry per row (``rows`` holds the row counts allowed), every entry a group."""
    if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.numel() == 0:
        return False
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        return False
    return value.shape[0] in rows and int(value.min()) >= 0 and int(value.max()) < num_groups


def group_links(
    latent_plates: set[str],
    frames: Mapping[str, CondIndepStackFrame],
    candidates: Mapping[str, tuple[tuple[str, int], ...]],
    arguments: Mapping[str, Any],
) -> dict[str, tuple[str, str]]:
    """The group plates of a model: ``{group plate: (data plate, index argument)}``.

    :param latent_plates: the plates that hold latent sites.
    :param frames: every plate of the model by name.
    :param candidates: the plates that hold observed data, with the arguments
        that feed them (and the axis of each).
    :param arguments: the model's arguments by name.
    :raises ValueError: where several arguments could index a plate's groups.
    """
    links = {}
    for name in sorted(latent_plates - set(candidates)):
        frame = frames[name]
        num_groups = frame.full_size or frame.size
        found = [
            (plate, argument)
            for plate, feeds in candidates.items()
            if plate != name
            for argument, axis in feeds
            if axis == 0 and is_group_index(arguments[argument], _rows(frames[plate]), num_groups)
        ]
        if len(found) > 1:
            names = ", ".join(f"'{argument}' (plate '{plate}')" for plate, argument in found)
            raise ValueError(
                f"Plate '{name}' holds latent sites and no data, and several arguments could "
                f"say which of its {num_groups} groups each row belongs to: {names}. Pass "
                "covariates as floating-point tensors, so that only the group index is an "
                "integer tensor."
            )
        if found:
            links[name] = found[0]
    return links


def _rows(frame: CondIndepStackFrame) -> set[int]:
    return {frame.full_size or frame.size, frame.size}
