"""ArtEq checkpoints: atomic writes, safe loads (``weights_only=True``), clear errors.

Two file kinds load as an :class:`~geo3d.apps.arteq._model.ArtEqNet`:

* a Lightning ``.ckpt`` written by ``geo3d arteq fit`` (``state_dict`` keys start with
  ``net.``; the module adds ``config`` = the net's constructor arguments and ``arteq`` =
  ``{"body_model", "num_betas"}``);
* a plain file ``{"config": dict, "state_dict": dict}`` (:func:`save_model`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from geo3d._app import CheckpointError, load_checkpoint  # shared by the apps
from geo3d._app_lightning import AtomicCheckpointIO
from geo3d._atomic import atomic_write_bytes

__all__ = ["AtomicCheckpointIO", "CheckpointError", "load_checkpoint", "load_model",
           "save_model", "checkpoint_info"]


def _net_state(path: Path, ckpt: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = sorted(map(str, ckpt))[:8]
    state = ckpt.get("state_dict")
    config = ckpt.get("config")
    if config is None and isinstance(ckpt.get("hyper_parameters"), dict):
        config = ckpt["hyper_parameters"].get("net_config")
    if not isinstance(state, dict) or not isinstance(config, dict):
        raise CheckpointError(
            path, f"checkpoint: expected an ArtEq checkpoint in {str(path)!r} (a dict with "
            f"'config' and 'state_dict', or a `geo3d arteq fit` .ckpt), got keys {keys}")
    if any(str(k).startswith("net.") for k in state):
        state = {k[4:]: v for k, v in state.items() if str(k).startswith("net.")}
    return config, state


def load_model(path: str | os.PathLike, map_location: Any = "cpu") -> torch.nn.Module:
    """Rebuild the trained :class:`~geo3d.apps.arteq._model.ArtEqNet` of a checkpoint.

    Args:
        path: a ``geo3d arteq fit`` Lightning ``.ckpt`` or a plain
            ``{"config", "state_dict"}`` file (:func:`save_model`).
        map_location: where the tensors go (``torch.load``'s argument).

    Returns:
        The net in eval mode.

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: ``path`` is a folder.
        CheckpointError: truncated/corrupt file, a foreign checkpoint (not ArtEq's keys), or
            weights that do not fit the stored configuration.

    Example:
        >>> import tempfile, os
        >>> from geo3d.apps.arteq._model import ArtEqNet
        >>> p = os.path.join(tempfile.mkdtemp(), "net.pt")
        >>> _ = save_model(ArtEqNet("pointnet"), p)
        >>> type(load_model(p)).__name__
        'ArtEqNet'
    """
    from geo3d.apps.arteq._model import ArtEqNet

    path = Path(path)
    config, state = _net_state(path, load_checkpoint(path, map_location))
    try:
        net = ArtEqNet(**config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(path, f"checkpoint: config in {str(path)!r} does not build an "
                                    f"ArtEqNet ({err})") from err
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        msg = " ".join(str(err).split())[:300]
        raise CheckpointError(path, f"checkpoint: weights in {str(path)!r} do not fit its "
                                    f"config ({msg})") from err
    return net.eval()


def checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``arteq`` entry of a checkpoint (``body_model``, ``num_betas``, ``gender``,
    ``num_points``: the points per training scan), or ``{}``. ``num_points`` is taken from
    the data module's saved settings for checkpoints written before it was recorded."""
    ckpt = load_checkpoint(path)
    info = ckpt.get("arteq")
    info = dict(info) if isinstance(info, dict) else {}
    dm = ckpt.get("datamodule_hyper_parameters")
    if "num_points" not in info and isinstance(dm, dict) and isinstance(dm.get("num_points"), int):
        info["num_points"] = dm["num_points"]
    return info


def save_model(net: torch.nn.Module, path: str | os.PathLike,
               extra: dict[str, Any] | None = None) -> Path:
    """Write ``{"config": net.config, "state_dict": net.state_dict()}`` atomically.

    Args:
        net: an :class:`~geo3d.apps.arteq._model.ArtEqNet`.
        path: output file.
        extra: stored as ``"arteq"`` (e.g. ``{"body_model": ...}``).

    Returns:
        ``path``.

    Raises:
        ValueError: ``net`` is not an ``ArtEqNet`` (it has no ``config`` dict).
        IsADirectoryError: ``path`` is a folder.
    """
    if not isinstance(getattr(net, "config", None), dict) or not isinstance(net, torch.nn.Module):
        raise ValueError(f"net: expected an ArtEqNet (a module with a `config` dict), got "
                         f"{type(net).__name__}")
    if Path(path).is_dir():
        raise IsADirectoryError(f"path: expected a file name, got the folder {str(path)!r}")
    buf = io.BytesIO()
    payload: dict[str, Any] = {"config": dict(net.config), "state_dict": net.state_dict()}
    if extra:
        payload["arteq"] = dict(extra)
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
