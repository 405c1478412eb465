"""Equivariance of a trained assembly checkpoint on real items: apply a random rotation and
translation to every input part and measure how much the predicted assembly moves, for
the network's poses and for the matching pipeline (descriptor matching + RANSAC with a
fixed seed + spanning tree + refinement; checkpoints with a correspondence head).

Usage::

    python benchmarks/assembly_equivariance.py CKPT DATA_ROOT --num-points 128 --max-parts 5 \
        [--out benchmarks/results/assembly_equivariance.json]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from geo3d.apps.assembly import load_model
from geo3d.datasets import BreakingBad
from geo3d.datasets.breaking_bad import collate_parts

from geo3d.rotations import random_rotation_matrix


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("root")
    p.add_argument("--num-points", type=int, default=128)
    p.add_argument("--max-parts", type=int, default=5)
    p.add_argument("--objects", type=int, default=16)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args()
    torch.set_num_threads(1)
    model = load_model(a.checkpoint)
    ds = BreakingBad(a.root, split="val", num_points=a.num_points, max_parts=a.max_parts, seed=0)
    b = collate_parts([ds[i] for i in range(min(len(ds), a.objects))], trim=True)
    g = torch.Generator().manual_seed(0)
    from geo3d.apps.assembly._pipeline import assemble_from_outputs

    out = {"checkpoint": a.checkpoint, "objects": int(b["points"].shape[0]),
           "what": "max |assembled(moved pieces) - assembled(pieces)| per part (data units)"}
    methods = ["network"] + (["matching"] if getattr(model.net, "corr", None) is not None
                             else [])

    def assembled(m, x, v, method):
        o = m(x, v)
        T = assemble_from_outputs(x, v, o, method=method,
                                  generator=torch.Generator().manual_seed(0))
        return x @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]

    for method in methods:
        for dt in (torch.float32, torch.float64):
            m = model.to(dt)
            pts, v = b["points"].to(dt), b["valid"]
            errs: list[float] = []
            with torch.no_grad():
                ref = assembled(m, pts, v, method)
                for _ in range(a.trials):
                    G = random_rotation_matrix(*pts.shape[:2], generator=g, dtype=dt)
                    s = torch.randn(*pts.shape[:2], 1, 3, generator=g, dtype=dt)
                    moved = pts @ G.transpose(-1, -2) + s
                    errs += (ref - assembled(m, moved, v, method)).abs().amax(
                        dim=(-1, -2))[v].tolist()
            out[f"{method}/{str(dt).replace('torch.', '')}"] = {
                "max": max(errs), "median_part": statistics.median(errs),
                "frac_parts_above_1e-4": sum(e > 1e-4 for e in errs) / len(errs),
            }
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        from pathlib import Path

        from geo3d._atomic import atomic_write_bytes

        atomic_write_bytes(Path(a.out), (text + "\n").encode())


if __name__ == "__main__":
    main()
