"""Loader for the Breaking Bad fracture-reassembly dataset (and data in its layout).

Layout (as published at breaking-bad-dataset.github.io, after ``decompress.py``; split
files directly in ROOT, as ``multi_part_assembly`` configures them, are accepted too)::

    ROOT/
      data_split/{everyday,artifact,other}.{train,val}.txt
      everyday/<Category>/<object>/{fractured_k,mode_k}/piece_i.obj
      artifact/<object>/{fractured_k,mode_k}/piece_i.obj
      other/<object>/...

One line of ``data_split/everyday.train.txt`` names an **object folder relative to
ROOT**, e.g. ``everyday/BeerBottle/3f91158956ad7db0322747720d7d37e8`` (``artifact``
lines have no category level: ``artifact/39084_sf``). Every ``fractured_k`` and
``mode_k`` subfolder of that object is one sample (this is what the reference code
``multi_part_assembly/datasets/geometry_data.py`` does: it lists the object folder and
keeps entries whose name contains ``fractured`` or ``mode``), kept when its number of
pieces lies in ``[min_parts, max_parts]``. The pieces of a sample are the mesh files of
its folder in natural order (``piece_2`` before ``piece_10``; numbering may have gaps:
the decompressor skips empty pieces). A line that already names a ``fractured_k`` /
``mode_k`` folder is accepted as that single sample. ``categories`` keeps a line when one
of its path components equals a requested category (case-insensitive).

Per sample and per part (ground-truth convention: assembled point = ``rot @ p + trans``):
area-weighted surface sample of ``num_points`` points (with face normals), centred at the
part's centroid ``c`` (``trans = c``), rotated by a Haar-random ``R`` (``rot = Rᵀ``),
points shuffled; parts are padded to ``max_parts`` with a ``valid`` mask. The pieces of
the benchmark are stored in the object's frame, so the assembled parts reproduce the
object (up to the optional object-level normalisation, see ``normalize``).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from geo3d.datasets._cache import ArrayCache
from geo3d.datasets._io import MESH_EXTENSIONS, MeshReadError, load_mesh, sample_surface
from geo3d.datasets._seeded import SharedEpoch
from geo3d.datasets._transforms import haar_rotation, sample_generator
from torch.utils.data import Dataset, default_collate

__all__ = ["BreakingBad", "BreakingBadError", "collate_parts", "SUBSETS"]

SUBSETS: tuple[str, ...] = ("everyday", "artifact", "other")
_FRACTURE_RE = re.compile(r"^(fractured|fracture|mode)_\d+$")
_SAMPLER_VERSION = "area_weighted_v2_f64"  # v2: points cached in float64 (v1: float32)


class BreakingBadError(ValueError):
    """A missing or broken entry in ``strict`` mode; ``path`` names it."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{reason}: {self.path}")


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _kind(folder_name: str) -> str:
    """'fractured' for fractured_k (or fracture_k), 'mode' for mode_k."""
    return "mode" if folder_name.rsplit("_", 1)[0] == "mode" else "fractured"


def collate_parts(batch: Sequence[dict[str, Any]], trim: bool = False) -> dict[str, Any]:
    """Collate :class:`BreakingBad` items (works as a DataLoader ``collate_fn``).

    Tensors are stacked (``points`` → :math:`(B, P, N, 3)`, ``valid`` → :math:`(B, P)`, ...),
    ints become a long tensor, strings a list. With ``trim=True`` the part axis is cut to
    the largest ``num_parts`` in the batch (less padding to compute on).
    """
    out = default_collate(list(batch))
    if trim:
        p = int(out["num_parts"].max())
        for k in ("points", "normals", "valid", "rot", "trans"):
            if k in out:
                out[k] = out[k][:, :p]
    return out


class BreakingBad(SharedEpoch, Dataset):
    """Breaking Bad fracture assembly dataset (``ROOT/data_split`` layout, see module doc).

    Args:
        root: the dataset root (the folder that holds ``data_split/``).
        subset: ``"everyday"``, ``"artifact"``, ``"other"`` or a sequence of them.
        split: ``"train"`` or ``"val"`` (reads ``data_split/<subset>.<split>.txt``).
        categories: keep only these categories (e.g. ``["Bottle", "Mug"]``); ``None`` or
            ``"all"`` keeps everything.
        min_parts, max_parts: keep fractures with ``min_parts <= #pieces <= max_parts``;
            items are padded to ``max_parts``.
        num_points: points sampled per part :math:`N`.
        fracture_types: folder kinds to use: ``"fractured"`` and/or ``"mode"``.
        rotate: apply a Haar-random rotation per part (``False`` for canonical eval).
        shuffle_points: randomly permute the points of each part.
        shuffle_parts: randomly permute the part order (the reference code's default is
            off: parts come in natural file order).
        normalize: object-level normalisation: subtract the centroid of all sampled points
            and divide by their max distance to it, before per-part centring. The item's
            ``center`` :math:`(3,)` and ``scale`` :math:`()` give the original frame:
            ``original = scale * assembled + center`` (identity when off, the default:
            the published pieces are already in the object's frame).
        with_normals: include ``normals`` (sampled face normals, rotated with the points).
        transform: optional callable ``transform(sample, generator) -> sample`` applied to
            ``{"points": (n, N, 3), "normals": (n, N, 3)}`` of the ``n`` valid parts after
            centring/rotation (e.g. :class:`geo3d.datasets.Jitter`). A recorded affine
            ``"transform"`` :math:`(n, 4, 4)` (see :mod:`geo3d.datasets` transforms) is
            folded into ``rot``/``trans`` so the ground truth stays exact.
        seed: ``int``: every random draw of item ``index`` comes from
            ``sample_generator(seed, epoch, index)`` -- identical whatever the number of
            workers. ``None``: the per-item seed is drawn from torch's global RNG
            (standard PyTorch worker seeding; not reproducible across worker counts).
        sample_seed: seed of the (cached) surface sampling, mixed with the piece's path.
        cache: cache the sampled points of each piece (keyed by file content + options).
        cache_dir: cache folder; default ``ROOT/.geo3d_cache/breaking_bad``.
        hash_mode: cache key source: ``"content"`` (file bytes, default) or ``"stat"``.
        strict: raise :class:`BreakingBadError` on any missing/broken entry instead of
            skipping it.
        validate: read (and cache) every piece while building the index, so that broken
            meshes are found up front rather than mid-epoch.
        max_retries: load-time failures replace the item by another index up to this many
            times before raising.

    Items are dicts: ``points`` :math:`(P, N, 3)` float32 (each part centred at its own
    centroid, then rotated), ``normals`` :math:`(P, N, 3)` (if ``with_normals``),
    ``valid`` :math:`(P,)` bool, ``rot`` :math:`(P, 3, 3)`, ``trans`` :math:`(P, 3)` with
    assembled point ``= rot @ p + trans``, ``num_parts`` int, ``name`` str (fracture folder
    relative to ROOT), ``category`` str, ``index`` int (the index actually loaded),
    ``center`` :math:`(3,)`, ``scale`` :math:`()`. Padded parts (``valid`` False) have zero
    points/normals/trans and identity ``rot``. :math:`P` = ``max_parts``.

    Call :meth:`set_epoch` at the start of every epoch: the epoch lives in shared memory,
    so persistent DataLoader workers see it too.

    Raises:
        FileNotFoundError: ``root`` or a split file does not exist.
        BreakingBadError: no sample at all is found for the split (the message names the
            root, the split file and why: missing object folders, broken pieces, the
            part-count or category filter), or, with ``strict=True``, any missing or
            broken entry.
        ValueError: bad arguments.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        subset: str | Sequence[str] = "everyday",
        split: str = "train",
        categories: str | Sequence[str] | None = None,
        min_parts: int = 2,
        max_parts: int = 20,
        num_points: int = 1000,
        *,
        fracture_types: Sequence[str] = ("fractured", "mode"),
        rotate: bool = True,
        shuffle_points: bool = True,
        shuffle_parts: bool = False,
        normalize: bool = False,
        with_normals: bool = True,
        transform: Callable[..., dict[str, Any]] | None = None,
        seed: int | None = None,
        sample_seed: int = 0,
        cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        hash_mode: str = "content",
        strict: bool = False,
        validate: bool = False,
        max_retries: int = 10,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: dataset folder {str(self.root)!r} does not exist")
        subsets = [subset] if isinstance(subset, str) else list(subset)
        for s in subsets:
            if s not in SUBSETS:
                raise ValueError(f"subset: expected one of {SUBSETS}, got {s!r}")
        if split not in ("train", "val"):
            raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
        if isinstance(categories, str):
            categories = None if categories.lower() == "all" else [categories]
        for name, v, lo in (("min_parts", min_parts, 1), ("max_parts", max_parts, 1),
                            ("num_points", num_points, 1), ("max_retries", max_retries, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        if min_parts > max_parts:
            raise ValueError(f"min_parts, max_parts: expected min_parts <= max_parts, "
                             f"got {min_parts} > {max_parts}")
        kinds = set(fracture_types)
        if not kinds or not kinds <= {"fractured", "mode"}:
            raise ValueError(f"fracture_types: expected a non-empty subset of "
                             f"('fractured', 'mode'), got {fracture_types!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed: expected an int or None, got {seed!r}")

        self.subsets = subsets
        self.split = split
        self.categories = None if categories is None else [c.lower() for c in categories]
        self.min_parts, self.max_parts, self.num_points = min_parts, max_parts, num_points
        self.fracture_types = tuple(sorted(kinds))
        self.rotate, self.shuffle_points, self.shuffle_parts = rotate, shuffle_points, shuffle_parts
        self.normalize, self.with_normals = normalize, with_normals
        self.transform = transform
        self.seed, self.sample_seed = seed, sample_seed
        self.strict, self.max_retries = strict, max_retries
        self.cache: ArrayCache | None = None
        if cache:
            cdir = Path(cache_dir) if cache_dir is not None \
                else self.root / ".geo3d_cache" / "breaking_bad"
            self.cache = ArrayCache(cdir, hash_mode=hash_mode)
        # shared memory: persistent DataLoader workers see set_epoch() updates
        self._init_epoch()
        #: entries skipped while building the index: list of (path, reason)
        self.skipped: list[tuple[str, str]] = []
        #: fracture folders left out by the min/max part filter
        self.num_filtered = 0
        #: load-time failures in this process: {name: reason}
        self.load_failures: dict[str, str] = {}
        self._warned_load = False

        #: the split files read (one per subset)
        self.split_files: list[Path] = []
        self._num_lines = 0
        self.samples: list[tuple[str, list[Path]]] = self._build_index()
        if validate:
            self._validate()
        if not self.samples:
            self._raise_empty()
        if self.skipped:
            msg = (f"BreakingBad: skipped {len(self.skipped)} missing or broken entr"
                   f"{'y' if len(self.skipped) == 1 else 'ies'} under {str(self.root)!r} "
                   f"(first: {self.skipped[0][0]}: {self.skipped[0][1]}); "
                   f"see the dataset's .skipped list")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)

    # ------------------------------------------------------------------ index

    def _raise_empty(self) -> None:
        files = ", ".join(repr(str(f)) for f in self.split_files)
        parts = [f"{self._num_lines} object line(s) kept from the split file(s)"]
        if self.categories is not None:
            parts[0] += f" after the category filter {self.categories}"
        if self.skipped:
            parts.append(f"{len(self.skipped)} missing or broken (first: "
                         f"{self.skipped[0][0]}: {self.skipped[0][1]})")
        if self.num_filtered:
            parts.append(f"{self.num_filtered} fracture folder(s) outside "
                         f"min_parts..max_parts = {self.min_parts}..{self.max_parts}")
        raise BreakingBadError(
            self.split_files[0] if len(self.split_files) == 1 else self.root,
            f"BreakingBad: no sample found for split {self.split!r} under root "
            f"{str(self.root)!r} (split file(s) {files}; " + "; ".join(parts) + "). The "
            "lines of a split file name object folders relative to the root: check that "
            "they exist there (e.g. not renamed or nested one level deeper when "
            "decompressing) and that the part-count and category filters keep something")

    def _problem(self, path: str | os.PathLike, reason: str) -> None:
        if self.strict:
            raise BreakingBadError(path, reason)
        self.skipped.append((str(path), reason))

    def _keep_line(self, line: str) -> bool:
        if self.categories is None:
            return True
        comps = {c.lower() for c in line.split("/")}
        return any(c in comps for c in self.categories)

    def _build_index(self) -> list[tuple[str, list[Path]]]:
        samples: list[tuple[str, list[Path]]] = []
        for subset in self.subsets:
            fname = f"{subset}.{self.split}.txt"
            split_file = self.root / "data_split" / fname
            if not split_file.is_file() and (self.root / fname).is_file():
                split_file = self.root / fname  # multi_part_assembly keeps them in ROOT
            if not split_file.is_file():
                raise FileNotFoundError(
                    f"root: expected the split file {str(split_file)!r} (layout "
                    f"ROOT/data_split/<subset>.<split>.txt), it does not exist")
            self.split_files.append(split_file)
            lines = [ln.strip().strip("/") for ln in split_file.read_text().splitlines()]
            for line in lines:
                if not line or line.startswith("#") or not self._keep_line(line):
                    continue
                self._num_lines += 1
                obj_dir = self.root / line
                if not obj_dir.is_dir():
                    self._problem(obj_dir, "object folder listed in the split does not exist")
                    continue
                if _FRACTURE_RE.match(obj_dir.name):
                    frac_dirs = [obj_dir]
                else:
                    frac_dirs = sorted(
                        (d for d in obj_dir.iterdir()
                         if d.is_dir() and _FRACTURE_RE.match(d.name)
                         and _kind(d.name) in self.fracture_types),
                        key=lambda d: _natural_key(d.name))
                    if not frac_dirs:
                        self._problem(obj_dir, "object folder has no fractured_k/mode_k folder")
                        continue
                for frac in frac_dirs:
                    entry = self._index_fracture(frac)
                    if entry is not None:
                        samples.append(entry)
        return samples

    def _index_fracture(self, frac: Path) -> tuple[str, list[Path]] | None:
        with os.scandir(frac) as it:  # one syscall per folder, d_type for is_file
            entries = [e for e in it
                       if not e.name.startswith(".") and e.is_file()
                       and os.path.splitext(e.name)[1].lower() in MESH_EXTENSIONS]
        if not entries:
            self._problem(frac, "fracture folder has no piece meshes")
            return None
        entries.sort(key=lambda e: _natural_key(e.name))
        empty = [e for e in entries if e.stat().st_size == 0]
        if empty:
            self._problem(empty[0].path, "piece mesh is empty (0 bytes)")
            return None
        pieces = [frac / e.name for e in entries]
        if not self.min_parts <= len(pieces) <= self.max_parts:
            self.num_filtered += 1
            return None
        return frac.relative_to(self.root).as_posix(), pieces

    def _validate(self) -> None:
        kept = []
        for name, pieces in self.samples:
            try:
                for p in pieces:
                    self._piece_points(p)
            except (MeshReadError, OSError) as err:
                self._problem(getattr(err, "path", name), f"unreadable piece ({err})")
                continue
            kept.append((name, pieces))
        self.samples = kept

    # --------------------------------------------------------------- loading

    def __len__(self) -> int:
        return len(self.samples)

    def _piece_points(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Canonical (object-frame) sampled points (float64) and normals of one piece,
        cached."""
        # The sampling seed mixes sample_seed with the piece's path relative to ROOT, so
        # the path is part of the key too: byte-identical pieces in two folders get their
        # own entries and the result never depends on which one was read first.
        rel = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) \
            else path.as_posix()
        options = {"v": _SAMPLER_VERSION, "num_points": self.num_points,
                   "sample_seed": self.sample_seed, "path": rel}
        key = None
        if self.cache is not None:
            if not path.is_file():
                raise MeshReadError(path, "file does not exist")
            key = self.cache.key(path, options)
            hit = self.cache.get(key)
            pts = None if hit is None else hit.get("points")
            if pts is not None and pts.shape == (self.num_points, 3) \
                    and pts.dtype == np.float64:
                return pts, hit["normals"]
        mesh = load_mesh(path)
        digest = hashlib.sha256(f"{self.sample_seed}:{rel}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        v = torch.as_tensor(np.array(mesh.vertices), dtype=torch.float64)
        f = torch.as_tensor(np.array(mesh.faces), dtype=torch.long)
        try:
            pts, nrm, _ = sample_surface(v, f, self.num_points, generator=gen)
        except ValueError as err:
            raise MeshReadError(path, str(err)) from err
        # points stay float64 until each part is centred (pieces far from the origin,
        # e.g. scans in mm at 1e5, keep their shape); normals are unit vectors
        arrays = {"points": pts.numpy().astype(np.float64),
                  "normals": nrm.numpy().astype(np.float32)}
        if key is not None:
            try:
                self.cache.put(key, arrays)
            except OSError as err:  # read-only dataset folder, full disk: run uncached
                warnings.warn(f"BreakingBad: cannot write the cache under "
                              f"{str(self.cache.root)!r} ({err}); continuing without it",
                              RuntimeWarning, stacklevel=2)
                self.cache = None
        return arrays["points"], arrays["normals"]

    def _item_generator(self, index: int) -> torch.Generator:
        if self.seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            return sample_generator(seed, self.epoch, index)
        return sample_generator(self.seed, self.epoch, index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        index = int(index)  # numpy / 0-d tensor indices from samplers
        if not -n <= index < n:
            raise IndexError(f"index: expected in [-{n}, {n}), got {index}")
        index = index % n
        gen = self._item_generator(index)
        pick = sample_generator(0 if self.seed is None else self.seed, self.epoch, index)
        cur = index
        for _attempt in range(self.max_retries + 1):
            name = self.samples[cur][0]
            if name not in self.load_failures:
                try:
                    return self._make_item(cur, gen)
                except (MeshReadError, OSError) as err:
                    if self.strict:
                        raise BreakingBadError(getattr(err, "path", name),
                                               f"cannot load piece ({err})") from err
                    self._record_failure(name, err)
            if len(self.load_failures) >= n:
                break
            cur = int(torch.randint(n, (1,), generator=pick))
        raise RuntimeError(f"BreakingBad: could not load a sample after {self.max_retries} "
                           f"replacements starting from index {index} "
                           f"({len(self.load_failures)} broken samples so far)")

    def _record_failure(self, name: str, err: Exception) -> None:
        self.load_failures[name] = str(err)
        if not self._warned_load:
            self._warned_load = True
            warnings.warn(f"BreakingBad: failed to load {name} ({err}); it is replaced by "
                          f"another sample. Further failures are counted in the dataset's "
                          f".load_failures without a warning", RuntimeWarning, stacklevel=3)

    def _make_item(self, index: int, gen: torch.Generator) -> dict[str, Any]:
        name, pieces = self.samples[index]
        pts_list, nrm_list = zip(*(self._piece_points(p) for p in pieces), strict=True)
        dt = torch.float64
        pts = torch.as_tensor(np.stack(pts_list), dtype=dt)  # (n, N, 3) object frame
        nrm = torch.as_tensor(np.stack(nrm_list), dtype=dt)
        num = pts.shape[0]
        center = torch.zeros(3, dtype=dt)
        scale = torch.ones((), dtype=dt)
        if self.normalize:
            center = pts.reshape(-1, 3).mean(0)
            scale = (pts - center).norm(dim=-1).max().clamp_min(torch.finfo(dt).tiny)
            pts = (pts - center) / scale
        if self.shuffle_parts:
            order = torch.randperm(num, generator=gen)
            pts, nrm = pts[order], nrm[order]
        trans = pts.mean(1)  # (n, 3) part centroids
        pts = pts - trans[:, None]
        if self.rotate:
            R = haar_rotation(num, generator=gen, dtype=dt)
        else:
            R = torch.eye(3, dtype=dt).expand(num, 3, 3).clone()
        pts = pts @ R.transpose(-1, -2)
        nrm = nrm @ R.transpose(-1, -2)
        rot = R.transpose(-1, -2)
        if self.shuffle_points:
            perm = torch.stack([torch.randperm(pts.shape[1], generator=gen) for _ in range(num)])
            pts = torch.gather(pts, 1, perm[..., None].expand_as(pts))
            nrm = torch.gather(nrm, 1, perm[..., None].expand_as(nrm))
        if self.transform is not None:
            out = self.transform({"points": pts, "normals": nrm}, gen)
            pts = out["points"]
            nrm = out.get("normals", nrm) if out.get("normals") is not None else None
            if out.get("transform") is not None:
                T = out["transform"].to(dt)
                A_inv = torch.linalg.inv(T[..., :3, :3])
                rot = rot @ A_inv
                trans = trans - (rot @ T[..., :3, 3:]).squeeze(-1)
            if nrm is None or nrm.shape != pts.shape:
                nrm = None
        P = self.max_parts
        N = pts.shape[1]
        f32 = torch.float32
        points = torch.zeros(P, N, 3, dtype=f32)
        points[:num] = pts.to(f32)
        rot_p = torch.eye(3, dtype=f32).repeat(P, 1, 1)
        rot_p[:num] = rot.to(f32)
        trans_p = torch.zeros(P, 3, dtype=f32)
        trans_p[:num] = trans.to(f32)
        bad = ~(torch.isfinite(points[:num]).flatten(1).all(1)
                & torch.isfinite(trans_p[:num]).all(1))
        if bool(bad.any()):  # checked after the cast: finite float64 may overflow float32
            j = int(bad.float().argmax())
            src = int(order[j]) if self.shuffle_parts else j
            raise MeshReadError(pieces[src], f"piece {src} of {name}: coordinates overflow "
                                             f"float32")
        if not bool(torch.isfinite(center.to(f32)).all() & torch.isfinite(scale.to(f32))):
            raise MeshReadError(pieces[0], f"object {name}: its centre/scale overflow "
                                           f"float32")
        valid = torch.zeros(P, dtype=torch.bool)
        valid[:num] = True
        parts = name.split("/")
        item: dict[str, Any] = {
            "points": points,
            "valid": valid,
            "rot": rot_p,
            "trans": trans_p,
            "num_parts": num,
            "name": name,
            "category": parts[1] if len(parts) >= 4 else parts[0],
            "index": index,
            "center": center.to(f32),
            "scale": scale.to(f32),
        }
        if self.with_normals:
            normals = torch.zeros(P, N, 3, dtype=f32)
            if nrm is not None:
                normals[:num] = nrm.to(f32)
            item["normals"] = normals
        return item

    collate = staticmethod(collate_parts)

    def __repr__(self) -> str:
        return (f"BreakingBad(root={str(self.root)!r}, subset={self.subsets}, "
                f"split={self.split!r}, samples={len(self)}, max_parts={self.max_parts}, "
                f"num_points={self.num_points})")
