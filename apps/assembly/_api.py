"""Python API: ``assemble(pieces, checkpoint)`` -> one 4x4 pose per piece."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from geo3d.apps.assembly._checkpoint import load_checkpoint
from torch import Tensor

__all__ = ["assemble", "load_model", "load_piece"]

_MESH_EXT = {".obj", ".stl", ".off", ".glb", ".gltf"}


def load_model(checkpoint: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Rebuild an :class:`AssemblyModule` from a Lightning checkpoint (``weights_only=True``)."""
    from geo3d.apps.assembly._module import AssemblyModule

    ckpt = load_checkpoint(checkpoint, map_location=map_location)
    if "state_dict" not in ckpt:
        raise RuntimeError(f"checkpoint {str(checkpoint)!r}: no 'state_dict' entry")
    hp = dict(ckpt.get("hyper_parameters", {}))
    hp = {k: v for k, v in hp.items() if not k.startswith("_")}
    model = AssemblyModule(**hp)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def load_piece(
    piece: Any, num_points: int, generator: torch.Generator | None = None
) -> Tensor:
    """One piece as ``(num_points, 3)`` float32 points.

    ``piece`` is an array/tensor ``(M, 3)`` (resampled to ``num_points``), or a path: mesh
    files (``.obj/.stl/.off/.glb``, and ``.ply`` with faces) are surface-sampled; ``.ply``
    without faces, ``.xyz/.txt`` and ``.npy`` are read as point clouds.
    """
    if isinstance(piece, (str, os.PathLike)):
        path = Path(piece)
        if not path.is_file():
            raise FileNotFoundError(f"pieces: no such file {str(path)!r}")
        ext = path.suffix.lower()
        if ext == ".npy":
            pts = np.load(path)
        elif ext in (".xyz", ".txt"):
            pts = np.loadtxt(path)[:, :3]
        else:
            import trimesh

            geom = trimesh.load(path, force="mesh" if ext in _MESH_EXT else None)
            if isinstance(geom, trimesh.Trimesh) and len(geom.faces) > 0:
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
                pts, _ = trimesh.sample.sample_surface(geom, num_points, seed=seed)
            else:
                pts = np.asarray(getattr(geom, "vertices", geom))
        piece = pts
    x = torch.as_tensor(np.asarray(piece), dtype=torch.float32)
    if x.dim() != 2 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise ValueError(f"pieces: expected point clouds of shape (M, 3), got {tuple(x.shape)}")
    if x.shape[0] != num_points:
        replace = x.shape[0] < num_points
        if replace:
            idx = torch.randint(0, x.shape[0], (num_points,), generator=generator)
        else:
            idx = torch.randperm(x.shape[0], generator=generator)[:num_points]
        x = x[idx]
    return x


def assemble(
    pieces: Sequence[Any],
    checkpoint: str | os.PathLike | Any,
    num_points: int = 512,
    scale: float = 1.0,
    device: str | torch.device | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Assemble fractured pieces.

    Args:
        pieces: list of point clouds (arrays/tensors of shape :math:`(M_i, 3)`) or file
            paths (meshes are surface-sampled), each in its own arbitrary frame.
        checkpoint: path of a checkpoint written by ``geo3d assembly fit`` (loaded with
            ``weights_only=True``), or an already loaded ``AssemblyModule``.
        num_points: points per piece fed to the network (resampled).
        scale: coordinates are multiplied by ``scale`` before the network (use it to bring
            metric data to the training scale); returned translations are in input units.
        device: where to run (default: CPU).
        generator: optional :class:`torch.Generator` for the resampling.

    Returns:
        Poses of shape :math:`(P, 4, 4)` (float32, CPU): ``T[i] @ [x, 1]`` places point
        ``x`` of piece ``i`` (in its input coordinates) into the common assembled frame.
    """
    if len(pieces) < 1:
        raise ValueError("pieces: expected at least one piece, got an empty list")
    model = checkpoint if isinstance(checkpoint, torch.nn.Module) else load_model(checkpoint)
    model = model.eval().to(device or "cpu")
    pts = torch.stack([load_piece(p, num_points, generator) for p in pieces])  # (P, N, 3)
    pts = pts.to(device or "cpu") * float(scale)
    valid = torch.ones(1, pts.shape[0], dtype=torch.bool, device=pts.device)
    with torch.no_grad():
        out = model(pts[None], valid)
    rot, trans = out["rot"][0].float().cpu(), out["trans"][0].float().cpu() / float(scale)
    T = torch.eye(4).repeat(pts.shape[0], 1, 1)
    T[:, :3, :3] = rot
    T[:, :3, 3] = trans
    return T
