#!/usr/bin/env python
"""Benchmark geo3d.rotations against roma, scipy (and pytorch3d when installed).

For every shared conversion, at batch sizes 1e3 and 1e6, float32, on CPU and on CUDA when
available: eager geo3d, roma, scipy (CPU only, float64 internally), pytorch3d (if
importable), the fused geo3d path (``geo3d.rotations.fused``; large batches only: the
native C kernels for float32 on CPU, ``torch.compile`` otherwise), the compiled kernels
alone (``geo3d_compiled``, for comparison) and the memory-bandwidth bound. The bound is the time of ``x.clone()`` where ``x``
holds as many bytes as the conversion's input + output (``copy_io``); ``copy_traffic`` is
a clone with the same total memory traffic as the conversion (half as many bytes) and is
recorded for reference. Prints a table with ratios; writes
``benchmarks/results/rotations_<device>.json`` atomically.

    .venv/bin/python benchmarks/rotations.py                 # full run (a few minutes)
    .venv/bin/python benchmarks/rotations.py --sizes 1000 --no-fused   # quick

The script re-executes itself with glibc malloc tuned to keep freed memory (see
``_reexec_with_malloc_tuning``; ``--no-malloc-tuning`` to measure without).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, env_info, measure_interleaved, write_json_atomic  # noqa: E402

import geo3d.rotations as G  # noqa: E402
from geo3d.rotations import _native  # noqa: E402
from geo3d.rotations._compiled import _inductor_options  # noqa: E402


def _optional(name: str):
    try:
        return __import__(name, fromlist=["_"])
    except Exception:
        return None


def make_cases(n: int, device: str, dtype: torch.dtype, seed: int = 0) -> list[dict[str, Any]]:
    """Inputs and callables for every conversion (inputs prepared outside the timing)."""
    roma = _optional("roma")
    p3d = _optional("pytorch3d.transforms")
    from scipy.spatial.transform import Rotation

    g = torch.Generator().manual_seed(seed)
    q = G.random_quat(n, generator=g, dtype=dtype).to(device)
    q2 = G.random_quat(n, generator=g, dtype=dtype).to(device)
    R = G.quat_to_matrix(q)
    R2 = G.quat_to_matrix(q2)
    v = G.quat_to_axis_angle(q)
    x6 = G.matrix_to_sixd(R) + 0.1 * torch.randn(n, 6, generator=g, dtype=dtype).to(device)
    ang = G.matrix_to_euler(R, "xyz", warn=False)
    pts = torch.randn(n, 3, generator=g, dtype=dtype).to(device)
    # roma uses xyzw quaternions and (..., 3, 2) matrices for 6D: give it its native layout.
    qx, q2x = q[:, [1, 2, 3, 0]].contiguous(), q2[:, [1, 2, 3, 0]].contiguous()
    m32 = x6.view(n, 2, 3).transpose(-1, -2).contiguous()
    cpu = device == "cpu"
    npq = qx.double().cpu().numpy() if cpu else None
    npR = R.double().cpu().numpy() if cpu else None
    npv = v.double().cpu().numpy() if cpu else None
    npa = ang.double().cpu().numpy() if cpu else None
    npp = pts.double().cpu().numpy() if cpu else None
    r1 = Rotation.from_quat(npq) if cpu else None
    r2 = Rotation.from_quat(q2x.double().cpu().numpy()) if cpu else None

    def c(name, inputs, geo, rm=None, sc=None, pt=None):
        return {
            "name": name,
            "inputs": inputs,
            "geo3d": geo,
            "roma": rm if roma else None,
            "scipy": sc if cpu else None,
            "pytorch3d": pt if p3d else None,
        }

    T = p3d
    return [
        c(
            "quat_to_matrix",
            (q,),
            lambda: G.quat_to_matrix(q),
            lambda: roma.unitquat_to_rotmat(qx),
            lambda: Rotation.from_quat(npq).as_matrix(),
            lambda: T.quaternion_to_matrix(q),
        ),
        c(
            "matrix_to_quat",
            (R,),
            lambda: G.matrix_to_quat(R),
            lambda: roma.rotmat_to_unitquat(R),
            lambda: Rotation.from_matrix(npR).as_quat(),
            lambda: T.matrix_to_quaternion(R),
        ),
        c(
            "axis_angle_to_matrix",
            (v,),
            lambda: G.axis_angle_to_matrix(v),
            lambda: roma.rotvec_to_rotmat(v),
            lambda: Rotation.from_rotvec(npv).as_matrix(),
            lambda: T.axis_angle_to_matrix(v),
        ),
        c(
            "matrix_to_axis_angle",
            (R,),
            lambda: G.matrix_to_axis_angle(R),
            lambda: roma.rotmat_to_rotvec(R),
            lambda: Rotation.from_matrix(npR).as_rotvec(),
            lambda: T.matrix_to_axis_angle(R),
        ),
        c(
            "axis_angle_to_quat",
            (v,),
            lambda: G.axis_angle_to_quat(v),
            lambda: roma.rotvec_to_unitquat(v),
            lambda: Rotation.from_rotvec(npv).as_quat(),
            lambda: T.axis_angle_to_quaternion(v),
        ),
        c(
            "quat_to_axis_angle",
            (q,),
            lambda: G.quat_to_axis_angle(q),
            lambda: roma.unitquat_to_rotvec(qx),
            lambda: Rotation.from_quat(npq).as_rotvec(),
            lambda: T.quaternion_to_axis_angle(q),
        ),
        c(
            "sixd_to_matrix",
            (x6,),
            lambda: G.sixd_to_matrix(x6),
            lambda: roma.special_gramschmidt(m32),
            None,
            lambda: T.rotation_6d_to_matrix(x6),
        ),
        c(
            "euler_to_matrix",
            (ang,),
            lambda: G.euler_to_matrix(ang, "xyz"),
            lambda: roma.euler_to_rotmat("xyz", ang),
            lambda: Rotation.from_euler("xyz", npa).as_matrix(),
            lambda: T.euler_angles_to_matrix(ang, "ZYX"),
        ),
        c(
            "matrix_to_euler",
            (R,),
            lambda: G.matrix_to_euler(R, "xyz"),
            lambda: roma.rotmat_to_euler("xyz", R),
            lambda: Rotation.from_matrix(npR).as_euler("xyz"),
            lambda: T.matrix_to_euler_angles(R, "ZYX"),
        ),
        c(
            "quat_multiply",
            (q, q2),
            lambda: G.quat_multiply(q, q2),
            lambda: roma.quat_product(qx, q2x),
            lambda: (r1 * r2).as_quat(),
            lambda: T.quaternion_raw_multiply(q, q2),
        ),
        c(
            "quat_apply",
            (q, pts),
            lambda: G.quat_apply(q, pts),
            lambda: roma.quat_action(qx, pts, is_normalized=True),
            lambda: r1.apply(npp),
            lambda: T.quaternion_apply(q, pts),
        ),
        c(
            "geodesic_distance",
            (R, R2),
            lambda: G.geodesic_distance(R, R2),
            lambda: roma.rotmat_geodesic_distance(R, R2),
            lambda: (r1.inv() * r2).magnitude(),
            lambda: T.so3_relative_angle(R, R2),
        ),
    ]


FUSABLE = set(G.FUSED_FUNCTIONS)


def _fused_call(name: str, inputs: tuple, compiled_only: bool = False) -> Callable[[], Any]:
    f = G.fused(name)
    args = (*inputs, "xyz") if name in ("euler_to_matrix", "matrix_to_euler") else inputs
    if compiled_only:  # the torch.compile kernels even where the C kernels would serve

        def call():
            with _native.disabled():
                return f(*args)

        return call
    return lambda: f(*args)


def run(device: str, sizes: list[int], fused: bool, rounds: int, min_time: float,
        threads: int = 1, only: list[str] | None = None) -> dict:
    dtype = torch.float32
    env = env_info(device)
    rows = []
    for n in sizes:
        mt = min_time if n <= 10_000 else max(min_time, 0.3)
        for case in make_cases(n, device, dtype):
            name = case["name"]
            if only and name not in only:
                continue
            out = case["geo3d"]()
            in_bytes = sum(t.numel() * t.element_size() for t in case["inputs"])
            out_bytes = out.numel() * out.element_size()
            row: dict[str, Any] = {
                "conversion": name,
                "batch": n,
                "dtype": "float32",
                "device": device,
                "in_bytes": in_bytes,
                "out_bytes": out_bytes,
                "times_s": {},
                "rounds": {},
            }
            impls = ["geo3d", "roma", "scipy", "pytorch3d"]
            calls = {k: case[k] for k in impls if case[k] is not None}
            io = torch.empty((in_bytes + out_bytes) // 4, dtype=dtype, device=device)
            half = torch.empty((in_bytes + out_bytes) // 8, dtype=dtype, device=device)
            calls["copy_io"] = io.clone
            calls["copy_traffic"] = half.clone
            if fused and n >= 100_000 and name in FUSABLE:
                t0 = time.perf_counter()
                with warnings.catch_warnings(record=True) as w:
                    warnings.simplefilter("always")
                    fcall = _fused_call(name, case["inputs"])
                    fout = fcall()
                    if device == "cuda":
                        torch.cuda.synchronize()
                row["fused_compile_s"] = time.perf_counter() - t0
                row["fused_backend"] = (
                    "native" if _native.applies(name, case["inputs"][0]) else "torch.compile"
                )
                row["fused_warnings"] = [
                    str(x.message) for x in w if "Gimbal" not in str(x.message)
                ]
                row["fused_max_abs_diff"] = float((fout - out).abs().max())
                calls["geo3d_fused"] = fcall
                if row["fused_backend"] == "native":
                    ccall = _fused_call(name, case["inputs"], compiled_only=True)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ccall()  # compile outside the timing
                    calls["geo3d_compiled"] = ccall
            if n > 10_000 and "scipy" in calls:  # seconds per call: one timed call
                sc = calls.pop("scipy")
                t0 = time.perf_counter()
                sc()
                row["times_s"]["scipy"] = time.perf_counter() - t0
                row["rounds"]["scipy"] = ["single call"]
            nrounds = rounds
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ms = measure_interleaved(calls, device=device, min_run_time=mt, rounds=nrounds,
                                         num_threads=threads)
            for k, m in ms.items():
                row["times_s"][k] = m["time_s"]
                row["rounds"][k] = m["round_medians_s"]
            row["times_s"] = {k: row["times_s"][k] for k in sorted(row["times_s"])}
            t = row["times_s"]
            row["ratio_geo3d_over_roma"] = t["geo3d"] / t["roma"] if "roma" in t else None
            if "geo3d_fused" in t:
                row["ratio_fused_over_copy_io"] = t["geo3d_fused"] / t["copy_io"]
                row["ratio_fused_over_copy_traffic"] = t["geo3d_fused"] / t["copy_traffic"]
                row["ratio_fused_over_roma"] = t["geo3d_fused"] / t["roma"] if "roma" in t else None
            if "geo3d_compiled" in t:
                row["ratio_compiled_over_copy_io"] = t["geo3d_compiled"] / t["copy_io"]
            rows.append(row)
            _print_row(row)
    return {
        "benchmark": "rotations",
        "env": env,
        "timing": {
            "statistic": "min over interleaved rounds of torch.utils.benchmark "
            "blocked_autorange medians (scipy at batch > 1e4: one timed call)",
            "rounds": rounds,
            "min_run_time_s": min_time,
            "cpu_threads": threads,
            "bandwidth_bound": "copy_io = clone of a buffer of in_bytes + out_bytes bytes; "
            "copy_traffic = clone of (in_bytes + out_bytes)/2 bytes",
            "fused": "geo3d.rotations.fused: float32 CPU inputs without grad go to the "
            "native C kernels (_native.c, cc -O3 -march=native, torch's thread count: 1 "
            "inside torch.utils.benchmark); otherwise component-wise formulations "
            f"(_compiled.py) compiled with inductor options {_inductor_options()} "
            "(geo3d_compiled: those alone)",
        },
        "results": rows,
    }


def _fmt(t: float | None) -> str:
    if t is None:
        return "-"
    return f"{t * 1e6:9.1f}us" if t < 1e-3 else f"{t * 1e3:9.2f}ms"


HEADER = (
    f"{'conversion':22s} {'batch':>8s} {'geo3d':>11s} {'roma':>11s} {'scipy':>11s} "
    f"{'pt3d':>11s} {'fused':>11s} {'compiled':>11s} {'copy_io':>11s} {'g/roma':>7s} "
    f"{'fused/copy':>10s}"
)


def _print_row(r: dict) -> None:
    t = r["times_s"]
    ratio = r["ratio_geo3d_over_roma"]
    fr = r.get("ratio_fused_over_copy_io")
    print(
        f"{r['conversion']:22s} {r['batch']:>8d} {_fmt(t.get('geo3d')):>11s} "
        f"{_fmt(t.get('roma')):>11s} {_fmt(t.get('scipy')):>11s} "
        f"{_fmt(t.get('pytorch3d')):>11s} {_fmt(t.get('geo3d_fused')):>11s} "
        f"{_fmt(t.get('geo3d_compiled')):>11s} {_fmt(t.get('copy_io')):>11s} "
        f"{(f'{ratio:.2f}' if ratio else '-'):>7s} {(f'{fr:.2f}' if fr else '-'):>10s}",
        flush=True,
    )


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "17179869184"}


def _reexec_with_malloc_tuning() -> None:
    """Re-run this script with glibc keeping freed memory (no mmap/munmap per large tensor).

    Without it, every tensor above glibc's 32 MiB mmap threshold (e.g. 1e6 rotation
    matrices) is freshly mmapped and page-faulted on each call, which on some VMs costs
    more than the conversion itself and varies from call to call. The PyTorch CPU tuning
    guide recommends a caching allocator (jemalloc/tcmalloc) for the same reason. Applies
    equally to every implementation measured.
    """
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    env = dict(os.environ, **MALLOC_ENV)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 1_000_000])
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu (+cuda if present)")
    p.add_argument("--no-fused", action="store_true", help="skip the torch.compile path")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="only these conversions (e.g. geodesic_distance); use with --out-dir "
                   "so that the recorded full results are not replaced")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per autorange")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads while timing, for every implementation and the copy "
        "(default 1, torch.utils.benchmark's default; results of other counts are written "
        "to rotations_cpu_<N>threads.json)",
    )
    p.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="keep glibc's default mmap threshold (large tensors page-faulted on every call)",
    )
    a = p.parse_args(argv)
    if not a.no_malloc_tuning:
        _reexec_with_malloc_tuning()
    devices = a.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for dev in devices:
        threads = a.threads if dev == "cpu" else 1
        print(
            f"== {dev}: {env_info(dev)['device_name']}, torch {torch.__version__}, "
            f"timed with {threads} CPU thread(s), float32"
        )
        print(HEADER)
        res = run(dev, a.sizes, not a.no_fused, a.rounds, a.min_time, threads, a.only)
        res["env"]["malloc_env"] = {k: os.environ.get(k) for k in MALLOC_ENV}
        suffix = f"_{threads}threads" if threads != 1 else ""
        path = write_json_atomic(a.out_dir / f"rotations_{dev}{suffix}.json", res)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
