"""Multiview-equivariance finetuning of ViT features for 3D correspondence.

Implements "Multiview Equivariance Improves 3D Correspondence Understanding with Minimal
Feature Finetuning" (You et al., ICLR 2025, arXiv:2411.19458; reference code
qq456cvb/3DCorrEnhance) on geo3d's renderer and ViT.

Public API (imported lazily so that ``geo3d --help`` stays fast):

* :class:`CorrFeatureModel` — LoRA (q, v of the last blocks) + 3x3 conv on a ViT; a
  feature extractor ``(B, 3, H, W) in [0, 1] -> (B, C, h, w)``.
* :func:`smooth_ap_loss`, :func:`sample_pixel_pairs`, :func:`pair_angle_ok` — the
  training objective and its pixel / view-pair sampling.
* :class:`MultiviewCorrModule`, :class:`MultiviewCorrDataModule` — Lightning training code;
  :func:`load_adapter` rebuilds a finetuned model from an adapter checkpoint.
* :func:`evaluate_extractors` — before/after metrics on held-out pairs;
  :func:`correspondence_picture` — the colour-coded 3D-equivariance picture.

Command line: ``geo3d multiview fit|validate|test --config demo|reference [--vit PATH]``
(LightningCLI), ``geo3d multiview eval --adapter CKPT``, ``geo3d multiview demo``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CorrFeatureModel": "_model",
    "smooth_ap_loss": "_loss",
    "sample_pixel_pairs": "_sampling",
    "pair_angle_ok": "_sampling",
    "pretrain_vit": "_pretrain",
    "MultiviewCorrModule": "_module",
    "load_adapter": "_module",
    "build_backbone": "_module",
    "BackboneExtractor": "_module",
    "AtomicCheckpointIO": "_module",
    "MultiviewCorrDataModule": "_data",
    "ViewPairDataset": "_data",
    "evaluate_extractors": "_evaluate",
    "correspondence_picture": "_viz",
    "run_lightning_cli": "cli",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"geo3d.apps.multiview_corr.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'geo3d.apps.multiview_corr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
