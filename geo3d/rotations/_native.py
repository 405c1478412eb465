"""Native float32 CPU kernels behind :func:`geo3d.rotations.fused` (private).

``_native.c`` holds vectorised C loops for the single-input conversions. They are built
on first use with the system C compiler (``$CC``, default ``cc``; ``-O3 -march=native``),
cached under ``$GEO3D_CACHE_DIR`` (default ``~/.cache/geo3d``) keyed by a hash of the
source, flags, compiler and CPU, and loaded with :mod:`ctypes`. Why they exist, and not
only the ``torch.compile`` kernels: inductor moves the interleaved components (rows of 3,
4, 6 or 9 floats) one scalar at a time, which made the fused float32 path 1.6-2.6x slower
than a copy of the same bytes; GCC vectorises the same de-interleaving with permutes.

They serve float32 CPU tensors that need no gradient (no autograd graph is built); every
other call goes to the compiled kernels. ``GEO3D_NATIVE=0`` switches them off. If the
build fails (no compiler, unsupported platform) a ``RuntimeWarning`` says why, once, and
the compiled kernels are used.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import math
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["KERNELS", "SEQUENCES", "applies", "disabled", "enabled", "library", "run"]

_SRC = Path(__file__).with_name("_native.c")
_ABI = 1
_FLAGS = (
    "-O3",
    "-march=native",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fPIC",
    "-shared",
    "-pthread",
)

# name -> (kernel id, input row shape, output row shape); ids as in _native.c's enum.
# quat_to_matrix_normalize is quat_to_matrix(q, normalize=True).
KERNELS: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "quat_to_matrix": (0, (4,), (3, 3)),
    "matrix_to_quat": (1, (3, 3), (4,)),
    "axis_angle_to_matrix": (2, (3,), (3, 3)),
    "matrix_to_axis_angle": (3, (3, 3), (3,)),
    "axis_angle_to_quat": (4, (3,), (4,)),
    "quat_to_axis_angle": (5, (4,), (3,)),
    "sixd_to_matrix": (6, (6,), (3, 3)),
    "quat_to_matrix_normalize": (7, (4,), (3, 3)),
    "euler_to_matrix": (8, (3,), (3, 3)),  # + convention index
    "matrix_to_euler": (32, (3, 3), (3,)),  # + convention index
}
# the axis sequences in _native.c's order; convention index = 2 * position + intrinsic
SEQUENCES = ("xyz", "xzy", "yxz", "yzx", "zxy", "zyx",
             "xyx", "xzx", "yxy", "yzy", "zxz", "zyz")  # fmt: skip

_log = logging.getLogger(__name__)
_LOCK = threading.Lock()
_STATE: dict = {"lib": None, "error": None, "warned": False, "off": 0}


def enabled() -> bool:
    """False when ``GEO3D_NATIVE`` is ``0``/``false``/``off``/``no`` or inside
    :func:`disabled`."""
    if _STATE["off"]:
        return False
    return os.environ.get("GEO3D_NATIVE", "1").strip().lower() not in ("0", "false", "off", "no")


@contextlib.contextmanager
def disabled():
    """Route fused calls to the compiled kernels while active (benchmarks, tests)."""
    with _LOCK:
        _STATE["off"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _STATE["off"] -= 1


def _cache_dir() -> Path:
    root = os.environ.get("GEO3D_CACHE_DIR")
    if root:
        return Path(root) / "native"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg or Path.home() / ".cache") / "geo3d" / "native"


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the machine and the CPU's feature flags."""
    sig = [platform.machine(), platform.system()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    sig.append(line.strip())
                if len(sig) >= 4:
                    break
    except OSError:
        sig.append(platform.processor())
    return "\n".join(sig)


def _compiler() -> list[str]:
    return (os.environ.get("CC") or "cc").split()


def _build() -> ctypes.CDLL:
    """Compile (or find in the cache) and load the kernels. If the compiler fails, it is
    tried once more without -march=native (which some compilers and targets lack)."""
    cc = _compiler()
    version = subprocess.run(
        [*cc, "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    generic = tuple(f for f in _FLAGS if f != "-march=native")
    try:
        return _build_with(cc, version, _FLAGS)
    except RuntimeError:  # the compiler failed: once more, for the generic target
        return _build_with(cc, version, generic)


def _build_with(cc: list[str], version: str, flags: tuple[str, ...]) -> ctypes.CDLL:
    source = _SRC.read_bytes()
    key = hashlib.sha256(
        b"\0".join(
            [source, " ".join(flags).encode(), version.encode(), _cpu_signature().encode()]
        )
    ).hexdigest()[:20]
    out_dir = _cache_dir()
    path = out_dir / f"rotations_f32_{key}.so"
    if not path.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", prefix=".build-", dir=out_dir)
        os.close(fd)
        _log.info("geo3d.rotations: compiling the native kernels into %s (once, ~15 s)", path)
        try:
            proc = subprocess.run(
                [*cc, *flags, "-o", tmp, str(_SRC), "-lm"],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if proc.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(cc)} {' '.join(flags)} exited with {proc.returncode}: "
                    f"{proc.stderr.strip()[-800:]}"
                )
            os.replace(tmp, path)  # atomic: concurrent builders all end with one file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(path))
    if lib.geo3d_abi_version() != _ABI:
        raise RuntimeError(f"{path}: ABI {lib.geo3d_abi_version()}, expected {_ABI}")
    fn = lib.geo3d_rot_f32
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    fn.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first use; None if unavailable (the reason is
    warned once, as a ``RuntimeWarning``)."""
    lib = _STATE["lib"]
    if lib is not None or _STATE["error"] is not None:
        return lib
    with _LOCK:
        if _STATE["lib"] is None and _STATE["error"] is None:
            try:
                _STATE["lib"] = _build()
            except Exception as err:  # no compiler, read-only cache, unsupported platform
                _STATE["error"] = f"{type(err).__name__}: {err}"
        if _STATE["error"] is not None and not _STATE["warned"]:
            _STATE["warned"] = True
            warnings.warn(
                f"geo3d.rotations: native float32 kernels unavailable ({_STATE['error']}); "
                "fused float32 calls use torch.compile",
                RuntimeWarning,
                stacklevel=3,
            )
    return _STATE["lib"]


def applies(name: str, x: torch.Tensor) -> bool:
    """Whether the native kernel serves this call: a float32 CPU tensor needing no
    gradient, outside ``torch.compile`` tracing, with the kernels enabled and built."""
    return (
        name in KERNELS
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and not (x.requires_grad and torch.is_grad_enabled())
        and not torch.compiler.is_compiling()
        and enabled()
        and library() is not None
    )


def convention_index(convention: str) -> int:
    """Index of a valid (already parsed) Euler convention in the kernels' table."""
    return 2 * SEQUENCES.index(convention.lower()) + int(convention.isupper())


def run(name: str, x: torch.Tensor, convention: str | None = None) -> torch.Tensor:
    """Apply kernel ``name`` to ``x`` (shape already checked; :func:`applies` true)."""
    kid, in_shape, out_shape = KERNELS[name]
    if convention is not None:
        kid += convention_index(convention)
    batch = x.shape[: x.dim() - len(in_shape)]
    x = x.detach().contiguous()
    out = torch.empty((*batch, *out_shape), dtype=torch.float32)
    n = x.numel() // math.prod(in_shape)
    if n:
        rc = library().geo3d_rot_f32(
            kid, x.data_ptr(), out.data_ptr(), n, torch.get_num_threads()
        )
        if rc != 0:  # pragma: no cover - ids come from KERNELS
            raise RuntimeError(f"geo3d native kernel {name} ({kid}) returned {rc}")
    return out

