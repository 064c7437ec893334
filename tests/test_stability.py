"""Numerical stability: inputs of large magnitude, extreme initialization, scale
floors, diverged parameters, and long training on the tutorials' models.

The long runs take 300 steps per model in ``make test`` and 10,000 with
``PYRO_AMORTIZED_SLOW=1`` (``PYRO_AMORTIZED_STEPS=n``: n steps).
"""

import math
import os
import warnings
from contextlib import nullcontext

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEED, kl_diag_normal
from models import shared_mean_model
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide.initialization import init_to_sample, init_to_value
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from torch import nn

from pyro_amortized import (
    AutoAmortizedGuide,
    AutoAmortizedLowRankMultivariateNormal,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormalizingFlow,
    LocalIWAE,
    MLPEncoder,
)
from pyro_amortized.datasets import load_digits_binarized
from pyro_amortized.encoders import StandardizingEncoder
from pyro_amortized.heads import MIN_SCALE
from pyro_amortized.models import Decoder, digits_vae_model
from pyro_amortized.simulators import gaussian_linear

LONG_STEPS = int(
    os.environ.get(
        "PYRO_AMORTIZED_STEPS", 10_000 if os.environ.get("PYRO_AMORTIZED_SLOW") == "1" else 300
    )
)


def optimizer(lr, final_lr, steps):
    """ClippedAdam whose rate falls from ``lr`` to ``final_lr`` over ``steps``."""
    return pyro.optim.ClippedAdam({"lr": lr, "lrd": (final_lr / lr) ** (1 / steps)})


def run(model, guide, args, *, steps, optim, elbo=None):
    """Trains, asserting that every loss is finite; returns the losses."""
    svi = SVI(model, guide, optim, elbo or Trace_ELBO())
    losses = []
    for step in range(steps):
        loss = svi.step(*args)
        assert math.isfinite(loss), f"loss {loss} at step {step}"
        losses.append(loss)
    return losses


def assert_finite_parameters(guide):
    for name, value in guide.state_dict().items():
        assert torch.isfinite(value).all(), name


# ---------------------------------------------------------------- standardizing


def test_standardizing_encoder_uses_the_reference_statistics():
    torch.manual_seed(0)
    reference = torch.randn(50, 3) * torch.tensor([1000.0, 0.01, 0.0]) + 7.0
    inner = MLPEncoder((4,))
    encoder = StandardizingEncoder(inner, (reference,))
    x = torch.randn(5, 3)
    expected_scale = torch.tensor([reference[:, 0].std(unbiased=False), 0.01, 1.0])
    torch.testing.assert_close(encoder.scale_0[:2], expected_scale[:2], rtol=0.3, atol=0)
    assert encoder.scale_0[2] == 1.0  # a constant feature keeps the scale 1
    standardized = (x - reference.mean(0)) / encoder.scale_0
    torch.testing.assert_close(encoder(x), inner(standardized))
    assert {"mean_0", "scale_0"} <= set(encoder.state_dict())


def test_standardizing_encoder_errors():
    with pytest.raises(ValueError, match="at least two reference rows"):
        StandardizingEncoder(MLPEncoder(), (torch.ones(1, 3),))
    encoder = StandardizingEncoder(MLPEncoder((4,)), (torch.randn(10, 3),))
    with pytest.raises(ValueError, match="built for 1 inputs, but got 2"):
        encoder(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="standardize_inputs must be True or False"):
        AutoAmortizedGuide(lambda x: None, standardize_inputs="yes")


def test_standardizing_a_layout_of_zeros_warns():
    """A simulating model's first call (LocalNPE's layout) has no spread to
    standardize by: the guide says so instead of standardizing nothing silently."""
    with pytest.warns(UserWarning, match="rows of data plate 'simulations'.*all alike"):
        AutoAmortizedGuide(gaussian_linear, standardize_inputs=True)(torch.zeros(20, 10))
    pyro.clear_param_store()  # a second guide would take the first one's parameters
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AutoAmortizedGuide(gaussian_linear, standardize_inputs=True)(torch.randn(20, 10))


def test_standardized_guide_round_trips_through_a_state_dict():
    pyro.set_rng_seed(SEED)
    counts, _ = poisson_data(200)
    guide = AutoAmortizedGuide(poisson_model, hidden_dims=(8,), standardize_inputs=True)
    run(poisson_model, guide, (counts,), steps=5, optim=pyro.optim.Adam({"lr": 0.01}))
    encoder = guide.network.encoders["rows"]
    torch.testing.assert_close(encoder.mean_0, counts.mean(0))
    pyro.clear_param_store()
    fresh = AutoAmortizedGuide(poisson_model, hidden_dims=(8,), standardize_inputs=True)
    fresh(counts[:50] * 2)  # other statistics, replaced by the loaded ones
    fresh.load_state_dict(guide.state_dict())
    new = poisson_data(30, seed=1)[0]
    torch.testing.assert_close(fresh.median(new)["rate"], guide.median(new)["rate"])


A, RATE_MEAN, COUNTS_PER_ROW = 2.0, 3000.0, 20


def poisson_model(counts):
    """Gamma-Poisson rates of mean 3,000: raw counts in the thousands."""
    with pyro.plate("rows", len(counts), subsample_size=min(64, len(counts))):
        rate = pyro.sample("rate", dist.Gamma(A, A / RATE_MEAN))
        batch = pyro.subsample(counts, event_dim=1)
        pyro.sample(
            "counts", dist.Poisson(rate[:, None]).expand(batch.shape).to_event(1), obs=batch
        )


def poisson_data(num_rows, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rates = torch._standard_gamma(torch.full((num_rows,), A), generator=generator) * (RATE_MEAN / A)
    counts = torch.poisson(rates[:, None].expand(num_rows, COUNTS_PER_ROW), generator=generator)
    exact_mean = (A + counts.sum(-1)) / (A / RATE_MEAN + COUNTS_PER_ROW)
    return counts, exact_mean


def test_raw_counts_without_standardizing_warn_then_fail_clearly():
    pyro.set_rng_seed(SEED)
    counts, _ = poisson_data(500)
    guide = AutoAmortizedGuide(poisson_model, hidden_dims=(64,))
    svi = SVI(poisson_model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    with pytest.warns(UserWarning, match="reads inputs as large as"):
        svi.step(counts)
    # The first step throws the log-rate far: its draws overflow exp (or the loss
    # overflows and the parameters turn NaN), and a later step stops with the
    # cause instead of carrying an infinite value or a NaN along.
    with pytest.raises(ValueError, match="parameters have diverged"):
        for _ in range(5):
            svi.step(counts)


def _schools_model(data):
    with pyro.plate("schools", data.shape[0]):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(10.0 * eta, data[:, 1]), obs=data[:, 0])


def test_inputs_in_the_tens_warn_and_an_outlier_of_standardized_data_does_not():
    # Pyro's eight schools: effects and standard errors up to 28 (root mean
    # square 13), which throw a 256-wide encoder's heads far in the first step.
    effects = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    errors = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    schools = torch.stack([effects, errors], dim=1)
    with pytest.warns(UserWarning, match=r"as large as 28 \(root mean square 13.0\)"):
        AutoAmortizedGuide(_schools_model)(schools)
    standardized = torch.randn(500, 2)
    standardized[0, 0] = 12.0  # a z-score of 12: large, but the rows are of unit scale
    standardized[:, 1] = standardized[:, 1].abs() + 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AutoAmortizedGuide(_schools_model)(standardized)


def test_raw_counts_with_standardized_inputs():
    pyro.set_rng_seed(SEED)
    counts, exact_mean = poisson_data(1000)
    guide = AutoAmortizedGuide(poisson_model, hidden_dims=(64,), standardize_inputs=True)
    steps = 3000
    run(poisson_model, guide, (counts,), steps=steps, optim=optimizer(0.01, 1e-5, steps))
    assert_finite_parameters(guide)
    error = (guide.median(counts)["rate"] / exact_mean - 1).abs().mean()
    low, high = guide.quantiles([0.1, 0.9], counts)["rate"]
    assert torch.isfinite(high).all() and (high > low).all()  # a positive, finite scale
    print(f"mean relative error of the posterior mean: {error:.3f}")
    # The posterior's own spread is 0.4% (see the docs on counts); a diverged or
    # untrained one (rate 1 at the start) by about 100%. Seeds 0-2: 0.069, 0.107, 0.066.
    assert error < 0.15


LATENT, PIXELS = 3, 64


def pixel_problem(seed=0):
    """A linear-Gaussian model of 'pixels' in the hundreds, exact posterior known."""
    generator = torch.Generator().manual_seed(seed)
    weight = 40.0 * torch.randn(PIXELS, LATENT, generator=generator)
    offset = 200.0 * torch.rand(PIXELS, generator=generator)
    noise = 20.0

    def model(x):
        with pyro.plate("rows", len(x), subsample_size=min(64, len(x))):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
            batch = pyro.subsample(x, event_dim=1)
            pyro.sample("x", dist.Normal(z @ weight.T + offset, noise).to_event(1), obs=batch)

    z = torch.randn(1000, LATENT, generator=generator)
    x = z @ weight.T + offset + noise * torch.randn(1000, PIXELS, generator=generator)
    covariance = torch.linalg.inv(torch.eye(LATENT) + weight.T @ weight / noise**2)
    exact_mean = (x - offset) @ weight / noise**2 @ covariance
    return model, x, exact_mean


def test_unnormalized_pixels_train_better_standardized():
    model, x, exact_mean = pixel_problem()
    errors = {}
    for standardize in (False, True):
        pyro.set_rng_seed(SEED)
        guide = AutoAmortizedGuide(model, hidden_dims=(64,), standardize_inputs=standardize)
        steps = 3000
        with pytest.warns(UserWarning, match="as large as") if not standardize else nullcontext():
            run(model, guide, (x,), steps=steps, optim=optimizer(0.01, 1e-4, steps))
        assert_finite_parameters(guide)
        errors[standardize] = (guide.median(x)["z"] - exact_mean).abs().mean().item()
    # Measured: 0.008 standardized, 0.041 raw (the posterior's spread is 0.06).
    assert errors[True] < 0.02
    assert errors[False] > 2 * errors[True]


# ------------------------------------------------------- initialization, floors


def conjugate_model(x):
    with pyro.plate("rows", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def start_at(value):
    """An init_loc_fn putting every row's initial value of z at ``value``."""
    return lambda site: torch.full_like(site["fn"].sample(), value)


@pytest.mark.parametrize(
    "options",
    [
        {"init_scale": 1e-6},
        {"init_scale": 100.0},
        {"init_loc_fn": start_at(30.0)},
        {"init_loc_fn": init_to_value(values={"z": torch.tensor(-30.0)})},
    ],
    ids=["scale 1e-6", "scale 100", "loc 30", "loc -30"],
)
def test_extreme_initialization_trains_to_the_exact_posterior(options):
    pyro.set_rng_seed(SEED)
    x = torch.randn(200) * math.sqrt(1.25)
    guide = AutoAmortizedGuide(conjugate_model, hidden_dims=(16,), **options)
    steps = 2000
    # Four particles a step: the gradient noise of one particle leaves a KL
    # floor of about 0.005, the bound itself.
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True)
    run(conjugate_model, guide, (x,), steps=steps, optim=optimizer(0.05, 1e-3, steps), elbo=elbo)
    with torch.no_grad():
        q = guide.encode(x)["z"]
    exact_scale = torch.full_like(x, math.sqrt(0.2))
    kl = kl_diag_normal(q.mean[:, None], q.stddev[:, None], x[:, None] / 1.25, exact_scale[:, None])
    print(f"KL to the exact posterior: mean {kl.mean():.4f}, max {kl.max():.4f}")
    assert kl.mean() < 0.005 and kl.max() < 0.05


@pytest.mark.parametrize("start", [1e4, -1e4])
def test_a_start_far_out_stays_finite(start):
    # 10,000 prior standard deviations out: Adam takes many steps to come back,
    # but every loss and parameter stays finite on the way.
    pyro.set_rng_seed(SEED)
    x = torch.randn(200) * math.sqrt(1.25)
    guide = AutoAmortizedGuide(conjugate_model, hidden_dims=(16,), init_loc_fn=start_at(start))
    losses = run(conjugate_model, guide, (x,), steps=500, optim=pyro.optim.Adam({"lr": 0.05}))
    assert_finite_parameters(guide)
    assert losses[-1] < losses[0] / 2


def test_a_positive_site_drawn_past_its_bijection_fails_clearly():
    # A diverged head throws the unconstrained draw past exp's range: the guide
    # says so, instead of the model's distribution failing on an infinite value.
    def model(x):
        with pyro.plate("data", x.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
            pyro.sample("x", dist.Poisson(rate), obs=x)

    x = torch.ones(5)
    guide = AutoAmortizedGuide(model, hidden_dims=(4,))
    guide(x)
    with torch.no_grad():
        guide.network.heads["rate"].loc.bias.fill_(1e3)
    with pytest.raises(ValueError, match="non-finite values of site 'rate'.*diverged"):
        Trace_ELBO().loss(model, guide, x)


@pytest.mark.parametrize(
    "guide_class",
    [
        AutoAmortizedGuide,
        AutoAmortizedMultivariateNormal,
        AutoAmortizedLowRankMultivariateNormal,
        AutoAmortizedNormalizingFlow,
    ],
)
@pytest.mark.parametrize("raw", [-1e4, 1e4])
def test_scale_floor_keeps_scales_positive_and_finite(guide_class, raw):
    x = torch.randn(20, 2)

    def model(x):
        with pyro.plate("rows", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    guide = guide_class(model, hidden_dims=(8,))
    guide(x)
    head = guide.network.heads["z"]
    layer = head.diagonal if hasattr(head, "diagonal") else head.scale
    with torch.no_grad():
        layer.bias.fill_(raw)
        q = guide.encode(x)["z"]
        z = q.sample()
        assert torch.isfinite(z).all() and torch.isfinite(q.log_prob(z)).all()
        if guide_class is AutoAmortizedGuide:
            scale = q.base_dist.scale
            assert (scale >= MIN_SCALE).all() and torch.isfinite(scale).all()
            if raw < 0:
                torch.testing.assert_close(scale, torch.full_like(scale, MIN_SCALE))


# ---------------------------------------------------- long runs, tutorial models


def digits_vae(latent):
    images, _ = load_digits_binarized()
    model = digits_vae_model(Decoder(latent, 256, images.shape[1]), latent, batch_size=128)
    return model, (images,)


def vae_tutorial():
    model, args = digits_vae(2)
    return model, AutoAmortizedGuide(model), args, pyro.optim.Adam({"lr": 1e-3}), None


def diagnostics_tutorial():
    model, args = digits_vae(5)
    guide = AutoAmortizedGuide(model)
    return model, guide, args, pyro.optim.Adam({"lr": 3e-3}), LocalIWAE(num_particles=10)


def standardized(values):
    values = torch.tensor(values, dtype=torch.float32)
    return (values - values.mean(0)) / values.std(0)


def why_amortize_tutorial():
    x = standardized(load_breast_cancer().data)
    factors, features = 2, x.shape[1]

    def model(x):
        loadings = pyro.sample(
            "loadings", dist.Normal(0.0, 1.0).expand([factors, features]).to_event(2)
        )
        offset = pyro.sample("offset", dist.Normal(0.0, 1.0).expand([features]).to_event(1))
        noise = pyro.sample("noise", dist.LogNormal(-1.0, 1.0).expand([features]).to_event(1))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([factors]).to_event(1))
            mean = (z.unsqueeze(-1) * loadings).sum(-2) + offset
            pyro.sample("x", dist.Normal(mean, noise).to_event(1), obs=x)

    guide = AutoAmortizedGuide(model, hidden_dims=(32,), dependencies="mean_field")
    return model, guide, (x,), pyro.optim.Adam({"lr": 0.01}), None


def mixture_tutorial():
    x = standardized(load_iris().data)
    components, dim = 3, x.shape[1]

    def model(x):
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(components)))
        with pyro.plate("components", components):
            locs = pyro.sample("locs", dist.Normal(0.0, 2.0).expand([dim]).to_event(1))
            scales = pyro.sample("scales", dist.LogNormal(-0.5, 0.5).expand([dim]).to_event(1))
        with pyro.plate("data", x.shape[0]):
            assignment = pyro.sample("assignment", dist.Categorical(weights))
            pyro.sample("x", dist.Normal(locs[assignment], scales[assignment]).to_event(1), obs=x)

    start = init_to_value(values={"locs": x[torch.tensor([0, 60, 120])]})
    guide = AutoAmortizedGuide(
        model, hidden_dims=(32,), init_loc_fn=start, enumerate_discrete="parallel"
    )
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    return model, guide, (x,), pyro.optim.Adam({"lr": 0.02}), elbo


class CountEncoder(nn.Module):
    def __init__(self, hidden=256):
        super().__init__()
        self.layers = nn.Sequential(
            nn.LazyLinear(hidden), nn.Softplus(), nn.Linear(hidden, hidden), nn.Softplus()
        )

    def forward(self, counts):
        return self.layers(torch.log1p(counts))


def topic_tutorial(encoder):
    lda = pytest.importorskip("lda.datasets")
    counts = torch.tensor(lda.load_reuters(), dtype=torch.float32)
    counts = counts[:, counts.sum(0).argsort(descending=True)[:2000]]
    topics, words = 15, counts.shape[1]
    frequency = counts.sum(0) + 1
    background = (frequency / frequency.sum()).log()
    theta_prior = dist.Normal(0.0, math.sqrt((1 - 1 / topics) / 0.5)).expand([topics]).to_event(1)

    def model(counts):
        beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([topics, words]).to_event(2))
        with pyro.plate("documents", len(counts), subsample_size=min(128, len(counts))):
            theta = torch.softmax(pyro.sample("theta_logits", theta_prior), -1)
            batch = pyro.subsample(counts, event_dim=1)
            logits = background + theta @ beta
            total = int(batch.sum(-1).max())
            pyro.sample("counts", dist.Multinomial(total, logits=logits), obs=batch)

    guide = AutoAmortizedGuide(
        model,
        dependencies="mean_field",
        init_loc_fn=init_to_sample,
        **({"encoder": CountEncoder()} if encoder else {"standardize_inputs": True}),
    )
    return model, guide, (counts,), pyro.optim.Adam({"lr": 0.01}), None


def regression_tutorial():
    diabetes = load_diabetes()
    covariates, progression = standardized(diabetes.data), standardized(diabetes.target)
    num_covariates = covariates.shape[1]

    def model(covariates, progression):
        intercept = pyro.sample("intercept", dist.Normal(0.0, 1.0))
        coef = pyro.sample("coef", dist.Normal(0.0, 1.0).expand([num_covariates]).to_event(1))
        noise = pyro.sample("noise", dist.HalfNormal(1.0))
        with pyro.plate("patients", len(progression)):
            precision = pyro.sample("precision", dist.Gamma(1.0, 1.0))
            mean = intercept + (covariates * coef).sum(-1)
            pyro.sample(
                "progression", dist.Normal(mean, noise * precision.rsqrt()), obs=progression
            )

    guide = AutoAmortizedGuide(model, amortize_on="progression", hidden_dims=(32,))
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.998})
    return model, guide, (covariates, progression), optim, None


def scaling_tutorial():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(5000, 3, generator=generator) @ torch.randn(3, 20, generator=generator)
    rows = rows + 0.5 * torch.randn(5000, 20, generator=generator)

    def model(x, indices, num_data):
        loadings = pyro.sample("loadings", dist.Normal(0.0, 1.0).expand([3, 20]).to_event(2))
        with pyro.plate("data", num_data, subsample=indices):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
            pyro.sample("x", dist.Normal(z @ loadings, 0.5).to_event(1), obs=x)

    class Minibatches:
        """Shuffled minibatches of 256 rows, a new one at each step."""

        def __iter__(self):
            while True:
                for indices in torch.randperm(len(rows)).split(256):
                    yield rows[indices], indices, len(rows)

    guide = AutoAmortizedGuide(model, dependencies="mean_field")
    return model, guide, Minibatches(), pyro.optim.Adam({"lr": 0.01}), None


TUTORIAL_MODELS = {
    "vae": vae_tutorial,
    "diagnostics (LocalIWAE)": diagnostics_tutorial,
    "why amortize (factor analysis)": why_amortize_tutorial,
    "mixture (enumerated guide)": mixture_tutorial,
    "topic model (log1p encoder)": lambda: topic_tutorial(encoder=True),
    "topic model (standardized counts)": lambda: topic_tutorial(encoder=False),
    "extending (regression)": regression_tutorial,
    "scaling (streamed minibatches)": scaling_tutorial,
}


@pytest.mark.parametrize("name", list(TUTORIAL_MODELS))
def test_long_training_on_the_tutorial_models_stays_finite(name):
    pyro.set_rng_seed(SEED)
    model, guide, args, optim, elbo = TUTORIAL_MODELS[name]()
    svi = SVI(model, guide, optim, elbo or Trace_ELBO())
    batches = iter(args) if not isinstance(args, tuple) else None
    losses = []
    for step in range(LONG_STEPS):
        loss = svi.step(*(next(batches) if batches else args))
        assert math.isfinite(loss), f"{name}: loss {loss} at step {step}"
        losses.append(loss)
    assert_finite_parameters(guide)
    tail = max(LONG_STEPS // 10, 10)
    # Training made progress and did not blow up at the end.
    assert sum(losses[-tail:]) / tail < sum(losses[:tail]) / tail
    print(f"{name}: {LONG_STEPS} steps, loss {losses[0]:.1f} -> {sum(losses[-tail:]) / tail:.1f}")


def test_a_global_site_whose_parameters_diverged_says_so():
    guide = AutoAmortizedGuide(shared_mean_model)
    guide(torch.randn(10))
    with torch.no_grad():
        for parameter in guide.global_params.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(ValueError, match="global site 'loc' are NaN or infinite"):
        guide(torch.randn(10))
