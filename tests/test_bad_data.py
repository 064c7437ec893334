"""Bad data gets a clear error or a documented conversion, never a crash deep in torch."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import train
from models import factor_data, minibatch_model, regression_data, regression_model

from pyro_amortized import AutoAmortizedGuide, MLPEncoder
from pyro_amortized.encoders import encode_features


@pytest.fixture
def trained():
    guide = AutoAmortizedGuide(minibatch_model)
    train(minibatch_model, guide, factor_data(40), steps=2)
    return guide


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_in_the_data(trained, value):
    x = factor_data(40)
    x[7, 3] = value
    with pytest.raises(ValueError, match="NaN or infinite values.*impute"):
        train(minibatch_model, trained, x, steps=1)
    with pytest.raises(ValueError, match="NaN or infinite values"):
        trained.median(x)


def test_a_user_encoder_may_take_missing_values():
    class Imputing(torch.nn.Module):
        def forward(self, x):
            return torch.nan_to_num(x)

    x = factor_data(40)
    x[7, 3] = float("nan")
    guide = AutoAmortizedGuide(minibatch_model, encoder=Imputing())
    losses = train(minibatch_model, guide, x.nan_to_num(), steps=2)  # the model needs finite x
    assert torch.isfinite(torch.tensor(losses)).all()
    assert torch.isfinite(guide.median(x)["z"]).all()  # the encoder imputes


def test_an_empty_batch(trained):
    with pytest.raises(ValueError, match="'x' of plate 'data' has no rows"):
        train(minibatch_model, trained, factor_data(40)[:0], steps=1)


def test_data_of_another_floating_type(trained):
    with pytest.raises(ValueError, match=r"float64, but the guide's parameters are torch.float32"):
        train(minibatch_model, trained, factor_data(40).double(), steps=1)


def test_integer_data_is_converted_for_the_encoder():
    covariates, y = regression_data(30)
    guide = AutoAmortizedGuide(regression_model)
    guide(covariates, y)
    counts = covariates.round().to(torch.int64)  # integer covariates, float outcome
    assert torch.equal(guide.median(counts, y)["effect"], guide.median(counts.float(), y)["effect"])


def test_encoder_inputs_are_checked_when_the_features_are_not_finite():
    encoder = MLPEncoder((8,))
    with pytest.raises(ValueError, match="inputs hold NaN or infinite values"):
        encode_features(encoder, (torch.tensor([[0.0, float("nan")]]),))
    assert pyro.get_param_store().keys() == set()


class _NoSupport(dist.TorchDistribution):
    """A distribution without a support, as Pyro's wrapper of a zuko flow."""

    arg_constraints = {}

    def __init__(self, rows):
        super().__init__(torch.Size([rows]), torch.Size([2]))

    def log_prob(self, value):
        return value.new_zeros(value.shape[:-1])


def test_a_distribution_without_a_support_is_named():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", _NoSupport(x.shape[0]))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    guide = AutoAmortizedGuide(model)
    with pytest.raises(ValueError, match="Site 'z' has a _NoSupport with no support"):
        guide(torch.zeros(3, 2))
