"""ViT forward benchmark: geo3d's VisionTransformer vs transformers' Dinov2Model.

Same random weights (transformers' initialisation, copied into geo3d with
``hf_to_official_state_dict``), same input, batch 1, float32, inference mode, at 224² and
448², for DINOv2 ViT-S/14 and ViT-B/14. geo3d runs with ``interpolate="hf"`` so both
compute the same function (the max abs output difference is recorded). Timing:
``torch.utils.benchmark`` in interleaved rounds (smallest per-round median). Peak memory:
the growth of the peak resident set size over one forward pass (``VmHWM`` after a
reset through ``/proc/self/clear_refs``, minus ``VmRSS`` before), in a fresh child process
per model (model and input already built).

Usage::

    python benchmarks/vit.py                      # writes benchmarks/results/vit_cpu.json
    python benchmarks/vit.py --sizes small --res 224 --no-save
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, env_info, measure_interleaved, write_json_atomic  # noqa: E402

SIZES = {"small": (384, 6), "base": (768, 12)}


def build(size: str, seed: int = 0, convert: bool = True):
    """(transformers Dinov2Model, geo3d VisionTransformer) with identical weights."""
    from transformers import Dinov2Config, Dinov2Model

    from geo3d.nn import hf_to_official_state_dict, vit_from_state_dict

    dim, heads = SIZES[size]
    torch.manual_seed(seed)
    cfg = Dinov2Config(
        hidden_size=dim,
        num_hidden_layers=12,
        num_attention_heads=heads,
        image_size=518,
        patch_size=14,
    )
    hf = Dinov2Model(cfg).eval()
    if not convert:
        return hf, None
    sd = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    ours = vit_from_state_dict(hf_to_official_state_dict(sd), interpolate="hf").eval()
    return hf, ours


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_child(size: str, res: int, which: str) -> None:
    if which == "transformers":
        model, _ = build(size, convert=False)
    else:  # memory does not depend on the weight values: geo3d's own random init
        from geo3d.nn import vit_base, vit_small

        model = (vit_small if size == "small" else vit_base)(interpolate="hf").eval()
    x = torch.rand(1, 3, res, res)
    torch.set_num_threads(int(os.environ.get("VIT_BENCH_THREADS", "1")))
    gc.collect()
    # reset the peak-RSS mark (Linux: "5" > clear_refs), then peak minus current after one pass
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    with torch.inference_mode():
        if which == "transformers":
            model(pixel_values=x)
        else:
            model.forward_features(x)
    print((_status_kib("VmHWM") - before) / 1024.0)  # KiB -> MiB


def peak_mib(size: str, res: int, which: str, threads: int) -> float:
    env = dict(os.environ, VIT_BENCH_THREADS=str(threads))
    out = subprocess.run(
        [sys.executable, __file__, "--_peak", size, str(res), which],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return float(out.stdout.strip().splitlines()[-1])


def cpu_time_interleaved(fns: dict, min_run_time: float, rounds: int, threads: int) -> dict:
    """Like ``measure_interleaved`` but timed with the calling thread's CPU time
    (``time.thread_time``): with ``threads == 1`` all of torch's work runs on that thread, and
    CPU time is far less sensitive than wall time to other jobs on a shared machine."""
    import time

    from torch.utils.benchmark import Timer

    timers = {
        k: Timer(stmt="fn()", globals={"fn": f}, timer=time.thread_time, num_threads=threads)
        for k, f in fns.items()
    }
    med: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, t in timers.items():
            med[k].append(float(t.blocked_autorange(min_run_time=min_run_time).median))
    return {k: {"time_s": min(v), "round_medians_s": v} for k, v in med.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["small", "base"], choices=sorted(SIZES))
    ap.add_argument("--res", nargs="+", type=int, default=[224, 448])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-run-time", type=float, default=0.5)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--out", default=str(RESULTS_DIR / "vit_cpu.json"))
    ap.add_argument("--_peak", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._peak:
        _peak_child(args._peak[0], int(args._peak[1]), args._peak[2])
        return

    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes:
        hf, ours = build(size)
        for res in args.res:
            x = torch.rand(1, 3, res, res, generator=torch.Generator().manual_seed(res))
            with torch.inference_mode():
                ref = hf(pixel_values=x).last_hidden_state
                out = ours.forward_features(x)
            got = torch.cat(
                [out["cls"][:, None], out["patch_tokens"].flatten(2).transpose(1, 2)], 1
            )
            err = float((ref - got).abs().max())

            def run_hf(hf=hf, x=x):
                with torch.inference_mode():
                    return hf(pixel_values=x)

            def run_ours(ours=ours, x=x):
                with torch.inference_mode():
                    return ours.forward_features(x)

            fns = {"geo3d": run_ours, "transformers": run_hf}
            t = measure_interleaved(
                fns, min_run_time=args.min_run_time, rounds=args.rounds, num_threads=args.threads
            )
            c = cpu_time_interleaved(fns, args.min_run_time, args.rounds, args.threads)
            row = {
                "model": f"ViT-{size[0].upper()}/14",
                "resolution": res,
                "tokens": 1 + (res // 14) ** 2,
                "geo3d_ms": 1e3 * t["geo3d"]["time_s"],
                "transformers_ms": 1e3 * t["transformers"]["time_s"],
                "ratio_geo3d_over_transformers": t["geo3d"]["time_s"] / t["transformers"]["time_s"],
                "geo3d_cpu_ms": 1e3 * c["geo3d"]["time_s"],
                "transformers_cpu_ms": 1e3 * c["transformers"]["time_s"],
                "ratio_cpu_time": c["geo3d"]["time_s"] / c["transformers"]["time_s"],
                "geo3d_cpu_round_medians_ms": [1e3 * v for v in c["geo3d"]["round_medians_s"]],
                "transformers_cpu_round_medians_ms": [
                    1e3 * v for v in c["transformers"]["round_medians_s"]
                ],
                "geo3d_round_medians_ms": [1e3 * v for v in t["geo3d"]["round_medians_s"]],
                "transformers_round_medians_ms": [
                    1e3 * v for v in t["transformers"]["round_medians_s"]
                ],
                "peak_rss_growth_mib_geo3d": peak_mib(size, res, "geo3d", args.threads),
                "peak_rss_growth_mib_transformers": peak_mib(
                    size, res, "transformers", args.threads
                ),
                "max_abs_output_diff": err,
            }
            rows.append(row)
            print(
                f"{row['model']:9s} {res:4d}²  geo3d {row['geo3d_ms']:8.1f} ms  transformers "
                f"{row['transformers_ms']:8.1f} ms  ratio {row['ratio_geo3d_over_transformers']:.3f}  "
                f"cpu-time ratio {row['ratio_cpu_time']:.3f}  "
                f"peak +{row['peak_rss_growth_mib_geo3d']:.0f} / +{row['peak_rss_growth_mib_transformers']:.0f} MiB"
                f"  max|diff| {err:.1e}",
                flush=True,
            )
        del hf, ours

    import transformers

    result = {
        "benchmark": "ViT forward (batch 1, float32, inference_mode): geo3d VisionTransformer vs "
        "transformers Dinov2Model, same random weights and input",
        "note": "measured on a machine shared with other jobs (load average in env); timings are "
        "the smallest per-round median of interleaved rounds, wall time (*_ms) and the timing "
        "thread's CPU time (*_cpu_ms, time.thread_time, 1 torch thread: robust to other jobs); peak memory = growth of "
        "VmHWM (reset via /proc/self/clear_refs) minus VmRSS over one forward, fresh process",
        "env": {
            **env_info("cpu"),
            "transformers": transformers.__version__,
            "transformers_attn_implementation": "sdpa (default)",
        },
        "config": vars(args) | {"_peak": None},
        "rows": rows,
    }
    if not args.no_save:
        print("wrote", write_json_atomic(args.out, result))


if __name__ == "__main__":
    main()
