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

import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions.transforms import identity_transform

from .transforms import bijection_to

AmortizeOn = None | str | Sequence[str] | Mapping[str, str | Sequence[str]]


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

    def rows_first(self, values: Sequence[Any]) -> list[Any]:
        """The inputs' values with the data points along their first axis."""
        axes = self.axes or (0,) * len(values)
        return [
            value.movedim(axis, 0) if axis and isinstance(value, torch.Tensor) else value
            for value, axis in zip(values, axes, strict=True)
        ]


@dataclass(frozen=True)
class LatentSite:
    """A latent sample site the guide must cover.

    :param name: the site's name.
    :param support: the support of the site's distribution.
    :param event_shape: the site's (constrained) event shape.
    :param unconstrained_event_shape: the event shape in unconstrained space.
    :param frames: the vectorized plates the site sits in, outermost first.
    :param data_plate: the name of its data plate, ``None`` for a global site.
    :param point_batch_shape: for a local site, the batch shape of one data
        point (the site's batch shape without the data plate's dimension).
    :param discrete: for a discrete local site the guide samples, its kind:
        ``"bernoulli"``, ``"categorical"`` or ``"one_hot"``.
    :param num_categories: the number of values of a discrete site.
    """

    name: str
    support: constraints.Constraint
    event_shape: torch.Size
    unconstrained_event_shape: torch.Size
    frames: tuple[CondIndepStackFrame, ...]
    data_plate: str | None = None
    point_batch_shape: torch.Size = torch.Size()
    discrete: str | None = None
    num_categories: int = 0

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    @property
    def is_local(self) -> bool:
        return self.data_plate is not None


@dataclass(frozen=True)
class ModelStructure:
    """What an amortized guide needs to know about a model.

    :param data_plates: the data plates by name.
    :param sites: every latent site the guide covers, in model order.
    :param frames: every vectorized plate of the model by name, as first seen.
    :param unsized: the plates the model declares without a size
        (``pyro.plate("data")``): their frames hold the size their sites
        broadcast to, and the guide declares them without a size too.
    """

    data_plates: dict[str, DataPlate]
    sites: dict[str, LatentSite]
    frames: dict[str, CondIndepStackFrame]
    unsized: frozenset[str] = frozenset()

    @property
    def local_sites(self) -> tuple[str, ...]:
        return tuple(name for name, site in self.sites.items() if site.is_local)

    @property
    def global_sites(self) -> tuple[str, ...]:
        return tuple(name for name, site in self.sites.items() if not site.is_local)


def bind_arguments(model: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Names each argument of a model call, as ``inspect.signature`` binds it.

    An ``nn.Module`` model is bound through its ``forward``. Extra positional
    arguments are named ``"<name>[i]"``, extra keyword arguments by their key.

    Usage::

        bind_arguments(model, (x,), {"y": y})   # {"x": x, "y": y}
    """
    target = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        signature = inspect.signature(target)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        named = {f"args[{i}]": value for i, value in enumerate(args)}
        named.update(kwargs)
        return named
    bound.apply_defaults()
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            named.update({f"{name}[{i}]": item for i, item in enumerate(value)})
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return named


@dataclass(frozen=True)
class ArgumentLocation:
    """Where a named argument sits in a call ``model(*args, **kwargs)``.

    :param name: the argument's name (as :func:`bind_arguments` gives it).
    :param position: its index in ``args``, or ``None`` if keyword-only.
    :param keyword: its key in ``kwargs``, or ``None`` if positional-only.
    :param default: its default value, or :attr:`inspect.Parameter.empty`.
    """

    name: str
    position: int | None
    keyword: str | None
    default: Any = inspect.Parameter.empty

    def fetch(self, args: tuple, kwargs: dict) -> Any:
        """The argument's value in this call."""
        if self.keyword is not None and self.keyword in kwargs:
            return kwargs[self.keyword]
        if self.position is not None and self.position < len(args):
            return args[self.position]
        if self.default is inspect.Parameter.empty:
            raise ValueError(
                f"This call does not pass the model argument '{self.name}', which feeds "
                "an encoder. Pass it, or choose other inputs with amortize_on=."
            )
        return self.default

    def replace(self, args: tuple, kwargs: dict, value: Any) -> tuple[tuple, dict]:
        """The call's arguments with this argument set to ``value``, where
        :meth:`fetch` would read it (a keyword passed wins over a position)."""
        positional = self.position is not None and self.position < len(args)
        if positional and (self.keyword is None or self.keyword not in kwargs):
            return args[: self.position] + (value,) + args[self.position + 1 :], kwargs
        return args, {**kwargs, self.keyword: value}


def locate_argument(model: Callable, name: str) -> ArgumentLocation:
    """The :class:`ArgumentLocation` of an argument named by :func:`bind_arguments`."""
    target = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    for index, parameter in enumerate(parameters):
        kind = parameter.kind
        if kind is inspect.Parameter.VAR_POSITIONAL and name.startswith(parameter.name + "["):
            return ArgumentLocation(name, index + int(name[len(parameter.name) + 1 : -1]), None)
        if parameter.name != name or kind is inspect.Parameter.VAR_KEYWORD:
            continue
        positional = kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
        keyword = kind is not inspect.Parameter.POSITIONAL_ONLY
        return ArgumentLocation(
            name,
            index if positional else None,
            name if keyword else None,
            parameter.default,
        )
    if not parameters and name.startswith("args["):
        return ArgumentLocation(name, int(name[5:-1]), None)
    return ArgumentLocation(name, None, name)


def _is_enumerated(site: dict) -> bool:
    return site["infer"].get("enumerate") in ("parallel", "sequential")


def _init_fn(init_loc_fn: Callable) -> Callable:
    """``init_loc_fn`` for continuous sites; a prior draw for discrete ones."""

    def init(site: dict) -> torch.Tensor:
        if _is_enumerated(site) or site["fn"].support.is_discrete:
            return site["fn"].sample().detach()
        return init_loc_fn(site)

    return init


def trace_prototype(
    model: Callable, init_loc_fn: Callable, args: tuple, kwargs: dict
) -> tuple[poutine.Trace, frozenset[str]]:
    """Runs the model once with latent values from ``init_loc_fn``.

    :returns: the trace and the names of the plates that enclosed the call
        (for example vectorized ELBO particles), which are not the model's.
    """
    outer = frozenset(frame.name for frame in pyro.poutine.runtime.get_plates())
    model = InitMessenger(_init_fn(init_loc_fn))(_MarkExplicitSubsample()(model))
    trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
    _size_unsized_plates(trace, outer)
    return trace, outer


def _size_unsized_plates(trace: poutine.Trace, outer: frozenset[str]) -> None:
    """Gives every plate declared without a size (``pyro.plate("data")``, whose
    frames record the size -1) the size its sites broadcast to in this trace,
    so that an unsized plate reads exactly as a sized one."""
    sizes: dict[str, int] = {}
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        for frame in model_frames(site, outer):
            if frame.size == -1:
                size = _size_along(site, frame, outer)
                sizes[frame.name] = max(sizes.get(frame.name, 1), size)
    if not sizes:
        return
    for site in trace.nodes.values():
        if site["type"] == "sample":
            site["cond_indep_stack"] = tuple(
                frame._replace(size=sizes[frame.name], full_size=sizes[frame.name])
                if frame.size == -1 and frame.name in sizes
                else frame
                for frame in site["cond_indep_stack"]
            )


def _size_along(site: dict, frame: CondIndepStackFrame, outer: frozenset[str]) -> int:
    """The size of a site's value along a plate's dimension (1 where it broadcasts)."""
    value = model_value(site, outer)
    position = value.dim() - site["fn"].event_dim + frame.dim
    return value.shape[position] if position >= 0 else 1


_EXPLICIT = "_pyro_amortized_explicit_subsample"


class _MarkExplicitSubsample(Messenger):
    """Marks the subsample sites of plates given their indices by the model
    (``pyro.plate(name, N, subsample=indices)``): their value is set on entry.

    Only an integer tensor is indices. Models also pass the data itself
    (``pyro.plate("data", len(x), subsample=x)``, to size the plate from it):
    that selects no rows, and the data stays an input of the encoder."""

    def _pyro_sample(self, msg: dict) -> None:
        value = msg["value"]
        if site_is_subsample(msg) and isinstance(value, torch.Tensor):
            if not (value.is_floating_point() or value.is_complex()):
                msg["infer"][_EXPLICIT] = True


def explicit_indices(trace: poutine.Trace, plate: str) -> torch.Tensor | None:
    """The minibatch indices a model passed to ``plate``, if it passed any."""
    site = trace.nodes.get(plate)
    if site is None or not site["infer"].get(_EXPLICIT):
        return None
    return site["value"]


def model_value(site: dict, outer: frozenset[str]) -> torch.Tensor:
    """A site's value without the dimensions of plates enclosing the model call."""
    value = site["value"]
    for frame in site["cond_indep_stack"]:
        position = value.dim() - site["fn"].event_dim + frame.dim if frame.vectorized else -1
        if frame.name in outer and position >= 0:
            value = value.select(position, 0)
    return value


def read_model(
    trace: poutine.Trace,
    outer: frozenset[str],
    arguments: dict[str, Any],
    amortize_on: AmortizeOn,
    sometimes_observed: Mapping[str, str] | None = None,
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
    candidates = _data_plate_candidates(latent, observed, frames, arguments, amortize_on, outer)
    sites: dict[str, LatentSite] = {}
    members: dict[str, list[str]] = {}
    for name, site in latent.items():
        plate = next((f.name for f in model_frames(site, outer) if f.name in candidates), None)
        _check_guidable(name, site, plate, observed)
        sites[name] = _latent_site(name, site, plate, frames, outer)
        if plate is not None:
            members.setdefault(plate, []).append(name)
    data_plates = {
        plate: _data_plate(
            frames[plate],
            candidates[plate],
            arguments,
            inverse_order(names, sites),
            explicit_indices(trace, plate),
        )
        for plate, names in members.items()
    }
    if amortize_on is None:
        _warn_if_shared(data_plates)
    # A plate with a size records its subsample site; one without records none.
    unsized = frozenset(name for name in frames if name not in trace.nodes)
    return ModelStructure(data_plates=data_plates, sites=sites, frames=frames, unsized=unsized)


def inverse_order(names: Sequence[str], sites: Mapping[str, LatentSite]) -> tuple[str, ...]:
    """The order in which the guide samples a data plate's local sites: an
    inverse of the model's graph. The model samples parents before children;
    the guide samples children before parents (the reverse of the model's
    order), so that each head can read the sites below it, as in the exact
    posterior of a chain, ``q(z2 | x) q(z1 | x, z2)``. Discrete sites come first,
    so that continuous heads read them (``q(y | x)`` then ``q(z | x, y)``) and a
    discrete site the guide enumerates sets the shape of the sites after it.
    """
    reverse = list(reversed(names))
    return tuple(sorted(reverse, key=lambda name: sites[name].discrete is None))


def _warn_if_shared(data_plates: dict[str, DataPlate]) -> None:
    """Warns when an argument feeds several data plates: it has as many rows as
    each, and the guide cannot tell whose data points its rows are."""
    for argument in sorted({name for plate in data_plates.values() for name in plate.inputs}):
        plates = [name for name, plate in data_plates.items() if argument in plate.inputs]
        if len(plates) > 1:
            quoted = ", ".join(f"'{name}'" for name in plates)
            warnings.warn(
                f"Argument '{argument}' has one row per data point of each of the plates "
                f"{quoted}, so every one of their encoders reads it. If its rows belong "
                "to one plate only, say which arguments feed which plate with "
                "amortize_on={plate name: [argument names]}.",
                UserWarning,
                stacklevel=4,
            )


def model_frames(site: dict, outer: frozenset[str]) -> tuple[CondIndepStackFrame, ...]:
    return tuple(
        frame for frame in site["cond_indep_stack"] if frame.vectorized and frame.name not in outer
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
        elif not _is_enumerated(site):
            latent[name] = site
    return latent, observed, frames


def holds_data(site: dict) -> bool:
    """Whether an observed site holds data. ``pyro.factor`` and
    ``pyro.deterministic`` record observed sites that hold none, and so do the
    point masses that ``poutine.reparam`` leaves at a reparametrized site (its
    value is a function of the new latent sites, not data)."""
    if site["infer"].get("is_auxiliary") or site["infer"].get("_deterministic"):
        return False
    fn = site["fn"]
    while isinstance(fn, (dist.MaskedDistribution, dist.Independent, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return not isinstance(fn, dist.Delta)


def _rows(value: Any) -> int | None:
    if isinstance(value, torch.Tensor) and value.dim() >= 1:
        return value.shape[0]
    return None


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
    frame: CondIndepStackFrame, observed: dict, latent: dict, outer: frozenset[str]
) -> tuple[int, ...]:
    """Where the plate indexes the data of observed sites, counted from the right
    of each value. A plate indexes a site's data where it is the site's leading
    dimension, or where it is the site's outermost plate and the plate of the
    leading dimension holds no latent site (documents around words, in a
    words x documents matrix; but data inside features, in a data x features
    matrix, keeps the data plate). Empty where the plate indexes no data."""
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
        if (position == 0 or outermost) and value.shape[position] == frame.size:
            offsets.add(value.dim() - position)
    return tuple(sorted(offsets, reverse=True))


def _holds_latents(frame: CondIndepStackFrame, latent: dict, outer: frozenset[str]) -> bool:
    return any(frame in model_frames(site, outer) for site in latent.values())


def _data_plate_candidates(
    latent: dict,
    observed: dict,
    frames: dict,
    arguments: dict[str, Any],
    amortize_on: AmortizeOn,
    outer: frozenset[str],
) -> dict[str, tuple[str, ...]]:
    """Plates that could be data plates, with the arguments that would feed them
    and the axis of each along which the data points lie."""
    offsets = {
        name: _observed_offsets(frame, observed, latent, outer) for name, frame in frames.items()
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
            raise ValueError(
                f"Latent sites sit in plate '{name}' (size {frame.full_size or frame.size}), "
                "but no model argument holds its rows: the observed data seems to come "
                "from outside the model's arguments (a closure or global variable). "
                "Pass the data as an argument of the model, with one row per data point "
                "along its first dimension, or name the inputs with amortize_on=."
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


def discrete_kind(support: constraints.Constraint, event_shape: torch.Size) -> tuple[str, int]:
    """The kind of amortized discrete head for a support and its number of values.

    :raises NotImplementedError: for discrete supports without a head (counts).
    """
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    if support is constraints.boolean:
        return "bernoulli", 2
    if isinstance(support, type(constraints.integer_interval(0, 1))) and support.lower_bound == 0:
        return "categorical", int(support.upper_bound) + 1
    if support is constraints.one_hot:
        return "one_hot", event_shape[-1]
    raise NotImplementedError(f"no amortized head for support {support}")


def _check_guidable(name: str, site: dict, plate: str | None, observed: dict) -> None:
    fn = site["fn"]
    if fn.support.is_discrete:
        _check_discrete(name, fn, plate)
    sequential = [f for f in site["cond_indep_stack"] if not f.vectorized]
    for frame in sequential:
        holds_data = any(frame in s["cond_indep_stack"] for s in observed.values())
        if plate is not None or holds_data:
            raise ValueError(
                f"Latent site '{name}' sits in the sequential plate '{frame.name}' "
                "(a Python loop over pyro.plate), which an amortized guide cannot "
                "encode. Use a vectorized plate: `with pyro.plate(...):`."
            )


ENUMERATION_TUTORIAL = "https://pyro.ai/examples/enumeration.html"


def _check_discrete(name: str, fn: Any, plate: str | None) -> None:
    """A discrete latent site the model does not enumerate needs an amortized
    head: only local Bernoulli, Categorical and OneHotCategorical sites have one."""
    enumerate_it = (
        "Mark it with infer={'enumerate': 'parallel'} (or decorate the model with "
        "pyro.infer.config_enumerate) and train with TraceEnum_ELBO, which sums it out "
        f"exactly (see Pyro's enumeration tutorial, {ENUMERATION_TUTORIAL})."
    )
    if plate is None:
        raise ValueError(
            f"Latent site '{name}' is discrete and global: it sits outside every data "
            "plate, so no data point's encoder can propose it, and the model does not "
            f"enumerate it. {enumerate_it} Only discrete sites local to a data plate get "
            "amortized heads."
        )
    try:
        discrete_kind(fn.support, fn.event_shape)
    except NotImplementedError:
        raise ValueError(
            f"Local latent site '{name}' has discrete support {fn.support}, for which the "
            "guide has no amortized head (it has heads for Bernoulli, Categorical and "
            f"OneHotCategorical sites), and the model does not enumerate it. {enumerate_it}"
        ) from None


def _no_bijection_message(name: str, support: constraints.Constraint) -> str:
    """What to do with a continuous site whose support has no bijection."""
    fix = (
        "Reparametrize the site (see pyro.infer.reparam, or LKJCholesky instead of LKJ) "
        "or hide it from the guide with poutine.block."
    )
    if isinstance(support, constraints.independent):
        support = support.base_constraint
    if isinstance(support, type(constraints.sphere)):
        fix = (
            "Reparametrize it with pyro.infer.reparam.ProjectedNormalReparam: "
            f"poutine.reparam(model, config={{'{name}': ProjectedNormalReparam()}}) turns "
            "the direction into a Normal the guide can cover."
        )
    return (
        f"Latent site '{name}' has support {support}, which has no bijection from "
        f"unconstrained space. {fix}"
    )


def _latent_site(
    name: str, site: dict, plate: str | None, frames: dict, outer: frozenset[str]
) -> LatentSite:
    fn = site["fn"]
    support = fn.support
    discrete, num_categories = None, 0
    if support.is_discrete:
        discrete, num_categories = discrete_kind(support, fn.event_shape)
    try:
        transform = bijection_to(support) if discrete is None else identity_transform
    except NotImplementedError as error:
        raise ValueError(_no_bijection_message(name, support)) from error
    event_shape = fn.event_shape
    site_frames = model_frames(site, outer)
    unconstrained_event_shape = transform.inverse_shape(event_shape)
    if plate is None:
        return LatentSite(name, support, event_shape, unconstrained_event_shape, site_frames)
    batch_shape = model_value(site, outer).shape[: -len(event_shape) or None]
    position = len(batch_shape) + frames[plate].dim
    leading = batch_shape[:position]
    if any(size != 1 for size in leading):
        raise ValueError(
            f"Local site '{name}' has batch dimensions {tuple(leading)} to the left of "
            f"its data plate '{plate}'. Make the data plate the outermost plate of its "
            "local sites (the data points must index their leading dimension)."
        )
    for frame in site_frames:
        if frame.name != plate and (frame.full_size or frame.size) != frame.size:
            raise ValueError(
                f"Local site '{name}' sits in plate '{frame.name}', which subsamples. "
                f"Only its data plate '{plate}' may subsample; use a fixed-size plate."
            )
    return LatentSite(
        name,
        support,
        event_shape,
        unconstrained_event_shape,
        site_frames,
        data_plate=plate,
        point_batch_shape=batch_shape[position + 1 :],
        discrete=discrete,
        num_categories=num_categories,
    )


def _data_plate(
    frame: CondIndepStackFrame,
    feeds: tuple[tuple[str, int], ...],
    arguments: dict,
    sites: tuple[str, ...],
    explicit: torch.Tensor | None,
) -> DataPlate:
    full_size = frame.full_size or frame.size
    indices = None if explicit is None else _indices_argument(frame.name, explicit, arguments)
    feeds = tuple((name, axis) for name, axis in feeds if name != indices)
    if not feeds:
        raise ValueError(
            f"Plate '{frame.name}' holds latent sites, but no model argument other than "
            f"its indices '{indices}' has one row per data point. Pass the data as an "
            "argument, or name the inputs with amortize_on=."
        )
    inputs = tuple(name for name, _ in feeds)
    axes = tuple(axis for _, axis in feeds)
    values = [arguments[name].movedim(axis, 0) for name, axis in feeds]
    rows = {value.shape[0] for value in values}
    presubsampled = full_size != frame.size and rows == {frame.size}
    return DataPlate(
        indices=indices,
        name=frame.name,
        dim=frame.dim,
        full_size=full_size,
        subsample_size=frame.size if full_size != frame.size else None,
        inputs=inputs,
        point_shapes=tuple(value.shape[1:] for value in values),
        presubsampled=presubsampled,
        sites=sites,
        axes=axes if any(axes) else (),
    )


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


def plate_sizes(trace: poutine.Trace, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """The ``(size, subsample size)`` of the named plates in a trace of the model."""
    sizes = {}
    for site in trace.nodes.values():
        for frame in site.get("cond_indep_stack", ()):
            if frame.name in names:
                sizes[frame.name] = (frame.full_size or frame.size, frame.size)
    return sizes


def call_key(args: tuple, kwargs: dict) -> tuple:
    """A hashable key of a call's argument shapes and plain values: calls with
    equal keys run the model's plates with equal sizes."""
    return tuple(_value_key(value) for value in args) + tuple(
        (name, _value_key(value)) for name, value in sorted(kwargs.items())
    )


def _value_key(value: Any) -> Any:
    """A tensor by its shape, type and device; a tuple (a ``PackedSequence``, any
    named tuple), list or dict by the keys of its items; another value by itself
    where it hashes, else by its identity."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype, value.device)
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_value_key(item) for item in value))
    if isinstance(value, dict):
        return (dict, tuple((key, _value_key(item)) for key, item in value.items()))
    try:
        hash(value)
    except TypeError:
        return id(value)
    return value


def warn_if_nothing_to_amortize(structure: ModelStructure) -> None:
    """Warns once when the model has no data plate holding latent sites."""
    if not structure.sites:
        warnings.warn(
            "The model has no latent site the guide covers (every sample site is "
            "observed, deterministic or enumerated by the model), so the guide samples "
            "nothing. If a site should be latent, check that it is not given obs=.",
            UserWarning,
            stacklevel=3,
        )
    elif not structure.data_plates:
        warnings.warn(
            "The model has no data plate with local latent sites, so there is nothing to "
            "amortize: every latent site gets per-site parameters, as with AutoNormal. "
            "A data plate is a vectorized plate over an observed site whose rows come "
            "from a model argument (see amortize_on=).",
            UserWarning,
            stacklevel=3,
        )
