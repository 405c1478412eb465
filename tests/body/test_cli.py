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
