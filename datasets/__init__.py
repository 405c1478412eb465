"""Dataset loaders, formats, transforms and synthetic generators (``geo3d.datasets``).

Import-light: trimesh and open3d are imported inside the functions that need them.
"""

from geo3d.datasets._cache import ArrayCache, file_digest
from geo3d.datasets._io import (
    MESH_EXTENSIONS,
    MeshReadError,
    PointCloudReadError,
    load_mesh,
    load_mesh_tensors,
    load_point_cloud,
    normalize_points,
    sample_surface,
    save_mesh,
    save_point_cloud,
)
from geo3d.datasets._seeded import SeededTransformDataset
from geo3d.datasets._transforms import (
    Center,
    Compose,
    FarthestPointSubsample,
    Jitter,
    Normalize,
    RandomRotation,
    RandomScale,
    RandomSE3,
    RandomSubsample,
    RandomZRotation,
    Transform,
    haar_rotation,
    sample_generator,
)
from geo3d.datasets.breaking_bad import BreakingBad, BreakingBadError, collate_parts
from geo3d.datasets.fracture import FractureError, fracture_mesh, generate_dataset
from geo3d.datasets.multiview import MultiviewPairs, find_objects, load_view, plot_pair
from geo3d.datasets.multiview_render import (
    RenderSettings,
    SolidTexture,
    make_textured_shape,
    render_dataset,
    render_object,
)
from geo3d.datasets.shapes import ORIENTED_CATEGORIES, SHAPE_CATEGORIES, make_shape

__all__ = [
    # I/O
    "MESH_EXTENSIONS",
    "MeshReadError",
    "PointCloudReadError",
    "load_mesh",
    "load_mesh_tensors",
    "save_mesh",
    "load_point_cloud",
    "save_point_cloud",
    "sample_surface",
    "normalize_points",
    # cache
    "ArrayCache",
    "file_digest",
    # transforms
    "Transform",
    "Compose",
    "RandomRotation",
    "RandomZRotation",
    "RandomSE3",
    "RandomScale",
    "Jitter",
    "RandomSubsample",
    "FarthestPointSubsample",
    "Center",
    "Normalize",
    "haar_rotation",
    "sample_generator",
    "SeededTransformDataset",
    # Breaking Bad
    "BreakingBad",
    "BreakingBadError",
    "collate_parts",
    # fracture generator (procedural shapes, Breaking Bad layout writer)
    "ORIENTED_CATEGORIES",
    "SHAPE_CATEGORIES",
    "make_shape",
    "fracture_mesh",
    "generate_dataset",
    "FractureError",
    # multiview rendering (3DCorrEnhance layout) and view pairs with correspondences
    "RenderSettings",
    "SolidTexture",
    "make_textured_shape",
    "render_object",
    "render_dataset",
    "MultiviewPairs",
    "find_objects",
    "load_view",
    "plot_pair",
]
