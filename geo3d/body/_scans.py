"""Body scans: full surface point clouds and partial scans from a virtual depth camera.

Full scans follow ArtEq (Feng et al., ICCV 2023, arXiv:2304.10528): ``N`` points sampled
uniformly by area on the posed mesh, per-point skinning weights interpolated with the
barycentric coordinates of the sample, part labels from the interpolated weights, and
isotropic Gaussian noise (σ = 1 mm by default) added to the positions.

Partial scans cast one ray per pixel of a pinhole camera (OpenCV convention: x right, y down,
z forward; ``K`` intrinsics in pixels; ``cam_to_world`` a 4x4 pose) with
``open3d.t.geometry.RaycastingScene`` (imported lazily; the ``o3d`` extra). A hit keeps its
triangle and barycentric coordinates, so weights and labels are interpolated as for full
scans; optional sensor noise perturbs the depth along the ray.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from geo3d.body._parts import _argmax_first, _arteq_unchecked, check_partition_of_unity

__all__ = ["BodyScan", "sample_surface_scan", "depth_camera_scan", "look_at", "pinhole_intrinsics"]


class BodyScan(NamedTuple):
    """A scan of a posed body.

    Attributes:
        points: :math:`(N, 3)` positions (noise included), metres.
        weights: :math:`(N, J)` interpolated skinning weights.
        labels: :math:`(N,)` part labels (argmax of ``weights``).
        arteq_labels: :math:`(N,)` ArtEq's merged labels (``J = 24`` only, else ``None``).
        faces: :math:`(N,)` index of the triangle each point lies on.
        barycentric: :math:`(N, 3)` barycentric coordinates in that triangle.
        pixels: :math:`(N, 2)` ``(row, col)`` of each point (depth scans; else ``None``).
        depth: :math:`(H, W)` depth image, ``inf`` where no hit (depth scans; else ``None``).
    """

    points: torch.Tensor
    weights: torch.Tensor
    labels: torch.Tensor
    arteq_labels: torch.Tensor | None
    faces: torch.Tensor
    barycentric: torch.Tensor
    pixels: torch.Tensor | None = None
    depth: torch.Tensor | None = None


def _check_mesh(vertices: torch.Tensor, faces: torch.Tensor, weights: torch.Tensor) -> None:
    if not isinstance(vertices, torch.Tensor) or vertices.dim() != 2 or vertices.shape[1] != 3:
        raise ValueError(
            f"vertices: expected shape (V, 3), got {tuple(getattr(vertices, 'shape', ()))}"
        )
    if not vertices.is_floating_point() or not torch.isfinite(vertices).all():
        raise ValueError("vertices: expected finite floating values, got NaN/inf or integers")
    V = vertices.shape[0]
    if (
        not isinstance(faces, torch.Tensor)
        or faces.dim() != 2
        or faces.shape[1] != 3
        or faces.is_floating_point()
    ):
        raise ValueError(
            f"faces: expected an integer tensor of shape (F, 3), got {tuple(getattr(faces, 'shape', ()))}"
        )
    if faces.numel() == 0 or faces.min() < 0 or faces.max() >= V:
        raise ValueError(
            f"faces: expected indices in [0, {V}), got an empty or out-of-range tensor"
        )
    if not isinstance(weights, torch.Tensor) or weights.dim() != 2 or weights.shape[0] != V:
        raise ValueError(
            f"weights: expected shape ({V}, J), got {tuple(getattr(weights, 'shape', ()))}"
        )
    if not weights.is_floating_point() or not torch.isfinite(weights).all():
        raise ValueError("weights: expected finite floating values, got NaN/inf or integers")
    check_partition_of_unity(weights)


def _finish(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    weights: torch.Tensor,
    fid: torch.Tensor,
    bary: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    tri = faces[fid]  # (N, 3)
    pts = (vertices[tri] * bary[..., None]).sum(1)
    w = (weights.to(vertices.dtype)[tri] * bary[..., None]).sum(1)
    lab = _argmax_first(w)  # inputs were checked by the caller
    al = _arteq_unchecked(w) if w.shape[1] == 24 else None
    return pts, w, lab, al


def sample_surface_scan(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    weights: torch.Tensor,
    num_points: int,
    *,
    noise_std: float = 1e-3,
    generator: torch.Generator | None = None,
) -> BodyScan:
    """Sample a full scan: area-uniform points, interpolated weights/labels, Gaussian noise.

    Args:
        vertices: posed vertices :math:`(V, 3)` (metres).
        faces: triangles :math:`(F, 3)`.
        weights: skinning weights :math:`(V, J)`.
        num_points: ``N``.
        noise_std: σ of the isotropic position noise in metres (ArtEq: 1 mm).
        generator: source of randomness.

    Returns:
        :class:`BodyScan` (``pixels``/``depth`` ``None``).

    Raises:
        ValueError: bad shapes, indices, ``num_points`` or ``noise_std``; ``weights`` whose
            rows are not skinning weights (negative, or not summing to 1 over the joints).

    Example:
        >>> from geo3d.body import tiny_body_dict
        >>> d = tiny_body_dict()
        >>> s = sample_surface_scan(torch.as_tensor(d["v_template"]), torch.as_tensor(d["f"]),
        ...                         torch.as_tensor(d["weights"]), 100,
        ...                         generator=torch.Generator().manual_seed(0))
        >>> s.points.shape, s.labels.shape
        (torch.Size([100, 3]), torch.Size([100]))
    """
    _check_mesh(vertices, faces, weights)
    if not isinstance(num_points, int) or isinstance(num_points, bool) or num_points < 1:
        raise ValueError(f"num_points: expected a positive int, got {num_points!r}")
    if not (isinstance(noise_std, (int, float)) and noise_std >= 0 and math.isfinite(noise_std)):
        raise ValueError(f"noise_std: expected a non-negative number, got {noise_std!r}")
    faces = faces.long().to(vertices.device)
    tri = vertices[faces]
    area = 0.5 * torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    if not (area.sum() > 0):
        raise ValueError("vertices: expected a mesh with positive area, got zero total area")
    gen_dev = generator.device if generator is not None else torch.device("cpu")
    fid = torch.multinomial(
        area.to(gen_dev, torch.float64), num_points, replacement=True, generator=generator
    )
    r = torch.rand(num_points, 2, generator=generator, dtype=torch.float64, device=gen_dev)
    s = r[:, 0].sqrt()
    bary = torch.stack([1 - s, s * (1 - r[:, 1]), s * r[:, 1]], dim=-1)
    fid, bary = fid.to(vertices.device), bary.to(vertices.device, vertices.dtype)
    pts, w, lab, al = _finish(vertices, faces, weights, fid, bary)
    if noise_std > 0:
        n = torch.randn(num_points, 3, generator=generator, dtype=torch.float64, device=gen_dev)
        pts = pts + noise_std * n.to(pts.device, pts.dtype)
    return BodyScan(pts, w, lab, al, fid, bary)


def pinhole_intrinsics(
    width: int, height: int, fov_y_deg: float = 60.0, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """A 3x3 pinhole ``K`` with square pixels, principal point at the image centre.

    Args:
        width, height: image size in pixels (positive ints).
        fov_y_deg: vertical field of view in degrees, in (0, 180) exclusive.
        dtype: of the result.

    Returns:
        :math:`(3, 3)` ``K`` with ``f = height / (2 tan(fov / 2))``.

    Raises:
        ValueError: ``width``/``height`` not positive ints, ``fov_y_deg`` outside (0, 180).

    Example:
        >>> pinhole_intrinsics(640, 480, 90.0)[1, 1].item()
        240.00000000000003
    """
    for name, n in (("width", width), ("height", height)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name}: expected a positive int, got {n!r}")
    if not (isinstance(fov_y_deg, (int, float)) and 0 < fov_y_deg < 180):
        raise ValueError(f"fov_y_deg: expected degrees in (0, 180) exclusive, got {fov_y_deg!r}")
    f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2)
    return torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=dtype)


def look_at(
    eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor | None = None
) -> torch.Tensor:
    """``cam_to_world`` (4x4) of an OpenCV camera at ``eye`` looking at ``target``.

    Args:
        eye, target: :math:`(3,)` points; ``up``: :math:`(3,)` world up (default +y).

    Returns:
        :math:`(4, 4)` matrix whose columns 0-2 are the camera's x (right), y (down),
        z (forward) axes in world coordinates, column 3 the camera centre.

    Raises:
        ValueError: ``eye == target`` or ``up`` parallel to the viewing direction.

    Example:
        >>> T = look_at(torch.tensor([0., 0., 3.]), torch.zeros(3))
        >>> T[:3, 2].tolist()
        [0.0, 0.0, -1.0]
    """
    eye, target = torch.as_tensor(eye), torch.as_tensor(target)
    dt = eye.dtype if eye.is_floating_point() else torch.float64
    eye, target = eye.to(dt), target.to(dt)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=dt) if up is None else torch.as_tensor(up, dtype=dt)
    z = target - eye
    if z.norm() == 0:
        raise ValueError("eye: expected a point different from target, got the same point")
    z = z / z.norm()
    x = torch.linalg.cross(z, up)  # right = forward x up; down = forward x right
    if x.norm() < 1e-9:
        raise ValueError(
            "up: expected a direction not parallel to the viewing direction, got a parallel one"
        )
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    T = torch.eye(4, dtype=dt)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T


def _check_camera(intrinsics: torch.Tensor, cam_to_world: torch.Tensor) -> None:
    """``K`` upper triangular with ``fx, fy > 0`` and last row ``(0, 0, 1)`` (no mirrored
    or singular camera); ``cam_to_world`` rigid: a rotation (orthonormal to 1e-5,
    ``det = +1``, so no scale or mirror) and last row ``(0, 0, 0, 1)``."""
    K = intrinsics.detach().cpu().double()
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(
            f"intrinsics: expected K with fx > 0 and fy > 0, got fx = {float(K[0, 0]):.6g}, "
            f"fy = {float(K[1, 1]):.6g} (a zero focal length is singular, a negative one mirrors)"
        )
    if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
        raise ValueError(
            f"intrinsics: expected an upper-triangular K with last row (0, 0, 1), got {K.tolist()}"
        )
    T = cam_to_world.detach().cpu().double()
    R = T[:3, :3]
    err = float((R.T @ R - torch.eye(3, dtype=torch.float64)).abs().max())
    det = float(torch.linalg.det(R))
    if err > 1e-5 or det <= 0 or T[3].tolist() != [0.0, 0.0, 0.0, 1.0]:
        raise ValueError(
            "cam_to_world: expected a rigid transform (rotation block orthonormal with "
            f"det = +1, last row (0, 0, 0, 1)), got max |RᵀR - I| = {err:.3g}, det = {det:.6g}, "
            f"last row {T[3].tolist()}"
        )


def depth_camera_scan(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    weights: torch.Tensor,
    intrinsics: torch.Tensor,
    cam_to_world: torch.Tensor,
    width: int,
    height: int,
    *,
    depth_noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> BodyScan:
    """A partial scan of a posed body from a virtual depth camera (open3d ray casting).

    One ray through each pixel centre; a hit's point is rebuilt from its triangle and
    barycentric coordinates (so it lies on the mesh exactly), weights/labels interpolated;
    with ``depth_noise_std > 0`` the point moves along its ray by Gaussian depth noise.

    Args:
        vertices: posed vertices :math:`(V, 3)`.
        faces: :math:`(F, 3)`.
        weights: :math:`(V, J)`.
        intrinsics: :math:`(3, 3)` pinhole ``K`` (pixels).
        cam_to_world: :math:`(4, 4)` camera pose (OpenCV axes), e.g. from :func:`look_at`.
        width, height: image size in pixels.
        depth_noise_std: σ of the depth noise (metres along the optical axis).
        generator: source of randomness for the noise.

    Returns:
        :class:`BodyScan` with ``pixels (N, 2)`` and ``depth (H, W)`` (``inf`` = no hit).

    Raises:
        ValueError: bad shapes; weights whose rows are not skinning weights; ``intrinsics``
            with ``fx <= 0``/``fy <= 0`` (singular or mirrored) or not upper triangular;
            ``cam_to_world`` not rigid (scaled, sheared or mirrored).
        ImportError: open3d missing (``pip install geo3d[o3d]``).
    """
    _check_mesh(vertices, faces, weights)
    for name, x, shape in (
        ("intrinsics", intrinsics, (3, 3)),
        ("cam_to_world", cam_to_world, (4, 4)),
    ):
        if (
            not isinstance(x, torch.Tensor)
            or tuple(x.shape) != shape
            or not torch.isfinite(x).all()
        ):
            raise ValueError(
                f"{name}: expected a finite tensor of shape {shape}, got {tuple(getattr(x, 'shape', ()))}"
            )
    _check_camera(intrinsics, cam_to_world)
    for name, n in (("width", width), ("height", height)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name}: expected a positive int, got {n!r}")
    if not (isinstance(depth_noise_std, (int, float)) and depth_noise_std >= 0):
        raise ValueError(
            f"depth_noise_std: expected a non-negative number, got {depth_noise_std!r}"
        )
    try:
        import open3d as o3d
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            f"depth_camera_scan needs open3d: pip install 'geo3d[o3d]' ({err})"
        ) from err
    dev, dt = vertices.device, vertices.dtype
    faces = faces.long()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(vertices.detach().cpu().numpy().astype(np.float32)),
        o3d.core.Tensor(faces.cpu().numpy().astype(np.uint32)),
    )
    K = intrinsics.detach().cpu().double()
    T = cam_to_world.detach().cpu().double()
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    pix = torch.stack([cols + 0.5, rows + 0.5, torch.ones_like(rows)], -1).reshape(-1, 3)
    d_cam = pix @ torch.linalg.inv(K).T  # z = 1: t_hit is the depth
    d_world = d_cam @ T[:3, :3].T
    origin = T[:3, 3].expand_as(d_world)
    rays = torch.cat([origin, d_world], -1).numpy().astype(np.float32)
    ans = scene.cast_rays(o3d.core.Tensor(rays))
    t_hit = torch.from_numpy(ans["t_hit"].numpy()).double()
    hit = torch.isfinite(t_hit)
    prim = torch.from_numpy(ans["primitive_ids"].numpy().astype(np.int64))[hit]
    uv = torch.from_numpy(ans["primitive_uvs"].numpy()).double()[hit]
    # open3d: point = (1 - u - v) v0 + u v1 + v v2
    bary = torch.stack([1 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], -1).to(dev, dt)
    fid = prim.to(dev)
    pts, w, lab, al = _finish(vertices, faces.to(dev), weights, fid, bary)
    depth = torch.where(hit, t_hit, torch.full_like(t_hit, math.inf)).reshape(height, width)
    if depth_noise_std > 0:
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        n = torch.randn(
            int(hit.sum()), generator=generator, dtype=torch.float64, device=gen_dev
        ).cpu()
        dz = depth_noise_std * n
        pts = pts + (dz[:, None] * d_world[hit]).to(dev, dt)
        depth = depth.reshape(-1)
        depth[hit] = depth[hit] + dz
        depth = depth.reshape(height, width)
    idx = torch.nonzero(hit).squeeze(-1)
    pixels = torch.stack([idx // width, idx % width], -1)
    return BodyScan(pts, w, lab, al, fid, bary, pixels.to(dev), depth.to(dev, dt))
