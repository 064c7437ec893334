"""Diagnostics of amortized inference: refinement, the amortization gap and
simulation-based calibration of the local sites, in one namespace.

An amortized guide can fall short of the exact posterior twice: its family
cannot match the posterior (the *approximation gap*), and its encoder does not
reach the best member of the family for each data point (the *amortization
gap*). :func:`refine` optimizes per-data-point parameters from the encoder's
output, :func:`amortization_gap` measures both gaps per data point, and
:func:`sbc` checks that the local posteriors are calibrated. Refinement lives in
:mod:`pyro_amortized.refinement` and the evidence in :mod:`pyro_amortized.evidence`;
this module gives all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pyro import poutine

from .arguments import locate_argument
from .evidence import (
    PARETO_K_THRESHOLD,
    PROPOSAL_WIDENING,
    AmortizationGapReport,
    EvidenceEstimate,
    amortization_gap,
    log_evidence,
)
from .guides import AutoAmortizedGuide
from .iwae import single_data_plate
from .refinement import RefinedGuide, check_positive, refine

__all__ = [
    "PARETO_K_THRESHOLD",
    "PROPOSAL_WIDENING",
    "AmortizationGapReport",
    "EvidenceEstimate",
    "RefinedGuide",
    "SBCReport",
    "amortization_gap",
    "log_evidence",
    "refine",
    "sbc",
]

# --------------------------------------------------------------- calibration


@dataclass
class SBCReport:
    """Simulation-based calibration of the local sites.

    :param ranks: per local site, the rank of the simulated value among the
        guide's samples, per simulation and data point and coordinate, as a
        tensor ``(num_simulations * rows, *site shape)``.
    :param num_samples: guide samples per rank (ranks lie in ``0..num_samples``).
    :param p_values: per local site, the p-value of a chi-square test that
        its ranks (all coordinates pooled) are uniform.
    """

    ranks: dict[str, torch.Tensor]
    num_samples: int
    p_values: dict[str, float]

    def calibrated(self, level: float = 0.01) -> dict[str, bool]:
        """Per site, whether the uniformity test passes at ``level``."""
        return {name: p >= level for name, p in self.p_values.items()}

    def __str__(self) -> str:
        lines = [f"{'site':<20}{'ranks':>10}{'p-value':>12}"]
        for name, p_value in self.p_values.items():
            lines.append(f"{name:<20}{self.ranks[name].numel():>10}{p_value:>12.4f}")
        return "\n".join(lines)

    def plot(self, site: str, ax: Any = None, bins: int = 20) -> Any:
        """The rank histogram of one site, with the uniform expectation."""
        import matplotlib.pyplot as plt

        if ax is None:
            ax = plt.subplots(figsize=(5, 3))[1]
        ranks = self.ranks[site].flatten()
        ax.hist(ranks.numpy(), bins=bins, range=(0, self.num_samples + 1))
        ax.axhline(len(ranks) / bins, color="black", linestyle="--", label="uniform")
        ax.set_xlabel(f"rank of the simulated '{site}' among {self.num_samples} samples")
        ax.legend()
        return ax


def sbc(
    model: Callable,
    guide: AutoAmortizedGuide,
    *args: Any,
    num_simulations: int,
    observed: str,
    num_samples: int = 99,
    fix_globals: bool = True,
    bins: int = 20,
    **kwargs: Any,
) -> SBCReport:
    """Simulation-based calibration of the local sites: simulates data from the
    model (the globals held at the guide's medians, or drawn from their prior
    with ``fix_globals=False``), encodes it, and ranks each simulated local value
    among ``num_samples`` samples of the guide, per coordinate. Calibrated
    local posteriors give uniform ranks; a chi-square test gives a p-value per
    site.

    ``args`` are the model's arguments, used as a template: the simulated values
    of the observed site ``observed`` replace the model argument that holds it
    (the first of its data plate's inputs).

    Usage::

        report = sbc(model, guide, x, num_simulations=20, observed="x")
        print(report)                    # p-value per local site
        report.plot("z")

    :param observed: the name of the observed site whose data the encoder reads.
    :param num_simulations: data sets simulated.
    :param num_samples: guide samples per rank.
    :param fix_globals: hold the globals at the guide's medians.
    :param bins: histogram bins of the chi-square test.
    """
    check_positive(num_simulations=num_simulations, num_samples=num_samples, bins=bins)
    plate_name = single_data_plate(guide, "The diagnostics take")
    plate = guide._require_built().structure.data_plates[plate_name]
    location = locate_argument(guide.model, plate.inputs[0])
    condition = (
        {name: guide.median(*args, **kwargs)[name] for name in guide.global_sites}
        if fix_globals
        else {}
    )
    ranks: dict[str, list[torch.Tensor]] = {name: [] for name in plate.sites}
    with torch.no_grad():
        for _ in range(num_simulations):
            simulator = poutine.uncondition(poutine.condition(model, data=condition))
            trace = poutine.trace(simulator).get_trace(*args, **kwargs)
            if observed not in trace.nodes:
                raise ValueError(f"The model has no site named '{observed}'.")
            data = trace.nodes[observed]["value"]
            new_args, new_kwargs = location.replace(args, kwargs, data)
            encoded = guide.encode(*new_args, **new_kwargs)
            for name in plate.sites:
                samples = encoded[name].sample((num_samples,))
                truth = trace.nodes[name]["value"]
                ranks[name].append((samples < truth).sum(0))
    stacked = {name: torch.cat(values) for name, values in ranks.items()}
    p_values = {name: _uniformity_p_value(r, num_samples, bins) for name, r in stacked.items()}
    return SBCReport(ranks=stacked, num_samples=num_samples, p_values=p_values)


def _uniformity_p_value(ranks: torch.Tensor, num_samples: int, bins: int) -> float:
    """Chi-square test that ranks in ``0..num_samples`` are uniform."""
    counts = torch.histc(ranks.double().flatten(), bins=bins, min=0, max=num_samples + 1)
    expected = ranks.numel() / bins
    statistic = ((counts - expected) ** 2 / expected).sum()
    degrees = torch.tensor((bins - 1) / 2, dtype=torch.double)
    return torch.special.gammaincc(degrees, statistic / 2).item()
