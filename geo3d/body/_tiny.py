"""A tiny procedural body in SMPL's layout (24 joints, SMPL's tree) for fast tests.

Each of the 24 joints owns one closed tube ("segment") of 6 x 5 ring vertices plus two cap
vertices (768 vertices, 1440 triangles in all), placed in a T-pose with SMPL's axes
(y up, the body faces +z, the subject's left is +x; metres). Skinning weights blend a
segment's vertices towards the parent joint near its start and towards the child near its
end, so interpolated weights are not one-hot. ``J_regressor`` averages the ring of vertices
centred on each joint, so it reproduces the joints exactly in the template. ``shapedirs`` has
10 smooth components (height, girth, limb lengths, ...), ``posedirs`` is zero.

This is a test fixture with SMPL's interface, not a realistic body: the Anny-derived model
(:func:`geo3d.body.make_anny_smpl_model`) is.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from geo3d.body._kinematics import SMPL_JOINT_NAMES, SMPL_PARENTS
from geo3d.body._safe_io import atomic_save_npz

__all__ = [
    "TINY_REST_JOINTS",
    "SMPLH_PARENTS",
    "tiny_body_dict",
    "tiny_smplh_dict",
    "write_tiny_body",
]

#: Rest (T-pose) joint locations of the tiny body, metres, SMPL order.
TINY_REST_JOINTS = np.array(
    [
        [0.00, 0.00, 0.00], [0.09, -0.08, 0.00], [-0.09, -0.08, 0.00], [0.00, 0.11, -0.01],
        [0.10, -0.46, 0.00], [-0.10, -0.46, 0.00], [0.00, 0.24, 0.00], [0.10, -0.86, -0.03],
        [-0.10, -0.86, -0.03], [0.00, 0.30, 0.01], [0.11, -0.92, 0.09], [-0.11, -0.92, 0.09],
        [0.00, 0.51, -0.01], [0.07, 0.42, 0.00], [-0.07, 0.42, 0.00], [0.00, 0.60, 0.03],
        [0.18, 0.45, -0.01], [-0.18, 0.45, -0.01], [0.44, 0.44, -0.03], [-0.44, 0.44, -0.03],
        [0.69, 0.45, -0.03], [-0.69, 0.45, -0.03], [0.77, 0.44, -0.04], [-0.77, 0.44, -0.04],
    ]
)  # fmt: skip

_N_RING, _N_ROWS = 6, 5
# joint -> (segment start, segment end, radius, index of the ring centred on the joint)
# Most segments run from the joint to its (first) child; leaves extend outwards.


def _segments() -> list[tuple[np.ndarray, np.ndarray, float, int, int | None]]:
    J = TINY_REST_JOINTS
    child = {0: None, 1: 4, 2: 5, 3: 6, 4: 7, 5: 8, 6: 9, 7: 10, 8: 11, 9: 12, 12: 15,
             13: 16, 14: 17, 16: 18, 17: 19, 18: 20, 19: 21, 20: 22, 21: 23}  # fmt: skip
    radius = {0: 0.11, 1: 0.075, 2: 0.075, 3: 0.12, 4: 0.055, 5: 0.055, 6: 0.125, 7: 0.045,
              8: 0.045, 9: 0.12, 10: 0.04, 11: 0.04, 12: 0.05, 13: 0.05, 14: 0.05, 15: 0.09,
              16: 0.048, 17: 0.048, 18: 0.04, 19: 0.04, 20: 0.035, 21: 0.035, 22: 0.03,
              23: 0.03}  # fmt: skip
    leaf_dir = {10: (0.0, -0.02, 0.12), 11: (0.0, -0.02, 0.12), 15: (0.0, 0.2, 0.0),
                22: (0.09, 0.0, 0.0), 23: (-0.09, 0.0, 0.0)}  # fmt: skip
    segs = []
    for j in range(24):
        if j == 0:  # pelvis: a horizontal tube centred on the joint (middle ring)
            a, b = J[0] - [0.13, 0, 0], J[0] + [0.13, 0, 0]
            segs.append((a, b, radius[0], _N_ROWS // 2, None))
        elif j in leaf_dir:
            segs.append((J[j], J[j] + np.array(leaf_dir[j]), radius[j], 0, None))
        else:
            segs.append((J[j], J[child[j]], radius[j], 0, child[j]))
    return segs


def tiny_body_dict() -> dict[str, np.ndarray]:
    """The tiny SMPL-layout body as a dict of arrays in the official layout.

    Returns:
        ``v_template (768, 3)``, ``shapedirs (768, 3, 10)``, ``posedirs (768, 3, 207)`` (zero),
        ``J_regressor (24, 768)``, ``weights (768, 24)``, ``kintree_table (2, 24)``,
        ``f (1440, 3)``, plus ``joint_names`` and smplx's keypoint ``vertex_id_names`` /
        ``vertex_id_values``. Deterministic.

    Example:
        >>> d = tiny_body_dict()
        >>> d["v_template"].shape, d["f"].shape
        ((768, 3), (1440, 3))
    """
    parents = list(SMPL_PARENTS)
    verts, faces, weights, regress_rows = [], [], [], []
    girth, seg_of = [], []
    nv = 0
    theta = 2 * np.pi * np.arange(_N_RING) / _N_RING
    for j, (a, b, r, centre_row, child) in enumerate(_segments()):
        axis = b - a
        length = float(np.linalg.norm(axis))
        d = axis / length
        helper = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
        u = np.cross(d, helper)
        u /= np.linalg.norm(u)
        w = np.cross(d, u)
        s = np.linspace(0.0, 1.0, _N_ROWS)
        rows = []
        for si in s:
            centre = a + si * axis
            ring = centre + r * (np.cos(theta)[:, None] * u + np.sin(theta)[:, None] * w)
            rows.append(ring)
        rows_arr = np.concatenate(rows)  # (R*N, 3)
        caps = np.stack([a - 0.5 * r * d, b + 0.5 * r * d])
        v = np.concatenate([rows_arr, caps])
        radial = np.concatenate(
            [np.cos(theta)[:, None] * u + np.sin(theta)[:, None] * w] * _N_ROWS + [np.zeros((2, 3))]
        )
        girth.append(radial * r)
        # skinning weights along the segment
        svals = np.concatenate([np.repeat(s, _N_RING), [0.0, 1.0]])
        wrow = np.zeros((len(v), 24))
        p = parents[j]
        to_parent = 0.5 * np.clip(1.0 - svals / 0.35, 0.0, None) if p >= 0 else np.zeros_like(svals)
        to_child = (
            0.5 * np.clip((svals - 0.65) / 0.35, 0.0, None)
            if child is not None
            else np.zeros_like(svals)
        )
        wrow[:, j] = 1.0 - to_parent - to_child
        if p >= 0:
            wrow[:, p] += to_parent
        if child is not None:
            wrow[:, child] += to_child
        weights.append(wrow)
        # faces: quads between rows, fans at the caps (outward orientation fixed below)
        base = nv
        for ri in range(_N_ROWS - 1):
            for k in range(_N_RING):
                i0 = base + ri * _N_RING + k
                i1 = base + ri * _N_RING + (k + 1) % _N_RING
                i2 = i0 + _N_RING
                i3 = i1 + _N_RING
                faces += [(i0, i1, i3), (i0, i3, i2)]
        c0, c1 = base + _N_ROWS * _N_RING, base + _N_ROWS * _N_RING + 1
        last = base + (_N_ROWS - 1) * _N_RING
        for k in range(_N_RING):
            faces.append((c0, base + (k + 1) % _N_RING, base + k))
            faces.append((c1, last + k, last + (k + 1) % _N_RING))
        regress_rows.append(base + centre_row * _N_RING + np.arange(_N_RING))
        seg_of.append(np.full(len(v), j))
        verts.append(v)
        nv += len(v)
    V = np.concatenate(verts)
    F = np.asarray(faces, dtype=np.int64)
    # Orient every face outwards from its segment's axis (the construction above may wind
    # either way depending on the frame's handedness).
    seg = np.concatenate(seg_of)
    centres = np.stack([0.5 * (a + b) for a, b, *_ in _segments()])
    tri = V[F]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    out = tri.mean(1) - centres[seg[F[:, 0]]]
    flip = (n * out).sum(-1) < 0
    F[flip] = F[flip][:, [0, 2, 1]]
    W = np.concatenate(weights)
    Jreg = np.zeros((24, len(V)))
    for j, idx in enumerate(regress_rows):
        Jreg[j, idx] = 1.0 / len(idx)
    # shape space: smooth, deterministic components
    G = np.concatenate(girth)
    y = V[:, 1:2]
    dirs = np.zeros((len(V), 3, 10))
    dirs[:, :, 0] = V * 0.06  # overall size
    dirs[:, :, 1] = G * 0.25  # girth
    arm = np.abs(V[:, 0:1]) > 0.17
    dirs[:, 0, 2] = np.where(
        arm[:, 0], np.sign(V[:, 0]) * (np.abs(V[:, 0]) - 0.17) * 0.1, 0.0
    )  # arm length
    leg = V[:, 1] < -0.08
    dirs[:, 1, 3] = np.where(leg, (V[:, 1] + 0.08) * 0.1, 0.0)  # leg length
    dirs[:, 1, 4] = np.where(~leg, np.clip(y[:, 0], 0, None) * 0.08, 0.0)  # torso length
    is_trunk = np.isin(seg, [0, 3, 6, 9])
    dirs[:, :, 5] = G * 0.3 * is_trunk[:, None]  # belly / chest
    dirs[:, :, 6] = G * 0.3 * np.isin(seg, [1, 2, 4, 5])[:, None]  # thighs and calves
    dirs[:, :, 7] = G * 0.3 * np.isin(seg, [16, 17, 18, 19])[:, None]  # arms
    dirs[:, 0, 8] = np.where(
        np.abs(V[:, 0]) < 0.2, V[:, 0] * 0.15, np.sign(V[:, 0]) * 0.03
    )  # shoulder width
    dirs[:, :, 9] = G * 0.3 * np.isin(seg, [12, 15])[:, None]  # neck and head
    # smplx keypoints (nose, eyes, ears) on the head segment
    head = np.where(seg == 15)[0]
    hj = TINY_REST_JOINTS[15] + [0, 0.1, 0]
    targets = {
        "nose": hj + [0, 0, 0.1], "reye": hj + [-0.04, 0.03, 0.09], "leye": hj + [0.04, 0.03, 0.09],
        "rear": hj + [-0.1, 0, 0], "lear": hj + [0.1, 0, 0],
    }  # fmt: skip
    vid_names = list(targets)
    vid_vals = [int(head[np.argmin(np.linalg.norm(V[head] - t, axis=1))]) for t in targets.values()]
    return {
        "v_template": V,
        "shapedirs": dirs,
        "posedirs": np.zeros((len(V), 3, 207)),
        "J_regressor": Jreg,
        "weights": W,
        "kintree_table": np.stack([np.asarray(parents), np.arange(24)]).astype(np.int64),
        "f": F,
        "joint_names": np.asarray(SMPL_JOINT_NAMES),
        "vertex_id_names": np.asarray(vid_names),
        "vertex_id_values": np.asarray(vid_vals, dtype=np.int64),
    }


def write_tiny_body(path: str | os.PathLike) -> Path:
    """Write :func:`tiny_body_dict` as an ``.npz`` model file (atomic).

    Args:
        path: output file.

    Returns:
        The path, loadable with :func:`geo3d.body.load_body_model`.

    Example:
        >>> import tempfile, os
        >>> write_tiny_body(os.path.join(tempfile.mkdtemp(), "tiny.npz")).name
        'tiny.npz'
    """
    return atomic_save_npz(path, tiny_body_dict())


#: SMPL+H's kinematic tree: SMPL's 22 body joints, then 15 finger joints per hand (index,
#: middle, pinky, ring, thumb; 3 each), children of the wrists.
SMPLH_PARENTS: tuple[int, ...] = SMPL_PARENTS[:22] + tuple(
    p for wrist, first in ((20, 22), (21, 37)) for f in range(5)
    for p in (wrist, first + 3 * f, first + 3 * f + 1)
)  # fmt: skip


def tiny_smplh_dict() -> dict[str, np.ndarray]:
    """The tiny body in SMPL+H's layout (52 joints: fingers replace SMPL's hand joints).

    The weights of SMPL's hand joints go to each hand's first index-finger joint; the other
    finger joints sit along the hand segment (each regressed from one vertex) and carry no
    weight. ``hands_components{l,r}`` are the identity and ``hands_mean{l,r}`` zero, so the
    hand PCA of smplx is the identity. For tests of the SMPL+H path only.

    Example:
        >>> d = tiny_smplh_dict()
        >>> d["weights"].shape, d["posedirs"].shape
        ((768, 52), (768, 3, 459))
    """
    d = tiny_body_dict()
    V = d["v_template"].shape[0]
    W = np.zeros((V, 52))
    W[:, :22] = d["weights"][:, :22]
    W[:, 22] = d["weights"][:, 22]
    W[:, 37] = d["weights"][:, 23]
    reg = np.zeros((52, V))
    reg[:22] = d["J_regressor"][:22]
    seg_len = 32  # vertices per tiny segment (6 x 5 rings + 2 caps)
    for hand, first in ((22, 22), (23, 37)):
        verts = np.arange(hand * seg_len, hand * seg_len + 30)  # ring vertices of the hand
        for k in range(15):
            reg[first + k, verts[(2 * k) % 30]] = 1.0
    d.update(
        weights=W,
        J_regressor=reg,
        posedirs=np.zeros((V, 3, 9 * 51)),
        kintree_table=np.stack([np.asarray(SMPLH_PARENTS), np.arange(52)]).astype(np.int64),
        hands_componentsl=np.eye(45),
        hands_componentsr=np.eye(45),
        hands_meanl=np.zeros(45),
        hands_meanr=np.zeros(45),
    )
    del d["joint_names"]
    return d
