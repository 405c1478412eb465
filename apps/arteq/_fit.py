"""The SMPL fitting API: network output -> posed body (:func:`decode`), :func:`fit_smpl`, and the
optimisation objective shared with the pure-optimisation baseline (:mod:`._optim`).

Units and frames. Users pass points in any units and frame; ``scale`` is metres per input unit
(millimetres: ``scale=0.001``). Internally everything is in metres (the network and the body
models work in metres); every length in a :class:`FitResult` (``vertices``, ``joints``,
``transl``) is converted back to the input units. Rotations and betas have no units.

Translation. ArtEq (Feng et al., "Generalizing Neural Human Fitting to Unseen Poses With
Articulated SE(3) Equivariance", ICCV 2023, arXiv:2304.10528) centres its input and does not
predict a translation. :func:`decode` estimates it equivariantly: the mesh posed with the
predicted rotations and betas (zero translation) is moved so that its **area-weighted surface
centroid** coincides with the centroid of the input points. For a full scan sampled uniformly
by area from the true surface this is unbiased: its error is the sampling error of the scan's
mean (about ``std(points) / sqrt(N)``, ~3 mm per axis for 5000 points of a standing adult,
plus the noise's mean) plus whatever the predicted shape/pose shifts the centroid. On a
**partial** (single-view) scan the visible half's centroid lies towards the camera: a bias of
the order of half the body's depth (8.5 cm for one depth-camera view of the tiny test
body). ``icp_steps`` closed-form translation-only ICP updates (Gauss-Newton on the squared
point-to-surface distances, exact closest points on the triangles, see
``_icp_translation_step``) refine it: on full scans they converge to the translation that
fits the predicted mesh (measured on the tiny body: 2 cm -> 0.5 mm after 3 steps, 8 um
after 5), on partial scans they only reduce the bias (8.5 -> 5.8 cm after 8 steps in that
view: with a one-sided distance, points of the visible side can settle inside thin limbs), so
use ``refine=True`` on partial data. Both steps commute with rotations and translations of the
input, so the estimate is SE(3)-equivariant.

Refinement objective (SMPLify-style: Bogo et al., "Keep it SMPL", ECCV 2016,
arXiv:1607.08128, with 3D point data instead of 2D keypoints), with ``sigma = 1 cm``:

- point-to-surface: ``mean_i d(p_i, mesh)^2 / sigma^2``, ``d`` = distance to the closest point
  on the mesh's triangles (exact point-triangle distance over candidate triangles: the faces
  of the ``k`` nearest points of a fixed dense barycentric sampling of the surface, 4 per
  face, found with :func:`geo3d.ops.knn`);
- surface-to-points (``full_scan=True`` only; skip it for partial scans, where most of the
  surface has no data): area-weighted mean over face centroids of the squared distance to the
  nearest input point, ``/ sigma^2``;
- pose prior: ``w_pose * sum_j ||R_j - I||_F^2`` over the local rotations of joints 1..23
  (``= 4 (1 - cos theta_j) ~ 2 theta_j^2``, smooth at the identity) plus
  ``w_limits * sum relu(violation)^2`` of the Euler angles of :data:`geo3d.body.JOINT_LIMITS`;
- shape prior: ``w_shape * ||betas||^2``.

Rotations are optimised in the 6D parameterisation (Zhou et al., CVPR 2019) with Adam.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["FitResult", "FitWeights", "decode", "fit_smpl", "refine_fit"]


# --------------------------------------------------------------------------------------------
# result


@dataclass
class FitResult:
    """A fitted SMPL-layout body per scan (every tensor batched over ``B`` scans).

    Positions (``transl``, ``vertices``, ``joints``) are computed relative to each scan's
    centroid, taken in float64, and returned in the wider of the input points' dtype and the
    body model's: float64 scans far from the origin (map coordinates) keep their resolution
    with a float32 network and body. ``betas``, ``global_orient`` and ``body_pose`` come in
    the network's dtype (the body model's after refinement), float32 for the shipped nets.

    Attributes:
        betas: :math:`(B, K)` shape coefficients.
        global_orient: :math:`(B, 3, 3)` root rotation.
        body_pose: :math:`(B, 23, 3, 3)` local rotations of SMPL joints 1..23.
        transl: :math:`(B, 3)` translation (input units): ``pose_body(model,
            torch.cat([global_orient[:, None], body_pose], 1), betas, transl * scale)
            .vertices == vertices * scale`` (to the body model's precision at that
            translation: float32 far from the origin is coarse).
        vertices: :math:`(B, V, 3)` posed mesh (input units).
        joints: :math:`(B, J, 3)` smplx's joints (input units; ``J`` = 24 + the model's vertex
            keypoints, see :mod:`geo3d.eval._body_metrics`).
        part_labels: :math:`(B, N)` long ArtEq part per input point (``-1`` pads ragged
            inputs), or ``None``.
        loss: :math:`(B,)` final objective of the optimisation (refinement / baseline), or
            ``None`` when nothing was optimised.
        seconds_per_scan: wall-clock seconds per scan of the call that produced the result.
    """

    betas: Tensor
    global_orient: Tensor
    body_pose: Tensor
    transl: Tensor
    vertices: Tensor
    joints: Tensor
    part_labels: Tensor | None = None
    loss: Tensor | None = None
    seconds_per_scan: float | None = field(default=None, compare=False)

    def __len__(self) -> int:
        return int(self.betas.shape[0])


# --------------------------------------------------------------------------------------------
# input checks


def _check_scale(scale: Any, name: str = "scale") -> float:
    """A positive finite scale: a Python/numpy real scalar or a one-element real tensor."""
    val = scale
    if isinstance(val, Tensor) and val.numel() == 1 and not val.is_complex() \
            and val.dtype != torch.bool:
        val = val.item()
    elif isinstance(val, np.ndarray) and val.size == 1 and val.dtype.kind in "iuf":
        val = val.item()
    elif isinstance(val, np.generic) and val.dtype.kind in "iuf":
        val = val.item()
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not (
        math.isfinite(float(val)) and float(val) > 0
    ):
        raise ValueError(f"{name}: expected a positive finite number (metres per input unit), "
                         f"got {scale!r}")
    return float(val)


def _check_int(name: str, v: Any, minimum: int) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v!r}")
    return int(v)


def _check_lr(lr: Any, name: str = "lr") -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not (
        math.isfinite(float(lr)) and float(lr) > 0
    ):
        raise ValueError(f"{name}: expected a positive finite number, got {lr!r}")
    return float(lr)


#: A scan whose extent (largest side of its bounding box, after ``scale``) lies outside this
#: range in metres is not a human body in metres: :func:`warn_scale` suggests ``scale``.
BODY_EXTENT_M = (0.1, 10.0)


def scale_warning(points: list[Tensor] | Tensor, scale: float) -> str | None:
    """One line suggesting ``scale`` when a scan's extent in metres (largest side of its
    bounding box times ``scale``) lies outside :data:`BODY_EXTENT_M`, else ``None``."""
    clouds = points if isinstance(points, list) else list(points.split(1))
    ext = max(float((c.reshape(-1, 3).amax(0) - c.reshape(-1, 3).amin(0)).max()) for c in clouds)
    ext *= scale
    lo, hi = BODY_EXTENT_M
    if lo <= ext <= hi or ext == 0.0:
        return None
    hint = (f"scale={scale * 0.001:g} if the points are in millimetres" if ext > hi else
            "a larger scale (metres per input unit)")
    return (f"scale: the points span {ext:.3g} m with scale={scale:g}, outside a body's "
            f"{lo:g}..{hi:g} m; pass {hint}")


def warn_scale(points: list[Tensor] | Tensor, scale: float) -> None:
    """:func:`warnings.warn` :func:`scale_warning`'s line (at most once per call)."""
    msg = scale_warning(points, scale)
    if msg is not None:
        import warnings

        warnings.warn(msg, UserWarning, stacklevel=3)


def _check_extent(points: list[Tensor] | Tensor) -> None:
    """A scan whose points all coincide has no shape to fit.

    Raises:
        ValueError: naming the first such scan.
    """
    clouds = points if isinstance(points, list) else list(points.split(1))
    for i, c in enumerate(clouds):
        c = c.reshape(-1, 3)
        if bool((c == c[:1]).all()):
            raise ValueError(f"points: scan {i} has all its {len(c)} points at one location "
                             f"(extent 0): there is no body to fit")


def _check_min_points(points: list[Tensor] | Tensor, minimum: int) -> None:
    clouds = points if isinstance(points, list) else [points]
    n = min(int(c.shape[1]) for c in clouds)
    if n < minimum:
        raise ValueError(f"points: expected at least {minimum} points per scan (the network's "
                         f"neighbourhood size k), got {n}")


def _centred_metres(pts: Tensor, dev: torch.device, dt: torch.dtype,
                    scale: float) -> tuple[Tensor, Tensor, torch.dtype]:
    """``pts (B, N, 3)`` in input units -> ``(pts - c) * scale`` in metres as ``dt`` on
    ``dev``, the centre ``c (B, 3)`` (input units, float64) and the dtype of the returned
    positions (``pts``' if wider than ``dt``). The centre is taken in float64 before any
    cast, so scans far from the origin (e.g. map coordinates) keep their resolution."""
    p64 = pts.to(dev, torch.float64)
    c = p64.mean(1)
    return ((p64 - c[:, None]) * scale).to(dt), c, torch.promote_types(pts.dtype, dt)


def _uncentred(x_m: Tensor, c: Tensor, scale: float, out: torch.dtype) -> Tensor:
    """Positions ``x_m (B, ..., 3)`` in centred metres -> input units, as ``out``."""
    c = c.reshape(c.shape[0], *([1] * (x_m.dim() - 2)), 3)
    return (x_m.to(out) / scale + c.to(out))


def _as_points(points: Any, name: str = "points") -> list[Tensor] | Tensor:
    """(N,3) -> (1,N,3); (B,N,3) stays; list/tuple of (N_i,3) -> list of (1,N_i,3); nested
    Python lists of numbers (``scan.tolist()``) are read as one array."""
    if isinstance(points, (list, tuple)) and points and isinstance(points[0], (list, tuple)):
        try:  # numbers all the way down: one (N, 3) or (B, N, 3) array, not a list of scans
            points = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: expected numbers in an (N, 3) or (B, N, 3) layout, or a "
                             f"list of (N_i, 3) arrays; got nested lists that are not one "
                             f"({' '.join(str(err).split())[:80]})") from err
    if isinstance(points, (list, tuple)):
        if len(points) == 0:
            raise ValueError(f"{name}: expected at least one point cloud, got an empty list")
        out = []
        for i, p in enumerate(points):
            if getattr(p, "ndim", None) != 2:
                got = tuple(p.shape) if hasattr(p, "shape") else type(p).__name__
                raise ValueError(f"{name}[{i}]: expected shape (N, 3), got {got}")
            t = _as_points(p, f"{name}[{i}]")
            out.append(t)  # type: ignore[arg-type]
        return out
    if isinstance(points, np.ndarray):
        if points.dtype.kind not in "biufc":
            raise ValueError(f"{name}: expected real coordinates, got a numpy array of dtype "
                             f"{points.dtype}")
        points = torch.from_numpy(points)
    if not isinstance(points, Tensor):
        raise ValueError(f"{name}: expected a tensor or array of shape (N, 3) or (B, N, 3), got "
                         f"{type(points).__name__}")
    points = points.detach()  # a scan that requires grad: fitted as data, no graph kept
    if points.device.type == "meta":  # shapes only: no value to fit (or to check)
        raise ValueError(f"{name}: expected a tensor on a device that computes, got 'meta'")
    if points.dim() == 2:
        points = points[None]
    if points.dim() != 3 or points.shape[-1] != 3 or points.shape[0] < 1 or points.shape[1] < 1:
        raise ValueError(f"{name}: expected shape (N, 3) or (B, N, 3) with B, N >= 1, got "
                         f"{tuple(points.shape)}")
    if points.dtype == torch.bool or points.is_complex():
        raise ValueError(f"{name}: expected real coordinates, got {points.dtype}")
    if not points.is_floating_point():  # integer coordinates (e.g. millimetres): as floats
        points = points.to(torch.get_default_dtype())
    if not bool(torch.isfinite(points).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return points


def _check_rot(name: str, x: Any, shape: tuple[int, ...]) -> Tensor:
    if not isinstance(x, Tensor) or tuple(x.shape) != shape or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"net_out['{name}']: expected a floating tensor of shape {shape}, "
                         f"got {got}")
    return x


# --------------------------------------------------------------------------------------------
# geometry


def _faces(body_model: nn.Module) -> Tensor:
    f = body_model.faces_tensor
    return f.long().to(body_model.v_template.device)


def _area_centroid(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted centroid of the mesh surface, :math:`(B, V, 3) -> (B, 3)`."""
    tri = vertices[:, faces]  # (B, F, 3, 3)
    area = 0.5 * torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0]).norm(
        dim=-1
    )
    return (area[..., None] * tri.mean(2)).sum(1) / area.sum(1, keepdim=True)


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    ok = den.abs() > torch.finfo(den.dtype).tiny
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _closest_bary(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """Barycentric ``(v, w)`` (shapes :math:`(*)`) of the closest point ``a + v (b - a) +
    w (c - a)`` of the triangle to ``p`` (Ericson, "Real-Time Collision Detection", 2005,
    Sec. 5.1.5: Voronoi regions of vertices, edges and face)."""
    ab, ac = b - a, c - a
    ap, bp, cp = p - a, p - b, p - c
    abx, aby, abz = ab.unbind(-1)
    acx, acy, acz = ac.unbind(-1)

    def dots(u: Tensor) -> tuple[Tensor, Tensor]:
        ux, uy, uz = u.unbind(-1)
        return abx * ux + aby * uy + abz * uz, acx * ux + acy * uy + acz * uz

    d1, d2 = dots(ap)
    d3, d4 = dots(bp)
    d5, d6 = dots(cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    den = va + vb + vc
    # regions overwritten in reverse order of Ericson's tests, so the first test that holds wins
    zero, one = torch.zeros_like(d1), torch.ones_like(d1)
    v, w = _safe_div(vb, den), _safe_div(vc, den)  # face interior
    u = _safe_div(d4 - d3, (d4 - d3) + (d5 - d6))  # edge BC
    m = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    v, w = torch.where(m, 1 - u, v), torch.where(m, u, w)
    m = (vb <= 0) & (d2 >= 0) & (d6 <= 0)  # edge AC
    v, w = torch.where(m, zero, v), torch.where(m, _safe_div(d2, d2 - d6), w)
    m = (d6 >= 0) & (d5 <= d6)  # vertex C
    v, w = torch.where(m, zero, v), torch.where(m, one, w)
    m = (vc <= 0) & (d1 >= 0) & (d3 <= 0)  # edge AB
    v, w = torch.where(m, _safe_div(d1, d1 - d3), v), torch.where(m, zero, w)
    m = (d3 >= 0) & (d4 <= d3)  # vertex B
    v, w = torch.where(m, one, v), torch.where(m, zero, w)
    m = (d1 <= 0) & (d2 <= 0)  # vertex A
    v, w = torch.where(m, zero, v), torch.where(m, zero, w)
    return v, w


def closest_point_on_triangles(p: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Closest point to ``p`` on the triangle ``(a, b, c)``, all shapes :math:`(*, 3)`.

    Ericson, "Real-Time Collision Detection" (2005), Sec. 5.1.5. Gradients treat the
    barycentric coordinates of the answer as constants: exact for the squared distance
    ``|p - q|^2`` (Danskin's theorem: the derivative of a minimum is the derivative at the
    minimiser), which is what the fitting objective uses. Degenerate triangles fall back to an
    edge or a vertex.

    Example:
        >>> z = torch.zeros(3)
        >>> closest_point_on_triangles(torch.tensor([0.2, 0.2, 1.0]), z,
        ...                            torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]))
        tensor([0.2000, 0.2000, 0.0000])
    """
    with torch.no_grad():
        v, w = _closest_bary(p, a, b, c)
    return a + (b - a) * v[..., None] + (c - a) * w[..., None]


#: fixed barycentric sample of every face (centroid + 3 points towards the corners)
_BARY = torch.tensor(
    [[1 / 3, 1 / 3, 1 / 3], [2 / 3, 1 / 6, 1 / 6], [1 / 6, 2 / 3, 1 / 6], [1 / 6, 1 / 6, 2 / 3]],
    dtype=torch.float64,
)


def _surface_samples(vertices: Tensor, faces: Tensor) -> Tensor:
    """:math:`(B, 4 F, 3)` points at fixed barycentric positions (face-major order)."""
    tri = vertices[:, faces]  # (B, F, 3, 3)
    bary = _BARY.to(vertices)
    return torch.einsum("sk,bfkd->bfsd", bary, tri).reshape(vertices.shape[0], -1, 3)


def surface_candidates(points: Tensor, vertices: Tensor, faces: Tensor, k: int = 16) -> Tensor:
    """Candidate faces :math:`(B, N, k)` of each point: the faces of its ``k`` nearest samples
    among 4 fixed barycentric samples per face (:func:`geo3d.ops.knn`, exact k-NN)."""
    from geo3d.ops import knn

    samples = _surface_samples(vertices.detach(), faces)
    k = min(k, samples.shape[1])
    idx = knn(points.detach(), samples, k).idx  # (B, N, k)
    return torch.div(idx, _BARY.shape[0], rounding_mode="floor")


def closest_surface_points(
    points: Tensor, vertices: Tensor, faces: Tensor, k: int = 16, candidates: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Closest points on a triangle mesh and their faces.

    The closest point is the exact point-triangle minimum over candidate faces
    (:func:`surface_candidates`, or ``candidates`` computed earlier, e.g. a few optimisation
    steps ago). It equals the true closest point unless the true closest face owns none of
    the k nearest samples. Measured against trimesh's exact ``closest_point`` (5000 points,
    1 mm noise, mildly posed body): on the tiny test body (long thin triangles, overlapping
    segments) k = 8 / 16 / 32 miss 1% / 0.3% / 0.2% of the points by at most 12 / 2.6 /
    0.01 mm; on the Anny-derived body, k = 16 misses 1.7% by at most 0.07 mm.

    Args:
        points: :math:`(B, N, 3)`.
        vertices: :math:`(B, V, 3)` (same dtype/device).
        faces: :math:`(F, 3)` long.
        k: candidate samples per point (ignored when ``candidates`` is given).
        candidates: optional :math:`(B, N, k')` long face indices.

    Returns:
        ``(closest (B, N, 3), face (B, N) long)``; ``closest`` is differentiable w.r.t.
        ``points`` and ``vertices``.
    """
    cand = surface_candidates(points, vertices, faces, k) if candidates is None else candidates
    B, N, kk = cand.shape
    bidx = torch.arange(B, device=points.device)
    with torch.no_grad():  # pick the face and the barycentrics (Danskin: no gradient needed)
        tri = vertices.detach()[bidx[:, None, None, None], faces[cand]]  # (B, N, k, 3, 3)
        p = points.detach()[:, :, None, :].expand(B, N, kk, 3)
        v, w = _closest_bary(p, tri[..., 0, :], tri[..., 1, :], tri[..., 2, :])
        q = tri[..., 0, :] + (tri[..., 1, :] - tri[..., 0, :]) * v[..., None] + (
            tri[..., 2, :] - tri[..., 0, :]
        ) * w[..., None]
        d2 = ((q - p) ** 2).sum(-1)  # (B, N, k)
        # a closest point on an edge or vertex is the same for every face sharing it: pick
        # the lowest face index among those within rounding of the minimum, not whichever
        # rounding favours (it differed for a rotated copy of the scan; the chosen face is
        # then kept for several optimisation steps, so the fits drifted mm apart)
        dmin = d2.min(-1, keepdim=True).values
        # rounding of q - p is ~eps * |coordinates|, so of d2 ~2 |q - p| eps |coordinates|
        err = 16 * torch.finfo(d2.dtype).eps * torch.maximum(
            p[..., :1, :].abs().amax(-1), tri.abs().amax((-1, -2, -3))[..., None])
        tied = d2 <= dmin + err * (2 * dmin.sqrt() + err)
        best = torch.where(tied, cand, torch.iinfo(cand.dtype).max).argmin(-1, keepdim=True)
        face = torch.gather(cand, 2, best)[..., 0]
        v = torch.gather(v, 2, best)[..., 0]
        w = torch.gather(w, 2, best)[..., 0]
    t = vertices[bidx[:, None, None], faces[face]]  # (B, N, 3, 3), differentiable
    closest = t[..., 0, :] + (t[..., 1, :] - t[..., 0, :]) * v[..., None] + (
        t[..., 2, :] - t[..., 0, :]
    ) * w[..., None]
    return closest, face


def _icp_translation_step(points: Tensor, vertices: Tensor, faces: Tensor, mu: float = 0.05,
                          min_dist: float = 1e-7) -> Tensor:
    """One Gauss-Newton update ``dt (B, 3)`` of the translation for ``sum_i d(p_i - dt, mesh)^2``.

    With ``r_i = p_i - q_i`` (``q_i`` the closest surface point) the gradient of ``d_i`` is
    ``-n_i = -r_i / |r_i|``, so the step solves ``(sum_i n_i n_i^T + mu I) dt = (1 + mu)
    sum_i r_i`` (point-to-plane ICP; ``mu`` adds a little point-to-point for conditioning).
    ``n_i`` is the residual's direction, continuous in the input even where the closest point
    lies on an edge shared by two faces (a face normal would jump there); points closer than
    ``min_dist`` metres to the surface use their face's normal instead. Rotating/translating
    the input rotates the step: equivariant."""
    q, f = closest_surface_points(points, vertices, faces, k=32)
    bidx = torch.arange(len(points), device=points.device)[:, None, None]
    tri = vertices[bidx, faces[f]]
    nf = torch.linalg.cross(tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :])
    nf = nf / nf.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(nf.dtype).tiny)
    r = points - q
    rn = r.norm(dim=-1, keepdim=True)
    n = torch.where(rn > min_dist, r / rn.clamp_min(min_dist), nf)
    eye = torch.eye(3, dtype=points.dtype, device=points.device)
    A = (n[..., :, None] * n[..., None, :]).sum(1) + mu * points.shape[1] * eye
    rhs = (1 + mu) * r.sum(1)
    return torch.linalg.solve(A, rhs[..., None])[..., 0]


# --------------------------------------------------------------------------------------------
# posing


def _pose(body_model: nn.Module, go: Tensor, bp: Tensor, betas: Tensor, transl: Tensor | None
          = None) -> Any:
    from geo3d.body import pose_body

    pose = torch.cat([go[:, None], bp], dim=1)
    return pose_body(body_model, pose, betas, transl)


def _model_num_joints(body_model: nn.Module) -> int:
    return int(body_model.J_regressor.shape[0])


def decode(
    net_out: dict[str, Tensor],
    body_model: nn.Module,
    points: Tensor,
    scale: float = 1.0,
    *,
    icp_steps: int = 5,
    icp_points: int = 1024,
) -> FitResult:
    """Turn :class:`ArtEqNet` output into a posed body with translation, in input units.

    The mesh is posed with ``global_orient``, ``body_pose`` and ``betas`` through
    :func:`geo3d.body.pose_body`; the translation is the equivariant estimate of the module
    docs (surface-centroid match, then ``icp_steps`` translation-only ICP updates).

    Args:
        net_out: ``{"global_orient": (B, 3, 3), "body_pose": (B, 23, 3, 3), "betas": (B, K),
            "part_logits": (B, N, P) (optional)}`` as returned by ``ArtEqNet`` for the points
            ``points * scale`` (metres). Other keys are ignored.
        body_model: an SMPL-layout smplx model (:func:`geo3d.body.load_body_model`, 24
            joints); its dtype and device are used for the output.
        points: :math:`(B, N, 3)` input points in input units (the same points the network
            saw, before scaling).
        scale: metres per input unit (> 0).
        icp_steps: translation-only ICP updates after the centroid match (0: centroid only).
        icp_points: the ICP uses at most this many points (:func:`canonical_subsample`:
            chosen by the point set alone, so the estimate stays rotation/translation-
            equivariant and does not depend on the row order).

    Returns:
        :class:`FitResult` (``part_labels = part_logits.argmax(-1)`` when given, ``loss``
        ``None``).

    Raises:
        ValueError: missing keys or wrong shapes in ``net_out`` (naming the key), bad
            ``points`` (shape, NaN/inf), ``scale <= 0``, a body model that is not 24-joint
            SMPL layout, non-rotation matrices (from :func:`geo3d.body.pose_body`).

    Example:
        >>> import os, tempfile, torch
        >>> from geo3d.body import load_body_model, write_tiny_body
        >>> m = load_body_model(write_tiny_body(os.path.join(tempfile.mkdtemp(), "t.npz")))
        >>> out = {"global_orient": torch.eye(3)[None], "betas": torch.zeros(1, 10),
        ...        "body_pose": torch.eye(3).expand(1, 23, 3, 3)}
        >>> r = decode(out, m, torch.rand(1, 100, 3) + 5.0)
        >>> r.vertices.shape, r.transl.shape
        (torch.Size([1, 768, 3]), torch.Size([1, 3]))

    Reference: ArtEq (arXiv:2304.10528): the network predicts rotations and betas of centred
    inputs; the translation estimate is geo3d's.
    """
    scale = _check_scale(scale)
    pts = _as_points(points)
    if not isinstance(pts, Tensor):
        raise ValueError("points: expected a tensor of shape (B, N, 3), got a list")
    if not isinstance(net_out, dict):
        raise ValueError(f"net_out: expected a dict of tensors, got {type(net_out).__name__}")
    if _model_num_joints(body_model) != 24:
        raise ValueError(f"body_model: expected an SMPL-layout model with 24 joints, got "
                         f"{_model_num_joints(body_model)}")
    if not isinstance(icp_steps, int) or isinstance(icp_steps, bool) or icp_steps < 0:
        raise ValueError(f"icp_steps: expected a non-negative int, got {icp_steps!r}")
    if not isinstance(icp_points, int) or isinstance(icp_points, bool) or icp_points < 1:
        raise ValueError(f"icp_points: expected a positive int, got {icp_points!r}")
    B, N = pts.shape[:2]
    for key in ("global_orient", "body_pose", "betas"):
        if key not in net_out:
            raise ValueError(f"net_out: expected key '{key}', got keys {sorted(net_out)}")
    dt, dev = body_model.v_template.dtype, body_model.v_template.device
    go = _check_rot("global_orient", net_out["global_orient"], (B, 3, 3)).to(dev, dt)
    bp = _check_rot("body_pose", net_out["body_pose"], (B, 23, 3, 3)).to(dev, dt)
    betas = net_out["betas"]
    if not isinstance(betas, Tensor) or betas.dim() != 2 or betas.shape[0] != B:
        raise ValueError(f"net_out['betas']: expected shape ({B}, K), got "
                         f"{tuple(betas.shape) if isinstance(betas, Tensor) else type(betas)}")
    betas = betas.to(dev, dt)
    labels = None
    if net_out.get("part_logits") is not None:
        lg = net_out["part_logits"]
        if not isinstance(lg, Tensor) or lg.dim() != 3 or tuple(lg.shape[:2]) != (B, N):
            raise ValueError(f"net_out['part_logits']: expected shape ({B}, {N}, P), got "
                             f"{tuple(lg.shape) if isinstance(lg, Tensor) else type(lg)}")
        labels = lg.argmax(-1).to(dev)
    pts_m, c, pos_dt = _centred_metres(pts, dev, dt, scale)
    out0 = _pose(body_model, go, bp, betas)
    faces = _faces(body_model)
    t = pts_m.mean(1) - _area_centroid(out0.vertices, faces)
    if icp_steps:
        sub = canonical_rows(pts_m, icp_points)
        for _ in range(icp_steps):
            t = t + _icp_translation_step(sub, out0.vertices + t[:, None], faces)
    return FitResult(
        betas=betas,
        global_orient=go,
        body_pose=bp,
        transl=_uncentred(t, c, scale, pos_dt),
        vertices=_uncentred(out0.vertices + t[:, None], c, scale, pos_dt),
        joints=_uncentred(out0.joints + t[:, None], c, scale, pos_dt),
        part_labels=labels,
    )


# --------------------------------------------------------------------------------------------
# objective


@dataclass
class FitWeights:
    """Weights of the fitting objective (module docs); data terms are in units of
    ``sigma`` (metres)."""

    sigma: float = 0.01
    point_to_surface: float = 1.0
    surface_to_points: float = 0.3
    pose: float = 1e-2
    limits: float = 10.0
    shape: float = 1e-2

    def __post_init__(self) -> None:
        self.check()

    def check(self, name: str = "weights") -> FitWeights:
        """``self`` if every weight is a finite number >= 0 and ``sigma`` > 0.

        Raises:
            ValueError: naming the field (``weights.sigma``).
        """
        for f in fields(self):
            v = getattr(self, f.name)
            ok = not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) \
                and math.isfinite(float(v)) and (float(v) > 0 if f.name == "sigma" else float(v) >= 0)
            if not ok:
                need = "> 0 (metres)" if f.name == "sigma" else ">= 0"
                raise ValueError(f"{name}.{f.name}: expected a finite number {need}, got {v!r}")
        return self


def _check_weights(weights: Any) -> FitWeights | None:
    """``None`` or a valid :class:`FitWeights` (checked again: fields may have changed)."""
    if weights is None:
        return None
    if not isinstance(weights, FitWeights):
        raise ValueError(f"weights: expected a FitWeights (e.g. FitWeights(sigma=0.02)) or "
                         f"None, got {type(weights).__name__}")
    return weights.check()


def _euler_xyz(R: Tensor) -> Tensor:
    """Angles ``(a, b, c)`` with ``R = Rx(a) Ry(b) Rz(c)`` (finite gradients; ``b`` clamped
    away from ``±pi/2``)."""
    sb = R[..., 0, 2].clamp(-1 + 1e-6, 1 - 1e-6)
    a = torch.atan2(-R[..., 1, 2], R[..., 2, 2])
    c = torch.atan2(-R[..., 0, 1], R[..., 0, 0])
    return torch.stack([a, torch.asin(sb), c], -1)


def pose_prior(body_pose: Tensor, weights: FitWeights | None = None) -> Tensor:
    """Pose prior per body, :math:`(B, 23, 3, 3) -> (B,)`: ``w_pose * sum ||R - I||_F^2 +
    w_limits * sum relu(Euler-angle violation of JOINT_LIMITS)^2``."""
    from geo3d.body import JOINT_LIMITS

    w = weights or FitWeights()
    eye = torch.eye(3, dtype=body_pose.dtype, device=body_pose.device)
    dev = ((body_pose - eye) ** 2).sum((-1, -2, -3))
    lim = JOINT_LIMITS[1:].to(body_pose)
    e = _euler_xyz(body_pose)
    viol = torch.relu(lim[..., 0] - e) + torch.relu(e - lim[..., 1])
    return w.pose * dev + w.limits * (viol**2).sum((-1, -2))


def fit_objective(
    points_m: Tensor,
    vertices: Tensor,
    faces: Tensor,
    body_pose: Tensor,
    betas: Tensor,
    weights: FitWeights | None = None,
    full_scan: bool = True,
    candidates: Tensor | None = None,
    s2p_candidates: Tensor | None = None,
) -> dict[str, Tensor]:
    """The fitting objective per scan (module docs); every entry :math:`(B,)`, ``"total"`` the
    weighted sum. ``points_m``/``vertices`` in metres; ``candidates``: cached candidate faces
    of the points (:func:`surface_candidates`); ``s2p_candidates``: cached :math:`(B, F, k)`
    candidate points of the face centroids (default: exact nearest point by k-NN)."""
    from geo3d.ops import knn

    w = weights or FitWeights()
    s2 = w.sigma**2
    q, _ = closest_surface_points(points_m, vertices, faces, candidates=candidates)
    p2s = ((points_m - q) ** 2).sum(-1).mean(1) / s2
    terms = {"point_to_surface": p2s}
    total = w.point_to_surface * p2s
    if full_scan:
        tri = vertices[:, faces]
        cen = tri.mean(2)
        area = 0.5 * torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0],
                                        tri[:, :, 2] - tri[:, :, 0]).norm(dim=-1).detach()
        if s2p_candidates is None:
            d2 = knn(cen, points_m, 1).dists[..., 0]
        else:  # nearest among cached candidate points (refreshed by the caller)
            bidx = torch.arange(len(cen), device=cen.device)[:, None, None]
            d2 = ((points_m[bidx, s2p_candidates] - cen[:, :, None]) ** 2).sum(-1).min(-1).values
        s2p = (area * d2).sum(1) / area.sum(1) / s2
        terms["surface_to_points"] = s2p
        total = total + w.surface_to_points * s2p
    terms["pose_prior"] = pose_prior(body_pose, w)
    terms["shape_prior"] = w.shape * (betas**2).sum(-1)
    terms["total"] = total + terms["pose_prior"] + terms["shape_prior"]
    return terms


def _sixd(R: Tensor) -> Tensor:
    return torch.cat([R[..., :, 0], R[..., :, 1]], -1)


def optimize_params(
    points_m: Tensor,
    body_model: nn.Module,
    go: Tensor,
    bp: Tensor,
    betas: Tensor,
    transl: Tensor,
    *,
    steps: int,
    lr: float = 0.02,
    rigid_steps: int = 0,
    weights: FitWeights | None = None,
    full_scan: bool = True,
    progress: bool = False,
    max_points: int | None = 2048,
    refresh_every: int = 10,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Adam on (6D global orient, 6D body pose, betas, transl) from the given start; the first
    ``rigid_steps`` move only the global orientation and translation. Metres throughout.

    The data terms use at most ``max_points`` points (:func:`canonical_subsample`: a
    fixed-seed subset chosen by the point set alone, not by its frame or row order). Every ``refresh_every`` steps (and for the final loss) each point's closest
    face is searched (:func:`closest_surface_points`) and the face centroids' 4 nearest input
    points are found; in between, a point's closest point moves on that fixed face and a
    centroid's nearest point is the nearest of its 4 (ICP-style fixed correspondences). Returns the optimised
    ``(go, bp, betas, transl, final total loss (B,))`` (the loss of the returned parameters)."""
    from geo3d.ops import knn
    from geo3d.rotations import sixd_to_matrix

    faces = _faces(body_model)
    nb = int(body_model.num_betas)
    betas = torch.nn.functional.pad(betas, (0, nb - betas.shape[1]))
    x_go = _sixd(go).detach().clone().requires_grad_(True)
    x_bp = _sixd(bp).detach().clone().requires_grad_(True)
    x_b = betas.detach().clone().requires_grad_(True)
    x_t = transl.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x_go, x_bp, x_b, x_t], lr=lr)
    it = range(steps + 1)
    if progress:
        try:
            from tqdm import tqdm

            it = tqdm(it, desc="fit", leave=False)
        except ImportError:
            pass
    if max_points is not None and points_m.shape[1] > max_points:
        # the same points whatever the frame or row order (a stride depended on the order)
        points_m = canonical_rows(points_m, max_points)
    loss = None
    cand = cand_s2p = None
    for step in it:
        with torch.enable_grad():
            R_go, R_bp = sixd_to_matrix(x_go), sixd_to_matrix(x_bp)
            out = _pose(body_model, R_go, R_bp, x_b, x_t)
            if step % refresh_every == 0 or step == steps:
                # full candidate search now; in between, each point keeps its closest face
                # (its closest point moves freely on that triangle)
                cand = surface_candidates(points_m, out.vertices, faces)
                cand = closest_surface_points(points_m, out.vertices.detach(), faces,
                                              candidates=cand)[1][..., None]
                if full_scan:
                    cen = out.vertices.detach()[:, faces].mean(2)
                    cand_s2p = knn(cen, points_m, min(4, points_m.shape[1])).idx
            terms = fit_objective(points_m, out.vertices, faces, R_bp, x_b, weights, full_scan,
                                  cand, cand_s2p)
            loss = terms["total"].detach()
            if step == steps:
                break
            opt.zero_grad(set_to_none=True)
            terms["total"].sum().backward()
        if step < rigid_steps:
            x_bp.grad = None
            x_b.grad = None
        opt.step()
    with torch.no_grad():
        R_go, R_bp = sixd_to_matrix(x_go), sixd_to_matrix(x_bp)
    return R_go.detach(), R_bp.detach(), x_b.detach(), x_t.detach(), loss  # type: ignore[return-value]


def refine_fit(
    fit: FitResult,
    points: Tensor,
    body_model: nn.Module,
    scale: float = 1.0,
    *,
    steps: int = 60,
    lr: float = 0.01,
    weights: FitWeights | None = None,
    full_scan: bool = True,
    progress: bool = False,
) -> FitResult:
    """Short optimisation of pose, betas and translation from ``fit`` (objective: module docs).

    Args:
        fit: the start (e.g. :func:`decode`'s), in input units.
        points: :math:`(B, N, 3)` scans in input units.
        body_model: SMPL-layout smplx model.
        scale: metres per input unit.
        steps, lr: Adam iterations and step size.
        weights: objective weights (:class:`FitWeights`).
        full_scan: include the surface-to-points term (False for partial scans).
        progress: show a tqdm bar.

    Returns:
        A new :class:`FitResult` (``part_labels`` kept, ``loss`` = final objective).

    The optimisation runs in the start's own frame (rotated by its global orientation), so
    it is rotation-equivariant: from a start that is rotated and moved with the scan, the
    refined fit is the refined fit rotated and moved (1e-8 m in float64; Adam's
    per-coordinate steps in a fixed frame were 0.7-1.7 cm off). The optimisation amplifies
    differences in its start, though: a float32 network's start carries rounding of ~1e-7
    relative, which the fixed-correspondence steps grew to ~0.5 mm on the demo net.

    Raises:
        ValueError: bad ``points`` (a ``meta`` tensor included), ``scale``, ``steps``
            (< 0), ``lr`` (<= 0), ``weights`` or non-bool ``full_scan``/``progress``;
            ``fit`` not a :class:`FitResult`, with another batch size, wrongly shaped
            fields, rotations that are not rotations, or vertices of another body model; a
            ``body_model`` that is not an smplx module (``None`` included).

    Reference: SMPLify (Bogo et al., ECCV 2016, arXiv:1607.08128) for the data + prior
    objective.
    """
    scale = _check_scale(scale)
    pts = _as_points(points)
    if not isinstance(pts, Tensor):
        raise ValueError("points: expected a tensor of shape (B, N, 3), got a list")
    if not (isinstance(body_model, nn.Module) and hasattr(body_model, "v_template")):
        raise ValueError(f"body_model: expected the smplx module the fit was made with, got "
                         f"{type(body_model).__name__}")
    _check_fit(fit, pts.shape[0], body_model)
    steps = _check_int("steps", steps, 0)
    lr = _check_lr(lr)
    weights = _check_weights(weights)
    for name, flag in (("full_scan", full_scan), ("progress", progress)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name}: expected True or False, got {flag!r}")
    dt, dev = body_model.v_template.dtype, body_model.v_template.device
    pts_m, c, pos_dt = _centred_metres(pts, dev, dt, scale)
    # optimise in the start's own frame (its global orientation): Adam's per-coordinate
    # steps are not rotation-equivariant, the start is, so the refined fit of a rotated scan
    # is the rotated refined fit
    Q = fit.global_orient.to(dev, dt)
    Qt = Q.transpose(-1, -2)
    betas0 = fit.betas.to(dev, dt)
    t0 = ((fit.transl.to(dev, torch.float64) - c) * scale).to(dt)
    j0 = _rest_root(body_model, betas0)
    go, bp, b, t, loss = optimize_params(
        pts_m @ Q, body_model, Qt @ Q, fit.body_pose.to(dev, dt), betas0,
        ((j0 + t0)[:, None] @ Q)[:, 0] - j0, steps=steps, lr=lr,
        weights=weights, full_scan=full_scan, progress=progress,
    )
    with torch.no_grad():
        out = _pose(body_model, go, bp, b, t)
        j1 = _rest_root(body_model, b)
        t = ((j1 + t)[:, None] @ Qt)[:, 0] - j1  # back to the scan's frame
        verts, joints = out.vertices @ Qt, out.joints @ Qt
    return FitResult(b, Q @ go, bp, _uncentred(t, c, scale, pos_dt),
                     _uncentred(verts, c, scale, pos_dt),
                     _uncentred(joints, c, scale, pos_dt), fit.part_labels, loss)


def _check_fit(fit: Any, B: int, body_model: nn.Module) -> None:
    """``fit`` must be a :class:`FitResult` of ``B`` bodies made with ``body_model``:
    tensors of the documented shapes, rotations that are rotations."""
    from geo3d.body._kinematics import check_rotation_values

    if not isinstance(fit, FitResult):
        raise ValueError(f"fit: expected a FitResult (fit_smpl, decode), got "
                         f"{type(fit).__name__}")
    V = int(body_model.v_template.shape[0])
    nb = int(body_model.num_betas)
    shapes = {"betas": (B, None), "global_orient": (B, 3, 3), "body_pose": (B, 23, 3, 3),
              "transl": (B, 3), "vertices": (B, V, 3)}
    for name, shape in shapes.items():
        x = getattr(fit, name)
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != len(shape) or \
                any(w is not None and w != g for w, g in zip(shape, x.shape, strict=True)):
            want = "(" + ", ".join("K" if w is None else str(w) for w in shape) + ")"
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            why = (" (a fit made with another body model?)" if name == "vertices"
                   and isinstance(x, Tensor) and x.dim() == 3 and x.shape[1] != V else "")
            raise ValueError(f"fit.{name}: expected a floating tensor of shape {want} for "
                             f"{B} scan(s), got {got}{why}")
    if fit.betas.shape[1] > nb:
        raise ValueError(f"fit.betas: expected at most the body model's {nb} components, got "
                         f"{fit.betas.shape[1]}")
    check_rotation_values("fit.global_orient", fit.global_orient)
    check_rotation_values("fit.body_pose", fit.body_pose)


def _rest_root(body_model: nn.Module, betas: Tensor) -> Tensor:
    """The root joint of each body of ``betas`` at rest, without translation ``(B, 3)`` (it
    does not move with the pose: SMPL rotates a body about its root joint)."""
    B = betas.shape[0]
    eye = torch.eye(3, dtype=betas.dtype, device=betas.device)
    out = _pose(body_model, eye.expand(B, 3, 3), eye.expand(B, _model_num_joints(body_model) - 1,
                                                          3, 3), betas)
    return out.joints[:, 0]


# --------------------------------------------------------------------------------------------
# fit_smpl


@functools.lru_cache(maxsize=4)
def _default_body_model(dtype: torch.dtype, device: str, num_betas: int | None = None
                        ) -> nn.Module:
    from geo3d.body import load_body_model
    from geo3d.body._anny import anny_smpl_model_path

    return load_body_model(anny_smpl_model_path(), num_betas=num_betas, dtype=dtype).to(device)


#: Names a ``body_model`` string may take besides a file path (as in the CLI, the configs
#: and the checkpoints' metadata: :func:`geo3d.apps.arteq._data.resolve_body_model`).
BODY_MODEL_NAMES = ("anny", "tiny")


def _looks_like_path(spec: str) -> bool:
    return Path(spec).exists() or os.sep in spec or "/" in spec or bool(Path(spec).suffix)


def resolve_body_model(
    body_model: nn.Module | str | os.PathLike | None, device: torch.device,
    dtype: torch.dtype = torch.float32, num_betas: int | None = None,
) -> nn.Module:
    """``None`` or ``"anny"`` -> the Anny-derived SMPL-layout model (cached per process;
    built once per machine, minutes), ``"tiny"`` -> the procedural test body, a path ->
    :func:`geo3d.body.load_body_model`, a module -> moved to ``device``.

    Raises:
        ValueError: a string that is neither a known name nor a path (lists the choices),
            or another type.
        FileNotFoundError: a path that does not exist.
    """
    from geo3d.body import load_body_model

    if body_model is None or body_model == "anny":  # cached: building it takes seconds
        return _default_body_model(dtype, str(device), num_betas)
    if isinstance(body_model, (str, os.PathLike)):
        spec = os.fspath(body_model)
        if spec in BODY_MODEL_NAMES:
            from geo3d.apps.arteq._data import resolve_body_model as _model_file

            return load_body_model(_model_file(spec), num_betas=num_betas,
                                   dtype=dtype).to(device)
        if not _looks_like_path(spec):
            raise ValueError(f"body_model: expected one of {', '.join(map(repr, BODY_MODEL_NAMES))}, "
                             f"a model file/folder or an smplx module, got {spec!r}")
        return load_body_model(spec, num_betas=num_betas, dtype=dtype).to(device)
    if isinstance(body_model, nn.Module) and hasattr(body_model, "v_template"):
        return body_model.to(device)
    raise ValueError(f"body_model: expected None, {' or '.join(map(repr, BODY_MODEL_NAMES))}, "
                     f"a model file path or an smplx module, got {type(body_model).__name__}")


def same_body_spec(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two ``body_model`` settings (names or paths) name the same model: a name
    and the path of the file it stands for are the same model (``"anny"`` and its cache
    file; nothing is built to find out)."""
    a, b = os.fspath(a), os.fspath(b)
    if a == b:
        return True

    def file_of(spec: str) -> Path:
        if spec == "anny":
            from geo3d.body._anny import anny_smpl_cache_file

            return anny_smpl_cache_file()
        if spec in BODY_MODEL_NAMES:
            from geo3d.apps.arteq._data import resolve_body_model as _model_file

            return _model_file(spec)
        return Path(spec)

    try:
        return file_of(a).resolve() == file_of(b).resolve()
    except OSError:  # pragma: no cover
        return False


def same_body_template(module: nn.Module, spec: str | os.PathLike) -> bool | None:
    """Whether a body ``module``'s template mesh is that of the model ``spec`` names (same
    vertex count, vertices within 1e-5 m); ``None`` when that model cannot be read on this
    machine (a file that is not here; ``"anny"`` not built yet: nothing is built to find
    out). A module of another gender, or another body, has another template."""
    spec = os.fspath(spec)
    try:
        if spec == "anny":
            from geo3d.body._anny import anny_smpl_cache_file

            path = anny_smpl_cache_file()
        elif spec in BODY_MODEL_NAMES:
            from geo3d.apps.arteq._data import resolve_body_model as _model_file

            path = _model_file(spec)
        else:
            path = Path(spec)
        if not path.exists():
            return None
        from geo3d.body import load_body_model

        ref = load_body_model(path, dtype=torch.float64).v_template
    except Exception:  # noqa: BLE001 - unreadable here: not a reason to refuse the module
        return None
    mine = getattr(module, "v_template", None)
    if not isinstance(mine, Tensor) or mine.shape != ref.shape:
        return False
    return bool(torch.allclose(mine.detach().to("cpu", torch.float64), ref, rtol=0, atol=1e-5))


def checkpoint_record(checkpoint: Any) -> dict[str, Any]:
    """What a checkpoint file records about its training (``body_model``, ``num_points``,
    ...: :func:`~geo3d.apps.arteq._checkpoint.checkpoint_info`); ``{}`` for a module."""
    if not isinstance(checkpoint, (str, os.PathLike)) or not Path(checkpoint).is_file():
        return {}
    from geo3d.apps.arteq._checkpoint import checkpoint_info

    return checkpoint_info(checkpoint)


#: seed of the subsample :func:`fit_smpl` draws from scans denser than the training scans
RESAMPLE_SEED = 0


def canonical_subsample(points: Tensor, m: int) -> Tensor:
    """Indices of ``m`` of the ``N`` points ``(N, 3)``, uniformly at random without
    replacement, chosen by the point set alone: the points are ranked by their distance to
    the centroid (float64; a ranking that neither a rigid motion nor a reordering of the
    rows changes) and ranks are drawn with a fixed seed. An area-uniform dense scan becomes
    an area-uniform scan of ``m`` points, as in training; the same scan in another frame or
    another row order gives the same points (up to exact distance ties). Sorted indices;
    all ``N`` when ``m >= N``."""
    n = points.shape[0]
    if m >= n:
        return torch.arange(n, device=points.device)
    x = points.detach().to(torch.float64)
    d = ((x - x.mean(0)) ** 2).sum(1)
    order = torch.argsort(d, stable=True)
    g = torch.Generator().manual_seed(RESAMPLE_SEED)
    ranks = torch.randperm(n, generator=g)[:m].to(points.device)
    return order[ranks].sort().values


def canonical_rows(points: Tensor, m: int) -> Tensor:
    """``(B, min(N, m), 3)``: :func:`canonical_subsample` of each scan of ``points (B, N, 3)``
    (the scans as they are when ``N <= m``)."""
    if points.shape[1] <= m:
        return points
    idx = torch.stack([canonical_subsample(p, m) for p in points])
    return torch.gather(points, 1, idx[..., None].expand(-1, -1, points.shape[-1]))


def _fit_distinct(net: nn.Module, model: nn.Module, uniq: Tensor, inverse: Tensor,
                  num_points: int | None, dtype: torch.dtype, scale: float, icp_steps: int,
                  refine: dict[str, Any] | None) -> FitResult:
    """The fit of one scan from its distinct points ``uniq (U, 3)`` (``torch.unique`` of the
    scan's rows; ``inverse (N,)`` maps every row to its distinct point): exact duplicates (merged
    views, repeated rows) are dropped, so they weigh nothing in the network's kNN
    neighbourhoods, the translation, the ICP or the refinement; the distinct points are
    subsampled to ``num_points`` (:func:`canonical_subsample`) for the network, centred on
    their own centroid as a training scan is. Every input point gets the part of its
    nearest network point. The result depends on the point set only (not on the frame, the
    row order or repetitions)."""
    from geo3d.ops import knn

    x = uniq[None]
    if num_points is not None and uniq.shape[0] > num_points:
        sub = uniq[canonical_subsample(uniq, num_points)]
        out = net(_centred_metres(sub[None], sub.device, dtype, scale)[0])
        nearest = knn(uniq[None].to(torch.float64), sub[None].to(torch.float64), 1).idx[..., 0]
        logits = out["part_logits"]
        out = {**out, "part_logits": torch.gather(
            logits, 1, nearest[..., None].expand(-1, -1, logits.shape[-1]))}
    else:
        out = net(_centred_metres(x, x.device, dtype, scale)[0])
    fit = decode(out, model, x, scale, icp_steps=icp_steps)
    if refine is not None:
        fit = refine_fit(fit, x, model, scale, **refine)
    labels = None if fit.part_labels is None else fit.part_labels[:, inverse]
    return replace(fit, part_labels=labels)


def load_net(checkpoint: Any, device: torch.device | str = "cpu") -> nn.Module:
    """An ArtEqNet from a path (``geo3d.apps.arteq._checkpoint.load_model`` when available,
    else a ``{"config", "state_dict"}`` file read with ``torch.load(weights_only=True)``) or an
    already-built module (returned as is, moved to ``device``).

    Raises:
        FileNotFoundError: ``checkpoint`` is a path that does not exist.
        IsADirectoryError: ``checkpoint`` is a folder.
        ValueError: ``checkpoint`` is neither a path nor a module.
        CheckpointError: (:class:`geo3d._app.CheckpointError`, a ``RuntimeError``) the file is
            truncated, corrupt, foreign, or its weights do not fit its configuration.
    """
    if isinstance(checkpoint, nn.Module):
        return checkpoint.to(device)
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise ValueError(f"checkpoint: expected a file path or an ArtEqNet, got "
                         f"{type(checkpoint).__name__}")
    path = Path(checkpoint)
    if not path.is_file() and not path.is_dir():  # a folder: load_checkpoint says so
        raise FileNotFoundError(f"checkpoint: expected an existing checkpoint file, got {path}")
    try:
        from geo3d.apps.arteq._checkpoint import load_model  # type: ignore[import-not-found]
    except ImportError:
        load_model = None
    if load_model is not None:
        net = load_model(path)
    else:
        from geo3d.apps.arteq._model import ArtEqNet

        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or "config" not in obj or "state_dict" not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"checkpoint: expected a file with keys 'config' and 'state_dict', "
                             f"got {keys}")
        net = ArtEqNet(**obj["config"])
        net.load_state_dict(obj["state_dict"])
    return net.to(device)


def _resolve_device(device: Any, points: Any) -> torch.device:
    """``device`` checked to exist here (:func:`geo3d._app.resolve_device`); ``None``: the
    device of ``points`` (CPU for arrays)."""
    from geo3d._app import resolve_device

    first = points[0] if isinstance(points, (list, tuple)) and points else points
    default = first.device if isinstance(first, Tensor) else torch.device("cpu")
    dev = resolve_device(device, "device", default=default)
    if dev.type == "meta":  # shapes only: nothing can be fitted there
        raise ValueError(f"device: expected a device that computes (cpu, cuda, ...), got "
                         f"{str(device if device is not None else dev)!r}")
    return dev


def _concat(results: Sequence[FitResult]) -> FitResult:
    def cat(name: str) -> Tensor:
        return torch.cat([getattr(r, name) for r in results])

    labels = None
    if all(r.part_labels is not None for r in results):
        n = max(int(r.part_labels.shape[1]) for r in results)  # type: ignore[union-attr]
        labels = torch.cat([torch.nn.functional.pad(r.part_labels, (0, n - r.part_labels.shape[1]),
                                                    value=-1) for r in results])  # type: ignore
    loss = cat("loss") if all(r.loss is not None for r in results) else None
    return FitResult(cat("betas"), cat("global_orient"), cat("body_pose"), cat("transl"),
                     cat("vertices"), cat("joints"), labels, loss)


def _chunks(points: list[Tensor] | Tensor, batch_size: int) -> list[Tensor]:
    if isinstance(points, Tensor):
        return list(points.split(batch_size))
    return list(points)  # ragged: one scan per chunk


def fit_smpl(
    points: Tensor | np.ndarray | Sequence[Tensor | np.ndarray],
    checkpoint: str | os.PathLike | nn.Module,
    body_model: nn.Module | str | os.PathLike | None = None,
    refine: bool = False,
    scale: float = 1.0,
    device: str | torch.device | None = None,
    *,
    batch_size: int = 16,
    icp_steps: int = 5,
    refine_steps: int = 60,
    full_scan: bool = True,
    weights: FitWeights | None = None,
    progress: bool = False,
    num_points: int | str | None = "auto",
) -> FitResult:
    """Fit SMPL-layout bodies to point clouds with a trained ArtEq network.

    Args:
        points: one scan :math:`(N, 3)`, a batch :math:`(B, N, 3)`, or a list of scans
            :math:`(N_i, 3)` (tensors or numpy arrays) in any frame and units.
        checkpoint: a checkpoint file or an ``ArtEqNet`` (moved to ``device``, put in eval
            mode).
        body_model: ``None`` (the body the checkpoint file records, else the Anny-derived
            SMPL-layout model of :mod:`geo3d.body`, built once per machine), ``"anny"``,
            ``"tiny"``, a model file, or an smplx module (moved to ``device``). Must match
            the body the network was trained on (names and paths are compared; a module's
            template mesh is compared with the recorded model's when that is on this
            machine).
        refine: run :func:`refine_fit` (``refine_steps`` Adam steps) from the network's estimate.
        scale: metres per input unit (mm: 0.001): a Python/numpy scalar or a one-element
            tensor.
        device: ``"cpu"``/``"cuda"``; default: the device of ``points`` (CPU for arrays).
        batch_size: scans per network call (ragged lists run one scan at a time).
        icp_steps: translation ICP updates in :func:`decode`.
        refine_steps: optimisation steps with ``refine=True``.
        full_scan: the scans cover the whole body (False: skip the surface-to-points term of
            the refinement, for partial scans).
        weights: objective weights of the refinement.
        progress: tqdm bar during refinement.
        num_points: points per scan the network sees. The network's neighbourhoods (kNN)
            were learned at one scan density, so a denser scan is subsampled to it: its
            distinct points (exact duplicates dropped), uniformly at random, chosen by the
            point set alone (:func:`canonical_subsample`: the same points whatever the
            frame or the row order of the scan); every input point still gets the part of
            its nearest subsampled point, and the translation, ICP and refinement use all
            points. ``"auto"``: the points per training scan the checkpoint file records
            (none recorded, or a module: as ``None``); an int: that many; ``"all"`` or
            ``None``: all points, whatever the density. Sparser scans are used as they
            are.

    Returns:
        :class:`FitResult` over all scans in input order; lengths in input units;
        ``part_labels (B, N_max)`` from the network (``-1`` pads ragged lists);
        ``seconds_per_scan`` the wall-clock time per scan of this call.

    Raises:
        FileNotFoundError: ``checkpoint`` is a missing file.
        IsADirectoryError: ``checkpoint`` is a folder.
        CheckpointError: (:class:`geo3d._app.CheckpointError`, a ``RuntimeError``, not a
            ``ValueError``) the checkpoint file is truncated, corrupt, foreign, or its
            weights do not fit its configuration.
        ValueError: bad ``points`` (shape, NaN/inf, empty, non-numeric, all points at one
            location, fewer points than the network's neighbourhood ``k``), ``scale`` (not
            a positive finite scalar), non-bool ``refine``/``full_scan``, negative
            ``icp_steps``/``refine_steps``, bad ``batch_size``, ``weights`` (not a
            :class:`FitWeights`, a negative or non-finite weight, ``sigma <= 0``),
            ``device`` (unknown, not available here, or ``"meta"``), ``checkpoint`` (not a
            path or module), ``num_points`` (not ``"auto"``, ``"all"``, ``None`` or an int
            >= the network's ``k``), or a ``body_model`` that is not a known name/path/module or
            differs from the one the checkpoint records.

    Warns:
        UserWarning: (once per call) the scans' extent times ``scale`` is outside
            :data:`BODY_EXTENT_M` (e.g. millimetres passed with ``scale=1``).

    Example:
        >>> r = fit_smpl(scan_mm, "arteq.ckpt", scale=0.001)  # doctest: +SKIP
        >>> r.vertices.shape  # (1, V, 3), millimetres  # doctest: +SKIP

    Reference: ArtEq, Feng et al., ICCV 2023, arXiv:2304.10528; refinement: SMPLify, Bogo et
    al., ECCV 2016, arXiv:1607.08128.
    """
    t0 = time.perf_counter()
    scale = _check_scale(scale)
    batch_size = _check_int("batch_size", batch_size, 1)
    icp_steps = _check_int("icp_steps", icp_steps, 0)
    refine_steps = _check_int("refine_steps", refine_steps, 0)
    weights = _check_weights(weights)
    for name, flag in (("refine", refine), ("full_scan", full_scan), ("progress", progress)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name}: expected True or False, got {flag!r}")
    pts = _as_points(points)
    _check_extent(pts)
    dev = _resolve_device(device, pts)
    record = checkpoint_record(checkpoint)  # read once: the body and the scan density
    trained_on = str(record["body_model"]) if record.get("body_model") else None
    if trained_on is not None:
        if body_model is None:
            body_model = trained_on
        elif isinstance(body_model, (str, os.PathLike)) and not same_body_spec(body_model,
                                                                               trained_on):
            raise ValueError(f"body_model: expected the checkpoint's body model {trained_on!r} "
                             f"(the network was trained on it), got {os.fspath(body_model)!r}")
        elif isinstance(body_model, nn.Module) and same_body_template(body_model,
                                                                      trained_on) is False:
            raise ValueError(f"body_model: expected the checkpoint's body model {trained_on!r} "
                             f"(the network was trained on it), got a module with another "
                             f"template mesh")
    if isinstance(num_points, str) and num_points == "auto":
        n = record.get("num_points")
        num_points = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
    elif isinstance(num_points, str) and num_points == "all":  # as the CLI's --num-points all
        num_points = None
    elif num_points is not None:
        if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
            raise ValueError(f"num_points: expected 'auto', 'all' (or None) or an int >= the "
                             f"network's neighbourhood size k, got {num_points!r}")
    net = load_net(checkpoint, dev)
    net.eval()
    k = getattr(net, "config", {}).get("k")
    if isinstance(k, int):
        _check_min_points(pts, k)
        if num_points is not None and num_points < k:
            raise ValueError(f"num_points: expected at least the network's neighbourhood size "
                             f"k = {k}, got {num_points}")
    warn_scale(pts, scale)
    net_dtype = next((p.dtype for p in net.parameters()), torch.float32)
    nb = getattr(net, "config", {}).get("num_betas")
    model = resolve_body_model(body_model, dev, net_dtype,
                               nb if isinstance(body_model, str) and isinstance(nb, int) else None)
    results = []
    opts = dict(steps=refine_steps, full_scan=full_scan, weights=weights, progress=progress)
    for chunk in _chunks(pts, batch_size):
        chunk = chunk.to(dev)
        n = chunk.shape[1]
        distinct = [torch.unique(s, dim=0, return_inverse=True) for s in chunk]
        if (num_points is not None and n > num_points) or any(
                u.shape[0] < n for u, _ in distinct):
            # a scan to subsample or with repeated points: one scan at a time, its
            # distinct points only
            with torch.no_grad():
                results.extend(_fit_distinct(net, model, u, inv, num_points, net_dtype, scale,
                                             icp_steps, opts if refine else None)
                               for u, inv in distinct)
            continue
        with torch.no_grad():
            out = net(_centred_metres(chunk, dev, net_dtype, scale)[0])  # translation-invariant
            fit = decode(out, model, chunk, scale, icp_steps=icp_steps)
        if refine:
            fit = refine_fit(fit, chunk, model, scale, **opts)
        results.append(fit)
    res = _concat(results)
    res.seconds_per_scan = (time.perf_counter() - t0) / len(res)
    return res
