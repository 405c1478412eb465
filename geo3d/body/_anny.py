"""A license-free SMPL-layout body model converted from Anny.

Anny (Brégier et al., "Human Mesh Modeling for Anny Body", arXiv:2511.03589; code
github.com/naver/anny, Apache-2.0, CC0 MakeHuman-derived assets) is a parametric human with
13,718 vertices, 104 bones and phenotype parameters (gender, age, muscle, weight, height,
proportions in [0, 1]). :func:`build_anny_smpl_model` turns it into SMPL's layout:

- **Axes**: Anny is z-up, facing -y, left = +x; SMPL is y-up, facing +z, left = +x:
  ``p_smpl = C p_anny`` with ``C = [[1,0,0],[0,0,1],[0,-1,0]]``.
- **Joints**: every Anny bone is assigned to one of SMPL's 24 joints by name
  (:func:`anny_bone_to_smpl_joint`); the skinning weights of a joint are the sums of its bones'
  weights. A joint sits at the head of its group's root bone (the mean of the heads when the
  group has several roots: the toes for the foot, the fingers for the hand).
- **Rest pose**: SMPL's rest pose is a T-pose, Anny's an A-pose. The arms are raised to the
  horizontal by a fixed rotation of each shoulder (measured on the default phenotype), posed
  through Anny's own kinematics; the result is the converted model's rest.
- **Shape**: ``num_samples`` phenotypes drawn uniformly in [0, 1]^6, plus the 64 corners of
  that cube, are posed to the rest pose; ``v_template`` is their mean and ``shapedirs`` the first ``num_betas`` principal
  components scaled by their standard deviations, so ``betas ~ N(0, 1)`` spans the sampled
  phenotype range.
- **J_regressor**: for each joint, an affine combination (weights sum to 1) of the 256
  vertices nearest to it, fitted by ridge least squares to the joints of all samples.
- ``posedirs`` are zero (Anny has no pose correctives: it is pure LBS).

Anny is driven with its ``"world-orient"`` pose parameterization (every bone's world
orientation; heads follow their parents), so a SMPL pose maps onto Anny by giving every bone
of a joint's group that joint's global rotation: :func:`pose_anny_like_smpl`. The builder and
the validation use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo3d._atomic import atomic_write_text
from geo3d.body._kinematics import SMPL_JOINT_NAMES, SMPL_PARENTS, local_to_global
from geo3d.body._safe_io import atomic_save_npz

__all__ = [
    "ANNY_TO_SMPL_AXES",
    "anny_bone_to_smpl_joint",
    "load_anny",
    "pose_anny_like_smpl",
    "build_anny_smpl_model",
    "anny_smpl_model_path",
    "validate_anny_smpl_model",
]

#: ``p_smpl = C p_anny`` (Anny: z up, facing -y; SMPL: y up, facing +z; both: left = +x).
ANNY_TO_SMPL_AXES = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
_BUILDER_VERSION = "geo3d-anny-smpl-3"
_PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")
_LEFT_ARM = (16, 18, 20, 22)
_RIGHT_ARM = (17, 19, 21, 23)


def anny_bone_to_smpl_joint(name: str) -> int:
    """SMPL joint index of an Anny bone (``default`` rig bone names).

    =====================================  ======================
    Anny bones                             SMPL joint
    =====================================  ======================
    root, pelvis.L/R, spine05, spine04     pelvis
    upperleg01/02                          left/right_hip
    lowerleg01/02                          left/right_knee
    foot                                   left/right_ankle
    toe*                                   left/right_foot
    spine03 / spine02 / spine01            spine1 / spine2 / spine3
    neck01-03                              neck
    head, eye.L/R (and any other)          head
    clavicle, shoulder01                   left/right_collar
    upperarm01/02                          left/right_shoulder
    lowerarm01/02                          left/right_elbow
    wrist, metacarpal*                     left/right_wrist
    finger*                                left/right_hand
    =====================================  ======================

    Raises:
        ValueError: a sided bone with an unknown name.

    Example:
        >>> SMPL_JOINT_NAMES[anny_bone_to_smpl_joint("lowerarm02.R")]
        'right_elbow'
    """
    base, _, side = name.partition(".")
    if base in ("root", "pelvis", "spine05", "spine04"):
        return 0
    centre = {"spine03": 3, "spine02": 6, "spine01": 9}
    if base in centre:
        return centre[base]
    if base.startswith("neck"):
        return 12
    if side not in ("L", "R"):
        return 15  # head and its children (eyes, jaw, tongue, ...)
    prefix = "left_" if side == "L" else "right_"
    rules = (
        ("upperleg", "hip"), ("lowerleg", "knee"), ("foot", "ankle"), ("toe", "foot"),
        ("clavicle", "collar"), ("shoulder", "collar"), ("upperarm", "shoulder"),
        ("lowerarm", "elbow"), ("wrist", "wrist"), ("metacarpal", "wrist"), ("finger", "hand"),
        ("eye", None),
    )  # fmt: skip
    for p, joint in rules:
        if base.startswith(p):
            return 15 if joint is None else SMPL_JOINT_NAMES.index(prefix + joint)
    raise ValueError(f"name: expected an Anny bone of the default rig, got {name!r}")


def load_anny(dtype: torch.dtype = torch.float64) -> Any:
    """Instantiate Anny (``pip install 'geo3d[body]'``); the first call builds Anny's cache
    (minutes), later ones take seconds."""
    try:
        import anny
    except ImportError as err:
        raise ImportError(
            f"the Anny body needs the 'anny' package: pip install 'geo3d[body]' ({err})"
        ) from err
    model = anny.Anny()
    return model.to(dtype=dtype)


class _AnnyRig:
    """Anny with SMPL-joint bookkeeping (groups, group roots, T-pose offsets)."""

    def __init__(self, model: Any) -> None:
        self.m = model
        self.dtype = model.template_vertices.dtype
        names = list(model.bone_labels)
        parents = [int(p) for p in model.bone_parents]
        parents[0] = -1
        self.names, self.parents = names, parents
        self.group = torch.tensor([anny_bone_to_smpl_joint(n) for n in names])
        self.group_roots = [
            [
                b
                for b in range(len(names))
                if self.group[b] == j and (parents[b] < 0 or self.group[parents[b]] != j)
            ]
            for j in range(24)
        ]
        missing = [SMPL_JOINT_NAMES[j] for j in range(24) if not self.group_roots[j]]
        if missing:
            raise ValueError(f"model: expected Anny bones for every SMPL joint, none for {missing}")
        self.C = torch.tensor(ANNY_TO_SMPL_AXES, dtype=self.dtype)
        V = model.template_vertices.shape[0]
        dense = torch.zeros(V, len(names), dtype=self.dtype)
        dense.scatter_add_(
            1, model.vertex_bone_indices.long(), model.vertex_bone_weights.to(self.dtype)
        )
        self.weights = torch.zeros(V, 24, dtype=self.dtype).index_add_(1, self.group, dense)
        self.offsets = self._tpose_offsets()

    def rest(self, phen: torch.Tensor) -> dict[str, torch.Tensor]:
        B = phen.shape[0]
        eye = torch.eye(4, dtype=self.dtype).expand(B, len(self.names), 4, 4)
        return self.m(pose_parameters=eye, phenotype_kwargs=phen, pose_parameterization="local-ref")

    def _tpose_offsets(self) -> torch.Tensor:
        """(24, 3, 3) Anny-frame rotations raising the arms to the horizontal (default body)."""
        phen = torch.full((1, len(_PHENOTYPES)), 0.5, dtype=self.dtype)
        heads = self.rest(phen)["rest_bone_heads"][0]
        off = torch.eye(3, dtype=self.dtype).repeat(24, 1, 1)
        for side, arm, target in (("L", _LEFT_ARM, 1.0), ("R", _RIGHT_ARM, -1.0)):
            a = heads[self.names.index(f"upperarm01.{side}")]
            b = heads[self.names.index(f"wrist.{side}")]
            d = (b - a) / (b - a).norm()
            t = torch.tensor([target, 0.0, 0.0], dtype=self.dtype)
            off[list(arm)] = _rotation_between(d, t)
        return off

    def pose(self, phen: torch.Tensor, global_rot_anny: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pose Anny: every bone of SMPL joint j's group gets skinning rotation
        ``global_rot_anny[:, j]`` (relative to Anny's A-pose rest), heads following parents."""
        rest = self.rest(phen)
        R = rest["rest_bone_poses"][..., :3, :3]
        B = global_rot_anny.shape[0]
        R = R.expand(B, -1, -1, -1)
        D = torch.eye(4, dtype=self.dtype).repeat(B, len(self.names), 1, 1)
        D[..., :3, :3] = global_rot_anny[:, self.group] @ R
        D[:, 0, :3, 3] = rest["rest_bone_heads"][:, 0].expand(B, 3)
        out = self.m(pose_parameters=D, phenotype_kwargs=phen, pose_parameterization="world-orient")
        heads = out["bone_poses"][..., :3, 3]
        joints = torch.stack([heads[:, r].mean(1) for r in self.group_roots], dim=1)
        return {"vertices": out["vertices"], "joints": joints}

    def to_smpl_frame(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.C.T

    def smpl_to_anny_rotations(self, G: torch.Tensor) -> torch.Tensor:
        return self.C.T @ G @ self.C


def _rotation_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest rotation taking unit vector ``a`` to unit vector ``b`` (not antipodal)."""
    v = torch.linalg.cross(a, b)
    c = torch.dot(a, b)
    K = torch.zeros(3, 3, dtype=a.dtype)
    K[0, 1], K[0, 2], K[1, 0], K[1, 2], K[2, 0], K[2, 1] = -v[2], v[1], v[2], -v[0], -v[1], v[0]
    return torch.eye(3, dtype=a.dtype) + K + K @ K / (1 + c)


def pose_anny_like_smpl(
    rig: _AnnyRig,
    phenotypes: torch.Tensor,
    local_rotations: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Anny's own posed mesh for SMPL local joint rotations (relative to the T-pose rest).

    Args:
        rig: from ``_AnnyRig(load_anny())``.
        phenotypes: :math:`(B, 6)` gender, age, muscle, weight, height, proportions.
        local_rotations: :math:`(B, 24, 3, 3)` SMPL local rotations (SMPL axes).

    Returns:
        ``vertices (B, 13718, 3)`` and ``joints (B, 24, 3)`` in SMPL axes (metres).
    """
    G = local_to_global(local_rotations.to(rig.dtype), SMPL_PARENTS)
    Ga = rig.smpl_to_anny_rotations(G) @ rig.offsets
    out = rig.pose(phenotypes.to(rig.dtype), Ga)
    return {
        "vertices": rig.to_smpl_frame(out["vertices"]),
        "joints": rig.to_smpl_frame(out["joints"]),
    }


def _fit_regressor(
    X: torch.Tensor, Jt: torch.Tensor, k: int = 256, ridge: float = 1e-8
) -> torch.Tensor:
    """Affine J_regressor (weights sum to 1) from samples ``X (S, V, 3)`` -> ``Jt (S, 24, 3)``."""
    S, V, _ = X.shape
    mu, muJ = X.mean(0), Jt.mean(0)
    reg = torch.zeros(24, V, dtype=X.dtype)
    for j in range(24):
        idx = torch.topk((mu - muJ[j]).norm(dim=-1), k, largest=False).indices
        Xi = X[:, idx, :]  # (S, k, 3)
        M = Xi.permute(0, 2, 1).reshape(S * 3, k)  # rows: sample x coordinate
        y = Jt[:, j, :].reshape(S * 3)
        # KKT: min |M a - y|^2 + ridge |a|^2  s.t.  1^T a = 1
        A = M.T @ M + ridge * torch.eye(k, dtype=X.dtype)
        kkt = torch.zeros(k + 1, k + 1, dtype=X.dtype)
        kkt[:k, :k] = 2 * A
        kkt[:k, k] = 1
        kkt[k, :k] = 1
        rhs = torch.cat([2 * M.T @ y, torch.ones(1, dtype=X.dtype)])
        sol = torch.linalg.solve(kkt, rhs)
        reg[j, idx] = sol[:k]
    return reg


def _face_vertex_ids(rig: _AnnyRig, v: torch.Tensor) -> dict[str, int]:
    head = torch.nonzero(rig.weights.argmax(1) == 15).squeeze(-1)
    hv = v[head]
    out = {
        "nose": int(head[hv[:, 2].argmax()]),
        "rear": int(head[hv[:, 0].argmin()]),
        "lear": int(head[hv[:, 0].argmax()]),
    }
    for key, side in (("leye", 1.0), ("reye", -1.0)):
        front = hv[:, 2] > hv[:, 2].max() - 0.03
        score = torch.where(
            front,
            side * hv[:, 0] - (hv[:, 0].abs() - 0.032).abs() * 10,
            torch.tensor(-1e9, dtype=v.dtype),
        )
        out[key] = int(head[score.argmax()])
    return out


def build_anny_smpl_model(
    num_betas: int = 10,
    num_samples: int = 96,
    seed: int = 0,
    batch: int = 8,
    model: Any = None,
    verbose: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Convert Anny into SMPL's layout (see module docs).

    Args:
        num_betas: shape components (PCA of the sampled phenotypes).
        num_samples: phenotypes sampled for the PCA and the regressor (the 64 corners of the
            phenotype cube are added to them).
        seed: seed of the phenotype samples.
        batch: Anny evaluations per forward call (memory).
        model: an Anny instance (default: :func:`load_anny`).
        verbose: print progress.

    Returns:
        ``(arrays, report)``: the model in the official layout (plus ``joint_names``,
        ``vertex_id_names``/``vertex_id_values``, ``phenotype_mean``, ``pca_std``) and a report
        (explained variance, regression error in mm).

    Raises:
        ValueError: ``num_betas`` or ``num_samples`` out of range.
    """
    if not (1 <= num_betas <= 100):
        raise ValueError(f"num_betas: expected an int in [1, 100], got {num_betas}")
    if num_samples <= num_betas:
        raise ValueError(
            f"num_samples: expected more than num_betas={num_betas}, got {num_samples}"
        )
    t0 = time.perf_counter()
    rig = _AnnyRig(model if model is not None else load_anny())
    dt = rig.dtype
    g = torch.Generator().manual_seed(seed)
    phen = torch.rand(num_samples, len(_PHENOTYPES), generator=g, dtype=torch.float64)
    # the 2^6 corners of the phenotype cube too, so that the betas span its whole range
    corners = torch.cartesian_prod(
        *[torch.tensor([0.0, 1.0], dtype=torch.float64)] * len(_PHENOTYPES)
    )
    phen = torch.cat([phen, corners]).to(dt)
    num_samples = len(phen)
    ident = torch.eye(3, dtype=dt).expand(1, 24, 3, 3)
    Xs, Js = [], []
    for i in range(0, num_samples, batch):
        p = phen[i : i + batch]
        out = pose_anny_like_smpl(rig, p, ident.expand(len(p), 24, 3, 3))
        Xs.append(out["vertices"])
        Js.append(out["joints"])
        if verbose:
            print(
                f"  posed {i + len(p)}/{num_samples} phenotypes ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    X, Jt = torch.cat(Xs), torch.cat(Js)
    S, V, _ = X.shape
    mu = X.mean(0)
    U, sv, Vh = torch.linalg.svd((X - mu).reshape(S, -1), full_matrices=False)
    std = sv[:num_betas] / (S - 1) ** 0.5
    shapedirs = (Vh[:num_betas].T * std).reshape(V, 3, num_betas)
    explained = float((sv[:num_betas] ** 2).sum() / (sv**2).sum())
    reg = _fit_regressor(X, Jt)
    jerr = (torch.einsum("jv,svc->sjc", reg, X) - Jt).norm(dim=-1)
    faces = rig.m.get_triangular_faces().long()
    vids = _face_vertex_ids(rig, mu)
    arrays = {
        "v_template": mu.numpy(),
        "shapedirs": shapedirs.numpy(),
        "posedirs": np.zeros((V, 3, 207)),
        "J_regressor": reg.numpy(),
        "weights": rig.weights.numpy(),
        "kintree_table": np.stack([np.asarray(SMPL_PARENTS), np.arange(24)]).astype(np.int64),
        "f": faces.numpy().astype(np.int64),
        "joint_names": np.asarray(SMPL_JOINT_NAMES),
        "vertex_id_names": np.asarray(list(vids)),
        "vertex_id_values": np.asarray(list(vids.values()), dtype=np.int64),
        "phenotype_names": np.asarray(_PHENOTYPES),
        "pca_std": std.numpy(),
        "tpose_offsets_anny": rig.offsets.numpy(),
        "source": np.asarray(f"Anny {_anny_version()} converted by {_BUILDER_VERSION}; CC0 assets"),
    }
    report = {
        "num_samples": S,
        "explained_variance": explained,
        "joint_regression_error_mm_mean": float(jerr.mean() * 1000),
        "joint_regression_error_mm_max": float(jerr.max() * 1000),
        "build_seconds": time.perf_counter() - t0,
    }
    return arrays, report


def _anny_version() -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("anny")
    except Exception:  # noqa: BLE001
        return "unknown"


def _cache_root() -> Path:
    root = os.environ.get("GEO3D_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "geo3d") / "body"


def _content_key(params: dict[str, Any]) -> str:
    """SHA-256 over the builder version, the parameters, anny's version and the bytes of
    anny's packaged model data: a new anny release or option gives a new entry."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {"builder": _BUILDER_VERSION, "anny": _anny_version(), **params}, sort_keys=True
        ).encode()
    )
    try:
        import anny

        data = Path(anny.__file__).parent / "data" / "cached" / "anny.pth"
        if data.is_file():
            with open(data, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
    except ImportError:
        pass
    return h.hexdigest()[:20]


def anny_smpl_cache_file(*, num_betas: int = 10, num_samples: int = 96, seed: int = 0) -> Path:
    """Where :func:`anny_smpl_model_path` caches the model of these settings (it may not
    exist yet: nothing is built)."""
    params = {"num_betas": num_betas, "num_samples": num_samples, "seed": seed}
    return _cache_root() / f"anny_smpl_{_content_key(params)}.npz"


def _readable_npz(path: Path) -> bool:
    """Whether every array of the ``.npz`` at ``path`` reads back (zip CRCs included) and
    the SMPL arrays a body model needs are there."""
    try:
        with np.load(path, allow_pickle=False) as z:
            for k in z.files:
                z[k]
            return {"v_template", "shapedirs", "J_regressor", "weights", "f"} <= set(z.files)
    except Exception:  # noqa: BLE001 - any failure to read is a damaged file
        return False


def anny_smpl_model_path(
    out: str | os.PathLike | None = None,
    *,
    num_betas: int = 10,
    num_samples: int = 96,
    seed: int = 0,
    rebuild: bool = False,
    verbose: bool = False,
) -> Path:
    """The converted model's ``.npz``, built once per machine and cached (content-keyed).

    The cache lives in ``$GEO3D_CACHE_DIR/body`` (default ``~/.cache/geo3d/body``); the file
    name holds a key over the builder version, the options, anny's version and anny's data.
    Writes are atomic. With ``out``, the cached file is also copied there (atomic).

    Args:
        out: optional destination copy.
        num_betas, num_samples, seed: see :func:`build_anny_smpl_model`.
        rebuild: build even when a cached file exists.
        verbose: print progress.

    Returns:
        ``out`` if given, else the cache file; load it with :func:`geo3d.body.load_body_model`.

    Raises:
        ImportError: anny is not installed (``pip install 'geo3d[body]'``).
        IsADirectoryError: ``out`` is an existing folder (checked before building).
    """
    if out is not None and Path(out).is_dir():
        raise IsADirectoryError(f"out: expected a file name, got the existing folder {out}")
    cache = anny_smpl_cache_file(num_betas=num_betas, num_samples=num_samples, seed=seed)
    if not rebuild and cache.is_file() and not _readable_npz(cache):
        warnings.warn(f"the cached body model {str(cache)!r} is unreadable (damaged or "
                      f"truncated); rebuilding it", stacklevel=2)
        rebuild = True
    if rebuild or not cache.is_file():
        arrays, report = build_anny_smpl_model(num_betas, num_samples, seed, verbose=verbose)
        atomic_save_npz(cache, arrays)
        atomic_write_text(cache.with_suffix(".json"), json.dumps(report, indent=2))
        if verbose:
            print(json.dumps(report, indent=2))
    if out is None:
        return cache
    with np.load(cache, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return atomic_save_npz(out, arrays)


def validate_anny_smpl_model(
    path: str | os.PathLike,
    poses: dict[str, torch.Tensor],
    *,
    num_bodies: int = 2,
    seed: int = 1,
    phenotypes: torch.Tensor | None = None,
    model: Any = None,
) -> dict[str, dict[str, float]]:
    """Per-vertex error (mm) of the converted model (through smplx) against Anny's own posed
    mesh, for held-out phenotypes and the same SMPL joint rotations.

    Each held-out phenotype is given the betas that best fit its rest mesh (least squares on
    ``shapedirs``); ``"rest"`` reports that shape-space residual at the zero pose, every other
    entry the error for a class of poses.

    Args:
        path: the converted ``.npz``.
        poses: ``{class name: (P, 72) axis-angle SMPL poses}``.
        num_bodies: held-out phenotypes.
        seed: their seed.
        phenotypes: explicit :math:`(N, 6)` phenotypes instead of random ones.
        model: an Anny instance (default: :func:`load_anny`).

    Returns:
        ``{class: {"mean_mm", "p95_mm", "max_mm", "poses"}}``.
    """
    from geo3d.body._model import load_body_model, pose_body
    from geo3d.rotations import axis_angle_to_matrix

    rig = _AnnyRig(model if model is not None else load_anny())
    dt = rig.dtype
    smpl = load_body_model(path, dtype=dt)
    if phenotypes is None:
        g = torch.Generator().manual_seed(seed)
        phenotypes = torch.rand(num_bodies, len(_PHENOTYPES), generator=g, dtype=torch.float64)
    phen = phenotypes.to(dt)
    num_bodies = len(phen)
    ident = torch.eye(3, dtype=dt).expand(num_bodies, 24, 3, 3)
    rest = pose_anny_like_smpl(rig, phen, ident)["vertices"]
    sd = smpl.shapedirs.reshape(-1, smpl.shapedirs.shape[-1])
    betas = torch.linalg.lstsq(sd, (rest - smpl.v_template).reshape(num_bodies, -1).T).solution.T
    results: dict[str, dict[str, float]] = {}
    classes = {"rest": torch.zeros(1, 72, dtype=dt), **poses}
    for name, P in classes.items():
        errs = []
        for b in range(num_bodies):
            for i in range(0, len(P), 8):
                p = P[i : i + 8].to(dt)
                R = axis_angle_to_matrix(p.reshape(-1, 24, 3))
                ref = pose_anny_like_smpl(rig, phen[b : b + 1].expand(len(p), -1), R)["vertices"]
                got = pose_body(smpl, p, betas[b : b + 1].expand(len(p), -1)).vertices
                errs.append(((got - ref).norm(dim=-1) * 1000).reshape(-1))
        e = torch.cat(errs)
        results[name] = {
            "mean_mm": float(e.mean()),
            "p95_mm": float(torch.quantile(e[:: max(1, len(e) // 100000)], 0.95)),
            "max_mm": float(e.max()),
            "poses": len(P),
        }
    return results
