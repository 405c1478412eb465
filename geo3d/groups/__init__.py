"""Group objects with one interface: ``sample``, ``identity``, ``compose``, ``inverse``,
``matrix`` (defining representation), ``act``; finite groups also ``elements`` and
``order``.

Elements are matrices: ``SO2``/``O2``/``CyclicGroup``/``DihedralGroup``/``OcticGroup``
``(2, 2)``, ``SO3``/``O3``/``IcosahedralGroup`` ``(3, 3)``, ``SE3`` ``(4, 4)`` homogeneous, ``Lorentz``
``(4, 4)``.

Every operation that takes elements checks that they are elements (``Group.validate``:
``element_error <= max(sqrt(eps), ELEMENT_TOL_FLOOR)`` of the dtype: 1e-5 in float64,
so that elements computed in float32 and cast to float64 pass, 3.5e-4 in float32) when
value checks are on
(``geo3d.rotations.set_value_checks``; skipped under ``torch.compile``, ``torch.vmap`` and
other ``torch.func`` transforms), and returns new tensors, never views of its inputs.
"""

from geo3d.groups._base import ELEMENT_TOL_FLOOR, FiniteGroup, Group, value_checks_active
from geo3d.groups._lorentz import Lorentz, boost, minkowski_dot, minkowski_metric
from geo3d.groups._planar import O2, SO2, CyclicGroup, DihedralGroup, OcticGroup, rotation_2d
from geo3d.groups._spatial import O3, SE3, SO3, IcosahedralGroup

__all__ = [
    "ELEMENT_TOL_FLOOR",
    "O2",
    "O3",
    "SE3",
    "SO2",
    "SO3",
    "CyclicGroup",
    "DihedralGroup",
    "FiniteGroup",
    "Group",
    "IcosahedralGroup",
    "Lorentz",
    "OcticGroup",
    "boost",
    "minkowski_dot",
    "minkowski_metric",
    "rotation_2d",
    "value_checks_active",
]
