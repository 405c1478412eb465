"""The Lorentz group O(1,3) and its proper orthochronous subgroup SO⁺(1,3).

Conventions: metric ``η = diag(+1, −1, −1, −1)``, 4-vectors ``(t, x, y, z)``, elements
``Λ`` are ``(4, 4)`` matrices with ``Λᵀ η Λ = η`` acting on column 4-vectors.
"""

from __future__ import annotations

import math

import torch

from geo3d.groups._base import Group, _broadcast, _check_n, _check_vec, _det, _rand, _resolve

__all__ = ["Lorentz", "boost", "minkowski_dot", "minkowski_metric"]


def minkowski_metric(
    dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """The metric ``η = diag(+1, −1, −1, −1)``, shape ``(4, 4)``."""
    dtype = dtype or torch.get_default_dtype()
    return torch.diag(torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=dtype, device=device))


def minkowski_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minkowski inner product ``a₀b₀ − a₁b₁ − a₂b₂ − a₃b₃``.

    Args:
        a: 4-vectors ``(t, x, y, z)``, shape :math:`(*, 4)`.
        b: shape :math:`(*, 4)`, broadcasting against ``a``.

    Returns:
        shape :math:`(*)`.

    Raises:
        ValueError: naming ``a``/``b`` for a last dim other than 4 or batch dims that do
            not broadcast.
    """
    _check_vec(a, 4, "a")
    _check_vec(b, 4, "b")
    _broadcast("a", a.shape[:-1], "b", b.shape[:-1])
    p = a * b
    return p[..., 0] - p[..., 1:].sum(-1)


def _sinhc(x2: torch.Tensor, x: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """``sinh(x)/x`` from ``x2 = x²`` and ``x`` (``x`` only read where ``~small``);
    Taylor series ``1 + x²/6 + x⁴/120 + x⁶/5040`` where ``small`` (``x² < 1e-4``: the
    truncation error ``x⁸/9!`` is below float64 rounding)."""
    taylor = 1 + x2 / 6 * (1 + x2 / 20 * (1 + x2 / 42))
    return torch.where(small, taylor, torch.sinh(x) / x)


def boost(rapidity: torch.Tensor) -> torch.Tensor:
    """Pure boosts from rapidity vectors ``ζ = φ n`` (``n`` unit direction, ``φ = |ζ|``).

    ``B = exp(Σᵢ ζᵢ Kᵢ)`` with the boost generators ``Kᵢ`` (``(Kᵢ)₀ᵢ = (Kᵢ)ᵢ₀ = 1``):
    ``B₀₀ = cosh φ``, ``B₀ᵢ = Bᵢ₀ = sinh φ nᵢ``, ``Bᵢⱼ = δᵢⱼ + 2 sinh²(φ/2) nᵢ nⱼ``.
    Computed as ``B₀ᵢ = (sinh φ / φ) ζᵢ`` and ``Bᵢⱼ = δᵢⱼ + ½ (sinh(φ/2)/(φ/2))² ζᵢ ζⱼ``
    (Taylor series near 0, no ``n = ζ/φ``), so the map is smooth at ``ζ = 0``: the
    derivative there is ``∂B/∂ζᵢ = Kᵢ`` in every direction and gradients are finite.
    The half-angle form avoids cancellation in ``cosh φ − 1``; velocities are never
    formed, so large rapidities keep full relative accuracy.

    Args:
        rapidity: shape :math:`(*, 3)`.

    Returns:
        shape :math:`(*, 4, 4)`.

    Raises:
        ValueError: naming ``rapidity`` for a last dim other than 3.

    Example:
        >>> import torch
        >>> boost(torch.tensor([0.0, 0.0, 1.0]))[0, [0, 3]]  # cosh 1, sinh 1
        tensor([1.5431, 1.1752])
    """
    _check_vec(rapidity, 3, "rapidity")
    z = rapidity
    phi2 = (z * z).sum(-1, keepdim=True)  # (*, 1)
    small = phi2 < 1e-4
    phi = torch.sqrt(torch.where(small, torch.ones_like(phi2), phi2))  # safe where
    sinhc = _sinhc(phi2, phi, small)  # sinh φ / φ
    half = _sinhc(phi2 / 4, phi / 2, small)  # sinh(φ/2) / (φ/2)
    c = 0.5 * half * half  # (cosh φ − 1) / φ²
    ch = 1 + c * phi2  # cosh φ
    bz = sinhc * z  # sinh φ n
    eye = torch.eye(3, dtype=z.dtype, device=z.device)
    spatial = eye + c[..., None] * z[..., :, None] * z[..., None, :]
    top = torch.cat([ch, bz], -1)  # (*, 4)
    rest = torch.cat([bz[..., :, None], spatial], -1)  # (*, 3, 4)
    return torch.cat([top[..., None, :], rest], -2)


def _embed_rotation(r: torch.Tensor) -> torch.Tensor:
    """``diag(1, R)`` for ``R (*, 3, 3)`` -> ``(*, 4, 4)``."""
    out = torch.zeros(*r.shape[:-2], 4, 4, dtype=r.dtype, device=r.device)
    out[..., 0, 0] = 1
    out[..., 1:, 1:] = r
    return out


class Lorentz(Group):
    """The Lorentz group O(1,3) (``proper=False``) or SO⁺(1,3) (``proper=True``).

    Sampled elements are ``Λ = B(ζ) R D`` with ``R`` a Haar rotation, ``B(ζ)`` a boost
    whose rapidity vector has a uniform direction and magnitude uniform in
    ``[0, max_rapidity]``, and (only for ``proper=False``) ``D`` uniform in
    ``{I, P, T, PT}`` (parity ``P = diag(1,−1,−1,−1)``, time reversal
    ``T = diag(−1,1,1,1)``), so all four components are sampled.

    Args:
        proper: restrict to the identity component SO⁺(1,3).
        max_rapidity: largest rapidity drawn by :meth:`sample`.
    """

    element_shape = (4, 4)
    dim = 4

    def __init__(self, proper: bool = False, max_rapidity: float = 2.0) -> None:
        if not (max_rapidity >= 0 and math.isfinite(max_rapidity)):
            raise ValueError(f"max_rapidity: expected a finite value >= 0, got {max_rapidity!r}")
        self.proper = bool(proper)
        self.max_rapidity = float(max_rapidity)
        self.name = "Lorentz"

    def __repr__(self) -> str:
        return f"Lorentz(proper={self.proper}, max_rapidity={self.max_rapidity:g})"

    def _key(self) -> tuple:
        return ("Lorentz", self.proper)

    def metric(self, dtype=None, device=None) -> torch.Tensor:
        """``η``, shape ``(4, 4)``."""
        return minkowski_metric(dtype, device)

    def sample(self, n, generator=None, dtype=None, device=None):
        """``n`` random elements, shape ``(n, 4, 4)`` (see the class docstring)."""
        from geo3d.rotations import random_rotation_matrix

        _check_n(n)
        dtype, device = _resolve(generator, dtype, device)
        d = torch.randn(n, 3, generator=generator, dtype=dtype, device=device)
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        phi = self.max_rapidity * _rand(n, generator, dtype, device)
        r = random_rotation_matrix(n, generator=generator, dtype=dtype, device=device)
        lam = boost(phi[:, None] * d) @ _embed_rotation(r)
        if not self.proper:
            k = torch.randint(4, (n,), generator=generator, device=device)
            signs = torch.ones(n, 4, dtype=dtype, device=device)
            signs[:, 1:] = torch.where((k % 2 == 1)[:, None], -1.0, 1.0).to(dtype)  # parity
            signs[:, :1] = torch.where((k >= 2)[:, None], -1.0, 1.0).to(dtype)  # time reversal
            lam = lam * signs[:, None, :]  # Λ @ diag(signs)
        return lam

    def inverse(self, a):
        """``Λ⁻¹ = η Λᵀ η`` (exact, no matrix inversion); a new tensor.

        Raises:
            ValueError: naming ``a`` for a wrong shape or a non-element.
        """
        self.validate(a, "a")
        s = torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=a.dtype, device=a.device)
        return a.transpose(-1, -2) * s[:, None] * s[None, :]

    def element_error(self, g):
        """Relative metric defect, shape ``batch_shape(g)``.

        ``max|ΛᵀηΛ − η| / max_j Σᵢ Λᵢⱼ²``: the numerator's rounding error scales with
        the squared column norms (entries grow like ``e^φ``), so dividing by them makes
        the error relative (≈ machine epsilon for exact elements at any rapidity).
        For ``proper=True`` elements with ``Λ₀₀ < 0`` or ``det Λ < 0`` get ``inf``;
        the sign of ``det Λ`` is read as ``sign(Λ₀₀) · sign(det Λ[1:, 1:])``, which is
        well-conditioned unlike the 4×4 determinant.
        """
        self.check_element(g)
        eta = minkowski_metric(g.dtype, g.device)
        # computed on Λ / c, c = max|Λᵢⱼ| (>= 1 for an element): ΛᵀηΛ and the squared
        # column norms of a boost of rapidity 50 (float32) or 360 (float64) overflow, and
        # both sides of the ratio scale by c²
        c = g.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1.0)
        h = g / c
        ic2 = (1.0 / c) / c  # 1/c², underflows to 0 only where it is negligible
        defect = (h.transpose(-1, -2) @ eta @ h - eta * ic2).abs().amax(dim=(-2, -1))
        scale = torch.maximum((h * h).sum(-2).amax(-1), ic2[..., 0, 0])
        err = defect / scale
        if self.proper:
            bad = (g[..., 0, 0] <= 0) | (_det(g[..., 1:, 1:]) <= 0)
            err = torch.where(bad, torch.full_like(err, math.inf), err)
        return err

    def special_elements(self, generator=None, dtype=None, device=None):
        """Identity, boosts at ``max_rapidity`` (along z and a random axis), a rotation by π;
        for ``proper=False`` also ``P``, ``T``, ``PT`` and a boosted parity."""
        dtype, device = _resolve(generator, dtype, device)
        d = torch.randn(2, 3, generator=generator, dtype=dtype, device=device)
        d = d / d.norm(dim=-1, keepdim=True)
        zeta = torch.stack([torch.tensor([0.0, 0.0, 1.0], dtype=dtype, device=device), d[0]])
        boosts = boost(self.max_rapidity * zeta)
        from geo3d.groups._spatial import _pi_rotations

        rot = _embed_rotation(_pi_rotations(d[1:]))
        els = [self.identity(dtype, device)[None], boosts, rot, boosts[1:] @ rot]
        labels = [
            "identity",
            f"boost along z, rapidity {self.max_rapidity:g}",
            f"boost along a random axis, rapidity {self.max_rapidity:g}",
            "rotation by π about a random axis",
            "boost ∘ rotation by π",
        ]
        if not self.proper:
            p = torch.diag(torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=dtype, device=device))
            t = -p
            els += [p[None], t[None], (p @ t)[None], (boosts[:1] @ p)]
            labels += ["parity P", "time reversal T", "PT", "boost ∘ parity"]
        return torch.cat(els), labels
