"""What one argument signature of a call fixes: the guide's per-call plan.

Calls whose arguments have equal shapes and plain values (see
:func:`~pyro_amortized.arguments.call_key`) run the model's plates with equal
sizes, weight its sites with the same scales and masks (where they are numbers)
and observe data in the same plates. The guide reads these once per signature,
from one run of the model, and keeps them in a :class:`CallPlan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pyro import poutine

from .observed import plates_with_data
from .prototype import plate_sizes
from .structure import ModelStructure
from .weights import Weight, handler_weights


@dataclass(frozen=True)
class CallPlan:
    """The plates and weights of calls of one argument signature.

    :param plate_sizes: the ``(size, subsample size)`` of each of the model's
        plates in such a call.
    :param weights: the model's scale and mask of each guided site (read again
        on every call where they are tensors, see :mod:`pyro_amortized.weights`).
    :param observing: the plates in which the model observes data, or ``None``
        where the guide has no model to run (loaded from disk).
    """

    plate_sizes: Mapping[str, tuple[int, int]]
    weights: Mapping[str, Weight]
    observing: frozenset[str] | None

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
        return cls(
            plate_sizes=plate_sizes(trace, list(structure.frames)),
            weights=handler_weights(trace, structure.sites),
            observing=plates_with_data(trace, outer),
        )


UNKNOWN = CallPlan(plate_sizes={}, weights={}, observing=None)
"""The plan of a call that a guide loaded without its model cannot run: its
plates take the first call's layout and the sites carry no weights."""
