"""ArtEq diagnostic: does a trained net use its parts as parts, and where does the error go?

For a checkpoint of ``geo3d arteq fit`` and the ``demo`` config's data (the evidence data of
``benchmarks/arteq.py``), on the first ``--scans`` scans of ``in_dist`` and ``ood``:

* ``pred``: the net as it is used (its own segmentation pools the parts);
* ``gtseg``: the same net, parts pooled with the ground-truth segmentation (if this is much
  better, segmentation is the bottleneck; if it is worse, the pose branch does not read
  parts as parts);
* ``zero_pose_v2v_cm``: the T-pose with the true betas and global orientation (the error of a
  net that learned no articulation).

V2V / MPJPE (24 SMPL joints) in cm, no alignment; decode with the checkpoint's
``icp_steps``. Prints JSON (and writes it with ``--out``). The README's ArtEq diagnostic
tables come from this script (session of 2026-11-30)::

    OMP_NUM_THREADS=1 python benchmarks/arteq_diagnostic.py CKPT --data-root runs/arteq_bench/data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json_atomic  # noqa: E402
from arteq import _datamodule, _gt, _metrics  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data-root", default="runs/arteq_bench/data",
                    help="the data folder of the demo config (generated on first use)")
    ap.add_argument("--scans", type=int, default=48)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from geo3d.apps.arteq._fit import decode
    from geo3d.apps.arteq._module import ArtEqModule
    from geo3d.apps.arteq.cli import config_path

    from geo3d._app import load_checkpoint
    from geo3d.eval import v2v_error

    dm, _ = _datamodule(config_path("demo"), Path(a.data_root).parent,
                        ["--data.root", a.data_root])
    st = load_checkpoint(a.checkpoint)
    module = ArtEqModule(**{k: v for k, v in st["hyper_parameters"].items()
                            if not k.startswith("_")})
    module.load_state_dict(st["state_dict"])
    net, body = module.net.eval(), module.body()
    icp = int(module.hparams.icp_steps)
    res: dict = {"checkpoint": a.checkpoint, "epoch": st.get("epoch"),
                 "global_step": st.get("global_step"), "icp_steps": icp}
    for cond in ("in_dist", "ood"):
        ds = dm.dataset(cond)
        items = [ds[i] for i in range(min(len(ds), a.scans))]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        n = len(items)
        with torch.no_grad():
            gt = _gt(body, batch)
            r = {"num_scans": n}
            for mode in ("pred", "gtseg"):
                labels = batch["labels"] if mode == "gtseg" else None
                out = net(batch["points"], part_labels=labels)
                fit = decode(out, body, batch["points"], icp_steps=icp)
                r[mode] = _metrics(fit, gt, batch["labels"])
            zero = body(betas=batch["betas"], global_orient=batch["global_orient"].unsqueeze(1),
                        body_pose=torch.eye(3).expand(n, 23, 3, 3), transl=batch["transl"],
                        pose2rot=False)
            r["zero_pose_v2v_cm"] = float(100 * v2v_error(zero.vertices.float(),
                                                          gt.vertices.float()).mean())
        res[cond] = r
    print(json.dumps(res, indent=1))
    if a.out:
        write_json_atomic(Path(a.out), res)


if __name__ == "__main__":
    main()
