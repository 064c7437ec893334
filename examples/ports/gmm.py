"""The Gaussian mixture of Pyro's tutorial ``tutorial/source/gmm.ipynb``, with
its assignments summed out (``"gmm"``) or sampled by the guide (``"gmm_sampled"``).

Kept: ``model(data)`` with ``K = 2`` components: the globals ``weights``
(``Dirichlet(0.5)``), ``scale`` (``LogNormal(0, 2)``) and, in the plate
``"components"``, ``locs`` (``Normal(0, 10)``); in the sized plate ``"data"``
the local ``assignment`` (``Categorical``) and the observed ``obs``. The
enumerated model is that model under ``config_enumerate``, as the tutorial
decorates it.

* ``"gmm"``: the tutorial's MAP training. The guide is ``AutoDelta`` over the
  model with ``weights``, ``locs`` and ``scale`` exposed
  (``poutine.block(expose=...)``), started by the tutorial's ``init_loc_fn``
  (uniform weights, half the data's variance, locations at random data
  points), the best of many seeds by initial loss; ``Adam(lr=0.1, betas=(0.8,
  0.99))`` and ``TraceEnum_ELBO(max_plate_nesting=1)``. The metric is the
  ELBO of held-out points, assignments summed out, per point.
* ``"gmm_sampled"``: the tutorial's ``full_guide`` (global MAP estimates, kept
  fixed by ``poutine.block(hide_types=["param"])``, and a free
  ``assignment_probs`` per data point), without ``config_enumerate``: the
  guide samples the assignments and the model, not enumerated, scores them.
  As in the tutorial the hand-written guide first learns the global MAP
  estimates as in ``"gmm"`` (``steps`` steps), then the local probabilities
  with ``Adam(lr=0.2, betas=(0.8, 0.99))`` (``steps`` steps, timed). Its local
  parameters exist for the training points only, so the metric is the ELBO of
  the training points, per point.

Data: the tutorial's five points (``0, 1, 10, 11, 12``) give way to the petal
lengths of scikit-learn's iris flowers (150 values, two well-separated groups:
setosa and the others), split into training and held-out points.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta
from pyro.infer.autoguide.initialization import init_to_value
from torch.distributions import constraints

from pyro_amortized import AutoAmortizedDelta, LocalRWS

from ._shared import check_guide_kind, check_objective, result, timed_steps

K = 2
"""Components of the mixture."""

DEFAULT_BATCH_SIZE = None
"""The tutorial trains on all the data at every step."""

DEFAULT_HIDDEN = 32
"""Width of the amortized guide's hidden layer (the hand-written guides have no network)."""

GLOBALS = ["weights", "locs", "scale"]


def model(data: torch.Tensor) -> None:
    """A mixture of ``K`` Normals with one shared scale."""
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", K):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


enumerated_model = config_enumerate(model)
"""The model as the tutorial trains it: ``assignment`` summed out in parallel."""


def make_init_loc_fn(data: torch.Tensor) -> Callable[[dict], torch.Tensor]:
    """The tutorial's initialization of the globals, from the data."""

    def init_loc_fn(site: dict) -> torch.Tensor:
        if site["name"] == "weights":
            return torch.ones(K) / K
        if site["name"] == "scale":
            return (data.var() / 2).sqrt()
        if site["name"] == "locs":
            return data[torch.multinomial(torch.ones(len(data)) / len(data), K)]
        raise ValueError(site["name"])

    return init_loc_fn


def make_global_guide(data: torch.Tensor) -> AutoDelta:
    """The tutorial's ``global_guide``: MAP estimates of the globals."""
    return AutoDelta(
        poutine.block(enumerated_model, expose=GLOBALS), init_loc_fn=make_init_loc_fn(data)
    )


def make_full_guide(global_guide: AutoDelta) -> Callable[[torch.Tensor], None]:
    """The tutorial's ``full_guide`` without ``config_enumerate``: the trained
    globals, fixed, and a sampled assignment with free probabilities per point."""

    def full_guide(data: torch.Tensor) -> None:
        with poutine.block(hide_types=["param"]):
            global_guide(data)
        with pyro.plate("data", len(data)):
            assignment_probs = pyro.param(
                "assignment_probs",
                torch.ones(len(data), K) / K,
                constraint=constraints.simplex,
            )
            pyro.sample("assignment", dist.Categorical(assignment_probs))

    return full_guide


def make_data(*, small: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Petal lengths of the iris flowers (cm): ``(train, held_out)``.

    :param small: 30 training and 10 held-out points instead of 120 and 30.
    :param seed: seed of the split.
    """
    from sklearn.datasets import load_iris

    lengths = torch.as_tensor(load_iris().data[:, 2], dtype=torch.get_default_dtype())
    return _split(lengths, small=small, seed=seed)


def make_species(*, small: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether each flower of :func:`make_data`'s split (same arguments) is a
    setosa, the group of short petals: ``(train, held_out)`` booleans."""
    from sklearn.datasets import load_iris

    return _split(torch.as_tensor(load_iris().target == 0), small=small, seed=seed)


def _split(values: torch.Tensor, *, small: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(len(values), generator=torch.Generator().manual_seed(seed))
    num_train, num_held_out = (30, 10) if small else (120, 30)
    return values[order[:num_train]], values[order[num_train : num_train + num_held_out]]


def held_out_accuracy(
    guide: AutoAmortizedDelta, held_out: torch.Tensor, setosa: torch.Tensor
) -> float:
    """Share of held-out flowers that the guide's most probable assignment puts
    in the component of the shorter mean with the setosas (and the others in
    the other), encoded in one pass."""
    with torch.no_grad():
        probs = guide.encode(held_out)["assignment"].probs
        short = guide.median(held_out)["locs"].argmin()
    return float(((probs.argmax(-1) == short) == setosa).double().mean())


def best_initialization(
    make_guide: Callable[[], object], svi_model: Callable, data: torch.Tensor, tries: int
) -> int:
    """The tutorial's search: the seed, among ``range(tries)``, whose freshly
    built guide has the lowest initial loss."""

    def initial_loss(seed: int) -> float:
        pyro.set_rng_seed(seed)
        pyro.clear_param_store()
        return TraceEnum_ELBO(max_plate_nesting=1).loss(svi_model, make_guide(), data)

    return min(range(tries), key=initial_loss)


def global_guide_factory(guide_kind: str, data: torch.Tensor, hidden: int) -> Callable[[], object]:
    """Builds, at each call, the guide of the enumerated model: the tutorial's
    ``global_guide`` or ``AutoAmortizedDelta`` (the tutorial's MAP family) with
    the tutorial's initialization."""
    if guide_kind == "hand":
        return lambda: make_global_guide(data)
    init_loc_fn = make_init_loc_fn(data)
    return lambda: AutoAmortizedDelta(
        enumerated_model, hidden_dims=(hidden,), init_loc_fn=init_loc_fn
    )


def train_map(
    guide_kind: str, data: torch.Tensor, steps: int, hidden: int, tries: int
) -> tuple[object, list[float], float, Callable[[int], float]]:
    """The tutorial's first training: globals with the assignments summed out.

    :returns: the trained guide, the losses, the mean seconds per step and the
        training step.
    """
    make_guide = global_guide_factory(guide_kind, data, hidden)
    seed = best_initialization(make_guide, enumerated_model, data, tries)
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    guide = make_guide()
    optim = pyro.optim.Adam({"lr": 0.1, "betas": [0.8, 0.99]})
    svi = SVI(enumerated_model, guide, optim, loss=TraceEnum_ELBO(max_plate_nesting=1))

    def step(_: int) -> float:
        return svi.step(data)

    losses, step_seconds = timed_steps(step, steps)
    return guide, losses, step_seconds, step


def run(
    guide_kind: str,
    *,
    steps: int = 200,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    hidden: int = DEFAULT_HIDDEN,
    tries: int = 100,
    small: bool = False,
) -> dict:
    """``"gmm"``: MAP training with the assignments summed out, scored on
    held-out points.

    :param guide_kind: ``"hand"`` (``AutoDelta`` over the blocked model) or
        ``"amortized"`` (``AutoAmortizedDelta(enumerated_model,
        hidden_dims=(hidden,), init_loc_fn=...)``: the tutorial's MAP family
        and initialization; the model enumerates the only local site, so the
        guide has only global sites).
    :param steps: SVI steps.
    :param batch_size: must be ``None``: the tutorial uses all the data.
    :param seed: seed of the split (the parameters' seed is the search's best).
    :param hidden: width of the amortized guide's hidden layer.
    :param tries: seeds searched for the initialization.
    :param small: train on the tiny data set of :func:`make_data`.
    :returns: see :func:`examples.ports._shared.result`; the metric is the
        held-out ELBO per point (higher is better).
    """
    check_guide_kind(guide_kind)
    _check_full_batch(batch_size)
    train, held_out = make_data(small=small, seed=seed)
    guide, losses, step_seconds, step = train_map(guide_kind, train, steps, hidden, tries)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    metric = -elbo.loss(enumerated_model, guide, held_out) / len(held_out)
    return result("held-out ELBO per point", metric, losses, step_seconds, step)


def run_sampled(
    guide_kind: str,
    *,
    steps: int = 200,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    hidden: int = DEFAULT_HIDDEN,
    tries: int = 100,
    small: bool = False,
    objective: str = "elbo",
    num_particles: int = 10,
) -> dict:
    """``"gmm_sampled"``: the assignments sampled by the guide.

    :param guide_kind: ``"hand"`` (the tutorial's MAP training, then
        ``full_guide`` without enumeration) or ``"amortized"`` (the same MAP
        training with the amortized guide of :func:`run`, then
        ``AutoAmortizedDelta(model, hidden_dims=(hidden,),
        standardize_inputs=True)`` started at its estimates: the globals train
        on beside the amortized assignment probabilities, where the tutorial
        holds them fixed; the petal lengths, 1 to 7 cm, reach the encoder
        standardized, where the tutorial's learning rate of 0.2 does not throw
        the logits far).
    :param steps: SVI steps of each training.
    :param batch_size: must be ``None``: the tutorial uses all the data.
    :param seed: seed of the split and (amortized) of the parameters.
    :param hidden: width of the amortized guide's hidden layer.
    :param tries: seeds searched for the hand-written guide's initialization.
    :param small: train on the tiny data set of :func:`make_data`.
    :param objective: the local training: ``"elbo"`` (the tutorial's, by the
        score function) or ``"rws"`` (amortized guide only:
        :class:`pyro_amortized.LocalRWS` with ``num_particles`` particles).
    :param num_particles: particles per point of ``"rws"``.
    :returns: see :func:`examples.ports._shared.result`; the metric is the
        ELBO of the training points per point (higher is better), an average
        of 20 particles; the step time is the timed training's. The amortized
        guide's result also has ``"held_out_accuracy"``
        (:func:`held_out_accuracy`).
    """
    check_guide_kind(guide_kind)
    _check_full_batch(batch_size)
    check_objective(guide_kind, objective, ("elbo", "rws"))
    train, held_out = make_data(small=small, seed=seed)
    global_guide, *_ = train_map(guide_kind, train, steps, hidden, tries)
    if guide_kind == "hand":
        guide = make_full_guide(global_guide)
    else:
        estimates = {name: value.detach() for name, value in global_guide.median(train).items()}
        pyro.clear_param_store()
        guide = AutoAmortizedDelta(
            model,
            hidden_dims=(hidden,),
            init_loc_fn=init_to_value(values=estimates),
            standardize_inputs=True,
        )
    optim = pyro.optim.Adam({"lr": 0.2, "betas": [0.8, 0.99]})
    if objective == "rws":
        loss = LocalRWS(num_particles=num_particles, max_plate_nesting=1)
    else:  # nothing is enumerated any more: TraceEnum_ELBO need not say so
        loss = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    svi = SVI(model, guide, optim, loss=loss)

    def step(_: int) -> float:
        return svi.step(train)

    losses, step_seconds = timed_steps(step, steps)
    # The model indexes locs by the assignment: its particles cannot be vectorized.
    estimate = TraceEnum_ELBO(
        max_plate_nesting=1, num_particles=20, strict_enumeration_warning=False
    )
    metric = -estimate.loss(model, guide, train) / len(train)
    outcome = result("training ELBO per point", metric, losses, step_seconds, step)
    if guide_kind == "amortized":
        _, setosa = make_species(small=small, seed=seed)
        outcome["held_out_accuracy"] = held_out_accuracy(guide, held_out, setosa)
    return outcome


def _check_full_batch(batch_size: int | None) -> None:
    if batch_size is not None:
        raise ValueError(
            f"The mixture trains on all its data: batch_size must be None, not {batch_size}."
        )
