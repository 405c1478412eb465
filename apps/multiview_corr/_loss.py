"""Smooth-AP ranking loss between the features of two views (3D-correspondence finetuning).

For an anchor pixel ``i`` of view A, the pixels of view B are ranked by cosine similarity
``s_ij = <f_i, g_j>`` (features L2-normalised). Pixels whose 3D points lie within the
positive radius are *positives*, those farther than the negative radius are *negatives*,
the rest are ignored. Average precision (AP) of that ranking is 1 when every positive is
ranked above every negative. Smooth-AP (Brown et al.) replaces the step function
``1[s_k > s_p]`` that counts how many items rank above a positive ``p`` by the sigmoid
``sigma((s_k - s_p) / tau)``; the loss is ``1 - smooth AP``.

Two variants (``mode``):

``"reference"`` (default; what qq456cvb/3DCorrEnhance ``finetune.py`` ``training_step``
computes). Every positive pair ``(i, p)`` is its own query. Its ranked list holds a virtual
self-match with similarity 1 (the anchor's own normalised feature, ``<f_i, f_i> = 1``),
the positive ``p`` and all negatives ``n`` of anchor ``i``; both the self-match and ``p``
count as positives. With ``S(x) = sigma(x / tau)``::

    AP_self = (1 + S(s_p - 1)) / (1 + S(s_p - 1) + sum_n S(s_n - 1))
    AP_pos  = (1 + S(1 - s_p)) / (1 + S(1 - s_p) + sum_n S(s_n - s_p))
    loss    = mean over positive pairs (i, p) of 1 - (AP_self + AP_pos) / 2

``"anchor"`` (Smooth-AP as published). Each anchor ``i`` with at least one positive is a
query over its positives ``P_i`` and negatives ``N_i``::

    AP_i = 1/|P_i| sum_{p in P_i} (1 + sum_{q in P_i, q != p} S(s_q - s_p))
                                  / (1 + sum_{q in P_i, q != p} S(s_q - s_p) + sum_{n in N_i} S(s_n - s_p))
    loss = mean over anchors with a positive of 1 - AP_i

As ``tau -> 0`` (and without ties) both become ``1 - AP`` of the sorted lists above.

Anchors without a positive contribute nothing (they have no AP); negatives of such anchors
are unused. When no pair at all is positive the loss is an exact zero that is still
connected to the graph (``0 * sum(features)``), so ``backward()`` runs and gives zero
gradients instead of the NaN of an empty mean.

The sigmoid is :func:`torch.sigmoid` (saturates without overflow); the reference clamps
``x / tau`` to ``[-50, 50]`` first, which changes values by < 2e-22 and zeroes gradients
that are < 2e-22 anyway.

References:
    You et al., "Multiview Equivariance Improves 3D Correspondence Understanding with
    Minimal Feature Finetuning", ICLR 2025, arXiv:2411.19458; code qq456cvb/3DCorrEnhance
    ``finetune.py`` (``FinetuneDINO.training_step``) and ``utils/functions.py`` (``sigmoid``).
    Brown et al., "Smooth-AP: Smoothing the Path Towards Large-Scale Image Retrieval",
    ECCV 2020, arXiv:2007.12163.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["smooth_ap_loss"]

_MODES = ("reference", "anchor")


def _check_inputs(feat_a, feat_b, pos_mask, neg_mask, temperature, mode) -> None:
    for name, f in (("feat_a", feat_a), ("feat_b", feat_b)):
        if not isinstance(f, Tensor) or f.ndim != 2 or not f.is_floating_point():
            got = f"{tuple(f.shape)} {f.dtype}" if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(f"{name}: expected a floating tensor of shape (N, C), got {got}")
    n, m = feat_a.shape[0], feat_b.shape[0]
    if feat_b.shape[1] != feat_a.shape[1]:
        raise ValueError(
            f"feat_b: expected C={feat_a.shape[1]} channels as feat_a, got {tuple(feat_b.shape)}"
        )
    if feat_b.dtype != feat_a.dtype or feat_b.device != feat_a.device:
        raise ValueError(
            f"feat_b: expected dtype {feat_a.dtype} on {feat_a.device} as feat_a, got "
            f"{feat_b.dtype} on {feat_b.device}"
        )
    for name, msk in (("pos_mask", pos_mask), ("neg_mask", neg_mask)):
        if not isinstance(msk, Tensor) or msk.dtype != torch.bool or msk.shape != (n, m):
            got = (
                f"{tuple(msk.shape)} {msk.dtype}" if isinstance(msk, Tensor) else type(msk).__name__
            )
            raise ValueError(f"{name}: expected a bool tensor of shape {(n, m)}, got {got}")
        if msk.device != feat_a.device:
            raise ValueError(f"{name}: expected device {feat_a.device}, got {msk.device}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(float(temperature))
        or temperature <= 0
    ):
        raise ValueError(f"temperature: expected a finite float > 0, got {temperature!r}")
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")


def smooth_ap_loss(
    feat_a: Tensor,
    feat_b: Tensor,
    pos_mask: Tensor,
    neg_mask: Tensor,
    temperature: float = 0.01,
    *,
    mode: Literal["reference", "anchor"] = "reference",
    normalize: bool = True,
) -> Tensor:
    """``1 - smooth AP`` of ranking view-B pixels by feature similarity to view-A anchors.

    Args:
        feat_a: ``(N, C)`` features of the anchor pixels (view A).
        feat_b: ``(M, C)`` features of the candidate pixels (view B), same dtype/device.
        pos_mask: ``(N, M)`` bool, True where ``b_j`` is a positive of anchor ``a_i``
            (3D points closer than the positive radius, see
            :func:`~geo3d.apps.multiview_corr._sampling.sample_pixel_pairs`).
        neg_mask: ``(N, M)`` bool, True for negatives (farther than the negative radius);
            must not overlap ``pos_mask``. Pairs in neither mask are ignored.
        temperature: sigmoid temperature ``tau`` in units of cosine similarity
            (reference: 0.01).
        mode: ``"reference"`` (per positive pair, with the virtual self-match of
            similarity 1, as qq456cvb/3DCorrEnhance) or ``"anchor"`` (Smooth-AP per anchor
            over all its positives); formulas in the module docstring.
        normalize: L2-normalise the features first (the reference does; the
            ``"reference"`` mode's self-match similarity 1 assumes unit features).

    Returns:
        scalar loss in ``[0, 1]`` (dtype of the features); exactly 0, with zero gradients,
        when ``pos_mask`` has no True entry.

    Raises:
        ValueError: for non-2D or non-floating features, mismatched channels, dtype or
            device, masks that are not bool ``(N, M)`` or that overlap, a temperature that
            is not a finite float > 0, or an unknown ``mode``.

    Example:
        >>> fa = torch.tensor([[1.0, 0.0]]); fb = torch.tensor([[1.0, 0.1], [0.0, 1.0]])
        >>> pos = torch.tensor([[True, False]]); neg = torch.tensor([[False, True]])
        >>> round(float(smooth_ap_loss(fa, fb, pos, neg)), 4)
        0.0

    Source: You et al., ICLR 2025 (arXiv:2411.19458), qq456cvb/3DCorrEnhance
    ``finetune.py``; Brown et al., ECCV 2020 (arXiv:2007.12163).
    """
    _check_inputs(feat_a, feat_b, pos_mask, neg_mask, temperature, mode)
    if bool((pos_mask & neg_mask).any()):
        raise ValueError(
            "neg_mask: expected no pair that is also in pos_mask, got overlapping masks"
        )
    if normalize:
        feat_a = F.normalize(feat_a, dim=-1)
        feat_b = F.normalize(feat_b, dim=-1)
    pi, pj = torch.nonzero(pos_mask, as_tuple=True)  # positive pairs (P,)
    if pi.numel() == 0:
        return (feat_a.sum() + feat_b.sum()) * 0.0
    tau = float(temperature)
    # only the anchors that have a positive enter the similarity matrix
    anchors, row = torch.unique(pi, return_inverse=True)  # (A,), (P,)
    sim = feat_a[anchors] @ feat_b.t()  # (A, M)
    s_pos = sim[row, pj]  # (P,)
    neg = neg_mask[anchors][row].to(sim.dtype)  # (P, M)
    rows = sim[row]  # (P, M)

    def sig(x: Tensor) -> Tensor:
        return torch.sigmoid(x / tau)

    if mode == "reference":
        one = torch.ones((), dtype=sim.dtype, device=sim.device)
        r_self = 1.0 + sig(s_pos - one)
        ap_self = r_self / (r_self + (sig(rows - one) * neg).sum(-1))
        r_pos = 1.0 + sig(one - s_pos)
        ap_pos = r_pos / (r_pos + (sig(rows - s_pos[:, None]) * neg).sum(-1))
        return (1.0 - 0.5 * (ap_self + ap_pos)).mean()

    # "anchor": every positive p of anchor i is ranked against the other positives and
    # the negatives of the same anchor
    above = sig(rows - s_pos[:, None])  # (P, M): soft 1[s_k > s_p]
    others = pos_mask[anchors][row].clone()
    others[torch.arange(pi.numel(), device=pi.device), pj] = False  # q != p
    r_pos = 1.0 + (above * others.to(sim.dtype)).sum(-1)
    ap = r_pos / (r_pos + (above * neg).sum(-1))  # (P,)
    n_anchor = anchors.numel()
    ap_sum = torch.zeros(n_anchor, dtype=ap.dtype, device=ap.device).index_add(0, row, ap)
    count = torch.bincount(row, minlength=n_anchor).to(ap.dtype)
    return (1.0 - ap_sum / count).mean()
