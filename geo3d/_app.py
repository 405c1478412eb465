"""Plumbing shared by the applications' command lines (``geo3d assembly|arteq|multiview``).

The apps may not import each other (ARCHITECTURE.md), so what their command lines have in
common lives here, below them: the one-line :class:`UsageError`, packaged-config
resolution (:class:`PackagedConfigs`), checkpoint loading with ``weights_only=True`` and a
clear error (:func:`load_checkpoint`, :class:`CheckpointError`) and what ``--ckpt_path
last`` means (:func:`resolve_last_checkpoint`). This module imports only torch; the
Lightning parts (atomic checkpoint IO, the LightningCLI base class) are in
:mod:`geo3d._app_lightning`, imported by the apps only when a command runs, so that
``geo3d --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from geo3d._validation import error_summary as _first_sentence

__all__ = ["UsageError", "OneLineParser", "add_forwarding_parser", "PackagedConfigs",
           "CheckpointError", "load_checkpoint", "find_last_checkpoints", "newest_last_checkpoint",
           "resolve_last_checkpoint", "resolve_device", "evaluated_progress"]


class UsageError(ValueError):
    """A command line that cannot run (missing config file, unknown or misplaced
    arguments). The ``geo3d`` CLI prints it as one line and exits with status 2."""


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` parser whose errors raise :class:`UsageError` (printed by the ``geo3d``
    CLI as one line, exit code 2) instead of printing the usage and exiting."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def add_forwarding_parser(subparsers: Any, name: str, help: str, main: Any) -> None:
    """Register ``geo3d NAME``, whose arguments are all forwarded to ``main(argv)`` (the
    app dispatches them itself); ``-h``/``--help`` becomes ``main(["--help"])``."""
    p = subparsers.add_parser(name, add_help=False, help=help)
    p.add_argument("-h", "--help", action="store_true", dest=f"{name}_help",
                   help=f"show the {name} commands")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda ns: main(["--help"] if getattr(ns, f"{name}_help")
                                        else list(ns.args)))


class PackagedConfigs:
    """The YAML configs shipped in an app's ``configs/`` folder.

    ``--config NAME`` accepts an existing file, a packaged name (``demo``) or a packaged
    file name (``demo.yaml``). Inline YAML/JSON (``--config '{trainer: ...}'``), which
    jsonargparse also accepts, is passed through unchanged.

    Args:
        directory: the folder holding ``*.yaml``.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "demo.yaml").write_text("a: 1")
        >>> cfg = PackagedConfigs(d)
        >>> cfg.names(), cfg.path("demo") == str(d / "demo.yaml")
        (['demo'], True)
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def names(self) -> list[str]:
        """Names of the packaged configs, sorted."""
        return sorted(p.stem for p in self.directory.glob("*.yaml"))

    def path(self, name: str) -> str:
        """An existing file, else the packaged config of that name, else ``name`` itself."""
        if Path(name).is_file():
            return str(name)
        for cand in (self.directory / name, self.directory / f"{name}.yaml"):
            if cand.is_file():
                return str(cand)
        return name

    def existing(self, name: str) -> str:
        """:meth:`path`, raising when ``name`` is neither a file nor inline YAML.

        Raises:
            UsageError: no such file or packaged config.
        """
        path = self.path(name)
        # jsonargparse also takes inline YAML/JSON: only a value that cannot be inline YAML
        # must name a file
        if not Path(path).is_file() and not any(c in name for c in ":{}\n"):
            raise UsageError(f"--config: expected an existing YAML file or a packaged config "
                             f"name ({', '.join(self.names())}), got {name!r} (no such file)")
        return path

    def resolve_args(self, args: list[str],
                     aliases: Mapping[str, tuple[str, str]] | None = None) -> list[str]:
        """Resolve every ``--config NAME`` / ``--config=NAME`` (or its short form ``-c``) in
        ``args``, and rewrite
        short flags: ``aliases = {"--vit": ("--model.vit", "a .pth file or folder")}``
        turns ``--vit X`` into ``--model.vit X`` (the second item says what must follow).

        Raises:
            UsageError: a missing config, or a flag with nothing after it.
        """
        table = {"--config": (None, "a YAML file"), "-c": (None, "a YAML file"),
                 **dict(aliases or {})}
        out = list(args)
        i = 0
        while i < len(out):
            a = out[i]
            flag, eq, value = a.partition("=")
            if flag in table:
                target, what = table[flag]
                if not eq:
                    if i + 1 >= len(out) or out[i + 1].startswith("--"):
                        raise UsageError(f"{flag}: expected {what} after it, got nothing")
                    value = out[i + 1]
                if target is None:
                    value = self.existing(value)
                new_flag = target or flag
                out[i:i + (1 if eq else 2)] = [f"{new_flag}={value}"] if eq else [new_flag, value]
                i += 1 if eq else 2
                continue
            i += 1
        return out


class CheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupt or not a checkpoint of the expected kind;
    ``path`` names it."""

    def __init__(self, path: str | os.PathLike, message: str) -> None:
        self.path = str(path)
        super().__init__(message)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and clear errors.

    Args:
        path: a ``.ckpt``/``.pt`` file.
        map_location: as :func:`torch.load`.

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: the file does not exist.
        IsADirectoryError: ``path`` is a folder.
        CheckpointError: (a ``RuntimeError``) the file is truncated, not a torch file, holds
            objects other than tensors and plain containers, or is not a dict.

    Example:
        >>> import tempfile, pathlib, torch
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "c.ckpt"; torch.save({"a": 1}, f)
        >>> load_checkpoint(f)
        {'a': 1}
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint: expected a file, got the folder {str(path)!r} (a "
                                f"run's checkpoints are in its lightning_logs/version_*/"
                                f"checkpoints/)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {str(path)!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip/unpickling errors of truncated or foreign files
        size = path.stat().st_size
        raise CheckpointError(
            path, f"checkpoint {str(path)!r} ({size} bytes) could not be read: it is truncated, "
            f"corrupted or not a torch checkpoint ({type(err).__name__}: "
            f"{_first_sentence(err)}); if it is a run's checkpoint, resume from an earlier one"
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(path, f"checkpoint {str(path)!r}: expected a dict, got "
                                    f"{type(ckpt).__name__}")
    return ckpt


def check_output_path(path: str | os.PathLike, flag: str, kind: str = "file") -> Path:
    """An output path checked before any work: no existing *file* among its parent folders
    (``--out afile/x.json`` cannot be created), and for ``kind="file"`` not an existing
    folder, for ``kind="folder"`` not an existing file. Without this the writers failed
    after the work with a raw ``FileExistsError`` or named their temporary file.

    Raises:
        UsageError: naming ``flag`` and the offending path.
    """
    p = Path(path)
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag}: cannot write {str(p)!r}: {str(parent)!r} is an "
                                 f"existing file, not a folder")
            break
    if kind == "file" and p.is_dir():
        raise UsageError(f"{flag}: expected a file name, got the existing folder {str(p)!r}")
    if kind == "folder" and p.exists() and not p.is_dir():
        raise UsageError(f"{flag}: expected a folder, got the existing file {str(p)!r}")
    return p


def resolve_device(device: str | torch.device | None, name: str = "device",
                   default: torch.device | None = None) -> torch.device:
    """The :class:`torch.device` a user asked for, checked to exist on this machine.

    ``None`` means ``default`` (CPU when not given). torch itself answers an unknown name
    with a ``RuntimeError`` and an absent accelerator (``"cuda"`` on a CPU-only build) only
    at the first ``.to()``, with an ``AssertionError``; both become a ``ValueError`` naming
    ``name`` here. Shared by the apps (``device=`` arguments and ``--device`` options).

    Raises:
        ValueError: not a device name, or a device this build/machine does not have.

    Example:
        >>> resolve_device(None), resolve_device("cpu")
        (device(type='cpu'), device(type='cpu'))
    """
    if device is None:
        return default if default is not None else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected a torch device such as 'cpu' or 'cuda', got "
                         f"{device!r}") from err
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise ValueError(f"{name}: expected an available device, got {device!r} "
                             f"({count} CUDA device(s) visible to this torch build)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name}: expected an available device, got {device!r} "
                             f"(MPS is not available)")
    elif dev.type not in ("cpu", "meta"):
        try:
            torch.empty(0, device=dev)
        except Exception as err:  # backends raise various types when absent
            raise ValueError(f"{name}: expected an available device, got {device!r} "
                             f"({type(err).__name__}: {_first_sentence(err)})") from err
    return dev


def evaluated_progress(module: Any) -> tuple[int, int]:
    """``(epoch, global_step)`` of the weights a LightningModule is evaluating, for results
    files: while fitting, the trainer's; in ``validate``/``test --ckpt_path X`` (a fresh
    trainer counting from 0) the values stored in checkpoint ``X``.

    Example:
        >>> import types
        >>> m = types.SimpleNamespace(current_epoch=3, global_step=40, trainer=None)
        >>> evaluated_progress(m)
        (3, 40)
    """
    epoch, step = int(module.current_epoch), int(module.global_step)
    trainer = getattr(module, "trainer", None)
    ckpt_path = getattr(trainer, "ckpt_path", None)
    if step or trainer is None or getattr(trainer, "training", False) or not ckpt_path:
        return epoch, step
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - the run already loaded it; keep the trainer's values
        return epoch, step
    return int(ckpt.get("epoch", epoch)), int(ckpt.get("global_step", step))


def find_last_checkpoints(roots: list[Path]) -> list[Path]:
    """Every ``last*.ckpt`` file under the existing folders of ``roots``."""
    return [p for r in roots if r.is_dir() for p in r.rglob("last*.ckpt") if p.is_file()]


def newest_last_checkpoint(roots: list[Path]) -> Path | None:
    """The newest (by modification time, then path) ``last*.ckpt`` under ``roots``, or
    ``None``: what ``--ckpt_path last`` means."""
    found = find_last_checkpoints(roots)
    return max(found, key=lambda p: (p.stat().st_mtime_ns, str(p))) if found else None


def resolve_last_checkpoint(trainer: Any, subcommand: str, prog: str) -> str | None:
    """What ``--ckpt_path last`` means for the geo3d apps: the newest ``last*.ckpt`` (by
    modification time, then path) anywhere under the run directory
    (``trainer.default_root_dir``, which holds every ``lightning_logs/version_N``) or an
    explicit ``checkpoint.dirpath``. Lightning itself looks only in the new run's own
    version folder, where nothing exists yet, and silently trains from scratch.

    With none found, ``fit`` starts a fresh run with a notice on stderr (so one command can
    start and resume a job); other subcommands raise.

    Args:
        trainer: the Lightning Trainer about to run.
        subcommand: ``fit``, ``validate``, ``test`` or ``predict``.
        prog: the command's name for the notices (``geo3d assembly``).

    Raises:
        FileNotFoundError: no ``last*.ckpt`` and ``subcommand`` is not ``fit``.
    """
    roots = [Path(trainer.default_root_dir)]
    cb = getattr(trainer, "checkpoint_callback", None)
    if cb is not None and getattr(cb, "dirpath", None):
        roots.append(Path(cb.dirpath))
    best = newest_last_checkpoint(roots)
    where = " or ".join(repr(str(r)) for r in roots)
    if best is None:
        if subcommand == "fit":
            print(f"{prog} fit: --ckpt_path last: no last.ckpt under {where}; starting a fresh "
                  "run", file=sys.stderr, flush=True)
            return None
        raise FileNotFoundError(f"ckpt_path: 'last' but no last*.ckpt exists under {where}")
    print(f"{prog} {subcommand}: --ckpt_path last -> {best}", file=sys.stderr, flush=True)
    return str(best)
