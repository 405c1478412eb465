"""Test-time assembly by fracture-surface segmentation + registration of the fracture points.

Measured in ``benchmarks/assembly_fracture_registration.py`` (results in
``benchmarks/results/assembly_fracture_registration.json``) on the demo's held-out objects.

Stages (no network needed; with a network its pose of the anchor fixes the frame):

1. Per-point features invariant to each piece's pose (:func:`fracture_features`): local
   covariance eigenvalue ratios, normal variation and local convexity at several
   neighbourhood sizes, distance to the piece's centroid, and open3d FPFH at two radii;
   lengths in units of the object's scale (mean RMS radius of its pieces).
2. A small MLP (:class:`FractureClassifier`, weights shipped as
   ``fracture_classifier.npz``, trained by ``benchmarks/assembly_fracture_registration.py
   --save-weights``) marks the fracture-surface points.
3. Per pair of pieces: point-to-plane ICP of the fracture points of one piece (normals
   flipped) onto the other's, started from ``2 * n_theta`` poses that put the two fracture
   patches' PCA frames face to face (normal against normal, every in-plane angle); the
   best start by fracture-surface overlap is scored by overlap minus penetration
   (:func:`~geo3d.apps.assembly._plausibility.contact_penetration`) (:func:`pair_poses`).
4. Greedy merging of the best-scoring pair of clusters, with the fracture points split
   into smooth patches (one per cut) so that a piece cut twice is registered by the right
   cut (:func:`fracture_assembly`, ``strategy="merge"``; ``"tree"``: a maximum spanning
   tree from the anchor over the pair scores of whole fracture sets).

Every stage uses only pose-invariant quantities or frames that move with the piece (its
centroid and the PCA frames of its fracture points), so the assembled object does not
depend on the input pieces' poses (up to floating-point ties).

Reference: Y. Lu et al., "Jigsaw: Learning to Assemble Multiple Fractured Objects",
NeurIPS 2023, arXiv:2305.17975 (fracture-surface segmentation, then registration of the
fracture surfaces only); R. B. Rusu et al., "Fast Point Feature Histograms (FPFH) for 3D
registration", ICRA 2009, doi:10.1109/ROBOT.2009.5152473.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["fracture_features", "FractureClassifier", "pair_poses", "fracture_assembly",
           "fracture_patches", "outward_faces",
           "object_scale", "CLASSIFIER_PATH", "FEATURE_VERSION"]

#: the shipped classifier's weights (npz, no pickle)
CLASSIFIER_PATH = Path(__file__).with_name("fracture_classifier.npz")
#: version of :func:`fracture_features` the weights were trained for
FEATURE_VERSION = 2
_KS = (8, 16, 32, 64)
#: fewest points per piece the features need (more than the largest neighbourhood)
MIN_POINTS = max(_KS) + 1
_FPFH_RADII = (0.15, 0.3)


class MissingDependencyError(ImportError):
    """An optional dependency of this method is not installed (the CLI reports it in one
    line)."""


def _o3d() -> Any:
    try:
        import open3d as o3d
    except ImportError as err:
        raise MissingDependencyError("fracture registration needs open3d: "
                                     "pip install 'geo3d[o3d]' (open3d>=0.17)") from err
    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    return o3d


def _shape(x: object) -> object:
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def _real(name: str, v: object, *, lo: float, strict: bool) -> float:
    """A finite real number (not a bool) ``> lo`` (``strict``) or ``>= lo``."""
    ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(
        v, (bool, np.bool_)) and math.isfinite(v) and (v > lo if strict else v >= lo)
    if not ok:
        raise ValueError(f"{name}: expected a finite number {'>' if strict else '>='} {lo}, "
                         f"got {v!r}")
    return float(v)


def _int(name: str, v: object, lo: int) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)) or v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    return int(v)


def _mask(name: str, m: Any, n: int) -> np.ndarray:
    a = np.asarray(m.cpu() if isinstance(m, Tensor) else m)
    if a.shape != (n,) or a.dtype != np.bool_:
        raise ValueError(f"{name}: expected a bool mask of shape ({n},), got "
                         f"{a.shape} {a.dtype}")
    if a.sum() < 3:
        raise ValueError(f"{name}: expected at least 3 fracture points, got {int(a.sum())}")
    return a


def _as_np(name: str, x: Any, n: int | None = None) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64) if isinstance(x, np.ndarray) else None
    if a is None or a.ndim != 2 or a.shape[1] != 3 or (n is not None and len(a) != n):
        want = f"({n}, 3)" if n is not None else "(N, 3)"
        raise ValueError(f"{name}: expected an array of shape {want}, got {_shape(x)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite values, got NaN/inf")
    return a


#: largest translation (object scales) an ICP run of :func:`pair_poses` may end at, in the
#: fracture surfaces' centred frames; larger means it diverged
_MAX_SHIFT = 3.0


def object_scale(points: Sequence[np.ndarray]) -> float:
    """Mean RMS distance of each piece's points to its centroid (pose-invariant)."""
    return float(np.mean([np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean()) for p in points]))


def outward_faces(mesh: Any) -> Any:
    """A copy of a trimesh piece with consistent, outward face winding.

    The fracture classifier and the contact tests read the sampled faces' normals: a piece
    exported with inverted (or mixed) winding turned every normal test around and gave
    wrong assemblies without any warning (fresh-user test, 2026-11-30: one inverted piece
    misplaced pieces by 0.28-0.50 of the object's size). ``trimesh.repair.fix_normals``
    makes the winding consistent over each connected surface and outward for closed ones
    (by the sign of the volume); open surfaces keep a consistent but arbitrary side.

    Args:
        mesh: a ``trimesh.Trimesh``.

    Returns:
        The repaired copy (the input is left as it is).
    """
    import trimesh

    out = mesh.copy()
    trimesh.repair.fix_normals(out)
    return out


def _fpfh(p: np.ndarray, n: np.ndarray, radius: float) -> np.ndarray:
    o3d = _o3d()
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
    pc.normals = o3d.utility.Vector3dVector(n)
    f = o3d.pipelines.registration.compute_fpfh_feature(
        pc, o3d.geometry.KDTreeSearchParamHybrid(radius=radius, max_nn=100))
    return np.asarray(f.data).T.copy()


def fracture_features(points: Any, normals: Any, scale: float) -> np.ndarray:
    """Rotation- and translation-invariant per-point features of one piece.

    Args:
        points: shape :math:`(N, 3)`, N >= 65 (the largest neighbourhood is 64 points).
        normals: outward unit normals, shape :math:`(N, 3)`.
        scale: the object's length scale (:func:`object_scale`), > 0.

    Returns:
        float32 array :math:`(N, 94)`: per neighbourhood size k in (8, 16, 32, 64) the
        covariance eigenvalue ratios, |normal . PCA normal| and the normal variation (1 -
        mean, std, min of the neighbours' normal dot products); FPFH (33 bins / 100) at
        radii 0.15 and 0.3 ``scale``. (Lengths relative to the object's scale, e.g. the
        neighbours' spread, are left out: they made the classifier depend on the sampling
        density and the object's shape, AUC 0.60 -> 0.74 on an unseen box.)

    Raises:
        ValueError: bad shapes, non-finite values, too few points, ``scale`` <= 0.

    Example:
        >>> g = np.random.default_rng(0); p = g.normal(size=(100, 3))
        >>> n = p / np.linalg.norm(p, axis=1, keepdims=True)
        >>> fracture_features(p, n, 1.0).shape
        (100, 94)
    """
    from scipy.spatial import cKDTree

    p = _as_np("points", points)
    n = _as_np("normals", normals, len(p))
    if len(p) <= max(_KS):
        raise ValueError(f"points: expected more than {max(_KS)} points, got {len(p)}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a finite number > 0, got {scale!r}")
    s = float(scale)
    _, idx = cKDTree(p).query(p, k=max(_KS) + 1)
    out = []
    for k in _KS:
        nb, nn = p[idx[:, 1:k + 1]], n[idx[:, 1:k + 1]]
        c = nb.mean(1)
        d = nb - c[:, None]
        w, v = np.linalg.eigh(np.einsum("nki,nkj->nij", d, d) / k)  # ascending
        w = np.clip(w, 1e-18, None)
        sw = w.sum(1)
        dots = np.einsum("nkj,nj->nk", nn, n)
        out += [w[:, 0] / sw, w[:, 1] / sw, (w[:, 2] - w[:, 1]) / w[:, 2],
                np.abs((v[:, :, 0] * n).sum(1)), 1 - dots.mean(1), dots.std(1), dots.min(1)]
    f = [np.stack(out, 1)] + [_fpfh(p, n, r * s) / 100.0 for r in _FPFH_RADII]
    return np.concatenate(f, 1).astype(np.float32)


class FractureClassifier:
    """Per-point fracture-surface probability from :func:`fracture_features` (a 3-layer
    ReLU MLP with input standardisation, evaluated in numpy float64).

    Args:
        weights: dict of arrays ``mu, sd, w0, b0, w1, b1, w2, b2`` (``w*`` of shape
            (out, in)) and ``meta`` (a JSON string with ``feature_version``).

    Raises:
        ValueError: missing arrays, mismatching shapes, another feature version.

    Example:
        >>> clf = FractureClassifier.load()  # the shipped weights
        >>> clf.num_features
        94
    """

    _KEYS = ("mu", "sd", "w0", "b0", "w1", "b1", "w2", "b2")

    def __init__(self, weights: dict[str, np.ndarray]):
        miss = [k for k in self._KEYS + ("meta",) if k not in weights]
        if miss:
            raise ValueError(f"weights: expected arrays {self._KEYS + ('meta',)}, missing {miss}")
        self.w = {k: np.asarray(weights[k], dtype=np.float64) for k in self._KEYS}
        self.meta = json.loads(str(weights["meta"]))
        if self.meta.get("feature_version") != FEATURE_VERSION:
            raise ValueError(f"weights: expected feature_version {FEATURE_VERSION}, got "
                             f"{self.meta.get('feature_version')!r}")
        self.num_features = int(self.w["mu"].shape[0])
        if self.w["w0"].shape[1] != self.num_features or self.w["w2"].shape[0] != 1:
            raise ValueError(f"weights: expected w0 (H, {self.num_features}) and w2 (1, H), got "
                             f"{self.w['w0'].shape} and {self.w['w2'].shape}")

    @classmethod
    def load(cls, path: str | Path = CLASSIFIER_PATH) -> FractureClassifier:
        """Weights from an ``.npz`` file (read with ``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files})

    def save(self, path: str | Path) -> None:
        """Atomic write of the weights as ``.npz`` (temp file + rename)."""
        import os
        import tempfile

        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        np.savez(tmp, meta=np.array(json.dumps(self.meta)),
                 **{k: v.astype(np.float32) for k, v in self.w.items()})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from others
        os.replace(tmp, path)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Fracture probabilities, shape :math:`(N,)` float64, of features :math:`(N, F)`."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"features: expected shape (N, {self.num_features}), got "
                             f"{_shape(features)}")
        w = self.w
        h = (x - w["mu"]) / w["sd"]
        h = np.maximum(h @ w["w0"].T + w["b0"], 0)
        h = np.maximum(h @ w["w1"].T + w["b1"], 0)
        z = (h @ w["w2"].T + w["b2"])[:, 0]
        return 1 / (1 + np.exp(-z))


def _frame(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid and principal axes (columns, ascending variance) of ``p``, a rotation.

    The signs of the two major axes are fixed by the third moments along them and the
    minor axis is their cross product, so the frame rotates with the points (``eigh``'s
    own signs are arbitrary: they changed the order of the ICP starts, and with it which
    of several equally scored starts won, when a piece was rotated). A third moment of
    exactly 0 (a point-symmetric set) leaves that sign to ``eigh``."""
    c = p.mean(0)
    _, U = np.linalg.eigh(np.cov((p - c).T))
    third = (((p - c) @ U[:, 1:]) ** 3).sum(0)
    U[:, 1:] *= np.where(third < 0, -1.0, 1.0)
    U[:, 0] = np.cross(U[:, 1], U[:, 2])
    return c, U


def _rot_x(t: float) -> np.ndarray:
    c, s = math.cos(t), math.sin(t)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _overlap(T: np.ndarray, A: np.ndarray, An: np.ndarray, Bn: np.ndarray, treeB: Any,
             eps: float) -> float:
    q, qn = A @ T[:3, :3].T + T[:3, 3], An @ T[:3, :3].T
    d, i = treeB.query(q)
    return float(((d < eps) & ((qn * Bn[i]).sum(1) < -0.5)).mean())


def _pair_score(T, pa, na, fa, pb, nb, fb, eps, pen_radius, pen_depth, pen_weight) -> float:
    from geo3d.apps.assembly._plausibility import contact_penetration
    from scipy.spatial import cKDTree

    qa, qn = pa @ T[:3, :3].T + T[:3, 3], na @ T[:3, :3].T
    A, An, B, Bn = qa[fa], qn[fa], pb[fb], nb[fb]
    da, ia = cKDTree(B).query(A)
    db, ib = cKDTree(A).query(B)
    oa = ((da < eps) & ((An * Bn[ia]).sum(1) < -0.5)).mean()
    ob = ((db < eps) & ((Bn * An[ib]).sum(1) < -0.5)).mean()
    _, pen = contact_penetration(torch.from_numpy(qa), torch.from_numpy(qn),
                                 torch.from_numpy(pb), torch.from_numpy(nb),
                                 contact_radius=eps, pen_radius=pen_radius, pen_depth=pen_depth)
    return float((oa + ob) / 2 - pen_weight * float(pen) / (len(pa) + len(pb)))


def _icp_candidates(pa: np.ndarray, na: np.ndarray, ma: np.ndarray, pb: np.ndarray,
                    nb: np.ndarray, mb: np.ndarray, scale: float, n_theta: int,
                    canonical: bool = False, tight_iterations: int | None = None,
                    quantize: bool = False) -> Any:
    """The ``2 * n_theta`` multistart ICP results of the points ``ma`` of a (normals
    flipped) onto the points ``mb`` of b (checked arguments).

    Everything runs in the principal frames of the two point sets (they rotate with the
    pieces), so the ICP iterations see the same coordinates whatever the input poses:
    open3d's point-to-plane step (Euler-angle update about the origin) is not
    rotation-covariant, and poorly converged runs ended elsewhere when a piece was rotated.

    Returns the transforms a -> b in the input frames, or with ``canonical=True`` the
    transforms in the principal frames, the pieces in those frames and the two frames.
    """
    o3d = _o3d()
    reg = o3d.pipelines.registration
    cs, Us = _frame(pa[ma])
    ct, Ut = _frame(pb[mb])
    pa, na, pb, nb = (pa - cs) @ Us, na @ Us, (pb - ct) @ Ut, nb @ Ut
    if quantize:
        # Canonical coordinates of a moved piece equal the unmoved ones up to rounding
        # (~1e-16 relative), but multistart ICP amplifies such differences (some starts
        # are chaotic) into other candidates. Snapped to a grid of 2^-30 of the object's
        # scale they are bit-identical except at the rare grid boundaries.
        q = float(scale) * 2.0 ** -30
        pa, pb = np.round(pa / q) * q, np.round(pb / q) * q
        na, nb = np.round(na * 2.0 ** 30) * 2.0 ** -30, np.round(nb * 2.0 ** 30) * 2.0 ** -30
    Fa, Fb = np.eye(4), np.eye(4)  # canonical -> input frame
    Fa[:3, :3], Fa[:3, 3], Fb[:3, :3], Fb[:3, 3] = Us, cs, Ut, ct
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pa[ma]))
    src.normals = o3d.utility.Vector3dVector(-na[ma])
    tgt = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pb[mb]))
    tgt.normals = o3d.utility.Vector3dVector(nb[mb])
    coarse = reg.ICPConvergenceCriteria(max_iteration=30)
    # tight_iterations: the last stage runs to a tight convergence, so that starts that
    # reach the same basin end at the same pose (with 30 iterations they stopped ~0.4
    # degrees apart, and which of them won then changed with a piece's pose by rounding)
    fine = coarse if tight_iterations is None else reg.ICPConvergenceCriteria(
        relative_fitness=1e-12, relative_rmse=1e-12, max_iteration=tight_iterations)
    out = []
    for S in (np.diag([-1.0, 1, -1]), np.eye(3)):
        for k in range(n_theta):
            T = np.eye(4)
            T[:3, :3] = S @ _rot_x(2 * math.pi * k / n_theta)
            for dist, crit in ((0.1, coarse), (0.03, fine)):
                T2 = np.asarray(reg.registration_icp(
                    src, tgt, dist * scale, T, reg.TransformationEstimationPointToPlane(),
                    crit).transformation)
                # Both point sets are centred at the origin here, so a true contact moves
                # a by at most about the object's size. Point-to-plane ICP on a nearly
                # flat patch is ill-conditioned along the plane and can diverge (seen:
                # translations of 1e5 object sizes, which then scored 0 = "no contact, no
                # penetration" and beat every real contact); such a run is discarded and
                # the start kept.
                if np.isfinite(T2).all() and np.linalg.norm(T2[:3, 3]) <= _MAX_SHIFT * scale:
                    T = T2
            out.append(T)
    if canonical:
        return out, (pa, na, pb, nb), (Fa, Fb)
    return [Fb @ T @ np.linalg.inv(Fa) for T in out]


def pair_poses(pa: np.ndarray, na: np.ndarray, fa: np.ndarray, pb: np.ndarray, nb: np.ndarray,
               fb: np.ndarray, scale: float, *, n_theta: int = 12, eps: float = 0.03,
               top: int = 4, pen_weight: float = 1.0) -> tuple[float, np.ndarray]:
    """Best rigid transform placing piece a against piece b by their fracture points.

    Args:
        pa, na: points and outward normals of piece a, :math:`(N_a, 3)`; ``fa`` its
            fracture mask :math:`(N_a,)` bool (at least 3 points); the same for b.
        scale: the object's scale (:func:`object_scale`); ``eps`` (contact distance,
            0.03) and the ICP distances (0.1, 0.03) are in its units.
        n_theta: in-plane angles per face-to-face start (ICP runs: ``2 * n_theta``).
        top: starts (best by fracture overlap) scored with the penetration term.
        pen_weight: weight of the penetration fraction in the score.

    Returns:
        ``(score, T)``: overlap minus ``pen_weight`` times the penetration fraction, and
        :math:`(4, 4)` float64 ``T`` with ``T @ [x_a, 1]`` in b's frame.

    Raises:
        ValueError: bad shapes or NaN/inf points/normals, masks that are not bool or have
            fewer than 3 fracture points, ``scale``/``eps`` not finite and > 0,
            ``n_theta``/``top`` not ints >= 1, ``pen_weight`` not finite and >= 0.
        RuntimeError: a non-finite score or transform (ICP diverged).

    Example:
        >>> # see tests/apps/assembly/test_fracture_registration.py (a box cut in two)
    """
    from scipy.spatial import cKDTree

    pa = _as_np("pa", pa)
    na = _as_np("na", na, len(pa))
    pb = _as_np("pb", pb)
    nb = _as_np("nb", nb, len(pb))
    fa, fb = _mask("fa", fa, len(pa)), _mask("fb", fb, len(pb))
    scale = _real("scale", scale, lo=0, strict=True)
    n_theta = _int("n_theta", n_theta, 1)
    eps = _real("eps", eps, lo=0, strict=True)
    top = _int("top", top, 1)
    pen_weight = _real("pen_weight", pen_weight, lo=0, strict=False)

    Ts, (pa, na, pb, nb), (Fa, Fb) = _icp_candidates(pa, na, fa, pb, nb, fb, scale,
                                                      n_theta, canonical=True)
    A, An, B, Bn = pa[fa], na[fa], pb[fb], nb[fb]
    treeB = cKDTree(B)
    cands = [(_overlap(T, A, An, Bn, treeB, eps * scale), i, T) for i, T in enumerate(Ts)]
    cands.sort(key=lambda c: (-c[0], c[1]))
    best = None
    for _, _, T in cands[:top]:
        sc = _pair_score(T, pa, na, fa, pb, nb, fb, eps * scale, 0.2 * scale, 0.02 * scale,
                         pen_weight)
        if best is None or sc > best[0]:
            best = (sc, T)
    sc, T = best[0], Fb @ best[1] @ np.linalg.inv(Fa)
    if not (math.isfinite(sc) and np.isfinite(T).all()):
        raise RuntimeError(f"pair_poses: non-finite result (score {sc})")
    return sc, T


def fracture_patches(points: Any, normals: Any, mask: Any, *, k: int = 8,
                     max_angle: float = 30.0, min_points: int = 10) -> list[np.ndarray]:
    """Split the fracture points of one piece into smooth patches.

    A piece cut more than once has one fracture surface per cut, each facing a different
    neighbour; registering the whole set against a neighbour's then fails (the two sets
    only partly correspond, and their principal frames, which seed the ICP, differ).
    Patches are the connected components of the ``k``-nearest-neighbour graph of the
    fracture points, keeping only edges whose two normals differ by less than
    ``max_angle`` degrees: along a wavy cut neighbouring normals turn slowly, across the
    crease between two cuts they jump.

    Args:
        points: :math:`(N, 3)` points of the piece; ``normals`` :math:`(N, 3)` unit normals.
        mask: :math:`(N,)` bool fracture mask.
        k: neighbours per fracture point (int >= 1).
        max_angle: largest normal angle (degrees, in (0, 180)) of a graph edge.
        min_points: smaller components are dropped (int >= 1).

    Returns:
        Boolean masks :math:`(N,)` of the patches, largest first (ties: lowest first
        point); empty if no component has ``min_points`` points. Pose-invariant: it uses
        distances and normal dot products only.

    Raises:
        ValueError: bad shapes, non-finite values, a mask that is not bool, bad ``k``,
            ``max_angle`` or ``min_points``.

    Example:
        >>> p = np.array([[x, y, 0.0] for x in range(4) for y in range(4)] +
        ...              [[x, 0.0, z] for x in range(4) for z in range(1, 4)], float)
        >>> n = np.array([[0, 0, 1.0]] * 16 + [[0, 1.0, 0]] * 12)
        >>> [int(m.sum()) for m in fracture_patches(p, n, np.ones(28, bool), k=4)]
        [16, 12]

    Source: this project (issue 17); region growing on normals as in T. Rabbani et al.,
    "Segmentation of point clouds using smoothness constraint", ISPRS 2006.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    p = _as_np("points", points)
    n = _as_np("normals", normals, len(p))
    m = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask)
    if m.shape != (len(p),) or m.dtype != np.bool_:
        raise ValueError(f"mask: expected a bool mask of shape ({len(p)},), got "
                         f"{m.shape} {m.dtype}")
    k = _int("k", k, 1)
    min_points = _int("min_points", min_points, 1)
    max_angle = _real("max_angle", max_angle, lo=0, strict=True)
    if max_angle >= 180:
        raise ValueError(f"max_angle: expected degrees in (0, 180), got {max_angle!r}")
    idx = np.flatnonzero(m)
    if len(idx) < min_points:
        return []
    q, qn = p[idx], n[idx]
    kk = min(k + 1, len(q))
    _, nb = cKDTree(q).query(q, kk)
    nb = nb.reshape(len(q), kk)
    r = np.repeat(np.arange(len(q)), kk - 1)
    c = nb[:, 1:].ravel()
    ok = (qn[r] * qn[c]).sum(1) > math.cos(math.radians(max_angle))
    graph = csr_matrix((np.ones(int(ok.sum())), (r[ok], c[ok])), shape=(len(q), len(q)))
    _, comp = connected_components(graph, directed=False)
    out = []
    for j in np.unique(comp):
        sel = idx[comp == j]
        if len(sel) >= min_points:
            mk = np.zeros(len(p), dtype=bool)
            mk[sel] = True
            out.append(mk)
    out.sort(key=lambda mk: (-int(mk.sum()), int(np.argmax(mk))))
    return out


def _spacing(x: np.ndarray) -> float:
    """Median distance of the points ``x`` to their nearest other point (0 if < 2)."""
    from scipy.spatial import cKDTree

    if len(x) < 2:
        return 0.0
    return float(np.median(cKDTree(x).query(x, 2)[0][:, 1]))


def _contacts(T: np.ndarray, pa: np.ndarray, na: np.ndarray, fa: np.ndarray, pb: np.ndarray,
              nb: np.ndarray, fb: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Fracture points of a (moved by ``T``) and of b that touch the other side: the
    nearest fracture point of the other side has an opposite normal (dot < -0.5), the
    point lies within ``eps`` of that neighbour's tangent plane, and the neighbour within
    ``max(eps, 2 h)`` of the point, ``h`` being the other side's median sample spacing. (A plain distance threshold ``eps`` counted only the
    samples that happen to face a close sample: on 600-point pieces of a box the true
    pose of a piece touched with 33 of 320 fracture points.) Returns the two boolean
    arrays over ``fa``'s and ``fb``'s points."""
    from scipy.spatial import cKDTree

    A, An = pa[fa] @ T[:3, :3].T + T[:3, 3], na[fa] @ T[:3, :3].T
    B, Bn = pb[fb], nb[fb]
    if len(A) == 0 or len(B) == 0:
        return np.zeros(len(A), dtype=bool), np.zeros(len(B), dtype=bool)

    def touching(X: np.ndarray, Xn: np.ndarray, Y: np.ndarray, Yn: np.ndarray) -> np.ndarray:
        d, i = cKDTree(Y).query(X)
        plane = np.abs(((X - Y[i]) * Yn[i]).sum(1))
        return (d < max(eps, 2 * _spacing(Y))) & (plane < eps) & ((Xn * Yn[i]).sum(1) < -0.5)

    return touching(A, An, B, Bn), touching(B, Bn, A, An)


def _merge_assembly(pts: list[np.ndarray], nrm: list[np.ndarray], frac: list[np.ndarray],
                    s: float, *, min_points: int, n_theta: int, eps: float, pen_weight: float,
                    top: int = 6, max_angle: float = 30.0) -> tuple[dict[int, np.ndarray], ...]:
    """Greedy agglomerative assembly (see :func:`fracture_assembly`). Returns the final
    clusters as dicts ``piece -> (4, 4)`` pose in the cluster's frame."""
    from geo3d.apps.assembly._plausibility import contact_penetration

    total = max(sum(int(f.sum()) for f in frac), 1)
    clusters: list[dict[str, Any]] = [
        {"mem": {i: np.eye(4)}, "p": pts[i], "n": nrm[i], "f": frac[i].copy()}
        for i in range(len(pts))]

    def patches(C: dict[str, Any]) -> list[np.ndarray]:
        """The cluster's fracture patches plus its whole exposed fracture set (a cut that
        faces a merged cluster), computed once per cluster."""
        if "patches" not in C:
            lst = fracture_patches(C["p"], C["n"], C["f"], max_angle=max_angle,
                                   min_points=min_points)
            if C["f"].sum() >= min_points and not any((mk == C["f"]).all() for mk in lst):
                lst.append(C["f"])
            C["patches"] = lst
        return C["patches"]

    def best_pose(A: dict[str, Any], B: dict[str, Any]) -> tuple[float, np.ndarray | None]:
        pa_, pb_ = patches(A), patches(B)
        cands = []
        for ma in pa_:
            for mb in pb_:
                for T in _icp_candidates(A["p"], A["n"], ma, B["p"], B["n"], mb, s, n_theta,
                                         tight_iterations=100, quantize=True):
                    ca, cb = _contacts(T, A["p"], A["n"], A["f"], B["p"], B["n"], B["f"],
                                       eps * s)
                    cands.append((int(ca.sum() + cb.sum()), len(cands), T))
        cands.sort(key=lambda c: (-c[0], c[1]))
        best: tuple[float, np.ndarray | None] = (-math.inf, None)
        for cnt, _, T in cands[:top]:
            qa, qn = A["p"] @ T[:3, :3].T + T[:3, 3], A["n"] @ T[:3, :3].T
            _, pen = contact_penetration(
                torch.from_numpy(qa), torch.from_numpy(qn), torch.from_numpy(B["p"]),
                torch.from_numpy(B["n"]), contact_radius=eps * s, pen_radius=0.2 * s,
                pen_depth=0.02 * s)
            sc = cnt / total - pen_weight * float(pen) / (len(qa) + len(B["p"]))
            if sc > best[0]:
                best = (sc, T)
        return best

    alive = list(range(len(clusters)))
    memo: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, Any]] = {}
    while len(alive) > 1:
        res = []
        for x in range(len(alive)):
            for y in range(x + 1, len(alive)):
                a, b = alive[x], alive[y]
                key = (tuple(sorted(clusters[a]["mem"])), tuple(sorted(clusters[b]["mem"])))
                if key not in memo:
                    memo[key] = best_pose(clusters[a], clusters[b])
                res.append((memo[key][0], -min(key[0]), -min(key[1]), a, b, memo[key][1]))
        sc, _, _, a, b, T = max(res, key=lambda r: r[:3])
        if T is None or not sc > 0:
            break
        A, B = clusters[a], clusters[b]  # T: a's frame -> b's frame; a joins b's frame
        pa, na = A["p"] @ T[:3, :3].T + T[:3, 3], A["n"] @ T[:3, :3].T
        ca, cb = _contacts(np.eye(4), pa, na, A["f"], B["p"], B["n"], B["f"], eps * s)
        fa, fb = A["f"].copy(), B["f"].copy()
        fa[np.flatnonzero(A["f"])[ca]] = False  # the touching fracture points are inside now
        fb[np.flatnonzero(B["f"])[cb]] = False
        clusters.append({"mem": {**{i: T @ M for i, M in A["mem"].items()}, **B["mem"]},
                         "p": np.concatenate([B["p"], pa]), "n": np.concatenate([B["n"], na]),
                         "f": np.concatenate([fb, fa])})
        alive = [c for c in alive if c not in (a, b)] + [len(clusters) - 1]
    return tuple(clusters[c]["mem"] for c in alive)


def fracture_assembly(
    points: Sequence[Any],
    normals: Sequence[Any],
    anchor: int,
    *,
    classifier: FractureClassifier | None = None,
    labels: Sequence[Any] | None = None,
    threshold: float | None = None,
    min_points: int = 10,
    n_theta: int = 12,
    eps: float = 0.03,
    pen_weight: float = 1.0,
    strategy: str = "merge",
    initial: Sequence[Any] | Any | None = None,
) -> tuple[Tensor, Tensor]:
    """Poses of the pieces in the anchor's frame from their fracture surfaces.

    Args:
        points: per piece its points :math:`(N_i, 3)` (arrays or tensors, any frames;
            N_i > 64), at least 2 pieces.
        normals: per piece outward unit normals :math:`(N_i, 3)`.
        anchor: index of the piece that stays put.
        classifier: fracture classifier (default: the shipped weights).
        labels: optional per-piece fracture masks :math:`(N_i,)` used instead of the
            classifier (the oracle).
        threshold: probability above which a point is a fracture point (default: the
            classifier's ``meta["threshold"]``, chosen at training time, else 0.5).
        min_points: pairs where a side has fewer fracture points get no edge (an int
            >= 3: ICP needs 3 points).
        n_theta, eps, pen_weight: see :func:`pair_poses`.
        strategy: ``"merge"`` (default) or ``"tree"`` (see below).
        initial: optional fallback poses :math:`(P, 4, 4)` (e.g. the network's), each
            mapping piece i's input coordinates into one common frame; pieces the
            registration does not connect to the anchor are placed by them (below).

    Strategies. ``"tree"``: per pair of pieces the best pose of :func:`pair_poses` (all
    fracture points of one piece registered onto all of the other's), then a maximum
    spanning tree from the anchor over the pair scores. It fails when a piece was cut
    more than once: its fracture points then face several neighbours, only part of
    them correspond to any one neighbour, and the principal frames that seed the ICP do
    not match (on the demo's held-out 3-piece objects, with true fracture labels, none
    of the 24 ICP runs of most touching pairs was within 15 degrees). ``"merge"``: the
    fracture points of each piece are split into smooth patches
    (:func:`fracture_patches`); per pair of clusters (at first, single pieces) every pair
    of patches (and the whole exposed fracture sets) is registered by the same
    multistart ICP; the best candidates by the number of touching fracture points are
    scored by that number (over all fracture points of the object) minus the
    penetration fraction; the best-scoring pair of clusters is merged, its touching
    fracture points stop being exposed, and the loop repeats until one cluster is left
    or no pair scores above 0. A merged cluster's remaining fracture surface is then
    again a whole cut (e.g. the two halves of a piece cut twice face the third piece
    together). Measured on the demo's 48 held-out objects (1000 mesh samples per piece,
    ``benchmarks/assembly_fracture_registration.py``): see its results JSON.

    Returns:
        ``(G, frac)``: poses :math:`(P, 4, 4)` float64 with ``G[anchor] = I`` and
        ``G[i] @ [x, 1]`` placing piece i's point ``x`` in the anchor's frame, and the
        fracture probabilities as a list of :math:`(N_i,)` float64 tensors.

    Pieces that no edge reaches (fewer than ``min_points`` fracture points on a side of
    every pair; with ``"merge"``: pieces left outside the anchor's cluster) are placed
    relative to the anchor by ``initial`` (a cluster of several such pieces keeps its own
    registration and is placed by ``initial`` of its lowest-numbered piece); without
    ``initial`` they get only the translation that puts their centroid on the anchor's:
    they keep their input orientation, so for them the result is NOT invariant to a
    rotation of the input (there is no evidence to orient them); a ``RuntimeWarning``
    names them.
    (This was the case of a planar-cut box, where the shipped classifier found 2 and 3
    fracture points: its placement followed the input rotation.) Pieces reached by edges
    are placed invariantly in exact arithmetic: features, fracture frames (signs fixed by
    third moments) and the ICP runs, which work in the fracture surfaces' principal
    frames, all move with the pieces; measured in float64 on the wavy-cut box to 5e-6
    (``tests/apps/assembly/test_fracture_registration_args.py``). Poorly converged ICP
    is, however, discontinuous in its input: on a 400-point wavy box with ``n_theta=4``
    a 1e-14 perturbation of the coordinates moved the placement by 1.46 (box 2.5 across),
    so rounding differences between two poses can give different results there; a
    point-symmetric fracture set (third moment exactly 0) also leaves an axis sign open.

    Raises:
        ValueError: fewer than 2 pieces, bad shapes or NaN/inf values, an ``anchor`` out
            of range, a ``threshold`` outside (0, 1), ``min_points`` not an int >= 3,
            ``n_theta`` not an int >= 1, ``eps`` not finite and > 0, ``pen_weight`` not
            finite and >= 0, ``strategy`` not ``"merge"``/``"tree"``, ``initial`` not
            finite poses of shape (P, 4, 4).
        RuntimeError: non-finite poses (ICP diverged).

    Example:
        >>> # see tests/apps/assembly/test_fracture_registration.py (a box cut in two)
    """
    if isinstance(points, (Tensor, np.ndarray)) or not isinstance(points, Sequence) or \
            len(points) < 2:
        raise ValueError(f"points: expected a list of at least 2 pieces, got {_shape(points)}")
    P = len(points)
    pts = [_as_np(f"points[{i}]", p) for i, p in enumerate(points)]
    if not isinstance(normals, Sequence) or len(normals) != P:
        raise ValueError(f"normals: expected a list of {P} arrays, got {_shape(normals)}")
    nrm = [_as_np(f"normals[{i}]", n, len(p))
           for i, (n, p) in enumerate(zip(normals, pts, strict=True))]
    if not isinstance(anchor, int) or isinstance(anchor, bool) or not 0 <= anchor < P:
        raise ValueError(f"anchor: expected an int in [0, {P}), got {anchor!r}")
    if threshold is not None and not (isinstance(threshold, (int, float)) and
                                      0 < threshold < 1):
        raise ValueError(f"threshold: expected a number in (0, 1), got {threshold!r}")
    if threshold is not None and (isinstance(threshold, bool) or not math.isfinite(threshold)):
        raise ValueError(f"threshold: expected a number in (0, 1), got {threshold!r}")
    min_points = _int("min_points", min_points, 3)
    n_theta = _int("n_theta", n_theta, 1)
    eps = _real("eps", eps, lo=0, strict=True)
    pen_weight = _real("pen_weight", pen_weight, lo=0, strict=False)
    if strategy not in ("merge", "tree"):
        raise ValueError(f"strategy: expected 'merge' or 'tree', got {strategy!r}")
    init = None
    if initial is not None:
        # a (P, 4, 4) tensor or array, or a sequence of (4, 4) tensors/arrays
        try:
            init = np.asarray([np.asarray(t.detach().cpu() if isinstance(t, Tensor) else t,
                                          dtype=np.float64) for t in initial],
                              dtype=np.float64)
        except (TypeError, ValueError):  # not iterable, ragged, not numbers
            init = np.zeros(0)
        if init.shape != (P, 4, 4) or not np.isfinite(init).all() or \
                not np.allclose(init[:, 3], [0, 0, 0, 1]):
            raise ValueError(f"initial: expected finite rigid poses of shape ({P}, 4, 4) "
                             f"(last row 0 0 0 1), got {_shape(initial)}")
    for i, p in enumerate(pts):
        if len(p) <= max(_KS):
            raise ValueError(f"points[{i}]: expected more than {max(_KS)} points, got {len(p)}")
    nrm = [n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12) for n in nrm]
    cent = [p.mean(0) for p in pts]
    pts = [p - c for p, c in zip(pts, cent, strict=True)]
    s = object_scale(pts)
    if not s > 0:
        raise ValueError("points: expected pieces with nonzero extent, got all points equal")
    # Every piece in its own canonical frame (centroid, principal axes with third-moment
    # signs: it moves with the piece), snapped to a power-of-two grid of ~2^-30 of the
    # object's scale: a moved copy of a piece then gives bit-identical coordinates, so the
    # classifier's thresholded labels, the patches and the ICP runs cannot be flipped by
    # rounding (measured before: 7% of the pieces of the demo's held-out objects were
    # placed differently for another draw of the input motions).
    q = 2.0 ** (math.floor(math.log2(s)) - 30)
    canon = []  # canonical -> input frame
    for i in range(P):
        _, U = _frame(pts[i])
        K = np.eye(4)
        K[:3, :3], K[:3, 3] = U, cent[i]
        canon.append(K)
        pts[i] = np.round(pts[i] @ U / q) * q
        nrm[i] = np.round(nrm[i] @ U * 2.0 ** 30) * 2.0 ** -30
    # the scale again, from the snapped coordinates: it sets the FPFH radii and the ICP /
    # contact distances, where a rounding difference moves points across a boundary
    s = object_scale(pts)
    if labels is not None:
        if not isinstance(labels, Sequence) or len(labels) != P:
            raise ValueError(f"labels: expected a list of {P} masks, got {_shape(labels)}")
        prob = []
        for i, (lab, p) in enumerate(zip(labels, pts, strict=True)):
            lab = np.asarray(lab.cpu() if isinstance(lab, Tensor) else lab)
            if lab.shape != (len(p),):
                raise ValueError(f"labels[{i}]: expected shape ({len(p)},), got {lab.shape}")
            if lab.dtype != np.bool_ and not (np.issubdtype(lab.dtype, np.number) and
                                              np.isfinite(lab).all()):
                raise ValueError(f"labels[{i}]: expected a bool mask or finite "
                                 f"probabilities, got dtype {lab.dtype} with NaN/inf or "
                                 "non-numbers")
            prob.append(lab.astype(np.float64))
    else:
        clf = FractureClassifier.load() if classifier is None else classifier
        prob = [clf.predict(fracture_features(p, n, s)) for p, n in zip(pts, nrm, strict=True)]
        if threshold is None:
            threshold = float(clf.meta.get("threshold", 0.5))
    if threshold is None:
        threshold = 0.5
    frac = [q > threshold for q in prob]
    G: dict[int, np.ndarray] = {anchor: np.eye(4)}
    groups: list[dict[int, np.ndarray]] = []  # clusters apart from the anchor's
    if strategy == "merge":
        for mem in _merge_assembly(pts, nrm, frac, s, min_points=min_points, n_theta=n_theta,
                                   eps=eps, pen_weight=pen_weight):
            if anchor in mem:
                Ma = np.linalg.inv(mem[anchor])
                G = {i: Ma @ M for i, M in mem.items()}
                G[anchor] = np.eye(4)  # exactly (Ma @ mem[anchor] rounds)
            else:
                groups.append(mem)
    else:
        edges: dict[tuple[int, int], tuple[float, np.ndarray]] = {}
        for a in range(P):
            for b in range(a + 1, P):
                if frac[a].sum() < min_points or frac[b].sum() < min_points:
                    continue
                edges[(a, b)] = pair_poses(pts[a], nrm[a], frac[a], pts[b], nrm[b], frac[b],
                                           s, n_theta=n_theta, eps=eps, pen_weight=pen_weight)
        while len(G) < P:  # Prim: best-scored edge from the placed pieces (ties: lowest pair)
            cand = [(sc, -i, -j, i, j, T) for (i, j), (sc, T) in edges.items()
                    if (i in G) != (j in G)]
            if not cand:
                break
            _, _, _, i, j, T = max(cand, key=lambda c: c[:3])
            if i in G:  # T: i's frame -> j's frame
                G[j] = G[i] @ np.linalg.inv(T)
            else:
                G[i] = G[j] @ T
    lost = [i for i in range(P) if i not in G]
    if lost and init is not None:
        # centred frame of piece i -> the common frame of `initial`
        Nc = [init[i] @ canon[i] for i in range(P)]  # canonical frame -> common frame
        to_anchor = np.linalg.inv(Nc[anchor])
        for mem in groups if strategy == "merge" else []:
            m = min(mem)
            inv_m = np.linalg.inv(mem[m])
            for i, M in mem.items():
                G[i] = to_anchor @ Nc[m] @ inv_m @ M
        for i in lost:
            if i not in G:  # the tree strategy's unreached pieces, one by one
                G[i] = to_anchor @ Nc[i]
    if lost:
        import warnings

        how = ("they keep their pose relative to the anchor from `initial` (in the "
               "pipeline: the network's poses, usually wrong for such pieces)"
               if init is not None else
               "they keep their input orientation, centred on the anchor")
        warnings.warn(f"fracture_assembly: pieces {lost} could not be registered to the "
                      f"anchor (piece {anchor}): no pair of fracture surfaces touched without "
                      f"interpenetration (fracture points per piece "
                      f"{[int(f.sum()) for f in frac]}, at least {min_points} needed); {how}",
                      RuntimeWarning, stacklevel=2)
    out = np.tile(np.eye(4), (P, 1, 1))
    for i in range(P):  # input -> canonical -> (registration) anchor's canonical -> input
        if i == anchor:
            continue  # exactly the identity (K I K^-1 rounds)
        if i in G:
            out[i] = canon[anchor] @ G[i] @ np.linalg.inv(canon[i])
        else:  # no evidence and no `initial`: input orientation, centroid on the anchor's
            out[i, :3, 3] = cent[anchor] - cent[i]
    if not np.isfinite(out).all():
        raise RuntimeError("fracture_assembly: non-finite poses (ICP diverged)")
    return torch.from_numpy(out), [torch.from_numpy(q) for q in prob]
