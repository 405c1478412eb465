"""Fused versions of the conversions for large batches: native float32 CPU kernels
(``_native``) and ``torch.compile``-d formulations, built lazily and cached."""

from __future__ import annotations

import functools
import inspect
import math
import threading
import warnings
from typing import Callable

import torch

from geo3d.rotations import _native
from geo3d.rotations._axis_angle import axis_angle_to_matrix
from geo3d.rotations._checks import check_tensor
from geo3d.rotations._euler import (
    _elementary,
    _euler_abcd,
    _euler_angles,
    _euler_setup,
    _nz_hypot,
    _parse,
    _qmul,
)
from geo3d.rotations._fast_math import atan2, half_angle_over_sin
from geo3d.rotations._quat import _matrix_from_quat_comps, _shepperd, quat_to_matrix
from geo3d.rotations._sixd import matrix_to_sixd

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

# ---------------------------------------------------------------------------------------
# Dedicated formulations for the fused path.
#
# Every function below works on scalar components (``unbind`` of the input, elementwise
# ops on batch-shaped tensors, a single ``stack`` at the end): inductor then emits one
# loop over the batch, vectorised along it, with every intermediate kept in registers.
# Small reductions over the last dim (``vector_norm(dim=-1)``, ``sum(-1)``, ``cat``) would
# instead make it vectorise (or split kernels) along the 3- or 4-long component dim. The
# maths is that of the eager functions (same branches, same safe-gradient guards), so
# results agree to rounding and gradients are finite at the same singular points. Shape
# checks are kept; data-dependent value checks are skipped (as inside any torch.compile).
# ---------------------------------------------------------------------------------------


def _safe_sqrt(t2: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not NaN) gradient at 0."""
    pos = t2 > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, t2, 1.0)), 0.0)


def _rotvec_from_quat_comps(w, x, y, z) -> torch.Tensor:
    """Rotation vectors from (not necessarily unit) quaternion components, as
    :func:`quat_to_axis_angle`: ``u sign(w) 2 atan2(|u|, |w|)/|u|``, scale invariant."""
    n = _safe_sqrt(x * x + y * y + z * z)
    f = torch.copysign(half_angle_over_sin(n, w.abs()), w)
    return torch.stack((x * f, y * f, z * f), dim=-1)


def _f_matrix_to_quat(R: torch.Tensor) -> torch.Tensor:
    check_tensor("R", R, (3, 3))
    w, x, y, z = _shepperd(R)
    k = torch.copysign(torch.rsqrt((w * w + x * x) + (y * y + z * z)), w)
    return torch.stack((w * k, x * k, y * k, z * k), dim=-1)


def _f_matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    check_tensor("R", R, (3, 3))
    # The rotation vector of a quaternion is scale invariant: no normalisation needed.
    return _rotvec_from_quat_comps(*_shepperd(R))


def _f_axis_angle_to_quat(v: torch.Tensor) -> torch.Tensor:
    check_tensor("v", v, (3,))
    x, y, z = v.unbind(-1)
    th = _safe_sqrt(x * x + y * y + z * z)
    w = torch.cos(0.5 * th)
    k = 0.5 * torch.sinc(th * (0.5 / math.pi))  # sin(θ/2)/θ
    k = torch.where(w < 0, -k, k)  # w >= 0: angles beyond π give the antipodal quaternion
    return torch.stack((w.abs(), x * k, y * k, z * k), dim=-1)


def _f_quat_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    check_tensor("q", q, (4,))
    return _rotvec_from_quat_comps(*q.unbind(-1))


def _f_sixd_to_matrix(x: torch.Tensor) -> torch.Tensor:
    check_tensor("x", x, (6,))
    ax, ay, az, cx, cy, cz = x.unbind(-1)
    r1 = torch.rsqrt(ax * ax + ay * ay + az * az)
    x1, y1, z1 = ax * r1, ay * r1, az * r1
    d = x1 * cx + y1 * cy + z1 * cz
    px, py, pz = cx - d * x1, cy - d * y1, cz - d * z1
    r2 = torch.rsqrt(px * px + py * py + pz * pz)
    x2, y2, z2 = px * r2, py * r2, pz * r2
    x3 = y1 * z2 - z1 * y2
    y3 = z1 * x2 - x1 * z2
    z3 = x1 * y2 - y1 * x2
    return torch.stack((x1, x2, x3, y1, y2, y3, z1, z2, z3), dim=-1).unflatten(-1, (3, 3))


def _euler_quat_comps(angles: torch.Tensor, convention: str) -> list[torch.Tensor]:
    axes, intrinsic = _parse(convention)
    check_tensor("angles", angles, (3,))
    a = angles.unbind(-1)
    q = _elementary(axes[0], a[0])
    for i in (1, 2):
        e = _elementary(axes[i], a[i])
        q = _qmul(q, e) if intrinsic else _qmul(e, q)
    return q


def _f_euler_to_matrix(angles: torch.Tensor, convention: str) -> torch.Tensor:
    return _matrix_from_quat_comps(*_euler_quat_comps(angles, convention), 2.0)


def _euler_from_quat_comps(qc: tuple, convention: str) -> torch.Tensor:
    """:func:`geo3d.rotations.quat_to_euler` on components, gradient-safe, no warning."""
    extrinsic, symmetric, i, j, k, sign = _euler_setup(convention)
    a, b, c, d = _euler_abcd(qc[0], qc[1 + i], qc[1 + j], qc[1 + k], symmetric, sign)
    half_sum = atan2(b, a)  # finite gradient at (0, 0) (float64: _safe_atan2's rule)
    half_diff = atan2(d, c)
    mid = 2.0 * atan2(_nz_hypot(c, d), _nz_hypot(a, b), nonneg=True)
    ang0, ang1, ang2, _ = _euler_angles(half_sum, half_diff, mid, extrinsic, symmetric, sign)
    # every angle is in [-2π, 2π]: one conditional shift per component wraps it to
    # [-π, π) like the eager ``remainder(x + π, 2π) - π``, inside the same fused loop (a
    # remainder on the stacked result became a second pass over the output)
    return torch.stack((_wrap(ang0), _wrap(ang1), _wrap(ang2)), dim=-1)


def _wrap(x: torch.Tensor) -> torch.Tensor:
    """``x`` in ``[-2π, 2π]`` wrapped to ``[-π, π)``."""
    return torch.where(x >= math.pi, x - 2.0 * math.pi,
                       torch.where(x < -math.pi, x + 2.0 * math.pi, x))


def _f_matrix_to_euler(R: torch.Tensor, convention: str, warn: bool = True) -> torch.Tensor:
    _parse(convention)
    check_tensor("R", R, (3, 3))
    w, x, y, z = _shepperd(R)
    # Euler angles are atan2's of the components: invariant under a positive scale, so
    # only the sign (w >= 0, as matrix_to_quat returns) is applied, no normalisation.
    k = torch.copysign(torch.ones_like(w), w)
    return _euler_from_quat_comps((w * k, x * k, y * k, z * k), convention)


def _f_quat_multiply(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    check_tensor("p", p, (4,))
    check_tensor("q", q, (4,))
    pw, px, py, pz = p.unbind(-1)
    qw, qx, qy, qz = q.unbind(-1)
    return torch.stack(_qmul([pw, px, py, pz], [qw, qx, qy, qz]), dim=-1)


def _f_quat_apply(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    check_tensor("q", q, (4,))
    check_tensor("v", v, (3,))
    w, x, y, z = q.unbind(-1)
    vx, vy, vz = v.unbind(-1)
    s = 2.0 / ((w * w + x * x) + (y * y + z * z))
    # t = u × v, v' = v + s (w t + u × t)
    tx, ty, tz = y * vz - z * vy, z * vx - x * vz, x * vy - y * vx
    ox = vx + s * (w * tx + (y * tz - z * ty))
    oy = vy + s * (w * ty + (z * tx - x * tz))
    oz = vz + s * (w * tz + (x * ty - y * tx))
    return torch.stack((ox, oy, oz), dim=-1)


_IMPLS: dict[str, Callable] = {
    # already scalar-component formulations whose value checks switch off under
    # torch.compile: the eager functions themselves fuse into one loop
    "quat_to_matrix": quat_to_matrix,
    "matrix_to_quat": _f_matrix_to_quat,
    "axis_angle_to_matrix": axis_angle_to_matrix,
    "matrix_to_axis_angle": _f_matrix_to_axis_angle,
    "axis_angle_to_quat": _f_axis_angle_to_quat,
    "quat_to_axis_angle": _f_quat_to_axis_angle,
    "sixd_to_matrix": _f_sixd_to_matrix,
    # a pure gather: the eager view + reshape (one strided copy) is as good as it gets
    "matrix_to_sixd": matrix_to_sixd,
    "euler_to_matrix": _f_euler_to_matrix,
    "matrix_to_euler": _f_matrix_to_euler,
    "quat_multiply": _f_quat_multiply,
    "quat_apply": _f_quat_apply,
}

_CACHE: dict[str, Callable] = {}
_FAILED: set[str] = set()
_LOCK = threading.Lock()


def _inductor_options() -> dict:
    """Inductor settings for the fused kernels.

    Inductor's CPU tiling heuristic refuses to vectorise a kernel with many strided
    (non-contiguous) loads/stores and then emits a scalar loop calling libm for every
    ``sin``/``cos``/``atan2``/``acos``. Rotation conversions read and write interleaved
    components (stride 3, 4, 9), so the heuristic fires on nearly all of them. Without it
    the batch loop is vectorised (strided accesses go through a small stack buffer) and
    the transcendentals use the vectorised Sleef implementations: several times faster.
    """
    opts: dict = {}
    try:
        from torch._inductor import config as inductor_config

        if hasattr(inductor_config.cpp, "enable_tiling_heuristics"):
            opts["cpp.enable_tiling_heuristics"] = False
    except Exception:  # pragma: no cover - inductor unavailable
        pass
    return opts


_EULER = ("euler_to_matrix", "matrix_to_euler")


def _compile(name: str, convention: str | None = None) -> Callable:
    impl = _IMPLS[name]
    if convention is not None:  # one graph per convention: no string guards/recompiles
        impl = functools.partial(impl, convention=convention)
    return torch.compile(impl, options=_inductor_options())


def _native_call(name: str, signature: inspect.Signature, args: tuple, kwargs: dict):
    """The native float32 kernel's result for this call, or None when it does not apply
    (other dtype or device, gradient needed, kernels unavailable; see ``_native``)."""
    if name not in _native.KERNELS:
        return None
    bound = signature.bind(*args, **kwargs)
    first = next(iter(signature.parameters))
    x = bound.arguments[first]
    if not isinstance(x, torch.Tensor) or not _native.applies(name, x):
        return None
    kernel = name
    convention = None
    if name in _EULER:
        convention = bound.arguments["convention"]
        _parse(convention)
    if name == "quat_to_matrix" and bound.arguments.get("normalize", False):
        kernel = "quat_to_matrix_normalize"
    check_tensor(first, x, _native.KERNELS[kernel][1])
    return _native.run(kernel, x, convention)


def fused(name: str) -> Callable:
    """Return a fused version of the conversion ``name``, for large batches.

    Two back ends, chosen per call:

    * float32 CPU tensors that need no gradient go to hand-vectorised C kernels
      (``_native.c``), built with the system C compiler on first use and cached. They take
      0.5-1.5x the time of a copy of the same bytes at 1e6 rotations
      (``benchmarks/rotations.py``);
    * everything else (float64, CUDA, inputs that require grad) goes to dedicated
      formulations of the eager functions (the same maths on scalar components, so that
      inductor emits one vectorised loop over the batch), ``torch.compile``-d on first use
      and cached (per convention for the Euler functions). The first shape gets a
      specialised kernel; after a second shape torch.compile switches to a dynamic-shape
      kernel, so varying batch sizes do not recompile endlessly.

    If a back end is unavailable (no C compiler, unsupported platform), a
    ``RuntimeWarning`` says so once and the next one is used: native, then compiled, then
    the eager function. ``GEO3D_NATIVE=0`` switches the C kernels off. Fused functions
    skip data-dependent value checks (shape checks are kept; the fused
    ``matrix_to_euler`` never warns about gimbal lock); gradients flow through the
    compiled kernels as usual. Results agree with the eager functions to a few ulps
    in float64 and to float32 rounding (≲ 2e-6 relative, angles near gimbal lock
    aside) in float32.

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
        by_conv: dict[str, Callable] = {}
        compiled: Callable | None = None
        try:
            if name not in _EULER:
                compiled = _compile(name)
        except Exception as err:  # pragma: no cover - depends on the platform
            warnings.warn(
                f"geo3d.rotations: torch.compile unavailable ({err}); using eager {name}",
                RuntimeWarning,
                stacklevel=2,
            )
            _FAILED.add(name)
        signature = inspect.signature(eager)

        def target(args: tuple, kwargs: dict) -> tuple[Callable, tuple]:
            if compiled is not None:
                return compiled, args
            bound = signature.bind(*args, **kwargs)
            convention = bound.arguments["convention"]
            _parse(convention)  # ValueError for a bad convention, before compiling
            with _LOCK:
                f = by_conv.get(convention)
                if f is None:
                    f = by_conv[convention] = _compile(name, convention)
            first = "angles" if name == "euler_to_matrix" else "R"
            return f, (bound.arguments[first],)

        def fall_back(err: Exception, args: tuple, kwargs: dict):
            _FAILED.add(name)
            warnings.warn(
                f"geo3d.rotations: compiling {name} failed ({type(err).__name__}: {err}); "
                "falling back to eager",
                RuntimeWarning,
                stacklevel=3,
            )
            return eager(*args, **kwargs)

        @functools.wraps(eager)
        def wrapper(*args, **kwargs):
            out = _native_call(name, signature, args, kwargs)
            if out is not None:
                return out
            if name in _FAILED:
                return eager(*args, **kwargs)
            try:
                f, fargs = target(args, kwargs)
            except (ValueError, TypeError):  # bad arguments
                raise
            except Exception as err:  # torch.compile itself unusable
                return fall_back(err, args, kwargs)
            try:
                return f(*fargs) if name in _EULER else f(*fargs, **kwargs)
            except ValueError:  # input validation
                raise
            except Exception as err:  # compile errors surface at the first call
                return fall_back(err, args, kwargs)

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
