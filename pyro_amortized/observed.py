"""Sites observed in some calls and latent in others.

The semi-supervised pattern: ``y = pyro.sample("y", dist.Categorical(...), obs=ys)``
with ``ys`` a tensor in labelled batches and ``None`` in unlabelled ones (Pyro's
semi-supervised VAE, scANVI-like models; ``def model(xs, ys=None)``). One guide
trains on both kinds of batch: where ``y`` is latent its head proposes it; where
it is given, the guide does not sample it, and the heads downstream read the
observed value.

A site is *sometimes observed* when it is observed with the rows of a model
argument whose default is ``None`` (read on the first call), or when a call
observes a site that the first call left latent (read on that call). Either way
the guide remembers which argument holds the site's values: in a call where
that argument is ``None`` the site is latent. The argument never feeds an
encoder, since it is missing from some calls.

Where the site is observed its head is not used, so by the ELBO alone it learns
from unlabelled batches only. ``supervise={"y": alpha}`` also trains it where
``y`` is given, by adding ``alpha * log q(y | x)`` of the observed values to the
objective: the auxiliary term of Kingma, Rezende, Mohamed & Welling (2014),
"Semi-supervised learning with deep generative models", eq. 9.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from .arguments import bind_arguments
from .prototype import data_sites, model_frames, model_value


def arguments_defaulting_to_none(model: Callable) -> frozenset[str]:
    """The names of a model's arguments whose default is ``None``."""
    target = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(p.name for p in parameters if p.default is None)


def source_argument(
    site: dict, trace: poutine.Trace, arguments: Mapping[str, Any], outer: frozenset[str]
) -> str | None:
    """The model argument whose rows an observed site's value is: the argument
    itself, or its rows at the minibatch indices of the site's plates."""
    value = model_value(site, outer)
    for name, argument in arguments.items():
        if argument is value:
            return name
    for name, argument in arguments.items():
        if isinstance(argument, torch.Tensor) and _rows_match(argument, value, site, trace):
            return name
    return None


def _rows_match(argument: torch.Tensor, value: torch.Tensor, site: dict, trace: Any) -> bool:
    if argument.shape == value.shape:
        return bool(torch.equal(argument, value))
    for frame in site["cond_indep_stack"]:
        subsample = trace.nodes.get(frame.name)
        indices = None if subsample is None else subsample["value"]
        if not isinstance(indices, torch.Tensor) or indices.is_floating_point():
            continue
        if argument.shape[:1] == (frame.full_size,) and argument.shape[1:] == value.shape[1:]:
            rows = argument.index_select(0, indices.to(argument.device))
            if rows.shape == value.shape and torch.equal(rows, value):
                return True
    return False


def sometimes_observed(
    trace: poutine.Trace,
    outer: frozenset[str],
    arguments: Mapping[str, Any],
    optional: Iterable[str],
) -> dict[str, str]:
    """The observed sites of a first call whose values are rows of an argument
    defaulting to ``None``, each with that argument's name, where the site's
    data plate holds other data that every call passes (the images beside the
    labels). A site that is its plate's only data is not one: without it the
    model runs on no data at all (it generates), as Pyro's LDA with
    ``data=None``."""
    optional = set(optional)
    sources = {
        name: source_argument(site, trace, arguments, outer)
        for name, site in data_sites(trace).items()
    }
    always = [name for name, source in sources.items() if source not in optional]
    found = {}
    for name, source in sources.items():
        if source not in optional:
            continue
        frames = model_frames(trace.nodes[name], outer)
        if frames and any(frames[0] in model_frames(trace.nodes[o], outer) for o in always):
            found[name] = source
    return found


def plates_with_data(trace: poutine.Trace, outer: frozenset[str]) -> frozenset[str]:
    """The plates that hold an observed site with data in a run of the model.

    A data plate missing here in a call (``model(xs, ys=None)`` predicting,
    where ``y`` is observed only when ``ys`` is given) has its data generated
    by the model: nothing is observed in it, and the posterior of its local
    sites is their prior.
    """
    return frozenset(
        frame.name for site in data_sites(trace).values() for frame in model_frames(site, outer)
    )


def observed_sources(
    model: Callable,
    trace: poutine.Trace,
    outer: frozenset[str],
    args: tuple,
    kwargs: dict,
    local_sites: Iterable[str],
) -> dict[str, str]:
    """The local sites a call observes, each with the argument holding its values.

    :raises ValueError: if a call observes a local site with values that are not
        rows of one of its arguments (the guide could not read them).
    """
    arguments = bind_arguments(model, args, kwargs)
    sources = {}
    for name in local_sites:
        site = trace.nodes.get(name)
        if site is None or not site["is_observed"]:
            continue
        source = source_argument(site, trace, arguments, outer)
        if source is None:
            raise ValueError(
                f"Local site '{name}' is observed in this call but latent in the first "
                "call, and its observed values are not the rows of a model argument, so "
                "the heads that read it cannot be given them. Pass the values as an "
                "argument of the model (for example ys=None for unlabelled batches)."
            )
        sources[name] = source
    return sources


def check_supervise(supervise: Mapping[str, float] | None) -> dict[str, float]:
    """Validates the guide's ``supervise`` option: ``{site name: weight}``."""
    if supervise is None:
        return {}
    if not isinstance(supervise, Mapping):
        raise ValueError(
            "supervise must be a mapping {site name: weight}, such as {'y': 0.1}, but got "
            f"{type(supervise).__name__}."
        )
    for name, weight in supervise.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise ValueError(f"supervise[{name!r}] must be a positive number, but got {weight!r}.")
    return {name: float(weight) for name, weight in supervise.items()}


def check_supervised_sites(supervise: Mapping[str, float], local_sites: Iterable[str]) -> None:
    """:raises ValueError: if ``supervise`` names a site that is not a local site
    of the guide (a sometimes-observed site is one: it is latent in some calls)."""
    unknown = sorted(set(supervise) - set(local_sites))
    if unknown:
        raise ValueError(
            f"supervise names {unknown}, which are not local sites of the guide (those "
            f"are: {sorted(local_sites) or 'none'}). It weights the sites that some calls "
            "observe, as y in model(xs, ys=None) with ys given for labelled batches."
        )


def supervised_term(name: str, q: dist.Distribution, value: torch.Tensor, weight: float) -> None:
    """Adds ``weight * log q(value)`` to the ELBO, ``value`` the observed rows of
    the site ``name``. Call it inside the site's plates.

    The term is an auxiliary latent site of the guide, ``<name>_supervised``: a
    point mass whose log-density, the negated term, every ELBO subtracts as the
    guide's. An observed site (``pyro.factor``) would not do: an objective that
    treats the guide's observed sites as its own supervision, as the causal
    effect VAE's ``TraceCausalEffect_ELBO`` adds their log-densities, flipped
    its sign and trained the head away from the observed values, and
    ``TraceMeanField_ELBO`` refuses observed sites that only the guide has."""
    log_q = q.log_prob(value)
    term = dist.Delta(torch.zeros_like(log_q), log_density=-weight * log_q, validate_args=False)
    pyro.sample(f"{name}_supervised", term, infer={"is_auxiliary": True})
