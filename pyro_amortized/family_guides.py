"""The guide classes of the other families: point estimates, full- and
low-rank-covariance Gaussians and normalizing flows. Each chooses a family (and
its options) for the heads of :class:`~pyro_amortized.guides.AutoAmortizedGuide`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyro.infer.autoguide.initialization import init_to_median

from .flow_heads import FLOWS
from .guides import AutoAmortizedGuide


class AutoAmortizedDelta(AutoAmortizedGuide):
    """Amortized point estimates (MAP): each local site's value is a function of
    its data point, each global site a free value, in constrained space as
    Pyro's :class:`~pyro.infer.autoguide.AutoDelta`.

    Usage::

        guide = AutoAmortizedDelta(model)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    :param callable init_loc_fn: per-site initialization; by default
        :func:`~pyro.infer.autoguide.initialization.init_to_median`, as for
        Pyro's ``AutoDelta``: point estimates that all start at zero can sit
        at a saddle (a factor model's codes and loadings, for one).

    Takes the other options of :class:`AutoAmortizedGuide` but ``init_scale``
    (a point estimate has no scale).
    """

    _family = "delta"
    _global_family = "delta"

    def __init__(
        self, model: Callable, *, init_loc_fn: Callable = init_to_median, **options: Any
    ) -> None:
        if "init_scale" in options:
            raise TypeError("AutoAmortizedDelta has no init_scale: point estimates have no scale.")
        super().__init__(model, init_loc_fn=init_loc_fn, **options)


class AutoAmortizedMultivariateNormal(AutoAmortizedGuide):
    """A full-covariance Gaussian per data point over each local site's
    unconstrained event (``loc`` and ``scale_tril`` from the encoder's features),
    for local posteriors with correlated coordinates; global sites as
    :class:`AutoAmortizedGuide`. Its cost grows with the square of a site's event
    size: see :class:`AutoAmortizedLowRankMultivariateNormal` for large events.

    Usage::

        guide = AutoAmortizedMultivariateNormal(model)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    Takes the options of :class:`AutoAmortizedGuide`.
    """

    _family = "multivariate_normal"


class AutoAmortizedLowRankMultivariateNormal(AutoAmortizedGuide):
    """A Gaussian per data point with low-rank-plus-diagonal covariance
    ``F F^T + diag(d)`` over each local site's unconstrained event; global sites
    as :class:`AutoAmortizedGuide`.

    Usage::

        guide = AutoAmortizedLowRankMultivariateNormal(model, rank=2)

    :param int rank: rank of ``F``; by default about the square root of each
        site's event size.

    Takes the other options of :class:`AutoAmortizedGuide`.
    """

    _family = "lowrank_multivariate_normal"

    def __init__(self, model: Callable, *, rank: int | None = None, **options: Any) -> None:
        if rank is not None and not (isinstance(rank, int) and rank > 0):
            raise ValueError(f"rank must be a positive integer or None, but got {rank!r}.")
        self.rank = rank
        self._family_options = {"lowrank_multivariate_normal": {"rank": rank}}
        super().__init__(model, **options)


class AutoAmortizedNormalizingFlow(AutoAmortizedGuide):
    """A conditional normalizing flow per data point over each local site's
    unconstrained event, conditioned on the encoder's features (see
    :class:`~pyro_amortized.flow_heads.FlowHead`): for skewed, heavy-tailed or
    multimodal local posteriors. Global sites as :class:`AutoAmortizedGuide`.

    The flows are Pyro's own conditional transforms, so the family needs no other
    library: rational-quadratic splines (``flow="spline"``, elementwise for a
    one-dimensional event, autoregressive otherwise) or affine autoregressive
    flows (``flow="iaf"``). Samples are reparameterized; quantiles and medians
    are Monte Carlo estimates.

    .. note:: An ELBO is mode-seeking: a flow that *can* put mass on two separated
        modes may still settle on one when trained from a narrow start. Start
        broad (``init_scale`` near the prior's spread) and see the docs' families
        page for what helps.

    Usage::

        guide = AutoAmortizedNormalizingFlow(model, flow="spline", num_flows=1, init_scale=1.0)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    :param str flow: ``"spline"`` or ``"iaf"``.
    :param int num_flows: number of stacked flow layers per site.

    Takes the other options of :class:`AutoAmortizedGuide`.
    """

    _family = "normalizing_flow"

    def __init__(
        self, model: Callable, *, flow: str = "spline", num_flows: int = 2, **options: Any
    ) -> None:
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {', '.join(FLOWS)}, but got {flow!r}.")
        if not (isinstance(num_flows, int) and num_flows > 0):
            raise ValueError(f"num_flows must be a positive integer, but got {num_flows!r}.")
        self.flow = flow
        self.num_flows = num_flows
        self._family_options = {"normalizing_flow": {"flow": flow, "num_flows": num_flows}}
        super().__init__(model, **options)
