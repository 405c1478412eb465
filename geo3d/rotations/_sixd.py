"""6D rotation representation (first two columns of R, Zhou et al. 2019)."""

from __future__ import annotations

import torch

from geo3d.rotations._checks import check_tensor, values_enabled
from geo3d.rotations._matrix_input import as_rotation

__all__ = ["sixd_to_matrix", "matrix_to_sixd"]


def sixd_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from 6D vectors by Gram–Schmidt.

    Args:
        x: ``[c1, c2]``, the two (not necessarily orthonormal) first columns, shape
            :math:`(*, 6)`. ``c1`` must be non-zero and ``c2`` not parallel to it.

    Returns:
        Rotation matrices whose first column is ``c1/|c1|`` and whose second column lies in
        the half-plane of ``c2``, shape :math:`(*, 3, 3)`.
    """
    check_tensor("x", x, (6,))
    a1, a2 = x[..., :3], x[..., 3:]
    # the map is invariant to a positive scale of each column: divide each by its max-abs
    # entry (detached: that scale's derivative contributes 0), so squared norms neither
    # under- nor overflow (|c| ~ 1e-30 or 1e30 in float32) and "zero" means all entries 0
    m1 = a1.detach().abs().amax(-1, keepdim=True)
    m2 = a2.detach().abs().amax(-1, keepdim=True)
    if values_enabled() and m1.numel() > 0:
        lo1, hi1 = torch.aminmax(m1)
        if not (bool(lo1 > 0) and bool(hi1 < float("inf"))):
            raise ValueError("x: expected finite 6D vectors with non-zero first column c1")
    a1, a2 = a1 / m1, a2 / m2
    n1 = torch.linalg.vector_norm(a1, dim=-1, keepdim=True)
    b1 = a1 / n1
    a2p = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    n2 = torch.linalg.vector_norm(a2p, dim=-1, keepdim=True)
    if values_enabled() and n1.numel() > 0:
        lo2, hi2 = torch.aminmax((n2 / n1).detach())  # ~ sin(angle of c1, c2); NaN if c2 = 0
        if not (bool(lo2 > 1e3 * torch.finfo(x.dtype).eps) and bool(hi2 < float("inf"))):
            raise ValueError("x: expected c2 not parallel to c1 (and finite), got (near-)parallel")
    b2 = a2p / n2
    x1, y1, z1 = b1.unbind(-1)
    x2, y2, z2 = b2.unbind(-1)
    x3 = y1 * z2 - z1 * y2
    y3 = z1 * x2 - x1 * z2
    z3 = x1 * y2 - y1 * x2
    return torch.stack((x1, x2, x3, y1, y2, y3, z1, z2, z3), dim=-1).unflatten(-1, (3, 3))


def matrix_to_sixd(R: torch.Tensor) -> torch.Tensor:
    """6D vectors ``[c1, c2]`` (first two columns) of rotation matrices.

    Matrices that are not rotations follow the policy of :mod:`geo3d.rotations` (the
    columns of the nearest rotation for ``det > 0``; ``ValueError`` for ``det <= 0`` or
    NaN/inf). The output is a new tensor (never a view of ``R``).

    Args:
        R: rotation matrices, shape :math:`(*, 3, 3)`.

    Returns:
        Shape :math:`(*, 6)`.

    Raises:
        ValueError: wrong shape; (value checks on) non-finite ``R`` or ``det(R) <= 0``.

    Example:
        >>> matrix_to_sixd(torch.eye(3))
        tensor([1., 0., 0., 0., 1., 0.])
    """
    check_tensor("R", R, (3, 3))
    R = as_rotation("R", R)
    # stack copies: a reshape could return a view aliasing R for column-major layouts
    return torch.stack(
        (R[..., 0, 0], R[..., 1, 0], R[..., 2, 0], R[..., 0, 1], R[..., 1, 1], R[..., 2, 1]),
        dim=-1,
    )
