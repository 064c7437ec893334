"""The two ways of running a call's plan (see :func:`~pyro_amortized.plan.run_plan`).

:class:`SamplingPass` samples the guide's sites inside the call's plates, as
``SVI``, ``Predictive`` and the diagnostics run it. :class:`PosteriorPass` reads
each site's proposal for every row at once, outside Pyro's handlers, with heads
reading the medians of the sites upstream: ``encode``, ``median`` and
``quantiles``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from .building import BuiltGuide
from .calls import CallReader, given_rows
from .encoders import all_finite
from .heads import GAUSSIAN_HEADS
from .latent_sites import LatentSite
from .observed import supervised_term
from .path_derivative import PathDerivative, detached_call
from .plan import PlateStep, SiteStep, run_plan, site_steps
from .sampling import SiteSampler
from .upstream import global_reads, head_input, per_point
from .weights import Weight, weighted

FeaturesOf = Callable[..., torch.Tensor]
"""``features_of(plate, args, kwargs, indices, size)``: the features of a data
plate's rows ``indices`` (every row for ``None``)."""


def standardized(value: torch.Tensor, proposal: dist.Distribution) -> torch.Tensor:
    """A global site's unconstrained value as heads read it: its proposal's
    noise, ``(value - loc) / scale``, where the proposal is a Normal.

    A head's coefficient on the noise is then the covariance of the local and
    the global site in the guide, as in a Cholesky factor, whatever the global's
    scale: the raw value of a global known to within 0.03 varies too little for
    its coefficient to learn (on the radon model the guide then missed the
    intercepts' dependence on the floor effect, and the floor effect's
    posterior was 2.6 times too narrow)."""
    base = proposal
    while isinstance(base, dist.Independent):
        base = base.base_dist
    if isinstance(base, dist.Normal):
        return (value - base.loc) / base.scale
    return value


def inner_plates(
    site: LatentSite, plates: Mapping[str, pyro.plate]
) -> AbstractContextManager[None]:
    """Enters the site's plates other than its data plate (entered by the
    caller); a null context where there are none, as for most local sites."""
    inner = [plates[frame.name] for frame in site.frames if frame.name != site.data_plate]
    if not inner:
        return nullcontext()
    stack = ExitStack()
    for plate in inner:
        stack.enter_context(plate)
    return stack


class _Pass:
    """What both passes share: the call, the guide's parts, the values read."""

    def __init__(
        self,
        calls: CallReader,
        sampler: SiteSampler,
        heads: nn.ModuleDict,
        global_params: nn.Module,
        features_of: FeaturesOf,
        call: tuple[tuple, dict],
    ) -> None:
        self.calls = calls
        self.sampler = sampler
        self.heads = heads
        self.global_params = global_params
        self.features_of = features_of
        self.args, self.kwargs = call
        self.given = calls.given(*call)
        self.read: dict[str, torch.Tensor] = {}  # unconstrained, as heads read them

    def _global_reads(self, step: SiteStep) -> torch.Tensor:
        """What a global site reads: the noise of the earlier global sites."""
        sites = self.calls.structure.sites
        return global_reads([self.read[u] for u in step.reads], [sites[u] for u in step.reads])

    def _proposal(
        self,
        step: SiteStep,
        plate: PlateStep,
        features: torch.Tensor,
        *,
        path_derivative: bool = False,
    ) -> dist.Distribution:
        """The head's distribution for the plate's rows, given what it reads;
        with ``path_derivative``, a Gaussian head's is scored with the head's and
        the encoder's parameters detached (:mod:`pyro_amortized.path_derivative`)."""
        sites = self.calls.structure.sites
        time = self.calls.time_steps.get(step.name)
        if time is None:
            reads = list(step.reads)
        else:  # a step of a time chain: its step's features, what it reads, its neighbour last
            num_steps = self.calls.sequence_steps[plate.plate.name]
            features = features.reshape(features.shape[:-1] + (num_steps, -1))
            features = features[..., time.position, :]
            reads = [u for u in step.reads if u != time.neighbour] + [time.neighbour]
        pieces = [
            features.new_zeros(features.shape[:-1] + (time.width,))
            if u is None
            else per_point(self.read[u], sites[u], plate.plate.dim)
            for u in reads
        ]
        head = self.heads[step.key]
        proposal = head(head_input(features, pieces))
        if path_derivative and isinstance(head, GAUSSIAN_HEADS):
            density = detached_call(head, head_input(features.detach(), pieces))
            return PathDerivative(proposal, density)
        return proposal


def _global_proposal(step: SiteStep, module: PyroModule, reads: torch.Tensor | None) -> Any:
    """A global site's proposal; where its parameters have diverged, an error
    that says so (Pyro's validation of the proposal's NaN parameters would not).

    Inside the guide's call, whose Pyro context the module shares, the module's
    ``forward`` is called directly: its ``__call__`` would enter the context
    again and look up two of Pyro's settings, a tenth of the call of a guide
    of only global sites."""
    propose = module.forward if module._pyro_context.active else module
    try:
        return propose(reads) if reads is not None else propose()
    except ValueError as error:
        if all(all_finite(parameter) for parameter in module.parameters()):
            raise
        raise ValueError(
            f"The parameters of global site '{step.name}' are NaN or infinite: they have "
            "diverged (look for a huge or NaN loss in earlier steps). Scale the data the "
            "model reads, start the site nearer its posterior (init_loc_fn=), or lower the "
            "learning rate (Adam moves each parameter by about the learning rate a step: "
            "try 0.01 to 0.001)."
        ) from error


class SamplingPass(_Pass):
    """Samples every site the guide covers in the call's ``plates``, each with
    the model's scale and mask (``weights``); :attr:`values` holds the samples.

    :param plates: the call's plates.
    :param weights: the model's weights of the guided sites in this call.
    :param path_derivative: score the Gaussian local sites by their path
        derivative (:mod:`pyro_amortized.path_derivative`).
    """

    def __init__(
        self,
        *parts: Any,
        plates: dict[str, pyro.plate],
        weights: Mapping[str, Weight],
        path_derivative: bool = False,
    ) -> None:
        super().__init__(*parts)
        self.plates = plates
        self.weights = weights
        self.path_derivative = path_derivative
        self.values: dict[str, torch.Tensor] = {}
        self.indices: torch.Tensor | None = None

    def global_site(self, step: SiteStep) -> None:
        with inner_plates(step.site, self.plates), weighted(self.weights.get(step.name)):
            # Inside the plates: the parameters are subsampled along them.
            module = getattr(self.global_params, step.key)
            reads = self._global_reads(step) if step.reads else None
            proposal = _global_proposal(step, module, reads)
            self.values[step.name], read = self.sampler.sample(step.site, proposal)
            self.read[step.name] = standardized(read, proposal)

    @contextmanager
    def data_plate(self, step: PlateStep) -> Iterator[torch.Tensor]:
        plate = self.plates[step.plate.name]
        with plate as indices:
            self.indices = indices
            yield self.features_of(step.plate, self.args, self.kwargs, indices, plate.size)

    def observed_site(self, step: SiteStep, plate: PlateStep, features: torch.Tensor) -> None:
        rows = given_rows(self.given[step.name], self.indices)
        if step.supervise is not None and torch.is_grad_enabled():
            self.calls.check_trained_latent(step.name, training=True)  # its head learns here
            proposal = self.sampler.constrained(self._proposal(step, plate, features), step.site)
            with inner_plates(step.site, self.plates):
                supervised_term(step.name, proposal, rows, step.supervise)
        self.read[step.name] = self.sampler.unconstrain(step.name, rows)

    def local_site(self, step: SiteStep, plate: PlateStep, features: torch.Tensor) -> None:
        if step.name in self.calls.sources:
            self.calls.check_trained_latent(step.name, training=torch.is_grad_enabled())
        with inner_plates(step.site, self.plates), weighted(self.weights.get(step.name)):
            proposal = self._proposal(step, plate, features, path_derivative=self.path_derivative)
            self.values[step.name], self.read[step.name] = self.sampler.sample(step.site, proposal)


class PosteriorPass(_Pass):
    """Each site's proposal over its unconstrained value, for every row of the
    data, outside Pyro's handlers (the param store is neither read nor
    written); a head that reads other sites is given their medians.
    :attr:`proposals` holds them, the local sites' also where observed.

    :param reads: the sites some head reads (their medians are computed).
    """

    def __init__(self, *parts: Any, reads: frozenset[str]) -> None:
        super().__init__(*parts)
        self.reads = reads
        self.proposals: dict[str, dist.Distribution] = {}

    def global_site(self, step: SiteStep) -> None:
        # Outside a Pyro context (not __call__); the sites it reads integrated out.
        module = getattr(self.global_params, step.key)
        proposal = module.marginal() if step.reads else module.forward()
        self._propose(step, proposal)
        if step.name in self.read:
            self.read[step.name] = standardized(self.read[step.name], proposal)

    @contextmanager
    def data_plate(self, step: PlateStep) -> Iterator[torch.Tensor]:
        size = self.calls.known_size(step.plate.name, self.args, self.kwargs)
        yield self.features_of(step.plate, self.args, self.kwargs, None, size)

    def observed_site(self, step: SiteStep, plate: PlateStep, features: torch.Tensor) -> None:
        self.proposals[step.name] = self._proposal(step, plate, features)
        self.read[step.name] = self.sampler.unconstrain(step.name, self.given[step.name])

    def local_site(self, step: SiteStep, plate: PlateStep, features: torch.Tensor) -> None:
        if step.name in self.calls.sources:
            self.calls.check_trained_latent(step.name, training=False)
        self._propose(step, self._proposal(step, plate, features))

    def _propose(self, step: SiteStep, proposal: dist.Distribution) -> None:
        self.proposals[step.name] = proposal
        if step.name in self.reads:
            self.read[step.name] = self.sampler.median_read(step.name, proposal)


def read_proposals(
    built: BuiltGuide,
    heads: nn.ModuleDict,
    global_params: nn.Module,
    features_of: FeaturesOf,
    call: tuple[tuple, dict],
    model: Callable | None = None,
    init_loc_fn: Callable | None = None,
) -> dict[str, dist.Distribution]:
    """Each site's proposal over its unconstrained value for a call, local sites
    for every row of its data (a :class:`PosteriorPass` of the call's steps).
    Where a group plate's number of groups is the model's to say, the ``model``
    is run once on the call (as the first call of each signature is in training)."""
    calls = built.calls
    grouped = any(plate.group_index for plate in built.structure.data_plates.values())
    if grouped and model is not None and init_loc_fn is not None:
        calls.plan(model, init_loc_fn, *call)
    reads = frozenset(u for inputs in calls.upstream.values() for u in inputs)
    parts = calls, built.sampler, heads, global_params, features_of, call
    visitor = PosteriorPass(*parts, reads=reads)
    run_plan(site_steps(built.structure, calls.upstream, calls.supervise, visitor.given), visitor)
    return visitor.proposals
