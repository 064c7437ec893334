"""pyro_amortized: amortized variational inference for Pyro models with local latents."""

from .encoders import MLPEncoder
from .family_guides import (
    AutoAmortizedDelta,
    AutoAmortizedLowRankMultivariateNormal,
    AutoAmortizedMultivariateNormal,
    AutoAmortizedNormalizingFlow,
)
from .guides import AutoAmortizedGuide, AutoAmortizedNormal
from .iwae import LocalIWAE
from .rws import LocalRWS
from .sequences import SequenceEncoder

__all__ = [
    "AutoAmortizedDelta",
    "AutoAmortizedGuide",
    "AutoAmortizedLowRankMultivariateNormal",
    "AutoAmortizedMultivariateNormal",
    "AutoAmortizedNormal",
    "AutoAmortizedNormalizingFlow",
    "LocalIWAE",
    "LocalRWS",
    "MLPEncoder",
    "SequenceEncoder",
]
__version__ = "0.1.0"
