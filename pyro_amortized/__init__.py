"""pyro_amortized: amortized variational inference for Pyro models with local latents."""

from .encoders import MLPEncoder
from .guides import (
    AutoAmortizedDelta,
    AutoAmortizedGuide,
    AutoAmortizedLowRankMultivariateNormal,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormal,
    AutoAmortizedNormalizingFlow,
)

__all__ = [
    "AutoAmortizedDelta",
    "AutoAmortizedGuide",
    "AutoAmortizedLowRankMultivariateNormal",
    "AutoAmortizedMultivariateNormal",
    "AutoAmortizedNormal",
    "AutoAmortizedNormalizingFlow",
    "MLPEncoder",
]
__version__ = "0.1.0"
