"""Object pose estimation from feature matches: 2D–3D matches → PnP + RANSAC → cm-degree accuracy.

Protocol (a synthetic stand-in for the OnePose++ LowTexture evaluation of You et al.):
reference views of an object with known poses and depth give 3D points for their
foreground pixels; each sampled reference pixel is matched to the query image by cosine
nearest feature (optionally mutual), which gives 2D–3D matches; OpenCV's
``solvePnPRansac`` (EPnP minimal solver) and a Levenberg–Marquardt refinement on the
inliers give the query's ``world_to_cam``.

Errors (OnePose / OnePose++ convention):

* rotation error: the geodesic angle of ``R_pred R_gtᵀ`` in degrees
  (:func:`geo3d.rotations.geodesic_distance`);
* translation error: ``||t_pred - t_gt||₂`` of the ``world_to_cam`` translations (the object
  origin in camera coordinates), converted to centimetres with ``unit_to_cm`` (default 100:
  mesh units are metres; the rendered datasets' objects are normalised to unit size, so
  "1 cm" is 1 % of the object's extent there);
* ``n cm-n°`` accuracy: the fraction of queries with rotation error ``< n`` degrees **and**
  translation error ``< n`` cm (strict, as OnePose's ``cm_degree_n_metric``); a failed PnP
  counts as wrong. One released version of that function clamps the trace of
  ``R_pred R_gtᵀ`` to ``n`` before the arccos, which makes its 1cm-1° score always 0 (the
  angle becomes >= 90°); that is not repeated here.

OpenCV is an optional dependency: ``pip install 'geo3d[corr]'`` (``opencv-python-headless``).

References: Y. You et al., "Multiview Equivariance Improves 3D Correspondence Understanding
with Minimal Feature Finetuning", ICLR 2025, arXiv:2411.19458 (pose-estimation protocol);
J. Sun et al., "OnePose: One-Shot Object Pose Estimation without CAD Models", CVPR 2022,
arXiv:2205.12257 (cm-degree metric: zju3dv/OnePose ``src/evaluators/cmd_evaluator.py``); V. Lepetit et al.,
"EPnP: An Accurate O(n) Solution to the PnP Problem", IJCV 2009, doi:10.1007/s11263-008-0152-6.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geo3d.eval._correspondence import (
    Extractor,
    _nearest_dense,
    _parse_view,
    extract_features,
    nearest_pixels,
    sample_features,
)
from geo3d.rotations import geodesic_distance

__all__ = [
    "estimate_pose_pnp",
    "pose_errors",
    "pose_accuracy",
    "match_to_references",
    "pose_estimation_metrics",
]


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError(
            "geo3d.eval pose estimation needs OpenCV: pip install 'geo3d[corr]' "
            "(or pip install opencv-python-headless)"
        ) from err
    return cv2


def estimate_pose_pnp(
    points3d: Any,
    pixels: Any,
    K: Any,
    *,
    reprojection_error: float = 8.0,
    iterations: int = 1000,
    confidence: float = 0.999,
    refine: bool = True,
    min_inliers: int = 6,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Camera pose from 2D–3D matches by PnP inside RANSAC (OpenCV).

    ``cv2.solvePnPRansac`` with the EPnP solver, then (``refine``) ``cv2.solvePnPRefineLM``
    on the inliers. OpenCV's RANSAC draws from its own random state, which is seeded from
    ``generator`` (``cv2.setRNGSeed``) so that results are reproducible.

    Args:
        points3d: :math:`(M, 3)` object-frame points (mesh units).
        pixels: :math:`(M, 2)` their image positions ``(u, v)`` (pixels, centres at integers).
        K: intrinsics :math:`(3, 3)` (no lens distortion).
        reprojection_error: RANSAC inlier threshold in pixels (OpenCV's default 8).
        iterations: RANSAC iterations.
        confidence: RANSAC confidence.
        refine: Levenberg–Marquardt refinement on the inliers.
        min_inliers: fewer inliers (or matches) count as failure.
        generator: random source of the RANSAC seed.

    Returns:
        dict with ``world_to_cam`` :math:`(4, 4)` float64 (NaN on failure), ``inliers``
        :math:`(M,)` bool, ``num_inliers`` int and ``success`` bool.

    Raises:
        ValueError: shapes or non-finite input.
        ImportError: OpenCV is not installed (``pip install 'geo3d[corr]'``).

    Example:
        >>> from geo3d.render import intrinsics_matrix, look_at, project_points
        >>> X = torch.rand(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5
        >>> K, T = intrinsics_matrix(100.0, cx=64.0, cy=64.0), look_at([0.3, -2.0, 0.5])
        >>> out = estimate_pose_pnp(X, project_points(X, K, T)[0], K)
        >>> out["success"], bool(torch.allclose(out["world_to_cam"], T, atol=1e-6))
        (True, True)
    """
    cv2 = _import_cv2()
    X = torch.as_tensor(points3d).double()
    x = torch.as_tensor(pixels).double()
    Km = torch.as_tensor(K).double()
    if X.ndim != 2 or X.shape[1] != 3:
        raise ValueError(f"points3d: expected shape (M, 3), got {tuple(X.shape)}")
    if x.shape != (X.shape[0], 2):
        raise ValueError(f"pixels: expected shape ({X.shape[0]}, 2), got {tuple(x.shape)}")
    if Km.shape != (3, 3):
        raise ValueError(f"K: expected shape (3, 3), got {tuple(Km.shape)}")
    for name, t in (("points3d", X), ("pixels", x), ("K", Km)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: expected finite values, got NaN or inf")
    if not (reprojection_error > 0):
        raise ValueError(f"reprojection_error: expected a positive pixel distance, got {reprojection_error}")
    M = X.shape[0]
    fail = {
        "world_to_cam": torch.full((4, 4), float("nan"), dtype=torch.float64),
        "inliers": torch.zeros(M, dtype=torch.bool),
        "num_inliers": 0,
        "success": False,
    }
    if M < max(4, min_inliers):
        return fail
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    cv2.setRNGSeed(seed)
    obj = np.ascontiguousarray(X.numpy().reshape(-1, 1, 3))
    img = np.ascontiguousarray(x.numpy().reshape(-1, 1, 2))
    Kn = np.ascontiguousarray(Km.numpy())
    try:
        ok, rvec, tvec, inl = cv2.solvePnPRansac(
            obj, img, Kn, None, iterationsCount=int(iterations), reprojectionError=float(reprojection_error),
            confidence=float(confidence), flags=cv2.SOLVEPNP_EPNP,
        )
    except cv2.error:  # degenerate configurations (e.g. all points collinear)
        return fail
    if not ok or inl is None or len(inl) < min_inliers:
        return fail
    idx = inl.reshape(-1)
    if refine:
        rvec, tvec = cv2.solvePnPRefineLM(obj[idx], img[idx], Kn, None, rvec, tvec)
        # re-collect the inliers of the refined pose
        proj, _ = cv2.projectPoints(obj, rvec, tvec, Kn, None)
        err = np.linalg.norm(proj.reshape(-1, 2) - img.reshape(-1, 2), axis=1)
        idx = np.nonzero(err <= reprojection_error)[0]
    R, _ = cv2.Rodrigues(rvec)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = torch.from_numpy(R)
    T[:3, 3] = torch.from_numpy(tvec.reshape(3))
    inliers = torch.zeros(M, dtype=torch.bool)
    inliers[torch.from_numpy(idx).long()] = True
    if not bool(torch.isfinite(T).all()) or len(idx) < min_inliers:
        return fail
    return {"world_to_cam": T, "inliers": inliers, "num_inliers": int(len(idx)), "success": True}


def pose_errors(pred: Any, target: Any, *, unit_to_cm: float = 100.0) -> tuple[Tensor, Tensor]:
    """Rotation (degrees, geodesic) and translation (cm) errors of ``world_to_cam`` poses.

    Args:
        pred: :math:`(..., 4, 4)` estimated poses (NaN entries = failure → ``inf`` errors).
        target: :math:`(..., 4, 4)` ground truth.
        unit_to_cm: centimetres per pose unit (100 for metres).

    Returns:
        ``(rot_err_deg (...), trans_err_cm (...))`` float64.

    Raises:
        ValueError: shapes, non-positive ``unit_to_cm``.

    Example:
        >>> T = torch.eye(4, dtype=torch.float64); P = T.clone(); P[0, 3] = 0.02
        >>> [round(float(e), 6) for e in pose_errors(P, T)]
        [0.0, 2.0]
    """
    P = torch.as_tensor(pred).double()
    G = torch.as_tensor(target).double()
    if P.shape[-2:] != (4, 4) or G.shape[-2:] != (4, 4):
        raise ValueError(f"target: expected poses (..., 4, 4), got {tuple(P.shape)} and {tuple(G.shape)}")
    if not (unit_to_cm > 0):
        raise ValueError(f"unit_to_cm: expected a positive factor, got {unit_to_cm}")
    P, G = torch.broadcast_tensors(P, G)
    bad = ~torch.isfinite(P).flatten(-2).all(-1)
    Ps = torch.where(bad[..., None, None], torch.eye(4, dtype=torch.float64).expand_as(P), P)
    rot = torch.rad2deg(geodesic_distance(Ps[..., :3, :3], G[..., :3, :3]))
    trans = (Ps[..., :3, 3] - G[..., :3, 3]).norm(dim=-1) * unit_to_cm
    inf = torch.full_like(rot, float("inf"))
    return torch.where(bad, inf, rot), torch.where(bad, inf, trans)


def pose_accuracy(
    rot_err_deg: Any,
    trans_err_cm: Any,
    thresholds: Sequence[tuple[float, float]] = ((1.0, 1.0), (3.0, 3.0), (5.0, 5.0)),
) -> dict[str, float]:
    """cm-degree accuracy: fraction with translation error ``< cm`` and rotation error ``< deg``.

    Args:
        rot_err_deg: :math:`(N,)` rotation errors (degrees; ``inf`` for failures).
        trans_err_cm: :math:`(N,)` translation errors (cm).
        thresholds: ``(cm, deg)`` pairs.

    Returns:
        ``{"1cm1deg": f, "3cm3deg": f, "5cm5deg": f}`` (key ``f"{cm:g}cm{deg:g}deg"``).

    Raises:
        ValueError: shapes differ or no errors, non-positive thresholds.

    Example:
        >>> pose_accuracy(torch.tensor([0.5, 2.0]), torch.tensor([0.5, 0.5]))
        {'1cm1deg': 0.5, '3cm3deg': 1.0, '5cm5deg': 1.0}
    """
    r = torch.as_tensor(rot_err_deg, dtype=torch.float64).flatten()
    t = torch.as_tensor(trans_err_cm, dtype=torch.float64).flatten()
    if r.shape != t.shape or r.numel() == 0:
        raise ValueError(f"trans_err_cm: expected as many errors as rot_err_deg (>= 1), got {t.numel()} and {r.numel()}")
    out = {}
    for cm, deg in thresholds:
        if not (cm > 0 and deg > 0):
            raise ValueError(f"thresholds: expected positive (cm, deg) pairs, got {(cm, deg)}")
        r_ok = torch.nan_to_num(r, nan=float("inf")) < deg
        t_ok = torch.nan_to_num(t, nan=float("inf")) < cm
        out[f"{cm:g}cm{deg:g}deg"] = float((r_ok & t_ok).double().mean())
    return out


def match_to_references(
    extractor: Extractor,
    query: dict[str, Any] | Tensor,
    references: Sequence[dict[str, Any]],
    *,
    points_per_reference: int = 1000,
    mutual: bool = True,
    use_query_mask: bool = True,
    generator: torch.Generator | None = None,
    device: Any = None,
) -> dict[str, Tensor]:
    """2D–3D matches: reference foreground pixels (with 3D points) → query pixels by features.

    From every reference view, up to ``points_per_reference`` foreground pixels are drawn
    (without replacement, through ``generator``); each is matched to the cosine-nearest
    candidate pixel of the query (the query's foreground when it is a view dict with a
    mask/depth and ``use_query_mask``, else every pixel). With ``mutual``, a match is kept
    only when the query pixel's nearest neighbour among that reference's drawn pixels is
    the pixel it came from.

    Args:
        extractor: callable ``(B, 3, H, W) -> (B, C, h, w)``.
        query: a view dict (module :mod:`geo3d.eval._correspondence`) or an image
            :math:`(3, H, W)` in [0, 1].
        references: view dicts with poses and depth (their 3D points give the 3D side).
        points_per_reference: pixels drawn per reference view.
        mutual: keep mutual nearest neighbours only.
        use_query_mask: restrict the query candidates to its foreground.
        generator: random source of the pixel draws.
        device: where the extractor and the matching run.

    Returns:
        dict with ``points3d (M, 3)`` float64 object frame, ``pixels (M, 2)`` long query
        pixels ``(u, v)``, ``similarity (M,)`` and ``reference (M,)`` long (index of the view).

    Raises:
        ValueError: no references, malformed views.

    Example:
        >>> from geo3d.render import intrinsics_matrix, look_at
        >>> K = intrinsics_matrix(8.0, cx=2.0, cy=2.0); T = look_at([0.0, 0.0, -2.0], up=[0.0, -1.0, 0.0])
        >>> v = {"rgb": torch.rand(5, 5, 3, generator=torch.Generator().manual_seed(0)),
        ...      "depth": torch.full((5, 5), 2.0), "K": K, "world_to_cam": T}
        >>> m = match_to_references(lambda x: x, v, [v])
        >>> bool((m["points3d"][:, 2].abs() < 1e-9).all()), m["pixels"].shape
        (True, torch.Size([25, 2]))
    """
    if len(references) == 0:
        raise ValueError("references: expected at least one reference view, got 0")
    if points_per_reference < 1:
        raise ValueError(f"points_per_reference: expected a positive int, got {points_per_reference}")
    if isinstance(query, dict):
        q = _parse_view("query", query)
        q_img, q_mask = q["image"], (q["mask"] if use_query_mask else None)
    else:
        from geo3d.eval._correspondence import _image_chw

        q_img, q_mask = _image_chw("query", query), None
    H, W = q_img.shape[-2:]
    cand = torch.ones(H, W, dtype=torch.bool) if q_mask is None else q_mask
    if not bool(cand.any()):
        raise ValueError("query: expected foreground pixels in the query, got an empty mask")
    vv, uu = torch.nonzero(cand, as_tuple=True)
    pix_q = torch.stack([uu, vv], dim=1)
    fq = extract_features(extractor, q_img[None], device=device)[0]
    pts, pix, sims, refs = [], [], [], []
    for r_i, ref in enumerate(references):
        rv = _parse_view(f"references[{r_i}]", ref)
        rv_v, rv_u = torch.nonzero(rv["mask"], as_tuple=True)
        if len(rv_v) == 0:
            continue
        if len(rv_v) > points_per_reference:
            sel = torch.randperm(len(rv_v), generator=generator)[:points_per_reference].sort().values
            rv_v, rv_u = rv_v[sel], rv_u[sel]
        pix_r = torch.stack([rv_u, rv_v], dim=1)
        fr = extract_features(extractor, rv["image"][None], device=device)[0]
        feat_r = sample_features(fr, pix_r, rv["image"].shape[-2:])
        idx, sim = _nearest_dense(feat_r, fq, (H, W), pix_q)
        keep = torch.ones(len(idx), dtype=torch.bool)
        if mutual:
            back, _ = nearest_pixels(sample_features(fq, pix_q[idx], (H, W)), feat_r)
            keep = back.cpu() == torch.arange(len(idx))
        pts.append(rv["points"][rv_v, rv_u][keep])
        pix.append(pix_q[idx][keep])
        sims.append(sim.cpu()[keep])
        refs.append(torch.full((int(keep.sum()),), r_i, dtype=torch.long))
    if not pts:
        return {"points3d": torch.zeros(0, 3, dtype=torch.float64), "pixels": torch.zeros(0, 2, dtype=torch.long),
                "similarity": torch.zeros(0), "reference": torch.zeros(0, dtype=torch.long)}
    return {"points3d": torch.cat(pts), "pixels": torch.cat(pix), "similarity": torch.cat(sims),
            "reference": torch.cat(refs)}


def pose_estimation_metrics(
    extractor: Extractor,
    queries: Sequence[dict[str, Any]],
    references: Sequence[dict[str, Any]],
    *,
    thresholds: Sequence[tuple[float, float]] = ((1.0, 1.0), (3.0, 3.0), (5.0, 5.0)),
    unit_to_cm: float = 100.0,
    points_per_reference: int = 1000,
    mutual: bool = True,
    reprojection_error: float = 8.0,
    iterations: int = 1000,
    generator: torch.Generator | None = None,
    device: Any = None,
) -> dict[str, Any]:
    """cm-degree pose accuracy of an extractor on query views of one object.

    For every query: :func:`match_to_references` → :func:`estimate_pose_pnp` →
    :func:`pose_errors` against the query's ``world_to_cam``; then :func:`pose_accuracy`.

    Args:
        extractor: callable ``(B, 3, H, W) -> (B, C, h, w)``.
        queries: view dicts with ground-truth ``world_to_cam`` (their depth is not used
            except for the foreground mask).
        references: view dicts with poses and depth.
        thresholds: ``(cm, deg)`` accuracy thresholds.
        unit_to_cm: centimetres per mesh unit.
        points_per_reference, mutual: see :func:`match_to_references`.
        reprojection_error, iterations: see :func:`estimate_pose_pnp`.
        generator: random source (pixel draws and RANSAC seeds).
        device: where the extractor and the matching run.

    Returns:
        dict with the accuracies (``"1cm1deg"``, ...), ``rot_err_deg`` and
        ``trans_err_cm`` medians (floats; ``inf`` when more than half fail),
        ``failures`` (int), ``num_queries`` and per-query tensors ``rot_errs_deg (Q,)``,
        ``trans_errs_cm (Q,)``, ``num_matches (Q,)``, ``num_inliers (Q,)``.

    Raises:
        ValueError: no queries or references, malformed views.
        ImportError: OpenCV missing.

    Example:
        >>> # see tests/eval/test_pose_estimation.py for a rendered example
        >>> pose_accuracy(torch.tensor([float("inf")]), torch.tensor([float("inf")]))["5cm5deg"]
        0.0
    """
    if len(queries) == 0:
        raise ValueError("queries: expected at least one query view, got 0")
    rot, trans, nm, ni = [], [], [], []
    for k, qv in enumerate(queries):
        T_gt = qv.get("world_to_cam", qv.get("pose")) if isinstance(qv, dict) else None
        if T_gt is None:
            raise ValueError(f"queries[{k}]: expected a view dict with world_to_cam, got {type(qv).__name__}")
        K = torch.as_tensor(qv["K"]).double()
        m = match_to_references(extractor, qv, references, points_per_reference=points_per_reference,
                                mutual=mutual, generator=generator, device=device)
        est = estimate_pose_pnp(m["points3d"], m["pixels"].double(), K, reprojection_error=reprojection_error,
                                iterations=iterations, generator=generator)
        r, t = pose_errors(est["world_to_cam"], T_gt, unit_to_cm=unit_to_cm)
        rot.append(r)
        trans.append(t)
        nm.append(len(m["pixels"]))
        ni.append(est["num_inliers"])
    R = torch.stack(rot)
    Tr = torch.stack(trans)
    out: dict[str, Any] = pose_accuracy(R, Tr, thresholds)
    out.update(
        rot_err_deg=float(R.median()) if len(R) else float("nan"),
        trans_err_cm=float(Tr.median()) if len(Tr) else float("nan"),
        failures=int((~torch.isfinite(R)).sum()),
        num_queries=len(R),
        rot_errs_deg=R,
        trans_errs_cm=Tr,
        num_matches=torch.tensor(nm),
        num_inliers=torch.tensor(ni),
    )
    return out
