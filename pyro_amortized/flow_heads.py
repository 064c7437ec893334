"""Conditional normalizing flows as heads: :class:`FlowHead`, for skewed,
heavy-tailed or multimodal local posteriors, from Pyro's own conditional
transforms."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import transforms as T
from torch import nn
from torch.nn.functional import softplus

from .heads import MIN_SCALE, _CorrelatedHead, _raw_scale

FLOWS = ("spline", "iaf")
"""The conditional flows :class:`FlowHead` stacks."""


def _conditional_flow(
    flow: str,
    size: int,
    num_features: int,
    hidden_dims: list[int],
    count_bins: int,
    bound: float,
) -> nn.Module:
    """One conditional flow layer over a vector of ``size`` given ``num_features``,
    starting near the identity whatever the features: the conditioner's last
    layer starts at zero (uniform spline bins, or a zero shift and unit scale),
    so a fresh flow cannot throw samples far from the affine map's start."""
    if flow == "spline" and size == 1:
        layer = T.conditional_spline(
            1, num_features, hidden_dims, count_bins=count_bins, bound=bound
        )
    elif flow == "spline":
        layer = T.conditional_spline_autoregressive(
            size, num_features, hidden_dims, count_bins=count_bins, bound=bound
        )
    else:
        with warnings.catch_warnings():
            # In one dimension an autoregressive affine map is an affine map of
            # the features, which is what it should be; Pyro warns all the same.
            warnings.filterwarnings("ignore", "ConditionalAutoRegressiveNN input_dim = 1")
            layer = T.conditional_affine_autoregressive(size, num_features, hidden_dims)
    last = layer.nn.layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return layer


class FlowHead(_CorrelatedHead):
    """Conditional normalizing flow per data point over a site's unconstrained
    event: standard Normal noise ``u``, ``num_flows`` conditional flows whose
    context is the encoder's features, then an affine map whose ``loc`` and
    ``softplus`` scale are linear in the features,
    ``z = loc + scale * f_K(... f_1(u; h) ...; h)``.

    ``flow="spline"`` uses Pyro's rational-quadratic neural splines (elementwise
    in one dimension, autoregressive in several), which can put mass on several
    modes; ``flow="iaf"`` uses affine autoregressive flows (an inverse
    autoregressive flow), which in one dimension is an affine map. Between layers
    the coordinates are reversed.

    :param num_features: size of the encoder's features.
    :param shape: per-point batch shape + unconstrained event shape.
    :param event_dim: number of event dimensions at the right of ``shape``.
    :param init_loc: initial location, of shape ``shape``.
    :param init_scale: initial scale of the final affine map.
    :param flow: ``"spline"`` or ``"iaf"``.
    :param num_flows: number of flow layers.
    :param hidden_dims: hidden widths of each layer's conditioner network; by
        default one layer as wide as the features.
    :param count_bins: spline segments per coordinate.
    :param bound: the splines act on ``[-bound, bound]`` and are the identity
        outside it. The noise is standard Normal, so the default 6 leaves about
        ``2e-9`` of it unshaped; with 3, the 0.27% of samples beyond it would
        land at ``loc + scale * u``, far from narrow modes, and cost the ELBO
        dearly (see the docs' normalizing flows).

    Usage::

        head = FlowHead(64, torch.Size([1]), 1, init_loc=torch.zeros(1), init_scale=1.0)
        q = head(torch.randn(10, 64))     # batch (10,), event (1,)
        z = q.rsample()
    """

    def __init__(
        self,
        num_features: int,
        shape: torch.Size,
        event_dim: int,
        *,
        init_loc: torch.Tensor,
        init_scale: float,
        flow: str = "spline",
        num_flows: int = 2,
        hidden_dims: Sequence[int] | None = None,
        count_bins: int = 16,
        bound: float = 6.0,
    ) -> None:
        if not (isinstance(count_bins, int) and count_bins > 0) or not bound > 0:
            raise ValueError(
                "count_bins must be a positive integer and bound a positive number, but got "
                f"count_bins={count_bins!r}, bound={bound!r}."
            )
        super().__init__(num_features, shape, event_dim)
        self.loc = self._linear(init_loc.reshape(self.batch_shape + (self.size,)))
        raw_scale = _raw_scale(init_scale)
        self.scale = self._linear(torch.full(self.batch_shape + (self.size,), raw_scale))
        hidden = list(hidden_dims) if hidden_dims is not None else [num_features]
        self.flow = flow
        self.flows = nn.ModuleList(
            _conditional_flow(flow, self.size, num_features, hidden, count_bins, bound)
            for _ in range(num_flows)
        )
        self.register_buffer("reversal", torch.arange(self.size - 1, -1, -1))

    def forward(self, features: torch.Tensor) -> dist.Distribution:
        loc = self._outputs(self.loc, features, self.size)
        scale = self.widening * (
            softplus(self._outputs(self.scale, features, self.size)) + MIN_SCALE
        )
        context = features.reshape(
            features.shape[:-1] + (1,) * len(self.batch_shape) + features.shape[-1:]
        ).expand(loc.shape[:-1] + features.shape[-1:])
        transforms = []
        for layer, flow in enumerate(self.flows):
            if layer and self.size > 1:
                transforms.append(T.Permute(self.reversal, cache_size=1))
            transforms.append(flow.condition(context))
        # Cached: the log density of a sample reuses the forward pass instead
        # of inverting the splines numerically.
        transforms.append(T.AffineTransform(loc, scale, event_dim=1, cache_size=1))
        noise = dist.Normal(torch.zeros_like(loc), torch.ones_like(scale)).to_event(1)
        return self._reshaped(dist.TransformedDistribution(noise, transforms))
