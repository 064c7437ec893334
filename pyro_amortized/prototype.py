"""The prototype run of a model and what is read off a site of its trace.

The model is run once with latent values from an ``init_loc_fn`` (discrete and
enumerated sites drawn from their priors), under a handler that marks the
subsample sites of plates given their indices by the model. Plates declared
without a size are given the size their sites broadcast to, so every reader
sees sized frames. Plates enclosing the call (vectorized ELBO particles) are
not the model's: :func:`model_value` and :func:`model_frames` leave them out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from pyro.util import get_rng_state, set_rng_state


def is_enumerated(site: dict) -> bool:
    return site["infer"].get("enumerate") in ("parallel", "sequential")


def _init_fn(init_loc_fn: Callable) -> Callable:
    """``init_loc_fn`` for continuous sites; a prior draw for discrete ones."""

    def init(site: dict) -> torch.Tensor:
        try:
            discrete = site["fn"].support.is_discrete
        except NotImplementedError as error:
            fn = site["fn"]
            while isinstance(fn, (dist.ExpandedDistribution, dist.Independent)):
                fn = fn.base_dist
            raise ValueError(
                f"Site '{site['name']}' has a {type(fn).__name__} with no support, "
                "which the guide needs to map its unconstrained values to the site's. Give "
                "the distribution a support (a flow over real vectors: "
                "constraints.real_vector) and sample and rsample methods."
            ) from error
        if is_enumerated(site) or discrete:
            return site["fn"].sample().detach()
        return init_loc_fn(site)

    return init


PROTOTYPE_RUN_FAILED = (
    "(This error came from a run of the model that the guide makes with its own call's "
    "arguments, outside the handlers around the call, with latent values from "
    "init_loc_fn: on its first call, and on each call whose arguments have new shapes. "
    "The guide takes the model's arguments, as SVI passes them: a caller that passes it "
    "others (the experiment-design guides of pyro.contrib.oed) needs a guide of its own. "
    "A model that runs only inside its caller's handlers, as pyro.contrib.forecast's "
    "Forecaster conditions a forecast on the observed prefix, cannot be planned so: "
    "call the guide with the shapes it was trained on.)"
)
"""The note added to an error raised by the guide's own run of the model."""


def trace_prototype(
    model: Callable, init_loc_fn: Callable, args: tuple, kwargs: dict
) -> tuple[poutine.Trace, frozenset[str]]:
    """Runs the model once with latent values from ``init_loc_fn``.

    :returns: the trace and the names of the plates that enclosed the call
        (for example vectorized ELBO particles), which are not the model's.
    """
    outer = frozenset(frame.name for frame in pyro.poutine.runtime.get_plates())
    model = InitMessenger(_init_fn(init_loc_fn))(_MarkExplicitSubsample()(model))
    try:
        trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
    except Exception as error:
        error.add_note(PROTOTYPE_RUN_FAILED)
        raise
    _size_unsized_plates(trace, outer)
    return trace, outer


UNSIZED = "_pyro_amortized_unsized"
"""The attribute of a prototype trace naming the plates the model declares
without a size (the subsample site of a sized one may be missing too: hidden
by ``poutine.block``)."""


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
    setattr(trace, UNSIZED, frozenset(sizes))
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


@contextmanager
def quietly() -> Iterator[None]:
    """Within the block, no gradients, and afterwards the random state (torch's,
    numpy's, Python's) as it was before: the guide's own extra runs of the
    model and draws from priors must not change the draws that follow."""
    state = get_rng_state()
    try:
        with torch.no_grad():
            yield
    finally:
        set_rng_state(state)


def subsample_of(trace: poutine.Trace, plate: str) -> torch.Tensor | None:
    """The rows a plate took in the trace, where it took fewer than all."""
    site = trace.nodes.get(plate)
    if site is None or not site_is_subsample(site) or len(site["value"]) == site["fn"].size:
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


def model_frames(site: dict, outer: frozenset[str]) -> tuple[CondIndepStackFrame, ...]:
    return tuple(
        frame for frame in site["cond_indep_stack"] if frame.vectorized and frame.name not in outer
    )


def enumerated_in_plates(trace: poutine.Trace, outer: frozenset[str]) -> dict[str, list[str]]:
    """The sites the model enumerates in each of its vectorized plates that
    hold observed data."""
    enumerated: dict[str, list[str]] = {}
    with_data = set()
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        plates = [frame.name for frame in model_frames(site, outer)]
        if site["is_observed"] and holds_data(site):
            with_data.update(plates)
        elif not site["is_observed"] and is_enumerated(site):
            for plate in plates:
                enumerated.setdefault(plate, []).append(name)
    return {plate: names for plate, names in enumerated.items() if plate in with_data}


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


def data_sites(trace: poutine.Trace) -> dict[str, dict]:
    """The observed sites of a trace that hold data (see :func:`holds_data`), by name."""
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["is_observed"] and holds_data(site)
    }


def plate_sizes(trace: poutine.Trace, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """The ``(size, subsample size)`` of the named plates in a trace of the model."""
    sizes = {}
    for site in trace.nodes.values():
        for frame in site.get("cond_indep_stack", ()):
            if frame.name in names:
                sizes[frame.name] = (frame.full_size or frame.size, frame.size)
    return sizes
