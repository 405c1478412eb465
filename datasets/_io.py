"""Mesh and point-cloud I/O, area-weighted surface sampling, normalisation.

Meshes (PLY, OBJ, OFF, STL, GLB/GLTF) are read and written through :mod:`trimesh`;
point clouds in PCD through :mod:`open3d` (optional, imported lazily). All writes are
atomic: the file is written next to its destination under a temporary name and then
renamed with :func:`os.replace`, so a reader never sees a half-written file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo3d._atomic import atomic_path, atomic_write_bytes

__all__ = [
    "MESH_EXTENSIONS",
    "MeshReadError",
    "PointCloudReadError",
    "atomic_write_bytes",
    "load_mesh",
    "load_mesh_tensors",
    "save_mesh",
    "load_point_cloud",
    "save_point_cloud",
    "sample_surface",
    "normalize_points",
]

#: File extensions that :func:`load_mesh` reads (lower case, with the dot).
MESH_EXTENSIONS: tuple[str, ...] = (".obj", ".ply", ".off", ".stl", ".glb", ".gltf")
_POINT_EXTENSIONS: tuple[str, ...] = (".ply", ".pcd", ".xyz", ".obj", ".off")


class MeshReadError(ValueError):
    """A mesh file is missing, empty, unparsable or has no surface. ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read mesh {self.path!r}: {reason}")


class PointCloudReadError(ValueError):
    """A point-cloud file is empty, unparsable, holds no points or non-finite values.
    ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read point cloud {self.path!r}: {reason}")


def _import_open3d() -> Any:
    try:
        import open3d
    except ImportError as err:  # pragma: no cover - depends on the machine
        hint = " (open3d needs the system library libusb-1.0: apt install libusb-1.0-0)" \
            if "libusb" in str(err) else ""
        raise ImportError(
            f"PCD files need open3d: pip install 'geo3d[o3d]' (or pip install open3d){hint}"
        ) from err
    return open3d


def _suffix(path: str | os.PathLike) -> str:
    return Path(path).suffix.lower()


_PCD_SIZES = {("F", 4), ("F", 8), ("I", 1), ("I", 2), ("I", 4), ("I", 8),
              ("U", 1), ("U", 2), ("U", 4), ("U", 8)}


def _check_pcd_layout(path: Path) -> None:
    """Parse a PCD header and check the body against it: ``POINTS`` rows of ``ascii``
    data (blank lines ignored) or ``POINTS * sum(SIZE * COUNT)`` bytes of ``binary``
    data. open3d fills missing rows with zeros/garbage and only warns, so a truncated
    file would otherwise be read as data. (``binary_compressed`` stores its own sizes;
    open3d checks those.)

    Raises:
        PointCloudReadError: a header that does not parse, or a body whose row/byte count
            differs from the header's.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    fields: dict[str, list[str]] = {}
    pos = 0
    data_kind = None
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        end = len(raw) if nl < 0 else nl
        line = raw[pos:end].decode("ascii", "replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        fields[key.upper()] = vals
        if key.upper() == "DATA":
            data_kind = vals[0].lower() if vals else ""
            break
    if data_kind is None:
        raise PointCloudReadError(path, "PCD header has no DATA line (not a PCD file, or "
                                        "the header is truncated)")
    try:
        npoints = int(fields["POINTS"][0]) if "POINTS" in fields else \
            int(fields["WIDTH"][0]) * int(fields.get("HEIGHT", ["1"])[0])
        names = fields["FIELDS"]
        sizes = [int(v) for v in fields["SIZE"]]
        types = [v.upper() for v in fields["TYPE"]]
        counts = [int(v) for v in fields["COUNT"]] if "COUNT" in fields else [1] * len(names)
    except (KeyError, IndexError, ValueError) as err:
        raise PointCloudReadError(path, f"PCD header does not parse "
                                        f"({type(err).__name__}: {err})") from err
    if npoints < 0 or not (len(names) == len(sizes) == len(types) == len(counts)) or \
            any((t, sz) not in _PCD_SIZES for t, sz in zip(types, sizes, strict=True)):
        raise PointCloudReadError(path, f"PCD header is inconsistent (POINTS {npoints}, "
                                        f"FIELDS {names}, SIZE {sizes}, TYPE {types}, "
                                        f"COUNT {counts})")
    body = raw[pos:]
    if data_kind == "ascii":
        lines = [ln for ln in body.splitlines() if ln.strip()]
        if len(lines) != npoints:
            raise PointCloudReadError(path, f"header says POINTS {npoints}, but "
                                            f"{len(lines)} data row(s) follow (truncated "
                                            f"file?)")
        ncol = sum(counts)
        try:  # open3d reads unparsable tokens as 0 without a word
            arr = np.loadtxt(lines, ndmin=2, dtype=np.float64) if lines else \
                np.zeros((0, ncol))
        except ValueError as err:
            raise PointCloudReadError(path, f"ascii data does not parse as numbers "
                                            f"({err})") from err
        if arr.shape[1] != ncol:
            raise PointCloudReadError(path, f"header declares {ncol} value(s) per row, "
                                            f"the data rows hold {arr.shape[1]}")
    elif data_kind == "binary":
        need = npoints * sum(s * c for s, c in zip(sizes, counts, strict=True))
        if len(body) < need:
            raise PointCloudReadError(path, f"header says POINTS {npoints} ({need} bytes "
                                            f"of binary data), but only {len(body)} bytes "
                                            f"follow (truncated file?)")
    elif data_kind != "binary_compressed":
        raise PointCloudReadError(path, f"PCD header: unknown DATA {data_kind!r}")


# --------------------------------------------------------------------------- meshes


def load_mesh(path: str | os.PathLike, *, process: bool = False) -> Any:
    """Read a triangle mesh (PLY, OBJ, OFF, STL, GLB/GLTF) with trimesh.

    Scenes (GLB with several nodes) are flattened into one mesh in world coordinates.

    Args:
        path: the mesh file.
        process: let trimesh merge duplicate vertices etc. after the file was checked
            (off by default: vertices are returned exactly as stored).

    Returns:
        a ``trimesh.Trimesh`` with at least one face and finite vertices.

    Raises:
        MeshReadError: the file is missing, empty (0 bytes), cannot be parsed (garbage,
            truncated), has no faces, or has non-finite vertices (checked before any
            processing could drop them). The message names the file.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise MeshReadError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise MeshReadError(path, "file is empty (0 bytes)")
    if _suffix(path) not in MESH_EXTENSIONS:
        raise MeshReadError(path, f"unsupported extension {_suffix(path)!r}; "
                                  f"expected one of {MESH_EXTENSIONS}")
    try:
        # parse unprocessed: trimesh's processing silently drops the faces of NaN vertices
        mesh = trimesh.load_mesh(str(path), process=False)
    except Exception as err:  # trimesh raises many types on garbage input
        raise MeshReadError(path, f"parse error: {type(err).__name__}: {err}") from err
    if isinstance(mesh, trimesh.Scene):
        mesh = mesh.to_geometry() if hasattr(mesh, "to_geometry") else mesh.dump(concatenate=True)
    if not isinstance(mesh, trimesh.Trimesh):
        raise MeshReadError(path, f"not a triangle mesh (got {type(mesh).__name__})")
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise MeshReadError(path, "mesh has no faces")
    if not np.isfinite(np.asarray(mesh.vertices)).all():
        raise MeshReadError(path, "mesh has non-finite vertices")
    if process:
        mesh.process(validate=False)  # merge duplicate vertices etc., as trimesh's loader
        if len(mesh.faces) == 0:
            raise MeshReadError(path, "mesh has no faces after processing")
    return mesh


def load_mesh_tensors(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a mesh as tensors.

    Returns:
        ``vertices`` of shape :math:`(V, 3)` in ``dtype`` and ``faces`` :math:`(F, 3)` long.

    Raises:
        MeshReadError: as :func:`load_mesh`, or vertices that overflow ``dtype``.
    """
    mesh = load_mesh(path)
    vertices = torch.as_tensor(np.array(mesh.vertices), dtype=dtype)
    if not bool(torch.isfinite(vertices).all()):  # e.g. 1e39 overflows float32
        raise MeshReadError(path, f"vertices are not finite in {dtype} (values beyond "
                                  f"its range)")
    return vertices, torch.as_tensor(np.array(mesh.faces), dtype=torch.long)


def save_mesh(
    path: str | os.PathLike,
    mesh: Any = None,
    *,
    vertices: torch.Tensor | np.ndarray | None = None,
    faces: torch.Tensor | np.ndarray | None = None,
) -> None:
    """Write a mesh atomically; the format follows the extension (PLY, OBJ, OFF, STL, GLB).

    Args:
        path: destination file.
        mesh: a ``trimesh.Trimesh``; or give ``vertices`` :math:`(V, 3)` and ``faces``
            :math:`(F, 3)` instead.
    """
    import trimesh

    ext = _suffix(path)
    if ext not in MESH_EXTENSIONS:
        raise ValueError(f"path: expected an extension in {MESH_EXTENSIONS}, got {ext!r}")
    if mesh is None:
        if vertices is None or faces is None:
            raise ValueError("save_mesh: give either mesh or both vertices and faces")
        v = _as_numpy(vertices, "vertices")
        f = np.asarray(faces.detach().cpu() if isinstance(faces, torch.Tensor) else faces)
        if f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"faces: expected shape (F, 3), got {tuple(f.shape)}")
        mesh = trimesh.Trimesh(vertices=v, faces=f.astype(np.int64), process=False)
    data = mesh.export(file_type=ext[1:])
    atomic_write_bytes(path, data.encode() if isinstance(data, str) else data)


# ---------------------------------------------------------------------- point clouds


def _as_numpy(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name}: expected shape (N, 3), got {tuple(arr.shape)}")
    return arr


def load_point_cloud(
    path: str | os.PathLike, *, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read a point cloud: PLY/OBJ/OFF/XYZ through trimesh (XYZ with numpy), PCD through
    open3d.

    For a mesh file, its vertices are returned (use :func:`sample_surface` to sample the
    surface instead). Files are parsed in float64 and cast to ``dtype`` at the end (pass
    ``dtype=torch.float64`` for coordinates far from the origin: float32 keeps only ~7
    significant digits).

    Args:
        path: the file (``.ply``, ``.pcd``, ``.xyz``, ``.obj``, ``.off``).
        dtype: dtype of the returned tensors.

    Returns:
        ``points`` :math:`(N, 3)` with :math:`N \\ge 1` and ``normals`` :math:`(N, 3)` or
        ``None`` when the file stores none.

    Raises:
        FileNotFoundError: the file does not exist.
        PointCloudReadError: the file is empty (0 bytes), cannot be parsed (garbage,
            truncated data; open3d only warns, so a PCD's header is parsed here and
            its ``POINTS`` checked against the ascii rows / binary bytes that follow),
            holds no points, or holds coordinates or normals that are non-finite after
            the cast to ``dtype`` (1e39 is finite in float64, inf in float32). The
            message names the file. (An XYZ text file cut at a line boundary is
            indistinguishable from a shorter valid file and is read as such.)
        ValueError: an unsupported extension.

    Example:
        >>> import tempfile, os, torch
        >>> d = tempfile.mkdtemp()
        >>> save_point_cloud(os.path.join(d, "a.xyz"), torch.eye(3))
        >>> load_point_cloud(os.path.join(d, "a.xyz"))[0].shape
        torch.Size([3, 3])
    """
    import warnings

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: point cloud {str(path)!r} does not exist")
    ext = _suffix(path)
    if ext not in _POINT_EXTENSIONS:
        raise ValueError(f"path: expected an extension in {_POINT_EXTENSIONS}, got {ext!r}")
    if path.stat().st_size == 0:
        raise PointCloudReadError(path, "file is empty (0 bytes)")
    normals = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy/trimesh warnings become the error below
            if ext == ".pcd":
                _check_pcd_layout(path)
                o3d = _import_open3d()
                pcd = o3d.io.read_point_cloud(str(path))
                pts = np.asarray(pcd.points, dtype=np.float64)
                if pcd.has_normals():
                    normals = np.asarray(pcd.normals, dtype=np.float64)
                if len(pts) == 0:
                    raise PointCloudReadError(
                        path, "open3d read no points (the file does not parse as PCD, is "
                              "truncated, or stores none)")
            elif ext == ".xyz":
                arr = np.loadtxt(path, ndmin=2, dtype=np.float64)
                if arr.size and arr.shape[1] < 3:
                    raise PointCloudReadError(
                        path, f"expected at least 3 columns (x y z), got {arr.shape[1]}")
                pts = arr[:, :3]
                if arr.shape[1] >= 6:
                    normals = arr[:, 3:6]
            else:  # .ply, .obj, .off
                import trimesh

                geom = trimesh.load(str(path), process=False)
                if not hasattr(geom, "vertices"):
                    raise PointCloudReadError(path, f"no vertices parsed (got "
                                                    f"{type(geom).__name__})")
                pts = np.asarray(geom.vertices, dtype=np.float64)
                if ext == ".ply":
                    normals = _ply_vertex_normals(geom)
    except PointCloudReadError:
        raise
    except ImportError:
        raise
    except Exception as err:  # parsers raise many types on garbage input
        raise PointCloudReadError(path, f"parse error: {type(err).__name__}: {err}") from err
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        raise PointCloudReadError(path, "the file holds no points")
    # check after the cast: values finite in float64 may overflow to inf in ``dtype``
    pts_t = torch.as_tensor(np.ascontiguousarray(pts), dtype=dtype)
    bad = ~torch.isfinite(pts_t).all(dim=1)
    if bool(bad.any()):
        raise PointCloudReadError(path, f"{int(bad.sum())} point(s) with non-finite "
                                        f"coordinates in {dtype} (first: row "
                                        f"{int(bad.float().argmax())})")
    nrm_t = None if normals is None else torch.as_tensor(np.ascontiguousarray(normals),
                                                         dtype=dtype)
    if nrm_t is not None and not bool(torch.isfinite(nrm_t).all()):
        raise PointCloudReadError(path, "non-finite normals")
    return pts_t, nrm_t


def _ply_vertex_normals(geom: Any) -> np.ndarray | None:
    meta = getattr(geom, "metadata", {}) or {}
    attrs = (meta.get("_ply_raw", {}) or {}).get("vertex", {}).get("data")
    if attrs is None:
        return None
    # trimesh keeps binary PLY vertex data as a structured array but ASCII data as a dict of
    # (N, 1) column arrays; read both by name
    names = attrs.keys() if isinstance(attrs, dict) else (attrs.dtype.names or ())
    if not all(k in names for k in ("nx", "ny", "nz")):
        return None
    cols = [np.asarray(attrs[k], dtype=np.float64).reshape(-1) for k in ("nx", "ny", "nz")]
    return np.stack(cols, axis=-1)


def save_point_cloud(
    path: str | os.PathLike,
    points: torch.Tensor | np.ndarray,
    normals: torch.Tensor | np.ndarray | None = None,
) -> None:
    """Write a point cloud atomically: PLY (trimesh-compatible, binary), XYZ, or PCD (open3d).

    Args:
        points: shape :math:`(N, 3)`.
        normals: optional, shape :math:`(N, 3)`; stored as ``nx ny nz`` (PLY/PCD/XYZ).
    """
    pts = _as_numpy(points, "points").astype(np.float64)
    nrm = None if normals is None else _as_numpy(normals, "normals").astype(np.float64)
    if nrm is not None and nrm.shape != pts.shape:
        raise ValueError(f"normals: expected shape {pts.shape}, got {nrm.shape}")
    ext = _suffix(path)
    if ext == ".pcd":
        o3d = _import_open3d()
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        if nrm is not None:
            pcd.normals = o3d.utility.Vector3dVector(nrm)
        with atomic_path(path) as tmp:
            if not o3d.io.write_point_cloud(str(tmp), pcd):
                raise OSError(f"open3d failed to write {path!r}")
    elif ext == ".ply":
        atomic_write_bytes(path, _ply_bytes(pts, nrm))
    elif ext == ".xyz":
        arr = pts if nrm is None else np.concatenate([pts, nrm], axis=1)
        lines = "\n".join(" ".join(repr(float(v)) for v in row) for row in arr)
        atomic_write_bytes(path, (lines + "\n").encode())
    else:
        raise ValueError(f"path: expected .ply, .pcd or .xyz, got {ext!r}")


def _ply_bytes(pts: np.ndarray, nrm: np.ndarray | None) -> bytes:
    names = ["x", "y", "z"] + ([] if nrm is None else ["nx", "ny", "nz"])
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(pts)}"]
    header += [f"property double {n}" for n in names] + ["end_header"]
    body = pts if nrm is None else np.concatenate([pts, nrm], axis=1)
    return ("\n".join(header) + "\n").encode() + body.astype("<f8").tobytes()


# ------------------------------------------------------------------------ sampling


def sample_surface(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    num_points: int,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Area-weighted uniform sampling of a triangle mesh surface, with face normals.

    A face is drawn with probability proportional to its area, then a point uniformly
    inside it (reflected barycentric coordinates). Same distribution as
    ``trimesh.sample.sample_surface`` but every draw goes through ``generator``.

    Args:
        vertices: shape :math:`(V, 3)`, float32 or float64, any device.
        faces: shape :math:`(F, 3)`, integer indices into ``vertices``.
        num_points: number of points :math:`N \\ge 0`.
        generator: optional :class:`torch.Generator` (its device is used for the draws).

    Returns:
        ``points`` :math:`(N, 3)`, unit ``normals`` :math:`(N, 3)` (the sampled face's
        normal, right-hand rule on the face's vertex order), ``face_index`` :math:`(N,)`.

    Raises:
        ValueError: bad shapes, or a mesh with zero total area.
    """
    if vertices.ndim != 2 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices: expected shape (V, 3), got {tuple(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces: expected shape (F, 3), got {tuple(faces.shape)}")
    if not vertices.is_floating_point():
        raise ValueError(f"vertices: expected a floating dtype, got {vertices.dtype}")
    if not isinstance(num_points, int) or num_points < 0:
        raise ValueError(f"num_points: expected an int >= 0, got {num_points!r}")
    faces = faces.long().to(vertices.device)
    v0, v1, v2 = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    e1, e2 = v1 - v0, v2 - v0
    cross = torch.cross(e1, e2, dim=-1)
    area2 = cross.norm(dim=-1)
    total = area2.sum()
    if faces.shape[0] == 0 or not bool(torch.isfinite(total)) or float(total) <= 0:
        raise ValueError("vertices/faces: mesh has zero (or non-finite) surface area")
    draw_device = generator.device if generator is not None else vertices.device
    cdf = torch.cumsum(area2, 0)
    r = torch.rand(num_points, generator=generator, dtype=vertices.dtype, device=draw_device)
    r = r.to(vertices.device) * cdf[-1]
    idx = torch.searchsorted(cdf, r, right=True).clamp_(max=faces.shape[0] - 1)
    uv = torch.rand(num_points, 2, generator=generator, dtype=vertices.dtype, device=draw_device)
    uv = uv.to(vertices.device)
    outside = uv.sum(-1) > 1
    uv = torch.where(outside[:, None], 1 - uv, uv)
    points = v0[idx] + uv[:, :1] * e1[idx] + uv[:, 1:] * e2[idx]
    normals = cross[idx] / area2[idx].clamp_min(torch.finfo(vertices.dtype).tiny)[:, None]
    return points, normals, idx


def normalize_points(
    points: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    mode: str = "sphere",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre and scale a point cloud to unit size; return the applied transform.

    ``normalized = (points - center) / scale``, hence ``points = normalized * scale + center``.

    Args:
        points: shape :math:`(*, N, 3)`.
        mask: optional :math:`(*, N)` bool, True = valid point (padding is ignored).
        mode: ``"sphere"``: centre = centroid, scale = max distance to it (fits the unit
            ball); ``"box"``: centre = bounding-box centre, scale = half the longest side
            (fits the cube :math:`[-1, 1]^3`).

    Returns:
        ``normalized`` :math:`(*, N, 3)` (masked points set to 0), ``center``
        :math:`(*, 3)`, ``scale`` :math:`(*)`, in the dtype of ``points`` (computed in
        float64). A cloud with no valid point gets centre 0 and scale 1; a cloud of one
        point (or identical points) gets scale 1.

    Raises:
        ValueError: bad shapes (``mask`` must match ``points`` exactly) or ``mode``.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 0, 0], [2, 0, 0]])
        >>> normalize_points(x)[0]
        tensor([[-1.,  0.,  0.],
                [ 1.,  0.,  0.]])
    """
    if points.ndim < 2 or points.shape[-1] != 3:
        raise ValueError(f"points: expected shape (*, N, 3), got {tuple(points.shape)}")
    if mask is None:
        mask = torch.ones(points.shape[:-1], dtype=torch.bool, device=points.device)
    elif mask.shape != points.shape[:-1]:
        raise ValueError(f"mask: expected shape {tuple(points.shape[:-1])}, "
                         f"got {tuple(mask.shape)}")
    if mode not in ("sphere", "box"):
        raise ValueError(f"mode: expected 'sphere' or 'box', got {mode!r}")
    if points.shape[-2] == 0:  # empty clouds: documented centre 0, scale 1
        batch = points.shape[:-2]
        return (points.clone(), torch.zeros(*batch, 3, dtype=points.dtype, device=points.device),
                torch.ones(batch, dtype=points.dtype, device=points.device))
    if points.dtype != torch.float64 and points.is_floating_point():
        # centre and scale in float64, round once: float32 clouds far from the origin
        # (e.g. 1e5) keep their shape (no cancellation in points - center)
        out, center, scale = normalize_points(points.to(torch.float64), mask, mode=mode)
        return out.to(points.dtype), center.to(points.dtype), scale.to(points.dtype)
    mask = mask.bool()
    points = torch.where(mask[..., None], points, torch.zeros((), dtype=points.dtype,
                                                              device=points.device))
    m = mask.to(points.dtype)[..., None]
    count = m.sum(-2).clamp_min(1)
    if mode == "sphere":
        center = (points * m).sum(-2) / count
        dist = ((points - center[..., None, :]).norm(dim=-1) * mask).amax(-1)
        scale = dist
    elif mode == "box":
        big = torch.finfo(points.dtype).max
        lo = torch.where(mask[..., None], points, torch.full_like(points, big)).amin(-2)
        hi = torch.where(mask[..., None], points, torch.full_like(points, -big)).amax(-2)
        center = (lo + hi) / 2
        scale = ((hi - lo) / 2).amax(-1)
    else:
        raise ValueError(f"mode: expected 'sphere' or 'box', got {mode!r}")
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    out = (points - center[..., None, :]) / scale[..., None, None]
    return out * m, center, scale
