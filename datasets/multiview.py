"""View pairs with ground-truth dense correspondences, from rendered multiview datasets.

Reads the layout written by ``geo3d data render`` (:mod:`geo3d.datasets.multiview_render`)
and the reference's BlenderProc renderings (qq456cvb/3DCorrEnhance: per object
``color_%06d.png``, ``depth_%06d.png`` in millimetres, ``mask_%06d.png``; one shared
``data/obj_poses.npy`` of world_to_cam poses and the fixed K with fx = fy = 560,
cx = cy = 256 — pass ``poses=`` for those). Pairs follow the reference's
``AugmentedDataset`` filter: two different views whose camera rotations differ by at most
``max_angle`` = 120°. Correspondences go through 3D (:func:`geo3d.render.view_correspondences`).

Reference: Y. You, Y. Li, C. Deng, Y. Wang, L. Guibas, "Multiview Equivariance Improves 3D
Correspondence Understanding with Minimal Feature Finetuning", ICLR 2025
(https://openreview.net/forum?id=CNO4rbSV6v); code qq456cvb/3DCorrEnhance,
``data_utils/dataset.py`` (``ObjaverseCorrDataset``, ``AugmentedDataset``) and
``utils/functions.py`` (``img_coord_2_obj_coord``: pixel centres at integer coordinates).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo3d._atomic import atomic_path

__all__ = ["MultiviewPairs", "REFERENCE_INTRINSICS", "find_objects", "load_view", "plot_pair"]

#: The reference's intrinsics (35 mm lens, 32 mm sensor, 512 px): fx = fy = 560, cx = cy = 256.
REFERENCE_INTRINSICS = np.array([[560.0, 0.0, 256.0], [0.0, 560.0, 256.0], [0.0, 0.0, 1.0]])


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            return np.asarray(im, dtype=np.uint16) if im.mode != "I" else np.asarray(im).astype(np.uint16)
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        return np.array(im)  # a writable copy


def load_view(obj_dir: str | os.PathLike, index: int) -> dict[str, np.ndarray]:
    """One view of an object folder: ``rgb (H, W, 3)`` uint8, ``depth (H, W)`` float64
    metres (from millimetres), ``mask (H, W)`` bool.

    Raises:
        ValueError: a missing file (names it) or sizes that disagree.
    """
    d = Path(obj_dir)
    paths = {k: d / f"{k}_{index:06d}.png" for k in ("color", "depth", "mask")}
    for k, p in paths.items():
        if not p.is_file():
            raise ValueError(f"{k}: expected file {str(p)!r}, got missing")
    rgb = _read_png(paths["color"])
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    depth = _read_png(paths["depth"]).astype(np.float64) / 1000.0
    mask = _read_png(paths["mask"])
    mask = (mask if mask.ndim == 2 else mask[..., 0]) > 0
    if not (rgb.shape[:2] == depth.shape == mask.shape):
        raise ValueError(
            f"depth: expected the colour / depth / mask sizes to agree, got {rgb.shape[:2]}, {depth.shape}, {mask.shape}"
        )
    return {"rgb": rgb[..., :3], "depth": depth, "mask": mask & (depth > 0)}


def find_objects(root: str | os.PathLike, max_depth: int = 3) -> list[str]:
    """Object folders under ``root``: ``objects.txt`` when present, else every folder
    (up to ``max_depth`` levels) holding ``color_000000.png``. Folders written by
    ``geo3d data render`` without their completion marker (``meta.json`` but no
    ``complete.json``: an interrupted write) and temporary ``.tmp-*`` folders are skipped."""
    root = Path(root)
    lst = root / "objects.txt"
    if lst.is_file():
        names = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
    else:
        names = []
        frontier = [root]
        for _ in range(max_depth):
            nxt = []
            for d in frontier:
                for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
                    if (sub / "color_000000.png").is_file():
                        names.append(sub.relative_to(root).as_posix())
                    else:
                        nxt.append(sub)
            frontier = nxt
    out = []
    for n in names:
        d = root / n
        if (d / "meta.json").is_file() and not (d / "complete.json").is_file():
            continue
        if (d / "color_000000.png").is_file():
            out.append(n)
    return out


class MultiviewPairs(torch.utils.data.Dataset):
    """Pairs of views of one object with dense ground-truth correspondences.

    Item ``k`` is deterministic: object ``k // pairs_per_object``, and a pair of views
    drawn from a generator seeded with ``(seed, k)`` among the object's valid pairs
    (different views, both non-empty, relative camera rotation <= ``max_angle``).

    Args:
        root: dataset root.
        objects: object names (default :func:`find_objects`).
        poses: world_to_cam poses ``(N, 4, 4)`` (array or ``.npy`` path) for every object,
            e.g. the reference's ``data/obj_poses.npy``; default each object's ``poses.npy``.
        intrinsics: ``K (3, 3)`` (array or ``.npy``); default each object's
            ``intrinsics.npy``, else :data:`REFERENCE_INTRINSICS`.
        num_points: foreground pixels sampled per view (with replacement when fewer).
        pairs_per_object: items per object.
        max_angle: largest relative rotation of a pair, degrees (reference: 120).
        threshold: 3D distance of a correspondence, mesh units (see
            :func:`geo3d.render.view_correspondences`).
        seed: seed of pair and pixel sampling.

    Returns (``__getitem__``): a dict with ``image1/image2 (3, H, W)`` float32 in [0, 1],
    ``depth1/depth2 (H, W)`` float32 metres, ``mask1/mask2 (H, W)`` bool, ``K (3, 3)``,
    ``pose1/pose2 (4, 4)`` world_to_cam, ``pixels1/pixels2 (M, 2)`` long sampled foreground
    pixels ``(u, v)`` of each view, ``points1/points2 (M, 3)`` their object-frame 3D points
    (from depth), ``valid1/valid2 (M,)`` bool (False only for a view with an empty mask,
    whose samples are the dummy pixel (0, 0)), ``corr2 (M, 2)`` long the pixel of view 2 matching ``pixels1`` (-1 where
    none), ``corr_valid (M,)`` bool, ``angle`` (degrees), ``views (2,)`` long, ``object`` str.

    Raises:
        ValueError: no objects, missing poses, pose count not matching the views.

    Example:
        >>> import tempfile
        >>> from geo3d.datasets.multiview_render import RenderSettings, render_dataset
        >>> tmp = tempfile.TemporaryDirectory()
        >>> _ = render_dataset(tmp.name, num_synthetic=1, settings=RenderSettings(size=32, focal=36.0, level=0), progress=False)
        >>> item = MultiviewPairs(tmp.name, num_points=64)[0]
        >>> item["image1"].shape, item["corr2"].shape
        (torch.Size([3, 32, 32]), torch.Size([64, 2]))
        >>> tmp.cleanup()
    """

    def __init__(
        self,
        root: str | os.PathLike,
        objects: Sequence[str] | None = None,
        *,
        poses: Any = None,
        intrinsics: Any = None,
        num_points: int = 3000,
        pairs_per_object: int = 10,
        max_angle: float = 120.0,
        threshold: float = 0.01,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"root: expected a dataset folder, got {str(self.root)!r}")
        self.objects = list(objects) if objects is not None else find_objects(self.root)
        if not self.objects:
            raise ValueError(f"root: expected rendered objects (color_000000.png), found none in {str(self.root)!r}")
        self._poses = None if poses is None else self._load_array("poses", poses, (4, 4))
        self._K = None if intrinsics is None else self._load_array("intrinsics", intrinsics, (3, 3))
        if num_points < 1 or pairs_per_object < 1:
            raise ValueError(f"num_points: expected num_points and pairs_per_object >= 1, got {num_points}, {pairs_per_object}")
        self.num_points = int(num_points)
        self.pairs_per_object = int(pairs_per_object)
        self.max_angle = float(max_angle)
        self.threshold = float(threshold)
        self.seed = int(seed)
        self._pair_cache: dict[str, np.ndarray] = {}

    @staticmethod
    def _load_array(name: str, x: Any, tail: tuple[int, int]) -> np.ndarray:
        arr = np.load(x) if isinstance(x, (str, os.PathLike)) else np.asarray(x, dtype=np.float64)
        if arr.shape[-2:] != tail:
            raise ValueError(f"{name}: expected shape (..., {tail[0]}, {tail[1]}), got {arr.shape}")
        arr = arr.astype(np.float64)
        if name == "poses":  # rigid, bottom row [0, 0, 0, 1], det +1: fail here, not mid-epoch
            from geo3d.render._camera import check_pose

            check_pose(torch.from_numpy(arr), name)
        return arr

    def __len__(self) -> int:
        return len(self.objects) * self.pairs_per_object

    def object_cameras(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(poses (N, 4, 4), K (3, 3))`` of an object."""
        d = self.root / name
        if self._poses is not None:
            poses = self._poses
        elif (d / "poses.npy").is_file():
            poses = np.load(d / "poses.npy")
        else:
            raise ValueError(f"poses: expected {str(d / 'poses.npy')!r} or poses= (e.g. the reference's data/obj_poses.npy), got neither")
        if self._K is not None:
            K = self._K
        elif (d / "intrinsics.npy").is_file():
            K = np.load(d / "intrinsics.npy")
        else:
            K = REFERENCE_INTRINSICS
        return poses, K

    def valid_pairs(self, name: str) -> np.ndarray:
        """``(P, 2)`` view pairs ``(i, j)``, ``i != j``, both non-empty, angle <= max_angle."""
        if name in self._pair_cache:
            return self._pair_cache[name]
        from geo3d.render import relative_rotation_angle

        poses, _ = self.object_cameras(name)
        d = self.root / name
        n = len(poses)
        if not (d / f"color_{n - 1:06d}.png").is_file():
            raise ValueError(f"poses: expected {n} views in {str(d)!r}, got fewer images")
        empty: set[int] = set()
        if (d / "meta.json").is_file():
            empty = set(json.loads((d / "meta.json").read_text()).get("empty_views", []))
        T = torch.from_numpy(poses)
        ang = relative_rotation_angle(T[:, None], T[None, :]).numpy()
        # ties at exactly max_angle are common with icosphere views (120° here): keep them,
        # with a 1e-6° margin so that rounding does not decide
        i, j = np.nonzero((ang <= self.max_angle + 1e-6) & ~np.eye(n, dtype=bool))
        keep = np.array([a not in empty and b not in empty for a, b in zip(i, j, strict=True)], dtype=bool)
        pairs = np.stack([i[keep], j[keep]], axis=1) if len(i) else np.zeros((0, 2), np.int64)
        self._pair_cache[name] = pairs
        return pairs

    def _sample_fg(self, mask: np.ndarray, g: torch.Generator) -> torch.Tensor:
        vv, uu = np.nonzero(mask)
        if len(vv) == 0:
            return torch.zeros((self.num_points, 2), dtype=torch.long)
        if len(vv) >= self.num_points:
            idx = torch.randperm(len(vv), generator=g)[: self.num_points]
        else:
            idx = torch.randint(0, len(vv), (self.num_points,), generator=g)
        idx = idx.numpy()
        return torch.from_numpy(np.stack([uu[idx], vv[idx]], axis=1)).long()

    def __getitem__(self, k: int) -> dict[str, Any]:
        from geo3d.render import depth_to_points, relative_rotation_angle, view_correspondences

        if not 0 <= k < len(self):
            raise IndexError(f"index {k} out of range for {len(self)} items")
        name = self.objects[k // self.pairs_per_object]
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, k]).generate_state(1)[0]))
        pairs = self.valid_pairs(name)
        if len(pairs) == 0:
            raise ValueError(f"max_angle: object {name!r} has no view pair within {self.max_angle} degrees")
        a, b = (int(x) for x in pairs[int(torch.randint(0, len(pairs), (1,), generator=g))])
        poses, K = self.object_cameras(name)
        va, vb = load_view(self.root / name, a), load_view(self.root / name, b)
        Kt = torch.from_numpy(K)
        Ta, Tb = torch.from_numpy(poses[a]), torch.from_numpy(poses[b])
        da, db = torch.from_numpy(va["depth"]), torch.from_numpy(vb["depth"])
        pa = self._sample_fg(va["mask"], g)
        pb = self._sample_fg(vb["mask"], g)
        Pa = depth_to_points(da, Kt, Ta)
        Pb = depth_to_points(db, Kt, Tb)
        _, corr, ok = view_correspondences(da, Kt, Ta, db, Kt, Tb, pa, threshold=self.threshold)
        return {
            "image1": torch.from_numpy(va["rgb"]).permute(2, 0, 1).float() / 255.0,
            "image2": torch.from_numpy(vb["rgb"]).permute(2, 0, 1).float() / 255.0,
            "depth1": da.float(),
            "depth2": db.float(),
            "mask1": torch.from_numpy(va["mask"]),
            "mask2": torch.from_numpy(vb["mask"]),
            "K": Kt.float(),
            "pose1": Ta.float(),
            "pose2": Tb.float(),
            "pixels1": pa,
            "pixels2": pb,
            "points1": Pa[pa[:, 1], pa[:, 0]].float(),
            "points2": Pb[pb[:, 1], pb[:, 0]].float(),
            "valid1": torch.from_numpy(va["mask"])[pa[:, 1], pa[:, 0]],
            "valid2": torch.from_numpy(vb["mask"])[pb[:, 1], pb[:, 0]],
            "corr2": corr,
            "corr_valid": ok,
            "angle": float(relative_rotation_angle(Ta, Tb)),
            "views": torch.tensor([a, b]),
            "object": name,
        }


def plot_pair(item: dict[str, Any], path: str | os.PathLike, *, num_lines: int = 40, seed: int = 0) -> Path:
    """Figure of a pair: RGB, depth and mask of both views, and correspondence lines.

    Args:
        item: a :class:`MultiviewPairs` item.
        path: PNG to write (atomically).
        num_lines: correspondences drawn (a random subset of the valid ones).
        seed: seed of that subset.

    Returns:
        the path written.
    """

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig = plt.figure(figsize=(11, 11))
    gs = fig.add_gridspec(3, 3, height_ratios=[1, 1, 1.25])
    img_axes = []
    for r, s in enumerate(("1", "2")):
        ax = fig.add_subplot(gs[r, 0])
        ax.imshow(item[f"image{s}"].permute(1, 2, 0).numpy())
        ax.set_title(f"view {int(item['views'][r])}: RGB")
        img_axes.append(ax)
        d = item[f"depth{s}"].numpy().copy()
        d[d == 0] = np.nan
        ax = fig.add_subplot(gs[r, 1])
        im = ax.imshow(d, cmap="viridis")
        fig.colorbar(im, ax=ax, fraction=0.046, label="z-depth (m)")
        ax.set_title("depth")
        img_axes.append(ax)
        ax = fig.add_subplot(gs[r, 2])
        ax.imshow(item[f"mask{s}"].numpy(), cmap="gray")
        ax.set_title("mask")
        img_axes.append(ax)
    for a in img_axes:
        a.set_xticks([])
        a.set_yticks([])
    ax = fig.add_subplot(gs[2, :])
    i1 = item["image1"].permute(1, 2, 0).numpy()
    i2 = item["image2"].permute(1, 2, 0).numpy()
    W = i1.shape[1]
    ax.imshow(np.concatenate([i1, i2], axis=1))
    ok = torch.nonzero(item["corr_valid"]).flatten()
    g = torch.Generator().manual_seed(seed)
    sel = ok[torch.randperm(len(ok), generator=g)[:num_lines]]
    cmap = plt.get_cmap("hsv")
    for n, k in enumerate(sel.tolist()):
        u1, v1 = item["pixels1"][k].tolist()
        u2, v2 = item["corr2"][k].tolist()
        c = cmap(n / max(1, len(sel)))
        ax.plot([u1, u2 + W], [v1, v2], "-", color=c, lw=0.8)
        ax.plot([u1, u2 + W], [v1, v2], "o", color=c, ms=2.5)
    ax.set_title(f"{len(ok)} / {len(item['corr_valid'])} matched, {item['angle']:.0f}° apart")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.suptitle(f"{item['object']}")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
