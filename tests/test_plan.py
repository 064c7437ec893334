"""The per-call plan: the order of a call's steps, and what a signature fixes."""

import functools
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_amortized import AutoAmortizedGuide
from pyro_amortized.calls import MAX_CACHED_CALLS
from pyro_amortized.plan import run_plan


def labelled_model(x, y=None):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        label = pyro.sample("y", dist.Bernoulli(0.5), obs=y)
        z = pyro.sample("z", dist.Normal(loc + label, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


class Recorder:
    """A plan visitor that writes down the steps it is given, in order."""

    def __init__(self):
        self.events = []

    def global_site(self, step):
        self.events.append(f"global {step.name}")

    @contextmanager
    def data_plate(self, step):
        self.events.append(f"plate {step.plate.name}")
        yield torch.zeros(1)

    def observed_site(self, step, plate, features):
        self.events.append(f"observed {step.name}")

    def local_site(self, step, plate, features):
        self.events.append(f"latent {step.name} reads {','.join(step.reads)}")


def steps_of(guide, *args):
    plan = guide._built.calls.plan(guide.model, guide.init_loc_fn, args, {})
    recorder = Recorder()
    run_plan(plan.steps, recorder)
    return recorder.events


def test_a_call_runs_globals_then_each_plate_in_an_inverse_order_of_the_model():
    pyro.clear_param_store()
    x = torch.randn(6)
    guide = AutoAmortizedGuide(labelled_model)
    guide(x)
    # The label first (discrete), then the code that reads it; both read the
    # global, which the posterior couples with them.
    assert steps_of(guide, x) == [
        "global loc",
        "plate data",
        "latent y reads loc",
        "latent z reads loc,y",
    ]


def test_a_signature_that_observes_a_site_reads_it_instead():
    pyro.clear_param_store()
    x, y = torch.randn(6), torch.ones(6)
    guide = AutoAmortizedGuide(labelled_model)
    guide(x)
    guide(x, y)
    observed = steps_of(guide, x, y)
    assert observed == ["global loc", "plate data", "observed y", "latent z reads loc,y"]
    assert steps_of(guide, x)[2] == "latent y reads loc"  # the other signature's plan


def test_plans_are_cached_per_signature():
    pyro.clear_param_store()
    x = torch.randn(6)
    guide = AutoAmortizedGuide(labelled_model)
    guide(x)
    plans = guide._built.calls.plans
    guide(torch.randn(6))
    assert len(plans) == 1
    guide(torch.randn(9))
    assert len(plans) == 2


def test_a_new_signature_reads_its_masks_from_the_run_that_plans_it():
    runs = []

    def masked_model(x, mask, factor):
        runs.append(factor)
        with pyro.plate("data", x.shape[0]):
            with pyro.poutine.scale(scale=factor):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).mask(mask))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    pyro.clear_param_store()
    x = torch.randn(6)
    guide = AutoAmortizedGuide(masked_model, hidden_dims=(4,))
    guide(x, torch.ones(6, dtype=torch.bool), 1.0)
    for factor in (0.5, 0.25, 0.5):  # two new signatures (annealing), then a known one
        mask = torch.rand(6) < 0.5
        runs.clear()
        trace = pyro.poutine.trace(guide).get_trace(x, mask, factor)
        assert runs == [factor]  # one run of the model: the plan's, or the masks'
        assert trace.nodes["z"]["scale"] == factor
        assert torch.equal(trace.nodes["z"]["mask"], mask)


def test_masks_sliced_from_an_argument_are_taken_from_later_calls_without_the_model():
    runs = []

    def padded_model(x, mask):
        runs.append(1)
        with pyro.plate("data", x.shape[0]):
            for t in range(x.shape[1]):
                with pyro.poutine.mask(mask=mask[:, t]):
                    z = pyro.sample(f"z_{t}", dist.Normal(0.0, 1.0))
                pyro.sample(f"x_{t}", dist.Normal(z, 1.0).mask(mask[:, t]), obs=x[:, t])

    pyro.clear_param_store()
    x = torch.randn(6, 4)
    guide = AutoAmortizedGuide(padded_model, hidden_dims=(4,))
    guide(x, torch.ones(6, 4, dtype=torch.bool))
    runs.clear()
    for _ in range(16):
        mask = torch.rand(6, 4) < 0.5
        trace = pyro.poutine.trace(guide).get_trace(x, mask)
        for t in range(4):
            assert torch.equal(trace.nodes[f"z_{t}"]["mask"], mask[:, t])
    assert len(runs) == 5  # runs that check the sliced masks: calls 2, 3, 5, 9 and 17


@pytest.mark.parametrize("form", ["distribution", "handler"])
def test_masks_copied_from_a_float_argument_are_taken_from_later_calls_without_the_model(form):
    # Pyro's deep Markov model masks with a float mask's slice, which
    # MaskedDistribution copies to a boolean tensor: no view of the argument.
    runs = []

    def padded_model(x, mask):
        runs.append(1)
        with pyro.plate("data", x.shape[0]):
            for t in range(x.shape[1]):
                prior = dist.Normal(torch.zeros(6, 2), 1.0)
                if form == "distribution":
                    z = pyro.sample(f"z_{t}", prior.mask(mask[:, t : t + 1]).to_event(1))
                else:
                    with pyro.poutine.mask(mask=mask[:, t].bool()):
                        z = pyro.sample(f"z_{t}", prior.to_event(1))
                pyro.sample(f"x_{t}", dist.Normal(z.sum(-1), 1.0), obs=x[:, t])

    pyro.clear_param_store()
    x = torch.randn(6, 4)
    guide = AutoAmortizedGuide(padded_model, hidden_dims=(4,))
    guide(x, torch.ones(6, 4))
    runs.clear()
    for _ in range(16):
        mask = (torch.rand(6, 4) < 0.5).float()
        trace = pyro.poutine.trace(guide).get_trace(x, mask)
        for t in range(4):
            assert torch.equal(trace.nodes[f"z_{t}"]["mask"], mask[:, t].bool())
    assert len(runs) == 5  # runs that check the copied masks: calls 2, 3, 5, 9 and 17


def test_masks_sliced_otherwise_in_a_later_call_are_read_from_the_model():
    runs = []

    def shifting_model(x, mask, column):
        runs.append(1)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).mask(mask[:, int(column)]))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    pyro.clear_param_store()
    x = torch.randn(6)
    mask = torch.tensor([[True, False, True]] * 6)
    guide = AutoAmortizedGuide(shifting_model, hidden_dims=(4,))
    for call, column in enumerate((0, 1, 2, 1)):  # one signature: the column is a tensor
        runs.clear()
        trace = pyro.poutine.trace(guide).get_trace(x, mask, torch.tensor(column))
        assert call == 0 or len(runs) == 1
        assert torch.equal(trace.nodes["z"]["mask"], mask[:, column])


def test_create_plates_subsampling_gives_each_call_the_masks_of_its_rows():
    def model(x, batch_size, tag=None):
        with pyro.plate("data", x.shape[0]) as rows:  # every row: the guide subsamples
            xb = x[rows]
            z = pyro.sample(
                "z", dist.Normal(torch.zeros(len(rows), 2), 1.0).to_event(1).mask(xb[:, 0] > 0)
            )
            pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=xb)

    def create_plates(x, batch_size, tag=None):
        return pyro.plate("data", x.shape[0], subsample_size=batch_size)

    x = torch.randn(64, 2)
    guide = AutoAmortizedGuide(model, create_plates=create_plates)
    for tag in range(3):  # a new signature each call: each plan made by a run of the model
        trace = poutine.trace(guide).get_trace(x, 8, tag=tag)
        rows = trace.nodes["data"]["value"]
        assert torch.equal(trace.nodes["z"]["mask"], x[rows, 0] > 0)


def test_an_argument_made_anew_each_call_is_named_once_the_plans_fill_up():
    def model(x, prior):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(prior(), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    x = torch.randn(10)
    guide = AutoAmortizedGuide(model)
    with pytest.warns(UserWarning, match=r"arguments \['prior'\] differ from call to call"):
        for step in range(MAX_CACHED_CALLS + 1):
            guide(x, functools.partial(float, step % 3))
