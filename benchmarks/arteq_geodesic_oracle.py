"""ArtEq geodesic-signature oracle: can intrinsic coordinates segment the ``ood`` poses?

``arteq_seg_transfer.py`` found that a segmentation which transfers to the joint-limit
poses of ``ood`` has to use the body's kinematic structure, not local shape. The natural
structure-aware coordinates are intrinsic: graph-geodesic distances along the surface do
not change under articulation, except where two body parts touch. This probe bounds what
such coordinates can give, with oracles on both sides:

* each point's *signature* is its graph-geodesic distance (symmetrised ``k``-NN graph,
  Euclidean edge lengths) to the nearest point of each of five true extremity parts, each
  one separately (head; left and right wrist, into which ArtEq merges the hands; left and
  right ankle, with the feet), divided by the scan's median signature entry (subject
  size). The extremities come from the true labels: a detector could only do worse;
* ``--cut-contacts`` also drops every graph edge between two parts that are not parent and
  child in the kinematic tree (true labels): contact shortcuts removed, a second oracle;
* ``--euclidean`` uses straight-line distances instead (the pose-dependent control);
* a point's part is the majority vote of its 5 nearest training points in signature space
  (the 210 training scans of the demo config, all points).

Part accuracy (and with left/right merged, ``sym_acc``) on the first ``--scans`` in_dist
scans and all ``ood`` scans, written to ``--out`` under ``geodesic_oracle_*`` keys::

    OMP_NUM_THREADS=1 python benchmarks/arteq_geodesic_oracle.py [--cut-contacts] [--num-points 2048]

Session of 2026-12-02, results in ``benchmarks/results/arteq_seg_transfer.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, write_json_atomic  # noqa: E402
from arteq_seg_transfer import knn_graph, sym_map  # noqa: E402

#: the five extremities (ArtEq part ids; feet 10, 11 never occur in labels, merged into 7, 8)
EXTREMITIES = ((15,), (20,), (21,), (7, 10), (8, 11))
#: signature entry for an unreachable point (a piece cut off from an extremity), in units
#: of the scan's median entry
UNREACHABLE = 5.0


def tree_adjacency() -> np.ndarray:
    """``(22, 22)`` bool: a part with itself, its parent and its children."""
    from geo3d.apps.arteq._model import ARTEQ_PARENTS

    adj = np.eye(22, dtype=bool)
    for c, p in enumerate(ARTEQ_PARENTS):
        if p >= 0:
            adj[c, p] = adj[p, c] = True
    return adj


def signature(x: torch.Tensor, labels: torch.Tensor, k: int = 8, mode: str = "geodesic",
              cut_contacts: bool = False) -> np.ndarray:
    """``x (N, 3)``, true ``labels (N,)`` -> ``(N, 5)`` float64: distance of each point to
    the nearest point of each extremity in :data:`EXTREMITIES` (``mode`` ``"geodesic"``:
    along the symmetrised ``k``-NN graph, without edges between non-adjacent parts if
    ``cut_contacts``; ``"euclidean"``: straight-line), divided by the median finite entry;
    unreachable (or absent extremity): :data:`UNREACHABLE`.

    Raises:
        ValueError: unknown ``mode``, or ``x`` and ``labels`` of different lengths.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    if mode not in ("geodesic", "euclidean"):
        raise ValueError(f"signature: mode must be 'geodesic' or 'euclidean', got {mode!r}")
    if len(x) != len(labels):
        raise ValueError(f"signature: {len(x)} points but {len(labels)} labels")
    x = x.double()
    y = labels.numpy()
    if mode == "geodesic":
        A = knn_graph(x, k)
        if cut_contacts:
            A = A.tocoo()
            keep = tree_adjacency()[y[A.row], y[A.col]]
            A = csr_matrix((A.data[keep], (A.row[keep], A.col[keep])), shape=A.shape)
    cols = []
    for grp in EXTREMITIES:
        src = np.nonzero(np.isin(y, grp))[0]
        if not len(src):
            cols.append(np.full(len(x), np.inf))
        elif mode == "geodesic":
            cols.append(dijkstra(A, directed=False, indices=src, min_only=True))
        else:
            cols.append(torch.cdist(x, x[src]).min(1).values.numpy())
    S = np.stack(cols, 1)
    fin = np.isfinite(S)
    scale = float(np.median(S[fin])) if fin.any() else 1.0
    return np.where(fin, S / max(scale, 1e-300), UNREACHABLE)


def knn_vote(train_sig: np.ndarray, train_labels: np.ndarray, sig: np.ndarray,
             k: int = 5) -> np.ndarray:
    """Majority vote (ties: the smaller label) of the ``k`` nearest training signatures."""
    T = torch.from_numpy(train_sig).float()
    Y = torch.from_numpy(train_labels)
    idx = torch.cdist(torch.from_numpy(sig).float(), T).topk(min(k, len(T)), largest=False).indices
    return torch.mode(Y[idx], dim=1).values.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="runs/arteq_bench/data")
    ap.add_argument("--num-points", type=int, default=None,
                    help="points per scan (default: the demo config's 512); other values "
                         "generate scans of the same poses and subjects on first use")
    ap.add_argument("--scans", type=int, default=48, help="in_dist scans scored")
    ap.add_argument("--k", type=int, default=8, help="kNN graph size")
    ap.add_argument("--cut-contacts", action="store_true",
                    help="oracle: drop graph edges between non-adjacent true parts")
    ap.add_argument("--euclidean", action="store_true",
                    help="straight-line distances instead of geodesics (control)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "arteq_seg_transfer.json"))
    a = ap.parse_args()
    if a.euclidean and a.cut_contacts:
        ap.error("--cut-contacts: only for geodesic signatures")
    if a.k < 1 or a.scans < 1:
        ap.error("--k and --scans must be positive")
    torch.set_num_threads(1)
    from arteq import _datamodule
    from geo3d.apps.arteq.cli import config_path

    dm = _datamodule(config_path("demo"), Path(a.data_root).parent,
                     ["--data.root", a.data_root] + (
                         [] if a.num_points is None else ["--data.num_points", str(a.num_points)]))[0]
    mode = "euclidean" if a.euclidean else "geodesic"

    def sigs(d):
        return [signature(p, y, a.k, mode, a.cut_contacts)
                for p, y in zip(d["points"], d["labels"], strict=True)]

    tr = dm.split_data("train")
    Str = np.concatenate(sigs(tr))
    Ytr = torch.cat(list(tr["labels"])).numpy()
    sm = sym_map().numpy()
    res = {}
    for c in ("in_dist", "ood"):
        d = dm.split_data(c)
        if c == "in_dist":
            d = {k: v[:a.scans] for k, v in d.items()}
        acc, sacc = [], []
        for S, y in zip(sigs(d), d["labels"], strict=True):
            y = y.numpy()
            pr = knn_vote(Str, Ytr, S)
            acc.append(float((pr == y).mean()))
            sacc.append(float((sm[pr] == sm[y]).mean()))
        res[c] = {"part_acc": round(float(np.mean(acc)), 4),
                  "sym_acc": round(float(np.mean(sacc)), 4), "scans": len(acc)}
        print(c, res[c], flush=True)
    key = "geodesic_oracle_" + (mode if mode == "euclidean" else f"k{a.k}") + (
        "_cut_contacts" if a.cut_contacts else "") + (
        "" if a.num_points is None else f"_{a.num_points}pts")
    out = Path(a.out)
    allres = json.loads(out.read_text()) if out.exists() else {}
    allres[key] = {**res, "command": "OMP_NUM_THREADS=1 python benchmarks/arteq_geodesic_oracle.py "
                   + " ".join(sys.argv[1:]), "date": "2026-12-02"}
    write_json_atomic(out, allres)
    print(key, "->", out)


if __name__ == "__main__":
    main()
