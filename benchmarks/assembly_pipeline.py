"""Test-time pipelines of a trained assembly checkpoint on its held-out split: the
network's poses, the matching pipeline and hypothesis selection by physical plausibility
(apps/assembly/_plausibility.py), plus the ceilings of hypothesis selection.

For every held-out object (pieces randomly rotated, as the data module's evaluation
draws them) the network runs once; each method then turns its outputs into poses
(:func:`geo3d.apps.assembly._pipeline.assemble_from_outputs`, one seed-0 generator per
method). Reported per method: absolute and anchor protocol (geo3d.eval.assembly_metrics:
part accuracy, RMSE(R) geodesic), anchor part accuracy per number of pieces, wall ms per
object per stage (CPU, 1 thread; the machine is shared, its load average is recorded).

Ceilings (anchor protocol, the anchor keeps the network's top-1 pose): per non-anchor
piece the hypothesis of the 24 closest to the truth (oracle choice) with the network's
translation, and with the translation corrected too; how often a hypothesis within 15°
of the truth (relative to the anchor) is the network's top-1/3/5 or anywhere.

Usage::

    python benchmarks/assembly_pipeline.py CKPT --config demo --data-root runs/demo/data \\
        --out benchmarks/results/assembly_pipeline_demo_ckpt.json
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import env_info, write_json_atomic  # noqa: E402

METHODS = ("network", "matching", "select")


def _geo_deg(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    c = ((Ra.transpose(-1, -2) @ Rb).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.acos(c.clamp(-1, 1)))


def _ceilings(pts, valid, out, gt_rot, gt_trans, anchor, acc):
    """Oracle hypothesis choice (rotation; rotation + translation) for one batch."""
    from geo3d.eval import assembly_metrics

    HR, Ht, L = out["hyp_rot"].double(), out["hyp_trans"].double(), out["hyp_logits"].double()
    K = HR.shape[2]
    rot, trans = out["rot"].double().clone(), out["trans"].double().clone()
    rot2, trans2 = rot.clone(), trans.clone()
    for i in range(pts.shape[0]):
        a = int(anchor[i])
        Ra, ta = rot[i, a], trans[i, a]
        A = gt_rot[i, a] @ Ra.T  # moves the network's anchor onto the true anchor
        for j in range(pts.shape[1]):
            if not bool(valid[i, j]) or j == a:
                continue
            e = _geo_deg(A @ HR[i, j], gt_rot[i, j].expand(K, 3, 3))
            k = int(e.argmin())
            order = L[i, j].argsort(descending=True)
            ok = e < 15
            acc["pieces"] += 1
            for n, key in ((1, "top1"), (3, "top3"), (5, "top5"), (K, "any")):
                acc[key] += int(bool(ok[order[:n]].any()))
            rot[i, j], trans[i, j] = HR[i, j, k], Ht[i, j, k]
            rot2[i, j] = HR[i, j, k]
            trans2[i, j] = A.T @ (gt_trans[i, j] - gt_trans[i, a]) + ta
    res = {}
    for name, (r, t) in (("oracle_rotation", (rot, trans)),
                         ("oracle_rotation_true_translation", (rot2, trans2))):
        res[name] = assembly_metrics(pts, valid, r, t, gt_rot, gt_trans, protocol="anchor",
                                     anchor=anchor, reduction="none")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--config", action="append", default=None,
                    help="packaged config name or YAML (default demo); repeat to layer "
                         "further YAML files on the first")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--search", type=int, default=0,
                    help="also evaluate method 'select' with a complementary-surface pair "
                         "search over this many grid rotations (select_kwargs search=N)")
    ap.add_argument("--true-normals", action="store_true",
                    help="give the pipelines the data's mesh normals (default: estimated)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from geo3d.apps.assembly import load_model
    from geo3d.apps.assembly._pipeline import assemble_from_outputs
    from geo3d.apps.assembly.cli import config_path, run_lightning_cli

    from geo3d.eval import anchor_parts, assembly_metrics

    extra = ["--data.root", a.data_root] if a.data_root else []
    configs = [config_path(c) for c in (a.config or ["demo"])]  # layered, first = base
    cli = run_lightning_cli([*(x for c in configs for x in ("--config", c)), *extra,
                             "--trainer.logger", "false"], run=False)
    model = load_model(a.checkpoint).eval()
    methods_run = list(METHODS) + (["select_search"] if a.search else [])
    sums: dict[str, dict] = {m: {"absolute": [], "anchor": [], "rmse_abs": [], "rmse_anc": [],
                                 "time": {}} for m in methods_run}
    ceil = {"oracle_rotation": [], "oracle_rotation_true_translation": []}
    ceil_rmse = {k: [] for k in ceil}
    acc = {"pieces": 0, "top1": 0, "top3": 0, "top5": 0, "any": 0}
    nparts, t_net = [], 0.0
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    for batch in cli.datamodule.test_dataloader():
        pts, valid = batch["points"], batch["valid"].bool()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(pts, valid)
        t_net += time.perf_counter() - t0
        pd = pts.double()
        gr, gtr = batch["rot"].double(), batch["trans"].double()
        anchor = anchor_parts(pd, valid)
        nparts.append(valid.sum(1))
        nrm = batch["normals"].double() if a.true_normals and "normals" in batch else None
        for m in methods_run:
            tim: dict[str, float] = {}
            kw = {"select_kwargs": {"search": a.search}} if m == "select_search" else {}
            T = assemble_from_outputs(pd, valid, out, method=m.split("_")[0], normals=nrm,
                                      timings=tim, generator=torch.Generator().manual_seed(0),
                                      **kw)
            for k, v in tim.items():
                sums[m]["time"][k] = sums[m]["time"].get(k, 0.0) + v
            for proto, key, rk in (("absolute", "absolute", "rmse_abs"),
                                   ("anchor", "anchor", "rmse_anc")):
                r = assembly_metrics(pd, valid, T[..., :3, :3], T[..., :3, 3], gr, gtr,
                                     protocol=proto, anchor=anchor, reduction="none")
                sums[m][key].append(r["part_acc"])
                sums[m][rk].append(r["rmse_r_geo"])
        if "hyp_rot" in out:
            for k, r in _ceilings(pd, valid, out, gr, gtr, anchor, acc).items():
                ceil[k].append(r["part_acc"])
                ceil_rmse[k].append(r["rmse_r_geo"])
    npc = torch.cat(nparts)
    n_obj = int(npc.numel())

    def by_parts(v: torch.Tensor) -> dict:
        return {str(n): {"num_objects": int((npc == n).sum()),
                         "part_acc": float(v[npc == n].mean())}
                for n in sorted(set(npc.tolist()))}

    methods = {}
    for m, s in sums.items():
        anc, ab = torch.cat(s["anchor"]), torch.cat(s["absolute"])
        tm = {k: 1e3 * v / n_obj for k, v in s["time"].items() if k != "objects"}
        tm["network"] = 1e3 * t_net / n_obj
        methods[m] = {
            "absolute": {"part_acc": float(ab.mean()),
                         "rmse_r_geo": float(torch.cat(s["rmse_abs"]).mean())},
            "anchor": {"part_acc": float(anc.mean()),
                       "rmse_r_geo": float(torch.cat(s["rmse_anc"]).mean())},
            "anchor_part_acc_by_num_parts": by_parts(anc),
            "ms_per_object": tm,
        }
    ceilings = {}
    if acc["pieces"]:
        for k, v in ceil.items():
            v = torch.cat(v)
            ceilings[k] = {"anchor_part_acc": float(v.mean()),
                           "anchor_rmse_r_geo": float(torch.cat(ceil_rmse[k]).mean()),
                           "anchor_part_acc_by_num_parts": by_parts(v)}
        ceilings["non_anchor_pieces"] = acc["pieces"]
        ceilings["fraction_within_15deg_in"] = {
            k: acc[k] / acc["pieces"] for k in ("top1", "top3", "top5", "any")}
    ck = Path(a.checkpoint)
    payload = {
        "command": "python benchmarks/assembly_pipeline.py " + " ".join(sys.argv[1:]),
        "checkpoint": str(ck), "checkpoint_sha256": hashlib.sha256(ck.read_bytes()).hexdigest(),
        "config": " + ".join(a.config or ["demo"]), "num_objects": n_obj, "normals": "data" if a.true_normals else
        "estimated (local PCA, oriented away from the piece centroid)",
        "methods": methods, "ceilings": ceilings,
        "wall_s": time.perf_counter() - t_all,
        "machine": {**env_info("cpu"), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
                    "note": "2-core machine shared with other helpers; timings are indicative"},
    }
    write_json_atomic(a.out, payload)
    for m, r in methods.items():
        print(f"{m:9s} abs PA {r['absolute']['part_acc']:.3f}  anchor PA "
              f"{r['anchor']['part_acc']:.3f}  RMSE(R) geo {r['anchor']['rmse_r_geo']:.1f}  "
              f"by parts {[v['part_acc'] for v in r['anchor_part_acc_by_num_parts'].values()]}"
              f"  ms {r['ms_per_object']}")
    print("ceilings", ceilings)


if __name__ == "__main__":
    main()
