"""The simulation tasks: their models' shapes, and reference posteriors that
agree with the prior's draws weighted by the likelihood, and the two-sample test."""

import pyro
import pytest
import torch

from pyro_amortized.simulators import (
    TASKS,
    MoonNoise,
    _slcp_log_posterior,
    c2st,
    moon_centre,
    reference_posterior,
    simulate_task,
)


@pytest.mark.parametrize("name", list(TASKS))
def test_a_task_simulates_parameters_and_data_of_its_shapes(name):
    task = TASKS[name]
    theta, x = simulate_task(task, 7)
    assert theta.shape == (7, task.theta_dim)
    assert x.shape == (7, *task.x_shape)
    trace = pyro.poutine.trace(task.model).get_trace(x)
    assert torch.equal(trace.nodes["x"]["value"], x[trace.nodes["simulations"]["value"]])


def _weighted_prior(log_likelihood, bound, dim, num=2_000_000):
    """Draws of the posterior by resampling the prior's by their likelihood."""
    prior = (2 * torch.rand(num, dim) - 1) * bound
    log_w = torch.cat([log_likelihood(part) for part in prior.split(500_000)])
    return prior[torch.multinomial((log_w - log_w.max()).exp(), 20_000, replacement=True)]


def test_the_two_moons_reference_is_the_posterior():
    _, x = simulate_task(TASKS["two_moons"], 1)
    reference = reference_posterior(TASKS["two_moons"], x[0], 20_000)
    weighted = _weighted_prior(lambda t: MoonNoise(moon_centre(t)).log_prob(x[0]), 1.0, 2)
    assert (reference.mean(0) - weighted.mean(0)).abs().max() < 0.02
    assert (reference.std(0) / weighted.std(0) - 1).abs().max() < 0.05


def test_the_slcp_reference_is_the_posterior():
    # wide scales make a wide posterior, which the prior's draws cover well
    theta = torch.tensor([[0.5, -0.5, 2.5, -2.0, 0.3]])
    x_o = pyro.poutine.condition(simulate_task, data={"theta": theta})(TASKS["slcp"], 1)[1][0]
    reference = reference_posterior(TASKS["slcp"], x_o, 20_000)
    weighted = _weighted_prior(lambda t: _slcp_log_posterior(t, x_o), 3.0, 5)
    # the signs of theta_3 and theta_4 are free: compare their magnitudes
    reference[:, 2:4], weighted[:, 2:4] = reference[:, 2:4].abs(), weighted[:, 2:4].abs()
    shift = (reference.mean(0) - weighted.mean(0)).abs() / weighted.std(0)
    ratio = reference.std(0) / weighted.std(0)
    print(f"means apart by {shift.max():.3f} posterior sds, sd ratios {ratio}")
    assert shift.max() < 0.1
    assert (ratio - 1).abs().max() < 0.1


def test_c2st_tells_apart_only_different_samples():
    same = c2st(torch.randn(1000, 2), torch.randn(1000, 2))
    apart = c2st(torch.randn(1000, 2), torch.randn(1000, 2) + 3.0)
    print(f"C2ST {same:.3f} for one distribution, {apart:.3f} for two")
    assert same < 0.56
    assert apart > 0.95
