"""Procedural, seeded, watertight shapes for synthetic fracture datasets.

Every category is a parametrised family (a revolved profile, a union of primitives, ...)
whose parameters are drawn from a seeded random generator, so that two seeds give two
different objects of the same category: enough variety for a meaningful train/val split.
Shapes are built with manifold3d (guaranteed manifold, i.e. watertight and consistently
oriented) and returned as :class:`trimesh.Trimesh` normalised to the unit scale: centred
on their bounding-box centre, largest bounding-box extent equal to 1.

Example:
    >>> mesh = make_shape("Mug", seed=3)
    >>> bool(mesh.is_watertight)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import manifold3d
import numpy as np
import torch

if TYPE_CHECKING:  # trimesh is imported lazily (slow import)
    import trimesh

__all__ = [
    "ORIENTED_CATEGORIES",
    "SHAPE_CATEGORIES",
    "make_shape",
    "manifold_to_trimesh",
    "trimesh_to_manifold",
]

_SEGMENTS = 48  # circular segments of revolved / round primitives


def _rng_from(seed: int | None, generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator from an int seed or a torch generator (one int64 draw)."""
    if seed is not None:
        return np.random.default_rng(seed)
    if generator is not None:
        draw = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
        return np.random.default_rng(int(draw.item()))
    return np.random.default_rng()


def manifold_to_trimesh(m: manifold3d.Manifold) -> trimesh.Trimesh:
    """Convert a manifold3d solid to a trimesh mesh (float64 vertices, no processing).

    Args:
        m: the solid.

    Returns:
        mesh with ``vertices`` of shape :math:`(V, 3)` and ``faces`` :math:`(F, 3)`.
    """
    import trimesh

    mesh = m.to_mesh64()
    verts = np.asarray(mesh.vert_properties, dtype=np.float64)[:, :3]
    faces = np.asarray(mesh.tri_verts, dtype=np.int64)
    return trimesh.Trimesh(vertices=verts.copy(), faces=faces.copy(), process=False)


def trimesh_to_manifold(mesh: trimesh.Trimesh) -> manifold3d.Manifold:
    """Convert a watertight trimesh mesh to a manifold3d solid.

    Args:
        mesh: a closed, consistently oriented triangle mesh.

    Returns:
        the solid.

    Raises:
        ValueError: if manifold3d rejects the mesh (not a closed 2-manifold).
    """
    verts = np.ascontiguousarray(np.asarray(mesh.vertices, dtype=np.float64))
    faces = np.ascontiguousarray(np.asarray(mesh.faces, dtype=np.uint64))
    m = manifold3d.Manifold(manifold3d.Mesh64(vert_properties=verts, tri_verts=faces))
    if m.status() != manifold3d.Error.NoError or m.is_empty():
        raise ValueError(
            "mesh must be a closed, consistently oriented 2-manifold (watertight); "
            f"manifold3d status: {m.status()}, empty: {m.is_empty()}"
        )
    if m.volume() < 0:
        raise ValueError("mesh must have outward-facing triangles (negative volume)")
    return m


def _revolve(profile: np.ndarray) -> manifold3d.Manifold:
    """Revolve a simple polygon given in (radius, height) around the Z axis."""
    cs = manifold3d.CrossSection([np.asarray(profile, dtype=np.float64)])
    return manifold3d.Manifold.revolve(cs, circular_segments=_SEGMENTS)


def _arc(c: tuple[float, float], rx: float, ry: float, a0: float, a1: float, n: int) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return np.stack([c[0] + rx * np.cos(t), c[1] + ry * np.sin(t)], axis=1)


def _bottle(rng: np.random.Generator) -> manifold3d.Manifold:
    radius = rng.uniform(0.22, 0.38)
    height = rng.uniform(0.9, 1.4)
    shoulder = rng.uniform(0.5, 0.7) * height
    neck_r = rng.uniform(0.25, 0.45) * radius
    neck_start = shoulder + rng.uniform(0.12, 0.22) * height
    lip = rng.uniform(0.02, 0.04)
    t = np.linspace(0.0, 1.0, 12)
    # smooth shoulder: cosine blend between body radius and neck radius
    shoulder_r = neck_r + (radius - neck_r) * 0.5 * (1 + np.cos(np.pi * t))
    shoulder_z = shoulder + (neck_start - shoulder) * t
    pts = [(0.0, 0.0), (radius * 0.92, 0.0), (radius, 0.04)]
    pts += list(zip(shoulder_r, shoulder_z, strict=True))
    pts += [
        (neck_r, height - lip),
        (neck_r + lip, height - lip),
        (neck_r + lip, height),
        (0.0, height),
    ]
    return _revolve(np.array(pts))


def _bowl(rng: np.random.Generator) -> manifold3d.Manifold:
    radius = rng.uniform(0.45, 0.6)
    depth = rng.uniform(0.2, 0.45)
    thick = rng.uniform(0.05, 0.09)
    foot = rng.uniform(0.02, 0.05)
    outer = _arc((0.0, depth), radius, depth, -np.pi / 2, 0.0, 16)  # axis-bottom -> rim
    inner = _arc((0.0, depth), radius - thick, depth - thick, 0.0, -np.pi / 2, 16)  # rim -> axis
    pts = np.concatenate([outer, inner], axis=0)
    pts[:, 0] = np.maximum(pts[:, 0], 0.0)
    pts[-1, 0] = 0.0
    pts[0, 0] = 0.0
    bowl = _revolve(pts)
    # flat foot: cut the very bottom off
    return bowl.trim_by_plane((0.0, 0.0, 1.0), foot)


def _mug(rng: np.random.Generator) -> manifold3d.Manifold:
    radius = rng.uniform(0.25, 0.35)
    height = rng.uniform(0.6, 0.95)
    wall = rng.uniform(0.035, 0.06)
    bottom = rng.uniform(0.05, 0.09)
    body = manifold3d.Manifold.cylinder(height, radius, circular_segments=_SEGMENTS)
    h_major = rng.uniform(0.22, 0.32) * height
    h_minor = rng.uniform(0.035, 0.055)
    ring = manifold3d.CrossSection.circle(h_minor, 24).translate((h_major, 0.0))
    handle = manifold3d.Manifold.revolve(ring, circular_segments=32)  # torus in the XY plane
    handle = handle.rotate((90.0, 0.0, 0.0)).translate(
        (radius, 0.0, height * rng.uniform(0.45, 0.6))
    )
    # the cavity pokes out of the top (no coplanar faces) and also clears the handle
    cavity = manifold3d.Manifold.cylinder(height, radius - wall, circular_segments=_SEGMENTS)
    cavity = cavity.translate((0.0, 0.0, bottom))
    return (body + handle) - cavity


def _box(rng: np.random.Generator) -> manifold3d.Manifold:
    size = rng.uniform(0.35, 1.0, size=3)
    box = manifold3d.Manifold.cube(tuple(size.tolist()), center=True)
    if rng.uniform() < 0.5:  # open-top container
        wall = rng.uniform(0.06, 0.1) * size.min() / 0.35
        wall = min(wall, 0.3 * size[:2].min())
        inner = manifold3d.Manifold.cube(
            (size[0] - 2 * wall, size[1] - 2 * wall, size[2]), center=True
        ).translate((0.0, 0.0, wall))
        box = box - inner
    return box


def _sphere(rng: np.random.Generator) -> manifold3d.Manifold:
    axes = rng.uniform(0.6, 1.0, size=3)
    return manifold3d.Manifold.sphere(0.5, circular_segments=32).scale(tuple(axes.tolist()))


def _torus(rng: np.random.Generator) -> manifold3d.Manifold:
    major = rng.uniform(0.3, 0.4)
    minor = rng.uniform(0.08, 0.16)
    squash = rng.uniform(0.6, 1.0)
    circle = manifold3d.CrossSection.circle(minor, 24).scale((1.0, squash)).translate((major, 0.0))
    return manifold3d.Manifold.revolve(circle, circular_segments=_SEGMENTS)


def _cylinder(rng: np.random.Generator) -> manifold3d.Manifold:
    return manifold3d.Manifold.cylinder(
        rng.uniform(0.4, 1.2), rng.uniform(0.15, 0.45), circular_segments=_SEGMENTS, center=True
    )


def _cone(rng: np.random.Generator) -> manifold3d.Manifold:
    low = rng.uniform(0.25, 0.5)
    return manifold3d.Manifold.cylinder(
        rng.uniform(0.5, 1.1),
        low,
        low * rng.uniform(0.0, 0.5),
        circular_segments=_SEGMENTS,
        center=True,
    )


def _capsule(rng: np.random.Generator) -> manifold3d.Manifold:
    r = rng.uniform(0.12, 0.3)
    length = rng.uniform(0.3, 0.9)
    s = manifold3d.Manifold.sphere(r, circular_segments=32)
    return (s.translate((0.0, 0.0, -length / 2)) + s.translate((0.0, 0.0, length / 2))).hull()


def _vase(rng: np.random.Generator) -> manifold3d.Manifold:
    height = rng.uniform(0.8, 1.3)
    base = rng.uniform(0.18, 0.3)
    amp = rng.uniform(0.04, 0.1)
    freq = rng.uniform(0.6, 1.4)
    phase = rng.uniform(0, 2 * np.pi)
    wall = rng.uniform(0.04, 0.06)
    bottom = rng.uniform(0.06, 0.1)
    z = np.linspace(0.0, height, 24)
    r = base + amp * np.sin(2 * np.pi * freq * z / height + phase)
    outer = np.stack([r, z], axis=1)
    zi = np.linspace(height, bottom, 24)
    ri = base + amp * np.sin(2 * np.pi * freq * zi / height + phase) - wall
    inner = np.stack([ri, zi], axis=1)
    pts = np.concatenate([[[0.0, 0.0]], outer, inner, [[0.0, bottom]]], axis=0)
    return _revolve(pts)


# ---- families with a canonical orientation (no rotational self-symmetry) --------------
# A fragment of a solid of revolution cannot tell how far the object was turned about its
# axis, so its absolute pose is ambiguous. These families have at most a mirror plane
# (not a rotation), so every piece has exactly one correct absolute pose.


def _chair(rng: np.random.Generator) -> manifold3d.Manifold:
    w, d = rng.uniform(0.45, 0.6), rng.uniform(0.4, 0.55)
    seat_t, seat_h = rng.uniform(0.05, 0.08), rng.uniform(0.4, 0.5)
    leg = rng.uniform(0.04, 0.06)
    back_h = rng.uniform(0.35, 0.55)
    cube = manifold3d.Manifold.cube
    chair = cube((w, d, seat_t)).translate((0.0, 0.0, seat_h))
    for sx in (0.0, w - leg):
        for sy in (0.0, d - leg):
            chair += cube((leg, leg, seat_h + seat_t / 2)).translate((sx, sy, 0.0))
    back_t = rng.uniform(0.04, 0.07)
    chair += cube((w, back_t, back_h + seat_t)).translate((0.0, d - back_t, seat_h))
    return chair


def _bracket(rng: np.random.Generator) -> manifold3d.Manifold:
    """An L bracket with unequal arms and a hole in the long arm."""
    long_arm, short_arm = rng.uniform(0.8, 1.0), rng.uniform(0.35, 0.6)
    width, t = rng.uniform(0.25, 0.45), rng.uniform(0.06, 0.1)
    cube = manifold3d.Manifold.cube
    bracket = cube((long_arm, width, t)) + cube((t, width, short_arm))
    hole = manifold3d.Manifold.cylinder(
        3 * t, rng.uniform(0.25, 0.35) * width, circular_segments=24, center=True
    ).translate((rng.uniform(0.55, 0.75) * long_arm, width / 2, t / 2))
    return bracket - hole


def _hammer(rng: np.random.Generator) -> manifold3d.Manifold:
    """A handle with a head that sticks out further on one side (the claw)."""
    length, r = rng.uniform(0.8, 1.0), rng.uniform(0.035, 0.05)
    handle = manifold3d.Manifold.cylinder(length, r, circular_segments=24)
    head_h, head_w = rng.uniform(0.08, 0.12), rng.uniform(0.08, 0.12)
    face, claw = rng.uniform(0.12, 0.18), rng.uniform(0.25, 0.35)
    head = manifold3d.Manifold.cube((face + claw, head_w, head_h)).translate(
        (-face, -head_w / 2, length - head_h / 2)
    )
    striker = manifold3d.Manifold.cylinder(
        0.06, 0.6 * head_h, circular_segments=24
    ).rotate((0.0, -90.0, 0.0)).translate((-face + 0.01, 0.0, length))
    return handle + head + striker


def _stairs(rng: np.random.Generator) -> manifold3d.Manifold:
    """A flight of 3-5 steps (a staircase profile extruded sideways)."""
    n = int(rng.integers(3, 6))
    rise, run = rng.uniform(0.12, 0.2), rng.uniform(0.15, 0.25)
    width = rng.uniform(0.4, 0.8)
    cube = manifold3d.Manifold.cube
    stairs = cube((run * n, width, rise))
    for i in range(1, n):
        stairs += cube((run * (n - i), width, rise * (i + 1) - 1e-3)).translate(
            (run * i, 0.0, 0.0)
        )
    return stairs


_BUILDERS: dict[str, Callable[[np.random.Generator], manifold3d.Manifold]] = {
    "Bottle": _bottle,
    "Bowl": _bowl,
    "Mug": _mug,
    "Box": _box,
    "Sphere": _sphere,
    "Torus": _torus,
    "Cylinder": _cylinder,
    "Cone": _cone,
    "Capsule": _capsule,
    "Vase": _vase,
    "Chair": _chair,
    "Bracket": _bracket,
    "Hammer": _hammer,
    "Stairs": _stairs,
}

#: Categories whose shapes have no rotational self-symmetry (at most a mirror plane), so
#: the absolute pose of every piece is well defined: the synthetic assembly demo uses them.
ORIENTED_CATEGORIES: tuple[str, ...] = ("Mug", "Chair", "Bracket", "Hammer", "Stairs")

#: Names of the procedural shape categories, usable as Breaking Bad category folders.
SHAPE_CATEGORIES: tuple[str, ...] = tuple(_BUILDERS)


def _normalise(m: manifold3d.Manifold) -> manifold3d.Manifold:
    lo = np.array(m.bounding_box()[:3])
    hi = np.array(m.bounding_box()[3:])
    centre = (lo + hi) / 2
    scale = 1.0 / float((hi - lo).max())
    m = m.translate(tuple((-centre).tolist())).scale((scale, scale, scale))
    # drop the ~1e-9 slivers edges booleans can leave: they would be merged (and the
    # mesh broken) by loaders that weld vertices closer than ~1e-8, like trimesh's
    # as_original: forget which input each face came from, or simplify keeps those seams
    return m.as_original().simplify(1e-5)


def make_shape(
    category: str,
    seed: int | None = None,
    *,
    generator: torch.Generator | None = None,
    rng: np.random.Generator | None = None,
    rotate: bool = False,
) -> trimesh.Trimesh:
    """Build one random watertight member of a procedural shape category.

    Args:
        category: one of :data:`SHAPE_CATEGORIES` (``"Bottle"``, ``"Bowl"``, ``"Mug"``,
            ``"Box"``, ``"Sphere"``, ``"Torus"``, ``"Cylinder"``, ``"Cone"``, ``"Capsule"``,
            ``"Vase"``, ``"Chair"``, ``"Bracket"``, ``"Hammer"``, ``"Stairs"``).
        seed: integer seed of the shape parameters (takes precedence over the others).
        generator: torch generator; one int64 is drawn from it to seed the parameters.
        rng: numpy generator used directly (for callers that already hold one).
        rotate: apply a random rotation (from the same random stream) before normalising.

    Returns:
        a watertight mesh, ``vertices`` :math:`(V, 3)` float64, ``faces`` :math:`(F, 3)`,
        centred on its bounding-box centre with largest extent 1.

    Raises:
        ValueError: unknown ``category``.
    """
    if category not in _BUILDERS:
        raise ValueError(f"category must be one of {list(SHAPE_CATEGORIES)}, got {category!r}")
    if rng is None:
        rng = _rng_from(seed, generator)
    m = _BUILDERS[category](rng)
    if rotate:
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        rot = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
            ]
        )
        affine = np.concatenate([rot, np.zeros((3, 1))], axis=1)  # (3, 4) = [R | t]
        m = m.transform(affine)
    m = _normalise(m)
    if m.status() != manifold3d.Error.NoError or m.is_empty():  # pragma: no cover - defensive
        raise RuntimeError(f"building a {category} failed: {m.status()}")
    return manifold_to_trimesh(m)
