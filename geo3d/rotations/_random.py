"""Haar-uniform random rotations."""

from __future__ import annotations

import torch

from geo3d.rotations._checks import check_dtype


def _shape(shape: tuple) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
        shape = tuple(shape[0])
    for s in shape:
        if not isinstance(s, int) or s < 0:
            raise ValueError(f"shape: expected non-negative ints, got {shape!r}")
    return tuple(shape)


def random_quat(
    *shape: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Haar-uniform unit quaternions (scalar-first ``wxyz``, ``w >= 0``).

    Args:
        *shape: batch shape (ints, or a single tuple).
        generator: optional :class:`torch.Generator`; every draw goes through it.
        dtype: a floating-point dtype (default: torch's default dtype).

    Raises:
        ValueError: negative or non-int ``shape``; a non-floating ``dtype``.

    Returns:
        Tensor of shape :math:`(*shape, 4)`.
    """
    shape = _shape(shape)
    if generator is not None and device is None:
        device = generator.device
    dtype = check_dtype("dtype", dtype)
    q = torch.randn(*shape, 4, generator=generator, dtype=dtype, device=device)
    # A normal draw is never exactly zero in practice; guard anyway.
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    return torch.where(q[..., :1] < 0, -q, q)


def random_rotation_matrix(
    *shape: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Haar-uniform rotation matrices of shape :math:`(*shape, 3, 3)`."""
    from geo3d.rotations import quat_to_matrix

    return quat_to_matrix(random_quat(*shape, generator=generator, dtype=dtype, device=device))
