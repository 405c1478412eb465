"""Rotation utilities: conversions, distances, averaging, Procrustes, SE(3) exp/log.

Conventions: quaternions are unit, scalar-first ``wxyz`` (returned with ``w >= 0``);
rotation vectors (axis-angle) have angle in ``[0, π]`` when returned; 6D = first two
columns of ``R``; transforms act on column vectors ``x' = R x + t``; se(3) vectors are
translation-first ``ξ = (v, ω)``; Euler conventions follow ``scipy.spatial.transform``.
"""

from geo3d.rotations._checks import set_value_checks
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

__all__ = [
    "matrix_to_quat",
    "quat_apply",
    "quat_conjugate",
    "quat_distance",
    "quat_multiply",
    "quat_normalize",
    "quat_slerp",
    "quat_to_matrix",
    "random_quat",
    "random_rotation_matrix",
    "set_value_checks",
]
