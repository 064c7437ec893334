"""Parameters in Pyro's param store: names, sharing, save and load, reproducibility."""

import pyro
import pytest
import torch
from helpers import SEED, train
from models import factor_data, minibatch_model
from pyro.infer import Trace_ELBO

from pyro_amortized import AutoAmortizedDelta, AutoAmortizedGuide
from pyro_amortized.params import named_parameters


def _trained(seed, steps=20):
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED + seed)
    guide = AutoAmortizedGuide(minibatch_model)
    train(minibatch_model, guide, factor_data(60), steps=steps)
    return {name: value.detach().clone() for name, value in guide.state_dict().items()}


def test_same_seed_same_parameters():
    first, again, other = _trained(3), _trained(3), _trained(4)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)


def test_names_follow_the_class():
    guide = AutoAmortizedGuide(minibatch_model)
    guide(factor_data(10))
    names = set(pyro.get_param_store().keys())
    assert "AutoAmortizedGuide.global_params.w.loc" in names
    assert "AutoAmortizedGuide.network$$$heads.z.loc.weight" in names
    AutoAmortizedDelta(minibatch_model)(factor_data(10))
    assert "AutoAmortizedDelta.network$$$heads.z.loc.weight" in pyro.get_param_store()


def test_a_saved_param_store_loads_into_a_fresh_guide(tmp_path):
    x = factor_data(60)
    guide = AutoAmortizedGuide(minibatch_model)
    train(minibatch_model, guide, x, steps=30)
    expected = guide.median(x)["z"]
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    fresh = AutoAmortizedGuide(minibatch_model)
    fresh(x)  # reads the model and takes the stored parameters
    assert torch.equal(fresh.median(x)["z"], expected)
    losses = train(minibatch_model, fresh, x, steps=5)  # and trains them
    assert torch.isfinite(torch.tensor(losses)).all()
    assert not torch.equal(fresh.median(x)["z"], expected)


def test_a_loaded_store_warns_that_standardizing_statistics_are_not_in_it(tmp_path):
    # The statistics of standardize_inputs=True are buffers, which the store
    # does not hold: a fresh guide reads them from its own first call.
    x = factor_data(60)
    guide = AutoAmortizedGuide(minibatch_model, standardize_inputs=True)
    train(minibatch_model, guide, x, steps=5)
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.clear_param_store()
    pyro.get_param_store().load(tmp_path / "params.pt")
    fresh = AutoAmortizedGuide(minibatch_model, standardize_inputs=True)
    with pytest.warns(UserWarning, match=r"holds no buffers: its modules \['encoders.data'\]"):
        fresh(x[:30] + 3.0)
    fresh.load_state_dict(guide.state_dict())  # the way that restores them
    assert torch.equal(fresh.median(x)["z"], guide.median(x)["z"])


def test_two_guides_of_one_class_share_the_global_store():
    x = factor_data(60)
    first, second = AutoAmortizedGuide(minibatch_model), AutoAmortizedGuide(minibatch_model)
    first(x)
    second(x)
    train(minibatch_model, second, x, steps=10)
    # One set of parameters, as for Pyro's autoguides: both guides see the update.
    assert torch.equal(first.median(x)["z"], second.median(x)["z"])
    assert len(pyro.get_param_store()) == len(list(second.parameters()))


def test_two_guides_of_one_class_for_other_models_is_a_clear_error():
    AutoAmortizedGuide(minibatch_model)(factor_data(10))  # five features
    with pytest.raises(ValueError, match=r"holds 'AutoAmortizedGuide.*clear_param_store"):
        AutoAmortizedGuide(minibatch_model)(torch.randn(10, 7))


def test_module_local_params_keep_guides_apart():
    x = factor_data(60)
    with pyro.settings.context(module_local_params=True):
        first, second = AutoAmortizedGuide(minibatch_model), AutoAmortizedGuide(minibatch_model)
        first(x)
        second(x)
        before = first.median(x)["z"]
        loss = Trace_ELBO()(minibatch_model, second)
        optimizer = torch.optim.Adam(loss.parameters(), lr=0.05)
        for _ in range(10):
            optimizer.zero_grad()
            loss(x).backward()
            optimizer.step()
    assert torch.equal(first.median(x)["z"], before)
    assert not torch.equal(second.median(x)["z"], before)
    assert len(pyro.get_param_store()) == 0


def test_a_guide_keeps_its_network_after_the_store_is_cleared():
    x = factor_data(60)
    first = AutoAmortizedGuide(minibatch_model)
    train(minibatch_model, first, x, steps=20)
    expected = first.median(x)["z"]
    pyro.clear_param_store()
    second = AutoAmortizedGuide(minibatch_model)
    train(minibatch_model, second, x, steps=20, lr=0.05)
    # The first guide runs in Pyro again (an ELBO, a trace): with its own network.
    loss_first = Trace_ELBO(num_particles=50).loss(minibatch_model, first, x)
    assert torch.equal(first.median(x)["z"], expected)
    assert not torch.equal(second.median(x)["z"], expected)
    loss_second = Trace_ELBO(num_particles=50).loss(minibatch_model, second, x)
    assert loss_second < loss_first  # trained with a larger rate: each scores with its own
    assert not torch.equal(second.median(x)["z"], first.median(x)["z"])


def test_the_parameter_walk_is_torchs_with_shared_modules_and_parameters():
    shared = torch.nn.Linear(3, 2)
    network = torch.nn.ModuleDict(
        {"a": torch.nn.Sequential(shared, torch.nn.ReLU()), "b": shared, "c": torch.nn.Linear(2, 2)}
    )
    network["c"].weight = network["a"][0].weight  # a tied parameter
    network.register_parameter("own", torch.nn.Parameter(torch.zeros(1)))
    walked = named_parameters(network)
    expected = list(network.named_parameters())
    assert [name for name, _ in walked] == [name for name, _ in expected]
    assert all(a is b for (_, a), (_, b) in zip(walked, expected, strict=True))
