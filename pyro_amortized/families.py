"""Families of latent sites: which head a site gets, with its options.

A family is a name from :data:`LOCAL_FAMILIES` (a head class of this package,
built with the options a guide class gives it: the low-rank family's rank, the
flow family's kind and depth) or a head constructor of one's own (see
:ref:`writing-a-head`). The guide classes only choose a family and its
options; :func:`build_head` makes the head.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn

from .flow_heads import FlowHead
from .heads import DeltaHead, LowRankMultivariateNormalHead, MultivariateNormalHead, NormalHead

LOCAL_FAMILIES: dict[str, type[nn.Module]] = {
    "normal": NormalHead,
    "multivariate_normal": MultivariateNormalHead,
    "lowrank_multivariate_normal": LowRankMultivariateNormalHead,
    "delta": DeltaHead,
    "normalizing_flow": FlowHead,
}
"""The families a local site can take, by name: the head class of each."""

GLOBAL_FAMILIES = ("normal", "delta", "prior")
"""The families a global site can take, by name: a Normal over its unconstrained
value (:class:`~pyro_amortized.global_heads.GlobalNormal`), a point estimate
(:class:`~pyro_amortized.global_heads.GlobalDelta`) or its prior's family
(:class:`~pyro_amortized.global_heads.GlobalPriorFamily`)."""

CORRELATED_FAMILIES = frozenset({"multivariate_normal", "lowrank_multivariate_normal"})
"""The families with a full or low-rank covariance (see
:data:`~pyro_amortized.initialization.CORRELATED_MAX_INIT_SCALE`)."""


Family = str | Callable[..., nn.Module]
"""A local site's family: a name from :data:`LOCAL_FAMILIES`, or a head
constructor (see :ref:`writing-a-head`)."""


def build_head(
    family: Family,
    site: str,
    num_features: int,
    init_loc: torch.Tensor,
    init_scale: float,
    event_dim: int,
    options: Mapping[str, Mapping[str, Any]],
) -> nn.Module:
    """The head of a local site.

    :param family: the site's family.
    :param site: the site's name, for errors.
    :param num_features: the size of the head's input.
    :param init_loc: the initial unconstrained location, of the head's shape.
    :param init_scale: the initial scale (unused by point estimates).
    :param event_dim: the unconstrained event dimensions at the right of the shape.
    :param options: per family name, the options its head class takes.
    :raises ValueError: if a head of one's own does not return a module mapping
        features to a distribution of the site's shape.
    """
    if callable(family):
        head = family(
            num_features, init_loc.shape, event_dim, init_loc=init_loc, init_scale=init_scale
        )
        check_user_head(head, site, num_features, init_loc.shape, event_dim)
        return head
    kwargs: dict[str, Any] = {"init_loc": init_loc, **options.get(family, {})}
    if family != "delta":
        kwargs["init_scale"] = init_scale
    return LOCAL_FAMILIES[family](num_features, init_loc.shape, event_dim, **kwargs)


def check_site_families(site_families: Mapping[str, Family] | None) -> dict[str, Family]:
    site_families = dict(site_families or {})
    for site, family in site_families.items():
        if not callable(family) and family not in {*LOCAL_FAMILIES, *GLOBAL_FAMILIES}:
            raise ValueError(
                f"site_families gives site '{site}' the family {family!r}. A local "
                f"site's family is one of {', '.join(LOCAL_FAMILIES)}, or a head: a "
                "callable (num_features, shape, event_dim, *, init_loc, init_scale) -> "
                f"nn.Module; a global site's is one of {', '.join(GLOBAL_FAMILIES)}."
            )
    return site_families


def check_user_head(
    head: Any, name: str, num_features: int, shape: torch.Size, event_dim: int
) -> None:
    """A user's head must be a module mapping features to a distribution over the
    site's unconstrained values, one per data point."""
    if not isinstance(head, nn.Module):
        raise ValueError(
            f"The head constructor of site '{name}' returned {type(head).__name__}; it "
            "must return an nn.Module (so its parameters train and save with the guide)."
        )
    with torch.no_grad():
        distribution = head(torch.zeros(2, num_features))
    split = len(shape) - event_dim
    expected = ((2, *shape[:split]), tuple(shape[split:]))
    got = None
    if isinstance(distribution, dist.Distribution):
        got = (tuple(distribution.batch_shape), tuple(distribution.event_shape))
    if got != expected:
        raise ValueError(
            f"The head of site '{name}' must map features of shape (batch, {num_features}) "
            f"to a distribution over the unconstrained values with batch_shape "
            f"{_shape_text(('batch', *shape[:split]))} and event_shape "
            f"{_shape_text(shape[split:])}, but on a batch of 2 it returned "
            f"{type(distribution).__name__}"
            + ("" if got is None else f" with batch_shape {got[0]} and event_shape {got[1]}")
            + "."
        )


def _shape_text(shape: Sequence) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
