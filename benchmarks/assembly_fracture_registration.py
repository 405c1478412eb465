"""Go/no-go experiment (issue 17): fracture-surface segmentation on dense points with local
rotation-invariant features, then pairwise registration restricted to the fracture points.

Per piece ~1000 points are sampled from its mesh (with face normals); the labels come from
``datasets.fracture.fracture_surface_labels`` (in the assembled frame). Features (all
invariant to the piece's pose, lengths in units of the object scale = mean RMS radius of
its pieces): open3d FPFH at two radii, local-covariance eigenvalue ratios and normal
variation at several neighbourhood sizes. A small torch MLP is trained on the train split
and evaluated (AUC, precision/recall) on the held-out split.

Registration variants: ``multistart-merge`` (the package's default,
apps/assembly/_fracture_registration.fracture_assembly with ``strategy="merge"``: fracture
points split into smooth patches, per pair of clusters multistart point-to-plane ICP of
every patch pair, the best-scoring pair merged, repeated), ``multistart-tree`` (``strategy
="tree"``: per pair, ICP of all fracture points of one piece, normals flipped, onto the
other's from 24 starts that put the two fracture sets' PCA frames face to face; maximum
spanning tree from the anchor) and ``ransac`` (this script's FPFH correspondences + open3d
``registration_ransac_based_on_feature_matching`` + ICP, both directions). Evaluated with
geo3d.eval.assembly_metrics, anchor protocol only (no network here; anchor = largest
piece, geo3d.eval.anchor_parts), with predicted and with true labels (oracle ceiling of
the same registration). Each test object's pieces get the same random rigid motions for
every variant; ``--invariance`` runs merge/predicted on a second draw of motions and
compares the two assembled objects. The classifier's threshold is the best
F1 on every 5th train object (model fitted on the others); the shipped weights
are the model refitted on all train objects (``--save-weights``). CPU, 1 thread, machine
shared with other jobs (ms per object are indicative).

Go/no-go (issue 17, H17c): GO if anchor PA >= 0.60 with predicted labels; result in the
JSON's ``go_no_go``.

Usage::

    nice -n 5 python benchmarks/assembly_fracture_registration.py --data-root runs/demo/data \\
        --save-weights apps/assembly/fracture_classifier.npz \\
        --out benchmarks/results/assembly_fracture_registration.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _common import env_info, write_json_atomic  # noqa: E402
from geo3d.apps.assembly._fracture_registration import _fpfh as fpfh  # noqa: E402
from geo3d.apps.assembly._fracture_registration import _o3d, object_scale  # noqa: E402

KS = (8, 16, 32, 64)


def load_object(folder: Path, n: int, rng: np.random.Generator):
    """Meshes (assembled frame), sampled points, normals, fracture labels of one object."""
    import trimesh

    from datasets.fracture import fracture_surface_labels

    files = sorted(folder.glob("piece_*.obj"), key=lambda p: int(p.stem.split("_")[1]))
    meshes = [trimesh.load(f, process=False, force="mesh") for f in files]
    pts, nrm = [], []
    for m in meshes:
        p, fi = trimesh.sample.sample_surface(m, n, seed=int(rng.integers(1 << 31)))
        pts.append(np.asarray(p, np.float64))
        nrm.append(np.asarray(m.face_normals[fi], np.float64))
    labels = [lab.numpy() for lab in fracture_surface_labels(pts, meshes)]
    return meshes, pts, nrm, labels


def features(p: np.ndarray, n: np.ndarray, s: float) -> np.ndarray:
    """(N, F) rotation-invariant per-point features (the package's)."""
    from geo3d.apps.assembly._fracture_registration import fracture_features
    return fracture_features(p, n, s)


def read_split(root: Path, split: str) -> list[Path]:
    names = (root / "data_split" / f"everyday.{split}.txt").read_text().split()
    out = []
    for nm in names:
        out += sorted((root / nm).glob("fractured_*"))
    return out


def spread(items: list, n: int) -> list:
    """``n`` items evenly spaced over the list (the split files are sorted by category, so
    the first ``n`` would cover only the first categories: the classifier shipped before
    2026-11-30 12:40 was trained on Bracket, Chair and four Hammer objects only, and
    marked 60-85% of a mug's points as fracture)."""
    if n >= len(items):
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def train_mlp(X: np.ndarray, y: np.ndarray, seed: int = 0, epochs: int = 30):
    g = torch.Generator().manual_seed(seed)
    X = torch.from_numpy(X)
    y = torch.from_numpy(y.astype(np.float32))
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Xn = (X - mu) / sd
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-5)
    pos = float(y.mean())
    lossf = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((1 - pos) / pos))
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for b in range(0, len(X), 1024):
            i = perm[b:b + 1024]
            opt.zero_grad()
            loss = lossf(net(Xn[i])[:, 0], y[i])
            loss.backward()
            opt.step()
    return net, mu, sd


def to_classifier(model, args):
    """The trained MLP as the package's FractureClassifier (numpy float64 inference)."""
    import json

    from geo3d.apps.assembly._fracture_registration import FEATURE_VERSION, FractureClassifier

    net, mu, sd = model
    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    w = {"mu": mu.numpy(), "sd": sd.numpy()}
    for i, m in enumerate(lin):
        w[f"w{i}"] = m.weight.detach().numpy()
        w[f"b{i}"] = m.bias.detach().numpy()
    w["meta"] = np.array(json.dumps({
        "feature_version": FEATURE_VERSION, "points_per_piece": args.points,
        "train_objects": args.train_objects, "seed": args.seed,
        "data": "python -m geo3d.datasets.fracture (the demo's data: runs/demo/data, "
                "params in runs/demo/data/geo3d_fracture_everyday.json), train split",
        "command": "python benchmarks/assembly_fracture_registration.py --data-root "
                   "runs/demo/data --save-weights apps/assembly/fracture_classifier.npz"}))
    return FractureClassifier(w)


def predict(clf, X: np.ndarray) -> np.ndarray:
    return clf.predict(X)


def auc(score: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import rankdata
    r = rankdata(score)
    npos = int(y.sum())
    nneg = len(y) - npos
    return float((r[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def move_pieces(pts, nrm, rng: np.random.Generator):
    """Random rotation of each centred piece (the input frame): ``(points, normals,
    gt_rot, gt_trans)`` with ``assembled = gt_rot @ x + gt_trans``."""
    inp, inn, gt_rot, gt_trans = [], [], [], []
    for p, n in zip(pts, nrm, strict=True):
        R = random_rotation(rng)
        c = p.mean(0)
        inp.append((p - c) @ R.T)
        inn.append(n @ R.T)
        gt_rot.append(R.T)
        gt_trans.append(c)
    return inp, inn, gt_rot, gt_trans


def register(ps, ns, fs, pt, nt, ft, s, seed=0):
    """T (4x4) mapping source fracture points (normals already flipped) onto target."""
    o3d = _o3d()
    reg = o3d.pipelines.registration

    def pc(p, n):
        c = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
        c.normals = o3d.utility.Vector3dVector(n)
        return c

    def feat(f):
        F = reg.Feature()
        F.data = np.ascontiguousarray(f.T.astype(np.float64))
        return F

    src, tgt = pc(ps, ns), pc(pt, nt)
    d = 0.05 * s
    o3d.utility.random.seed(seed)
    res = reg.registration_ransac_based_on_feature_matching(
        src, tgt, feat(fs), feat(ft), True, d,
        reg.TransformationEstimationPointToPoint(False), 3,
        [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9), reg.CorrespondenceCheckerBasedOnDistance(d)],
        reg.RANSACConvergenceCriteria(50000, 0.999))
    icp = reg.registration_icp(src, tgt, d, res.transformation,
                               reg.TransformationEstimationPointToPlane(),
                               reg.ICPConvergenceCriteria(max_iteration=50))
    return np.asarray(icp.transformation)


def pair_score(T, pa, na, fa, pb, nb, fb, s, eps, pen_w):
    """Score of placing piece a (transform T into b's frame) against piece b."""
    from geo3d.apps.assembly._plausibility import contact_penetration
    from scipy.spatial import cKDTree

    qa = pa @ T[:3, :3].T + T[:3, 3]
    qn = na @ T[:3, :3].T
    A, An, B, Bn = qa[fa], qn[fa], pb[fb], nb[fb]
    if len(A) == 0 or len(B) == 0:
        return -1.0
    da, ia = cKDTree(B).query(A)
    db, ib = cKDTree(A).query(B)
    oa = ((da < eps * s) & ((An * Bn[ia]).sum(1) < -0.5)).mean()
    ob = ((db < eps * s) & ((Bn * An[ib]).sum(1) < -0.5)).mean()
    _, pen = contact_penetration(torch.from_numpy(qa), torch.from_numpy(qn), torch.from_numpy(pb),
                                 torch.from_numpy(nb), contact_radius=eps * s,
                                 pen_radius=0.2 * s, pen_depth=0.02 * s)
    return float((oa + ob) / 2 - pen_w * float(pen) / (len(pa) + len(pb)))


def assemble(pts, nrm, frac, feats_fpfh, anchor, s, eps=0.03, pen_w=1.0, seed=0):
    """Poses (P, 4, 4) in the anchor's input frame (anchor = identity)."""
    P = len(pts)
    best = {}
    for a in range(P):
        for b in range(P):
            if a == b:
                continue
            fa, fb = frac[a], frac[b]
            if fa.sum() < 10 or fb.sum() < 10:
                continue
            T = register(pts[a][fa], -nrm[a][fa], feats_fpfh[a][1][fa], pts[b][fb], nrm[b][fb],
                         feats_fpfh[b][0][fb], s, seed=seed)
            sc = pair_score(T, pts[a], nrm[a], fa, pts[b], nrm[b], fb, s, eps, pen_w)
            key = (min(a, b), max(a, b))
            Tab = T if a < b else np.linalg.inv(T)  # maps min-piece -> max-piece frame
            if key not in best or sc > best[key][0]:
                best[key] = (sc, Tab)
    return _tree(best, anchor, P), best


def _tree(best, anchor, P):
    # Prim from the anchor: G[i] maps piece i's input frame into the anchor's
    G = {anchor: np.eye(4)}
    while len(G) < P:
        cand = []
        for (i, j), (sc, T) in best.items():
            if (i in G) != (j in G):
                cand.append((sc, i, j, T))
        if not cand:
            for k in range(P):
                if k not in G:
                    G[k] = np.eye(4)  # unreachable: centroid at the anchor's
            break
        sc, i, j, T = max(cand, key=lambda c: c[0])
        if i in G:  # T: i -> j frame; j -> anchor = G[i] @ inv(T)
            G[j] = G[i] @ np.linalg.inv(T)
        else:
            G[i] = G[j] @ T
    return np.stack([G[k] for k in range(P)])


def pose_invariant_fpfh(p, n, s):
    r = 0.15 * s
    return fpfh(p, n, r), fpfh(p, -n, r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default="runs/demo/data")
    ap.add_argument("--out", default="benchmarks/results/assembly_fracture_registration.json")
    ap.add_argument("--points", type=int, default=1000)
    ap.add_argument("--train-objects", type=int, default=80)
    ap.add_argument("--test-objects", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-weights", default=None)
    ap.add_argument("--threshold", type=float, default=None,
                    help="fracture threshold (default: best F1 on held-out train objects)")
    ap.add_argument("--reg", default="multistart,ransac",
                    help="comma list of: multistart (ICP from the fracture patches' PCA frames), "
                         "ransac (FPFH + RANSAC + ICP)")
    ap.add_argument("--modes", default="predicted,oracle")
    ap.add_argument("--strategies", default="merge,tree",
                    help="fracture_assembly strategies of the multistart method")
    ap.add_argument("--invariance", action="store_true",
                    help="also run multistart/merge/predicted on a second draw of piece "
                         "motions and compare the assembled objects")
    ap.add_argument("--cache", default=None, help="private cache of the sampled data (dev)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.data_root)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()

    def prep(folders):
        objs = []
        for f in folders:
            meshes, pts, nrm, lab = load_object(f, args.points, rng)
            s = object_scale(pts)
            objs.append(dict(name=str(f.relative_to(root)), pts=pts, nrm=nrm, lab=lab, s=s,
                             X=[features(p, n, s) for p, n in zip(pts, nrm, strict=False)]))
        return objs

    cache = Path(args.cache) if args.cache else None
    if cache is not None and cache.exists():
        train, test = torch.load(cache, weights_only=False)  # own private cache
        for o in train + test:  # features recomputed: the cache keeps the sampled data
            o["X"] = [features(p, n, o["s"]) for p, n in zip(o["pts"], o["nrm"], strict=True)]
    else:
        train = prep(spread(read_split(root, "train"), args.train_objects))
        test = prep(spread(read_split(root, "val"), args.test_objects))
        if cache is not None:
            torch.save((train, test), cache)
    t_prep = time.time() - t0
    Xtr = np.concatenate([x for o in train for x in o["X"]])
    ytr = np.concatenate([lab for o in train for lab in o["lab"]])
    from geo3d.apps.assembly._fracture_registration import fracture_assembly

    # threshold: best F1 on every 5th train object with a model fitted on the others (the
    # test split is not used to choose it); then the model is refitted on all. (The last
    # 20% of the category-sorted list, used before, was Stairs alone: it picked 0.85,
    # which on 47 long-config val objects spread over the categories gave anchor PA 92.6%
    # against 95.4% at 0.5; measured after the fact, not used to choose.)
    fit_idx = [i for i in range(len(train)) if i % 5 != 4]
    hold_idx = [i for i in range(len(train)) if i % 5 == 4]
    Xa = np.concatenate([x for i in fit_idx for x in train[i]["X"]])
    ya = np.concatenate([lab for i in fit_idx for lab in train[i]["lab"]])
    Xb = np.concatenate([x for i in hold_idx for x in train[i]["X"]])
    yb = np.concatenate([lab for i in hold_idx for lab in train[i]["lab"]])
    pb = predict(to_classifier(train_mlp(Xa, ya, seed=args.seed), args), Xb)
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    f1 = [2 * ((pb > t) & yb).sum() / max((pb > t).sum() + yb.sum(), 1) for t in grid]
    thr = float(grid[int(np.argmax(f1))]) if args.threshold is None else args.threshold
    model = to_classifier(train_mlp(Xtr, ytr, seed=args.seed), args)
    model.meta["threshold"] = thr
    model.meta["threshold_rule"] = "best F1 on every 5th train object (model fitted on the rest)"
    if args.save_weights:
        model.save(args.save_weights)
    Xte = np.concatenate([x for o in test for x in o["X"]])
    yte = np.concatenate([lab for o in test for lab in o["lab"]])
    pte = predict(model, Xte)
    cls = {"train_points": int(len(ytr)), "test_points": int(len(yte)),
           "pos_rate_test": float(yte.mean()), "auc_test": auc(pte, yte),
           "auc_train": auc(predict(model, Xtr), ytr), "num_features": int(Xtr.shape[1])}
    cls["auc_train_holdout"] = auc(pb, yb)
    cls["f1_train_holdout"] = dict(zip([str(t) for t in grid], [float(v) for v in f1],
                                       strict=True))
    pr = pte > thr
    cls.update(threshold=thr, precision=float((pr & yte).sum() / max(pr.sum(), 1)),
               recall=float((pr & yte).sum() / max(yte.sum(), 1)))
    print("classifier", cls, flush=True)

    from geo3d.eval import anchor_parts, assembly_metrics

    results = {}
    keys = []
    for r in args.reg.split(","):
        for m in args.modes.split(","):
            if r == "multistart":
                keys += [(r, m, st) for st in args.strategies.split(",")]
            else:
                keys.append((r, m, None))
    placed: dict[int, list] = {}
    for key in keys + ([("multistart", "predicted", "merge", 1)] if args.invariance else []):
        reg_mode, mode, strategy = key[:3]
        draw = key[3] if len(key) > 3 else 0
        accs, by_n, times, rr = [], {}, [], []
        for oi, o in enumerate(test):
            # same piece motions for every method (draw 1: a second set, --invariance)
            rng = np.random.default_rng([args.seed, oi] if draw == 0 else [args.seed, oi, draw])
            P = len(o["pts"])
            inp, inn, gt_rot, gt_trans = move_pieces(o["pts"], o["nrm"], rng)
            t1 = time.time()
            pts_t = torch.from_numpy(np.stack(inp))[None]
            valid = torch.ones(1, P, dtype=torch.bool)
            anchor = int(anchor_parts(pts_t, valid)[0])  # largest piece (radius of gyration)
            if reg_mode == "multistart":  # the package's method
                G, _ = fracture_assembly(inp, inn, anchor, classifier=model, threshold=thr,
                                         labels=None if mode == "predicted" else o["lab"],
                                         strategy=strategy)
                G = G.numpy()
            else:
                if mode == "predicted":
                    frac = [predict(model, features(q, m, o["s"])) > thr
                            for q, m in zip(inp, inn, strict=False)]
                else:
                    frac = [lab.astype(bool) for lab in o["lab"]]
                ff = [pose_invariant_fpfh(q, m, o["s"]) for q, m in zip(inp, inn, strict=False)]
                G, _ = assemble(inp, inn, frac, ff, anchor, o["s"], seed=args.seed)
            times.append(time.time() - t1)
            if key[:3] == ("multistart", "predicted", "merge"):
                # each piece's points, placed, in the object's frame (via the true anchor pose)
                Ra, ca = gt_rot[anchor], gt_trans[anchor]
                placed.setdefault(draw, []).append(
                    [((q @ G[i][:3, :3].T + G[i][:3, 3]) @ Ra.T) + ca
                     for i, q in enumerate(inp)])
            m = assembly_metrics(pts_t, valid, torch.from_numpy(G[None, :, :3, :3]),
                                 torch.from_numpy(G[None, :, :3, 3]),
                                 torch.from_numpy(np.stack(gt_rot))[None],
                                 torch.from_numpy(np.stack(gt_trans))[None],
                                 protocol="anchor", anchor=torch.tensor([anchor]))
            a = float(m["part_acc"])
            accs.append(a)
            rr.append(float(m["rmse_r_geo"]))
            by_n.setdefault(str(P), []).append(a)
        name = f"{reg_mode}/{mode}" if strategy is None else f"{reg_mode}-{strategy}/{mode}"
        if draw:
            name += f"/draw{draw}"
        results[name] = {"anchor": {"part_acc": float(np.mean(accs)),
                                    "rmse_r_geo": float(np.mean(rr)),
                                    "part_acc_by_num_parts": {k: {"num_objects": len(v),
                                                                  "part_acc": float(np.mean(v))}
                                                              for k, v in sorted(by_n.items())}},
                         "ms_per_object": 1000 * float(np.mean(times))}
        print(key, results[name], flush=True)
    invariance = None
    if len(placed) == 2:
        # RMS distance between the two draws' placements of every non-anchor piece, in units
        # of the object's scale (the points are the same canonical samples in both draws)
        dev = np.array([np.sqrt(((a - b) ** 2).sum(1).mean()) / o["s"]
                        for o, A, B in zip(test, placed[0], placed[1], strict=True)
                        for a, b in zip(A, B, strict=True)])
        invariance = {"pieces": int(len(dev)), "max_rms_over_scale": float(dev.max()),
                      "fraction_below_1e-6": float((dev < 1e-6).mean()),
                      "fraction_below_0.01": float((dev < 0.01).mean()),
                      "note": "two independent draws of random piece motions, float64; "
                              "anchor pieces included (0 by construction)"}
        print("invariance", invariance, flush=True)
    pa = results.get("multistart-merge/predicted", {}).get("anchor", {}).get("part_acc")
    go = {"criterion": "GO if anchor part accuracy on the test split >= 0.60 with predicted "
                       "fracture labels (network alone: 0.424)", "measured": pa,
          "verdict": None if pa is None else ("GO" if pa >= 0.60 else "NO-GO")}
    out = {"go_no_go": go, "classifier": cls, "methods": results, "invariance": invariance,
           "prep_seconds": t_prep,
           "num_test_objects": len(test), "num_train_objects": len(train),
           "args": vars(args), "env": env_info()}
    write_json_atomic(args.out, out)


if __name__ == "__main__":
    main()
