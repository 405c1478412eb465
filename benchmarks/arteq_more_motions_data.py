"""ArtEq experiment data: the demo config with more training motions, the same test scans.

Does more in-distribution data help the net on unseen poses (``ood``)? Writes the data
folder of the demo config with ``--data.train_motions M`` (``M`` motions of the same seven
kinds, drawn by the data module itself: the demo's 14 motions come first, then new draws;
its training subjects), and copies every other split (``val``, ``in_dist``, ``ood``,
``partial``) from the demo data folder ``--src``: with more training motions the module's
generator would draw other test motions, and like-for-like comparisons need the same test
scans. Train on it with the matching overrides::

    python benchmarks/arteq_more_motions_data.py --train-motions 210 --dst runs/s8_data15x \\
        --src runs/arteq_bench/data/arteq_25f08b52f637f152
    python benchmarks/arteq.py --part nets --models equivariant --out runs/s8_15x \\
        --config demo --data.train_motions 210 --data.root runs/s8_data15x \\
        --trainer.max_epochs 1000 --trainer.max_time 00:00:22:00

Session of 2026-12-01: results in ``benchmarks/results/arteq_ood_experiments.json``
(``more_motions_*``) and ``docs/arteq_experiments.md`` ("Twist vectors, more training
motions, landmark geodesics").
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import arteq_data_folder, arteq_data_parser, torch_save_atomic  # noqa: E402


def main() -> None:
    ap = arteq_data_parser(__doc__)
    ap.add_argument("--train-motions", type=int, required=True,
                    help="training motions (the demo config: 14)")
    a = ap.parse_args()
    if a.train_motions < 1:
        sys.exit("--train-motions: expected a positive int")
    torch.set_num_threads(1)
    import yaml
    from geo3d.apps.arteq._data import ArtEqDataModule
    from geo3d.apps.arteq.cli import config_path

    from geo3d._atomic import atomic_path, atomic_write_text

    src = arteq_data_folder(a.src)
    cfg = yaml.safe_load(Path(config_path("demo")).read_text())["data"]
    cfg.update(root=a.dst, train_motions=a.train_motions)
    dm = ArtEqDataModule(**cfg)
    dst = dm.cache_dir()
    dst.mkdir(parents=True, exist_ok=True)
    if not (dst / "train.pt").is_file():
        torch_save_atomic(dm._generate(["train"])["train"], dst / "train.pt")
    for split in ("val", "in_dist", "ood", "partial"):
        with atomic_path(dst / f"{split}.pt") as tmp:
            shutil.copyfile(src / f"{split}.pt", tmp)
    atomic_write_text(dst / "config.json", json.dumps(dict(dm.hparams), indent=2, default=str))
    n = len(torch.load(dst / "train.pt", weights_only=True)["points"])
    print(f"{dst}: {n} training scans; val and test splits copied from {src}")


if __name__ == "__main__":
    main()
