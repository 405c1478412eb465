"""Motions: AMASS ``.npz`` files and seeded synthetic SMPL motions.

AMASS (Mahmood et al., "AMASS: Archive of Motion Capture as Surface Shapes", ICCV 2019,
arXiv:1904.03278) publishes one ``.npz`` per sequence with ``poses (T, 156)`` (SMPL+H:
root 3 + body 63 + hands 90, axis-angle, radians) or ``(T, 72)`` (SMPL), ``betas (16,)`` or
``(10,)``, ``trans (T, 3)`` metres, ``gender`` (a string array) and ``mocap_framerate``
(``mocap_frame_rate`` in the SMPL-X release); ``dmpls (T, 8)`` may be present.

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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo3d.body._safe_io import atomic_save_npz
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


@dataclass
class Motion:
    """A motion sequence in AMASS's layout.

    Attributes:
        poses: :math:`(T, 3 J)` axis-angle, root first (72 SMPL, 156 SMPL+H).
        trans: :math:`(T, 3)` metres.
        betas: :math:`(K,)` shape coefficients.
        gender: ``"neutral"``, ``"female"`` or ``"male"``.
        framerate: frames per second.
        extra: other arrays of the file (e.g. ``dmpls``), written back unchanged.
        label: what generated it (synthetic motions), informational.
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
                raise ValueError(f"{name}: expected a floating tensor, got {type(v).__name__}")
            if not torch.isfinite(v).all():
                raise ValueError(f"{name}: expected finite values, got NaN or inf")
        if self.poses.dim() != 2 or self.poses.shape[1] % 3 or self.poses.shape[1] < 3:
            raise ValueError(f"poses: expected shape (T, 3 J), got {tuple(self.poses.shape)}")
        T = self.poses.shape[0]
        if self.trans.shape != (T, 3):
            raise ValueError(f"trans: expected shape ({T}, 3), got {tuple(self.trans.shape)}")
        if self.betas.dim() != 1:
            raise ValueError(f"betas: expected shape (K,), got {tuple(self.betas.shape)}")
        if not (isinstance(self.framerate, (int, float)) and self.framerate > 0):
            raise ValueError(f"framerate: expected a positive number, got {self.framerate!r}")

    @property
    def num_frames(self) -> int:
        return self.poses.shape[0]

    def smpl_poses(self) -> torch.Tensor:
        """The 24 SMPL joints' axis-angles :math:`(T, 72)`: SMPL+H's 22 body joints, hands at
        the SMPL hand joints set to zero (AMASS's SMPL+H has no separate SMPL hand joint)."""
        if self.poses.shape[1] == 72:
            return self.poses
        body = self.poses[:, :66]
        return torch.cat([body, body.new_zeros(self.num_frames, 6)], dim=1)


def _scalar_str(x: Any) -> str:
    a = np.asarray(x)
    v = a.item() if a.ndim == 0 else a.reshape(-1)[0]
    if isinstance(v, bytes):
        v = v.decode("latin1")
    return str(v)


def read_amass(path: str | os.PathLike, dtype: torch.dtype = torch.float64) -> Motion:
    """Read an AMASS sequence ``.npz`` (no pickles are loaded).

    Args:
        path: the ``.npz`` file (e.g. ``CMU/01/01_01_poses.npz``).
        dtype: float dtype of the returned tensors.

    Returns:
        :class:`Motion`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a required key (``poses``, ``trans``, ``betas``) is missing or a shape
            does not fit.

    Example:
        >>> import tempfile, os
        >>> m = synthetic_motion("walking", 10, generator=torch.Generator().manual_seed(0))
        >>> p = write_amass(os.path.join(tempfile.mkdtemp(), "w.npz"), m)
        >>> read_amass(p).poses.shape
        torch.Size([10, 72])
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"AMASS file not found: {p}")
    with np.load(p, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    missing = [k for k in ("poses", "trans", "betas") if k not in data]
    if missing:
        raise ValueError(
            f"{p}: expected AMASS keys poses, trans, betas, missing {', '.join(missing)}"
        )
    rate_key = "mocap_framerate" if "mocap_framerate" in data else "mocap_frame_rate"
    rate = float(data[rate_key]) if rate_key in data else 30.0
    gender = _scalar_str(data["gender"]) if "gender" in data else "neutral"
    known = {"poses", "trans", "betas", "gender", "mocap_framerate", "mocap_frame_rate"}
    extra = {k: v for k, v in data.items() if k not in known}
    return Motion(
        poses=torch.as_tensor(np.asarray(data["poses"], dtype=np.float64), dtype=dtype),
        trans=torch.as_tensor(np.asarray(data["trans"], dtype=np.float64), dtype=dtype),
        betas=torch.as_tensor(np.asarray(data["betas"], dtype=np.float64), dtype=dtype).reshape(-1),
        gender=gender,
        framerate=rate,
        extra=extra,
    )


def find_amass_files(root: str | os.PathLike) -> list[Path]:
    """The motion files of a local AMASS subset: every ``.npz`` under ``root`` (recursively,
    sorted) that holds ``poses`` (AMASS's per-subject ``shape.npz`` files hold none).

    Args:
        root: a folder such as ``AMASS/CMU``.

    Returns:
        Sorted paths, each readable with :func:`read_amass`.

    Raises:
        FileNotFoundError: ``root`` is not a folder.

    Example:
        >>> import tempfile
        >>> find_amass_files(tempfile.mkdtemp())
        []
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"AMASS folder not found: {r}")
    out = []
    for p in sorted(r.rglob("*.npz")):
        try:
            with np.load(p, allow_pickle=False) as z:
                if "poses" in z.files:
                    out.append(p)
        except (OSError, ValueError):  # not an npz archive
            continue
    return out


def write_amass(path: str | os.PathLike, motion: Motion) -> Path:
    """Write a :class:`Motion` as an AMASS-style ``.npz`` (atomic; float64 arrays,
    ``gender`` as a string array, ``mocap_framerate``).

    Args:
        path: output file.
        motion: the sequence.

    Returns:
        The path.
    """
    arrays = {
        "poses": motion.poses.detach().cpu().double().numpy(),
        "trans": motion.trans.detach().cpu().double().numpy(),
        "betas": motion.betas.detach().cpu().double().numpy(),
        "gender": np.asarray(motion.gender),
        "mocap_framerate": np.asarray(float(motion.framerate)),
        **motion.extra,
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
    :math:`(*, 3, 3)`. Equals scipy's ``Rotation.from_euler("XYZ", ...)`` (intrinsic)."""
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
        ValueError: unknown ``kind`` or bad ``num_frames``.

    Example:
        >>> m = synthetic_motion("waving", 8, generator=torch.Generator().manual_seed(0))
        >>> m.poses.shape, m.label
        (torch.Size([8, 72]), 'waving')
    """
    if kind not in MOTION_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(MOTION_KINDS)}, got {kind!r}")
    _check_frames(num_frames)
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

    Example:
        >>> ms = synthetic_motions(7, 5, generator=torch.Generator().manual_seed(0))
        >>> [m.label for m in ms][:3]
        ['walking', 'running', 'sitting']
    """
    if not isinstance(num_sequences, int) or num_sequences < 0:
        raise ValueError(f"num_sequences: expected a non-negative int, got {num_sequences!r}")
    for k in kinds:
        if k not in MOTION_KINDS:
            raise ValueError(f"kinds: expected names from {', '.join(MOTION_KINDS)}, got {k!r}")
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
        ValueError: bad ``num_poses``, ``margin`` or ``fraction_at_limit``.

    Example:
        >>> m = extreme_poses(4, generator=torch.Generator().manual_seed(0))
        >>> m.poses.shape
        torch.Size([4, 72])
    """
    _check_frames(num_poses, "num_poses")
    if not 0.0 <= margin <= 0.5:
        raise ValueError(f"margin: expected a value in [0, 0.5], got {margin}")
    if not 0.0 <= fraction_at_limit <= 1.0:
        raise ValueError(f"fraction_at_limit: expected a value in [0, 1], got {fraction_at_limit}")
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
