"""The latent sites a guide covers, as read from the prototype trace: their
supports, shapes and plates, and the checks that the guide can cover them,
each failing with the fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pyro.distributions import constraints
from pyro.poutine.indep_messenger import CondIndepStackFrame
from torch.distributions import Independent
from torch.distributions.transforms import identity_transform

from .prototype import model_frames, model_value
from .transforms import bijection_to


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
        point (the site's batch shape without the data plate's dimension); for
        a global site, the batch dimensions no plate declares (of size 1 in a
        model that Pyro validates: a batch dimension needs a plate or
        ``.to_event``).
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


def check_guidable(name: str, site: dict, plate: str | None, observed: dict) -> None:
    fn = site["fn"]
    if fn.support.is_discrete:
        with_data = [
            frame.name
            for frame in site["cond_indep_stack"]
            if frame.vectorized and any(frame in s["cond_indep_stack"] for s in observed.values())
        ]
        _check_discrete(name, fn, plate, with_data)
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


def _check_discrete(name: str, fn: Any, plate: str | None, with_data: list[str]) -> None:
    """A discrete latent site the model does not enumerate needs an amortized
    head: only local Bernoulli, Categorical and OneHotCategorical sites have one.
    ``with_data`` are its plates that observed sites sit in too."""
    enumerate_it = (
        "Mark it with infer={'enumerate': 'parallel'} (or decorate the model with "
        "pyro.infer.config_enumerate) and train with TraceEnum_ELBO, which sums it out "
        f"exactly (see Pyro's enumeration tutorial, {ENUMERATION_TUTORIAL})."
    )
    if plate is None:
        if isinstance(fn, Independent):  # Pyro enumerates no event dimensions
            enumerate_it = (
                f"Its {tuple(fn.event_shape)} values form one event (.to_event()), which "
                "Pyro cannot enumerate: if they belong to data points, declare a "
                "pyro.plate over them in place of .to_event(), which makes the site local."
            )
        named = ""
        if with_data:
            named = (
                f" Its plate(s) {with_data} hold observed data but were not read as data "
                "plates (a plate whose dimension is not the observed value's first, beside "
                "a plate of latent sites, is not): if one is over the data points, name it "
                f"with amortize_on={{'{with_data[-1]}': [the data argument]}}."
            )
        raise ValueError(
            f"Latent site '{name}' is discrete and global: it sits outside every data "
            "plate, so no data point's encoder can propose it, and the model does not "
            f"enumerate it. {enumerate_it} Only discrete sites local to a data plate get "
            f"amortized heads.{named}"
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


def latent_site(
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
    batch_shape = model_value(site, outer).shape[: -len(event_shape) or None]
    common = (name, support, event_shape, unconstrained_event_shape, site_frames)
    if plate is None:
        plated = {len(batch_shape) + frame.dim for frame in site_frames}
        undeclared = [size for i, size in enumerate(batch_shape) if i not in plated]
        return LatentSite(*common, point_batch_shape=torch.Size(undeclared))
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
        *common,
        data_plate=plate,
        point_batch_shape=batch_shape[position + 1 :],
        discrete=discrete,
        num_categories=num_categories,
    )
