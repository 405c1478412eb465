"""Evaluation: GPU-batched metrics usable outside the apps.

Shape assembly (Breaking Bad benchmark) metrics live in :mod:`geo3d.eval._assembly_metrics`;
human-body fitting metrics (V2V, MPJPE, per-point part accuracy) in
:mod:`geo3d.eval._body_metrics`.
"""

from geo3d.eval._assembly_metrics import (
    align_to_anchor,
    anchor_parts,
    assembly_metrics,
    part_accuracy,
    part_chamfer,
    rotation_errors,
    shape_chamfer,
    transform_parts,
    translation_errors,
)
from geo3d.eval._body_metrics import mpjpe, part_accuracy_points, v2v_error

__all__ = [
    "align_to_anchor",
    "anchor_parts",
    "assembly_metrics",
    "part_accuracy",
    "part_chamfer",
    "rotation_errors",
    "shape_chamfer",
    "transform_parts",
    "translation_errors",
    "mpjpe",
    "part_accuracy_points",
    "v2v_error",
]
