"""Meshes prepared for rendering: geometry plus per-part appearance (texture / colours).

A :class:`RenderMesh` is a triangle soup (``vertices (V, 3)``, ``faces (F, 3)``) split into
parts, each with one appearance:

* ``"texture"``: per-vertex UVs and an RGB image, sampled bilinearly (OBJ / glTF convention:
  ``u`` grows right, ``v`` grows *up* the image; UVs outside [0, 1] repeat);
* ``"vertex"``: per-vertex RGB, interpolated with the barycentric coordinates of the hit;
* ``"face"``: one RGB per face;
* ``"uniform"``: one RGB for the part;
* ``"function"``: a solid texture ``f(points (M, 3) float64) -> (M, 3)`` evaluated at the
  object-frame surface point of every pixel (used by the procedural training objects).

Fallbacks (documented, one ``UserWarning`` per mesh): a part with UVs whose texture image is
missing (e.g. an OBJ whose ``.mtl`` names an image that is not there), or whose UVs contain
NaN/inf, is rendered in the material's main colour (trimesh gives grey ``(0.4, 0.4, 0.4)``
when the material has none); an OBJ whose ``mtllib`` file is missing is rendered without
its materials (grey ``(0.7, 0.7, 0.7)`` or the material colour) with one warning naming the
``.mtl``. A mesh without any colour information (and no missing file) is rendered uniform
grey ``(0.7, 0.7, 0.7)`` without warning. User-given ``vertex_colors`` must be finite (else
``ValueError``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["RenderMesh", "as_render_mesh", "DEFAULT_GREY"]

#: Albedo of meshes without any colour information.
DEFAULT_GREY = (0.7, 0.7, 0.7)

ColorFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Part:
    """One appearance over a contiguous face range ``[start, stop)`` (private)."""

    kind: str  # "texture" | "vertex" | "face" | "uniform" | "function"
    start: int
    stop: int
    uv: np.ndarray | None = None  # (V, 2) float64, indexed by global vertex ids
    image: np.ndarray | None = None  # (h, w, 3) uint8
    factor: np.ndarray | None = None  # (3,) float64 multiplier of texture colours
    colors: np.ndarray | None = None  # (V, 3) / (F_part, 3) / (3,) float64 in [0, 1]
    fn: ColorFn | None = None


@dataclass
class RenderMesh:
    """Geometry and appearance of a mesh to render (float64, numpy).

    Build one with :func:`as_render_mesh` (from trimesh objects, files, or arrays).

    Attributes:
        vertices: :math:`(V, 3)` float64, finite.
        faces: :math:`(F, 3)` int64, ``F >= 1``.
        parts: appearances over contiguous face ranges covering all faces.
    """

    vertices: np.ndarray
    faces: np.ndarray
    parts: list[Part] = field(default_factory=list)

    def __post_init__(self) -> None:
        v = np.asarray(self.vertices, dtype=np.float64)
        f = np.asarray(self.faces)
        if v.ndim != 2 or v.shape[1] != 3:
            raise ValueError(f"mesh: expected vertices of shape (V, 3), got {v.shape}")
        if f.ndim != 2 or f.shape[1] != 3 or f.shape[0] == 0:
            raise ValueError(
                f"mesh: expected at least one triangle face, faces of shape (F >= 1, 3), got {f.shape}"
            )
        if not np.issubdtype(f.dtype, np.integer):
            raise ValueError(f"mesh: expected integer faces, got dtype {f.dtype}")
        f = f.astype(np.int64)
        if f.min() < 0 or f.max() >= len(v):
            raise ValueError(
                f"mesh: expected face indices in [0, {len(v)}), got [{f.min()}, {f.max()}]"
            )
        bad = ~np.isfinite(v).all(axis=1)
        if bad.any():
            raise ValueError(
                f"mesh: expected finite vertex coordinates, got {int(bad.sum())} vertices with NaN/inf"
            )
        self.vertices, self.faces = v, f
        if not self.parts:
            self.parts = [Part("uniform", 0, len(f), colors=np.asarray(DEFAULT_GREY))]
        a, b, c = (v[f[:, k]] for k in range(3))
        n = np.cross(b - a, c - a)
        norm = np.linalg.norm(n, axis=1, keepdims=True)
        self.face_normals = np.divide(n, norm, out=np.zeros_like(n), where=norm > 0)

    @property
    def num_faces(self) -> int:
        return len(self.faces)

    def face_part_index(self) -> np.ndarray:
        """``(F,)`` index of the part of every face."""
        out = np.empty(len(self.faces), dtype=np.int64)
        for i, p in enumerate(self.parts):
            out[p.start : p.stop] = i
        return out


def _image_to_uint8(img: Any) -> np.ndarray | None:
    if img is None:
        return None
    try:
        from PIL import Image

        if isinstance(img, Image.Image):
            img = img.convert("RGB")
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        pass
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] < 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        return None
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(np.asarray(arr, dtype=np.float64) * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255)
        arr = np.round(arr).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _rgb01(c: Any) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64).reshape(-1)[:3]
    return c / 255.0 if c.max() > 1.0 else c


def _trimesh_appearance(m: Any, start: int, offset: int, warned: list[str]) -> Part:
    """The appearance of one trimesh.Trimesh (vertex ids offset by ``offset``)."""
    import trimesh

    vis = m.visual
    stop = start + len(m.faces)
    kind = getattr(vis, "kind", None)
    if isinstance(vis, trimesh.visual.TextureVisuals):
        mat = vis.material
        image, factor = None, np.ones(3)
        if isinstance(mat, trimesh.visual.material.PBRMaterial):
            image = mat.baseColorTexture
            if mat.baseColorFactor is not None:
                factor = _rgb01(np.asarray(mat.baseColorFactor)[:3])
        elif mat is not None:
            image = getattr(mat, "image", None)
        img = _image_to_uint8(image)
        uv = None if vis.uv is None else np.asarray(vis.uv, dtype=np.float64)
        color = _rgb01(mat.main_color) if mat is not None else np.asarray(DEFAULT_GREY)
        if uv is not None and not np.isfinite(uv).all():
            bad = int((~np.isfinite(uv).all(axis=-1)).sum()) if uv.ndim == 2 else uv.size
            warned.append(
                f"mesh: uv: expected finite texture coordinates, got {bad} of {len(uv)} with "
                f"NaN/inf; rendering the material colour {np.round(color, 3).tolist()} instead"
            )
            return Part("uniform", start, stop, colors=color)
        if uv is not None and img is not None and len(uv) == len(m.vertices):
            full = np.zeros((offset + len(uv), 2))
            full[offset:] = uv
            return Part("texture", start, stop, uv=full, image=img, factor=factor)
        if uv is not None:
            warned.append(
                "mesh: texture image missing or unreadable (or UVs do not match the vertices); "
                f"rendering the material colour {np.round(color, 3).tolist()} instead"
            )
        return Part("uniform", start, stop, colors=color)
    if kind == "vertex":
        vc = np.asarray(vis.vertex_colors, dtype=np.float64)[:, :3] / 255.0
        full = np.zeros((offset + len(vc), 3))
        full[offset:] = vc
        return Part("vertex", start, stop, colors=full)
    if kind == "face":
        fc = np.asarray(vis.face_colors, dtype=np.float64)[:, :3] / 255.0
        return Part("face", start, stop, colors=fc)
    return Part("uniform", start, stop, colors=np.asarray(DEFAULT_GREY))


def _from_trimeshes(meshes: list[Any]) -> RenderMesh:
    verts, faces, parts, warned = [], [], [], []
    nv = nf = 0
    for m in meshes:
        if len(m.faces) == 0:
            continue
        verts.append(np.asarray(m.vertices, dtype=np.float64))
        faces.append(np.asarray(m.faces, dtype=np.int64) + nv)
        parts.append(_trimesh_appearance(m, nf, nv, warned))
        nv += len(m.vertices)
        nf += len(m.faces)
    if not faces:
        raise ValueError("mesh: expected at least one triangle face, got 0 faces")
    nvt = nv
    for p in parts:  # pad per-vertex arrays to the full vertex count
        if p.kind == "texture" and len(p.uv) < nvt:
            p.uv = np.concatenate([p.uv, np.zeros((nvt - len(p.uv), 2))])
        if p.kind == "vertex" and len(p.colors) < nvt:
            p.colors = np.concatenate([p.colors, np.zeros((nvt - len(p.colors), 3))])
    if warned:
        extra = f" ({len(warned)} parts)" if len(warned) > 1 else ""
        warnings.warn(warned[0] + extra, UserWarning, stacklevel=3)
    return RenderMesh(np.concatenate(verts), np.concatenate(faces), parts)


def as_render_mesh(
    mesh: Any,
    faces: Any = None,
    *,
    vertex_colors: Any = None,
    color_fn: ColorFn | None = None,
) -> RenderMesh:
    """Prepare a mesh for rendering.

    Args:
        mesh: a :class:`RenderMesh` (returned as is), a ``trimesh.Trimesh``, a
            ``trimesh.Scene`` (all geometry, node transforms applied, one part per
            geometry), a path to a mesh file trimesh can read (OBJ with MTL + textures,
            PLY with vertex colours, GLB/GLTF, ...), or vertices :math:`(V, 3)` with
            ``faces`` :math:`(F, 3)` (arrays or tensors).
        faces: faces when ``mesh`` is a vertex array.
        vertex_colors: optional :math:`(V, 3)` RGB in [0, 1] (or 0..255 integers); replaces
            the mesh's own appearance.
        color_fn: optional solid texture ``f(points (M, 3) float64) -> (M, 3)`` in [0, 1];
            replaces the mesh's own appearance.

    Returns:
        the :class:`RenderMesh`.

    Raises:
        ValueError: no faces, non-finite vertices, bad face indices, unreadable file.

    Example:
        >>> import trimesh
        >>> as_render_mesh(trimesh.creation.box()).num_faces
        12
    """
    import trimesh

    if isinstance(mesh, RenderMesh):
        rm = mesh
    elif isinstance(mesh, (str, os.PathLike)):
        path = Path(mesh)
        if not path.is_file():
            raise ValueError(f"mesh: expected a mesh file, got missing path {str(path)!r}")
        try:
            loaded = trimesh.load(path, process=False)
        except Exception as err:  # trimesh raises many types
            raise ValueError(f"mesh: could not read {str(path)!r}: {err}") from err
        missing = _missing_mtl(path) if vertex_colors is None and color_fn is None else []
        if not missing:
            return as_render_mesh(loaded, vertex_colors=vertex_colors, color_fn=color_fn)
        # one warning for the missing .mtl; it replaces the "texture missing" one it causes
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            rm = as_render_mesh(loaded)
        for w in rec:
            if "texture image missing" not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        warnings.warn(
            f"mesh: material library {missing} named by {path.name!r} not found; rendering "
            "without its materials and textures (grey or the material colour)",
            UserWarning,
            stacklevel=2,
        )
        return rm
    elif isinstance(mesh, trimesh.Scene):
        rm = _from_trimeshes([g for g in mesh.dump(concatenate=False) if hasattr(g, "faces")])
    elif isinstance(mesh, trimesh.Trimesh):
        rm = _from_trimeshes([mesh])
    elif isinstance(mesh, (np.ndarray, torch.Tensor, list, tuple)):
        if faces is None:
            raise ValueError("faces: expected (F, 3) faces with a vertex array, got None")
        v = mesh.detach().cpu().numpy() if isinstance(mesh, torch.Tensor) else np.asarray(mesh)
        f = faces.detach().cpu().numpy() if isinstance(faces, torch.Tensor) else np.asarray(faces)
        rm = RenderMesh(v, f)
    else:
        raise ValueError(
            f"mesh: expected a RenderMesh, trimesh.Trimesh/Scene, path or vertex array, got {type(mesh).__name__}"
        )
    if vertex_colors is not None and color_fn is not None:
        raise ValueError("color_fn: expected only one of vertex_colors and color_fn, got both")
    if vertex_colors is not None:
        vc = vertex_colors.detach().cpu().numpy() if isinstance(vertex_colors, torch.Tensor) else np.asarray(vertex_colors)
        if vc.shape != (len(rm.vertices), 3):
            raise ValueError(f"vertex_colors: expected shape ({len(rm.vertices)}, 3), got {vc.shape}")
        vc = vc.astype(np.float64) / (255.0 if np.issubdtype(vc.dtype, np.integer) else 1.0)
        if not np.isfinite(vc).all():
            raise ValueError(
                f"vertex_colors: expected finite RGB values, got {int((~np.isfinite(vc)).any(axis=1).sum())} "
                "vertices with NaN/inf"
            )
        rm = RenderMesh(rm.vertices, rm.faces, [Part("vertex", 0, rm.num_faces, colors=vc)])
    elif color_fn is not None:
        if not callable(color_fn):
            raise ValueError(f"color_fn: expected a callable, got {type(color_fn).__name__}")
        rm = RenderMesh(rm.vertices, rm.faces, [Part("function", 0, rm.num_faces, fn=color_fn)])
    return rm


def _missing_mtl(path: Path) -> list[str]:
    """The ``mtllib`` files an OBJ names that do not exist next to it (empty for non-OBJ)."""
    if path.suffix.lower() != ".obj":
        return []
    missing: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.startswith("mtllib"):
                    continue
                rest = line[6:].strip()
                if not rest or (path.parent / rest).is_file():
                    continue  # the whole rest of the line as one name (may contain spaces)
                missing += [n for n in rest.split() if not (path.parent / n).is_file()]
    except OSError:
        return []
    return missing


def sample_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of an ``(h, w, 3)`` uint8 image at UVs ``(M, 2)`` → ``(M, 3)`` in [0, 1].

    ``u = 0`` is the left edge and ``v = 0`` the *bottom* edge of the image (OBJ / glTF after
    trimesh's flip); texel ``[row i, column j]`` has its centre at
    ``((j + 0.5) / w, 1 - (i + 0.5) / h)``; the texture repeats outside [0, 1].

    Raises:
        ValueError: ``uv`` contains NaN/inf.
    """
    if not np.isfinite(uv).all():
        raise ValueError(f"uv: expected finite texture coordinates, got {int((~np.isfinite(uv)).sum())} NaN/inf values")
    h, w = image.shape[:2]
    dt = uv.dtype if uv.dtype in (np.float32, np.float64) else np.float64
    u = np.mod(uv[:, 0], 1.0)
    v = np.mod(uv[:, 1], 1.0)
    x = u * w - 0.5
    y = (1.0 - v) * h - 0.5
    x0f = np.floor(x)
    y0f = np.floor(y)
    fx = (x - x0f).astype(dt)[:, None]
    fy = (y - y0f).astype(dt)[:, None]
    x0 = x0f.astype(np.int64)
    y0 = y0f.astype(np.int64)
    x1 = np.mod(x0 + 1, w)
    y1 = np.mod(y0 + 1, h)
    x0 = np.mod(x0, w)
    y0 = np.mod(y0, h)
    top = image[y0, x0].astype(dt) * (1 - fx) + image[y0, x1].astype(dt) * fx
    bot = image[y1, x0].astype(dt) * (1 - fx) + image[y1, x1].astype(dt) * fx
    return (top * (1 - fy) + bot * fy) * dt(1.0 / 255.0) if dt is np.float32 else (top * (1 - fy) + bot * fy) / 255.0
