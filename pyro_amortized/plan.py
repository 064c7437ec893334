"""What one argument signature of a call fixes: the guide's per-call plan.

Calls whose arguments have equal shapes and plain values (see
:func:`~pyro_amortized.arguments.call_key`) run the model's plates with equal
sizes, weight its sites with the same scales and masks (where they are numbers),
observe data in the same plates and observe the same sometimes-observed sites.
The guide reads these once per signature, from one run of the model, and keeps
them in a :class:`CallPlan` with the ordered steps of its sites.

:func:`run_plan` is the data path of one call, in this order:

1. each global site, from its per-site parameters (given the noise of the
   earlier global sites it reads);
2. per data plate the model observes data in: the plate's minibatch rows of
   its inputs, through its encoder, to features;
3. per local site of the plate, in the plan's order (an inverse of the model's:
   discrete sites first, children before parents): a site observed in the
   call is read from its argument; a latent one's head maps the features and
   the values of the sites it reads to a distribution over its unconstrained
   value, which the site's bijection maps to its support.

Training, test-time encoding, medians and quantiles, refinement and the
diagnostics run this one loop, each with its own :class:`PlanVisitor`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import torch
from pyro import poutine

from .argument_masks import SlicedMask
from .latent_sites import LatentSite
from .observed import plates_with_data
from .params import module_key
from .prototype import plate_sizes
from .structure import DataPlate, ModelStructure
from .weights import Weight, handler_weights


@dataclass(frozen=True)
class SiteStep:
    """One latent site of a call.

    :param site: the site.
    :param key: the module key of its head (a local site) or its parameters (a
        global one).
    :param reads: the sites its head (or a global site's parameters) reads
        besides the data, by name.
    :param observed: observed in this call: read from its argument, not sampled.
    :param supervise: the weight of its ``supervise`` term, if any.
    """

    site: LatentSite
    key: str
    reads: tuple[str, ...] = ()
    observed: bool = False
    supervise: float | None = None

    @property
    def name(self) -> str:
        return self.site.name


@dataclass(frozen=True)
class PlateStep:
    """A data plate of a call: its encoder and its local sites in order."""

    plate: DataPlate
    key: str
    sites: tuple[SiteStep, ...]


def site_steps(
    structure: ModelStructure,
    upstream: Mapping[str, tuple[str, ...]],
    supervise: Mapping[str, float],
    observed: Iterable[str] = (),
    skipped: Iterable[str] = (),
) -> tuple[tuple[SiteStep, ...], tuple[PlateStep, ...]]:
    """The ordered steps of a call: the global sites, then per data plate (but
    the ``skipped`` ones) its local sites, the ``observed`` ones marked."""
    observed, skipped = frozenset(observed), frozenset(skipped)
    globals_ = tuple(
        SiteStep(structure.sites[name], module_key(name), tuple(upstream.get(name, ())))
        for name in structure.global_sites
    )
    plates = tuple(
        PlateStep(
            plate,
            module_key(plate.name),
            tuple(
                SiteStep(
                    structure.sites[name],
                    module_key(name),
                    tuple(upstream.get(name, ())),
                    observed=name in observed,
                    supervise=supervise.get(name),
                )
                for name in plate.sites
            ),
        )
        for plate in structure.data_plates.values()
        if plate.name not in skipped
    )
    return globals_, plates


class PlanVisitor(Protocol):
    """What a run of the plan does at each step (see :func:`run_plan`)."""

    def global_site(self, step: SiteStep) -> None:
        """A global site, from its per-site parameters and what it reads."""

    def data_plate(self, step: PlateStep) -> AbstractContextManager[torch.Tensor]:
        """Enters the plate; gives its rows' features."""

    def observed_site(self, step: SiteStep, plate: PlateStep, features: torch.Tensor) -> None:
        """A local site this call observes: read, not proposed."""

    def local_site(self, step: SiteStep, plate: PlateStep, features: torch.Tensor) -> None:
        """A latent local site, from its head."""


def run_plan(
    steps: tuple[tuple[SiteStep, ...], tuple[PlateStep, ...]], visitor: PlanVisitor
) -> None:
    """One call of the guide: its steps in order (see the module's docstring)."""
    globals_, plates = steps
    for step in globals_:
        visitor.global_site(step)
    for plate in plates:
        with visitor.data_plate(plate) as features:
            for step in plate.sites:
                if step.observed:
                    visitor.observed_site(step, plate, features)
                else:
                    visitor.local_site(step, plate, features)


@dataclass(frozen=True)
class CallPlan:
    """The plates and weights of calls of one argument signature.

    :param plate_sizes: the ``(size, subsample size)`` of each of the model's
        plates in such a call.
    :param weights: the model's scale and mask of each guided site (read again
        on every call where they are tensors, see :mod:`pyro_amortized.weights`).
    :param observing: the plates in which the model observes data, or ``None``
        where the guide has no model to run (loaded from disk).
    :param steps: the call's ordered steps (see :func:`site_steps`), once known.
    :param masks: the tensor masks that are slices of the call's arguments
        (see :mod:`pyro_amortized.argument_masks`), ``None`` where some are not.
    """

    plate_sizes: Mapping[str, tuple[int, int]]
    weights: Mapping[str, Weight]
    observing: frozenset[str] | None
    steps: tuple[tuple[SiteStep, ...], tuple[PlateStep, ...]] | None = field(default=None)
    masks: Mapping[str, SlicedMask] | None = field(default=None)

    @property
    def takes_every_row(self) -> bool:
        """Whether every plate of such a call takes all its rows (no minibatch)."""
        return all(size == rows for size, rows in self.plate_sizes.values())

    @classmethod
    def read(
        cls, trace: poutine.Trace, outer: frozenset[str], structure: ModelStructure
    ) -> CallPlan:
        """The plan of a call from a run of the model on its arguments.

        :param trace: the run's trace (see
            :func:`~pyro_amortized.prototype.trace_prototype`).
        :param outer: plates that enclosed the call.
        :param structure: the model's structure, read on the first call.
        """
        missing = [name for name in structure.sites if name not in trace.nodes]
        if missing:
            raise ValueError(
                f"The model samples no site {missing} in this call, but the guide was built "
                "for them: its sites must be the same in every call (a chain of time steps "
                "as long as in the first call; pad sequences to one length and mask the "
                "padding). Build a new guide for another layout."
            )
        return cls(
            plate_sizes=plate_sizes(trace, list(structure.frames)),
            weights=handler_weights(trace, structure.sites),
            observing=plates_with_data(trace, outer),
        )


UNKNOWN = CallPlan(plate_sizes={}, weights={}, observing=None)
"""The plan of a call that a guide loaded without its model cannot run: its
plates take the first call's layout and the sites carry no weights."""
