"""Building a guide from the model, on its first call.

The model is read (:mod:`pyro_amortized.structure`); then each data plate gets
its encoder and each of its local sites a head of the site's family, started at
the site's prior (:mod:`pyro_amortized.initialization`); each global site gets
per-site parameters of its family (:mod:`pyro_amortized.global_heads`)."""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.infer.autoguide.initialization import init_to_feasible
from pyro.nn import PyroModule
from torch import nn

from .arguments import bind_arguments, locate_argument
from .calls import CallReader
from .discrete_heads import DiscreteHead
from .encoders import MLPEncoder, plate_features, plate_inputs
from .families import (
    CORRELATED_FAMILIES,
    GLOBAL_FAMILIES,
    LOCAL_FAMILIES,
    Family,
    build_head,
    check_site_families,
)
from .global_heads import GlobalDelta, GlobalNormal, GlobalPriorFamily
from .group_plates import rows_reached
from .initialization import (
    CORRELATED_MAX_INIT_SCALE,
    INIT_SCALE_RANGE,
    full_size_init,
    global_start,
    initial_unconstrained,
    prior_start,
)
from .input_encoding import label_counts, reading_encoder
from .latent_sites import LatentSite
from .observed import (
    arguments_defaulting_to_none,
    check_supervise,
    check_supervised_sites,
    sometimes_observed,
)
from .params import module_key
from .prototype import enumerated_in_plates, model_value, trace_prototype
from .sampling import SiteSampler, is_identity
from .sequences import SequenceEncoder, TimeStep, chain_steps, has_time_axis, time_chains
from .set_encoders import SetEncoder
from .structure import (
    AmortizeOn,
    DataPlate,
    ModelStructure,
    read_model,
    warn_if_nothing_to_amortize,
)
from .transforms import bijection_to, saturation_bound
from .upstream import (
    Dependencies,
    check_dependencies,
    correlatable_globals,
    coupled_sites,
    global_size,
    per_point,
    upstream_sites,
)

SIZING_ROWS = 8
"""Rows the encoder runs on when the guide is built, to learn its feature size."""

GLOBAL_INIT_SCALE = 0.1
"""Initial scale of global sites without ``init_scale``, as Pyro's ``AutoNormal``."""


@dataclass(frozen=True)
class GuideOptions:
    """A guide's options (see :class:`~pyro_amortized.AutoAmortizedGuide`)."""

    amortize_on: AmortizeOn
    encoder: nn.Module | Mapping[str, nn.Module] | None
    hidden_dims: tuple[int, ...]
    init_loc_fn: Callable
    default_init: bool
    init_scale: float | None
    site_families: Mapping[str, Family]
    family: Family
    global_family: str
    family_options: Mapping[str, Mapping[str, Any]]
    dependencies: Dependencies
    enumerate_discrete: str | None
    standardize_inputs: bool
    supervise: Mapping[str, float]
    jacobian: bool

    @classmethod
    def checked(
        cls,
        *,
        amortize_on: Any,
        encoder: Any,
        hidden_dims: Any,
        init_loc_fn: Any,
        init_scale: Any,
        site_families: Any,
        dependencies: Any,
        enumerate_discrete: Any,
        standardize_inputs: Any,
        supervise: Any,
        **family: Any,
    ) -> GuideOptions:
        """The options of a guide, checked; ``family`` gives the class's
        ``family``, ``global_family``, ``family_options`` and ``jacobian``.

        :raises ValueError: where an option is not one a guide takes.
        """
        supervise = check_supervise(supervise)
        if amortize_on is not None and not isinstance(amortize_on, (str, Sequence, Mapping)):
            raise ValueError(
                "amortize_on must be an argument name, a list of names or a mapping "
                f"{{plate name: [names]}}, but got {type(amortize_on).__name__}."
            )
        if encoder is not None and not isinstance(encoder, (nn.Module, Mapping)):
            raise ValueError(
                "encoder must be an nn.Module or a mapping {plate name: nn.Module}, "
                f"but got {type(encoder).__name__}."
            )
        if isinstance(encoder, Mapping) and not all(
            isinstance(module, nn.Module) for module in encoder.values()
        ):
            raise ValueError("Every value of the encoder mapping must be an nn.Module.")
        MLPEncoder(hidden_dims)  # validates hidden_dims
        if init_loc_fn is not None and not callable(init_loc_fn):
            raise ValueError(f"init_loc_fn must be callable or None, but got {init_loc_fn!r}.")
        if init_scale is not None and (
            not isinstance(init_scale, (int, float)) or not init_scale > 0
        ):
            raise ValueError(
                f"init_scale must be a positive number or None, but got {init_scale!r}."
            )
        if enumerate_discrete not in (None, "parallel", "sequential"):
            raise ValueError(
                "enumerate_discrete must be None, 'parallel' or 'sequential', but got "
                f"{enumerate_discrete!r}."
            )
        if not isinstance(standardize_inputs, bool):
            raise ValueError(
                f"standardize_inputs must be True or False, but got {standardize_inputs!r}."
            )
        return cls(
            amortize_on=amortize_on,
            encoder=encoder,
            hidden_dims=tuple(hidden_dims),
            # Without init_loc_fn, local heads start at their priors (initialization.py).
            init_loc_fn=init_to_feasible if init_loc_fn is None else init_loc_fn,
            default_init=init_loc_fn is None,
            init_scale=None if init_scale is None else float(init_scale),
            site_families=check_site_families(site_families),
            dependencies=check_dependencies(dependencies),
            enumerate_discrete=enumerate_discrete,
            standardize_inputs=standardize_inputs,
            supervise=supervise,
            **family,
        )


@dataclass(frozen=True)
class BuiltGuide:
    """What a guide knows of its model: structure, calls, sampling, data device."""

    structure: ModelStructure
    calls: CallReader
    sampler: SiteSampler
    device: torch.device

    def without_plans(self) -> BuiltGuide:
        """A copy that keeps no plans of calls (for pickling)."""
        calls = copy.copy(self.calls)
        calls.plans = {}
        return dataclasses.replace(self, calls=calls)


@dataclass
class GuideModules:
    """A guide's modules, keyed by :func:`~pyro_amortized.params.module_key`:
    an encoder per data plate, a head per local site, parameters per global site."""

    encoders: dict[str, nn.Module] = field(default_factory=dict)
    heads: dict[str, nn.Module] = field(default_factory=dict)
    global_modules: dict[str, PyroModule] = field(default_factory=dict)


def build_guide(
    model: Callable, options: GuideOptions, args: tuple, kwargs: dict
) -> tuple[BuiltGuide, GuideModules]:
    """Reads the model on a call's arguments and builds the guide's parts."""
    trace, outer = trace_prototype(model, options.init_loc_fn, args, kwargs)
    arguments = bind_arguments(model, args, kwargs)
    optional = arguments_defaulting_to_none(model)
    sources = sometimes_observed(trace, outer, arguments, optional)
    reached = functools.partial(rows_reached, model, trace, args, kwargs, {})
    structure = read_model(trace, outer, arguments, options.amortize_on, sources, reached)
    warn_if_nothing_to_amortize(structure, enumerated_in_plates(trace, outer))
    check_supervised_sites(options.supervise, structure.local_sites)
    _check_encoder_plates(options.encoder, structure)
    check_family_sites(options.site_families, structure)
    coupled = {}
    if options.dependencies == "model":
        # Read with the sometimes-observed sites latent, as they are coupled.
        unobserved = args, kwargs
        for argument in set(sources.values()):
            unobserved = locate_argument(model, argument).replace(*unobserved, None)
        coupled = coupled_sites(model, *unobserved)
    families = {
        name: options.site_families.get(name, options.global_family)
        for name in structure.global_sites
    }
    correlatable = correlatable_globals(structure, families)
    upstream = upstream_sites(structure, options.dependencies, coupled, correlatable)
    _check_guide_enumeration(structure, trace, options.enumerate_discrete)
    sampler = _site_sampler(structure, trace, options)
    names = set(optional)
    for plate in structure.data_plates.values():
        names.update(plate.arguments + ((plate.indices,) if plate.indices else ()))
    locations = {name: locate_argument(model, name) for name in names}
    calls = CallReader(structure, upstream, options.supervise, locations, sources)
    device = _data_device(structure, arguments)
    built, modules = BuiltGuide(structure, calls, sampler, device), GuideModules()
    for plate in structure.data_plates.values():
        _build_plate(built, modules, plate, options, (trace, outer), arguments)
    for name in structure.global_sites:
        site, node = structure.sites[name], trace.nodes[name]
        num_reads = sum(global_size(structure.sites[u]) for u in upstream.get(name, ()))
        module = _global_module(site, node, outer, options, sampler, num_reads)
        modules.global_modules[module_key(name)] = module
    calls.plan(model, options.init_loc_fn, args, kwargs, prototype=(trace, outer))
    return built, modules


def _site_sampler(structure: ModelStructure, trace: Any, options: GuideOptions) -> SiteSampler:
    transforms = {
        name: bijection_to(site.support)
        for name, site in structure.sites.items()
        if site.discrete is None
    }
    bounds = {
        name: saturation_bound(
            transform,
            structure.sites[name].unconstrained_event_shape,
            trace.nodes[name]["value"].dtype,
        )
        for name, transform in transforms.items()
        if not is_identity(transform)
    }
    return SiteSampler(
        transforms,
        bounds,
        jacobian=options.jacobian,
        enumerate_discrete=options.enumerate_discrete,
    )


def _check_encoder_plates(encoder: Any, structure: ModelStructure) -> None:
    if isinstance(encoder, Mapping):
        unknown = set(encoder) - set(structure.data_plates)
        if unknown:
            raise ValueError(
                f"encoder names plates {sorted(unknown)}, which are not data plates "
                f"of the model. Its data plates are: {sorted(structure.data_plates)}."
            )


def _check_guide_enumeration(
    structure: ModelStructure, trace: Any, enumerate_discrete: str | None
) -> None:
    """Refuses to enumerate in the guide the discrete local sites that the
    model samples in a ``pyro.markov`` loop: the dimensions the model's markov
    context reuses would clash with the guide's (Pyro's "Enumeration dim
    conflict")."""
    chained = [
        name
        for name in structure.local_sites
        if structure.sites[name].discrete and "_markov_scope" in trace.nodes[name]["infer"]
    ]
    if enumerate_discrete is not None and len(chained) > 1:
        raise ValueError(
            f"The model samples the discrete sites {chained} in a pyro.markov loop, which "
            "the guide cannot enumerate (its enumeration dimensions would clash with those "
            "the model's markov context reuses). Enumerate them in the model instead "
            "(config_enumerate, and TraceEnum_ELBO sums the chain exactly, as Pyro's HMM "
            "examples do), or let the guide sample them (enumerate_discrete=None)."
        )


def _plate_encoder(options: GuideOptions, plate: str, num_steps: int) -> nn.Module:
    """The plate's encoder: the user's, or a sequence encoder for a plate of
    sequences (``num_steps``), or an MLP."""
    encoder = options.encoder
    if isinstance(encoder, Mapping):
        encoder = encoder.get(plate)
    # Explicit None: an empty nn.Sequential is a valid encoder but is falsy.
    if encoder is None:
        return (
            SequenceEncoder(num_steps, options.hidden_dims)
            if num_steps
            else MLPEncoder(options.hidden_dims)
        )
    if isinstance(encoder, SequenceEncoder) and encoder.num_steps != num_steps:
        raise ValueError(
            f"The SequenceEncoder of plate '{plate}' has {encoder.num_steps} steps, but "
            f"the plate's chain of local sites has {num_steps or 'none'}."
        )
    return encoder


def _time_steps(built: BuiltGuide, plate: DataPlate, values: list[Any]) -> dict[str, TimeStep]:
    """The steps of the plate's time chains whose heads can be shared and whose
    data have a time axis, all of one length (:mod:`~pyro_amortized.sequences`)."""
    found: dict[str, TimeStep] = {}
    if plate.group_index:
        return found
    length = None
    for chain in time_chains(plate.sites, built.structure.sites):
        steps = chain_steps(chain, built.calls.upstream, built.structure.global_sites)
        timed = any(has_time_axis(value, len(chain)) for value in values)
        if steps and timed and length in (None, len(chain)):
            found.update(steps)
            length = len(chain)
    return found


def _data_device(structure: ModelStructure, arguments: dict[str, Any]) -> torch.device:
    """The device of the data: the first tensor among the data plates' inputs."""
    for plate in structure.data_plates.values():
        for name in plate.inputs:
            if isinstance(arguments.get(name), torch.Tensor):
                return arguments[name].device
    return torch.device("cpu")


def _build_plate(
    built: BuiltGuide,
    modules: GuideModules,
    plate: DataPlate,
    options: GuideOptions,
    prototype: tuple[Any, frozenset],
    arguments: dict[str, Any],
) -> None:
    """A data plate's encoder, and the heads of its local sites."""
    trace, outer = prototype
    values = plate.rows_first([arguments[name] for name in plate.arguments])
    steps = _time_steps(built, plate, values)
    num_steps = max((step.position + 1 for step in steps.values()), default=0)
    encoder = _plate_encoder(options, plate.name, num_steps)
    if not isinstance(encoder, SequenceEncoder):
        steps, num_steps = {}, 0
    for name, step in steps.items():  # the chain's shared reads
        reads = step.reads + ((step.neighbour,) if step.neighbour else ())
        if reads:
            built.calls.upstream[name] = reads
    rows = values[1:] if plate.group_index else values
    inputs = plate_inputs(plate, rows, None, None)
    labels = isinstance(encoder, MLPEncoder) and options.encoder is None
    counts = label_counts(trace, plate, arguments) if labels else (0,) * len(inputs)
    encoder = reading_encoder(
        encoder, plate, inputs, counts, standardize=options.standardize_inputs
    )
    if plate.group_index:  # the rows of each group, pooled
        reference_count = inputs[0].shape[0] / plate.full_size
        encoder = SetEncoder(encoder, options.hidden_dims, reference_count=reference_count)
        values = [values[0][:SIZING_ROWS]] + [value[:SIZING_ROWS] for value in rows]
    else:
        values = [value[:SIZING_ROWS] for value in values]
    encoder = encoder.to(built.device)
    with torch.no_grad():  # a few rows tell the feature size (and set lazy layers up)
        features = plate_features(encoder, plate, values, None, plate.full_size)
    modules.encoders[module_key(plate.name)] = encoder
    structure, upstream = built.structure, built.calls.upstream
    if num_steps:
        built.calls.sequence_steps[plate.name] = num_steps
    shared: dict[str, tuple[nn.Module, int]] = {}  # a chain's head and step width
    for name in plate.sites:
        site = structure.sites[name]
        step = steps.get(name)
        if step is not None and step.chain in shared:
            head, width = shared[step.chain]
            built.calls.time_steps[name] = dataclasses.replace(step, width=width)
            modules.heads[module_key(name)] = head
            continue
        values = {
            u: built.sampler.unconstrain(u, model_value(trace.nodes[u], outer))
            for u in upstream.get(name, ()) + (() if step is None else (name,))
        }
        widths = {u: per_point(values[u], structure.sites[u], plate.dim).shape[-1] for u in values}
        num_features = features.shape[-1] + sum(widths.values())
        if step is not None:  # the step's features, its neighbour or zeros, what else it reads
            width = widths.pop(name)
            num_features = features.shape[-1] // num_steps + sum(widths.values()) + width
            if step.neighbour is not None:
                num_features -= width
            built.calls.time_steps[name] = dataclasses.replace(step, width=width)
        if site.discrete is not None:
            head = DiscreteHead(
                num_features,
                site.point_batch_shape + site.event_shape,
                site.event_dim,
                kind=site.discrete,
                num_categories=site.num_categories,
            )
        else:
            loc, scale = _local_start(site, trace.nodes[name], outer, options, built.sampler)
            family = options.site_families.get(name, options.family)
            event_dim = len(site.unconstrained_event_shape)
            head = build_head(
                family, name, num_features, loc, scale, event_dim, options.family_options
            )
        modules.heads[module_key(name)] = head
        if step is not None:
            shared[step.chain] = head, width


def _local_start(
    site: LatentSite, node: dict, outer: frozenset, options: GuideOptions, sampler: SiteSampler
) -> tuple[torch.Tensor, float]:
    """A local head's initial location and scale: from the site's prior where
    ``init_loc_fn`` or ``init_scale`` is not given."""
    transform = sampler.transforms[site.name]
    if options.default_init or options.init_scale is None:
        family = options.site_families.get(site.name, options.family)
        correlated = isinstance(family, str) and family in CORRELATED_FAMILIES
        max_scale = CORRELATED_MAX_INIT_SCALE if correlated else INIT_SCALE_RANGE[1]
        loc, scale = prior_start(node, outer, transform, max_scale)
    if not options.default_init:
        loc = initial_unconstrained(node, outer, transform).mean(0)
    return loc, scale if options.init_scale is None else options.init_scale


def _global_module(
    site: LatentSite,
    node: dict,
    outer: frozenset,
    options: GuideOptions,
    sampler: SiteSampler,
    num_reads: int,
) -> PyroModule:
    """A global site's parameters, of its family, reading ``num_reads`` values."""
    family = options.site_families.get(site.name, options.global_family)
    transform = sampler.transforms[site.name]
    if family == "prior":
        full_size = functools.partial(full_size_init, site=site)
        return GlobalPriorFamily(node["fn"], transform, full_size)
    event_dim = len(site.unconstrained_event_shape)
    start = global_start(node, outer, transform, default=options.default_init)
    init_loc = full_size_init(start, event_dim, site)
    if family == "delta":
        return GlobalDelta(init_loc, event_dim)
    scale = GLOBAL_INIT_SCALE if options.init_scale is None else options.init_scale
    return GlobalNormal(init_loc, scale, event_dim, num_reads=num_reads)


def check_family_sites(site_families: dict[str, Family], structure: ModelStructure) -> None:
    unknown = sorted(set(site_families) - set(structure.local_sites) - set(structure.global_sites))
    if unknown:
        raise ValueError(
            f"site_families names {unknown}, which are not latent sites of the model. Its "
            f"local sites are: {', '.join(structure.local_sites) or 'none'}; its global "
            f"sites: {', '.join(structure.global_sites) or 'none'}."
        )
    for name, family in site_families.items():
        is_global = name in structure.global_sites
        if is_global and (callable(family) or family not in GLOBAL_FAMILIES):
            raise ValueError(
                f"site_families gives the global site '{name}' the family {family!r}; a "
                f"global site's family is one of {', '.join(GLOBAL_FAMILIES)}."
            )
        if not is_global and family == "prior":
            raise ValueError(
                f"site_families gives the local site '{name}' the family 'prior', which "
                "is for global sites; a local site's family is one of "
                f"{', '.join(LOCAL_FAMILIES)}."
            )
    discrete = sorted(name for name in site_families if structure.sites[name].discrete)
    if discrete:
        raise ValueError(
            f"site_families names the discrete sites {discrete}; a discrete local site "
            "always gets amortized logits (see enumerate_discrete). Remove them from "
            "site_families."
        )
