"""Atomic checkpoint writes and safe, clear-failing checkpoint loads (shared by the apps:
:mod:`geo3d._app`, :mod:`geo3d._app_lightning`)."""

from __future__ import annotations

from geo3d._app import CheckpointError, load_checkpoint
from geo3d._app_lightning import AtomicCheckpointIO
from geo3d._atomic import atomic_write_bytes, atomic_write_text  # one implementation

__all__ = ["AtomicCheckpointIO", "CheckpointError", "load_checkpoint", "atomic_write_bytes",
           "atomic_write_text"]
