"""pyro_amortized: amortized variational inference for Pyro models with local latents."""

from .encoders import MLPEncoder
from .guides import AutoAmortizedDelta, AutoAmortizedGuide, AutoAmortizedNormal

__all__ = [
    "AutoAmortizedDelta",
    "AutoAmortizedGuide",
    "AutoAmortizedNormal",
    "MLPEncoder",
]
__version__ = "0.1.0"
