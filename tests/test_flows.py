"""The normalizing-flow family."""

import pytest
import torch
from helpers import decrease, train

from pyro_amortized import AutoAmortizedNormalizingFlow
from pyro_amortized.datasets import load_digits_binarized
from pyro_amortized.heads import FlowHead
from pyro_amortized.models import Decoder, DigitsEncoderGuide, digits_vae_model


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


def test_hand_written_flow_reference_matches_the_flow_family():
    """The benchmark's hand-written flow guide has the architecture of
    AutoAmortizedNormalizingFlow(flow="iaf"), and both train."""
    x = load_digits_binarized()[0][:256]
    sizes = {}
    for kind in ("ours", "hand"):
        decoder = Decoder(3, 32, x.shape[1])
        model = digits_vae_model(decoder, 3, batch_size=64, name=f"decoder_{kind}")
        if kind == "ours":
            guide = AutoAmortizedNormalizingFlow(model, flow="iaf", hidden_dims=(32,))
        else:
            guide = DigitsEncoderGuide(x.shape[1], 3, 32, batch_size=64, family="normalizing_flow")
        losses = train(model, guide, x, steps=150, lr=3e-3)
        assert decrease(losses, window=30) < 0
        sizes[kind] = sum(p.numel() for p in guide.parameters())
    assert sizes["ours"] == sizes["hand"]
