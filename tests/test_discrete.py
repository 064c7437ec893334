"""Discrete local latents the model does not enumerate: amortized logits."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEED, train
from pyro.infer import TraceEnum_ELBO, TraceGraph_ELBO
from pyro.infer.autoguide.initialization import init_to_value
from pyro.ops.indexing import Vindex

from pyro_amortized import AutoAmortizedGuide

CENTERS = torch.tensor([-4.0, 0.0, 4.0])


def mixture(x):
    locs = pyro.sample("locs", dist.Normal(0.0, 10.0).expand([3]).to_event(1))
    with pyro.plate("data", x.shape[0], subsample_size=min(200, x.shape[0])):
        assignment = pyro.sample("assignment", dist.Categorical(torch.ones(3) / 3))
        pyro.sample(
            "x", dist.Normal(locs[..., assignment], 0.7), obs=pyro.subsample(x, event_dim=0)
        )


def simulate(num_points, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, (num_points,), generator=generator)
    return CENTERS[labels] + 0.7 * torch.randn(num_points, generator=generator), labels


def accuracy(predicted, labels):
    """Accuracy under the best relabelling of the components."""
    return max(
        (torch.tensor(perm)[predicted] == labels).float().mean().item()
        for perm in itertools.permutations(range(3))
    )


@pytest.mark.parametrize("elbo", ["TraceGraph_ELBO", "TraceEnum_ELBO"])
def test_amortized_categorical_assignments(elbo):
    x, _ = simulate(2000, seed=0)
    init = init_to_value(values={"locs": torch.tensor([-1.0, 0.0, 1.0])})
    if elbo == "TraceEnum_ELBO":
        guide = AutoAmortizedGuide(
            mixture, hidden_dims=(32,), init_loc_fn=init, enumerate_discrete="parallel"
        )
        loss = TraceEnum_ELBO(max_plate_nesting=1)
    else:
        guide = AutoAmortizedGuide(mixture, hidden_dims=(32,), init_loc_fn=init)
        loss = TraceGraph_ELBO()
    train(mixture, guide, x, steps=1500, lr=0.02, lrd=0.999, elbo=loss)
    held_out, labels = simulate(1000, seed=1)
    q = guide.encode(held_out)["assignment"]
    assert q.batch_shape == (1000,)
    assert accuracy(q.probs.argmax(-1), labels) >= 0.97
    assert guide.median(held_out)["assignment"].shape == (1000,)


def binary_codes(x):
    with pyro.plate("data", x.shape[0]):
        bits = pyro.sample("bits", dist.Bernoulli(0.5 * torch.ones(2)).to_event(1))
        kind = pyro.sample("kind", dist.OneHotCategorical(torch.ones(3) / 3))
        mean = bits.sum(-1, keepdim=True) + kind @ torch.tensor([[0.0], [2.0], [4.0]])
        pyro.sample("x", dist.Normal(mean, 0.5).to_event(1), obs=x)


@pytest.mark.parametrize("enumerate_discrete", [None, "parallel"])
def test_bernoulli_and_one_hot_heads(enumerate_discrete):
    x = torch.randn(50, 1) + 2.0
    guide = AutoAmortizedGuide(binary_codes, enumerate_discrete=enumerate_discrete)
    elbo = TraceEnum_ELBO(max_plate_nesting=1) if enumerate_discrete else TraceGraph_ELBO()
    losses = train(binary_codes, guide, x, steps=30, elbo=elbo)
    assert all(torch.isfinite(torch.tensor(losses)))
    new = torch.randn(7, 1)
    encoded = guide.encode(new)
    assert encoded["bits"].sample().shape == (7, 2)
    assert encoded["kind"].sample().shape == (7, 3)
    median = guide.median(new)
    assert median["bits"].shape == (7, 2) and median["kind"].sum(-1).eq(1).all()
    assert guide.quantiles([0.1, 0.9], new)["bits"].shape == (2, 7, 2)


def test_an_enumerated_label_has_every_rows_shape_in_the_model():
    # scANVI's decoder concatenates the code and the label, which needs the
    # label's enumerated values expanded over the rows.
    weight = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]])

    def decoded(z, y, concatenate):
        if concatenate:
            return torch.cat([z, y], dim=-1) @ weight.T
        return z @ weight[:, :1].T + y @ weight[:, 1:].T

    def labelled(x, y=None, concatenate=True):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, torch.ones(1)).to_event(1))
            y = pyro.sample("y", dist.OneHotCategorical(logits=torch.zeros(2)), obs=y)
            pyro.sample("x", dist.Normal(decoded(z, y, concatenate), 1.0).to_event(1), obs=x)

    x = torch.randn(8, 2)
    guide = AutoAmortizedGuide(labelled, enumerate_discrete="parallel", hidden_dims=(4,))
    guide(x, torch.eye(2)[torch.arange(8) % 2])  # a labelled call first, as in training
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    losses = []
    for concatenate in (True, False):  # the same model, written without broadcasting
        pyro.set_rng_seed(SEED)
        losses.append(elbo.loss(labelled, guide, x, None, concatenate))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_discrete_quantiles_follow_the_cumulative_probabilities():
    from pyro_amortized.quantiles import discrete_quantiles

    q = dist.Categorical(probs=torch.tensor([0.2, 0.5, 0.3]))
    assert discrete_quantiles(q, [0.1, 0.5, 0.75]).tolist() == [0.0, 1.0, 2.0]
    assert discrete_quantiles(dist.Bernoulli(0.3), [0.5, 0.8]).tolist() == [0.0, 1.0]


def test_discrete_states_of_a_markov_loop_are_not_enumerated_by_the_guide():
    def model(x):
        transition = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
        with pyro.plate("sequences", x.shape[0]):
            z = None
            for t in pyro.markov(range(x.shape[1])):
                probs = torch.tensor([0.5, 0.5]) if z is None else transition[z]
                z = pyro.sample(f"z_{t}", dist.Categorical(probs))
                pyro.sample(f"x_{t}", dist.Normal(z.float(), 1.0), obs=x[:, t])

    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="in a pyro.markov loop, which the guide cannot enumerate"):
        AutoAmortizedGuide(model, enumerate_discrete="parallel")(x)
    AutoAmortizedGuide(model)(x)  # sampled by the guide: its heads read the next state


def _features_by_points(data):
    """Pyro's enumeration tutorial's mixture of categorical features: the data
    laid out features x points, the points' plate inside the features'."""
    data_plate = pyro.plate("data_plate", data.shape[1], dim=-1)
    feature_plate = pyro.plate("feature_plate", data.shape[0], dim=-2)
    with feature_plate, pyro.plate("component_plate", 4, dim=-1):
        p = pyro.sample("p", dist.Dirichlet(torch.ones(3)))
    with data_plate:
        c = pyro.sample("c", dist.Categorical(torch.ones(4)))
        with feature_plate as features:
            pyro.sample("x", dist.Categorical(Vindex(p)[features[..., None], c, :]), obs=data)


def test_a_data_plate_inside_a_plate_of_latents_is_read_where_named():
    data = torch.randint(3, (5, 6))
    with pytest.raises(ValueError, match=r"amortize_on=\{'data_plate': \[the data argument\]\}"):
        AutoAmortizedGuide(_features_by_points, enumerate_discrete="parallel")(data)
    guide = AutoAmortizedGuide(
        _features_by_points, enumerate_discrete="parallel", amortize_on={"data_plate": ["data"]}
    )
    elbo = TraceEnum_ELBO(max_plate_nesting=2)
    assert torch.isfinite(torch.tensor(elbo.loss(_features_by_points, guide, data)))
    assert guide.data_plates == {"data_plate": ("data",)}
    assert (guide.local_sites, guide.global_sites) == (("c",), ("p",))
