"""Fused versions of the conversions for large batches: native float32 CPU kernels
(``_native``) and ``torch.compile``-d kernels, built lazily and cached.

What ``torch.compile`` compiles, per function. Measured as ``eager/dedicated``: the time
of the compiled eager function over that of the compiled formulation below, both
compiled with :func:`_inductor_options`, timed in the same run (minimum of repeated
calls), 1e6 rotations (2e5 with a gradient, forward + backward), 1 CPU thread, on a
2-core machine shared with other jobs (load ~10, so single ratios move by ±30%):

* the eager function itself: ``quat_to_matrix``, ``axis_angle_to_matrix``,
  ``matrix_to_quat`` (eager/dedicated 0.99 float64, 0.98 float32 when the dedicated one
  was the same maths; 1.02 and 0.59 against the eager code on 9 contiguous rows) and
  ``matrix_to_sixd`` (0.94, 1.01). Their value checks and the matrix-input policy's
  checks and projection switch off under tracing;
* dedicated formulations (scalar components, so that inductor emits one loop over the
  batch; the eager ones reduce over the 3- or 4-long last dim or ``cat``) where they
  measured faster (eager/dedicated, float64 then float32; "grad": float64 with a
  gradient): ``matrix_to_axis_angle`` (2.8, 8.4; against the row-layout eager code 1.65,
  6.4), ``axis_angle_to_quat`` (4.1, 5.5), ``quat_to_axis_angle`` (2.3, 7.5),
  ``sixd_to_matrix`` (1.2-1.3, 1.25-4.2; grad 4.3), ``matrix_to_euler`` (1.33, 2.3;
  float32 uses a polynomial atan2), ``quat_multiply`` (21, 95;
  grad 8.2), ``quat_apply`` (26, 210; grad 15: the eager ``linalg.cross`` is not fused)
  and ``euler_to_matrix`` (0.93-1.7, 1.2-1.7 in three runs; grad 1.4: the eager helpers
  composed without the quaternion's ``stack`` and sign fix, 9 lines).

The dedicated formulations reuse the eager private helpers (Shepperd's branch selection,
the quaternion-to-matrix map, the Euler algorithm) and follow the eager semantics with
value checks off: shapes and conventions are checked (``ValueError``), values are not
(NaN/inf propagate to the output, matrices are taken as rotations, quaternions as
non-zero). Their gradients are the eager ones (one-sided at w = 0, the projection's
derivative for matrix inputs).
"""

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
from geo3d.rotations._checks import check_pair, check_tensor
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
from geo3d.rotations._quat import _matrix_from_quat_comps, _shepperd, matrix_to_quat, quat_to_matrix
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


def _safe_sqrt(t2: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not NaN) gradient at 0."""
    pos = t2 > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, t2, 1.0)), 0.0)


def _unit_scale(*comps: torch.Tensor) -> list[torch.Tensor]:
    """The components of scale-invariant rows divided by each row's largest ``|component|``
    (rows of zeros kept): their squared norms (``|q|`` of 1e20 in float32, 1e160 in
    float64, or subnormal) then neither overflow nor underflow, as in the eager functions.
    Pointwise only (maxima of components, one reciprocal per row), so that inductor fuses
    it into the conversion's loop; tiny rows are first multiplied by the exact power of
    two 2^64 so that the reciprocal stays finite."""
    m = comps[0].abs()
    for c in comps[1:]:
        m = torch.maximum(m, c.abs())
    pre = torch.where(m < 2.0**-64, 2.0**64, 1.0)
    mm = m * pre
    r = torch.where(mm > 0, 1.0 / torch.where(mm > 0, mm, 1.0), 1.0)
    return [(c * pre) * r for c in comps]  # pre * r itself would overflow for tiny rows


def _rotvec_from_quat_comps(w, x, y, z) -> torch.Tensor:
    """Rotation vectors from (not necessarily unit) quaternion components, as
    :func:`quat_to_axis_angle`: ``u sign(w) 2 atan2(|u|, |w|)/|u|``, scale invariant;
    ``|w| = w sign(w)`` with ``sign(±0) = ±1`` (the eager one-sided derivative at w = 0)."""
    n = _safe_sqrt(x * x + y * y + z * z)
    sgn = torch.copysign(torch.ones_like(w), w)
    f = half_angle_over_sin(n, w * sgn) * sgn
    return torch.stack((x * f, y * f, z * f), dim=-1)


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
    return _rotvec_from_quat_comps(*_unit_scale(*q.unbind(-1)))


def _f_sixd_to_matrix(x: torch.Tensor) -> torch.Tensor:
    check_tensor("x", x, (6,))
    ax, ay, az, cx, cy, cz = x.unbind(-1)
    ax, ay, az = _unit_scale(ax, ay, az)
    cx, cy, cz = _unit_scale(cx, cy, cz)
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


def _f_euler_to_matrix(angles: torch.Tensor, convention: str) -> torch.Tensor:
    axes, intrinsic = _parse(convention)
    check_tensor("angles", angles, (3,))
    a = angles.unbind(-1)
    q = _elementary(axes[0], a[0])
    for i in (1, 2):
        e = _elementary(axes[i], a[i])
        q = _qmul(q, e) if intrinsic else _qmul(e, q)
    return _matrix_from_quat_comps(*q, 2.0)


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
    check_pair("p", p, 1, "q", q, 1)
    pw, px, py, pz = p.unbind(-1)
    qw, qx, qy, qz = q.unbind(-1)
    return torch.stack(_qmul([pw, px, py, pz], [qw, qx, qy, qz]), dim=-1)


def _f_quat_apply(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    check_tensor("q", q, (4,))
    check_tensor("v", v, (3,))
    check_pair("q", q, 1, "v", v, 1)
    w, x, y, z = _unit_scale(*q.unbind(-1))
    vx, vy, vz = v.unbind(-1)
    s = 2.0 / ((w * w + x * x) + (y * y + z * z))
    # t = u × v, v' = v + s (w t + u × t)
    tx, ty, tz = y * vz - z * vy, z * vx - x * vz, x * vy - y * vx
    ox = vx + s * (w * tx + (y * tz - z * ty))
    oy = vy + s * (w * ty + (z * tx - x * tz))
    oz = vz + s * (w * tz + (x * ty - y * tx))
    return torch.stack((ox, oy, oz), dim=-1)


_IMPLS: dict[str, Callable] = {
    "quat_to_matrix": quat_to_matrix,  # the eager function
    "matrix_to_quat": matrix_to_quat,  # the eager function
    "axis_angle_to_matrix": axis_angle_to_matrix,  # the eager function
    "matrix_to_axis_angle": _f_matrix_to_axis_angle,
    "axis_angle_to_quat": _f_axis_angle_to_quat,
    "quat_to_axis_angle": _f_quat_to_axis_angle,
    "sixd_to_matrix": _f_sixd_to_matrix,
    "matrix_to_sixd": matrix_to_sixd,  # the eager function
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


#: two-tensor functions: (first, tail), (second, tail), checked before any back end runs
#: (a mismatch must raise ValueError, not fail a compile and switch the back end off)
_PAIRS = {"quat_multiply": (("p", 4), ("q", 4)), "quat_apply": (("q", 4), ("v", 3))}


def _check_pair_args(name: str, signature: inspect.Signature, args: tuple, kwargs: dict):
    if name not in _PAIRS:
        return
    (a, ta), (b, tb) = _PAIRS[name]
    bound = signature.bind(*args, **kwargs)
    x, y = bound.arguments[a], bound.arguments[b]
    check_tensor(a, x, (ta,))
    check_tensor(b, y, (tb,))
    check_pair(a, x, 1, b, y, 1)


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
      0.5-2.4x the time of a copy of the same bytes at 1e6 rotations
      (``benchmarks/rotations.py``; the spread is between machines, see the README) and use ``torch.get_num_threads()`` threads (results
      do not depend on the thread count);
    * everything else (float64, CUDA, inputs that require grad) goes to ``torch.compile``
      kernels (of the eager function where that is as fast, of a scalar-component
      formulation of the same maths otherwise; see this module's docstring), compiled on
      first use and cached (per convention for the Euler functions). The first shape gets
      a specialised kernel; after a second shape torch.compile switches to a
      dynamic-shape kernel, so varying batch sizes do not recompile endlessly.

    Semantics: those of the eager function with value checks off
    (:func:`geo3d.rotations.set_value_checks`), on both back ends. Shapes and Euler
    conventions are checked (``ValueError``, as in eager); values are not: matrices are
    taken as rotations (no nearest-rotation projection, no ``det`` check), quaternions as
    non-zero, 6D inputs as non-degenerate; a row with NaN/inf gives a meaningless
    (usually NaN) row and leaves the other rows alone; the fused ``matrix_to_euler``
    never warns about gimbal lock. Gradients (compiled back end) are the eager ones.
    Results agree with the eager functions to a few ulps in float64 and to float32
    rounding (≲ 2e-6 relative, angles near gimbal lock aside) in float32.

    If a back end is unavailable (no C compiler, unsupported platform), a
    ``RuntimeWarning`` says so once and the next one is used: native, then compiled, then
    the eager function. ``GEO3D_NATIVE=0`` switches the C kernels off.

    Args:
        name: one of :data:`FUSED_FUNCTIONS`.

    Returns:
        A callable with the same signature as ``geo3d.rotations.<name>``.

    Raises:
        ValueError: unknown ``name``; (when called) bad shapes or conventions.

    Example:
        >>> R = fused("quat_to_matrix")(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        >>> R.shape
        torch.Size([1, 3, 3])
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
            _check_pair_args(name, signature, args, kwargs)
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
