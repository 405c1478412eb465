"""Fused (``torch.compile``) versions of the conversions, compiled lazily and cached."""

from __future__ import annotations

import functools
import threading
import warnings
from typing import Callable

import torch

__all__ = ["fused", "FUSED_FUNCTIONS"]

FUSED_FUNCTIONS = (
    "quat_to_matrix",
    "matrix_to_quat",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "axis_angle_to_quat",
    "quat_to_axis_angle",
    "sixd_to_matrix",
    "matrix_to_sixd",
    "euler_to_matrix",
    "matrix_to_euler",
    "quat_multiply",
    "quat_apply",
)

_CACHE: dict[str, Callable] = {}
_FAILED: set[str] = set()
_LOCK = threading.Lock()


def fused(name: str) -> Callable:
    """Return a fused (``torch.compile``-d) version of the conversion ``name``.

    The compiled function is created on first use and cached. The first shape gets a
    specialised kernel; after a second shape torch.compile switches to a dynamic-shape
    kernel, so varying batch sizes do not recompile endlessly. If compilation or the compiled call fails (no C++
    compiler, unsupported platform), a ``RuntimeWarning`` is emitted once and the eager
    function is used from then on. Fused functions skip data-dependent value checks
    (shape checks are kept) and are meant for large batches (≳1e5 elements); gradients
    flow through them as usual.

    Args:
        name: one of :data:`FUSED_FUNCTIONS`.

    Returns:
        A callable with the same signature as ``geo3d.rotations.<name>``.
    """
    if name not in FUSED_FUNCTIONS:
        raise ValueError(f"name: expected one of {FUSED_FUNCTIONS}, got {name!r}")
    import geo3d.rotations as rot

    eager = getattr(rot, name)
    with _LOCK:
        fn = _CACHE.get(name)
        if fn is not None:
            return fn
        try:
            compiled = torch.compile(eager)
        except Exception as err:  # pragma: no cover - depends on the platform
            warnings.warn(
                f"geo3d.rotations: torch.compile unavailable ({err}); using eager {name}",
                RuntimeWarning,
                stacklevel=2,
            )
            _CACHE[name] = eager
            return eager

        @functools.wraps(eager)
        def wrapper(*args, **kwargs):
            if name in _FAILED:
                return eager(*args, **kwargs)
            try:
                return compiled(*args, **kwargs)
            except ValueError:
                raise
            except Exception as err:  # compile errors surface at the first call
                _FAILED.add(name)
                warnings.warn(
                    f"geo3d.rotations: compiling {name} failed ({type(err).__name__}: {err}); "
                    "falling back to eager",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return eager(*args, **kwargs)

        _CACHE[name] = wrapper
        return wrapper


class _Namespace:
    """``geo3d.rotations.compiled.<name>(...)``: attribute access to :func:`fused`."""

    def __getattr__(self, name: str) -> Callable:
        if name.startswith("__") or name not in FUSED_FUNCTIONS:
            raise AttributeError(name)
        return fused(name)

    def __dir__(self):
        return list(FUSED_FUNCTIONS)


compiled = _Namespace()
