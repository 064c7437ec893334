"""Parity on a real task: a VAE on the 8x8 digits.

``AutoAmortizedGuide`` and the hand-written guide with the same encoder
(:class:`~pyro_amortized.models.DigitsEncoderGuide`) are trained with the same
model, seed, optimizer and number of minibatch steps; their held-out ELBOs must
agree within 1%, and both must have learned.
"""

from __future__ import annotations

import pyro
import pytest
import torch
from helpers import SEED
from pyro.infer import SVI, Trace_ELBO

from pyro_amortized import AutoAmortizedGuide
from pyro_amortized.datasets import load_digits_binarized, train_test_split_digits
from pyro_amortized.models import (
    Decoder,
    DigitsEncoderGuide,
    digits_vae_model,
    elbo_per_point,
)

pytest.importorskip("sklearn")

LATENT_DIM = 5
HIDDEN_DIM = 256
BATCH_SIZE = 128
STEPS = 1500
LEARNING_RATE = 3e-3
NUM_PARTICLES = 50


def train_and_evaluate(kind: str) -> tuple[float, float]:
    """Held-out ELBO per image before and after training, for one guide."""
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    x_train, _, x_test, _ = train_test_split_digits(seed=SEED)
    decoder = Decoder(LATENT_DIM, HIDDEN_DIM, x_train.shape[1])
    model = digits_vae_model(decoder, LATENT_DIM, batch_size=BATCH_SIZE)
    if kind == "ours":
        guide = AutoAmortizedGuide(model, hidden_dims=(HIDDEN_DIM,))
    else:
        guide = DigitsEncoderGuide(x_train.shape[1], LATENT_DIM, HIDDEN_DIM, batch_size=BATCH_SIZE)
    # A first call with the training data: the guide reads the model's minibatch
    # plate from it (not from the evaluation call below).
    guide(x_train)
    initial = elbo_per_point(model, guide, x_test, num_particles=NUM_PARTICLES)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LEARNING_RATE}), Trace_ELBO())
    for _ in range(STEPS):
        svi.step(x_train)
    final = elbo_per_point(model, guide, x_test, num_particles=NUM_PARTICLES)
    return initial, final


def test_load_digits_binarized():
    images, labels = load_digits_binarized()
    assert images.shape == (1797, 64) and images.dtype == torch.get_default_dtype()
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert set(images.unique().tolist()) == {0.0, 1.0}
    assert set(labels.unique().tolist()) == set(range(10))


def test_train_test_split_digits_is_seeded_and_disjoint():
    x_train, y_train, x_test, y_test = train_test_split_digits(seed=3)
    again = train_test_split_digits(seed=3)
    assert torch.equal(x_train, again[0]) and torch.equal(y_test, again[3])
    assert len(x_train) + len(x_test) == 1797 and len(x_test) == 359
    assert len(y_train) == len(x_train) and len(y_test) == len(x_test)
    other = train_test_split_digits(seed=4)
    assert not torch.equal(y_test, other[3])


def test_heldout_elbo_matches_hand_written_guide():
    ours_initial, ours = train_and_evaluate("ours")
    hand_initial, hand = train_and_evaluate("hand")
    # Both learned: about 45 nats per image at the start, under 20 after training.
    assert ours > ours_initial + 15.0, (ours_initial, ours)
    assert hand > hand_initial + 15.0, (hand_initial, hand)
    relative = abs(ours - hand) / abs(hand)
    assert relative <= 0.01, (
        f"held-out ELBO per image: AutoAmortizedGuide {ours:.3f}, "
        f"hand-written {hand:.3f} (relative difference {relative:.4f})"
    )
