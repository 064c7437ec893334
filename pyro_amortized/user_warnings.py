"""Warnings that point at the user's line.

The guide runs deep inside Pyro's handlers and torch's module calls, so a fixed
``stacklevel`` lands in library code. :func:`warn` walks up to the first frame
outside this package, Pyro and torch: the user's ``svi.step(...)``,
``guide(...)`` or ``Predictive(...)`` call.
"""

from __future__ import annotations

import os
import sys
import warnings

import pyro
import torch

_LIBRARIES = tuple(
    os.path.dirname(module.__file__) + os.sep for module in (sys.modules[__package__], pyro, torch)
)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """Issues a warning attributed to the first frame of the user's code."""
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_LIBRARIES):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
