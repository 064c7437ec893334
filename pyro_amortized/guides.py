"""Amortized automatic guides: the guide classes.

A guide reads its model on the first call (:mod:`pyro_amortized.building`);
each call then runs the per-call plan (:mod:`pyro_amortized.plan`): the global
sites from per-site parameters, then per data plate the minibatch rows of its
inputs through an encoder, and a head per local site, whose distribution over
the unconstrained value the site's bijection maps to its support
(:mod:`pyro_amortized.sampling`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoGuide
from pyro.nn import PyroModule
from torch import nn

from .building import BuiltGuide, GuideOptions, build_guide
from .calls import joined_plates
from .encoders import plate_features
from .families import Family
from .params import module_key, register_run
from .passes import SamplingPass, read_proposals
from .plan import run_plan
from .plate_arguments import AmortizeOn
from .structure import DataPlate
from .upstream import Dependencies


class InferenceNetwork(nn.Module):
    """The networks of an amortized guide: an encoder trunk per data plate and a
    head per local site, keyed by (escaped) plate and site names."""

    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict()
        self.heads = nn.ModuleDict()


class AutoAmortizedGuide(AutoGuide):
    """An amortized automatic guide: an inference network for local latent sites.

    On the first call the guide reads the model: its data plates, the local
    latent sites inside them, and the model arguments whose rows feed each
    plate's encoder (:doc:`reading`). Each data plate gets an encoder (default
    :class:`~pyro_amortized.MLPEncoder`) shared by its local sites, and each
    local site a head mapping the features to a diagonal Normal over its
    unconstrained value, per data point; global sites get per-site parameters
    as :class:`~pyro.infer.autoguide.AutoNormal`. Plates are rebuilt from each
    call's arguments, so new data of any size is inferred by one forward pass
    (:meth:`encode`). Parameters are named after the class: two guides of one
    class share names unless ``pyro.settings.set(module_local_params=True)``.

    Usage::

        guide = AutoAmortizedGuide(model)
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
        for x in loader:
            svi.step(x)
        q = guide.encode(x_new)        # {"z": distribution over z for each row}

    :param callable model: a Pyro model with local latent sites in a data plate.
    :param amortize_on: the arguments that feed the encoders: a name, a list of
        names, or ``{plate name: [names]}``; by default every tensor argument
        whose first dimension indexes a data plate's rows.
    :param encoder: an ``nn.Module`` called as ``encoder(*inputs)`` returning
        features ``(batch, num_features)``, or ``{plate name: module}``.
    :param hidden_dims: hidden widths of the default encoder.
    :param callable init_loc_fn: per-site initialization (Pyro's
        :mod:`~pyro.infer.autoguide.initialization`); by default globals start
        as ``init_to_feasible`` and local heads at the centre of the prior
        (:func:`~pyro_amortized.initialization.prior_start`).
    :param float init_scale: initial scale of every Normal; by default 0.1 for
        globals and the prior's spread for local heads, clipped to
        ``[0.001, 1]`` (``[0.001, 0.1]`` for the correlated families).
    :param site_families: family per site, overriding the class's: for a local
        site a name from :data:`~pyro_amortized.families.LOCAL_FAMILIES` or a
        head constructor (:ref:`writing-a-head`), for a global one from
        :data:`~pyro_amortized.families.GLOBAL_FAMILIES`.
    :param dependencies: what each head reads besides the data: ``"model"``
        (default) the sites the posterior couples it with, sampled before it
        in an inverse of the model's order (``q(y | x)`` then ``q(z | x, y)``;
        global sites outside plates read one another too); ``"mean_field"``
        nothing; or ``{site: [names]}`` (:mod:`pyro_amortized.upstream`).
    :param enumerate_discrete: ``"parallel"`` or ``"sequential"`` marks discrete
        local sites for ``TraceEnum_ELBO``, values expanded; ``None`` samples them.
    :param callable create_plates: the model's arguments -> plates to use.
    :param standardize_inputs: standardize each encoder input by its mean and
        spread over the first call's rows, for inputs of large magnitude
        (:class:`~pyro_amortized.encoders.StandardizingEncoder`).
    :param supervise: ``{site: weight}`` for sites observed in some calls:
        where observed, ``weight * log q(y | x)`` is added to the objective
        (:mod:`pyro_amortized.observed`), which is then not the ELBO alone.
    """

    _jacobian = True
    # The families of the sites site_families does not name, and per family
    # name the options a guide class gives its head class (families.py).
    _family: Family = "normal"
    _global_family = "normal"
    _family_options: Mapping[str, Mapping[str, Any]] = {}

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
        super().__init__(model, create_plates=create_plates)
        self._options = GuideOptions.checked(
            amortize_on=amortize_on,
            encoder=encoder,
            hidden_dims=hidden_dims,
            init_loc_fn=init_loc_fn,
            init_scale=init_scale,
            site_families=site_families,
            dependencies=dependencies,
            enumerate_discrete=enumerate_discrete,
            standardize_inputs=standardize_inputs,
            supervise=supervise,
            family=self._family,
            global_family=self._global_family,
            family_options=self._family_options,
            jacobian=self._jacobian,
        )
        self.init_loc_fn = self._options.init_loc_fn  # as Pyro's autoguides
        self.network = InferenceNetwork()
        self.global_params = PyroModule()
        self._built: BuiltGuide | None = None
        self._ran_with_store = False  # whether the network has been in the param store
        self.path_derivative = False  # set inside PathDerivativeELBO's calls

    @property
    def local_sites(self) -> tuple[str, ...]:
        """Names of the local latent sites (available after the first call)."""
        return self._require_built().structure.local_sites

    @property
    def global_sites(self) -> tuple[str, ...]:
        """Names of the global latent sites (available after the first call)."""
        return self._require_built().structure.global_sites

    @property
    def data_plates(self) -> dict[str, tuple[str, ...]]:
        """Data plate name -> the model arguments feeding its encoder (after the first call)."""
        return {n: p.inputs for n, p in self._require_built().structure.data_plates.items()}

    @property
    def upstream_sites(self) -> dict[str, tuple[str, ...]]:
        """Latent site -> the sites it reads besides the data (after the first
        call); sites that read only the data are left out."""
        return dict(self._require_built().calls.upstream)

    def _require_built(self) -> BuiltGuide:
        if self._built is None:
            raise RuntimeError(
                f"{type(self).__name__} has not read its model yet. Call the guide once "
                "with the model's arguments (for example one svi.step(...))."
            )
        return self._built

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        built, modules = build_guide(self.model, self._options, args, kwargs)
        self.network.encoders.update(modules.encoders)
        self.network.heads.update(modules.heads)
        for key, module in modules.global_modules.items():
            setattr(self.global_params, key, module)
        self._built = built
        self.to(built.device)  # the network and the global parameters live with the data

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Samples every latent site the guide covers, given the model's arguments.

        :return: a dict from site name to sampled (constrained) value.
        """
        return self._run(args, kwargs, self._encoded_features)

    def _run(
        self, args: tuple, kwargs: dict, features_of: Callable, every_row: bool = False
    ) -> dict[str, torch.Tensor]:
        """Runs the call's plan (a :class:`~pyro_amortized.passes.SamplingPass`)."""
        if self._built is None:
            self._setup_prototype(*args, **kwargs)
        calls, model = self._built.calls, None if self._model is None else self.model
        with self._data_errors_explained(args, kwargs):
            plan = calls.plan(model, self.init_loc_fn, args, kwargs)
            joined = joined_plates(self.master, self.create_plates, args, kwargs, every_row)
            plates = calls.plates(plan, args, kwargs, joined, every_row)
            weights = calls.weights(plan, model, self.init_loc_fn, args, kwargs, plates)
            parts = calls, self._built.sampler, self._registered_network().heads
            parts += self._modules["global_params"], features_of, (args, kwargs)
            visitor = SamplingPass(
                *parts, plates=plates, weights=weights, path_derivative=self.path_derivative
            )
            run_plan(plan.steps, visitor)
        return visitor.values

    def _registered_network(self) -> InferenceNetwork:
        """The network, registered with Pyro for this run (``params.register_run``)."""
        network, first = self._modules["network"], not self._ran_with_store
        if register_run(self, network, self._modules["global_params"], first=first):
            if first:  # once: each set runs PyroModule's and nn.Module's __setattr__
                self._ran_with_store = True
            return network
        return self.network  # PyroModule's own handling

    def _encoded_features(
        self, plate: DataPlate, args: tuple, kwargs: dict, indices: Any, size: Any
    ) -> torch.Tensor:
        """The encoder's features of the rows ``indices`` (all rows for ``None``)."""
        values = self._require_built().calls.input_values(plate, args, kwargs)
        encoder = self._modules["network"].encoders[module_key(plate.name)]
        return plate_features(encoder, plate, values, indices, size)

    def _data_errors_explained(self, args: tuple, kwargs: dict) -> AbstractContextManager:
        network = self._modules["network"]
        return self._require_built().calls.data_errors_explained(args, kwargs, network)

    def _proposals(
        self, args: tuple, kwargs: dict, features_of: Callable | None = None
    ) -> dict[str, dist.Distribution]:
        """Each site's unconstrained proposal, local ones for every row (``passes``)."""
        parts = self._require_built(), self._modules["network"].heads, self.global_params
        parts += (features_of or self._encoded_features, (args, kwargs))
        model = None if self._model is None else self.model
        with self._data_errors_explained(args, kwargs):
            return read_proposals(*parts, model, self.init_loc_fn)

    def encode(self, *args: Any, **kwargs: Any) -> dict[str, dist.Distribution]:
        """The local posterior of every row of the data in ``args``: one forward
        pass, with no subsampling and nothing registered in Pyro's param store.
        A head that reads other sites (see ``dependencies``) is given their
        medians; for other values, condition the guide and read its trace.

        :return: a dict from local site name to a distribution over its
            constrained value, with batch shape ``(num_rows, *point_batch_shape)``,
            supporting ``sample``, ``rsample`` and ``log_prob``.
        """
        return self._encode(args, kwargs)

    def _encode(
        self, args: tuple, kwargs: dict, features_of: Callable | None = None
    ) -> dict[str, dist.Distribution]:
        built = self._require_built()
        return {
            name: built.sampler.constrained(proposal, built.structure.sites[name])
            for name, proposal in self._proposals(args, kwargs, features_of).items()
            if built.structure.sites[name].data_plate is not None
        }

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The posterior median of every latent site, as :meth:`quantiles`."""
        return {name: value[0] for name, value in self.quantiles([0.5], *args, **kwargs).items()}

    @torch.no_grad()
    def quantiles(
        self, quantiles: Sequence[float] | torch.Tensor, *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """Coordinate-wise posterior quantiles of every latent site (local ones
        for every row of the data in ``args``; global ones their marginals).

        Usage::

            q = guide.quantiles([0.05, 0.5, 0.95], x_new)
            q["z"].shape     # (3, len(x_new), ...)

        :param quantiles: levels between 0 and 1.
        :return: site name -> a tensor with a leading dimension over ``quantiles``.
        """
        sampler, proposals = self._require_built().sampler, self._proposals(args, kwargs)
        return {name: sampler.quantiles(name, q, quantiles) for name, q in proposals.items()}

    def __getstate__(self) -> dict[str, Any]:
        # As AutoGuide, no model (often a local function) nor plans of calls.
        state = PyroModule.__getstate__(self)
        if self._built is not None:
            state["_built"] = self._built.without_plans()
        return {**state, "_model": None, "master": None}


AutoAmortizedNormal = AutoAmortizedGuide
"""The default family under its explicit name: diagonal Normal per local site."""
