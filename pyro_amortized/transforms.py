"""Bijections from unconstrained real vectors to each latent site's support.

A variational family lives in unconstrained space; the guide maps a sample to the
site's support with :func:`bijection_to` and pays the log-det-Jacobian, so the
density of the constrained value is correct. ``torch.distributions.biject_to``
covers most supports; it has no bijection for (unit) lower-Cholesky factors and
positive-definite matrices, which are added here as true bijections from
``R^{D(D+1)/2}`` (``R^{D(D-1)/2}`` for unit diagonals), so no unused coordinate
is left in the unconstrained space.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import constraints
from torch.distributions import biject_to
from torch.distributions.transforms import (
    ComposeTransform,
    IndependentTransform,
    StickBreakingTransform,
    Transform,
)


def _tril_size(num_entries: int, diagonal: bool) -> int:
    """The D with ``num_entries`` lower-triangular entries (strict if not ``diagonal``)."""
    offset = 1 if diagonal else -1
    dim = int(round((math.sqrt(8 * num_entries + 1) - offset) / 2))
    if dim * (dim + offset) // 2 != num_entries:
        raise ValueError(f"{num_entries} is not the size of a triangular matrix")
    return dim


class VectorToLowerCholesky(Transform):
    """Fills the lower triangle of a ``D x D`` matrix from a vector of length
    ``D(D+1)/2`` and exponentiates the diagonal (``unit_diagonal=False``), or
    fills the strict lower triangle from ``D(D-1)/2`` entries under a unit
    diagonal (``unit_diagonal=True``).
    """

    domain = constraints.real_vector
    bijective = True

    def __init__(self, *, unit_diagonal: bool = False, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.unit_diagonal = unit_diagonal
        self.codomain = (
            constraints.unit_lower_cholesky if unit_diagonal else constraints.lower_cholesky
        )

    def with_cache(self, cache_size: int = 1) -> VectorToLowerCholesky:
        if self._cache_size == cache_size:
            return self
        return VectorToLowerCholesky(unit_diagonal=self.unit_diagonal, cache_size=cache_size)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, VectorToLowerCholesky) and other.unit_diagonal == self.unit_diagonal
        )

    def _offset(self) -> int:
        return -1 if self.unit_diagonal else 0

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        dim = _tril_size(x.shape[-1], diagonal=not self.unit_diagonal)
        rows, cols = torch.tril_indices(dim, dim, offset=self._offset(), device=x.device)
        out = x.new_zeros(x.shape[:-1] + (dim, dim))
        out[..., rows, cols] = x
        diag = torch.ones_like(out.diagonal(dim1=-2, dim2=-1))
        if not self.unit_diagonal:
            diag = out.diagonal(dim1=-2, dim2=-1).exp()
        return out.tril(-1) + torch.diag_embed(diag)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        dim = y.shape[-1]
        rows, cols = torch.tril_indices(dim, dim, offset=self._offset(), device=y.device)
        if self.unit_diagonal:
            return y[..., rows, cols]
        y = y.tril(-1) + torch.diag_embed(y.diagonal(dim1=-2, dim2=-1).log())
        return y[..., rows, cols]

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.unit_diagonal:
            return x.new_zeros(x.shape[:-1])
        return y.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        dim = _tril_size(shape[-1], diagonal=not self.unit_diagonal)
        return torch.Size(shape[:-1]) + (dim, dim)

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        dim = shape[-1]
        size = dim * (dim + 1) // 2 if not self.unit_diagonal else dim * (dim - 1) // 2
        return torch.Size(shape[:-2]) + (size,)


class CholeskyToPositiveDefinite(Transform):
    """``L -> L L^T`` from lower-Cholesky factors to positive-definite matrices.

    Restricted to the ``D(D+1)/2`` free entries of ``L`` its Jacobian determinant
    is ``2^D prod_i L_ii^(D - i)`` with ``i = 0, ..., D-1``.
    """

    domain = constraints.independent(constraints.real, 2)
    codomain = constraints.positive_definite
    bijective = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CholeskyToPositiveDefinite)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return x @ x.transpose(-1, -2)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.linalg.cholesky(y)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dim = x.shape[-1]
        powers = torch.arange(dim, 0, -1, dtype=x.dtype, device=x.device)
        log_diag = x.diagonal(dim1=-2, dim2=-1).log()
        return dim * math.log(2.0) + (powers * log_diag).sum(-1)


class NormalizedStickBreaking(StickBreakingTransform):
    """Stick-breaking onto the simplex, its values divided by their sum.

    In float32 the stick-breaking product of a long vector sums to 1 only
    within a few ``1e-7`` per hundred coordinates: over a thousand words the
    error passes the ``1e-6`` of Pyro's simplex support check, which then
    rejects the value. Dividing by the sum brings it back to rounding; the
    log-det-Jacobian is the stick-breaking one (the division changes the value
    by a relative ``1e-6`` at most).

    Usage::

        p = NormalizedStickBreaking()(torch.randn(1023))    # sums to 1 in float32
    """

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        value = super()._call(x)
        return value / value.sum(-1, keepdim=True)


def bijection_to(support: constraints.Constraint) -> Transform:
    """A bijection from unconstrained real tensors onto ``support``.

    Its ``inverse_shape(event_shape)`` is the unconstrained event shape, which
    may differ from the constrained one (a simplex loses a coordinate, a
    Cholesky factor is stored as its lower triangle). Values on the simplex
    are renormalized (:class:`NormalizedStickBreaking`).

    :param support: the support of a latent site's distribution.
    :raises NotImplementedError: if the support has no bijection (discrete
        supports, spheres, correlation matrices); the message names the fix.

    Usage::

        transform = bijection_to(constraints.lower_cholesky)
        L = transform(torch.randn(6))   # a 3 x 3 lower-Cholesky factor
    """
    if isinstance(support, constraints.independent):
        inner = bijection_to(support.base_constraint)
        return IndependentTransform(inner, support.reinterpreted_batch_ndims)
    if isinstance(support, type(constraints.unit_lower_cholesky)):
        return VectorToLowerCholesky(unit_diagonal=True)
    if isinstance(support, type(constraints.lower_cholesky)):
        return VectorToLowerCholesky()
    if isinstance(support, type(constraints.positive_definite)):
        return ComposeTransform([VectorToLowerCholesky(), CholeskyToPositiveDefinite()])
    if isinstance(support, type(constraints.simplex)):
        return NormalizedStickBreaking()
    return biject_to(support)


SATURATION_CANDIDATES = (80.0, 40.0, 20.0, 15.0, 10.0, 5.0)
"""Unconstrained magnitudes tried, largest first, by :func:`saturation_bound`."""


def saturation_bound(transform: Transform, shape: torch.Size, dtype: torch.dtype) -> float | None:
    """The largest unconstrained magnitude (of :data:`SATURATION_CANDIDATES`) at
    which ``transform`` of an unconstrained value of ``shape`` still changes
    with its input: beyond it, rounding or the transform's own clamps (a
    sigmoid's values are clipped short of 0 and 1) make the constrained value
    constant, or overflow makes it infinite, and gradients through it vanish.

    :return: the bound, or ``None`` when even the smallest candidate saturates.

    Usage::

        transform = bijection_to(constraints.unit_interval)
        saturation_bound(transform, torch.Size(), torch.float32)  # 15.0
    """
    with torch.no_grad():
        for bound in SATURATION_CANDIDATES:
            start = torch.full(shape, bound, dtype=dtype)
            if all(_responds(transform, sign * start) for sign in (1.0, -1.0)):
                return bound
    return None


def _responds(transform: Transform, start: torch.Tensor) -> bool:
    here, further = transform(start), transform(start * 1.05)
    finite = torch.isfinite(here).all() and torch.isfinite(further).all()
    return bool(finite and (here != further).any())


def guard_saturation(latent: torch.Tensor, bound: float) -> torch.Tensor:
    """``latent`` clamped to ``[-bound, bound]`` with the gradient of the identity
    (a straight-through clamp). A point estimate moved past the point where its
    bijection saturates keeps a gradient that leads it back, where with the plain
    value the gradient would be zero and the estimate would stay at the boundary
    of its support for good. Inside the bound the value is ``latent`` itself.
    """
    return latent + (latent.clamp(-bound, bound) - latent).detach()
