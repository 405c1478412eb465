"""Rendered point-tracking videos: a mesh moving rigidly in front of a fixed camera.

Ground truth for TAP-Vid-style evaluation (:mod:`geo3d.eval._tracking`): query points are
sampled on the first frame's foreground, lifted to the object surface, moved with the
object, and projected in float64. A point is **occluded** in a frame when

* it is behind the camera or projects outside the image area (``u`` outside
  ``[-0.5, W - 0.5]`` or ``v`` outside ``[-0.5, H - 0.5]``: pixel centres at integers), or
* the segment from the camera centre to the point hits the mesh earlier: the ray cast
  towards the point (Embree, the renderer's scene) stops at a distance shorter than the
  point's by more than ``visibility_tolerance`` (mesh units). This is an exact depth test at
  the point's own sub-pixel position, not at the nearest pixel of the depth map.

Reference: C. Doersch et al., "TAP-Vid: A Benchmark for Tracking Any Point in a Video",
NeurIPS 2022 Datasets and Benchmarks, arXiv:2211.03726 (track / occlusion format; their
Kubric set is rendered the same way: moving rigid objects, fixed camera possible).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from geo3d.render._camera import camera_centers, check_intrinsics, check_pose
from geo3d.render._render import Renderer
from geo3d.rotations import axis_angle_to_matrix

__all__ = ["smooth_rigid_trajectory", "render_tracks"]


def smooth_rigid_trajectory(
    num_frames: int,
    *,
    max_rotation_deg: float = 60.0,
    max_translation: float = 0.3,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """A smooth rigid motion: object-to-world poses, identity at frame 0.

    With ``s = t / (T - 1)``: rotation by ``max_rotation_deg · s`` about a random unit axis
    (through the object origin), translation ``max_translation · (s · a + sin(π s) · b) / 2``
    with random unit directions ``a``, ``b`` (so at most ``max_translation`` away).

    Args:
        num_frames: ``T >= 1``.
        max_rotation_deg: total rotation angle (degrees).
        max_translation: bound on the translation (mesh units).
        generator: random source of the axis and directions.
        dtype: floating dtype.

    Returns:
        ``object_poses`` :math:`(T, 4, 4)`; world point of an object point ``X`` at frame
        ``t``: ``R_t X + t_t``.

    Raises:
        ValueError: ``num_frames < 1`` or negative magnitudes.

    Example:
        >>> P = smooth_rigid_trajectory(5, generator=torch.Generator().manual_seed(0))
        >>> P.shape, bool(torch.equal(P[0], torch.eye(4, dtype=torch.float64)))
        (torch.Size([5, 4, 4]), True)
    """
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames: expected an int >= 1, got {num_frames!r}")
    for name, v in (("max_rotation_deg", max_rotation_deg), ("max_translation", max_translation)):
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name}: expected a finite value >= 0, got {v}")
    dirs = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
    axis, a, b = dirs
    s = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64) if num_frames > 1 else torch.zeros(1, dtype=torch.float64)
    R = axis_angle_to_matrix(axis[None] * (math.radians(max_rotation_deg) * s)[:, None])
    tr = max_translation * (s[:, None] * a + torch.sin(math.pi * s)[:, None] * b) / 2
    P = torch.eye(4, dtype=torch.float64).repeat(num_frames, 1, 1)
    P[:, :3, :3] = R
    P[:, :3, 3] = tr
    P[0] = torch.eye(4, dtype=torch.float64)
    return P.to(dtype)


def render_tracks(
    mesh: Any,
    K: Any,
    world_to_cam: Any,
    object_poses: Any,
    size: Sequence[int],
    *,
    num_queries: int = 64,
    query_pixels: Any = None,
    visibility_tolerance: float = 1e-4,
    generator: torch.Generator | None = None,
    **render_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """Render a moving mesh and the ground-truth tracks of points sampled on frame 0.

    Frame ``t`` is rendered with the object-to-camera pose ``world_to_cam @ object_poses[t]``
    (the camera is fixed; the light is fixed in the camera frame, so shading changes as
    the object turns).

    Args:
        mesh: a :class:`~geo3d.render.Renderer` or anything it accepts.
        K: intrinsics :math:`(3, 3)`.
        world_to_cam: the fixed camera :math:`(4, 4)`.
        object_poses: :math:`(T, 4, 4)` object-to-world poses (e.g.
            :func:`smooth_rigid_trajectory`).
        size: ``(H, W)``.
        num_queries: query points drawn (without replacement, through ``generator``) among
            frame 0's foreground pixels; ignored when ``query_pixels`` is given.
        query_pixels: optional :math:`(N, 2)` long foreground pixels ``(u, v)`` of frame 0.
        visibility_tolerance: depth-test slack along the ray (mesh units).
        generator: random source of the queries.
        **render_kwargs: shading options for a new :class:`Renderer` (``ambient``, ...).

    Returns:
        dict with ``video (T, 3, H, W)`` float32 in [0, 1], ``rgb (T, H, W, 3)``,
        ``depth (T, H, W)``, ``mask (T, H, W)``, ``query_pixels (N, 2)`` long,
        ``query_points (N, 3)`` float64 object frame, ``tracks (N, T, 2)`` float64
        ``(u, v)`` pixel positions (continuous projections), ``occluded (N, T)`` bool,
        ``object_poses (T, 4, 4)``, ``world_to_cam (T, 4, 4)`` (object to camera per frame)
        and ``K (3, 3)``.

    Raises:
        ValueError: shapes, an empty first frame, query pixels outside frame 0's foreground.
        ImportError: open3d missing.

    Example:
        >>> import trimesh
        >>> from geo3d.render import intrinsics_matrix, look_at
        >>> P = smooth_rigid_trajectory(3, generator=torch.Generator().manual_seed(0))
        >>> out = render_tracks(trimesh.creation.box(), intrinsics_matrix(30.0, cx=15.5, cy=15.5),
        ...     look_at([0.0, -3.0, 1.0]), P, (32, 32), num_queries=8, generator=torch.Generator().manual_seed(0))
        >>> out["tracks"].shape, out["occluded"].shape, bool(out["occluded"][:, 0].any())
        (torch.Size([8, 3, 2]), torch.Size([8, 3]), False)
    """
    r = mesh if isinstance(mesh, Renderer) else Renderer(mesh, **render_kwargs)
    Kt = check_intrinsics(K, "K").double()
    Tc = check_pose(world_to_cam, "world_to_cam").double()
    Po = check_pose(object_poses, "object_poses").double()
    if Kt.shape != (3, 3) or Tc.shape != (4, 4):
        raise ValueError(f"world_to_cam: expected one camera K (3, 3), pose (4, 4), got {tuple(Kt.shape)}, {tuple(Tc.shape)}")
    if Po.ndim != 3:
        raise ValueError(f"object_poses: expected shape (T, 4, 4), got {tuple(Po.shape)}")
    if not (visibility_tolerance > 0):
        raise ValueError(f"visibility_tolerance: expected a positive distance, got {visibility_tolerance}")
    poses = Tc @ Po  # object -> camera per frame
    out = r.render(Kt, poses, size, dtype=torch.float64)
    H, W = out["depth"].shape[-2:]
    mask0 = out["mask"][0]
    if not bool(mask0.any()):
        raise ValueError("object_poses: expected the object visible in frame 0, got an empty first frame")
    if query_pixels is None:
        if not isinstance(num_queries, int) or num_queries < 1:
            raise ValueError(f"num_queries: expected a positive int, got {num_queries!r}")
        vv, uu = torch.nonzero(mask0, as_tuple=True)
        sel = torch.randperm(len(vv), generator=generator)[:num_queries]
        qpix = torch.stack([uu[sel], vv[sel]], dim=1)
    else:
        qpix = torch.as_tensor(query_pixels).long()
        if qpix.ndim != 2 or qpix.shape[1] != 2:
            raise ValueError(f"query_pixels: expected shape (N, 2), got {tuple(qpix.shape)}")
        inside = (qpix[:, 0] >= 0) & (qpix[:, 0] < W) & (qpix[:, 1] >= 0) & (qpix[:, 1] < H)
        if not bool(inside.all()) or not bool(mask0[qpix[:, 1].clamp(0, H - 1), qpix[:, 0].clamp(0, W - 1)].all()):
            raise ValueError("query_pixels: expected foreground pixels (u, v) of frame 0, got background or out-of-image pixels")
    X = out["points"][0][qpix[:, 1], qpix[:, 0]]  # (N, 3) object frame, float64
    # projections (float64): camera coordinates of the moved points
    Xc = torch.einsum("tij,nj->nti", poses[:, :3, :3], X) + poses[None, :, :3, 3]
    z = Xc[..., 2]
    uv = (Xc @ Kt.T)[..., :2] / z[..., None]
    inside = (z > 0) & (uv[..., 0] >= -0.5) & (uv[..., 0] <= W - 0.5) & (uv[..., 1] >= -0.5) & (uv[..., 1] <= H - 0.5)
    # exact visibility: cast from the camera centre (object frame) towards each point
    centres = camera_centers(poses)  # (T, 3) object frame
    d = X[:, None, :] - centres[None]  # (N, T, 3)
    rays = torch.cat([centres[None].expand_as(d), d], dim=-1).reshape(-1, 6).float().numpy()
    hit = r._scene.cast_rays(r._o3d.core.Tensor(np.ascontiguousarray(rays)))
    t_hit = torch.from_numpy(hit["t_hit"].numpy()).double().reshape(d.shape[:2])
    dist = d.norm(dim=-1)
    blocked = t_hit * dist < dist - visibility_tolerance
    occluded = ~inside | blocked
    return {
        "video": out["rgb"].permute(0, 3, 1, 2).float().contiguous(),
        "rgb": out["rgb"],
        "depth": out["depth"],
        "mask": out["mask"],
        "query_pixels": qpix,
        "query_points": X,
        "tracks": torch.where(torch.isfinite(uv), uv, torch.full_like(uv, float("nan"))),
        "occluded": occluded,
        "object_poses": Po,
        "world_to_cam": poses,
        "K": Kt,
    }
