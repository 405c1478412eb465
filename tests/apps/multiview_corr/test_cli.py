"""``geo3d multiview`` end to end with a tiny ViT: fit, adapter checkpoint, resume, eval,
one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from geo3d.apps.multiview_corr._evaluate import TABLE_KEYS
from geo3d.apps.multiview_corr._module import MultiviewCorrModule, load_adapter

from geo3d.cli import main as geo3d_main

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4, "img_size": 32}


def _config(tmp: Path, data_root: Path) -> Path:
    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "max_epochs": -1,
                    "gradient_clip_val": 1.0, "log_every_n_steps": 1, "val_check_interval": 2,
                    "check_val_every_n_epoch": None, "num_sanity_val_steps": 0,
                    "limit_val_batches": 1, "enable_progress_bar": False,
                    "default_root_dir": str(tmp / "run")},
        "model": {"vit": "random", "vit_config": TINY_VIT, "lora_rank": 2, "lora_blocks": 1,
                  "lr": 1e-3, "val_max_points": 50},
        "data": {"root": str(data_root),
                 "render": {"num_synthetic": 2, "seed": 0, "size": 32, "focal": 36.0,
                            "level": 0},
                 "num_val_objects": 1, "pairs_per_object": 8, "val_pairs_per_object": 1,
                 "num_pixels": 64, "pos_radius": 0.05, "neg_radius": 0.1},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mvcli")
    cfg = _config(tmp, tmp / "data")
    assert geo3d_main(["multiview", "fit", "--config", str(cfg)]) == 0
    ckpts = sorted((tmp / "run").rglob("last.ckpt"))
    assert len(ckpts) == 1
    return tmp, cfg, ckpts[0]


def test_adapter_checkpoint_holds_only_trainable_weights(run):
    _, _, ckpt_path = run
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    fresh = MultiviewCorrModule(vit="random", vit_config=TINY_VIT, lora_rank=2, lora_blocks=1)
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    frozen = {n for n, p in fresh.named_parameters() if not p.requires_grad}
    assert set(ckpt["state_dict"]) == trainable
    assert frozen and not (frozen & set(ckpt["state_dict"]))
    n = sum(v.numel() for v in ckpt["state_dict"].values())
    assert n == fresh.model.trainable_parameters() == ckpt["multiview_corr"]["trainable_parameters"]
    # the adapter moved during the 2 steps (lr 1e-3): some trainable tensor differs from init
    assert any(not torch.equal(ckpt["state_dict"][k], fresh.state_dict()[k]) for k in trainable)


def test_adapter_reloads_to_the_same_features(run):
    _, _, ckpt_path = run
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    m = load_adapter(ckpt_path)
    ref = MultiviewCorrModule(vit="random", vit_config=TINY_VIT, lora_rank=2, lora_blocks=1)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = ref(x)
        missing = ref.load_state_dict(ckpt["state_dict"], strict=False)
        assert not missing.unexpected_keys
        after = ref.eval()(x)
        got = m(x)
    torch.testing.assert_close(got, after, rtol=0, atol=0)
    assert not torch.allclose(before, after)
    # another backbone (other seed) is refused
    with pytest.raises(ValueError, match="adapter"):
        from geo3d.apps.multiview_corr._module import check_adapter_checkpoint

        other = MultiviewCorrModule(vit="random", vit_config=TINY_VIT, lora_rank=2,
                                    lora_blocks=1, seed=1)
        check_adapter_checkpoint(ckpt, other)


def test_resume_from_last_continues_the_step_count(run):
    tmp, cfg, ckpt_path = run
    from geo3d.apps.multiview_corr.cli import run_lightning_cli

    cli = run_lightning_cli(["fit", "--config", str(cfg), "--ckpt_path", "last",
                             "--trainer.max_steps", "4"])
    assert cli.trainer.global_step == 4
    assert cli.model.train_steps == 2  # 2 new steps, not 4 from scratch
    last = sorted((tmp / "run").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime_ns)[-1]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4


def test_eval_writes_every_key(run, capsys):
    tmp, _, ckpt_path = run
    out = tmp / "eval.json"
    pic = tmp / "pic.png"
    assert geo3d_main(["multiview", "eval", "--adapter", str(ckpt_path), "--pairs", "1",
                       "--max-points", "40", "--pose-queries", "2", "--track-frames", "3",
                       "--out", str(out), "--picture", str(pic)]) == 0
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"before", "after"}
    for name in ("before", "after"):
        for key, _, _ in TABLE_KEYS:
            assert key in res["results"][name], (name, key)
        r = res["results"][name]
        assert r["num_pairs"] == 1 and r["pose_num_queries"] == 2 and r["tracking_videos"] == 1
        # fractions are fractions; the pose medians are errors (>= 0, inf when PnP fails)
        for key in ("pcdp_img@0.1", "pcdp_bbox@0.1", "pck@0.1", "pose_5cm5deg"):
            assert 0.0 <= r[key] <= 1.0, (name, key, r[key])
        assert r["pose_rot_err_deg"] >= 0.0
    assert pic.stat().st_size > 1000
    assert "APE (px)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["multiview", "bogus"], "unknown command"),
    (["multiview", "fit", "--config", "no_such_config"], "--config"),
    (["multiview", "fit", "--config", "demo", "--model.no_such_option", "1"], "no_such_option"),
    (["multiview", "eval"], "--adapter"),
    (["multiview", "eval", "--adapter", "/no/such.ckpt"], "adapter"),
    (["multiview", "fit", "--vit"], "--vit"),
    (["multiview", "fit", "--config", "demo", "--vit", "/no/such/dinov2.pth"], "vit"),
    (["multiview", "fit", "--config", "demo", "--model.loss_mode", "bogus"], "loss_mode"),
])
def test_bad_input_one_line_exit_2(argv, needle, capsys):
    assert geo3d_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geo3d: error:") and "\n" not in err and needle in err


def test_fit_from_a_dinov2_style_pth(run, tmp_path):
    """``--vit FILE``: the same command on an official-layout state dict (geo3d.nn.load_vit);
    the adapter records that backbone's fingerprint and reloads onto it."""
    from geo3d.apps.multiview_corr._module import backbone_fingerprint

    from geo3d.nn import VisionTransformer, load_vit

    _, cfg, _ = run
    vit = VisionTransformer(embed_dim=64, depth=2, num_heads=1, patch_size=4, img_size=32,
                            generator=torch.Generator().manual_seed(3))
    pth = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), pth)
    root = tmp_path / "run_pth"
    assert geo3d_main(["multiview", "fit", "--config", str(cfg), "--vit", str(pth),
                       "--trainer.default_root_dir", str(root)]) == 0
    ckpt_path = next(root.rglob("last.ckpt"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["vit"] == str(pth)
    assert ckpt["multiview_corr"]["backbone_fingerprint"] == backbone_fingerprint(load_vit(pth))
    m = load_adapter(ckpt_path)
    assert m.model.embed_dim == 64


@pytest.mark.parametrize("max_epochs, want", [(-1, "Epoch 0"), (None, "Epoch 0"), (3, "Epoch 0/2")])
def test_progress_bar_has_no_negative_epoch_total(max_epochs, want):
    """Rich's default bar reads "Epoch 0/-2" with max_epochs -1 (step-limited runs)."""
    from types import SimpleNamespace

    from geo3d.apps.multiview_corr.cli import step_progress_bar

    bar = step_progress_bar()
    if not hasattr(bar, "_get_train_description"):
        pytest.skip("rich is not installed: the tqdm bar shows no epoch total")
    bar._trainer = SimpleNamespace(max_epochs=max_epochs)
    assert bar._get_train_description(0).strip() == want


def test_cli_trainer_uses_the_step_progress_bar(run):
    """fit with the progress bar on gets step_progress_bar's class; a config that turns the
    bar off keeps it off."""
    from geo3d.apps.multiview_corr.cli import run_lightning_cli, step_progress_bar

    _, cfg, _ = run
    cli = run_lightning_cli(["--config", str(cfg), "--trainer.enable_progress_bar", "true"],
                            run=False)
    assert type(cli.trainer.progress_bar_callback).__name__ == type(step_progress_bar()).__name__
    cli = run_lightning_cli(["--config", str(cfg)], run=False)
    assert cli.trainer.progress_bar_callback is None


@pytest.mark.parametrize("extra, needle", [
    (["--trainer.max_steps", "0"], "trainer.max_steps"),
    (["--trainer.max_steps", "-5"], "trainer.max_steps"),
    (["--trainer.max_steps", "-1"], "never stop"),  # max_epochs -1 in the config
    pytest.param(["--trainer.accelerator", "gpu"], "trainer:",  # reference config on a CPU
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
])
def test_fit_refuses_bad_trainer_limits_in_one_line(run, tmp_path, extra, needle, capsys):
    """zero/negative steps (Lightning would train nothing, raise a traceback, or with
    max_epochs -1 never stop) and other Lightning misconfigurations: one line, exit 2."""
    _, cfg, _ = run
    root = tmp_path / "r"
    assert geo3d_main(["multiview", "fit", "--config", str(cfg),
                       "--trainer.default_root_dir", str(root), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geo3d: error:") and "\n" not in err and needle in err
    assert not list(root.rglob("*.ckpt"))


def test_fit_limits_accept_bounded_runs():
    from geo3d.apps.multiview_corr.cli import check_fit_limits

    check_fit_limits(1, -1)
    check_fit_limits(-1, 3)  # epoch-limited
    check_fit_limits(-1, None, "00:00:01:00")  # time-limited


def test_ctrl_c_mid_fit_saves_the_step_and_resume_continues(run, tmp_path, monkeypatch):
    """Ctrl-C between validations (val_check_interval 6 here): last.ckpt holds the step
    reached (3), and `--ckpt_path last` continues from it to max_steps."""
    _, cfg, _ = run
    root = tmp_path / "r"
    orig = MultiviewCorrModule.training_step

    def interrupted(self, batch, batch_idx):
        if self.global_step == 3:
            raise KeyboardInterrupt
        return orig(self, batch, batch_idx)

    monkeypatch.setattr(MultiviewCorrModule, "training_step", interrupted)
    args = ["multiview", "fit", "--config", str(cfg), "--trainer.default_root_dir", str(root),
            "--trainer.max_steps", "6", "--trainer.val_check_interval", "6"]
    assert geo3d_main(args) == 130  # Lightning's graceful shutdown, then `geo3d: interrupted`
    last = next(root.rglob("last.ckpt"))
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3
    monkeypatch.setattr(MultiviewCorrModule, "training_step", orig)
    from geo3d.apps.multiview_corr.cli import run_lightning_cli

    cli = run_lightning_cli(args[1:] + ["--ckpt_path", "last"])
    assert cli.trainer.global_step == 6 and cli.model.train_steps == 3


def test_output_paths_and_data_root_are_checked_before_any_work(tmp_path, capsys):
    """Fresh-user run: `eval --out afile/x.json` (or --picture) crashed with a
    FileExistsError traceback after the whole evaluation; `fit --data.root afile` named
    the renderer's `out`; `demo --out afile` is refused before rendering."""
    from geo3d.apps.multiview_corr._data import MultiviewCorrDataModule

    from geo3d.cli import main as geo3d_main

    afile = tmp_path / "afile"
    afile.write_text("x")
    for flag in ("--out", "--picture"):
        argv = ["multiview", "eval", "--adapter", str(tmp_path / "none.ckpt"), flag,
                str(afile / "x.json")]
        assert geo3d_main(argv) == 2
        err = capsys.readouterr().err
        assert f"{flag}: cannot write" in err and "Traceback" not in err
    assert geo3d_main(["multiview", "eval", "--adapter", str(tmp_path / "none.ckpt"),
                       "--data", str(afile)]) == 2
    assert "--data: expected the rendered dataset folder" in capsys.readouterr().err
    assert geo3d_main(["multiview", "demo", "--out", str(afile)]) == 2
    assert "--out: expected a folder, got the existing file" in capsys.readouterr().err
    dm = MultiviewCorrDataModule(root=str(afile), render={"num_synthetic": 1})
    with pytest.raises(ValueError, match="^root: expected a folder"):
        dm.prepare_data()


def test_eval_vit_override_that_does_not_fit_the_adapter_is_named(run, monkeypatch):
    """Fresh-user run: `eval --vit <another backbone>` said 'lora_blocks: expected an int
    in [1, 2], got 4', naming a setting the user never gave; it now names --vit."""
    import geo3d.apps.multiview_corr._module as mod

    _, _, ckpt_path = run

    def too_shallow(**hp):
        raise ValueError("lora_blocks: expected an int in [1, 2], got 4")

    monkeypatch.setattr(mod, "MultiviewCorrModule", too_shallow)
    with pytest.raises(ValueError, match="^vit: the adapter in .* was trained on another "
                                         "backbone than 'other.pth' \\(lora_blocks"):
        load_adapter(ckpt_path, vit="other.pth")
    with pytest.raises(ValueError, match="^lora_blocks"):  # no override: as it was
        load_adapter(ckpt_path)
