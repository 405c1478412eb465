"""`geo3d data render` / render_dataset: argument checks, settings changes between runs,
Ctrl-C, help text (fresh-user report: non-rigid inputs and CLI edge cases)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("open3d_module")

TINY = dict(size=16, focal=18.0, level=0)  # 12 views of 16 x 16


def _settings(**kw):
    from geo3d.datasets.multiview_render import RenderSettings

    return RenderSettings(**{**TINY, **kw})


def _cli(argv, capsys):
    """(exit code, stdout, stderr) of ``geo3d data render ...``; argparse exits are caught."""
    from geo3d.cli import main

    try:
        code = main(["data", "render", "--no-progress", *argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _png_size(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size


class TestSettingsChangeBetweenRuns:
    def test_other_settings_are_refused_same_resume_overwrite_replaces(self, tmp_path):
        from geo3d.datasets.multiview_render import render_dataset

        out = tmp_path / "out1"
        a = render_dataset(out, num_synthetic=2, settings=_settings(), progress=False)
        assert (a["rendered"], a["skipped"]) == (2, 0)
        before = (out / "render_config.json").read_bytes()
        with pytest.raises(ValueError, match=r"out: .*out1.*size: 16 -> 24") as exc:
            render_dataset(out, num_synthetic=2, settings=_settings(size=24), progress=False)
        assert "overwrite" in str(exc.value)
        with pytest.raises(ValueError, match=r"seed: 0 -> 3"):
            render_dataset(out, num_synthetic=2, settings=_settings(), seed=3, progress=False)
        # refused runs change nothing: config and images stay those of the first run
        assert (out / "render_config.json").read_bytes() == before
        assert _png_size(out / "synthetic/Bottle_00000/color_000000.png") == (16, 16)
        # same settings: resume as before
        b = render_dataset(out, num_synthetic=2, settings=_settings(), progress=False)
        assert (b["rendered"], b["skipped"]) == (0, 2)
        # overwrite: everything re-rendered at the new size; objects of the old run that
        # are not part of the new one are removed; config matches the images
        c = render_dataset(out, num_synthetic=1, settings=_settings(size=24), overwrite=True, progress=False)
        assert (c["rendered"], c["skipped"], c["objects"]) == (1, 0, 1)
        assert _png_size(out / "synthetic/Bottle_00000/color_000000.png") == (24, 24)
        assert not (out / "synthetic/Bowl_00001").exists()
        assert json.loads((out / "render_config.json").read_text())["settings"]["size"] == 24
        assert (out / "objects.txt").read_text().split() == ["synthetic/Bottle_00000"]

    def test_settings_of_an_older_writer_are_read_from_meta(self, tmp_path):
        from geo3d.datasets.multiview_render import render_dataset

        out = tmp_path / "o"
        render_dataset(out, num_synthetic=1, settings=_settings(), progress=False)
        (out / "render_config.json").unlink()  # written by a version without the config
        with pytest.raises(ValueError, match=r"size: 16 -> 24"):
            render_dataset(out, num_synthetic=1, settings=_settings(size=24), progress=False)

    def test_cli_reports_the_change_in_one_line_exit_2(self, tmp_path, capsys):
        out = tmp_path / "out1"
        code, o, _ = _cli(["--synthetic", "1", "--size", "16", "--focal", "18", "--level", "0", str(out)], capsys)
        assert code == 0 and "1 rendered" in o
        code, o, err = _cli(["--synthetic", "1", "--size", "24", "--focal", "18", "--level", "0", str(out)], capsys)
        assert code == 2 and o == ""
        assert err.count("\n") == 1 and "error: out:" in err and str(out) in err
        assert "size: 16 -> 24" in err and "--overwrite" in err
        code, o, _ = _cli(["--synthetic", "1", "--size", "24", "--focal", "18", "--level", "0",
                           "--overwrite", str(out)], capsys)
        assert code == 0 and "1 rendered" in o
        assert _png_size(out / "synthetic/Bottle_00000/color_000000.png") == (24, 24)


class TestArgumentChecks:
    @pytest.mark.parametrize(
        "kw, name",
        [(dict(size=100000), "size"), (dict(size=4), "size"), (dict(size=True), "size"),
         (dict(level=-1), "level"), (dict(views="random", num_views=0), "num_views"),
         (dict(principal=float("nan")), "principal")],
    )
    def test_bad_settings_name_the_argument_and_write_nothing(self, tmp_path, kw, name):
        from geo3d.datasets.multiview_render import render_dataset

        with pytest.raises(ValueError, match=rf"^{name}: expected"):
            render_dataset(tmp_path / "x", num_synthetic=1, settings=_settings(**kw), progress=False)
        assert not (tmp_path / "x").exists()

    @pytest.mark.parametrize("kw, name", [(dict(workers=0), "workers"), (dict(workers=-2), "workers"),
                                          (dict(num_synthetic=-1), "num_synthetic")])
    def test_bad_counts_name_the_argument(self, tmp_path, kw, name):
        from geo3d.datasets.multiview_render import render_dataset

        kw = {"num_synthetic": 1, **kw}
        with pytest.raises(ValueError, match=rf"^{name}: expected"):
            render_dataset(tmp_path / "x", settings=_settings(), progress=False, **kw)
        assert not (tmp_path / "x").exists()

    def test_out_that_is_a_file(self, tmp_path, capsys):
        from geo3d.datasets.multiview_render import render_dataset

        f = tmp_path / "afile"
        f.write_text("keep me")
        with pytest.raises(ValueError, match="out: expected a folder"):
            render_dataset(f, num_synthetic=1, settings=_settings(), progress=False)
        code, o, err = _cli(["--synthetic", "1", str(f)], capsys)
        assert code == 2 and err.count("\n") == 1 and "out: expected a folder" in err
        assert "Traceback" not in err and f.read_text() == "keep me"

    @pytest.mark.parametrize(
        "args, flag",
        [(["--size", "100000"], "--size"), (["--size", "7"], "--size"), (["--level", "-1"], "--level"),
         (["--workers", "0"], "--workers"), (["--workers", "-2"], "--workers"),
         (["--synthetic", "-1"], "--synthetic"), (["--num-views", "0"], "--num-views")],
    )
    def test_cli_rejects_bad_numbers_up_front(self, tmp_path, capsys, args, flag):
        out = tmp_path / "o"
        code, o, err = _cli(["--synthetic", "1", *args, str(out)], capsys)
        # argparse's last line is the error; ours add nothing (no traceback, no per-object failures)
        assert code == 2 and o == ""
        assert err.strip().splitlines()[-1].startswith("geo3d data render: error: argument " + flag)
        assert not out.exists()  # no OUT, no render_config.json

    def test_constants_match_the_library(self):
        from geo3d.datasets import _render_cli, multiview_render

        assert _render_cli.SIZE_RANGE == multiview_render.SIZE_RANGE
        assert _render_cli.LEVEL_RANGE == multiview_render.LEVEL_RANGE
        assert _render_cli.MAX_VIEWS == multiview_render.MAX_VIEWS


class TestInterruptAndHelp:
    def test_ctrl_c_prints_one_line_and_exits_130(self, tmp_path, capsys, monkeypatch):
        from geo3d.datasets import multiview_render

        def interrupted(*a, **k):
            raise KeyboardInterrupt

        monkeypatch.setattr(multiview_render, "render_dataset", interrupted)
        code, o, err = _cli(["--synthetic", "1", str(tmp_path / "o")], capsys)
        assert code == 130
        assert err.strip() == "geo3d data render: interrupted; re-run the same command to resume"

    def test_help_text(self, capsys):
        code, o, _ = _cli(["--help"], capsys)
        assert code == 0
        assert "%" not in o and "color_000000.png" in o
        usage = " ".join(o.split("\n\n")[0].split())
        assert usage.endswith("[MESH_DIR] OUT") and "[[MESH_DIR]" not in usage and "--overwrite" in usage

    def test_one_positional_is_out(self, tmp_path, capsys):
        code, o, err = _cli(["--synthetic", "1", "--size", "16", "--focal", "18", "--level", "0",
                             str(tmp_path / "only")], capsys)
        assert code == 0 and (tmp_path / "only" / "synthetic/Bottle_00000/complete.json").is_file()
        code, o, err = _cli([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")], capsys)
        assert code == 2 and "unrecognized arguments" in err


def test_multiview_pairs_rejects_non_rigid_poses(tmp_path):
    from geo3d.datasets.multiview import MultiviewPairs
    from geo3d.datasets.multiview_render import render_dataset

    render_dataset(tmp_path / "r", num_synthetic=1, settings=_settings(), progress=False)
    poses = np.load(tmp_path / "r/synthetic/Bottle_00000/poses.npy")
    bad = poses.copy()
    bad[:, 3, 3] = 5.0
    with pytest.raises(ValueError, match="poses: .*bottom row"):
        MultiviewPairs(tmp_path / "r", poses=bad)
    refl = poses.copy()
    refl[:, :3, 2] *= -1
    with pytest.raises(ValueError, match="poses: .*determinant"):
        MultiviewPairs(tmp_path / "r", poses=refl)
