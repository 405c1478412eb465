"""Base classes shared by every group object."""

from __future__ import annotations

import torch

__all__ = ["FiniteGroup", "Group"]


def _resolve(
    generator: torch.Generator | None,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> tuple[torch.dtype, torch.device]:
    """Default dtype/device: ``dtype or torch.get_default_dtype()``, device of the generator."""
    if dtype is None:
        dtype = torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating point dtype, got {dtype}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    return dtype, torch.device(device)


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    return n


def _rand(n: int, generator, dtype, device) -> torch.Tensor:
    """Uniform [0, 1) draws of shape ``(n,)`` through ``generator``."""
    return torch.rand(n, generator=generator, dtype=dtype, device=device)


class Group:
    """A matrix group: elements are tensors of shape ``(..., *element_shape)``.

    Subclasses set :attr:`element_shape` and :attr:`dim` (the size of the vectors the
    defining action :meth:`act` acts on) and implement :meth:`sample`,
    :meth:`identity`, :meth:`element_error`.

    The default group law is matrix multiplication: ``compose(a, b) = a @ b`` (``a`` after
    ``b``), ``inverse(a) = a^{-1}``.
    """

    element_shape: tuple[int, ...] = ()
    dim: int = 0
    name: str = "Group"
    is_finite: bool = False
    #: default tolerance of :meth:`is_element` (float64 scale; float32 uses a looser one).
    default_atol: float = 1e-9

    # ------------------------------------------------------------------ checks
    def check_element(self, g: torch.Tensor, name: str = "g") -> torch.Tensor:
        """Raise :class:`ValueError` if ``g`` does not have shape ``(..., *element_shape)``."""
        if not isinstance(g, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(g).__name__}")
        k = len(self.element_shape)
        if g.dim() < k or tuple(g.shape[g.dim() - k :]) != tuple(self.element_shape):
            shape = ", ".join(str(s) for s in self.element_shape)
            raise ValueError(
                f"{name}: expected an element of {self} with shape (..., {shape}), "
                f"got shape {tuple(g.shape)}"
            )
        if not g.is_floating_point():
            raise ValueError(f"{name}: expected a floating point tensor, got {g.dtype}")
        return g

    def batch_shape(self, g: torch.Tensor) -> torch.Size:
        """Leading batch shape of ``g`` (everything before ``element_shape``)."""
        return g.shape[: g.dim() - len(self.element_shape)]

    # ------------------------------------------------------------------ API
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` random elements, shape ``(n, *element_shape)``."""
        raise NotImplementedError

    def identity(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The identity element, shape ``element_shape``."""
        dtype, device = _resolve(None, dtype, device)
        return torch.eye(self.element_shape[-1], dtype=dtype, device=device)

    def compose(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Group product ``a ∘ b`` (apply ``b`` first); batch dims broadcast.

        Args:
            a: shape :math:`(*, *element\\_shape)`.
            b: shape :math:`(*, *element\\_shape)`.
        """
        self.check_element(a, "a")
        self.check_element(b, "b")
        return a @ b

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        """Inverse element, same shape as ``a``."""
        self.check_element(a, "a")
        return torch.linalg.inv(a)

    def matrix(self, g: torch.Tensor) -> torch.Tensor:
        """Defining representation: shape :math:`(*, d, d)` (the element itself)."""
        return self.check_element(g)

    def act(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Defining action ``g · x`` on vectors ``x`` of shape :math:`(*, d)`.

        ``g`` has shape :math:`(*, *element\\_shape)`; its batch dims broadcast against
        ``x.shape[:-1]``.
        """
        m = self.matrix(g)
        _check_vec(x, self.dim)
        return (m @ x.unsqueeze(-1)).squeeze(-1)

    def element_error(self, g: torch.Tensor) -> torch.Tensor:
        """How far ``g`` is from the group (0 for exact elements), shape ``batch_shape(g)``."""
        raise NotImplementedError

    def is_element(self, g: torch.Tensor, atol: float | None = None) -> torch.Tensor:
        """Bool tensor of shape ``batch_shape(g)``: ``element_error(g) <= atol``.

        The default ``atol`` is :attr:`default_atol` in float64 and ``1e-4`` in lower
        precision.
        """
        if atol is None:
            atol = self.default_atol if g.dtype == torch.float64 else 1e-4
        return self.element_error(g) <= atol

    def special_elements(
        self,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, list[str]]:
        """Structured elements for testing (identity, rotations by π, reflections, ...).

        Returns:
            ``(elements (k, *element_shape), labels)`` with one label per element.
        """
        return self.identity(dtype, device)[None], ["identity"]

    def __repr__(self) -> str:
        return f"{self.name}()"

    def _key(self) -> tuple:
        """Identifies the mathematical group (sampling parameters excluded)."""
        return (type(self).__name__,)

    def __eq__(self, other: object) -> bool:
        """Same mathematical group (e.g. ``Lorentz(max_rapidity=2) == Lorentz()``,
        ``OcticGroup() == DihedralGroup(4)``); sampling parameters are ignored."""
        return isinstance(other, Group) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def _check_vec(x: torch.Tensor, d: int, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != d:
        raise ValueError(f"{name}: expected shape (..., {d}), got {tuple(x.shape)}")


def _orthogonality_error(g: torch.Tensor) -> torch.Tensor:
    """max |gᵀg − I| over the last two dims, shape ``g.shape[:-2]``."""
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    return (g.transpose(-1, -2) @ g - eye).abs().amax(dim=(-2, -1))


class FiniteGroup(Group):
    """A finite group of ``(2, 2)`` matrices with a fixed element order.

    Subclasses implement :meth:`_elements64` (the elements in float64 on CPU).
    """

    is_finite = True
    element_shape = (2, 2)
    dim = 2

    def _elements64(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def order(self) -> int:
        """Number of elements."""
        return int(self._elements64().shape[0])

    def elements(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """All elements, shape ``(order, 2, 2)``; element 0 is the identity."""
        dtype, device = _resolve(None, dtype, device)
        return self._elements64().to(dtype=dtype, device=device)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` uniformly random elements, shape ``(n, 2, 2)``."""
        _check_n(n)
        dtype, device = _resolve(generator, dtype, device)
        idx = torch.randint(self.order, (n,), generator=generator, device=device)
        return self.elements(dtype, device)[idx]

    def index_of(self, g: torch.Tensor, atol: float = 1e-4) -> torch.Tensor:
        """Index of ``g`` in :meth:`elements`, long tensor of shape ``batch_shape(g)``.

        Raises:
            ValueError: if some ``g`` is farther than ``atol`` (max abs) from every element.
        """
        self.check_element(g)
        els = self.elements(g.dtype, g.device)
        d = (g.unsqueeze(-3) - els).abs().amax(dim=(-2, -1))  # (..., order)
        dist, idx = d.min(dim=-1)
        if dist.numel() and bool((dist > atol).any()):
            raise ValueError(
                f"g: not an element of {self} (distance {float(dist.max()):.3g} > {atol})"
            )
        return idx

    def cayley_table(self) -> torch.Tensor:
        """``table[i, j] = index_of(elements[i] @ elements[j])``, long ``(order, order)``."""
        els = self._elements64()
        return self.index_of(els[:, None] @ els[None, :])

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        """Inverse (the transpose: all finite groups here are orthogonal)."""
        self.check_element(a, "a")
        return a.transpose(-1, -2)

    def element_error(self, g: torch.Tensor) -> torch.Tensor:
        """Max abs distance to the nearest element, shape ``batch_shape(g)``."""
        self.check_element(g)
        els = self.elements(g.dtype, g.device)
        return (g.unsqueeze(-3) - els).abs().amax(dim=(-2, -1)).min(dim=-1).values

    def special_elements(self, generator=None, dtype=None, device=None):
        """All elements (finite groups are tested exhaustively)."""
        els = self.elements(dtype, device)
        return els, [f"element {k} of {self}" for k in range(els.shape[0])]
