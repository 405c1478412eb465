"""Encoder throughput benchmark: forward + backward points/s.

Default: VN-DGCNN at the SE(3)-assembly configuration (batch 32 parts x 512 points,
k = 20, 512-d per-point features, mean pooling), on CPU and on CUDA when available, timed
with ``torch.utils.benchmark``. Results go to ``benchmarks/results/encoders_<device>.json``
(atomic write) with the device name, torch version, thread count and the configuration.

Usage::

    python benchmarks/encoders.py                      # vn_dgcnn, all devices
    python benchmarks/encoders.py --device cpu --encoders vn_dgcnn dgcnn egnn
    python benchmarks/encoders.py --batch 4 --points 256 --no-save   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.utils.benchmark as tbench

from geo3d.nn import DGCNN, EGNN, VNDGCNN, PointNet, TFNEncoder, VNPointNet

RESULTS = Path(__file__).resolve().parent / "results"


def _factories(k: int, feat_dim: int) -> dict:
    return {
        "vn_dgcnn": lambda: VNDGCNN(k=k, feat_dim=feat_dim),
        "vn_pointnet": lambda: VNPointNet(k=k),
        "dgcnn": lambda: DGCNN(k=k, feat_dim=feat_dim),
        "pointnet": lambda: PointNet(feat_dim=feat_dim),
        "egnn": lambda: EGNN(k=k),
        "tfn": lambda: TFNEncoder(k=k),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_one(name: str, factory, device: torch.device, batch: int, points: int,
              min_run_time: float, min_iters: int = 3, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory().to(device).train()
    x = torch.randn(batch, points, 3, generator=gen).to(device)
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        out = model(x)
        loss = out.invariant.square().mean()
        if out.equivariant is not None:
            loss = loss + out.equivariant.square().mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        del grads

    step()  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    timer = tbench.Timer(stmt="step()", globals={"step": step},
                         num_threads=torch.get_num_threads(),
                         label=name, description=str(device))
    t0 = time.perf_counter()
    m = timer.blocked_autorange(min_run_time=min_run_time)
    runs = [m]
    while sum(len(r.raw_times) for r in runs) < min_iters:  # slow configs: a few more timings
        runs.append(timer.timeit(1))
    iterations = sum(len(r.raw_times) * r.number_per_run for r in runs)
    if len(runs) > 1:
        m = tbench.Measurement.merge(runs)[0]
    wall = time.perf_counter() - t0
    res = {
        "encoder": name,
        "batch": batch,
        "points": points,
        "params": sum(p.numel() for p in params),
        "iterations": iterations,
        "median_s": m.median,
        "iqr_s": m.iqr,
        "mean_s": m.mean,
        "points_per_s": batch * points / m.median,
        "clouds_per_s": batch / m.median,
        "wall_s": wall,
    }
    if device.type == "cuda":
        res["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return res


def _atomic_write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    p.add_argument("--encoders", nargs="+", default=["vn_dgcnn"],
                   choices=list(_factories(20, 512)))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--points", type=int, default=512)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--feat-dim", type=int, default=512)
    p.add_argument("--min-run-time", type=float, default=None,
                   help="seconds per measurement (default 20 on CPU, 3 on CUDA)")
    p.add_argument("--min-iters", type=int, default=3,
                   help="at least this many timed iterations per encoder")
    p.add_argument("--out", type=Path, default=None,
                   help="output JSON (default benchmarks/results/encoders_<device>.json)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads on CPU (default: torch's choice)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads: expected a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)

    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            raise SystemExit("--device cuda: CUDA is not available")
    factories = _factories(args.k, args.feat_dim)
    all_results = []
    for device in devices:
        rt = args.min_run_time or (20.0 if device.type == "cpu" else 3.0)
        results = []
        for name in args.encoders:
            r = bench_one(name, factories[name], device, args.batch, args.points, rt,
                          min_iters=args.min_iters)
            print(f"{device.type:4s} {name:12s} B={args.batch} N={args.points} "
                  f"fwd+bwd {r['median_s'] * 1e3:9.1f} ms  {r['points_per_s']:12.0f} points/s "
                  f"({r['iterations']} iters)", flush=True)
            results.append(r)
        payload = {
            "benchmark": "encoders forward+backward throughput",
            "device": device.type,
            "device_name": device_name(device) if device.type == "cuda" else _cpu_model(),
            "cpu_count": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None,
            "dtype": "float32",
            "config": {"batch": args.batch, "points": args.points, "k": args.k,
                       "feat_dim": args.feat_dim, "mode": "train (batch-norm statistics)"},
            "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "results": results,
        }
        if not args.no_save:
            out = args.out if args.out is not None and len(devices) == 1 else (
                RESULTS / f"encoders_{device.type}.json")
            _atomic_write_json(out, payload)
            print(f"wrote {out}")
        all_results.extend(results)
    return all_results


if __name__ == "__main__":
    main()
