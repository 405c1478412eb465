"""ArtEq and scan density: does ``fit_smpl`` need to subsample dense scans?

The network's neighbourhoods (kNN graphs, local shape descriptors over 8-64 neighbours)
are learned at the training scans' density (512 points in the demo config). A user's scan
may have many more points. This benchmark fits the same held-out poses and subjects
scanned at several densities (``--num-points``, generated on first use with the demo
config's settings otherwise), once with every point fed to the network
(``num_points=None``) and once subsampled to the checkpoint's training density
(``num_points="auto"``, :func:`geo3d.apps.arteq._fit.fit_smpl`'s default), and reports V2V
(cm, no alignment) and part accuracy (every input point) per condition::

    OMP_NUM_THREADS=1 python benchmarks/arteq_density.py CKPT --num-points 512,2048

Session of 2026-12-02, results in ``benchmarks/results/arteq_density.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, write_json_atomic  # noqa: E402
from arteq import _datamodule, _gt  # noqa: E402


def evaluate(ckpt: str, data: dict[str, torch.Tensor], body, num_points, scans: int) -> dict:
    """V2V (cm) and point part accuracy of ``fit_smpl`` on the first ``scans`` scans."""
    from geo3d.apps.arteq import fit_smpl

    from geo3d.eval import v2v_error

    d = {k: v[:scans] for k, v in data.items()}
    t0 = time.perf_counter()
    res = fit_smpl(d["points"], ckpt, num_points=num_points, batch_size=8)
    sec = (time.perf_counter() - t0) / len(d["points"])
    gt = _gt(body, {k: v.to(body.v_template.dtype) for k, v in d.items()})
    v2v = 100 * v2v_error(res.vertices.double(), gt.vertices.double()).mean()
    acc = (res.part_labels == d["labels"]).double().mean()
    return {"v2v_cm": round(float(v2v), 2), "part_acc": round(float(acc), 3),
            "sec_per_scan": round(sec, 3), "scans": len(d["points"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data-root", default="runs/arteq_bench/data")
    ap.add_argument("--num-points", default="512,2048", help="comma list of scan densities")
    ap.add_argument("--scans", type=int, default=48, help="scans per condition")
    ap.add_argument("--out", default=str(RESULTS_DIR / "arteq_density.json"))
    a = ap.parse_args()
    densities = [int(x) for x in a.num_points.split(",") if x]
    if not densities or min(densities) < 1 or a.scans < 1:
        ap.error("--num-points and --scans must be positive")
    torch.set_num_threads(1)
    from geo3d.apps.arteq._checkpoint import checkpoint_info
    from geo3d.apps.arteq._data import load_body
    from geo3d.apps.arteq.cli import config_path

    info = checkpoint_info(a.checkpoint)
    body = load_body(info.get("body_model", "anny"), info.get("gender", "neutral"),
                     int(info.get("num_betas", 10)), torch.float64)
    rows = {}
    for n in densities:
        dm = _datamodule(config_path("demo"), Path(a.data_root).parent,
                         ["--data.root", a.data_root, "--data.num_points", str(n)])[0]
        for cond in ("in_dist", "ood"):
            data = dm.split_data(cond)
            for mode, arg in (("all_points", None), ("subsampled", "auto")):
                r = evaluate(a.checkpoint, data, body, arg, a.scans)
                rows[f"{n}/{cond}/{mode}"] = r
                print(n, cond, mode, r, flush=True)
    out = {"meta": {"checkpoint": a.checkpoint, "trained_num_points": info.get("num_points"),
                    "command": "OMP_NUM_THREADS=1 python benchmarks/arteq_density.py "
                    + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
                    "units": "v2v_cm: cm, no alignment; part_acc: fraction of input points; "
                             "fit_smpl defaults (icp_steps 5, no refinement)"},
           "results": rows}
    write_json_atomic(a.out, out)
    print("->", a.out)


if __name__ == "__main__":
    main()
