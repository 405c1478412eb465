"""``geo3d multiview``: finetuning (LightningCLI fit/validate/test), before/after evaluation, demo.

Usage::

    geo3d multiview fit --config demo                       # a few CPU minutes
    geo3d multiview fit --config demo --ckpt_path last      # resume the newest last.ckpt
    geo3d multiview fit --config reference --vit dinov2_vitb14_pretrain.pth --data.root R
    geo3d multiview validate --config demo --ckpt_path last
    geo3d multiview eval --adapter runs/multiview_demo/.../last.ckpt [--out table.json]
    geo3d multiview demo [--out runs/multiview_demo]

``--config NAME`` also accepts a packaged config (``demo``, ``reference``). ``--vit PATH``
(an official DINOv2 ``.pth`` or a Hugging Face folder on disk) is short for
``--model.vit PATH``; without it the ``demo`` run starts from a seeded RANDOM ViT-S/14
(``--vit pretrained``: the ViT-S/14 pretrained on synthetic renders, cached after its first
build; it measured worse than random initialisation for matching). Devices, strategy (DDP) and nodes are Trainer
settings in the YAML (``trainer.devices``, ``trainer.strategy``, ``trainer.num_nodes``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "main", "config_path", "run_lightning_cli", "resolve_last_checkpoint",
           "UsageError", "step_progress_bar"]

_LIGHTNING = ("fit", "validate", "test")
_COMMANDS = (*_LIGHTNING, "eval", "demo")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROG = "geo3d multiview"


class UsageError(ValueError):
    """A command line ``geo3d multiview`` cannot run; the ``geo3d`` CLI prints it as one
    line and exits with 2."""


def _packaged_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def config_path(name: str) -> str:
    """Resolve a config argument: an existing path, or a packaged config name."""
    p = Path(name)
    if p.is_file():
        return str(p)
    for cand in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if cand.is_file():
            return str(cand)
    return name


def _existing_config(name: str) -> str:
    path = config_path(name)
    if not Path(path).is_file() and not any(c in name for c in ":{}\n"):
        raise UsageError(f"--config: expected an existing YAML file or a packaged config name "
                         f"({', '.join(_packaged_configs())}), got {name!r} (no such file)")
    return path


def _rewrite_args(args: list[str]) -> list[str]:
    """Resolve ``--config`` names and turn ``--vit X`` into ``--model.vit X``."""
    out = list(args)
    i = 0
    while i < len(out):
        a = out[i]
        if a in ("--config", "--vit"):
            if i + 1 >= len(out) or out[i + 1].startswith("--"):
                what = "a YAML file" if a == "--config" else "a DINOv2 .pth file or folder"
                raise UsageError(f"{a}: expected {what} after it, got nothing")
            if a == "--config":
                out[i + 1] = _existing_config(out[i + 1])
            else:
                out[i] = "--model.vit"
            i += 2
            continue
        if a.startswith("--config="):
            out[i] = "--config=" + _existing_config(a.split("=", 1)[1])
        elif a.startswith("--vit="):
            out[i] = "--model.vit=" + a.split("=", 1)[1]
        i += 1
    return out


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


def _make_cli_class() -> Any:
    from geo3d.apps.multiview_corr._module import AtomicCheckpointIO
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.plugins.io import CheckpointIO

    class MultiviewCLI(LightningCLI):
        """LightningCLI with a ``checkpoint`` (ModelCheckpoint) group, atomic checkpoint
        writes, ``--ckpt_path last`` resolved over the run folder, and parse errors raised
        (one line) instead of printing the usage."""

        def init_parser(self, **kwargs: Any) -> Any:
            kwargs.setdefault("exit_on_error", False)
            return super().init_parser(**kwargs)

        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults({"checkpoint.save_last": True})

        def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
            kwargs = super()._prepare_subcommand_kwargs(subcommand)
            if kwargs.get("ckpt_path") == "last":
                kwargs["ckpt_path"] = resolve_last_checkpoint(self.trainer, subcommand)
            return kwargs

        def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
            plugins = config.get("plugins") or []
            plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                plugins.append(AtomicCheckpointIO())
            config["plugins"] = plugins
            given = config.get("callbacks") or []
            given = list(given) if isinstance(given, (list, tuple)) else [given]
            if config.get("enable_progress_bar", True) is not False and not any(
                    isinstance(c, ProgressBar) for c in [*callbacks, *given]):
                callbacks = [*callbacks, step_progress_bar()]
            return super()._instantiate_trainer(config, callbacks)

    return MultiviewCLI


def resolve_last_checkpoint(trainer: Any, subcommand: str) -> str | None:
    """``--ckpt_path last``: the newest ``last*.ckpt`` under the run folder
    (``trainer.default_root_dir``) or the checkpoint ``dirpath``. ``fit`` without one
    starts fresh (with a notice); other commands raise ``FileNotFoundError``."""
    roots = [Path(trainer.default_root_dir)]
    cb = getattr(trainer, "checkpoint_callback", None)
    if cb is not None and getattr(cb, "dirpath", None):
        roots.append(Path(cb.dirpath))
    found = [p for r in roots if r.is_dir() for p in r.rglob("last*.ckpt") if p.is_file()]
    where = " or ".join(repr(str(r)) for r in roots)
    if not found:
        if subcommand == "fit":
            print(f"{PROG} fit: --ckpt_path last: no last.ckpt under {where}; starting a fresh "
                  "run", file=sys.stderr, flush=True)
            return None
        raise FileNotFoundError(f"ckpt_path: 'last' but no last*.ckpt exists under {where}")
    best = max(found, key=lambda p: (p.stat().st_mtime_ns, str(p)))
    print(f"{PROG} {subcommand}: --ckpt_path last -> {best}", file=sys.stderr, flush=True)
    return str(best)


def run_lightning_cli(args: list[str], run: bool = True) -> Any:
    """Run LightningCLI on ``args`` (e.g. ``["fit", "--config", "demo"]``); returns the CLI.

    Raises:
        UsageError: unknown/bad arguments or a missing config file (one line).
    """
    from geo3d.apps.multiview_corr._data import MultiviewCorrDataModule
    from geo3d.apps.multiview_corr._module import MultiviewCorrModule

    cmd = args[0] if args else ""
    args = _rewrite_args(args)
    cls = _make_cli_class()
    argv, sys.argv = sys.argv, [PROG]
    try:
        return cls(MultiviewCorrModule, MultiviewCorrDataModule, args=args, run=run,
                   save_config_kwargs={"overwrite": True})
    except argparse.ArgumentError as err:
        msg = " ".join(str(err).split())
        raise UsageError(f"{PROG} {cmd}: {msg} (see `{PROG} {cmd} --help`)") from err
    finally:
        sys.argv = argv


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line via the geo3d CLI, exit code 2
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _eval_main(argv: list[str]) -> int:
    from geo3d.apps.multiview_corr._evaluate import eval_adapter_main

    p = _Parser(prog=f"{PROG} eval", description=(
        "Before/after table on held-out objects: the backbone's features vs the finetuned "
        "model's (APE, PCDP, PCK, pose accuracy, tracking AJ); writes JSON."))
    p.add_argument("--adapter", required=True, help="adapter checkpoint written by `fit`")
    p.add_argument("--vit", default=None,
                   help="the backbone the adapter was trained on (default: as recorded)")
    p.add_argument("--data", default=None,
                   help="rendered dataset root (default: the fit run's data.root)")
    p.add_argument("--pairs", type=int, default=4, help="view pairs per held-out object [4]")
    p.add_argument("--max-points", type=int, default=1000,
                   help="points per pair for APE/PCDP [1000]")
    p.add_argument("--pose-queries", type=int, default=4,
                   help="pose-estimation query views per held-out object (0: skip) [4]")
    p.add_argument("--track-frames", type=int, default=12,
                   help="frames of the tracking video per held-out object (0: skip) [12]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="JSON file (default: multiview_eval.json next to the adapter)")
    p.add_argument("--picture", default=None, help="also draw the correspondence picture (PNG)")
    a = p.parse_args(argv)
    return eval_adapter_main(a)


def main(argv: list[str]) -> int:
    """Dispatch ``geo3d multiview ARGS``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], list(argv[1:])
    if cmd in _LIGHTNING:
        run_lightning_cli([cmd, *rest])
        return 0
    if cmd == "eval":
        return _eval_main(rest)
    if cmd == "demo":
        from geo3d.apps.multiview_corr._demo import demo_main

        return demo_main(rest)
    raise UsageError(f"{PROG}: unknown command {cmd!r} (expected {', '.join(_COMMANDS)})")


def add_parser(subparsers: Any) -> None:
    """Register ``geo3d multiview`` (arguments are forwarded, see module docstring)."""
    p = subparsers.add_parser(
        "multiview", add_help=False,
        help="multiview-equivariance finetuning of ViT features: fit/validate/test "
        "(LightningCLI), eval (before/after table), demo",
    )
    p.add_argument("-h", "--help", action="store_true", dest="multiview_help",
                   help="show the multiview commands")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda ns: main(["--help"] if ns.multiview_help else list(ns.args)))
