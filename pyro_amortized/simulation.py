"""The model's own simulations as data for the guide: the sleep phase.

A run of the model with its observed sites unconditioned draws local values
``z`` and data ``x`` from the model for the rows of its data plate. For the
guide to read the simulated ``x`` as it reads data, each observed site of the
data plate is matched to the model argument whose rows it observes (the value
the site observed equals that argument's rows at the plate's minibatch), and a
call is built whose argument holds the simulated rows there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .arguments import locate_argument
from .guides import AutoAmortizedGuide
from .iwae import per_row_log_prob


@dataclass
class Simulation:
    """One simulation of the model on a call's rows.

    :param trace: the model's trace, its observed sites drawn.
    :param args: the call's positional arguments with the simulated data.
    :param kwargs: its keyword arguments with the simulated data.
    """

    trace: poutine.Trace
    args: tuple
    kwargs: dict


def simulate(
    model: Callable,
    guide: AutoAmortizedGuide,
    plate: str,
    args: tuple,
    kwargs: dict,
    condition: dict[str, torch.Tensor],
) -> Simulation:
    """Runs ``model`` with ``condition`` held and its observed sites drawn, and
    builds the call whose data arguments hold the simulated rows.

    :raises ValueError: where an observed site of the data plate observes no
        argument that feeds the guide's encoder, row for row.
    """
    # Unconditioned first, then held: the held values stay (the other order
    # would draw them again).
    simulator = poutine.condition(poutine.uncondition(model), data=condition)
    with torch.no_grad():
        trace = poutine.trace(simulator).get_trace(*args, **kwargs)
    rows = _rows(trace, plate)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or not site["infer"].get("was_observed"):
            continue
        if not any(frame.name == plate for frame in site["cond_indep_stack"]):
            continue
        args, kwargs = _with_simulated(guide, plate, name, site, rows, args, kwargs)
    return Simulation(trace, args, kwargs)


def _rows(trace: poutine.Trace, plate: str) -> torch.Tensor | None:
    """The data plate's minibatch of rows in this run (``None``: every row)."""
    site = trace.nodes.get(plate)
    return site["value"] if site is not None and site_is_subsample(site) else None


def _with_simulated(
    guide: AutoAmortizedGuide,
    plate: str,
    name: str,
    site: dict,
    rows: torch.Tensor | None,
    args: tuple,
    kwargs: dict,
) -> tuple[tuple, dict]:
    observed, simulated = site["infer"]["obs"], site["value"]
    for argument in guide.data_plates[plate]:
        location = locate_argument(guide.model, argument)
        value = location.fetch(args, kwargs)
        if not isinstance(value, torch.Tensor):
            continue
        selected = value if rows is None else value.index_select(0, rows)
        if selected.shape == observed.shape and torch.equal(selected, observed):
            replaced = value.clone()
            if rows is None:
                replaced.copy_(simulated)
            else:
                replaced.index_copy_(0, rows, simulated.to(value.dtype))
            return location.replace(args, kwargs, replaced)
    raise ValueError(
        f"The sleep phase draws the observed site '{name}' from the model, but no "
        f"argument that feeds the encoder of plate '{plate}' holds its observed rows "
        f"(arguments {list(guide.data_plates[plate])}): the guide could not read the "
        "simulated data. Observe an argument's rows as they are (obs=x or "
        "pyro.subsample(x)), or train without the sleep phase."
    )


def latent_values(trace: poutine.Trace) -> dict[str, torch.Tensor]:
    """The values a simulation drew for the model's latent sites (and plates)."""
    return {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["infer"].get("was_observed")
    }


def row_dim(site: dict, plate: str) -> int:
    """The dimension of a site's value along a data plate's rows."""
    frame = next(frame for frame in site["cond_indep_stack"] if frame.name == plate)
    return site["value"].dim() - site["fn"].event_dim + frame.dim


def fitted_log_q(
    guide: AutoAmortizedGuide,
    held: dict[str, torch.Tensor],
    args: tuple,
    kwargs: dict,
    plate: str,
    nesting: int,
) -> tuple[torch.Tensor, float]:
    """``sum_n log q(z_n | x_n)`` of the guide's local sites at ``held`` values
    (the data plate's minibatch of rows among them), the guide reading the call
    ``args, kwargs``; and the scale of the data plate's subsampling."""
    held = guide._require_built().sampler.held(held)
    trace = poutine.trace(poutine.condition(guide, data=held)).get_trace(*args, **kwargs)
    log_prob = per_row_log_prob(trace, plate, nesting)
    return log_prob.local.sum(), log_prob.scale
