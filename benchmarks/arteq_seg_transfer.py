"""ArtEq segmentation transfer probe: which per-point features still segment unseen poses?

The ArtEq evidence net segments in_dist scans well (part accuracy ~0.70) and ``ood`` scans
(every joint angle at or near a limit) badly (~0.21), and its ``ood`` error is bound by that
(``benchmarks/arteq_diagnostic.py``). This probe trains *segmentation alone* (cross-entropy,
no pose) on the demo config's 210 training scans, with the same protocol for every feature
set, and scores part accuracy on the first ``--scans`` in_dist scans and the ``ood`` scans:

* ``net``: the demo config's ``ArtEqNet`` (``vn_dgcnn``, chiral, segmentation head on the
  per-point invariants read in the cloud's global frame plus the global invariant), trained
  with Haar-random rotations (the control: the evidence net's segmentation path);
* ``vn_local``: :class:`geo3d.apps.arteq._backbones.VNLocalEncoder` (only relative
  offsets, no global feature) + frame-free chiral invariants of each point's own vector
  channels (Gram matrix and triple products of ``G`` learned projections) -> MLP;
  Haar-random rotations;
* ``descriptors``: hand-made local invariants, no learning in the features: per kNN scale
  ``k``, the standard deviations along the local principal axes, the offset from the
  local centroid, the ``k``-th neighbour distance, the third moment along the first axis
  and a reflection-odd third moment along the third (axes signed by their skewness: an
  SO(3)-invariant, chirality-aware number; this part is
  :func:`geo3d.apps.arteq._model.local_shape_descriptors`, the ``seg_descriptors`` input
  of ``ArtEqNet``, here in metres; the recorded ``descriptors``/``net_desc`` runs predate
  its change to sign-free third-moment numbers: skewness ``|m1| / s1^3`` and a continuous
  chirality instead of cube roots of moments along skewness-signed axes, which flipped
  under rounding on mirror-symmetric neighbourhoods; 44b1b61 reproduces them), their
  means over larger neighbourhoods
  (``--agg``), and with ``--geodesic`` the quantiles of each point's graph-geodesic
  distances to all points (kNN graph, ``k`` = 8; articulation-invariant up to contacts),
  with ``--anchors`` the graph-geodesic distances from ground-truth landmark parts (head;
  or head, hands and feet: an oracle, so an upper bound for intrinsic coordinates measured
  from detected landmarks; ``--anchor-source predicted``: the anchors are the 4 most
  head-like points of a first descriptors probe, the realistic version) -> MLP (the
  features are rotation-invariant, so no augmentation is needed);
* ``net_desc``: ``net``'s part logits plus an MLP of the ``descriptors`` (trained jointly,
  Haar-random rotations): do the two kinds of features add up?
* ``epn``: ``net`` with the reference's backbone instead, ``ArtEqNet(backbone="epn")``
  (icosahedral group convolution, :class:`geo3d.apps.arteq._backbones.EPNLocalEncoder`;
  ``k`` 16, widths 16 and 32, on 256 of the points; :data:`EPN_NET`), Haar-random
  rotations (the recorded ``epn_seg_descriptors`` run used scale-free kernels, before
  ``ArtEqNet`` fixed the kernel scale at ``EPN_KERNEL_SCALE``). ``net`` and ``epn`` runs of a demo config with ``seg_descriptors`` (on
  since 81fc1ba) get the key suffix ``_seg_descriptors``; the recorded ``net`` run predates it.

``ood_tail`` is the last 12 ``ood`` scans, scored by every run so that ``--oracle`` (fit on
the first 30 ``ood`` scans instead of the training scans: can these features segment such
poses at all, given such poses?) has a like-for-like control. Each scored set also gets ``cross_part_knn_edges``: the fraction of 8-NN edges that join
non-adjacent parts (self-contact). Besides the part accuracy it reports ``sym_acc`` (left/right parts merged: is the error a
side swap or a wrong body region?) and the per-part recall on ``ood``. Writes/updates
``--out`` (one key per run)::

    OMP_NUM_THREADS=1 python benchmarks/arteq_seg_transfer.py --probe descriptors --geodesic
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import combinations
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, write_json_atomic  # noqa: E402

#: ``--oracle`` fits on the first ORACLE ood scans; every run also scores the rest (``ood_tail``)
ORACLE = 30
#: ``--probe epn``: the ArtEqNet arguments that replace the demo config's
EPN_NET = {"backbone": "epn", "k": 16, "hidden": [16, 32], "num_centers": 256}
#: left/right part pairs of the 22-part ArtEq layout (SMPL joints 0..21)
PAIRS = ((1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21))


def sym_map() -> torch.Tensor:
    s = list(range(22))
    for a, b in PAIRS:
        s[b] = a
    return torch.tensor(s)


#: ``--anchor-source predicted``: anchor points per scan (the most head-like ones)
ANCHOR_POINTS = 4
#: ``--anchors``: ground-truth part groups whose graph-geodesic distance feeds the probe
ANCHORS = {"head": ((15,),), "head_hands_feet": ((15,), (20, 21), (7, 8))}


def knn_graph(x: torch.Tensor, k: int = 8):
    """Symmetrised ``k``-NN graph of ``x (N, 3)`` as a scipy CSR matrix of Euclidean edge
    lengths (zero-length edges, between duplicates, are dropped)."""
    from scipy.sparse import csr_matrix

    N = len(x)
    d = torch.cdist(x, x)
    adj = torch.zeros(N, N, dtype=torch.bool)
    adj[torch.arange(N)[:, None], d.argsort(dim=1)[:, 1:min(k, N - 1) + 1]] = True
    return csr_matrix(torch.where(adj | adj.T, d, 0).numpy())


def anchor_geodesics(x: torch.Tensor, labels: torch.Tensor, groups) -> torch.Tensor:
    """Graph-geodesic distance (symmetrised 8-NN graph, Euclidean edge lengths, in units of
    the cloud's RMS radius) from each point to the nearest point of each group of
    ground-truth parts, encoded as ``d, d^2, sin/cos(3 d), sin/cos(6 d)``: ``(N, 6 G)``.
    An oracle (the anchors come from the true labels): an upper bound for intrinsic
    coordinates measured from detected landmarks."""
    import numpy as np
    from scipy.sparse.csgraph import dijkstra

    x = x.double()
    N = len(x)
    A = knn_graph(x)
    rms = (x - x.mean(0)).square().sum(-1).mean().sqrt()
    out = []
    for grp in groups:
        src = torch.nonzero(torch.isin(labels, torch.tensor(grp))).flatten().numpy()
        G = dijkstra(A, directed=False, indices=src, min_only=True) if len(src) else \
            np.full(N, np.inf)
        G = torch.nan_to_num(torch.from_numpy(np.where(np.isfinite(G), G, np.nan)) / rms,
                             nan=6.0)  # unreachable (or no anchor): far
        out += [G, G.square(), (3 * G).sin(), (3 * G).cos(), (6 * G).sin(), (6 * G).cos()]
    return torch.stack(out, dim=-1)


def descriptors(x: torch.Tensor, scales: list[int], agg: list[int], geodesic: bool,
                labels: torch.Tensor | None = None, anchors: str | None = None) -> torch.Tensor:
    """``x (N, 3)`` -> ``(N, D)`` float32 rotation- and translation-invariant descriptors
    (with ``anchors``: plus :func:`anchor_geodesics` from the true ``labels (N,)``)."""
    from geo3d.apps.arteq._model import local_shape_descriptors

    x = x.double()
    N = len(x)
    # the library's descriptors are in units of the cloud's RMS radius: this probe's runs
    # (recorded before they were moved into the library) used metres
    rms = (x - x.mean(0)).square().sum(-1).mean().sqrt()
    loc = local_shape_descriptors(x[None], scales, [])[0] * rms
    f = [loc]
    if geodesic:
        from scipy.sparse.csgraph import shortest_path

        G = torch.from_numpy(shortest_path(knn_graph(x), directed=False))
        fin = torch.isfinite(G)
        G = torch.where(fin, G, float(G[fin].max()) * 1.2)  # disconnected pieces
        q = torch.quantile(G, torch.tensor([0.05, *[i / 10 for i in range(1, 11)]],
                                           dtype=G.dtype), dim=1).T
        f += [q, q / q[:, 5:6].clamp_min(1e-12)]
    if anchors:
        f.append(anchor_geodesics(x, labels, ANCHORS[anchors]))
    f = torch.cat(f, dim=-1)
    if not agg:
        return f.float()
    order = torch.cdist(x, x).argsort(dim=1)
    return torch.cat([f] + [f[order[:, :min(k, N)]].mean(1) for k in agg], dim=-1).float()


class VNLocalSeg(nn.Module):
    """Local VN encoder + frame-free chiral invariants of each point's channels -> logits."""

    def __init__(self, k: int = 16, feat_dim: int = 32, hidden: tuple[int, ...] = (16, 16, 32),
                 G: int = 8) -> None:
        super().__init__()
        from geo3d.apps.arteq._backbones import VNLocalEncoder

        from geo3d.nn import VNLinear

        self.enc = VNLocalEncoder(k=k, feat_dim=feat_dim, hidden=hidden, batch_norm=False)
        self.proj = VNLinear(feat_dim, G)
        self.register_buffer("tri", torch.tensor(list(combinations(range(G), 3))),
                             persistent=False)
        self.register_buffer("iu", torch.triu_indices(G, G), persistent=False)
        n = self.iu.shape[1] + self.tri.shape[0]
        self.head = nn.Sequential(nn.LayerNorm(n), nn.Linear(n, 64), nn.ReLU(),
                                  nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 22))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        V = self.enc(x).point_equivariant  # (B, N, F, 3)
        U = self.proj(V.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, N, G, 3)
        U = U / U.square().sum(-1).mean((1, 2), keepdim=True).sqrt()[..., None].clamp_min(1e-12)
        gram = (U @ U.transpose(-1, -2))[..., self.iu[0], self.iu[1]]
        t = self.tri
        tri = torch.linalg.det(torch.stack([U[..., t[:, 0], :], U[..., t[:, 1], :],
                                            U[..., t[:, 2], :]], dim=-2))
        return self.head(torch.cat([gram, tri], dim=-1))


class NetDescSeg(nn.Module):
    """The demo config's ArtEqNet part logits plus an MLP of the (normalised) descriptors:
    the descriptors are rotation-invariant, so the sum keeps the net's equivariance."""

    def __init__(self, net_kwargs: dict, d_in: int) -> None:
        super().__init__()
        from geo3d.apps.arteq._model import ArtEqNet

        self.net = ArtEqNet(**net_kwargs)
        self.head = nn.Sequential(nn.Linear(d_in, 128), nn.ReLU(), nn.Linear(128, 128),
                                  nn.ReLU(), nn.Linear(128, 22))

    def forward(self, x: torch.Tensor, desc: torch.Tensor) -> torch.Tensor:
        return self.net(x)["part_logits"] + self.head(desc)


class NetSeg(nn.Module):
    """The demo config's ArtEqNet; its part logits."""

    def __init__(self, net_kwargs: dict) -> None:
        super().__init__()
        from geo3d.apps.arteq._model import ArtEqNet

        self.net = ArtEqNet(**net_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["part_logits"]


def cross_part_edges(points: torch.Tensor, labels: torch.Tensor, k: int = 8) -> float:
    """Mean fraction of each point's ``k`` nearest neighbours on a part that is neither its
    own, its parent nor its child (contacts between body regions)."""
    from geo3d.apps.arteq._model import ARTEQ_PARENTS

    adj = torch.eye(22, dtype=torch.bool)
    for c, p in enumerate(ARTEQ_PARENTS):
        if p >= 0:
            adj[c, p] = adj[p, c] = True
    fr = []
    for x, y in zip(points, labels, strict=True):
        nb = torch.cdist(x, x).argsort(1)[:, 1:k + 1]
        fr.append((~adj[y[:, None], y[nb]]).float().mean())
    return float(torch.stack(fr).mean())


def scores(pred: torch.Tensor, y: torch.Tensor) -> dict:
    s = sym_map()
    pred, y = pred.flatten(), y.flatten()
    rec = {str(k): round(float((pred[y == k] == k).float().mean()), 3)
           for k in range(22) if bool((y == k).any())}
    return {"part_acc": float((pred == y).float().mean()),
            "sym_acc": float((s[pred] == s[y]).float().mean()), "recall": rec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", choices=("net", "vn_local", "descriptors", "net_desc", "epn"), required=True)
    ap.add_argument("--data-root", default="runs/arteq_bench/data")
    ap.add_argument("--num-points", type=int, default=None,
                    help="points per scan (default: the demo config's 512); other values "
                         "generate scans of the same poses and subjects on first use")
    ap.add_argument("--steps", type=int, default=None,
                    help="Adam steps (default: 3000 for net / vn_local / epn, 2000 descriptors)")
    ap.add_argument("--scans", type=int, default=48, help="in_dist scans scored")
    ap.add_argument("--scales", default="8,16,32,64", help="descriptors: kNN scales")
    ap.add_argument("--agg", default="16,64", help="descriptors: averaging neighbourhoods")
    ap.add_argument("--geodesic", action="store_true", help="descriptors: geodesic quantiles")
    ap.add_argument("--anchors", choices=sorted(ANCHORS), default=None,
                    help="descriptors: add graph-geodesic distances from ground-truth "
                         "landmark parts (an oracle upper bound for intrinsic coordinates)")
    ap.add_argument("--anchor-source", choices=("true", "predicted"), default="true",
                    help="--anchors head only: 'predicted' takes the anchors from a first "
                         "descriptors probe (its most head-like points) instead of the "
                         "true labels: the realistic version of the oracle")
    ap.add_argument("--oracle", action="store_true",
                    help="fit on the first 30 ood scans instead of the training "
                         "scans (scored on `ood_tail`, the other 12): can these features "
                         "segment ood scans at all?")
    ap.add_argument("--out", default=str(RESULTS_DIR / "arteq_seg_transfer.json"))
    a = ap.parse_args()
    if a.anchor_source == "predicted" and a.anchors != "head":
        ap.error("--anchor-source predicted: needs --anchors head")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from arteq import _datamodule
    from geo3d.apps.arteq.cli import config_path

    from geo3d.rotations import random_rotation_matrix

    dm, model = _datamodule(config_path("demo"), Path(a.data_root).parent,
                            ["--data.root", a.data_root] + (
                                [] if a.num_points is None else
                                ["--data.num_points", str(a.num_points)]))
    tr = dm.split_data("train")
    ood = dm.split_data("ood")
    tests = {"in_dist": {k: v[:a.scans] for k, v in dm.split_data("in_dist").items()},
             "ood": ood, "ood_tail": {k: v[ORACLE:] for k, v in ood.items()}}
    if a.oracle:
        tr = {k: v[:ORACLE] for k, v in ood.items()}
    t0 = time.time()
    key = a.probe
    Dtr = Dte = None
    if a.probe in ("descriptors", "net_desc"):  # invariant: computed once per scan
        sc = [int(s) for s in a.scales.split(",") if s]
        ag = [int(s) for s in a.agg.split(",") if s]
        key += f"_k{a.scales}_agg{a.agg}" + ("_geodesic" if a.geodesic else "") + (
            f"_anchors_{a.anchors}" if a.anchors else "") + (
            "_predicted" if a.anchors and a.anchor_source == "predicted" else "")
        anchor_labels = {"train": tr["labels"], **{c: d["labels"] for c, d in tests.items()}}
        if a.anchors and a.anchor_source == "predicted":
            # stage 1: the plain descriptors probe; its ANCHOR_POINTS most head-like points
            # per scan are the anchors (pseudo-labels: 15 there, -1 elsewhere)
            P0, P0te = _normalised(
                [descriptors(p, sc, ag, a.geodesic) for p in tr["points"]],
                {c: [descriptors(p, sc, ag, a.geodesic) for p in d["points"]]
                 for c, d in tests.items()})
            m0 = _fit_descriptor_mlp(P0, tr["labels"], a.steps or 2000)
            with torch.no_grad():
                for c, X in {"train": P0, **P0te}.items():
                    top = m0(X).log_softmax(-1)[..., 15].topk(ANCHOR_POINTS, dim=1).indices
                    lab = torch.full(X.shape[:2], -1, dtype=torch.long)
                    anchor_labels[c] = lab.scatter(1, top, 15)
        Dtr, Dte = _normalised(
            [descriptors(p, sc, ag, a.geodesic, y, a.anchors)
             for p, y in zip(tr["points"], anchor_labels["train"], strict=True)],
            {c: [descriptors(p, sc, ag, a.geodesic, y, a.anchors)
                 for p, y in zip(d["points"], anchor_labels[c], strict=True)]
             for c, d in tests.items()})
    if a.probe in ("net", "epn") and _net_kwargs(model).get("seg_descriptors"):
        key += "_seg_descriptors"
    key += "_oracle" if a.oracle else ""
    key += "" if a.num_points is None else f"_{a.num_points}pts"
    if a.probe == "descriptors":
        m = _fit_descriptor_mlp(Dtr, tr["labels"], a.steps or 2000)
        with torch.no_grad():
            preds = {c: m(X).argmax(-1) for c, X in Dte.items()}
    else:
        if a.probe == "net_desc":
            m = NetDescSeg(_net_kwargs(model), Dtr.shape[-1])
        elif a.probe == "net":
            m = NetSeg(_net_kwargs(model))
        elif a.probe == "epn":
            m = NetSeg({**_net_kwargs(model), **EPN_NET})
        else:
            m = VNLocalSeg()

        def call(x: torch.Tensor, dsc: torch.Tensor | None) -> torch.Tensor:
            return m(x) if dsc is None else m(x, dsc)
        opt = torch.optim.Adam(m.parameters(), 1e-3)
        g = torch.Generator().manual_seed(1)
        for _ in range(a.steps or 3000):
            i = torch.randint(len(tr["points"]), (4,), generator=g)
            R = random_rotation_matrix(4, generator=g)
            x = tr["points"][i]
            x = (x - x.mean(1, keepdim=True)) @ R.transpose(1, 2)
            logits = call(x, None if Dtr is None else Dtr[i])
            loss = F.cross_entropy(logits.reshape(-1, 22), tr["labels"][i].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        m.eval()
        with torch.no_grad():
            preds = {c: torch.cat([call(d["points"][j:j + 8],
                                        None if Dte is None else Dte[c][j:j + 8]).argmax(-1)
                                   for j in range(0, len(d["points"]), 8)])
                     for c, d in tests.items()}
    res = {"steps": a.steps or (2000 if a.probe == "descriptors" else 3000),
           "train_scans": len(tr["points"]), "seconds": round(time.time() - t0, 1),
           **{c: scores(p, tests[c]["labels"]) for c, p in preds.items()}}
    for c, d in tests.items():
        res[c]["cross_part_knn_edges"] = cross_part_edges(d["points"], d["labels"])
    out = Path(a.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    old[key] = res
    write_json_atomic(out, old)
    print(key, json.dumps({c: {k: round(v, 3) for k, v in res[c].items() if k != "recall"}
                           for c in tests}))


def _normalised(train: list[torch.Tensor], tests: dict[str, list[torch.Tensor]]):
    """Stack per-scan descriptors; standardise with the training scans' mean and std."""
    Dtr = torch.stack(train)
    flat = Dtr.reshape(-1, Dtr.shape[-1])
    mu, sd = flat.mean(0), flat.std(0).clamp_min(1e-9)
    return (Dtr - mu) / sd, {c: (torch.stack(v) - mu) / sd for c, v in tests.items()}


def _fit_descriptor_mlp(D: torch.Tensor, labels: torch.Tensor, steps: int) -> nn.Module:
    """The ``descriptors`` probe's MLP: Adam on batches of 1024 points for ``steps``."""
    m = nn.Sequential(nn.Linear(D.shape[-1], 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                      nn.Linear(128, 22))
    opt = torch.optim.Adam(m.parameters(), 1e-3, weight_decay=1e-4)
    A, Y = D.reshape(-1, D.shape[-1]), labels.reshape(-1)
    for _ in range(steps):
        i = torch.randint(len(A), (1024,))
        loss = F.cross_entropy(m(A[i]), Y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m


def _net_kwargs(module) -> dict:
    """The ``ArtEqNet`` keyword arguments of the demo config's module."""
    h = module.hparams
    return {"backbone": h.backbone, "num_betas": h.num_betas, **dict(h.net or {})}


if __name__ == "__main__":
    main()
