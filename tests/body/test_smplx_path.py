"""The SMPL-X path: smplx reads SMPL-X files itself with np.load(allow_pickle=True), so
load_body_model hands it a sanitised copy. A tiny body padded to SMPL-X's 10,475 vertices
(smplx picks its extra keypoints by fixed vertex indices) stands in for the licensed file."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from smplx.lbs import lbs

from geo3d.body import SMPL_PARENTS, UnsafePickleError, load_body_model, pose_body, tiny_body_dict

V_SMPLX = 10475
SMPLX_PARENTS = (
    SMPL_PARENTS[:22] + (15, 15, 15)
    + tuple(p for wrist, first in ((20, 25), (21, 40)) for f in range(5)
            for p in (wrist, first + 3 * f, first + 3 * f + 1))
)  # fmt: skip


def tiny_smplx_dict() -> dict:
    d = tiny_body_dict()
    n = d["v_template"].shape[0]
    pad = V_SMPLX - n
    v = np.concatenate([d["v_template"], np.zeros((pad, 3))])
    W = np.zeros((V_SMPLX, 55))
    W[:n, :22] = d["weights"][:, :22]
    W[:n, 25] += d["weights"][:, 22]
    W[:n, 40] += d["weights"][:, 23]
    W[n:, 0] = 1.0
    reg = np.zeros((55, V_SMPLX))
    reg[:22, :n] = d["J_regressor"][:22]
    for j in range(22, 55):  # face and finger joints: one vertex each, on the head / hands
        seg = 15 if j < 25 else (22 if j < 40 else 23)
        reg[j, seg * 32 + (j % 30)] = 1.0
    sd = np.concatenate([d["shapedirs"], 0.01 * d["shapedirs"]], axis=2)  # 10 shape + 10 expression
    return {
        "v_template": v, "shapedirs": np.concatenate([sd, np.zeros((pad, 3, 20))])[:V_SMPLX],
        "posedirs": np.zeros((V_SMPLX, 3, 9 * 54), dtype=np.float32), "J_regressor": reg, "weights": W,
        "kintree_table": np.stack([np.asarray(SMPLX_PARENTS), np.arange(55)]).astype(np.int64),
        "f": d["f"], "lmk_faces_idx": np.arange(51, dtype=np.int64),
        "lmk_bary_coords": np.full((51, 3), 1 / 3), "hands_componentsl": np.eye(45),
        "hands_componentsr": np.eye(45), "hands_meanl": np.zeros(45), "hands_meanr": np.zeros(45),
    }  # fmt: skip


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def smplx_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smplx")
    d = tiny_smplx_dict()
    info = np.empty((), dtype=object)
    info[()] = {"pelvis": 0}  # official SMPL-X files carry dicts like joint2num
    np.savez_compressed(tmp / "SMPLX_NEUTRAL.npz", **d, joint2num=info)
    return d, load_body_model(tmp, model_type="smplx", dtype=torch.float64)


def test_smplx_loads_from_sanitised_copy_and_matches_lbs(smplx_model):
    d, m = smplx_model
    assert type(m).__name__ == "SMPLX" and m.J_regressor.shape == (55, V_SMPLX)
    g = torch.Generator().manual_seed(0)
    body = 0.3 * torch.randn(2, 66, generator=g, dtype=torch.float64)
    betas = torch.randn(2, 10, generator=g, dtype=torch.float64)
    full = torch.cat([body, 0.2 * torch.randn(2, 99, generator=g, dtype=torch.float64)], dim=1)
    out = pose_body(m, full, betas)
    f64 = torch.float64
    shape_expr = torch.cat([betas, torch.zeros(2, 10, dtype=f64)], dim=1)
    ref, _ = lbs(
        shape_expr, full, torch.as_tensor(d["v_template"]), torch.as_tensor(d["shapedirs"]),
        torch.zeros(486, V_SMPLX * 3, dtype=f64), torch.as_tensor(d["J_regressor"]),
        torch.tensor(SMPLX_PARENTS), torch.as_tensor(d["weights"]),
    )  # fmt: skip
    torch.testing.assert_close(out.vertices, ref, atol=2e-7, rtol=0)


def test_smplx_file_with_payload_is_refused(tmp_path):
    d = tiny_smplx_dict()
    evil = np.empty((), dtype=object)
    evil[()] = Payload(tmp_path / "pwned")
    np.savez(tmp_path / "SMPLX_NEUTRAL.npz", **d, joint2num=evil)
    with pytest.raises(UnsafePickleError, match="system"):
        load_body_model(tmp_path / "SMPLX_NEUTRAL.npz")
    assert not (tmp_path / "pwned").exists()


def test_pose_body_checks_smplx_shapes(smplx_model):
    with pytest.raises(ValueError, match="pose"):
        pose_body(smplx_model[1], torch.zeros(1, 72))
