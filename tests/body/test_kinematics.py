"""Kinematics vs smplx.lbs (an independent implementation) in float64 and float32."""

from __future__ import annotations

import pytest
import torch
from scipy.spatial.transform import Rotation
from smplx.lbs import batch_rigid_transform, lbs

from geo3d.body import (
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
    TINY_REST_JOINTS,
    forward_kinematics,
    global_to_local,
    joint_index,
    local_to_global,
    tiny_body_dict,
)


def _random_rotations(n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(Rotation.random(n, random_state=seed).as_matrix(), dtype=dtype)


class TestForwardKinematics:
    def test_matches_smplx_batch_rigid_transform_float64(self):
        B = 5
        R = _random_rotations(B * 24, 0).reshape(B, 24, 3, 3)
        t = torch.as_tensor(TINY_REST_JOINTS).expand(B, 24, 3) + 0.01 * torch.randn(
            B, 24, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
        )
        parents = torch.tensor(SMPL_PARENTS)
        ref_joints, ref_A = batch_rigid_transform(R, t, parents, dtype=torch.float64)
        out = forward_kinematics(R, t, SMPL_PARENTS)
        torch.testing.assert_close(out.joints, ref_joints, atol=1e-10, rtol=0)
        torch.testing.assert_close(out.transforms, ref_A, atol=1e-10, rtol=0)

    def test_float32_matches_to_1e6(self):
        R = _random_rotations(3 * 24, 2, torch.float32).reshape(3, 24, 3, 3)
        t = torch.as_tensor(TINY_REST_JOINTS, dtype=torch.float32).expand(3, 24, 3)
        ref_joints, _ = batch_rigid_transform(
            R, t.clone(), torch.tensor(SMPL_PARENTS), dtype=torch.float32
        )
        out = forward_kinematics(R, t, SMPL_PARENTS)
        torch.testing.assert_close(out.joints, ref_joints, atol=1e-6, rtol=0)

    def test_skinning_with_transforms_matches_smplx_lbs(self):
        # LBS with our transforms vs smplx.lbs on the tiny body (posedirs zero).
        d = tiny_body_dict()
        f64 = torch.float64
        v = torch.as_tensor(d["v_template"], dtype=f64)
        B = 2
        R = _random_rotations(B * 24, 3).reshape(B, 24, 3, 3)
        betas = torch.zeros(B, 10, dtype=f64)
        verts_ref, joints_ref = lbs(
            betas, R, v, torch.as_tensor(d["shapedirs"], dtype=f64),
            torch.as_tensor(d["posedirs"], dtype=f64).reshape(-1, 207).T,
            torch.as_tensor(d["J_regressor"], dtype=f64), torch.tensor(SMPL_PARENTS),
            torch.as_tensor(d["weights"], dtype=f64), pose2rot=False,
        )  # fmt: skip
        rest = torch.as_tensor(d["J_regressor"], dtype=f64) @ v
        out = forward_kinematics(R, rest, SMPL_PARENTS)
        W = torch.as_tensor(d["weights"], dtype=f64)
        T = torch.einsum("vj,bjkl->bvkl", W, out.transforms)
        vh = torch.cat([v, torch.ones(len(v), 1, dtype=f64)], -1)
        verts = torch.einsum("bvkl,vl->bvk", T, vh)[..., :3]
        torch.testing.assert_close(verts, verts_ref, atol=1e-10, rtol=0)
        torch.testing.assert_close(out.joints, joints_ref, atol=1e-10, rtol=0)

    def test_identity_pose_keeps_rest_joints(self):
        t = torch.as_tensor(TINY_REST_JOINTS)
        out = forward_kinematics(
            torch.eye(3, dtype=torch.float64).expand(24, 3, 3), t, SMPL_PARENTS
        )
        torch.testing.assert_close(out.joints, t, atol=0, rtol=0)

    def test_any_tree_order(self):
        # A chain numbered leaf-first: 2 -> 1 -> 0 (root is joint 2). Joint positions by hand.
        parents = [1, 2, -1]
        Rz = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
        L = torch.stack([torch.eye(3, dtype=torch.float64), Rz, torch.eye(3, dtype=torch.float64)])
        t = torch.tensor([[2.0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float64)
        out = forward_kinematics(L, t, parents)
        # joint 1 rotates by 90 deg about z: joint 0 moves from (2,0,0) to (1,1,0)
        torch.testing.assert_close(
            out.joints, torch.tensor([[1.0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float64)
        )

    def test_gradcheck(self):
        # a small tree with a branch (gradcheck is O(inputs x outputs))
        parents = [-1, 0, 1, 1]
        R = _random_rotations(4, 4).requires_grad_(True)
        t = torch.as_tensor(TINY_REST_JOINTS[[0, 3, 6, 9]]).clone().requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda R, t: forward_kinematics(R, t, parents).transforms, (R, t)
        )

    def test_errors_name_the_argument(self):
        t = torch.as_tensor(TINY_REST_JOINTS)
        with pytest.raises(ValueError, match="local_rotations"):
            forward_kinematics(torch.eye(3, dtype=torch.float64).expand(23, 3, 3), t, SMPL_PARENTS)
        with pytest.raises(ValueError, match="rest_joints"):
            forward_kinematics(
                torch.eye(3, dtype=torch.float64).expand(24, 3, 3), t[:, :2], SMPL_PARENTS
            )
        bad = torch.eye(3, dtype=torch.float64).expand(24, 3, 3).clone()
        bad[3, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="local_rotations"):
            forward_kinematics(bad, t, SMPL_PARENTS)
        with pytest.raises(ValueError, match="parents"):
            forward_kinematics(torch.eye(3, dtype=torch.float64).expand(3, 3, 3), t[:3], [1, 2, 0])


class TestGlobalLocal:
    @pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
    def test_roundtrip_and_against_smplx(self, dtype, tol):
        L = _random_rotations(4 * 24, 5, dtype).reshape(4, 24, 3, 3)
        G = local_to_global(L, SMPL_PARENTS)
        torch.testing.assert_close(global_to_local(G, SMPL_PARENTS), L, atol=tol, rtol=0)
        # global rotations = rotation block of smplx's transforms
        _, A = batch_rigid_transform(
            L, torch.zeros(4, 24, 3, dtype=dtype), torch.tensor(SMPL_PARENTS), dtype=dtype
        )
        torch.testing.assert_close(G, A[..., :3, :3], atol=tol, rtol=0)

    def test_local_to_global_by_hand(self):
        # left_knee global = pelvis @ left_hip @ left_knee
        L = _random_rotations(24, 6)
        G = local_to_global(L, SMPL_PARENTS)
        torch.testing.assert_close(G[4], L[0] @ L[1] @ L[4], atol=1e-14, rtol=0)


def test_joint_index():
    assert joint_index("left_knee") == 4
    assert SMPL_JOINT_NAMES[joint_index("right_hand")] == "right_hand"
    with pytest.raises(ValueError, match="joint"):
        joint_index("left_tail")
    with pytest.raises(ValueError, match="joint"):
        joint_index(24)


def test_pose_body_axis_angles_are_exact_rotations_in_float64(tmp_path):
    """Bug caught: axis-angle poses went through smplx's Rodrigues, which adds 1e-8 to every
    angle: a root rotation moved the mesh 1e-9 to 4e-8 m off the rotated rest mesh (scipy)
    in float64. They are now converted by geo3d.rotations (exact to float64 rounding), and
    axis-angles and the same rotations as matrices pose the same mesh."""
    from geo3d.body import load_body_model, pose_body, write_tiny_body

    m = load_body_model(write_tiny_body(tmp_path / "t.npz"), dtype=torch.float64)
    rest = pose_body(m, torch.zeros(1, 72, dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    for aa in (torch.tensor([0.3, -1.2, 0.5]), torch.tensor([1e-9, 0.0, 0.0]),
               torch.tensor([0.0, 3.14159, 0.0])):
        pose = torch.zeros(1, 72, dtype=torch.float64)
        pose[0, :3] = aa.double()
        R = torch.as_tensor(Rotation.from_rotvec(aa.double().numpy()).as_matrix())
        j0 = rest.joints[0, 0]
        want = (rest.vertices[0] - j0) @ R.T + j0
        torch.testing.assert_close(pose_body(m, pose).vertices[0], want, rtol=0, atol=1e-13)
    pose = 0.5 * torch.randn(2, 72, generator=g, dtype=torch.float64)
    mats = torch.as_tensor(Rotation.from_rotvec(pose.reshape(-1, 3).numpy()).as_matrix())
    torch.testing.assert_close(pose_body(m, pose).vertices,
                               pose_body(m, mats.reshape(2, 24, 3, 3)).vertices,
                               rtol=0, atol=1e-13)
