"""The deep Markov model of Pyro's ``examples/dmm.py``.

Kept: the ``DMM`` module with its ``model`` and ``guide`` methods over
``(mini_batch, mini_batch_reversed, mini_batch_mask, mini_batch_seq_lengths,
annealing_factor=1.0)``, ``mini_batch`` of shape ``(sequences, steps, 88)``;
the ``Emitter`` (``p(x_t | z_t)``, a Bernoulli per note), the
``GatedTransition`` (``p(z_t | z_{t-1})``, its linear map starting at the
identity) and the ``Combiner``, registered as ``pyro.module("dmm", ...)`` in
both; the plate ``"z_minibatch"`` over the sequences passed in; the loop over
time in ``pyro.markov``, with the latents ``z_{t}`` under
``poutine.scale(scale=annealing_factor)`` and the notes ``obs_x_{t}``, both
``.mask(mini_batch_mask[:, t - 1 : t])`` past each sequence's end. The guide is
the program's: a ReLU RNN over the reversed sequences, passed as a
``PackedSequence`` (sorted by length, longest first), from a learned initial
state; its outputs turned back into time order give ``q(z_t | z_{t-1},
x_{t:T})`` through the combiner, from a learned ``z_q_0``. Training uses
``ClippedAdam`` with the program's settings (learning rate 0.0003, betas 0.96
and 0.999, gradient norm clipped at 10, learning-rate decay 0.99996 a step,
weight decay 2), ``Trace_ELBO``, minibatches of 20 sequences and the KL
annealing of the program (the factor rising from 0.2 to 1 over the first fifth
of training, 1000 of its 5000 epochs); the metric is the program's test
figure, the ELBO (annealing factor 1) per observed time step, here averaged
over ``n_eval_samples`` copies of the test set as the program's
``n_eval_samples`` does.

Data: the program reads the JSB chorales (downloaded); here binary sequences
over 88 notes are simulated from the model itself, with fixed random networks
(seeded; the emitter's last layer sharpened so that a few notes sound at a
time, as in the chorales), of lengths between half the maximum and the
maximum. Every minibatch is padded to that one maximum, where the program pads
each to its longest sequence; the RNN of the guide still reads each sequence's
own steps, and the masks make the padding count for nothing. The networks are
narrower than the program's, so that both guides train in a minute on a CPU:
latent 16, emitter 32, transition 64, RNN 64 (the program's 100, 100, 200,
600), on 300 training and 100 test sequences of at most 24 steps.

``AutoAmortizedGuide(dmm.model)`` reads ``z_1 .. z_T`` as one time chain with
one head, over a sequence encoder of the padded notes, the mask and the
lengths; the packed reversed batch is no tensor and feeds no encoder.
"""

from __future__ import annotations

import itertools

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam
from torch import nn

from pyro_amortized import AutoAmortizedGuide

from ._shared import check_guide_kind, minibatch_indices, result, timed_steps

NUM_NOTES = 88
"""Notes of a piano roll, the width of each step of the data."""

DEFAULT_BATCH_SIZE = 20
DEFAULT_Z_DIM = 16
DEFAULT_EMISSION = 32
DEFAULT_TRANSITION = 64
DEFAULT_RNN = 64


class Emitter(nn.Module):
    """``p(x_t | z_t)``: two ReLU layers, then a probability per note."""

    def __init__(self, input_dim: int, z_dim: int, emission_dim: int) -> None:
        super().__init__()
        self.lin_z_to_hidden = nn.Linear(z_dim, emission_dim)
        self.lin_hidden_to_hidden = nn.Linear(emission_dim, emission_dim)
        self.lin_hidden_to_input = nn.Linear(emission_dim, input_dim)
        self.relu = nn.ReLU()

    def forward(self, z_t: torch.Tensor) -> torch.Tensor:
        hidden = self.relu(self.lin_hidden_to_hidden(self.relu(self.lin_z_to_hidden(z_t))))
        return torch.sigmoid(self.lin_hidden_to_input(hidden))


class GatedTransition(nn.Module):
    """``p(z_t | z_{t-1})``: a gate mixes a linear map of ``z_{t-1}`` (the
    identity at the start) with a proposed mean from a ReLU layer; the scale is
    a softplus of a linear map of the proposed mean."""

    def __init__(self, z_dim: int, transition_dim: int) -> None:
        super().__init__()
        self.lin_gate_z_to_hidden = nn.Linear(z_dim, transition_dim)
        self.lin_gate_hidden_to_z = nn.Linear(transition_dim, z_dim)
        self.lin_proposed_mean_z_to_hidden = nn.Linear(z_dim, transition_dim)
        self.lin_proposed_mean_hidden_to_z = nn.Linear(transition_dim, z_dim)
        self.lin_sig = nn.Linear(z_dim, z_dim)
        self.lin_z_to_loc = nn.Linear(z_dim, z_dim)
        with torch.no_grad():
            self.lin_z_to_loc.weight.copy_(torch.eye(z_dim))
            self.lin_z_to_loc.bias.zero_()
        self.relu = nn.ReLU()
        self.softplus = nn.Softplus()

    def forward(self, z_t_1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate = torch.sigmoid(self.lin_gate_hidden_to_z(self.relu(self.lin_gate_z_to_hidden(z_t_1))))
        proposed_mean = self.lin_proposed_mean_hidden_to_z(
            self.relu(self.lin_proposed_mean_z_to_hidden(z_t_1))
        )
        loc = (1 - gate) * self.lin_z_to_loc(z_t_1) + gate * proposed_mean
        scale = self.softplus(self.lin_sig(self.relu(proposed_mean)))
        return loc, scale


class Combiner(nn.Module):
    """``q(z_t | z_{t-1}, x_{t:T})``: the RNN's state at step ``t`` averaged with
    a tanh layer of ``z_{t-1}``, then the mean and the softplus scale of ``z_t``."""

    def __init__(self, z_dim: int, rnn_dim: int) -> None:
        super().__init__()
        self.lin_z_to_hidden = nn.Linear(z_dim, rnn_dim)
        self.lin_hidden_to_loc = nn.Linear(rnn_dim, z_dim)
        self.lin_hidden_to_scale = nn.Linear(rnn_dim, z_dim)
        self.tanh = nn.Tanh()
        self.softplus = nn.Softplus()

    def forward(
        self, z_t_1: torch.Tensor, h_rnn: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        combined = 0.5 * (self.tanh(self.lin_z_to_hidden(z_t_1)) + h_rnn)
        return self.lin_hidden_to_loc(combined), self.softplus(self.lin_hidden_to_scale(combined))


def reverse_sequences(mini_batch: torch.Tensor, seq_lengths: torch.Tensor) -> torch.Tensor:
    """Each sequence's first ``seq_lengths[b]`` steps in reverse order, zeros after."""
    steps = torch.arange(mini_batch.shape[1])
    lengths = seq_lengths.unsqueeze(-1)
    source = (lengths - 1 - steps).clamp(min=0)  # step t reads step length - 1 - t
    reversed_batch = mini_batch.gather(1, source.unsqueeze(-1).expand_as(mini_batch))
    return reversed_batch * (steps < lengths).unsqueeze(-1).to(mini_batch.dtype)


def pad_and_reverse(
    rnn_output: nn.utils.rnn.PackedSequence, seq_lengths: torch.Tensor, total_length: int
) -> torch.Tensor:
    """The RNN's packed outputs, padded to ``total_length`` steps and put back in
    time order."""
    padded, _ = nn.utils.rnn.pad_packed_sequence(
        rnn_output, batch_first=True, total_length=total_length
    )
    return reverse_sequences(padded, seq_lengths)


class DMM(nn.Module):
    """The model ``p(x_{1:T} | z_{1:T}) p(z_{1:T})`` and the program's guide
    ``q(z_{1:T} | x_{1:T})``.

    :param input_dim: notes per step (88).
    :param z_dim: dimension of each latent (100 in the program).
    :param emission_dim: width of the emitter (100 in the program).
    :param transition_dim: width of the gated transition (200 in the program).
    :param rnn_dim: width of the guide's RNN and combiner (600 in the program).
    """

    def __init__(
        self,
        input_dim: int = NUM_NOTES,
        z_dim: int = DEFAULT_Z_DIM,
        emission_dim: int = DEFAULT_EMISSION,
        transition_dim: int = DEFAULT_TRANSITION,
        rnn_dim: int = DEFAULT_RNN,
    ) -> None:
        super().__init__()
        self.emitter = Emitter(input_dim, z_dim, emission_dim)
        self.trans = GatedTransition(z_dim, transition_dim)
        self.combiner = Combiner(z_dim, rnn_dim)
        self.rnn = nn.RNN(
            input_size=input_dim, hidden_size=rnn_dim, nonlinearity="relu", batch_first=True
        )
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        self.z_q_0 = nn.Parameter(torch.zeros(z_dim))
        self.h_0 = nn.Parameter(torch.zeros(1, 1, rnn_dim))

    def model(
        self,
        mini_batch: torch.Tensor,
        mini_batch_reversed: nn.utils.rnn.PackedSequence,
        mini_batch_mask: torch.Tensor,
        mini_batch_seq_lengths: torch.Tensor,
        annealing_factor: float = 1.0,
    ) -> None:
        """Latents ``z_t`` follow the gated transition from ``z_0``; each emits
        the notes of its step."""
        T_max = mini_batch.size(1)
        pyro.module("dmm", self)
        z_prev = self.z_0.expand(mini_batch.size(0), self.z_0.size(0))
        with pyro.plate("z_minibatch", len(mini_batch)):
            for t in pyro.markov(range(1, T_max + 1)):
                z_loc, z_scale = self.trans(z_prev)
                with poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample(
                        f"z_{t}",
                        dist.Normal(z_loc, z_scale).mask(mini_batch_mask[:, t - 1 : t]).to_event(1),
                    )
                emission_probs_t = self.emitter(z_t)
                pyro.sample(
                    f"obs_x_{t}",
                    dist.Bernoulli(emission_probs_t)
                    .mask(mini_batch_mask[:, t - 1 : t])
                    .to_event(1),
                    obs=mini_batch[:, t - 1, :],
                )
                z_prev = z_t

    def guide(
        self,
        mini_batch: torch.Tensor,
        mini_batch_reversed: nn.utils.rnn.PackedSequence,
        mini_batch_mask: torch.Tensor,
        mini_batch_seq_lengths: torch.Tensor,
        annealing_factor: float = 1.0,
    ) -> None:
        """``q(z_t | z_{t-1}, x_{t:T})`` from the RNN over the reversed sequences."""
        T_max = mini_batch.size(1)
        pyro.module("dmm", self)
        h_0 = self.h_0.expand(1, mini_batch.size(0), self.rnn.hidden_size).contiguous()
        rnn_output, _ = self.rnn(mini_batch_reversed, h_0)
        rnn_output = pad_and_reverse(rnn_output, mini_batch_seq_lengths, T_max)
        z_prev = self.z_q_0.expand(mini_batch.size(0), self.z_q_0.size(0))
        with pyro.plate("z_minibatch", len(mini_batch)):
            for t in pyro.markov(range(1, T_max + 1)):
                z_loc, z_scale = self.combiner(z_prev, rnn_output[:, t - 1, :])
                with poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample(
                        f"z_{t}",
                        dist.Normal(z_loc, z_scale).mask(mini_batch_mask[:, t - 1 : t]).to_event(1),
                    )
                z_prev = z_t


def get_mini_batch(
    indices: torch.Tensor, sequences: torch.Tensor, seq_lengths: torch.Tensor
) -> tuple[torch.Tensor, nn.utils.rnn.PackedSequence, torch.Tensor, torch.Tensor]:
    """The program's minibatch of the sequences at ``indices``, sorted by length
    (longest first): ``(mini_batch, mini_batch_reversed, mini_batch_mask,
    mini_batch_seq_lengths)``, the reversed batch packed for the RNN. Every
    minibatch keeps all the steps of ``sequences`` (one length for all)."""
    lengths = seq_lengths[indices]
    order = torch.argsort(lengths, descending=True, stable=True)
    lengths = lengths[order]
    mini_batch = sequences[indices[order]]
    mini_batch_mask = (torch.arange(mini_batch.shape[1]) < lengths.unsqueeze(-1)).float()
    mini_batch_reversed = nn.utils.rnn.pack_padded_sequence(
        reverse_sequences(mini_batch, lengths), lengths, batch_first=True
    )
    return mini_batch, mini_batch_reversed, mini_batch_mask, lengths


def simulate(
    num_sequences: int, max_length: int, sizes: dict[str, int], seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences drawn from the model with random networks (seeded), zero past
    each sequence's length, and the lengths (between half of ``max_length``
    and ``max_length``, the first sequence the longest)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max_length // 2, max_length + 1, (num_sequences,), generator=generator)
    lengths[0] = max_length
    with torch.random.fork_rng(), pyro.get_param_store().scope():
        torch.manual_seed(seed)
        dmm = DMM(**sizes)
        with torch.no_grad():  # a few notes at a time, each following z
            dmm.emitter.lin_hidden_to_input.weight.mul_(4.0)
            dmm.emitter.lin_hidden_to_input.bias.fill_(-3.0)
        mask = (torch.arange(max_length) < lengths.unsqueeze(-1)).float()
        zeros = torch.zeros(num_sequences, max_length, NUM_NOTES)
        with torch.no_grad():
            trace = poutine.trace(poutine.uncondition(dmm.model)).get_trace(
                zeros, None, mask, lengths
            )
    notes = [trace.nodes[f"obs_x_{t}"]["value"] for t in range(1, max_length + 1)]
    return torch.stack(notes, 1) * mask.unsqueeze(-1), lengths


def make_data(*, small: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Simulated training and test sequences: ``{"train_sequences",
    "train_lengths", "test_sequences", "test_lengths"}``, the sequences of
    shape ``(n, max_length, 88)``.

    :param small: 40 + 20 sequences of at most 8 steps from networks of widths
        4 (latent), 8 (emitter), 8 (transition), instead of 300 + 100 sequences
        of at most 24 steps from the default widths.
    :param seed: seed of the simulation (lengths, networks and draws).
    """
    num_train, num_test, max_length = (40, 20, 8) if small else (300, 100, 24)
    sizes = small_sizes() if small else {}
    sequences, lengths = simulate(num_train + num_test, max_length, sizes, seed)
    return {
        "train_sequences": sequences[:num_train],
        "train_lengths": lengths[:num_train],
        "test_sequences": sequences[num_train:],
        "test_lengths": lengths[num_train:],
    }


def small_sizes() -> dict[str, int]:
    """The widths of the tiny version."""
    return {"z_dim": 4, "emission_dim": 8, "transition_dim": 8, "rnn_dim": 8}


def annealing(step: int, annealing_steps: int, minimum: float = 0.2) -> float:
    """The program's KL annealing factor: from ``minimum`` up to 1 over
    ``annealing_steps`` steps, then 1."""
    if step >= annealing_steps:
        return 1.0
    return minimum + (1.0 - minimum) * (step + 1) / annealing_steps


def test_elbo_per_step(
    svi: SVI, sequences: torch.Tensor, lengths: torch.Tensor, n_eval_samples: int
) -> float:
    """The program's test figure: the ELBO of the test set (repeated
    ``n_eval_samples`` times) per observed time step."""
    repeated = sequences.repeat(n_eval_samples, 1, 1)
    repeated_lengths = lengths.repeat(n_eval_samples)
    batch = get_mini_batch(torch.arange(len(repeated)), repeated, repeated_lengths)
    return -svi.evaluate_loss(*batch) / float(repeated_lengths.sum())


def run(
    guide_kind: str,
    *,
    steps: int = 500,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    hidden: int = DEFAULT_RNN,
    learning_rate: float = 0.0003,
    annealing_steps: int | None = None,
    n_eval_samples: int = 10,
    small: bool = False,
) -> dict:
    """Trains the DMM with one guide and measures the test ELBO per time step.

    :param guide_kind: ``"hand"`` (the program's RNN and combiner guide) or
        ``"amortized"`` (``AutoAmortizedGuide(dmm.model, hidden_dims=(hidden,))``:
        its sequence encoder, a layer of width ``hidden`` per step then a
        bidirectional LSTM with ``hidden`` features per step, and one head
        shared by the steps).
    :param steps: SVI steps (minibatches).
    :param batch_size: sequences per minibatch.
    :param seed: seed of the parameters, the simulation and the batches.
    :param hidden: width of the guide's RNN and combiner (``rnn_dim``), and of
        the amortized guide's encoder (8 with ``small``).
    :param learning_rate: ``ClippedAdam``'s learning rate.
    :param annealing_steps: steps of KL annealing; by default the first fifth.
    :param n_eval_samples: copies of the test set the test ELBO averages over
        (one with ``small``).
    :param small: train on the tiny data set of :func:`make_data`.
    :returns: see :func:`examples.ports._shared.result`; the metric is the test
        ELBO per observed time step (higher is better).
    """
    check_guide_kind(guide_kind)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = make_data(small=small, seed=seed)
    sizes = small_sizes() if small else {"rnn_dim": hidden}
    dmm = DMM(**sizes)
    if guide_kind == "hand":
        guide = dmm.guide
    else:
        guide = AutoAmortizedGuide(dmm.model, hidden_dims=(sizes["rnn_dim"],))
    optimizer = ClippedAdam(
        {
            "lr": learning_rate,
            "betas": (0.96, 0.999),
            "clip_norm": 10.0,
            "lrd": 0.99996,
            "weight_decay": 2.0,
        }
    )
    svi = SVI(dmm.model, guide, optimizer, loss=Trace_ELBO())
    sequences, lengths = data["train_sequences"], data["train_lengths"]
    batches = minibatch_indices(len(sequences), batch_size, seed)
    annealing_steps = steps // 5 if annealing_steps is None else annealing_steps
    counter = itertools.count()  # steps taken, also by later calls of step

    def step(_: int) -> float:
        factor = annealing(next(counter), annealing_steps)
        return svi.step(*get_mini_batch(next(batches), sequences, lengths), factor)

    losses, step_seconds = timed_steps(step, steps)
    metric = test_elbo_per_step(
        svi, data["test_sequences"], data["test_lengths"], 1 if small else n_eval_samples
    )
    return result("test ELBO per time step", metric, losses, step_seconds, step)
