#!/usr/bin/env python
"""Benchmark geo3d.ops.knn and chamfer_distance against torch.cdist (+ topk / min).

For N = M points (uniform in the unit cube, float32, D = 3, batch 1, k = 16) from 1e3 to
1e6, on CPU and on CUDA when available: wall time and peak *extra* memory of

* ``geo3d``        -- ``knn(..., backend="auto")`` (k-d tree on CPU, chunked brute force on CUDA)
* ``geo3d_brute``  -- ``knn(..., backend="brute")`` (chunked matmul + top-k, any device)
* ``cdist_topk``   -- ``torch.cdist(x, y).topk(k, largest=False)`` (dense N x M matrix)
* ``pytorch3d`` / ``torch_cluster`` -- their knn, when importable;

and the same for the Chamfer distance (``chamfer_distance`` vs dense ``cdist`` + ``min``).

Every case runs in a fresh subprocess. Peak extra memory on CPU is the peak resident set
size (VmHWM, reset through /proc/self/clear_refs before the timed runs; ru_maxrss when that
is not possible) minus the resident size once inputs are allocated and the code is warm;
on CUDA it is ``torch.cuda.max_memory_allocated`` minus the allocation before the call.
Dense baselines only run where their N x M float32 matrix fits ``--dense-budget-gb``
(default 8); the chunked brute force on CPU only up to ``--max-brute-cpu`` points (it is
O(N M) work); anything skipped is printed with the reason. Prints a table with ratios
(baseline time / geo3d time) and writes ``benchmarks/results/ops_<device>.json``
atomically.

    .venv/bin/python benchmarks/ops.py                    # CPU (+ CUDA if present), a few minutes
    .venv/bin/python benchmarks/ops.py --sizes 1000 10000 --devices cpu   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

K = 16
DIM = 3


# ------------------------------------------------------------------------------------------
# worker: one case in a fresh process


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_bytes(reset_ok: bool) -> int:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _make_fn(op: str, method: str, x, y):
    import torch

    from geo3d.ops import chamfer_distance, knn

    if op == "knn":
        if method == "geo3d":
            return lambda: knn(x, y, K)
        if method == "geo3d_brute":
            return lambda: knn(x, y, K, backend="brute")
        if method == "cdist_topk":
            return lambda: torch.cdist(x, y).topk(K, dim=-1, largest=False)
        if method == "pytorch3d":
            from pytorch3d.ops import knn_points

            return lambda: knn_points(x, y, K=K)
        if method == "torch_cluster":
            import torch_cluster

            return lambda: torch_cluster.knn(y[0], x[0], K)
    else:
        if method == "geo3d":
            return lambda: chamfer_distance(x, y)
        if method == "geo3d_brute":
            return lambda: chamfer_distance(x, y, backend="brute")
        if method == "cdist_min":

            def dense():
                d = torch.cdist(x, y).square_()
                return d.min(-1).values.mean() + d.min(-2).values.mean()

            return dense
        if method == "pytorch3d":
            from pytorch3d.loss import chamfer_distance as p3d_chamfer

            return lambda: p3d_chamfer(x, y)[0]
    raise ValueError(f"unknown case {op}/{method}")


def worker(case: dict[str, Any]) -> dict[str, Any]:
    import torch

    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    cuda = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    n = case["n"]

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    # warm up imports, allocator and kernels on a small problem that takes the same path
    xs = torch.rand(1, min(n, 2048), DIM, generator=g).to(device)
    _make_fn(case["op"], case["method"], xs, xs.clone())()
    sync()
    x = torch.rand(1, n, DIM, generator=g).to(device)
    y = torch.rand(1, n, DIM, generator=g).to(device)
    fn = _make_fn(case["op"], case["method"], x, y)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        reset_ok = _reset_peak()
        base = _rss_bytes()
    times, cpu_times = [], []
    t_total = time.perf_counter()
    while True:
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        del out
        if len(times) >= case["max_reps"] or time.perf_counter() - t_total > case["min_time"]:
            break
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = _peak_bytes(reset_ok) - base
    return {
        **case,
        "time_s": min(times),
        "times_s": times,
        # CPU time of the process (all threads): robust to other jobs on a shared machine
        "cpu_time_s": min(cpu_times),
        "peak_extra_bytes": int(max(peak, 0)),
        "peak_method": "cuda_max_memory_allocated"
        if cuda
        else ("VmHWM" if reset_ok else "ru_maxrss"),
    }


# ------------------------------------------------------------------------------------------
# driver


def _available(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def plan(args) -> tuple[list[dict[str, Any]], list[str]]:
    cases, skipped = [], []
    for device in args.devices:
        for op in ("knn", "chamfer"):
            dense = "cdist_topk" if op == "knn" else "cdist_min"
            methods = ["geo3d", "geo3d_brute", dense]
            if _available("pytorch3d"):
                methods.append("pytorch3d")
            elif op == "knn":
                skipped.append("pytorch3d: not installed")
            if op == "knn" and _available("torch_cluster"):
                methods.append("torch_cluster")
            elif op == "knn":
                skipped.append("torch_cluster: not installed")
            if args.methods:
                methods = [mt for mt in methods if mt in args.methods]
            if args.ops and op not in args.ops:
                continue
            for n in args.sizes:
                for method in methods:
                    tag = f"{device} {op} {method} N=M={n}"
                    dense_bytes = 4 * n * n
                    if method == dense and dense_bytes > args.dense_budget_gb * 2**30:
                        skipped.append(
                            f"{tag}: N x M matrix needs {dense_bytes / 2**30:.0f} GiB "
                            f"> --dense-budget-gb {args.dense_budget_gb}"
                        )
                        continue
                    brute_like = method in ("geo3d_brute", "pytorch3d", "torch_cluster")
                    if brute_like and device == "cpu" and n > args.max_brute_cpu:
                        skipped.append(
                            f"{tag}: O(N M) work on CPU, N > --max-brute-cpu {args.max_brute_cpu}"
                        )
                        continue
                    if method == "geo3d" and device == "cpu" and n > args.max_cpu:
                        skipped.append(f"{tag}: N > --max-cpu {args.max_cpu}")
                        continue
                    cases.append(
                        {
                            "device": device,
                            "op": op,
                            "method": method,
                            "n": n,
                            "k": K if op == "knn" else 1,
                            "threads": args.threads,
                            "max_reps": 5,
                            "min_time": 1.0,
                        }
                    )
    return cases, skipped


def run_case(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", json.dumps(case)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timeout after {timeout:.0f} s"}
    if p.returncode != 0:
        return {**case, "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _fmt_mem(b: int | None) -> str:
    if b is None:
        return "-"
    return f"{b / 2**20:8.1f} MiB" if b < 2**30 else f"{b / 2**30:8.2f} GiB"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'device':6} {'op':8} {'N=M':>8} {'method':14} {'wall':>10} {'cpu':>10} "
        f"{'peak extra':>13} {'dense/this wall':>15} {'cpu':>8}"
    ]
    base = {
        (r["device"], r["op"], r["n"]): (r["time_s"], r["cpu_time_s"])
        for r in results
        if r["method"] in ("cdist_topk", "cdist_min") and "time_s" in r
    }
    for r in results:
        if "time_s" not in r:
            lines.append(
                f"{r['device']:6} {r['op']:8} {r['n']:>8} {r['method']:14} ERROR {r['error']}"
            )
            continue
        b = base.get((r["device"], r["op"], r["n"]))
        ratio = f"{b[0] / r['time_s']:14.2f}x" if b else f"{'-':>15}"
        cratio = f"{b[1] / max(r['cpu_time_s'], 1e-9):7.2f}x" if b else f"{'-':>8}"
        lines.append(
            f"{r['device']:6} {r['op']:8} {r['n']:>8} {r['method']:14} {r['time_s']:9.4f}s "
            f"{r['cpu_time_s']:9.4f}s {_fmt_mem(r['peak_extra_bytes']):>13} {ratio} {cratio}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000, 200000, 1000000])
    ap.add_argument("--devices", nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=None, help="only these methods")
    ap.add_argument("--ops", nargs="+", default=None, choices=["knn", "chamfer"])
    ap.add_argument("--dense-budget-gb", type=float, default=8.0)
    ap.add_argument("--max-brute-cpu", type=int, default=20000)
    ap.add_argument("--max-cpu", type=int, default=1000000)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch (and k-d tree) threads per case"
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    ap.add_argument("--out", default=None, help="JSON path (default results/ops_<device>.json)")
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch
    from _common import RESULTS_DIR, env_info, write_json_atomic

    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cases, skipped = plan(args)
    for s in skipped:
        print(f"[skip] {s}")
    results_by_device: dict[str, list[dict[str, Any]]] = {d: [] for d in args.devices}
    t0 = time.time()
    for case in cases:
        r = run_case(case, args.timeout)
        results_by_device[case["device"]].append(r)
        msg = (
            f"{r['time_s']:.4f}s {_fmt_mem(r['peak_extra_bytes'])}" if "time_s" in r else r["error"]
        )
        print(
            f"[{time.time() - t0:6.1f}s] {case['device']} {case['op']} {case['method']} "
            f"N=M={case['n']}: {msg}",
            flush=True,
        )
    for device, results in results_by_device.items():
        print()
        print(table(results))
        out = Path(args.out) if args.out else RESULTS_DIR / f"ops_{device}.json"
        write_json_atomic(
            out,
            {
                "benchmark": "geo3d.ops knn / chamfer_distance vs dense cdist",
                "env": env_info(device),
                "params": {
                    "threads": args.threads or torch.get_num_threads(),
                    "k": K,
                    "dim": DIM,
                    "batch": 1,
                    "dtype": "float32",
                    "points": "uniform in the unit cube, N = M",
                },
                "skipped": [
                    s
                    for s in skipped
                    if not s.startswith(("cpu ", "cuda ")) or s.startswith(device + " ")
                ],
                "results": results,
            },
        )
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
