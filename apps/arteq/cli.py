"""``geo3d arteq``: LightningCLI (fit/validate/test), SMPL fitting of scans, demo.

Usage::

    geo3d arteq fit --config demo [--trainer.max_epochs 5 ...]
    geo3d arteq fit --config demo --ckpt_path last          # resume the newest last.ckpt
    geo3d arteq test --config demo --ckpt_path last         # in_dist / ood / rotated / partial
    geo3d arteq predict --checkpoint last.ckpt --points scan.ply [scan2.npz ...]
                        [--scale 0.001] [--refine] [--partial] --out DIR
    geo3d arteq demo [--out runs/arteq_demo]

``--config NAME`` also accepts the name of a packaged config (``demo``, ``long``,
``amass_smpl``). ``predict`` writes ``DIR/<scan>_smpl.npz`` (betas, global_orient (3, 3),
body_pose (23, 3, 3), transl, vertices, joints, part_labels) and ``DIR/<scan>_smpl.ply``
(the fitted mesh), in the scan's units.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "main", "config_path", "run_lightning_cli", "resolve_last_checkpoint",
           "UsageError", "read_points"]

_LIGHTNING = ("fit", "validate", "test")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class UsageError(ValueError):
    """A command line that ``geo3d arteq`` cannot run; the ``geo3d`` CLI prints it as one
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
        raise UsageError(f"--config: expected an existing YAML file or a packaged config "
                         f"name ({', '.join(_packaged_configs())}), got {name!r} (no such file)")
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


def _find_last_checkpoints(roots: list[Path]) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        if root.is_dir():
            found += [p for p in root.rglob("last*.ckpt") if p.is_file()]
    return found


def resolve_last_checkpoint(trainer: Any, subcommand: str) -> str | None:
    """``--ckpt_path last``: the newest ``last*.ckpt`` under the run directory
    (``trainer.default_root_dir``) or an explicit ``checkpoint.dirpath``. ``fit`` without
    one starts fresh (with a notice); ``validate``/``test`` raise ``FileNotFoundError``."""
    roots = [Path(trainer.default_root_dir)]
    cb = getattr(trainer, "checkpoint_callback", None)
    if cb is not None and getattr(cb, "dirpath", None):
        roots.append(Path(cb.dirpath))
    found = _find_last_checkpoints(roots)
    where = " or ".join(repr(str(r)) for r in roots)
    if not found:
        if subcommand == "fit":
            print(f"geo3d arteq fit: --ckpt_path last: no last.ckpt under {where}; starting a "
                  "fresh run", file=sys.stderr, flush=True)
            return None
        raise FileNotFoundError(f"ckpt_path: 'last' but no last*.ckpt exists under {where}")
    best = max(found, key=lambda p: (p.stat().st_mtime_ns, str(p)))
    print(f"geo3d arteq {subcommand}: --ckpt_path last -> {best}", file=sys.stderr, flush=True)
    return str(best)


def _make_cli_class() -> Any:
    from geo3d.apps.arteq._checkpoint import AtomicCheckpointIO
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI
    from lightning.pytorch.plugins.io import CheckpointIO

    class ArtEqCLI(LightningCLI):
        """LightningCLI with a ``checkpoint`` group (``save_last`` every epoch), the atomic
        checkpoint IO, ``data.body_model``/``data.num_betas``/``data.gender`` linked to the
        model, and parsers that raise on bad arguments."""

        def init_parser(self, **kwargs: Any) -> Any:
            kwargs.setdefault("exit_on_error", False)
            return super().init_parser(**kwargs)

        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults({"checkpoint.save_last": True,
                                 "checkpoint.save_on_train_epoch_end": True})
            for k in ("body_model", "num_betas", "gender"):
                parser.link_arguments(f"data.{k}", f"model.{k}")

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
            return super()._instantiate_trainer(config, callbacks)

    return ArtEqCLI


def run_lightning_cli(args: list[str], run: bool = True) -> Any:
    """Run LightningCLI on ``args`` (e.g. ``["fit", "--config", "demo"]``); returns the CLI."""
    from geo3d.apps.arteq._data import ArtEqDataModule
    from geo3d.apps.arteq._module import ArtEqModule

    cmd = args[0] if args else ""
    args = _resolve_configs(args)
    cls = _make_cli_class()
    argv, sys.argv = sys.argv, ["geo3d arteq"]
    try:
        return cls(ArtEqModule, ArtEqDataModule, args=args, run=run,
                   save_config_kwargs={"overwrite": True})
    except argparse.ArgumentError as err:  # jsonargparse, exit_on_error=False
        msg = " ".join(str(err).split())
        raise UsageError(f"geo3d arteq {cmd}: {msg} (see `geo3d arteq {cmd} --help`)") from err
    finally:
        sys.argv = argv


def read_points(path: str | Path) -> Any:
    """Points ``(N, 3)`` float64 numpy from a ``.ply``/``.obj``/``.off``/``.xyz`` file
    (trimesh: a point cloud's points or a mesh's vertices) or a ``.npz``/``.npy`` (key
    ``points``, else the only array).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable file, no points, not ``(N, 3)``, or NaN/inf values.
    """
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--points: no such file {str(p)!r}")
    try:
        if p.suffix.lower() in (".npz", ".npy"):
            with np.load(p, allow_pickle=False) as z:
                if isinstance(z, np.ndarray):
                    arr = z
                elif "points" in z.files:
                    arr = z["points"]
                elif len(z.files) == 1:
                    arr = z[z.files[0]]
                else:
                    raise ValueError(f"--points: expected a key 'points' in {str(p)!r}, got "
                                     f"keys {z.files}")
        else:
            import trimesh

            obj = trimesh.load(p, process=False)
            arr = np.asarray(getattr(obj, "vertices", None) if not hasattr(obj, "dump") else
                             obj.dump(concatenate=True).vertices)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        raise ValueError(f"--points: could not read {str(p)!r} ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:160]})") from err
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"--points: expected an (N, 3) point set in {str(p)!r}, got shape "
                         f"{arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"--points: expected finite coordinates in {str(p)!r}, got NaN or inf")
    return arr


def _predict(argv: list[str]) -> int:
    import numpy as np
    import torch

    from geo3d._atomic import atomic_path

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:
            raise UsageError(f"geo3d arteq predict: {message} (see `geo3d arteq predict "
                             f"--help`)")

    p = _Parser(prog="geo3d arteq predict", description="Fit SMPL to point clouds.")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `fit`")
    p.add_argument("--points", nargs="+", required=True, help=".ply/.obj/.npz/.npy scans")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--scale", type=float, default=1.0, help="metres per input unit")
    p.add_argument("--refine", action="store_true", help="short optimisation after the net")
    p.add_argument("--partial", action="store_true",
                   help="single-view scans (refinement skips the surface-to-points term)")
    p.add_argument("--body-model", default=None,
                   help="body model file or 'anny'/'tiny' (default: the checkpoint's)")
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    if not (a.scale > 0):
        raise UsageError(f"--scale: expected a positive number, got {a.scale}")
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: expected a folder, got the existing file {str(out)!r}")
    from geo3d.apps.arteq._checkpoint import checkpoint_info, load_model
    from geo3d.apps.arteq._data import load_body
    from geo3d.apps.arteq._fit import fit_smpl

    clouds = [read_points(f) for f in a.points]  # bad input files fail before any loading
    net = load_model(a.checkpoint)
    info = checkpoint_info(a.checkpoint)
    spec = a.body_model or info.get("body_model", "anny")
    body = load_body(spec, info.get("gender", "neutral"),
                     int(info.get("num_betas", net.config.get("num_betas", 10))))
    for f, pts in zip(a.points, clouds, strict=True):
        res = fit_smpl(torch.as_tensor(pts, dtype=torch.float32), net, body_model=body,
                       refine=a.refine, scale=a.scale, device=a.device,
                       full_scan=not a.partial)
        stem = Path(f).stem
        arrays = {k: getattr(res, k)[0].detach().cpu().numpy() for k in (
            "betas", "global_orient", "body_pose", "transl", "vertices", "joints")}
        if res.part_labels is not None:
            arrays["part_labels"] = res.part_labels[0].cpu().numpy()
        arrays["scale"] = np.asarray(a.scale)
        with atomic_path(out / f"{stem}_smpl.npz") as tmp:
            np.savez(tmp, **arrays)
        import trimesh

        mesh = trimesh.Trimesh(arrays["vertices"], body.faces_tensor.cpu().numpy(),
                               process=False)
        with atomic_path(out / f"{stem}_smpl.ply") as tmp:
            mesh.export(tmp, file_type="ply")
        print(f"{f}: wrote {out / (stem + '_smpl.npz')} and {out / (stem + '_smpl.ply')}")
    return 0


def main(argv: list[str]) -> int:
    """Dispatch ``geo3d arteq ARGS``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], list(argv[1:])
    if cmd == "predict":
        return _predict(rest)
    if cmd in _LIGHTNING:
        run_lightning_cli([cmd, *rest])
        return 0
    if cmd == "demo":
        from geo3d.apps.arteq._demo import demo_main

        return demo_main(rest)
    raise UsageError(f"geo3d arteq: unknown command {cmd!r} (expected fit, validate, test, "
                     "predict, demo)")


def add_parser(subparsers: Any) -> None:
    """Register ``geo3d arteq`` (arguments are forwarded, see the module docstring)."""
    p = subparsers.add_parser(
        "arteq", add_help=False,
        help="ArtEq SMPL fitting: fit/validate/test (LightningCLI), predict (scan -> SMPL), demo",
    )
    p.add_argument("-h", "--help", action="store_true", dest="arteq_help",
                   help="show the arteq commands")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda ns: main(["--help"] if ns.arteq_help else list(ns.args)))
