"""Representations of finite planar groups: regular rep and the image (grid) action."""

from __future__ import annotations

import torch

from geo3d.groups import CyclicGroup, DihedralGroup, FiniteGroup, OcticGroup
from geo3d.groups._base import _broadcast, _fresh
from geo3d.reps._base import LinearRep, Rep, _batch, _default

__all__ = ["Image", "Regular"]


class Regular(LinearRep):
    """The regular rep of a finite group: permutation matrices from the Cayley table.

    Features are functions on the group, a vector of size ``order`` indexed like
    ``group.elements()``; ``ρ(g_k) e_j = e_{table[k, j]}`` i.e. ``(g·f)(g h) = f(h)``.
    """

    def __init__(self, group: FiniteGroup, axis: int = -1) -> None:
        if not isinstance(group, FiniteGroup):
            raise ValueError(f"group: expected a finite group, got {group!r}")
        super().__init__(group, group.order, axis)
        self._table = group.cayley_table()

    def matrix(self, g):
        """Permutation matrices, shape :math:`(*, order, order)`.

        Raises:
            ValueError: naming ``g`` for a wrong shape or a non-element.
        """
        idx = self.group.index_of(g)
        rows = self._table.to(g.device)[idx]  # (*, order): image of basis j
        eye = torch.eye(self.dim, dtype=g.dtype, device=g.device)
        # column j of ρ(g) is e_{rows[j]}
        return eye[rows].transpose(-1, -2)


def _grid_op(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Flip rows (if ``flip``), then rotate by ``k`` quarter turns; always a new tensor."""
    if flip:
        x = torch.flip(x, dims=(-2,))
    elif k % 4 == 0:
        return _fresh(x)
    return torch.rot90(x, k, dims=(-2, -1)) if k % 4 else x


class Image(Rep):
    """Finite planar groups acting spatially on images ``(..., H, W)``.

    Pixel ``(i, j)`` sits at ``(x, y) = (j − (W−1)/2, (H−1)/2 − i)`` (x right, y up), and
    ``(g·f)(p) = f(g⁻¹ p)``: the 90° rotation is ``torch.rot90(·, 1, dims=(-2, -1))``
    (counter-clockwise on screen) and ``diag(1, −1)`` flips rows (``torch.flip(·, (-2,))``).
    Defined for ``CyclicGroup(n)``/``DihedralGroup(n)`` with ``n`` dividing 4 and
    ``OcticGroup``. Odd rotations of non-square images swap ``H`` and ``W``.

    Args:
        group: the finite group.
        size: side length of the square images drawn by :meth:`randn`.
        channels: optional channel dim inserted before ``H, W`` by :meth:`randn`.
    """

    def __init__(self, group: FiniteGroup, size: int = 8, channels: int | None = None) -> None:
        if not isinstance(group, (CyclicGroup, DihedralGroup)):
            raise ValueError(
                f"group: Image needs CyclicGroup(n), DihedralGroup(n) or OcticGroup, got {group!r}"
            )
        if 4 % group.n != 0:
            raise ValueError(
                f"group: Image is only defined when n divides 4 (rotations by multiples of "
                f"90° map the pixel grid to itself), got {group!r}"
            )
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size: expected a positive int, got {size!r}")
        if channels is not None and (not isinstance(channels, int) or channels < 1):
            raise ValueError(f"channels: expected a positive int or None, got {channels!r}")
        self.group = group
        self.size = size
        self.channels = channels
        self.dim = size * size * (channels or 1)
        self._octic = OcticGroup()

    def act(self, g, x):
        """Rotate/flip ``x (..., H, W)``; ``g``'s batch dims broadcast against ``x.shape[:-2]``.

        Returns a new tensor (also for the identity); an empty batch gives an empty output
        of shape ``(*batch, H, W)``.

        Raises:
            ValueError: naming ``x`` (not an image, batch dims that do not broadcast against
                ``g``'s, a batch mixing quarter and half turns of non-square images) or
                ``g`` (not an element of the group).
        """
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected an image tensor of shape (..., H, W), got {shape}")
        self.group.index_of(g)  # raises if g is not in this group
        idx = self._octic.index_of(g).to(x.device)
        if idx.dim() == 0:
            j = int(idx)
            return _grid_op(x, j % 4, j >= 4)
        h, w = x.shape[-2:]
        batch = _broadcast("g", idx.shape, "x", x.shape[:-2])
        xb = x.expand(*batch, h, w)
        ib = idx.expand(batch)
        if ib.numel() == 0:
            return xb.new_empty(*batch, h, w)
        out = None
        for j in torch.unique(ib).tolist():
            mask = ib == j
            y = _grid_op(xb[mask], j % 4, j >= 4)
            if out is None:
                out = xb.new_empty(*batch, *y.shape[-2:])
            elif out.shape[-2:] != y.shape[-2:]:
                raise ValueError(
                    f"x: a batch mixing 90° and 180° rotations needs square images, got {h}x{w}"
                )
            out[mask] = y
        return out

    def randn(self, *batch, generator=None, dtype=None, device=None):
        """Gaussian images ``(*batch, [channels,] size, size)``."""
        batch = _batch(batch)
        dtype, device = _default(generator, dtype, device)
        ch = () if self.channels is None else (self.channels,)
        shape = batch + ch + (self.size, self.size)
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
