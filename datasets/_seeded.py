"""Wrap any dataset so that a transform is applied with per-(seed, epoch, index) randomness."""

from __future__ import annotations

from typing import Any, Callable

import torch
from geo3d.datasets._transforms import sample_generator
from torch.utils.data import Dataset

__all__ = ["SeededTransformDataset", "SharedEpoch"]


class SharedEpoch:
    """Mixin: an epoch counter in shared memory, so :meth:`set_epoch` reaches persistent
    DataLoader workers. Call :meth:`_init_epoch` in ``__init__``."""

    def _init_epoch(self) -> None:
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the per-item randomness (visible to live workers)."""
        if not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch: expected an int >= 0, got {epoch!r}")
        self._epoch.fill_(epoch)


class SeededTransformDataset(SharedEpoch, Dataset):
    """Apply ``transform(item, generator)`` to the items of ``dataset``, reproducibly.

    The generator of item ``index`` is ``sample_generator(seed, epoch, index)``, so the
    output does not depend on the number of DataLoader workers or the order of access.
    The epoch lives in shared memory: :meth:`set_epoch` reaches persistent workers.

    Args:
        dataset: any map-style dataset whose items are a points tensor :math:`(*, N, 3)`,
            a dict with ``"points"``, or a tuple whose first element is one of those (the
            rest, e.g. a label, is passed through).
        transform: e.g. ``Compose([Center(), RandomRotation(), Jitter()])``.
        seed: base seed.
    """

    def __init__(self, dataset: Any, transform: Callable[..., Any], seed: int = 0) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed: expected an int, got {seed!r}")
        if not callable(transform):
            raise ValueError(f"transform: expected a callable, got {type(transform).__name__}")
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self._init_epoch()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        index = int(index)
        item = self.dataset[index]
        gen = sample_generator(self.seed, self.epoch, index % len(self))
        if isinstance(item, (tuple, list)):
            return (self.transform(item[0], gen), *item[1:])
        return self.transform(item, gen)
