from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from geo3d.body import (
    JOINT_LIMITS,
    MOTION_KINDS,
    SMPL_PARENTS,
    TINY_REST_JOINTS,
    euler_xyz_to_matrix,
    extreme_poses,
    forward_kinematics,
    read_amass,
    synthetic_motion,
    synthetic_motions,
    write_amass,
)


def test_read_amass_as_published(tmp_path):
    # An SMPL+H sequence the way AMASS stores it (np.savez, bytes gender, dmpls).
    rng = np.random.default_rng(0)
    p = tmp_path / "01_01_poses.npz"
    poses = rng.normal(size=(5, 156))
    np.savez(p, poses=poses, trans=rng.normal(size=(5, 3)), betas=rng.normal(size=16),
             gender=np.array(b"female"), mocap_framerate=np.array(120.0), dmpls=np.zeros((5, 8)))  # fmt: skip
    m = read_amass(p)
    np.testing.assert_array_equal(m.poses.numpy(), poses)
    assert m.gender == "female" and m.framerate == 120.0 and m.betas.shape == (16,)
    assert m.smpl_poses().shape == (5, 72)
    np.testing.assert_array_equal(m.smpl_poses()[:, :66].numpy(), poses[:, :66])
    assert (m.smpl_poses()[:, 66:] == 0).all()
    out = write_amass(tmp_path / "copy.npz", m)
    z = np.load(out, allow_pickle=False)
    np.testing.assert_array_equal(z["poses"], poses)
    np.testing.assert_array_equal(z["dmpls"], np.zeros((5, 8)))
    assert str(z["gender"]) == "female" and float(z["mocap_framerate"]) == 120.0


def test_read_amass_smplx_framerate_key_and_errors(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, poses=np.zeros((2, 72)), trans=np.zeros((2, 3)), betas=np.zeros(10),
             gender=np.array("male"), mocap_frame_rate=np.array(60.0))  # fmt: skip
    m = read_amass(p)
    assert m.framerate == 60.0 and m.gender == "male"
    np.savez(p, poses=np.zeros((2, 72)), betas=np.zeros(10))
    with pytest.raises(ValueError, match="trans"):
        read_amass(p)
    np.savez(p, poses=np.zeros((2, 72)), trans=np.zeros((3, 3)), betas=np.zeros(10))
    with pytest.raises(ValueError, match="trans"):
        read_amass(p)
    np.savez(p, poses=np.zeros((2, 70)), trans=np.zeros((2, 3)), betas=np.zeros(10))
    with pytest.raises(ValueError, match="poses"):
        read_amass(p)


def test_euler_matches_scipy_intrinsic_xyz():
    ang = torch.tensor(np.random.default_rng(1).uniform(-3, 3, size=(50, 3)))
    ref = Rotation.from_euler("XYZ", ang.numpy()).as_matrix()
    np.testing.assert_allclose(euler_xyz_to_matrix(ang).numpy(), ref, atol=1e-14)


@pytest.mark.parametrize("kind", MOTION_KINDS)
def test_synthetic_kinds_seeded_within_limits(kind):
    a = synthetic_motion(kind, 20, generator=torch.Generator().manual_seed(3))
    b = synthetic_motion(kind, 20, generator=torch.Generator().manual_seed(3))
    c = synthetic_motion(kind, 20, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a.poses, b.poses, atol=0, rtol=0)
    assert not torch.equal(a.poses, c.poses)
    e = torch.as_tensor(a.extra["euler"])
    assert (e[:, 1:] >= JOINT_LIMITS[1:, :, 0] - 1e-12).all()
    assert (e[:, 1:] <= JOINT_LIMITS[1:, :, 1] + 1e-12).all()
    # the axis-angles encode the Euler angles (scipy decodes them independently)
    R = Rotation.from_rotvec(a.poses.reshape(-1, 3).numpy()).as_matrix()
    ref = Rotation.from_euler("XYZ", e.reshape(-1, 3).numpy()).as_matrix()
    np.testing.assert_allclose(R, ref, atol=1e-9)


def _posed_joints(poses72: torch.Tensor) -> torch.Tensor:
    R = torch.as_tensor(Rotation.from_rotvec(poses72.reshape(-1, 3).numpy()).as_matrix()).reshape(
        -1, 24, 3, 3
    )
    return forward_kinematics(R, torch.as_tensor(TINY_REST_JOINTS), SMPL_PARENTS).joints


def test_sitting_and_walking_look_right():
    g = torch.Generator().manual_seed(0)
    sit = synthetic_motion("sitting", 10, generator=g, noise=0.0)
    # undo the heading (root yaw) to read the pose in the body frame
    sit.poses[:, :3] = 0
    J = _posed_joints(sit.poses)[-1]
    # seated: knees in front of the hips (+z) at about hip height, ankles below the knees
    assert J[4, 2] - J[1, 2] > 0.25 and abs(J[4, 1] - J[1, 1]) < 0.15
    assert J[7, 1] < J[4, 1] - 0.25
    walk = synthetic_motion("walking", 60, generator=g, noise=0.0)
    walk.poses[:, :3] = 0
    Jw = _posed_joints(walk.poses)
    stride = Jw[:, 7, 2] - Jw[:, 8, 2]  # left ankle ahead of right and back again
    assert stride.max() > 0.2 and stride.min() < -0.2
    assert torch.linalg.norm(walk.trans[-1] - walk.trans[0]) > 1.0


def test_synthetic_motions_cycle_kinds():
    ms = synthetic_motions(9, 4, generator=torch.Generator().manual_seed(0))
    assert [m.label for m in ms] == list(MOTION_KINDS) + list(MOTION_KINDS[:2])
    with pytest.raises(ValueError, match="kinds"):
        synthetic_motions(1, 4, kinds=("flying",))
    with pytest.raises(ValueError, match="kind"):
        synthetic_motion("flying")
    with pytest.raises(ValueError, match="num_frames"):
        synthetic_motion("walking", 0)


def test_extreme_poses_at_and_near_limits():
    m = extreme_poses(
        200, margin=0.1, fraction_at_limit=0.5, generator=torch.Generator().manual_seed(0)
    )
    e = torch.as_tensor(m.extra["euler"])[:, 1:]
    lo, hi = JOINT_LIMITS[1:, :, 0], JOINT_LIMITS[1:, :, 1]
    d = torch.minimum(e - lo, hi - e)
    assert (d >= -1e-12).all() and (d <= 0.1 * (hi - lo) + 1e-12).all()
    frac = (d == 0).double().mean().item()
    assert 0.45 < frac < 0.55  # 200*23*3 draws of a fair coin
    # both ends are used
    assert ((e - lo).abs() < 1e-12).any() and ((hi - e).abs() < 1e-12).any()
    with pytest.raises(ValueError, match="margin"):
        extreme_poses(3, margin=0.7)


def test_find_amass_files(tmp_path):
    from geo3d.body import find_amass_files

    (tmp_path / "CMU" / "01").mkdir(parents=True)
    for name in ("01_02_poses.npz", "01_01_poses.npz"):
        np.savez(
            tmp_path / "CMU" / "01" / name,
            poses=np.zeros((2, 156)),
            trans=np.zeros((2, 3)),
            betas=np.zeros(16),
        )
    np.savez(tmp_path / "CMU" / "01" / "shape.npz", betas=np.zeros(16), gender=np.array("male"))
    (tmp_path / "CMU" / "notes.npz").write_text("not an archive")
    found = find_amass_files(tmp_path)
    assert [p.name for p in found] == ["01_01_poses.npz", "01_02_poses.npz"]
    assert all(read_amass(p).poses.shape == (2, 156) for p in found)
    with pytest.raises(FileNotFoundError):
        find_amass_files(tmp_path / "missing")
