"""Elementwise maths for the fused kernels (private).

Inductor's CPU backend vectorises ``atan``/``atan2`` through Sleef, whose float32 versions
cost about as much as the whole memory traffic of a conversion (~2.5 ms per 1e6 values on
2 cores here). :func:`atan2` below uses one division, a polynomial and a few selects (all
fused into the surrounding kernel) and is ~1 ms per 1e6 values faster, with an error of
at most 3e-7 rad (about 1 float32 ulp at π). Only float32 takes this path; float64
and other dtypes call :func:`torch.atan2`, so float64 results stay exact.
"""

from __future__ import annotations

import math

import torch

__all__ = ["atan2", "half_angle_over_sin"]

# atan(t) ≈ t P(t²) on [0, 1]: max abs error 1.4e-8 (least-squares minimax fit in float64).
_P = (
    0.9999999863667087,
    -0.33333093957073434,
    0.1999305410479578,
    -0.14207133644339076,
    0.10654677364056798,
    -0.07533676014310682,
    0.0430393674480887,
    -0.01628300779502918,
    0.0029035524794655885,
)


def _atan_poly(z: torch.Tensor) -> torch.Tensor:
    """``P(z)`` (Horner), so that ``atan(t) ≈ t P(t²)`` on ``[0, 1]``."""
    p = _P[-1]
    for c in _P[-2::-1]:
        p = p * z + c
    return p


def _atan_unit(t: torch.Tensor) -> torch.Tensor:
    return t * _atan_poly(t * t)


def atan2(y: torch.Tensor, x: torch.Tensor, nonneg: bool = False) -> torch.Tensor:
    """``atan2(y, x)`` for finite inputs, fast in fused float32 kernels.

    Same conventions as :func:`torch.atan2` for signed zeros in float32 (``atan2(±0, -0)
    = ±π``, ``atan2(±0, +0) = ±0``; in float64 ``(0, 0)`` gives 0 like the eager
    ``_safe_atan2``); infinities are not supported. Differentiable: the gradient
    is that of the polynomial (accurate to float32 precision) and finite everywhere,
    ``atan2(0, 0)`` included.

    Args:
        y: shape :math:`(*)`.
        x: same shape as ``y``.
        nonneg: promise that ``y >= 0`` and ``x >= 0`` (first quadrant, fewer ops).

    Returns:
        Angles in radians in ``[-π, π]``, shape :math:`(*)`.
    """
    if y.dtype != torch.float32 or x.dtype != torch.float32:
        # as geo3d.rotations._euler._safe_atan2: zero (not NaN) gradient at (0, 0)
        zero = (y == 0) & (x == 0)
        return torch.atan2(y, torch.where(zero, 1.0, x))
    ay, ax = (y, x) if nonneg else (y.abs(), x.abs())
    swap = ay > ax
    num = torch.where(swap, ax, ay)
    den = torch.where(swap, ay, ax)
    r = _atan_unit(num / torch.where(den == 0, 1.0, den))  # atan(num/den) in [0, π/4]
    r = torch.where(swap, 0.5 * math.pi - r, r)
    if nonneg:
        return r
    r = torch.where(torch.signbit(x), math.pi - r, r)
    return torch.copysign(r, y)


def half_angle_over_sin(n: torch.Tensor, aw: torch.Tensor) -> torch.Tensor:
    """``2 atan2(n, aw) / n`` for ``n, aw >= 0`` (``2 / aw`` at ``n = 0``), fast in float32.

    This is the factor that maps the vector part ``u`` of a quaternion (``n = |u|``,
    ``aw = |w|``) to its rotation vector. In float32 it takes one division: with
    ``inv = 1 / max(n, aw)`` and ``t = min(n, aw) inv``, ``atan(t) = t P(t²)`` gives
    ``2 P(t²) inv`` when ``n <= aw`` (no division by a possibly zero ``n``) and
    ``2 (π/2 - t P(t²)) inv`` otherwise. Other dtypes use :func:`torch.atan2` (exact).

    Args:
        n: vector-part norms, shape :math:`(*)`, ``>= 0``.
        aw: absolute scalar parts, same shape, ``>= 0``; not both zero.

    Returns:
        shape :math:`(*)`.
    """
    if n.dtype != torch.float32 or aw.dtype != torch.float32:
        zero = n == 0
        f = 2.0 * atan2(n, aw, nonneg=True) / torch.where(zero, 1.0, n)
        # safe where: the unused 2/aw is evaluated at aw = 1 (at w = 0 it is inf, and its
        # backward would turn the gradient into NaN)
        return torch.where(zero, 2.0 / torch.where(zero, aw, 1.0), f)
    swap = n > aw
    inv = 1.0 / torch.where(swap, n, aw)
    t = torch.where(swap, aw, n) * inv
    p = _atan_poly(t * t)
    return (2.0 * inv) * torch.where(swap, 0.5 * math.pi - t * p, p)
