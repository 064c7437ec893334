"""Semi-amortized inference at test time: per-data-point parameters refined
from the encoder's output (:func:`refine`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn

from .guides import AutoAmortizedGuide
from .heads import DeltaHead
from .iwae import max_plate_nesting
from .rows import check_every_row
from .structure import DataPlate


class RefinedGuide(nn.Module):
    """An amortized guide whose local sites use per-data-point parameters for a
    fixed data set: the encoder's features of each data point (the inputs of
    its local heads), refined by :func:`refine`. Global sites are the amortized
    guide's, unchanged. Called with the model's arguments for that data set,
    every row is sampled (the data plate is not subsampled, and the model
    replays that), so it works in ``SVI``, ``Predictive`` and ``poutine.trace``.

    Usage::

        refined = refine(model, guide, x_test, num_steps=100)
        q = refined.encode(x_test)          # {"z": distribution per row}

    :param guide: the amortized guide, already called once.
    :param features: per data plate, the features of every row.
    """

    def __init__(self, guide: AutoAmortizedGuide, features: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.guide = guide
        self.features = nn.ParameterDict(
            {name: nn.Parameter(value.detach().clone()) for name, value in features.items()}
        )

    def _features_of(
        self, plate: DataPlate, args: tuple, kwargs: dict, indices: Any, size: Any
    ) -> torch.Tensor:
        features = self.features[plate.name]
        rows = self.guide._require_built().calls.input_values(plate, args, kwargs)[0].shape[0]
        if rows != features.shape[0]:
            raise ValueError(
                f"This guide was refined for {features.shape[0]} rows of plate '{plate.name}', "
                f"but got {rows}. Refine again for new data."
            )
        return features if indices is None else features.index_select(0, indices)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Samples every latent site, given the model's arguments."""
        return self.guide._run(args, kwargs, self._features_of, every_row=True)

    def encode(self, *args: Any, **kwargs: Any) -> dict[str, pyro.distributions.Distribution]:
        """The refined local posterior of every row, as the guide's ``encode``."""
        return self.guide._encode(args, kwargs, self._features_of)


def refine(
    model: Callable,
    guide: AutoAmortizedGuide,
    *args: Any,
    num_steps: int = 100,
    lr: float = 0.01,
    num_particles: int = 8,
    **kwargs: Any,
) -> RefinedGuide:
    """Semi-amortized inference: starting from the encoder's output for the
    data in ``args``, optimizes per-data-point local parameters (the inputs of
    the local heads) for ``num_steps`` Adam steps of the ELBO, with the global
    sites and every network weight frozen. The learning rate decays
    geometrically to a tenth of ``lr`` over the steps, so the result settles
    rather than jitters with the ELBO's Monte Carlo noise.

    Refinement runs at test time; it is not used inside training.

    Usage::

        refined = refine(model, guide, x_test, num_steps=100, lr=0.01)

    :param model: the model.
    :param guide: a trained amortized guide.
    :param num_steps: optimization steps.
    :param lr: Adam's learning rate.
    :param num_particles: ELBO particles per step (vectorized).
    :returns: a :class:`RefinedGuide` for this data.
    """
    check_positive(num_steps=num_steps, num_particles=num_particles)
    if not lr > 0:
        raise ValueError(f"lr must be positive, but got {lr!r}.")
    structure = guide._require_built().structure
    check_density_on_every_row(model, guide, args, kwargs)
    with torch.no_grad():
        features = {
            name: guide._encoded_features(plate, args, kwargs, None, None)
            for name, plate in structure.data_plates.items()
        }
    refined = RefinedGuide(guide, features)
    optimizer = torch.optim.Adam(refined.features.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.1 ** (1 / num_steps))
    elbo = Trace_ELBO(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=max_plate_nesting(model, refined, args, kwargs),
    )
    parameters = list(refined.features.parameters())
    for _ in range(num_steps):
        with poutine.block():
            loss = elbo.differentiable_loss(model, refined, *args, **kwargs)
        gradients = torch.autograd.grad(loss, parameters)
        for parameter, gradient in zip(parameters, gradients, strict=True):
            parameter.grad = gradient
        optimizer.step()
        decay.step()
    return refined


def check_density_on_every_row(
    model: Callable, guide: AutoAmortizedGuide, args: tuple, kwargs: dict
) -> None:
    """The diagnostics score every row of the data at once, with densities."""
    points = [name for name, head in guide.network.heads.items() if isinstance(head, DeltaHead)]
    if points:
        raise ValueError(
            f"The local sites {points} have point estimates (Delta), which have no density "
            "to refine or to importance-sample. Use a family with a density."
        )
    check_every_row(model, guide, args, kwargs, reader="the diagnostics score")


def check_positive(**options: int) -> None:
    for name, value in options.items():
        if not (isinstance(value, int) and value > 0):
            raise ValueError(f"{name} must be a positive integer, but got {value!r}.")
