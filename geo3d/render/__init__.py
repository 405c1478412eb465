"""Multiview rendering on open3d ray casting: RGB, depth, mask, per-pixel 3D (``geo3d.render``).

Headless, CPU, any triangle mesh (trimesh meshes and scenes, OBJ/PLY/GLB files with UV
textures or vertex colours). Cameras follow the OpenCV convention (x right, y down,
z forward; ``world_to_cam`` maps object coordinates to camera coordinates); see
:mod:`geo3d.render._camera` and ``benchmarks/results/figures/render_camera_axes.png`` (drawn by ``benchmarks/render_figures.py``).

Layer: above ``geo3d.ops`` / ``groups`` / ``rotations``, below ``geo3d.nn``. open3d is an
optional dependency (``pip install 'geo3d[o3d]'``) imported when a renderer is built.

Example:
    >>> import trimesh
    >>> from geo3d.render import Renderer, intrinsics_matrix, look_at, icosphere_viewpoints
    >>> views = Renderer(trimesh.creation.icosphere()).render(
    ...     intrinsics_matrix(30.0, cx=15.5, cy=15.5), look_at(icosphere_viewpoints(1, 3.0)), (32, 32))
    >>> views["depth"].shape
    torch.Size([42, 32, 32])
"""

from geo3d.render._camera import (
    camera_centers,
    depth_to_points,
    icosphere_viewpoints,
    intrinsics_matrix,
    look_at,
    project_points,
    random_viewpoints,
    relative_rotation_angle,
)
from geo3d.render._corr import view_correspondences
from geo3d.render._mesh import DEFAULT_GREY, RenderMesh, as_render_mesh, sample_texture
from geo3d.render._render import Renderer, render
from geo3d.render._tracks import render_tracks, smooth_rigid_trajectory

__all__ = [
    "render",
    "Renderer",
    "RenderMesh",
    "as_render_mesh",
    "sample_texture",
    "DEFAULT_GREY",
    "intrinsics_matrix",
    "look_at",
    "icosphere_viewpoints",
    "random_viewpoints",
    "camera_centers",
    "project_points",
    "depth_to_points",
    "relative_rotation_angle",
    "view_correspondences",
    "render_tracks",
    "smooth_rigid_trajectory",
]
