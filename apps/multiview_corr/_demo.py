"""``geo3d multiview demo``: render -> finetune -> before/after table and picture.

Steps (a few CPU minutes with the packaged ``demo`` config): render procedurally textured
objects at 224² (42 views each) under ``--out``/data when missing, finetune LoRA + conv
on the demo config's ViT-S/14 (seeded random initialisation; ``--vit PATH`` for a DINOv2
checkpoint, ``--vit pretrained`` for the ViT pretrained on synthetic renders) with ``geo3d multiview fit --config demo``, then score the backbone alone
("before") and the finetuned model ("after") on the same pairs of held-out objects
(``geo3d multiview eval``): APE, PCDP, PCK; write ``multiview_eval.json`` and the
colour-coded correspondence picture ``correspondences.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

__all__ = ["demo_main", "run_demo"]


def run_demo(
    out: str | Path,
    *,
    config: str = "demo",
    vit: str | None = None,
    steps: int | None = None,
    pairs: int = 4,
    max_points: int = 1000,
    pose_queries: int = 4,
    track_frames: int = 12,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """Fit with ``config`` into ``out`` and evaluate before/after; returns
    ``{"fit_seconds", "steps_per_s", "checkpoint", "eval_json", "picture", "command"}``."""
    from geo3d.apps.multiview_corr._evaluate import check_eval_args, eval_adapter_main
    from geo3d.apps.multiview_corr.cli import run_lightning_cli

    # the evaluation's settings (and OpenCV) are checked before minutes of training
    check_eval_args(pairs, max_points, pose_queries, track_frames)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    out = Path(out)
    args = [
        "fit",
        "--config",
        config,
        "--trainer.default_root_dir",
        str(out / "fit"),
        "--data.root",
        str(out / "data"),
    ]
    if vit:
        args += ["--vit", vit]
    if steps is not None:
        args += ["--trainer.max_steps", str(int(steps))]
    args += list(extra or [])
    print(f"=== geo3d multiview {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    cli = run_lightning_cli(args)
    fit_s = time.perf_counter() - t0
    model = cli.model
    ckpt = getattr(cli.trainer.checkpoint_callback, "last_model_path", "") or ""
    if not ckpt:
        raise ValueError(
            f"checkpoint: expected fit to write last.ckpt under {out / 'fit'}, got none"
        )
    ns = argparse.Namespace(
        adapter=ckpt,
        vit=None,
        data=None,
        pairs=pairs,
        max_points=max_points,
        seed=0,
        pose_queries=pose_queries,
        track_frames=track_frames,
        out=str(out / "multiview_eval.json"),
        picture=str(out / "correspondences.png"),
    )
    print(f"=== geo3d multiview eval --adapter {ckpt}", flush=True)
    eval_adapter_main(ns)
    return {
        "fit_seconds": fit_s,
        "train_steps": model.train_steps,
        "steps_per_s": model.train_steps / max(model.train_seconds, 1e-9),
        "checkpoint": ckpt,
        "eval_json": ns.out,
        "picture": ns.picture,
        "command": "geo3d multiview " + " ".join(args),
    }


def demo_main(argv: list[str]) -> int:
    """``geo3d multiview demo [--out DIR] [--vit PATH] [--steps N] [--pairs N]
    [--pose-queries N] [--track-frames N]``."""
    from geo3d._app import OneLineParser, UsageError

    p = OneLineParser(prog="geo3d multiview demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/multiview_demo", help="output folder")
    p.add_argument("--config", action="append", default=None,
                   help="packaged config or YAML [demo]; repeat to layer further YAML files "
                        "on the first, as LightningCLI does")
    p.add_argument(
        "--vit",
        default=None,
        help="DINOv2 .pth or HF folder, 'pretrained' or 'random' (default: the config's; demo: random)",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (default: config)")
    p.add_argument("--pairs", type=int, default=4, help="evaluation pairs per held-out object")
    p.add_argument("--max-points", type=int, default=1000)
    p.add_argument("--pose-queries", type=int, default=4,
                   help="pose-estimation queries per held-out object (0: skip; needs OpenCV) [4]")
    p.add_argument("--track-frames", type=int, default=12,
                   help="frames of the tracking video per held-out object (0: skip) [12]")
    a = p.parse_args(argv)
    from geo3d._app import check_output_path

    check_output_path(a.out, "--out", "folder")
    if a.steps is not None and a.steps < 1:
        raise UsageError(f"--steps: expected an int >= 1, got {a.steps}")
    # a repeated --config layers on the first (argparse used to keep only the last, so
    # `--config demo --config more.yaml` trained on more.yaml with the defaults for the rest)
    configs = a.config or ["demo"]
    res = run_demo(
        a.out, config=configs[0], vit=a.vit, steps=a.steps, pairs=a.pairs,
        max_points=a.max_points, pose_queries=a.pose_queries, track_frames=a.track_frames,
        extra=[x for c in configs[1:] for x in ("--config", c)],
    )
    print(
        f"fit: {res['train_steps']} steps in {res['fit_seconds']:.0f} s "
        f"({res['steps_per_s']:.2f} steps/s); table: {res['eval_json']}; picture: "
        f"{res['picture']}"
    )
    return 0
