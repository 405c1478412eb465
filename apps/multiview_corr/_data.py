"""LightningDataModule of view pairs for multiview-equivariance finetuning.

Reads folders written by ``geo3d data render`` (:mod:`geo3d.datasets.multiview_render`;
also the reference's BlenderProc layout through :mod:`geo3d.datasets.multiview`), renders
procedural textured objects first when the folder is empty, splits the objects into a
training and a held-out set (by name, deterministic), and yields pairs of views of one
object whose cameras are at most ``max_angle`` apart (the reference's rule, through
:func:`geo3d.apps.multiview_corr._sampling.pair_angle_ok`). Each view is a dict with

* ``rgb (3, H, W)`` float32 in [0, 1], ``depth (H, W)`` float32 z-depth (0 = empty),
  ``mask (H, W)`` bool, ``points (H, W, 3)`` float32 object-frame ("world") 3D point of
  every pixel (from the depth), ``K (3, 3)`` float64, ``world_to_cam (4, 4)`` float64,

the layout the training loss (:func:`~geo3d.apps.multiview_corr._sampling.sample_pixel_pairs`)
and the metrics of :mod:`geo3d.eval` take. Renders (512² in the reference) can be resized
to ``image_size`` pixels on the long side when loaded: RGB with antialiased bilinear
resampling; depth, mask and 3D points by the nearest source pixel (so every point is a true
surface point), and ``K`` rescaled with pixel centres at integer coordinates.

Reference: You et al., "Multiview Equivariance Improves 3D Correspondence Understanding
with Minimal Feature Finetuning", ICLR 2025, arXiv:2411.19458; qq456cvb/3DCorrEnhance
``data_utils/dataset.py`` (``AugmentedDataset``: pairs within 120°).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

__all__ = ["MultiviewCorrDataModule", "ViewPairDataset", "load_view_dict", "split_objects",
           "resize_view"]


def resize_view(view: dict[str, Any], image_size: int | None) -> dict[str, Any]:
    """Resize a view dict so that its long side is ``image_size`` pixels (no-op for ``None``
    or the same size).

    RGB: bilinear with antialiasing; ``depth``, ``mask``, ``points``: nearest source pixel
    (``nearest-exact``: the source pixel whose centre is nearest); ``K``: ``f' = f s``,
    ``c' = (c + 1/2) s - 1/2`` per axis (pixel centres at integer coordinates).

    Raises:
        ValueError: ``image_size`` < 8.
    """
    if image_size is None:
        return view
    if int(image_size) < 8:
        raise ValueError(f"image_size: expected an int >= 8 or None, got {image_size!r}")
    H, W = view["depth"].shape
    s = float(image_size) / max(H, W)
    h, w = max(1, round(H * s)), max(1, round(W * s))
    if (h, w) == (H, W):
        return view
    sy, sx = h / H, w / W
    out = dict(view)
    out["rgb"] = F.interpolate(view["rgb"][None], size=(h, w), mode="bilinear",
                               align_corners=False, antialias=True)[0].clamp(0.0, 1.0)
    near = dict(size=(h, w), mode="nearest-exact")
    out["depth"] = F.interpolate(view["depth"][None, None], **near)[0, 0]
    out["mask"] = F.interpolate(view["mask"][None, None].float(), **near)[0, 0] > 0.5
    out["points"] = F.interpolate(view["points"].permute(2, 0, 1)[None], **near)[0].permute(1, 2, 0)
    K = view["K"].clone()
    K[0, 0], K[0, 2] = K[0, 0] * sx, (K[0, 2] + 0.5) * sx - 0.5
    K[1, 1], K[1, 2] = K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5
    K[0, 1] = K[0, 1] * sx
    out["K"] = K
    return out


def load_view_dict(root: str | os.PathLike, name: str, index: int, poses: np.ndarray,
                   K: np.ndarray, image_size: int | None = None) -> dict[str, Any]:
    """View ``index`` of object ``name`` as a view dict (see the module docstring)."""
    from geo3d.datasets.multiview import load_view

    from geo3d.render import depth_to_points

    v = load_view(Path(root) / name, index)
    Kt = torch.as_tensor(K, dtype=torch.float64)
    T = torch.as_tensor(poses[index], dtype=torch.float64)
    depth = torch.from_numpy(v["depth"])
    mask = torch.from_numpy(v["mask"])
    pts = depth_to_points(depth, Kt, T)
    pts = torch.where(mask[..., None], pts, torch.zeros_like(pts))
    view = {
        "rgb": torch.from_numpy(v["rgb"]).permute(2, 0, 1).float() / 255.0,
        "depth": depth.float(),
        "mask": mask,
        "points": pts.float(),
        "K": Kt,
        "world_to_cam": T,
    }
    return resize_view(view, image_size)


def split_objects(objects: Sequence[str], num_val: int) -> tuple[list[str], list[str]]:
    """Deterministic train / held-out split: the last ``num_val`` objects in the given
    order are held out (``objects.txt`` order for rendered folders: procedural categories
    cycle there, so held-out objects span several categories).

    Raises:
        ValueError: ``num_val`` < 1 or not fewer than the objects.
    """
    names = list(objects)
    if len(set(names)) != len(names):
        raise ValueError(f"objects: expected distinct object names, got {len(names)} names "
                         f"with {len(names) - len(set(names))} repeated")
    if not 1 <= num_val < len(names):
        raise ValueError(f"num_val_objects: expected 1 <= num_val_objects < {len(names)} "
                         f"(the number of objects), got {num_val}")
    return names[:-num_val], names[-num_val:]


class ViewPairDataset(Dataset):
    """Pairs of views of rendered objects; item ``k`` belongs to object
    ``k // pairs_per_object``, its pair is drawn from a generator seeded with
    ``(seed, epoch, k)`` among the object's valid pairs (two different non-empty views
    whose cameras are at most ``max_angle`` degrees apart, by
    :func:`~geo3d.apps.multiview_corr._sampling.pair_angle_ok`).

    With ``num_pixels`` set, every item also carries ``"sample"``: the output of
    :func:`~geo3d.apps.multiview_corr._sampling.sample_pixel_pairs` for the pair (drawn
    from the item's generator), the pixels the loss is computed on.

    Returns (``__getitem__``): ``{"view_a", "view_b"}`` view dicts, ``"object"`` str,
    ``"views" (2,)`` long, ``"angle"`` float degrees, and ``"sample"`` when sampling.

    Raises:
        ValueError: an object without a valid pair (names it), bad sizes.
    """

    def __init__(self, root: str | os.PathLike, objects: Sequence[str], *,
                 pairs_per_object: int = 10, max_angle: float = 120.0,
                 image_size: int | None = None, num_pixels: int | None = None,
                 pos_radius: float = 5e-3, neg_radius: float = 0.1, seed: int = 0) -> None:
        from geo3d.datasets.multiview import MultiviewPairs

        if pairs_per_object < 1:
            raise ValueError(f"pairs_per_object: expected an int >= 1, got {pairs_per_object}")
        self.root = Path(root)
        self.objects = list(objects)
        # reuse the reader's camera lookup (poses.npy / intrinsics.npy / reference K)
        self._reader = MultiviewPairs(self.root, self.objects, num_points=1,
                                      pairs_per_object=1, max_angle=max_angle)
        self.pairs_per_object = int(pairs_per_object)
        self.max_angle = float(max_angle)
        self.image_size = image_size
        self.num_pixels = num_pixels
        self.pos_radius, self.neg_radius = float(pos_radius), float(neg_radius)
        self.seed = int(seed)
        self.epoch = 0
        self._pairs: dict[str, np.ndarray] = {}
        self._empty: dict[str, tuple[int, int]] = {}  # name -> (empty views, views)

    def set_epoch(self, epoch: int) -> None:
        """Draw other pairs and pixels in every training epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.objects) * self.pairs_per_object

    def valid_pairs(self, name: str) -> np.ndarray:
        """``(P, 2)`` view index pairs of object ``name`` allowed by ``pair_angle_ok``
        (one batched :func:`~geo3d.apps.multiview_corr._sampling.valid_view_pairs` call;
        views listed as empty in ``meta.json`` are left out)."""
        if name not in self._pairs:
            import json

            from geo3d.apps.multiview_corr._sampling import valid_view_pairs

            poses, _ = self._reader.object_cameras(name)
            meta = self.root / name / "meta.json"
            empty = set(json.loads(meta.read_text()).get("empty_views", [])) if meta.is_file() else set()
            T = torch.from_numpy(np.asarray(poses, dtype=np.float64))
            exclude = sorted(e for e in empty if 0 <= int(e) < len(T))
            pairs = valid_view_pairs(T, self.max_angle, exclude=exclude)
            self._pairs[name] = pairs.numpy().astype(np.int64).reshape(-1, 2)
            self._empty[name] = (len(exclude), len(T))
        return self._pairs[name]

    def __getitem__(self, k: int) -> dict[str, Any]:
        from geo3d.render import relative_rotation_angle

        if not 0 <= k < len(self):
            raise IndexError(f"index {k} out of range for {len(self)} items")
        name = self.objects[k // self.pairs_per_object]
        state = np.random.SeedSequence([self.seed, self.epoch, k]).generate_state(1)[0]
        g = torch.Generator().manual_seed(int(state))
        pairs = self.valid_pairs(name)
        if len(pairs) == 0:
            n_empty, n_views = self._empty[name]
            if n_views - n_empty < 2:
                raise ValueError(
                    f"{name}: expected at least 2 views that show the object, got "
                    f"{n_views - n_empty} of {n_views} (the others are listed as empty in "
                    f"{self.root / name / 'meta.json'}: nothing in front of the camera); "
                    "re-render it or remove it from the dataset")
            raise ValueError(f"max_angle: object {name!r} has no view pair within "
                             f"{self.max_angle} degrees")
        a, b = (int(x) for x in pairs[int(torch.randint(0, len(pairs), (1,), generator=g))])
        poses, K = self._reader.object_cameras(name)
        va = load_view_dict(self.root, name, a, poses, K, self.image_size)
        vb = load_view_dict(self.root, name, b, poses, K, self.image_size)
        for v, view in ((a, va), (b, vb)):
            if not bool(view["mask"].any()):  # an empty view meta.json does not list
                raise ValueError(
                    f"{name}: expected view {v} to show the object (non-empty mask), got an "
                    f"empty mask that {self.root / name / 'meta.json'} does not list in "
                    "empty_views; re-render with `geo3d data render` (it lists them) or fix "
                    "the dataset")
        item = {
            "view_a": va, "view_b": vb, "object": name, "views": torch.tensor([a, b]),
            "angle": float(relative_rotation_angle(va["world_to_cam"], vb["world_to_cam"])),
        }
        if self.num_pixels:
            from geo3d.apps.multiview_corr._sampling import sample_pixel_pairs

            item["sample"] = sample_pixel_pairs(
                va, vb, num_pixels=int(self.num_pixels), pos_radius=self.pos_radius,
                neg_radius=self.neg_radius, generator=g)
        return item


def collate_pairs(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep a batch as a list of pair dicts (pairs may differ in size and samples)."""
    return list(batch)


class MultiviewCorrDataModule(L.LightningDataModule):
    """View pairs of rendered objects: training pairs from the training objects,
    validation/test pairs from held-out objects.

    Args:
        root: dataset folder written by ``geo3d data render`` (or the reference's layout).
        render: when ``root`` holds no objects, render them first with
            :func:`geo3d.datasets.multiview_render.render_dataset`: a dict with
            ``num_synthetic`` (procedural textured objects), optional ``categories``,
            ``seed``, ``workers`` and :class:`~geo3d.datasets.multiview_render.RenderSettings`
            fields (``size``, ``focal``, ``level``, ``distance``, ...). ``None``: ``root``
            must already hold objects.
        objects: explicit object names (default: every object found).
        num_val_objects: objects held out (the last ones, see :func:`split_objects`) for validation/test.
        image_size: long side after resizing the renders (``None``: as rendered).
        pairs_per_object: training pairs per object and epoch.
        val_pairs_per_object: held-out pairs per object (fixed over epochs).
        max_angle: largest angle between the two cameras of a pair, degrees (ref.: 120).
        num_pixels, pos_radius, neg_radius: pixel sampling of the loss (ref.: 3000,
            5e-3, 0.1; object units, objects have unit extent).
        batch_size: pairs per step and process (reference: 1).
        num_workers: loader processes.
        seed: seed of pair and pixel draws.

    Raises:
        ValueError: no objects in ``root`` and no ``render``; a bad split.
    """

    def __init__(
        self,
        root: str,
        render: dict[str, Any] | None = None,
        objects: list[str] | None = None,
        num_val_objects: int = 2,
        image_size: int | None = None,
        pairs_per_object: int = 10,
        val_pairs_per_object: int = 2,
        max_angle: float = 120.0,
        num_pixels: int = 3000,
        pos_radius: float = 5e-3,
        neg_radius: float = 0.1,
        batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._sets: dict[str, ViewPairDataset] = {}

    def prepare_data(self) -> None:
        """Render the procedural objects of ``render`` when ``root`` holds none (rank 0)."""
        from geo3d.datasets.multiview import find_objects

        h = self.hparams
        root = Path(h.root)
        if root.is_dir() and find_objects(root):
            return
        if root.exists() and not root.is_dir():  # render_dataset would name its own `out`
            raise ValueError(f"root: expected a folder (existing or new), got the existing "
                             f"file {str(root)!r}")
        if h.render is None:
            raise ValueError(f"root: expected rendered objects in {str(root)!r} (geo3d data "
                             "render) or data.render settings to render them, got neither")
        from geo3d.datasets.multiview_render import RenderSettings, render_dataset

        r = dict(h.render)
        kw = {k: r.pop(k) for k in ("num_synthetic", "categories", "seed", "workers") if k in r}
        kw.setdefault("num_synthetic", 8)
        summary = render_dataset(root, settings=RenderSettings(**r), progress=True, **kw)
        if summary["failed"]:
            raise ValueError(f"render: {len(summary['failed'])} objects failed: "
                             f"{summary['failed'][0]}")

    def object_split(self) -> tuple[list[str], list[str]]:
        """``(train_objects, held_out_objects)``."""
        from geo3d.datasets.multiview import find_objects

        h = self.hparams
        names = list(h.objects) if h.objects else find_objects(h.root)
        if not names:
            raise ValueError(f"root: expected rendered objects in {str(h.root)!r}, found none")
        return split_objects(names, int(h.num_val_objects))

    def dataset(self, split: str) -> ViewPairDataset:
        """``"train"`` or ``"val"`` (held-out objects; also used by test/predict)."""
        if split not in self._sets:
            h = self.hparams
            train, held = self.object_split()
            common = dict(max_angle=h.max_angle, image_size=h.image_size, seed=h.seed,
                          pos_radius=h.pos_radius, neg_radius=h.neg_radius)
            if split == "train":
                self._sets[split] = ViewPairDataset(
                    h.root, train, pairs_per_object=h.pairs_per_object,
                    num_pixels=h.num_pixels, **common)
            elif split == "val":
                self._sets[split] = ViewPairDataset(
                    h.root, held, pairs_per_object=h.val_pairs_per_object, num_pixels=None,
                    **{**common, "seed": h.seed + 1_000_003})
            else:
                raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
        return self._sets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(self.dataset(split), batch_size=h.batch_size, shuffle=shuffle,
                          num_workers=h.num_workers, persistent_workers=h.num_workers > 0,
                          collate_fn=collate_pairs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("val", False)
