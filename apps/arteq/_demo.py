"""``geo3d arteq demo``: synthetic body scans -> train the equivariant model and the
non-equivariant baseline -> evaluate both per condition -> table, pictures, results.json.

Steps: generate scans of the Anny-derived SMPL-layout body (held-out subjects and motions
for testing; the demo config uses 512 points per scan instead of ArtEq's 5000), train the
equivariant model (VN-DGCNN backbone) and the DGCNN baseline with the same heads and the
same Haar-uniform rotation augmentation, test both in distribution, out of distribution (poses at the joint
limits), under random global rotations and on partial single-view scans, print V2V /
MPJPE (cm) / part accuracy, write pictures (PNG + PLY), checkpoints, TensorBoard logs and
``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from geo3d._atomic import atomic_write_text

__all__ = ["demo_main", "format_table", "train_and_test", "MODELS"]

#: model name -> extra command-line arguments over the config
MODELS = {"equivariant": ["--model.backbone", "vn_dgcnn"],
          "baseline": ["--model.backbone", "dgcnn"]}
_COLS = (("v2v_cm", "V2V cm", 1.0), ("mpjpe_cm", "MPJPE cm", 1.0), ("part_acc", "part acc %", 100.0))


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Plain-text table of ``{model: {condition: metrics}}``."""
    head = f"{'model':<14}{'condition':<10}" + "".join(f"{c[1]:>13}" for c in _COLS)
    lines = [head, "-" * len(head)]
    for model, conds in results.items():
        for cond, m in conds.items():
            if not isinstance(m, dict):
                continue
            cells = "".join(f"{m[k] * s:>13.2f}" if k in m else f"{'-':>13}" for k, _, s in _COLS)
            lines.append(f"{model:<14}{cond:<10}{cells}")
    return "\n".join(lines)


def train_and_test(name: str, config: str, out: Path, extra: list[str]) -> dict[str, Any]:
    """Train one model (``geo3d arteq fit``), test it on every condition; return the run's
    metrics, timings, parameter count, checkpoint and folders."""
    from geo3d.apps.arteq.cli import run_lightning_cli

    args = ["fit", "--config", config, *MODELS.get(name, []),
            "--trainer.default_root_dir", str(out / name), *extra]
    print(f"\n=== training {name}: geo3d arteq {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    cli = run_lightning_cli(args)
    fit_s = time.perf_counter() - t0
    print(f"=== testing {name} (in_dist, ood, rotated, partial)", flush=True)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    log_dir = Path(cli.trainer.log_dir or out / name)
    return {
        "metrics": cli.model.last_results,
        "fit_seconds": fit_s,
        "params": cli.model.net.num_parameters(),
        "checkpoint": str(getattr(cli.trainer.checkpoint_callback, "last_model_path", "")),
        "log_dir": str(log_dir),
        "pictures": str(log_dir / "pictures_test"),
        "command": "geo3d arteq " + " ".join(args),
        "_cli": cli,
    }


def demo_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="geo3d arteq demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/arteq_demo", help="output folder")
    p.add_argument("--config", action="append", default=None,
                   help="packaged config name or YAML (demo); repeat to layer further YAML "
                        "files on the first")
    p.add_argument("--max-epochs", type=int, default=None, help="override trainer.max_epochs")
    p.add_argument("--models", default="equivariant,baseline",
                   help="comma list: equivariant (VN-DGCNN) and/or baseline (DGCNN)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    a, extra = p.parse_known_args(argv)
    torch.set_num_threads(max(1, a.threads))
    from geo3d.apps.arteq.cli import UsageError, config_path

    models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise UsageError(f"--models: expected equivariant and/or baseline, got {a.models!r}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = a.config or ["demo"]  # a repeated --config layers on the first
    cfg = config_path(configs[0])
    user_root = any(x == "--data.root" or x.startswith("--data.root=") for x in extra)
    extra = [*(x for c in configs[1:] for x in ("--config", c)), *extra,
             *(() if user_root else ("--data.root", str(out / "data")))]
    if a.max_epochs is not None:
        extra += ["--trainer.max_epochs", str(a.max_epochs)]
    t_start = time.perf_counter()
    runs = {m: train_and_test(m, cfg, out, extra) for m in models}
    table = format_table({m: r["metrics"] for m, r in runs.items()})
    n = {c: v.get("num_scans") for c, v in next(iter(runs.values()))["metrics"].items()}
    print(f"\n=== held-out subjects and motions; scans per condition: {n}\n")
    print(table)
    for m, r in runs.items():
        print(f"{m}: fit {r['fit_seconds']:.0f} s, {r['params']} parameters")
    result = {
        "config": cfg,
        "runs": {m: {k: v for k, v in r.items() if k != "_cli"} for m, r in runs.items()},
        "table": table,
        "total_seconds": time.perf_counter() - t_start,
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }
    atomic_write_text(out / "results.json", json.dumps(result, indent=2, default=str))
    print(f"\nwritten: {out / 'results.json'}")
    for m, r in runs.items():
        print(f"  {m}: pictures {r['pictures']}/ (PNG + PLY), checkpoint {r['checkpoint']}, "
              f"TensorBoard logs {r['log_dir']}")
    return 0
