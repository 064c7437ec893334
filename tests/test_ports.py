"""The published Pyro programs of examples/ports: each trains with its own guide,
and AutoAmortizedGuide(model) trains on it with no guide code.

Every test runs the program's tiny data set for a few steps.
"""

import functools
import math
import pathlib
import sys

import pyro
import pytest
import torch
from helpers import SEED
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_amortized import AutoAmortizedGuide, SequenceEncoder
from pyro_amortized.weights import handler_weights

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the examples package

from examples.ports import PROGRAMS, cvae, dmm, gmm, hmm, lda, prodlda, ss_vae, vae  # noqa: E402

STEPS = 3

RUNS = {
    "vae": vae.run,
    "ss_vae": ss_vae.run,
    "ss_vae_aux": functools.partial(ss_vae.run, aux_loss=True),
    "cvae": cvae.run,
    "lda": lda.run,
    "hmm": hmm.run,
    "gmm": gmm.run,
    "gmm_sampled": gmm.run_sampled,
    "prodlda": prodlda.run,
    "dmm": dmm.run,
}

NOTHING_TO_AMORTIZE = {"gmm", "hmm"}
"""Programs whose model enumerates its only local sites: the amortized guide has
global sites only, as AutoNormal, and says so."""


def short_run(program, guide_kind):
    options = {"steps": STEPS, "small": True}
    if program in ("gmm", "gmm_sampled"):
        options["tries"] = 3
    return RUNS[program](guide_kind, **options)


def assert_trained(outcome):
    assert outcome["steps"] == STEPS
    assert math.isfinite(outcome["final_loss"])
    assert math.isfinite(outcome["metric"])
    assert outcome["step_seconds"] > 0


def test_every_program_is_tested():
    assert set(RUNS) == set(PROGRAMS)


@pytest.mark.parametrize("program", PROGRAMS)
def test_hand_written_guide_trains(program):
    assert_trained(short_run(program, "hand"))


@pytest.mark.parametrize("program", PROGRAMS)
def test_amortized_guide_trains(program):
    if program in NOTHING_TO_AMORTIZE:
        with pytest.warns(UserWarning, match="nothing to amortize"):
            outcome = short_run(program, "amortized")
    else:
        outcome = short_run(program, "amortized")
    assert_trained(outcome)


def test_cvae_prediction_without_targets():
    data = cvae.make_data(small=True)
    inputs, outputs = data["train_input"][:16], data["train_output"][:16]
    network = cvae.CVAE(z_dim=4, hidden=16, baseline_net=cvae.BaselineNet(16))
    assert cvae.predict(network, network.guide, inputs, num_samples=2).shape == (2, 16, 8, 8)
    guide = AutoAmortizedGuide(network.model, hidden_dims=(16, 16))
    svi = pyro.infer.SVI(network.model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    assert math.isfinite(svi.step(inputs, outputs))
    # The program predicts with Predictive(model, guide) and ys=None: its guide
    # falls back to the prior network. Without the targets the model generates
    # them, and the amortized guide leaves z to the model's prior network too.
    predictions = cvae.predict(network, guide, inputs, num_samples=2)
    assert predictions.shape == (2, 16, 8, 8)
    trace = poutine.trace(guide).get_trace(inputs)
    assert "z" not in trace.nodes


def test_unknown_guide_kind_is_an_error():
    with pytest.raises(ValueError, match="guide_kind"):
        vae.run("autonormal", steps=1, small=True)


def test_dmm_steps_share_one_head_over_a_sequence_encoder():
    # The reversed minibatch is a PackedSequence, which feeds no encoder; the
    # notes, the mask and the lengths do, each step's through the sequence
    # encoder, and the latents z_1..z_T are one chain with one head.
    data = dmm.make_data(small=True)
    network = dmm.DMM(**dmm.small_sizes())
    batch = dmm.get_mini_batch(torch.arange(6), data["train_sequences"], data["train_lengths"])
    assert isinstance(batch[1], torch.nn.utils.rnn.PackedSequence)
    guide = AutoAmortizedGuide(network.model, hidden_dims=(8,))
    svi = pyro.infer.SVI(network.model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    assert math.isfinite(svi.step(*batch, 0.5))
    assert guide.data_plates == {
        "z_minibatch": ("mini_batch", "mini_batch_mask", "mini_batch_seq_lengths")
    }
    assert isinstance(guide.network.encoders["z_minibatch"], SequenceEncoder)
    heads = {id(head) for head in guide.network.heads.values()}
    assert len(guide.local_sites) == data["train_sequences"].shape[1] and len(heads) == 1
    # Both guides mask the steps past each sequence's end, as the model does.
    for proposal in (network.guide, guide):
        trace = poutine.trace(proposal).get_trace(*batch, 0.5)
        last = f"z_{data['train_sequences'].shape[1]}"
        scale, mask = handler_weights(trace, [last])[last]
        assert scale == 0.5 and torch.equal(mask.reshape(-1), batch[2][:, -1].bool())


def test_sampled_mixture_assignments_by_reweighted_wake_sleep():
    # The tutorial's mixture with sampled assignments, the local training by
    # LocalRWS: held-out flowers assigned by species. 1.0 at seeds 0-2 (the
    # ELBO's score function also reaches 1.0 on these well-separated groups).
    outcome = gmm.run_sampled("amortized", seed=SEED, tries=20, objective="rws")
    assert outcome["held_out_accuracy"] >= 0.97
    assert math.isfinite(outcome["metric"])


@pytest.mark.parametrize("objective", ["score_function", "rws"])
def test_semi_supervised_vae_with_the_digit_sampled(objective):
    outcome = ss_vae.run("amortized", steps=STEPS, small=True, objective=objective)
    assert_trained(outcome)
    assert 0.0 <= outcome["metric"] <= 1.0


def test_reweighted_wake_sleep_needs_an_amortized_guide():
    with pytest.raises(ValueError, match="guide_kind='amortized'"):
        ss_vae.run("hand", steps=1, small=True, objective="rws")
    with pytest.raises(ValueError, match="guide_kind='amortized'"):
        gmm.run_sampled("hand", steps=1, small=True, objective="rws")
    with pytest.raises(ValueError, match="objective"):
        ss_vae.run("amortized", steps=1, small=True, objective="sleep")
