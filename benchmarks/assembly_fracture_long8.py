"""Fracture registration on objects with many pieces (issue 17, config long8's data).

For each requested piece count, the first ``--per-count`` held-out objects of
``runs/long8/data`` (everyday val split, in file order: these are Bracket objects) are
sampled at 1000 mesh points per piece with face normals, every piece gets a random
rotation, and :func:`geo3d.apps.assembly._fracture_registration.fracture_assembly` (shipped
classifier, default strategy "merge") assembles them; anchor-protocol part accuracy
(geo3d.eval.assembly_metrics) and wall seconds per object (1 thread, shared machine) are
written to ``benchmarks/results/assembly_fracture_long8.json``. Small samples: indicative
only. No network is involved (anchor protocol)::

    OMP_NUM_THREADS=1 python benchmarks/assembly_fracture_long8.py --counts 4,5,6,7,8 --per-count 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, env_info, write_json_atomic  # noqa: E402
from assembly_fracture_registration import load_object, move_pieces, read_split  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default="runs/long8/data")
    ap.add_argument("--counts", default="4,5,6,7,8")
    ap.add_argument("--per-count", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS_DIR / "assembly_fracture_long8.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    from geo3d.apps.assembly._fracture_registration import fracture_assembly

    from geo3d.eval import anchor_parts, assembly_metrics

    root = Path(a.data_root)
    by_n: dict[int, list[Path]] = {}
    for f in read_split(root, "val"):
        by_n.setdefault(len(list(f.glob("piece_*.obj"))), []).append(f)
    rng = np.random.default_rng(0)
    rows = []
    for n in [int(x) for x in a.counts.split(",")]:
        for k, f in enumerate(by_n.get(n, [])[:a.per_count]):
            _, pts, nrm, _ = load_object(f, 1000, rng)
            inp, inn, gr, gt = move_pieces(pts, nrm, np.random.default_rng([0, n, k]))
            x = torch.from_numpy(np.stack(inp))[None]
            valid = torch.ones(1, len(inp), dtype=torch.bool)
            anchor = int(anchor_parts(x, valid)[0])
            t0 = time.time()
            G = fracture_assembly(inp, inn, anchor)[0].numpy()
            sec = time.time() - t0
            m = assembly_metrics(x, valid, torch.from_numpy(G[None, :, :3, :3]),
                                 torch.from_numpy(G[None, :, :3, 3]),
                                 torch.from_numpy(np.stack(gr))[None],
                                 torch.from_numpy(np.stack(gt))[None], protocol="anchor",
                                 anchor=torch.tensor([anchor]))
            rows.append({"pieces": n, "object": str(f.relative_to(root)),
                         "anchor_part_acc": float(m["part_acc"]), "seconds": sec})
            print(rows[-1], flush=True)
    summary = {str(n): {"objects": len(v), "anchor_part_acc": float(np.mean(
        [r["anchor_part_acc"] for r in v])), "sec_per_object": float(np.mean(
            [r["seconds"] for r in v]))}
        for n in sorted({r["pieces"] for r in rows})
        for v in [[r for r in rows if r["pieces"] == n]]}
    write_json_atomic(Path(a.out), {"by_num_pieces": summary, "objects": rows,
                                    "args": vars(a), "env": env_info()})
    print(summary)


if __name__ == "__main__":
    main()
