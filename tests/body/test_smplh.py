"""The SMPL+H path (52 joints, AMASS's model) on a tiny SMPL+H-layout body."""

from __future__ import annotations

import numpy as np
import torch
from smplx.lbs import lbs

from geo3d.body import (
    SMPLH_PARENTS,
    load_body_model,
    pose_body,
    read_amass,
    tiny_smplh_dict,
    write_amass,
)
from geo3d.body._motions import Motion


def test_smplh_loads_and_matches_smplx_lbs(tmp_path):
    d = tiny_smplh_dict()
    p = tmp_path / "SMPLH_MALE.npz"
    np.savez(p, **d)
    m = load_body_model(tmp_path, gender="male", model_type="smplh", dtype=torch.float64)
    assert type(m).__name__ == "SMPLH" and m.J_regressor.shape == (52, 768)
    g = torch.Generator().manual_seed(0)
    pose = 0.4 * torch.randn(3, 156, generator=g, dtype=torch.float64)
    betas = torch.randn(3, 10, generator=g, dtype=torch.float64)
    trans = torch.randn(3, 3, generator=g, dtype=torch.float64)
    # an AMASS round trip on the way
    write_amass(tmp_path / "seq.npz", Motion(pose, trans[:, :], betas[0], gender="male"))
    seq = read_amass(tmp_path / "seq.npz")
    out = pose_body(m, seq.poses, betas, seq.trans)
    f64 = torch.float64
    ref, ref_j = lbs(
        betas, pose, torch.as_tensor(d["v_template"]), torch.as_tensor(d["shapedirs"]),
        torch.zeros(459, 768 * 3, dtype=f64), torch.as_tensor(d["J_regressor"]),
        torch.tensor(SMPLH_PARENTS), torch.as_tensor(d["weights"]),
    )  # fmt: skip
    # hands: no PCA, no mean pose added (AMASS stores absolute hand rotations)
    torch.testing.assert_close(out.vertices, ref + trans[:, None], atol=2e-7, rtol=0)
    torch.testing.assert_close(out.joints[:, :52], ref_j + trans[:, None], atol=2e-7, rtol=0)
    # rotation matrices give the same result
    from geo3d.rotations import axis_angle_to_matrix

    rm = pose_body(m, axis_angle_to_matrix(pose.reshape(3, 52, 3)), betas, trans)
    torch.testing.assert_close(rm.vertices, out.vertices, atol=1e-12, rtol=0)
    # the hand (index finger) weights moved: rotating joint 22 moves the left hand's vertices
    pose2 = torch.zeros(1, 156, dtype=f64)
    pose2[0, 3 * 22 + 2] = 1.0
    moved = (
        pose_body(m, pose2).vertices - pose_body(m, torch.zeros(1, 156, dtype=f64)).vertices
    ).norm(dim=-1)[0]
    weighted = set(np.nonzero(d["weights"][:, 22] > 0)[0].tolist())
    at_joint = {int(np.argmax(d["J_regressor"][22]))}  # joint 22 is regressed from one vertex
    assert set(torch.nonzero(moved > 1e-9).squeeze(-1).tolist()) == weighted - at_joint
