"""Input validation shared by :mod:`geo3d.rotations` (private)."""

from __future__ import annotations

import math

import torch

# The one project-wide switch lives in the bottom layer (geo3d._validation), so ops and nn
# read the same setting without importing this package; re-exported here as public API.
from geo3d import _validation
from geo3d._validation import set_value_checks  # noqa: F401 (re-export)


def _fmt_tail(tail: tuple) -> str:
    return "(..., " + ", ".join("*" if t is None else str(t) for t in tail) + ")"


def check_tensor(name: str, x: object, tail: tuple = (), min_ndim: int | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is a floating tensor whose trailing dims are ``tail``."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point()):
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    nd = len(tail) if min_ndim is None else max(min_ndim, len(tail))
    ok = x.ndim >= nd and all(
        t is None or s == t for s, t in zip(x.shape[x.ndim - len(tail) :], tail, strict=False)
    )
    if not ok:
        raise ValueError(f"{name}: expected shape {_fmt_tail(tail)}, got {tuple(x.shape)}")


def tracing() -> bool:
    """True inside ``torch.compile``/``export``, ``torch.jit.trace`` or a ``torch.func``
    transform (vmap, grad, jacrev, jacfwd, ...): no data-dependent Python branch may run."""
    return bool(
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._are_functorch_transforms_active()
    )


def values_enabled() -> bool:
    """Whether data-dependent value checks run now (enabled and not tracing)."""
    return _validation.switch_on() and not tracing()


def check_values(name: str, ok: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless every entry of the bool tensor ``ok`` holds."""
    if values_enabled() and ok.numel() > 0 and not bool(ok.all()):
        bad = int((~ok).sum())
        raise ValueError(f"{name}: {what} ({bad} offending element(s))")


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or inf (when value checks are enabled).

    One reduction (``aminmax``, which propagates NaN) and one host read.
    """
    if values_enabled() and x.numel() > 0:
        lo, hi = torch.aminmax(x.detach())
        if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
            raise ValueError(f"{name}: expected finite values, got NaN or inf")


def check_pair(
    first: str, a: torch.Tensor, a_tail: int, name: str, b: torch.Tensor, b_tail: int,
    dtype: bool = True,
) -> torch.Size:
    """Raise ``ValueError`` naming ``name`` (the second argument) unless ``b`` has ``a``'s
    device (and dtype, if ``dtype``) and the batch dims (all but the last ``a_tail`` /
    ``b_tail``) of both broadcast; returns the broadcast batch shape. Shape-only (runs
    under tracing too)."""
    if b.device != a.device:
        raise ValueError(f"{name}: expected a tensor on {first}'s device {a.device}, got {b.device}")
    if dtype and b.dtype != a.dtype:
        raise ValueError(f"{name}: expected {first}'s dtype {a.dtype}, got {b.dtype}")
    ab = a.shape[: a.ndim - a_tail]
    bb = b.shape[: b.ndim - b_tail]
    try:
        return torch.broadcast_shapes(ab, bb)
    except RuntimeError:
        raise ValueError(
            f"{name}: expected batch dims broadcastable with {first}'s {tuple(ab)}, got "
            f"{tuple(bb)} ({name} has shape {tuple(b.shape)})"
        ) from None


def check_dtype(name: str, dtype: object) -> torch.dtype:
    """``dtype`` if it is a floating-point torch dtype (or None: the default), else
    ``ValueError`` naming ``name``."""
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{name}: expected a floating-point torch.dtype, got {dtype!r}")
    return dtype
