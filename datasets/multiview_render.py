"""Render multiview datasets in the 3DCorrEnhance layout, from mesh files or procedural objects.

Layout (the reference's BlenderProc output, qq456cvb/3DCorrEnhance
``data_utils/blenderproc.py``, plus per-object camera files)::

    OUT/objects.txt                      one object name per line (written last)
    OUT/render_config.json               image size, intrinsics, viewpoints, seed
    OUT/<object>/color_000000.png        RGB uint8, black background
    OUT/<object>/depth_000000.png        uint16 z-depth in millimetres, 0 = empty
    OUT/<object>/mask_000000.png         uint8 0 / 255
    OUT/<object>/poses.npy               (N, 4, 4) float64 world_to_cam (object -> OpenCV camera)
    OUT/<object>/intrinsics.npy          (3, 3) float64 K
    OUT/<object>/meta.json               source, normalisation (centre, scale), empty views
    OUT/<object>/complete.json           completion marker, written last

Objects are normalised like the reference: bounding-box centre to the origin, largest
extent 1; the default cameras sit on the 42 vertices of an icosphere of level 1 at distance
2 looking at the origin, 512 x 512 pixels, fx = fy = 560, cx = cy = 256.

Every object is written into a temporary folder ``OUT/.tmp-<name>-*`` and renamed into
place after its completion marker: a reader never sees half an object, a re-run skips
finished objects (resume) and removes stale temporary folders. Results do not depend on
the number of workers (per-object seeds derive from the master seed and the object index).
A re-run into an ``OUT`` rendered with other settings or another seed (``render_config.json``)
is refused with a ``ValueError`` naming the differences, unless ``overwrite=True`` (CLI
``--overwrite``), which re-renders every object and removes objects of the old run.

Reference: You et al., "Multiview Equivariance Improves 3D Correspondence Understanding
with Minimal Feature Finetuning", ICLR 2025; qq456cvb/3DCorrEnhance
``data_utils/blenderproc.py`` and ``data_utils/render_objects.py`` (file names, millimetre
depth, 0/255 masks, intrinsics, normalisation, skip-if-rendered).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo3d._atomic import atomic_path, atomic_write_bytes, staging_dir

__all__ = [
    "RenderSettings",
    "SolidTexture",
    "make_textured_shape",
    "render_object",
    "render_dataset",
    "write_png",
    "MESH_SUFFIXES",
]

#: Mesh files picked up from a mesh folder (through trimesh).
MESH_SUFFIXES: tuple[str, ...] = (".obj", ".ply", ".glb", ".gltf", ".off", ".stl")

#: Accepted image sizes (pixels per side) and icosphere levels (level 6 = 40962 views).
SIZE_RANGE: tuple[int, int] = (8, 8192)
LEVEL_RANGE: tuple[int, int] = (0, 6)
MAX_VIEWS = 100_000


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclass(frozen=True)
class RenderSettings:
    """Image size, intrinsics and viewpoints of a rendered dataset (reference defaults).

    Attributes:
        size: image height = width, pixels.
        focal: fx = fy, pixels (the reference's 35 mm lens on a 32 mm sensor at 512 px: 560).
        principal: cx = cy, pixels (reference: 256 at 512 px); ``None`` = ``size / 2``.
        distance: camera distance from the object centre (object has unit extent).
        views: ``"icosphere"`` (level ``level``) or ``"random"`` (``num_views`` uniform draws
            per object, from the object's seed).
        level: icosphere level (1 = 42 views).
        num_views: views per object for ``"random"``.
        up: world axis that appears up in the images (``"z"`` or ``"y"``).
    """

    size: int = 512
    focal: float = 560.0
    principal: float | None = None
    distance: float = 2.0
    views: str = "icosphere"
    level: int = 1
    num_views: int = 42
    up: str = "z"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field (before anything is written)."""
        lo, hi = SIZE_RANGE
        if not (_is_int(self.size) and lo <= self.size <= hi):
            raise ValueError(f"size: expected an int in [{lo}, {hi}] pixels, got {self.size!r}")
        if not (np.isfinite(self.focal) and self.focal > 0):
            raise ValueError(f"focal: expected a positive focal length in pixels, got {self.focal}")
        if self.principal is not None and not np.isfinite(self.principal):
            raise ValueError(f"principal: expected a finite pixel coordinate or None, got {self.principal}")
        if not (np.isfinite(self.distance) and self.distance > 0):
            raise ValueError(f"distance: expected a positive distance, got {self.distance}")
        if self.views not in ("icosphere", "random"):
            raise ValueError(f"views: expected 'icosphere' or 'random', got {self.views!r}")
        lo, hi = LEVEL_RANGE
        if self.views == "icosphere" and not (_is_int(self.level) and lo <= self.level <= hi):
            raise ValueError(f"level: expected an int in [{lo}, {hi}], got {self.level!r}")
        if self.views == "random" and not (_is_int(self.num_views) and 1 <= self.num_views <= MAX_VIEWS):
            raise ValueError(f"num_views: expected an int in [1, {MAX_VIEWS}], got {self.num_views!r}")
        if self.up not in ("z", "y"):
            raise ValueError(f"up: expected 'z' or 'y', got {self.up!r}")

    def intrinsics(self) -> np.ndarray:
        c = self.size / 2 if self.principal is None else self.principal
        return np.array([[self.focal, 0.0, c], [0.0, self.focal, c], [0.0, 0.0, 1.0]])

    def poses(self, seed: int) -> np.ndarray:
        from geo3d.render import icosphere_viewpoints, look_at, random_viewpoints

        if self.views == "icosphere":
            eyes = icosphere_viewpoints(self.level, self.distance)
        else:
            g = torch.Generator().manual_seed(int(seed))
            eyes = random_viewpoints(self.num_views, self.distance, generator=g)
        up = [0.0, 0.0, 1.0] if self.up == "z" else [0.0, 1.0, 0.0]
        return look_at(eyes, up=up).numpy()


# ----------------------------------------------------------------------------- textures
class SolidTexture:
    """A procedural colour field on 3D space: colour patches, noise and stripes.

    The colour of a surface point is the colour of its nearest patch centre (a 3D Voronoi
    cell, 12-40 random saturated colours), modulated by smooth value noise (sum of random
    sinusoids) and, in a random half of the patches, by stripes along a random direction.
    Patches give each surface region an identity, noise and stripes give texture inside
    it: appearance identifies surface points, as correspondence learning needs.

    Args:
        seed: integer seed (all parameters derive from it).

    Example:
        >>> tex = SolidTexture(0)
        >>> tex(np.zeros((2, 3))).shape
        (2, 3)
    """

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        n = int(rng.integers(12, 41))
        self.centres = rng.uniform(-0.6, 0.6, size=(n, 3))
        hsv = np.stack([rng.uniform(0, 1, n), rng.uniform(0.45, 1.0, n), rng.uniform(0.45, 1.0, n)], 1)
        self.colors = _hsv_to_rgb(hsv)
        self.striped = rng.uniform(size=n) < 0.5
        d = rng.normal(size=(n, 3))
        self.stripe_dir = d / np.linalg.norm(d, axis=1, keepdims=True)
        self.stripe_freq = rng.uniform(20.0, 60.0, size=n)
        k = 12
        w = rng.normal(size=(k, 3)) * rng.uniform(4.0, 16.0, size=(k, 1))
        self.noise_w, self.noise_phase = w, rng.uniform(0, 2 * np.pi, size=k)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, dtype=np.float64)
        d2 = ((p[:, None, :] - self.centres[None]) ** 2).sum(-1)
        cell = d2.argmin(axis=1)
        col = self.colors[cell]
        noise = np.sin(p @ self.noise_w.T + self.noise_phase).mean(axis=1)  # ~[-0.5, 0.5]
        col = col * (0.8 + 0.35 * noise)[:, None]
        stripe = np.sin(self.stripe_freq[cell] * (p * self.stripe_dir[cell]).sum(-1)) > 0
        dark = self.striped[cell] & stripe
        col[dark] *= 0.45
        return np.clip(col, 0.0, 1.0)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    import matplotlib.colors

    return matplotlib.colors.hsv_to_rgb(hsv)


def make_textured_shape(category: str, seed: int) -> tuple[Any, SolidTexture]:
    """A procedural shape of :func:`geo3d.datasets.make_shape` with a :class:`SolidTexture`.

    Args:
        category: a shape category (:data:`geo3d.datasets.SHAPE_CATEGORIES`).
        seed: seed of the shape and of its texture.

    Returns:
        ``(mesh, texture)``: a watertight trimesh mesh (unit extent, centred) and its colour
        function, to pass as ``as_render_mesh(mesh, color_fn=texture)``.

    Example:
        >>> mesh, tex = make_textured_shape("Mug", 0)
        >>> tex(np.asarray(mesh.vertices[:4])).shape
        (4, 3)
    """
    from geo3d.datasets.shapes import make_shape

    mesh = make_shape(category, seed=seed)
    return mesh, SolidTexture(seed + 7919)


# ----------------------------------------------------------------------------- writing
def write_png(path: Path, array: np.ndarray) -> None:
    """Write a PNG atomically: uint8 (H, W) / (H, W, 3), or uint16 (H, W) as 16-bit grey."""
    from PIL import Image

    arr = np.ascontiguousarray(array)
    if arr.dtype == np.uint16:
        img = Image.fromarray(arr)  # mode I;16 -> 16-bit greyscale PNG
    elif arr.dtype == np.uint8:
        img = Image.fromarray(arr)
    else:
        raise ValueError(f"array: expected uint8 or uint16, got {arr.dtype}")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def _write_bytes(path: Path, data: bytes) -> None:
    # files of an object folder that is renamed into place only when complete: no fsync
    atomic_write_bytes(path, data, fsync=False)


def _write_npy(path: Path, arr: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    _write_bytes(path, buf.getvalue())


def _normalise(rm: Any) -> tuple[Any, np.ndarray, float]:
    """Centre the mesh's bounding box at the origin and scale its largest extent to 1."""
    from geo3d.render import RenderMesh

    v = rm.vertices[np.unique(rm.faces)]
    lo, hi = v.min(axis=0), v.max(axis=0)
    ext = float((hi - lo).max())
    if not ext > 0:
        raise ValueError("mesh: expected a mesh with non-zero extent, got all vertices at one point")
    centre = (lo + hi) / 2
    scale = 1.0 / ext
    out = RenderMesh((rm.vertices - centre) * scale, rm.faces, rm.parts)
    return out, centre, scale


def render_object(
    mesh: Any,
    out_dir: str | os.PathLike,
    settings: RenderSettings = RenderSettings(),
    *,
    seed: int = 0,
    color_fn: Any = None,
    source: str = "",
    normalise: bool = True,
) -> dict:
    """Render one object into ``out_dir`` (the reference layout), atomically.

    Args:
        mesh: anything :func:`geo3d.render.as_render_mesh` reads (path, trimesh, ...).
        out_dir: the object folder to create (its parent must exist).
        settings: image size, intrinsics and viewpoints.
        seed: seed of random viewpoints.
        color_fn: optional solid texture (replaces the mesh's appearance).
        source: a description written to ``meta.json``.
        normalise: centre and scale to unit extent (as the reference); off keeps the frame.

    Returns:
        the ``meta.json`` dict (``empty_views`` lists views whose mask is empty).

    Raises:
        ValueError: bad mesh (no faces, NaN vertices, unreadable), bad settings. Nothing is
            left in ``out_dir`` then.
    """
    from geo3d.render import Renderer, as_render_mesh

    settings.validate()
    out_dir = Path(out_dir)
    t0 = time.time()
    rm = as_render_mesh(mesh, color_fn=color_fn)
    centre, scale = np.zeros(3), 1.0
    if normalise:
        rm, centre, scale = _normalise(rm)
    K = settings.intrinsics()
    poses = settings.poses(seed)
    S = settings.size
    renderer = Renderer(rm)
    Kt, Tt = torch.from_numpy(K), torch.from_numpy(poses)
    chunk = max(1, (1 << 21) // (S * S))  # views per render call: bounded memory (~100 MB)
    empty: list[int] = []
    tmp = staging_dir(out_dir.parent, f".tmp-{out_dir.name}-")  # not mkdtemp's 0700
    try:
        for s0 in range(0, len(poses), chunk):
            out = renderer.render(Kt, Tt[s0 : s0 + chunk], (S, S), dtype=torch.float64)
            for j in range(len(out["mask"])):
                i = s0 + j
                mask = out["mask"][j].numpy()
                rgb = np.round(out["rgb"][j].numpy() * 255).astype(np.uint8)
                rgb[~mask] = 0
                depth_mm = np.clip(np.round(out["depth"][j].numpy() * 1000.0), 0, 65535).astype(np.uint16)
                write_png(tmp / f"color_{i:06d}.png", rgb)
                write_png(tmp / f"depth_{i:06d}.png", depth_mm)
                write_png(tmp / f"mask_{i:06d}.png", mask.astype(np.uint8) * 255)
                if not mask.any():
                    empty.append(i)
        _write_npy(tmp / "poses.npy", poses)
        _write_npy(tmp / "intrinsics.npy", K)
        meta = {
            "source": source,
            "num_views": int(len(poses)),
            "size": [S, S],
            "centre": centre.tolist(),
            "scale": scale,
            "settings": asdict(settings),
            "seed": int(seed),
            "empty_views": empty,
            "depth_unit": "mm",
            "camera": "OpenCV (x right, y down, z forward); poses are world_to_cam",
        }
        _write_bytes(tmp / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())
        done = {"views": int(len(poses)), "seconds": round(time.time() - t0, 3)}
        _write_bytes(tmp / "complete.json", (json.dumps(done) + "\n").encode())  # marker: last
        if out_dir.exists():  # an unfinished folder (no marker) from an older writer
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if empty:
        warnings.warn(f"{out_dir.name}: {len(empty)} views see nothing (empty mask): {empty[:10]}", UserWarning, stacklevel=2)
    return meta


def is_complete(obj_dir: Path) -> bool:
    return (Path(obj_dir) / "complete.json").is_file()


@dataclass(frozen=True)
class _Job:
    index: int
    name: str
    mesh_path: str | None  # a file, or None for a synthetic object
    category: str | None
    seed: int


def _run_job(args: tuple[_Job, RenderSettings, str]) -> tuple[str, str | None]:
    job, settings, root = args
    out_dir = Path(root) / job.name
    if is_complete(out_dir):
        return job.name, None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # recorded in meta.json instead
            if job.mesh_path is not None:
                render_object(job.mesh_path, out_dir, settings, seed=job.seed, source=job.mesh_path)
            else:
                mesh, tex = make_textured_shape(job.category, job.seed)
                render_object(mesh, out_dir, settings, seed=job.seed, color_fn=tex,
                              source=f"synthetic:{job.category}:{job.seed}")
    except (ValueError, RuntimeError) as err:
        return job.name, f"{job.name}: {err}"
    return job.name, None


def _ignore_sigint() -> None:  # pool initializer: Ctrl-C is handled by the parent only
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _config_differences(old: dict, new: dict) -> list[str]:
    """``"key: old -> new"`` for every setting (and the seed) that differs."""
    diffs = []
    a, b = dict(old.get("settings", {})), dict(new["settings"])
    a["seed"], b["seed"] = old.get("seed"), new["seed"]
    for k in b:
        if a.get(k) != b[k]:
            diffs.append(f"{k}: {a.get(k)!r} -> {b[k]!r}")
    return diffs


def _previous_config(root: Path, jobs: list[_Job]) -> dict | None:
    """The settings ``root`` was rendered with: ``render_config.json``, else the
    ``meta.json`` of a finished object (older writers), else ``None``."""
    cfg = root / "render_config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"out: could not read {str(cfg)!r} ({err}); pass overwrite=True (--overwrite) to replace it") from err
    for j in jobs:
        meta = root / j.name / "meta.json"
        if is_complete(root / j.name) and meta.is_file():
            try:
                m = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue
            return {"settings": m.get("settings", {}), "seed": None}  # per-object seed only
    return None


def _object_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def render_dataset(
    out: str | os.PathLike,
    *,
    mesh_dir: str | os.PathLike | None = None,
    meshes: Sequence[str | os.PathLike] | None = None,
    num_synthetic: int = 0,
    categories: Sequence[str] | None = None,
    settings: RenderSettings = RenderSettings(),
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Render every mesh of ``mesh_dir`` (or ``meshes``, or ``num_synthetic`` procedural
    textured objects) into ``out`` in the reference layout.

    Object names are the mesh paths relative to ``mesh_dir`` without suffix (nested folders
    are kept, as the reference's ``000-151/<uid>``), or ``synthetic/<Category>_<index>``.

    Args:
        out: dataset root.
        mesh_dir: folder searched recursively for OBJ/PLY/GLB/GLTF/OFF/STL files.
        meshes: explicit mesh files (names are their stems).
        num_synthetic: number of procedural textured objects (categories cycle).
        categories: procedural categories (default: all of ``SHAPE_CATEGORIES``).
        settings: image size, intrinsics, viewpoints.
        seed: master seed (random viewpoints, procedural objects).
        workers: processes (spawned, >= 1); results do not depend on it.
        progress: tqdm progress bar.
        overwrite: render every object again, also into an ``out`` rendered with other
            settings or seed (objects of the old run that are not rendered now are
            removed). Without it, such an ``out`` is refused, and one rendered with the
            same settings is resumed (finished objects are skipped).

    Returns:
        ``{"root", "objects", "rendered", "skipped", "failed": [messages]}``.

    Raises:
        ValueError: bad settings (size outside [8, 8192], negative level, ...), ``workers``
            < 1, ``num_synthetic`` < 0, ``out`` an existing file, no input, a missing
            ``mesh_dir``: nothing is written. ``out`` rendered with other settings or seed
            and ``overwrite`` not set: the message names ``out`` and the differences.

    Example:
        >>> import tempfile
        >>> s = RenderSettings(size=16, focal=18.0, level=0)
        >>> with tempfile.TemporaryDirectory() as out:
        ...     render_dataset(out, num_synthetic=1, settings=s, progress=False)["rendered"]
        1
    """
    from geo3d.datasets.shapes import SHAPE_CATEGORIES

    settings.validate()
    if not (_is_int(workers) and workers >= 1):
        raise ValueError(f"workers: expected an int >= 1, got {workers!r}")
    if not (_is_int(num_synthetic) and num_synthetic >= 0):
        raise ValueError(f"num_synthetic: expected an int >= 0, got {num_synthetic!r}")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ValueError(f"out: expected a folder (existing or new), got the existing file {str(root)!r}")
    jobs: list[_Job] = []
    if mesh_dir is not None:
        md = Path(mesh_dir)
        if not md.is_dir():
            raise ValueError(f"mesh_dir: expected a folder of meshes, got {str(md)!r}")
        files = sorted(p for p in md.rglob("*") if p.suffix.lower() in MESH_SUFFIXES and p.is_file())
        for i, p in enumerate(files):
            name = p.relative_to(md).with_suffix("").as_posix()
            jobs.append(_Job(i, name, str(p), None, _object_seed(seed, i)))
    if meshes:
        for p in meshes:
            i = len(jobs)
            jobs.append(_Job(i, Path(p).stem, str(p), None, _object_seed(seed, i)))
    if num_synthetic:
        cats = list(categories or SHAPE_CATEGORIES)
        bad = [c for c in cats if c not in SHAPE_CATEGORIES]
        if bad:
            raise ValueError(f"categories: expected names from {list(SHAPE_CATEGORIES)}, got {bad}")
        for k in range(num_synthetic):
            cat = cats[k % len(cats)]
            i = len(jobs)
            jobs.append(_Job(i, f"synthetic/{cat}_{k:05d}", None, cat, _object_seed(seed, i)))
    if not jobs:
        raise ValueError("mesh_dir: expected meshes to render (or num_synthetic > 0), found none")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError("meshes: expected distinct object names, got duplicates (same stem twice)")
    config = {"settings": asdict(settings), "intrinsics": settings.intrinsics().tolist(), "seed": seed}
    config = json.loads(json.dumps(config))  # as read back from disk
    old = _previous_config(root, jobs) if root.is_dir() else None
    diffs = [] if old is None else _config_differences(old, config)
    if old is not None and old.get("seed") is None:  # from an object's meta.json: no master seed
        diffs = [d for d in diffs if not d.startswith("seed:")]
    if diffs and not overwrite:
        raise ValueError(
            f"out: {str(root)!r} was rendered with other settings ({'; '.join(diffs)}); "
            "re-run with the same settings to resume, choose another OUT, or pass "
            "overwrite=True (--overwrite) to render every object again"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"out: could not create the folder {str(root)!r}: {err}") from err
    for leftover in list(root.rglob(".tmp-*")):  # stale folders of an interrupted run
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    if overwrite:
        names = {j.name for j in jobs}
        listed = root / "objects.txt"
        stale = [n for n in listed.read_text().splitlines() if n.strip()] if listed.is_file() else []
        for name in stale + sorted(names):
            d = root / name
            if ((name not in names or is_complete(d)) and d.is_dir() and d.resolve() != root.resolve()
                    and d.resolve().is_relative_to(root.resolve())):
                shutil.rmtree(d)
        listed.unlink(missing_ok=True)
    _write_bytes(root / "render_config.json", (json.dumps(config, indent=1) + "\n").encode())
    skipped = sum(is_complete(root / j.name) for j in jobs)
    args = [(j, settings, str(root)) for j in jobs]
    results: list[tuple[str, str | None]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="render", unit="obj")
    if workers <= 1:
        for a in args:
            results.append(_run_job(a))
            if bar:
                bar.update(1)
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers, initializer=_ignore_sigint) as pool:
            for r in pool.imap_unordered(_run_job, args):
                results.append(r)
                if bar:
                    bar.update(1)
    if bar:
        bar.close()
    failed = sorted(msg for _, msg in results if msg)
    done = [j.name for j in jobs if is_complete(root / j.name)]
    _write_bytes(root / "objects.txt", ("\n".join(done) + ("\n" if done else "")).encode())
    return {
        "root": str(root),
        "objects": len(done),
        "rendered": len(done) - skipped,
        "skipped": skipped,
        "failed": failed,
    }
