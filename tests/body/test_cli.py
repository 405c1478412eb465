"""``geo3d body …`` end to end on the tiny body and a stand-in official pickle."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from geo3d.cli import main


def test_help_lists_body():
    with pytest.raises(SystemExit):
        main(["body", "--help"])


def test_convert_cli(tmp_path, fake_chumpy_pickle):
    out = tmp_path / "plain.npz"
    assert main(["body", "convert", str(fake_chumpy_pickle), str(out)]) == 0
    z = np.load(out, allow_pickle=False)
    assert z["v_template"].shape == (768, 3) and z["J_regressor"].shape == (24, 768)


def test_convert_cli_refuses_payload(tmp_path, capsys):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps({"x": Evil()}))
    # the CLI reports user errors (ValueError) on stderr with exit code 2
    assert main(["body", "convert", str(src), str(tmp_path / "o.npz")]) == 2
    assert "system" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "o.npz").exists()


def test_motions_cli(tmp_path):
    from geo3d.body import read_amass

    assert (
        main(
            [
                "body",
                "motions",
                str(tmp_path),
                "--num-sequences",
                "3",
                "--frames",
                "5",
                "--extreme",
                "4",
            ]
        )
        == 0
    )
    files = sorted(p.name for p in tmp_path.glob("*.npz"))
    assert files == [
        "0000_walking_poses.npz",
        "0001_running_poses.npz",
        "0002_sitting_poses.npz",
        "extreme_poses.npz",
    ]
    assert read_amass(tmp_path / "extreme_poses.npz").poses.shape == (4, 72)


def test_scan_cli_full_and_partial(tmp_path):
    pytest.importorskip("open3d")
    out = tmp_path / "s.npz"
    assert main(["body", "scan", "tiny", str(out), "--num", "2", "--points", "300"]) == 0
    z = np.load(out)
    assert z["points_0"].shape == (300, 3) and z["arteq_labels_1"].shape == (300,)
    assert (
        main(
            [
                "body",
                "scan",
                "tiny",
                str(out),
                "--num",
                "1",
                "--partial",
                "--width",
                "40",
                "--height",
                "30",
            ]
        )
        == 0
    )
    z = np.load(out)
    assert z["depth_0"].shape == (30, 40) and len(z["points_0"]) == np.isfinite(z["depth_0"]).sum()


def test_show_cli_writes_coloured_png(tmp_path):
    import matplotlib.image as mpimg

    out = tmp_path / "b.png"
    assert main(["body", "show", "tiny", str(out), "--num", "2", "--kinds", "rest,walking"]) == 0
    img = mpimg.imread(out)[..., :3]
    colours = np.unique((img.reshape(-1, 3) * 8).astype(int), axis=0)
    assert len(colours) > 20  # part colours and shading, not a blank canvas


def test_convert_refuses_to_overwrite_its_source_or_write_npz_under_another_name(
        tmp_path, fake_chumpy_pickle, capsys):
    """Bug caught: `convert X.pkl X.pkl` replaced the user's official model by an npz under
    the .pkl name (no longer loadable), and any OUT.pkl held npz data."""
    from geo3d.body import convert_model

    before = fake_chumpy_pickle.read_bytes()
    assert main(["body", "convert", str(fake_chumpy_pickle), str(fake_chumpy_pickle)]) == 2
    assert "OUTPUT: expected a file name ending in .npz" in capsys.readouterr().err
    assert main(["body", "convert", str(fake_chumpy_pickle), str(tmp_path / "o.pkl")]) == 2
    assert not (tmp_path / "o.pkl").exists()
    plain = tmp_path / "plain.npz"
    assert main(["body", "convert", str(fake_chumpy_pickle), str(plain)]) == 0
    first = plain.read_bytes()
    assert main(["body", "convert", str(plain), str(plain)]) == 2
    assert "OUTPUT: expected a file other than INPUT" in capsys.readouterr().err
    with pytest.raises(ValueError, match="dst: expected a file other than the source"):
        convert_model(plain, tmp_path / "." / "plain.npz")
    with pytest.raises(ValueError, match="dst: expected an output file name ending in .npz"):
        convert_model(fake_chumpy_pickle, tmp_path / "x.pkl")
    assert fake_chumpy_pickle.read_bytes() == before and plain.read_bytes() == first


def test_show_writes_the_format_its_name_says(tmp_path, capsys):
    """Bug caught: `body show tiny out.jpg` wrote PNG data under the .jpg name; an unknown
    extension is now refused before the model is built."""
    assert main(["body", "show", "tiny", str(tmp_path / "b.jpg"), "--num", "1",
                 "--kinds", "rest"]) == 0
    assert (tmp_path / "b.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG magic
    assert main(["body", "show", "tiny", str(tmp_path / "b.png"), "--num", "1",
                 "--kinds", "rest"]) == 0
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["body", "show", "tiny", str(tmp_path / "b.xyz"), "--num", "1"]) == 2
    assert "OUT: expected an image file name ending in one of" in capsys.readouterr().err
    assert not (tmp_path / "b.xyz").exists()


def test_scan_records_the_translation_of_a_motion(tmp_path):
    """Bug caught: with --motion the motion's root translation moved the points (frame 80
    of a walk: 6.7 m) but the .npz kept only the poses, so the scanned bodies could not be
    rebuilt; `trans` is now written."""
    import torch

    from geo3d.body import load_body_model, pose_body, synthetic_motion, write_amass
    from geo3d.body._tiny import write_tiny_body

    m = synthetic_motion("walking", 40, generator=torch.Generator().manual_seed(0))
    write_amass(tmp_path / "walk.npz", m)
    out = tmp_path / "s.npz"
    assert main(["body", "scan", "tiny", str(out), "--num", "2", "--points", "200",
                 "--noise", "0", "--motion", str(tmp_path / "walk.npz")]) == 0
    z = np.load(out)
    assert z["trans"].shape == (2, 3) and np.abs(z["trans"]).max() > 0.1
    body = load_body_model(write_tiny_body(tmp_path / "t.npz"), dtype=torch.float64)
    posed = pose_body(body, torch.from_numpy(z["poses"]), trans=torch.from_numpy(z["trans"]))
    for i in range(2):  # every point lies on the rebuilt body (no noise)
        d = torch.cdist(torch.from_numpy(z[f"points_{i}"]).double(), posed.vertices[i])
        assert d.min(1).values.max() < 0.1  # on the 768-vertex mesh: near a vertex
        assert d.min(1).values.mean() < 0.03


def test_kinds_allow_spaces_and_refuse_empty_names(tmp_path, capsys):
    """Bug caught: `--kinds "walking, running"` was refused ('unknown kind " running"')
    and `--kinds "walking,,running"` failed inside the motion generator."""
    assert main(["body", "motions", str(tmp_path), "--num-sequences", "2", "--frames", "3",
                 "--kinds", "walking, running"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["0000_walking_poses.npz",
                                                              "0001_running_poses.npz"]
    assert main(["body", "motions", str(tmp_path), "--kinds", "walking,,running"]) == 2
    assert "--kinds: expected comma-separated names" in capsys.readouterr().err
