"""What the ports share: the guide kinds, minibatches, a timed training loop and
the result of a run."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch

GUIDE_KINDS = ("hand", "amortized")
"""``"hand"``: the program's own guide; ``"amortized"``: ``AutoAmortizedGuide(model)``."""


def check_guide_kind(guide_kind: str) -> None:
    """:raises ValueError: unless ``guide_kind`` is one of :data:`GUIDE_KINDS`."""
    if guide_kind not in GUIDE_KINDS:
        raise ValueError(f"guide_kind must be one of {GUIDE_KINDS}, but got {guide_kind!r}.")


def check_objective(guide_kind: str, objective: str, objectives: tuple[str, ...]) -> None:
    """:raises ValueError: unless ``objective`` is one of ``objectives``, or
    where ``"rws"`` (:class:`pyro_amortized.LocalRWS`) is asked of the
    hand-written guide, which is not an amortized guide."""
    if objective not in objectives:
        raise ValueError(f"objective must be one of {objectives}, but got {objective!r}.")
    if objective == "rws" and guide_kind == "hand":
        raise ValueError(
            "LocalRWS trains amortized guides of pyro_amortized: use guide_kind='amortized'."
        )


def load_reuters_counts() -> np.ndarray:
    """The ``lda`` package's Reuters word counts, ``(395, 4258)`` documents by words."""
    import lda.datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the package leaves its file open
        return lda.datasets.load_reuters()


def minibatch_indices(
    num_rows: int, batch_size: int, seed: int, *, shuffle: bool = True
) -> Iterator[torch.Tensor]:
    """Row indices of consecutive minibatches, epoch after epoch, without end.

    Like a ``DataLoader`` over the rows: each epoch is a (seeded) permutation cut
    into batches of ``batch_size``, the last one possibly shorter.

    :param num_rows: rows of the data.
    :param batch_size: rows per minibatch.
    :param seed: seed of the permutations (the global RNG is left untouched).
    :param shuffle: ``False`` takes the rows in order, as a loop over slices does.
    """
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(num_rows, generator=generator) if shuffle else torch.arange(num_rows)
        yield from order.split(batch_size)


def timed_steps(step: Callable[[int], float], steps: int) -> tuple[list[float], float]:
    """Calls ``step(i)`` for ``i`` in ``range(steps)``.

    :returns: the losses ``step`` returned and the mean seconds per step after
        the first (which builds parameters and warms caches up), in CPU time of
        this process (which other programs on the machine disturb much less
        than wall-clock time); with one step, that step's time.
    """
    losses = []
    start = time.process_time()
    for index in range(steps):
        losses.append(float(step(index)))
        if index == 0 and steps > 1:
            start = time.process_time()
    return losses, (time.process_time() - start) / max(steps - 1, 1)


def result(
    metric_name: str,
    metric: float,
    losses: list[float],
    step_seconds: float,
    step: Callable[[int], float],
) -> dict:
    """The dict every ``run`` returns.

    :param metric_name: what ``metric`` measures, for tables.
    :param metric: the program's metric at the end of training.
    :param losses: the training losses, one per step.
    :param step_seconds: mean seconds per training step.
    :param step: the training step, ``step(i)``: more steps continue the
        training (benchmarks time them).
    """
    return {
        "metric_name": metric_name,
        "metric": float(metric),
        "final_loss": losses[-1] if losses else float("nan"),
        "step_seconds": step_seconds,
        "steps": len(losses),
        "step": step,
    }
