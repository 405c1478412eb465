"""ArtEq experiment data: the demo training set plus region-mixed training poses.

Each new pose takes each of the five body regions of ``arteq_diagnostic.REGIONS`` (left arm,
right arm, left leg, right leg, spine + neck + head) from an independently drawn *training*
frame (identity root; the data module rotates training scans anyway), on a training
subject's shape. Only training poses are used: the question is whether new *combinations*
of seen limb poses help the net on unseen poses (``ood``), without showing it any new joint
angle. Copies the demo data folder (same cache key, so ``--data.root DST`` picks it up) and
appends ``--extra`` scans to ``train.pt``::

    python benchmarks/arteq_region_mix_data.py \\
        --src runs/arteq_bench/data/arteq_25f08b52f637f152 \\
        --dst runs/x14_mix/data --extra 630
    python benchmarks/arteq.py --part nets --models equivariant --out runs/x14_mix \\
        --trainer.max_epochs 200 --trainer.max_time 00:00:22:00 --data.root runs/x14_mix/data

Session of 2026-11-30 (night): results in ``benchmarks/results/arteq_ood_experiments.json``
(``region_mix_*``) and ``docs/arteq_experiments.md`` ("Region mixing and run-to-run spread").
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import arteq_data_folder, arteq_data_parser, torch_save_atomic  # noqa: E402
from arteq_diagnostic import REGIONS  # noqa: E402


def main() -> None:
    ap = arteq_data_parser(__doc__)
    ap.add_argument("--extra", type=int, default=630, help="region-mixed scans to add")
    ap.add_argument("--seed", type=int, default=123)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from geo3d.apps.arteq._data import generate_scans, load_body

    from geo3d._atomic import atomic_path
    from geo3d.rotations import matrix_to_axis_angle

    src = arteq_data_folder(a.src)
    cfg = json.loads((src / "config.json").read_text())
    dst = Path(a.dst) / src.name
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        with atomic_path(dst / f.name) as tmp:
            shutil.copyfile(f, tmp)
    tr = torch.load(src / "train.pt", weights_only=True)
    n0, M = len(tr["betas"]), a.extra
    g = torch.Generator().manual_seed(a.seed)
    bp = tr["body_pose"].double()  # (n0, 23, 3, 3): SMPL joints 1..23
    new = torch.eye(3, dtype=torch.float64).expand(M, 23, 3, 3).clone()
    for joints in REGIONS:
        pick = torch.randint(n0, (M,), generator=g)
        for j in joints:
            new[:, j - 1] = bp[pick, j - 1]
    aa = torch.cat([torch.zeros(M, 1, 3, dtype=torch.float64), matrix_to_axis_angle(new)], 1)
    frames = {"betas": tr["betas"].double()[torch.randint(n0, (M,), generator=g)],
              "pose": aa.reshape(M, 72), "transl": torch.zeros(M, 3, dtype=torch.float64)}
    body = load_body(cfg["body_model"], cfg["gender"], cfg["num_betas"], torch.float64)
    mix = generate_scans(body, frames, cfg["num_points"], cfg["noise_std"], g)
    out = {k: torch.cat([tr[k], mix[k].to(tr[k].dtype)]) for k in tr}
    torch_save_atomic(out, dst / "train.pt")
    print(f"{dst / 'train.pt'}: {n0} + {M} scans")


if __name__ == "__main__":
    main()
