"""``geo3d assembly``: LightningCLI (fit/validate/test/predict), piece assembly, demo.

Usage::

    geo3d assembly fit --config demo.yaml [--trainer.max_epochs 5 ...]
    geo3d assembly fit --config demo.yaml --ckpt_path last   # resume the newest last.ckpt
    geo3d assembly test --config demo.yaml --ckpt_path runs/x/checkpoints/last.ckpt
    geo3d assembly predict --checkpoint last.ckpt --pieces a.obj b.obj [--out poses.json]
                           [--method matching|network] [--no-refine]
    geo3d assembly demo [--out runs/demo] [--config-set demo|long]

``--config NAME`` also accepts the name of a packaged config (``demo``, ``long``,
``breaking_bad_everyday``, ``demo_global``, ``long_global``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "main", "config_path", "run_lightning_cli", "resolve_last_checkpoint",
           "UsageError"]

_LIGHTNING = ("fit", "validate", "test", "predict")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class UsageError(ValueError):
    """A command line that ``geo3d assembly`` cannot run (missing config file, unknown or
    misplaced arguments); the ``geo3d`` CLI prints it as one line and exits with 2."""


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
    # jsonargparse also takes inline YAML/JSON (``--config '{trainer: ...}'``): only a
    # value that cannot be inline YAML must name a file
    if not Path(path).is_file() and not any(c in name for c in ":{}\n"):
        raise UsageError(f"--config: expected an existing YAML file or a packaged config "
                         f"name ({', '.join(_packaged_configs())}), got {name!r} (no such "
                         f"file)")
    return path


def _resolve_configs(args: list[str]) -> list[str]:
    out = list(args)
    for i, a in enumerate(out):
        if a == "--config":
            if i + 1 >= len(out):
                raise UsageError("--config: expected a YAML file after it, got nothing")
            out[i + 1] = _existing_config(out[i + 1])
        elif a.startswith("--config="):
            out[i] = "--config=" + _existing_config(a.split("=", 1)[1])
    return out


def _make_cli_class() -> Any:
    from geo3d.apps.assembly._checkpoint import AtomicCheckpointIO
    from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.plugins.io import CheckpointIO

    class PredictionWriter(BasePredictionWriter):
        """Writes ``predictions.json`` (one entry per object: name, 4x4 poses of its valid
        parts) into the trainer's log dir (``predictions_rank<r>.json`` under DDP)."""

        def __init__(self) -> None:
            super().__init__(write_interval="epoch")

        def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
            import json

            import torch
            from geo3d.apps.assembly._checkpoint import atomic_write_text

            objs = []
            for out in predictions:
                for i in range(out["rot"].shape[0]):
                    v = out["valid"][i]
                    T = torch.eye(4).repeat(int(v.sum()), 1, 1)
                    T[:, :3, :3] = out["rot"][i][v]
                    T[:, :3, 3] = out["trans"][i][v]
                    name = out["name"][i] if i < len(out["name"]) else str(len(objs))
                    objs.append({"name": name, "poses": T.tolist()})
            d = Path(trainer.log_dir or trainer.default_root_dir)
            fname = "predictions.json" if trainer.world_size == 1 else \
                f"predictions_rank{trainer.global_rank}.json"
            atomic_write_text(d / fname, json.dumps(objs))
            print(f"wrote {d / fname} ({len(objs)} objects)")

    class AssemblyCLI(LightningCLI):
        """LightningCLI with a ``checkpoint`` (ModelCheckpoint, ``save_last``) group and the
        atomic checkpoint IO plugin always installed. Its parsers raise on bad arguments
        (instead of printing the whole usage and exiting), see :func:`run_lightning_cli`."""

        def init_parser(self, **kwargs: Any) -> Any:
            kwargs.setdefault("exit_on_error", False)
            return super().init_parser(**kwargs)

        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            # last.ckpt after every training epoch (not only at validation epochs), so a
            # killed run loses at most one epoch; writes are atomic (AtomicCheckpointIO)
            parser.set_defaults({"checkpoint.save_last": True,
                                 "checkpoint.save_on_train_epoch_end": True})

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
            if getattr(self, "subcommand", None) == "predict":
                callbacks = [*callbacks, PredictionWriter()]
            return super()._instantiate_trainer(config, callbacks)

    return AssemblyCLI


def _find_last_checkpoints(roots: list[Path]) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        if root.is_dir():
            found += [p for p in root.rglob("last*.ckpt") if p.is_file()]
    return found


def resolve_last_checkpoint(trainer: Any, subcommand: str) -> str | None:
    """What ``--ckpt_path last`` means for ``geo3d assembly``: the newest ``last*.ckpt``
    (by modification time) anywhere under the run directory (``trainer.default_root_dir``,
    which holds every ``lightning_logs/version_N/checkpoints``) or under an explicit
    ``checkpoint.dirpath``. Lightning itself only looks in the new run's own version
    folder, where nothing exists yet, and silently trains from scratch.

    With no checkpoint found, ``fit`` starts a fresh run and prints a notice saying so
    (so the same command can start and resume a job); ``validate``/``test``/``predict``
    raise ``FileNotFoundError``.
    """
    roots = [Path(trainer.default_root_dir)]
    cb = getattr(trainer, "checkpoint_callback", None)
    if cb is not None and getattr(cb, "dirpath", None):
        roots.append(Path(cb.dirpath))
    found = _find_last_checkpoints(roots)
    where = " or ".join(repr(str(r)) for r in roots)
    if not found:
        if subcommand == "fit":
            print(f"geo3d assembly fit: --ckpt_path last: no last.ckpt under {where}; "
                  "starting a fresh run", file=sys.stderr, flush=True)
            return None
        raise FileNotFoundError(f"ckpt_path: 'last' but no last*.ckpt exists under {where}")
    best = max(found, key=lambda p: (p.stat().st_mtime_ns, str(p)))
    print(f"geo3d assembly {subcommand}: --ckpt_path last -> {best}", file=sys.stderr,
          flush=True)
    return str(best)


def run_lightning_cli(args: list[str], run: bool = True) -> Any:
    """Run LightningCLI on ``args`` (e.g. ``["fit", "--config", "demo"]``); returns the CLI."""
    from geo3d.apps.assembly._data import AssemblyDataModule
    from geo3d.apps.assembly._module import AssemblyModule

    cmd = args[0] if args else ""
    args = _resolve_configs(args)
    cls = _make_cli_class()
    argv, sys.argv = sys.argv, ["geo3d assembly"]  # the arguments come from `args`
    try:
        return cls(
            AssemblyModule,
            AssemblyDataModule,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    except argparse.ArgumentError as err:  # jsonargparse, exit_on_error=False
        msg = " ".join(str(err).split())
        raise UsageError(f"geo3d assembly {cmd}: {msg} (see `geo3d assembly {cmd} --help`)"
                         ) from err
    finally:
        sys.argv = argv


def _predict_pieces(argv: list[str]) -> int:
    import json

    import torch
    from geo3d.apps.assembly._api import assemble
    from geo3d.apps.assembly._checkpoint import atomic_write_text

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:  # one line via the geo3d CLI, exit code 2
            raise UsageError(f"geo3d assembly predict: {message} (see `geo3d assembly "
                             f"predict --help`)")

    p = _Parser(prog="geo3d assembly predict", description="Assemble pieces.")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `fit`")
    p.add_argument("--pieces", nargs="+", default=None, help="mesh or point-cloud files")
    p.add_argument("--num-points", type=int, default=512)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="where to run (default: cpu)")
    p.add_argument("--method", default="matching", choices=["matching", "network"],
                   help="matching: descriptor matching + RANSAC + refinement (default); "
                        "network: the network's own poses")
    p.add_argument("--no-refine", action="store_true",
                   help="skip the matching pipeline's joint refinement")
    p.add_argument("--out", default=None, help="write poses as JSON here (default: stdout)")
    a, extra = p.parse_known_args(argv)
    if extra:
        stray = [x for x in extra if not x.startswith("-")]
        if stray and len(stray) == len(extra):
            raise UsageError(f"geo3d assembly predict: unexpected positional argument(s) "
                             f"{' '.join(stray)}: give the piece files after --pieces")
        raise UsageError(f"geo3d assembly predict: unrecognized argument(s) "
                         f"{' '.join(extra)} (see `geo3d assembly predict --help`)")
    if not a.pieces:
        raise UsageError("--pieces: expected the piece files to assemble, got none (geo3d "
                         "assembly predict --checkpoint CKPT --pieces A B ...)")
    T = assemble(a.pieces, a.checkpoint, num_points=a.num_points, scale=a.scale,
                 device=a.device, generator=torch.Generator().manual_seed(a.seed),
                 method=a.method, refine=not a.no_refine)
    text = json.dumps({"pieces": a.pieces, "method": a.method, "poses": T.tolist()}, indent=2)
    if a.out:
        atomic_write_text(a.out, text)
        print(f"wrote {a.out}")
    else:
        print(text)
    return 0


def main(argv: list[str]) -> int:
    """Dispatch ``geo3d assembly ARGS``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], list(argv[1:])
    if cmd == "predict" and any(a in ("--pieces", "--checkpoint") or
                                a.startswith(("--pieces=", "--checkpoint="))
                                for a in rest):
        # `--checkpoint` alone is this command with --pieces forgotten (LightningCLI
        # would read the checkpoint file as the YAML of its `checkpoint` group)
        return _predict_pieces(rest)
    if cmd in _LIGHTNING:
        run_lightning_cli([cmd, *rest])
        return 0
    if cmd == "demo":
        from geo3d.apps.assembly._demo import demo_main

        return demo_main(rest)
    print(f"geo3d assembly: unknown command {cmd!r} (expected fit, validate, test, predict, "
          "demo)", file=sys.stderr)
    return 2


def add_parser(subparsers: Any) -> None:
    """Register ``geo3d assembly`` (arguments are forwarded, see module docstring)."""
    p = subparsers.add_parser(
        "assembly", add_help=False,
        help="shape assembly: fit/validate/test/predict (LightningCLI), demo",
    )
    p.add_argument("-h", "--help", action="store_true", dest="assembly_help",
                   help="show the assembly commands")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda ns: main(["--help"] if ns.assembly_help else list(ns.args)))
