"""Switches: an attribute of several objects set for the duration of a block,
as :func:`~pyro_amortized.heads.widened` and
:class:`~pyro_amortized.PathDerivativeELBO` set their heads' and guides'."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any


@contextmanager
def switched(objects: Sequence[Any], name: str, value: Any) -> Iterator[None]:
    """Within the block, ``getattr(obj, name) == value`` for every object; each
    gets its own earlier value back after it (nested blocks unwind in order).

    Usage::

        with switched(heads, "widening", 2.0):
            ...
    """
    previous = [getattr(obj, name) for obj in objects]
    for obj in objects:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, earlier in zip(objects, previous, strict=True):
            setattr(obj, name, earlier)
