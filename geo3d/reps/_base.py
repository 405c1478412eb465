"""Representation base classes: :class:`Rep` and :class:`LinearRep`."""

from __future__ import annotations

import torch

from geo3d.groups import Group
from geo3d.groups._base import _broadcast

__all__ = ["LinearRep", "Rep"]


def _default(generator, dtype, device):
    dtype = dtype or torch.get_default_dtype()
    if device is None and generator is not None:
        device = generator.device
    return dtype, device


def _batch(batch: tuple) -> tuple[int, ...]:
    if len(batch) == 1 and isinstance(batch[0], (tuple, list, torch.Size)):
        batch = tuple(batch[0])
    for b in batch:
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise ValueError(f"batch: expected non-negative ints, got {batch!r}")
    return tuple(batch)


def _cast(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bring ``g`` to ``x``'s floating dtype and device."""
    if x.is_floating_point() or x.is_complex():
        return g.to(dtype=x.dtype if x.is_floating_point() else g.dtype, device=x.device)
    return g.to(device=x.device)


class Rep:
    """How a feature transforms under a group.

    Attributes:
        group: the :class:`~geo3d.groups.Group`.
        dim: the feature size the rep acts on (e.g. 3 for vectors, ``H*W`` for images).
        is_linear: whether :meth:`matrix` is available.
    """

    group: Group
    dim: int
    is_linear: bool = False

    def act(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Transformed feature ``ρ(g) · x``.

        Args:
            g: one element ``element_shape`` or a batch ``(*, *element_shape)`` whose batch
                dims broadcast (numpy-style, right-aligned) against ``x``'s non-feature dims.
            x: the feature (shape documented by each rep).
        """
        raise NotImplementedError

    def matrix(self, g: torch.Tensor) -> torch.Tensor:
        """Matrix ``ρ(g)`` of shape :math:`(*, dim, dim)` (linear reps only)."""
        raise ValueError(f"{self!r} is not a linear representation: use .act(g, x)")

    def randn(
        self,
        *batch: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """A random Gaussian input of shape ``(*batch, <feature shape>)``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.group!r})"


class LinearRep(Rep):
    """A linear rep acting by ``ρ(g)`` along one tensor axis.

    Subclasses implement :meth:`matrix`. ``act(g, x)`` contracts ``ρ(g) (*, dim, dim)``
    with ``x`` along ``axis``; ``g``'s batch dims broadcast against the remaining dims of
    ``x`` (in order, right-aligned).

    Args:
        axis: the axis of ``x`` of size ``dim`` that the rep acts on.
    """

    is_linear = True

    def __init__(self, group: Group, dim: int, axis: int = -1) -> None:
        if not isinstance(group, Group):
            raise ValueError(f"group: expected a geo3d.groups.Group, got {type(group).__name__}")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(f"axis: expected an int, got {axis!r}")
        self.group = group
        self.dim = int(dim)
        self.axis = axis

    def _check_x(self, x: torch.Tensor, name: str = "x") -> int:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or not (-x.dim() <= self.axis < x.dim()):
            raise ValueError(
                f"{name}: expected a tensor with axis {self.axis} of size {self.dim}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[self.axis] != self.dim:
            raise ValueError(
                f"{name}: expected size {self.dim} along axis {self.axis} for {self!r}, "
                f"got shape {tuple(x.shape)}"
            )
        return self.axis % x.dim()

    def act(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``ρ(g) x`` along ``axis``; ``x`` has shape ``(..., dim, ...)`` (``dim`` at ``axis``).

        Returns a new tensor (never a view of ``x``). Empty batches give empty outputs.

        Raises:
            ValueError: naming ``g`` (wrong shape, not a group element when value checks
                are on) or ``x`` (wrong size at ``axis``, batch dims that do not broadcast
                against ``g``'s).
        """
        ax = self._check_x(x)
        m = self.matrix(g)  # validates g in its own dtype, before any cast
        xb = x.shape[:ax] + x.shape[ax + 1 :]
        _broadcast("g", m.shape[:-2], "x", xb)
        m = _cast(m, x)
        y = x.movedim(ax, -1).unsqueeze(-1)
        return (m @ y).squeeze(-1).movedim(-1, ax)

    def randn(self, *batch, generator=None, dtype=None, device=None):
        """Gaussian input: ``batch`` with ``dim`` inserted at ``axis``."""
        batch = _batch(batch)
        dtype, device = _default(generator, dtype, device)
        n = len(batch) + 1
        if not (-n <= self.axis < n):
            raise ValueError(
                f"batch: axis {self.axis} needs at least {abs(self.axis) - 1 if self.axis < 0 else self.axis} "
                f"batch dims, got {batch!r}"
            )
        pos = self.axis % n
        shape = batch[:pos] + (self.dim,) + batch[pos:]
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)

    def __repr__(self) -> str:
        ax = "" if self.axis == -1 else f", axis={self.axis}"
        return f"{type(self).__name__}({self.group!r}{ax})"
