"""Diagnostics against closed forms: the evidence and the diagonal family's KL
floor of a linear-Gaussian model with a correlated posterior, and a conjugate
model for calibration."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEED, decrease, train
from models import factor_data, factor_model
from pyro.infer import SVI, Predictive, Trace_ELBO
from test_correlated import LOADINGS, NOISE, diagonal_floor, linear_gaussian, simulate

from pyro_amortized import AutoAmortizedDelta, AutoAmortizedGuide, LocalIWAE
from pyro_amortized.datasets import train_test_split_digits
from pyro_amortized.diagnostics import amortization_gap, log_evidence, refine, sbc
from pyro_amortized.models import Decoder, digits_vae_model


def exact_log_evidence(x):
    covariance = LOADINGS @ LOADINGS.T + NOISE**2 * torch.eye(LOADINGS.shape[0])
    return dist.MultivariateNormal(torch.zeros(LOADINGS.shape[0]), covariance).log_prob(x)


def _diagonal_guide(steps):
    # A narrow start: the posterior is much narrower than the prior, and the
    # figures below were set for a guide that starts near it.
    guide = AutoAmortizedGuide(linear_gaussian, hidden_dims=(), init_scale=0.1)
    train(linear_gaussian, guide, simulate(2000), steps=steps, lr=0.01, lrd=0.999)
    return guide


@pytest.fixture(scope="module")
def trained():
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    return _diagonal_guide(3000)


def test_gap_report_matches_the_evidence_and_the_diagonal_floor(trained):
    x = simulate(200)
    report = amortization_gap(linear_gaussian, trained, x, num_particles=1000, num_steps=200)
    exact = exact_log_evidence(x)
    summary = report.summary()
    print(report)
    assert abs(summary["log_evidence"][0] - exact.mean().item()) < 0.05
    assert summary["approximation_gap"][0] == pytest.approx(diagonal_floor(), rel=0.2)
    for gap in ("amortization_gap", "approximation_gap"):
        mean, error = summary[gap]
        assert mean > -3 * error
    assert (report.approximation_gap > -0.05).all()
    assert "amortization_gap" in str(report)


def test_refinement_closes_the_amortization_gap_of_an_undertrained_guide():
    undertrained = _diagonal_guide(60)
    x = simulate(200)
    report = amortization_gap(
        linear_gaussian, undertrained, x, num_particles=200, num_steps=300, lr=0.05
    )
    best = exact_log_evidence(x).mean().item() - diagonal_floor()  # the family's optimum
    elbo, refined = report.elbo.mean().item(), report.refined_elbo.mean().item()
    print(f"ELBO {elbo:.3f}, refined {refined:.3f}, family optimum {best:.3f}")
    assert best - elbo > 0.2  # under-trained indeed
    assert refined - elbo >= 0.8 * (best - elbo)


def test_refined_guide_works_where_the_guide_works(trained):
    x = simulate(50)
    refined = refine(linear_gaussian, trained, x, num_steps=5)
    assert refined.encode(x)["z"].batch_shape == (50,)
    samples = Predictive(linear_gaussian, guide=refined, num_samples=3)(x)
    assert samples["z"].shape == (3, 50, 3)
    with pytest.raises(ValueError, match="refined for 50 rows"):
        refined(simulate(7))


def test_local_iwae_lies_between_the_elbo_and_the_evidence(trained):
    x = simulate(200)
    exact = exact_log_evidence(x).mean().item()
    with torch.no_grad():
        elbo = -Trace_ELBO(num_particles=200, vectorize_particles=True).loss(
            linear_gaussian, trained, x
        ) / len(x)
        iwae = -LocalIWAE(num_particles=50).loss(linear_gaussian, trained, x) / len(x)
    print(f"ELBO {elbo:.4f} <= IWAE {iwae:.4f} <= log p(x) {exact:.4f}")
    assert elbo + 0.1 < iwae < exact + 0.02


def test_local_iwae_trains_a_model_with_global_sites():
    x = factor_data(200)
    guide = AutoAmortizedGuide(factor_model, hidden_dims=(16,))
    svi = SVI(factor_model, guide, pyro.optim.Adam({"lr": 0.02}), LocalIWAE(num_particles=5))
    losses = [svi.step(x) for _ in range(300)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert decrease(losses, window=50) < 0
    with pytest.raises(ValueError, match="positive integer"):
        LocalIWAE(num_particles=0)


def conjugate_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x)


def test_sbc_passes_a_calibrated_guide_and_flags_shrunk_scales():
    x = torch.randn(500) * (1 + 0.25) ** 0.5
    guide = AutoAmortizedGuide(conjugate_model, hidden_dims=())
    train(conjugate_model, guide, x, steps=2000, lr=0.01, lrd=0.999)
    report = sbc(conjugate_model, guide, x[:100], num_simulations=20, observed="x")
    print(report)
    assert report.calibrated()["z"]
    head = guide.network.heads["z"]
    with torch.no_grad():
        scale = guide.encode(x)["z"].scale.mean()
        head.scale.weight.zero_()
        head.scale.bias.fill_(torch.log(torch.expm1(scale / 2)).item())
    shrunk = sbc(conjugate_model, guide, x[:100], num_simulations=20, observed="x")
    print(shrunk)
    assert not shrunk.calibrated()["z"]


def test_local_iwae_training_improves_the_held_out_evidence_of_a_digits_vae():
    x_train, _, x_test, _ = train_test_split_digits(seed=0)
    evidence = {}
    for name, objective in (("elbo", Trace_ELBO()), ("iwae", LocalIWAE(num_particles=10))):
        pyro.clear_param_store()
        pyro.set_rng_seed(SEED)
        decoder = Decoder(5, 128, x_train.shape[1])
        model = digits_vae_model(decoder, 5, batch_size=128)
        guide = AutoAmortizedGuide(model, hidden_dims=(128,))
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), objective)
        for _ in range(1000):
            svi.step(x_train)
        every_row = digits_vae_model(decoder, 5)  # the same decoder, no subsampling
        evidence[name] = log_evidence(every_row, guide, x_test, num_particles=500).mean().item()
    print(
        f"held-out log p(x) per image: ELBO training {evidence['elbo']:.3f}, "
        f"LocalIWAE(10) training {evidence['iwae']:.3f}"
    )
    assert evidence["iwae"] > evidence["elbo"] + 0.1


def test_diagnostics_refuse_a_subsampling_model():
    x = simulate(300)  # more rows than the model's minibatch of 256
    guide = AutoAmortizedGuide(linear_gaussian, hidden_dims=())
    guide(x)
    with pytest.raises(ValueError, match="subsamples plate 'data' to 256 of 300 rows"):
        log_evidence(linear_gaussian, guide, x)


def test_renyi_orders_between_the_elbo_and_iwae(trained):
    x = simulate(200)
    pyro.set_rng_seed(SEED + 1)
    with torch.no_grad():
        bounds = [
            -LocalIWAE(num_particles=200, alpha=alpha).loss(linear_gaussian, trained, x) / len(x)
            for alpha in (1.0, 0.5, 0.0)
        ]
    assert bounds[0] < bounds[1] < bounds[2] < exact_log_evidence(x).mean().item() + 0.02
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        LocalIWAE(alpha=-1.0)


def test_reports_print_and_plot(trained):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    x = simulate(30)
    report = amortization_gap(linear_gaussian, trained, x, num_particles=20, num_steps=2)
    assert report.plot() is not None and "approximation_gap" in str(report)
    calibration = sbc(linear_gaussian, trained, x, num_simulations=2, observed="x")
    assert calibration.plot("z") is not None and "p-value" in str(calibration)


def test_point_estimates_have_no_gaps_to_measure():
    x = simulate(30)
    guide = AutoAmortizedDelta(linear_gaussian)
    guide(x)
    with pytest.raises(ValueError, match=r"\['z'\] have point estimates"):
        amortization_gap(linear_gaussian, guide, x)
