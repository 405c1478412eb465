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
from geo3d.body._motions import Motion


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
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        found = find_amass_files(tmp_path)
    assert [p.name for p in found] == ["01_01_poses.npz", "01_02_poses.npz"]
    assert all(read_amass(p).poses.shape == (2, 156) for p in found)
    with pytest.raises(FileNotFoundError):
        find_amass_files(tmp_path / "missing")


def _amass_arrays(T=4, width=156, **changes):
    rng = np.random.default_rng(7)
    arrays = dict(poses=rng.normal(size=(T, width)), trans=rng.normal(size=(T, 3)),
                  betas=rng.normal(size=16), gender=np.array("female"),
                  mocap_framerate=np.array(120.0))  # fmt: skip
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def test_read_amass_unreadable_files_are_value_errors_naming_the_file(tmp_path):
    """Bug: a truncated .npz raised zipfile.BadZipFile, a text file numpy's "contains pickled
    data", a .npy a TypeError (context manager); a missing file stays FileNotFoundError."""
    good = tmp_path / "good.npz"
    np.savez(good, **_amass_arrays())
    data = good.read_bytes()
    cases = {"truncated.npz": data[: len(data) // 2], "text.npz": b"hello",
             "zeroed.npz": data[:200] + bytes(len(data) - 200)}  # fmt: skip
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    np.save(tmp_path / "array.npy", np.zeros(3))
    for name in [*cases, "array.npy"]:
        p = tmp_path / name
        with pytest.raises(ValueError, match="readable AMASS .npz") as info:
            read_amass(p)
        assert str(p) in str(info.value)
    with pytest.raises(FileNotFoundError):
        read_amass(tmp_path / "missing.npz")
    np.testing.assert_array_equal(read_amass(good).poses.numpy(), _amass_arrays()["poses"])


def test_scan_cli_damaged_motion_is_a_one_line_error(tmp_path, capsys):
    """Bug: `geo3d body scan tiny out.npz --motion truncated.npz` printed a BadZipFile
    traceback (exit 1) instead of the CLI's one-line error (exit 2)."""
    from geo3d.cli import main

    src = tmp_path / "m.npz"
    np.savez(src, **_amass_arrays(width=72))
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(src.read_bytes()[:300])
    out = tmp_path / "out.npz"
    assert main(["body", "scan", "tiny", str(out), "--motion", str(bad), "--num", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "readable AMASS .npz" in err[0]
    assert not out.exists()


def test_find_amass_files_skips_damaged_archives_with_one_warning(tmp_path):
    """Bug: one truncated .npz under root made find_amass_files raise BadZipFile."""
    from geo3d.body import find_amass_files

    (tmp_path / "S1").mkdir()
    for name in ("a_poses.npz", "c_poses.npz"):
        np.savez(tmp_path / "S1" / name, **_amass_arrays())
    data = (tmp_path / "S1" / "a_poses.npz").read_bytes()
    (tmp_path / "S1" / "b_poses.npz").write_bytes(data[: len(data) // 2])
    np.save(tmp_path / "S1" / "d_poses.npy", np.zeros(3))
    (tmp_path / "S1" / "d_poses.npy").rename(tmp_path / "S1" / "d_poses.npz")
    (tmp_path / "S1" / "folder.npz").mkdir()  # a folder is not a file: not listed, no warning
    with pytest.warns(UserWarning) as record:
        found = find_amass_files(tmp_path)
    assert [p.name for p in found] == ["a_poses.npz", "c_poses.npz"]
    assert len(record) == 1
    msg = str(record[0].message)
    assert "skipped 2 unreadable" in msg
    assert str(tmp_path / "S1" / "b_poses.npz") in msg and str(tmp_path / "S1" / "d_poses.npz") in msg


def test_synthetic_motions_empty_kinds():
    """Bug: kinds=() raised ZeroDivisionError (integer modulo by zero)."""
    with pytest.raises(ValueError, match="^kinds: expected at least one"):
        synthetic_motions(3, 5, kinds=())
    with pytest.raises(ValueError, match="^kinds: expected a tuple of names"):
        synthetic_motions(3, 5, kinds="walking")
    # arguments are checked even when no motion is made
    with pytest.raises(ValueError, match="^framerate"):
        synthetic_motions(0, 5, framerate=0.0)
    with pytest.raises(ValueError, match="^num_sequences"):
        synthetic_motions(True, 5)
    ms = synthetic_motions(3, 5, kinds=["sitting", "waving"], framerate=25,
                           generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert [m.label for m in ms] == ["sitting", "waving", "sitting"]
    assert [m.framerate for m in ms] == [25.0, 25.0, 25.0]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"noise": -1.0}, "noise"), ({"noise": float("nan")}, "noise"),
        ({"noise": float("inf")}, "noise"), ({"noise": "0.1"}, "noise"),
        ({"framerate": 0}, "framerate"), ({"framerate": -30.0}, "framerate"),
        ({"framerate": float("inf")}, "framerate"), ({"framerate": float("nan")}, "framerate"),
        ({"framerate": True}, "framerate"), ({"generator": 0}, "generator"),
    ],
)  # fmt: skip
def test_synthetic_motion_checks_its_numbers(kwargs, name):
    """Bug: noise=-1 and framerate=inf were accepted; noise=nan and framerate=0 failed with
    "R: expected finite values" (an internal name)."""
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        synthetic_motion("walking", 10, **kwargs)


def test_synthetic_motion_valid_numbers_unchanged():
    """Bug: framerate=np.int64(30) (a numpy scalar, e.g. read from a file) was refused by
    Motion; valid noise/framerate of any real type give the same motion."""
    a = synthetic_motion("walking", 10, framerate=30.0, noise=0.0,
                         generator=torch.Generator().manual_seed(1))  # fmt: skip
    b = synthetic_motion("walking", 10, framerate=np.int64(30), noise=0,
                         generator=torch.Generator().manual_seed(1))  # fmt: skip
    torch.testing.assert_close(a.poses, b.poses, atol=0, rtol=0)
    assert b.framerate == 30.0 and isinstance(b.framerate, float)
    # the walking speed is per second: twice the framerate halves the distance per frame
    c = synthetic_motion("walking", 10, framerate=60.0, noise=0.0,
                         generator=torch.Generator().manual_seed(1))  # fmt: skip
    torch.testing.assert_close(c.trans[:, [0, 2]] * 2, a.trans[:, [0, 2]], atol=1e-12, rtol=0)


def test_extreme_poses_and_euler_check_their_arguments():
    """Bug: margin="0.1" raised TypeError (str < float), a bool margin/fraction passed as a
    number; euler_xyz_to_matrix on an int tensor silently truncated cos/sin to 0/1 and a
    (*, 4) tensor gave "too many values to unpack"."""
    with pytest.raises(ValueError, match="^margin"):
        extreme_poses(3, margin="0.1")
    with pytest.raises(ValueError, match="^margin"):
        extreme_poses(3, margin=False)
    with pytest.raises(ValueError, match="^fraction_at_limit"):
        extreme_poses(3, fraction_at_limit=float("nan"))
    with pytest.raises(ValueError, match="^generator"):
        extreme_poses(3, generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="^angles: expected a floating tensor"):
        euler_xyz_to_matrix(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"^angles: expected shape \(\*, 3\)"):
        euler_xyz_to_matrix(torch.zeros(2, 4))
    ang = torch.tensor([[0.3, -0.2, 1.1]], dtype=torch.float32)
    ref = Rotation.from_euler("XYZ", ang.double().numpy()).as_matrix()
    np.testing.assert_allclose(euler_xyz_to_matrix(ang).numpy(), ref, atol=1e-6)


def test_read_amass_dtype_framerate_gender_and_object_arrays(tmp_path):
    """Bugs: dtype=torch.int64 gave "poses: expected a floating tensor" (not naming dtype); a
    one-element mocap_framerate array gave a raw TypeError; a gender stored as an object
    array gave "Object arrays cannot be loaded"; gender 'robot' was accepted."""
    p = tmp_path / "seq.npz"
    np.savez(p, **_amass_arrays())
    with pytest.raises(ValueError, match="^dtype: expected a floating torch dtype"):
        read_amass(p, dtype=torch.int64)
    assert read_amass(p, dtype=torch.float32).poses.dtype == torch.float32

    np.savez(p, **_amass_arrays(mocap_framerate=np.array([60.0])))
    assert read_amass(p).framerate == 60.0
    for bad, what in ((np.array([30.0, 60.0]), "one-element"), (np.array("fast"), "a number"),
                      (np.array(0.0), "finite number > 0"), (np.array(np.inf), "> 0")):  # fmt: skip
        np.savez(p, **_amass_arrays(mocap_framerate=bad))
        with pytest.raises(ValueError, match=f"^mocap_framerate: expected .*{what}") as info:
            read_amass(p)
        assert str(p) in str(info.value)

    arrays = _amass_arrays()
    for stored, expected in ((np.array("male", dtype=object), "male"),
                             (np.array(["female"], dtype=object), "female"),
                             (np.array(b"neutral"), "neutral"), (np.array(" Male "), "male")):  # fmt: skip
        np.savez(p, **{**arrays, "gender": stored})
        m = read_amass(p)
        assert m.gender == expected
        np.testing.assert_array_equal(m.poses.numpy(), arrays["poses"])
    for stored in (np.array("robot"), np.array(["male", "female"]), np.array(1)):
        np.savez(p, **{**arrays, "gender": stored})
        with pytest.raises(ValueError, match="^gender: expected") as info:
            read_amass(p)
        assert str(p) in str(info.value)
    with pytest.raises(ValueError, match="^gender"):
        Motion(torch.zeros(1, 72, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64),
               torch.zeros(10, dtype=torch.float64), gender="robot")  # fmt: skip


def test_read_amass_smplx_release_layout(tmp_path):
    """Bug: (T, 165) SMPL-X poses were read although the docs listed only 156/72, and the
    release's pickled markers_latent_vids (object array) made the file unreadable. The body
    joints poses[:, :66] are SMPL's first 22; jaw, eyes and fingers are dropped."""
    rng = np.random.default_rng(3)
    poses = rng.normal(size=(5, 165))
    p = tmp_path / "smplx_poses.npz"
    np.savez(p, poses=poses, trans=rng.normal(size=(5, 3)), betas=rng.normal(size=16),
             gender=np.array("male"), mocap_frame_rate=np.array(120.0),
             surface_model_type=np.array("smplx"),
             markers_latent_vids=np.array({"C7": 3832}, dtype=object),
             pose_jaw=poses[:, 66:69])  # fmt: skip
    m = read_amass(p)
    assert m.poses.shape == (5, 165) and m.framerate == 120.0 and m.gender == "male"
    sp = m.smpl_poses()
    np.testing.assert_array_equal(sp[:, :66].numpy(), poses[:, :66])
    assert sp.shape == (5, 72) and (sp[:, 66:] == 0).all()
    assert sorted(m.extra) == ["pose_jaw", "surface_model_type"]  # the pickled dict is left out
    out = write_amass(tmp_path / "copy.npz", m)  # object arrays would be refused here
    np.testing.assert_array_equal(read_amass(out).poses.numpy(), poses)
    short = Motion(torch.zeros(2, 9, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64),
                   torch.zeros(10, dtype=torch.float64))  # fmt: skip
    with pytest.raises(ValueError, match="^poses: expected"):
        short.smpl_poses()


def test_read_amass_shape_and_value_errors_name_the_file(tmp_path):
    """Bug: shape/finite errors from Motion did not name the file; string poses were parsed
    as numbers; betas (T, K) were flattened into one (T K,) vector; T = 0 was accepted."""
    p = tmp_path / "bad.npz"
    cases = [
        (_amass_arrays(width=70), "^poses: expected shape"),
        (_amass_arrays(trans=np.full((4, 3), np.nan)), "^trans: expected finite"),
        (_amass_arrays(poses=np.zeros((4, 72)).astype(str)), "^poses: expected a numeric"),
        (_amass_arrays(betas=np.zeros((4, 16))), "^betas: expected shape"),
        (_amass_arrays(T=0), "^poses: expected at least one frame"),
    ]
    for arrays, pattern in cases:
        np.savez(p, **arrays)
        with pytest.raises(ValueError, match=pattern) as info:
            read_amass(p)
        assert str(p) in str(info.value)
    np.savez(p, **_amass_arrays(betas=np.arange(16.0)[None]))
    np.testing.assert_array_equal(read_amass(p).betas.numpy(), np.arange(16.0))


def test_write_amass_extra_does_not_replace_the_motion():
    """Bug: an extra array named "poses" overwrote the motion's poses in the file."""
    import tempfile

    m = synthetic_motion("waving", 3, generator=torch.Generator().manual_seed(0))
    m.extra["poses"] = np.zeros((3, 72))
    out = write_amass(tempfile.mkdtemp() + "/w.npz", m)
    np.testing.assert_array_equal(read_amass(out).poses.numpy(), m.poses.numpy())
    with pytest.raises(ValueError, match="^motion: expected a Motion"):
        write_amass(tempfile.mkdtemp() + "/w.npz", {"poses": m.poses})
