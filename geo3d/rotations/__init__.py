"""Rotation utilities (being built)."""

from geo3d.rotations._random import random_quat, random_rotation_matrix

__all__ = ["random_quat", "random_rotation_matrix"]
