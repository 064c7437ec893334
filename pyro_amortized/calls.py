"""One call of the guide: what the model's arguments hold, and its plates.

A :class:`CallReader` finds the guide's inputs among a call's arguments (the
data plates' encoder inputs, their minibatch indices, the values of sites
observed in some calls), keeps the plan of each argument signature (see
:mod:`pyro_amortized.plan`), and makes the call's plates with the sizes the
model's plates have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import pyro
import torch
from torch import nn

from .argument_masks import copied_masks, masks_from_arguments, sliced_masks
from .arguments import (
    ArgumentLocation,
    argument_keys,
    bind_arguments,
    call_key,
    locate_argument,
)
from .encoders import plate_inputs
from .observed import observed_sources
from .plan import UNKNOWN, CallPlan, site_steps
from .prototype import trace_prototype
from .sequences import TimeStep
from .structure import DataPlate, ModelStructure
from .user_warnings import warn
from .weights import (
    Weight,
    changed_sites,
    check_weights_follow_data,
    same_weights,
    vary,
    weights_on_rows,
)

MAX_CACHED_CALLS = 64
"""Argument signatures whose plans a guide keeps."""


class CallReader:
    """Reads the guide's calls, for a model of a given structure.

    :param structure: the model's structure.
    :param upstream: the sites each head reads (see :mod:`pyro_amortized.upstream`).
    :param supervise: the guide's ``supervise`` option.
    :param locations: where each argument the guide reads sits in a call.
    :param sources: the argument holding each sometimes-observed site's values.
    """

    def __init__(
        self,
        structure: ModelStructure,
        upstream: Mapping[str, tuple[str, ...]],
        supervise: Mapping[str, float],
        locations: dict[str, ArgumentLocation],
        sources: dict[str, str],
    ) -> None:
        self.structure = structure
        self.upstream = upstream
        self.supervise = supervise
        self.locations = locations
        self.sources = sources
        self.plans: dict[tuple, CallPlan] = {}
        self.fresh: CallPlan | None = None  # the plan a run of the model made in this call
        # The steps of time chains, and per sequence plate its number of steps.
        self.time_steps: dict[str, TimeStep] = {}
        self.sequence_steps: dict[str, int] = {}
        self.weights_vary = False  # tensor weights: read on every call
        self.sliced_calls: dict[tuple, int] = {}  # calls that sliced masks, per signature
        self.number_calls: dict[tuple, int] = {}  # calls with number weights, per signature
        self.trained_latent: set[str] = set()  # sometimes-observed sites trained latent
        self.generated_warned: set[str] = set()  # plates warned about once
        self.planned_keys: dict[str, set] = {}  # each argument's keys in the planned calls
        self.new_signatures_warned = False
        self.guided_plates = {f.name for site in structure.sites.values() for f in site.frames}

    # -------------------------------------------------------------- the plan

    def plan(
        self,
        model: Callable | None,
        init_loc_fn: Callable,
        args: tuple,
        kwargs: dict,
        prototype: tuple[Any, frozenset] | None = None,
    ) -> CallPlan:
        """The plan of this call's argument signature, with its steps.

        The first call of each signature runs the model once (cached; or reads
        the ``prototype`` run given, a trace and its outer plates), so the
        guide's plates have the sizes and subsample sizes of the model's,
        whatever the model computes them from.
        """
        key = call_key(args, kwargs)
        plan = self.plans.get(key)
        self.fresh = None
        if plan is None:  # a new signature (no rows is one: shapes make the key)
            for plate in self.structure.data_plates.values():
                _check_rows(plate, self.input_values(plate, args, kwargs)[0])
            if model is None:  # a guide loaded from disk has no model
                plan = UNKNOWN
            else:
                trace, outer = prototype or trace_prototype(model, init_loc_fn, args, kwargs)
                plan = self.remember(model, init_loc_fn, trace, outer, args, kwargs)
            observed = self.given(args, kwargs)
            skipped = self._generated_plates(plan, args, kwargs)
            steps = site_steps(self.structure, self.upstream, self.supervise, observed, skipped)
            plan = self.plans[key] = dataclasses.replace(plan, steps=steps)
            self.fresh = plan if model is not None else None
        return plan

    def remember(
        self,
        model: Callable,
        init_loc_fn: Callable,
        trace: Any,
        outer: frozenset,
        args: tuple,
        kwargs: dict,
    ) -> CallPlan:
        """The plan of a call signature from a run of the model; learns which
        argument holds a local site this call observes."""
        if len(self.plans) >= MAX_CACHED_CALLS:
            self._warn_of_new_signatures()
            self.plans.clear()
            self.sliced_calls.clear()
            self.number_calls.clear()
        for name, key in argument_keys(model, args, kwargs).items():
            self.planned_keys.setdefault(name, set()).add(key)
        plan = CallPlan.read(trace, outer, self.structure)
        if vary(plan.weights):
            if not self.weights_vary:
                check_weights_follow_data(model, init_loc_fn, args, kwargs, plan.weights)
            self.weights_vary = True
            named = bind_arguments(model, args, kwargs)
            masks = sliced_masks(trace, plan.weights, named)
            if masks is None and plan.takes_every_row:  # copies show in a second run
                masks = copied_masks(model, init_loc_fn, args, kwargs, plan.weights, named)
            plan = dataclasses.replace(plan, masks=masks)
        unknown = [name for name in self.structure.local_sites if name not in self.sources]
        learned = observed_sources(model, trace, outer, args, kwargs, unknown)
        for argument in learned.values():
            self.locations.setdefault(argument, locate_argument(model, argument))
        self.sources.update(learned)
        return plan

    def _warn_of_new_signatures(self) -> None:
        """Warns, once, where the arguments that change from call to call make
        nearly every call a new signature, planned by a run of the model."""
        changing = sorted(
            name for name, keys in self.planned_keys.items() if len(keys) > MAX_CACHED_CALLS // 2
        )
        self.planned_keys.clear()
        if changing and not self.new_signatures_warned:
            self.new_signatures_warned = True
            warn(
                f"The guide has planned {MAX_CACHED_CALLS} argument signatures, each by a "
                "run of the model (about one more forward pass a call): the model's "
                f"arguments {changing} differ from call to call. A model may size its "
                "plates or scale its sites by its arguments, so each new value is planned "
                "anew: a tensor by its shape, a number by its value (an annealing factor "
                "costs a run a call while it changes), another object by its identity. An "
                "object made anew each call (a functools.partial or a lambda per step) "
                "costs this for nothing: pass the same object, and tensors in a few shapes "
                "(pad the data)."
            )

    def known_size(self, plate: str, args: tuple, kwargs: dict) -> int | None:
        """A plate's full size in calls of this signature, where one was planned."""
        plan = self.plans.get(call_key(args, kwargs))
        sizes = None if plan is None else plan.plate_sizes.get(plate)
        return None if sizes is None else sizes[0]

    def _generated_plates(self, plan: CallPlan, args: tuple, kwargs: dict) -> frozenset[str]:
        """The data plates in which the model observes nothing in this call and
        an encoder input is ``None`` (the targets ``ys`` of ``model(xs,
        ys=None)``, when predicting): the model generates their data, so the
        posterior of their local sites is their prior, and the guide leaves
        those sites to the model. (No head reads a site of another data plate,
        see :mod:`pyro_amortized.upstream`.)"""
        observing = plan.observing
        # A guide loaded from disk has no model to run; most calls observe data
        # in every data plate.
        if observing is None or observing.issuperset(self.structure.data_plates):
            return frozenset()
        missing = {
            name: [i for i in plate.inputs if self.locations[i].fetch(args, kwargs) is None]
            for name, plate in self.structure.data_plates.items()
            if name not in observing
        }
        generated = frozenset(name for name, inputs in missing.items() if inputs)
        for name in generated - self.generated_warned:
            self.generated_warned.add(name)
            plate = self.structure.data_plates[name]
            warn(
                f"The model observes nothing in plate '{name}' in this call "
                f"({', '.join(missing[name])} "
                f"None), so the guide leaves its local sites {list(plate.sites)} to the "
                "model's prior, their posterior given no data, as for new data points. For "
                "a posterior predictive of observed rows, give the guide their values: "
                f"Predictive(model, guide=functools.partial(guide, {missing[name][0]}=...)).",
            )
        return generated

    def weights(
        self,
        plan: CallPlan,
        model: Callable | None,
        init_loc_fn: Callable,
        args: tuple,
        kwargs: dict,
        plates: dict[str, pyro.plate],
    ) -> Mapping[str, Weight]:
        """The model's scale and mask of each guided site in this call (see
        :mod:`pyro_amortized.weights`)."""
        if model is None:
            return plan.weights
        if not self.weights_vary:
            return self._number_weights(plan, model, init_loc_fn, args, kwargs, plates)
        # A call that made its plan ran the model on its arguments: where no
        # plate took a minibatch of rows, the model's nor the guide's (joined:
        # create_plates, an AutoGuideList's), that run's weights are the call's.
        whole = plan.takes_every_row and not any(
            0 < plate.subsample_size < plate.size for plate in plates.values()
        )
        if plan is self.fresh and whole:
            return plan.weights
        sliced = None
        if whole and plan.masks is not None:
            named = bind_arguments(model, args, kwargs)
            sliced = masks_from_arguments(plan.weights, plan.masks, named)
        key = call_key(args, kwargs)
        if sliced is not None:
            # Sliced masks are checked against the model's: a model that slices
            # its arguments by their values shows in the first calls.
            if not _checked_call(self.sliced_calls, key):
                return sliced
        weights = weights_on_rows(model, init_loc_fn, args, kwargs, plates, self.structure.sites)
        if sliced is not None and not same_weights(sliced, weights):
            self.plans[key] = dataclasses.replace(plan, masks=None)
        return weights

    def _number_weights(
        self,
        plan: CallPlan,
        model: Callable,
        init_loc_fn: Callable,
        args: tuple,
        kwargs: dict,
        plates: dict[str, pyro.plate],
    ) -> Mapping[str, Weight]:
        """Weights that are numbers, read once per signature and checked against a
        run of the model in its calls 2, 3, 5, 9, 17, ...: a factor the model
        takes from program state (an annealing factor kept as an attribute)
        changes between calls of one signature, and from its first change on the
        weights are read on every call. A signature whose sites have no weights
        (none but 1 and no mask) is not checked: most models, which pay nothing."""
        if not plan.weights:
            return plan.weights
        checked = _checked_call(self.number_calls, call_key(args, kwargs))
        if plan is self.fresh or not checked:  # a fresh plan has this call's weights
            return plan.weights
        weights = weights_on_rows(model, init_loc_fn, args, kwargs, plates, self.structure.sites)
        if same_weights(plan.weights, weights):
            return plan.weights
        self.weights_vary = True
        changed = changed_sites(plan.weights, weights)
        warn(
            f"The model's scales or masks of the latent sites {changed} changed between "
            "two calls with the same arguments: the model takes it from program state "
            "(an annealing factor kept as an attribute), not from its arguments. From "
            "now on the guide reads its weights from a run of the model on every call "
            "(about one more forward pass a step); pass such a factor as an argument "
            "of the model to avoid it."
        )
        return weights

    # -------------------------------------------------------------- the plates

    def plates(
        self,
        plan: CallPlan,
        args: tuple,
        kwargs: dict,
        joined: dict[str, pyro.plate],
        every_row: bool,
    ) -> dict[str, pyro.plate]:
        """The plates of a call: those the guide ``joined`` (made by an
        ``AutoGuideList`` or ``create_plates``), then the model's own; with
        ``every_row`` the data plates take every row."""
        structure = self.structure
        plates = dict(joined)
        running = {step.plate.name for step in plan.steps[1]}
        sizes = plan.plate_sizes
        if every_row:
            sizes = {
                name: (size, size if name in structure.data_plates else subsample_size)
                for name, (size, subsample_size) in sizes.items()
            }
        for name, frame in structure.frames.items():
            if name in plates:
                continue
            if name in structure.data_plates and name not in running:
                continue  # the model generates its data: no guide site in it
            full_size, size = sizes.get(name, (frame.full_size or frame.size, frame.size))
            if name not in self.guided_plates and (size == full_size or name in structure.unsized):
                continue  # no guide site, every row: the model's plate takes them all
            if name in structure.unsized:  # sized by broadcasting, as in the model
                plates[name] = pyro.plate(name, dim=frame.dim)
            elif name in structure.data_plates and not structure.data_plates[name].group_index:
                plate = structure.data_plates[name]
                plates[name] = self._data_plate(plate, sizes.get(name), args, kwargs)
            else:
                plates[name] = pyro.plate(name, full_size, dim=frame.dim, subsample_size=size)
        return plates

    def _data_plate(
        self, plate: DataPlate, sizes: tuple[int, int] | None, args: tuple, kwargs: dict
    ) -> pyro.plate:
        first = self.input_values(plate, args, kwargs)[0]
        if not isinstance(first, torch.Tensor) or first.dim() == 0:
            plate_inputs(plate, [first], None, None)  # raises the helpful error
        if sizes is None:  # the model could not be run: use the first call's layout
            rows = first.shape[0]
            if plate.presubsampled:
                sizes = (plate.full_size, rows)
            else:
                sizes = (
                    rows,
                    rows if plate.subsample_size is None else min(plate.subsample_size, rows),
                )
        size, subsample_size = sizes
        if plate.indices is not None:  # the model's own minibatch
            subsample = self.locations[plate.indices].fetch(args, kwargs)
            return pyro.plate(plate.name, size, subsample=subsample, dim=plate.dim)
        return pyro.plate(
            plate.name, size, subsample_size=subsample_size, dim=plate.dim, device=first.device
        )

    # -------------------------------------------------------------- the values

    def input_values(self, plate: DataPlate, args: tuple, kwargs: dict) -> list[Any]:
        """The plate's inputs in this call, data points along their first axis."""
        values = [self.locations[name].fetch(args, kwargs) for name in plate.arguments]
        return plate.rows_first(values)

    def given(self, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        """The local sites this call observes, with the arguments' values."""
        given = {}
        for name, argument in self.sources.items():
            value = self.locations[argument].fetch(args, kwargs)
            if value is not None:
                given[name] = value
        return given

    def check_trained_latent(self, name: str, training: bool) -> None:
        """Notes a sometimes-observed site sampled latent with gradients; warns
        once where one is proposed latent without ever having been trained so."""
        if training:
            self.trained_latent.add(name)
            return
        if name in self.trained_latent:
            return
        self.trained_latent.add(name)  # warn once
        argument = self.sources[name]
        warn(
            f"Site '{name}' is latent in this call ({argument}=None), but the guide has "
            f"only trained on calls that observe it: its head q({name} | ...) is "
            "untrained (the heads that read it trained on the observed values). For a "
            f"posterior predictive of '{name}', give the guide the observed values and "
            f"leave them out of the model's call: Predictive(model, "
            f"guide=functools.partial(guide, {argument}=...))(...) with no {argument}. To "
            f"infer '{name}' where it is missing, also train on calls with "
            f"{argument}=None, or train its head on the observed values with "
            f"supervise={{'{name}': weight}}.",
            UserWarning,
        )

    def data_errors_explained(
        self, args: tuple, kwargs: dict, network: nn.Module
    ) -> AbstractContextManager[None]:
        """Where torch fails inside the guide, says first whether the data is on
        another device or of another type than the guide's ``network`` (the
        usual cause), instead of checking that on every call."""
        return _DataErrorsExplained(self, args, kwargs, network)


class _DataErrorsExplained(AbstractContextManager):
    """See :meth:`CallReader.data_errors_explained` (a class: entered on every
    call, where a generator's context costs several microseconds more)."""

    def __init__(self, calls: CallReader, args: tuple, kwargs: dict, network: nn.Module) -> None:
        self.calls, self.args, self.kwargs, self.network = calls, args, kwargs, network

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: Any) -> None:
        if kind is None or not issubclass(kind, (RuntimeError, NotImplementedError)):
            return
        parameter = next(self.network.parameters(), None)
        if parameter is not None:
            for plate in self.calls.structure.data_plates.values():
                values = self.calls.input_values(plate, self.args, self.kwargs)
                _check_data(plate, values, parameter)


def joined_plates(
    master: Callable | None,
    create_plates: Callable | None,
    args: tuple,
    kwargs: dict,
    every_row: bool,
) -> dict[str, pyro.plate]:
    """Plates a guide joins rather than makes: those of the
    :class:`~pyro.infer.autoguide.AutoGuideList` it is a part of (``master``:
    the list made them and recorded their subsample sites before running its
    parts; not with ``every_row``), or those ``create_plates`` returns."""
    if master is not None:
        return {} if every_row else dict(master().plates)
    if create_plates is None:
        return {}
    created = create_plates(*args, **kwargs)
    created = [created] if isinstance(created, pyro.plate) else list(created)
    return {plate.name: plate for plate in created}


def _checked_call(counts: dict[tuple, int], key: tuple) -> bool:
    """Counts a call of the signature ``key``: whether it is one of the
    signature's calls 1, 2, 3, 5, 9, 17, ..., those checked against a run of
    the model (early, to catch a model that differs, at a cost that vanishes)."""
    count = counts[key] = counts.get(key, 0) + 1
    return not (count - 1) & (count - 2)


def given_rows(value: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
    """An observed local site's minibatch rows."""
    if indices is not None and value.shape[0] != indices.shape[0]:
        value = value.index_select(0, indices.to(value.device))
    return value


def _check_rows(plate: DataPlate, first: Any) -> None:
    if isinstance(first, torch.Tensor) and first.dim() > 0 and first.shape[0] == 0:
        raise ValueError(
            f"Argument '{plate.arguments[0]}' of plate '{plate.name}' has no rows in this "
            "call; pass at least one data point."
        )


def _check_data(plate: DataPlate, values: list[Any], parameter: torch.Tensor) -> None:
    """Device and floating-point type of a data plate's inputs, in the user's terms."""
    for name, value in zip(plate.arguments, values, strict=True):
        if not isinstance(value, torch.Tensor):
            continue  # plate_inputs says what is wrong
        if value.device != parameter.device:
            raise ValueError(
                f"Argument '{name}' of plate '{plate.name}' is on {value.device}, but the "
                f"guide is on {parameter.device}. Move the data with "
                f".to('{parameter.device}'), or the guide with guide.to('{value.device}')."
            )
        if value.is_floating_point() and value.dtype != parameter.dtype:
            raise ValueError(
                f"Argument '{name}' of plate '{plate.name}' is {value.dtype}, but the "
                f"guide's parameters are {parameter.dtype}. Convert the data (for example "
                f"{name}.to({parameter.dtype})), or the guide (guide.to({value.dtype}))."
            )
