"""The normalizing-flow family."""

import pytest
import torch

from pyro_amortized.heads import FlowHead


@pytest.mark.parametrize("flow", ["spline", "iaf"])
@pytest.mark.parametrize("size", [1, 2])
def test_flow_head_density_integrates_to_one(flow, size):
    head = FlowHead(8, torch.Size([size]), 1, init_loc=torch.zeros(size), init_scale=0.7, flow=flow)
    for layer in head.flows:  # a non-trivial flow: random conditioner outputs
        torch.nn.init.normal_(layer.nn.layers[-1].weight, std=0.5)
    q = head(torch.randn(1, 8))
    grid = torch.linspace(-8, 8, 801 if size == 2 else 20001)
    points = torch.cartesian_prod(grid, grid) if size == 2 else grid.unsqueeze(-1)
    with torch.no_grad():
        mass = q.log_prob(points.unsqueeze(1)).exp().sum() * (grid[1] - grid[0]) ** size
    assert mass.item() == pytest.approx(1.0, abs=0.01)
