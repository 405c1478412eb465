"""Non-learned baseline for two-piece objects: open3d FPFH + RANSAC + ICP registration.

The larger piece (anchor) is fixed at its ground-truth pose and the other piece is
registered onto it, so the baseline is only meaningful under protocol (b) ("anchor").
Registration looks for overlapping geometry; two fracture pieces overlap only on their
shared fracture surface, which is what FPFH + RANSAC must find.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["register_pair", "registration_baseline"]


def _o3d() -> Any:
    try:
        import open3d as o3d
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError(
            "the registration baseline needs open3d: pip install 'geo3d[o3d]' (open3d>=0.17)"
        ) from err
    # RANSAC on small, noisy fragments warns "too few correspondences" for many pairs:
    # expected here (the baseline then falls back, and its score says how it did)
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    return o3d


def register_pair(
    source: np.ndarray, target: np.ndarray, voxel: float | None = None, seed: int = 0
) -> np.ndarray:
    """Rigid transform mapping ``source`` onto ``target`` (FPFH + RANSAC, refined by ICP).

    Args:
        source: shape :math:`(N, 3)`; target: shape :math:`(M, 3)`.
        voxel: down-sampling voxel size (default: 3% of the target's bounding-box diagonal).
        seed: open3d's random seed (RANSAC).

    Returns:
        :math:`(4, 4)` float64 matrix ``T`` with ``target ≈ T[:3, :3] @ source + T[:3, 3]``.
        When neither ICP nor RANSAC finds any overlap (or diverges far from the target),
        or the target has zero extent (default ``voxel``), the fallback is the pure
        translation that puts the centroids together.

    Raises:
        ValueError: bad shapes, a ``voxel`` that is not a finite number > 0.
    """
    o3d = _o3d()
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    for name, x in (("source", source), ("target", target)):
        if x.ndim != 2 or x.shape[1] != 3 or len(x) < 8:
            raise ValueError(f"{name}: expected shape (N >= 8, 3), got {x.shape}")
    fallback = np.eye(4)  # no overlap found: put the centroids together, keep the rotation
    fallback[:3, 3] = target.mean(0) - source.mean(0)
    if voxel is None:
        voxel = 0.03 * float(np.linalg.norm(target.max(0) - target.min(0)))
        if not voxel > 0:  # target of zero extent (all points identical): nothing to register
            return fallback
    if not (isinstance(voxel, (int, float)) and np.isfinite(voxel) and voxel > 0):
        raise ValueError(f"voxel: expected a finite number > 0, got {voxel!r}")
    o3d.utility.random.seed(int(seed))
    reg = o3d.pipelines.registration

    def prep(x: np.ndarray) -> tuple[Any, Any]:
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(x))
        pc = pc.voxel_down_sample(voxel)
        pc.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=2 * voxel, max_nn=30))
        f = reg.compute_fpfh_feature(pc, o3d.geometry.KDTreeSearchParamHybrid(radius=5 * voxel, max_nn=100))
        return pc, f

    src, fs = prep(source)
    tgt, ft = prep(target)
    dist = 1.5 * voxel
    ransac = reg.registration_ransac_based_on_feature_matching(
        src, tgt, fs, ft, True, dist,
        reg.TransformationEstimationPointToPoint(False), 3,
        [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9), reg.CorrespondenceCheckerBasedOnDistance(dist)],
        reg.RANSACConvergenceCriteria(100000, 0.999),
    )
    icp = reg.registration_icp(
        src, tgt, voxel, ransac.transformation, reg.TransformationEstimationPointToPlane()
    )
    diag = float(np.linalg.norm(target.max(0) - target.min(0)))
    for cand, fit in ((icp.transformation, icp.fitness), (ransac.transformation, ransac.fitness)):
        T = np.asarray(cand, dtype=np.float64)
        moved = source.mean(0) @ T[:3, :3].T + T[:3, 3]
        if fit > 0 and np.isfinite(T).all() and np.linalg.norm(moved - target.mean(0)) < 2 * diag:
            return T
    return fallback


def registration_baseline(
    points: Tensor, valid: Tensor, gt_rot: Tensor, gt_trans: Tensor, anchor: Tensor, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Predict poses of two-piece objects by registration; other objects are skipped.

    Args:
        points: shape :math:`(B, P, N, 3)`; valid: :math:`(B, P)`; gt_rot: :math:`(B, P, 3, 3)`;
        gt_trans: :math:`(B, P, 3)`; anchor: :math:`(B,)`.

    Returns:
        ``(rot (B, P, 3, 3), trans (B, P, 3), used (B,) bool)``; only objects with exactly
        two valid parts are ``used``; the anchor gets its true pose.
    """
    rot, trans = gt_rot.clone(), gt_trans.clone()
    used = valid.sum(1) == 2
    for b in range(points.shape[0]):
        if not bool(used[b]):
            continue
        idx = valid[b].nonzero()[:, 0].tolist()
        a = int(anchor[b])
        o = idx[0] if idx[1] == a else idx[1]
        target = (points[b, a].double() @ gt_rot[b, a].double().T + gt_trans[b, a].double())
        T = register_pair(points[b, o].double().numpy(), target.numpy(), seed=seed + b)
        rot[b, o] = torch.tensor(T[:3, :3], dtype=rot.dtype)
        trans[b, o] = torch.tensor(T[:3, 3], dtype=trans.dtype)
    return rot, trans, used
