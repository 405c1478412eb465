"""Input validation shared by geo3d.ops and geo3d.nn (private; re-exported nowhere).

One error style for the package: ``ValueError(f"{name}: expected {what}, got {actual}")``
(the style of :mod:`geo3d.rotations`), built by :func:`value_error`.

Data-dependent checks (non-finite coordinates) follow the one project-wide switch
:func:`geo3d.rotations.set_value_checks`: they run when it is on, and are skipped inside
``torch.compile`` and for tensors batched by ``torch.vmap`` (where a data-dependent
``bool()`` cannot be evaluated), so tracing is never broken by a check.
"""

from __future__ import annotations

import torch

__all__ = ["check_finite", "error_summary", "promote_floats", "set_value_checks", "switch_on",
           "value_error", "values_enabled"]

_VALUE_CHECKS = True


def set_value_checks(enabled: bool) -> bool:
    """Enable or disable data-dependent input checks (non-finite / degenerate values).

    Public as :func:`geo3d.rotations.set_value_checks` (one switch for the package). Shape
    and dtype checks are always performed. Value checks need one reduction and, on CUDA,
    a host synchronisation; they are skipped automatically while tracing
    (``torch.compile``/``torch.export``, ``torch.jit.trace``, and the ``torch.func``
    transforms ``vmap``, ``grad``, ``jacrev``, ``jacfwd``), where a host read of the data
    is impossible or meaningless. Inputs are then assumed valid (e.g. matrices are assumed
    to be rotations).

    Args:
        enabled: new setting.

    Returns:
        The previous setting.
    """
    global _VALUE_CHECKS
    old = _VALUE_CHECKS
    _VALUE_CHECKS = bool(enabled)
    return old


def switch_on() -> bool:
    """The setting of :func:`set_value_checks` (tracing not considered)."""
    return _VALUE_CHECKS


def value_error(name: str, what: str, actual: object) -> ValueError:
    """``ValueError(f"{name}: expected {what}, got {actual}")`` (to be raised by the caller)."""
    return ValueError(f"{name}: expected {what}, got {actual}")


def error_summary(err: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's text, on one line (at most ``limit``
    characters), for messages that wrap a library's error. torch's weights-only unpickling
    error goes on to advise ``weights_only=False``, which would run arbitrary code from a
    foreign file: that advice must never be passed on to a user."""
    text = " ".join(str(err).split())
    first = text.split(". ")[0].rstrip(".")
    return first[:limit] or type(err).__name__


def promote_floats(**named: torch.Tensor) -> list[torch.Tensor]:
    """The tensors ``named`` (keyword order), each cast to their common floating dtype
    (:func:`torch.promote_types`: a float32 prediction scored against float64 ground
    truth is computed in float64, never silently rounded to float32).

    Raises:
        ValueError: a value that is not a floating tensor (named), a ``meta`` tensor, or
            tensors on different devices.
    """
    dtype = None
    device = None
    for name, x in named.items():
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise value_error(name, "a floating tensor",
                              getattr(x, "dtype", type(x).__name__))
        dtype = x.dtype if dtype is None else torch.promote_types(dtype, x.dtype)
        if x.device.type == "meta":  # shapes only: there are no values to score
            raise value_error(name, "a tensor on a device that computes", "one on 'meta'")
        if device is None:
            device, first = x.device, name
        elif x.device != device:
            raise value_error(name, f"a tensor on {device} (as {first})", x.device)
    return [x.to(dtype) for x in named.values()]


def shape_of(x: object) -> object:
    """``tuple(x.shape)`` for a tensor, else the type name (for error messages)."""
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def values_enabled() -> bool:
    """True when data-dependent checks should run: the switch of
    :func:`geo3d.rotations.set_value_checks` is on and nothing is being compiled."""
    if not _VALUE_CHECKS:
        return False
    try:
        return not torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - very old torch
        return True


def _vmapped(x: torch.Tensor) -> bool:
    """True if ``x`` is (or wraps) a tensor batched by ``torch.vmap`` at some level."""
    f = getattr(torch._C, "_functorch", None)
    if f is None:  # pragma: no cover - very old torch
        return False
    t = x
    while f.is_functorch_wrapped_tensor(t):
        if f.is_batchedtensor(t):
            return True
        t = f.get_unwrapped(t)
    return False


def check_finite(name: str, x: torch.Tensor, valid: torch.Tensor | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` if an entry of ``x`` that counts is NaN or inf.

    Args:
        name: argument name for the message.
        x: tensor of shape :math:`(*S, *F)`.
        valid: optional bool tensor of shape :math:`S` (a prefix of ``x.shape``): only the
            entries where it is True are checked (padding may hold anything).
    """
    if x.numel() == 0 or not x.is_floating_point() or not values_enabled() or _vmapped(x):
        return
    bad = ~torch.isfinite(x.detach())
    if valid is not None:
        if _vmapped(valid):
            return
        v = valid.reshape(*valid.shape, *([1] * (x.dim() - valid.dim())))
        bad = bad & v
    if bool(bad.any()):
        count = int(bad.sum())
        first = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
        raise value_error(
            name, "finite coordinates", f"{count} NaN/inf value(s) (first at index {first})"
        )
