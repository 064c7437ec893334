"""How the default encoder reads its inputs: the labels of a categorical site one-hot."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEED, train
from models import annotation_data, annotation_log_evidence, annotation_model
from pyro.infer import TraceEnum_ELBO

from pyro_amortized import AutoAmortizedGuide, MLPEncoder
from pyro_amortized.input_encoding import OneHotInputs
from pyro_amortized.params import module_key

STEPS = 1000


def trained_elbo_gap(encoder=None):
    """Per item, the exact log evidence minus the trained guide's ELBO."""
    labels = annotation_data(60, SEED)
    pyro.set_rng_seed(SEED)
    options = {} if encoder is None else {"encoder": encoder}
    guide = AutoAmortizedGuide(annotation_model, enumerate_discrete="parallel", **options)
    elbo = TraceEnum_ELBO(max_plate_nesting=2)
    train(annotation_model, guide, labels, steps=STEPS, elbo=elbo)
    with torch.no_grad():
        value = -elbo.loss(annotation_model, guide, labels)
    return guide, (annotation_log_evidence(labels) - value) / len(labels)


def test_labels_of_a_categorical_site_are_read_one_hot():
    guide, gap = trained_elbo_gap()
    encoder = guide.network.encoders[module_key("items")]
    assert isinstance(encoder, OneHotInputs) and encoder.counts == (3,)
    print(f"ELBO gap per item: {gap:.3f}")
    assert 0 < gap < 2.0  # the labels read as numbers: 6 nats per item


def test_a_users_encoder_reads_the_labels_as_given():
    guide = AutoAmortizedGuide(annotation_model, encoder=MLPEncoder((16,)))
    guide(annotation_data(5, SEED))
    assert isinstance(guide.network.encoders[module_key("items")], MLPEncoder)


def test_one_hot_inputs_leave_values_outside_the_categories_at_zero():
    encoder = OneHotInputs(torch.nn.Identity(), (3, 0))
    labels, other = torch.tensor([[0.0, 2.0], [-1.0, 3.0]]), torch.tensor([[0.5], [1.5]])
    encoded, passed = encoder.encode((labels, other))
    expected = torch.tensor([[[1.0, 0, 0], [0, 0, 1]], [[0, 0, 0], [0, 0, 0]]])
    assert torch.equal(encoded, expected) and passed is other


def test_labels_of_too_many_categories_stay_numbers_with_a_warning():
    def model(words):
        with pyro.plate("docs", words.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            logits = z[:, None, None] * torch.linspace(-1, 1, 5000)
            pyro.sample("words", dist.Categorical(logits=logits).to_event(1), obs=words)

    guide = AutoAmortizedGuide(model)
    with pytest.warns(UserWarning, match="5000 categories, 2 per data point: too many"):
        guide(torch.randint(0, 5000, (8, 2)))
    assert isinstance(guide.network.encoders["docs"], MLPEncoder)


def minibatch_labels_model(labels):
    """The labels observed through the minibatch, as integers whatever their dtype."""
    with pyro.plate("items", len(labels), subsample_size=10) as rows:
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        pyro.sample("y", dist.Categorical(logits=z), obs=labels[rows].long())


@pytest.mark.parametrize("dtype", [torch.long, torch.float])
def test_labels_observed_by_rows_or_in_another_dtype_are_read_one_hot(dtype):
    labels = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(SEED))
    guide = AutoAmortizedGuide(minibatch_labels_model)
    guide(labels.to(dtype))
    encoder = guide.network.encoders[module_key("items")]
    assert isinstance(encoder, OneHotInputs) and encoder.counts == (3,)
    if dtype == torch.long:  # integer labels reach the encoder in its dtype
        guide.to(torch.float64)
        assert guide.encode(labels)["z"].mean.dtype == torch.float64
