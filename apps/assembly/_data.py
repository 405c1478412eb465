"""LightningDataModule over Breaking Bad style data (real, or generated synthetic fractures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

__all__ = ["AssemblyDataModule"]


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    from geo3d.datasets.breaking_bad import collate_parts

    return collate_parts(batch, trim=True)


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
            self._sets[split] = BreakingBad(
                h.root, subset=h.subset, split=split, categories=h.categories,
                min_parts=h.min_parts, max_parts=h.max_parts, num_points=h.num_points,
                **kw,
            )
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
