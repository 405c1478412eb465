"""ArtEq shape probe: does the shape (betas) estimate transfer to unseen poses?

``arteq_diagnostic.py``'s ``betas_only_v2v_cm`` (the true pose and translation with the
net's betas) shows the net's shape head losing most of its accuracy on ``ood`` scans, even
when the true parts pool its features. This probe asks whether simple pose-invariant
measurements do better. A ridge regression to the 10 betas (penalty chosen by 5-fold
cross-validation over the 20 training subjects, features standardised) is fitted on the
demo config's 210 training scans from

* ``parts``: per ArtEq part, the square roots of the eigenvalues of its points' covariance
  (extent along its principal axes) and its share of the points, plus the distance of each
  part's centroid to its parent's: invariant under rotations and, for rigid parts, under
  articulation. Scored with the true parts (an oracle: segmentation that transfers) and
  with the net's own segmentation (``--checkpoint``);
* ``geodesic``: quantiles of all-pairs graph-geodesic distances (8-NN graph), of each
  point's geodesic eccentricity and of the mean 8-NN distance: articulation-invariant up
  to self-contact, no segmentation needed.

It reports ``betas_only_v2v_cm`` (the true pose and translation with the predicted betas,
cm) and ``betas_err`` (Euclidean norm of the betas error) on the first ``--scans`` scans of
``in_dist`` and ``ood``, next to the training mean's.

Session of 2026-12-01, results in ``benchmarks/results/arteq_ood_experiments.json``
(``shape_probe``)::

    OMP_NUM_THREADS=1 python benchmarks/arteq_shape_probe.py --checkpoint CKPT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json_atomic  # noqa: E402
from arteq import _gt, betas_only_v2v_cm, demo_datamodule, load_module  # noqa: E402
from arteq_seg_transfer import knn_graph  # noqa: E402  (symmetrised 8-NN graph, CSR)


def part_features(points: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``(B, 22 * 4 + 21)``: per part the principal extents and point share, then the
    centroid distance of parts 1..21 to their parents (a part with < 3 points: zeros, its
    centroid the cloud's)."""
    from geo3d.body import SMPL_PARENTS

    rows = []
    for p, lab in zip(points.double(), labels, strict=True):
        f: list[float] = []
        cen = []
        for k in range(22):
            q = p[lab == k]
            if len(q) < 3:
                f += [0.0] * 4
                cen.append(p.mean(0))
                continue
            cen.append(q.mean(0))
            f += torch.linalg.eigvalsh(torch.cov(q.T)).clamp(min=0).sqrt().tolist()
            f.append(len(q) / len(p))
        c = torch.stack(cen)
        f += [float((c[k] - c[SMPL_PARENTS[k]]).norm()) for k in range(1, 22)]
        rows.append(f)
    return np.asarray(rows)


def geodesic_features(points: torch.Tensor) -> np.ndarray:
    """``(B, 40)``: quantiles of all-pairs graph-geodesic distances (25), of the points'
    eccentricities (11), of the mean 8-NN distance (3), and the unreachable pairs' share."""
    from scipy.sparse.csgraph import shortest_path

    qs = np.linspace(0.02, 1.0, 25)
    rows = []
    for p in points.double():
        d = torch.cdist(p, p).sort(1).values[:, 1:9].numpy()
        D = shortest_path(knn_graph(p, 8), directed=False)
        unreachable = np.isinf(D)
        D[unreachable] = np.nan
        n = len(D)
        rows.append(np.concatenate([
            np.nanquantile(D[np.triu_indices(n, 1)], qs),
            np.nanquantile(np.nanmax(D, 1), np.linspace(0, 1, 11)),
            np.quantile(d.mean(1), [0.1, 0.5, 0.9]), [unreachable.mean()]]))
    return np.asarray(rows)


class Ridge:
    """Ridge regression on standardised features; the penalty minimises the squared error of
    5-fold cross-validation with whole subjects held out (the standardisation and the mean
    target come from all training rows, so the held-out folds inform only those)."""

    def __init__(self, X: np.ndarray, Y: np.ndarray) -> None:
        self.mu, self.sd, self.ym = X.mean(0), X.std(0) + 1e-12, Y.mean(0)
        Z = (X - self.mu) / self.sd
        _, subj = np.unique(Y.round(6), axis=0, return_inverse=True)
        fold = subj.ravel() % 5
        best = None
        for a in np.logspace(-3, 4, 29):
            err = sum(float((((Z[fold == f] @ self._solve(Z[fold != f], Y[fold != f], a))
                              + self.ym - Y[fold == f]) ** 2).sum()) for f in range(5))
            if best is None or err < best[0]:
                best = (err, a)
        self.alpha, self.cv_rmse = float(best[1]), float(np.sqrt(best[0] / Y.size))
        self.W = self._solve(Z, Y, self.alpha)

    def _solve(self, Z: np.ndarray, Y: np.ndarray, a: float) -> np.ndarray:
        return np.linalg.solve(Z.T @ Z + a * np.eye(Z.shape[1]), Z.T @ (Y - self.ym))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mu) / self.sd @ self.W + self.ym


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="score `parts` on this net's parts too")
    ap.add_argument("--data-root", default="runs/arteq_bench/data")
    ap.add_argument("--scans", type=int, default=48)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from geo3d.apps.arteq._data import load_body

    dm = demo_datamodule(a.data_root)
    h = dm.hparams
    body = load_body(h.body_model, h.gender, h.num_betas)
    net = None
    if a.checkpoint:
        net = load_module(a.checkpoint)[0].net
    tr = dm.split_data("train")
    Y = tr["betas"].double().numpy()
    models = {"parts": Ridge(part_features(tr["points"], tr["labels"]), Y),
              "geodesic": Ridge(geodesic_features(tr["points"]), Y)}
    res: dict = {"checkpoint": a.checkpoint, "train_scans": len(Y),
                 "train_subjects": int(len(np.unique(Y.round(6), axis=0))),
                 "ridge": {k: {"alpha": m.alpha, "cv_rmse": m.cv_rmse}
                           for k, m in models.items()}}
    for cond in ("in_dist", "ood"):
        d = dm.split_data(cond)
        n = min(a.scans, len(d["points"]))
        b = {k: v[:n] for k, v in d.items()}
        preds = {"train_mean": np.broadcast_to(Y.mean(0), (n, Y.shape[1])),
                 "parts_true_labels": models["parts"].predict(
                     part_features(b["points"], b["labels"])),
                 "geodesic": models["geodesic"].predict(geodesic_features(b["points"]))}
        if net is not None:
            with torch.no_grad():
                own = net(b["points"])["part_logits"].argmax(-1)
            preds["parts_net_labels"] = models["parts"].predict(part_features(b["points"], own))
        r: dict = {"num_scans": n}
        with torch.no_grad():
            gt = _gt(body, b)
            for name, p in preds.items():
                betas = torch.as_tensor(np.ascontiguousarray(p), dtype=b["betas"].dtype)
                r[name] = {"betas_only_v2v_cm": betas_only_v2v_cm(body, betas, b, gt),
                           "betas_err": float((betas - b["betas"]).norm(dim=-1).mean())}
        res[cond] = r
    print(json.dumps(res, indent=1))
    if a.out:
        write_json_atomic(Path(a.out), res)


if __name__ == "__main__":
    main()
