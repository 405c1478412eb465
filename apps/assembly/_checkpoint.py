"""Atomic checkpoint writes and safe, clear-failing checkpoint loads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geo3d._atomic import atomic_write_bytes, atomic_write_text  # one implementation

__all__ = ["AtomicCheckpointIO", "CheckpointError", "load_checkpoint", "atomic_write_bytes",
           "atomic_write_text"]


class CheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupt or not a geo3d/Lightning checkpoint;
    ``path`` names it."""

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        self.path = str(path)
        super().__init__(message)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointError: (a ``RuntimeError``) the file is truncated or not a checkpoint;
            the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip/unpickling errors of truncated or foreign files
        size = path.stat().st_size
        raise CheckpointError(
            path, f"checkpoint {str(path)!r} ({size} bytes) could not be read: it is truncated, "
            f"corrupted or not a torch checkpoint ({type(err).__name__}: {err}). "
            "Delete it and resume from an earlier checkpoint."
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(path, f"checkpoint {str(path)!r}: expected a dict, got "
                                    f"{type(ckpt).__name__}")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO that writes through a temp file + ``os.replace`` (a killed
    run never leaves a half-written checkpoint under the final name) and loads with
    ``weights_only=True`` and a clear error for truncated files."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        import io

        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getvalue())

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location if map_location else "cpu")
