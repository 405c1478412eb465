"""Ground-truth pixel correspondences between two depth views, through 3D (private)."""

from __future__ import annotations

from typing import Any

import torch

from geo3d.render._camera import _as_tensor, check_intrinsics, check_pose, project_points

__all__ = ["view_correspondences"]


def _backproject(depth: torch.Tensor, pix: torch.Tensor, K: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """World points of integer pixels ``pix (M, 2)`` = (u, v) of a z-depth map."""
    z = depth[pix[:, 1], pix[:, 0]]
    uv1 = torch.cat([pix.to(depth.dtype), torch.ones_like(z)[:, None]], dim=1)
    Xc = (uv1 @ torch.linalg.inv(K).T) * z[:, None]
    R, t = T[:3, :3], T[:3, 3]
    return (Xc - t) @ R


def view_correspondences(
    depth_a: Any,
    K_a: Any,
    world_to_cam_a: Any,
    depth_b: Any,
    K_b: Any,
    world_to_cam_b: Any,
    pixels_a: Any | None = None,
    *,
    threshold: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match pixels of view ``a`` to view ``b`` through their 3D points.

    Each pixel ``p`` of ``a`` with depth > 0 is back-projected to the object (world) frame,
    projected into ``b`` and rounded to the nearest pixel ``q``; the pair is valid when
    ``q`` is inside ``b``, ``b`` has depth there, and the 3D point of ``q`` (back-projected
    from ``depth_b``) lies within ``threshold`` of the 3D point of ``p``. The last test is
    the visibility check: a point hidden in ``b`` projects onto a nearer surface, whose
    3D point is far away.

    Args:
        depth_a, depth_b: z-depth maps :math:`(H_a, W_a)`, :math:`(H_b, W_b)`, 0 where empty.
        K_a, K_b: intrinsics :math:`(3, 3)`.
        world_to_cam_a, world_to_cam_b: poses :math:`(4, 4)`.
        pixels_a: integer pixels :math:`(M, 2)` as ``(u, v)`` = (column, row); default every
            pixel of ``a`` with depth > 0 (row-major order).
        threshold: largest 3D distance of a match (mesh units; default 0.01 = 1 cm for the
            unit-size objects of the rendered datasets, ~3 pixels at 512², f = 560, distance 2).

    Returns:
        ``(pixels_a, pixels_b, valid)``: :math:`(M, 2)` long, :math:`(M, 2)` long (``-1``
        where invalid) and :math:`(M,)` bool.

    Raises:
        ValueError: shapes, non-positive focal lengths, pixels outside ``a``.

    Example:
        >>> import torch
        >>> from geo3d.render import intrinsics_matrix, look_at
        >>> K = intrinsics_matrix(8.0, cx=2.0, cy=2.0); T = look_at([0.0, 0.0, -2.0], up=[0.0, -1.0, 0.0])
        >>> d = torch.full((5, 5), 2.0, dtype=torch.float64)  # a wall at z = 0
        >>> pa, pb, ok = view_correspondences(d, K, T, d, K, T)
        >>> bool(ok.all()), bool((pa == pb).all())
        (True, True)
    """
    da = _as_tensor("depth_a", depth_a, torch.float64)
    db = _as_tensor("depth_b", depth_b, torch.float64)
    for name, d in (("depth_a", da), ("depth_b", db)):
        if d.ndim != 2:
            raise ValueError(f"{name}: expected shape (H, W), got {tuple(d.shape)}")
    Ka = check_intrinsics(K_a, "K_a").double()
    Kb = check_intrinsics(K_b, "K_b").double()
    Ta = check_pose(world_to_cam_a, "world_to_cam_a").double()
    Tb = check_pose(world_to_cam_b, "world_to_cam_b").double()
    if Ka.shape != (3, 3) or Kb.shape != (3, 3) or Ta.shape != (4, 4) or Tb.shape != (4, 4):
        raise ValueError("K_a: expected single-view K (3, 3) and poses (4, 4), got batched input")
    if not (threshold > 0):
        raise ValueError(f"threshold: expected a positive distance, got {threshold}")
    if pixels_a is None:
        vv, uu = torch.nonzero(da > 0, as_tuple=True)
        pa = torch.stack([uu, vv], dim=1)
    else:
        pa = torch.as_tensor(pixels_a)
        if pa.ndim != 2 or pa.shape[1] != 2:
            raise ValueError(f"pixels_a: expected shape (M, 2), got {tuple(pa.shape)}")
        pa = pa.long()
        Ha, Wa = da.shape
        if len(pa) and not bool(
            ((pa[:, 0] >= 0) & (pa[:, 0] < Wa) & (pa[:, 1] >= 0) & (pa[:, 1] < Ha)).all()
        ):
            raise ValueError(f"pixels_a: expected (u, v) inside the {Wa}x{Ha} image, got out-of-range pixels")
    Hb, Wb = db.shape
    za = da[pa[:, 1], pa[:, 0]]
    X = _backproject(da, pa, Ka, Ta)
    uv, z = project_points(X, Kb, Tb)
    q = torch.round(torch.nan_to_num(uv, nan=-1.0)).long()
    inside = (za > 0) & (z > 0) & (q[:, 0] >= 0) & (q[:, 0] < Wb) & (q[:, 1] >= 0) & (q[:, 1] < Hb)
    qc = torch.where(inside[:, None], q, torch.zeros_like(q))
    zb = db[qc[:, 1], qc[:, 0]]
    Xb = _backproject(db, qc, Kb, Tb)
    valid = inside & (zb > 0) & ((Xb - X).norm(dim=1) < threshold)
    pb = torch.where(valid[:, None], q, torch.full_like(q, -1))
    return pa, pb, valid
