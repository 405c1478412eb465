"""``geo3d assembly``: LightningCLI (fit/validate/test/predict), piece assembly, demo.

Usage::

    geo3d assembly fit --config demo.yaml [--trainer.max_epochs 5 ...]
    geo3d assembly fit --config demo.yaml --ckpt_path last   # resume the newest last.ckpt
    geo3d assembly test --config demo.yaml --ckpt_path runs/x/checkpoints/last.ckpt
    geo3d assembly predict --checkpoint last.ckpt --pieces a.obj b.obj [--out poses.json]
                           [--method auto|matching|network|fracture_registration] [--no-refine]
    geo3d assembly demo [--out runs/demo] [--config-set demo|long]

``--config NAME`` also accepts the name of a packaged config (``demo``, ``long``,
``breaking_bad_everyday``, ``demo_global``, ``long_global``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from geo3d._app import OneLineParser, PackagedConfigs, UsageError, add_forwarding_parser
from geo3d._app import resolve_last_checkpoint as _resolve_last
from geo3d._atomic import atomic_write_text

__all__ = ["add_parser", "main", "config_path", "run_lightning_cli", "resolve_last_checkpoint",
           "UsageError"]

_LIGHTNING = ("fit", "validate", "test", "predict")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROG = "geo3d assembly"
CONFIGS = PackagedConfigs(CONFIG_DIR)
config_path = CONFIGS.path


def resolve_last_checkpoint(trainer: Any, subcommand: str) -> str | None:
    """What ``--ckpt_path last`` means for ``geo3d assembly``: see
    :func:`geo3d._app.resolve_last_checkpoint` (the newest ``last*.ckpt`` under the run
    folder; ``fit`` without one starts fresh, other commands raise)."""
    return _resolve_last(trainer, subcommand, PROG)


def _make_cli_class() -> Any:
    from lightning.pytorch.callbacks import BasePredictionWriter

    from geo3d._app_lightning import AppLightningCLI

    class PredictionWriter(BasePredictionWriter):
        """Writes ``predictions.json`` (one entry per object: name, 4x4 poses of its valid
        parts) into the trainer's log dir (``predictions_rank<r>.json`` under DDP)."""

        def __init__(self) -> None:
            super().__init__(write_interval="epoch")

        def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
            import json

            import torch

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

    class AssemblyCLI(AppLightningCLI):
        """geo3d's app LightningCLI (checkpoint group, atomic IO, ``--ckpt_path last``,
        one-line errors) writing ``predictions.json`` on ``predict``."""

        prog = PROG

        def app_callbacks(self, config: dict[str, Any], callbacks: list[Any]) -> list[Any]:
            if getattr(self, "subcommand", None) == "predict":
                return [*callbacks, PredictionWriter()]
            return callbacks

    return AssemblyCLI


def run_lightning_cli(args: list[str], run: bool = True) -> Any:
    """Run LightningCLI on ``args`` (e.g. ``["fit", "--config", "demo"]``); returns the CLI.

    Raises:
        UsageError: unknown/bad arguments or a missing config file (one line).
    """
    from geo3d.apps.assembly._data import AssemblyDataModule
    from geo3d.apps.assembly._module import AssemblyModule

    from geo3d._app_lightning import run_app_cli

    return run_app_cli(_make_cli_class(), AssemblyModule, AssemblyDataModule, args, CONFIGS,
                       run=run, auto_configure_optimizers=False)


_LIGHTNING_PREDICT_NOTE = (
    "LightningCLI predict (the objects of a dataset split, written to predictions.json) is "
    "`geo3d assembly predict --config CFG --ckpt_path CKPT`; its options: `geo3d assembly "
    "predict --config CFG --help`.")


def _piece_parser() -> argparse.ArgumentParser:
    from geo3d.apps.assembly._api import ASSEMBLE_METHODS

    p = OneLineParser(prog="geo3d assembly predict", add_help=False,
                      description="Assemble piece files with a checkpoint written by `fit`.",
                      epilog=_LIGHTNING_PREDICT_NOTE)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `fit`")
    p.add_argument("--pieces", nargs="+", default=None, help="mesh or point-cloud files")
    p.add_argument("--num-points", type=int, default=512,
                   help="points per piece fed to the network (default: 512)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="coordinates are multiplied by this before the network (default: 1)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the point sampling and RANSAC (default: 0)")
    p.add_argument("--device", default=None, help="where to run (default: cpu)")
    p.add_argument("--method", default="auto", choices=list(ASSEMBLE_METHODS),
                   help="auto (default): fracture_registration when every piece is a mesh "
                        "file and open3d is installed, else matching; fracture_registration: "
                        "fracture points from local geometry, pieces merged by ICP of their "
                        "fracture patches (meshes: ~1000 sampled points with normals); "
                        "matching: descriptor matching + RANSAC + refinement; network: the "
                        "network's own poses. The JSON's frame says what fixed the "
                        "object's pose: templates (fracture_registration, registration to the "
                        "checkpoint's training objects), network_anchor (a checkpoint without "
                        "them: the network's pose of the largest piece) or network")
    p.add_argument("--no-refine", action="store_true",
                   help="skip the matching pipeline's joint refinement")
    p.add_argument("--out", default=None, help="write poses as JSON here (default: stdout)")
    return p


def _predict_pieces(argv: list[str]) -> int:
    import json
    import warnings

    import torch
    from geo3d.apps.assembly._api import assemble

    p = _piece_parser()
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
    from geo3d._app import resolve_device

    device = resolve_device(a.device, "--device")  # name the option, before any loading
    if a.out:
        from geo3d._app import check_output_path

        check_output_path(a.out, "--out")  # before the assembly runs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        T = assemble(a.pieces, a.checkpoint, num_points=a.num_points, scale=a.scale,
                     device=device, generator=torch.Generator().manual_seed(a.seed),
                     method=a.method, refine=not a.no_refine)
    seen = set()
    for w in caught:  # one line each, once (not file:line plus a source line)
        msg = " ".join(str(w.message).split())
        if msg not in seen:
            seen.add(msg)
            print(f"geo3d assembly predict: warning: {msg}", file=sys.stderr)
    from geo3d.apps.assembly._api import resolve_method

    # the method that ran ("auto" resolved), the one asked for, and what fixed the frame
    method = resolve_method(a.pieces, a.method)
    frame = "network"
    if method == "fracture_registration":
        frame = "network_anchor" if any("no template bank" in m for m in seen) else "templates"
    text = json.dumps({"pieces": a.pieces, "method": method, "requested_method": a.method,
                       "frame": frame, "poses": T.tolist()}, indent=2)
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
    if cmd == "predict" and any(a in ("-h", "--help") for a in rest) and not any(
            a == "--config" or a.startswith("--config=") for a in rest):
        _piece_parser().print_help()  # the piece mode; Lightning's help needs --config
        return 0
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
    add_forwarding_parser(subparsers, "assembly",
                          "shape assembly: fit/validate/test/predict (LightningCLI), demo", main)
