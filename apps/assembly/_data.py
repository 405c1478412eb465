"""LightningDataModule over Breaking Bad style data (real, or generated synthetic fractures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from geo3d.apps.assembly._fracture_registration import MIN_POINTS as MIN_DENSE_POINTS
from torch.utils.data import DataLoader, Dataset

__all__ = ["AssemblyDataModule", "DenseSurface", "FractureLabelled"]


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    from geo3d.datasets.breaking_bad import collate_parts

    out = collate_parts(batch, trim=True)
    p = out["points"].shape[1]
    for key in ("fracture", "dense_points", "dense_normals"):
        if key in out:
            out[key] = out[key][:, :p]
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


class DenseSurface(Dataset):
    """Adds dense mesh-surface samples with face normals to the items of a
    :class:`geo3d.datasets.BreakingBad` dataset (or of a wrapper of one, e.g.
    :class:`FractureLabelled`), in the frame of each item's ``points``.

    ``item["dense_points"]`` :math:`(P, M, 3)` float32 and ``item["dense_normals"]``
    :math:`(P, M, 3)` float32 (unit): per valid part, ``M = num_points`` points drawn
    uniformly (by area) from its piece's mesh surface with the sampled faces' normals
    (:func:`geo3d.datasets.sample_surface`). The draw is seeded by the piece's path
    relative to the dataset root, ``M`` and ``sample_seed`` (reproducible, identical
    whatever the item's rotation, part or point order) and computed once per fracture
    folder in this process. Samples are mapped into the item's input frame through the
    item's pose: a part's points satisfy ``assembled = rot @ x + trans`` (and
    ``original = scale * assembled + center`` with ``normalize=True``), so a mesh point
    ``q`` becomes ``x = rot⁻¹ ((q - center) / scale - trans)`` (``rot⁻¹ = rotᵀ`` for the
    loader's rotations) and a face normal ``n`` becomes ``rotᵀ n`` (normalised). Each
    item part is matched to its mesh file through its own points (majority of the
    nearest canonical loader samples, then a one-to-one assignment), so shuffled parts
    (``shuffle_parts=True``) and shuffled points are handled. Padded parts are zeros.

    Args:
        base: a :class:`~geo3d.datasets.BreakingBad` dataset (pieces stored in place), or
            a wrapper that forwards its attributes (:class:`FractureLabelled`).
        num_points: dense samples per piece :math:`M` (int >= 65).
        sample_seed: mixed into every piece's seed.

    Raises:
        ValueError: ``num_points`` not an int >= 65.

    Example:
        >>> import tempfile
        >>> from geo3d.datasets import BreakingBad
        >>> from geo3d.datasets.fracture import generate_dataset
        >>> root = tempfile.mkdtemp()
        >>> _ = generate_dataset(root, 1, min_parts=2, max_parts=2, fractures_per_object=1,
        ...                      val_fraction=0.0, categories=["Bracket"], progress=False)
        >>> ds = DenseSurface(BreakingBad(root, num_points=64, max_parts=3, seed=0), 100)
        >>> item = ds[0]
        >>> tuple(item["dense_points"].shape), tuple(item["dense_normals"].shape)
        ((3, 100, 3), (3, 100, 3))

    Source: the same input-frame convention as the loader
    (``datasets/breaking_bad.py``, ``BreakingBad._make_item``); dense face-normal samples
    are what ``apps/assembly/_fracture_registration.py``'s classifier was trained on.
    """

    def __init__(self, base: Any, num_points: int, sample_seed: int = 0) -> None:
        if not isinstance(num_points, int) or isinstance(num_points, bool) or \
                num_points < MIN_DENSE_POINTS:
            raise ValueError(f"num_points: expected an int >= {MIN_DENSE_POINTS}, got "
                             f"{num_points!r}")
        self.base, self.num_points, self.sample_seed = base, num_points, sample_seed
        # name -> (canonical loader samples (K, 3), their piece ids (K,), dense points
        # (n, M, 3), dense normals (n, M, 3), center (3,), scale ()), float64, object frame
        self._dense: dict[str, tuple[torch.Tensor, ...]] = {}

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:  # samples, root, ... of the base dataset
        if name in ("base", "num_points", "sample_seed", "_dense"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def _object(self, index: int) -> tuple[torch.Tensor, ...]:
        import hashlib

        import numpy as np
        from geo3d.datasets import sample_surface
        from geo3d.datasets._io import load_mesh

        name, pieces = self.base.samples[index]
        if name not in self._dense:
            root = Path(self.base.root)
            canon, ids, dense, normals = [], [], [], []
            for i, path in enumerate(pieces):
                c = torch.as_tensor(self.base._piece_points(path)[0], dtype=torch.float64)
                canon.append(c)
                ids.append(torch.full((c.shape[0],), i, dtype=torch.long))
                path = Path(path)
                rel = path.relative_to(root).as_posix() if path.is_relative_to(root) \
                    else path.as_posix()
                key = f"dense:{self.sample_seed}:{self.num_points}:{rel}"
                seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1
                from geo3d.apps.assembly._fracture_registration import outward_faces

                mesh = outward_faces(load_mesh(path))  # outward normals (see there)
                pts, nrm, _ = sample_surface(
                    torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float64),
                    torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long),
                    self.num_points, generator=torch.Generator().manual_seed(seed))
                dense.append(pts)
                normals.append(nrm.double())
            allc = torch.cat(canon)
            # the loader's object normalisation, recomputed in float64 from the same samples
            center = allc.mean(0)
            scale = (allc - center).norm(dim=-1).max().clamp_min(torch.finfo(allc.dtype).tiny)
            self._dense[name] = (allc, torch.cat(ids), torch.stack(dense),
                                 torch.stack(normals), center, scale)
        return self._dense[name]

    def __getitem__(self, index: int) -> dict[str, Any]:
        from scipy.optimize import linear_sum_assignment

        item = self.base[index]
        canon, ids, dense, normals, center, scale = self._object(int(item["index"]))
        valid = item["valid"]
        rot, trans = item["rot"].double(), item["trans"].double()
        normalize = bool(getattr(self.base, "normalize", False))
        x = item["points"].double() @ rot.transpose(-1, -2) + trans[:, None]
        if normalize:
            x = x * item["scale"].double() + item["center"].double()
        vi = valid.nonzero().flatten()
        n, npieces = len(vi), dense.shape[0]
        # piece of each valid part: votes of its points' nearest canonical samples, then a
        # one-to-one assignment (a part whose points are all near one piece gets it)
        near = ids[_nearest(x[vi].reshape(-1, 3), canon)].reshape(n, -1)
        votes = torch.nn.functional.one_hot(near, npieces).sum(1)  # (n, pieces)
        rows, cols = linear_sum_assignment(-votes.numpy())
        piece = torch.empty(n, dtype=torch.long)
        piece[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
        q = dense[piece]  # (n, M, 3) object frame
        if normalize:
            q = (q - center) / scale
        # x = rot^-1 (q - trans); normals transform with (rot^-1)^-T = rot^T
        R = rot[vi]
        xd = torch.linalg.solve(R[:, None], (q - trans[vi][:, None])[..., None])[..., 0]
        nd = torch.nn.functional.normalize(normals[piece] @ R, dim=-1)
        P, M = valid.shape[0], self.num_points
        item["dense_points"] = torch.zeros(P, M, 3, dtype=torch.float32)
        item["dense_normals"] = torch.zeros(P, M, 3, dtype=torch.float32)
        item["dense_points"][vi] = xd.to(torch.float32)
        item["dense_normals"][vi] = nd.to(torch.float32)
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
        dense_points: ``0`` (default): off. ``M > 0`` (at least 65): the items of the
            validation, test and predict loaders (not training) also get
            ``dense_points``/``dense_normals`` :math:`(P, M, 3)`, ``M`` mesh-surface
            samples per part with face normals in the frame of ``points``
            (:class:`DenseSurface`); :class:`~geo3d.apps.assembly._module.AssemblyModule`
            evaluates ``method="fracture_registration"`` on them.

    Raises:
        ValueError: ``dense_points`` not an int that is 0 or >= 65.
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
        dense_points: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(dense_points, int) or isinstance(dense_points, bool) or \
                dense_points < 0 or 0 < dense_points < MIN_DENSE_POINTS:
            raise ValueError(f"dense_points: expected 0 (off) or an int >= "
                             f"{MIN_DENSE_POINTS}, got {dense_points!r}")
        self.save_hyperparameters()
        self._sets: dict[str, Any] = {}

    def prepare_data(self) -> None:
        root = Path(self.hparams.root)
        if self.hparams.generate is not None and not (root / "data_split").is_dir():
            from geo3d.datasets.fracture import generate_dataset

            generate_dataset(str(root), **dict(self.hparams.generate))

    def dataset(self, split: str, dense: bool | None = None) -> Any:
        """The :class:`BreakingBad` dataset of ``split`` (cached), wrapped by
        :class:`FractureLabelled` (``fracture_labels``) and, when ``dense`` (default:
        ``split`` is not the training split) and ``dense_points > 0``, by
        :class:`DenseSurface`."""
        h = self.hparams
        if dense is None:
            dense = split != h.train_split
        if dense and h.dense_points:
            key = f"{split}#dense"
            if key not in self._sets:
                self._sets[key] = DenseSurface(self.dataset(split, dense=False),
                                               int(h.dense_points))
            return self._sets[key]
        if split not in self._sets:
            from geo3d.datasets import BreakingBad

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

    def _loader(self, split: str, shuffle: bool, dense: bool) -> DataLoader:
        h = self.hparams
        return DataLoader(
            self.dataset(split, dense=dense), batch_size=h.batch_size, shuffle=shuffle,
            num_workers=h.num_workers, persistent_workers=h.num_workers > 0,
            drop_last=False, collate_fn=_collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.train_split, True, dense=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.val_split, False, dense=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.test_split, False, dense=True)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.hparams.predict_split, False, dense=True)
