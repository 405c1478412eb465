"""Body-layer measurements: Anny -> SMPL-layout conversion (build/load time, vertex error vs
Anny per pose class) and scan throughput (full and depth-camera partial scans).

Run from the repo root::

    .venv/bin/python benchmarks/body.py [--num-samples 96] [--poses-per-class 8]

Writes ``benchmarks/results/body_cpu.json``. Timings are wall-clock on a shared machine
(other jobs were running): treat them as indicative.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, env_info, write_json_atomic  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-samples", type=int, default=96)
    ap.add_argument("--poses-per-class", type=int, default=8)
    ap.add_argument("--bodies", type=int, default=2)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads [1: the machine is shared]"
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "body_cpu.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from geo3d.body import (
        MOTION_KINDS,
        depth_camera_scan,
        extreme_poses,
        load_body_model,
        look_at,
        pinhole_intrinsics,
        pose_body,
        sample_surface_scan,
        synthetic_motion,
    )
    from geo3d.body._anny import anny_smpl_model_path, load_anny, validate_anny_smpl_model

    res: dict = {
        "env": env_info(),
        "threads": args.threads,
        "note": "shared 2-core machine, other jobs running: timings are indicative",
    }
    t = time.perf_counter()
    path = anny_smpl_model_path(num_samples=args.num_samples, rebuild=args.rebuild, verbose=True)
    res["build_or_cache_seconds"] = time.perf_counter() - t
    report_file = path.with_suffix(".json")
    if report_file.is_file():
        import json

        res["build_report"] = json.loads(report_file.read_text())
    t = time.perf_counter()
    path = anny_smpl_model_path(num_samples=args.num_samples)
    res["cache_lookup_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    model = load_body_model(path, dtype=torch.float64)
    res["load_seconds"] = time.perf_counter() - t

    g = torch.Generator().manual_seed(0)
    P = args.poses_per_class
    poses = {}
    for kind in MOTION_KINDS:
        m = synthetic_motion(kind, 4 * P, generator=g)
        poses[kind] = m.poses[::4].clone()
        poses[kind][:, :3] = 0
    ext = extreme_poses(P, generator=g).poses
    poses["extreme"] = ext
    t = time.perf_counter()
    res["conversion_error_vs_anny"] = validate_anny_smpl_model(
        path, poses, num_bodies=args.bodies, model=load_anny()
    )
    res["validation_seconds"] = time.perf_counter() - t

    out = pose_body(model, synthetic_motion("walking", 1, generator=g).poses)
    V, F, W = out.vertices[0], model.faces_tensor, model.lbs_weights
    n = 20
    t = time.perf_counter()
    for _ in range(n):
        sample_surface_scan(V, F, W, 10000, generator=g)
    res["full_scans_per_second_10k_points"] = n / (time.perf_counter() - t)
    K = pinhole_intrinsics(320, 240, 60.0)
    T = look_at(
        torch.tensor([0.5, 0.3, 3.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    )
    t = time.perf_counter()
    for _ in range(n):
        s = depth_camera_scan(V, F, W, K, T, 320, 240, depth_noise_std=0.002, generator=g)
    res["partial_scans_per_second_320x240"] = n / (time.perf_counter() - t)
    res["partial_scan_points"] = int(len(s.points))
    write_json_atomic(args.out, res)
    import json

    print(json.dumps({k: v for k, v in res.items() if k != "env"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
