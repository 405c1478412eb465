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
build; it measured worse than random initialisation for matching). Devices, strategy (DDP)
and nodes are Trainer settings in the YAML (``trainer.devices``, ``trainer.strategy``, ``trainer.num_nodes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geo3d._app import OneLineParser, PackagedConfigs, UsageError, add_forwarding_parser
from geo3d._app import resolve_last_checkpoint as _resolve_last

__all__ = ["add_parser", "main", "config_path", "run_lightning_cli", "resolve_last_checkpoint",
           "UsageError", "step_progress_bar", "check_fit_limits"]

_LIGHTNING = ("fit", "validate", "test")
_COMMANDS = (*_LIGHTNING, "eval", "demo")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROG = "geo3d multiview"
CONFIGS = PackagedConfigs(CONFIG_DIR)
config_path = CONFIGS.path
_ALIASES = {"--vit": ("--model.vit", "a DINOv2 .pth file or folder")}


def step_progress_bar() -> Any:
    """The apps' progress bar (``Epoch k`` on step-limited runs), see
    :func:`geo3d._app_lightning.step_progress_bar`."""
    from geo3d._app_lightning import step_progress_bar as bar

    return bar()


def resolve_last_checkpoint(trainer: Any, subcommand: str) -> str | None:
    """``--ckpt_path last``: see :func:`geo3d._app.resolve_last_checkpoint` (the newest
    ``last*.ckpt`` under the run folder; ``fit`` without one starts fresh, other commands
    raise ``FileNotFoundError``)."""
    return _resolve_last(trainer, subcommand, PROG)


def _make_cli_class() -> Any:
    from geo3d._app_lightning import AppLightningCLI

    class MultiviewCLI(AppLightningCLI):
        """geo3d's app LightningCLI (checkpoint group, atomic IO, ``--ckpt_path last``,
        one-line errors, step progress bar); runs are step-limited, so ``last.ckpt`` is
        written at checkpoint intervals, not per epoch."""

        prog = PROG
        save_on_train_epoch_end = False

        def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
            if self.subcommand == "fit":
                check_fit_limits(config.get("max_steps", -1), config.get("max_epochs"),
                                 config.get("max_time"))
            return super()._instantiate_trainer(config, callbacks)

    return MultiviewCLI


def check_fit_limits(max_steps: Any, max_epochs: Any, max_time: Any = None) -> None:
    """Refuse a ``fit`` that would train nothing or never stop.

    Raises:
        UsageError: ``trainer.max_steps`` 0 or below -1, or -1 (no step limit) while
            ``trainer.max_epochs`` is -1/None and no ``max_time`` is set.
    """
    steps = -1 if max_steps is None else max_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps == 0 or steps < -1:
        raise UsageError(f"trainer.max_steps: expected an int >= 1 (or -1 with "
                         f"trainer.max_epochs >= 1), got {max_steps!r}")
    if steps == -1 and (max_epochs is None or max_epochs == -1) and max_time is None:
        raise UsageError(f"trainer.max_steps: expected an int >= 1 when trainer.max_epochs is "
                         f"{max_epochs!r} (the run would never stop), got -1")


def run_lightning_cli(args: list[str], run: bool = True) -> Any:
    """Run LightningCLI on ``args`` (e.g. ``["fit", "--config", "demo"]``); returns the CLI.
    ``--vit X`` is short for ``--model.vit X``.

    Raises:
        UsageError: unknown/bad arguments or a missing config file (one line).
    """
    from geo3d.apps.multiview_corr._data import MultiviewCorrDataModule
    from geo3d.apps.multiview_corr._module import MultiviewCorrModule
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from geo3d._app_lightning import run_app_cli

    try:
        return run_app_cli(_make_cli_class(), MultiviewCorrModule, MultiviewCorrDataModule,
                           args, CONFIGS, run=run, aliases=_ALIASES)
    except MisconfigurationException as err:  # Lightning's "bad Trainer settings"
        cmd = args[0] if args else ""
        raise UsageError(f"{PROG} {cmd}: trainer: {' '.join(str(err).split())}") from err


def _eval_main(argv: list[str]) -> int:
    from geo3d.apps.multiview_corr._evaluate import eval_adapter_main

    p = OneLineParser(prog=f"{PROG} eval", description=(
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
    add_forwarding_parser(
        subparsers, "multiview",
        "multiview-equivariance finetuning of ViT features: fit/validate/test (LightningCLI), "
        "eval (before/after table), demo", main)
