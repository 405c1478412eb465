"""Human body layer: SMPL family through smplx (loaded safely), a tiny procedural SMPL-layout
body, kinematics, part labels, motions and body scans.

Layering: imports only geo3d.rotations (and numpy/torch/scipy/smplx); optional heavy
dependencies (open3d, anny, matplotlib) are imported inside the functions that need them.
"""

from geo3d.body._kinematics import (
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
    FKOutput,
    check_parents,
    forward_kinematics,
    global_to_local,
    joint_index,
    local_to_global,
)
from geo3d.body._model import (
    MODEL_TYPES,
    REQUIRED_KEYS,
    convert_model,
    find_model_file,
    load_body_model,
    pose_body,
    validate_model_dict,
)
from geo3d.body._motions import (
    JOINT_LIMITS,
    MOTION_KINDS,
    Motion,
    euler_xyz_to_matrix,
    extreme_poses,
    find_amass_files,
    read_amass,
    synthetic_motion,
    synthetic_motions,
    write_amass,
)
from geo3d.body._parts import (
    ARTEQ_NUM_PARTS,
    ARTEQ_PART_MAP,
    arteq_part_labels,
    part_labels,
    smpl_to_arteq_labels,
)
from geo3d.body._safe_io import (
    RestrictedUnpickler,
    UnsafePickleError,
    read_model_file,
    safe_load_npz,
    safe_load_pickle,
)
from geo3d.body._scans import (
    BodyScan,
    depth_camera_scan,
    look_at,
    pinhole_intrinsics,
    sample_surface_scan,
)
from geo3d.body._show import part_colors, render_bodies_png
from geo3d.body._tiny import (
    SMPLH_PARENTS,
    TINY_REST_JOINTS,
    tiny_body_dict,
    tiny_smplh_dict,
    write_tiny_body,
)

__all__ = [
    "SMPL_JOINT_NAMES",
    "SMPL_PARENTS",
    "FKOutput",
    "check_parents",
    "forward_kinematics",
    "global_to_local",
    "joint_index",
    "local_to_global",
    "MODEL_TYPES",
    "REQUIRED_KEYS",
    "convert_model",
    "find_model_file",
    "load_body_model",
    "pose_body",
    "validate_model_dict",
    "JOINT_LIMITS",
    "MOTION_KINDS",
    "Motion",
    "euler_xyz_to_matrix",
    "extreme_poses",
    "find_amass_files",
    "read_amass",
    "synthetic_motion",
    "synthetic_motions",
    "write_amass",
    "ARTEQ_NUM_PARTS",
    "ARTEQ_PART_MAP",
    "arteq_part_labels",
    "part_labels",
    "smpl_to_arteq_labels",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "read_model_file",
    "safe_load_npz",
    "safe_load_pickle",
    "BodyScan",
    "depth_camera_scan",
    "look_at",
    "pinhole_intrinsics",
    "sample_surface_scan",
    "part_colors",
    "render_bodies_png",
    "SMPLH_PARENTS",
    "TINY_REST_JOINTS",
    "tiny_smplh_dict",
    "tiny_body_dict",
    "write_tiny_body",
]
