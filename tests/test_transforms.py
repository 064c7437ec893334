"""Bijections to constrained supports: round trips and exact log-det-Jacobians."""

import pytest
import torch
from pyro.distributions import constraints
from torch.autograd.functional import jacobian

from pyro_amortized.transforms import bijection_to


def _free_coordinates(value, support):
    """The coordinates that determine a constrained value (the rest are implied)."""
    if support is constraints.simplex:
        return value[:-1]
    if support is constraints.corr_cholesky:
        rows, cols = torch.tril_indices(value.shape[-1], value.shape[-1], offset=-1)
        return value[rows, cols]
    if support in (constraints.lower_cholesky, constraints.positive_definite):
        rows, cols = torch.tril_indices(value.shape[-1], value.shape[-1])
        return value[rows, cols]
    if support is constraints.unit_lower_cholesky:
        rows, cols = torch.tril_indices(value.shape[-1], value.shape[-1], offset=-1)
        return value[rows, cols]
    return value.reshape(-1)


SUPPORTS = {
    "real": (constraints.real, ()),
    "positive": (constraints.positive, ()),
    "unit_interval": (constraints.unit_interval, ()),
    "interval": (constraints.interval(-1.0, 3.0), ()),
    "simplex": (constraints.simplex, (4,)),
    "lower_cholesky": (constraints.lower_cholesky, (3, 3)),
    "unit_lower_cholesky": (constraints.unit_lower_cholesky, (3, 3)),
    "positive_definite": (constraints.positive_definite, (3, 3)),
    "corr_cholesky": (constraints.corr_cholesky, (3, 3)),
    "ordered_vector": (constraints.ordered_vector, (3,)),
}


@pytest.mark.parametrize("name", SUPPORTS)
def test_round_trip_and_support(name):
    support, event_shape = SUPPORTS[name]
    transform = bijection_to(support)
    shape = transform.inverse_shape(torch.Size((5,) + event_shape))
    x = torch.randn(shape, dtype=torch.float64)
    y = transform(x)
    assert y.shape == (5,) + event_shape
    assert support.check(y).all()
    assert torch.allclose(transform.inv(y), x, atol=1e-8)


@pytest.mark.parametrize("name", SUPPORTS)
def test_log_det_jacobian_is_exact(name):
    support, event_shape = SUPPORTS[name]
    transform = bijection_to(support)
    x = torch.randn(transform.inverse_shape(torch.Size(event_shape)), dtype=torch.float64)
    matrix = jacobian(lambda u: _free_coordinates(transform(u), support), x)
    matrix = matrix.reshape(matrix.shape[0], -1)
    expected = torch.linalg.slogdet(matrix).logabsdet
    log_det = transform.log_abs_det_jacobian(x, transform(x)).sum()
    assert torch.allclose(log_det, expected, atol=1e-8)


def test_batched_independent_supports():
    transform = bijection_to(constraints.independent(constraints.lower_cholesky, 1))
    x = torch.randn(2, 4, 6)
    y = transform(x)
    assert y.shape == (2, 4, 3, 3)
    assert transform.log_abs_det_jacobian(x, y).shape == (2,)


def test_dimension_changing_shapes():
    assert bijection_to(constraints.lower_cholesky).inverse_shape((4, 4)) == (10,)
    assert bijection_to(constraints.positive_definite).inverse_shape((4, 4)) == (10,)
    assert bijection_to(constraints.unit_lower_cholesky).inverse_shape((4, 4)) == (6,)
    assert bijection_to(constraints.simplex).inverse_shape((4,)) == (3,)


def test_unsupported_support():
    with pytest.raises(NotImplementedError):
        bijection_to(constraints.sphere)


def test_long_simplex_passes_pyros_support_check_in_float32():
    """Stick-breaking alone sums 1,024 words to 1 only within about 1e-6."""
    generator = torch.Generator().manual_seed(0)
    for spread in (0.1, 1.0, 10.0):
        x = spread * torch.randn(1000, 1023, generator=generator)
        plain = torch.distributions.transforms.StickBreakingTransform()(x)
        value = bijection_to(constraints.simplex)(x)
        assert constraints.simplex.check(value).all()
        error, plain_error = ((v.sum(-1) - 1).abs().max() for v in (value, plain))
        print(f"spread {spread}: sum error {error:.2e}, stick-breaking alone {plain_error:.2e}")
        assert error < 5e-7 and torch.allclose(value, plain, rtol=1e-5)
