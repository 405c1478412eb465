"""ArtEq: articulated SE(3)-equivariant SMPL fitting from point clouds (Feng et al., ICCV 2023).

Feng, Kulits, Liu, Black, Abrevaya, "Generalizing Neural Human Fitting to Unseen Poses With
Articulated SE(3) Equivariance", ICCV 2023, arXiv:2304.10528 (reference code HavenFeng/ArtEq).

Public API (imported lazily so that ``geo3d --help`` stays fast):

* :func:`fit_smpl` — ``fit_smpl(points, checkpoint, body_model=..., refine=False)`` -> a
  :class:`FitResult` (``betas``, ``global_orient``, ``body_pose``, ``transl``, ``vertices``,
  ``joints``, ``part_labels``); :func:`optimize_smpl`, the optimisation baseline.
* :class:`ArtEqNet` — the network (equivariant backbones ``"vn_dgcnn"``, used by the
  packaged configs, ``"vn"``, a local VN encoder, ``"tfn"``, the e3nn tensor-field
  network, and ``"epn"``, the reference's icosahedral group convolution in pure torch;
  ``"pointnet"``/``"dgcnn"`` baselines).
* :class:`ArtEqModule`, :class:`ArtEqDataModule` — Lightning training code on synthetic
  scans of :mod:`geo3d.body` bodies (or AMASS + an SMPL file).
* :func:`load_model`, :func:`save_model`, :class:`AtomicCheckpointIO`,
  :class:`CheckpointError` (a truncated or foreign checkpoint file).

Command line: ``geo3d arteq fit|validate|test --config demo`` (LightningCLI),
``geo3d arteq predict --checkpoint CKPT --points scan.ply --out DIR``, ``geo3d arteq demo``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ArtEqNet": "_model",
    "ArtEqModule": "_module",
    "ArtEqDataModule": "_data",
    "CONDITIONS": "_data",
    "rotate_item": "_data",
    "FitResult": "_fit",
    "decode": "_fit",
    "fit_smpl": "_fit",
    "FitWeights": "_fit",
    "refine_fit": "_fit",
    "optimize_smpl": "_optim",
    "AtomicCheckpointIO": "_checkpoint",
    "CheckpointError": "_checkpoint",
    "load_checkpoint": "_checkpoint",
    "load_model": "_checkpoint",
    "save_model": "_checkpoint",
    "save_pictures": "_viz",
    "run_lightning_cli": "cli",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"geo3d.apps.arteq.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'geo3d.apps.arteq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
