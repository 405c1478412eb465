"""``geo3d arteq``: LightningCLI (fit/validate/test), SMPL fitting of scans, demo.

Usage::

    geo3d arteq fit --config demo [--trainer.max_epochs 5 ...]
    geo3d arteq fit --config demo --ckpt_path last          # resume the newest last.ckpt
    geo3d arteq test --config demo --ckpt_path last         # in_dist / ood / rotated / partial
    geo3d arteq predict --checkpoint last.ckpt --points scan.ply [scan2.npz ...]
                        [--scale 0.001] [--refine] [--partial] [--num-points N|all] --out DIR
    geo3d arteq demo [--out runs/arteq_demo]

``--config NAME`` also accepts the name of a packaged config (``demo``, ``long``,
``amass_smpl``; ``-c NAME`` is the same). ``predict`` writes ``DIR/<scan>_smpl.npz``
(betas, global_orient (3, 3), body_pose (23, 3, 3), transl (3,), vertices (V, 3), joints
(J, 3) with J = the body's joint count: 29 on the Anny/tiny bodies = 24 SMPL joints + 5
face points, part_labels (N,)) and ``DIR/<scan>_smpl.ply`` (the fitted mesh), in the scan's
units (the ``.npz`` positions in float64, so map coordinates keep their resolution; the
``.ply``, for viewers, in float32); ``geo3d arteq predict --help`` lists its options.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import Any

from geo3d._app import OneLineParser, PackagedConfigs, UsageError, add_forwarding_parser
from geo3d._app import resolve_last_checkpoint as _resolve_last

__all__ = ["add_parser", "main", "config_path", "run_lightning_cli", "resolve_last_checkpoint",
           "UsageError", "read_points", "read_scans"]

_LIGHTNING = ("fit", "validate", "test")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROG = "geo3d arteq"
CONFIGS = PackagedConfigs(CONFIG_DIR)
config_path = CONFIGS.path


def resolve_last_checkpoint(trainer: Any, subcommand: str) -> str | None:
    """``--ckpt_path last``: see :func:`geo3d._app.resolve_last_checkpoint` (the newest
    ``last*.ckpt`` under the run folder; ``fit`` without one starts fresh, ``validate`` /
    ``test`` raise ``FileNotFoundError``)."""
    return _resolve_last(trainer, subcommand, PROG)


def _make_cli_class() -> Any:
    from geo3d._app_lightning import AppLightningCLI

    class ArtEqCLI(AppLightningCLI):
        """geo3d's app LightningCLI (checkpoint group, atomic IO, ``--ckpt_path last``,
        one-line errors) with ``data.body_model``/``data.num_betas``/``data.gender`` linked
        to the model."""

        prog = PROG

        def add_app_arguments(self, parser: Any) -> None:
            for k in ("body_model", "num_betas", "gender"):
                parser.link_arguments(f"data.{k}", f"model.{k}")

    return ArtEqCLI


def run_lightning_cli(args: list[str], run: bool = True) -> Any:
    """Run LightningCLI on ``args`` (e.g. ``["fit", "--config", "demo"]``); returns the CLI.

    Raises:
        UsageError: unknown/bad arguments or a missing config file (one line).
    """
    from geo3d.apps.arteq._data import ArtEqDataModule
    from geo3d.apps.arteq._module import ArtEqModule

    from geo3d._app_lightning import run_app_cli

    return run_app_cli(_make_cli_class(), ArtEqModule, ArtEqDataModule, args, CONFIGS, run=run)


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
        if p.suffix.lower() == ".npy":
            arr = np.load(p, allow_pickle=False)  # an array, not a context manager
            keys = None
        elif p.suffix.lower() == ".npz":
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.files)
                name = "points" if "points" in keys else keys[0] if len(keys) == 1 else None
                arr = z[name] if name is not None else None
        else:
            import trimesh

            keys = None
            obj = trimesh.load(p, process=False)
            arr = np.asarray(getattr(obj, "vertices", None) if not hasattr(obj, "dump") else
                             obj.dump(concatenate=True).vertices)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input file
        raise ValueError(f"--points: could not read {str(p)!r} ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:160]})") from err
    if arr is None:
        raise ValueError(f"--points: expected a key 'points' (or a single array) in {str(p)!r}, "
                         f"got keys {keys}")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"--points: expected real coordinates in {str(p)!r}, got dtype "
                         f"{arr.dtype}")
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"--points: expected an (N, 3) point set in {str(p)!r}, got shape "
                         f"{arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"--points: expected finite coordinates in {str(p)!r}, got NaN or inf")
    return arr


def read_scans(path: str | Path) -> list[tuple[str, Any]]:
    """The scans of one ``--points`` file as ``[(name, (N, 3) float64 array)]``: one scan
    named after the file, or, for a ``geo3d body scan`` output (keys ``points_0``,
    ``points_1``, ...), each of its scans, named ``<file>_0``, ``<file>_1``, ...

    Raises:
        FileNotFoundError, ValueError: as :func:`read_points`.
    """
    import re

    import numpy as np

    p = Path(path)
    if p.suffix.lower() == ".npz" and p.is_file():
        try:
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.files)
        except Exception:  # noqa: BLE001 - read_points names the problem
            keys = []
        numbered = sorted((int(m.group(1)), k) for k in keys
                          if (m := re.fullmatch(r"points_(\d+)", k)))
        if numbered and "points" not in keys:
            out = []
            with np.load(p, allow_pickle=False) as z:
                for i, k in numbered:
                    arr = z[k]
                    if arr.dtype.kind not in "iuf" or arr.ndim != 2 or arr.shape[1] != 3 \
                            or arr.shape[0] < 1 or not np.isfinite(arr).all():
                        raise ValueError(f"--points: expected an (N, 3) finite point set under "
                                         f"{k!r} in {str(p)!r}, got dtype {arr.dtype} shape "
                                         f"{arr.shape}")
                    out.append((f"{p.stem}_{i}", np.asarray(arr, dtype=np.float64)))
            return out
    return [(p.stem, read_points(p))]


def _predict(argv: list[str]) -> int:
    import numpy as np
    import torch

    from geo3d._atomic import atomic_path

    p = OneLineParser(
        prog="geo3d arteq predict",
        description="Fit SMPL-layout bodies to point clouds with a trained ArtEq checkpoint. "
        "Writes OUT/<scan>_smpl.npz (betas (K,), global_orient (3, 3), body_pose (23, 3, 3), "
        "transl (3,), vertices (V, 3), joints (J, 3) with J = the body model's joint count: "
        "29 on the Anny and tiny bodies = 24 SMPL joints + 5 face points, 45 on official SMPL "
        "files; part_labels (N,); scale, the --scale used) and OUT/<scan>_smpl.ply (the "
        "mesh), lengths in the scan's units (.npz positions float64; the .ply float32, for "
        "viewers). A mesh file (.ply with faces, .obj, .off) is read as its vertices; a `geo3d "
        "body scan` .npz gives one output per scan (<scan>_0, <scan>_1, ...).")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `fit`")
    p.add_argument("--points", nargs="+", required=True,
                   help=".ply/.obj/.off/.xyz/.npz/.npy scans (distinct file names: the outputs "
                   "are named after them)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--scale", type=float, default=1.0,
                   help="metres per input unit (millimetres: 0.001)")
    p.add_argument("--refine", action="store_true", help="short optimisation after the net")
    p.add_argument("--partial", action="store_true",
                   help="single-view scans: the refinement skips the surface-to-points term "
                   "(with --refine; the network's fit is the same either way)")
    p.add_argument("--body-model", default=None,
                   help="body model file or 'anny'/'tiny' (default and only accepted value: "
                   "the checkpoint's)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--num-points", default="auto",
                   help="points per scan the network sees: 'auto' (default: the training "
                   "scans' count recorded in the checkpoint; denser scans are subsampled), "
                   "a number, or 'all'")
    a = p.parse_args(argv)
    if not (math.isfinite(a.scale) and a.scale > 0):
        raise UsageError(f"--scale: expected a positive finite number, got {a.scale}")
    num_points: int | str | None = {"auto": "auto", "all": None}.get(a.num_points, a.num_points)
    if isinstance(num_points, str) and num_points != "auto":
        if not num_points.isdigit() or int(num_points) < 1:
            raise UsageError(f"--num-points: expected 'auto', 'all' or a positive integer, got "
                             f"{a.num_points!r}")
        num_points = int(num_points)
    if a.partial and not a.refine:
        print("geo3d arteq predict: warning: --partial changes only the refinement; without "
              "--refine it has no effect", file=sys.stderr, flush=True)
    from geo3d._app import check_output_path

    out = check_output_path(a.out, "--out", "folder")  # `--out afile/sub` neither
    from geo3d._app import resolve_device

    device = resolve_device(a.device, "--device")
    if device.type == "meta":
        raise UsageError("--device: expected a device that computes (cpu, cuda, ...), got "
                         "'meta'")
    from geo3d.apps.arteq._checkpoint import checkpoint_info, load_model
    from geo3d.apps.arteq._data import load_body
    from geo3d.apps.arteq._fit import _check_min_points, fit_smpl, same_body_spec, scale_warning

    scans = [(f, name, pts) for f in a.points for name, pts in read_scans(f)]  # bad files
    stems: dict[str, str] = {}  # fail before any loading
    for f, name, _ in scans:
        if name in stems:
            raise UsageError(f"--points: expected distinct file names (outputs are named "
                             f"<name>_smpl.npz), got {stems[name]!r} and {f!r}")
        stems[name] = f
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out: cannot create the folder {str(out)!r} ({type(err).__name__}: "
                         f"{err.strerror or err})") from err
    net = load_model(a.checkpoint)
    info = checkpoint_info(a.checkpoint)
    trained_on = info.get("body_model")
    if a.body_model is not None and trained_on and not same_body_spec(a.body_model,
                                                                      str(trained_on)):
        raise UsageError(f"--body-model: expected the checkpoint's body model {trained_on!r} "
                         f"(the network was trained on it), got {a.body_model!r}")
    k = net.config.get("k")
    if num_points == "auto":  # the training scans' count, when the checkpoint records it
        num_points = info.get("num_points")
    if isinstance(num_points, int) and isinstance(k, int) and num_points < k:
        raise UsageError(f"--num-points: expected at least the network's neighbourhood size "
                         f"k = {k}, got {num_points}")
    # float64 (read_points' dtype): fit_smpl centres in float64, so scans far from the
    # origin (map coordinates) keep their resolution, and positions come back in float64
    tensors = [torch.as_tensor(pts, dtype=torch.float64)[None] for _, _, pts in scans]
    if isinstance(k, int):
        try:
            _check_min_points(tensors, k)
        except ValueError as err:
            raise UsageError(f"--{err}") from err
    note = scale_warning(tensors, a.scale)
    if note is not None:
        print(f"geo3d arteq predict: warning: --{note}", file=sys.stderr, flush=True)
    spec = a.body_model or trained_on or "anny"
    body = load_body(spec, info.get("gender", "neutral"),
                     int(info.get("num_betas", net.config.get("num_betas", 10))))
    for (f, stem, _), pts in zip(scans, tensors, strict=True):
        with warnings.catch_warnings():  # the scale notice was printed once above
            warnings.filterwarnings("ignore", message="scale: the points span")
            res = fit_smpl(pts[0], net, body_model=body, num_points=num_points,
                           refine=a.refine, scale=a.scale, device=device,
                           full_scan=not a.partial)
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
        what = f if stem == Path(f).stem else f"{f} ({stem})"
        print(f"{what}: wrote {out / (stem + '_smpl.npz')} and {out / (stem + '_smpl.ply')}")
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
    add_forwarding_parser(
        subparsers, "arteq",
        "ArtEq SMPL fitting: fit/validate/test (LightningCLI), predict (scan -> SMPL), demo", main)
