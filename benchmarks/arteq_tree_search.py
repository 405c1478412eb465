"""ArtEq test-time kinematic-tree search: can a search over the body's tree replace the
segmentation that does not transfer to unseen poses?

The evidence net's ``ood`` error is bound by its segmentation (``arteq_diagnostic.py``:
pooling with the true parts gives ~12 cm instead of ~38 cm), and no segmentation route
measured so far transfers. This script tries a search that needs no segmentation: starting
from the net's estimate (its betas are kept), it fits the scan by

1. **torso hypotheses**: the net's root plus ``--hypotheses`` roots from ``--rotations``
   super-Fibonacci rotations (Alexa, "Super-Fibonacci Spirals", CVPR 2022,
   arXiv:2205.10807), each aligned by rigid ICP of the pelvis and spine vertices to the scan
   (one-way, vertices to points) and ranked by that distance, at least 40 degrees apart;
2. **coordinate descent over the tree**, per hypothesis, ``--sweeps`` times: the spine
   (spine1-3 bent together), neck + head, each arm (shoulder x elbow) and each leg (hip x
   knee) in turn take the best of a grid of local rotations spanning
   :data:`geo3d.body.JOINT_LIMITS` (7 x 7 x 7 Euler angles for shoulders and hips, 6 for
   elbows and knees, 5 x 5 x 5 for the coupled spine and neck), the current value included,
   so the descent's score (the objective below, with its grid and coverage shortcuts) never
   rises; a rigid two-way ICP of the whole body follows each sweep (it need not lower the
   exact objective);
3. the hypothesis with the lowest objective wins.

The objective is the truncated (10 cm) two-way Chamfer distance between the scan and 1500
fixed vertices of the body posed as rigid parts (each vertex follows its largest skinning
weight); vertex-to-scan distances come from a voxel grid of nearest scan points (2 cm),
scan-to-vertex distances are recomputed only for the points farther than 2 cm from the
body's fixed parts. Note that the grids span the same limit box from which the ``ood``
poses are drawn, which favours the search on that set.

Per condition it reports V2V (cm) of the net, of the search and, with ``--refine STEPS``,
of :func:`geo3d.apps.arteq._fit.refine_fit` after the search; ``objective_found`` against
``objective_true_pose`` (the true pose with the net's betas) and ``objective_true`` (true
pose and betas) per scan: a found objective above the true pose's is a search failure, one
below it means the objective (or the betas) prefers a wrong pose. ``--oracle-torso`` starts
from the true root and spine (one hypothesis): the limbs' share of the error.

Session of 2026-12-01, results in ``benchmarks/results/arteq_ood_experiments.json``
(``tree_search_*``)::

    OMP_NUM_THREADS=1 python benchmarks/arteq_tree_search.py CKPT --condition ood --scans 12
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json_atomic  # noqa: E402
from arteq import _gt, _metrics, demo_datamodule, load_module  # noqa: E402

TORSO = (0, 3, 6, 9)
F64 = torch.float64


def _parents() -> torch.Tensor:
    from geo3d.body import SMPL_PARENTS

    return torch.tensor([0, *SMPL_PARENTS[1:]])


def descendants(j: int) -> list[int]:
    """SMPL joints in the subtree of ``j`` (``j`` included)."""
    par = _parents()
    out = []
    for k in range(24):
        a = k
        while a != j and a != 0:
            a = int(par[a])
        if a == j:
            out.append(k)
    return out


def super_fibonacci(n: int) -> torch.Tensor:
    """``(n, 3, 3)`` near-uniform rotations (super-Fibonacci spiral, arXiv:2205.10807)."""
    from geo3d.rotations import quat_to_matrix

    s = torch.arange(n, dtype=F64) + 0.5
    phi, psi = math.sqrt(2.0), 1.533751168755204288118041
    r, rr = torch.sqrt(s / n), torch.sqrt(1 - s / n)
    a, b = 2 * math.pi * s / phi, 2 * math.pi * s / psi
    q = torch.stack([r * torch.sin(a), r * torch.cos(a), rr * torch.sin(b), rr * torch.cos(b)],
                    -1)
    return quat_to_matrix(q)


def sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distances ``(C, M, N)`` between ``a`` and ``b``, ``(C | 1, M | N, 3)``."""
    C = max(a.shape[0], b.shape[0])
    a, b = a.float().expand(C, -1, -1), b.float().expand(C, -1, -1)
    d = (a * a).sum(-1)[..., None] + (b * b).sum(-1)[:, None] - 2 * torch.bmm(a, b.transpose(1, 2))
    return d.clamp(min=0).double()


class ScanField:
    """The nearest scan point of every cell of a voxel grid (``h`` metres) around the scan:
    approximate nearest-point lookups in O(1)."""

    def __init__(self, scan: torch.Tensor, h: float = 0.02, margin: float = 0.3) -> None:
        from scipy.spatial import cKDTree

        self.scan, self.h = scan, h
        self.lo = scan.min(0).values - margin
        self.n = ((scan.max(0).values + margin - self.lo) / h).ceil().long() + 1
        axes = [self.lo[k] + h * torch.arange(int(self.n[k]), dtype=F64) for k in range(3)]
        _, idx = cKDTree(scan.numpy()).query(torch.cartesian_prod(*axes).numpy())
        self.idx = torch.from_numpy(idx).long()
        self.stride = torch.tensor([int(self.n[1] * self.n[2]), int(self.n[2]), 1])

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = ((x - self.lo) / self.h).round().long()
        inside = ((c >= 0) & (c < self.n)).all(-1)
        c = torch.minimum(c.clamp(min=0), self.n - 1)
        return self.idx[(c * self.stride).sum(-1)], inside

    def d2(self, x: torch.Tensor, tau2: float) -> torch.Tensor:
        i, inside = self.nearest(x)
        d = ((x - self.scan[i]) ** 2).sum(-1).clamp(max=tau2)
        return torch.where(inside, d, torch.full_like(d, tau2))


class Rig:
    """The body with ``betas`` as 24 rigid parts: ``M`` fixed vertices, each moving with its
    largest skinning weight's joint. Root convention: pelvis at ``t + R0 J0``."""

    def __init__(self, body, betas: torch.Tensor, m: int = 1500, seed: int = 0) -> None:
        dt = body.v_template.dtype
        eye = torch.eye(3, dtype=dt)
        with torch.no_grad():
            o = body(betas=betas[None].to(dt), global_orient=eye[None, None],
                     body_pose=eye.expand(1, 23, 3, 3), transl=torch.zeros(1, 3, dtype=dt),
                     pose2rot=False)
        v = o.vertices[0].double()
        self.J = o.joints[0, :24].double()
        idx = torch.randperm(len(v), generator=torch.Generator().manual_seed(seed))[:m]
        self.part = body.lbs_weights[idx].argmax(-1)
        self.vloc = v[idx] - self.J[self.part]
        self.par = _parents()
        self.bone = self.J - self.J[self.par]

    def fk(self, L: torch.Tensor, R0: torch.Tensor, t: torch.Tensor):
        """Locals ``L (C, 24, 3, 3)`` (``L[:, 0]`` unused), root ``R0 (C, 3, 3)``, ``t (C, 3)``
        -> global rotations ``(C, 24, 3, 3)`` and joint positions ``(C, 24, 3)``."""
        G, P = [R0], [t + R0 @ self.J[0]]
        for k in range(1, 24):
            p = int(self.par[k])
            G.append(G[p] @ L[:, k])
            P.append(P[p] + G[p] @ self.bone[k])
        return torch.stack(G, 1), torch.stack(P, 1)

    def verts(self, G, P, mask=None):
        part, vl = (self.part, self.vloc) if mask is None else (self.part[mask], self.vloc[mask])
        return P[:, part] + (G[:, part] @ vl[..., None])[..., 0]


def _euler_grid(j: int, n: tuple[int, int, int]) -> torch.Tensor:
    from geo3d.body import JOINT_LIMITS, euler_xyz_to_matrix

    lo, hi = JOINT_LIMITS[j, :, 0], JOINT_LIMITS[j, :, 1]
    axes = [torch.linspace(float(lo[k]), float(hi[k]), n[k], dtype=F64) if n[k] > 1
            else ((lo[k] + hi[k]) / 2)[None] for k in range(3)]
    return euler_xyz_to_matrix(torch.cartesian_prod(*axes).reshape(-1, 3))


def _coupled_grid(joints: tuple[int, ...], n: int) -> torch.Tensor:
    """Joints bent together: the same fractions of each joint's limit range."""
    from geo3d.body import JOINT_LIMITS, euler_xyz_to_matrix

    f = torch.linspace(0, 1, n, dtype=F64)
    frac = torch.cartesian_prod(f, f, f)
    out = [euler_xyz_to_matrix(JOINT_LIMITS[j, :, 0] + frac * (JOINT_LIMITS[j, :, 1]
                                                                  - JOINT_LIMITS[j, :, 0]))
           for j in joints]
    return torch.stack(out, 1)


def chain_specs(g: int = 7, gk: int = 6, gs: int = 5) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    """``(joints, candidate locals (C, len(joints), 3, 3))`` per chain, in search order."""
    specs = [((3, 6, 9), _coupled_grid((3, 6, 9), gs)), ((12, 15), _coupled_grid((12, 15), gs))]
    for root, mid, nmid in ((16, 18, (1, gk, 1)), (17, 19, (1, gk, 1)), (1, 4, (gk, 1, 1)),
                            (2, 5, (gk, 1, 1))):
        a, b = _euler_grid(root, (g, g, g)), _euler_grid(mid, nmid)
        cand = torch.stack([a.repeat_interleave(len(b), 0), b.repeat(len(a), 1, 1)], 1)
        specs.append(((root, mid), cand))
    return specs


def objective(rig: Rig, L, R0, t, scan, tau2: float) -> torch.Tensor:
    """Truncated two-way Chamfer (m^2) of the rigid-part body, exact distances: ``(C,)``."""
    G, P = rig.fk(L, R0, t)
    d = sqdist(rig.verts(G, P), scan[None])
    return d.min(2).values.clamp(max=tau2).mean(1) + d.min(1).values.clamp(max=tau2).mean(1)


def descend(rig: Rig, L, R0, t, scan, field: ScanField, joints, cand, tau2: float,
            cover2: float = 0.02**2, chunk: int = 512) -> torch.Tensor:
    """The locals ``L`` with ``joints`` set to the best of ``cand`` and their current value."""
    cand = torch.cat([torch.stack([L[j] for j in joints])[None], cand], 0)
    moving = torch.isin(rig.part, torch.tensor(descendants(joints[0])))
    G, P = rig.fk(L[None], R0[None], t[None])
    vf = rig.verts(G, P, ~moving)[0]
    m2s_f = field.d2(vf, tau2).sum()
    s2m_f = sqdist(scan[None], vf[None])[0].min(1).values
    far = s2m_f > cover2
    best, best_sc = L, None
    for s in range(0, len(cand), chunk):
        c = cand[s:s + chunk]
        Lc = L[None].repeat(len(c), 1, 1, 1)
        for i, j in enumerate(joints):
            Lc[:, j] = c[:, i]
        Gc, Pc = rig.fk(Lc, R0[None].expand(len(c), 3, 3), t[None].expand(len(c), 3))
        va = rig.verts(Gc, Pc, moving)
        s2m = s2m_f.clamp(max=tau2).expand(len(c), -1).clone()
        if far.any():
            s2m[:, far] = torch.minimum(s2m_f[far], sqdist(scan[far][None], va).min(2).values
                                        ).clamp(max=tau2)
        sc = (m2s_f + field.d2(va, tau2).sum(1)) / len(rig.part) + s2m.mean(1)
        i = int(sc.argmin())
        if best_sc is None or sc[i] < best_sc:
            best_sc, best = sc[i], Lc[i]
    return best


def _kabsch_weighted(src, dst, w):
    """:func:`geo3d.rotations.kabsch` (the motion src -> dst), the identity where the total
    weight is zero (no pair within reach)."""
    from geo3d.rotations import kabsch

    some = w.sum(-1) > 0
    w = torch.where(some[..., None], w, torch.ones_like(w))
    dR, dt = kabsch(src, dst, w)
    eye = torch.eye(3, dtype=dR.dtype, device=dR.device)
    return (torch.where(some[..., None, None], dR, eye),
            torch.where(some[..., None], dt, torch.zeros_like(dt)))


def rigid_icp_body(rig: Rig, L, R0, t, scan, iters: int = 5, tau2: float = 0.01):
    """Two-way rigid ICP of the whole posed body (pairs within ``sqrt(tau2)``)."""
    for _ in range(iters):
        G, P = rig.fk(L[None], R0[None], t[None])
        v = rig.verts(G, P)[0]
        d = sqdist(v[None], scan[None])[0]
        m1, i1 = d.min(1)
        m2, i2 = d.min(0)
        src, dst = torch.cat([v, v[i2]]), torch.cat([scan[i1], scan])
        dR, dt = _kabsch_weighted(src, dst, torch.cat([m1 < tau2, m2 < tau2]).double())
        R0, t = dR @ R0, dR @ t + dt
    return R0, t


def torso_hypotheses(rig: Rig, L, R0net, scan, field: ScanField, n: int, k: int,
                     iters: int = 6, tau2: float = 0.01, min_sep_deg: float = 40.0):
    """``k`` roots ``(R0, t)``: the best of the net's and ``n`` super-Fibonacci rotations after
    one-way rigid ICP of the pelvis and spine vertices, pairwise ``min_sep_deg`` apart."""
    from geo3d.rotations import geodesic_distance

    Rs = torch.cat([R0net[None], super_fibonacci(n)], 0)
    C = len(Rs)
    torso = torch.isin(rig.part, torch.tensor(TORSO))
    Lc = L[None].expand(C, 24, 3, 3)
    zero = torch.zeros(C, 3, dtype=F64)
    G, P = rig.fk(Lc, Rs, zero)
    v = rig.verts(G, P, torso)
    t = scan.mean(0) - v.mean(1)
    for _ in range(iters):
        vt = v + t[:, None]
        i1, inside = field.nearest(vt)
        d2 = ((vt - scan[i1]) ** 2).sum(-1)
        dR, dt = _kabsch_weighted(vt, scan[i1], ((d2 < 4 * tau2) & inside).double())
        Rs, t = dR @ Rs, (dR @ t[..., None])[..., 0] + dt
        G, P = rig.fk(Lc, Rs, zero)
        v = rig.verts(G, P, torso)
    score = field.d2(v + t[:, None], tau2).mean(1)
    keep: list[int] = []
    for i in score.argsort().tolist():
        if all(float(geodesic_distance(Rs[i], Rs[j]).rad2deg()) > min_sep_deg for j in keep):
            keep.append(i)
        if len(keep) == k:
            break
    return [(Rs[i], t[i]) for i in keep]


def tree_search(rig: Rig, L, R0, t, scan, *, hypotheses: int = 2, rotations: int = 1500,
                sweeps: int = 2, tau2: float = 0.01, oracle=None):
    """Search from the net's locals ``L (24, 3, 3)`` and root ``(R0, t)`` (module docs);
    ``oracle = (L_true, R0_true, t_true)`` starts from the true root and spine instead.
    Returns ``(objective, L, R0, t)`` of the winner."""
    field = ScanField(scan)
    specs = chain_specs()
    if oracle is not None:
        L = L.clone()
        for j in (3, 6, 9):
            L[j] = oracle[0][j]
        starts = [(oracle[1], oracle[2])]
    else:
        starts = [(R0, t), *torso_hypotheses(rig, L, R0, scan, field, rotations, hypotheses,
                                             tau2=tau2)]
    best = None
    for R, tt in starts:
        Lh = L.clone()
        R, tt = rigid_icp_body(rig, Lh, R, tt, scan, tau2=tau2)
        for _ in range(sweeps):
            for joints, cand in specs:
                Lh = descend(rig, Lh, R, tt, scan, field, joints, cand, tau2)
            R, tt = rigid_icp_body(rig, Lh, R, tt, scan, tau2=tau2)
        sc = float(objective(rig, Lh[None], R[None], tt[None], scan, tau2))
        if best is None or sc < best[0]:
            best = (sc, Lh, R, tt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data-root", default="runs/arteq_bench/data")
    ap.add_argument("--condition", default="ood", choices=("in_dist", "ood"))
    ap.add_argument("--scans", type=int, default=12)
    ap.add_argument("--hypotheses", type=int, default=2)
    ap.add_argument("--rotations", type=int, default=1500)
    ap.add_argument("--sweeps", type=int, default=2)
    ap.add_argument("--refine", type=int, default=0, metavar="STEPS")
    ap.add_argument("--oracle-torso", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from geo3d.apps.arteq._fit import FitResult, decode, refine_fit

    from geo3d.eval import v2v_error

    dm = demo_datamodule(a.data_root)
    module, _ = load_module(a.checkpoint)
    net, body = module.net.eval(), module.body()
    data = dm.split_data(a.condition)
    n = min(a.scans, len(data["points"]))
    batch = {k: v[:n] for k, v in data.items()}
    with torch.no_grad():
        gt = _gt(body, batch)
        fit = decode(net(batch["points"]), body, batch["points"],
                     icp_steps=int(module.hparams.icp_steps))
    eye = torch.eye(3, dtype=F64)
    found, rows = [], []
    t0 = time.perf_counter()
    for i in range(n):
        rig = Rig(body, fit.betas[i].double())
        j0 = rig.J[0]
        L = torch.cat([eye[None], fit.body_pose[i].double()])
        R0 = fit.global_orient[i].double()
        t = fit.transl[i].double() + j0 - R0 @ j0
        Lt = torch.cat([eye[None], batch["body_pose"][i].double()])
        Rt = batch["global_orient"][i].double()
        tt = batch["transl"][i].double() + j0 - Rt @ j0
        scan = batch["points"][i].double()
        sc, L, R0, t = tree_search(rig, L, R0, t, scan, hypotheses=a.hypotheses,
                                   rotations=a.rotations, sweeps=a.sweeps,
                                   oracle=(Lt, Rt, tt) if a.oracle_torso else None)
        found.append((R0, L[1:], t - j0 + R0 @ j0))
        rig_t = Rig(body, batch["betas"][i].double())
        jt = rig_t.J[0]
        rows.append({
            "objective_found": sc,
            "objective_true_pose": float(objective(rig, Lt[None], Rt[None], tt[None], scan,
                                                   0.01)),
            "objective_true": float(objective(
                rig_t, Lt[None], Rt[None],
                (batch["transl"][i].double() + jt - Rt @ jt)[None], scan, 0.01)),
        })
        print(f"scan {i}: {rows[-1]}", flush=True)
    secs = (time.perf_counter() - t0) / n
    dt = fit.betas.dtype
    go = torch.stack([f[0] for f in found]).to(dt)
    bp = torch.stack([f[1] for f in found]).to(dt)
    tr = torch.stack([f[2] for f in found]).to(dt)
    with torch.no_grad():
        o = body(betas=fit.betas, global_orient=go[:, None], body_pose=bp, transl=tr,
                 pose2rot=False)
    sfit = FitResult(fit.betas, go, bp, tr, o.vertices, o.joints, None, None)
    res = {"checkpoint": a.checkpoint, "condition": a.condition, "num_scans": n,
           "args": {k: v for k, v in vars(a).items() if k not in ("checkpoint", "out")},
           "net_v2v_cm": _metrics(fit, gt, batch["labels"])["v2v_cm"],
           "search_v2v_cm": _metrics(sfit, gt, batch["labels"])["v2v_cm"],
           "search_sec_per_scan_cpu": secs,
           "per_scan_net_v2v_cm": [round(float(x), 2) for x in
                                   100 * v2v_error(fit.vertices.float(), gt.vertices.float())],
           "per_scan_search_v2v_cm": [round(float(x), 2) for x in
                                      100 * v2v_error(sfit.vertices.float(), gt.vertices.float())],
           "per_scan_objective": rows}
    if a.refine:
        ref = refine_fit(sfit, batch["points"], body, steps=a.refine)
        res["search_refine_v2v_cm"] = _metrics(ref, gt, batch["labels"])["v2v_cm"]
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("per_scan")}, indent=1))
    if a.out:
        write_json_atomic(Path(a.out), res)


if __name__ == "__main__":
    main()
