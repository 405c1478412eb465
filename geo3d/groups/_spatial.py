"""Spatial groups: SO(3), O(3), SE(3) and the icosahedral rotation group."""

from __future__ import annotations

import math

import torch

from geo3d.groups._base import (
    FiniteGroup,
    Group,
    _broadcast,
    _check_like,
    _check_n,
    _check_vec,
    _det,
    _fresh,
    _orthogonality_error,
    _rand,
    _resolve,
)

__all__ = ["O3", "SE3", "SO3", "IcosahedralGroup"]


def _random_axes(k: int, generator, dtype, device) -> torch.Tensor:
    v = torch.randn(k, 3, generator=generator, dtype=dtype, device=device)
    return v / v.norm(dim=-1, keepdim=True)


def _pi_rotations(axes: torch.Tensor) -> torch.Tensor:
    """Rotations by π about unit ``axes (k, 3)`` -> ``(k, 3, 3)``."""
    from geo3d.rotations import quat_to_matrix

    return quat_to_matrix(torch.cat([torch.zeros_like(axes[:, :1]), axes], -1))


class SO3(Group):
    """Rotations of 3D space, elements ``(3, 3)`` with ``det = +1``."""

    element_shape = (3, 3)
    dim = 3
    name = "SO3"

    def sample(self, n, generator=None, dtype=None, device=None):
        """``n`` Haar-random rotations, shape ``(n, 3, 3)``."""
        from geo3d.rotations import random_rotation_matrix

        _check_n(n)
        dtype, device = _resolve(generator, dtype, device)
        return random_rotation_matrix(n, generator=generator, dtype=dtype, device=device)

    def inverse(self, a):
        """The transpose (a new tensor); raises ValueError naming ``a`` for a non-element."""
        self.validate(a, "a")
        return _fresh(a.transpose(-1, -2))

    def element_error(self, g):
        """``max(|gᵀg − I|, |det g − 1|)``, shape ``batch_shape(g)``."""
        self.check_element(g)
        return torch.maximum(_orthogonality_error(g), (_det(g) - 1).abs())

    def special_elements(self, generator=None, dtype=None, device=None):
        """Identity, rotations by π about z and about two random axes, by π/2 about x."""
        dtype, device = _resolve(generator, dtype, device)
        axes = torch.cat(
            [
                torch.tensor([[0.0, 0.0, 1.0]], dtype=dtype, device=device),
                _random_axes(2, generator, dtype, device),
            ]
        )
        from geo3d.rotations import quat_to_matrix

        h = math.sqrt(0.5)
        quarter = quat_to_matrix(torch.tensor([[h, h, 0.0, 0.0]], dtype=dtype, device=device))
        els = torch.cat([self.identity(dtype, device)[None], _pi_rotations(axes), quarter])
        labels = [
            "identity",
            "rotation by π about z",
            "rotation by π about a random axis",
            "rotation by π about a random axis",
            "rotation by π/2 about x",
        ]
        return els, labels


class O3(SO3):
    """Rotations and reflections of 3D space, elements ``(3, 3)`` with ``det = ±1``."""

    name = "O3"

    def sample(self, n, generator=None, dtype=None, device=None):
        """``n`` Haar-random elements (half of them with ``det = -1``), shape ``(n, 3, 3)``."""
        r = super().sample(n, generator=generator, dtype=dtype, device=device)
        flip = _rand(n, generator, r.dtype, r.device) < 0.5
        return torch.where(flip[:, None, None], -r, r)

    def element_error(self, g):
        """``max(|gᵀg − I|, ||det g| − 1|)``, shape ``batch_shape(g)``."""
        self.check_element(g)
        return torch.maximum(_orthogonality_error(g), (_det(g).abs() - 1).abs())

    def special_elements(self, generator=None, dtype=None, device=None):
        """SO(3)'s special elements plus the inversion ``-I`` and mirror reflections."""
        els, labels = super().special_elements(generator, dtype, device)
        dtype, device = els.dtype, els.device
        n = torch.cat(
            [
                torch.tensor([[0.0, 0.0, 1.0]], dtype=dtype, device=device),
                _random_axes(1, generator, dtype, device),
            ]
        )
        eye = torch.eye(3, dtype=dtype, device=device)
        mirrors = eye - 2 * n[:, :, None] * n[:, None, :]
        els = torch.cat([els, -eye[None], mirrors, -els[2:3]])
        labels = labels + [
            "inversion -I",
            "mirror z -> -z",
            "mirror across a random plane",
            "rotoreflection (-rotation by π)",
        ]
        return els, labels


class SE3(Group):
    """Rigid motions ``x -> R x + t`` as ``(4, 4)`` homogeneous matrices.

    Args:
        translation_scale: standard deviation of the Gaussian translations drawn by
            :meth:`sample`.
    """

    element_shape = (4, 4)
    dim = 3
    name = "SE3"

    def __init__(self, translation_scale: float = 1.0) -> None:
        if not (translation_scale >= 0 and math.isfinite(translation_scale)):
            raise ValueError(
                f"translation_scale: expected a finite value >= 0, got {translation_scale!r}"
            )
        self.translation_scale = float(translation_scale)

    def __repr__(self) -> str:
        return "SE3()" if self.translation_scale == 1.0 else f"SE3({self.translation_scale})"

    @staticmethod
    def from_rt(rot: torch.Tensor, trans: torch.Tensor) -> torch.Tensor:
        """Homogeneous matrices from ``rot (*, 3, 3)`` and ``trans (*, 3)`` -> ``(*, 4, 4)``.

        A new tensor (no view of ``rot``/``trans``); batch dims broadcast. ``rot`` is not
        checked for being a rotation (the group operations check their arguments).

        Raises:
            ValueError: naming ``rot``/``trans`` for wrong shapes or batch dims that do not
                broadcast.

        Example:
            >>> import torch
            >>> SE3.from_rt(torch.eye(3), torch.tensor([1.0, 2.0, 3.0]))[:3, 3]
            tensor([1., 2., 3.])
        """
        if not isinstance(rot, torch.Tensor) or rot.dim() < 2 or rot.shape[-2:] != (3, 3):
            shape = tuple(rot.shape) if isinstance(rot, torch.Tensor) else type(rot).__name__
            raise ValueError(f"rot: expected shape (..., 3, 3), got {shape}")
        _check_vec(trans, 3, "trans")
        batch = _broadcast("rot", rot.shape[:-2], "trans", trans.shape[:-1])
        top = torch.cat([rot.expand(*batch, 3, 3), trans.expand(*batch, 3)[..., None]], -1)
        bottom = torch.zeros(*batch, 1, 4, dtype=rot.dtype, device=rot.device)
        bottom[..., 0, 3] = 1
        return torch.cat([top, bottom], -2)

    def sample(self, n, generator=None, dtype=None, device=None):
        """``n`` random motions (Haar rotation, Gaussian translation), ``(n, 4, 4)``."""
        from geo3d.rotations import random_rotation_matrix

        _check_n(n)
        dtype, device = _resolve(generator, dtype, device)
        r = random_rotation_matrix(n, generator=generator, dtype=dtype, device=device)
        t = self.translation_scale * torch.randn(
            n, 3, generator=generator, dtype=dtype, device=device
        )
        return self.from_rt(r, t)

    def inverse(self, a):
        """``(Rᵀ, −Rᵀt)``, a new tensor; raises ValueError naming ``a`` for a non-element."""
        self.validate(a, "a")
        rt = a[..., :3, :3].transpose(-1, -2)
        return self.from_rt(rt, -(rt @ a[..., :3, 3:]).squeeze(-1))

    def act(self, g, x):
        """``R x + t`` on points ``x (*, 3)``; ``g (*, 4, 4)`` broadcasts against ``x``.

        Raises:
            ValueError: naming ``g`` (wrong shape, non-element) or ``x`` (wrong shape,
                batch dims that do not broadcast).
        """
        self.validate(g)
        _check_vec(x, 3)
        _check_like("g", g, "x", x)
        _broadcast("g", self.batch_shape(g), "x", x.shape[:-1])
        return self._act(g, x)

    def _act(self, g, x):
        return (g[..., :3, :3] @ x.unsqueeze(-1)).squeeze(-1) + g[..., :3, 3]

    def element_error(self, g):
        """Rotation-block error ``max(|RᵀR − I|, |det R − 1|)`` and bottom-row error."""
        self.check_element(g)
        r = g[..., :3, :3]
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=g.dtype, device=g.device)
        err = torch.maximum(_orthogonality_error(r), (_det(r) - 1).abs())
        return torch.maximum(err, (g[..., 3, :] - bottom).abs().amax(-1))

    def special_elements(self, generator=None, dtype=None, device=None):
        """Identity, a pure translation, rotations by π (about z, random axis) with translation."""
        dtype, device = _resolve(generator, dtype, device)
        rots, labels = SO3().special_elements(generator, dtype, device)
        t = self.translation_scale * torch.randn(
            rots.shape[0], 3, generator=generator, dtype=dtype, device=device
        )
        t[0] = 0
        eye = torch.eye(3, dtype=dtype, device=device)
        els = torch.cat([self.from_rt(rots, t), self.from_rt(eye, t[1])[None]])
        labels = ["identity"] + [s + " + translation" for s in labels[1:]] + ["pure translation"]
        return els, labels


def _icosahedron_vertices() -> torch.Tensor:
    """The 12 unit vertices ``(0, ±1, ±φ)`` and cyclic shifts, normalised, float64 ``(12, 3)``.

    Vertex 0 is ``(0, 1, φ) / |.|``; the order is fixed (sign patterns, then the shifts).
    """
    phi = (1.0 + math.sqrt(5.0)) / 2.0
    base = []
    for s1 in (1.0, -1.0):
        for s2 in (1.0, -1.0):
            base.append((0.0, s1, s2 * phi))
    v = []
    for shift in range(3):  # (0, a, b) -> (a, b, 0) -> (b, 0, a)
        for p in base:
            v.append(p[-shift:] + p[:-shift] if shift else p)
    t = torch.tensor(v, dtype=torch.float64)
    return t / t.norm(dim=-1, keepdim=True)


def _frame(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Right-handed orthonormal frame (columns) from ``p`` and the part of ``q`` normal to it."""
    u = q - (q @ p) * p
    u = u / u.norm()
    return torch.stack([p, u, torch.linalg.cross(p, u)], dim=-1)


class IcosahedralGroup(FiniteGroup):
    """The 60 rotations that map the regular icosahedron onto itself, elements ``(3, 3)``.

    The rotation group of the icosahedron (isomorphic to A5), used by icosahedral group
    convolutions (EPN: each point carries one feature per element). Its elements:
    the identity, 12 rotations by ±72° and 12 by ±144° about the 6 axes through opposite
    vertices, 20 by ±120° about the 10 axes through opposite face centres and 15 by 180°
    about the 15 axes through opposite edge midpoints.

    Element order (fixed): element ``5 a + j`` maps vertex 0 of :meth:`vertices` to vertex
    ``a`` and vertex 0's first neighbour to ``a``'s ``j``-th neighbour (neighbours in
    index order), so element 0 is the identity. Built in float64 from orthonormal frames
    (entries exact to ~1e-16).

    Source: Chen et al., "Equivariant Point Network for 3D Point Cloud Analysis", CVPR
    2021, arXiv:2103.14147 (the 60-element icosahedral group of EPN).

    Example:
        >>> G = IcosahedralGroup()
        >>> G.order, G.elements().shape
        (60, torch.Size([60, 3, 3]))
    """

    element_shape = (3, 3)
    dim = 3

    def __init__(self) -> None:
        self.name = "IcosahedralGroup"
        self._cache: torch.Tensor | None = None

    @staticmethod
    def vertices(dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """The icosahedron's 12 unit vertices, ``(12, 3)`` (a new tensor); every element
        permutes them."""
        dtype, device = _resolve(None, dtype, device)
        return _icosahedron_vertices().to(dtype=dtype, device=device)

    def _elements64(self) -> torch.Tensor:
        if self._cache is None:
            v = _icosahedron_vertices()
            cos_edge = 1.0 / math.sqrt(5.0)  # cosine of the angle between adjacent vertices
            nbrs = [[j for j in range(12) if abs(float(v[i] @ v[j]) - cos_edge) < 1e-9]
                    for i in range(12)]
            ref = _frame(v[0], v[nbrs[0][0]])
            els = [_frame(v[a], v[b]) @ ref.T for a in range(12) for b in nbrs[a]]
            out = torch.stack(els)
            r = out.round()  # exact zeros and ones where the entries are (the identity)
            self._cache = torch.where((out - r).abs() < 1e-14, r, out)
        return self._cache

    def __repr__(self) -> str:
        return "IcosahedralGroup()"

    def _key(self) -> tuple:
        return ("IcosahedralGroup",)
