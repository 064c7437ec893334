"""Amortized logits of discrete local sites: :class:`DiscreteHead`, and the
check that a sampled one has not saturated (:func:`is_saturated`)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from .heads import _LinearHead


class DiscreteHead(_LinearHead):
    """Amortized logits of a discrete local site: Bernoulli, Categorical or
    OneHotCategorical per data point, starting near uniform.

    The logits are a linear map of the features with PyTorch's random initial
    weights and a zero bias, so that they differ from row to row from the
    start. With zero weights (as the continuous heads start, exactly at their
    prior) the logits ignore the data until the first steps, and a
    semi-supervised classifier trained by them ends less accurate: 0.62 against
    0.69 after one epoch of the semi-supervised VAE port (``examples/ports``).

    :param num_features: size of the encoder's features.
    :param shape: per-point batch shape + the site's event shape.
    :param event_dim: the site's event dimensions.
    :param kind: ``"bernoulli"``, ``"categorical"`` or ``"one_hot"``.
    :param num_categories: number of values (categories) of the site.

    Usage::

        head = DiscreteHead(64, torch.Size([]), 0, kind="categorical", num_categories=3)
        q = head(torch.randn(10, 64))     # Categorical, batch (10,)
    """

    def __init__(
        self,
        num_features: int,
        shape: torch.Size,
        event_dim: int,
        *,
        kind: str,
        num_categories: int,
    ) -> None:
        logits_shape = torch.Size(shape) + ((num_categories,) if kind == "categorical" else ())
        super().__init__(num_features, logits_shape, event_dim)
        self.kind = kind
        self.logits = nn.Linear(num_features, logits_shape.numel())
        nn.init.zeros_(self.logits.bias)

    def forward(self, features: torch.Tensor) -> dist.Distribution:
        logits = self._output(self.logits, features)
        if self.kind == "bernoulli":
            return dist.Bernoulli(logits=logits).to_event(self.event_dim)
        if self.kind == "categorical":
            return dist.Categorical(logits=logits).to_event(self.event_dim)
        return dist.OneHotCategorical(logits=logits).to_event(self.event_dim - 1)


SATURATED = 1e-6
"""A discrete head is saturated where it gives one value a probability within
this of 1 for every row: its score-function gradient has then vanished."""

MIN_SATURATED_ROWS = 16
"""Rows a batch needs before :func:`is_saturated` judges it: a few rows may
well all be sure of one value."""


def is_saturated(distribution: dist.Distribution) -> bool:
    """Whether a discrete head proposes one and the same value, with probability
    above ``1 - SATURATED``, for each of at least ``MIN_SATURATED_ROWS`` rows.

    A head there has stopped learning by the score function: the gradient of
    ``log q`` at the value it always samples is ``1 - q``, about zero.

    Usage::

        is_saturated(dist.Categorical(logits=torch.tensor([[50.0, 0.0]]).expand(20, 2)))  # True
    """
    while isinstance(distribution, dist.Independent):
        distribution = distribution.base_dist
    if isinstance(distribution, dist.Bernoulli):
        probs = torch.stack([1 - distribution.probs, distribution.probs], -1)
    else:
        probs = distribution.probs
    probs = probs.detach().reshape(probs.shape[0], -1, probs.shape[-1])
    if probs.shape[0] < MIN_SATURATED_ROWS:
        return False
    top, value = probs.max(-1)
    return bool((top > 1 - SATURATED).all() and (value == value[:1]).all())
