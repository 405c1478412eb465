"""ArtEq diagnostic: does a trained net use its parts as parts, and where does the error go?

For a checkpoint of ``geo3d arteq fit`` and the ``demo`` config's data (the evidence data of
``benchmarks/arteq.py``), on the first ``--scans`` scans of ``in_dist`` and ``ood``:

* ``pred``: the net as it is used (its own segmentation pools the parts);
* ``gtseg``: the same net, parts pooled with the ground-truth segmentation (if this is much
  better, segmentation is the bottleneck; if it is worse, the pose branch does not read
  parts as parts);
* ``refine`` (with ``--refine STEPS``): ``pred`` refined by
  :func:`geo3d.apps.arteq._fit.refine_fit` (the fitting API's ``refine=True``);
* ``part_rot_err_deg`` (in ``pred`` and ``gtseg``): the mean geodesic angle between each
  part's predicted global rotation and the true one (parts 0-21 but the never-labelled
  feet; per part in ``part_rot_err_deg_per_part``): twist about a limb moves few vertices,
  so this shows readout errors that V2V hides;
* ``betas_only_v2v_cm`` (in ``pred`` and ``gtseg``): the true pose and translation with the
  net's betas: the error of the shape branch alone;
* ``zero_pose_v2v_cm``: the T-pose with the true betas and global orientation (the error of a
  net that learned no articulation);
* ``seg_errors`` (in ``pred``): where the mislabelled points go, as fractions of all
  points: ``mirror`` (the same part of the other side, e.g. left knee as right knee),
  ``neighbour`` (the true part's parent or a child in the 22-part tree), ``mirror_neighbour``
  (a neighbour's mirror image), ``distant`` (anything else); with the part accuracy they
  sum to 1. Neighbour errors are boundary errors, the most that label smoothing could
  fix; mirror and distant ones are not. ``distant_top``: the five most frequent
  (true part, predicted part) pairs among the distant errors, by joint name, with their
  fractions of all points. ``wrong_near`` / ``wrong_far``: the mislabelled points split
  by geometry instead, within / beyond 10 cm of the nearest point that truly belongs to
  the predicted part (a boundary error, or a region placed wrong as a whole);
* ``equivariance`` (with ``--equivariance SCANS``): the net in float64 on the first SCANS
  in_dist scans, each under 4 Haar-random rotations ``g`` and Gaussian translations: the
  geodesic angle between the part rotations predicted for ``g x + t`` and ``g`` times those
  for ``x`` (deg: mean, median, max over every part), the largest change of the betas, and
  the fraction of points whose predicted part changes. Exact nets give float64 rounding;
  ``rot_readout="chordal"`` is exact for the 60 icosahedral elements only, and this
  measures it in between;
* ``nearest_train_mpjpe_cm``: how far the condition's poses lie from the training poses: for
  each test pose, the smallest MPJPE (24 joints, root-relative, mean shape, no global
  rotation) to any training pose, averaged.

Besides ``in_dist`` and ``ood`` (every joint angle at or near a limit: ``extreme_poses``) it
scores ``ood_regions``, a milder out-of-distribution set made here, in the spirit of
range-of-motion captures: the in-distribution rest stance (arms down) with each of five body
regions (left arm, right arm, left leg, right leg, spine + neck + head) put at its joint
limits with probability 1/2 (at least one region; angles drawn as ``extreme_poses`` draws
them), a Haar-random root, the test subjects' shapes. It answers whether the ``ood`` gap is
only the severity of that set.

V2V / MPJPE (24 SMPL joints) in cm, no alignment; decode with the checkpoint's
``icp_steps``. Prints JSON (and writes it with ``--out``). The diagnostic tables of
``docs/arteq_experiments.md`` and the README's ArtEq "Why the gap remains" numbers come
from this script (sessions from 2026-11-30 on)::

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
from arteq import (  # noqa: E402
    _gt,
    _metrics,
    betas_only_v2v_cm,
    demo_datamodule,
    load_module,
)

#: SMPL joints of the five regions of ``ood_regions``: left arm, right arm, left leg,
#: right leg, spine + neck + head.
REGIONS = ((13, 16, 18, 20, 22), (14, 17, 19, 21, 23), (1, 4, 7, 10), (2, 5, 8, 11),
           (3, 6, 9, 12, 15))


def region_limit_poses(num: int, g: torch.Generator, p: float = 0.5, margin: float = 0.1,
                       at_limit: float = 0.5) -> torch.Tensor:
    """``(num, 72)`` axis-angle poses of the ``ood_regions`` set (module docs). The limit
    angles are drawn as in :func:`geo3d.body.extreme_poses` but inline: calling it would also
    draw its root rotation and shift the random stream, changing the recorded set."""
    from geo3d.body import JOINT_LIMITS, euler_xyz_to_matrix
    from geo3d.rotations import matrix_to_axis_angle, random_rotation_matrix

    lo, hi = JOINT_LIMITS[..., 0], JOINT_LIMITS[..., 1]
    f64 = torch.float64
    upper = torch.rand(num, 24, 3, generator=g, dtype=f64) < 0.5
    depth = margin * (hi - lo) * torch.rand(num, 24, 3, generator=g, dtype=f64)
    depth = torch.where(torch.rand(num, 24, 3, generator=g, dtype=f64) < at_limit,
                        torch.zeros_like(depth), depth)
    limit = torch.where(upper, hi - depth, lo + depth)
    pick = torch.rand(num, len(REGIONS), generator=g, dtype=f64) < p
    none = ~pick.any(1)
    pick[none, torch.randint(len(REGIONS), (int(none.sum()),), generator=g)] = True
    ang = torch.zeros(num, 24, 3, dtype=f64)
    ang[:, 16, 2], ang[:, 17, 2] = -1.3, 1.3  # the motions' rest stance: arms down
    for r, joints in enumerate(REGIONS):
        for j in joints:
            ang[:, j] = torch.where(pick[:, r, None], limit[:, j], ang[:, j])
    R = euler_xyz_to_matrix(ang)
    R[:, 0] = random_rotation_matrix(num, generator=g, dtype=f64)
    return matrix_to_axis_angle(R).reshape(num, 72)


def _region_scans(dm, num: int) -> dict[str, torch.Tensor]:
    from geo3d.apps.arteq._data import generate_scans, load_body

    h = dm.hparams
    g = torch.Generator().manual_seed(int(h.seed) * 1009 + 17)
    subjects = torch.unique(dm.split_data("in_dist")["betas"].double(), dim=0)
    frames = {"betas": subjects[torch.arange(num) % len(subjects)],
              "pose": region_limit_poses(num, g),
              "transl": torch.zeros(num, 3, dtype=torch.float64)}
    body = load_body(h.body_model, h.gender, h.num_betas, torch.float64)
    return generate_scans(body, frames, h.num_points, h.noise_std, g)


def _rel_joints(body, data: dict[str, torch.Tensor]) -> torch.Tensor:
    """Root-relative joints ``(M, 24, 3)`` of the poses in ``data`` on the mean shape, root
    rotation removed."""
    M = len(data["body_pose"])
    out = body(betas=torch.zeros(M, body.num_betas), global_orient=torch.eye(3).expand(M, 1, 3, 3),
               body_pose=data["body_pose"].float(), transl=torch.zeros(M, 3), pose2rot=False)
    j = out.joints[:, :24]
    return j - j[:, :1]


def _part_rot_errors(part_rot: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict:
    """Geodesic angle (degrees) between each predicted part rotation ``(M, 22, 3, 3)`` and the
    true global rotation of that SMPL joint: the mean over the scans per part, and the mean
    over the parts that are ever labelled (not the feet 10, 11)."""
    from geo3d.body import SMPL_PARENTS, local_to_global
    from geo3d.rotations import geodesic_distance

    loc = torch.cat([batch["global_orient"][:, None], batch["body_pose"]], 1).double()
    G = local_to_global(loc, SMPL_PARENTS)[:, :22]
    ang = geodesic_distance(part_rot.double(), G).rad2deg().mean(0)  # (22,)
    keep = [k for k in range(22) if k not in (10, 11)]
    return {"part_rot_err_deg": float(ang[keep].mean()),
            "part_rot_err_deg_per_part": [round(float(v), 2) for v in ang]}


def _part_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """The 22 labels' mirror map (the left/right ``PAIRS`` of ``arteq_seg_transfer``) and
    the (22, 22) adjacency of the kinematic tree (parent or child; hands merged into the
    wrists)."""
    from arteq_seg_transfer import PAIRS
    from geo3d.apps.arteq._model import ARTEQ_PARENTS

    P = len(ARTEQ_PARENTS)
    mirror = torch.arange(P)
    for a, b in PAIRS:
        mirror[a], mirror[b] = b, a
    adj = torch.zeros(P, P, dtype=torch.bool)
    for j, p in enumerate(ARTEQ_PARENTS):
        if p >= 0:
            adj[j, p] = adj[p, j] = True
    return mirror, adj


def seg_error_kinds(pred: torch.Tensor, labels: torch.Tensor,
                    points: torch.Tensor | None = None, near_m: float = 0.1) -> dict:
    """Fractions of all points (``pred``, ``labels``: (B, N) part ids 0-21) that are
    correct or mislabelled as ``mirror`` / ``neighbour`` / ``mirror_neighbour`` /
    ``distant`` parts, and the five most frequent distant pairs (see the module docs,
    ``seg_errors``). With ``points`` (B, N, 3) in metres, also ``wrong_near`` /
    ``wrong_far``: mislabelled points within / beyond ``near_m`` of the nearest point of
    the same scan that truly belongs to the predicted part (beyond if the scan has none)."""
    from geo3d.body._kinematics import SMPL_JOINT_NAMES

    mirror, adj = _part_tables()
    P = len(mirror)
    p, t = pred.long(), labels.long()
    wrong = p != t
    is_mirror = wrong & (p == mirror[t])
    is_nb = wrong & ~is_mirror & adj[t, p]
    is_mnb = wrong & ~is_mirror & ~is_nb & adj[t, mirror[p]]
    distant = wrong & ~is_mirror & ~is_nb & ~is_mnb
    n = max(wrong.numel(), 1)
    pairs = torch.bincount(t[distant] * P + p[distant], minlength=P * P)
    top = [(f"{SMPL_JOINT_NAMES[int(k) // P]} -> {SMPL_JOINT_NAMES[int(k) % P]}",
            float(pairs[k]) / n) for k in pairs.argsort(descending=True, stable=True)[:5]
           if pairs[k] > 0]
    res = {"correct": float((~wrong).sum()) / n, "mirror": float(is_mirror.sum()) / n,
           "neighbour": float(is_nb.sum()) / n, "mirror_neighbour": float(is_mnb.sum()) / n,
           "distant": float(distant.sum()) / n, "distant_top": top}
    if points is not None:
        d = torch.cdist(points.double(), points.double())  # (B, N, N)
        truly = t[:, None, :] == p[:, :, None]  # [b, i, j]: point j truly has i's prediction
        dmin = d.masked_fill(~truly, float("inf")).amin(-1)
        res["wrong_near"] = float((wrong & (dmin <= near_m)).sum()) / n
        res["wrong_far"] = float((wrong & (dmin > near_m)).sum()) / n
        res["near_m"] = near_m
    return res


def equivariance_error(net: torch.nn.Module, points: torch.Tensor, rotations: int = 4,
                       seed: int = 0) -> dict:
    """Measured SE(3) equivariance error of ``net`` (eval mode, run in float64 on a copy)
    on ``points (S, N, 3)``: ``rotations`` Haar-random ``g`` and standard-normal ``t`` (m)
    per scan; see the module docs (``equivariance``).

    Raises:
        ValueError: ``points`` not a tensor of shape (S, N, 3) with S >= 1, or
            ``rotations`` not an int >= 1.
    """
    import copy

    if not (torch.is_tensor(points) and points.dim() == 3 and points.shape[0] >= 1
            and points.shape[-1] == 3):
        got = tuple(points.shape) if torch.is_tensor(points) else type(points).__name__
        raise ValueError(f"points: expected a tensor of shape (S, N, 3) with S >= 1, got {got}")
    if isinstance(rotations, bool) or not isinstance(rotations, int) or rotations < 1:
        raise ValueError(f"rotations: expected an int >= 1, got {rotations!r}")

    from geo3d.rotations import geodesic_distance, random_rotation_matrix

    net = copy.deepcopy(net).double().eval()
    gen = torch.Generator().manual_seed(seed)
    ang, dbeta, flips = [], [], []
    with torch.no_grad():
        for x in points.double():
            o = net(x[None])
            for _ in range(rotations):
                g = random_rotation_matrix(generator=gen, dtype=torch.float64)
                t = torch.randn(3, generator=gen, dtype=torch.float64)
                o2 = net((x @ g.T + t)[None])
                ang.append(geodesic_distance(o2["part_rot"], g @ o["part_rot"]).flatten())
                dbeta.append((o2["betas"] - o["betas"]).abs().max())
                flips.append((o2["part_logits"].argmax(-1) != o["part_logits"].argmax(-1))
                             .double().mean())
    a = torch.cat(ang).rad2deg()
    return {"num_scans": len(points), "rotations_per_scan": rotations,
            "part_rot_err_deg_mean": float(a.mean()),
            "part_rot_err_deg_median": float(a.median()),
            "part_rot_err_deg_max": float(a.max()),
            "betas_max_abs_diff": float(torch.stack(dbeta).max()),
            "part_label_flip_frac": float(torch.stack(flips).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data-root", default="runs/arteq_bench/data",
                    help="the data folder of the demo config (generated on first use)")
    ap.add_argument("--scans", type=int, default=48)
    ap.add_argument("--out", default=None)
    ap.add_argument("--refine", type=int, default=0, metavar="STEPS",
                    help="also score `refine`: the net's fit refined by refine_fit (STEPS "
                         "Adam steps, the fitting API's refine=True; 60 there)")
    ap.add_argument("--equivariance", type=int, default=0, metavar="SCANS",
                    help="also measure the equivariance error on SCANS in_dist scans "
                         "(4 Haar rotations each, float64; see `equivariance` above)")
    a = ap.parse_args()
    if a.equivariance < 0:
        ap.error(f"--equivariance: expected a number of scans >= 0, got {a.equivariance}")
    torch.set_num_threads(1)
    from geo3d.apps.arteq._fit import decode, refine_fit

    from geo3d.eval import v2v_error

    dm = demo_datamodule(a.data_root)
    module, st = load_module(a.checkpoint)
    net, body = module.net.eval(), module.body()
    icp = int(module.hparams.icp_steps)
    res: dict = {"checkpoint": a.checkpoint, "epoch": st.get("epoch"),
                 "global_step": st.get("global_step"), "icp_steps": icp}
    with torch.no_grad():
        train_joints = _rel_joints(body, dm.split_data("train"))
    sets = {c: dm.split_data(c) for c in ("in_dist", "ood")}
    sets["ood_regions"] = _region_scans(dm, a.scans)
    for cond, data in sets.items():
        n = min(len(data["points"]), a.scans)
        batch = {k: v[:n] for k, v in data.items()}
        with torch.no_grad():
            gt = _gt(body, batch)
            q = _rel_joints(body, batch)
            near = torch.stack([(q[i:i + 1] - train_joints).norm(dim=-1).mean(-1).min()
                                for i in range(n)])
            r = {"num_scans": n, "nearest_train_mpjpe_cm": float(100 * near.mean())}
            for mode in ("pred", "gtseg"):
                labels = batch["labels"] if mode == "gtseg" else None
                out = net(batch["points"], part_labels=labels)
                fit = decode(out, body, batch["points"], icp_steps=icp)
                r[mode] = _metrics(fit, gt, batch["labels"])
                r[mode].update(_part_rot_errors(out["part_rot"], batch))
                r[mode]["betas_only_v2v_cm"] = betas_only_v2v_cm(body, fit.betas, batch, gt)
                if mode == "pred":
                    r[mode]["seg_errors"] = seg_error_kinds(fit.part_labels, batch["labels"],
                                                           batch["points"])
                if mode == "pred" and a.refine > 0:
                    with torch.enable_grad():
                        ref = refine_fit(fit, batch["points"], body, steps=a.refine)
                    r["refine"] = _metrics(ref, gt, batch["labels"])
            zero = body(betas=batch["betas"], global_orient=batch["global_orient"].unsqueeze(1),
                        body_pose=torch.eye(3).expand(n, 23, 3, 3), transl=batch["transl"],
                        pose2rot=False)
            r["zero_pose_v2v_cm"] = float(100 * v2v_error(zero.vertices.float(),
                                                          gt.vertices.float()).mean())
        res[cond] = r
    if a.equivariance > 0:
        res["equivariance"] = equivariance_error(net, sets["in_dist"]["points"][:a.equivariance])
    print(json.dumps(res, indent=1))
    if a.out:
        write_json_atomic(Path(a.out), res)


if __name__ == "__main__":
    main()
