"""Motions: AMASS ``.npz`` files and seeded synthetic SMPL motions.

AMASS (Mahmood et al., "AMASS: Archive of Motion Capture as Surface Shapes", ICCV 2019,
arXiv:1904.03278) publishes one ``.npz`` per sequence with ``poses (T, 156)`` (SMPL+H:
root 3 + body 63 + hands 90, axis-angle, radians), ``(T, 165)`` (the SMPL-X release: root 3 +
body 63 + jaw 3 + eyes 6 + hands 90) or ``(T, 72)`` (SMPL), ``betas (16,)`` or ``(10,)``,
``trans (T, 3)`` metres, ``gender`` (a string array, ``b"male"`` bytes in older files) and
``mocap_framerate`` (``mocap_frame_rate`` in the SMPL-X release); ``dmpls (T, 8)`` may be
present. In all three layouts the first 22 joints (root and body, ``poses[:, :66]``) are
SMPL's first 22 joints; :meth:`Motion.smpl_poses` takes those.

Synthetic motions use SMPL's 24 joints. Each joint's local rotation is
``R = Rx(a) Ry(b) Rz(c)`` (SMPL axes: x to the subject's left, y up, z forward) with the
angles ``(a, b, c)`` inside per-joint limits (:data:`JOINT_LIMITS`, radians, approximate
anatomical ranges of motion). The in-distribution set animates walking, running, sitting,
squatting, reaching, waving and bending within the limits; the out-of-distribution set
holds poses at and near the limits, in the spirit of the joint-angle-limit data of
Akhter & Black, "Pose-Conditioned Joint Angle Limits for 3D Human Pose Reconstruction",
CVPR 2015 (PosePrior).
"""

from __future__ import annotations

import math
import numbers
import os
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo3d.body._safe_io import UnsafePickleError, atomic_save_npz, safe_load_npz
from geo3d.rotations import matrix_to_axis_angle

__all__ = [
    "Motion",
    "read_amass",
    "find_amass_files",
    "write_amass",
    "JOINT_LIMITS",
    "MOTION_KINDS",
    "euler_xyz_to_matrix",
    "synthetic_motion",
    "synthetic_motions",
    "extreme_poses",
]


_GENDERS = ("neutral", "female", "male")


def _number(name: str, value: Any, what: str, ok: Any) -> float:
    """``value`` as a float when it is a real number (not a bool) with ``ok(value)``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    v = float(value)
    if not ok(v):  # NaN fails every comparison
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return v


def _check_framerate(framerate: Any, name: str = "framerate") -> float:
    return _number(name, framerate, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)


@dataclass
class Motion:
    """A motion sequence in AMASS's layout.

    Attributes:
        poses: :math:`(T, 3 J)` axis-angle, root first: 72 SMPL (24 joints), 156 SMPL+H (52),
            165 SMPL-X (55: 22 body, jaw, two eyes, 2 x 15 hand joints).
        trans: :math:`(T, 3)` metres.
        betas: :math:`(K,)` shape coefficients.
        gender: ``"neutral"``, ``"female"`` or ``"male"``.
        framerate: frames per second (finite, > 0).
        extra: other arrays of the file (e.g. ``dmpls``), written back unchanged.
        label: what generated it (synthetic motions), informational.

    Raises:
        ValueError: a tensor is not floating or not finite, a shape does not fit, ``gender``
            is not one of the three names or ``framerate`` is not a finite number > 0.
    """

    poses: torch.Tensor
    trans: torch.Tensor
    betas: torch.Tensor
    gender: str = "neutral"
    framerate: float = 30.0
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        for name in ("poses", "trans", "betas"):
            v = getattr(self, name)
            if not isinstance(v, torch.Tensor) or not v.is_floating_point():
                got = f"{v.dtype} tensor" if isinstance(v, torch.Tensor) else type(v).__name__
                raise ValueError(f"{name}: expected a floating tensor, got {got}")
            if not torch.isfinite(v).all():
                raise ValueError(f"{name}: expected finite values, got NaN or inf")
        if self.poses.dim() != 2 or self.poses.shape[1] % 3 or self.poses.shape[1] < 3:
            raise ValueError(f"poses: expected shape (T, 3 J), got {tuple(self.poses.shape)}")
        T = self.poses.shape[0]
        if self.trans.shape != (T, 3):
            raise ValueError(f"trans: expected shape ({T}, 3), got {tuple(self.trans.shape)}")
        if self.betas.dim() != 1:
            raise ValueError(f"betas: expected shape (K,), got {tuple(self.betas.shape)}")
        if self.gender not in _GENDERS:
            raise ValueError(f"gender: expected one of {', '.join(_GENDERS)}, got {self.gender!r}")
        _check_framerate(self.framerate)

    @property
    def num_frames(self) -> int:
        return self.poses.shape[0]

    def smpl_poses(self) -> torch.Tensor:
        """The 24 SMPL joints' axis-angles :math:`(T, 72)`.

        ``(T, 72)`` poses are returned as they are. Otherwise (SMPL+H 156, SMPL-X 165, any
        SMPL-family layout with at least 22 joints) the root and 21 body joints
        ``poses[:, :66]`` are kept (the same joints in the same order as SMPL's first 22) and
        SMPL's two hand joints (22, 23) are set to zero: SMPL+H/SMPL-X have no separate SMPL
        hand joint, and their jaw, eye and finger joints are dropped.

        Raises:
            ValueError: ``poses`` has fewer than 22 joints and is not ``(T, 72)``.
        """
        if self.poses.shape[1] == 72:
            return self.poses
        if self.poses.shape[1] < 66:
            raise ValueError(
                f"poses: expected (T, 72) or at least 22 joints (T, >= 66), got "
                f"{tuple(self.poses.shape)}"
            )
        body = self.poses[:, :66]
        return torch.cat([body, body.new_zeros(self.num_frames, 6)], dim=1)


def _gender(value: Any, p: Path) -> str:
    a = np.asarray(value)
    if a.size != 1:
        raise ValueError(f"gender: expected one string, got an array of shape {a.shape} in {p}")
    v = a.reshape(-1)[0]
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, bytes):
        v = v.decode("latin1")
    g = str(v).strip().lower()
    if not isinstance(v, str) or g not in _GENDERS:
        raise ValueError(f"gender: expected one of {', '.join(_GENDERS)}, got {v!r} in {p}")
    return g


def _framerate(value: Any, key: str, p: Path) -> float:
    a = np.asarray(value)
    if a.size != 1:
        raise ValueError(
            f"{key}: expected a number or a one-element array, got an array of shape "
            f"{a.shape} in {p}"
        )
    v = a.reshape(-1)[0]
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{key}: expected a number, got {v!r} in {p}")
    rate = float(v)
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"{key}: expected a finite number > 0, got {rate} in {p}")
    return rate


def _float_array(value: Any, key: str, p: Path) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype.kind == "O" and all(
        isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) for x in a.flat
    ):
        a = a.astype(np.float64)  # a (safely unpickled) object array of numbers
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{key}: expected a numeric array, got dtype {a.dtype} in {p}")
    return a.astype(np.float64)


# What zipfile/numpy raise on a damaged archive (fuzzed: flipped, cut and zeroed bytes), e.g.
# NotImplementedError("zip file version 23.6") for a damaged central directory.
_DAMAGED_ZIP_ERRORS = (
    ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, IndexError,
    NotImplementedError, RuntimeError, TypeError, struct.error, OverflowError,
)  # fmt: skip


def read_amass(path: str | os.PathLike, dtype: torch.dtype = torch.float64) -> Motion:
    """Read an AMASS sequence ``.npz`` (SMPL, SMPL+H or SMPL-X release).

    No pickle is run: object arrays (e.g. a ``gender`` stored as a Python string, or the
    SMPL-X release's ``markers_latent_vids``) are read with the restricted unpickler of
    :func:`geo3d.body._safe_io.safe_load_npz`.

    ``poses`` is kept as stored, ``(T, 72)``, ``(T, 156)`` or ``(T, 165)`` (any ``(T, 3 J)``);
    :meth:`Motion.smpl_poses` gives SMPL's 24 joints from any of them. ``betas`` may be
    stored as ``(K,)`` or ``(1, K)``. ``gender`` (string or bytes, e.g. ``b"male"``; case and
    surrounding blanks are ignored) must be ``neutral``, ``female`` or ``male``; absent, it is
    ``"neutral"``. ``mocap_framerate`` (or ``mocap_frame_rate``) may be a number or a
    one-element array; absent, it is 30. Other plain arrays go to :attr:`Motion.extra`;
    other objects (pickled dicts, object arrays) are left out.

    Args:
        path: the ``.npz`` file (e.g. ``CMU/01/01_01_poses.npz``).
        dtype: floating torch dtype of the returned tensors.

    Returns:
        :class:`Motion`.

    Raises:
        FileNotFoundError: no such file.
        PermissionError: the file cannot be opened.
        ValueError: ``dtype`` is not a floating dtype; the file is not a readable ``.npz``
            archive (truncated or damaged zip, a ``.npy`` or text file, a member that does not
            parse, an object array naming a global outside the allow-list); a required key
            (``poses``, ``trans``, ``betas``) is missing or not numeric; a shape does not fit
            (``poses`` with no frame, ``betas`` of more than one row);
            a value is not finite; ``gender`` is not one of the three names; the framerate is
            not a finite number > 0 (or is an array of several values). All name the file.

    Example:
        >>> import tempfile, os
        >>> m = synthetic_motion("walking", 10, generator=torch.Generator().manual_seed(0))
        >>> p = write_amass(os.path.join(tempfile.mkdtemp(), "w.npz"), m)
        >>> read_amass(p).poses.shape
        torch.Size([10, 72])
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating torch dtype, got {dtype!r}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"AMASS file not found: {p}")
    with open(p, "rb") as fh:  # a PermissionError is raised as it is
        is_zip = zipfile.is_zipfile(fh)
    if not is_zip:
        raise ValueError(
            f"path: expected a readable AMASS .npz archive, got {p}, which is not a zip "
            "archive (truncated or damaged, or another format such as .npy)"
        )
    try:
        data = safe_load_npz(p)
    except UnsafePickleError as err:
        raise ValueError(f"path: expected an AMASS .npz without unsafe pickles, got {p} "
                         f"({err})") from err
    except _DAMAGED_ZIP_ERRORS as err:
        raise ValueError(
            f"path: expected a readable AMASS .npz archive, got {p}, which is damaged "
            f"({type(err).__name__}: {err})"
        ) from err
    missing = [k for k in ("poses", "trans", "betas") if k not in data]
    if missing:
        raise ValueError(
            f"{p}: expected AMASS keys poses, trans, betas, missing {', '.join(missing)}"
        )
    rate_key = "mocap_framerate" if "mocap_framerate" in data else "mocap_frame_rate"
    rate = _framerate(data[rate_key], rate_key, p) if rate_key in data else 30.0
    gender = _gender(data["gender"], p) if "gender" in data else "neutral"
    poses, trans, betas = (_float_array(data[k], k, p) for k in ("poses", "trans", "betas"))
    if poses.ndim >= 1 and poses.shape[0] == 0:
        raise ValueError(f"poses: expected at least one frame, got shape {poses.shape} in {p}")
    if betas.ndim > 1 and math.prod(betas.shape[:-1]) != 1:
        raise ValueError(f"betas: expected shape (K,) or (1, K), got {betas.shape} in {p}")
    known = {"poses", "trans", "betas", "gender", "mocap_framerate", "mocap_frame_rate"}
    extra = {}
    for k, v in data.items():
        if k in known:
            continue
        if isinstance(v, (str, bytes)):
            v = np.asarray(v)
        if isinstance(v, np.ndarray) and v.dtype != object:
            extra[k] = v
    try:
        return Motion(
            poses=torch.as_tensor(poses, dtype=dtype),
            trans=torch.as_tensor(trans, dtype=dtype),
            betas=torch.as_tensor(betas, dtype=dtype).reshape(-1),
            gender=gender,
            framerate=rate,
            extra=extra,
        )
    except ValueError as err:
        raise ValueError(f"{err} in {p}") from None


def find_amass_files(root: str | os.PathLike) -> list[Path]:
    """The motion files of a local AMASS subset: every ``.npz`` under ``root`` (recursively,
    sorted) that holds ``poses`` (AMASS's per-subject ``shape.npz`` files hold none).

    Only each file's zip directory is read (fast on the full AMASS). A file whose directory
    cannot be read (truncated or damaged zip, a ``.npy`` or text file named ``.npz``, no
    permission) is skipped, and one :class:`UserWarning` names the skipped files and how
    many there were; a listed file whose arrays are damaged is refused by
    :func:`read_amass` (``ValueError`` naming it).

    Args:
        root: a folder such as ``AMASS/CMU``.

    Returns:
        Sorted paths of the ``.npz`` files that hold a ``poses`` array.

    Raises:
        FileNotFoundError: ``root`` is not a folder.

    Warns:
        UserWarning: some ``.npz`` files could not be read (skipped).

    Example:
        >>> import tempfile
        >>> find_amass_files(tempfile.mkdtemp())
        []
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"AMASS folder not found: {r}")
    out: list[Path] = []
    skipped: list[str] = []
    for p in sorted(r.rglob("*.npz")):
        if not p.is_file():
            continue
        try:
            with zipfile.ZipFile(p) as zf:
                names = set(zf.namelist())
        except _DAMAGED_ZIP_ERRORS as err:
            skipped.append(f"{p} ({type(err).__name__}: {err})")
            continue
        if "poses.npy" in names:
            out.append(p)
    if skipped:
        listed = "; ".join(skipped[:10]) + (f"; and {len(skipped) - 10} more"
                                              if len(skipped) > 10 else "")
        warnings.warn(
            f"find_amass_files: skipped {len(skipped)} unreadable .npz file(s) under {r}: "
            f"{listed}",
            stacklevel=2,
        )
    return out


def write_amass(path: str | os.PathLike, motion: Motion) -> Path:
    """Write a :class:`Motion` as an AMASS-style ``.npz`` (atomic; float64 arrays,
    ``gender`` as a string array, ``mocap_framerate``). ``motion.extra`` is written too;
    an extra array named like one of these keys does not replace them.

    Args:
        path: output file (its name is kept as given).
        motion: the sequence.

    Returns:
        The path.

    Raises:
        ValueError: ``motion`` is not a :class:`Motion`, or an extra array has
            ``dtype=object``.
        IsADirectoryError: ``path`` is an existing folder.
    """
    if not isinstance(motion, Motion):
        raise ValueError(f"motion: expected a Motion, got {type(motion).__name__}")
    arrays = {
        **motion.extra,
        "poses": motion.poses.detach().cpu().double().numpy(),
        "trans": motion.trans.detach().cpu().double().numpy(),
        "betas": motion.betas.detach().cpu().double().numpy(),
        "gender": np.asarray(motion.gender),
        "mocap_framerate": np.asarray(float(motion.framerate)),
    }
    return atomic_save_npz(path, arrays)


# Joint limits (radians) on the angles (a, b, c) of R = Rx(a) Ry(b) Rz(c), SMPL axes.
# Left-side limits mirror to the right with b, c negated (x -> -x reflection).
_LEFT_LIMITS = {
    "hip": ((-2.1, 0.5), (-0.7, 0.7), (-0.5, 0.9)),  # flexion is a < 0 (thigh forward)
    "knee": ((0.0, 2.4), (-0.1, 0.1), (-0.1, 0.1)),  # flexion a > 0 (shin backward)
    "ankle": ((-0.35, 0.8), (-0.3, 0.3), (-0.35, 0.35)),
    "foot": ((-0.5, 0.5), (-0.1, 0.1), (-0.1, 0.1)),
    "collar": ((-0.3, 0.3), (-0.3, 0.3), (-0.35, 0.35)),
    "shoulder": ((-1.6, 1.6), (-1.6, 0.9), (-1.5, 1.3)),  # c = -pi/2: arm down (left)
    "elbow": ((-0.1, 0.1), (-2.5, 0.0), (-0.1, 0.1)),  # flexion b < 0 (left forearm forward)
    "wrist": ((-1.2, 1.2), (-0.4, 0.4), (-1.2, 1.2)),
    "hand": ((-0.3, 0.3), (-0.2, 0.2), (-0.5, 0.5)),
}
_CENTRE_LIMITS = {
    "pelvis": ((-math.pi, math.pi), (-math.pi, math.pi), (-math.pi, math.pi)),
    "spine1": ((-0.3, 0.7), (-0.35, 0.35), (-0.3, 0.3)),
    "spine2": ((-0.2, 0.5), (-0.3, 0.3), (-0.25, 0.25)),
    "spine3": ((-0.2, 0.4), (-0.3, 0.3), (-0.25, 0.25)),
    "neck": ((-0.5, 0.6), (-0.6, 0.6), (-0.4, 0.4)),
    "head": ((-0.4, 0.5), (-0.5, 0.5), (-0.3, 0.3)),
}


def _joint_limits() -> torch.Tensor:
    from geo3d.body._kinematics import SMPL_JOINT_NAMES

    lim = torch.zeros(24, 3, 2, dtype=torch.float64)
    for j, name in enumerate(SMPL_JOINT_NAMES):
        if name.startswith(("left_", "right_")):
            side, part = name.split("_", 1)
            ranges = _LEFT_LIMITS[part]
            for k, (lo, hi) in enumerate(ranges):
                if side == "right" and k > 0:
                    lo, hi = -hi, -lo
                lim[j, k] = torch.tensor([lo, hi])
        else:
            lim[j] = torch.tensor(_CENTRE_LIMITS[name])
    return lim


#: ``(24, 3, 2)`` lower/upper limits of the angles ``(a, b, c)`` of ``Rx(a) Ry(b) Rz(c)``.
JOINT_LIMITS: torch.Tensor = _joint_limits()

MOTION_KINDS = ("walking", "running", "sitting", "squatting", "reaching", "waving", "bending")


def euler_xyz_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """``Rx(a) Ry(b) Rz(c)`` from angles ``(a, b, c)`` (radians), shape :math:`(*, 3)` ->
    :math:`(*, 3, 3)`. Equals scipy's ``Rotation.from_euler("XYZ", ...)`` (intrinsic).

    Raises:
        ValueError: ``angles`` is not a floating tensor of shape :math:`(*, 3)`.

    Example:
        >>> euler_xyz_to_matrix(torch.zeros(3, dtype=torch.float64)).diagonal().tolist()
        [1.0, 1.0, 1.0]
    """
    if not isinstance(angles, torch.Tensor) or not angles.is_floating_point():
        got = f"{angles.dtype} tensor" if isinstance(angles, torch.Tensor) else type(angles).__name__
        raise ValueError(f"angles: expected a floating tensor, got {got}")
    if angles.dim() < 1 or angles.shape[-1] != 3:
        raise ValueError(f"angles: expected shape (*, 3), got {tuple(angles.shape)}")
    a, b, c = angles.unbind(-1)

    def rot(t: torch.Tensor, i: int, j: int) -> torch.Tensor:
        R = torch.zeros(*t.shape, 3, 3, dtype=t.dtype, device=t.device)
        k = 3 - i - j
        R[..., k, k] = 1
        R[..., i, i] = torch.cos(t)
        R[..., j, j] = torch.cos(t)
        R[..., i, j] = -torch.sin(t)
        R[..., j, i] = torch.sin(t)
        return R

    return rot(a, 1, 2) @ rot(b, 2, 0) @ rot(c, 0, 1)


def _uniform(
    generator: torch.Generator | None, *shape: int, lo: float = 0.0, hi: float = 1.0
) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=generator, dtype=torch.float64)


def _check_frames(num_frames: int, name: str = "num_frames") -> None:
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"{name}: expected a positive int, got {num_frames!r}")


def _check_generator(generator: Any) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator: expected a torch.Generator or None, got {type(generator).__name__}"
        )
    if generator.device.type != "cpu":
        raise ValueError(
            f"generator: expected a CPU torch.Generator (motions are drawn on the CPU), got "
            f"one on {generator.device}"
        )


def _check_kind(kind: Any) -> None:
    if not isinstance(kind, str) or kind not in MOTION_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(MOTION_KINDS)}, got {kind!r}")


def _check_noise(noise: Any) -> float:
    return _number("noise", noise, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


def synthetic_motion(
    kind: str,
    num_frames: int = 60,
    *,
    framerate: float = 30.0,
    generator: torch.Generator | None = None,
    noise: float = 0.03,
) -> Motion:
    """One seeded synthetic SMPL motion of a given kind, inside :data:`JOINT_LIMITS`.

    Amplitudes, speed, phase, heading and a small per-joint jitter (``noise`` rad) are drawn
    from ``generator``; the angles are clamped to the joint limits, so every frame is a
    natural pose. ``walking``/``running`` translate the root along the heading.

    Args:
        kind: one of :data:`MOTION_KINDS`.
        num_frames: ``T``.
        framerate: frames per second.
        generator: source of randomness (seeded for reproducibility).
        noise: standard deviation of the per-joint angle jitter (radians).

    Returns:
        :class:`Motion` with ``poses (T, 72)``, ``trans (T, 3)``, ``betas (10,)`` zero, and
        ``extra["euler"] (T, 24, 3)`` holding the joint angles.

    Raises:
        ValueError: unknown ``kind``; ``num_frames`` not a positive int; ``framerate`` not a
            finite number > 0; ``noise`` not a finite number >= 0; ``generator`` not a CPU
            :class:`torch.Generator` or ``None``.

    Example:
        >>> m = synthetic_motion("waving", 8, generator=torch.Generator().manual_seed(0))
        >>> m.poses.shape, m.label
        (torch.Size([8, 72]), 'waving')
    """
    _check_kind(kind)
    _check_frames(num_frames)
    framerate = _check_framerate(framerate)
    noise = _check_noise(noise)
    _check_generator(generator)
    g = generator
    T = num_frames
    t = torch.arange(T, dtype=torch.float64) / framerate
    ang = torch.zeros(T, 24, 3, dtype=torch.float64)
    amp = float(_uniform(g, 1, lo=0.75, hi=1.1))
    phase = float(_uniform(g, 1, hi=2 * math.pi))
    heading = float(_uniform(g, 1, lo=-math.pi, hi=math.pi))
    # arms hang down by default (shoulder c = -+1.3)
    ang[:, 16, 2], ang[:, 17, 2] = -1.3, 1.3
    trans = torch.zeros(T, 3, dtype=torch.float64)
    ramp = (
        torch.clamp(t / max(t[-1].item(), 1e-9), 0, 1)
        if T > 1
        else torch.ones(1, dtype=torch.float64)
    )
    smooth = 0.5 - 0.5 * torch.cos(math.pi * ramp)  # 0 -> 1 over the sequence
    if kind in ("walking", "running"):
        run = kind == "running"
        freq = float(_uniform(g, 1, lo=1.2, hi=1.6)) * (1.5 if run else 1.0)
        ph = 2 * math.pi * freq * t + phase
        s = torch.sin(ph)
        hip = (0.7 if run else 0.45) * amp
        ang[:, 1, 0], ang[:, 2, 0] = (
            -hip * s - (0.2 if run else 0.05),
            hip * s - (0.2 if run else 0.05),
        )
        knee = (1.4 if run else 0.7) * amp
        ang[:, 4, 0] = knee * torch.clamp(torch.sin(ph - 1.2), min=0) + 0.1
        ang[:, 5, 0] = knee * torch.clamp(torch.sin(ph + math.pi - 1.2), min=0) + 0.1
        ang[:, 7, 0], ang[:, 8, 0] = 0.2 * torch.sin(ph + 0.5), -0.2 * torch.sin(ph + 0.5)
        arm = (0.7 if run else 0.4) * amp
        ang[:, 16, 0], ang[:, 17, 0] = arm * s, -arm * s
        if run:
            ang[:, 18, 1], ang[:, 19, 1] = -1.4, 1.4
            ang[:, 3, 0] = 0.2
        speed = (3.0 if run else 1.3) * amp
        fwd = torch.tensor([math.sin(heading), 0.0, math.cos(heading)], dtype=torch.float64)
        trans = speed * t[:, None] * fwd + torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)
        trans[:, 1] = 0.02 * torch.abs(torch.sin(ph))
    elif kind == "sitting":
        ang[:, 1, 0], ang[:, 2, 0] = -1.55 * amp * smooth, -1.55 * amp * smooth
        ang[:, 4, 0], ang[:, 5, 0] = 1.6 * amp * smooth, 1.6 * amp * smooth
        ang[:, 3, 0] = 0.15 * smooth
        trans[:, 1] = -0.45 * smooth
        trans[:, 2] = -0.2 * smooth
    elif kind == "squatting":
        freq = float(_uniform(g, 1, lo=0.3, hi=0.6))
        s = 0.5 - 0.5 * torch.cos(2 * math.pi * freq * t + phase)
        ang[:, 1, 0], ang[:, 2, 0] = -1.9 * amp * s, -1.9 * amp * s
        ang[:, 4, 0], ang[:, 5, 0] = 2.2 * amp * s, 2.2 * amp * s
        ang[:, 7, 0], ang[:, 8, 0] = -0.3 * s, -0.3 * s
        ang[:, 3, 0] = 0.4 * s
        ang[:, 16, 1], ang[:, 17, 1] = -1.2 * s, 1.2 * s  # arms forward for balance
        trans[:, 1] = -0.55 * amp * s
    elif kind == "reaching":
        side = 1 if float(_uniform(g, 1)) < 0.5 else -1
        sh, el = (16, 18) if side > 0 else (17, 19)
        ang[:, sh, 2] = -side * 1.3 * (1 - smooth) + side * 0.3 * amp * smooth
        ang[:, sh, 1] = -side * 1.2 * amp * smooth
        ang[:, el, 1] = -side * 0.8 * (1 - smooth)
        ang[:, 3, 0] = 0.3 * smooth
        ang[:, 6, 1] = side * 0.25 * smooth
    elif kind == "waving":
        side = 1 if float(_uniform(g, 1)) < 0.5 else -1
        sh, el = (16, 18) if side > 0 else (17, 19)
        freq = float(_uniform(g, 1, lo=1.5, hi=2.5))
        ang[:, sh, 2] = side * 0.9 * amp
        ang[:, el, 1] = -side * (1.2 + 0.4 * torch.sin(2 * math.pi * freq * t + phase))
        ang[:, 15, 1] = side * 0.2
    elif kind == "bending":
        freq = float(_uniform(g, 1, lo=0.2, hi=0.5))
        s = 0.5 - 0.5 * torch.cos(2 * math.pi * freq * t + phase)
        for j, a in ((3, 0.6), (6, 0.45), (9, 0.35)):
            ang[:, j, 0] = a * amp * s
        ang[:, 1, 0], ang[:, 2, 0] = -0.9 * amp * s, -0.9 * amp * s
        ang[:, 12, 0] = 0.2 * s
    ang = ang + noise * torch.randn(T, 24, 3, generator=g, dtype=torch.float64)
    lim = JOINT_LIMITS
    ang = torch.minimum(torch.maximum(ang, lim[:, :, 0]), lim[:, :, 1])
    ang[:, 0] = torch.tensor([0.0, heading, 0.0], dtype=torch.float64)  # root: heading only
    R = euler_xyz_to_matrix(ang)
    poses = matrix_to_axis_angle(R).reshape(T, 72)
    return Motion(
        poses=poses,
        trans=trans,
        betas=torch.zeros(10, dtype=torch.float64),
        framerate=framerate,
        extra={"euler": ang.numpy()},
        label=kind,
    )


def synthetic_motions(
    num_sequences: int,
    num_frames: int = 60,
    *,
    kinds: tuple[str, ...] = MOTION_KINDS,
    generator: torch.Generator | None = None,
    framerate: float = 30.0,
) -> list[Motion]:
    """The in-distribution set: ``num_sequences`` motions cycling through ``kinds``.

    Args:
        num_sequences: how many motions (``>= 0``).
        num_frames: ``T`` of each.
        kinds: names from :data:`MOTION_KINDS` (at least one), used in turn.
        generator: source of randomness, shared by the motions in order.
        framerate: frames per second.

    Returns:
        ``num_sequences`` :class:`Motion` (see :func:`synthetic_motion`).

    Raises:
        ValueError: ``num_sequences`` not a non-negative int; ``kinds`` empty, a single
            string or holding an unknown name; ``num_frames``, ``framerate`` or ``generator``
            bad (as in :func:`synthetic_motion`). Checked even when ``num_sequences`` is 0.

    Example:
        >>> ms = synthetic_motions(7, 5, generator=torch.Generator().manual_seed(0))
        >>> [m.label for m in ms][:3]
        ['walking', 'running', 'sitting']
    """
    if (
        not isinstance(num_sequences, int)
        or isinstance(num_sequences, bool)
        or num_sequences < 0
    ):
        raise ValueError(f"num_sequences: expected a non-negative int, got {num_sequences!r}")
    if isinstance(kinds, (str, bytes)) or not hasattr(kinds, "__iter__"):
        raise ValueError(f"kinds: expected a tuple of names, got {kinds!r}")
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError(f"kinds: expected at least one of {', '.join(MOTION_KINDS)}, got ()")
    for k in kinds:
        if not isinstance(k, str) or k not in MOTION_KINDS:
            raise ValueError(f"kinds: expected names from {', '.join(MOTION_KINDS)}, got {k!r}")
    _check_frames(num_frames)
    framerate = _check_framerate(framerate)
    _check_generator(generator)
    return [
        synthetic_motion(
            kinds[i % len(kinds)], num_frames, framerate=framerate, generator=generator
        )
        for i in range(num_sequences)
    ]


def extreme_poses(
    num_poses: int,
    *,
    margin: float = 0.1,
    fraction_at_limit: float = 0.5,
    generator: torch.Generator | None = None,
) -> Motion:
    """The out-of-distribution set: poses at and near the joint-angle limits.

    For every non-root joint and angle, one end of its range is drawn (fair coin) and the
    angle is placed within ``margin`` of the range's width from that end; with probability
    ``fraction_at_limit`` exactly at it. The root gets a uniformly random rotation.

    Args:
        num_poses: ``T`` (poses are independent frames).
        margin: fraction of each range's width (``0 <= margin <= 0.5``).
        fraction_at_limit: probability that an angle sits exactly at its limit.
        generator: source of randomness.

    Returns:
        :class:`Motion` (``label="extreme"``, ``extra["euler"] (T, 24, 3)``).

    Raises:
        ValueError: ``num_poses`` not a positive int; ``margin`` not a number in
            ``[0, 0.5]``; ``fraction_at_limit`` not a number in ``[0, 1]``; ``generator`` not
            a CPU :class:`torch.Generator` or ``None``.

    Example:
        >>> m = extreme_poses(4, generator=torch.Generator().manual_seed(0))
        >>> m.poses.shape
        torch.Size([4, 72])
    """
    _check_frames(num_poses, "num_poses")
    margin = _number("margin", margin, "a value in [0, 0.5]", lambda v: 0.0 <= v <= 0.5)
    fraction_at_limit = _number(
        "fraction_at_limit", fraction_at_limit, "a value in [0, 1]", lambda v: 0.0 <= v <= 1.0
    )
    _check_generator(generator)
    g = generator
    T = num_poses
    lo, hi = JOINT_LIMITS[..., 0], JOINT_LIMITS[..., 1]
    width = hi - lo
    upper = torch.rand(T, 24, 3, generator=g, dtype=torch.float64) < 0.5
    depth = margin * width * torch.rand(T, 24, 3, generator=g, dtype=torch.float64)
    at = torch.rand(T, 24, 3, generator=g, dtype=torch.float64) < fraction_at_limit
    depth = torch.where(at, torch.zeros_like(depth), depth)
    ang = torch.where(upper, hi - depth, lo + depth)
    R = euler_xyz_to_matrix(ang)
    # root: uniform random rotation from a normalised Gaussian quaternion
    q = torch.randn(T, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R[:, 0] = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(T, 3, 3)  # fmt: skip
    poses = matrix_to_axis_angle(R).reshape(T, 72)
    return Motion(
        poses=poses,
        trans=torch.zeros(T, 3, dtype=torch.float64),
        betas=torch.zeros(10, dtype=torch.float64),
        extra={"euler": ang.numpy()},
        label="extreme",
    )
