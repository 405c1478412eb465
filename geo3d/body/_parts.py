"""Body-part labels from skinning weights: SMPL's 24 parts and ArtEq's merged set.

A vertex (or a scan point with interpolated weights) belongs to the joint whose skinning
weight is largest, i.e. ``argmax_j w_j``. ArtEq (Feng et al., "Generalizing Neural Human
Fitting to Unseen Poses With Articulated SE(3) Equivariance", ICCV 2023, arXiv:2304.10528)
predicts 22 parts: SMPL's 24 with the hands merged into the wrists. Its labels also merge the
feet into the ankles, so of its 22 outputs only 20 labels occur (10 and 11, the feet, never do).

Mapping (SMPL index -> ArtEq index), see :data:`ARTEQ_PART_MAP`:

=================  ==================
SMPL part          ArtEq part
=================  ==================
0 .. 21            same index, except:
10 left_foot       7 left_ankle
11 right_foot      8 right_ankle
22 left_hand       20 left_wrist
23 right_hand      21 right_wrist
=================  ==================
"""

from __future__ import annotations

import torch

__all__ = [
    "ARTEQ_PART_MAP",
    "ARTEQ_NUM_PARTS",
    "part_labels",
    "arteq_part_labels",
    "smpl_to_arteq_labels",
]

#: SMPL part index (0..23) -> ArtEq part index (0..21).
ARTEQ_PART_MAP: tuple[int, ...] = tuple({10: 7, 11: 8, 22: 20, 23: 21}.get(j, j) for j in range(24))
#: Number of ArtEq part outputs (20 of them occur as labels).
ARTEQ_NUM_PARTS = 22


def _check_weights(weights: torch.Tensor) -> None:
    if not isinstance(weights, torch.Tensor):
        raise ValueError(f"weights: expected a tensor, got {type(weights).__name__}")
    if weights.dim() < 2 or not weights.is_floating_point():
        raise ValueError(
            f"weights: expected a floating tensor of shape (..., N, J), got shape "
            f"{tuple(weights.shape)} dtype {weights.dtype}"
        )
    if not torch.isfinite(weights).all():
        raise ValueError("weights: expected finite values, got NaN or inf")
    check_partition_of_unity(weights)


def check_partition_of_unity(weights: torch.Tensor, name: str = "weights") -> None:
    """Raise ``ValueError`` naming ``name`` unless the rows of ``weights (..., N, J)`` are
    skinning weights: non-negative (to -1e-6) and summing to 1 (to 1e-3). Catches weights
    with columns cut off (``w[:, :5]``), logits, and tensors that are not weights at all."""
    if weights.numel() == 0:
        return
    w = weights.detach()
    total = w.sum(-1)
    err = float((total - 1).abs().max())
    low = float(w.min())
    if err > 1e-3 or low < -1e-6:
        raise ValueError(
            f"{name}: expected skinning weights (rows >= 0 summing to 1 over all "
            f"{w.shape[-1]} joints), got max |row sum - 1| = {err:.3g}, min = {low:.3g}"
        )


def part_labels(weights: torch.Tensor) -> torch.Tensor:
    """Part label per vertex/point: the joint with the largest skinning weight.

    Args:
        weights: skinning weights, shape :math:`(*, N, J)`.

    Returns:
        int64 labels in ``[0, J)``, shape :math:`(*, N)`. Ties go to the lowest joint index.

    Raises:
        ValueError: ``weights`` not a floating ``(..., N, J)`` tensor, or non-finite.

    Example:
        >>> part_labels(torch.tensor([[0.2, 0.8], [0.5, 0.5]]))
        tensor([1, 0])
    """
    _check_weights(weights)
    return _argmax_first(weights)


def _argmax_first(weights: torch.Tensor) -> torch.Tensor:
    # argmax over J with ties to the first index (torch.argmax on CPU already does this,
    # but the documented contract is kept explicit and device-independent).
    m = weights.amax(dim=-1, keepdim=True)
    J = weights.shape[-1]
    ar = torch.arange(J, device=weights.device).expand_as(weights)
    return torch.where(weights == m, ar, J).amin(dim=-1)


def smpl_to_arteq_labels(labels: torch.Tensor) -> torch.Tensor:
    """Map SMPL part labels (0..23) to ArtEq's merged labels (0..21, see module docs).

    Args:
        labels: integer tensor of SMPL labels, any shape.

    Returns:
        int64 tensor of ArtEq labels, same shape.

    Raises:
        ValueError: non-integer tensor or labels outside ``[0, 24)``.

    Example:
        >>> smpl_to_arteq_labels(torch.tensor([0, 10, 22, 23]))
        tensor([ 0,  7, 20, 21])
    """
    if (
        not isinstance(labels, torch.Tensor)
        or labels.is_floating_point()
        or labels.dtype == torch.bool
    ):
        raise ValueError(
            f"labels: expected an integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() > 23):
        raise ValueError(
            f"labels: expected SMPL labels in [0, 24), got range [{int(labels.min())}, {int(labels.max())}]"
        )
    table = torch.tensor(ARTEQ_PART_MAP, dtype=torch.long, device=labels.device)
    return table[labels.long()]


def arteq_part_labels(weights: torch.Tensor) -> torch.Tensor:
    """ArtEq part labels from SMPL skinning weights (24 joints), merged by summing weights.

    The weights of merged parts are added (hand into wrist, foot into ankle) before the
    argmax, so a point split between wrist and hand goes to the wrist.

    Args:
        weights: SMPL skinning weights, shape :math:`(*, N, 24)`.

    Returns:
        int64 labels in ``[0, 22)`` (only 20 values occur), shape :math:`(*, N)`.

    Raises:
        ValueError: ``weights`` not ``(..., N, 24)`` or non-finite.

    Example:
        >>> w = torch.zeros(1, 24); w[0, 22] = 0.6; w[0, 20] = 0.4
        >>> arteq_part_labels(w)
        tensor([20])
    """
    _check_weights(weights)
    if weights.shape[-1] != 24:
        raise ValueError(
            f"weights: expected 24 SMPL joints in the last dim, got {weights.shape[-1]}"
        )
    return _arteq_unchecked(weights)


def _arteq_unchecked(weights: torch.Tensor) -> torch.Tensor:
    merged = weights.new_zeros(*weights.shape[:-1], ARTEQ_NUM_PARTS)
    idx = torch.tensor(ARTEQ_PART_MAP, device=weights.device).expand_as(weights)
    merged = merged.scatter_add(-1, idx, weights)
    return _argmax_first(merged)
