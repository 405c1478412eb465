"""Shape-assembly training throughput: parts/s of one optimiser step (fwd + loss + bwd + Adam).

Models at the demo / long configurations (equivariant VN-DGCNN model and the Global DGCNN
baseline) and, on CUDA, the paper's configuration (VN-DGCNN k = 20, 512-d, 512 points).
Batches are real items of a small generated fracture set (Breaking Bad layout) so the part
counts are realistic. Results go to ``benchmarks/results/assembly_<device>.json``.

Usage::

    python benchmarks/assembly.py                  # CPU (1 thread) and CUDA when present
    python benchmarks/assembly.py --device cpu --threads 2 --configs demo long
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, env_info, measure_interleaved, write_json_atomic  # noqa: E402
from geo3d.apps.assembly import AssemblyModule  # noqa: E402
from geo3d.apps.assembly._losses import assembly_loss  # noqa: E402

CONFIGS = {
    # name: (model kwargs, num_points, batch objects, max_parts)
    "demo": (dict(feat_dim=32, k=8, hidden=[8, 8, 16], d_model=96), 128, 8, 4),
    "demo_global": (dict(arch="global", encoder="dgcnn", feat_dim=64, k=8, hidden=[32, 32, 64],
                         d_model=96), 128, 8, 4),
    "long": (dict(feat_dim=48, k=10, hidden=[16, 16, 32], d_model=128, num_layers=3), 128, 8, 5),
    "long_global": (dict(arch="global", encoder="dgcnn", feat_dim=96, k=10, hidden=[32, 32, 64],
                         d_model=128), 128, 8, 5),
    "paper": (dict(feat_dim=512, k=20, d_model=256, num_layers=4, num_heads=8), 512, 32, 8),
}


def _batch(root: Path, num_points: int, batch: int, max_parts: int, device: str) -> dict:
    from geo3d.datasets import BreakingBad
    from geo3d.datasets.breaking_bad import collate_parts

    ds = BreakingBad(root, split="train", num_points=num_points, max_parts=max_parts, seed=0)
    items = [ds[i % len(ds)] for i in range(batch)]
    b = collate_parts(items, trim=True)
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--configs", nargs="+", default=None)
    p.add_argument("--min-run-time", type=float, default=2.0)
    p.add_argument("--data", default=None, help="existing fracture dataset (default: generate)")
    p.add_argument("--no-save", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if a.device != "all":
        devices = [a.device]
    root = Path(a.data) if a.data else Path(tempfile.mkdtemp(prefix="geo3d_asm_bench_"))
    if not (root / "data_split").is_dir():
        from geo3d.datasets.fracture import generate_dataset

        generate_dataset(root, 12, min_parts=2, max_parts=8, seed=0, fractures_per_object=2,
                         val_fraction=0.25, progress=False)
    for dev in devices:
        names = a.configs or (list(CONFIGS) if dev == "cuda" else
                              ["demo", "demo_global", "long", "long_global"])
        fns, parts = {}, {}
        for name in names:
            kw, n, bsz, maxp = CONFIGS[name]
            torch.manual_seed(0)
            model = AssemblyModule(**kw).to(dev)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            b = _batch(root, n, bsz, maxp, dev)
            parts[name] = int(b["valid"].sum())

            def step(model=model, opt=opt, b=b) -> None:
                out = model(b["points"], b["valid"])
                loss, _ = assembly_loss(b["points"], b["valid"], out["rot"], out["trans"],
                                        b["rot"], b["trans"])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            step()  # warm-up (and cuDNN/allocator setup)
            fns[name] = step
        res = measure_interleaved(fns, device=dev, min_run_time=a.min_run_time, rounds=2)
        out = {"env": env_info(dev), "what": "one training step (fwd+loss+bwd+Adam)",
               "results": {}}
        for name, r in res.items():
            kw, n, bsz, maxp = CONFIGS[name]
            out["results"][name] = {
                "model": kw, "num_points": n, "batch_objects": bsz, "parts": parts[name],
                "step_s": r["time_s"], "round_medians_s": r["round_medians_s"],
                "parts_per_s": parts[name] / r["time_s"],
            }
            print(f"{dev:5s} {name:12s} {parts[name]:3d} parts x {n} pts: "
                  f"{r['time_s'] * 1e3:8.1f} ms/step  {parts[name] / r['time_s']:8.1f} parts/s")
        if not a.no_save:
            path = write_json_atomic(RESULTS_DIR / f"assembly_{dev}.json", out)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
