"""The batched hidden Markov model ``model_1`` of Pyro's ``examples/hmm.py``,
trained by MAP Baum-Welch.

Kept: ``model_1(sequences, lengths, args, batch_size=None, include_prior=True)``
with ``sequences`` of shape ``(num_sequences, max_length, data_dim)``: the
global ``probs_x`` (``Dirichlet``, sticky) and ``probs_y`` (``Beta(0.1, 0.9)``)
under ``poutine.mask(mask=include_prior)``; the plate ``"sequences"``
subsampling ``batch_size`` sequences at ``dim=-2`` and the plate ``"tones"`` at
``dim=-1``; the loop over time in ``pyro.markov`` up to the batch's longest
sequence (``max_length`` under the jit), with the hidden states ``x_{t}``
enumerated in parallel and the tones ``y_{t}`` observed, both masked past each
sequence's end. The guide is the program's: ``AutoDelta`` over the model with
only the ``probs_*`` sites exposed (``poutine.block(expose_fn=...)``). Training
uses ``Adam(lr=0.05)``, ``TraceEnum_ELBO(max_plate_nesting=2,
strict_enumeration_warning=True)`` and batches of 8 sequences; the metric is
the program's test loss, without the prior (``include_prior=False``), per
observed time step, negated.

Data: the program reads the JSB chorales (downloaded); here sequences are
simulated from ``model_1`` itself, its observations made latent by
``poutine.uncondition``, with 16 hidden states and 51 tones as in the program.
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.infer.autoguide import AutoDelta
from pyro.optim import Adam
from pyro.util import ignore_jit_warnings

from pyro_amortized import AutoAmortizedGuide

from ._shared import check_guide_kind, result, timed_steps

DEFAULT_BATCH_SIZE = 8
DEFAULT_HIDDEN = 16


def model_1(
    sequences: torch.Tensor,
    lengths: torch.Tensor,
    args: argparse.Namespace,
    batch_size: int | None = None,
    include_prior: bool = True,
) -> None:
    """Hidden states ``x_t`` follow a Markov chain; each emits every tone
    independently as a ``Bernoulli``."""
    with ignore_jit_warnings():
        num_sequences, max_length, data_dim = map(int, sequences.shape)
        assert lengths.shape == (num_sequences,)
        assert lengths.max() <= max_length
    with poutine.mask(mask=include_prior):
        probs_x = pyro.sample(
            "probs_x", dist.Dirichlet(0.9 * torch.eye(args.hidden_dim) + 0.1).to_event(1)
        )
        probs_y = pyro.sample(
            "probs_y", dist.Beta(0.1, 0.9).expand([args.hidden_dim, data_dim]).to_event(2)
        )
    tones_plate = pyro.plate("tones", data_dim, dim=-1)
    with pyro.plate("sequences", num_sequences, batch_size, dim=-2) as batch:
        lengths = lengths[batch]
        x = 0
        for t in pyro.markov(range(max_length if args.jit else lengths.max())):
            with poutine.mask(mask=(t < lengths).unsqueeze(-1)):
                x = pyro.sample(
                    f"x_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"}
                )
                with tones_plate:
                    pyro.sample(
                        f"y_{t}", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=sequences[batch, t]
                    )


def make_guide(model: object) -> AutoDelta:
    """The program's guide: point estimates of the ``probs_*`` sites only."""
    return AutoDelta(poutine.block(model, expose_fn=lambda msg: msg["name"].startswith("probs_")))


def simulate(
    num_sequences: int, max_length: int, data_dim: int, args: argparse.Namespace, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences drawn from ``model_1`` (a fresh draw of ``probs_*`` each call),
    zero past each sequence's length, and the lengths (between half of
    ``max_length`` and ``max_length``)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max_length // 2, max_length + 1, (num_sequences,), generator=generator)
    lengths[0] = max_length  # the loop runs to the longest sequence
    shape = (num_sequences, max_length, data_dim)
    with pyro.poutine.seed(rng_seed=seed):
        trace = poutine.trace(poutine.uncondition(model_1)).get_trace(
            torch.zeros(shape), lengths, args
        )
    sequences = torch.stack([trace.nodes[f"y_{t}"]["value"] for t in range(max_length)], 1)
    past_end = torch.arange(max_length) >= lengths.unsqueeze(-1)
    return sequences.masked_fill(past_end.unsqueeze(-1), 0.0).detach(), lengths


def make_data(*, small: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Simulated training and test sequences: ``{"train_sequences",
    "train_lengths", "test_sequences", "test_lengths"}``.

    :param small: 40 + 20 sequences of at most 10 steps over 12 tones with 4
        hidden states, instead of 229 + 77 sequences of at most 32 steps over
        51 tones with 16 hidden states (the chorales have 229 + 77).
    :param seed: seed of the simulation. Training and test sequences share
        one draw of ``probs_*``.
    """
    num_train, num_test, max_length, data_dim, hidden_dim = (
        (40, 20, 10, 12, 4) if small else (229, 77, 32, 51, DEFAULT_HIDDEN)
    )
    args = argparse.Namespace(hidden_dim=hidden_dim, jit=False)
    sequences, lengths = simulate(num_train + num_test, max_length, data_dim, args, seed)
    return {
        "train_sequences": sequences[:num_train],
        "train_lengths": lengths[:num_train],
        "test_sequences": sequences[num_train:],
        "test_lengths": lengths[num_train:],
    }


def run(
    guide_kind: str,
    *,
    steps: int = 50,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    hidden: int | None = None,
    learning_rate: float = 0.05,
    small: bool = False,
) -> dict:
    """Trains ``model_1`` with one guide and measures the test ELBO per observed
    time step, without the prior.

    :param guide_kind: ``"hand"`` (the program's ``AutoDelta`` over the blocked
        model) or ``"amortized"`` (``AutoAmortizedGuide(model_1)``).
    :param steps: SVI steps.
    :param batch_size: sequences per step.
    :param seed: seed of the parameters and the simulation.
    :param hidden: hidden states of the model (``args.hidden_dim``), by
        default those of the simulation (16, or 4 if small); the amortized
        guide has no network to size here.
    :param learning_rate: Adam's learning rate.
    :param small: train on the tiny data set of :func:`make_data`.
    :returns: see :func:`examples.ports._shared.result`; the metric is the
        negated test loss per observed time step (higher is better).
    """
    check_guide_kind(guide_kind)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = make_data(small=small, seed=seed)
    args = argparse.Namespace(hidden_dim=hidden or (4 if small else DEFAULT_HIDDEN), jit=False)
    guide = make_guide(model_1) if guide_kind == "hand" else AutoAmortizedGuide(model_1)
    elbo = TraceEnum_ELBO(max_plate_nesting=2, strict_enumeration_warning=True)
    svi = SVI(model_1, guide, Adam({"lr": learning_rate}), elbo)
    sequences, lengths = data["train_sequences"], data["train_lengths"]

    def step(_: int) -> float:
        return svi.step(sequences, lengths, args=args, batch_size=batch_size)

    losses, step_seconds = timed_steps(step, steps)
    test_sequences, test_lengths = data["test_sequences"], data["test_lengths"]
    test_loss = elbo.loss(
        model_1, guide, test_sequences, test_lengths, args=args, include_prior=False
    )
    metric = -test_loss / float(test_lengths.sum())
    return result("test ELBO per time step (no prior)", metric, losses, step_seconds, step)
