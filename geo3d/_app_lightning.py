"""The Lightning half of the apps' shared command-line plumbing (see :mod:`geo3d._app`).

* :class:`AtomicCheckpointIO`: checkpoints written through a temporary file + rename (a
  killed run never leaves a half-written file under the final name), loaded with
  ``weights_only=True`` and a clear error for truncated files.
* :class:`AppLightningCLI`: LightningCLI with a ``checkpoint`` group (``ModelCheckpoint``,
  ``save_last``), the atomic IO always installed, ``--ckpt_path last`` resolved over the run
  folder, a progress bar that reads ``Epoch k`` (not ``Epoch k/-2``) on step-limited runs,
  and parsers that raise instead of printing the usage and exiting. Apps subclass
  it (``prog``, :meth:`~AppLightningCLI.add_app_arguments`,
  :meth:`~AppLightningCLI.app_callbacks`).
* :func:`run_app_cli`: runs such a CLI on an argument list and turns parse errors into one
  :class:`~geo3d._app.UsageError` line, Lightning's Ctrl-C shutdown (``sys.exit(1)``) into
  ``KeyboardInterrupt`` (``geo3d`` exits 130) and SIGTERM (exit status 0) into exit
  status 143.

Imported only when a Lightning command runs (importing Lightning takes seconds).
"""

from __future__ import annotations

import argparse
import io
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO

from geo3d._app import (
    CheckpointError,
    PackagedConfigs,
    UsageError,
    load_checkpoint,
    newest_last_checkpoint,
    resolve_last_checkpoint,
)
from geo3d._atomic import atomic_write_bytes

__all__ = ["AtomicCheckpointIO", "AppLightningCLI", "check_training_limits", "run_app_cli",
           "step_progress_bar"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` writing through a temporary file + ``os.replace`` and
    loading with ``weights_only=True`` (:func:`geo3d._app.load_checkpoint`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(path, buf.getvalue())

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location if map_location else "cpu")


def step_progress_bar() -> Any:
    """Lightning's default progress bar (Rich when installed, else tqdm) whose training
    description reads ``Epoch k`` when the run is limited by steps (``max_epochs`` -1 or
    None) instead of Rich's ``Epoch k/-2``."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    if not _RICH_AVAILABLE:
        return TQDMProgressBar()  # its description has no epoch total

    class StepProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            max_epochs = self.trainer.max_epochs
            if max_epochs is not None and max_epochs >= 0:
                return super()._get_train_description(current_epoch)
            desc = f"Epoch {current_epoch}"
            return f"{desc:{max(len(desc), len(self.validation_description))}}"

    return StepProgressBar()


def _as_list(x: Any) -> list[Any]:
    if not x:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


class AppLightningCLI(LightningCLI):
    """LightningCLI for a geo3d app; subclass and set :attr:`prog`.

    Attributes:
        prog: the command's name in messages (``"geo3d assembly"``).
        save_on_train_epoch_end: write ``last.ckpt`` after every training epoch (not only
            at validation epochs), so a killed run loses at most one epoch. Step-limited
            runs (one long epoch) set it to ``False``.
    """

    prog = "geo3d"
    save_on_train_epoch_end = True

    def init_parser(self, **kwargs: Any) -> Any:
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # Ctrl-C, SIGTERM or a crash writes last.ckpt at the step reached: `--ckpt_path last`
        # resumes there instead of at the last finished epoch or validation
        defaults = {"checkpoint.save_last": True, "checkpoint.save_on_exception": True}
        if self.save_on_train_epoch_end:
            defaults["checkpoint.save_on_train_epoch_end"] = True
        parser.set_defaults(defaults)
        self.add_app_arguments(parser)

    def add_app_arguments(self, parser: Any) -> None:
        """Hook: links or extra arguments of one app."""

    def app_callbacks(self, config: dict[str, Any], callbacks: list[Any]) -> list[Any]:
        """Hook: the trainer's callbacks, to which an app may add its own."""
        return callbacks

    def parse_arguments(self, parser: Any, args: Any) -> None:
        self._given_args = list(args) if isinstance(args, (list, tuple)) else None
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path FILE`` (or ``last``, the file :func:`~geo3d._app.resolve_last_checkpoint`
        will pick): read it with :func:`geo3d._app.load_checkpoint` (a truncated or foreign
        file is a one-line :class:`~geo3d._app.UsageError`), and build the settings in this
        order: defaults, config files, the checkpoint's saved model settings (Lightning's
        behaviour: the weights need the architecture they were trained with), command-line
        flags (``--model.icp_steps 8`` is honoured, where Lightning let the checkpoint win;
        each flag is applied once)."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        ckpt_path = self.config[sub].get("ckpt_path")
        if not ckpt_path:
            return
        if ckpt_path == "last":
            path = self._last_checkpoint(sub)
            if path is None:
                return  # resolve_last_checkpoint reports it (fit: fresh run; others: error)
        elif Path(ckpt_path).exists():
            path = Path(ckpt_path)
        else:
            return  # the trainer's "not found" error
        where = f"{self.prog} {sub}: --ckpt_path"
        try:
            ckpt = load_checkpoint(path)
        except (CheckpointError, OSError) as err:
            raise UsageError(f"{where}: {err}") from err
        if not isinstance(ckpt, dict) or not {"state_dict", "pytorch-lightning_version"} <= set(ckpt):
            got = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise UsageError(f"{where}: expected a checkpoint written by `{self.prog} fit` "
                             f"(Lightning keys 'state_dict', 'pytorch-lightning_version'), got "
                             f"{got} in {str(path)!r}")
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        args = self._given_args
        configs, flags = _split_config_files(args[1:]) if args and args[0] == sub else (None, [])
        # the config files alone (validated with the flags below: a required setting such
        # as data.root may come from a flag)
        base = self.config if configs is None else self.parser.parse_args(
            [sub, *configs], _skip_validation=True)
        try:
            # the settings must be this app's: checked on the full, valid command line
            self.parser.parse_object({sub: {"model": hparams}}, self.config)
            self.config = self.parser.parse_object({sub: {"model": hparams}}, base,
                                                   _skip_validation=bool(flags))
        except (argparse.ArgumentError, TypeError, ValueError, KeyError) as err:
            msg = " ".join(str(err).split())[:200]
            raise UsageError(f"{where}: the model settings saved in {str(path)!r} are not "
                             f"`{self.prog}`'s (a checkpoint of another geo3d app?): {msg}") from err
        if flags:  # the command line wins, each flag applied once
            self.config = self.parser.parse_args([sub, *flags], namespace=self.config)

    def _last_checkpoint(self, sub: str) -> Path | None:
        """The file ``--ckpt_path last`` will resolve to (the same search as
        :func:`~geo3d._app.resolve_last_checkpoint`, before the trainer exists), or None."""
        import os

        cfg = self.config[sub]
        roots = [Path(cfg.get("trainer", {}).get("default_root_dir") or os.getcwd())]
        dirpath = (cfg.get("checkpoint") or {}).get("dirpath")
        if dirpath:
            roots.append(Path(dirpath))
        return newest_last_checkpoint(roots)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except RuntimeError as err:
            if "Error(s) in loading state_dict" not in str(err):
                raise
            first = " ".join(str(err).split())[:240]
            raise UsageError(
                f"{self.prog} {subcommand}: --ckpt_path: the checkpoint's weights do not fit "
                f"the model these settings build; a --model flag that changes the network "
                f"overrides the checkpoint's own settings ({first})") from err

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("ckpt_path") == "last":
            kwargs["ckpt_path"] = resolve_last_checkpoint(self.trainer, subcommand, self.prog)
        return kwargs

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        if self.subcommand == "fit":
            check_training_limits(config, f"{self.prog} fit")
        plugins = _as_list(config.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        config["plugins"] = plugins
        callbacks = self.app_callbacks(config, callbacks)
        given = _as_list(config.get("callbacks"))
        if config.get("enable_progress_bar", True) is not False and not any(
                isinstance(c, ProgressBar) for c in [*callbacks, *given]):
            callbacks = [*callbacks, step_progress_bar()]
        return super()._instantiate_trainer(config, callbacks)


def _zero_duration(value: Any) -> bool:
    """Whether a ``trainer.max_time`` value (``"DD:HH:MM:SS"``, a dict of timedelta fields or
    a timedelta) is a zero duration."""
    import datetime

    if isinstance(value, datetime.timedelta):
        return value.total_seconds() <= 0
    if isinstance(value, Mapping):
        return sum(float(v) for v in value.values()) <= 0
    if isinstance(value, str):
        try:
            return all(float(x) == 0 for x in value.split(":"))
        except ValueError:
            return False  # Lightning reports a malformed value
    return False


def check_training_limits(config: Mapping[str, Any], where: str) -> None:
    """Refuse trainer limits with which Lightning trains nothing and exits 0 (``max_steps``
    or ``max_epochs`` 0, a zero ``max_time``) or fails with a traceback (below -1).

    Raises:
        UsageError: naming the setting.
    """
    for key in ("max_steps", "max_epochs"):
        v = config.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v == 0 or v < -1:
            raise UsageError(f"{where}: trainer.{key}: expected an int >= 1 (or -1: no limit), "
                             f"got {v!r}" + (": the run would train nothing" if v == 0 else ""))
    if config.get("max_time") is not None and _zero_duration(config["max_time"]):
        raise UsageError(f"{where}: trainer.max_time: expected a positive duration, got "
                         f"{config['max_time']!r}: the run would train nothing")


def _split_config_files(args: list[str]) -> tuple[list[str], list[str]]:
    """``args`` split into the config-file arguments (``--config FILE`` / ``-c FILE`` /
    ``--config=FILE``, in order) and everything else (in order)."""
    configs: list[str] = []
    rest: list[str] = []
    take = False
    for a in args:
        if take:
            configs.append(a)
            take = False
        elif a in ("--config", "-c"):
            configs.append(a)
            take = True
        elif a.startswith("--config="):
            configs.append(a)
        else:
            rest.append(a)
    return configs, rest


def run_app_cli(cli_class: type[AppLightningCLI], model_class: Any, datamodule_class: Any,
                args: list[str], configs: PackagedConfigs, *, run: bool = True,
                aliases: Mapping[str, tuple[str, str]] | None = None, **kwargs: Any) -> Any:
    """Run ``cli_class`` on ``args`` (e.g. ``["fit", "--config", "demo"]``).

    ``--config`` names are resolved against ``configs`` and ``aliases`` rewritten (see
    :meth:`geo3d._app.PackagedConfigs.resolve_args`); ``kwargs`` go to LightningCLI.

    Returns:
        The CLI object (its ``model``, ``datamodule`` and ``trainer``).

    Raises:
        UsageError: unknown or bad arguments, a missing config file (one line).
    """
    prog = cli_class.prog
    cmd = args[0] if args else ""
    args = configs.resolve_args(args, aliases)
    kwargs.setdefault("save_config_kwargs", {"overwrite": True})
    argv, sys.argv = sys.argv, [prog]  # the arguments come from `args`
    sigint = signal.getsignal(signal.SIGINT)
    try:
        return cli_class(model_class, datamodule_class, args=args, run=run, **kwargs)
    except argparse.ArgumentError as err:  # jsonargparse, exit_on_error=False
        msg = " ".join(str(err).split())
        raise UsageError(f"{prog} {cmd}: {msg} (see `{prog} {cmd} --help`)") from err
    except SystemExit as err:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(err.__context__, KeyboardInterrupt):
            # Lightning's graceful shutdown ends in sys.exit(1): `geo3d` reports an
            # interruption (130) instead, as for every other command; Lightning also left
            # Ctrl-C ignored for the rest of the process (a notebook's too)
            if threading.current_thread() is threading.main_thread() and sigint is not None:
                signal.signal(signal.SIGINT, sigint)
            raise KeyboardInterrupt from err
        if isinstance(err, SIGTERMException):  # a SystemExit with no code: exit status 0
            print("geo3d: terminated (SIGTERM)", file=sys.stderr, flush=True)
            raise SystemExit(143) from err  # 128 + SIGTERM: a killed job is not a success
        raise
    finally:
        sys.argv = argv
