"""Generic representations: trivial, defining (vector), points, custom."""

from __future__ import annotations

from collections.abc import Callable

import torch

from geo3d.groups import SE3, Group
from geo3d.groups._base import _broadcast, _check_vec, _fresh
from geo3d.reps._base import LinearRep, Rep, _batch, _cast, _default

__all__ = ["Custom", "Points", "Trivial", "Vector"]


class Trivial(LinearRep):
    """The trivial rep on ``dim`` channels: ``ρ(g) = I`` (invariant features).

    Args:
        group: any group.
        dim: number of invariant channels (size of ``axis``).
        axis: the feature axis.
    """

    def __init__(self, group: Group, dim: int = 1, axis: int = -1) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        super().__init__(group, dim, axis)

    def matrix(self, g):
        """Identity matrices, shape :math:`(*, dim, dim)` (a new, writable tensor).

        Raises:
            ValueError: naming ``g`` for a wrong shape or a non-element.
        """
        self.group.validate(g)
        eye = torch.eye(self.dim, dtype=g.dtype, device=g.device)
        return eye.expand(*self.group.batch_shape(g), self.dim, self.dim).clone()

    def act(self, g, x):
        """Returns a copy of ``x`` (never ``x`` itself, so editing the output leaves ``x``
        alone); any shape is accepted (invariant scalars ``(B,)``, features ``(B, C)``,
        ...), only ``g`` is checked.

        Raises:
            ValueError: naming ``x`` (not a tensor) or ``g`` (wrong shape, non-element).
        """
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        self.group.validate(g)
        return _fresh(x)

    def __repr__(self) -> str:
        extra = "" if self.dim == 1 else f", dim={self.dim}"
        extra += "" if self.axis == -1 else f", axis={self.axis}"
        return f"Trivial({self.group!r}{extra})"


class Vector(LinearRep):
    """The defining rep on vectors: ``(*, 2)`` for planar groups, ``(*, 3)`` for
    SO3/O3 and SE3 (rotation part only: directions, normals, velocities), ``(*, 4)`` for
    Lorentz.
    """

    def __init__(self, group: Group, axis: int = -1) -> None:
        if not isinstance(group, Group):
            raise ValueError(f"group: expected a geo3d.groups.Group, got {type(group).__name__}")
        super().__init__(group, group.dim, axis)

    def matrix(self, g):
        """``(*, dim, dim)``: the group's defining matrix (rotation block for SE3), a copy.

        Raises:
            ValueError: naming ``g`` for a wrong shape or a non-element.
        """
        self.group.validate(g)
        if isinstance(self.group, SE3):
            return _fresh(g[..., :3, :3])
        return _fresh(g)


class Points(Rep):
    """Points ``(*, d)`` under the group's defining action (``R x + t`` for SE3).

    Linear (with :meth:`matrix`) except for SE3.
    """

    def __init__(self, group: Group) -> None:
        if not isinstance(group, Group):
            raise ValueError(f"group: expected a geo3d.groups.Group, got {type(group).__name__}")
        self.group = group
        self.dim = group.dim
        self.is_linear = not isinstance(group, SE3)

    def act(self, g, x):
        """``g · x`` for ``x (*, d)``; ``g``'s batch dims broadcast against ``x.shape[:-1]``.

        ``g`` is checked in its own dtype, then cast to ``x``'s.

        Raises:
            ValueError: naming ``g`` (wrong shape, non-element) or ``x`` (wrong shape,
                batch dims that do not broadcast).
        """
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        self.group.validate(g)
        _check_vec(x, self.dim)
        _broadcast("g", self.group.batch_shape(g), "x", x.shape[:-1])
        return self.group._act(_cast(g, x), x)

    def matrix(self, g):
        if not self.is_linear:
            return super().matrix(g)
        return Vector(self.group).matrix(g)

    def randn(self, *batch, generator=None, dtype=None, device=None):
        """Gaussian points, shape ``(*batch, d)``."""
        batch = _batch(batch)
        dtype, device = _default(generator, dtype, device)
        return torch.randn(*batch, self.dim, generator=generator, dtype=dtype, device=device)


def _shares_memory(a: torch.Tensor, b: object) -> bool:
    if not isinstance(b, torch.Tensor):
        return False
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # functorch wrappers have no storage
        return False


def _unaliased(out, *inputs):
    """``out`` (a tensor or a tuple of them) with every part that aliases an input copied."""
    if isinstance(out, torch.Tensor):
        return _fresh(out) if any(_shares_memory(out, t) for t in inputs) else out
    if isinstance(out, tuple):
        return tuple(_unaliased(o, *inputs) for o in out)
    return out


class Custom(Rep):
    """A rep given by a callable, e.g. right multiplication of predicted rotations.

    Args:
        group: the group.
        act: ``act(g, x) -> x'``.
        randn: optional ``randn(*batch, generator=, dtype=, device=) -> x``; without it
            :meth:`randn` raises and inputs must be passed explicitly.
        matrix: optional ``matrix(g) -> (*, dim, dim)`` for linear custom reps.
        dim: optional feature size (informational).

    Example:
        >>> from geo3d.groups import SO3
        >>> right = Custom(SO3(), act=lambda g, R: R @ g.transpose(-1, -2))
    """

    def __init__(
        self,
        group: Group,
        act: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        randn: Callable[..., torch.Tensor] | None = None,
        matrix: Callable[[torch.Tensor], torch.Tensor] | None = None,
        dim: int = 0,
        name: str = "Custom",
    ) -> None:
        if not isinstance(group, Group):
            raise ValueError(f"group: expected a geo3d.groups.Group, got {type(group).__name__}")
        if not callable(act):
            raise ValueError(f"act: expected a callable, got {type(act).__name__}")
        if randn is not None and not callable(randn):
            raise ValueError(f"randn: expected a callable or None, got {type(randn).__name__}")
        if matrix is not None and not callable(matrix):
            raise ValueError(f"matrix: expected a callable or None, got {type(matrix).__name__}")
        self.group = group
        self._act = act
        self._randn = randn
        self._matrix = matrix
        self.dim = dim
        self.name = name
        self.is_linear = matrix is not None

    def act(self, g, x):
        """``act(g, x)`` of the callable, after checking ``g`` (:meth:`Group.validate`).

        If the callable returns a tensor sharing memory with ``x`` or ``g`` (e.g. an
        identity action), a copy is returned, so editing the output never edits the input.

        Raises:
            ValueError: naming ``g`` for a wrong shape or a non-element.
        """
        self.group.validate(g)
        return _unaliased(self._act(g, x), x, g)

    def matrix(self, g):
        """``matrix(g)`` of the callable after checking ``g`` (a copy if it aliases ``g``).

        Raises:
            ValueError: naming ``g``; also when no ``matrix`` callable was given.
        """
        if self._matrix is None:
            return super().matrix(g)
        self.group.validate(g)
        return _unaliased(self._matrix(g), g)

    def randn(self, *batch, generator=None, dtype=None, device=None):
        if self._randn is None:
            raise ValueError(
                f"{self!r} has no randn: pass randn= to Custom or give inputs explicitly"
            )
        return self._randn(*_batch(batch), generator=generator, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"{self.name}({self.group!r})"
