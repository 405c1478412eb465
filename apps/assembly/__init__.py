"""Shape assembly with SE(3) equivariance (Wu et al., ICCV 2023), on Breaking Bad style data.

Public API (imported lazily so that ``geo3d --help`` stays fast):

* :func:`assemble` — ``assemble(pieces, checkpoint)`` -> ``(P, 4, 4)`` poses.
* :class:`EquivariantAssembler`, :class:`GlobalAssembler` — the networks.
* :class:`AssemblyModule`, :class:`AssemblyDataModule` — Lightning training code.
* :class:`AtomicCheckpointIO`, :func:`load_checkpoint`, :func:`load_model`.
* :func:`assemble_from_outputs` — network outputs -> poses: descriptor matching
  (:func:`match_pieces`), RANSAC + Kabsch (:func:`ransac_kabsch`, :func:`pairwise_poses`),
  spanning tree from the anchor (:func:`global_assembly`), refinement (:func:`refine_poses`).
* :class:`TemplateBank` — the assembled object's pose in the dataset's frame (absolute
  protocol) by registration to the training objects; a checkpoint stores its bank.
* :class:`PieceError` (a bad piece given to :func:`assemble`, with its index and path),
  :class:`CheckpointError` (a truncated or foreign checkpoint file).

Evaluation protocols (:func:`geo3d.eval.assembly_metrics`):

* ``absolute`` (a) — Breaking Bad's metrics in the ground-truth frame, for comparability.
  The global orientation of an object cannot be observed from independently rotated
  pieces, so this only rewards models that learned the dataset's canonical frame (the
  default pipeline registers the assembled object to the training objects for it).
* ``anchor`` (b) — the prediction is first moved rigidly so that the anchor (largest part
  by squared radius of gyration of its points) sits at its true pose, then all parts are
  scored (as later methods do). This scores the relative arrangement only.

Command line: ``geo3d assembly fit|validate|test|predict --config demo`` (LightningCLI),
``geo3d assembly predict --checkpoint CKPT --pieces a.obj b.obj``, ``geo3d assembly demo``.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "assemble": "_api",
    "load_model": "_api",
    "load_piece": "_api",
    "PieceError": "_api",
    "EquivariantAssembler": "_model",
    "GlobalAssembler": "_model",
    "AssemblyModule": "_module",
    "AssemblyDataModule": "_data",
    "assembly_loss": "_losses",
    "AtomicCheckpointIO": "_checkpoint",
    "load_checkpoint": "_checkpoint",
    "CheckpointError": "_checkpoint",
    "save_pictures": "_viz",
    "register_pair": "_registration",
    "assemble_from_outputs": "_pipeline",
    "match_pieces": "_matching",
    "ransac_kabsch": "_matching",
    "pairwise_poses": "_matching",
    "global_assembly": "_matching",
    "refine_poses": "_refine",
    "TemplateBank": "_canonical",
    "run_lightning_cli": "cli",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"geo3d.apps.assembly.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'geo3d.apps.assembly' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
