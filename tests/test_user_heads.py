"""Heads of one's own through ``site_families``: trained, queried and checked."""

import math

import pyro.distributions as dist
import pytest
import torch
from helpers import train
from models import factor_data, factor_model
from test_posteriors import exact_linear_gaussian, linear_gaussian, simulate_linear_gaussian
from torch import nn

from pyro_amortized import AutoAmortizedGuide


class StudentTHead(nn.Module):
    """The Student-t head of the docs: a location and a log scale linear in
    the features, and one learned degrees of freedom."""

    def __init__(self, num_features, shape, event_dim, *, init_loc, init_scale):
        super().__init__()
        self.shape, self.event_dim = shape, event_dim
        self.loc = nn.Linear(num_features, init_loc.numel())
        self.log_scale = nn.Linear(num_features, init_loc.numel())
        nn.init.zeros_(self.loc.weight)
        nn.init.zeros_(self.log_scale.weight)
        with torch.no_grad():
            self.loc.bias.copy_(init_loc.reshape(-1))
            self.log_scale.bias.fill_(math.log(init_scale))
        self.log_df = nn.Parameter(torch.tensor(math.log(5.0)))

    def forward(self, features):
        shape = features.shape[:-1] + self.shape
        loc = self.loc(features).reshape(shape)
        scale = self.log_scale(features).reshape(shape).exp()
        return dist.StudentT(self.log_df.exp(), loc, scale).to_event(self.event_dim)


def test_a_student_t_head_recovers_the_exact_posterior():
    guide = AutoAmortizedGuide(linear_gaussian, hidden_dims=(), site_families={"z": StudentTHead})
    train(linear_gaussian, guide, simulate_linear_gaussian(2000), steps=1500, lr=0.02, lrd=0.999)
    held_out = simulate_linear_gaussian(500)
    loc, scale = exact_linear_gaussian(held_out)
    median = guide.median(held_out)["z"]  # Monte Carlo, as for flows
    assert (median - loc).abs().mean() < 0.03
    quartiles = guide.quantiles([0.25, 0.75], held_out)["z"]
    assert quartiles.shape == (2, 500, 2)
    # A Gaussian posterior: the t's quartiles approach the Normal's.
    spread = (quartiles[1] - quartiles[0]) / (2 * 0.6745 * scale)
    assert (spread.mean() - 1).abs() < 0.1
    head = guide.network.heads["z"]
    assert head.log_df.exp() > 5.0  # more degrees of freedom than at the start


class _NotAModule:
    def __init__(self, *args, **kwargs):
        pass


class _WrongShape(StudentTHead):
    def forward(self, features):
        return dist.Normal(self.loc(features), 1.0)  # event shape forgotten


@pytest.mark.parametrize(
    "family, message",
    [
        ("student_t", "A local site.s family is one of normal"),
        (_NotAModule, "must return an nn.Module"),
        (
            _WrongShape,
            r"batch_shape \(batch,\) and event_shape \(2,\), but on a batch of 2 it "
            r"returned Normal with batch_shape \(2, 2\) and event_shape \(\)",
        ),
    ],
)
def test_head_errors(family, message):
    with pytest.raises(ValueError, match=message):
        guide = AutoAmortizedGuide(factor_model, site_families={"z": family})
        guide(factor_data(10))
