"""Pinhole cameras in the OpenCV convention: intrinsics, look-at poses, viewpoints, projection.

Convention (the same as OpenCV, COLMAP and the 3DCorrEnhance / BlenderProc renderings)::

                 z (forward, optical axis)
                /
               /
      (0,0) --+-------> x (right)          image: u = column (grows right),
              |                                   v = row    (grows down)
              |
              v  y (down)

* ``world_to_cam`` is a 4x4 matrix ``[R | t]`` acting on column vectors: a world (object)
  point ``X`` has camera coordinates ``X_c = R X + t``; the camera centre is ``-Rᵀ t``.
* ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` maps ``X_c`` to the pixel
  ``(u, v) = (fx x/z + cx, fy y/z + cy)``. Pixel centres sit at integer coordinates:
  pixel ``[row v, column u]`` is the ray through ``K⁻¹ (u, v, 1)`` (as in OpenCV and in the
  reference's ``img_coord_2_obj_coord``).
* depth is the z-depth ``z`` of ``X_c`` (metres, in the units of the mesh), not the ray
  length.

A picture of these axes is in ``benchmarks/results/figures/render_camera_axes.png`` (drawn by ``benchmarks/render_figures.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "intrinsics_matrix",
    "look_at",
    "icosphere_viewpoints",
    "random_viewpoints",
    "camera_centers",
    "project_points",
    "depth_to_points",
    "relative_rotation_angle",
]


def _as_tensor(name: str, x: object, dtype: torch.dtype | None = None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x, dtype=dtype or torch.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: expected a tensor or array, got {type(x).__name__}") from err
    if not x.is_floating_point():
        x = x.to(dtype or torch.float64)
    if dtype is not None:
        x = x.to(dtype)
    return x


def _check_shape(name: str, x: torch.Tensor, tail: tuple[int, ...]) -> None:
    if x.ndim < len(tail) or tuple(x.shape[x.ndim - len(tail) :]) != tail:
        want = "(..., " + ", ".join(map(str, tail)) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")


def check_intrinsics(K: object, name: str = "K") -> torch.Tensor:
    """Validate a pinhole intrinsics matrix ``(..., 3, 3)`` (positive finite focal lengths)."""
    K = _as_tensor(name, K)
    _check_shape(name, K, (3, 3))
    if not bool(torch.isfinite(K).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    fx, fy = K[..., 0, 0], K[..., 1, 1]
    if not bool(((fx > 0) & (fy > 0)).all()):
        raise ValueError(
            f"{name}: expected positive focal lengths fx = K[0, 0] and fy = K[1, 1], got "
            f"fx={fx.flatten()[:4].tolist()}, fy={fy.flatten()[:4].tolist()}"
        )
    if not bool((K[..., 2, :] == K.new_tensor([0.0, 0.0, 1.0])).all()):
        raise ValueError(f"{name}: expected last row (0, 0, 1), got {K[..., 2, :].flatten()[:3].tolist()}")
    return K


def check_pose(pose: object, name: str = "world_to_cam") -> torch.Tensor:
    """Validate a rigid transform ``(..., 4, 4)`` (or ``(..., 3, 4)``, completed to 4x4).

    A valid pose has finite entries, a rotation in ``[:3, :3]`` (orthonormal within 1e-4,
    determinant +1: a reflection is rejected) and, for 4x4 input, the bottom row
    ``[0, 0, 0, 1]`` (within 1e-6): projective or scaled matrices are rejected.

    Raises:
        ValueError: wrong shape, NaN/inf, non-orthonormal or reflecting ``[:3, :3]``, or a
            bottom row other than ``[0, 0, 0, 1]``; the message names ``name``.

    Example:
        >>> check_pose(torch.eye(4)).shape
        torch.Size([4, 4])
    """
    pose = _as_tensor(name, pose)
    if pose.ndim >= 2 and tuple(pose.shape[-2:]) == (3, 4):
        bottom = pose.new_zeros(*pose.shape[:-2], 1, 4)
        bottom[..., 0, 3] = 1.0
        pose = torch.cat([pose, bottom], dim=-2)
    _check_shape(name, pose, (4, 4))
    if not bool(torch.isfinite(pose).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    if pose.numel():
        expected = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
        row_err = float((pose[..., 3, :].double() - expected).abs().amax())
        if row_err > 1e-6:
            worst = pose[..., 3, :].double().reshape(-1, 4)
            worst = worst[(worst - expected).abs().amax(dim=1).argmax()].tolist()
            raise ValueError(
                f"{name}: expected a rigid transform with bottom row [0, 0, 0, 1], got "
                f"{[round(x, 6) for x in worst]}"
            )
    R = pose[..., :3, :3].double()
    eye = torch.eye(3, dtype=torch.float64)
    err = float((R @ R.transpose(-1, -2) - eye).abs().amax()) if R.numel() else 0.0
    if err > 1e-4:
        raise ValueError(
            f"{name}: expected a rotation in [:3, :3] (orthonormal, det +1), got "
            f"|R Rᵀ - I| = {err:.3g}"
        )
    if R.numel():
        det = torch.linalg.det(R)
        if bool((det < 0).any()):
            raise ValueError(
                f"{name}: expected a rotation in [:3, :3] with determinant +1, got determinant "
                f"{float(det.min()):.3g} (a reflection)"
            )
    return pose


def intrinsics_matrix(
    fx: float,
    fy: float | None = None,
    cx: float = 0.0,
    cy: float = 0.0,
    *,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """A pinhole intrinsics matrix.

    Args:
        fx: focal length along x, pixels (> 0).
        fy: focal length along y, pixels (> 0); defaults to ``fx``.
        cx, cy: principal point, pixels (pixel centres at integer coordinates).
        dtype: floating dtype of the result.

    Returns:
        ``K`` of shape :math:`(3, 3)`.

    Raises:
        ValueError: non-positive or non-finite focal length.

    Example:
        >>> intrinsics_matrix(560.0, cx=256.0, cy=256.0)[0].tolist()
        [560.0, 0.0, 256.0]
    """
    fy = fx if fy is None else fy
    for name, f in (("fx", fx), ("fy", fy)):
        if not (math.isfinite(float(f)) and float(f) > 0):
            raise ValueError(f"{name}: expected a positive finite focal length, got {f}")
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def look_at(
    eye: object,
    target: object = (0.0, 0.0, 0.0),
    up: object = (0.0, 0.0, 1.0),
) -> torch.Tensor:
    """World-to-camera poses of cameras at ``eye`` looking at ``target`` (OpenCV axes).

    The camera's z axis points from ``eye`` to ``target``, its x axis is ``z × up``
    (right) and its y axis ``z × x`` (down in the image, i.e. ``up`` points up in the
    image). Where ``up`` is parallel to the viewing direction (looking straight along it),
    the next world axis that is not (x, then y) is used as ``up`` instead.

    Args:
        eye: camera centres, shape :math:`(..., 3)`.
        target: points looked at, :math:`(..., 3)` (broadcast against ``eye``).
        up: world direction that should appear up in the image, :math:`(3,)` or
            :math:`(..., 3)`.

    Returns:
        ``world_to_cam`` of shape :math:`(..., 4, 4)` in the dtype of ``eye`` (float64 for
        lists).

    Raises:
        ValueError: wrong shapes, non-finite values, ``eye == target`` or zero ``up``.

    Example:
        >>> T = look_at([0.0, 0.0, -2.0], [0.0, 0.0, 0.0], up=[0.0, -1.0, 0.0])
        >>> (T[:3, 3] + 0.0).tolist()  # the origin is 2 in front of the camera
        [0.0, 0.0, 2.0]
    """
    eye = _as_tensor("eye", eye)
    target = _as_tensor("target", target, eye.dtype)
    up = _as_tensor("up", up, eye.dtype)
    for name, v in (("eye", eye), ("target", target), ("up", up)):
        _check_shape(name, v, (3,))
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name}: expected finite values, got NaN or inf")
    if bool((up.norm(dim=-1) == 0).any()):
        raise ValueError("up: expected a non-zero direction, got a zero vector")
    eye, target = torch.broadcast_tensors(eye, target)
    f = target - eye
    fn = f.norm(dim=-1, keepdim=True)
    if bool((fn == 0).any()):
        raise ValueError("target: expected a point different from eye, got eye == target")
    z = f / fn
    up = torch.broadcast_to(up / up.norm(dim=-1, keepdim=True), z.shape)
    x = torch.linalg.cross(z, up, dim=-1)
    # degenerate up (parallel to the view direction): fall back to the world x, then y axis
    for alt in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)):
        bad = x.norm(dim=-1, keepdim=True) < 1e-6
        if not bool(bad.any()):
            break
        x_alt = torch.linalg.cross(z, z.new_tensor(alt).expand_as(z), dim=-1)
        x = torch.where(bad, x_alt, x)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], dim=-2)  # rows: camera axes in world coordinates
    t = -(R @ eye.unsqueeze(-1)).squeeze(-1)
    T = torch.zeros(*R.shape[:-2], 4, 4, dtype=R.dtype)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def _icosahedron() -> tuple[np.ndarray, np.ndarray]:
    """Unit icosahedron with vertices at the poles (0, 0, ±1) and two rings of five."""
    z = 1.0 / math.sqrt(5.0)
    r = 2.0 / math.sqrt(5.0)
    verts = [(0.0, 0.0, 1.0)]
    verts += [(r * math.cos(2 * math.pi * k / 5), r * math.sin(2 * math.pi * k / 5), z) for k in range(5)]
    verts += [
        (r * math.cos(2 * math.pi * (k + 0.5) / 5), r * math.sin(2 * math.pi * (k + 0.5) / 5), -z)
        for k in range(5)
    ]
    verts += [(0.0, 0.0, -1.0)]
    faces = []
    for k in range(5):
        a, b = 1 + k, 1 + (k + 1) % 5
        c, d = 6 + k, 6 + (k + 1) % 5
        faces += [(0, a, b), (a, c, b), (b, c, d), (c, 11, d)]
    return np.asarray(verts), np.asarray(faces)


def icosphere_viewpoints(
    level: int = 1, radius: float = 2.0, *, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Camera centres on the vertices of a subdivided icosahedron (a geodesic sphere).

    Level ``l`` has ``10 · 4^l + 2`` vertices: 12, 42 (the reference's default), 162, ...
    With the poles on the z axis, level 1 gives the same 42 camera directions as the
    reference's ``data/obj_poses.npy`` (qq456cvb/3DCorrEnhance; checked to 1e-5), whose
    in-plane rolls differ from :func:`look_at`'s.
    The order is deterministic: the 12 icosahedron vertices first (north pole, the upper
    ring, the lower ring, south pole), then the edge midpoints of each subdivision in the
    order of first appearance.

    Args:
        level: subdivision level (>= 0).
        radius: distance of the cameras from the origin (> 0).
        dtype: floating dtype of the result.

    Returns:
        camera centres :math:`(N, 3)`; use :func:`look_at` for poses.

    Raises:
        ValueError: negative ``level`` or non-positive ``radius``.

    Example:
        >>> icosphere_viewpoints(1).shape
        torch.Size([42, 3])
    """
    if not isinstance(level, int) or level < 0:
        raise ValueError(f"level: expected an int >= 0, got {level!r}")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius: expected a positive finite distance, got {radius}")
    verts, faces = _icosahedron()
    verts = list(map(tuple, verts))
    for _ in range(level):
        index: dict[tuple[int, int], int] = {}
        new_faces = []
        for a, b, c in faces:
            mids = []
            for i, j in ((a, b), (b, c), (c, a)):
                key = (min(i, j), max(i, j))
                if key not in index:
                    p = np.add(verts[i], verts[j])
                    verts.append(tuple(p / np.linalg.norm(p)))
                    index[key] = len(verts) - 1
                mids.append(index[key])
            ab, bc, ca = mids
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return torch.tensor(np.asarray(verts) * radius, dtype=dtype)


def random_viewpoints(
    n: int,
    radius: float = 2.0,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Camera centres drawn uniformly on a sphere (normalised Gaussian draws).

    Args:
        n: number of viewpoints (>= 0).
        radius: sphere radius (> 0).
        generator: random source (every draw goes through it).
        dtype: floating dtype of the result.

    Returns:
        camera centres :math:`(n, 3)`.

    Raises:
        ValueError: negative ``n`` or non-positive ``radius``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> random_viewpoints(5, generator=g).norm(dim=-1).allclose(torch.full((5,), 2.0, dtype=torch.float64))
        True
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius: expected a positive finite distance, got {radius}")
    x = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    norm = x.norm(dim=-1, keepdim=True)
    # a draw of exactly 0 has probability 0; keep it finite anyway
    x = torch.where(norm > 0, x / norm.clamp_min(1e-300), x.new_tensor([0.0, 0.0, 1.0]))
    return (x * radius).to(dtype)


def camera_centers(world_to_cam: object) -> torch.Tensor:
    """Camera centres ``-Rᵀ t`` of poses ``(..., 4, 4)`` → ``(..., 3)``."""
    T = check_pose(world_to_cam)
    R, t = T[..., :3, :3], T[..., :3, 3]
    return -(R.transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)


def project_points(
    points: object, K: object, world_to_cam: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points to pixels.

    Args:
        points: :math:`(..., N, 3)` world (object-frame) points.
        K: intrinsics :math:`(..., 3, 3)`.
        world_to_cam: pose :math:`(..., 4, 4)`.

    Returns:
        ``(uv, z)``: pixel coordinates :math:`(..., N, 2)` as ``(u, v)`` = (column, row)
        and z-depth :math:`(..., N)`. Points with ``z <= 0`` get ``uv = nan``.

    Example:
        >>> uv, z = project_points(torch.zeros(1, 3, dtype=torch.float64),
        ...     intrinsics_matrix(100.0, cx=32.0, cy=32.0), look_at([0.0, 0.0, 2.0]))
        >>> uv.tolist(), z.tolist()
        ([[32.0, 32.0]], [2.0])
    """
    points = _as_tensor("points", points)
    _check_shape("points", points, (3,))
    K = check_intrinsics(K).to(points.dtype)
    T = check_pose(world_to_cam).to(points.dtype)
    Xc = points @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]
    z = Xc[..., 2]
    pix = Xc @ K.transpose(-1, -2)
    uv = pix[..., :2] / z.unsqueeze(-1)
    uv = torch.where((z > 0).unsqueeze(-1), uv, torch.full_like(uv, float("nan")))
    return uv, z


def depth_to_points(depth: object, K: object, world_to_cam: object | None = None) -> torch.Tensor:
    """Back-project a z-depth map to 3D points (world frame if a pose is given).

    Args:
        depth: :math:`(..., H, W)` z-depth (0 where empty).
        K: intrinsics :math:`(..., 3, 3)`.
        world_to_cam: optional pose :math:`(..., 4, 4)`; without it the camera frame is used.

    Returns:
        points :math:`(..., H, W, 3)`; pixels with depth 0 map to the camera centre.

    Example:
        >>> K = intrinsics_matrix(10.0, cx=1.0, cy=1.0)
        >>> depth_to_points(torch.ones(3, 3, dtype=torch.float64), K)[1, 1].tolist()
        [0.0, 0.0, 1.0]
    """
    depth = _as_tensor("depth", depth)
    if depth.ndim < 2:
        raise ValueError(f"depth: expected shape (..., H, W), got {tuple(depth.shape)}")
    K = check_intrinsics(K).to(depth.dtype)
    H, W = depth.shape[-2:]
    v, u = torch.meshgrid(
        torch.arange(H, dtype=depth.dtype), torch.arange(W, dtype=depth.dtype), indexing="ij"
    )
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # (H, W, 3)
    Kinv = torch.linalg.inv(K)
    rays = pix @ Kinv[..., None, :, :].transpose(-1, -2)  # (..., H, W, 3), z = 1
    Xc = rays * depth.unsqueeze(-1)
    if world_to_cam is None:
        return Xc
    T = check_pose(world_to_cam).to(depth.dtype)
    R, t = T[..., None, None, :3, :3], T[..., None, None, :3, 3]
    return ((Xc - t).unsqueeze(-2) @ R).squeeze(-2)


def relative_rotation_angle(world_to_cam_a: object, world_to_cam_b: object) -> torch.Tensor:
    """Angle (degrees) of the relative rotation ``R_a R_bᵀ`` between two camera poses.

    This is the reference's pair filter quantity (``arccos((tr(R1 R2ᵀ) - 1) / 2)``).

    Args:
        world_to_cam_a, world_to_cam_b: poses :math:`(..., 4, 4)` (broadcast).

    Returns:
        angles in degrees, :math:`(...)`.

    Example:
        >>> a = look_at([0.0, -2.0, 0.0]); b = look_at([2.0, 0.0, 0.0])  # a quarter turn about z
        >>> round(float(relative_rotation_angle(a, b)), 6)
        90.0
    """
    A = check_pose(world_to_cam_a, "world_to_cam_a")[..., :3, :3].double()
    B = check_pose(world_to_cam_b, "world_to_cam_b")[..., :3, :3].double()
    c = ((A @ B.transpose(-1, -2)).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(c.clamp(-1.0, 1.0)))
