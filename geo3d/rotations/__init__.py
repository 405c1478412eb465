"""Rotation utilities: conversions, distances, averaging, Procrustes, SE(3) exp/log.

Conventions: quaternions are unit, scalar-first ``wxyz`` (returned with ``w >= 0``);
rotation vectors (axis-angle) have angle in ``[0, π]`` when returned; 6D = first two
columns of ``R``; transforms act on column vectors ``x' = R x + t``; se(3) vectors are
translation-first ``ξ = (v, ω)``; Euler conventions follow ``scipy.spatial.transform``.

Every function accepts arbitrary leading batch dims, float32/float64, CPU/CUDA, and has
finite gradients at the identity and at rotations by π. ``compiled.<name>`` (or
:func:`fused`) gives ``torch.compile``-fused versions of the conversions for large batches.
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
