"""Defaults that train: local heads start at their prior, and a discrete head
whose score-function gradient has vanished says so."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEED
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.transforms import biject_to
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide.initialization import init_to_value

from pyro_amortized import (
    AutoAmortizedGuide,
    AutoAmortizedLowRankMultivariateNormal,
    AutoAmortizedMultivariateNormal,
)
from pyro_amortized.discrete_heads import is_saturated
from pyro_amortized.initialization import (
    CORRELATED_MAX_INIT_SCALE,
    INIT_SCALE_RANGE,
    global_start,
)

GAUSSIAN_FAMILIES = [
    AutoAmortizedGuide,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedLowRankMultivariateNormal,
]


def spread(guide, name, *args, log=False):
    """Half the distance between the 15.9% and 84.1% quantiles of each row's ``name``."""
    low, high = guide.quantiles([0.5 - 0.3413, 0.5 + 0.3413], *args)[name]
    if log:
        low, high = low.log(), high.log()
    return (high - low) / 2


def library_model(x, size_loc):
    """A code ``z`` (standard normal) and a positive size per row whose prior
    median ``exp(size_loc)`` varies by row, as a library size does."""
    with pyro.plate("cells", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        size = pyro.sample("size", dist.LogNormal(size_loc, 0.5))
        rate = size.unsqueeze(-1) * torch.softmax(z, -1) / 1000
        pyro.sample("x", dist.Poisson(rate).to_event(1), obs=x)


def library_data(num_rows=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    size_loc = 7.5 + 0.2 * torch.randn(num_rows, generator=generator)
    x = torch.poisson(torch.full((num_rows, 3), 2.0), generator=generator)
    return x, size_loc


@pytest.mark.parametrize("family", GAUSSIAN_FAMILIES)
def test_local_heads_start_at_the_prior(family):
    pyro.set_rng_seed(SEED)
    pyro.clear_param_store()
    x, size_loc = library_data()
    guide = family(library_model)
    guide(x, size_loc)
    median = guide.median(x, size_loc)
    # The correlated families start no wider than CORRELATED_MAX_INIT_SCALE.
    top = 1.0 if family is AutoAmortizedGuide else CORRELATED_MAX_INIT_SCALE
    # z: the standard normal prior's median and spread (256 prior draws per row).
    assert median["z"].abs().max() < 0.1
    z_spread = spread(guide, "z", x, size_loc)
    assert torch.allclose(z_spread, torch.tensor(min(1.0, top)), rtol=0.1)
    # size: the mean of the rows' log-medians, 7.5, and the prior's log-spread.
    assert torch.allclose(median["size"].log(), size_loc.mean(), atol=0.1)
    size_spread = spread(guide, "size", x, size_loc, log=True)
    assert torch.allclose(size_spread, torch.tensor(min(0.5, top)), rtol=0.1)


def test_the_start_costs_little_kl():
    """The ELBO at the start, against the same guide started at init_scale=0.1:
    about 1.8 nats per latent dimension of z are saved."""
    x, size_loc = library_data()
    losses = {}
    for name, options in {"prior": {}, "narrow": {"init_scale": 0.1}}.items():
        pyro.set_rng_seed(SEED)
        pyro.clear_param_store()
        guide = AutoAmortizedGuide(library_model, **options)
        elbo = Trace_ELBO(num_particles=200, vectorize_particles=True)
        losses[name] = elbo.loss(library_model, guide, x, size_loc) / len(x)
    # KL(N(0, 0.1) || N(0, 1)) = 1.80 per dimension of z, 3 dimensions; the
    # size's prior scale 0.5 against 0.1: 0.43 more. The likelihood differs too.
    saved = losses["narrow"] - losses["prior"]
    print(f"loss per row: prior start {losses['prior']:.2f}, init_scale=0.1 {losses['narrow']:.2f}")
    assert saved > 4.0


def test_given_init_options_override_the_prior():
    x, size_loc = library_data()
    init = init_to_value(values={"z": torch.full((64, 3), 0.7), "size": torch.full((64,), 20.0)})
    guide = AutoAmortizedGuide(library_model, init_loc_fn=init, init_scale=0.3)
    guide(x, size_loc)
    median = guide.median(x, size_loc)
    assert torch.allclose(median["z"], torch.tensor(0.7), atol=1e-4)
    assert torch.allclose(median["size"], torch.tensor(20.0), rtol=1e-4)
    assert torch.allclose(spread(guide, "z", x, size_loc), torch.tensor(0.3), atol=1e-3)


def test_prior_spread_is_clipped():
    """A prior ten times broader than a unit one starts at scale 1 (the top of
    the range), and a tight one at its own spread."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            wide = pyro.sample("wide", dist.Normal(0.0, 10.0))
            tight = pyro.sample("tight", dist.Normal(wide, 0.01))
            pyro.sample("x", dist.Normal(tight, 1.0), obs=x)

    pyro.set_rng_seed(SEED)
    guide = AutoAmortizedGuide(model)
    guide(torch.randn(20))
    x = torch.randn(20)
    assert torch.allclose(spread(guide, "wide", x), torch.tensor(INIT_SCALE_RANGE[1]), atol=1e-3)
    assert torch.allclose(spread(guide, "tight", x), torch.tensor(0.01), rtol=0.15)


def mixture_model(x):
    with pyro.plate("data", x.shape[0]):
        c = pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(torch.tensor([-4.0, 0.0, 4.0])[c], 1.0), obs=x)


def _saturate(guide):
    """Sets the head's logits to prefer the first value by 50 for every row."""
    head = guide.network.heads["c"]
    with torch.no_grad():
        head.logits.bias.copy_(torch.tensor([50.0, 0.0, 0.0]))


@pytest.mark.parametrize("enumerate_discrete", [None, "parallel"])
def test_saturated_discrete_head_warns_where_sampled(enumerate_discrete):
    x = torch.tensor([-4.0, 0.0, 4.0]).repeat(10)
    guide = AutoAmortizedGuide(mixture_model, enumerate_discrete=enumerate_discrete)
    guide(x)
    elbo = TraceEnum_ELBO(max_plate_nesting=1) if enumerate_discrete else Trace_ELBO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        elbo.loss_and_grads(mixture_model, guide, x)  # uniform logits: no warning
        _saturate(guide)
        for _ in range(2):
            elbo.loss_and_grads(mixture_model, guide, x)
        with torch.no_grad():
            guide(x)  # evaluation: no warning
    messages = [str(w.message) for w in caught if "head of the discrete site" in str(w.message)]
    if enumerate_discrete:  # summed out: no score-function gradient to vanish
        assert not messages
    else:
        assert len(messages) == 1 and "'c'" in messages[0] and "learning rate" in messages[0]


def test_is_saturated():
    sure = torch.tensor([50.0, 0.0, 0.0])
    assert is_saturated(dist.Categorical(logits=sure.expand(16, 3)))
    assert not is_saturated(dist.Categorical(logits=sure.expand(15, 3)))  # too few rows
    mixed = torch.stack([sure, sure.flip(0)]).repeat(8, 1)
    assert not is_saturated(dist.Categorical(logits=mixed))  # sure, but of two values
    assert not is_saturated(dist.Categorical(logits=torch.tensor([10.0, 0.0, 0.0]).expand(16, 3)))
    assert is_saturated(dist.Bernoulli(logits=torch.full((16, 4), -50.0)).to_event(1))
    assert is_saturated(dist.OneHotCategorical(logits=sure.expand(20, 3)))
    assert math.isclose(float(dist.Categorical(logits=sure).probs[0]), 1.0, abs_tol=1e-12)


def test_a_global_started_far_from_its_prior_warns_and_the_rng_is_left_alone():
    # pyro.contrib.mue's FactorMuE: an inverse temperature of prior mean 100.
    def model(x, loc=100.0):
        temperature = pyro.sample("temperature", dist.Normal(loc, 1.0))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z * temperature / 100, scale), obs=x)

    x = torch.randn(5)
    with pytest.warns(UserWarning, match="Global site 'temperature' starts at unconstrained zero"):
        AutoAmortizedGuide(model)(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AutoAmortizedGuide(model, init_loc_fn=init_to_value(values={"temperature": x[0]}))(x)
        AutoAmortizedGuide(model)(x, 0.0)  # 'scale' too sits at its prior's median

    node = {**poutine.trace(model).get_trace(x).nodes["temperature"], "value": torch.tensor(0.0)}
    state = torch.get_rng_state()
    with pytest.warns(UserWarning, match=r"\d+ of its prior's spreads from the prior's median"):
        start = global_start(node, frozenset(), biject_to(constraints.real), default=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert start == 0.0  # init_to_feasible's start, unchanged
    weights = {**node, "fn": dist.Normal(100.0, 1.0).expand([300, 300]).to_event(2)}
    weights["value"] = torch.zeros(300, 300)  # too large to check: no draws, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        global_start(weights, frozenset(), biject_to(constraints.real), default=True)
