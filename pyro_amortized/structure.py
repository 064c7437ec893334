"""Reading a Pyro model: data plates, local and global latent sites, encoder inputs.

The model is run once (the *prototype trace*) and its arguments are bound to
their names with :func:`inspect.signature`. From the two:

* a **data plate** is a vectorized plate holding an observed site whose leading
  dimension is the plate, and whose rows are reachable through a model argument:
  a tensor argument whose first dimension is the plate's full size (the guide
  subsamples it like the model) or its subsample size (the argument already is
  the minibatch). Every such argument feeds the plate's encoder;
* a **local** latent site sits in a data plate (the outermost one it sits in);
  fixed-size plates nested inside the data plate become part of its per-point
  shape;
* a plate holding latent sites but no data is a **group plate** where one
  argument maps the rows of a data plate to its groups
  (:mod:`~pyro_amortized.group_plates`): its latent sites are local, and its
  encoder reads the rows of each group;
* every other latent site is **global**;
* sites the model enumerates (``infer={"enumerate": ...}``) are left to the ELBO,
  observed and deterministic sites are never guided.

A data plate given its minibatch explicitly
(``pyro.plate("data", N, subsample=indices)``) must find ``indices`` among the
model's arguments: the guide's plate then takes the same rows, and the indices
feed no encoder.

``amortize_on`` overrides the choice of inputs: an argument name, a list of
names, or a mapping ``{plate name: [argument names]}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.util import site_is_subsample

from .group_plates import RowsReached, group_links, uncrossed
from .latent_sites import LatentSite, check_guidable, latent_site
from .plate_arguments import AmortizeOn, data_plate_candidates
from .prototype import (
    UNSIZED,
    explicit_indices,
    holds_data,
    is_enumerated,
    model_frames,
)
from .user_warnings import warn


@dataclass(frozen=True)
class DataPlate:
    """A plate over data points and the model arguments that feed its encoder.

    :param name: the plate's name.
    :param dim: the plate's batch dimension (negative).
    :param full_size: the plate's size at the first call.
    :param subsample_size: its subsample size at the first call, or ``None``
        when it did not subsample.
    :param inputs: names of the model arguments whose rows feed the encoder.
    :param point_shapes: the per-data-point shape of each input.
    :param presubsampled: ``True`` when the inputs hold only the minibatch rows
        (a plate ``pyro.plate(name, N, subsample_size=len(x))`` over a batch ``x``).
    :param sites: the local latent sites in this plate, in the guide's order
        (see :func:`inverse_order`).
    :param indices: the model argument holding the plate's minibatch indices
        when the model passes them (``pyro.plate(name, N, subsample=indices)``).
    :param axes: the axis of each input along which its data points lie: 0,
        or the axis the plate takes in an observed value (documents in the last
        axis of a words x documents count matrix). Empty means all 0.
    :param group_index: for a group plate, the argument holding each row's
        group; ``inputs`` then hold one row per row of the data plate
        ``rows_plate``, not one per group.
    :param rows_plate: for a group plate, the data plate of its rows.
    """

    name: str
    dim: int
    full_size: int
    subsample_size: int | None
    inputs: tuple[str, ...]
    point_shapes: tuple[torch.Size, ...]
    presubsampled: bool
    sites: tuple[str, ...]
    indices: str | None = None
    axes: tuple[int, ...] = ()
    group_index: str | None = None
    rows_plate: str | None = None

    @property
    def arguments(self) -> tuple[str, ...]:
        """The arguments the encoder reads: a group plate's index, then the inputs."""
        return self.inputs if self.group_index is None else (self.group_index, *self.inputs)

    def rows_first(self, values: Sequence[Any]) -> list[Any]:
        """The inputs' values with the data points along their first axis."""
        axes = self.axes or (0,) * len(values)
        return [
            value.movedim(axis, 0) if axis and isinstance(value, torch.Tensor) else value
            for value, axis in zip(values, axes, strict=True)
        ]


@dataclass(frozen=True)
class ModelStructure:
    """What an amortized guide needs to know about a model.

    :param data_plates: the data plates by name.
    :param sites: every latent site the guide covers, in model order.
    :param frames: every vectorized plate of the model by name, as first seen.
    :param unsized: the plates the model declares without a size
        (``pyro.plate("data")``): their frames hold the size their sites
        broadcast to, and the guide declares them without a size too.
    :param per_group: group plates whose sites get per-group parameters
        (crossed or nested effects, see
        :func:`~pyro_amortized.group_plates.uncrossed`).
    """

    data_plates: dict[str, DataPlate]
    sites: dict[str, LatentSite]
    frames: dict[str, CondIndepStackFrame]
    unsized: frozenset[str] = frozenset()
    per_group: frozenset[str] = frozenset()

    @property
    def local_sites(self) -> tuple[str, ...]:
        return tuple(name for name, site in self.sites.items() if site.is_local)

    @property
    def global_sites(self) -> tuple[str, ...]:
        return tuple(name for name, site in self.sites.items() if not site.is_local)


def read_model(
    trace: poutine.Trace,
    outer: frozenset[str],
    arguments: dict[str, Any],
    amortize_on: AmortizeOn,
    sometimes_observed: Mapping[str, str] | None = None,
    reached: RowsReached | None = None,
) -> ModelStructure:
    """Builds the :class:`ModelStructure` from a prototype trace.

    :param trace: the prototype trace from :func:`trace_prototype`.
    :param outer: plates that enclosed the call, to be ignored.
    :param arguments: the model's arguments by name (:func:`bind_arguments`).
    :param amortize_on: the user's override of the encoder inputs.
    :param sometimes_observed: observed sites that other calls leave latent,
        each with the argument holding its values (see
        :mod:`pyro_amortized.observed`): they are read as latent sites, and
        their arguments feed no encoder.
    :param reached: which rows a group's latent values reach, by runs of the
        model (see :func:`~pyro_amortized.group_plates.rows_reached`).
    :raises ValueError: with the fix, for closure data, unknown names, sequential
        plates around local latents, non-enumerated discrete latents.
    """
    latent, observed, frames = _collect_sites(trace, outer)
    sometimes_observed = sometimes_observed or {}
    for name in sometimes_observed:  # latent for the guide, data for the plates
        latent[name] = observed[name]
    if amortize_on is None:  # missing from some calls: no encoder reads them
        missing = set(sometimes_observed.values())
        arguments = {name: value for name, value in arguments.items() if name not in missing}
    candidates = data_plate_candidates(latent, observed, frames, arguments, amortize_on, outer)
    holding = {f.name for site in latent.values() for f in model_frames(site, outer)}
    linked = {}
    if amortize_on is None:
        linked = group_links(holding, frames, candidates, arguments, reached)
    groups = uncrossed(linked)
    sites: dict[str, LatentSite] = {}
    members: dict[str, list[str]] = {}
    for name, site in latent.items():
        frames_ = model_frames(site, outer)
        plate = next((f.name for f in frames_ if f.name in candidates or f.name in groups), None)
        check_guidable(name, site, plate, observed)
        sites[name] = latent_site(name, site, plate, frames, outer)
        if plate is not None:
            members.setdefault(plate, []).append(name)
    data_plates = {
        plate: _data_plate(
            frames[plate],
            _encoder_feeds(plate, candidates, groups, linked, trace, arguments),
            arguments,
            inverse_order(names, sites),
            explicit_indices(trace, plate),
            groups.get(plate),
        )
        for plate, names in members.items()
    }
    if amortize_on is None:
        _warn_if_shared(data_plates)
    unsized = getattr(trace, UNSIZED, frozenset()) & frames.keys()
    per_group = frozenset(linked) - frozenset(groups)
    return ModelStructure(data_plates, sites, frames, unsized, per_group)


def inverse_order(names: Sequence[str], sites: Mapping[str, LatentSite]) -> tuple[str, ...]:
    """The order in which the guide samples a data plate's local sites: an
    inverse of the model's graph. The model samples parents before children;
    the guide samples children first (the reverse of the model's order), so
    that each head reads the sites below it, as in ``q(z2 | x) q(z1 | x, z2)``.
    Discrete sites come first, so that continuous heads read them and a
    discrete site the guide enumerates sets the shape of the sites after it;
    before all, sites of fewer plates, which sites of nested plates can read
    (``q(c | x) q(s_j | x, c)``, :func:`~pyro_amortized.upstream.can_read`)."""
    return tuple(
        sorted(reversed(names), key=lambda n: (len(sites[n].frames), not sites[n].discrete))
    )


def _warn_if_shared(data_plates: dict[str, DataPlate]) -> None:
    """Warns when an argument feeds several data plates: it has as many rows as
    each, and the guide cannot tell whose data points its rows are (group
    plates of one plate's rows, as crossed effects, all read its rows)."""
    for argument in sorted({name for plate in data_plates.values() for name in plate.inputs}):
        plates = [name for name, plate in data_plates.items() if argument in plate.inputs]
        rows = {data_plates[name].rows_plate or name for name in plates}
        if len(rows) > 1:
            quoted = ", ".join(f"'{name}'" for name in plates)
            warn(
                f"Argument '{argument}' has one row per data point of each of the plates "
                f"{quoted}, so every one of their encoders reads it. If its rows belong "
                "to one plate only, say which arguments feed which plate with "
                "amortize_on={plate name: [argument names]}.",
                UserWarning,
            )


def _collect_sites(trace: poutine.Trace, outer: frozenset[str]) -> tuple[dict, dict, dict]:
    latent, observed, frames = {}, {}, {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        for frame in model_frames(site, outer):
            frames.setdefault(frame.name, frame)
        if site["is_observed"]:
            if holds_data(site):
                observed[name] = site
        elif not is_enumerated(site):
            latent[name] = site
    return latent, observed, frames


def _encoder_feeds(
    plate: str,
    candidates: Mapping[str, tuple],
    groups: Mapping[str, tuple[str, str]],
    linked: Mapping[str, tuple[str, str]],
    trace: poutine.Trace,
    arguments: dict[str, Any],
) -> tuple[tuple[str, int], ...]:
    """The arguments that feed a plate's encoder: those of its rows (a group
    plate's, of ``groups``, are those of its rows' plate) but the indices,
    which say which rows a minibatch took and which group a row is in (of
    every plate ``linked``, amortized or not), not what was measured (a number
    per group, read as a value, would mean nothing and grow with the groups)."""
    rows_plate = groups[plate][0] if plate in groups else plate
    indices = {index for _, index in linked.values()}
    explicit = explicit_indices(trace, rows_plate)
    if explicit is not None:
        indices.add(_indices_argument(rows_plate, explicit, arguments))
    return tuple((name, axis) for name, axis in candidates[rows_plate] if name not in indices)


def _data_plate(
    frame: CondIndepStackFrame,
    feeds: tuple[tuple[str, int], ...],
    arguments: dict,
    sites: tuple[str, ...],
    explicit: torch.Tensor | None,
    group: tuple[str, str] | None = None,
) -> DataPlate:
    """A data plate (fed by ``feeds``), or a group plate whose rows are those of
    the data plate ``group[0]``, linked by the argument ``group[1]``."""
    full_size = frame.full_size or frame.size
    indices = None if explicit is None else _indices_argument(frame.name, explicit, arguments)
    if group is None:
        layout = _rows_layout(frame, feeds, arguments, indices)
    else:
        layout = _group_layout(frame, feeds, arguments, group)
    return DataPlate(
        indices=indices,
        name=frame.name,
        dim=frame.dim,
        full_size=full_size,
        subsample_size=frame.size if full_size != frame.size else None,
        sites=sites,
        **layout,
    )


def _rows_layout(
    frame: CondIndepStackFrame,
    feeds: tuple[tuple[str, int], ...],
    arguments: dict,
    indices: str | None,
) -> dict[str, Any]:
    """A data plate's inputs: the arguments with a row per data point (its
    ``indices`` left out, see :func:`_encoder_feeds`)."""
    if not feeds:
        raise ValueError(
            f"Plate '{frame.name}' holds latent sites, but no model argument other than "
            f"its indices '{indices}' has one row per data point. Pass the data as an "
            "argument, or name the inputs with amortize_on=."
        )
    axes = tuple(axis for _, axis in feeds)
    values = [arguments[name].movedim(axis, 0) for name, axis in feeds]
    rows = {value.shape[0] for value in values}
    full_size = frame.full_size or frame.size
    return {
        "inputs": tuple(name for name, _ in feeds),
        "point_shapes": tuple(value.shape[1:] for value in values),
        "presubsampled": full_size != frame.size and rows == {frame.size},
        "axes": axes if any(axes) else (),
    }


def _group_layout(
    frame: CondIndepStackFrame,
    feeds: tuple[tuple[str, int], ...],
    arguments: dict,
    group: tuple[str, str],
) -> dict[str, Any]:
    """A group plate's inputs: the other arguments of its rows' data plate."""
    rows_plate, group_index = group
    inputs = tuple(name for name, axis in feeds if axis == 0)  # its index left out
    if not inputs:
        raise ValueError(
            f"Plate '{frame.name}' holds latent sites whose data are the rows of plate "
            f"'{rows_plate}' (grouped by '{group_index}'), but no other argument has one "
            "row per row of it. Pass the rows' data as arguments of the model."
        )
    return {
        "inputs": inputs,
        "point_shapes": tuple(arguments[name].shape[1:] for name in inputs),
        "presubsampled": False,
        "group_index": group_index,
        "rows_plate": rows_plate,
    }


def _indices_argument(plate: str, indices: torch.Tensor, arguments: dict[str, Any]) -> str:
    """The model argument that holds the indices a model passed to a plate."""
    for name, value in arguments.items():
        if value is indices:
            return name
    for name, value in arguments.items():
        if (
            isinstance(value, torch.Tensor)
            and not value.is_floating_point()
            and value.shape == indices.shape
            and torch.equal(value, indices.to(value.device))
        ):
            return name
    raise ValueError(
        f"The model gives plate '{plate}' its minibatch indices (subsample=...), but "
        "they are not one of its arguments, so the guide cannot take the same rows. "
        "Pass the indices as an argument of the model, or let the plate draw them "
        "(subsample_size=...)."
    )


def warn_if_nothing_to_amortize(structure: ModelStructure, enumerated: Mapping[str, list]) -> None:
    """Warns once when the model has no data plate holding latent sites; names
    the sites the model ``enumerated`` in each plate, which are left to the ELBO."""
    if not structure.sites:
        warn(
            "The model has no latent site the guide covers (every sample site is "
            "observed, deterministic or enumerated by the model), so the guide samples "
            "nothing. If a site should be latent, check that it is not given obs=.",
            UserWarning,
        )
    elif not structure.data_plates and enumerated:
        sites = "; ".join(f"{names} in plate '{plate}'" for plate, names in enumerated.items())
        warn(
            f"The model enumerates its local sites ({sites}), which an enumerating ELBO "
            "(TraceEnum_ELBO, TraceTMC_ELBO) sums out, and has no other latent site in a "
            "data plate, so there is nothing to "
            "amortize: every latent site gets per-site parameters, as with AutoNormal.",
            UserWarning,
        )
    elif not structure.data_plates and not structure.per_group:  # those were warned of
        warn(
            "The model has no data plate with local latent sites, so there is nothing to "
            "amortize: every latent site gets per-site parameters, as with AutoNormal. "
            "A data plate is a vectorized plate over an observed site whose rows come "
            "from a model argument (see amortize_on=).",
            UserWarning,
        )
