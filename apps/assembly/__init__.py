"""Shape assembly with SE(3) equivariance (Wu et al., ICCV 2023), on Breaking Bad style data.

Public API (imported lazily so that ``geo3d --help`` stays fast):

* :func:`assemble` — ``assemble(pieces, checkpoint)`` -> ``(P, 4, 4)`` poses.
* :class:`EquivariantAssembler`, :class:`GlobalAssembler` — the networks.
* :class:`AssemblyModule`, :class:`AssemblyDataModule` — Lightning training code.
* :class:`AtomicCheckpointIO`, :func:`load_checkpoint`, :func:`load_model`.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "assemble": "_api",
    "load_model": "_api",
    "load_piece": "_api",
    "EquivariantAssembler": "_model",
    "GlobalAssembler": "_model",
    "AssemblyModule": "_module",
    "AssemblyDataModule": "_data",
    "assembly_loss": "_losses",
    "AtomicCheckpointIO": "_checkpoint",
    "load_checkpoint": "_checkpoint",
    "save_pictures": "_viz",
    "register_pair": "_registration",
    "run_lightning_cli": "cli",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"geo3d.apps.assembly.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'geo3d.apps.assembly' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
