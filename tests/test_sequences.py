"""Sequences: a chain of local sites per time step shares one head, read from
per-step features of a sequence encoder; against the exact smoothing posterior
of a linear-Gaussian state-space model (the Kalman smoother)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import SEED
from pyro import poutine

from pyro_amortized import AutoAmortizedGuide, SequenceEncoder
from pyro_amortized.datasets import load_chick_weights
from pyro_amortized.models import chick_growth_model
from pyro_amortized.sequences import TimeStep, chain_steps, time_chains

TRANSITION, NOISE, OBSERVATION = 0.9, 0.5, 0.7
"""``z_t ~ N(0.9 z_{t-1}, 0.5)``, ``x_t ~ N(z_t, 0.7)``."""


def state_space_model(x, mask):
    """A linear-Gaussian state-space model over padded sequences: the steps past
    a sequence's length are masked, as Pyro's deep Markov model does."""
    with pyro.plate("sequences", x.shape[0]):
        z = x.new_zeros(x.shape[0])
        for t in pyro.markov(range(x.shape[1])):
            z = pyro.sample(f"z_{t}", dist.Normal(TRANSITION * z, NOISE).mask(mask[:, t]))
            pyro.sample(f"x_{t}", dist.Normal(z, OBSERVATION).mask(mask[:, t]), obs=x[:, t])


def simulate(num_sequences, num_steps, seed):
    """Sequences of 5 to ``num_steps`` steps, padded with zeros, and their mask."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, num_steps + 1, (num_sequences,), generator=generator)
    z, steps = torch.zeros(num_sequences), []
    for _ in range(num_steps):
        z = TRANSITION * z + NOISE * torch.randn(num_sequences, generator=generator)
        steps.append(z + OBSERVATION * torch.randn(num_sequences, generator=generator))
    mask = torch.arange(num_steps) < lengths[:, None]
    return torch.stack(steps, 1) * mask, mask


def smoothing_posterior(x, length):
    """The exact posterior of ``z_{0:length}`` given one sequence's observations."""
    steps = torch.arange(length)
    precision = torch.zeros(length, length, dtype=torch.float64)
    precision[steps, steps] = (1 + TRANSITION**2) / NOISE**2 + 1 / OBSERVATION**2
    precision[length - 1, length - 1] = 1 / NOISE**2 + 1 / OBSERVATION**2
    precision[steps[:-1], steps[1:]] = precision[steps[1:], steps[:-1]] = -TRANSITION / NOISE**2
    covariance = torch.linalg.inv(precision)
    mean = covariance @ (x[:length].double() / OBSERVATION**2)
    return dist.MultivariateNormal(mean, covariance)


def kl_per_step(guide, x, mask, num_draws=200):
    """Mean over sequences of KL(q(z | x) || p(z | x)) per valid step, by Monte Carlo."""
    lengths = mask.sum(1)
    posteriors = [smoothing_posterior(x[n], int(lengths[n])) for n in range(len(x))]
    total = torch.zeros(len(x), dtype=torch.float64)
    with torch.no_grad():
        for _ in range(num_draws):
            trace = poutine.trace(guide).get_trace(x, mask)
            nodes = [trace.nodes[f"z_{t}"] for t in range(x.shape[1])]
            log_q = sum(
                node["fn"].log_prob(node["value"]).double() * mask[:, t]
                for t, node in enumerate(nodes)
            )
            z = torch.stack([node["value"] for node in nodes], 1).double()
            log_p = torch.stack(
                [
                    posterior.log_prob(z[n, : int(lengths[n])])
                    for n, posterior in enumerate(posteriors)
                ]
            )
            total += log_q - log_p
    return (total / num_draws / lengths).mean().item()


def test_chains_are_found_by_name():
    class Site:
        def __init__(self, discrete=None, shape=()):
            self.discrete, self.point_batch_shape = discrete, torch.Size()
            self.unconstrained_event_shape = torch.Size(shape)

    sites = {name: Site() for name in ("z_1", "z_2", "z_3", "y1", "y2", "w_0", "w_2", "w_3", "a")}
    sites["s_4"] = sites["s_5"] = sites["s_6"] = Site(discrete="categorical")
    assert time_chains(list(sites), sites) == [("z_1", "z_2", "z_3")]  # y: two; w: a gap
    upstream = {"z_1": ("z_2",), "z_2": ("z_3",)}
    steps = chain_steps(("z_1", "z_2", "z_3"), upstream)
    assert steps["z_1"] == TimeStep("z_1", 0, "z_2") and steps["z_3"] == TimeStep("z_1", 2, None)
    assert chain_steps(("z_1", "z_2", "z_3"), {"z_1": ("z_3",)}) is None  # not adjacent
    assert chain_steps(("z_1", "z_2", "z_3"), {"z_1": ("a",)}) is None  # local reads differ
    shared = chain_steps(("z_1", "z_2", "z_3"), {"z_2": ("g", "z_1"), "z_3": ("h",)}, ("g", "h"))
    assert {step.reads for step in shared.values()} == {("g", "h")}  # globals: every step


def test_the_steps_share_one_head_and_a_sequence_encoder():
    sizes = []
    for num_steps in (10, 30):
        x, mask = simulate(16, num_steps, SEED)
        guide = AutoAmortizedGuide(state_space_model, hidden_dims=(16,))
        guide(x, mask)
        heads = guide.network.heads
        assert heads["z_0"] is heads[f"z_{num_steps - 1}"]
        assert isinstance(guide.network.encoders["sequences"], SequenceEncoder)
        sizes.append(sum(p.numel() for p in guide.parameters()))
    assert sizes[0] == sizes[1]  # no parameter per step


def test_every_step_reads_the_globals_that_any_step_reads():
    # z_0 has no transition, so the model couples it with fewer globals than
    # the later steps; the shared head reads them all at every step.
    data = load_chick_weights()
    guide = AutoAmortizedGuide(chick_growth_model, hidden_dims=(8,))
    guide(data["log_weight"], data["mask"], data["diet"])
    reads = guide.upstream_sites
    assert reads["z_0"] == ("drift", "sigma_z", "sigma_x", "z_1")
    assert reads["z_11"] == ("drift", "sigma_z", "sigma_x")
    assert guide.network.heads["z_0"] is guide.network.heads["z_11"]
    assert isinstance(guide.network.encoders["chicks"], SequenceEncoder)


def test_the_sequence_encoder_runs_the_recurrent_layer_named():
    x = torch.randn(3, 5, 2)
    assert isinstance(SequenceEncoder(5, (8,)).rnn, torch.nn.LSTM)
    assert isinstance(SequenceEncoder(5, (8,), cell="gru").rnn, torch.nn.GRU)
    assert SequenceEncoder(5, (8,), cell="gru")(x).shape == (3, 5, 8)
    assert SequenceEncoder(5, (8,))(x).shape == (3, 5, 8)
    with pytest.raises(ValueError, match="cell must be one of"):
        SequenceEncoder(5, (8,), cell="rnn")


def test_a_sequence_encoder_of_another_length_is_refused():
    x, mask = simulate(4, 10, SEED)
    guide = AutoAmortizedGuide(state_space_model, encoder=SequenceEncoder(12))
    with pytest.raises(ValueError, match="has 12 steps, but the plate's chain"):
        guide(x, mask)


def test_a_call_with_other_steps_says_to_pad():
    x, mask = simulate(4, 10, SEED)
    guide = AutoAmortizedGuide(state_space_model, hidden_dims=(8,))
    guide(x, mask)
    with pytest.raises(ValueError, match=r"samples no site \['z_8', 'z_9'\] in this call"):
        guide(*simulate(4, 8, SEED))
    with pytest.raises(ValueError, match="per-data-point shape"):
        guide(*simulate(4, 12, SEED))


@pytest.mark.parametrize("num_steps, steps", [(12, 500), (50, 300)])
def test_the_smoothing_posterior_of_sequences_of_varying_lengths(num_steps, steps):
    pyro.set_rng_seed(SEED)
    x, mask = simulate(2000, num_steps, SEED)
    guide = AutoAmortizedGuide(state_space_model, hidden_dims=(64,))
    batches = torch.randint(0, len(x), (steps, 128), generator=torch.Generator().manual_seed(SEED))
    optim = pyro.optim.ClippedAdam({"lr": 0.005, "lrd": 0.01 ** (1 / steps)})
    svi = pyro.infer.SVI(state_space_model, guide, optim, pyro.infer.Trace_ELBO())
    for rows in batches:
        svi.step(x[rows], mask[rows])
    test_x, test_mask = simulate(50, num_steps, SEED + 100)
    kl = kl_per_step(guide, test_x, test_mask)
    print(f"KL per step, lengths 5 to {num_steps}: {kl:.4f}")
    assert kl < 0.05
