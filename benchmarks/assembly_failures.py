"""Why does the matching pipeline get a part wrong? Group the failures of a trained
checkpoint on held-out objects by cause, with pictures.

For every held-out object (pieces randomly rotated, as in evaluation) the matching
pipeline (:func:`geo3d.apps.assembly._pipeline.assemble_from_outputs`, its defaults, one
fresh seed-0 generator per object) is run, the spanning tree is recomputed with the same
draws to know how every piece was placed, and each wrong piece (anchor protocol: part
chamfer >= 0.01) gets the first cause that applies:

* ``fallback``: no reliable match edge reached it; it kept the network's pose (wrong).
* ``false_matches``: placed through a match edge whose RANSAC inliers are mostly not true
  contacts (< 50% of inlier pairs within ``corr_radius`` in the assembled object).
* ``parent_wrong``: placed through a good edge from a piece that is itself wrong.
* ``pose_off``: placed through mostly true matches, but the pose is still off.
* ``pipeline_error``: the pipeline raised on this object (network poses used, as in the
  LightningModule's evaluation).

Fracture segmentation quality (precision/recall of ``frac_score > 0`` against the
generator's labels) is reported too. Output: ``<out>.json`` and up to ``--pictures``
PNG/PLY per cause under ``<out>/<cause>/``.

Usage::

    python benchmarks/assembly_failures.py CKPT --config demo --data-root runs/demo/data \\
        --out benchmarks/results/assembly_demo_failures
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--config", action="append", default=None,
                    help="packaged config name or YAML (default demo); repeat to layer "
                         "further YAML files on the first")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--pictures", type=int, default=3)
    p.add_argument("--max-objects", type=int, default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    from geo3d.apps.assembly import load_model
    from geo3d.apps.assembly._matching import global_assembly, pairwise_poses
    from geo3d.apps.assembly._pipeline import assemble_from_outputs
    from geo3d.apps.assembly._viz import save_pictures
    from geo3d.apps.assembly.cli import config_path, run_lightning_cli

    from geo3d.eval import align_to_anchor, anchor_parts, part_chamfer

    extra = ["--data.root", a.data_root] if a.data_root else []
    configs = [config_path(c) for c in (a.config or ["demo"])]  # layered, first = base
    cli = run_lightning_cli([*(x for c in configs for x in ("--config", c)), *extra,
                             "--trainer.logger", "false"], run=False)
    dm = cli.datamodule
    model = load_model(a.checkpoint).eval()
    radius = float(model.hparams.corr_radius)
    defaults = {k: v.default for k, v in
                inspect.signature(assemble_from_outputs).parameters.items()
                if v.kind == inspect.Parameter.KEYWORD_ONLY}
    causes: dict[str, list] = {"fallback": [], "false_matches": [], "parent_wrong": [],
                               "pose_off": [], "pipeline_error": []}
    tp = fp = fn = 0
    records = []
    n_parts = n_ok = 0
    for batch in dm.test_dataloader():
        if a.max_objects is not None and len(records) >= a.max_objects:
            break
        pts, valid = batch["points"], batch["valid"].bool()
        with torch.no_grad():
            out = model(pts, valid)
        if "fracture" in batch:
            pred = out["frac_score"] > 0
            lab = batch["fracture"] & valid[..., None]
            pred = pred & valid[..., None]
            tp += int((pred & lab).sum())
            fp += int((pred & ~lab).sum())
            fn += int((~pred & lab).sum())
        anchors = anchor_parts(pts, valid)
        for b in range(pts.shape[0]):
            sl = slice(b, b + 1)
            o = {k: v[sl] for k, v in out.items()}
            try:
                T = assemble_from_outputs(pts[sl], valid[sl], o, method="matching",
                                          generator=torch.Generator().manual_seed(0))[0]
                crashed = False
            except RuntimeError:  # as the LightningModule: network poses, counted
                T = assemble_from_outputs(pts[sl], valid[sl], o, method="network")[0]
                crashed = True
            vb = valid[b]
            pw = pairwise_poses(pts[b], o["desc"][0], torch.sigmoid(o["frac_score"][0]), vb,
                                method=defaults["match_method"],
                                max_points=defaults["max_points"],
                                score_min=defaults["score_min"],
                                min_points=defaults["min_points"],
                                rel_thresh=defaults["rel_thresh"],
                                iters=defaults["ransac_iters"],
                                generator=torch.Generator().manual_seed(0))
            a_idx = int(anchors[b])
            _, parent = global_assembly(pw, a_idx, None, valid=vb,
                                        min_score=defaults["min_score"], return_parents=True)
            rot, trans = align_to_anchor(T[None, :, :3, :3].float(), T[None, :, :3, 3].float(),
                                         batch["rot"][sl], batch["trans"][sl], anchors[sl])
            cd = part_chamfer(pts[sl], rot, trans, batch["rot"][sl], batch["trans"][sl])[0]
            ok = (cd < 0.01) & vb
            x = pts[b] @ batch["rot"][b].transpose(-1, -2) + batch["trans"][b][:, None]
            rec = {"name": str(batch["name"][b]), "parts": int(vb.sum()),
                   "correct": int(ok.sum()), "parent": parent.tolist(), "causes": {}}
            n_parts += int(vb.sum())
            n_ok += int(ok.sum())
            for j in range(pts.shape[1]):
                if not bool(vb[j]) or bool(ok[j]):
                    continue
                par = int(parent[j])
                if crashed:
                    cause = "pipeline_error"
                elif par == -2:
                    cause = "fallback"
                else:
                    i0, j0 = min(par, j), max(par, j)
                    ia, ib, _ = pw.matches.get((i0, j0), (torch.zeros(0, dtype=torch.long),) * 3)
                    true = ((x[i0, ia] - x[j0, ib]).norm(dim=-1) < radius).float()
                    frac_true = float(true.mean()) if len(ia) else 0.0
                    if frac_true < 0.5:
                        cause = "false_matches"
                    elif par >= 0 and not bool(ok[par]):
                        cause = "parent_wrong"
                    else:
                        cause = "pose_off"
                rec["causes"][str(j)] = cause
            records.append(rec)
            first = next(iter(rec["causes"].values()), None)
            if first is not None and len(causes[first]) < a.pictures:
                causes[first].append({
                    "name": rec["name"], "points": pts[b], "valid": vb,
                    "pred_rot": rot[0], "pred_trans": trans[0],
                    "gt_rot": batch["rot"][b], "gt_trans": batch["trans"][b]})
    counts: dict[str, int] = {k: 0 for k in causes}
    for r in records:
        for c in r["causes"].values():
            counts[c] += 1
    out_path = Path(a.out)
    for cause, items in causes.items():
        if items:
            save_pictures(items, out_path / cause)
    summary = {
        "checkpoint": a.checkpoint, "objects": len(records), "parts": n_parts,
        "parts_correct_anchor": n_ok, "wrong_parts_by_cause": counts,
        "fracture_segmentation": {
            "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "positives": tp + fn},
        "pipeline_defaults": {k: v for k, v in defaults.items()
                              if isinstance(v, (int, float, str))},
        "objects_detail": records,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "objects_detail"}, indent=1))


if __name__ == "__main__":
    main()
