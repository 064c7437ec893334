"""Reading the model: arguments, data plates, local and global sites, and the
clear error each bad input gets."""

import functools
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from models import factor_data, factor_model, regression_data, regression_model
from pyro import poutine
from pyro.infer.reparam import LatentStableReparam, LocScaleReparam, ProjectedNormalReparam

from pyro_amortized import AutoAmortizedGuide, MLPEncoder
from pyro_amortized.arguments import bind_arguments, call_key, locate_argument
from pyro_amortized.prototype import trace_prototype
from pyro_amortized.structure import read_model


def _structure(model, *args, amortize_on=None):
    trace, outer = trace_prototype(model, lambda site: site["fn"].sample(), args, {})
    return read_model(trace, outer, bind_arguments(model, args, {}), amortize_on)


def test_bind_and_locate_arguments():
    def model(x, y=None, *extra, scale=1.0, **options):
        pass

    x, y = torch.zeros(3), torch.ones(3)
    named = bind_arguments(model, (x, y, "a"), {"scale": 2.0, "flag": True})
    assert list(named) == ["x", "y", "extra[0]", "scale", "flag"]
    assert locate_argument(model, "y").fetch((x,), {"y": y}) is y
    assert locate_argument(model, "y").fetch((x, y), {}) is y
    assert locate_argument(model, "y").fetch((x,), {}) is None  # default
    assert locate_argument(model, "extra[0]").fetch((x, y, "a"), {}) == "a"
    assert locate_argument(model, "flag").fetch((x,), {"flag": True}) is True


def test_packed_sequences_of_one_batch_and_length_share_a_call_key():
    # Minibatches of padded sequences differ in the total of their lengths
    # (the rows of the packed data), not in the sizes the model's plates see.
    def packed(lengths):
        padded = torch.zeros(len(lengths), max(lengths), 5)
        return torch.nn.utils.rnn.pack_padded_sequence(padded, torch.tensor(lengths), True)

    first, second, longer = packed([6, 4, 2]), packed([6, 5, 5]), packed([7, 4, 2])
    assert first.data.shape != second.data.shape
    assert call_key((first,), {}) == call_key((second,), {})
    assert call_key((first,), {}) != call_key((longer,), {})
    assert call_key((first,), {}) != call_key((packed([6, 4]),), {})


def test_data_plate_rows_and_nested_plates():
    def model(counts):
        with pyro.plate("docs", counts.shape[0], dim=-2):
            theta = pyro.sample("theta", dist.Dirichlet(torch.ones(3)))
            with pyro.plate("words", counts.shape[1], dim=-1):
                rate = pyro.sample("rate", dist.Gamma(1.0, 1.0))
                pyro.sample("counts", dist.Poisson(rate * theta[..., :1]), obs=counts)

    structure = _structure(model, torch.ones(6, 4))
    assert list(structure.data_plates) == ["docs"]  # "words" is not the rows' dimension
    # The guide's order: the site of fewer plates first, which the nested one can read.
    assert structure.data_plates["docs"].sites == ("theta", "rate")
    assert structure.sites["rate"].point_batch_shape == (4,)
    assert structure.sites["theta"].point_batch_shape == (1,)
    assert structure.sites["theta"].unconstrained_event_shape == (2,)


def _two_groups(a, b):
    """Two data plates of the same size, each observing its own argument."""
    with pyro.plate("group_a", a.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("a", dist.Normal(z, 1.0), obs=a)
    with pyro.plate("group_b", b.shape[0]):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(w, 1.0), obs=b)


def test_an_argument_feeding_two_plates_warns():
    a, b = torch.randn(5), torch.randn(5)
    with pytest.warns(UserWarning, match="Argument 'a' has one row per data point of each"):
        structure = _structure(_two_groups, a, b)
    assert structure.data_plates["group_a"].inputs == ("a", "b")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither call below warns
        own = {"group_a": ["a"], "group_b": ["b"]}
        structure = _structure(_two_groups, a, b, amortize_on=own)
        assert structure.data_plates["group_a"].inputs == ("a",)
        assert structure.data_plates["group_b"].inputs == ("b",)
        # Plates of other sizes are told apart by their rows.
        structure = _structure(_two_groups, a, torch.randn(7))
        assert structure.data_plates["group_a"].inputs == ("a",)


def test_feature_plates_hold_global_sites():
    def ppca(x):
        with pyro.plate("features", x.shape[1], dim=-1):
            w = pyro.sample("w", dist.Normal(0.0, 1.0))
            with pyro.plate("data", x.shape[0], dim=-2):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.sample("x", dist.Normal(z * w, 1.0), obs=x)

    structure = _structure(ppca, torch.randn(10, 3))
    assert structure.global_sites == ("w",)
    assert structure.local_sites == ("z",)


def test_guide_does_not_freeze_the_first_call_sizes():
    guide = AutoAmortizedGuide(regression_model)
    guide(*regression_data(10))
    trace = poutine.trace(guide).get_trace(*regression_data(23))
    assert trace.nodes["effect"]["value"].shape == (23,)


# -------------------------------------------------------------------- errors


def test_structure_before_the_first_call():
    with pytest.raises(RuntimeError, match="has not read its model yet"):
        _ = AutoAmortizedGuide(factor_model).local_sites


CLOSURE_DATA = torch.randn(20, 5)


def closure_model():
    with pyro.plate("data", 20):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z[:, None], 1.0).to_event(1), obs=CLOSURE_DATA)


def closure_model_with_an_unrelated_argument(num_steps):
    closure_model()


@pytest.mark.parametrize(
    "model, args",
    [(closure_model, ()), (closure_model_with_an_unrelated_argument, (3,))],
)
def test_closure_data_is_an_error(model, args):
    with pytest.raises(ValueError, match="no model argument holds its rows"):
        AutoAmortizedGuide(model)(*args)


def test_data_inside_a_container_argument_is_named_in_the_error():
    # Pyro's mixed HMM example passes its data in a dict, config.
    def model(config):
        x = config["observations"]["x"]
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    config = {"observations": {"x": torch.randn(10)}}
    with pytest.raises(ValueError, match="inside argument config: the guide reads tensor") as error:
        AutoAmortizedGuide(model)(config)
    assert "take it out of config (amortize_on= names tensor arguments only)" in str(error.value)


def test_unknown_amortize_on_argument():
    guide = AutoAmortizedGuide(regression_model, amortize_on="covariate")
    with pytest.raises(ValueError, match="'covariate', which is not an argument.*covariates, y"):
        guide(*regression_data(5))


def test_amortize_on_a_non_tensor_argument():
    def model(x, scale):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(pyro.sample("z", dist.Normal(0.0, 1.0)), scale), obs=x)

    with pytest.raises(ValueError, match="'scale', but that argument is float"):
        AutoAmortizedGuide(model, amortize_on="scale")(torch.zeros(4), 1.0)


def test_unknown_amortize_on_plate():
    guide = AutoAmortizedGuide(regression_model, amortize_on={"rows": ["y"]})
    with pytest.raises(ValueError, match="plate 'rows', which is not a vectorized plate.*units"):
        guide(*regression_data(5))


def test_amortize_on_argument_with_the_wrong_rows():
    def model(x, y):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(pyro.sample("z", dist.Normal(0.0, 1.0)), 1.0), obs=x)

    guide = AutoAmortizedGuide(model, amortize_on={"data": "y"})
    with pytest.raises(ValueError, match="argument 'y', whose first dimension has size 3"):
        guide(torch.zeros(5), torch.zeros(3))


def test_sequential_plate_around_local_latents():
    def model(x):
        for i in pyro.plate("data", x.shape[0]):
            z = pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))
            pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=x[i])

    with pytest.raises(ValueError, match="sequential plate 'data'.*Use a vectorized plate"):
        AutoAmortizedGuide(model)(torch.zeros(3))


def test_sequential_plate_of_globals_is_fine():
    def model(x):
        scales = [pyro.sample(f"s_{i}", dist.LogNormal(0.0, 1.0)) for i in pyro.plate("g", 2)]
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, scales[0]))
            pyro.sample("x", dist.Normal(z, scales[1]), obs=x)

    guide = AutoAmortizedGuide(model)
    guide(torch.zeros(4))
    assert guide.global_sites == ("s_0", "s_1") and guide.local_sites == ("z",)


def test_per_point_shape_changed_since_the_encoder_was_built():
    guide = AutoAmortizedGuide(factor_model)
    guide(factor_data(10))
    with pytest.raises(ValueError, match=r"per-data-point shape \(4,\).*built for \(5,\)"):
        guide.encode(torch.zeros(10, 4))


def test_missing_encoder_input():
    def model(x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(z + x, 1.0), obs=y)

    def required(x, y):
        return model(x, y)

    guide = AutoAmortizedGuide(required)
    guide(torch.zeros(5), torch.zeros(5))
    assert guide.data_plates == {"data": ("x", "y")}
    with pytest.raises(ValueError, match="reads argument 'y', which is NoneType"):
        guide.encode(torch.zeros(5), None)


def test_a_mask_argument_left_out_later_gets_the_fix_for_a_mask():
    def model(x, *, mask=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            likelihood = dist.Normal(z, 1.0)
            pyro.sample("x", likelihood if mask is None else likelihood.mask(mask), obs=x)

    guide = AutoAmortizedGuide(model)
    guide(torch.zeros(6), mask=torch.arange(6) % 2 == 0)
    assert guide.data_plates == {"data": ("x", "mask")}
    with pytest.raises(ValueError, match="'mask', which is NoneType.*a mask of all True"):
        guide.encode(torch.zeros(6))


def test_an_observed_response_defaulting_to_none():
    # The predictive idiom def model(x, y=None): y is the plate's only data, so
    # it is data (not a label observed in some calls) and feeds the encoder.
    def model(x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(z + x, 1.0), obs=y)

    x, y = torch.randn(20), torch.randn(20)
    guide = AutoAmortizedGuide(model)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO())
    svi.step(x, y)
    assert guide.data_plates == {"data": ("x", "y")} and guide.local_sites == ("z",)
    # Without y the model observes nothing: z is left to its prior (its
    # posterior given no data, as for new rows), and the guide says so.
    with pytest.warns(UserWarning, match="observes nothing in plate 'data'") as caught:
        prior = pyro.infer.Predictive(model, guide=guide, num_samples=3)(x)
    assert "functools.partial(guide, y=...)" in str(caught[0].message)
    assert prior["z"].shape == (3, 20)
    # The idiom it names: the guide sees y, the model predicts it.
    given = functools.partial(guide, y=y)
    predictive = pyro.infer.Predictive(model, guide=given, num_samples=3)(x)
    assert predictive["z"].shape == predictive["y"].shape == (3, 20)


def test_a_generative_model_with_its_data_defaulting_to_none():
    # Pyro's LDA: model(data=None, ...) generates a corpus when data is None.
    # data is the plate's only data: it feeds the encoder, by name too.
    def model(data=None, num_docs=8):
        with pyro.plate("documents", num_docs, dim=-1):
            rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
            with pyro.plate("words", 5, dim=-2):
                pyro.sample("counts", dist.Poisson(rate), obs=data)

    counts = torch.poisson(torch.full((5, 8), 3.0))
    for amortize_on in (None, "data"):
        pyro.clear_param_store()
        guide = AutoAmortizedGuide(model, amortize_on=amortize_on)
        guide(counts)
        assert guide.data_plates == {"documents": ("data",)} and guide.local_sites == ("rate",)


@pytest.mark.parametrize("where", ["local count", "global"])
def test_discrete_latent_without_an_amortized_head(where):
    def model(x):
        switch = pyro.sample("switch", dist.Bernoulli(0.5))
        with pyro.plate("data", x.shape[0]):
            count = pyro.sample("count", dist.Poisson(3.0))
            pyro.sample("x", dist.Normal(count + switch, 1.0), obs=x)

    blocked = poutine.block(model, hide=["count" if where == "global" else "switch"])
    expected = {
        "global": "'switch' is discrete and global: it sits outside every data plate",
        "local count": "'count' has discrete support .* no amortized head",
    }[where]
    with pytest.raises(ValueError, match=expected) as error:
        AutoAmortizedGuide(blocked)(torch.zeros(3))
    assert "infer={'enumerate': 'parallel'}" in str(error.value)
    assert "https://pyro.ai/examples/enumeration.html" in str(error.value)


def test_discrete_values_of_one_event_are_told_to_take_a_plate():
    # Pyro's SVI tutorial (part III): k drawn for every data point as one event.
    def model(x):
        k = pyro.sample("k", dist.Categorical(torch.ones(x.shape[0], 2) / 2).to_event(1))
        pyro.sample("x", dist.Normal(k.float(), 1.0).to_event(1), obs=x)

    with pytest.raises(ValueError, match=r"'k' is discrete and global") as error:
        AutoAmortizedGuide(model)(torch.zeros(4))
    assert "declare a pyro.plate over them in place of .to_event()" in str(error.value)
    assert "enumerate': 'parallel'" not in str(error.value)  # Pyro cannot enumerate it


def test_an_error_of_the_guides_own_run_of_the_model_says_so():
    # pyro.contrib.forecast's Forecaster conditions its forecast on the observed
    # prefix from outside: run on the arguments alone, the model fails.
    def model(x):
        assert x.shape[0] == 3, "the model's own check"
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    guide = AutoAmortizedGuide(model)
    guide(torch.zeros(3))
    with pytest.raises(AssertionError, match="the model's own check") as error:
        guide(torch.zeros(5))
    assert "a run of the model that the guide makes" in error.value.__notes__[0]


def _direction_model(x):
    with pyro.plate("data", x.shape[0]):
        direction = pyro.sample("direction", dist.ProjectedNormal(torch.ones(2)))
        pyro.sample("x", dist.Normal(direction[..., 0], 1.0), obs=x)


def test_support_without_a_bijection_names_the_reparametrizer():
    with pytest.raises(ValueError, match="support Sphere, which has no bijection") as error:
        AutoAmortizedGuide(_direction_model)(torch.zeros(3))
    assert "ProjectedNormalReparam" in str(error.value)
    assert "config={'direction': ProjectedNormalReparam()}" in str(error.value)


def test_the_named_reparametrizer_makes_the_sphere_site_local():
    model = poutine.reparam(_direction_model, config={"direction": ProjectedNormalReparam()})
    guide = AutoAmortizedGuide(model)
    guide(torch.zeros(3))
    assert guide.local_sites == ("direction_normal",)


def test_unsized_plates_read_as_sized_ones():
    def model(x, unsized):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data") if unsized else pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([x.shape[0]]))
            pyro.sample("x", dist.Normal(loc + z, 1.0).to_event(1).expand([x.shape[0]]), obs=x)

    x = torch.randn(7, 1).expand(7, 3)
    sized, unsized = (_structure(model, x, flag) for flag in (False, True))
    assert unsized.data_plates == sized.data_plates
    assert unsized.frames["data"].size == unsized.frames["data"].full_size == 7
    assert unsized.sites == sized.sites


@pytest.mark.parametrize(
    "reparam, prior",
    [
        (LocScaleReparam(0.5), dist.Normal(1.0, 2.0)),
        (LatentStableReparam(), dist.Stable(1.5, 0.3, 2.0, 1.0)),
    ],
    ids=["LocScaleReparam", "LatentStableReparam"],
)
def test_reparametrized_sites_are_not_data(reparam, prior):
    # The reparametrizers leave an observed point mass at the original site:
    # it holds no data, so the model has none (no closure-data error).
    def model():
        with pyro.plate("units", 5):
            pyro.sample("effect", prior)

    model = poutine.reparam(model, config={"effect": reparam})
    guide = AutoAmortizedGuide(model)
    with pytest.warns(UserWarning, match="nothing to amortize"):
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO())
        losses = [svi.step() for _ in range(3)]
    assert guide.data_plates == {} and guide.local_sites == ()
    assert "effect" not in guide.global_sites and guide.global_sites
    assert all(math.isfinite(loss) for loss in losses)


def test_reparametrized_local_sites_beside_data_are_local():
    def model(x):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            effect = pyro.sample("effect", dist.Normal(0.0, scale))
            pyro.sample("x", dist.Normal(effect, 1.0), obs=x)

    model = poutine.reparam(model, config={"effect": LocScaleReparam(0.0)})
    structure = _structure(model, torch.zeros(6))
    assert structure.data_plates["data"].inputs == ("x",)
    assert structure.local_sites == ("effect_decentered",)


def test_batch_dimensions_left_of_the_data_plate():
    def model(x):
        with pyro.plate("groups", 3, dim=-2):
            with pyro.plate("data", x.shape[0], dim=-1):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(ValueError, match="to the left of its data plate 'data'"):
        AutoAmortizedGuide(model, amortize_on={"data": "x"})(torch.zeros(4))


def test_subsampled_inner_plate_of_local_sites():
    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            with pyro.plate("cols", x.shape[1], subsample_size=2, dim=-1) as cols:
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, cols])

    with pytest.raises(ValueError, match="plate 'cols', which subsamples"):
        AutoAmortizedGuide(model)(torch.zeros(4, 3))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"init_scale": 0.0}, "init_scale must be a positive number"),
        ({"init_scale": "big"}, "init_scale must be a positive number"),
        ({"encoder": "mlp"}, "encoder must be an nn.Module or a mapping"),
        ({"encoder": {"data": "mlp"}}, "Every value of the encoder mapping"),
        ({"amortize_on": 3}, "amortize_on must be an argument name"),
        ({"hidden_dims": (-1,)}, "hidden_dims must be positive integers"),
        ({"init_loc_fn": "median"}, "init_loc_fn must be callable"),
    ],
)
def test_options_are_validated_up_front(options, message):
    with pytest.raises(ValueError, match=message):
        AutoAmortizedGuide(factor_model, **options)


def test_encoder_for_an_unknown_plate():
    guide = AutoAmortizedGuide(factor_model, encoder={"rows": MLPEncoder()})
    with pytest.raises(ValueError, match=r"encoder names plates \['rows'\].*\['data'\]"):
        guide(factor_data(5))


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        AutoAmortizedGuide(factor_model, "x")


def test_factors_and_deterministic_sites_are_not_data():
    def model(x):
        with pyro.plate("components", 3):
            loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
            pyro.factor("penalty", -(loc**2))
            pyro.deterministic("double", 2 * loc)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(loc.sum(), 1.0))
            pyro.deterministic("shifted", z + 1.0)
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    structure = _structure(model, torch.zeros(5))
    assert structure.global_sites == ("loc",)
    assert structure.local_sites == ("z",)
    assert list(structure.data_plates) == ["data"]
