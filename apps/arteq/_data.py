"""Synthetic (or AMASS) body scans for ArtEq training and evaluation.

Every item is one posed body: a scan (``points (N, 3)``, metres), the ArtEq part label of
every point (argmax of the barycentrically interpolated skinning weights, hands merged into
the wrists and feet into the ankles: :func:`geo3d.body.arteq_part_labels`) and the ground
truth body (``betas``, ``global_orient (3, 3)``, ``body_pose (23, 3, 3)`` local SMPL joint
rotations, ``transl``, the 24 SMPL ``joints``). Vertices are not stored: the module poses
the body model with the ground-truth parameters (the same model that generated the scans).

Splits (synthetic data, :mod:`geo3d.body`): subjects (betas ~ N(0, 1) of the body model's
shape space) and motions (:func:`geo3d.body.synthetic_motions`, each a different seeded
draw) are disjoint between train, val and test. Test conditions:

* ``in_dist`` — held-out subjects performing held-out in-distribution motions (upright,
  heading-only root rotation as generated);
* ``rotated`` — the same scans, each rotated by a fixed Haar-uniform random rotation;
* ``ood`` — held-out subjects in out-of-distribution poses at the joint limits
  (:func:`geo3d.body.extreme_poses`; their root rotation is uniformly random);
* ``partial`` — single-view depth-camera scans (:func:`geo3d.body.depth_camera_scan`) of
  the ``in_dist`` bodies, camera at a random azimuth, resampled to ``num_points``.

Training items are rotated by a fresh Haar-uniform rotation each epoch when
``train_rotate`` (points, joints, ``global_orient`` and ``transl`` consistently: see
:func:`rotate_item`); validation items by a fixed one.

Generated scans are cached (atomic writes) under ``root`` in a folder keyed by every
generation parameter and the body model file, so reruns skip generation.

AMASS (the reference's setup): with ``amass_root`` set, train/val/test come from the
``.npz`` sequences found there (:func:`geo3d.body.find_amass_files`), split by subject
folder (the last ``amass_test_subjects`` subject folders in sorted order are the test set,
the one before them validation), with the user's SMPL model file as ``body_model``. The
ood condition then poses the test subjects' shapes in :func:`geo3d.body.extreme_poses`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from geo3d._atomic import atomic_write_bytes, atomic_write_text

__all__ = [
    "ArtEqDataModule",
    "ScanSet",
    "CONDITIONS",
    "rotate_item",
    "resolve_body_model",
    "load_body",
    "generate_scans",
]

#: Test conditions, in the order of the test dataloaders.
CONDITIONS = ("in_dist", "ood", "rotated", "partial")
_FORMAT = 2  # bump when the cached layout or the generator changes


def _cache_dir() -> Path:
    root = os.environ.get("GEO3D_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "geo3d") / "body"


def resolve_body_model(spec: str) -> Path:
    """The model file of a ``body_model`` setting.

    Args:
        spec: ``"anny"`` (the Anny-derived SMPL-layout model, built once and cached:
            :func:`geo3d.body._anny.anny_smpl_model_path`), ``"tiny"`` (the procedural test
            body, :func:`geo3d.body.tiny_body_dict`, written once to the cache), or a path
            to an SMPL ``.npz``/``.pkl`` file or smplx model folder.

    Returns:
        The model file's path.

    Raises:
        FileNotFoundError: a path that does not exist (message: where to get SMPL files).
    """
    if spec == "tiny":
        from geo3d.body import write_tiny_body

        p = _cache_dir() / "tiny_body.npz"
        if not p.is_file():
            write_tiny_body(p)
        return p
    if spec == "anny":
        from geo3d.body._anny import anny_smpl_model_path

        return anny_smpl_model_path()
    from geo3d.body import find_model_file

    return find_model_file(spec, model_type="smpl")


def load_body(spec: str, gender: str = "neutral", num_betas: int = 10,
              dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Load the body model named by ``spec`` (see :func:`resolve_body_model`) with smplx."""
    from geo3d.body import load_body_model

    path = resolve_body_model(spec)
    kw: dict[str, Any] = {"num_betas": num_betas, "dtype": dtype}
    if Path(spec).is_dir():
        kw["gender"] = gender
    return load_body_model(path, **kw)


def _check_pos_int(name: str, v: Any, minimum: int = 1) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {v!r}")


def rotate_item(item: dict[str, Tensor], g: Tensor) -> dict[str, Tensor]:
    """Rotate a scan and its ground truth about the origin by ``g``.

    ``points' = g points``, ``joints' = g joints``, ``global_orient' = g global_orient`` and
    ``transl' = g (root + transl) - root`` where ``root`` is the rest-pose root joint of the
    subject (``item["root"]``): SMPL rotates the body about its root joint, then translates,
    so this keeps ``body(params') = g body(params)`` exactly. ``body_pose`` and ``betas`` are
    unchanged (they are invariant).

    Args:
        item: a dict with ``points (..., N, 3)``, ``joints (..., J, 3)``,
            ``global_orient (..., 3, 3)``, ``transl (..., 3)`` and ``root (..., 3)``.
        g: rotation, shape :math:`(..., 3, 3)`.

    Returns:
        A new dict (other entries shared) with ``rot`` = ``g`` composed with any earlier one.
    """
    out = dict(item)
    gt = g.transpose(-1, -2)
    out["points"] = item["points"] @ gt  # (..., N, 3) @ (..., 3, 3) broadcasts
    out["joints"] = item["joints"] @ gt
    out["global_orient"] = g @ item["global_orient"]
    root = item["root"]
    out["transl"] = ((g @ (root + item["transl"]).unsqueeze(-1)).squeeze(-1) - root)
    prev = item.get("rot")
    out["rot"] = g if prev is None else g @ prev
    return out


# ---------------------------------------------------------------------------- generation
def _subject_betas(n: int, num_betas: int, std: float, g: torch.Generator) -> Tensor:
    return std * torch.randn(n, num_betas, generator=g, dtype=torch.float64)


def _synthetic_frames(kind: str, subjects: Tensor, motions: int, frames: int, stride: int,
                      ood: int, g: torch.Generator) -> dict[str, Tensor]:
    """(betas, pose axis-angle (M, 72), transl) of a split."""
    from geo3d.body import extreme_poses, synthetic_motions

    if kind == "ood":
        m = extreme_poses(ood, generator=g)
        pose = m.poses
        transl = m.trans
        idx = torch.arange(ood) % len(subjects)
        return {"betas": subjects[idx], "pose": pose, "transl": transl}
    ms = synthetic_motions(motions, frames, generator=g)
    poses, trans, betas = [], [], []
    for i, m in enumerate(ms):
        sel = torch.arange(0, m.num_frames, stride)
        poses.append(m.poses[sel])
        trans.append(m.trans[sel])
        # subjects cycle over frames: every motion is seen on several bodies
        betas.append(subjects[(i + torch.arange(len(sel))) % len(subjects)])
    return {"betas": torch.cat(betas), "pose": torch.cat(poses), "transl": torch.cat(trans)}


def _amass_frames(files: list[Path], stride: int, num_betas: int) -> dict[str, Tensor]:
    from geo3d.body import read_amass

    poses, trans, betas = [], [], []
    for f in files:
        m = read_amass(f)
        sel = torch.arange(0, m.num_frames, stride)
        p = m.smpl_poses()[sel]
        b = torch.nn.functional.pad(m.betas[:num_betas].double(),
                                    (0, max(0, num_betas - m.betas.shape[0])))
        poses.append(p.double())
        trans.append(m.trans[sel].double())
        betas.append(b.expand(len(sel), -1))
    if not poses:
        return {"betas": torch.zeros(0, num_betas, dtype=torch.float64),
                "pose": torch.zeros(0, 72, dtype=torch.float64),
                "transl": torch.zeros(0, 3, dtype=torch.float64)}
    return {"betas": torch.cat(betas), "pose": torch.cat(poses), "transl": torch.cat(trans)}


def _camera(g: torch.Generator, centre: Tensor, distance: float) -> Tensor:
    from geo3d.body import look_at

    az = float(torch.rand(1, generator=g, dtype=torch.float64)) * 2 * math.pi
    h = float(torch.rand(1, generator=g, dtype=torch.float64)) * 0.6 - 0.3
    eye = centre + torch.tensor([distance * math.sin(az), h, distance * math.cos(az)],
                                dtype=torch.float64)
    return look_at(eye, centre)


def generate_scans(body: torch.nn.Module, frames: dict[str, Tensor], num_points: int,
                   noise_std: float, g: torch.Generator, partial: bool = False,
                   resolution: int = 160, batch: int = 16) -> dict[str, Tensor]:
    """Pose ``body`` for every frame and scan it.

    Args:
        body: smplx SMPL-layout model (24 joints).
        frames: ``betas (M, K)``, ``pose (M, 72)`` axis-angle, ``transl (M, 3)``.
        num_points: ``N`` points per scan.
        noise_std: Gaussian position noise (metres; full scans only).
        g: generator for point sampling, noise and cameras.
        partial: single-view depth scans (open3d ray casting) resampled to ``N`` points
            (repeated at random when the view has fewer hits, subsampled otherwise).
        resolution: depth image width = height in pixels (partial scans).
        batch: bodies posed per smplx call.

    Returns:
        ``points (M, N, 3)`` float32, ``labels (M, N)`` int64 (ArtEq parts),
        ``betas (M, K)``, ``global_orient (M, 3, 3)``, ``body_pose (M, 23, 3, 3)``,
        ``transl (M, 3)``, ``joints (M, 24, 3)``, ``root (M, 3)`` (rest-pose root joint),
        all float32 but the labels.
    """
    from geo3d.body import depth_camera_scan, pinhole_intrinsics, pose_body, sample_surface_scan
    from geo3d.rotations import axis_angle_to_matrix

    M = frames["pose"].shape[0]
    faces = body.faces_tensor.long() if hasattr(body, "faces_tensor") else \
        torch.as_tensor(body.faces.astype("int64"))
    weights = body.lbs_weights.double()
    dt = body.v_template.dtype
    out: dict[str, list[Tensor]] = {k: [] for k in ("points", "labels", "joints", "root")}
    K = None
    if partial:
        K = pinhole_intrinsics(resolution, resolution, 50.0)
    for s in range(0, M, batch):
        b = frames["betas"][s:s + batch].to(dt)
        p = frames["pose"][s:s + batch].to(dt)
        t = frames["transl"][s:s + batch].to(dt)
        with torch.no_grad():
            posed = pose_body(body, p, b, t)
            rest = pose_body(body, torch.zeros_like(p), b)
        verts = posed.vertices.double()
        for i in range(verts.shape[0]):
            if partial:
                centre = posed.joints[i, 0].double()
                cam = _camera(g, centre, 2.6)
                scan = depth_camera_scan(verts[i], faces, weights, K, cam, resolution,
                                         resolution)
                n_hit = scan.points.shape[0]
                if n_hit == 0:
                    raise ValueError("partial: expected the camera to see the body, got no "
                                     "hit (increase resolution)")
                if n_hit >= num_points:
                    sel = torch.randperm(n_hit, generator=g)[:num_points]
                else:
                    sel = torch.cat([torch.arange(n_hit),
                                     torch.randint(n_hit, (num_points - n_hit,), generator=g)])
                pts, lab = scan.points[sel], scan.arteq_labels[sel]
                if noise_std > 0:
                    pts = pts + noise_std * torch.randn(pts.shape, generator=g,
                                                        dtype=torch.float64)
            else:
                scan = sample_surface_scan(verts[i], faces, weights, num_points,
                                           noise_std=noise_std, generator=g)
                pts, lab = scan.points, scan.arteq_labels
            out["points"].append(pts.float())
            out["labels"].append(lab.long())
        out["joints"].append(posed.joints[:, :24].float())
        out["root"].append(rest.joints[:, 0].float())
    R = axis_angle_to_matrix(frames["pose"].reshape(M, 24, 3).double()).float()
    return {
        "points": torch.stack(out["points"]) if M else torch.zeros(0, num_points, 3),
        "labels": torch.stack(out["labels"]) if M else torch.zeros(0, num_points,
                                                                   dtype=torch.long),
        "betas": frames["betas"].float(),
        "global_orient": R[:, 0].contiguous(),
        "body_pose": R[:, 1:].contiguous(),
        "transl": frames["transl"].float(),
        "joints": torch.cat(out["joints"]) if M else torch.zeros(0, 24, 3),
        "root": torch.cat(out["root"]) if M else torch.zeros(0, 3),
    }


# ---------------------------------------------------------------------------- dataset
class ScanSet(Dataset):
    """Items of a generated split, optionally rotated by a Haar-uniform random rotation.

    Args:
        data: the dict :func:`generate_scans` returns.
        rotate: ``"none"``, ``"fixed"`` (one rotation per item, the same every epoch: the
            evaluation sets) or ``"epoch"`` (a fresh one per item and epoch: training).
        seed: seed of the rotations (item ``i`` of epoch ``e`` uses
            ``seed * 1_000_003 + e * 7_919 + i``, so workers and resumed runs agree).
    """

    def __init__(self, data: dict[str, Tensor], rotate: str = "none", seed: int = 0) -> None:
        if rotate not in ("none", "fixed", "epoch"):
            raise ValueError(f"rotate: expected 'none', 'fixed' or 'epoch', got {rotate!r}")
        self.data, self.rotate, self.seed, self.epoch = data, rotate, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.data["points"].shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {k: v[i] for k, v in self.data.items()}
        item["index"] = torch.tensor(i)
        item["rot"] = torch.eye(3)
        if self.rotate != "none":
            from geo3d.rotations import random_rotation_matrix

            e = self.epoch if self.rotate == "epoch" else 0
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + e * 7_919 + int(i))
            R = random_rotation_matrix(generator=g, dtype=torch.float64).float()
            item = rotate_item({**item, "rot": None}, R)
            item["index"] = torch.tensor(i)
        return item


#: the tensors of a generated split and their shapes after the scan axis (``N``: points per
#: scan, ``K``: betas)
SPLIT_KEYS = {"points": ("N", 3), "labels": ("N",), "betas": ("K",), "global_orient": (3, 3),
              "body_pose": (23, 3, 3), "transl": (3,), "joints": (24, 3), "root": (3,)}


def _read_split(path: Path, num_points: int, num_betas: int) -> dict[str, Tensor]:
    """A cached split (``torch.load(weights_only=True)``), checked against
    :data:`SPLIT_KEYS` for ``num_points`` points and ``num_betas`` betas per scan.

    Raises:
        ValueError: the file cannot be read or is not a split of this configuration
            (a key missing, a shape that differs, scan counts that disagree).
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure: a bad cache file
        raise ValueError(f"data cache {str(path)!r} cannot be read ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:120]})") from err
    if not isinstance(data, dict) or not set(SPLIT_KEYS) <= set(data):
        got = sorted(map(str, data))[:10] if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"data cache {str(path)!r} is not a generated split (expected keys "
                         f"{sorted(SPLIT_KEYS)}, got {got})")
    sizes = {"N": num_points, "K": num_betas}
    one_scan_count = len({len(v) for v in data.values() if isinstance(v, Tensor) and v.dim()}) == 1
    for k, tail in SPLIT_KEYS.items():
        want = tuple(sizes.get(t, t) for t in tail)  # type: ignore[arg-type]
        v = data[k]
        if not isinstance(v, Tensor) or tuple(v.shape[1:]) != want or not one_scan_count:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"data cache {str(path)!r} is not a split of this configuration "
                             f"('{k}': expected (S, {', '.join(map(str, want))}) with one S "
                             f"for every key, got {got})")
    return data


class ArtEqDataModule(L.LightningDataModule):
    """Scans of posed bodies with part labels and ground-truth SMPL parameters.

    Args:
        root: folder of the generated-data cache.
        body_model: ``"anny"`` (default; the Anny-derived SMPL-layout body), ``"tiny"`` (the
            procedural test body) or an SMPL ``.npz``/``.pkl``/folder (see
            :func:`resolve_body_model`).
        gender: for a folder ``body_model`` (``"male"`` in the reference's setup).
        num_betas: shape coefficients.
        num_points: points per scan (ArtEq: 5000).
        noise_std: Gaussian point noise in metres (ArtEq: 1e-3).
        train_subjects, val_subjects, test_subjects: disjoint random subjects (betas drawn
            from N(0, ``betas_std``²)).
        train_motions, val_motions, test_motions: disjoint synthetic motions (cycling
            through :data:`geo3d.body.MOTION_KINDS`).
        frames_per_motion, frame_stride: frames generated per motion, every
            ``frame_stride``-th kept.
        ood_poses: poses of the ``ood`` test set.
        partial_resolution: depth image size of the ``partial`` test scans.
        train_rotate: Haar-uniform rotation of every training item, fresh per epoch.
        val_rotate: fixed Haar-uniform rotation of every validation item.
        test_conditions: which of :data:`CONDITIONS` the test loaders cover (in this order).
        batch_size, num_workers: loader settings.
        seed: seed of subjects, motions, scans and rotations.
        amass_root: folder of AMASS ``.npz`` sequences (replaces the synthetic motions).
        amass_frame_stride: keep every k-th AMASS frame.
        amass_test_subjects: subject folders held out for testing (AMASS).
    """

    def __init__(
        self,
        root: str = "runs/arteq/data",
        body_model: str = "anny",
        gender: str = "neutral",
        num_betas: int = 10,
        num_points: int = 5000,
        noise_std: float = 1e-3,
        train_subjects: int = 40,
        val_subjects: int = 4,
        test_subjects: int = 8,
        betas_std: float = 1.0,
        train_motions: int = 28,
        val_motions: int = 4,
        test_motions: int = 7,
        frames_per_motion: int = 60,
        frame_stride: int = 2,
        ood_poses: int = 64,
        partial_resolution: int = 160,
        train_rotate: bool = True,
        val_rotate: bool = True,
        test_conditions: list[str] | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        amass_root: str | None = None,
        amass_frame_stride: int = 5,
        amass_test_subjects: int = 2,
    ) -> None:
        super().__init__()
        for name in ("num_betas", "num_points", "train_subjects", "val_subjects",
                     "test_subjects", "train_motions", "val_motions", "test_motions",
                     "frames_per_motion", "frame_stride", "ood_poses", "partial_resolution",
                     "batch_size", "amass_frame_stride", "amass_test_subjects"):
            _check_pos_int(name, locals()[name])
        _check_pos_int("num_workers", num_workers, 0)
        for name, v in (("noise_std", noise_std), ("betas_std", betas_std)):
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and
                                           0 <= v < float("inf")):
                raise ValueError(f"{name}: expected a non-negative finite number, got {v!r}")
        for name, v in (("train_rotate", train_rotate), ("val_rotate", val_rotate)):
            if not isinstance(v, bool):  # bool("no") is True: refuse rather than guess
                raise ValueError(f"{name}: expected True or False, got {v!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed: expected an int, got {seed!r}")
        conds = list(CONDITIONS if test_conditions is None else test_conditions)
        bad = [c for c in conds if c not in CONDITIONS]
        if bad or not conds:
            raise ValueError(f"test_conditions: expected names from {', '.join(CONDITIONS)}, "
                             f"got {test_conditions!r}")
        self.save_hyperparameters()
        self.conditions = tuple(conds)
        self._data: dict[str, dict[str, Tensor]] = {}

    # -------------------------------------------------------------- generation + cache
    def _key(self) -> str:
        h = dict(self.hparams)
        for k in ("batch_size", "num_workers", "train_rotate", "val_rotate", "test_conditions",
                  "root"):
            h.pop(k, None)
        path = resolve_body_model(h["body_model"])
        st = path.stat()
        h["body_file"] = [str(path.resolve()), st.st_size, st.st_mtime_ns]
        h["format"] = _FORMAT
        return hashlib.sha256(json.dumps(h, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def cache_dir(self) -> Path:
        """Folder of this configuration's generated splits."""
        return Path(self.hparams.root) / f"arteq_{self._key()}"

    def _splits(self) -> tuple[str, ...]:
        return ("train", "val", *self.conditions)

    def prepare_data(self) -> None:
        """Generate every split not yet cached (rank 0 only, under DDP)."""
        d = self.cache_dir()
        missing = [s for s in self._splits() if s != "rotated" and not (d / f"{s}.pt").is_file()]
        if not missing:
            return
        try:  # before minutes of generation, not at the first write
            d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"data.root: cannot create the data cache {str(d)!r} "
                             f"({type(err).__name__}: {err.strerror or err})") from err
        for split, data in self._generate(missing).items():
            buf = io.BytesIO()
            torch.save(data, buf)
            atomic_write_bytes(d / f"{split}.pt", buf.getvalue())
        meta = {k: v for k, v in dict(self.hparams).items()}
        atomic_write_text(d / "config.json", json.dumps(meta, indent=2, default=str))

    def _generate(self, splits: list[str]) -> dict[str, dict[str, Tensor]]:
        h = self.hparams
        body = load_body(h.body_model, h.gender, h.num_betas, torch.float64)
        g = torch.Generator().manual_seed(int(h.seed))
        frames: dict[str, dict[str, Tensor]] = {}
        if h.amass_root is not None:
            frames = self._amass_split_frames()
            test_betas = frames["in_dist"]["betas"]
            subj = torch.unique(test_betas, dim=0) if len(test_betas) else \
                torch.zeros(1, h.num_betas, dtype=torch.float64)
            frames["ood"] = _synthetic_frames("ood", subj, 0, 0, 1, h.ood_poses, g)
        else:
            subs = {s: _subject_betas(n, h.num_betas, h.betas_std, g) for s, n in (
                ("train", h.train_subjects), ("val", h.val_subjects),
                ("test", h.test_subjects))}
            for split, subj, nm in (("train", subs["train"], h.train_motions),
                                    ("val", subs["val"], h.val_motions),
                                    ("in_dist", subs["test"], h.test_motions)):
                frames[split] = _synthetic_frames("motion", subj, nm, h.frames_per_motion,
                                                  h.frame_stride, 0, g)
            frames["ood"] = _synthetic_frames("ood", subs["test"], 0, 0, 1, h.ood_poses, g)
        frames["partial"] = frames["in_dist"]
        out = {}
        for split in ("train", "val", "in_dist", "ood", "partial"):
            # one generator per split, derived from the seed: adding a split to the
            # configuration does not change the scans of the others
            gs = torch.Generator().manual_seed(int(h.seed) * 1009 + _SPLIT_SEED[split])
            if split in splits:
                out[split] = generate_scans(body, frames[split], h.num_points, h.noise_std, gs,
                                            partial=(split == "partial"),
                                            resolution=h.partial_resolution)
        return out

    def _amass_split_frames(self) -> dict[str, dict[str, Tensor]]:
        from geo3d.body import find_amass_files

        h = self.hparams
        files = find_amass_files(h.amass_root)
        if not files:
            raise FileNotFoundError(f"amass_root: expected AMASS .npz sequences under "
                                    f"{h.amass_root!r}, found none")
        subjects = sorted({f.parent.name for f in files})
        if len(subjects) < h.amass_test_subjects + 2:
            raise ValueError(f"amass_root: expected at least {h.amass_test_subjects + 2} subject "
                             f"folders (train, val, test), got {len(subjects)}: {subjects}")
        test = set(subjects[-h.amass_test_subjects:])
        val = {subjects[-h.amass_test_subjects - 1]}
        pick = {"train": [f for f in files if f.parent.name not in test | val],
                "val": [f for f in files if f.parent.name in val],
                "in_dist": [f for f in files if f.parent.name in test]}
        return {k: _amass_frames(v, h.amass_frame_stride, h.num_betas) for k, v in pick.items()}

    def split_data(self, split: str) -> dict[str, Tensor]:
        """The generated tensors of ``split`` (``train``, ``val`` or a condition). A cache
        file that cannot be read (truncated, corrupted, not this module's) is regenerated,
        with a warning: it is derived data, and the scans are the same (one generator per
        split, from the seed)."""
        if split == "rotated":
            split = "in_dist"
        if split not in self._data:
            path = self.cache_dir() / f"{split}.pt"
            if not path.is_file():
                self.prepare_data()
            n, nb = int(self.hparams.num_points), int(self.hparams.num_betas)
            try:
                data = _read_split(path, n, nb)
            except ValueError as err:
                import warnings

                warnings.warn(f"{err}; regenerating it", UserWarning, stacklevel=2)
                path.unlink(missing_ok=True)
                self.prepare_data()
                data = _read_split(path, n, nb)
            self._data[split] = data
        return self._data[split]

    def dataset(self, split: str) -> ScanSet:
        """The :class:`ScanSet` of ``split`` (``train``, ``val`` or a test condition)."""
        h = self.hparams
        if split == "train":
            return ScanSet(self.split_data("train"), "epoch" if h.train_rotate else "none",
                           int(h.seed))
        if split == "val":
            return ScanSet(self.split_data("val"), "fixed" if h.val_rotate else "none",
                           int(h.seed) + 1)
        if split not in CONDITIONS:
            raise ValueError(f"split: expected train, val or one of {CONDITIONS}, got {split!r}")
        return ScanSet(self.split_data(split), "fixed" if split == "rotated" else "none",
                       int(h.seed) + 2)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(self.dataset(split), batch_size=h.batch_size, shuffle=shuffle,
                          num_workers=h.num_workers, persistent_workers=h.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(c, False) for c in self.conditions]

    def predict_dataloader(self) -> list[DataLoader]:
        return self.test_dataloader()


_SPLIT_SEED = {"train": 1, "val": 2, "in_dist": 3, "ood": 4, "partial": 5}
