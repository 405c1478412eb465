"""Does the assembled object depend on the pieces' input poses? float64 and float32 inputs
(issue 17: "test in float64; measure in float32").

For each held-out object of a generated dataset (``--data-root``, e.g. the demo's), every
piece's mesh is sampled once (``--points`` samples with face normals, as the dense
evaluation path does), then ``--draws`` independent draws of random rigid motions move
the pieces. Each draw goes through the default pipeline
(``assemble_from_outputs(method="fracture_registration", templates=bank)``, no network;
the bank is built from the training split's objects, assembled, like the one a checkpoint
stores), with the moved pieces given as float64 or as float32 tensors. Every draw places
the same samples in the dataset's frame; we report, per piece, the RMS distance between
the placements of draw 0 and of every other draw (in units of the object scale, the mean
RMS radius of its pieces), the fraction of pieces below 1e-6 / 1e-3 / 0.01, and the
absolute-protocol part accuracy of every draw (``geo3d.eval.assembly_metrics``).

Usage::

    nice python benchmarks/assembly_invariance.py --data-root runs/demo/data \\
        --out benchmarks/results/assembly_invariance.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import env_info, write_json_atomic  # noqa: E402
from assembly_fracture_registration import (  # noqa: E402
    load_object,
    move_pieces,
    read_split,
    spread,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--out", default="benchmarks/results/assembly_invariance.json")
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--train-objects", type=int, default=192)
    ap.add_argument("--test-objects", type=int, default=24)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from geo3d.apps.assembly._canonical import TemplateBank
    from geo3d.apps.assembly._fracture_registration import object_scale
    from geo3d.apps.assembly._pipeline import assemble_from_outputs

    from geo3d.eval import assembly_metrics

    root = Path(args.data_root)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    bank = TemplateBank.from_objects(
        [np.concatenate(load_object(f, 256, rng)[1])
         for f in spread(read_split(root, "train"), args.train_objects)])
    t_bank = time.time() - t0
    test = [load_object(f, args.points, rng) for f in
            spread(read_split(root, "val"), args.test_objects)]
    res: dict[str, dict] = {}
    for dtype in (torch.float64, torch.float32):
        dev, accs, secs = [], [], []
        for oi, (_, pts, nrm, _) in enumerate(test):
            s = object_scale([p - p.mean(0) for p in pts])
            placed = []
            for d in range(args.draws):
                inp, inn, gr, gt = move_pieces(pts, nrm, np.random.default_rng([args.seed, oi, d]))
                x = torch.from_numpy(np.stack(inp))[None].to(dtype)
                n = torch.from_numpy(np.stack(inn))[None].to(dtype)
                valid = torch.ones(1, len(pts), dtype=torch.bool)
                t1 = time.time()
                T = assemble_from_outputs(x, valid, {}, method="fracture_registration",
                                          normals=n, templates=bank)[0].double()
                secs.append(time.time() - t1)
                m = assembly_metrics(x.double(), valid, T[None, :, :3, :3], T[None, :, :3, 3],
                                     torch.from_numpy(np.stack(gr))[None],
                                     torch.from_numpy(np.stack(gt))[None], protocol="absolute")
                accs.append(float(m["part_acc"]))
                placed.append([x[0, i].double() @ T[i, :3, :3].T + T[i, :3, 3]
                               for i in range(len(pts))])
            for d in range(1, args.draws):
                for a, b in zip(placed[0], placed[d], strict=True):
                    dev.append(float((a - b).square().sum(1).mean().sqrt()) / s)
            print(dtype, oi, len(pts), [round(v, 3) for v in accs[-args.draws:]], flush=True)
        dev_a = np.asarray(dev)
        res[str(dtype).replace("torch.", "")] = {
            "pieces_compared": int(len(dev_a)),
            "fraction_below_1e-6": float((dev_a < 1e-6).mean()),
            "fraction_below_1e-3": float((dev_a < 1e-3).mean()),
            "fraction_below_0.01": float((dev_a < 0.01).mean()),
            "median_rms_over_scale": float(np.median(dev_a)),
            "max_rms_over_scale": float(dev_a.max()),
            "absolute_part_acc_mean_over_draws": float(np.mean(accs)),
            "sec_per_object": float(np.mean(secs)),
        }
        print(dtype, res[str(dtype).replace("torch.", "")], flush=True)
    write_json_atomic(args.out, {
        "what": "placements in the dataset's frame of the same samples under independent "
                "draws of random piece motions, RMS distance / object scale vs draw 0; "
                "pipeline fracture_registration + template bank, no network",
        "results": res, "num_test_objects": len(test), "bank_objects": len(bank),
        "bank_seconds": t_bank, "args": vars(args), "env": env_info()})


if __name__ == "__main__":
    main()
