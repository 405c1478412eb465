"""Test-time assembly pipeline: network outputs -> poses (matching, graph, refinement).

``method="matching"`` (default) turns the correspondence head's per-point descriptors
(``out["desc"]``, rotation-invariant) and fracture-surface logits (``out["frac_score"]``)
into poses: pairwise matching + RANSAC (:func:`~geo3d.apps.assembly._matching.pairwise_poses`),
a maximum spanning tree from the anchor with the network's poses as the fallback for
pieces without a reliable edge (:func:`~geo3d.apps.assembly._matching.global_assembly`),
and a joint refinement (:func:`~geo3d.apps.assembly._refine.refine_poses`).
``method="network"`` returns the network's own poses (``out["rot"]``, ``out["trans"]``).

Frame of the result: the anchor (largest piece, :func:`geo3d.eval.anchor_parts`) keeps the
network's pose ``T_a`` (identity when ``out`` has no poses); every other piece is placed
relative to it, ``T_i = T_a G_i`` with ``G_i`` its pose in the anchor's input frame. With
an equivariant network (``T_a(g p) = T_a(p) g⁻¹``) the assembled object is therefore
invariant to a rigid motion of any input piece, the anchor included.

Reference: Y. Lu et al., "Jigsaw: Learning to Assemble Multiple Fractured Objects",
NeurIPS 2023, arXiv:2305.17975 (the same stages: fracture-surface segmentation,
matching, pairwise poses, global alignment).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["assemble_from_outputs", "network_poses", "PIPELINE_METHODS", "STAGES"]

PIPELINE_METHODS = ("matching", "network", "select", "fracture_registration")
#: keys of ``timings`` of ``method="matching"`` (seconds, summed over the batch's objects;
#: ``"objects"`` counts them); ``method="select"`` times ``"select"`` and ``"total"``,
#: ``method="fracture_registration"`` ``"fracture"`` and ``"total"``
STAGES = ("match", "ransac", "global", "refine", "total")


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def network_poses(out: dict[str, Any], B: int, P: int, dtype: torch.dtype,
                  device: torch.device) -> Tensor | None:
    """``(B, P, 4, 4)`` poses from ``out["rot"] (B, P, 3, 3)`` and ``out["trans"] (B, P, 3)``
    (``None`` when ``out`` has no poses).

    Raises:
        ValueError: ``rot``/``trans`` of the wrong shape.

    Example:
        >>> out = {"rot": torch.eye(3).expand(1, 2, 3, 3), "trans": torch.ones(1, 2, 3)}
        >>> network_poses(out, 1, 2, torch.float64, torch.device("cpu"))[0, 1, :3, 3]
        tensor([1., 1., 1.], dtype=torch.float64)
    """
    rot, trans = out.get("rot"), out.get("trans")
    if rot is None or trans is None:
        return None
    if not isinstance(rot, Tensor) or rot.shape != (B, P, 3, 3):
        raise ValueError(f"out['rot']: expected shape ({B}, {P}, 3, 3), got {_shape(rot)}")
    if not isinstance(trans, Tensor) or trans.shape != (B, P, 3):
        raise ValueError(f"out['trans']: expected shape ({B}, {P}, 3), got {_shape(trans)}")
    T = torch.zeros(B, P, 4, 4, dtype=dtype, device=device)
    T[..., :3, :3] = rot.detach().to(device, dtype)
    T[..., :3, 3] = trans.detach().to(device, dtype)
    T[..., 3, 3] = 1.0
    return T


def _refine_subset(points: Tensor, G: Tensor, matches: dict, anchor: int, keep: list[int],
                   normals: Tensor | None, steps: int, kwargs: dict, refine_poses: Any
                   ) -> Tensor:
    """:func:`refine_poses` on the pieces ``keep`` only (the others keep ``G``)."""
    pos = {j: k for k, j in enumerate(keep)}
    sub = {(pos[i], pos[j]): m for (i, j), m in matches.items() if i in pos and j in pos}
    idx = torch.tensor(keep, dtype=torch.long, device=points.device)
    Gs = refine_poses(points[idx], G[idx], sub, pos[anchor],
                      valid=torch.ones(len(keep), dtype=torch.bool, device=points.device),
                      normals=None if normals is None else normals[idx], steps=steps, **kwargs)
    G = G.clone()
    G[idx] = Gs
    return G


def object_pose(templates: Any, points: list[Tensor], G: Tensor,
                T_net: Tensor | None = None) -> Tensor:
    """The pose :math:`(4, 4)` float64 that puts an object assembled by ``G`` in the
    dataset's frame: ``templates`` (a :class:`~geo3d.apps.assembly._canonical.TemplateBank`)
    registers the union of the pieces ``points`` (:math:`(N_i, 3)` each, input frames)
    placed by ``G`` :math:`(P, 4, 4)` (relative poses, e.g. anchor frame); the network's
    poses ``T_net`` :math:`(P, 4, 4)` (optional) each imply a pose of the whole object,
    ``T_net[i] G[i]⁻¹``, whose rotations are extra candidates."""
    X = torch.cat([p.double() @ g[:3, :3].T + g[:3, 3] for p, g in zip(points, G.double(),
                                                                         strict=True)])
    cand = None
    if T_net is not None:
        cand = T_net[:, :3, :3].double() @ G[:, :3, :3].double().transpose(-1, -2)
    T, _ = templates.pose(X, cand)
    return T


def assemble_from_outputs(
    points: Tensor,
    valid: Tensor,
    out: dict[str, Any],
    method: str = "matching",
    refine: bool = True,
    generator: torch.Generator | None = None,
    timings: dict[str, float] | None = None,
    *,
    normals: Tensor | None = None,
    match_method: str = "sinkhorn",
    max_points: int = 256,
    score_min: float = 0.5,
    min_points: int = 32,
    rel_thresh: float = 0.1,
    ransac_iters: int = 256,
    min_score: float = 6.0,
    refine_steps: int = 10,
    match_kwargs: dict[str, float] | None = None,
    refine_kwargs: dict[str, float] | None = None,
    select_kwargs: dict[str, float] | None = None,
    fracture_kwargs: dict[str, Any] | None = None,
    templates: Any | None = None,
) -> Tensor:
    """Poses of the pieces of a batch of objects from the network's outputs.

    Args:
        points: the pieces as given to the network, shape :math:`(B, P, N, 3)` (each in
            its own frame; padded pieces: anything finite).
        valid: valid pieces, shape :math:`(B, P)` bool.
        out: the model's output dict: ``"rot" (B, P, 3, 3)``, ``"trans" (B, P, 3)`` (the
            network's poses; fallback and anchor placement), ``"desc" (B, P, N, C)``
            pose-invariant descriptors, ``"frac_score" (B, P, N)`` fracture-surface
            logits (optional: all points count as fracture points). Without ``"desc"``
            the network's poses are returned.
        method: ``"matching"`` (default), ``"network"`` or ``"select"`` (each piece's
            pose chosen among the network's hypotheses ``out["hyp_rot"]``,
            ``out["hyp_trans"]``, ``out["hyp_logits"]`` by physical plausibility, kept only
            when the assembly beats the network's by a margin:
            :func:`~geo3d.apps.assembly._plausibility.select_hypotheses`). With
            ``"matching"``, pieces that no reliable match edge reaches keep the network's
            pose exactly (they are not refined either): no move on weak evidence.
            ``"fracture_registration"``: no descriptors needed; fracture points from local
            geometric features + a small classifier, pieces merged greedily by
            multistart ICP of their fracture patches
            (:func:`~geo3d.apps.assembly._fracture_registration.fracture_assembly`; needs
            open3d and more than 64 points per piece, best with ~1000 surface points and
            true normals; the anchor keeps the network's pose, identity without one, and
            pieces the registration does not connect keep their pose relative to the
            anchor from the network, its ``initial`` fallback). With ``templates``, the
            assembled object is then put in the dataset's frame by registration to the
            training objects instead (see ``templates``).
        refine: run :func:`~geo3d.apps.assembly._refine.refine_poses` after the spanning
            tree.
        generator: optional :class:`torch.Generator` for RANSAC (used object by object,
            pair by pair, in order).
        timings: optional dict; wall seconds per stage (:data:`STAGES`) are added to it,
            summed over the objects, and ``"objects"`` counts the objects.
        normals: optional outward normals of the input points, shape :math:`(B, P, N, 3)`
            (the refinement estimates them otherwise).
        match_method, max_points, score_min, min_points, rel_thresh, ransac_iters: see
            :func:`~geo3d.apps.assembly._matching.pairwise_poses` (``match_method`` is its
            ``method``, ``ransac_iters`` its ``iters``).
        min_score: inlier score of a reliable edge
            (:func:`~geo3d.apps.assembly._matching.global_assembly`).
        refine_steps: LM steps of the refinement (int >= 0).
        match_kwargs, refine_kwargs, select_kwargs, fracture_kwargs: extra keyword
            options for ``match_pieces`` / ``refine_poses`` / ``select_hypotheses`` /
            ``fracture_assembly`` (keys checked against their keyword-only parameters).
        templates: optional :class:`~geo3d.apps.assembly._canonical.TemplateBank` of the
            training objects (``method="fracture_registration"`` only): the object's
            pose (Breaking Bad's absolute protocol) is then the bank's registration of the
            assembled pieces, with the poses that the network's per-piece predictions
            imply for the whole object as extra candidates, instead of the network's pose
            of the anchor. Relative poses are unchanged.

    Returns:
        Poses :math:`(B, P, 4, 4)` (dtype of ``points``; float16/bfloat16 input is
        processed in float32 and the poses cast back): ``T[b, i] @ [p, 1]`` places point
        ``p`` of input piece ``i`` in the assembled frame; identity for padded pieces.

    Raises:
        ValueError: bad shapes, an unknown ``method``, or ``method="network"`` (or no
            ``"desc"``) without ``out["rot"]``/``out["trans"]``; a non-bool ``refine``, a
            negative ``refine_steps``, unknown ``match_kwargs``/``refine_kwargs`` keys.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> pts = torch.randn(1, 2, 64, 3, generator=g, dtype=torch.float64)
        >>> pts[0, 1] = pts[0, 0] + 1.0
        >>> d = torch.randn(64, 8, generator=g, dtype=torch.float64).expand(1, 2, 64, 8)
        >>> T = assemble_from_outputs(pts, torch.ones(1, 2, dtype=torch.bool), {"desc": d},
        ...                           refine=False, generator=g)
        >>> placed = pts[0] @ T[0, :, :3, :3].transpose(-1, -2) + T[0, :, None, :3, 3]
        >>> bool((placed[0] - placed[1]).abs().max() < 1e-9)
        True
    """
    from geo3d.apps.assembly._matching import (
        _check_kwargs,
        _clock,
        _inverse,
        global_assembly,
        match_pieces,
        pairwise_poses,
    )
    from geo3d.apps.assembly._plausibility import select_hypotheses
    from geo3d.apps.assembly._refine import estimate_normals, refine_poses

    from geo3d.eval import anchor_parts

    if not isinstance(points, Tensor) or points.dim() != 4 or points.shape[-1] != 3 or \
            not points.is_floating_point():
        raise ValueError(f"points: expected a floating-point tensor of shape (B, P, N, 3), "
                         f"got {_shape(points)}")
    B, P, N = points.shape[:3]
    if not isinstance(valid, Tensor) or valid.shape != (B, P):
        raise ValueError(f"valid: expected shape ({B}, {P}), got {_shape(valid)}")
    valid = valid.to(points.device).bool()
    if not isinstance(out, dict):
        raise ValueError(f"out: expected the model's output dict, got {type(out).__name__}")
    if method not in PIPELINE_METHODS:
        raise ValueError(f"method: expected one of {PIPELINE_METHODS}, got {method!r}")
    if not isinstance(refine, bool):
        raise ValueError(f"refine: expected True or False, got {refine!r}")
    if not isinstance(refine_steps, int) or isinstance(refine_steps, bool) or refine_steps < 0:
        raise ValueError(f"refine_steps: expected an int >= 0, got {refine_steps!r}")
    match_kwargs = _check_kwargs("match_kwargs", match_kwargs, match_pieces)
    refine_kwargs = _check_kwargs("refine_kwargs", refine_kwargs, refine_poses,
                                  exclude=("valid", "normals", "steps"))
    select_kwargs = _check_kwargs("select_kwargs", select_kwargs, select_hypotheses)
    from geo3d.apps.assembly._fracture_registration import fracture_assembly
    fracture_kwargs = _check_kwargs("fracture_kwargs", fracture_kwargs, fracture_assembly,
                                    exclude=("labels",))
    out_dt = points.dtype
    if out_dt in (torch.float16, torch.bfloat16):  # computed in float32, returned in out_dt
        points = points.float()
    dt, dev = points.dtype, points.device
    t_start = _clock(dev)
    tim = timings if timings is not None else {}

    def finish(result: Tensor, stage: str | None = None, t0: float = 0.0) -> Tensor:
        # per-batch wall time of the method's own stage (if any), the total and the count
        t1 = _clock(dev)
        if stage is not None:
            tim[stage] = tim.get(stage, 0.0) + t1 - t0
        tim["total"] = tim.get("total", 0.0) + t1 - t_start
        tim["objects"] = tim.get("objects", 0) + B
        return result.to(out_dt)

    T_net = network_poses(out, B, P, dt, dev)
    eye = torch.eye(4, dtype=dt, device=dev)
    desc = out.get("desc")
    if normals is not None and (not isinstance(normals, Tensor) or
                                normals.shape != (B, P, N, 3)):
        raise ValueError(f"normals: expected shape ({B}, {P}, {N}, 3), got {_shape(normals)}")
    if method == "fracture_registration":
        nrm = estimate_normals(points) if normals is None else normals.to(dev, dt)
        anchors = anchor_parts(points, valid).tolist()
        result = eye.repeat(B, P, 1, 1)
        t0 = _clock(dev)
        for b in range(B):
            a = int(anchors[b])
            Ta = T_net[b, a] if T_net is not None else eye
            idx = [j for j in range(P) if bool(valid[b, j])]
            if len(idx) < 2:
                result[b, a] = Ta
                continue
            kw = dict(fracture_kwargs)
            if T_net is not None and "initial" not in kw:  # the network: the fallback
                kw["initial"] = T_net[b, idx].double().cpu()
            pb = [points[b, j].double().cpu() for j in idx]
            G, _ = fracture_assembly(pb, [nrm[b, j].double().cpu() for j in idx],
                                     idx.index(a), **kw)
            if templates is not None:
                Tc = object_pose(templates, pb, G, None if T_net is None else
                                 T_net[b, idx].double().cpu())
                result[b, idx] = (Tc[None] @ G).to(dev, dt)
            else:
                result[b, idx] = Ta[None] @ G.to(dev, dt)
        return finish(result, "fracture", t0)
    if method == "select":
        if T_net is None:
            raise ValueError("out: expected 'rot' and 'trans' (the network's poses) for "
                             "method='select'")
        if not bool(torch.isfinite(points[valid]).all()):
            raise ValueError("points: expected finite values in the valid pieces, got NaN "
                             "or inf")
        if not bool(torch.isfinite(T_net[valid]).all()):
            raise ValueError("out['rot'/'trans']: expected finite poses for the valid "
                             "pieces, got NaN or inf")
        if normals is not None and not bool(torch.isfinite(normals[valid]).all()):
            raise ValueError("normals: expected finite values in the valid pieces, got NaN "
                             "or inf")
        nrm = estimate_normals(points) if normals is None else normals.to(dev, dt)
        H = out.get("hyp_rot")
        Hp = lg = None
        if H is not None:
            K = H.shape[2] if isinstance(H, Tensor) and H.dim() == 5 else -1
            ht, lg = out.get("hyp_trans"), out.get("hyp_logits")
            if K < 1 or H.shape != (B, P, K, 3, 3) or not isinstance(ht, Tensor) or \
                    ht.shape != (B, P, K, 3) or not isinstance(lg, Tensor) or \
                    lg.shape != (B, P, K):
                raise ValueError(f"out['hyp_rot'/'hyp_trans'/'hyp_logits']: expected shapes "
                                 f"({B}, {P}, K, 3, 3) / ({B}, {P}, K, 3) / ({B}, {P}, K), "
                                 f"got {_shape(H)} / {_shape(ht)} / {_shape(lg)}")
            Hp = torch.eye(4, dtype=dt, device=dev).repeat(B, P, K, 1, 1)
            Hp[..., :3, :3] = H.detach().to(dev, dt)
            Hp[..., :3, 3] = ht.detach().to(dev, dt)
            lg = lg.detach().to(dev, dt)
        anchors = anchor_parts(points, valid).tolist()
        result = eye.repeat(B, P, 1, 1)
        t0 = _clock(dev)
        for b in range(B):
            Tb, _ = select_hypotheses(points[b], nrm[b], valid[b], int(anchors[b]), T_net[b],
                                      None if Hp is None else Hp[b],
                                      None if lg is None else lg[b], **select_kwargs)
            result[b] = torch.where(valid[b][:, None, None], Tb, eye)
        return finish(result, "select", t0)
    if method == "network" or desc is None:
        if T_net is None:
            raise ValueError("out: expected 'rot' and 'trans' (the network's poses) for "
                             f"method={method!r}" + ("" if desc is not None else
                                                     " and no 'desc' to match"))
        return finish(torch.where(valid[..., None, None], T_net, eye))
    if not isinstance(desc, Tensor) or desc.dim() != 4 or desc.shape[:3] != (B, P, N):
        raise ValueError(f"out['desc']: expected shape ({B}, {P}, {N}, C), got "
                         f"{_shape(desc)}")
    logits = out.get("frac_score")
    if logits is not None and (not isinstance(logits, Tensor) or logits.shape != (B, P, N)):
        raise ValueError(f"out['frac_score']: expected shape ({B}, {P}, {N}), got "
                         f"{_shape(logits)}")
    desc = desc.detach().to(dev, dt)
    prob = None if logits is None else torch.sigmoid(logits.detach().to(dev, dt))
    anchors = anchor_parts(points, valid).tolist()
    result = eye.repeat(B, P, 1, 1)
    for b in range(B):
        a = int(anchors[b])
        vb = valid[b]
        Ta = T_net[b, a] if T_net is not None else eye
        fallback = None
        if T_net is not None:
            fallback = _inverse(Ta)[None] @ T_net[b]
        pw = pairwise_poses(points[b], desc[b], None if prob is None else prob[b], vb,
                            method=match_method, max_points=max_points, score_min=score_min,
                            min_points=min_points, rel_thresh=rel_thresh, iters=ransac_iters,
                            generator=generator, timings=tim, **match_kwargs)
        t0 = _clock(dev)
        G, parent = global_assembly(pw, a, fallback, valid=vb, min_score=min_score,
                                    return_parents=True)
        t1 = _clock(dev)
        tim["global"] = tim.get("global", 0.0) + (t1 - t0)
        # no move on weak evidence: only pieces reached by a reliable match edge are
        # refined; pieces without one keep the network's pose exactly
        moved = [j for j in range(P) if bool(vb[j]) and (j == a or int(parent[j]) >= 0)]
        if refine and refine_steps > 0 and len(moved) > 1:
            G = _refine_subset(points[b], G, pw.matches, a, moved,
                               None if normals is None else normals[b].to(dt),
                               refine_steps, refine_kwargs, refine_poses)
        tim["refine"] = tim.get("refine", 0.0) + (_clock(dev) - t1)
        Tb = Ta[None] @ G
        if T_net is not None:  # fallback-placed pieces: the network's pose, bit for bit
            fb = (parent == -2).to(dev)
            Tb = torch.where(fb[:, None, None], T_net[b], Tb)
        result[b] = torch.where(vb[:, None, None], Tb, eye)
    return finish(result)
