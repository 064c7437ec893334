"""Structured posteriors: what a site's proposal reads besides the data.

A local site's head may read the sampled values of global sites and of local
sites sampled before it in the same data plate, the pattern ``q(y | x)`` then
``q(z | x, y)``. Which sites a head reads comes from the posterior dependency
structure of the model (:func:`pyro.infer.inspect.get_dependencies`): two latent
sites the posterior couples are linked, and the later site in the guide's order
(globals first, then each data plate's sites in an inverse of the model's order, see
:func:`~pyro_amortized.structure.inverse_order`) reads the earlier.

A global site outside plates, with a Normal proposal, reads the earlier such
global sites that the posterior of the globals alone couples with it: those
linked to it directly or through a path of local sites (which the guide samples
after the globals, so that integrating them out links their neighbours; see
:func:`global_upstream`). The hierarchical mean and the floor effect of the
radon model share no factor, yet both meet every county's intercept, and their
posterior correlation is -0.7.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from pyro import poutine
from pyro.infer.inspect import get_dependencies
from torch.nn.functional import one_hot

from .latent_sites import LatentSite
from .structure import ModelStructure
from .user_warnings import warn

Dependencies = str | Mapping[str, Sequence[str]]
"""``"model"`` (read what the posterior couples), ``"mean_field"`` (read
nothing) or ``{site: [names of the sites it reads]}``."""


def check_dependencies(dependencies: Dependencies) -> Dependencies:
    """Validates the ``dependencies`` option of the guides.

    :raises ValueError: if it is neither ``"model"``, ``"mean_field"`` nor a
        mapping from site names to lists of site names.
    """
    if dependencies in ("model", "mean_field"):
        return dependencies
    if isinstance(dependencies, Mapping) and all(
        isinstance(names, Sequence) and not isinstance(names, str)
        for names in dependencies.values()
    ):
        return {site: tuple(names) for site, names in dependencies.items()}
    raise ValueError(
        "dependencies must be 'model', 'mean_field' or a mapping {site: [sites "
        f"it reads]}}, but got {dependencies!r}."
    )


def coupled_sites(model: Callable, args: tuple, kwargs: dict) -> dict[str, set[str]]:
    """Pairs of sites that the model's posterior couples, both ways round.

    Falls back to no coupling, with a warning, when Pyro cannot read the
    dependencies of the model.
    """
    try:
        # Blocked: the handlers of the call in progress (an ELBO's trace,
        # enumeration, particle plates) must not see this extra model run.
        dependencies = poutine.block(get_dependencies)(model, args, kwargs)
        posterior = dependencies["posterior_dependencies"]
    except Exception as error:  # noqa: BLE001 - any failure means: no structure known
        warn(
            f"Could not read the model's dependency structure ({type(error).__name__}: "
            f"{error}); local heads read only the data. Pass dependencies='mean_field' "
            "to silence this, or name each local site's inputs.",
        )
        return {}
    coupled: dict[str, set[str]] = {}
    for site, others in posterior.items():
        for other in others:
            if other != site:
                coupled.setdefault(site, set()).add(other)
                coupled.setdefault(other, set()).add(site)
    return coupled


def readable_sites(structure: ModelStructure, name: str) -> list[str]:
    """The sites a local site's head can read: the global sites and the local
    sites sampled before it in its data plate, in none of its plates' nested
    plates that it is not in (:func:`can_read`)."""
    site = structure.sites[name]
    plate = structure.data_plates[site.data_plate]
    earlier = plate.sites[: plate.sites.index(name)]
    return [u for u in structure.global_sites if readable_global(structure.sites[u])] + [
        u for u in earlier if can_read(site, structure.sites[u])
    ]


def can_read(reader: LatentSite, read: LatentSite) -> bool:
    """Whether a local head can read another local site of its data plate: one
    in no plate that the reader is not in. A site of a nested plate has a value
    per position of that plate, and a site outside it has one for them all;
    reading them would make it depend on every position, which enumerating
    the nested site (by plate, as ``TraceEnum_ELBO`` does) cannot follow."""
    return {frame.name for frame in read.frames} <= {frame.name for frame in reader.frames}


def readable_global(site: LatentSite) -> bool:
    """Whether heads can read a global site: not one with batch dimensions that
    no plate declares and that are not of size 1 (which Pyro's validation
    refuses, and which the guide could not tell from particles)."""
    return math.prod(site.point_batch_shape) == 1


def upstream_sites(
    structure: ModelStructure,
    dependencies: Dependencies,
    coupled: Mapping[str, set[str]],
    correlatable: Sequence[str] = (),
) -> dict[str, tuple[str, ...]]:
    """For each site, the sites its proposal reads, in the guide's order.

    :param structure: the model's structure.
    :param dependencies: the validated option (see :func:`check_dependencies`).
    :param coupled: the model's posterior couplings (see :func:`coupled_sites`);
        used when ``dependencies == "model"``.
    :param correlatable: the global sites that may read and be read by other
        global sites (see :func:`correlatable_globals`).
    :raises ValueError: if a mapping names a site that is not latent, or inputs
        that it cannot read.
    """
    if dependencies == "mean_field":
        return {}
    if dependencies == "model":
        upstream = global_upstream(structure, coupled, correlatable)
        return {**upstream, **_model_upstream(structure, coupled)}
    unknown = sorted(set(dependencies) - set(structure.local_sites) - set(correlatable))
    if unknown:
        raise ValueError(
            f"dependencies names {unknown}, which are neither local latent sites of the "
            f"model ({', '.join(structure.local_sites) or 'none'}) nor global sites that can "
            f"read others ({', '.join(correlatable) or 'none'}: outside plates, with the "
            "'normal' family)."
        )
    for name, inputs in dependencies.items():
        if structure.sites[name].is_local:
            readable = readable_sites(structure, name)
            kind = "its head can read only global sites and local sites of its data plate "
            kind += "in none of the plates it is not in"
        else:
            readable = correlatable[: correlatable.index(name)]
            kind = "a global site can read only the global sites outside plates, of the "
            kind += "'normal' family,"
        unreadable = [site for site in inputs if site not in readable]
        if unreadable:
            raise ValueError(
                f"dependencies lets site '{name}' read {unreadable}, but {kind} sampled "
                f"before it: {', '.join(readable) or 'none'}."
            )
    return {name: tuple(inputs) for name, inputs in dependencies.items() if inputs}


def correlatable_globals(structure: ModelStructure, families: Mapping[str, object]) -> list[str]:
    """The global sites, in the guide's order, that may read (and be read by)
    other global sites: continuous, outside plates, with at most
    :data:`MAX_GLOBAL_INPUTS` values, and of the ``"normal"`` family (by name
    in ``families``)."""
    return [
        name
        for name in structure.global_sites
        if not structure.sites[name].frames
        and readable_global(structure.sites[name])
        and structure.sites[name].discrete is None
        and global_size(structure.sites[name]) <= MAX_GLOBAL_INPUTS
        and families[name] == "normal"
    ]


def global_upstream(
    structure: ModelStructure, coupled: Mapping[str, set[str]], correlatable: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """The earlier global sites each global site reads under ``dependencies="model"``.

    The guide samples the global sites first, then the local ones, so its
    factor of a global site must condition on every earlier global site that
    the posterior still couples with it once the later sites are integrated
    out: eliminating the latent sites in the reverse of the guide's order
    links each one's remaining neighbours (the fill-in of variable
    elimination), and a global site's neighbours when it is eliminated are the
    sites it reads. Only ``correlatable`` sites read and are read."""
    order = list(structure.global_sites) + list(structure.local_sites)
    neighbours = {name: set(coupled.get(name, ())) & set(order) for name in order}
    reads = {}
    for name in reversed(order):
        earlier = neighbours.pop(name)
        for site in earlier:
            neighbours[site] |= earlier - {site}
            neighbours[site].discard(name)
        if name in correlatable:
            inputs = [site for site in correlatable if site in earlier]
            if _total_size(structure, inputs) <= MAX_GLOBAL_INPUTS:
                reads[name] = tuple(inputs)
    return {name: inputs for name, inputs in reads.items() if inputs}


MAX_GLOBAL_INPUTS = 64
"""With ``dependencies="model"``, a head (or a global site's Normal) reads the
global sites the posterior couples it with only where they have at most this
many (unconstrained) values in all: a large global (a topic-word matrix, a
decoder's weights as a latent), or many small ones, would swamp the encoder's
features and the coefficients would slow training (on ``pyro.contrib.mue``'s
``FactorMuE``, whose code reads 131 values of six globals, the ELBO per
sequence was -12.2 against -9.0 reading none). Name them in a ``dependencies``
mapping to read them anyway."""


def _total_size(structure: ModelStructure, names: Sequence[str]) -> int:
    return sum(global_size(structure.sites[name]) for name in names)


def global_size(site: LatentSite) -> int:
    """The number of unconstrained values of a global site, over its full plates."""
    plates = math.prod(frame.full_size or frame.size for frame in site.frames)
    return plates * math.prod(site.unconstrained_event_shape)


def _model_upstream(
    structure: ModelStructure, coupled: Mapping[str, set[str]]
) -> dict[str, tuple[str, ...]]:
    """The sites each local head reads under ``dependencies="model"``: the
    coupled local sites, and the coupled global sites where they have at most
    :data:`MAX_GLOBAL_INPUTS` values in all (with a warning otherwise)."""
    result, unread = {}, {}
    for name in structure.local_sites:
        inputs = [site for site in readable_sites(structure, name) if site in coupled.get(name, ())]
        globals_ = tuple(site for site in inputs if not structure.sites[site].is_local)
        if _total_size(structure, globals_) > MAX_GLOBAL_INPUTS:
            unread.setdefault(globals_, []).append(name)
            inputs = [site for site in inputs if site not in globals_]
        if inputs:
            result[name] = tuple(inputs)
    for globals_, readers in unread.items():
        which = f"site '{globals_[0]}'" if len(globals_) == 1 else f"sites {list(globals_)}"
        warn(
            f"The posterior of local site(s) {readers} depends on global {which} "
            f"({_total_size(structure, globals_)} values), which their heads do not read: "
            f"more than {MAX_GLOBAL_INPUTS} values in all would swamp the encoder's "
            f"features. Name them in dependencies={{'{readers[0]}': [...]}} to read them "
            "anyway, or pass dependencies='mean_field' to silence this.",
        )
    return result


def per_point(value: torch.Tensor, site: LatentSite, plate_dim: int) -> torch.Tensor:
    """A site value as head input for a data plate at batch dim ``plate_dim``:
    shape ``(*left, rows, size)``, where ``left`` are the batch dimensions left of
    the plate (particles, enumeration), ``rows`` is one per data point for a
    local site (or 1 under enumeration) and 1 for a global site, and ``size`` the
    flattened rest.

    :param value: the site's unconstrained value (its value itself for a
        discrete site; categorical values are one-hot encoded).
    """
    event_dim = len(site.event_shape if site.discrete else site.unconstrained_event_shape)
    if site.discrete == "categorical":
        value = one_hot(value.long(), site.num_categories)
        event_dim += 1
    value = value if value.is_floating_point() else value.to(torch.get_default_dtype())
    position = value.dim() - event_dim + plate_dim
    if site.data_plate is None:
        # A global's own plates, at any dim, are read whole with its event:
        # moved into the flattened rest, left as 1 among the particles' dims.
        own = {value.dim() - event_dim + frame.dim for frame in site.frames}
        keep = [dim for dim in range(max(position, 0)) if dim not in own]
        rest = [dim for dim in range(value.dim()) if dim not in keep]
        start = keep[0] if keep else max(position, 0)  # no leading dims of the plates
        left = [value.shape[dim] if dim in keep else 1 for dim in range(start, max(position, 0))]
        return value.permute(keep + rest).reshape(left + [1, -1])
    return value.reshape(value.shape[: position + 1] + (-1,))


def global_reads(values: Sequence[torch.Tensor], sites: Sequence[LatentSite]) -> torch.Tensor:
    """The values of global sites outside plates as a global site reads them:
    each flattened over its event (and its batch dimensions of size 1 that no
    plate declares), side by side, broadcast over the batch dimensions
    (particles) they have."""
    pieces = []
    for value, site in zip(values, sites, strict=True):
        flattened = len(site.point_batch_shape) + len(site.unconstrained_event_shape)
        pieces.append(value.reshape(value.shape[: value.dim() - flattened] + (-1,)))
    return head_input(pieces[0], pieces[1:])


def head_input(features: torch.Tensor, pieces: Sequence[torch.Tensor]) -> torch.Tensor:
    """The encoder's features and the upstream values side by side, broadcast
    over their leading dimensions."""
    if not pieces:
        return features
    tensors = [features, *pieces]
    batch = features.shape[:-1]
    if any(piece.shape[:-1] != batch for piece in pieces):
        batch = torch.broadcast_shapes(*(tensor.shape[:-1] for tensor in tensors))
        tensors = [tensor.expand(batch + tensor.shape[-1:]) for tensor in tensors]
    return torch.cat(tensors, -1)
