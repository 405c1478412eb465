"""``geo3d multiview demo`` end to end with a tiny ViT (slow: fit + full before/after eval)."""

from __future__ import annotations

import json

import pytest
import yaml
from geo3d.apps.multiview_corr._demo import run_demo
from geo3d.apps.multiview_corr._evaluate import TABLE_KEYS

from geo3d.cli import main as geo3d_main

TINY = {
    "seed_everything": 0,
    "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "max_epochs": -1,
                "val_check_interval": 2, "check_val_every_n_epoch": None,
                "num_sanity_val_steps": 0, "limit_val_batches": 1,
                "enable_progress_bar": False},
    "model": {"vit": "random", "lora_rank": 2, "lora_blocks": 1, "val_max_points": 30,
              "vit_config": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4,
                             "img_size": 32}},
    "data": {"render": {"num_synthetic": 3, "seed": 0, "size": 32, "focal": 36.0, "level": 0},
             "num_val_objects": 1, "pairs_per_object": 4, "num_pixels": 64,
             "pos_radius": 0.05},
}


@pytest.mark.slow
def test_demo_writes_table_and_picture(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    res = run_demo(tmp_path / "out", config=str(cfg), pairs=1, max_points=30, pose_queries=1,
                   track_frames=3)
    ev = json.loads((tmp_path / "out" / "multiview_eval.json").read_text())
    for name in ("before", "after"):
        assert all(k in ev["results"][name] for k, _, _ in TABLE_KEYS)
    assert res["train_steps"] == 2 and res["steps_per_s"] > 0
    assert (tmp_path / "out" / "correspondences.png").stat().st_size > 1000


def test_demo_bad_input_one_line(capsys):
    assert geo3d_main(["multiview", "demo", "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geo3d: error:") and "--steps" in err and "\n" not in err


@pytest.mark.parametrize("argv, needle", [
    (["--steps", "-3"], "--steps"),
    (["--pairs", "0"], "--pairs"),
    (["--max-points", "0"], "--max-points"),
    (["--pose-queries", "-1"], "--pose-queries"),
    (["--track-frames", "-1"], "--track-frames"),
])
def test_demo_checks_eval_settings_before_training(argv, needle, tmp_path, capsys):
    """Bad evaluation counts are refused before the fit (which would take minutes), and
    nothing is rendered or written."""
    out = tmp_path / "out"
    assert geo3d_main(["multiview", "demo", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geo3d: error:") and needle in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("cmd", ["demo", "eval"])
def test_without_opencv_one_line_naming_the_corr_extra(cmd, tmp_path, monkeypatch, capsys):
    """Pose estimation without OpenCV: one line naming the `corr` extra, exit 2, before any
    work (eval: before reading the adapter; demo: before training)."""
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    out = tmp_path / "out"
    argv = (["demo", "--out", str(out)] if cmd == "demo"
            else ["eval", "--adapter", str(tmp_path / "missing.ckpt")])
    assert geo3d_main(["multiview", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geo3d: error:") and "\n" not in err
    assert "geo3d[corr]" in err and "--pose-queries 0" in err
    assert not out.exists()


def test_demo_layers_a_repeated_config_on_the_first(tmp_path, monkeypatch):
    # argparse kept only the last --config, so `--config demo --config more.yaml` trained on
    # more.yaml alone (with the module's and data's defaults for the rest); now the first is
    # the base and the others reach LightningCLI in order, as further --config files
    from geo3d.apps.multiview_corr import _demo

    seen = []

    def fake(out, **kw):
        seen.append(kw)
        raise SystemExit(0)

    monkeypatch.setattr(_demo, "run_demo", fake)
    more = tmp_path / "more.yaml"
    more.write_text("model:\n  lora_rank: 2\n")
    with pytest.raises(SystemExit):
        _demo.demo_main(["--out", str(tmp_path / "o"), "--config", "demo", "--config",
                         str(more)])
    assert seen[0]["config"] == "demo"
    assert seen[0]["extra"] == ["--config", str(more)]
    seen.clear()
    with pytest.raises(SystemExit):  # default: the demo config alone
        _demo.demo_main(["--out", str(tmp_path / "o")])
    assert seen[0]["config"] == "demo" and seen[0]["extra"] == []
