"""LightningDataModule over Breaking Bad style data (real, or generated synthetic fractures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["AssemblyDataModule", "FractureLabelled"]


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    from geo3d.datasets.breaking_bad import collate_parts

    out = collate_parts(batch, trim=True)
    if "fracture" in out:
        out["fracture"] = out["fracture"][:, : out["points"].shape[1]]
    return out


class FractureLabelled(Dataset):
    """Adds per-point fracture-surface labels to :class:`geo3d.datasets.BreakingBad` items.

    ``item["fracture"]`` :math:`(P, N)` bool: the point lies on a cut face, i.e. on the
    surface of another piece of the same object
    (:func:`geo3d.datasets.fracture.fracture_surface_labels`, exact point-to-mesh
    distances of the loader's cached surface samples, threshold ``tol``). Labels are
    computed once per fracture folder (in this process) on the canonical samples; every
    item's points are matched back to them through their assembled positions
    ``rot @ p + trans`` (so point shuffling, part shuffling and rotations are handled).
    Padded parts are ``False``.

    Args:
        base: a :class:`~geo3d.datasets.BreakingBad` dataset (pieces stored in place).
        tol: label distance threshold (default: ``1e-4`` of the object's diagonal).
    """

    def __init__(self, base: Any, tol: float | None = None) -> None:
        self.base, self.tol = base, tol
        self._memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:  # samples, root, ... of the base dataset
        if name in ("base", "tol", "_memo"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def _canonical(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from geo3d.datasets._io import load_mesh
        from geo3d.datasets.fracture import fracture_surface_labels

        name, pieces = self.base.samples[index]
        if name not in self._memo:
            pts = [torch.as_tensor(self.base._piece_points(p)[0], dtype=torch.float64)
                   for p in pieces]
            meshes = [load_mesh(p) for p in pieces]
            labels = fracture_surface_labels(pts, meshes, self.tol)
            self._memo[name] = (torch.cat(pts), torch.cat(labels))
        return self._memo[name]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        pts, lab = self._canonical(int(item["index"]))
        valid = item["valid"]
        x = item["points"].double() @ item["rot"].double().transpose(-1, -2) \
            + item["trans"].double()[:, None]
        if getattr(self.base, "normalize", False):
            x = x * item["scale"].double() + item["center"].double()
        n = int(valid.sum())
        near = _nearest(x[valid].reshape(-1, 3), pts)  # nearest canonical point
        frac = torch.zeros(valid.shape[0], x.shape[1], dtype=torch.bool)
        frac[valid] = lab[near].reshape(n, -1)
        item["fracture"] = frac
        return item


def _nearest(x: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Index of the nearest row of ``pts (M, 3)`` for every row of ``x (N, 3)``.

    Distances are computed from differences: :func:`torch.cdist`'s default matrix-product
    form (``|x|^2 + |p|^2 - 2 x.p``) cancels catastrophically for coordinates far from the
    origin and then picks wrong neighbours.
    """
    return torch.cdist(x, pts, compute_mode="donot_use_mm_for_euclid_dist").argmin(-1)


class AssemblyDataModule(L.LightningDataModule):
    """Breaking Bad style fracture data through :class:`geo3d.datasets.BreakingBad`.

    Args:
        root: dataset folder (Breaking Bad layout: ``data_split/{subset}.{split}.txt``).
        subset: ``"everyday"``, ``"artifact"``, ... (or the generator's subset name).
        num_points: points sampled per part.
        min_parts, max_parts: part-count range (objects outside are skipped; padded to
            ``max_parts``).
        batch_size, num_workers: loader settings (``batch_size`` per process).
        categories: optional category filter.
        train_split, val_split, test_split, predict_split: split names.
        train_rotate: randomly rotate every training part (the benchmark's loader does; an
            equivariant model does not need it). Evaluation parts are always randomly
            rotated, reproducibly (``seed``).
        seed: seed of the loader's per-item randomness (rotations, point order); the
            training set reseeds every epoch through ``set_epoch``.
        generate: if given and ``root`` has no ``data_split`` folder, synthetic fractures
            are generated first with ``geo3d.datasets.fracture.generate_dataset(root,
            **generate)`` (e.g. ``{"num_objects": 60, "seed": 0}``).
        loader_kwargs: extra keyword arguments for :class:`BreakingBad`.
        fracture_labels: add per-point fracture-surface labels (``batch["fracture"]``,
            see :class:`FractureLabelled`) for the correspondence head's losses.
    """

    def __init__(
        self,
        root: str,
        subset: str = "everyday",
        num_points: int = 512,
        min_parts: int = 2,
        max_parts: int = 8,
        batch_size: int = 32,
        num_workers: int = 0,
        categories: list[str] | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        predict_split: str = "val",
        train_rotate: bool = True,
        seed: int = 0,
        generate: dict[str, Any] | None = None,
        loader_kwargs: dict[str, Any] | None = None,
        fracture_labels: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._sets: dict[str, Any] = {}

    def prepare_data(self) -> None:
        root = Path(self.hparams.root)
        if self.hparams.generate is not None and not (root / "data_split").is_dir():
            from geo3d.datasets.fracture import generate_dataset

            generate_dataset(str(root), **dict(self.hparams.generate))

    def dataset(self, split: str) -> Any:
        """The :class:`BreakingBad` dataset of ``split`` (cached)."""
        if split not in self._sets:
            from geo3d.datasets import BreakingBad

            h = self.hparams
            kw = {"seed": h.seed, **dict(h.loader_kwargs or {})}
            if split == h.train_split:
                kw.setdefault("rotate", h.train_rotate)
            ds = BreakingBad(
                h.root, subset=h.subset, split=split, categories=h.categories,
                min_parts=h.min_parts, max_parts=h.max_parts, num_points=h.num_points,
                **kw,
            )
            self._sets[split] = FractureLabelled(ds) if h.fracture_labels else ds
        return self._sets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(
            self.dataset(split), batch_size=h.batch_size, shuffle=shuffle,
            num_workers=h.num_workers, persistent_workers=h.num_workers > 0,
            drop_last=False, collate_fn=_collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.train_split, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.val_split, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_split, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, False)
