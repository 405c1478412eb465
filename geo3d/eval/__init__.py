"""Evaluation: GPU-batched metrics usable outside the apps.

Shape assembly (Breaking Bad benchmark) metrics live in :mod:`geo3d.eval._assembly_metrics`;
human-body fitting metrics (V2V, MPJPE, per-point part accuracy) in
:mod:`geo3d.eval._body_metrics`; 3D-correspondence metrics of image features (APE, PCDP,
keypoint PCK) in :mod:`geo3d.eval._correspondence`.
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
from geo3d.eval._correspondence import (
    dense_correspondence_metrics,
    dense_cosine_similarity,
    extract_features,
    keypoint_pck,
    keypoints_from_points,
    mask_bbox_size,
    nearest_pixels,
    sample_features,
    transfer_keypoints,
    views_from_pair,
)
from geo3d.eval._pose_estimation import (
    estimate_pose_pnp,
    match_to_references,
    pose_accuracy,
    pose_errors,
    pose_estimation_metrics,
)
from geo3d.eval._tracking import TAPVID_THRESHOLDS, tapvid_metrics, track_points, tracking_metrics

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
    # dense correspondence / keypoint transfer (issue 16)
    "dense_correspondence_metrics",
    "dense_cosine_similarity",
    "extract_features",
    "keypoint_pck",
    "keypoints_from_points",
    "mask_bbox_size",
    "nearest_pixels",
    "sample_features",
    "transfer_keypoints",
    "views_from_pair",
    "estimate_pose_pnp",
    "match_to_references",
    "pose_accuracy",
    "pose_errors",
    "pose_estimation_metrics",
    "TAPVID_THRESHOLDS",
    "tapvid_metrics",
    "track_points",
    "tracking_metrics",
]
