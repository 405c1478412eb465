"""Rotation utilities: conversions, distances, averaging, Procrustes, SE(3) exp/log.

Conventions: quaternions are unit, scalar-first ``wxyz`` (returned with ``w >= 0``);
rotation vectors (axis-angle) have angle in ``[0, π]`` when returned; 6D = first two
columns of ``R``; transforms act on column vectors ``x' = R x + t``; se(3) vectors are
translation-first ``ξ = (v, ω)``; Euler conventions follow ``scipy.spatial.transform``.

Every function accepts arbitrary leading batch dims, float32/float64, CPU/CUDA, and has
finite gradients at the identity and at rotations by exactly π (there: the one-sided
limit from ``w > 0``). Every function works under ``torch.vmap``, ``torch.func.jacrev``
and ``torch.func.jacfwd`` with value checks on (the data-dependent checks are skipped
while tracing); ``project_to_so3`` has a forward-mode derivative and a vmap rule.
Outputs never alias inputs. ``compiled.<name>`` (or :func:`fused`) gives
``torch.compile``-fused versions of the conversions for large batches.

Matrices that are not rotations: every function that reads a rotation matrix
(``matrix_to_quat``, ``matrix_to_axis_angle``, ``matrix_to_euler``, ``matrix_to_sixd``,
``mean_rotation``, and the rotation block of ``se3_log``/``se3_inverse``) raises
``ValueError`` naming the argument for NaN/inf or ``det <= 0`` (reflections, singular or
zero matrices; a det within rounding of 0 counts as 0), and reads any ``det > 0`` matrix
as its nearest rotation (:func:`project_to_so3`, like scipy >= 1.15
``Rotation.from_matrix``). Matrices orthonormal to 64 float32 ulps
(``|RᵀR - I| <= 7.6e-6``, in float32 and float64 alike, so a float32 rotation cast to
float64 reads the same) skip the projection (the check is one pass and one host read);
within that tolerance the plain formula and its derivative are used, outside it the
derivative is that of ``f(project_to_so3(M))``.
With value checks off (:func:`set_value_checks`) or while tracing
(``torch.compile``, ``torch.func``, the fused path) nothing data-dependent runs and the
input is assumed to be a rotation.
"""

from geo3d.rotations._axis_angle import (
    axis_angle_to_matrix,
    axis_angle_to_quat,
    matrix_to_axis_angle,
    quat_to_axis_angle,
    so3_hat,
    so3_vee,
)
from geo3d.rotations._checks import set_value_checks
from geo3d.rotations._compiled import FUSED_FUNCTIONS, compiled, fused
from geo3d.rotations._euler import euler_to_matrix, euler_to_quat, matrix_to_euler, quat_to_euler
from geo3d.rotations._procrustes import (
    geodesic_distance,
    kabsch,
    mean_rotation,
    project_to_so3,
    umeyama,
)
from geo3d.rotations._quat import (
    matrix_to_quat,
    quat_apply,
    quat_conjugate,
    quat_distance,
    quat_multiply,
    quat_normalize,
    quat_slerp,
    quat_to_matrix,
)
from geo3d.rotations._random import random_quat, random_rotation_matrix
from geo3d.rotations._se3 import se3_apply, se3_exp, se3_inverse, se3_log
from geo3d.rotations._sixd import matrix_to_sixd, sixd_to_matrix

__all__ = [
    "FUSED_FUNCTIONS",
    "axis_angle_to_matrix",
    "axis_angle_to_quat",
    "compiled",
    "euler_to_matrix",
    "euler_to_quat",
    "fused",
    "geodesic_distance",
    "kabsch",
    "matrix_to_axis_angle",
    "matrix_to_euler",
    "matrix_to_quat",
    "matrix_to_sixd",
    "mean_rotation",
    "project_to_so3",
    "quat_apply",
    "quat_conjugate",
    "quat_distance",
    "quat_multiply",
    "quat_normalize",
    "quat_slerp",
    "quat_to_axis_angle",
    "quat_to_euler",
    "quat_to_matrix",
    "random_quat",
    "random_rotation_matrix",
    "se3_apply",
    "se3_exp",
    "se3_inverse",
    "se3_log",
    "set_value_checks",
    "sixd_to_matrix",
    "so3_hat",
    "so3_vee",
    "umeyama",
]
