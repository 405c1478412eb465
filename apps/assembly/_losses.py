"""Training losses for shape assembly (averaged over valid parts, then over objects)."""

from __future__ import annotations

import torch
from torch import Tensor

from geo3d.eval import align_to_anchor, anchor_parts, part_chamfer, shape_chamfer

__all__ = ["assembly_loss", "contact_pairs", "correspondence_loss", "select_hypotheses"]


def _valid_mean(x: Tensor, valid: Tensor) -> Tensor:
    x = torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum(1) / valid.sum(1).clamp_min(1).to(x.dtype)


def select_hypotheses(
    pred: dict[str, Tensor],
    gt_rot: Tensor,
    gt_trans: Tensor,
    w_rot: float = 1.0,
    w_trans: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Winner-takes-all selection for a multi-hypothesis pose head.

    Args:
        pred: model output with ``hyp_rot (B, P, K, 3, 3)``, ``hyp_trans (B, P, K, 3)`` and
            ``hyp_logits (B, P, K)``.
        gt_rot: shape :math:`(B, P, 3, 3)`; gt_trans: shape :math:`(B, P, 3)`.
        w_rot, w_trans: weights of the geodesic and squared translation errors in the
            per-hypothesis cost.

    Returns:
        ``(rot, trans, cost)``: the lowest-cost hypothesis of every part ``(B, P, 3, 3)``,
        ``(B, P, 3)`` (differentiable), and the per-hypothesis cost ``(B, P, K)``.
    """
    from geo3d.rotations import geodesic_distance

    HR, Ht = pred["hyp_rot"], pred["hyp_trans"]
    cost = w_rot * geodesic_distance(HR, gt_rot[:, :, None]) + w_trans * (
        (Ht - gt_trans[:, :, None]) ** 2
    ).sum(-1)
    k = cost.detach().argmin(-1)  # (B, P)
    rot = torch.gather(HR, 2, k[..., None, None, None].expand(*k.shape, 1, 3, 3))[:, :, 0]
    trans = torch.gather(Ht, 2, k[..., None, None].expand(*k.shape, 1, 3))[:, :, 0]
    return rot, trans, cost


def assembly_loss(
    points: Tensor,
    valid: Tensor,
    pred_rot: Tensor,
    pred_trans: Tensor,
    gt_rot: Tensor,
    gt_trans: Tensor,
    w_rot: float = 1.0,
    w_trans: float = 1.0,
    w_part_cd: float = 1.0,
    w_shape_cd: float = 1.0,
    frame: str = "absolute",
    hypotheses: dict[str, Tensor] | None = None,
    w_cls: float = 1.0,
    w_all: float = 0.05,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Geodesic rotation + L2 translation + transformed-part chamfer + shape chamfer.

    Every term is averaged over the valid parts of an object and then over objects, so
    equal-sized shards of a batch average to the loss of the whole batch (what DDP needs).

    Args:
        points: centred part points, shape :math:`(B, P, N, 3)`.
        valid: shape :math:`(B, P)` bool.
        pred_rot, gt_rot: shape :math:`(B, P, 3, 3)`.
        pred_trans, gt_trans: shape :math:`(B, P, 3)`.
        w_rot, w_trans, w_part_cd, w_shape_cd: term weights.
        frame: ``"absolute"`` (ground-truth frame, as the paper) or ``"anchor"`` (predictions
            first aligned on the largest part, protocol (b), differentiably).
        hypotheses: optional multi-hypothesis output (see :func:`select_hypotheses`). Then
            the terms above use each part's lowest-cost hypothesis (winner takes all), a
            cross-entropy term teaches the scores to pick it (``w_cls``), and the mean
            cost of all hypotheses (``w_all``) keeps the others from dying. Hypotheses
            are selected in the absolute frame.

    Returns:
        ``(loss, terms)``: scalar loss and a dict of detached scalar terms.
    """
    from geo3d.rotations import geodesic_distance

    extra: dict[str, Tensor] = {}
    if hypotheses is not None:
        pred_rot, pred_trans, cost = select_hypotheses(hypotheses, gt_rot, gt_trans, w_rot, w_trans)
        k = cost.detach().argmin(-1)
        logits = hypotheses["hyp_logits"]
        ce = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), k.flatten(), reduction="none"
        ).view(k.shape)
        extra["cls"] = _valid_mean(ce, valid).mean()
        extra["all"] = _valid_mean(cost.mean(-1), valid).mean()
    if frame == "anchor":
        anchor = anchor_parts(points, valid)
        pred_rot, pred_trans = align_to_anchor(pred_rot, pred_trans, gt_rot, gt_trans, anchor)
    elif frame != "absolute":
        raise ValueError(f"frame: expected 'absolute' or 'anchor', got {frame!r}")
    terms: dict[str, Tensor] = {}
    terms["rot"] = _valid_mean(geodesic_distance(pred_rot, gt_rot), valid).mean()
    terms["trans"] = _valid_mean(((pred_trans - gt_trans) ** 2).sum(-1), valid).mean()
    zero = points.new_zeros(())
    terms["part_cd"] = (
        _valid_mean(part_chamfer(points, pred_rot, pred_trans, gt_rot, gt_trans), valid).mean()
        if w_part_cd
        else zero
    )
    terms["shape_cd"] = (
        shape_chamfer(points, pred_rot, pred_trans, gt_rot, gt_trans, valid) if w_shape_cd else zero
    )
    loss = (
        w_rot * terms["rot"]
        + w_trans * terms["trans"]
        + w_part_cd * terms["part_cd"]
        + w_shape_cd * terms["shape_cd"]
    )
    if extra:
        loss = loss + w_cls * extra["cls"] + w_all * extra["all"]
        terms.update(extra)
    return loss, {k: v.detach() for k, v in terms.items()}


def contact_pairs(
    points: Tensor, valid: Tensor, rot: Tensor, trans: Tensor, radius: float, i: int, j: int
) -> Tensor:
    """Ground-truth cross-piece contacts between parts ``i`` and ``j`` of every object.

    Points ``p`` of part ``i`` and ``q`` of part ``j`` are in contact when their assembled
    positions (``rot @ p + trans``, the ground-truth poses) are closer than ``radius``.

    Args:
        points: shape :math:`(B, P, N, 3)`; valid: :math:`(B, P)` bool.
        rot: ground-truth rotations :math:`(B, P, 3, 3)`; trans: :math:`(B, P, 3)`.
        radius: contact distance (input units).
        i, j: part indices (``i != j``).

    Returns:
        bool :math:`(B, N, N)`, ``[b, n, m]`` = point ``n`` of part ``i`` touches point
        ``m`` of part ``j`` (all False where either part is padded).
    """
    xi = points[:, i] @ rot[:, i].transpose(-1, -2) + trans[:, i, None]
    xj = points[:, j] @ rot[:, j].transpose(-1, -2) + trans[:, j, None]
    d2 = ((xi[:, :, None] - xj[:, None]) ** 2).sum(-1)
    both = (valid[:, i] & valid[:, j])[:, None, None]
    return (d2 < radius * radius) & both


def correspondence_loss(
    desc: Tensor,
    frac_logit: Tensor,
    points: Tensor,
    valid: Tensor,
    rot: Tensor,
    trans: Tensor,
    frac_label: Tensor | None = None,
    radius: float = 0.05,
    temperature: float = 0.1,
    w_desc: float = 1.0,
    w_frac: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Contrastive matching loss on cross-piece contacts + fracture-surface BCE.

    For every ordered pair of valid parts ``(i, j)`` and every point ``n`` of part ``i``
    that touches part ``j`` (:func:`contact_pairs`; with ``frac_label``, only contacts
    between fracture-surface points of both parts count), a multi-positive InfoNCE over all
    points ``m`` of part ``j``::

        l = logsumexp_m(s_nm / T) - logsumexp_{m in contacts(n)}(s_nm / T),  s = desc_i · desc_j

    Every other point of part ``j`` is a negative; the softmax weights the hardest ones
    (most similar) most (InfoNCE, van den Oord et al. 2018, arXiv:1807.03748; applied to
    fracture matching as in Jigsaw, Lu et al., NeurIPS 2023, arXiv:2305.17975). It is
    averaged over the anchors of an object, then over the objects that have any. The
    fracture logit gets a binary cross-entropy against ``frac_label`` (ground truth of the
    generator's cut faces), averaged over the valid points of an object, then over
    objects; without labels, "has a contact on another part" is used.

    Args:
        desc: unit descriptors :math:`(B, P, N, C)`; frac_logit: :math:`(B, P, N)`.
        points, valid, rot, trans: the batch (points as fed to the model, ground-truth
            poses that assemble them).
        frac_label: optional bool :math:`(B, P, N)`.
        radius: contact distance; temperature: softmax temperature ``T``.
        w_desc, w_frac: term weights.

    Returns:
        ``(loss, terms)`` with detached terms ``desc``, ``frac``, ``contacts`` (mean
        number of anchor points per object).

    Raises:
        ValueError: ``radius`` or ``temperature`` not positive.
    """
    if not radius > 0:
        raise ValueError(f"radius: expected a positive distance, got {radius!r}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    B, P, N, _ = points.shape
    dt = desc.dtype
    num = desc.new_zeros(B)  # per-object sum of anchor losses
    cnt = desc.new_zeros(B)
    has = torch.zeros(B, P, N, dtype=torch.bool, device=desc.device)
    neg_inf = torch.finfo(dt).min
    for i in range(P):
        for j in range(P):
            if i == j:
                continue
            pos = contact_pairs(points, valid, rot, trans, radius, i, j)  # (B, N, N)
            if frac_label is not None:  # contacts between cut faces only
                pos = pos & frac_label[:, i, :, None].bool() & frac_label[:, j, None, :].bool()
            anchor = pos.any(-1)  # (B, N)
            has[:, i] |= anchor
            if not bool(anchor.any()):
                continue
            s = desc[:, i] @ desc[:, j].transpose(-1, -2) / temperature  # (B, N, N)
            lse_all = torch.logsumexp(s, -1)
            lse_pos = torch.logsumexp(torch.where(pos, s, torch.full_like(s, neg_inf)), -1)
            l = torch.where(anchor, lse_all - lse_pos, torch.zeros((), dtype=dt,
                                                                   device=desc.device))
            num = num + l.sum(-1)
            cnt = cnt + anchor.sum(-1).to(dt)
    obj = cnt > 0
    zero = (desc.sum() + frac_logit.sum()) * 0.0  # keeps the graph when nothing applies
    terms: dict[str, Tensor] = {}
    terms["desc"] = (num[obj] / cnt[obj]).mean() if bool(obj.any()) else zero
    target = has if frac_label is None else frac_label.bool()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        frac_logit, target.to(frac_logit.dtype), reduction="none")
    pt = valid[..., None].expand(B, P, N)
    per_obj = torch.where(pt, bce, torch.zeros((), dtype=bce.dtype, device=bce.device)).sum(
        (1, 2)) / (pt.sum((1, 2)).clamp_min(1)).to(bce.dtype)
    terms["frac"] = per_obj.mean() + zero
    loss = w_desc * terms["desc"] + w_frac * terms["frac"]
    terms["contacts"] = cnt.mean()
    return loss, {k: v.detach() for k, v in terms.items()}
