"""ArtEq experiment data: the demo training scans plus poses that cover the joint-limit box.

Is the out-of-distribution gap a matter of pose coverage or of the architecture? Writes the
data folder of the demo config whose training split is the demo's 210 scans (the same
subjects and motions) plus ``--count`` scans of the same 20 training subjects in poses
drawn from

* ``extreme``: :func:`geo3d.body.extreme_poses`, the generator of the ``ood`` test set,
  with its own seed (new poses of the test distribution: an upper bound, not a protocol
  a paper could use), or
* ``box``: every non-root joint angle uniform within :data:`geo3d.body.JOINT_LIMITS`, the
  root a Haar-uniform rotation (broad coverage that knows the limits but not the test
  set's rule of putting every angle at one of them).

Every other split (``val``, ``in_dist``, ``ood``, ``partial``) is copied from the demo
data folder ``--src``, so test scans are the same as the evidence's. Train on it with the
demo config and ``--data.root DST``::

    python benchmarks/arteq_coverage_data.py --poses extreme --count 840 \\
        --dst runs/cov_extreme --src runs/arteq_bench/data
    python benchmarks/arteq.py --part nets --models equivariant --out runs/cov_extreme_net \\
        --config demo --data.root runs/cov_extreme \\
        --trainer.max_epochs 1000 --trainer.max_time 00:00:22:00

Results: ``coverage_*`` in ``benchmarks/results/arteq_ood_experiments.json`` and
``docs/arteq_experiments.md``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import arteq_data_folder, arteq_data_parser, torch_save_atomic  # noqa: E402

SEED = {"extreme": 20261201, "box": 20261202}  # unlike every seed of the data module


def box_poses(n: int, g: torch.Generator) -> torch.Tensor:
    """``(n, 72)`` axis-angle poses: non-root Euler angles uniform within
    :data:`~geo3d.body.JOINT_LIMITS`, the root Haar-uniform (normalised Gaussian
    quaternion)."""
    from geo3d.body import JOINT_LIMITS, euler_xyz_to_matrix
    from geo3d.rotations import matrix_to_axis_angle, quat_to_matrix

    lo, hi = JOINT_LIMITS[..., 0], JOINT_LIMITS[..., 1]
    ang = lo + (hi - lo) * torch.rand(n, 24, 3, generator=g, dtype=torch.float64)
    R = euler_xyz_to_matrix(ang)
    q = torch.randn(n, 4, generator=g, dtype=torch.float64)
    R[:, 0] = quat_to_matrix(q / q.norm(dim=-1, keepdim=True))
    return matrix_to_axis_angle(R).reshape(n, 72)


def extra_frames(kind: str, count: int, subjects: torch.Tensor) -> dict[str, torch.Tensor]:
    """``betas``, ``pose``, ``transl`` of ``count`` frames of ``kind`` poses; subjects
    cycle over the frames."""
    from geo3d.body import extreme_poses

    g = torch.Generator().manual_seed(SEED[kind])
    pose = extreme_poses(count, generator=g).poses if kind == "extreme" else box_poses(count, g)
    idx = torch.arange(count) % len(subjects)
    return {"betas": subjects[idx].double(), "pose": pose,
            "transl": torch.zeros(count, 3, dtype=torch.float64)}


def main() -> None:
    ap = arteq_data_parser(__doc__)
    ap.add_argument("--poses", choices=sorted(SEED), required=True)
    ap.add_argument("--count", type=int, required=True, help="extra training scans")
    a = ap.parse_args()
    if a.count < 1:
        sys.exit("--count: expected a positive int")
    torch.set_num_threads(1)
    from arteq import demo_datamodule
    from geo3d.apps.arteq._data import generate_scans, load_body

    from geo3d._atomic import atomic_path, atomic_write_text

    src = arteq_data_folder(a.src)
    if (Path(a.dst) / src.name).resolve() == src.resolve():
        # the folder key is the demo's: writing there would grow the source's train.pt
        sys.exit(f"--dst: {a.dst} holds the source folder {src}; pass another data root")
    dm = demo_datamodule(a.dst)  # built as the CLI builds it: the same cache key
    h = dm.hparams
    dst = dm.cache_dir()
    dst.mkdir(parents=True, exist_ok=True)
    base = torch.load(src / "train.pt", weights_only=True)
    subjects = torch.unique(base["betas"], dim=0)
    body = load_body(h.body_model, h.gender, h.num_betas, torch.float64)
    g = torch.Generator().manual_seed(SEED[a.poses] * 1009 + 1)  # point sampling and noise
    new = generate_scans(body, extra_frames(a.poses, a.count, subjects), h.num_points,
                         h.noise_std, g)
    train = {k: torch.cat([base[k], new[k].to(base[k].dtype)]) for k in base}
    torch_save_atomic(train, dst / "train.pt")
    for split in ("val", "in_dist", "ood", "partial"):
        with atomic_path(dst / f"{split}.pt") as tmp:
            shutil.copyfile(src / f"{split}.pt", tmp)
    meta = dict(dict(h), coverage={"poses": a.poses, "count": a.count, "seed": SEED[a.poses],
                                   "src": str(src)})
    atomic_write_text(dst / "config.json", json.dumps(meta, indent=2, default=str))
    print(f"{dst}: {len(train['points'])} training scans ({len(base['points'])} from {src} "
          f"+ {a.count} {a.poses}); val and test splits copied")


if __name__ == "__main__":
    main()
