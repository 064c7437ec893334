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
from .path_derivative import PathDerivativeELBO
from .posterior_estimation import LocalNPE
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
    "LocalNPE",
    "LocalRWS",
    "MLPEncoder",
    "PathDerivativeELBO",
    "SequenceEncoder",
]
__version__ = "0.1.0"
