"""Fracture watertight meshes into pieces and write Breaking Bad style datasets.

Algorithm (what is implemented):

1. ``n_parts`` seed points are drawn on the surface (area-weighted candidates, then a
   k-means++-style choice so seeds are spread; surface seeds suit thin-walled objects
   such as bowls, and a Voronoi partition does not need its seeds inside the solid).
2. ``noise == 0``: the pieces are the exact Voronoi cells of the seeds clipped to the
   solid, ``cell_i = solid ∩ ⋂_j {x : |x - s_i| <= |x - s_j|}`` (manifold3d half-space
   trims).
   ``noise > 0``: hierarchical Voronoi-like partition with non-planar fracture surfaces.
   A piece owning several seeds is split by the perpendicular bisector of its two most
   distant seeds, displaced along its normal by a smooth random field (a sum of random
   plane waves, RMS ``noise`` times the object's bounding-box diagonal). The surface is a
   closed height-field solid ``S``; the two children are ``piece ∩ S`` and ``piece − S``,
   so both sides share the same fracture surface and tile the parent exactly.
3. Every cell is split into connected components; components are merged (manifold union)
   into the neighbour they share the largest fracture surface with, smallest first, while
   there are more than ``n_parts`` pieces or a piece is smaller than
   ``min_volume_fraction`` of the solid. If the result does not have exactly ``n_parts``
   pieces of sufficient volume, new seeds are drawn (up to ``max_attempts``).
4. Invariants checked before returning: each piece is watertight (also after an OBJ
   round trip), the piece volumes sum to the solid's volume within ``1e-6`` relative.

Everything random comes from one numpy generator seeded from ``seed`` (or one int64 draw
of a torch ``generator``), so the output is deterministic for a seed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import manifold3d
import numpy as np
import torch
from geo3d.datasets.shapes import (
    SHAPE_CATEGORIES,
    _rng_from,
    make_shape,
    manifold_to_trimesh,
    trimesh_to_manifold,
)

from geo3d._atomic import atomic_write_bytes, staging_dir

if TYPE_CHECKING:  # trimesh is imported lazily (slow import)
    import trimesh

__all__ = [
    "FractureError",
    "fracture_mesh",
    "fracture_surface_labels",
    "generate_dataset",
    "pieces_to_obj_bytes",
    "point_mesh_distance",
]

SUBSETS: tuple[str, ...] = ("everyday", "artifact", "other")
_VOLUME_RTOL = 1e-6


class FractureError(RuntimeError):
    """Raised when no valid fracture was found within the allowed attempts."""


# ----------------------------------------------------------------------------- seeds
def _surface_points(mesh: trimesh.Trimesh, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points drawn uniformly (area-weighted) on the surface of ``mesh``; (n, 3)."""
    tris = np.asarray(mesh.triangles)
    area = np.asarray(mesh.area_faces, dtype=np.float64)
    face = rng.choice(len(tris), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    flip = r1 + r2 > 1
    r1[flip], r2[flip] = 1 - r1[flip], 1 - r2[flip]
    t = tris[face]
    return t[:, 0] + r1[:, None] * (t[:, 1] - t[:, 0]) + r2[:, None] * (t[:, 2] - t[:, 0])


def _spread_seeds(cand: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ style choice of ``k`` spread-out rows of ``cand`` (M, 3) -> (k, 3)."""
    idx = [int(rng.integers(len(cand)))]
    d2 = ((cand - cand[idx[0]]) ** 2).sum(1)
    for _ in range(k - 1):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(cand), 1.0 / len(cand))
        j = int(rng.choice(len(cand), p=p))
        idx.append(j)
        d2 = np.minimum(d2, ((cand - cand[j]) ** 2).sum(1))
    return cand[idx]


# ----------------------------------------------------------------------------- cuts
def _voronoi_cells(solid: manifold3d.Manifold, seeds: np.ndarray) -> list[manifold3d.Manifold]:
    cells = []
    for i, si in enumerate(seeds):
        cell = solid
        for j, sj in enumerate(seeds):
            if i == j:
                continue
            normal = si - sj
            norm = np.linalg.norm(normal)
            if norm == 0:
                continue
            normal = normal / norm
            offset = float(normal @ (si + sj) / 2)
            cell = cell.trim_by_plane(tuple(normal.tolist()), offset)
        cells.append(cell)
    return cells


def _frame(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors e1, e2 with e1 x e2 = normal."""
    helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
    e1 = np.cross(helper, normal)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(normal, e1)
    return e1, e2


def _heightfield_solid(
    origin: np.ndarray,
    normal: np.ndarray,
    urange: tuple[float, float],
    vrange: tuple[float, float],
    depth: float,
    height: np.ndarray,
) -> manifold3d.Manifold:
    """Closed solid below a height field: {origin + u e1 + v e2 + w n : -depth <= w <= h(u, v)}.

    ``height`` has shape (R, R) sampled on the regular (u, v) grid.
    """
    e1, e2 = _frame(normal)
    res = height.shape[0]
    u = np.linspace(*urange, res)
    v = np.linspace(*vrange, res)
    uu, vv = np.meshgrid(u, v, indexing="ij")  # (R, R), [i, j] = (u_i, v_j)
    base = origin + uu[..., None] * e1 + vv[..., None] * e2
    top = (base + height[..., None] * normal).reshape(-1, 3)
    bottom = (base - depth * normal).reshape(-1, 3)
    verts = np.concatenate([top, bottom], axis=0)
    nb = res * res

    def vid(i: np.ndarray | int, j: np.ndarray | int) -> np.ndarray | int:
        return i * res + j

    ii, jj = np.meshgrid(np.arange(res - 1), np.arange(res - 1), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    a, b, c, d = vid(ii, jj), vid(ii + 1, jj), vid(ii + 1, jj + 1), vid(ii, jj + 1)
    top_f = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    bot_f = top_f[:, ::-1] + nb
    # boundary loop counter-clockwise seen from +normal
    r = np.arange(res - 1)
    loop = np.concatenate(
        [
            vid(r, 0),  # v = vmin, u increasing
            vid(res - 1, r),  # u = umax, v increasing
            vid(res - 1 - r, res - 1),  # v = vmax, u decreasing
            vid(0, res - 1 - r),  # u = umin, v decreasing
        ]
    )
    p, q = loop, np.roll(loop, -1)
    side = np.concatenate([np.stack([p, p + nb, q + nb], 1), np.stack([p, q + nb, q], 1)])
    faces = np.concatenate([top_f, bot_f, side]).astype(np.uint64)
    mesh = manifold3d.Mesh64(
        vert_properties=np.ascontiguousarray(verts, dtype=np.float64),
        tri_verts=np.ascontiguousarray(faces),
    )
    return manifold3d.Manifold(mesh)


@dataclass
class _Waves:
    """Random smooth field h(p) = sum_k a_k sin(k_k . p + phi_k) in 3D (evaluated on the cut)."""

    k: np.ndarray  # (K, 3)
    phase: np.ndarray  # (K,)
    amp: np.ndarray  # (K,)

    @staticmethod
    def draw(rng: np.random.Generator, scale: float, rms: float, n_waves: int = 8) -> _Waves:
        dirs = rng.normal(size=(n_waves, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        wavelength = scale * rng.uniform(0.15, 0.6, size=n_waves)
        k = dirs * (2 * np.pi / wavelength)[:, None]
        phase = rng.uniform(0, 2 * np.pi, size=n_waves)
        amp = wavelength / np.sqrt((wavelength**2).sum() / 2)  # unit RMS
        return _Waves(k, phase, amp * rms)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return (self.amp * np.sin(p @ self.k.T + self.phase)).sum(-1)


def _noisy_split(
    piece: manifold3d.Manifold,
    a: np.ndarray,
    b: np.ndarray,
    waves: _Waves,
    max_amp: float,
    resolution: int,
) -> tuple[manifold3d.Manifold, manifold3d.Manifold]:
    """Split ``piece`` by the noisy bisector of a and b -> (a-side, b-side)."""
    normal = a - b
    normal = normal / np.linalg.norm(normal)
    origin = (a + b) / 2
    e1, e2 = _frame(normal)
    lo, hi = np.array(piece.bounding_box()[:3]), np.array(piece.bounding_box()[3:])
    corners = (
        np.array(
            [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        )
        - origin
    )
    margin = 0.05 * float(np.linalg.norm(hi - lo)) + 1e-3
    u, v, w = corners @ e1, corners @ e2, corners @ normal
    urange = (float(u.min() - margin), float(u.max() + margin))
    vrange = (float(v.min() - margin), float(v.max() + margin))
    depth = float(max(-w.min(), 0.0) + max_amp + margin)
    gu = np.linspace(*urange, resolution)
    gv = np.linspace(*vrange, resolution)
    uu, vv = np.meshgrid(gu, gv, indexing="ij")
    pts = origin + uu[..., None] * e1 + vv[..., None] * e2
    height = np.clip(waves(pts), -max_amp, max_amp)
    solid = _heightfield_solid(origin, normal, urange, vrange, depth, height)
    # the solid lies on the -normal side of the surface = b side... orient: normal = a - b,
    # so the region "below" the surface (w <= h) is the b side.
    return piece - solid, piece ^ solid


def _hierarchical_cells(
    solid: manifold3d.Manifold,
    seeds: np.ndarray,
    rng: np.random.Generator,
    noise_rms: float,
    resolution: int,
) -> list[manifold3d.Manifold]:
    lo, hi = np.array(solid.bounding_box()[:3]), np.array(solid.bounding_box()[3:])
    scale = float(np.linalg.norm(hi - lo))
    stack: list[tuple[manifold3d.Manifold, np.ndarray]] = [(solid, seeds)]
    out: list[manifold3d.Manifold] = []
    while stack:
        piece, s = stack.pop(0)
        if len(s) == 1 or piece.is_empty():
            out.append(piece)
            continue
        d = ((s[:, None] - s[None]) ** 2).sum(-1)
        i, j = np.unravel_index(int(np.argmax(d)), d.shape)
        a, b = s[i], s[j]
        to_a = ((s - a) ** 2).sum(1) <= ((s - b) ** 2).sum(1)
        waves = _Waves.draw(rng, scale, noise_rms * scale)
        max_amp = 3.0 * noise_rms * scale
        pa, pb = _noisy_split(piece, a, b, waves, max_amp, resolution)
        stack.append((pa, s[to_a]))
        stack.append((pb, s[~to_a]))
    return out


# ----------------------------------------------------------------------------- merging
def _merge_small(
    comps: list[manifold3d.Manifold], n_parts: int, min_volume: float, contact_tol: float
) -> list[manifold3d.Manifold] | None:
    """Merge components into neighbours until len == n_parts and all volumes >= min_volume.

    Returns None when impossible (fewer than ``n_parts`` left or an isolated component).
    """
    comps = list(comps)
    vols = [c.volume() for c in comps]
    areas = [c.surface_area() for c in comps]
    while True:
        small = [i for i in range(len(comps)) if vols[i] < min_volume]
        if len(comps) <= n_parts and not small:
            return comps
        if len(comps) <= n_parts:
            return None  # merging would drop below n_parts
        i = int(np.argmin(vols))
        best, best_contact, best_union = -1, 0.0, None
        for j in range(len(comps)):
            if j == i or comps[i].min_gap(comps[j], contact_tol) >= contact_tol:
                continue
            union = comps[i] + comps[j]
            if len(union.decompose()) != 1:
                continue
            contact = (areas[i] + areas[j] - union.surface_area()) / 2
            if contact > best_contact:
                best, best_contact, best_union = j, contact, union
        if best_union is None:
            return None
        comps[best] = best_union
        vols[best] = best_union.volume()
        areas[best] = best_union.surface_area()
        for lst in (comps, vols, areas):
            del lst[i]


# ----------------------------------------------------------------------------- public API
def pieces_to_obj_bytes(piece: trimesh.Trimesh) -> bytes:
    """Serialise one piece as a minimal Wavefront OBJ (vertices and faces only)."""
    import trimesh

    text = trimesh.exchange.obj.export_obj(
        piece,
        include_normals=False,
        include_color=False,
        include_texture=False,
        header=None,
        digits=10,
    )
    return text.encode("utf-8")


def _roundtrip_ok(piece: trimesh.Trimesh) -> bool:
    import trimesh

    loaded = trimesh.load(io.BytesIO(pieces_to_obj_bytes(piece)), file_type="obj", force="mesh")
    return bool(loaded.is_watertight) and bool(loaded.is_winding_consistent) and loaded.volume > 0


def fracture_mesh(
    mesh: trimesh.Trimesh,
    n_parts: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    rng: np.random.Generator | None = None,
    noise: float = 0.0,
    min_volume_fraction: float | None = None,
    max_attempts: int = 40,
    resolution: int = 32,
) -> list[trimesh.Trimesh]:
    """Fracture a watertight mesh into exactly ``n_parts`` watertight pieces.

    See the module docstring for the algorithm. Pieces are returned in place (their
    union is the input solid), in a deterministic order.

    Args:
        mesh: closed, consistently oriented triangle mesh, ``vertices`` :math:`(V, 3)`,
            ``faces`` :math:`(F, 3)`.
        n_parts: number of pieces, >= 1.
        seed: integer seed (takes precedence over ``generator`` / ``rng``).
        generator: torch generator; one int64 is drawn from it to seed the fracture.
        rng: numpy generator used directly.
        noise: RMS displacement of the fracture surfaces relative to the mesh's bounding-box
            diagonal; 0 gives planar (exact Voronoi) cuts. Typical: 0.01 - 0.03.
        min_volume_fraction: smallest allowed piece volume as a fraction of the mesh
            volume; default ``0.15 / n_parts``.
        max_attempts: seed re-draws before giving up.
        resolution: grid resolution of each noisy fracture surface (``resolution**2``
            vertices).

    Returns:
        ``n_parts`` watertight :class:`trimesh.Trimesh` pieces whose volumes sum to the
        mesh volume within ``1e-6`` relative.

    Raises:
        ValueError: bad ``n_parts`` / ``noise`` / ``min_volume_fraction``, or ``mesh`` not
            watertight.
        FractureError: no valid fracture found in ``max_attempts`` attempts.
    """
    if not isinstance(n_parts, int | np.integer) or n_parts < 1:
        raise ValueError(f"n_parts must be an integer >= 1, got {n_parts!r}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if min_volume_fraction is None:
        min_volume_fraction = 0.15 / n_parts
    if not 0 <= min_volume_fraction < 1.0 / n_parts:
        raise ValueError(
            f"min_volume_fraction must be in [0, 1/n_parts = {1.0 / n_parts:.4g}), "
            f"got {min_volume_fraction!r}"
        )
    if resolution < 4:
        raise ValueError(f"resolution must be >= 4, got {resolution!r}")
    if not (hasattr(mesh, "faces") and hasattr(mesh, "is_watertight")):
        raise ValueError(f"mesh must be a trimesh.Trimesh, got {type(mesh).__name__}")
    if not mesh.is_watertight:
        raise ValueError("mesh must be watertight (mesh.is_watertight is False)")
    if rng is None:
        rng = _rng_from(seed, generator)
    solid = trimesh_to_manifold(mesh)
    total = solid.volume()
    if n_parts == 1:
        return [manifold_to_trimesh(solid)]
    lo, hi = np.array(solid.bounding_box()[:3]), np.array(solid.bounding_box()[3:])
    scale = float(np.linalg.norm(hi - lo))
    candidates = _surface_points(mesh, 64 * n_parts, rng)
    last = "no attempt"
    for _ in range(max_attempts):
        seeds = _spread_seeds(candidates, n_parts, rng)
        if noise == 0:
            cells = _voronoi_cells(solid, seeds)
        else:
            cells = _hierarchical_cells(solid, seeds, rng, noise, resolution)
        comps = [c for cell in cells for c in cell.decompose() if not c.is_empty()]
        merged = _merge_small(comps, n_parts, min_volume_fraction * total, 1e-7 * scale)
        if merged is None or len(merged) != n_parts:
            last = f"got {len(comps)} components that could not be merged into {n_parts} pieces"
            continue
        vol_sum = sum(c.volume() for c in merged)
        if abs(vol_sum - total) > _VOLUME_RTOL * abs(total):
            last = f"volume mismatch {vol_sum} vs {total}"
            continue
        pieces = [manifold_to_trimesh(c) for c in merged]
        if not all(p.is_watertight and _roundtrip_ok(p) for p in pieces):
            last = "a piece was not watertight after an OBJ round trip"
            continue
        return pieces
    raise FractureError(f"no valid {n_parts}-piece fracture in {max_attempts} attempts ({last})")


# ----------------------------------------------------------------------------- labels
def point_mesh_distance(
    points: torch.Tensor | np.ndarray,
    vertices: torch.Tensor | np.ndarray,
    faces: torch.Tensor | np.ndarray,
    chunk: int = 256,
) -> torch.Tensor:
    """Exact unsigned distance of points to a triangle mesh's surface (brute force, float64).

    Per point, the minimum over all triangles of the distance to the triangle: the
    distance to its plane when the projection falls inside (same-side tests of the three
    edge normals), else the distance to the nearest of its three edge segments.
    Degenerate (zero-area) triangles only contribute their edges. Memory ``chunk * F``.

    Args:
        points: shape :math:`(M, 3)`.
        vertices: shape :math:`(V, 3)`; faces: shape :math:`(F, 3)` vertex indices.
        chunk: points per block.

    Returns:
        Distances, shape :math:`(M,)` float64 (same units as the input).

    Raises:
        ValueError: bad shapes or an empty mesh.

    Example:
        >>> import torch
        >>> v = torch.tensor([[0., 0, 0], [1, 0, 0], [0, 1, 0]])
        >>> point_mesh_distance(torch.tensor([[0.2, 0.2, 0.5], [2., 0, 0]]), v,
        ...                     torch.tensor([[0, 1, 2]])).tolist()
        [0.5, 1.0]
    """
    p = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points,
                        dtype=torch.float64)
    v = torch.as_tensor(np.asarray(vertices) if not isinstance(vertices, torch.Tensor)
                        else vertices, dtype=torch.float64)
    f = torch.as_tensor(np.asarray(faces) if not isinstance(faces, torch.Tensor) else faces,
                        dtype=torch.long)
    if p.dim() != 2 or p.shape[-1] != 3:
        raise ValueError(f"points: expected shape (M, 3), got {tuple(p.shape)}")
    if v.dim() != 2 or v.shape[-1] != 3 or v.shape[0] == 0:
        raise ValueError(f"vertices: expected shape (V, 3) with V >= 1, got {tuple(v.shape)}")
    if f.dim() != 2 or f.shape[-1] != 3 or f.shape[0] == 0:
        raise ValueError(f"faces: expected shape (F, 3) with F >= 1, got {tuple(f.shape)}")
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]  # (F, 3)
    n = torch.linalg.cross(b - a, c - a, dim=-1)
    nn2 = (n * n).sum(-1)
    ok = nn2 > 0
    nhat = n / nn2.clamp_min(torch.finfo(torch.float64).tiny).sqrt()[:, None]
    edges = [(a, b), (b, c), (c, a)]
    out = []
    for s in range(0, p.shape[0], chunk):
        q = p[s:s + chunk, None, :]  # (m, 1, 3)
        best = None
        for e0, e1 in edges:
            e = e1 - e0
            ee = (e * e).sum(-1).clamp_min(torch.finfo(torch.float64).tiny)
            t = (((q - e0) * e).sum(-1) / ee).clamp(0.0, 1.0)
            d = (q - e0 - t[..., None] * e).norm(dim=-1)  # (m, F)
            best = d if best is None else torch.minimum(best, d)
        inside = ok.expand_as(best)
        for e0, e1 in edges:  # projection on the inner side of every edge
            side = (torch.linalg.cross((e1 - e0).expand_as(q - e0), q - e0, dim=-1) * n).sum(-1)
            inside = inside & (side >= 0)
        plane = ((q - a) * nhat).sum(-1).abs()
        best = torch.where(inside, torch.minimum(best, plane), best)
        out.append(best.amin(-1))
    return torch.cat(out) if out else p.new_zeros(0)


def fracture_surface_labels(
    piece_points: Sequence[torch.Tensor | np.ndarray],
    piece_meshes: Sequence[trimesh.Trimesh],
    tol: float | None = None,
) -> list[torch.Tensor]:
    """Per-point fracture-surface labels of the pieces of one object (in place, assembled).

    A point of piece ``i`` lies on a fracture (cut) face when it lies on the surface of
    another piece: the pieces of :func:`fracture_mesh` tile the solid, so every cut face
    is shared by exactly two pieces, and the original outer surface by none. Label =
    ``min_{j != i} dist(point, piece_j) <= tol``. Works for any pieces stored in their
    assembled pose (also real Breaking Bad data). Points of the outer surface closer
    than ``tol`` to a cut edge count as fracture points.

    Args:
        piece_points: per piece, points on its surface in the assembled frame, (N_i, 3).
        piece_meshes: the pieces (same order), in the same frame.
        tol: distance threshold; default ``1e-4`` times the bounding-box diagonal of all
            mesh vertices.

    Returns:
        Per piece a bool tensor ``(N_i,)``.

    Raises:
        ValueError: different numbers of point sets and meshes, or fewer than 2 pieces.
    """
    if len(piece_points) != len(piece_meshes):
        raise ValueError(f"piece_meshes: expected {len(piece_points)} meshes (one per point "
                         f"set), got {len(piece_meshes)}")
    if len(piece_meshes) < 2:
        raise ValueError(f"piece_meshes: expected at least 2 pieces, got {len(piece_meshes)}")
    if tol is None:
        allv = np.concatenate([np.asarray(m.vertices) for m in piece_meshes])
        tol = 1e-4 * float(np.linalg.norm(allv.max(0) - allv.min(0)))
    out = []
    for i, pts in enumerate(piece_points):
        d = None
        for j, m in enumerate(piece_meshes):
            if j == i:
                continue
            dj = point_mesh_distance(pts, np.asarray(m.vertices), np.asarray(m.faces))
            d = dj if d is None else torch.minimum(d, dj)
        out.append(d <= tol)
    return out


# ----------------------------------------------------------------------------- dataset
@dataclass(frozen=True)
class _Job:
    index: int
    category: str
    name: str
    mesh_path: str | None  # None: procedural shape of ``category``


@dataclass(frozen=True)
class _Params:
    seed: int
    subset: str
    min_parts: int
    max_parts: int
    fractures_per_object: int
    num_modes: int
    noise: float
    max_attempts: int


def _object_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index, stream]))


def _part_counts(rng: np.random.Generator, lo: int, hi: int, k: int) -> list[int]:
    """``k`` part counts in [lo, hi], all different when the range allows it."""
    choices = np.arange(lo, hi + 1)
    if k <= len(choices):
        return [int(c) for c in rng.choice(choices, size=k, replace=False)]
    return [int(c) for c in rng.choice(choices, size=k, replace=True)]


_write_bytes_atomic = atomic_write_bytes


def _build_object(job: _Job, params: _Params, root: str) -> tuple[int, bool, str]:
    """Generate one object's fracture folders into a temp dir, then rename it in place."""

    final = Path(root) / params.subset / job.category / job.name
    if final.is_dir():
        return job.index, True, "exists"
    if job.mesh_path is None:
        mesh = make_shape(job.category, rng=_object_rng(params.seed, job.index, 0))
    else:
        from geo3d.datasets._io import MeshReadError, load_mesh

        try:  # garbage, truncated, empty or NaN files: an error naming the file
            mesh = load_mesh(job.mesh_path, process=True)
        except MeshReadError as err:
            return job.index, False, str(err)
        if not mesh.is_watertight:
            return job.index, False, f"{job.mesh_path}: mesh is not watertight"
    counts_rng = _object_rng(params.seed, job.index, 1)
    n_var = params.fractures_per_object + params.num_modes
    counts = _part_counts(counts_rng, params.min_parts, params.max_parts, n_var)
    folders = [f"fractured_{k}" for k in range(params.fractures_per_object)]
    folders += [f"mode_{k}" for k in range(params.num_modes)]
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(final.parent, f".tmp-{job.name}-")  # not mkdtemp's 0700
    try:
        for k, (folder, n) in enumerate(zip(folders, counts, strict=True)):
            rng = _object_rng(params.seed, job.index, 2 + k)
            pieces = None
            # fall back to fewer parts if a count is impossible for this shape
            for n_try in range(n, params.min_parts - 1, -1):
                try:
                    pieces = fracture_mesh(
                        mesh, n_try, rng=rng, noise=params.noise, max_attempts=params.max_attempts
                    )
                    break
                except FractureError:
                    continue
            if pieces is None:
                raise FractureError(f"{job.category}/{job.name}: no valid fracture for {folder}")
            out = tmp / folder
            out.mkdir()
            for i, piece in enumerate(pieces):
                (out / f"piece_{i}.obj").write_bytes(pieces_to_obj_bytes(piece))
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another run finished it first
        return job.index, True, "generated"
    except Exception as err:  # report, keep the other objects going
        shutil.rmtree(tmp, ignore_errors=True)
        return job.index, False, f"{type(err).__name__}: {err}"


def _worker(args: tuple[_Job, _Params, str]) -> tuple[int, bool, str]:
    return _build_object(*args)


def _assign_splits(jobs: Sequence[_Job], seed: int, val_fraction: float) -> dict[int, str]:
    """Seeded, category-stratified choice of ``round(val_fraction * N)`` val objects.

    Within each category the objects get random ranks r; object positions are
    ``(r + u) / n_category`` (u uniform); the lowest positions overall go to val, so every
    category contributes about ``val_fraction`` of its objects.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2**31 - 1]))
    pos: list[tuple[float, int]] = []
    for category in sorted({j.category for j in jobs}):
        idx = [j.index for j in jobs if j.category == category]
        order = rng.permutation(len(idx))
        u = rng.random(len(idx))
        pos += [((rank + u[rank]) / len(idx), idx[o]) for rank, o in enumerate(order)]
    n_val = int(round(val_fraction * len(jobs)))
    if val_fraction > 0 and len(jobs) >= 2:
        n_val = min(max(n_val, 1), len(jobs) - 1)
    val = {i for _, i in sorted(pos)[:n_val]}
    return {j.index: ("val" if j.index in val else "train") for j in jobs}


def generate_dataset(
    out: str | os.PathLike[str],
    num_objects: int = 100,
    *,
    min_parts: int = 2,
    max_parts: int = 6,
    seed: int = 0,
    subset: str = "everyday",
    val_fraction: float = 0.2,
    fractures_per_object: int = 3,
    num_modes: int = 0,
    noise: float = 0.02,
    categories: Sequence[str] | None = None,
    meshes: Sequence[str | os.PathLike[str]] | None = None,
    mesh_category: str = "Custom",
    workers: int = 1,
    max_attempts: int = 40,
    progress: bool = True,
) -> dict:
    """Generate a synthetic fracture dataset in the Breaking Bad layout.

    Layout written (the real dataset's, read by :class:`geo3d.datasets.BreakingBad`)::

        OUT/data_split/{everyday,artifact,other}.{train,val}.txt   lines "<subset>/<Category>/<object>"
        OUT/<subset>/<Category>/<object>/fractured_<k>/piece_<i>.obj
        OUT/<subset>/<Category>/<object>/mode_<k>/piece_<i>.obj      (when num_modes > 0)

    Pieces are stored in place (assembled pose). Objects are split between train and val
    by object, per category (no object in both). Each object is written into a temporary
    folder renamed into place when complete, so a crash leaves no half object; re-running
    with the same arguments skips finished objects (resume). Everything is derived from
    ``(seed, object index)``, so the bytes written do not depend on ``workers``.

    Args:
        out: dataset root folder (created).
        num_objects: number of procedural objects (ignored when ``meshes`` is given).
        min_parts: smallest number of pieces of a fracture, >= 2.
        max_parts: largest number of pieces, >= ``min_parts``.
        seed: master seed.
        subset: ``"everyday"``, ``"artifact"`` or ``"other"``.
        val_fraction: fraction of each category's objects put in the val split, in [0, 1).
        fractures_per_object: ``fractured_k`` folders per object (different part counts
            when the range allows).
        num_modes: extra ``mode_k`` folders per object (independent fractures named like
            the real dataset's fracture-mode folders).
        noise: RMS roughness of fracture surfaces relative to the object's bounding-box
            diagonal; 0 gives planar Voronoi cuts.
        categories: procedural categories to cycle through (default all of
            :data:`geo3d.datasets.shapes.SHAPE_CATEGORIES`).
        meshes: watertight mesh files to fracture instead of procedural shapes (one object
            each, kept at their own scale, category ``mesh_category``).
        mesh_category: category folder of ``meshes``.
        workers: worker processes.
        max_attempts: seed re-draws per fracture before falling back to fewer parts.
        progress: show a tqdm progress bar.

    Returns:
        summary dict: ``root``, ``subset``, ``objects``, ``generated``, ``skipped``,
        ``failed`` (list of messages), ``train``, ``val`` (object counts).
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {list(SUBSETS)}, got {subset!r}")
    if min_parts < 2 or max_parts < min_parts:
        raise ValueError(
            f"need 2 <= min_parts <= max_parts, got min_parts={min_parts}, max_parts={max_parts}"
        )
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if fractures_per_object + num_modes < 1 or fractures_per_object < 0 or num_modes < 0:
        raise ValueError(
            "need fractures_per_object + num_modes >= 1 (both >= 0), got "
            f"{fractures_per_object} and {num_modes}"
        )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    cats = list(categories) if categories else list(SHAPE_CATEGORIES)
    for c in cats:
        if c not in SHAPE_CATEGORIES:
            raise ValueError(f"categories must be among {list(SHAPE_CATEGORIES)}, got {c!r}")

    jobs: list[_Job] = []
    if meshes:
        seen: set[str] = set()
        for i, path in enumerate(meshes):
            if not Path(path).is_file():
                raise ValueError(f"meshes: no such file {str(path)!r}")
            name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(path).stem)
            if name in seen:
                name = f"{name}_{i}"
            seen.add(name)
            jobs.append(_Job(i, mesh_category, name, str(Path(path).resolve())))
    else:
        if num_objects < 1:
            raise ValueError(f"num_objects must be >= 1, got {num_objects!r}")
        for i in range(num_objects):
            c = cats[i % len(cats)]
            jobs.append(_Job(i, c, f"{c.lower()}_{i:05d}", None))

    params = _Params(
        seed,
        subset,
        min_parts,
        max_parts,
        fractures_per_object,
        num_modes,
        float(noise),
        max_attempts,
    )
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "generator": "geo3d.datasets.fracture",
        "params": asdict(params),
        "num_objects": len(jobs),
        "categories": cats if not meshes else [mesh_category],
        "meshes": [j.mesh_path for j in jobs] if meshes else None,
        "val_fraction": val_fraction,
    }
    manifest_path = root / f"geo3d_fracture_{subset}.json"
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        # num_objects may grow (objects only depend on (seed, index)); the rest must match
        if {k: v for k, v in old.items() if k != "num_objects"} != {
            k: v for k, v in manifest.items() if k != "num_objects"
        } or (meshes and old != manifest):
            raise ValueError(
                f"{manifest_path} records different generation arguments; use a fresh output "
                "folder or the same arguments to resume"
            )
    _write_bytes_atomic(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    # leftovers of an interrupted run
    subset_dir = root / subset
    if subset_dir.is_dir():
        for cat_dir in subset_dir.iterdir():
            if cat_dir.is_dir():
                for leftover in cat_dir.glob(".tmp-*"):
                    shutil.rmtree(leftover, ignore_errors=True)

    todo = [j for j in jobs if not (subset_dir / j.category / j.name).is_dir()]
    skipped = len(jobs) - len(todo)
    results: list[tuple[int, bool, str]] = []
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(jobs),
        initial=skipped,
        disable=not progress,
        unit="obj",
        desc=f"fracture {subset}",
    )
    args = [(j, params, str(root)) for j in todo]
    if workers == 1 or len(todo) <= 1:
        for a in args:
            results.append(_worker(a))
            bar.update(1)
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(todo))) as pool:
            for r in pool.imap_unordered(_worker, args, chunksize=1):
                results.append(r)
                bar.update(1)
    bar.close()

    failed = [msg for _, ok, msg in sorted(results) if not ok]
    split = _assign_splits(jobs, seed, val_fraction)
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for j in jobs:
        if (subset_dir / j.category / j.name).is_dir():
            lines[split[j.index]].append(f"{subset}/{j.category}/{j.name}")
    split_dir = root / "data_split"
    split_dir.mkdir(exist_ok=True)
    for name, entries in lines.items():
        text = "".join(e + "\n" for e in sorted(entries))
        _write_bytes_atomic(split_dir / f"{subset}.{name}.txt", text.encode())
    for other in SUBSETS:  # the real layout has all six split files
        for name in ("train", "val"):
            path = split_dir / f"{other}.{name}.txt"
            if not path.exists():
                _write_bytes_atomic(path, b"")
    return {
        "root": str(root),
        "subset": subset,
        "objects": len(jobs),
        "generated": sum(1 for _, ok, msg in results if ok and msg == "generated"),
        "skipped": skipped,
        "failed": failed,
        "train": len(lines["train"]),
        "val": len(lines["val"]),
    }
