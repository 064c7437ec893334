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
(its full size or its minibatch), each entry below the group plate's size, and
the one the model gathers by: moving a group's latent values (a run of the
model, :func:`rows_reached`) changes the densities of that group's rows and of
no other. Another index of a crossed or nested design (the questions of a
student's answers, the state of a county's houses) or an integer outcome can
look like one by its values alone. The group plate's encoder reads the other
arguments of those rows, pooled per group
(:class:`~pyro_amortized.set_encoders.SetEncoder`), so its local sites are
amortized like those of any data plate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from .prototype import quietly, subsample_of
from .user_warnings import warn

RowsReached = Callable[[str, str, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]
"""``reached(group_plate, rows_plate, index)``: see :func:`rows_reached`."""

MOVE = 0.5
"""How far, in unconstrained space, :func:`rows_reached` moves a group's values
(along a direction that differs from value to value, which a softmax sees)."""

JITTER = 0.5
"""The spread of the random values, in unconstrained space, that
:func:`rows_reached` adds to the prototype's latent values before moving one
group."""

UNMOVED = 1e-6
"""The relative change of a row's log density below which it did not move."""

DOMINANT = 2.0
"""How many times more, on average, the rows an index puts in the moved group
must move than the others, for an index whose group moves every row (effects
centred over the groups, ``a - a.mean()``)."""


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
    reached: RowsReached | None = None,
) -> dict[str, tuple[str, str]]:
    """The group plates of a model: ``{group plate: (data plate, index argument)}``.

    :param latent_plates: the plates that hold latent sites.
    :param frames: every plate of the model by name.
    :param candidates: the plates that hold observed data, with the arguments
        that feed them (and the axis of each).
    :param arguments: the model's arguments by name.
    :param reached: which rows a group's latent values reach (see
        :func:`rows_reached`); without it, or where it cannot tell, an index
        is told only by its values.
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
        if reached is not None and found:
            found = _gathered_by(name, found, arguments, reached)
        if len(found) > 1:
            names = ", ".join(f"'{argument}' (plate '{plate}')" for plate, argument in found)
            raise ValueError(
                f"Plate '{name}' holds latent sites and no data, and several arguments could "
                f"say which of its {num_groups} groups each row belongs to: {names}. Pass "
                "the arguments that are not its group index as floating-point tensors, or "
                "give the plate's sites per-group parameters (amortize_on= names the data "
                "plates' inputs and leaves the sites of other plates global)."
            )
        if found:
            links[name] = found[0]
    return links


def uncrossed(links: Mapping[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """The group plates of ``links`` but those whose rows another plate groups
    by another index (crossed effects, such as users and items of the same
    ratings, or nested ones, such as counties and states of the same houses),
    with a warning: a head of one would read its rows pooled without the
    other plates' effects on them, which its exact posterior takes out. Their
    sites get per-group parameters, as with ``AutoNormal``."""
    indices: dict[str, set[str]] = {}
    for rows_plate, index in links.values():
        indices.setdefault(rows_plate, set()).add(index)
    crossed = sorted(name for name, (rows, _) in links.items() if len(indices[rows]) > 1)
    if crossed:
        quoted = ", ".join(f"'{name}'" for name in crossed)
        warn(
            f"The plates {quoted} group the same rows by different indices (crossed or "
            "nested effects). A head of one would read its rows pooled, without the other "
            "plates' effects on them (on a matrix factorization of 30 users and 20 items, "
            "the amortized ELBO was -758 against AutoNormal's -397), so their sites get "
            "per-group parameters, as with AutoNormal, and new groups need training."
        )
    return {name: link for name, link in links.items() if name not in crossed}


def _gathered_by(
    name: str, found: list[tuple[str, str]], arguments: Mapping[str, Any], reached: RowsReached
) -> list[tuple[str, str]]:
    """The candidate indices of group plate ``name`` that the model gathers by,
    best first: those whose moved group reaches exactly its rows; else no row
    outside them (a masked row does not move); else its rows much more than
    the others (:data:`DOMINANT`). Candidates whose check cannot tell (no
    continuous site, no row reached) are kept unless another one passes."""
    tiers: dict[str, list[tuple[str, str]]] = {"exact": [], "within": [], "dominant": []}
    unknown = []
    for plate, argument in found:
        result = reached(name, plate, arguments[argument])
        tier = None if result is None else _tier(*result)
        if tier is None:
            unknown.append((plate, argument))
        elif tier in tiers:
            tiers[tier].append((plate, argument))
    return tiers["exact"] or tiers["within"] or tiers["dominant"] or unknown


def _tier(change: torch.Tensor, members: torch.Tensor) -> str | None:
    """How well the rows that moved (by ``change``) match the ``members`` of
    the moved group: ``None`` where no row moved."""
    moved = change > 0
    if not moved.any():
        return None
    if torch.equal(moved, members):
        return "exact"
    if not (moved & ~members).any():
        return "within"
    outside = change[~members].mean() if (~members).any() else change.new_zeros(())
    if members.any() and change[members].mean() > DOMINANT * outside:
        return "dominant"
    return "mismatch"


def rows_reached(
    model: Callable,
    trace: poutine.Trace,
    args: tuple,
    kwargs: dict,
    unmoved: dict[str, torch.Tensor | None],
    group_plate: str,
    rows_plate: str,
    index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """How much the observed log densities of each row of ``rows_plate``
    change when the continuous latent values of ``group_plate`` move (by
    :data:`MOVE`, in unconstrained space) at the group that ``index`` gives
    most rows (among the groups of the trace, where the group plate
    subsampled): two runs of the model replaying the prototype ``trace``'s
    latent values, jittered (:data:`JITTER`), the second with one group moved.

    :param unmoved: the densities of the first run per rows plate, kept
        across calls (the jittered values are the same for every candidate).
    :param index: a candidate group index, one entry per row of the plate
        (its full size or the trace's minibatch).
    :returns: per row of the trace's ``rows_plate``, the change of its log
        densities (0 below :data:`UNMOVED`) and whether ``index`` puts it in
        the moved group; ``None`` where the group plate has no continuous
        latent site to move, the rows plate no observed density per row, or
        their number is not the index's, or the model fails on these values
        (an assertion of its own).
    """
    rows, groups = subsample_of(trace, rows_plate), subsample_of(trace, group_plate)
    if rows is not None and len(index) != len(rows):
        index = index[rows]
    counts = torch.bincount(index, minlength=int(index.max()) + 1)
    if groups is not None:  # subsampled: move the chosen group with the most rows
        counts = counts[groups.clamp(max=len(counts) - 1)] * (groups < len(counts))
    position = int(counts.argmax())
    group = position if groups is None else int(groups[position])
    base, moved = poutine.Trace(), poutine.Trace()
    any_moved, generator = False, torch.Generator().manual_seed(0)
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"]:
            values = (site["value"],) * 2
            if not site_is_subsample(site) and not site["fn"].support.is_discrete:
                *values, shifted = _moved(site, group_plate, position, generator)
                any_moved |= shifted
            for run, value in zip((base, moved), values, strict=True):
                run.add_node(name, type="sample", is_observed=False, value=value, infer={})
    if not any_moved:
        return None
    try:
        if rows_plate not in unmoved:
            unmoved[rows_plate] = _row_densities(model, base, args, kwargs, rows_plate)
        before = unmoved[rows_plate]
        after = _row_densities(model, moved, args, kwargs, rows_plate)
    except Exception:  # noqa: BLE001 - a model that refuses these values cannot tell
        return None
    if before is None or after is None or after.shape != before.shape or len(before) != len(index):
        return None
    change = (after - before).abs().amax(-1)
    change = torch.where(change > UNMOVED * (1 + before.abs().amax(-1)), change, 0.0)
    return change, index == group


def _moved(
    site: dict, plate: str, position: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The site's value jittered (by :data:`JITTER` in unconstrained space: a
    start where a product of sites is zero, ``u[user] * v[item]`` at ``v =
    0``, moves no row), then also moved at ``position`` along ``plate``, and
    whether it moved there (not where the site is not in the plate); a site
    with no bijection keeps its value."""
    value, fn = site["value"], site["fn"]
    try:
        transform = biject_to(fn.support)
    except NotImplementedError:
        return value, value, False
    base = transform.inv(value)
    base = base + JITTER * torch.randn(base.shape, generator=generator).to(base)
    moved = base.clone()
    frame = next((f for f in site["cond_indep_stack"] if f.name == plate and f.vectorized), None)
    dim = None if frame is None else value.dim() - fn.event_dim + frame.dim
    shifted = dim is not None and 0 <= dim and position < value.shape[dim]
    if shifted:
        chosen = moved.select(dim, position)
        direction = torch.linspace(-1.0, 1.0, chosen.numel(), dtype=chosen.dtype)
        chosen.add_(MOVE * direction.reshape(chosen.shape).to(chosen.device))
    return transform(base), transform(moved), shifted


def _row_densities(
    model: Callable, trace: poutine.Trace, args: tuple, kwargs: dict, rows_plate: str
) -> torch.Tensor | None:
    """The log densities of the observed sites of ``rows_plate`` (zero where
    masked), one row per row of the plate, in a run of the model replaying
    ``trace``."""
    with quietly():
        run = poutine.block(poutine.trace(poutine.replay(model, trace=trace)).get_trace)
        replayed = run(*args, **kwargs)
    columns = []
    for site in replayed.nodes.values():
        if site["type"] != "sample" or not site["is_observed"] or site_is_subsample(site):
            continue
        frame = next((f for f in site["cond_indep_stack"] if f.name == rows_plate), None)
        log_density = site["fn"].log_prob(site["value"])
        if site["mask"] is not None:  # rows the model masks out move nothing
            log_density = torch.where(torch.as_tensor(site["mask"]), log_density, 0.0)
        position = None if frame is None else log_density.dim() + frame.dim
        if position is not None and position >= 0 and log_density.shape[position] > 1:
            columns.append(
                log_density.movedim(position, 0).reshape(log_density.shape[position], -1)
            )
    return torch.cat(columns, -1) if columns else None


def _rows(frame: CondIndepStackFrame) -> set[int]:
    return {frame.full_size or frame.size, frame.size}
