"""Equivariance testing helpers: :func:`assert_equivariant`, :func:`equivariance_error`."""

from geo3d.testing._equivariance import (
    EquivarianceError,
    EquivarianceReport,
    assert_equivariant,
    elements_to_test,
    equivariance_error,
)

__all__ = [
    "EquivarianceError",
    "EquivarianceReport",
    "assert_equivariant",
    "equivariance_error",
    "elements_to_test",
]
