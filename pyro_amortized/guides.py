"""Amortized automatic guides.

Data flow of one call: the model's arguments -> (cached) model structure -> per
data plate: the minibatch rows of its inputs -> encoder trunk -> one head per
local site -> distribution over unconstrained values -> bijection to the support
-> ``pyro.sample(site, Delta(value, log_density))``. Global sites get per-site
parameters, as Pyro's AutoNormal / AutoDelta.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import init_to_feasible, init_to_median
from pyro.nn import PyroModule
from pyro.ops.tensor_utils import periodic_repeat
from torch import nn
from torch.distributions import ComposeTransform, Transform, TransformedDistribution
from torch.distributions.transforms import IndependentTransform

from .arguments import ArgumentLocation, bind_arguments, call_key, locate_argument
from .discrete_heads import SATURATED, DiscreteHead, is_saturated
from .encoders import MLPEncoder, StandardizingEncoder, encode_features, plate_inputs
from .families import (
    CORRELATED_FAMILIES,
    Family,
    build_head,
    check_family_sites,
    check_site_families,
)
from .flow_heads import FLOWS
from .global_heads import GlobalDelta, GlobalNormal, GlobalPriorFamily
from .initialization import CORRELATED_MAX_INIT_SCALE, INIT_SCALE_RANGE, prior_start
from .latent_sites import LatentSite
from .observed import (
    arguments_defaulting_to_none,
    check_supervise,
    check_supervised_sites,
    observed_sources,
    sometimes_observed,
    supervised_term,
)
from .params import reclaim, register
from .plan import UNKNOWN, CallPlan
from .prototype import model_value, trace_prototype
from .quantiles import discrete_quantiles, unconstrained_quantiles
from .structure import (
    AmortizeOn,
    DataPlate,
    ModelStructure,
    read_model,
    warn_if_nothing_to_amortize,
)
from .transforms import bijection_to, guard_saturation, saturation_bound
from .upstream import (
    Dependencies,
    check_dependencies,
    coupled_sites,
    head_input,
    per_point,
    upstream_sites,
)
from .weights import Weight, vary, weighted, weights_on_rows

_RESERVED = frozenset(dir(PyroModule)) | frozenset(dir(nn.ModuleDict))


def _module_key(name: str) -> str:
    """An ``nn.Module`` attribute name for a site or plate name: injective, and
    never one of the containers' own attributes (``"items"``, ``"training"``)."""
    key = name.replace("%", "%25").replace(".", "%2E") or "%00"
    return "%" + key if key in _RESERVED else key


_SIZING_ROWS = 8
"""Rows the encoder runs on when the guide is built, to learn its feature size."""

_MAX_CACHED_CALLS = 64
"""Argument signatures whose data plate sizes a guide remembers."""

GLOBAL_INIT_SCALE = 0.1
"""Initial scale of global sites without ``init_scale``, as Pyro's ``AutoNormal``."""


def _data_device(structure: ModelStructure, arguments: dict[str, Any]) -> torch.device:
    """The device of the data: the first tensor among the data plates' inputs."""
    for plate in structure.data_plates.values():
        for name in plate.inputs:
            if isinstance(arguments.get(name), torch.Tensor):
                return arguments[name].device
    return torch.device("cpu")


LARGE_INPUT = 100.0
"""Magnitude of an input to the default encoder above which the guide warns
that it should be standardized."""


def _warn_if_large(plate: DataPlate, inputs: tuple[torch.Tensor, ...]) -> None:
    largest = max(float(value.abs().max()) if value.numel() else 0.0 for value in inputs)
    if largest > LARGE_INPUT:
        warnings.warn(
            f"The encoder of plate '{plate.name}' reads inputs as large as {largest:,.0f}. "
            "An encoder fed unscaled inputs can throw its outputs far in its first steps "
            "(NaN losses, diverged parameters). Pass standardize_inputs=True, or an "
            "encoder= that scales them (for example log1p for counts).",
            stacklevel=4,
        )


def _check_rows(plate: DataPlate, first: Any) -> None:
    if isinstance(first, torch.Tensor) and first.dim() > 0 and first.shape[0] == 0:
        raise ValueError(
            f"Argument '{plate.inputs[0]}' of plate '{plate.name}' has no rows in this "
            "call; pass at least one data point."
        )


def _given_rows(value: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
    """An observed local site's minibatch rows."""
    if indices is not None and value.shape[0] != indices.shape[0]:
        value = value.index_select(0, indices.to(value.device))
    return value


def _is_identity(transform: Transform) -> bool:
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, ComposeTransform) and not transform.parts


class InferenceNetwork(nn.Module):
    """The networks of an amortized guide: an encoder trunk per data plate and a
    head per local site, keyed by (escaped) plate and site names."""

    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict()
        self.heads = nn.ModuleDict()


class AutoAmortizedGuide(AutoGuide):
    """An amortized automatic guide: an inference network for local latent sites.

    On the first call the guide reads the model (see :mod:`pyro_amortized.structure`):
    the data plates, the local latent sites inside them, and the model arguments
    whose rows feed each plate's encoder. Each data plate gets one encoder trunk
    (default :class:`~pyro_amortized.MLPEncoder`) shared by its local sites, and
    each local site a head mapping the encoder's features to a diagonal Normal over
    its unconstrained value, per data point. Global latent sites get per-site
    Normal parameters as :class:`~pyro.infer.autoguide.AutoNormal`. The parameter
    count does not grow with the number of data points, and new data is inferred
    by one forward pass (:meth:`encode`).

    Plates are rebuilt from each call's arguments: a guide trained on minibatches
    runs on a short last batch or on new data of any size. With a subsampled data
    plate (``pyro.plate("data", N, subsample_size=B)``) and the full data passed,
    the guide encodes exactly the minibatch rows the model sees.

    Constrained supports are reached through a bijection with the correct
    log-det-Jacobian (:func:`~pyro_amortized.transforms.bijection_to`). Sites the
    model enumerates are left to ``TraceEnum_ELBO``; discrete local sites it does
    not enumerate (Bernoulli, Categorical, OneHotCategorical) get amortized logits.

    .. note:: Parameters are named after the guide's class, so two guides of the
        same class share param-store names unless
        ``pyro.settings.set(module_local_params=True)`` is set (or
        ``pyro.clear_param_store()`` is called between them).

    Usage::

        guide = AutoAmortizedGuide(model)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        for x in loader:
            svi.step(x)
        q = guide.encode(x_new)        # {"z": distribution over z for each row}

    :param callable model: a Pyro model with local latent sites in a data plate.
    :param amortize_on: the model arguments that feed the encoders: a name, a
        list of names (used for every data plate), or ``{plate name: [names]}``.
        By default every tensor argument whose first dimension indexes a data
        plate's rows.
    :param encoder: an ``nn.Module`` called as ``encoder(*inputs)`` returning
        features of shape ``(batch, num_features)``, or a mapping from data plate
        name to such a module. By default ``MLPEncoder(hidden_dims)`` per plate.
    :param hidden_dims: hidden widths of the default encoder.
    :param callable init_loc_fn: per-site initialization (see
        :mod:`pyro.infer.autoguide.initialization`); local heads start at the
        mean over data points of the initial unconstrained value. By default
        global sites start as ``init_to_feasible`` and local heads at the centre
        of the site's prior in unconstrained space
        (:func:`~pyro_amortized.initialization.prior_start`).
    :param float init_scale: initial scale of every Normal. By default global
        sites start at 0.1, as Pyro's ``AutoNormal``, and local heads at the
        spread of the site's prior in unconstrained space, clipped to
        ``[0.001, 1]`` (``[0.001, 0.1]`` for the correlated families): the KL
        term of the ELBO starts near zero.
    :param site_families: family per site, by name, overriding the class's
        family. A local site's: a name from
        :data:`~pyro_amortized.families.LOCAL_FAMILIES`, for example
        ``{"z": "multivariate_normal"}``, or a head constructor of one's own
        (see :ref:`writing-a-head`). A global site's: a name from
        :data:`~pyro_amortized.families.GLOBAL_FAMILIES`, for example
        ``{"topic_words": "prior"}`` for a Dirichlet posterior.
    :param dependencies: which sites each local site's head reads besides the
        data: ``"model"`` (default) reads the global sites and the local sites
        of its data plate sampled before it (in an inverse of the model's
        order: discrete sites first, children before parents) that the
        model's posterior couples with it
        (:func:`pyro.infer.inspect.get_dependencies`), the pattern ``q(y | x)``
        then ``q(z | x, y)``; ``"mean_field"`` reads only the data; a mapping
        ``{site: [names]}`` names them (sites it leaves out read only the data).
    :param enumerate_discrete: ``"parallel"`` or ``"sequential"`` to mark the
        guide's discrete local sites for enumeration by ``TraceEnum_ELBO``;
        ``None`` (default) samples them, with a score-function baseline.
    :param callable create_plates: optional function of the model's arguments
        returning plates to use instead of the ones the guide builds.
    :param standardize_inputs: standardize each encoder input feature with its
        mean and standard deviation over the rows of the guide's first call
        (every row the arguments hold, the whole data set with a subsampled
        plate) before the encoder reads it (see
        :class:`~pyro_amortized.encoders.StandardizingEncoder`). Recommended for
        inputs of large magnitude, such as raw counts or unnormalized pixels.
    :param supervise: ``{site: weight}`` for sites observed in some calls and
        latent in others (``y`` of ``model(xs, ys=None)``): where a call
        observes the site, ``weight * log q(y | x)`` of the observed values is
        added to the objective, so the site's head also learns from labelled
        batches (see :mod:`pyro_amortized.observed`). The reported loss is then
        no longer the negative ELBO alone.
    """

    _jacobian = True

    def __init__(
        self,
        model: Callable,
        *,
        amortize_on: AmortizeOn = None,
        encoder: nn.Module | Mapping[str, nn.Module] | None = None,
        hidden_dims: Sequence[int] = (256,),
        init_loc_fn: Callable | None = None,
        init_scale: float | None = None,
        site_families: Mapping[str, Family] | None = None,
        dependencies: Dependencies = "model",
        enumerate_discrete: str | None = None,
        create_plates: Callable | None = None,
        standardize_inputs: bool = False,
        supervise: Mapping[str, float] | None = None,
    ) -> None:
        self.supervise = check_supervise(supervise)
        if not isinstance(standardize_inputs, bool):
            raise ValueError(
                f"standardize_inputs must be True or False, but got {standardize_inputs!r}."
            )
        self.standardize_inputs = standardize_inputs
        if enumerate_discrete not in (None, "parallel", "sequential"):
            raise ValueError(
                "enumerate_discrete must be None, 'parallel' or 'sequential', but got "
                f"{enumerate_discrete!r}."
            )
        self.enumerate_discrete = enumerate_discrete
        if init_scale is not None and (
            not isinstance(init_scale, (int, float)) or not init_scale > 0
        ):
            raise ValueError(
                f"init_scale must be a positive number or None, but got {init_scale!r}."
            )
        self._init_scale = None if init_scale is None else float(init_scale)
        self._check_options(amortize_on, encoder, hidden_dims, init_loc_fn)
        self.site_families = check_site_families(site_families)
        self.dependencies = check_dependencies(dependencies)
        super().__init__(model, create_plates=create_plates)
        self.amortize_on = amortize_on
        self.hidden_dims = tuple(hidden_dims)
        # Without init_loc_fn, local heads start at their priors (initialization.py).
        self._locals_from_prior = init_loc_fn is None
        self.init_loc_fn = init_to_feasible if init_loc_fn is None else init_loc_fn
        self.network = InferenceNetwork()
        self.global_params = PyroModule()
        # In a tuple: not a submodule of the guide (it joins self.network once
        # the model is read), so its parameters are registered once.
        self._user_encoder = (encoder,)
        self._structure: ModelStructure | None = None
        self._locations: dict[str, ArgumentLocation] = {}
        self._transforms: dict[str, Transform] = {}
        # Where each bijection saturates: point estimates are kept inside.
        self._saturation_bounds: dict[str, float | None] = {}
        self._plans: dict[tuple, CallPlan] = {}  # per call signature (plan.py)
        # The model's scales and masks on guided sites, per call signature; read
        # on every call instead where they are tensors (see weights.py).
        self._weights_vary = False
        # Sites observed in some calls: the argument holding each one's values,
        # and those the guide has trained (sampled with gradients) latent.
        self._sources: dict[str, str] = {}
        self._trained_latent: set[str] = set()
        self._upstream: dict[str, tuple[str, ...]] = {}
        self._generated_warned: set[str] = set()  # plates warned about once
        self._saturation_warned: set[str] = set()  # discrete sites warned about once
        self._ran_with_store = False  # whether the network has been in the param store

    @staticmethod
    def _check_options(
        amortize_on: AmortizeOn, encoder: Any, hidden_dims: Any, init_loc_fn: Any
    ) -> None:
        if amortize_on is not None and not isinstance(amortize_on, (str, Sequence, Mapping)):
            raise ValueError(
                "amortize_on must be an argument name, a list of names or a mapping "
                f"{{plate name: [names]}}, but got {type(amortize_on).__name__}."
            )
        if encoder is not None and not isinstance(encoder, (nn.Module, Mapping)):
            raise ValueError(
                "encoder must be an nn.Module or a mapping {plate name: nn.Module}, "
                f"but got {type(encoder).__name__}."
            )
        if isinstance(encoder, Mapping) and not all(
            isinstance(module, nn.Module) for module in encoder.values()
        ):
            raise ValueError("Every value of the encoder mapping must be an nn.Module.")
        MLPEncoder(hidden_dims)  # validates hidden_dims
        if init_loc_fn is not None and not callable(init_loc_fn):
            raise ValueError(f"init_loc_fn must be callable or None, but got {init_loc_fn!r}.")

    # ----------------------------------------------------------------- structure

    @property
    def local_sites(self) -> tuple[str, ...]:
        """Names of the local latent sites (available after the first call)."""
        return self._require_structure().local_sites

    @property
    def global_sites(self) -> tuple[str, ...]:
        """Names of the global latent sites (available after the first call)."""
        return self._require_structure().global_sites

    @property
    def data_plates(self) -> dict[str, tuple[str, ...]]:
        """Data plate name -> the model arguments feeding its encoder (after the first call)."""
        structure = self._require_structure()
        return {name: plate.inputs for name, plate in structure.data_plates.items()}

    @property
    def upstream_sites(self) -> dict[str, tuple[str, ...]]:
        """Local site -> the sites its head reads besides the data (after the
        first call); sites that read only the data are left out."""
        self._require_structure()
        return dict(self._upstream)

    @property
    def _network(self) -> InferenceNetwork:
        """The inference network, without registering its parameters with Pyro
        (``self.network`` registers them, once per run of the guide)."""
        return self._modules["network"]

    def _reclaim_global_params(self) -> None:
        """After its first run, a guide puts its own global parameters back in
        the param store where another guide's stand (see
        :meth:`_registered_network`); Pyro's modules then read them as they are."""
        if self._ran_with_store and not pyro.settings.get("module_local_params"):
            reclaim(self._modules["global_params"], self._pyro_get_fullname("global_params"))

    def _registered_network(self) -> InferenceNetwork:
        """The inference network, its parameters registered with Pyro for this run
        (see :func:`~pyro_amortized.params.register`)."""
        if not self._pyro_context.active or pyro.settings.get("module_local_params"):
            return self.network  # PyroModule's own handling
        register(self._network, self._pyro_get_fullname("network"), adopt=not self._ran_with_store)
        self._ran_with_store = True
        return self._network

    def _require_structure(self) -> ModelStructure:
        if self._structure is None:
            raise RuntimeError(
                f"{type(self).__name__} has not read its model yet. Call the guide once "
                "with the model's arguments (for example one svi.step(...))."
            )
        return self._structure

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        trace, outer = trace_prototype(self.model, self.init_loc_fn, args, kwargs)
        arguments = bind_arguments(self.model, args, kwargs)
        optional = arguments_defaulting_to_none(self.model)
        self._sources = sometimes_observed(trace, outer, arguments, optional)
        structure = read_model(trace, outer, arguments, self.amortize_on, self._sources)
        warn_if_nothing_to_amortize(structure)
        check_supervised_sites(self.supervise, structure.local_sites)
        self._check_encoder_plates(structure)
        check_family_sites(self.site_families, structure)
        device = _data_device(structure, arguments)
        coupled = {}
        if self.dependencies == "model":
            # Read with the sometimes-observed sites latent, as they are coupled.
            unobserved = args, kwargs
            for argument in set(self._sources.values()):
                unobserved = locate_argument(self.model, argument).replace(*unobserved, None)
            coupled = coupled_sites(self.model, *unobserved)
        self._upstream = upstream_sites(structure, self.dependencies, coupled)
        self._transforms = {
            name: bijection_to(site.support)
            for name, site in structure.sites.items()
            if site.discrete is None
        }
        self._saturation_bounds = {
            name: saturation_bound(
                transform,
                structure.sites[name].unconstrained_event_shape,
                trace.nodes[name]["value"].dtype,
            )
            for name, transform in self._transforms.items()
            if not _is_identity(transform)
        }
        for plate in structure.data_plates.values():
            names = plate.inputs + ((plate.indices,) if plate.indices else ())
            self._locations.update({name: locate_argument(self.model, name) for name in names})
            self._build_plate(plate, structure, trace, outer, arguments, device)
        for name in structure.global_sites:
            site = structure.sites[name]
            module = self._global_module(site, trace.nodes[name], outer)
            setattr(self.global_params, _module_key(name), module)
        self._structure = structure
        self.to(device)  # the network and the global parameters live with the data
        self._locations.update({name: locate_argument(self.model, name) for name in optional})
        key = call_key(args, kwargs)
        self._remember_call(key, trace, outer, args, kwargs)
        self._weights_vary = vary(self._plans[key].weights)

    def _check_encoder_plates(self, structure: ModelStructure) -> None:
        (encoder,) = self._user_encoder
        if isinstance(encoder, Mapping):
            unknown = set(encoder) - set(structure.data_plates)
            if unknown:
                raise ValueError(
                    f"encoder names plates {sorted(unknown)}, which are not data plates "
                    f"of the model. Its data plates are: {sorted(structure.data_plates)}."
                )

    def _plate_encoder(self, plate: str) -> nn.Module:
        (encoder,) = self._user_encoder
        if isinstance(encoder, Mapping):
            encoder = encoder.get(plate)
        # Explicit None: an empty nn.Sequential is a valid encoder but is falsy.
        return MLPEncoder(self.hidden_dims) if encoder is None else encoder

    def _init_unconstrained(self, site: LatentSite, node: dict, outer: frozenset) -> torch.Tensor:
        value = model_value(node, outer).detach()
        return self._transforms[site.name].inv(value).detach()

    def _build_plate(
        self,
        plate: DataPlate,
        structure: ModelStructure,
        trace: Any,
        outer: frozenset,
        arguments: dict[str, Any],
        device: torch.device,
    ) -> None:
        encoder = self._plate_encoder(plate.name)
        values = plate.rows_first([arguments[name] for name in plate.inputs])
        inputs = plate_inputs(plate, values, None, None)
        if self.standardize_inputs:
            encoder = StandardizingEncoder(encoder, inputs)
        elif isinstance(encoder, MLPEncoder):
            _warn_if_large(plate, inputs)
        encoder = encoder.to(device)
        with torch.no_grad():  # a few rows tell the feature size (and set lazy layers up)
            features = encode_features(encoder, tuple(value[:_SIZING_ROWS] for value in inputs))
        self.network.encoders[_module_key(plate.name)] = encoder
        for name in plate.sites:
            site = structure.sites[name]
            upstream = {
                u: self._unconstrain(u, model_value(trace.nodes[u], outer))
                for u in self._upstream.get(name, ())
            }
            pieces = self._upstream_pieces(structure, plate, name, upstream)
            num_features = features.shape[-1] + sum(piece.shape[-1] for piece in pieces)
            if site.discrete is not None:
                head = DiscreteHead(
                    num_features,
                    site.point_batch_shape + site.event_shape,
                    site.event_dim,
                    kind=site.discrete,
                    num_categories=site.num_categories,
                )
            else:
                loc, scale = self._local_start(site, trace, outer)
                head = self._local_head(num_features, loc, scale, site)
            self.network.heads[_module_key(name)] = head

    # ------------------------------------------------------------------ families

    _family = "normal"
    """The family of local sites that ``site_families`` does not name."""

    _family_options: Mapping[str, Mapping[str, Any]] = {}
    """Per family name, the options a guide class gives its head class."""

    def _local_start(
        self, site: LatentSite, trace: Any, outer: frozenset
    ) -> tuple[torch.Tensor, float]:
        """A local head's initial location and scale: from the site's prior
        where ``init_loc_fn`` or ``init_scale`` is not given."""
        node = trace.nodes[site.name]
        if self._locals_from_prior or self._init_scale is None:
            family = self.site_families.get(site.name, self._family)
            correlated = isinstance(family, str) and family in CORRELATED_FAMILIES
            max_scale = CORRELATED_MAX_INIT_SCALE if correlated else INIT_SCALE_RANGE[1]
            loc, scale = prior_start(node, outer, self._transforms[site.name], max_scale)
        if not self._locals_from_prior:
            loc = self._init_unconstrained(site, node, outer).mean(0)
        return loc, scale if self._init_scale is None else self._init_scale

    def _local_head(
        self, num_features: int, init_loc: torch.Tensor, init_scale: float, site: LatentSite
    ) -> nn.Module:
        family = self.site_families.get(site.name, self._family)
        event_dim = len(site.unconstrained_event_shape)
        return build_head(
            family, site.name, num_features, init_loc, init_scale, event_dim, self._family_options
        )

    _global_family = "normal"
    """The family of global sites that ``site_families`` does not name."""

    def _global_module(self, site: LatentSite, node: dict, outer: frozenset) -> PyroModule:
        family = self.site_families.get(site.name, self._global_family)
        if family == "prior":
            full_size = functools.partial(self._full_size, site=site)
            return GlobalPriorFamily(node["fn"], self._transforms[site.name], full_size)
        event_dim = len(site.unconstrained_event_shape)
        init_loc = self._full_size(self._init_unconstrained(site, node, outer), event_dim, site)
        if family == "delta":
            return GlobalDelta(init_loc, event_dim)
        scale = GLOBAL_INIT_SCALE if self._init_scale is None else self._init_scale
        return GlobalNormal(init_loc, scale, event_dim)

    def _constrained(self, unconstrained: dist.Distribution, site: LatentSite) -> dist.Distribution:
        if site.discrete is not None:
            return unconstrained
        transform = self._transforms[site.name]
        if isinstance(unconstrained, dist.Delta):
            return dist.Delta(transform(unconstrained.v), event_dim=site.event_dim)
        if _is_identity(transform):
            return unconstrained  # real support: the head's distribution as it is
        return TransformedDistribution(unconstrained, [transform])

    @staticmethod
    def _full_size(init: torch.Tensor, event_dim: int, site: LatentSite) -> torch.Tensor:
        """Repeats an initial value (with ``event_dim`` event dimensions) along
        subsampled plates to their full size."""
        for frame in site.frames:
            full_size = frame.full_size or frame.size
            if full_size != frame.size:
                init = periodic_repeat(init, full_size, frame.dim - event_dim).contiguous()
        return init

    # ------------------------------------------------------------------- calling

    def _create_plates(self, *args: Any, **kwargs: Any) -> dict[str, pyro.plate]:
        return self._plates(args, kwargs, every_row=False)

    def _plates(self, args: tuple, kwargs: dict, every_row: bool) -> dict[str, pyro.plate]:
        """The plates of a call; with ``every_row`` the data plates take every row."""
        structure = self._require_structure()
        plates = self._given_plates(args, kwargs, every_row)
        for plate in structure.data_plates.values():
            _check_rows(plate, self._input_values(plate, args, kwargs)[0])
        plan = self._call_plan(args, kwargs)
        generated = self._generated_plates(plan, args, kwargs)
        sizes = plan.plate_sizes
        if every_row:
            sizes = {
                name: (size, size if name in structure.data_plates else subsample_size)
                for name, (size, subsample_size) in sizes.items()
            }
        for name, frame in structure.frames.items():
            if name in plates:
                continue
            if name in generated:  # no guide site in it this call
                continue
            if name in structure.unsized:  # sized by broadcasting, as in the model
                plates[name] = pyro.plate(name, dim=frame.dim)
            elif name in structure.data_plates:
                plate = structure.data_plates[name]
                plates[name] = self._data_plate(plate, sizes.get(name), args, kwargs)
            else:
                full_size, size = sizes.get(name, (frame.full_size or frame.size, frame.size))
                plates[name] = pyro.plate(name, full_size, dim=frame.dim, subsample_size=size)
        return plates

    def _generated_plates(self, plan: CallPlan, args: tuple, kwargs: dict) -> frozenset[str]:
        """The data plates in which the model observes nothing in this call and
        an encoder input is ``None`` (the targets ``ys`` of ``model(xs,
        ys=None)``, when predicting): the model generates their data, so the
        posterior of their local sites is their prior, and the guide leaves
        those sites to the model. (No head reads a site of another data plate,
        see :mod:`pyro_amortized.upstream`.)"""
        observing = plan.observing
        # A guide loaded from disk has no model to run; most calls observe data
        # in every data plate.
        if observing is None or observing.issuperset(self._structure.data_plates):
            return frozenset()
        missing = {
            name: [i for i in plate.inputs if self._locations[i].fetch(args, kwargs) is None]
            for name, plate in self._structure.data_plates.items()
            if name not in observing
        }
        generated = frozenset(name for name, inputs in missing.items() if inputs)
        for name in generated - self._generated_warned:
            self._generated_warned.add(name)
            plate = self._structure.data_plates[name]
            warnings.warn(
                f"The model observes nothing in plate '{name}' in this call "
                f"({', '.join(missing[name])} "
                f"None), so the guide leaves its local sites {list(plate.sites)} to the "
                "model's prior, their posterior given no data, as for new data points. For "
                "a posterior predictive of observed rows, give the guide their values: "
                f"Predictive(model, guide=functools.partial(guide, {missing[name][0]}=...)).",
                stacklevel=5,
            )
        return generated

    def _given_plates(self, args: tuple, kwargs: dict, every_row: bool) -> dict[str, pyro.plate]:
        """Plates the guide joins rather than makes: those of the
        :class:`~pyro.infer.autoguide.AutoGuideList` it is a part of (the list
        made them and recorded their subsample sites before running its parts;
        not with ``every_row``), or those ``create_plates`` returns."""
        if self.master is not None:
            return {} if every_row else dict(self.master().plates)
        if self.create_plates is None:
            return {}
        created = self.create_plates(*args, **kwargs)
        created = [created] if isinstance(created, pyro.plate) else list(created)
        return {plate.name: plate for plate in created}

    def _call_plan(self, args: tuple, kwargs: dict) -> CallPlan:
        """The plan of this call's argument signature (see :mod:`pyro_amortized.plan`).

        The first call of each signature runs the model once (cached), so the
        guide's plates have the sizes and subsample sizes of the model's,
        whatever the model computes them from.
        """
        key = call_key(args, kwargs)
        if key not in self._plans:
            if self._model is None:  # a guide loaded from disk has no model
                self._plans[key] = UNKNOWN
            else:
                trace, outer = trace_prototype(self.model, self.init_loc_fn, args, kwargs)
                self._remember_call(key, trace, outer, args, kwargs)
        return self._plans[key]

    def _remember_call(
        self, key: tuple, trace: Any, outer: frozenset, args: tuple, kwargs: dict
    ) -> None:
        """Keeps the plan of a call signature, and learns which argument holds a
        local site this call observes."""
        if len(self._plans) >= _MAX_CACHED_CALLS:
            self._plans.clear()
        self._plans[key] = CallPlan.read(trace, outer, self._structure)
        unknown = [name for name in self._structure.local_sites if name not in self._sources]
        learned = observed_sources(self.model, trace, outer, args, kwargs, unknown)
        for argument in learned.values():
            self._locations.setdefault(argument, locate_argument(self.model, argument))
        self._sources.update(learned)

    def _given(self, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        """The local sites this call observes, with the arguments' values."""
        given = {}
        for name, argument in self._sources.items():
            location = self._locations.get(argument) or locate_argument(self.model, argument)
            value = location.fetch(args, kwargs)
            if value is not None:
                given[name] = value
        return given

    def _check_trained_latent(self, name: str, training: bool) -> None:
        """Notes a sometimes-observed site sampled latent with gradients; warns
        once where one is proposed latent without ever having been trained so."""
        if training:
            self._trained_latent.add(name)
            return
        if name in self._trained_latent:
            return
        self._trained_latent.add(name)  # warn once
        argument = self._sources[name]
        warnings.warn(
            f"Site '{name}' is latent in this call ({argument}=None), but the guide has "
            f"only trained on calls that observe it: its head q({name} | ...) is "
            "untrained, and so are the heads that read it. For a posterior predictive of "
            f"'{name}', give the guide the observed values and leave them out of the "
            f"model's call: Predictive(model, guide=functools.partial(guide, "
            f"{argument}=...))(...) with no {argument}. To infer '{name}' where it is "
            f"missing, also train on calls with {argument}=None.",
            UserWarning,
            stacklevel=4,
        )

    def _supervise(
        self,
        site: LatentSite,
        head: nn.Module,
        rows: torch.Tensor,
        features: torch.Tensor,
        plate: DataPlate,
        read: dict[str, torch.Tensor],
        plates: dict[str, pyro.plate],
    ) -> None:
        """The ``supervise`` term of an observed site: its head's log density of
        the observed rows, weighted."""
        q = self._constrained(head(self._head_input(features, plate, site.name, read)), site)
        with self._inner_plates(site, plates):
            supervised_term(site.name, q, rows, self.supervise[site.name])

    def _call_weights(
        self, args: tuple, kwargs: dict, plates: dict[str, pyro.plate]
    ) -> dict[str, Weight]:
        """The model's scale and mask of each guided site in this call (see
        :mod:`pyro_amortized.weights`)."""
        if self._weights_vary and self._model is not None:
            return weights_on_rows(
                self.model, self.init_loc_fn, args, kwargs, plates, self._structure.sites
            )
        plan = self._plans.get(call_key(args, kwargs))
        return {} if plan is None else plan.weights

    def _input_values(self, plate: DataPlate, args: tuple, kwargs: dict) -> list[Any]:
        """The plate's inputs in this call, data points along their first axis."""
        return plate.rows_first(
            [self._locations[name].fetch(args, kwargs) for name in plate.inputs]
        )

    def _data_plate(
        self, plate: DataPlate, sizes: tuple[int, int] | None, args: tuple, kwargs: dict
    ) -> pyro.plate:
        first = self._input_values(plate, args, kwargs)[0]
        if not isinstance(first, torch.Tensor) or first.dim() == 0:
            plate_inputs(plate, [first], None, None)  # raises the helpful error
        if sizes is None:  # the model could not be run: use the first call's layout
            rows = first.shape[0]
            if plate.presubsampled:
                sizes = (plate.full_size, rows)
            else:
                sizes = (
                    rows,
                    rows if plate.subsample_size is None else min(plate.subsample_size, rows),
                )
        size, subsample_size = sizes
        if plate.indices is not None:  # the model's own minibatch
            subsample = self._locations[plate.indices].fetch(args, kwargs)
            return pyro.plate(plate.name, size, subsample=subsample, dim=plate.dim)
        return pyro.plate(
            plate.name, size, subsample_size=subsample_size, dim=plate.dim, device=first.device
        )

    @contextmanager
    def _data_errors_explained(self, args: tuple, kwargs: dict) -> Iterator[None]:
        """Where torch fails inside the guide, says first whether the data is on
        another device or of another type than the guide (the usual cause),
        instead of checking that on every call."""
        try:
            yield
        except (RuntimeError, NotImplementedError):
            self._check_data_plates(args, kwargs)
            raise

    def _check_data_plates(self, args: tuple, kwargs: dict) -> None:
        """Device and floating-point type of the data plates' inputs: checked when
        torch fails inside the guide, to say why in the user's terms."""
        parameter = next(self._network.parameters(), None)
        if parameter is None:
            return
        for plate in self._require_structure().data_plates.values():
            self._check_data(plate, self._input_values(plate, args, kwargs), parameter)

    @staticmethod
    def _check_data(plate: DataPlate, values: list[Any], parameter: torch.Tensor) -> None:
        for name, value in zip(plate.inputs, values, strict=True):
            if not isinstance(value, torch.Tensor):
                continue  # plate_inputs says what is wrong
            if value.device != parameter.device:
                raise ValueError(
                    f"Argument '{name}' of plate '{plate.name}' is on {value.device}, but the "
                    f"guide is on {parameter.device}. Move the data with "
                    f".to('{parameter.device}'), or the guide with guide.to('{value.device}')."
                )
            if value.is_floating_point() and value.dtype != parameter.dtype:
                raise ValueError(
                    f"Argument '{name}' of plate '{plate.name}' is {value.dtype}, but the "
                    f"guide's parameters are {parameter.dtype}. Convert the data (for example "
                    f"{name}.to({parameter.dtype})), or the guide (guide.to({value.dtype}))."
                )

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Samples every latent site the guide covers, given the model's arguments.

        :return: a dict from site name to sampled (constrained) value.
        """
        return self._run(args, kwargs, self._encoded_features)

    def _encoded_features(
        self, plate: DataPlate, args: tuple, kwargs: dict, indices: Any, size: Any
    ) -> torch.Tensor:
        """The encoder's features of the rows ``indices`` (all rows for ``None``)."""
        inputs = plate_inputs(plate, self._input_values(plate, args, kwargs), indices, size)
        return encode_features(self._network.encoders[_module_key(plate.name)], inputs)

    def _run(
        self, args: tuple, kwargs: dict, features_of: Callable, every_row: bool = False
    ) -> dict[str, torch.Tensor]:
        """Samples the guide with the features that ``features_of(plate, args,
        kwargs, indices, size)`` gives each data plate; with ``every_row`` the
        data plates take every row (no subsampling), and the model replays that."""
        if self._structure is None:
            self._setup_prototype(*args, **kwargs)
        with self._data_errors_explained(args, kwargs):
            return self._sample_sites(args, kwargs, features_of, every_row)

    def _sample_sites(
        self, args: tuple, kwargs: dict, features_of: Callable, every_row: bool
    ) -> dict[str, torch.Tensor]:
        plates = self._plates(args, kwargs, every_row)
        weights = self._call_weights(args, kwargs, plates)
        self._reclaim_global_params()
        result, read = self._sample_globals(plates, weights)
        heads = self._registered_network().heads
        given = self._given(args, kwargs)
        for plate in self._structure.data_plates.values():
            if plate.name not in plates:  # the model generates its data (see _plates)
                continue
            with plates[plate.name] as indices:
                features = features_of(plate, args, kwargs, indices, plates[plate.name].size)
                for name in plate.sites:
                    site = self._structure.sites[name]
                    if name in given:  # observed in this call: read, not sampled
                        rows = _given_rows(given[name], indices)
                        if name in self.supervise and torch.is_grad_enabled():
                            head = heads[_module_key(name)]
                            self._supervise(site, head, rows, features, plate, read, plates)
                        read[name] = self._unconstrain(name, rows)
                        continue
                    if name in self._sources:
                        self._check_trained_latent(name, training=torch.is_grad_enabled())
                    head = heads[_module_key(name)]
                    with self._inner_plates(site, plates), weighted(weights.get(name)):
                        inputs = self._head_input(features, plate, name, read)
                        result[name], read[name] = self._sample(site, head(inputs))
        return result

    def _head_input(
        self, features: torch.Tensor, plate: DataPlate, name: str, values: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """The encoder's features and the values of the sites the head reads:
        ``values`` are in unconstrained space (logs of scales, not the scales)."""
        return head_input(features, self._upstream_pieces(self._structure, plate, name, values))

    def _upstream_pieces(
        self, structure: ModelStructure, plate: DataPlate, name: str, values: dict
    ) -> list[torch.Tensor]:
        return [
            per_point(values[u], structure.sites[u], plate.dim)
            for u in self._upstream.get(name, ())
        ]

    def _unconstrain(self, name: str, value: torch.Tensor) -> torch.Tensor:
        transform = self._transforms.get(name)  # none for a discrete site
        return value if transform is None else transform.inv(value)

    def _sample_globals(
        self, plates: dict[str, pyro.plate], weights: dict[str, Weight]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The global sites' values, and the values the heads read (see :meth:`_sample`)."""
        result, read = {}, {}
        if not self._structure.global_sites:
            return result, read
        global_params = self.global_params
        for name in self._structure.global_sites:
            site = self._structure.sites[name]
            with self._inner_plates(site, plates), weighted(weights.get(name)):
                result[name], read[name] = self._sample(
                    site, getattr(global_params, _module_key(name))()
                )
        return result, read

    @staticmethod
    def _inner_plates(site: LatentSite, plates: dict[str, pyro.plate]) -> ExitStack:
        """Enters the site's plates other than its data plate (entered by the caller)."""
        stack = ExitStack()
        for frame in site.frames:
            if frame.name != site.data_plate:
                stack.enter_context(plates[frame.name])
        return stack

    def _sample(
        self, site: LatentSite, unconstrained: dist.Distribution
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples a site: its value, and the value heads downstream read, the
        unconstrained sample itself (never ``transform.inv(transform(latent))``,
        which overflows for exp-like bijections), or the unconstrained image of
        a value the guide was conditioned or replayed on."""
        if site.discrete is not None:
            infer = self._discrete_infer(site)
            if "enumerate" not in infer and torch.is_grad_enabled():
                self._warn_if_saturated(site.name, unconstrained)
            value = pyro.sample(site.name, unconstrained, infer=infer)
            return value, value
        transform = self._transforms[site.name]
        if _is_identity(transform):  # real support: no auxiliary site, no Jacobian
            value = pyro.sample(site.name, unconstrained)
            return value, value
        if isinstance(unconstrained, dist.Delta):  # a MAP estimate: no density to carry
            return self._point_estimate(site, unconstrained.v, transform)
        latent = pyro.sample(
            site.name + "_unconstrained", unconstrained, infer={"is_auxiliary": True}
        )
        value = transform(latent)
        log_density = 0.0
        if self._jacobian and poutine.get_mask() is not False:
            log_density = transform.inv.log_abs_det_jacobian(value, latent)
            log_density = sum_rightmost(
                log_density, log_density.dim() - value.dim() + site.event_dim
            )
        delta = dist.Delta(value, log_density=log_density, event_dim=site.event_dim)
        return self._sample_value(site, delta, value, latent, transform)

    def _point_estimate(
        self, site: LatentSite, latent: torch.Tensor, transform: Transform
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A point estimate, in constrained space as Pyro's ``AutoDelta``: the
        value where the bijection still responds (see
        :func:`~pyro_amortized.transforms.saturation_bound`), mapped to the support."""
        bound = self._saturation_bounds.get(site.name)
        latent = latent if bound is None else guard_saturation(latent, bound)
        value = transform(latent)
        delta = dist.Delta(value, event_dim=site.event_dim)
        return self._sample_value(site, delta, value, latent, transform)

    @staticmethod
    def _sample_value(
        site: LatentSite,
        delta: dist.Delta,
        value: torch.Tensor,
        latent: torch.Tensor,
        transform: Transform,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sampled = pyro.sample(site.name, delta)
        # The Delta returns a view of ``value``, unless conditioned or replayed.
        own = sampled.shape == value.shape and sampled.data_ptr() == value.data_ptr()
        return sampled, latent if own else transform.inv(sampled)

    def _warn_if_saturated(self, name: str, distribution: dist.Distribution) -> None:
        if name in self._saturation_warned or not is_saturated(distribution):
            return
        self._saturation_warned.add(name)
        warnings.warn(
            f"The head of the discrete site {name!r} proposes the same value with "
            f"probability above 1 - {SATURATED:g} for every row of this batch: its "
            "score-function gradient has vanished, so it cannot move off that value. "
            "Unless the posterior is that sure, train with a smaller learning rate, or "
            "sum the site out (enumerate_discrete='parallel' with TraceEnum_ELBO).",
            stacklevel=4,
        )

    def _discrete_infer(self, site: LatentSite) -> dict:
        """How ELBOs treat a discrete local site: enumerated by TraceEnum_ELBO when
        ``enumerate_discrete`` is set and the site is one categorical choice (Pyro
        does not enumerate cartesian products of event dimensions), else a
        score-function term with Pyro's decaying-average baseline."""
        single_choice = site.event_dim == (1 if site.discrete == "one_hot" else 0)
        if self.enumerate_discrete is not None and single_choice:
            return {"enumerate": self.enumerate_discrete}
        return {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}

    # ----------------------------------------------------------------- test time

    def _local_unconstrained(
        self, args: tuple, kwargs: dict, features_of: Callable | None = None
    ) -> dict[str, dist.Distribution]:
        """Each local site's unconstrained distribution for every row of the data;
        a head that reads other sites is given their medians."""
        features_of = features_of or self._encoded_features
        structure = self._require_structure()
        read = {u for inputs in self._upstream.values() for u in inputs}
        result = {}
        with self._data_errors_explained(args, kwargs):
            values = {
                name: self._unconstrained_median(name, distribution)
                for name, distribution in self._global_unconstrained(read).items()
            }
            given = self._given(args, kwargs)
            for plate in structure.data_plates.values():
                features = features_of(plate, args, kwargs, None, None)
                for name in plate.sites:
                    head = self._network.heads[_module_key(name)]
                    result[name] = head(self._head_input(features, plate, name, values))
                    if name in given:
                        values[name] = self._unconstrain(name, given[name])
                        continue
                    if name in self._sources:
                        self._check_trained_latent(name, training=False)
                    if name in read:
                        values[name] = self._unconstrained_median(name, result[name])
        return result

    def encode(self, *args: Any, **kwargs: Any) -> dict[str, dist.Distribution]:
        """The local posterior of every row of the data in ``args``: one forward pass.

        Takes the model's arguments. The data plates are not subsampled, and no
        parameter is registered in Pyro's param store. A head that reads other
        sites (see ``dependencies``) is given their medians; for other values,
        condition the guide (``poutine.condition``) and read its trace.

        :return: a dict from local site name to a distribution over its
            constrained value, with batch shape ``(num_rows, *point_batch_shape)``,
            supporting ``sample``, ``rsample`` and ``log_prob``.
        """
        return self._encode(args, kwargs)

    def _encode(
        self, args: tuple, kwargs: dict, features_of: Callable | None = None
    ) -> dict[str, dist.Distribution]:
        unconstrained = self._local_unconstrained(args, kwargs, features_of)
        return {
            name: self._constrained(value, self._structure.sites[name])
            for name, value in unconstrained.items()
        }

    def _global_unconstrained(
        self, names: Iterable[str] | None = None
    ) -> dict[str, dist.Distribution]:
        """The unconstrained distribution of each global site (of ``names`` only,
        if given)."""
        structure = self._require_structure()
        wanted = structure.global_sites if names is None else set(names)
        # forward() rather than __call__: outside a Pyro context, so the param
        # store is neither read nor written.
        return {
            name: getattr(self.global_params, _module_key(name)).forward()
            for name in structure.global_sites
            if name in wanted
        }

    def _all_unconstrained(self, args: tuple, kwargs: dict) -> dict[str, dist.Distribution]:
        with self._data_errors_explained(args, kwargs):
            result = self._global_unconstrained()
            result.update(self._local_unconstrained(args, kwargs))
        return result

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The posterior median of every latent site; local sites for every row of
        the data in ``args`` (of any size).

        :return: a dict from site name to its median (the bijection of the
            unconstrained median).
        """
        return {
            name: self._site_quantiles(name, unconstrained, [0.5])[0]
            for name, unconstrained in self._all_unconstrained(args, kwargs).items()
        }

    @torch.no_grad()
    def quantiles(
        self, quantiles: Sequence[float] | torch.Tensor, *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """Coordinate-wise posterior quantiles of every latent site; local sites for
        every row of the data in ``args``.

        Usage::

            q = guide.quantiles([0.05, 0.5, 0.95], x_new)
            q["z"].shape     # (3, len(x_new), ...)

        :param quantiles: levels between 0 and 1.
        :return: a dict from site name to a tensor with a leading dimension over
            ``quantiles``.
        """
        return {
            name: self._site_quantiles(name, unconstrained, quantiles)
            for name, unconstrained in self._all_unconstrained(args, kwargs).items()
        }

    def _unconstrained_median(self, name: str, distribution: dist.Distribution) -> torch.Tensor:
        """A site's median as a head reads it: in unconstrained space."""
        if name not in self._transforms:  # a discrete site
            return discrete_quantiles(distribution, [0.5])[0]
        return unconstrained_quantiles(distribution, [0.5])[0]

    def _site_quantiles(
        self, name: str, distribution: dist.Distribution, quantiles: Sequence[float] | torch.Tensor
    ) -> torch.Tensor:
        if name not in self._transforms:  # a discrete site
            return discrete_quantiles(distribution, quantiles)
        return self._transforms[name](unconstrained_quantiles(distribution, quantiles))

    # --------------------------------------------------------------- persistence

    def __getstate__(self) -> dict[str, Any]:
        # PyroModule drops the param store's weakrefs from the parameters; like
        # AutoGuide, the model (often a local function) is not pickled, but
        # the live guide keeps it.
        state = PyroModule.__getstate__(self)
        return {**state, "_model": None, "master": None, "_plans": {}}


class AutoAmortizedDelta(AutoAmortizedGuide):
    """Amortized point estimates (MAP): each local site's value is a function of
    its data point, each global site a free value, in constrained space as
    Pyro's :class:`~pyro.infer.autoguide.AutoDelta`.

    Usage::

        guide = AutoAmortizedDelta(model)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())

    :param callable model: a Pyro model with local latent sites in a data plate.
    :param amortize_on: the model arguments feeding the encoders (see
        :class:`AutoAmortizedGuide`).
    :param encoder: an encoder module or a mapping from data plate to module.
    :param hidden_dims: hidden widths of the default encoder.
    :param callable init_loc_fn: per-site initialization; by default
        :func:`~pyro.infer.autoguide.initialization.init_to_median`, as for
        Pyro's ``AutoDelta``: point estimates that all start at zero can sit
        at a saddle (a factor model's codes and loadings, for one).
    :param site_families: family per site (see :class:`AutoAmortizedGuide`).
    :param enumerate_discrete: enumeration of discrete local sites (see
        :class:`AutoAmortizedGuide`).
    :param callable create_plates: optional function returning plates to use.
    :param standardize_inputs: standardize the encoder's inputs (see
        :class:`AutoAmortizedGuide`).
    :param supervise: weights of observed values' log densities (see
        :class:`AutoAmortizedGuide`).
    """

    _family = "delta"
    _global_family = "delta"

    def __init__(
        self,
        model: Callable,
        *,
        amortize_on: AmortizeOn = None,
        encoder: nn.Module | Mapping[str, nn.Module] | None = None,
        hidden_dims: Sequence[int] = (256,),
        init_loc_fn: Callable = init_to_median,
        site_families: Mapping[str, Family] | None = None,
        dependencies: Dependencies = "model",
        enumerate_discrete: str | None = None,
        create_plates: Callable | None = None,
        standardize_inputs: bool = False,
        supervise: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(
            model,
            amortize_on=amortize_on,
            encoder=encoder,
            hidden_dims=hidden_dims,
            init_loc_fn=init_loc_fn,
            site_families=site_families,
            dependencies=dependencies,
            enumerate_discrete=enumerate_discrete,
            create_plates=create_plates,
            standardize_inputs=standardize_inputs,
            supervise=supervise,
        )


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

    def __init__(
        self,
        model: Callable,
        *,
        rank: int | None = None,
        amortize_on: AmortizeOn = None,
        encoder: nn.Module | Mapping[str, nn.Module] | None = None,
        hidden_dims: Sequence[int] = (256,),
        init_loc_fn: Callable | None = None,
        init_scale: float | None = None,
        site_families: Mapping[str, Family] | None = None,
        dependencies: Dependencies = "model",
        enumerate_discrete: str | None = None,
        create_plates: Callable | None = None,
        standardize_inputs: bool = False,
        supervise: Mapping[str, float] | None = None,
    ) -> None:
        if rank is not None and not (isinstance(rank, int) and rank > 0):
            raise ValueError(f"rank must be a positive integer or None, but got {rank!r}.")
        self.rank = rank
        self._family_options = {"lowrank_multivariate_normal": {"rank": rank}}
        super().__init__(
            model,
            amortize_on=amortize_on,
            encoder=encoder,
            hidden_dims=hidden_dims,
            init_loc_fn=init_loc_fn,
            init_scale=init_scale,
            site_families=site_families,
            dependencies=dependencies,
            enumerate_discrete=enumerate_discrete,
            create_plates=create_plates,
            standardize_inputs=standardize_inputs,
            supervise=supervise,
        )


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
        self,
        model: Callable,
        *,
        flow: str = "spline",
        num_flows: int = 2,
        amortize_on: AmortizeOn = None,
        encoder: nn.Module | Mapping[str, nn.Module] | None = None,
        hidden_dims: Sequence[int] = (256,),
        init_loc_fn: Callable | None = None,
        init_scale: float | None = None,
        site_families: Mapping[str, Family] | None = None,
        dependencies: Dependencies = "model",
        enumerate_discrete: str | None = None,
        create_plates: Callable | None = None,
        standardize_inputs: bool = False,
        supervise: Mapping[str, float] | None = None,
    ) -> None:
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {', '.join(FLOWS)}, but got {flow!r}.")
        if not (isinstance(num_flows, int) and num_flows > 0):
            raise ValueError(f"num_flows must be a positive integer, but got {num_flows!r}.")
        self.flow = flow
        self.num_flows = num_flows
        self._family_options = {"normalizing_flow": {"flow": flow, "num_flows": num_flows}}
        super().__init__(
            model,
            amortize_on=amortize_on,
            encoder=encoder,
            hidden_dims=hidden_dims,
            init_loc_fn=init_loc_fn,
            init_scale=init_scale,
            site_families=site_families,
            dependencies=dependencies,
            enumerate_discrete=enumerate_discrete,
            create_plates=create_plates,
            standardize_inputs=standardize_inputs,
            supervise=supervise,
        )


AutoAmortizedNormal = AutoAmortizedGuide
"""The default family under its explicit name: diagonal Normal per local site."""
