"""Group plates: a local site per group, whose data are the rows of the group,
linked to it by an index argument (the gather form of hierarchical models)."""

import pickle
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEED, train
from pyro import poutine

from pyro_amortized import AutoAmortizedGuide, LocalIWAE, PathDerivativeELBO, structure
from pyro_amortized.datasets import load_radon
from pyro_amortized.group_plates import uncrossed
from pyro_amortized.models import radon_model
from pyro_amortized.set_encoders import SetEncoder

PRIOR_SCALE = 2.0
NOISE = 1.0


def grouped_model(group, x=None, num_groups=None):
    """a_g ~ N(0, 2) per group, x_i ~ N(a_{group_i}, 1) per row."""
    num_groups = int(group.max()) + 1 if num_groups is None else num_groups
    with pyro.plate("groups", num_groups):
        a = pyro.sample("a", dist.Normal(0.0, PRIOR_SCALE))
    with pyro.plate("rows", len(group)):
        pyro.sample("x", dist.Normal(a[group], NOISE), obs=x)


def exact_posterior(group, x, num_groups):
    """Each a_g given its rows: precision 1/4 + n/1, mean sum(x)/precision."""
    counts = torch.bincount(group, minlength=num_groups).float()
    sums = torch.zeros(num_groups).index_add(0, group, x)
    precision = PRIOR_SCALE**-2 + counts / NOISE**2
    return sums / NOISE**2 / precision, precision**-0.5


def grouped_data(num_groups, seed):
    """Groups of 0 to 12 rows (the last group has none), true a_g from the prior."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 13, (num_groups,), generator=generator)
    counts[-1] = 0
    group = torch.repeat_interleave(torch.arange(num_groups), counts)
    a = PRIOR_SCALE * torch.randn(num_groups, generator=generator)
    x = a[group] + NOISE * torch.randn(len(group), generator=generator)
    return group, x


STEPS = 4000
DECAY = 0.05 ** (1 / STEPS)
"""The learning rate falls from 0.01 to 0.0005 over the training."""


def trained_guide(group, x, num_groups, elbo=None):
    pyro.set_rng_seed(SEED)
    guide = AutoAmortizedGuide(grouped_model, hidden_dims=(32, 32))
    train(grouped_model, guide, group, x, num_groups, steps=STEPS, lr=0.01, lrd=DECAY, elbo=elbo)
    return guide


def test_group_plate_is_found_and_its_parameters_do_not_grow():
    group, x = grouped_data(20, SEED)
    guide = AutoAmortizedGuide(grouped_model, hidden_dims=(16,))
    guide(group, x, 20)
    assert guide.data_plates == {"groups": ("x",)}
    assert "a" in guide.network.heads
    assert isinstance(guide.network.encoders["groups"], SetEncoder)
    size = sum(p.numel() for p in guide.parameters())
    pyro.clear_param_store()
    more = AutoAmortizedGuide(grouped_model, hidden_dims=(16,))
    more(*grouped_data(200, SEED), 200)
    assert sum(p.numel() for p in more.parameters()) == size


def test_group_posteriors_match_the_exact_ones_and_new_groups_take_one_pass():
    group, x = grouped_data(60, SEED)
    guide = trained_guide(group, x, 60)
    loc, scale = exact_posterior(group, x, 60)
    q = guide.encode(group, x, 60)["a"]
    assert q.batch_shape == (60,)
    errors = (q.mean - loc).abs()
    ratios = q.stddev / scale
    print(
        f"trained groups: mean error {errors.mean():.3f} max {errors.max():.3f}, "
        f"sd ratio {ratios.min():.3f} to {ratios.max():.3f}"
    )
    assert errors.mean() < 0.1 and errors.max() < 0.4  # at seeds 0 to 2: 0.019-0.042, 0.075-0.178
    assert ((ratios - 1).abs() < 0.2).float().mean() > 0.9
    assert abs(q.mean[-1]) < 0.3 and abs(q.stddev[-1] / PRIOR_SCALE - 1) < 0.2  # no rows: prior
    new_group, new_x = grouped_data(30, SEED + 100)
    new_loc, new_scale = exact_posterior(new_group, new_x, 30)
    q_new = guide.encode(new_group, new_x, 30)["a"]
    new_errors = (q_new.mean - new_loc).abs()
    print(f"new groups: mean error {new_errors.mean():.3f}")
    assert new_errors.mean() < 0.15
    assert ((q_new.stddev / new_scale - 1).abs() < 0.25).float().mean() > 0.85


def test_the_path_derivative_gives_every_group_its_exact_spread_within_ten_percent():
    group, x = grouped_data(60, SEED)
    guide = trained_guide(group, x, 60, elbo=PathDerivativeELBO())
    loc, scale = exact_posterior(group, x, 60)
    q = guide.encode(group, x, 60)["a"]
    errors, ratios = (q.mean - loc).abs(), q.stddev / scale
    print(f"mean error max {errors.max():.3f}, sd ratio {ratios.min():.3f} to {ratios.max():.3f}")
    # At seeds 0 to 2: largest errors 0.017-0.020, ratios 0.946-1.062 (Trace_ELBO: 0.08-0.17
    # and 0.90-1.17, one group in 60 outside 10% at two seeds).
    assert errors.max() < 0.06
    assert (ratios - 1).abs().max() < 0.1


def test_group_indices_are_checked_and_per_point_diagnostics_refuse_groups():
    group, x = grouped_data(10, SEED)
    guide = AutoAmortizedGuide(grouped_model, hidden_dims=(8,))
    guide(group, x, 10)
    loaded = pickle.loads(pickle.dumps(guide))  # no model: the guide checks the indices
    # Without the model: the first call's groups (the last has no rows), and new ones.
    assert loaded.encode(group, x)["a"].batch_shape == (10,)
    assert loaded.encode(torch.cat([group, torch.tensor([11])]), torch.cat([x, x[:1]]))[
        "a"
    ].batch_shape == (12,)
    with pytest.raises(ValueError, match="'group' must give the group .* 1-D integer tensor"):
        loaded.encode(group.float(), x)
    with pytest.raises(ValueError, match="holds group indices from -1 to 8"):
        loaded.encode(torch.cat([group[:-1], torch.tensor([-1])]), x)
    with pytest.raises(ValueError, match="are groups of the rows of plate 'rows'"):
        LocalIWAE(num_particles=2).loss(grouped_model, guide, group, x, 10)


def test_an_integer_covariate_is_told_from_the_group_index():
    def model(group, other, x):
        with pyro.plate("groups", 5):
            a = pyro.sample("a", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", len(group)):
            pyro.sample("x", dist.Normal(a[group] + other, 1.0), obs=x)

    group = torch.arange(10) % 5
    guide = AutoAmortizedGuide(model)
    guide(group, group.flip(0), torch.randn(10))  # both hold group numbers
    assert guide._built.structure.data_plates["groups"].group_index == "group"
    assert guide.data_plates == {"groups": ("other", "x")}


def test_an_index_the_model_does_not_gather_by_cannot_be_told_and_is_an_error():
    def model(group, other, x):
        with pyro.plate("groups", 5):
            a = pyro.sample("a", dist.Bernoulli(0.5))  # discrete: no value to move
        with pyro.plate("rows", len(group)):
            pyro.sample("x", dist.Normal(a[group] + other, 1.0), obs=x)

    group = torch.arange(10) % 5
    with pytest.raises(ValueError, match="several arguments could say which"):
        AutoAmortizedGuide(model)(group, group.flip(0), torch.randn(10))


def test_elbo_trains_with_rows_subsampled():
    group, x = grouped_data(30, SEED)

    def model(group, x):
        with pyro.plate("groups", 30):
            a = pyro.sample("a", dist.Normal(0.0, PRIOR_SCALE))
        with pyro.plate("rows", len(group), subsample_size=64) as rows:
            pyro.sample("x", dist.Normal(a[group[rows]], NOISE), obs=x[rows])

    pyro.set_rng_seed(SEED)
    guide = AutoAmortizedGuide(model, hidden_dims=(32, 32))
    train(model, guide, group, x, steps=STEPS, lr=0.01, lrd=DECAY)
    loc, _ = exact_posterior(group, x, 30)
    errors = (guide.encode(group, x)["a"].mean - loc).abs()
    print(f"rows subsampled: mean error {errors.mean():.3f}")
    assert errors.mean() < 0.2  # 0.063 to 0.103 at seeds 0 to 2


def test_elbo_trains_with_groups_subsampled():
    group, x = grouped_data(30, SEED)

    def model(group, x):
        with pyro.plate("groups", 30, subsample_size=10) as chosen:
            a = pyro.sample("a", dist.Normal(0.0, PRIOR_SCALE))
        position = torch.full((30,), -1).index_put((chosen,), torch.arange(10))
        kept = position[group] >= 0  # the rows of the chosen groups, scaled up
        with pyro.plate("rows", len(group)), poutine.mask(mask=kept), poutine.scale(scale=3.0):
            pyro.sample("x", dist.Normal(a[position[group].clamp(min=0)], NOISE), obs=x)

    pyro.set_rng_seed(SEED)
    guide = AutoAmortizedGuide(model, hidden_dims=(32, 32))
    train(model, guide, group, x, steps=STEPS, lr=0.01, lrd=DECAY)
    loc, scale = exact_posterior(group, x, 30)
    q = guide.encode(group, x)["a"]
    errors, ratios = (q.mean - loc).abs(), q.stddev / scale
    print(f"groups subsampled: mean error {errors.mean():.3f}, sd ratio {ratios.mean():.3f}")
    assert errors.mean() < 0.25  # 0.075 to 0.133 at seeds 0 to 2
    assert abs(ratios.mean() - 1) < 0.2  # 0.99 to 1.04


def test_radon_counties_are_a_group_plate():
    data = load_radon()
    guide = AutoAmortizedGuide(radon_model, hidden_dims=(16,))
    call = data["county"], data["floor"], data["log_radon"], 85
    train(radon_model, guide, *call, steps=3)
    assert guide.data_plates == {"counties": ("floor", "log_radon")}
    assert guide.local_sites == ("a",)
    assert set(guide.upstream_sites["a"]) == {"mu_a", "sigma_a", "b", "sigma_y"}
    assert guide.encode(*call)["a"].batch_shape == (85,)


def linked(monkeypatch, model, *args):
    """The group plates that reading ``model`` links, crossed ones included:
    ``{group plate: (rows plate, index argument)}``."""
    seen = {}

    def capture(links):
        seen.update(links)
        return uncrossed(links)

    monkeypatch.setattr(structure, "uncrossed", capture)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        AutoAmortizedGuide(model)(*args)
    return seen


def two_effects_model(first, second, y):
    """A row's outcome from an effect of its group in each of two plates."""
    with pyro.plate("firsts", 40):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("seconds", 15):
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("rows", len(first)):
        pyro.sample("y", dist.Normal(a[first] + b[second], 0.5), obs=y)


@pytest.mark.parametrize("design", ["crossed", "nested"])
def test_crossed_and_nested_indices_are_told_apart_by_the_rows_they_reach(design, monkeypatch):
    generator = torch.Generator().manual_seed(SEED)
    first = torch.randint(0, 40, (300,), generator=generator)
    if design == "crossed":  # students and questions: each index fits the students' plate
        second = torch.randint(0, 15, (300,), generator=generator)
    else:  # counties in states: first g < 15 lies in state g, so a state index fits too
        second = first % 15
    guide = AutoAmortizedGuide(two_effects_model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guide(first, second, torch.randn(300))
    # One warning, which says why (not also that there is nothing to amortize).
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert "'firsts', 'seconds' group the same rows by different indices" in str(caught[0].message)
    # Told apart, and not amortized: each plate's head would miss the other's effects.
    assert guide.data_plates == {} and guide.global_sites == ("a", "b")
    links = linked(monkeypatch, two_effects_model, first, second, torch.randn(300))
    assert links == {"firsts": ("rows", "first"), "seconds": ("rows", "second")}


def test_integer_outcomes_and_plates_reached_by_every_row_are_not_groups():
    generator = torch.Generator().manual_seed(SEED)
    subject = torch.randint(0, 30, (200,), generator=generator)
    rating = torch.randint(0, 4, (200,), generator=generator)  # values of a subject index

    def ordinal(subject, z, rating):
        ordered = dist.transforms.OrderedTransform()
        cut = pyro.sample(
            "cut",
            dist.TransformedDistribution(dist.Normal(0.0, 1.0).expand([3]).to_event(1), ordered),
        )
        with pyro.plate("subjects", 30):
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
        with pyro.plate("ratings", len(subject)):
            pyro.sample("rating", dist.OrderedLogistic(z + u[subject], cut), obs=rating)

    guide = AutoAmortizedGuide(ordinal)
    guide(subject, torch.randn(200), rating)
    assert guide.local_sites == ("u",)
    assert guide._built.structure.data_plates["subjects"].group_index == "subject"

    def levels(counts):
        with pyro.plate("levels", 4):
            effect = pyro.sample("effect", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", len(counts)):  # every row reads every level
            pyro.sample("counts", dist.Poisson(effect.exp().sum()), obs=counts)

    pyro.clear_param_store()
    guide = AutoAmortizedGuide(levels)
    with pytest.warns(UserWarning, match="nothing to amortize"):
        guide(torch.randint(0, 4, (50,), generator=generator))
    assert guide.global_sites == ("effect",) and guide.local_sites == ()


def centred_model(group, y):
    """Effects centred over the groups: moving one group moves every row."""
    with pyro.plate("groups", 8):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("rows", len(group)):
        pyro.sample("y", dist.Normal((a - a.mean(-1, keepdim=True))[..., group], 1.0), obs=y)


def logits_model(group, y):
    """A vector of logits per group: a move by a constant would not show."""
    with pyro.plate("groups", 8):
        a = pyro.sample("a", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    with pyro.plate("rows", len(group)):
        pyro.sample("y", dist.Categorical(logits=a[..., group, :]), obs=y)


def chosen_groups_model(group, y):
    """The groups subsampled: the moved group must be one of those chosen."""
    with pyro.plate("groups", 8, subsample_size=3) as chosen:
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
    position = torch.full((8,), -1).index_put((chosen,), torch.arange(3))
    with pyro.plate("rows", len(group)), poutine.mask(mask=position[group] >= 0):
        pyro.sample("y", dist.Normal(a[..., position[group].clamp(min=0)], 1.0), obs=y)


@pytest.mark.parametrize("model", [centred_model, logits_model, chosen_groups_model])
def test_the_index_is_told_from_an_integer_outcome_whatever_the_groups_do(model):
    group = torch.cat([torch.arange(80) % 8, torch.full((10,), 2)])  # group 2 has most rows
    y = torch.randint(0, 3, (90,), generator=torch.Generator().manual_seed(SEED))
    guide = AutoAmortizedGuide(model)
    guide(group, y.float() if model is centred_model else y)
    assert guide.local_sites[0] == "a"
    assert guide._built.structure.data_plates["groups"].group_index == "group"


def test_plates_of_one_index_and_explicit_minibatches_feed_no_index():
    def model(group, idx, x):
        with pyro.plate("intercepts", 5):
            a = pyro.sample("a", dist.Normal(0.0, 1.0))
        with pyro.plate("slopes", 5):
            b = pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", len(group), subsample=idx):
            pyro.sample("x", dist.Normal(a[group[idx]] + b[group[idx]] * 0.5, 1.0), obs=x[idx])

    group, x = torch.arange(20) % 5, torch.randn(20)
    guide = AutoAmortizedGuide(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one grouping: no warning of crossed effects
        guide(group, torch.arange(10), x)
    assert guide.data_plates == {"intercepts": ("x",), "slopes": ("x",)}


def test_a_product_of_group_values_zero_at_the_start_is_told_apart(monkeypatch):
    def model(user, item, rating):  # matrix factorization: u and v start at zero
        with pyro.plate("users", 8):
            u = pyro.sample("u", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with pyro.plate("items", 3):
            v = pyro.sample("v", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with pyro.plate("ratings", len(user)):
            mean = (u[..., user, :] * v[..., item, :]).sum(-1)
            pyro.sample("r", dist.Normal(mean, 1.0), obs=rating)

    links = linked(monkeypatch, model, torch.arange(90) % 8, torch.arange(90) % 3, torch.randn(90))
    assert links == {"users": ("ratings", "user"), "items": ("ratings", "item")}


def test_a_model_that_refuses_the_checks_values_keeps_its_only_index():
    def model(group, y):
        with pyro.plate("groups", 4):
            a = pyro.sample("a", dist.Normal(0.0, 0.01))
        assert float(a.abs().max()) < 0.2, "the model's own check"  # the check's values fail it
        with pyro.plate("rows", len(group)):
            pyro.sample("y", dist.Normal(a[group], 1.0), obs=y)

    guide = AutoAmortizedGuide(model)
    guide(torch.arange(20) % 4, torch.randn(20))
    assert guide.local_sites == ("a",)


def test_the_indices_of_crossed_plates_feed_no_encoder_of_their_rows():
    def model(user, item, rating):
        with pyro.plate("users", 8):
            u = pyro.sample("u", dist.Normal(0.0, 1.0))
        with pyro.plate("items", 3):
            v = pyro.sample("v", dist.Normal(0.0, 1.0))
        with pyro.plate("ratings", len(user)):
            e = pyro.sample("e", dist.Normal(0.0, 0.1))
            pyro.sample("r", dist.Normal(u[..., user] + v[..., item] + e, 1.0), obs=rating)

    guide = AutoAmortizedGuide(model)
    with pytest.warns(UserWarning, match="group the same rows by different indices"):
        guide(torch.arange(90) % 8, torch.arange(90) % 3, torch.randn(90))
    # u and v get per-group parameters; their indices are no measurement of a rating.
    assert guide.global_sites == ("u", "v") and guide.data_plates == {"ratings": ("rating",)}
