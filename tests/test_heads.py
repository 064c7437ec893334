"""Per-site heads: shapes, initial values, quantiles."""

import pyro.distributions as dist
import torch

from pyro_amortized.global_heads import GlobalNormal
from pyro_amortized.heads import DeltaHead, NormalHead
from pyro_amortized.quantiles import unconstrained_quantiles


def test_normal_head_starts_at_its_initial_location_and_scale():
    init_loc = torch.randn(3, 2)
    head = NormalHead(8, torch.Size([3, 2]), 1, init_loc=init_loc, init_scale=0.3)
    q = head(torch.randn(5, 8))
    assert q.batch_shape == (5, 3) and q.event_shape == (2,)
    assert torch.allclose(q.base_dist.loc, init_loc.expand(5, 3, 2))
    assert torch.allclose(q.base_dist.scale, torch.full((5, 3, 2), 0.3))


def test_heads_depend_on_the_features_after_a_step():
    head = NormalHead(4, torch.Size([2]), 1, init_loc=torch.zeros(2), init_scale=0.1)
    features = torch.randn(6, 4)
    head(features).rsample().pow(2).sum().backward()
    assert head.loc.weight.grad.abs().sum() > 0 and head.scale.weight.grad.abs().sum() > 0


def test_delta_head_and_quantiles():
    head = DeltaHead(4, torch.Size([2]), 1, init_loc=torch.tensor([1.0, -1.0]))
    q = head(torch.randn(3, 4))
    assert isinstance(q, dist.Delta) and q.batch_shape == (3,)
    levels = torch.tensor([0.1, 0.9])
    assert torch.equal(unconstrained_quantiles(q, levels), q.v.expand(2, 3, 2))


def test_normal_quantiles_are_coordinatewise():
    q = GlobalNormal(torch.zeros(2), 1.0, 1).forward()
    levels = torch.tensor([0.5, 0.975])
    values = unconstrained_quantiles(q, levels)
    assert torch.allclose(values[0], torch.zeros(2), atol=1e-6)
    assert torch.allclose(values[1], torch.full((2,), 1.95996), atol=1e-4)
