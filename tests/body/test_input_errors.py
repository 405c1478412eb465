"""Bad input to the body layer and ``geo3d body``: clear errors naming the argument/file.

Each test names the fault it catches (found by a fresh-user run of the CLI).
"""

from __future__ import annotations

import math

import pytest
import torch

from geo3d.body import (
    SMPL_PARENTS,
    depth_camera_scan,
    forward_kinematics,
    global_to_local,
    load_body_model,
    local_to_global,
    look_at,
    part_labels,
    pinhole_intrinsics,
    pose_body,
    sample_surface_scan,
    tiny_body_dict,
    write_tiny_body,
)
from geo3d.cli import main


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_body(tmp_path_factory.mktemp("tiny") / "tiny.npz")


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return load_body_model(tiny_path, dtype=torch.float64)


@pytest.fixture(scope="module")
def mesh():
    d = tiny_body_dict()
    return (
        torch.as_tensor(d["v_template"], dtype=torch.float64),
        torch.as_tensor(d["f"]).long(),
        torch.as_tensor(d["weights"], dtype=torch.float64),
    )


def _cli_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("geo3d: error: "), (code, err)
    return err[0]


# --- rotations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        2 * torch.eye(3, dtype=torch.float64),  # scaled (det 8 > 0: the policy would project it)
        torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)),  # reflection
        torch.tensor([[1.0, 0.1, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64),  # shear
    ],
)
def test_non_rotations_refused(tiny, bad):
    """Bug caught: pose_body / forward_kinematics / local<->global accepted any 3x3 matrix."""
    R = torch.eye(3, dtype=torch.float64).repeat(1, 24, 1, 1)
    R[0, 5] = bad
    with pytest.raises(ValueError, match="pose: expected rotation matrices"):
        pose_body(tiny, R)
    rest = torch.zeros(24, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="local_rotations: expected rotation"):
        forward_kinematics(R[0], rest, SMPL_PARENTS)
    with pytest.raises(ValueError, match="local_rotations: expected rotation"):
        local_to_global(R[0], SMPL_PARENTS)
    with pytest.raises(ValueError, match="global_rotations: expected rotation"):
        global_to_local(R[0], SMPL_PARENTS)


def test_float32_rotations_and_tracing_still_pass(tiny):
    """Bug caught: a tolerance too tight for float32 rotations, or a check run under vmap."""
    from geo3d.rotations import axis_angle_to_matrix

    g = torch.Generator().manual_seed(0)
    aa = torch.randn(3, 24, 3, generator=g, dtype=torch.float64)
    R = axis_angle_to_matrix(aa)
    out = pose_body(tiny, R)
    ref = pose_body(tiny, aa.reshape(3, 72))
    torch.testing.assert_close(out.vertices, ref.vertices)
    rest = torch.zeros(24, 3)
    forward_kinematics(R.float(), rest, SMPL_PARENTS)  # float32 rounding: accepted
    # under torch.func no data-dependent check runs (2*I goes through, as in geo3d.rotations)
    bad = 2 * torch.eye(3).expand(2, 24, 3, 3)
    G = torch.func.vmap(lambda r: local_to_global(r, SMPL_PARENTS))(bad)
    assert torch.allclose(G[0, 0], 2 * torch.eye(3))


def test_empty_batch_is_a_clear_error(tiny):
    """Bug caught: pose_body with B = 0 raised a RuntimeError from inside smplx."""
    with pytest.raises(ValueError, match="pose: expected a batch of at least one"):
        pose_body(tiny, torch.zeros(0, 72, dtype=torch.float64))
    with pytest.raises(ValueError, match="pose: expected a batch of at least one"):
        pose_body(tiny, torch.zeros(0, 24, 3, 3, dtype=torch.float64))


def test_num_betas_above_the_file_raises(tiny_path):
    """Bug caught: num_betas=300 silently gave the file's 10 betas."""
    with pytest.raises(ValueError, match="num_betas: expected at most the 10"):
        load_body_model(tiny_path, num_betas=300)
    assert load_body_model(tiny_path).num_betas == 10
    assert load_body_model(tiny_path, num_betas=4).num_betas == 4


# --- weights -------------------------------------------------------------------------------


def test_weights_that_are_not_skinning_weights_refused(mesh):
    """Bug caught: weights with columns cut off (w[:, :5]) or random values were accepted."""
    v, f, w = mesh
    g = torch.Generator().manual_seed(0)
    for bad in (torch.rand(10, 5, generator=g), w[:, :5], -w, 2 * w):
        with pytest.raises(ValueError, match="weights: expected skinning weights"):
            part_labels(bad)
    with pytest.raises(ValueError, match="weights: expected skinning weights"):
        sample_surface_scan(v, f, w[:, :5], 10)
    # the model's own weights and one-hot rows pass; labels are the argmax
    assert torch.equal(part_labels(w), w.argmax(-1))
    eye = torch.eye(24, dtype=torch.float64)[torch.tensor([3, 0, 23])]
    assert part_labels(eye).tolist() == [3, 0, 23]


# --- camera --------------------------------------------------------------------------------


@pytest.mark.parametrize("fov", [0.0, -10.0, 180.0, 200.0, math.nan])
def test_pinhole_fov_range(fov):
    """Bug caught: fov 0 divided by zero; fov >= 180 gave a negative focal length."""
    with pytest.raises(ValueError, match="fov_y_deg"):
        pinhole_intrinsics(64, 48, fov)


def test_pinhole_value_matches_formula():
    K = pinhole_intrinsics(64, 48, 90.0)
    assert K[0, 0].item() == pytest.approx(24.0, rel=1e-12)  # f = h / 2 / tan(45°)
    assert K[:2, 2].tolist() == [32.0, 24.0]


def test_depth_camera_refuses_bad_K_and_pose(mesh):
    """Bug caught: fx = 0 raised _LinAlgError; fx < 0 (mirror) and a scaled pose were scanned."""
    pytest.importorskip("open3d")
    v, f, w = mesh
    K = pinhole_intrinsics(16, 12, 60.0)
    T = look_at(v.mean(0) + torch.tensor([0.0, 0.3, 3.0], dtype=torch.float64), v.mean(0))
    for fx in (0.0, -K[0, 0].item()):
        K2 = K.clone()
        K2[0, 0] = fx
        with pytest.raises(ValueError, match="intrinsics"):
            depth_camera_scan(v, f, w, K2, T, 16, 12)
    K3 = K.clone()
    K3[2, 0] = 0.1
    with pytest.raises(ValueError, match="intrinsics"):
        depth_camera_scan(v, f, w, K3, T, 16, 12)
    T2 = T.clone()
    T2[:3, :3] *= 2.0
    with pytest.raises(ValueError, match="cam_to_world"):
        depth_camera_scan(v, f, w, K, T2, 16, 12)
    T3 = T.clone()
    T3[:3, 0] *= -1.0  # mirrored camera
    with pytest.raises(ValueError, match="cam_to_world"):
        depth_camera_scan(v, f, w, K, T3, 16, 12)
    s = depth_camera_scan(v, f, w, K, T, 16, 12)  # the valid camera still scans
    assert s.points.shape[0] == int(torch.isfinite(s.depth).sum()) > 0


# --- CLI -------------------------------------------------------------------------------------


def test_cli_out_is_an_existing_folder(tmp_path, capsys, fake_chumpy_pickle):
    """Bug caught: IsADirectoryError naming the temp file .x.tmp instead of OUT."""
    d = tmp_path / "body"
    d.mkdir()
    for argv in (
        ["body", "convert", str(fake_chumpy_pickle), str(d)],
        ["body", "scan", "tiny", str(d), "--num", "1", "--points", "10"],
        ["body", "show", "tiny", str(d), "--num", "1"],
    ):
        line = _cli_error(capsys, argv)
        assert "OUT" in line and str(d) in line and ".tmp" not in line
    assert list(d.iterdir()) == []


def test_cli_convert_non_pickle(tmp_path, capsys):
    """Bug caught: UnpicklingError traceback with exit 1 for a text file named .pkl."""
    p = tmp_path / "text.pkl"
    p.write_text("hello\nworld\n")
    line = _cli_error(capsys, ["body", "convert", str(p), str(tmp_path / "o.npz")])
    assert str(p) in line and "not a readable pickle" in line
    assert not (tmp_path / "o.npz").exists()


def test_cli_motions_bad_out_and_counts(tmp_path, capsys):
    """Bug caught: FileExistsError traceback for a file OUT; --extreme -1 named num_frames."""
    f = tmp_path / "file.npz"
    f.write_bytes(b"x")
    line = _cli_error(capsys, ["body", "motions", str(f)])
    assert "OUT" in line and str(f) in line
    for flag, value in (("--extreme", "-1"), ("--frames", "0"), ("--num-sequences", "0")):
        line = _cli_error(capsys, ["body", "motions", str(tmp_path / "m"), flag, value])
        assert line.startswith(f"geo3d: error: {flag}: ")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--partial", "--fov", "0"], "--fov"),
        (["--partial", "--fov", "200"], "--fov"),
        (["--num", "0"], "--num"),
        (["--points", "0"], "--points"),
        (["--partial", "--width", "0"], "--width"),
        (["--partial", "--eye", "0", "0", "0"], "--eye"),
    ],
)
def test_cli_scan_bad_options(tmp_path, capsys, args, flag):
    """Bug caught: --fov 0 ZeroDivisionError traceback; --fov 200 wrote empty scans."""
    out = tmp_path / "s.npz"
    line = _cli_error(capsys, ["body", "scan", "tiny", str(out), *args])
    assert line.startswith(f"geo3d: error: {flag}")
    assert not out.exists()


def test_cli_scan_camera_that_sees_nothing(tmp_path, capsys):
    """Bug caught: an eye behind which the body is not visible wrote a 0-point scan, exit 0."""
    pytest.importorskip("open3d")
    out = tmp_path / "s.npz"
    # 100 m away at 8x6 pixels the body falls between the pixel rays: no hit at all
    argv = ["body", "scan", "tiny", str(out), "--partial", "--num", "1", "--eye", "0", "0", "-100"]
    argv += ["--width", "8", "--height", "6"]
    line = _cli_error(capsys, argv)
    assert "--eye/--fov" in line and "sees no point" in line
    assert not out.exists()


def test_cli_show_num_zero(tmp_path, capsys):
    """Bug caught: --num 0 gave 'torch.cat(): expected a non-empty list'."""
    line = _cli_error(capsys, ["body", "show", "tiny", str(tmp_path / "x.png"), "--num", "0"])
    assert line.startswith("geo3d: error: --num")


def test_library_writers_refuse_an_existing_folder(tmp_path, mesh):
    """Bug caught: writers raised IsADirectoryError naming their temp file, after the work."""
    from geo3d.body import extreme_poses, write_amass
    from geo3d.body._anny import anny_smpl_model_path
    from geo3d.body._show import render_bodies_png

    d = tmp_path / "dir"
    d.mkdir()
    with pytest.raises(IsADirectoryError, match=f"path: .*{d.name}"):
        write_amass(d, extreme_poses(1, generator=torch.Generator().manual_seed(0)))
    v, f, w = mesh
    with pytest.raises(IsADirectoryError, match=f"path: .*{d.name}"):
        render_bodies_png(d, v[None], f, w.argmax(-1))
    # checked before the (minutes-long) Anny build starts, anny installed or not
    with pytest.raises(IsADirectoryError, match=f"out: .*{d.name}"):
        anny_smpl_model_path(d, rebuild=True)
    assert list(d.iterdir()) == []
    with pytest.raises(ValueError, match="vertices: expected shape"):
        render_bodies_png(tmp_path / "x.png", v[None][:0], f, w.argmax(-1))


def test_extreme_poses_names_num_poses():
    """Bug caught: extreme_poses(-1) said 'num_frames' (and so did `--extreme -1`)."""
    from geo3d.body import extreme_poses

    with pytest.raises(ValueError, match="num_poses: expected a positive int"):
        extreme_poses(-1)


def test_cli_make_model_out_folder(tmp_path, capsys):
    line = _cli_error(capsys, ["body", "make-model", str(tmp_path)])
    assert "OUT" in line and str(tmp_path) in line


def test_damaged_anny_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    """Bug caught: a truncated cached body model (a disk filled up, a copy cut short) was
    returned as is, and every later load failed inside numpy's zip reader."""
    pytest.importorskip("anny")
    import numpy as np

    from geo3d.body import _anny

    monkeypatch.setenv("GEO3D_CACHE_DIR", str(tmp_path))
    calls = []
    good = {k: np.ones((2, 3)) for k in ("v_template", "shapedirs", "J_regressor", "weights",
                                         "f")}

    def fake_build(num_betas, num_samples, seed, verbose=False):
        calls.append((num_betas, num_samples, seed))
        return good, {"fake": True}

    monkeypatch.setattr(_anny, "build_anny_smpl_model", fake_build)
    cache = _anny.anny_smpl_cache_file()
    cache.parent.mkdir(parents=True)
    _anny.atomic_save_npz(cache, good)
    assert _anny.anny_smpl_model_path() == cache and calls == []  # intact: not rebuilt
    data = cache.read_bytes()
    for damaged in (data[: len(data) // 2], b"", data.replace(b"v_template", b"x_template")):
        cache.write_bytes(damaged)
        with pytest.warns(UserWarning, match="unreadable.*rebuilding"):
            assert _anny.anny_smpl_model_path() == cache
        with np.load(cache) as z:
            assert sorted(z.files) == sorted(good)
    assert len(calls) == 3


def test_pose_body_betas_shapes_models_and_overflow(tiny, tiny_path):
    """Bugs caught: the betas error said 'expected shape (2, B)' (the pose count where K
    belongs); one shape for every pose (1, K) was refused; a module that is not a body gave
    AttributeError; float32 axis-angles of 1e30 gave a NaN mesh silently; load_body_model
    with an integer dtype gave torch's RuntimeError."""
    pose = 0.2 * torch.randn(3, 72, generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64)
    with pytest.raises(ValueError, match=r"betas: expected shape \(B, K\) with B = 3 poses "
                                         r"\(or 1\) and K <= 10, got \(2, 10\)"):
        pose_body(tiny, pose, betas=torch.zeros(2, 10, dtype=torch.float64))
    b = torch.linspace(-1, 1, 10, dtype=torch.float64)
    one = pose_body(tiny, pose, betas=b[None]).vertices
    each = pose_body(tiny, pose, betas=b.expand(3, 10)).vertices
    torch.testing.assert_close(one, each, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"trans: expected shape \(B, 3\) with B = 3"):
        pose_body(tiny, pose, trans=torch.zeros(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="model: expected an smplx SMPL-family model"):
        pose_body(torch.nn.Linear(2, 2), pose)
    m32 = load_body_model(tiny_path)
    with pytest.raises(ValueError, match="pose: expected axis-angles of a usable size"):
        pose_body(m32, torch.full((1, 72), 1e30))
    with pytest.raises(ValueError, match="dtype: expected a floating torch dtype"):
        load_body_model(tiny_path, dtype=torch.int64)


@pytest.mark.parametrize("change,match", [
    (lambda d: d.update(weights=2 * d["weights"]), "weights': expected skinning weights"),
    (lambda d: d.update(weights=d["weights"] - 0.01), "weights': expected skinning weights"),
    (lambda d: d.update(v_template=d["v_template"] + 1j), "v_template': expected a real numeric"),
    (lambda d: d.update(f=d["f"][:0]), "'f': expected at least one triangle"),
])
def test_model_files_with_non_weights_complex_values_or_no_faces_are_refused(
        tmp_path, change, match):
    """Bug caught: weights summing to 2 (or negative) loaded and converted, and failed only
    later in a scan; complex vertices lost their imaginary part with numpy's warning; a
    model without triangles loaded."""
    import numpy as np

    from geo3d.body import convert_model

    d = {k: np.asarray(v) for k, v in tiny_body_dict().items()}
    change(d)
    path = tmp_path / "m.npz"
    np.savez(path, **d)
    with pytest.raises(ValueError, match=match):
        load_body_model(path)
    with pytest.raises(ValueError, match=match):
        convert_model(path, tmp_path / "o.npz")
    assert not (tmp_path / "o.npz").exists()
