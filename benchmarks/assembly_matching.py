"""Oracle upper bound of the matching pipeline (apps/assembly/_pipeline.py) per number of
pieces: part accuracy (anchor protocol, geo3d.eval.assembly_metrics) and wall time per
stage on CPU.

Objects: procedural shapes (categories cycled) fractured by geo3d.datasets.fracture
(``noise`` 0.02, the generator's default), ``num_points`` surface samples per piece, every
piece in a random pose. Descriptors and fracture scores are the ORACLE of
apps/assembly/_matching_oracle.py (random Fourier features of the assembled-frame
coordinates, ground-truth fracture labels), so the figures are what the geometry stages
(matching, RANSAC, spanning tree, refinement) reach with perfect descriptors: an upper
bound for the learned head, not a result of it.

Usage::

    python benchmarks/assembly_matching.py --objects 4 --min-parts 2 --max-parts 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, env_info, write_json_atomic  # noqa: E402


def _metric_inputs(p: torch.Tensor, T: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Centred points and the poses of the centred points, for geo3d.eval."""
    c = p.mean(1)  # (P, 3)
    R = T[:, :3, :3]
    t = T[:, :3, 3] + (R @ c[:, :, None])[..., 0]
    return p - c[:, None], R, t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=4, help="objects per number of pieces")
    ap.add_argument("--min-parts", type=int, default=2)
    ap.add_argument("--max-parts", type=int, default=8)
    ap.add_argument("--num-points", type=int, default=512)
    ap.add_argument("--noise", type=float, default=0.02)
    ap.add_argument("--bandwidth", type=float, default=0.02,
                    help="oracle kernel width relative to the object's diagonal")
    ap.add_argument("--desc-noise", type=float, default=0.0,
                    help="Gaussian descriptor noise relative to the RMS entry (degraded oracle)")
    ap.add_argument("--label-flip", type=float, default=0.0,
                    help="fraction of fracture labels flipped (degraded oracle)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS_DIR / "assembly_matching_cpu.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)

    from geo3d.apps.assembly._matching_oracle import (
        fractured_object,
        oracle_outputs,
        random_poses,
    )
    from geo3d.apps.assembly._pipeline import assemble_from_outputs
    from geo3d.datasets.fracture import FractureError
    from geo3d.datasets.shapes import SHAPE_CATEGORIES

    from geo3d.eval import assembly_metrics
    from geo3d.rotations import kabsch

    for dt in (torch.float32, torch.float64):  # one-time initialisation (~2 s) not timed
        kabsch(torch.randn(4, 5, 3, dtype=dt), torch.randn(4, 5, 3, dtype=dt))
    cats = list(SHAPE_CATEGORIES)
    results: dict[str, dict] = {}
    failures: list[str] = []
    k = 0
    for P in range(a.min_parts, a.max_parts + 1):
        rows = {"refine": [], "no_refine": []}
        times = {"refine": {}, "no_refine": {}}
        cat_used = []
        for _ in range(a.objects):
            cat = cats[k % len(cats)]
            seed = a.seed * 1000 + k
            k += 1
            t0 = time.perf_counter()
            try:
                obj = fractured_object(P, a.num_points, category=cat, seed=seed, noise=a.noise)
            except FractureError as err:
                failures.append(f"{cat} seed {seed} P={P}: {err}")
                continue
            t_gen = time.perf_counter() - t0
            cat_used.append(cat)
            g = torch.Generator().manual_seed(seed)
            x = obj["assembled"]
            A = random_poses(P, g)
            p = x @ A[:, :3, :3].transpose(-1, -2) + A[:, None, :3, 3]
            gt = torch.linalg.inv(A)
            out = oracle_outputs(x, obj["fracture"],
                                 bandwidth=a.bandwidth * float(obj["diag"]), generator=g,
                                 desc_noise=a.desc_noise, label_flip=a.label_flip)
            out = {kk: v[None].float() for kk, v in out.items()}
            pts = p[None].float()  # the pipeline in float32, as after the network
            valid = torch.ones(1, P, dtype=torch.bool)
            for mode, refine in (("refine", True), ("no_refine", False)):
                tim: dict[str, float] = {}
                T = assemble_from_outputs(pts, valid, out, refine=refine,
                                          generator=torch.Generator().manual_seed(seed),
                                          timings=tim)[0].double()
                for kk, v in tim.items():
                    times[mode][kk] = times[mode].get(kk, 0.0) + v
                cp, R, t = _metric_inputs(p, T)
                _, Rg, tg = _metric_inputs(p, gt)
                m = assembly_metrics(cp[None], valid, R[None], t[None], Rg[None], tg[None],
                                     protocol="anchor", reduction="none")
                rows[mode].append({kk: float(v[0]) for kk, v in m.items()})
            print(f"P={P} {cat:9s} seed={seed} gen {t_gen:.1f}s  PA refine "
                  f"{rows['refine'][-1]['part_acc']:.3f} / no refine "
                  f"{rows['no_refine'][-1]['part_acc']:.3f}  rmse_r_geo "
                  f"{rows['refine'][-1]['rmse_r_geo']:.2f}°", flush=True)
        if not rows["refine"]:
            continue
        entry: dict = {"objects": len(rows["refine"]), "categories": cat_used}
        for mode in rows:
            n = len(rows[mode])
            keys = rows[mode][0].keys()
            entry[mode] = {kk: sum(r[kk] for r in rows[mode]) / n for kk in keys}
            entry[mode]["per_object_part_acc"] = [r["part_acc"] for r in rows[mode]]
            entry[mode]["seconds_per_object"] = {
                kk: v / times[mode]["objects"] for kk, v in times[mode].items()
                if kk != "objects"}
        results[str(P)] = entry
    summary = {
        "benchmark": "assembly_matching (oracle descriptors: upper bound of the geometry "
                     "stages)",
        "command": "python " + " ".join(sys.argv),
        "note": "Oracle descriptors = random Fourier features of assembled-frame coordinates "
                "and ground-truth fracture labels (apps/assembly/_matching_oracle.py); not a "
                "learned model. Metrics: geo3d.eval.assembly_metrics, protocol 'anchor' "
                "(benchmark aggregation: per part, mean over parts, mean over objects). "
                "Pipeline in float32, 1 torch thread. Timings are wall seconds per object "
                "on a SHARED, LOADED 2-core machine (other jobs running): indicative only.",
        "settings": vars(a),
        "env": env_info("cpu"),
        "results": results,
        "failures": failures,
    }
    path = write_json_atomic(a.out, summary)
    print(f"wrote {path}")
    for P, e in results.items():
        r, n = e["refine"], e["no_refine"]
        s = r["seconds_per_object"]
        print(f"P={P}: PA {r['part_acc']:.3f} (no refine {n['part_acc']:.3f}), rmse_r_geo "
              f"{r['rmse_r_geo']:.2f}°, time/object match {s.get('match', 0):.2f}s ransac "
              f"{s.get('ransac', 0):.2f}s refine {s.get('refine', 0):.2f}s total "
              f"{s.get('total', 0):.2f}s")


if __name__ == "__main__":
    main()
