"""Sequences: the local sites of a data plate that are the steps of a time series.

A model over sequences samples a local site per time step inside its plate over
sequences, named by the step (``pyro.sample(f"z_{t}", ...)`` in a
``pyro.markov`` loop, as Pyro's deep Markov model does). The guide shares one
head across the steps of such a chain, and a sequence encoder gives each step
features of its own from the whole sequence (:class:`SequenceEncoder`), so that
``q(z_t | z_{t+1}, x_{1:T})`` is structured like the smoothing posterior and
the parameter count does not grow with the number of steps.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .encoders import MLPEncoder
from .latent_sites import LatentSite

MIN_STEPS = 3
"""Fewest sites that make a chain: ``z_1`` and ``z_2`` alone may be two sites."""

_STEP_NAME = re.compile(r"^(.*?)(\d+)(\D*)$")


@dataclass(frozen=True)
class TimeStep:
    """A local site's place in its chain.

    :param chain: the chain's first step, whose head all its steps share.
    :param position: the step's index in the chain, and along the time axis
        of the sequence's features.
    :param neighbour: the adjacent step the site's head reads, if any (the
        first step the guide samples reads none, and zeros in its place).
    :param width: the width of a step's value as heads read it.
    :param reads: the sites outside the chain that every step's head reads.
    """

    chain: str
    position: int
    neighbour: str | None
    width: int = 0
    reads: tuple[str, ...] = ()


def time_chains(names: Sequence[str], sites: Mapping[str, LatentSite]) -> list[tuple[str, ...]]:
    """The chains among a data plate's local sites ``names``: at least
    :data:`MIN_STEPS` continuous sites named alike but for one integer, the
    integers consecutive, of one shape; each chain in time order."""
    groups: dict[tuple[str, str], dict[int, str]] = {}
    for name in names:
        match = _STEP_NAME.match(name)
        if match is not None and sites[name].discrete is None:
            groups.setdefault((match[1], match[3]), {})[int(match[2])] = name
    chains = []
    for steps in groups.values():
        order = sorted(steps)
        shapes = {_shape(sites[steps[t]]) for t in order}
        if len(order) >= MIN_STEPS and order == list(range(order[0], order[-1] + 1)):
            if len(shapes) == 1:
                chains.append(tuple(steps[t] for t in order))
    return chains


def chain_steps(
    chain: Sequence[str],
    upstream: Mapping[str, tuple[str, ...]],
    global_sites: Sequence[str] = (),
) -> dict[str, TimeStep] | None:
    """Each step's :class:`TimeStep`, where the steps' heads can be one: each
    reads at most one other step, an adjacent one, and the same local sites
    outside the chain in the same order. Global sites that some steps read
    (the first step often reads fewer: ``z_0`` has no transition) are read by
    every step (:attr:`TimeStep.reads`). ``None`` where the heads cannot be one."""
    members = set(chain)
    steps, locals_, globals_ = {}, set(), set()
    for position, name in enumerate(chain):
        reads = upstream.get(name, ())
        inside = [u for u in reads if u in members]
        neighbours = {chain[i] for i in (position - 1, position + 1) if 0 <= i < len(chain)}
        if len(inside) > 1 or not set(inside) <= neighbours:
            return None
        outside = [u for u in reads if u not in members]
        locals_.add(tuple(u for u in outside if u not in global_sites))
        globals_.update(u for u in outside if u in global_sites)
        steps[name] = TimeStep(chain[0], position, inside[0] if inside else None)
    if len(locals_) != 1:
        return None
    reads = tuple(u for u in global_sites if u in globals_) + locals_.pop()
    return {name: dataclasses.replace(step, reads=reads) for name, step in steps.items()}


def _shape(site: LatentSite) -> tuple:
    return tuple(site.point_batch_shape), tuple(site.unconstrained_event_shape)


def has_time_axis(value: object, num_steps: int) -> bool:
    """Whether an argument holds a value per step: its second axis is the chain's."""
    return isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == num_steps


RECURRENT_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU}
"""The recurrent layers a :class:`SequenceEncoder` may run, by name."""


class SequenceEncoder(nn.Module):
    """Per-step features of sequences: each step's inputs (the arguments with a
    time axis after the rows, ``(batch, num_steps, ...)``; the others are
    repeated at every step) through an MLP, then a bidirectional recurrent
    layer over the steps, so that a step's features summarize the sequence
    before and after it.

    :param num_steps: the length of the time axis.
    :param hidden_dims: the widths of the per-step MLP; the recurrent layer's
        hidden size is half the last in each direction (the features are as
        wide as it).
    :param cell: the recurrent layer, ``"lstm"`` (the default; on CPUs PyTorch
        runs it through oneDNN, a GRU step by step) or ``"gru"``.

    Usage::

        encoder = SequenceEncoder(50, hidden_dims=(64,))
        encoder(torch.randn(8, 50, 3), torch.ones(8, 50)).shape  # (8, 50, 64)

        # a plate's sequence encoder with other widths:
        AutoAmortizedGuide(model, encoder=SequenceEncoder(50, hidden_dims=(64,)))
    """

    def __init__(
        self, num_steps: int, hidden_dims: Sequence[int] = (128,), *, cell: str = "lstm"
    ) -> None:
        super().__init__()
        if not hidden_dims:
            raise ValueError("SequenceEncoder needs at least one hidden width.")
        if cell not in RECURRENT_CELLS:
            raise ValueError(
                f"SequenceEncoder's cell must be one of {sorted(RECURRENT_CELLS)}, got {cell!r}."
            )
        self.num_steps = num_steps
        self.step = MLPEncoder(tuple(hidden_dims))
        size = max(hidden_dims[-1] // 2, 1)
        layer = RECURRENT_CELLS[cell]
        self.rnn = layer(hidden_dims[-1], size, batch_first=True, bidirectional=True)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Maps inputs of shape ``(batch, ...)`` to ``(batch, num_steps, features)``
        (the guide reads them flattened, step after step)."""
        batch, steps = inputs[0].shape[0], self.num_steps
        pieces = [
            value.reshape(batch, steps, -1)
            if has_time_axis(value, steps)
            else value.reshape(batch, 1, -1).expand(batch, steps, -1)
            for value in inputs
        ]
        per_step = self.step(torch.cat(pieces, -1).reshape(batch * steps, -1))
        features, _ = self.rnn(per_step.reshape(batch, steps, -1))
        return features
