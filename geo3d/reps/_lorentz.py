"""Lorentz 4-vectors and rank-2 tensors."""

from __future__ import annotations

import torch

from geo3d.groups import Lorentz
from geo3d.groups._base import _broadcast, _fresh
from geo3d.reps._base import LinearRep, Rep, _batch, _cast, _default

__all__ = ["LorentzTensor", "LorentzVector"]


def _lorentz(group):
    if group is None:
        return Lorentz()
    if not isinstance(group, Lorentz):
        raise ValueError(f"group: expected a geo3d.groups.Lorentz, got {group!r}")
    return group


class LorentzVector(LinearRep):
    """Contravariant 4-vectors ``(t, x, y, z)``: ``x' = Λ x``.

    Args:
        group: a :class:`~geo3d.groups.Lorentz` group (default ``Lorentz()``).
        axis: the size-4 axis.
    """

    def __init__(self, group: Lorentz | None = None, axis: int = -1) -> None:
        super().__init__(_lorentz(group), 4, axis)

    def matrix(self, g):
        """``Λ``, shape :math:`(*, 4, 4)` (a copy).

        Raises:
            ValueError: naming ``g`` for a wrong shape or a non-Lorentz matrix.
        """
        return _fresh(self.group.validate(g))


class LorentzTensor(Rep):
    """Contravariant rank-2 tensors ``T^{μν}`` of shape ``(..., 4, 4)``: ``T' = Λ T Λᵀ``.

    (The metric ``η`` is invariant: ``Λ η Λᵀ = η``.) :meth:`matrix` is ``Λ ⊗ Λ`` acting on
    the row-major flattening ``T.reshape(..., 16)``.

    Args:
        group: a :class:`~geo3d.groups.Lorentz` group (default ``Lorentz()``).
    """

    is_linear = True

    def __init__(self, group: Lorentz | None = None) -> None:
        self.group = _lorentz(group)
        self.dim = 16

    def act(self, g, x):
        """``Λ T Λᵀ`` for ``T (*, 4, 4)``; ``g``'s batch dims broadcast against ``T``'s.

        Raises:
            ValueError: naming ``x`` (wrong shape, batch dims that do not broadcast against
                ``g``'s) or ``g`` (wrong shape, non-Lorentz matrix).
        """
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-2:] != (4, 4):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a rank-2 Lorentz tensor (..., 4, 4), got {shape}")
        self.group.validate(g)
        _broadcast("g", self.group.batch_shape(g), "x", x.shape[:-2])
        lam = _cast(g, x)
        return lam @ x @ lam.transpose(-1, -2)

    def matrix(self, g):
        """``Λ ⊗ Λ``, shape :math:`(*, 16, 16)`.

        Raises:
            ValueError: naming ``g`` for a wrong shape or a non-Lorentz matrix.
        """
        lam = self.group.validate(g)
        k = lam[..., :, None, :, None] * lam[..., None, :, None, :]
        return k.reshape(*lam.shape[:-2], 16, 16)

    def randn(self, *batch, generator=None, dtype=None, device=None):
        """Gaussian tensors, shape ``(*batch, 4, 4)``."""
        batch = _batch(batch)
        dtype, device = _default(generator, dtype, device)
        return torch.randn(*batch, 4, 4, generator=generator, dtype=dtype, device=device)
