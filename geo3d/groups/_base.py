"""Base classes shared by every group object."""

from __future__ import annotations

import math

import torch

__all__ = ["FiniteGroup", "Group", "value_checks_active"]


def _transformed(t: torch.Tensor) -> bool:
    """True while ``t`` is traced: torch.func transforms (vmap, grad, jvp), jit tracing,
    meta/fake tensors. Data-dependent checks (a host read of a reduction) are skipped then."""
    if torch.jit.is_tracing():
        return True
    try:
        from torch._C import _functorch

        if _functorch.peek_interpreter_stack() is not None:
            return True
        if _functorch.is_functorch_wrapped_tensor(t):
            return True
    except (ImportError, AttributeError):  # pragma: no cover - torch without functorch
        pass
    return t.device.type == "meta"


def value_checks_active(*tensors: torch.Tensor) -> bool:
    """Whether data-dependent checks (group membership) run for these tensors.

    Follows :func:`geo3d.rotations.set_value_checks` (off: never; skipped inside
    ``torch.compile``) and is also off under ``torch.vmap``/``torch.func`` transforms,
    ``torch.jit`` tracing and for meta tensors, where reading a value is impossible.

    Example:
        >>> import torch
        >>> value_checks_active(torch.eye(3))
        True
    """
    try:
        from geo3d.rotations._checks import values_enabled
    except ImportError:  # pragma: no cover - layout change in geo3d.rotations
        values_enabled = lambda: not torch.compiler.is_compiling()  # noqa: E731
    if not values_enabled():
        return False
    return not any(_transformed(t) for t in tensors)


def _broadcast(name_a: str, batch_a, name_b: str, batch_b) -> torch.Size:
    """Broadcast two batch shapes or raise a ValueError naming both arguments."""
    try:
        return torch.broadcast_shapes(tuple(batch_a), tuple(batch_b))
    except RuntimeError:
        raise ValueError(
            f"{name_b}: expected batch dims that broadcast against {name_a}'s batch "
            f"shape {tuple(batch_a)}, got {tuple(batch_b)}"
        ) from None


def _check_like(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise a ValueError naming ``name_b`` unless ``b`` has ``a``'s dtype and device."""
    if b.dtype != a.dtype or b.device != a.device:
        raise ValueError(
            f"{name_b}: expected dtype {a.dtype} on {a.device} (like {name_a}), "
            f"got {b.dtype} on {b.device}"
        )


def _fresh(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy (never a view of ``t``, whatever its strides)."""
    return t.clone(memory_format=torch.contiguous_format)


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


#: lower bound of the membership tolerance of :meth:`Group.validate` in every dtype:
#: float32-rounded elements given in float64 (error a few 1e-7) are elements.
ELEMENT_TOL_FLOOR = 1e-5


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
        """Raise :class:`ValueError` if ``g`` does not have shape ``(..., *element_shape)``
        or is not floating point (no membership check: see :meth:`validate`).

        Returns:
            ``g`` itself (a check, not a copy).
        """
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

    def element_tolerance(self, dtype: torch.dtype) -> float:
        """Tolerance of the membership check in :meth:`validate`, on
        :meth:`element_error`: ``max(sqrt(eps), ELEMENT_TOL_FLOOR)`` of ``dtype`` (1e-5 in
        float64, 3.5e-4 in float32, 3.1e-2 in float16). The floor (1e-5, ~84 float32 ulps)
        accepts elements computed in float32 and given in float64 (their error is a few
        1e-7), as :mod:`geo3d.rotations` does."""
        return max(math.sqrt(torch.finfo(dtype).eps), ELEMENT_TOL_FLOOR)

    def validate(self, g: torch.Tensor, name: str = "g") -> torch.Tensor:
        """Shape check (:meth:`check_element`) and, when value checks are active (see
        :func:`value_checks_active`), a membership check: every element must have
        ``element_error(g) <= element_tolerance(g.dtype)``. Non-finite entries fail.

        Every operation that takes elements (``compose``, ``inverse``, ``matrix``, ``act``
        and every rep's ``matrix``/``act``) calls it, so a matrix that is not a group
        element (``2·R``, a shear, a reflection given to SO3) raises instead of giving a
        meaningless (e.g. non-orthogonal) result.

        Returns:
            ``g`` itself (a check, not a copy).

        Raises:
            ValueError: naming ``name``, for a wrong shape/dtype or a non-element.

        Example:
            >>> import torch
            >>> from geo3d.groups import SO3
            >>> SO3().validate(2 * torch.eye(3))  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: g: expected elements of SO3() (element_error <= 0.00035 in torch.float32...
        """
        self.check_element(g, name)
        if g.numel() == 0 or not value_checks_active(g):
            return g
        gd = g.detach()
        tol = self.element_tolerance(g.dtype)
        err = self.element_error(gd)
        bad = ~(err <= tol)  # NaN counts as bad
        if bool(bad.any()):
            worst = float(torch.nan_to_num(err.float(), nan=math.inf).max())
            raise ValueError(
                f"{name}: expected elements of {self} (element_error <= {tol:.2g} in "
                f"{g.dtype}; value checks: geo3d.rotations.set_value_checks), got "
                f"{int(bad.sum())} of {bad.numel()} with element_error up to {worst:.3g}"
            )
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
        """The identity element, shape ``element_shape`` (a new tensor on every call)."""
        dtype, device = _resolve(None, dtype, device)
        return torch.eye(self.element_shape[-1], dtype=dtype, device=device)

    def compose(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Group product ``a ∘ b`` (apply ``b`` first); batch dims broadcast.

        Args:
            a: shape :math:`(*, *element\\_shape)`.
            b: shape :math:`(*, *element\\_shape)`.

        Raises:
            ValueError: naming ``a``/``b`` for a wrong shape, a non-element (see
                :meth:`validate`), different dtypes/devices or batch dims that do not
                broadcast.
        """
        self.validate(a, "a")
        self.validate(b, "b")
        _check_like("a", a, "b", b)
        _broadcast("a", self.batch_shape(a), "b", self.batch_shape(b))
        return a @ b

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        """Inverse element, same shape as ``a`` (a new tensor, never a view of ``a``).

        Raises:
            ValueError: naming ``a`` for a wrong shape or a non-element.
        """
        self.validate(a, "a")
        return torch.linalg.inv(a)

    def matrix(self, g: torch.Tensor) -> torch.Tensor:
        """Defining representation: shape :math:`(*, d, d)` (a copy of the element).

        Raises:
            ValueError: naming ``g`` for a wrong shape or a non-element.
        """
        return _fresh(self.validate(g))

    def act(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Defining action ``g · x`` on vectors ``x`` of shape :math:`(*, d)`.

        ``g`` has shape :math:`(*, *element\\_shape)`; its batch dims broadcast against
        ``x.shape[:-1]``.

        Raises:
            ValueError: naming ``g`` (wrong shape, non-element) or ``x`` (wrong shape,
                dtype/device other than ``g``'s, batch dims that do not broadcast against
                ``g``'s).
        """
        self.validate(g)
        _check_vec(x, self.dim)
        _check_like("g", g, "x", x)
        _broadcast("g", self.batch_shape(g), "x", x.shape[:-1])
        return self._act(g, x)

    def _act(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The defining action without checks (``g`` and ``x`` already validated)."""
        return (g @ x.unsqueeze(-1)).squeeze(-1)

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


def _det(m: torch.Tensor) -> torch.Tensor:
    """Determinant over the last two dims: closed form for 2×2 and 3×3 (no LAPACK call,
    which costs milliseconds per call for tiny batches on a busy CPU), else ``linalg.det``."""
    n = m.shape[-1]
    if n == 2:
        return m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
    if n == 3:
        return (m[..., 0, :] * torch.linalg.cross(m[..., 1, :], m[..., 2, :], dim=-1)).sum(-1)
    return torch.linalg.det(m)


def _orthogonality_error(g: torch.Tensor) -> torch.Tensor:
    """max |gᵀg − I| over the last two dims, shape ``g.shape[:-2]``."""
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    return (g.transpose(-1, -2) @ g - eye).abs().amax(dim=(-2, -1))


class FiniteGroup(Group):
    """A finite group of ``(d, d)`` matrices with a fixed element order (``(2, 2)`` unless a
    subclass sets :attr:`element_shape` and :attr:`dim`, as ``IcosahedralGroup`` does).

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

    def _elements_as(self, dtype: torch.dtype, device) -> torch.Tensor:
        """The cached elements in ``dtype``/``device`` (may BE the cache: internal, read only)."""
        return self._elements64().to(dtype=dtype, device=device)

    def elements(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """All elements, shape ``(order, *element_shape)``; element 0 is the identity.

        A new tensor on every call: editing it never changes the group.
        """
        dtype, device = _resolve(None, dtype, device)
        return self._elements64().to(dtype=dtype, device=device, copy=True)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """``n`` uniformly random elements, shape ``(n, *element_shape)``."""
        _check_n(n)
        dtype, device = _resolve(generator, dtype, device)
        idx = torch.randint(self.order, (n,), generator=generator, device=device)
        return self._elements_as(dtype, device)[idx]

    def index_of(self, g: torch.Tensor, atol: float = 1e-4) -> torch.Tensor:
        """Index of ``g`` in :meth:`elements`, long tensor of shape ``batch_shape(g)``.

        Raises:
            ValueError: if some ``g`` is farther than ``atol`` (max abs) from every element
                or not finite (when value checks are active, see :func:`value_checks_active`;
                otherwise the nearest element's index is returned).
        """
        self.check_element(g)
        els = self._elements_as(g.dtype, g.device)
        d = (g.unsqueeze(-3) - els).abs().amax(dim=(-2, -1))  # (..., order)
        dist, idx = d.min(dim=-1)
        if dist.numel() and value_checks_active(g):
            bad = ~(dist <= atol)
            if bool(bad.any()):
                worst = float(torch.nan_to_num(dist.float(), nan=math.inf).max())
                raise ValueError(
                    f"g: expected elements of {self}, got {int(bad.sum())} of {bad.numel()} "
                    f"not an element of {self} (distance up to {worst:.3g} > {atol})"
                )
        return idx

    def cayley_table(self) -> torch.Tensor:
        """``table[i, j] = index_of(elements[i] @ elements[j])``, long ``(order, order)``."""
        els = self._elements64()
        return self.index_of(els[:, None] @ els[None, :])

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        """Inverse (the transpose: all finite groups here are orthogonal), a new tensor."""
        self.validate(a, "a")
        return _fresh(a.transpose(-1, -2))

    def element_error(self, g: torch.Tensor) -> torch.Tensor:
        """Max abs distance to the nearest element, shape ``batch_shape(g)``."""
        self.check_element(g)
        els = self._elements_as(g.dtype, g.device)
        return (g.unsqueeze(-3) - els).abs().amax(dim=(-2, -1)).min(dim=-1).values

    def special_elements(self, generator=None, dtype=None, device=None):
        """All elements (finite groups are tested exhaustively)."""
        els = self.elements(dtype, device)
        return els, [f"element {k} of {self}" for k in range(els.shape[0])]
