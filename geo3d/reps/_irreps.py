"""O(3)/SO(3) irreps and their direct sums through e3nn."""

from __future__ import annotations

from geo3d.groups import SE3, SO3, Group
from geo3d.reps._base import LinearRep
from geo3d.reps._wigner import irreps_d_from_matrix

__all__ = ["Irreps"]


#: Highest degree ``l`` of :class:`Irreps` (e3nn's ``spherical_harmonics`` stops at 12).
MAX_L = 12


class Irreps(LinearRep):
    """Direct sum of O(3) irreps in e3nn notation, e.g. ``"2x0e + 1x1o + 1x2e"``.

    ``ρ(g)`` is the block-diagonal Wigner-D matrix of e3nn's ``Irreps.D_from_matrix(R)``
    (same basis), computed to float64 accuracy (see ``_wigner.py``): for
    ``det R = -1`` the parity ``p`` of each irrep contributes ``p``; under SO3 parity plays
    no role. Under SE3 the features transform by the rotation part only. Basis
    conventions are e3nn's (with e3nn 0.6, ``"1o"`` transforms exactly like a Cartesian
    ``(x, y, z)`` vector).

    Args:
        group: :class:`~geo3d.groups.SO3`, :class:`~geo3d.groups.O3` or
            :class:`~geo3d.groups.SE3`.
        irreps: an e3nn irreps string or ``e3nn.o3.Irreps``; degrees ``l <=`` :data:`MAX_L`.
        axis: the feature axis (size ``dim``).

    Raises:
        ValueError: another group, irreps that do not parse, empty irreps, or a degree
            above :data:`MAX_L` (it would fail at the first ``matrix`` call).
    """

    def __init__(self, group: Group, irreps, axis: int = -1) -> None:
        from e3nn import o3

        if not isinstance(group, (SO3, SE3)):
            raise ValueError(f"group: expected SO3, O3 or SE3 for Irreps, got {group!r}")
        try:
            parsed = o3.Irreps(irreps)
        except (ValueError, AssertionError, TypeError) as err:
            raise ValueError(f"irreps: cannot parse {irreps!r} as e3nn irreps ({err})") from None
        lmax = max((ir.l for _, ir in parsed), default=0)
        if lmax > MAX_L:  # the Wigner-D matrices are fitted through e3nn's spherical harmonics
            raise ValueError(f"irreps: expected degrees l <= {MAX_L} (e3nn's spherical "
                             f"harmonics, which build the Wigner-D matrices here), got l = "
                             f"{lmax} in {irreps!r}")
        self.irreps = parsed
        super().__init__(group, parsed.dim, axis)
        if self.dim == 0:
            raise ValueError(f"irreps: expected a non-empty irreps, got {irreps!r}")

    def matrix(self, g):
        """Block-diagonal Wigner-D matrices, shape :math:`(*, dim, dim)`.

        Raises:
            ValueError: naming ``g`` for a wrong shape or a matrix that is not an element
                of the group (e.g. ``2·R``, a non-orthogonal matrix, a reflection under
                SO3), when value checks are on (:func:`geo3d.groups.value_checks_active`).
        """
        self.group.validate(g)
        r = g[..., :3, :3] if isinstance(self.group, SE3) else g
        return irreps_d_from_matrix(self.irreps, r)

    def __repr__(self) -> str:
        ax = "" if self.axis == -1 else f", axis={self.axis}"
        return f"Irreps({self.group!r}, {str(self.irreps)!r}{ax})"
