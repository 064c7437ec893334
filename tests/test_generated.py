"""Generated models: random plated models, each guided, trained and queried.

Each example draws 0-3 global and 1-3 local sites with supports among real,
positive, unit interval, simplex, lower-Cholesky, correlation-Cholesky,
positive-definite and discrete, event shapes of rank 0-2, the data plate at
dim -1 or -2, subsampling on or off, and one or two data arguments. The guide
must train a few steps to a finite loss; ``encode``, ``median``, ``quantiles``
and ``Predictive`` must give the model's shapes on new data of another size;
and a ``state_dict`` must restore the guide exactly. ``make test`` runs 200
examples; ``PYRO_AMORTIZED_SLOW=1`` runs 1,000 (``PYRO_AMORTIZED_EXAMPLES=n``, n).
"""

import os

import pyro
import pyro.distributions as dist
import torch
from helpers import SEED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO
from torch.distributions import constraints

from pyro_amortized import AutoAmortizedGuide
from pyro_amortized.transforms import bijection_to

EXAMPLES = int(
    os.environ.get(
        "PYRO_AMORTIZED_EXAMPLES", 1000 if os.environ.get("PYRO_AMORTIZED_SLOW") == "1" else 200
    )
)
FEATURES = 3
CONTINUOUS = ("real", "positive", "unit_interval", "simplex", "lower_cholesky", "corr_cholesky")
SUPPORTS = {"global": (*CONTINUOUS, "positive_definite"), "local": (*CONTINUOUS, "discrete")}


def prior(support: str, rank: int) -> dist.Distribution:
    """A distribution with the support and (for the elementwise supports) an
    event of the given rank, with sides of 2."""
    shape = [2] * rank
    if support == "real":
        return dist.Normal(torch.zeros(shape), 1.0).to_event(rank)
    if support == "positive":
        return dist.LogNormal(torch.zeros(shape), 0.5).to_event(rank)
    if support == "unit_interval":
        return dist.Beta(torch.full(shape, 2.0), 2.0).to_event(rank)
    if support == "simplex":
        return dist.Dirichlet(torch.ones(3))
    if support == "lower_cholesky":
        noise = dist.Normal(torch.zeros(3), 1.0).to_event(1)
        return dist.TransformedDistribution(noise, bijection_to(constraints.lower_cholesky))
    if support == "corr_cholesky":
        return dist.LKJCholesky(2, 1.0)
    if support == "positive_definite":
        return dist.Wishart(df=torch.tensor(4.0), covariance_matrix=torch.eye(2))
    return dist.Categorical(torch.ones(3)) if rank else dist.Bernoulli(0.5)


def summary(value: torch.Tensor, event_dim: int) -> torch.Tensor:
    """A per-batch-element number from a site's value, to shift the data by."""
    value = value.float()
    return value.reshape(value.shape[: value.dim() - event_dim] + (-1,)).mean(-1).tanh()


@st.composite
def model_specs(draw):
    return {
        "globals": [
            (draw(st.sampled_from(SUPPORTS["global"])), draw(st.integers(0, 2)))
            for _ in range(draw(st.integers(0, 3)))
        ],
        "locals": [
            (draw(st.sampled_from(SUPPORTS["local"])), draw(st.integers(0, 2)))
            for _ in range(draw(st.integers(1, 3)))
        ],
        "dim": draw(st.sampled_from([-1, -2])),
        "subsample": draw(st.booleans()),
        "two_inputs": draw(st.booleans()),
    }


def make_model(spec):
    """The model of a spec: ``model(x)`` or ``model(x, c)``, one row per point."""

    def model(x, c=None):
        shift = 0.0
        for i, (support, rank) in enumerate(spec["globals"]):
            site = prior(support, rank)
            shift = shift + summary(pyro.sample(f"g{i}", site), site.event_dim).sum()
        size = x.shape[0]
        subsample_size = min(4, size) if spec["subsample"] else None
        with pyro.plate("data", size, subsample_size=subsample_size, dim=spec["dim"]) as rows:
            for i, (support, rank) in enumerate(spec["locals"]):
                site = prior(support, rank)
                shift = shift + summary(pyro.sample(f"z{i}", site), site.event_dim)
            obs = x[rows]
            loc = torch.as_tensor(shift).unsqueeze(-1) + torch.zeros_like(obs)
            loc = loc if c is None else loc + c[rows]
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=obs)

    return model


def data(spec, rows, seed):
    generator = torch.Generator().manual_seed(seed)
    shape = (rows, FEATURES) if spec["dim"] == -1 else (rows, 1, FEATURES)
    x = torch.randn(shape, generator=generator)
    c = torch.randn(shape, generator=generator) if spec["two_inputs"] else None
    return (x, c) if spec["two_inputs"] else (x,)


def model_shapes(model, args):
    trace = poutine.trace(poutine.block(model, hide=["x"])).get_trace(*args)
    return {
        name: site["value"].shape
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and name != "data"
    }


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=model_specs())
def test_generated_model(spec):
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    model = make_model(spec)
    train_args, new_args = data(spec, 6, seed=1), data(spec, 5, seed=2)
    guide = AutoAmortizedGuide(model, hidden_dims=(8,))
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    losses = torch.tensor([svi.step(*train_args) for _ in range(3)])
    assert torch.isfinite(losses).all(), (spec, losses)

    # Shapes on new data of another size, every row (no subsampling at test time).
    every_row = make_model({**spec, "subsample": False})
    shapes = model_shapes(every_row, new_args)
    medians = guide.median(*new_args)
    assert {name: value.shape for name, value in medians.items()} == shapes, spec
    quantiles = guide.quantiles([0.25, 0.75], *new_args)
    assert {name: value.shape[1:] for name, value in quantiles.items()} == shapes
    for name, posterior in guide.encode(*new_args).items():
        assert posterior.sample().shape == shapes[name], (spec, name)
    samples = Predictive(model, guide=guide, num_samples=2)(*new_args)
    for name, shape in model_shapes(model, new_args).items():  # subsampled as in the model
        # Predictive pads global sites with the model's plate dimensions.
        got = samples[name].shape
        assert got[0] == 2 and got[1:].numel() == shape.numel(), (spec, name, got)
        assert got[len(got) - len(shape) :] == shape, (spec, name, got)

    # A state_dict restores the guide exactly.
    state = guide.state_dict()
    pyro.clear_param_store()
    fresh = AutoAmortizedGuide(model, hidden_dims=(8,))
    fresh(*train_args)
    fresh.load_state_dict(state)
    restored = fresh.median(*new_args)
    for name, value in medians.items():
        assert torch.equal(restored[name], value), (spec, name)
