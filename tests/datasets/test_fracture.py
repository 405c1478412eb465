"""fracture_mesh: pieces are watertight, tile the solid exactly, deterministic per seed."""

from __future__ import annotations

import functools
import itertools
import operator

import numpy as np
import pytest
import torch

trimesh = pytest.importorskip("trimesh")
manifold3d = pytest.importorskip("manifold3d")
from geo3d.datasets.fracture import (  # noqa: E402
    FractureError,
    fracture_mesh,
    pieces_to_obj_bytes,
)
from geo3d.datasets.shapes import make_shape  # noqa: E402


def _solid(mesh):
    """Independent conversion trimesh -> manifold3d (for union / intersection checks)."""
    return manifold3d.Manifold(
        manifold3d.Mesh64(
            vert_properties=np.ascontiguousarray(mesh.vertices, dtype=np.float64),
            tri_verts=np.ascontiguousarray(mesh.faces, dtype=np.uint64),
        )
    )


def _check_tiling(mesh, pieces, n_parts):
    assert len(pieces) == n_parts
    total = mesh.volume
    for p in pieces:
        assert p.is_watertight and p.is_winding_consistent
        assert p.volume > 0
        assert p.body_count == 1  # one connected piece
    # volume sum equal to the original within 1e-6 relative
    assert abs(sum(p.volume for p in pieces) - total) <= 1e-6 * total
    # and it really is a tiling: union covers the original, pieces are interior-disjoint
    solids = [_solid(p) for p in pieces]
    original = _solid(mesh)
    union = functools.reduce(operator.add, solids)  # (batch_boolean is less exact)
    assert abs(union.volume() - total) <= 1e-6 * total
    assert (original - union).volume() <= 1e-6 * total
    assert (union - original).volume() <= 1e-6 * total
    for a, b in itertools.combinations(solids, 2):
        assert (a ^ b).volume() <= 1e-6 * total


@pytest.mark.parametrize(
    ("category", "n_parts", "noise"),
    [
        ("Sphere", 2, 0.0),
        ("Box", 5, 0.0),
        ("Torus", 4, 0.0),
        ("Mug", 3, 0.0),
        ("Bowl", 4, 0.02),
        ("Bottle", 3, 0.02),
        ("Cylinder", 6, 0.03),
        ("Mug", 4, 0.02),
    ],
)
def test_pieces_tile_the_solid(category, n_parts, noise):
    mesh = make_shape(category, seed=2)
    pieces = fracture_mesh(mesh, n_parts, seed=5, noise=noise)
    _check_tiling(mesh, pieces, n_parts)
    # no empty slivers: the default minimum piece volume is 0.15 / n_parts of the solid
    assert min(p.volume for p in pieces) >= 0.15 / n_parts * mesh.volume * (1 - 1e-9)


def test_arbitrary_watertight_mesh_and_min_volume_fraction():
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=2.0)
    mesh.apply_translation([3.0, -1.0, 0.5])
    pieces = fracture_mesh(mesh, 4, seed=0, min_volume_fraction=0.15)
    _check_tiling(mesh, pieces, 4)
    assert min(p.volume for p in pieces) >= 0.15 * mesh.volume * (1 - 1e-9)


def _fracture_normals(mesh, piece):
    """Unit normals of the faces of ``piece`` that are not on the original surface."""
    _, dist, _ = trimesh.proximity.closest_point(mesh, piece.triangles_center)
    return piece.face_normals[dist > 1e-6]


def test_zero_noise_cuts_are_planar_and_noise_makes_them_rough():
    mesh = make_shape("Box", seed=0)
    planar = fracture_mesh(mesh, 2, seed=1, noise=0.0)
    n = _fracture_normals(mesh, planar[0])
    assert len(n) > 0
    np.testing.assert_allclose(np.abs(n @ n[0]), 1.0, atol=1e-9)  # one plane
    rough = fracture_mesh(mesh, 2, seed=1, noise=0.03)
    n = _fracture_normals(mesh, rough[0])
    mean = n.mean(0) / np.linalg.norm(n.mean(0))
    angles = np.degrees(np.arccos(np.clip(n @ mean, -1, 1)))
    assert len(n) > 50 and angles.max() > 10.0  # a displaced, non-planar surface
    _check_tiling(mesh, rough, 2)


def test_deterministic_for_a_seed():
    mesh = make_shape("Vase", seed=1)
    for noise in (0.0, 0.02):
        a = [pieces_to_obj_bytes(p) for p in fracture_mesh(mesh, 4, seed=11, noise=noise)]
        b = [pieces_to_obj_bytes(p) for p in fracture_mesh(mesh, 4, seed=11, noise=noise)]
        assert a == b
        c = [pieces_to_obj_bytes(p) for p in fracture_mesh(mesh, 4, seed=12, noise=noise)]
        assert a != c
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a = fracture_mesh(mesh, 3, generator=g1, noise=0.02)
    b = fracture_mesh(mesh, 3, generator=g2, noise=0.02)
    assert [pieces_to_obj_bytes(p) for p in a] == [pieces_to_obj_bytes(p) for p in b]


def test_obj_round_trip_keeps_pieces_watertight():
    import io

    mesh = make_shape("Mug", seed=4)
    pieces = fracture_mesh(mesh, 3, seed=2, noise=0.02)
    loaded = [
        trimesh.load(io.BytesIO(pieces_to_obj_bytes(p)), file_type="obj", force="mesh")
        for p in pieces
    ]
    assert all(p.is_watertight for p in loaded)
    assert abs(sum(p.volume for p in loaded) - mesh.volume) <= 1e-6 * mesh.volume


def test_one_part_is_the_mesh():
    mesh = make_shape("Sphere", seed=0)
    (piece,) = fracture_mesh(mesh, 1, seed=0)
    np.testing.assert_allclose(piece.volume, mesh.volume, rtol=1e-9)


def test_bad_input_raises():
    mesh = make_shape("Box", seed=0)
    with pytest.raises(ValueError, match="n_parts"):
        fracture_mesh(mesh, 0, seed=0)
    with pytest.raises(ValueError, match="noise"):
        fracture_mesh(mesh, 2, seed=0, noise=-0.1)
    with pytest.raises(ValueError, match="min_volume_fraction"):
        fracture_mesh(mesh, 4, seed=0, min_volume_fraction=0.3)
    with pytest.raises(ValueError, match="trimesh"):
        fracture_mesh(trimesh.Scene([mesh]), 2, seed=0)
    open_mesh = trimesh.Trimesh(mesh.vertices, mesh.faces[:-1], process=False)
    with pytest.raises(ValueError, match="watertight"):
        fracture_mesh(open_mesh, 2, seed=0)


def test_impossible_request_raises_fracture_error():
    mesh = make_shape("Box", seed=0)
    # every piece must hold >= 0.99 / 3 of the volume: random seeds (almost) never do that
    with pytest.raises(FractureError):
        fracture_mesh(mesh, 3, seed=0, min_volume_fraction=0.33, max_attempts=2)


@pytest.mark.slow
@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_many_parts_on_every_category(noise):
    from geo3d.datasets.shapes import SHAPE_CATEGORIES

    for category in SHAPE_CATEGORIES:
        mesh = make_shape(category, seed=9)
        pieces = fracture_mesh(mesh, 12, seed=3, noise=noise)
        _check_tiling(mesh, pieces, 12)
