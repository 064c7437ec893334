"""AutoAmortizedGuide and its families inside Pyro's inference machinery."""

import functools
import io
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import FAMILIES, SEED, decrease, train
from models import (
    count_data,
    factor_data,
    factor_model,
    indexed_batch_model,
    indexed_model,
    minibatch_model,
    mixture_data,
    mixture_model,
    nested_model,
    presubsampled_model,
    regression_data,
    regression_model,
)
from pyro import poutine
from pyro.infer import (
    SVI,
    JitTrace_ELBO,
    Predictive,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.initialization import (
    init_to_median,
    init_to_sample,
    init_to_value,
)

from pyro_amortized import (
    AutoAmortizedDelta,
    AutoAmortizedGuide,
    AutoAmortizedLowRankMultivariateNormal,
    AutoAmortizedNormal,
    AutoAmortizedNormalizingFlow,
    MLPEncoder,
)
from pyro_amortized.flow_heads import FlowHead

MODELS = {
    "factor": (factor_model, lambda n: (factor_data(n),)),
    "minibatch": (minibatch_model, lambda n: (factor_data(n),)),
    "regression": (regression_model, regression_data),
    "nested": (nested_model, lambda n: (count_data(n),)),
}


def _model_shapes(model, args):
    trace = poutine.trace(model).get_trace(*args)
    return {name: site["value"].shape for name, site in trace.iter_stochastic_nodes()}


def test_normal_is_the_default_family():
    assert AutoAmortizedNormal is AutoAmortizedGuide
    assert issubclass(AutoAmortizedDelta, AutoGuide)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", MODELS)
def test_guide_values_match_model_shapes(family, name):
    model, make_args = MODELS[name]
    args = make_args(20)
    guide = family(model)
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    for site in guide.local_sites + guide.global_sites:
        assert guide_trace.nodes[site]["value"].shape == model_trace.nodes[site]["value"].shape
        assert model_trace.nodes[site]["fn"].support.check(guide_trace.nodes[site]["value"]).all()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", MODELS)
def test_test_time_on_new_data_of_another_size(family, name):
    model, make_args = MODELS[name]
    guide = family(model)
    guide(*make_args(40))
    new = make_args(7)
    shapes = {
        site: shape[:1] if site in guide.global_sites else shape
        for site, shape in _model_shapes(model, new).items()
    }
    encoded = guide.encode(*new)
    assert set(encoded) == set(guide.local_sites)
    for site, q in encoded.items():
        assert q.batch_shape + q.event_shape == shapes[site]
        value = q.sample()
        assert value.shape == shapes[site]
        assert torch.isfinite(q.log_prob(value)).all()
    medians = guide.median(*new)
    quantiles = guide.quantiles([0.1, 0.5, 0.9], *new)
    for site in guide.local_sites:
        assert medians[site].shape == shapes[site]
        assert quantiles[site].shape == (3,) + shapes[site]
    for site in guide.global_sites:
        assert quantiles[site].shape[0] == 3


def test_quantiles_bracket_the_median():
    x = factor_data(30)
    guide = AutoAmortizedGuide(factor_model)
    train(factor_model, guide, x, steps=50)
    quantiles = guide.quantiles([0.1, 0.5, 0.9], x)
    median = guide.median(x)
    for site in ("z", "noise", "w"):
        assert (quantiles[site][0] < quantiles[site][2]).all()
        assert torch.allclose(quantiles[site][1], median[site], atol=1e-5)


def test_encode_rsample_has_gradients_and_no_param_store_effects():
    x = factor_data(30)
    guide = AutoAmortizedGuide(factor_model)
    guide(x)
    pyro.clear_param_store()
    value = guide.encode(x)["z"].rsample()
    value.sum().backward()
    assert any(p.grad is not None for p in guide.network.encoders.parameters())
    assert len(pyro.get_param_store()) == 0


# ------------------------------------------------------------------ subsampling


def test_guide_encodes_the_model_minibatch_rows():
    x = factor_data(100)
    # Random global init: at w = 0 a MAP guide would sit at a saddle point.
    guide = AutoAmortizedDelta(factor_model, init_loc_fn=init_to_sample)
    train(factor_model, guide, x, steps=5)
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(factor_model, trace=guide_trace)).get_trace(x)
    rows = guide_trace.nodes["data"]["value"]
    assert rows.shape == (32,)
    assert torch.equal(model_trace.nodes["data"]["value"], rows)
    assert torch.equal(model_trace.nodes["x"]["value"], x[rows])
    # The Delta family is deterministic: the guide's codes are those of exactly these rows.
    assert torch.equal(guide_trace.nodes["z"]["value"], guide.median(x[rows])["z"])
    assert not torch.equal(guide_trace.nodes["z"]["value"], guide.median(x[:32])["z"])


def test_indices_passed_by_the_model_are_the_guide_minibatch():
    x, indices = factor_data(100), torch.randperm(100)[:16]
    guide = AutoAmortizedDelta(indexed_model, init_loc_fn=init_to_sample)
    train(indexed_model, guide, x, indices, steps=5)
    assert guide.data_plates == {"data": ("x",)}  # the indices feed no encoder
    guide_trace = poutine.trace(guide).get_trace(x, indices)
    assert torch.equal(guide_trace.nodes["data"]["value"], indices)
    assert torch.equal(guide_trace.nodes["z"]["value"], guide.median(x[indices])["z"])


def test_indices_passed_with_the_minibatch_rows():
    x = factor_data(100)
    guide = AutoAmortizedGuide(indexed_batch_model)
    losses = train(indexed_batch_model, guide, x[:20], torch.arange(20), 100, steps=3)
    assert torch.isfinite(torch.tensor(losses)).all()
    assert guide.data_plates == {"data": ("x",)}
    trace = poutine.trace(guide).get_trace(x[40:50], torch.arange(40, 50), 100)
    assert torch.equal(trace.nodes["data"]["value"], torch.arange(40, 50))
    assert trace.nodes["z"]["scale"] == 10.0


def test_float_data_passed_as_subsample_is_data_not_indices():
    # Pyro's CEVAE sizes its plate from the data: pyro.plate("data", N, subsample=x).
    def model(x):
        with pyro.plate("data", x.shape[0], subsample=x):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            noise = dist.Normal(z.unsqueeze(-1), 0.5).expand(z.shape + x.shape[-1:])
            pyro.sample("x", noise.to_event(1), obs=x)

    x = torch.randn(40, 1).expand(40, 3)
    guide = AutoAmortizedGuide(model, hidden_dims=())
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True)
    losses = train(model, guide, x, steps=1500, lr=0.05, lrd=0.998, elbo=elbo)
    assert guide.data_plates == {"data": ("x",)}  # the encoder reads x
    assert all(torch.isfinite(torch.tensor(losses)))
    # z | x ~ N(3 x / 3.25, 1 / 13): the guide has seen x.
    expected = 3 * x[:, 0] / 3.25
    error = (guide.median(x)["z"] - expected).abs().max()
    print(f"largest error of the posterior mean: {error:.3f}")
    assert error < 0.15


def test_plates_without_guide_sites_are_rebuilt_per_call():
    # A subsampled plate that holds only observed sites (Pyro's HMM example,
    # "sequences"): full data, then a test set of another size.
    def model(x):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("sequences", x.shape[0], subsample_size=min(8, x.shape[0])) as rows:
            pyro.sample("x", dist.Normal(0.0, scale), obs=x[rows])

    guide = AutoAmortizedGuide(model)
    with pytest.warns(UserWarning, match="nothing to amortize"):
        train(model, guide, torch.randn(200), steps=2)
    for rows in (200, 60):
        trace = poutine.trace(guide).get_trace(torch.randn(rows))
        assert trace.nodes["sequences"]["value"].shape == (8,)
        assert trace.nodes["sequences"]["value"].max() < rows
        replayed = poutine.trace(poutine.replay(model, trace=trace)).get_trace(torch.randn(rows))
        assert torch.equal(replayed.nodes["sequences"]["value"], trace.nodes["sequences"]["value"])
    # Five rows take every row: the guide leaves the plate to the model, as Pyro's
    # autoguides leave plates that hold none of their sites.
    trace = poutine.trace(guide).get_trace(torch.randn(5))
    assert "sequences" not in trace.nodes
    replayed = poutine.trace(poutine.replay(model, trace=trace)).get_trace(torch.randn(5))
    assert torch.equal(replayed.nodes["sequences"]["value"], torch.arange(5))


def test_packed_sequence_arguments_hit_the_plate_size_cache():
    from torch.nn.utils.rnn import pack_sequence

    runs = []

    def model(x, packed):
        runs.append(1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    guide = AutoAmortizedGuide(model, amortize_on="x")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())

    def batch():
        return torch.randn(3), pack_sequence([torch.randn(4), torch.randn(3), torch.randn(2)])

    svi.step(*batch())
    runs.clear()
    for _ in range(5):
        svi.step(*batch())
    assert len(runs) == 5  # the model runs once a step: no new prototype per call


def test_indices_the_guide_cannot_find_are_a_clear_error():
    def model(x):
        with pyro.plate("data", x.shape[0], subsample=torch.arange(5)):
            pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x[:5])

    with pytest.raises(ValueError, match="not one of its arguments"):
        AutoAmortizedGuide(model)(torch.randn(10))


def test_user_minibatches_and_a_short_last_batch():
    x = factor_data(135)
    guide = AutoAmortizedGuide(minibatch_model)
    svi = SVI(minibatch_model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(3):
        for batch in x.split(64):  # 64, 64, 7
            assert torch.isfinite(torch.tensor(svi.step(batch)))
    trace = poutine.trace(guide).get_trace(x[:7])
    assert trace.nodes["z"]["value"].shape == (7, 2)


def test_presubsampled_data_scales_like_the_model():
    x = factor_data(20)
    guide = AutoAmortizedGuide(presubsampled_model)
    guide_trace = poutine.trace(guide).get_trace(x, 1000)
    model_trace = poutine.trace(poutine.replay(presubsampled_model, trace=guide_trace)).get_trace(
        x, 1000
    )
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    assert guide_trace.nodes["z"]["scale"] == model_trace.nodes["z"]["scale"] == 50.0
    assert guide.encode(x[:3], 1000)["z"].batch_shape == (3,)


def test_subsampled_plate_on_new_data_smaller_than_the_batch():
    guide = AutoAmortizedGuide(factor_model)
    guide(factor_data(200))
    trace = poutine.trace(guide).get_trace(factor_data(10))
    assert trace.nodes["z"]["value"].shape == (10, 2)
    trace = poutine.trace(guide).get_trace(factor_data(5000))
    assert trace.nodes["z"]["value"].shape == (32, 2)


def batch_size_model(x, batch_size=None):
    """The minibatch size is an argument: the guide follows each call's choice."""
    with pyro.plate("data", x.shape[0], subsample_size=batch_size):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=pyro.subsample(x, event_dim=0))


def test_guide_subsamples_as_the_model_does_in_each_call():
    x = torch.randn(300)
    guide = AutoAmortizedGuide(batch_size_model)
    guide(x[:20])  # first call: a small batch, no subsampling
    train(batch_size_model, guide, x, batch_size=100, steps=3)
    assert poutine.trace(guide).get_trace(x, batch_size=100).nodes["z"]["value"].shape == (100,)
    assert poutine.trace(guide).get_trace(x).nodes["z"]["value"].shape == (300,)
    assert poutine.trace(guide).get_trace(x, 7).nodes["z"]["value"].shape == (7,)


def test_rows_matching_neither_the_plate_nor_the_minibatch():
    def model(x, num_data):
        with pyro.plate("data", num_data, subsample_size=10):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:10])

    guide = AutoAmortizedGuide(model, amortize_on="x")
    guide(torch.zeros(10), 50)
    with pytest.raises(ValueError, match="'x' has 30 rows, but plate 'data' has size 50"):
        guide(torch.zeros(30), 50)


# ----------------------------------------------------------------- inference


ELBOS = {
    "Trace_ELBO": lambda: Trace_ELBO(),
    "TraceMeanField_ELBO": lambda: TraceMeanField_ELBO(),
    "TraceGraph_ELBO": lambda: TraceGraph_ELBO(),
    "JitTrace_ELBO": lambda: JitTrace_ELBO(ignore_jit_warnings=True),
    "vectorized_particles": lambda: Trace_ELBO(num_particles=4, vectorize_particles=True),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("elbo", ELBOS)
def test_elbos_train(family, elbo):
    x = factor_data(200)
    guide = family(factor_model)
    # At 0.02 the flow family's local flows diverged after 150 steps in one run of 14.
    losses = train(factor_model, guide, x, steps=300, lr=0.01, elbo=ELBOS[elbo]())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert decrease(losses, window=50) < 0


@pytest.mark.parametrize("family", FAMILIES)
def test_trace_mean_field_elbo_scores_constrained_sites_as_trace_elbo(family):
    # Positive sites are drawn unconstrained and mapped: the KL divergence that
    # TraceMeanField_ELBO takes of the mapped draw must keep the Jacobian,
    # which makes its loss, draw for draw, that of Trace_ELBO.
    def model(x):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            lam = pyro.sample("lam", dist.Gamma(rate, 1.0))
            pyro.sample("x", dist.Poisson(lam.unsqueeze(-1)).to_event(1), obs=x)

    x = dist.Poisson(3.0).sample([20, 5])
    guide = family(model)
    guide(x)
    for seed in range(3):
        pyro.set_rng_seed(SEED + seed)
        mean_field = TraceMeanField_ELBO().loss(model, guide, x)
        pyro.set_rng_seed(SEED + seed)
        expected = Trace_ELBO().loss(model, guide, x)
        assert mean_field == pytest.approx(expected, rel=1e-5, abs=1e-3)


@pytest.mark.parametrize("flow", ["spline", "iaf"])
def test_flows_under_jit_compute_the_eager_loss(flow):
    # The spline is the identity outside its interval, and how many noise values
    # fall outside changes from call to call: the compiled loss must follow.
    x = factor_data(2000)
    # A narrow interval, so that many noise values fall outside it.
    head = functools.partial(FlowHead, flow=flow, bound=1.0)
    guide = AutoAmortizedNormalizingFlow(
        minibatch_model, flow=flow, init_scale=1.0, site_families={"z": head}
    )
    guide(x)
    jit, eager = ELBOS["JitTrace_ELBO"](), Trace_ELBO()
    pyro.set_rng_seed(SEED + 100)
    jit.differentiable_loss(minibatch_model, guide, x)  # compiles
    for seed in range(3):
        pyro.set_rng_seed(SEED + seed)
        compiled = jit.differentiable_loss(minibatch_model, guide, x)
        pyro.set_rng_seed(SEED + seed)
        expected = eager.differentiable_loss(minibatch_model, guide, x)
        assert torch.allclose(compiled, expected, rtol=1e-5), (seed, compiled, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_trace_enum_elbo_with_model_enumerated_sites(family):
    x, centers = mixture_data(200, with_centers=True)
    init = init_to_value(values={"locs": torch.tensor([-1.0, 1.0])})  # breaks the symmetry
    guide = family(mixture_model, init_loc_fn=init)
    losses = train(
        mixture_model,
        guide,
        x,
        steps=600,
        lr=0.05,
        lrd=0.995,  # to 0.0025: the last steps settle rather than wander
        elbo=TraceEnum_ELBO(max_plate_nesting=1),
    )
    assert "assignment" not in guide.local_sites + guide.global_sites
    assert all(torch.isfinite(torch.tensor(losses)))
    assert decrease(losses, window=50) < 0
    # The posterior means of the locations are close to the clusters' sample
    # means (posterior sd about 0.11). Largest error at seeds 0-2 for the flow: 0.15.
    cluster_means = torch.stack([x[centers < 0].mean(), x[centers > 0].mean()])
    error = (guide.median(x)["locs"].sort().values - cluster_means).abs().max()
    assert error < 0.35


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("parallel", [False, True])
def test_predictive_on_new_data(family, parallel):
    guide = family(minibatch_model)
    train(minibatch_model, guide, factor_data(50), steps=20)
    predictive = Predictive(minibatch_model, guide=guide, num_samples=6, parallel=parallel)
    samples = predictive(factor_data(9, seed=1))
    assert samples["z"].shape == (6, 9, 2)
    assert samples["w"].shape[0] == 6 and samples["w"].shape[-2:] == (2, 5)


def test_replayed_model_scores_the_guide_sample():
    x = factor_data(50)
    guide = AutoAmortizedGuide(factor_model)
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(factor_model, trace=guide_trace)).get_trace(x)
    for site in ("w", "noise", "z"):
        assert model_trace.nodes[site]["value"] is guide_trace.nodes[site]["value"]
    assert torch.isfinite(model_trace.log_prob_sum() - guide_trace.log_prob_sum())


def test_log_density_of_constrained_sites_matches_the_transformed_distribution():
    counts = count_data(6)
    guide = AutoAmortizedGuide(nested_model)
    guide_trace = poutine.trace(guide).get_trace(counts)
    guide_trace.compute_log_prob()
    encoded = guide.encode(counts)
    for site in ("theta", "corr", "cov", "rate"):
        unconstrained = guide_trace.nodes[site + "_unconstrained"]["log_prob"]
        delta = guide_trace.nodes[site]["log_prob"]
        expected = encoded[site].log_prob(guide_trace.nodes[site]["value"])
        assert torch.allclose(unconstrained + delta, expected, atol=1e-4), site


# ------------------------------------------------------------- model reading


def test_reads_sites_plates_and_inputs():
    guide = AutoAmortizedGuide(regression_model)
    guide(*regression_data(10))
    assert guide.local_sites == ("effect", "scale")
    assert guide.global_sites == ("coef",)
    assert guide.data_plates == {"units": ("covariates", "y")}


@pytest.mark.parametrize(
    "amortize_on, inputs",
    [("covariates", ("covariates",)), (["y"], ("y",)), ({"units": "y"}, ("y",))],
)
def test_amortize_on_overrides_the_inputs(amortize_on, inputs):
    guide = AutoAmortizedGuide(regression_model, amortize_on=amortize_on)
    covariates, y = regression_data(10)
    guide(covariates, y)
    assert guide.data_plates == {"units": inputs}
    assert guide.encode(covariates, y)["effect"].batch_shape == (10,)


def test_a_data_plate_whose_local_sites_the_model_enumerates_says_so():
    def model(x):
        p = pyro.sample("p", dist.Beta(1.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(p), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)

    guide = AutoAmortizedGuide(model)
    with pytest.warns(UserWarning, match=r"enumerates its local sites \(\['z'\] in plate 'data'"):
        TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, torch.randn(20))
    assert guide.local_sites == () and guide.global_sites == ("p",)


def test_model_without_data_plate_warns_and_behaves_as_autonormal():
    def model(y):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        pyro.sample("y", dist.Normal(loc, 1.0).expand(y.shape).to_event(1), obs=y)

    guide = AutoAmortizedGuide(model)
    y = torch.randn(50) + 2.0
    with pytest.warns(UserWarning, match="nothing to amortize"):
        guide(y)
    assert guide.local_sites == () and guide.global_sites == ("loc",)
    train(model, guide, y, steps=1000, lr=0.05, lrd=0.995)
    # Conjugate: posterior N(50 mean / (50 + 0.01), 1 / (50 + 0.01)).
    exact_loc = y.sum() / (50 + 0.01)
    assert abs(guide.median(y)["loc"] - exact_loc) < 0.05


def test_nn_module_models_are_bound_through_forward():
    class Model(pyro.nn.PyroModule):
        def __init__(self):
            super().__init__()
            self.decoder = torch.nn.Linear(2, 5)

        def forward(self, x, scale=0.5):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
                pyro.sample("x", dist.Normal(self.decoder(z), scale).to_event(1), obs=x)

    model = Model()
    guide = AutoAmortizedGuide(model)
    losses = train(model, guide, factor_data(64), steps=100, lr=0.02)
    assert guide.data_plates == {"data": ("x",)}
    assert decrease(losses, window=20) < 0


def test_module_local_params_train_with_a_torch_optimizer():
    with pyro.settings.context(module_local_params=True):
        x = factor_data(64)
        guide = AutoAmortizedGuide(minibatch_model)
        elbo = Trace_ELBO()(minibatch_model, guide)
        elbo(x)
        optimizer = torch.optim.Adam(elbo.parameters(), lr=0.02)
        losses = []
        for _ in range(100):
            optimizer.zero_grad()
            loss = elbo(x)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert len(pyro.get_param_store()) == 0
    assert decrease(losses, window=20) < 0


# ------------------------------------------------------------ encoders, init


def test_custom_encoder_reads_each_input_in_its_own_shape():
    class TwoInputEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 8)
            self.calls = []

        def forward(self, covariates, y):
            self.calls.append((covariates.shape, y.shape))
            return torch.tanh(self.linear(torch.cat([covariates, y.unsqueeze(-1)], -1)))

    encoder = TwoInputEncoder()
    guide = AutoAmortizedGuide(regression_model, encoder=encoder)
    covariates, y = regression_data(12)
    guide(covariates, y)
    assert encoder.calls[-1] == ((12, 3), (12,))
    # The encoder's 8 features and the 3 global coefficients the posterior
    # couples; the guide samples scale first (the inverse of the model's order).
    assert guide.upstream_sites == {"scale": ("coef",), "effect": ("coef", "scale")}
    assert guide.network.heads["scale"].loc.in_features == 8 + 3
    assert guide.network.heads["effect"].loc.in_features == 8 + 3 + 1
    assert guide.network.encoders["units"] is encoder


def test_image_inputs_and_an_encoder_per_plate():
    def model(images):
        with pyro.plate("images", images.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
            mean = z.sum(-1)[:, None, None, None].expand(images.shape)
            pyro.sample("pixels", dist.Normal(mean, 1.0).to_event(3), obs=images)

    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten())
    guide = AutoAmortizedGuide(model, encoder={"images": conv})
    images = torch.randn(5, 1, 8, 8)
    assert guide(images)["z"].shape == (5, 3)
    assert guide.network.heads["z"].loc.in_features == 2 * 6 * 6
    default = AutoAmortizedDelta(model, hidden_dims=(16,))
    assert default(images)["z"].shape == (5, 3)  # default encoder flattens the images


def test_integer_data_is_cast_for_the_encoder():
    counts = count_data(8).long()
    guide = AutoAmortizedGuide(lambda c: nested_model(c.float()), amortize_on=None)
    guide(counts)
    assert guide.encode(counts)["rate"].batch_shape == (8, 4)


def test_local_heads_start_at_init_loc_fn():
    def model(y):
        with pyro.plate("data", y.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(3.0, 1.0))
            pyro.sample("y", dist.Poisson(rate), obs=y)

    y = torch.poisson(torch.full((40,), 3.0))
    guide = AutoAmortizedDelta(model, init_loc_fn=init_to_median(num_samples=200))
    prior_median = dist.Gamma(3.0, 1.0).sample([10000]).median()
    assert torch.allclose(guide.median(y)["rate"] if guide(y) else None, prior_median, rtol=0.1)


def test_parameter_count_does_not_grow_with_the_data():
    counts = []
    for num_rows in (100, 100_000):
        pyro.clear_param_store()
        guide = AutoAmortizedGuide(factor_model)
        guide(factor_data(num_rows))
        counts.append(sum(p.numel() for p in guide.parameters()))
    assert counts[0] == counts[1]


def test_mlp_encoder_shapes_and_validation():
    encoder = MLPEncoder(hidden_dims=(16, 8), activation=torch.nn.Tanh)
    assert encoder(torch.randn(4, 2, 3), torch.randn(4)).shape == (4, 8)
    assert MLPEncoder(hidden_dims=())(torch.randn(4, 3)).shape == (4, 3)
    x, y = torch.randn(4, 2, 3), torch.randn(4)
    skip = MLPEncoder(hidden_dims=(16, 8), include_inputs=True)
    features = skip(x, y)
    assert features.shape == (4, 7 + 8)  # the six values of x and y's, then the layers'
    assert torch.equal(features[:, :7], torch.cat([x.reshape(4, 6), y[:, None]], -1))
    assert torch.equal(features[:, 7:], skip.layers(features[:, :7]))
    assert MLPEncoder(hidden_dims=(), include_inputs=True)(x, y).shape == (4, 7)
    with pytest.raises(ValueError, match="include_inputs must be True or False"):
        MLPEncoder(include_inputs=1)
    with pytest.raises(ValueError, match="hidden_dims must be positive integers"):
        MLPEncoder(hidden_dims=(0,))
    with pytest.raises(ValueError, match="activation must be an nn.Module class"):
        MLPEncoder(activation=torch.tanh)


# ------------------------------------------------------------------ persistence


def _trained(family=AutoAmortizedGuide):
    guide = family(factor_model)
    train(factor_model, guide, factor_data(100), steps=30)
    return guide


def _assert_same_encoding(guide, other, x):
    assert torch.equal(guide.median(x)["z"], other.median(x)["z"])
    q, other_q = guide.encode(x)["z"], other.encode(x)["z"]
    value = q.sample() + 0.0  # a new tensor: no cached transform pass to reuse
    assert torch.equal(q.log_prob(value), other_q.log_prob(value))


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_round_trip(family):
    guide = _trained(family)
    pyro.clear_param_store()  # else the fresh guide takes the stored parameters
    fresh = family(factor_model)
    fresh(factor_data(10))
    x_new = factor_data(17, seed=5)
    assert not torch.equal(guide.median(x_new)["z"], fresh.median(x_new)["z"])
    fresh.load_state_dict(guide.state_dict())
    _assert_same_encoding(guide, fresh, x_new)


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_save_and_pickle_keep_encoding_new_data(family):
    guide = _trained(family)
    x_new = factor_data(17, seed=5)
    buffer = io.BytesIO()
    torch.save(guide, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    unpickled = pickle.loads(pickle.dumps(guide))
    pyro.clear_param_store()
    for other in (loaded, unpickled):
        _assert_same_encoding(guide, other, x_new)
        assert other.local_sites == ("z",)
    assert guide.model is factor_model  # saving does not touch the live guide
    assert len(pyro.get_param_store()) == 0


def test_to_device_and_dtype():
    guide = _trained()
    assert guide.to("cpu") is guide
    guide.to(torch.float64)
    x = factor_data(5).double()
    assert guide.encode(x)["z"].sample().dtype == torch.float64
    assert guide(x)["z"].dtype == torch.float64


def test_first_call_inside_vectorized_particles():
    guide = AutoAmortizedGuide(factor_model)
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    losses = train(factor_model, guide, factor_data(50), steps=3, elbo=elbo)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert guide.global_params.w.loc.shape == (2, 5)  # no particle dimension
    assert guide.network.heads["z"].loc.bias.shape == (2,)


def test_site_families_choose_a_family_per_local_site():
    counts = count_data(8)
    guide = AutoAmortizedGuide(
        nested_model, site_families={"theta": "multivariate_normal", "cov": "delta"}
    )
    train(nested_model, guide, counts, steps=5)
    heads = guide.network.heads
    assert type(heads["theta"]).__name__ == "MultivariateNormalHead"
    assert type(heads["cov"]).__name__ == "DeltaHead"
    assert type(heads["rate"]).__name__ == "NormalHead"
    encoded = guide.encode(counts)
    assert isinstance(encoded["cov"], dist.Delta)
    assert encoded["theta"].sample().shape == (8, 1, 3)


def test_site_families_errors():
    with pytest.raises(ValueError, match="family 'flowy'. A local site's family is one of normal"):
        AutoAmortizedGuide(factor_model, site_families={"z": "flowy"})
    guide = AutoAmortizedGuide(factor_model, site_families={"v": "delta"})
    with pytest.raises(
        ValueError, match=r"names \['v'\], which are not latent.*local sites are: z"
    ):
        guide(factor_data(5))
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        AutoAmortizedLowRankMultivariateNormal(factor_model, rank=0)
    with pytest.raises(ValueError, match="flow must be one of spline, iaf"):
        AutoAmortizedNormalizingFlow(factor_model, flow="maf")
    with pytest.raises(ValueError, match="num_flows must be a positive integer"):
        AutoAmortizedNormalizingFlow(factor_model, num_flows=0)


def test_site_families_naming_a_discrete_site_is_an_error():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            label = pyro.sample("label", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(label, 1.0), obs=x)

    guide = AutoAmortizedGuide(model, site_families={"label": "normal"})
    with pytest.raises(ValueError, match=r"discrete sites \['label'\].*amortized logits"):
        guide(torch.randn(5))


@pytest.mark.parametrize("family", FAMILIES)
def test_constrained_and_nested_local_sites_train(family):
    counts = count_data(64)
    guide = family(nested_model, hidden_dims=(32,))
    losses = train(nested_model, guide, counts, steps=200, lr=0.02)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert decrease(losses, window=40) < 0


def test_site_and_plate_names_that_are_module_attributes():
    def model(items, training):
        with pyro.plate("items", items.shape[0]):
            keys = pyro.sample("keys", dist.Normal(0.0, 1.0))
            pyro.sample("obs", dist.Normal(keys, 1.0), obs=items)
        forward = pyro.sample("forward", dist.Normal(0.0, 1.0))
        with pyro.plate("training", training.shape[0]):
            pyro.sample("t", dist.Normal(forward, 1.0), obs=training)

    guide = AutoAmortizedGuide(model)
    losses = train(model, guide, torch.randn(6), torch.randn(4), steps=20)
    assert guide.data_plates == {"items": ("items",)}
    assert guide.global_sites == ("forward",)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert guide.encode(torch.randn(3), torch.randn(4))["keys"].batch_shape == (3,)


def test_a_user_encoder_is_registered_once():
    encoder = torch.nn.Sequential(torch.nn.LazyLinear(8), torch.nn.ReLU())
    guide = AutoAmortizedGuide(factor_model, encoder=encoder)
    train(factor_model, guide, factor_data(40), steps=3)
    names = [name for name in guide.state_dict() if "encoders" in name or "encoder" in name]
    assert names == ["network.encoders.data.0.weight", "network.encoders.data.0.bias"]


def test_warnings_name_the_line_that_called_the_guide():
    def model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    pyro.clear_param_store()
    guide = AutoAmortizedGuide(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    with pytest.warns(UserWarning, match="nothing to amortize") as record:
        svi.step(torch.randn(5))  # the line the warning names
    (warning,) = [w for w in record if "nothing to amortize" in str(w.message)]
    assert warning.filename == __file__
    assert "svi.step" in open(__file__).read().splitlines()[warning.lineno - 1]
