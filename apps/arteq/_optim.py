"""The pure-optimisation baseline: multi-start SMPLify-style fitting of an SMPL-layout body to
point clouds, with the objective of :mod:`._fit` (point-to-surface, surface-to-points, pose
and shape priors) and the same :class:`~._fit.FitResult`.

Starts: the T-pose (identity body pose, zero betas) under ``num_starts`` of the 24 rotations
of the cube (the rotation group of the octahedron), ordered so that the first 6 send the
body's up axis to the 6 axis directions, each translated so that the mesh's surface centroid
sits on the points' centroid, then aligned by a few closed-form rigid ICP iterations. Every
start is optimised (first rigidly: global orientation and translation only, then everything)
and the start with the lowest final objective wins.

Reference: SMPLify (Bogo et al., "Keep it SMPL", ECCV 2016, arXiv:1607.08128) for the
objective and staging; ArtEq (Feng et al., ICCV 2023, arXiv:2304.10528) compares against
such an optimisation baseline.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence

import numpy as np
import torch
from geo3d.apps.arteq._fit import (
    FitResult,
    FitWeights,
    _area_centroid,
    _as_points,
    _centred_metres,
    _check_extent,
    _check_int,
    _check_lr,
    _check_scale,
    _check_weights,
    _chunks,
    _concat,
    _faces,
    _pose,
    _resolve_device,
    _uncentred,
    canonical_rows,
    closest_surface_points,
    optimize_params,
    resolve_body_model,
    warn_scale,
)
from torch import Tensor, nn

__all__ = ["cube_rotations", "optimize_smpl", "rigid_icp"]


def cube_rotations(dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
                   ) -> Tensor:
    """The 24 rotations of the cube (signed permutation matrices with det +1), :math:`(24, 3,
    3)`. Elements ``i, i + 6, i + 12, i + 18`` send the y axis (``R[:, 1]``, the body's up) to
    the same direction, the ``i``-th of ``+y, -y, +x, -x, +z, -z``; element 0 is the identity.

    Example:
        >>> R = cube_rotations()
        >>> R.shape, bool(torch.allclose(R[0], torch.eye(3, dtype=R.dtype)))
        (torch.Size([24, 3, 3]), True)
    """
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            M = np.zeros((3, 3))
            for i, j in enumerate(perm):
                M[i, j] = signs[i]
            if np.linalg.det(M) > 0:
                mats.append(M)
    ups = [np.array(u, dtype=float) for u in ((0, 1, 0), (0, -1, 0), (1, 0, 0), (-1, 0, 0),
                                               (0, 0, 1), (0, 0, -1))]
    groups: list[list[np.ndarray]] = [[] for _ in ups]
    for M in mats:
        i = next(i for i, u in enumerate(ups) if np.allclose(M[:, 1], u))
        groups[i].append(M)
    for g in groups:  # identity-like first: sort by how far the z axis turns
        g.sort(key=lambda M: (-M[2, 2], -M[0, 0]))
    ordered = [groups[i][k] for k in range(4) for i in range(6)]
    return torch.tensor(np.stack(ordered), dtype=dtype, device=device)


def rigid_icp(points_m: Tensor, vertices: Tensor, faces: Tensor, iters: int = 10,
              full_scan: bool = True) -> tuple[Tensor, Tensor]:
    """Closed-form rigid ICP moving the mesh onto the points: ``(R (B, 3, 3), t (B, 3))``
    with ``vertices @ R.T + t`` aligned. Each iteration pairs every point with its closest
    surface point and (``full_scan``) every vertex with its nearest point, and solves for the
    rigid motion by Kabsch (W. Kabsch, Acta Cryst. A32, 1976, DOI 10.1107/S0567739476001873;
    Besl & McKay, "A Method for Registration of 3-D Shapes", TPAMI 1992,
    DOI 10.1109/34.121791)."""
    from geo3d.ops import knn
    from geo3d.rotations import kabsch

    B = points_m.shape[0]
    R = torch.eye(3, dtype=vertices.dtype, device=vertices.device).repeat(B, 1, 1)
    t = torch.zeros(B, 3, dtype=vertices.dtype, device=vertices.device)
    v = vertices
    for _ in range(iters):
        q, _ = closest_surface_points(points_m, v, faces)
        src, dst = q, points_m
        if full_scan:
            nn_idx = knn(v, points_m, 1).idx[..., 0]
            src = torch.cat([src, v], 1)
            dst = torch.cat([dst, torch.gather(points_m, 1, nn_idx[..., None].expand(-1, -1, 3))],
                            1)
        dR, dt = kabsch(src, dst)
        v = v @ dR.transpose(1, 2) + dt[:, None]
        R = dR @ R
        t = (dR @ t[..., None])[..., 0] + dt
    return R, t


def _labels_from_surface(points_m: Tensor, vertices: Tensor, faces: Tensor,
                         lbs_weights: Tensor) -> Tensor:
    """ArtEq part of each point: argmax of the skinning weights averaged over its closest
    face's vertices, merged to ArtEq's 22 parts."""
    from geo3d.body import arteq_part_labels

    _, f = closest_surface_points(points_m, vertices, faces, k=32)
    w = lbs_weights[faces[f]].mean(-2)  # (B, N, 24)
    return arteq_part_labels(w / w.sum(-1, keepdim=True))


def optimize_smpl(
    points: Tensor | np.ndarray | Sequence[Tensor | np.ndarray],
    body_model: nn.Module | str | os.PathLike | None = None,
    *,
    num_starts: int = 24,
    steps: int = 150,
    rigid_steps: int | None = None,
    lr: float = 0.02,
    scale: float = 1.0,
    full_scan: bool = True,
    weights: FitWeights | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    max_points: int | None = 2048,
    icp_iters: int = 10,
    progress: bool = False,
) -> FitResult:
    """Fit SMPL-layout bodies to point clouds by multi-start optimisation (no network).

    Args:
        points: :math:`(N, 3)`, :math:`(B, N, 3)` or a list of :math:`(N_i, 3)` scans (tensors
            or arrays), any frame and units.
        body_model: ``None`` or ``"anny"`` (the Anny-derived SMPL-layout model), ``"tiny"``,
            a model file, or an smplx module (moved to ``device``; its dtype is used).
        num_starts: starts per scan (1..24, the first ``num_starts`` of
            :func:`cube_rotations`).
        steps: Adam steps per start; the first ``rigid_steps`` (default ``steps // 5``) move
            only global orientation and translation.
        lr: Adam step size.
        scale: metres per input unit (mm: 0.001).
        full_scan: include the surface-to-points term (False for partial scans).
        weights: objective weights (:class:`~._fit.FitWeights`).
        device: default: the device of ``points``.
        batch_size: scans optimised together (times ``num_starts`` bodies per step).
        max_points: points per scan used by the data terms (fixed stride subsample).
        icp_iters: closed-form rigid ICP iterations (:func:`rigid_icp`, on at most ~1000
            points) aligning each start before the optimisation (0: none).
        progress: tqdm bar.

    Returns:
        :class:`~._fit.FitResult` in input units; ``part_labels`` from the skinning weights of
        each point's closest face, ``loss`` the winning start's objective,
        ``seconds_per_scan`` the wall-clock time per scan.

    Raises:
        ValueError: bad ``points`` (shape, NaN/inf, all points at one location),
            ``scale`` (not a positive finite scalar), ``num_starts`` outside 1..24, negative
            ``steps``/``icp_iters``, ``lr <= 0``, ``max_points < 1``, bad
            ``batch_size``/``rigid_steps``/``device``/``weights``, non-bool
            ``full_scan``/``progress``.

    Warns:
        UserWarning: the scans' extent times ``scale`` is far from a body's (see
            :func:`~._fit.scale_warning`).

    Example:
        >>> import os, tempfile, torch
        >>> from geo3d.body import load_body_model, write_tiny_body, pose_body
        >>> m = load_body_model(write_tiny_body(os.path.join(tempfile.mkdtemp(), "t.npz")))
        >>> pts = pose_body(m, torch.zeros(1, 72)).vertices
        >>> r = optimize_smpl(pts, m, num_starts=1, steps=2)
        >>> r.vertices.shape
        torch.Size([1, 768, 3])

    Reference: SMPLify (arXiv:1607.08128); ArtEq's optimisation baseline (arXiv:2304.10528).
    """
    t0 = time.perf_counter()
    scale = _check_scale(scale)
    for name, val, lo in (("num_starts", num_starts, 1), ("steps", steps, 0),
                          ("batch_size", batch_size, 1)):
        if not isinstance(val, int) or isinstance(val, bool) or val < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {val!r}")
    lr = _check_lr(lr)
    weights = _check_weights(weights)
    icp_iters = _check_int("icp_iters", icp_iters, 0)
    if max_points is not None:
        max_points = _check_int("max_points", max_points, 1)
    for name, flag in (("full_scan", full_scan), ("progress", progress)):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"{name}: expected True or False, got {flag!r}")
    if num_starts > 24:
        raise ValueError(f"num_starts: expected at most 24 (the cube's rotations), got "
                         f"{num_starts}")
    if rigid_steps is None:
        rigid_steps = steps // 5
    if not isinstance(rigid_steps, int) or isinstance(rigid_steps, bool) or not (
        0 <= rigid_steps <= steps
    ):
        raise ValueError(f"rigid_steps: expected an int in [0, steps={steps}], got "
                         f"{rigid_steps!r}")
    pts = _as_points(points)
    _check_extent(pts)
    dev = _resolve_device(device, pts)
    warn_scale(pts, scale)
    model = resolve_body_model(body_model, dev)
    dt = model.v_template.dtype
    faces = _faces(model)
    S = num_starts
    starts = cube_rotations(dt, dev)[:S]
    nb = int(model.num_betas)
    eye = torch.eye(3, dtype=dt, device=dev)
    results = []
    for chunk in _chunks(pts, batch_size):
        pm, c, pos_dt = _centred_metres(chunk, dev, dt, scale)
        B = pm.shape[0]
        go = starts.repeat(B, 1, 1)  # (B*S, 3, 3), scan-major
        bp = eye.expand(B * S, 23, 3, 3)
        betas = torch.zeros(B * S, nb, dtype=dt, device=dev)
        with torch.no_grad():
            o0 = _pose(model, go, bp, betas)
            pm_rep = pm.repeat_interleave(S, 0)
            transl = pm_rep.mean(1) - _area_centroid(o0.vertices, faces)
            if icp_iters:
                sub = canonical_rows(pm_rep, 1000)  # the same points in any row order
                Ri, ti = rigid_icp(sub, o0.vertices + transl[:, None], faces, icp_iters,
                                   full_scan)
                # the mesh rotates about its pelvis: move the pelvis P0 = J0 + transl rigidly
                pelvis = o0.joints[:, 0] + transl
                go = Ri @ go
                transl = (Ri @ pelvis[..., None])[..., 0] + ti - o0.joints[:, 0]
        go, bp, betas, transl, loss = optimize_params(
            pm_rep, model, go, bp, betas, transl, steps=steps, lr=lr, rigid_steps=rigid_steps,
            weights=weights, full_scan=full_scan, progress=progress, max_points=max_points,
        )
        best = loss.view(B, S).argmin(1) + torch.arange(B, device=dev) * S
        go, bp, betas, transl, loss = go[best], bp[best], betas[best], transl[best], loss[best]
        with torch.no_grad():
            out = _pose(model, go, bp, betas, transl)
            labels = _labels_from_surface(pm, out.vertices, faces, model.lbs_weights)
        results.append(FitResult(betas, go, bp, _uncentred(transl, c, scale, pos_dt),
                                 _uncentred(out.vertices, c, scale, pos_dt),
                                 _uncentred(out.joints, c, scale, pos_dt), labels, loss))
    res = _concat(results)
    res.seconds_per_scan = (time.perf_counter() - t0) / len(res)
    return res
