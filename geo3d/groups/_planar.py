"""Planar groups: SO(2), O(2), cyclic C_n, dihedral D_n and the octic group D_4."""

from __future__ import annotations

import math

import torch

from geo3d.groups._base import (
    FiniteGroup,
    Group,
    _check_n,
    _det,
    _fresh,
    _orthogonality_error,
    _rand,
    _resolve,
)

__all__ = ["O2", "SO2", "CyclicGroup", "DihedralGroup", "OcticGroup", "rotation_2d"]

#: reflection across the x axis, (x, y) -> (x, -y)
_FLIP = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)


def rotation_2d(angle: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise rotation matrices ``exp(θ J)``, ``J = [[0, -1], [1, 0]]``.

    The derivative at ``θ = 0`` is the generator ``J``.

    Args:
        angle: radians, shape :math:`(*)`.

    Returns:
        shape :math:`(*, 2, 2)`.

    Example:
        >>> import math, torch
        >>> rotation_2d(torch.tensor(math.pi / 2)).round()
        tensor([[0., -1.],
                [1., 0.]])
    """
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _snap(m: torch.Tensor) -> torch.Tensor:
    """Round entries within 1e-12 of an integer (exact 90° rotations)."""
    r = m.round()
    return torch.where((m - r).abs() < 1e-12, r, m)


class SO2(Group):
    """Rotations of the plane, elements ``(2, 2)``."""

    element_shape = (2, 2)
    dim = 2
    name = "SO2"

    def sample(self, n, generator=None, dtype=None, device=None):
        """``n`` Haar-random rotations, shape ``(n, 2, 2)``."""
        _check_n(n)
        dtype, device = _resolve(generator, dtype, device)
        return rotation_2d(2 * math.pi * _rand(n, generator, dtype, device))

    def inverse(self, a):
        """The transpose (a new tensor); raises ValueError naming ``a`` for a non-element."""
        self.validate(a, "a")
        return _fresh(a.transpose(-1, -2))

    def element_error(self, g):
        """``max(|gᵀg − I|, |det g − 1|)``, shape ``batch_shape(g)``."""
        self.check_element(g)
        return torch.maximum(_orthogonality_error(g), (_det(g) - 1).abs())

    def special_elements(self, generator=None, dtype=None, device=None):
        ang = torch.tensor([0.0, math.pi / 2, math.pi], dtype=torch.float64)
        dtype, device = _resolve(generator, dtype, device)
        els = _snap(rotation_2d(ang)).to(dtype=dtype, device=device)
        return els, ["identity", "rotation by π/2", "rotation by π"]


class O2(SO2):
    """Rotations and reflections of the plane, elements ``(2, 2)``."""

    name = "O2"

    def sample(self, n, generator=None, dtype=None, device=None):
        """``n`` Haar-random elements (half of them reflections), shape ``(n, 2, 2)``."""
        _check_n(n)
        dtype, device = _resolve(generator, dtype, device)
        r = rotation_2d(2 * math.pi * _rand(n, generator, dtype, device))
        flip = _rand(n, generator, dtype, device) < 0.5
        f = _FLIP.to(dtype=dtype, device=device)
        return torch.where(flip[:, None, None], r @ f, r)

    def element_error(self, g):
        """``max(|gᵀg − I|, ||det g| − 1|)``, shape ``batch_shape(g)``."""
        self.check_element(g)
        return torch.maximum(_orthogonality_error(g), (_det(g).abs() - 1).abs())

    def special_elements(self, generator=None, dtype=None, device=None):
        els, labels = super().special_elements(generator, dtype, device)
        f = _FLIP.to(dtype=els.dtype, device=els.device)
        return torch.cat([els, f[None], els[1:2] @ f]), labels + [
            "reflection (x, y) -> (x, -y)",
            "reflection across the diagonal",
        ]


class CyclicGroup(FiniteGroup):
    """The cyclic group C_n: rotations by ``2πk/n``, elements ``(2, 2)``.

    Element ``k`` is the rotation by ``2πk/n``.
    """

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive int, got {n!r}")
        self.n = n
        self.name = "CyclicGroup"
        self._cache: torch.Tensor | None = None

    def _elements64(self) -> torch.Tensor:
        if self._cache is None:
            k = torch.arange(self.n, dtype=torch.float64)
            self._cache = _snap(rotation_2d(2 * math.pi * k / self.n))
        return self._cache

    def __repr__(self) -> str:
        return f"CyclicGroup({self.n})"

    def _key(self) -> tuple:
        return ("CyclicGroup", self.n)


class DihedralGroup(FiniteGroup):
    """The dihedral group D_n (order ``2n``): rotations by ``2πk/n`` and reflections.

    Elements ``0..n-1`` are the rotations ``r_k``; elements ``n..2n-1`` are ``r_k @ F``
    with ``F = diag(1, -1)`` the reflection ``(x, y) -> (x, -y)``.
    """

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: expected a positive int, got {n!r}")
        self.n = n
        self.name = "DihedralGroup"
        self._cache: torch.Tensor | None = None

    def _elements64(self) -> torch.Tensor:
        if self._cache is None:
            k = torch.arange(self.n, dtype=torch.float64)
            r = _snap(rotation_2d(2 * math.pi * k / self.n))
            self._cache = torch.cat([r, r @ _FLIP])
        return self._cache

    def __repr__(self) -> str:
        return f"DihedralGroup({self.n})"

    def _key(self) -> tuple:
        return ("DihedralGroup", self.n)


class OcticGroup(DihedralGroup):
    """The octic group D_4: 90° rotations and flips of the square image grid (order 8).

    Same elements and order as ``DihedralGroup(4)``; acts on images through
    :class:`geo3d.reps.Image` with ``torch.rot90`` / ``torch.flip``.
    """

    def __init__(self) -> None:
        super().__init__(4)
        self.name = "OcticGroup"

    def __repr__(self) -> str:
        return "OcticGroup()"
