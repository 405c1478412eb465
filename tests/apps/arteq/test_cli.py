"""``geo3d arteq`` end to end on the tiny body: fit, test, resume, predict, errors, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from geo3d.apps.arteq._checkpoint import CheckpointError, load_model, save_model

from geo3d.cli import main as geo3d_main

TINY_YAML = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
  default_root_dir: {root}/run
model:
  backbone: pointnet
  net: {{k: 4, feat_dim: 4, hidden: [4], d_model: 8, num_layers: 1, num_heads: 2, rot_hidden: 4}}
  lr: 1.0e-3
  num_pictures: 1
  icp_steps: 0
data:
  root: {root}/data
  body_model: tiny
  num_points: 48
  train_subjects: 2
  val_subjects: 1
  test_subjects: 1
  train_motions: 2
  val_motions: 1
  test_motions: 1
  frames_per_motion: 4
  frame_stride: 2
  ood_poses: 2
  partial_resolution: 40
  batch_size: 2
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("arteq_cli")
    (root / "tiny.yaml").write_text(TINY_YAML.format(root=root))
    assert geo3d_main(["arteq", "fit", "--config", str(root / "tiny.yaml")]) == 0
    return root


def _last(root: Path) -> Path:
    found = sorted((root / "run").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    assert found, "fit wrote no last.ckpt"
    return found[-1]


def test_fit_then_test_writes_checkpoint_results_and_pictures(trained: Path):
    ckpt = _last(trained)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["global_step"] == 2 and raw["arteq"]["body_model"] == "tiny"
    assert raw["arteq"]["num_points"] == 48  # the training density, for fit_smpl
    assert "config" in raw and all(k.startswith("net.") for k in raw["state_dict"])
    # the body model's buffers are not saved with the net
    assert not any("v_template" in k for k in raw["state_dict"])
    assert geo3d_main(["arteq", "test", "--config", str(trained / "tiny.yaml"),
                       "--ckpt_path", str(ckpt)]) == 0
    res = sorted((trained / "run").rglob("results_test.json"))[-1]
    payload = json.loads(res.read_text())
    # the tested weights' progress, not the fresh test trainer's 0/0
    assert (payload["epoch"], payload["global_step"]) == (raw["epoch"], raw["global_step"])
    metrics = payload["metrics"]
    assert set(metrics) == {"in_dist", "ood", "rotated", "partial"}
    assert metrics["ood"]["num_scans"] == 2 and metrics["in_dist"]["num_scans"] == 2
    for m in metrics.values():
        assert np.isfinite([m["v2v_cm"], m["mpjpe_cm"], m["part_acc"]]).all()
        assert 0.0 <= m["part_acc"] <= 1.0 and m["v2v_cm"] > 0
    pics = res.parent / "pictures_test"
    for cond in metrics:
        pngs = list(pics.glob(f"{cond}_*.png"))
        assert len(pngs) == 1 and pngs[0].read_bytes()[:4] == b"\x89PNG"
        stem = pngs[0].stem
        cloud = trimesh.load(pics / f"{stem}_points.ply")
        assert len(cloud.vertices) == 48
        fit = trimesh.load(pics / f"{stem}_fit.ply", process=False)
        gt = trimesh.load(pics / f"{stem}_gt.ply", process=False)
        assert fit.faces.shape == gt.faces.shape and len(fit.vertices) == 768
    assert list((trained / "run").rglob("events.out.tfevents.*")), "no TensorBoard log"


def test_rotated_condition_is_the_in_dist_scans_rotated(trained: Path):
    # same scans, a different frame: the metrics of a rotation-invariant quantity (the
    # mean distance of the points to their centroid) agree, the points do not
    from geo3d.apps.arteq.cli import run_lightning_cli

    cli = run_lightning_cli(["--config", str(trained / "tiny.yaml"), "--trainer.logger",
                             "false"], run=False)
    a, b = cli.datamodule.dataset("in_dist"), cli.datamodule.dataset("rotated")
    for i in range(len(a)):
        pa, pb, R = a[i]["points"], b[i]["points"], b[i]["rot"]
        torch.testing.assert_close(pb, pa @ R.T, atol=1e-5, rtol=0)
        assert not torch.allclose(pa, pb, atol=1e-2)


def test_resume_from_last(trained: Path, capsys):
    first = _last(trained)
    assert geo3d_main(["arteq", "fit", "--config", str(trained / "tiny.yaml"),
                       "--ckpt_path", "last", "--trainer.max_epochs", "2"]) == 0
    assert f"-> {first}" in capsys.readouterr().err
    again = _last(trained)
    assert again != first
    raw = torch.load(again, map_location="cpu", weights_only=True)
    assert raw["global_step"] == 4 and raw["epoch"] == 1  # continued, not restarted


def test_load_model_round_trip(trained: Path, tmp_path):
    ckpt = _last(trained)
    net = load_model(ckpt)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, raw["state_dict"][f"net.{k}"], rtol=0, atol=0)
    x = torch.randn(2, 48, 3, generator=torch.Generator().manual_seed(0)) * 0.3
    with torch.no_grad():
        ref = net(x)
        plain = save_model(net, tmp_path / "plain.pt", {"body_model": "tiny"})
        out = load_model(plain)(x)
    for k in ("part_logits", "part_rot", "betas", "body_pose"):
        torch.testing.assert_close(out[k], ref[k], rtol=0, atol=0)
    # the plain file keeps the contract's two keys (readable without load_model)
    obj = torch.load(plain, map_location="cpu", weights_only=True)
    assert {"config", "state_dict"} <= set(obj)


def test_load_model_rejects_foreign_and_truncated_files(trained: Path, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="config"):
        load_model(foreign)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(_last(trained).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(cut)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_model(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.pt"
    net = load_model(_last(trained))
    torch.save({"config": net.config, "state_dict": {"nope": torch.zeros(1)}}, bad)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(bad)


def test_predict_writes_params_and_mesh(trained: Path, tmp_path):
    from geo3d.apps.arteq.cli import run_lightning_cli

    cli = run_lightning_cli(["--config", str(trained / "tiny.yaml"), "--trainer.logger",
                             "false"], run=False)
    item = cli.datamodule.dataset("ood")[0]
    scan_mm = tmp_path / "scan.ply"
    trimesh.PointCloud(item["points"].double().numpy() * 1000.0).export(scan_mm)
    np.savez(tmp_path / "scan_m.npz", points=item["points"].numpy())
    out = tmp_path / "out"
    assert geo3d_main(["arteq", "predict", "--checkpoint", str(_last(trained)), "--points",
                       str(scan_mm), str(tmp_path / "scan_m.npz"), "--scale", "0.001",
                       "--out", str(out)]) == 0
    z = np.load(out / "scan_smpl.npz")
    assert z["global_orient"].shape == (3, 3) and z["body_pose"].shape == (23, 3, 3)
    assert z["betas"].shape == (10,) and z["part_labels"].shape == (48,)
    mesh = trimesh.load(out / "scan_smpl.ply", process=False)
    np.testing.assert_allclose(mesh.vertices, z["vertices"], atol=1e-3)
    # millimetre input: the translation comes back in millimetres, near the scan's centroid
    centre = item["points"].double().numpy().mean(0) * 1000.0
    assert np.linalg.norm(z["vertices"].mean(0) - centre) < 300.0
    assert (out / "scan_m_smpl.npz").is_file()


@pytest.mark.parametrize("argv, needle", [
    (["arteq", "fit", "--config", "no_such_config"], "--config"),
    (["arteq", "frobnicate"], "frobnicate"),
    (["arteq", "predict", "--checkpoint", "x.ckpt", "--out", "o"], "--points"),
    (["arteq", "predict", "--checkpoint", "missing.ckpt", "--points", "p.ply", "--out", "o"],
     "p.ply"),
    (["arteq", "fit", "--config", "demo", "--model.backbone", "transformer"], "backbone"),
    (["arteq", "fit", "--config", "demo", "--trainer.max_epochs", "many"], "max_epochs"),
    # Lightning trained nothing and exited 0
    (["arteq", "fit", "--config", "demo", "--trainer.max_steps", "0"], "trainer.max_steps"),
    (["arteq", "fit", "--config", "demo", "--trainer.max_epochs", "0"], "trainer.max_epochs"),
])
def test_bad_command_lines_exit_2_with_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert geo3d_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("geo3d: error:"), err
    assert needle in err


def test_predict_rejects_bad_points_file(trained: Path, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, points=np.zeros((5, 2)))
    assert geo3d_main(["arteq", "predict", "--checkpoint", str(_last(trained)), "--points",
                       str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "(N, 3)" in capsys.readouterr().err


def test_read_points_npy_npz_and_unreadable_files(tmp_path):
    from geo3d.apps.arteq.cli import read_points

    pts = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "a.npy", pts)
    np.savez(tmp_path / "b.npz", points=pts, other=np.zeros(2))
    np.savez(tmp_path / "c.npz", pts.astype(np.int32))  # the only array, integer mm
    for name in ("a.npy", "b.npz", "c.npz"):
        got = read_points(tmp_path / name)
        assert got.dtype == np.float64 and np.array_equal(got, pts), name
    np.savez(tmp_path / "d.npz", x=pts, y=pts)
    with pytest.raises(ValueError, match="--points: expected a key 'points'"):
        read_points(tmp_path / "d.npz")
    (tmp_path / "x.ply").write_bytes(b"\x00garbage" * 20)
    (tmp_path / "y.npy").write_bytes(b"not numpy")
    for name in ("x.ply", "y.npy"):
        with pytest.raises(ValueError, match=rf"--points: could not read '.*{name}'"):
            read_points(tmp_path / name)


def _predict_err(argv, capsys) -> str:
    assert geo3d_main(["arteq", "predict", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("geo3d: error:"), err
    return err


def test_predict_refuses_bad_arguments_naming_them(trained: Path, tmp_path, capsys,
                                                   monkeypatch):
    ckpt = str(_last(trained))
    pts = np.random.default_rng(0).normal(size=(48, 3)) * 0.3
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    np.savez(tmp_path / "a" / "s.npz", points=pts)
    np.savez(tmp_path / "b" / "s.npz", points=pts)
    one = str(tmp_path / "a" / "s.npz")
    base = ["--checkpoint", ckpt, "--out", str(tmp_path / "o")]
    # two scans with the same name would write the same output file
    err = _predict_err([*base, "--points", one, str(tmp_path / "b" / "s.npz")], capsys)
    assert "--points: expected distinct file names" in err
    assert not (tmp_path / "o").exists()
    # --out below an existing file
    (tmp_path / "afile").write_text("x")
    err = _predict_err(["--checkpoint", ckpt, "--points", one, "--out",
                        str(tmp_path / "afile" / "sub")], capsys)
    assert "--out: cannot write" in err and "is an existing file" in err
    for scale in ("inf", "nan", "0", "-1"):
        assert "--scale: expected a positive finite" in _predict_err(
            [*base, "--points", one, "--scale", scale], capsys)
    # a body model other than the checkpoint's (tiny) is refused before it is built
    err = _predict_err([*base, "--points", one, "--body-model", "anny"], capsys)
    assert "--body-model: expected the checkpoint's body model 'tiny'" in err
    # fewer points than the network's neighbourhood (k = 4 in TINY_YAML)
    np.savez(tmp_path / "few.npz", points=pts[:3])
    err = _predict_err([*base, "--points", str(tmp_path / "few.npz")], capsys)
    assert "--points: expected at least 4 points" in err
    # CUDA asked for on a machine without it: one line naming --device, no AssertionError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _predict_err([*base, "--points", one, "--device", "cuda"], capsys)
    assert "--device: expected an available device, got 'cuda'" in err
    err = _predict_err([*base, "--points", one, "--device", "meta"], capsys)
    assert "--device: expected a device that computes" in err  # named 'device' before


def test_predict_warns_once_about_millimetres(trained: Path, tmp_path, capsys):
    from geo3d.apps.arteq.cli import run_lightning_cli

    cli = run_lightning_cli(["--config", str(trained / "tiny.yaml"), "--trainer.logger",
                             "false"], run=False)
    pts = cli.datamodule.dataset("ood")[0]["points"].double().numpy()
    np.save(tmp_path / "mm1.npy", pts * 1000.0)
    np.save(tmp_path / "mm2.npy", pts * 1000.0)
    np.save(tmp_path / "m.npy", pts)
    base = ["arteq", "predict", "--checkpoint", str(_last(trained)), "--out",
            str(tmp_path / "o")]
    assert geo3d_main([*base, "--points", str(tmp_path / "m.npy")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert geo3d_main([*base, "--points", str(tmp_path / "mm1.npy"),
                       str(tmp_path / "mm2.npy")]) == 0
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "--scale" in warn[0] and "scale=0.001" in warn[0], warn


def test_packaged_configs_resolve():
    from geo3d.apps.arteq.cli import config_path

    for name in ("demo", "long", "amass_smpl"):
        assert Path(config_path(name)).is_file(), name


def test_predict_keeps_map_coordinates(trained: Path, tmp_path):
    """A float64 scan 4e6 m from the origin (UTM-like): the written fit is the fit of the
    centred scan moved by the offset, in float64 (the CLI cast to float32 first: vertices on
    a 0.5 m grid)."""
    from geo3d.apps.arteq.cli import run_lightning_cli

    cli = run_lightning_cli(["--config", str(trained / "tiny.yaml"), "--trainer.logger",
                             "false"], run=False)
    p = cli.datamodule.dataset("in_dist")[0]["points"].double().numpy()
    p = p - p.mean(0)
    off = np.array([5e5, 4e6, 100.0])
    np.save(tmp_path / "near.npy", p)
    np.save(tmp_path / "far.npy", p + off)
    out = tmp_path / "out"
    assert geo3d_main(["arteq", "predict", "--checkpoint", str(_last(trained)), "--points",
                       str(tmp_path / "near.npy"), str(tmp_path / "far.npy"),
                       "--out", str(out)]) == 0
    near, far = np.load(out / "near_smpl.npz"), np.load(out / "far_smpl.npz")
    for k in ("vertices", "joints", "transl"):
        assert far[k].dtype == np.float64
        np.testing.assert_allclose(far[k] - off, near[k], rtol=0, atol=1e-5)
    np.testing.assert_allclose(far["body_pose"], near["body_pose"], rtol=0, atol=1e-5)


def test_ckpt_path_file_architecture_from_checkpoint_flags_from_command_line(trained: Path,
                                                                            tmp_path):
    """``test --ckpt_path FILE``: the checkpoint's model settings beat the config file's (a
    config with another net width still loads the weights), and command-line flags beat the
    checkpoint's (Lightning let the checkpoint win: --model.icp_steps was ignored)."""
    other = tmp_path / "other.yaml"
    other.write_text(TINY_YAML.format(root=trained).replace("feat_dim: 4", "feat_dim: 6")
                     .replace(f"{trained}/run", f"{tmp_path}/run"))
    assert geo3d_main(["arteq", "test", "--config", str(other), "--ckpt_path",
                       str(_last(trained)), "--model.icp_steps", "3",
                       "--model.num_pictures", "0"]) == 0
    res = json.loads(sorted((tmp_path / "run").rglob("results_test.json"))[-1].read_text())
    assert res["hparams"]["net"]["feat_dim"] == 4  # the checkpoint's
    assert res["hparams"]["icp_steps"] == 3 and res["hparams"]["num_pictures"] == 0
    assert not list((tmp_path / "run").rglob("pictures_test/*.png"))


def test_ckpt_path_bad_files_exit_2_with_one_line(trained: Path, tmp_path, capsys):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(_last(trained).read_bytes()[:1000])
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": torch.zeros(2)}, foreign)
    plain = save_model(load_model(_last(trained)), tmp_path / "plain.pt")
    for path, needle in ((cut, "truncated"), (empty, "truncated"), (foreign, "['a']"),
                         (plain, "'config', 'state_dict'")):
        for cmd in ("test", "fit"):
            assert geo3d_main(["arteq", cmd, "--config", str(trained / "tiny.yaml"),
                               "--ckpt_path", str(path)]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and err.startswith("geo3d: error:"), err
            assert "--ckpt_path" in err and needle in err and str(path) in err, err


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
def test_interrupted_fit_saves_the_step_and_exits_non_zero(trained: Path, tmp_path,
                                                           monkeypatch, capsys, how):
    """Ctrl-C or SIGTERM in the middle of the first epoch: last.ckpt holds the step reached
    (1; without `save_on_exception` nothing was written), Ctrl-C returns 130 and SIGTERM
    exits 143 (Lightning exited 1 and 0: a killed job looked like a success)."""
    import os
    import signal

    from geo3d.apps.arteq._module import ArtEqModule

    orig = ArtEqModule.training_step

    def stop(self, batch, batch_idx):
        if self.global_step == 1:
            if how == "ctrl_c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler: stop after this step
        return orig(self, batch, batch_idx)

    monkeypatch.setattr(ArtEqModule, "training_step", stop)
    root = tmp_path / "r"
    args = ["arteq", "fit", "--config", str(trained / "tiny.yaml"),
            "--trainer.default_root_dir", str(root), "--data.train_motions", "4"]
    if how == "ctrl_c":
        before = signal.getsignal(signal.SIGINT)
        assert geo3d_main(args) == 130
        assert capsys.readouterr().err.strip().endswith("geo3d: interrupted")
        assert signal.getsignal(signal.SIGINT) is before  # Lightning left SIG_IGN
        step = 1
    else:
        with pytest.raises(SystemExit) as exc:
            geo3d_main(args)
        assert exc.value.code == 143
        assert "geo3d: terminated (SIGTERM)" in capsys.readouterr().err
        step = 2  # the step in which the signal came finishes
    last = next(root.rglob("last.ckpt"))
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == step


def test_unwritable_data_root_and_out_named(trained: Path, tmp_path, capsys):
    """A data root or --out that cannot be created: one line naming the option (was a bare
    `[Errno 20] Not a directory`, after minutes of scan generation for the data root)."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert geo3d_main(["arteq", "fit", "--config", str(trained / "tiny.yaml"), "--data.root",
                       str(blocker / "data"), "--data.num_points", "40"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geo3d: error: data.root: cannot create") and str(blocker) in err
    np.save(tmp_path / "p.npy", np.random.default_rng(0).normal(size=(48, 3)))
    assert geo3d_main(["arteq", "predict", "--checkpoint", str(_last(trained)), "--points",
                       str(tmp_path / "p.npy"), "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--out" in err and len(err.splitlines()) == 1, err


def test_ckpt_path_last_uses_the_checkpoints_settings_and_errors_are_one_line(
        trained: Path, tmp_path, capsys):
    """`--ckpt_path last` gets the same treatment as a file: a run trained with another net
    width tests under the plain config (was a state_dict size-mismatch traceback, exit 1);
    a command-line flag that changes the network is one line (exit 2); another app's
    checkpoint is named as such; an append flag is applied once."""
    root = tmp_path / "wide"
    cfg = str(trained / "tiny.yaml")
    assert geo3d_main(["arteq", "fit", "--config", cfg, "--model.net.feat_dim", "6",
                       "--trainer.default_root_dir", str(root)]) == 0
    assert geo3d_main(["arteq", "test", "--config", cfg, "--ckpt_path", "last",
                       "--trainer.default_root_dir", str(root), "--model.num_pictures", "0",
                       "--trainer.callbacks+=lightning.pytorch.callbacks.ModelSummary"]) == 0
    capsys.readouterr()
    res = sorted(root.rglob("results_test.json"), key=lambda p: p.stat().st_mtime_ns)[-1]
    assert json.loads(res.read_text())["hparams"]["net"]["feat_dim"] == 6
    saved = (res.parent / "config.yaml").read_text()
    assert saved.count("ModelSummary") == 1, saved
    ckpt = str(_last(trained))
    assert geo3d_main(["arteq", "test", "--config", cfg, "--ckpt_path", ckpt,
                       "--model.net.feat_dim", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not fit" in err and "--ckpt_path" in err, err
    other = tmp_path / "other_app.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.0",
                "hyper_parameters": {"arch": "fracture_net"}}, other)
    assert geo3d_main(["arteq", "test", "--config", cfg, "--ckpt_path", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another geo3d app" in err and str(other) in err, err


def test_predict_num_points(trained: Path, tmp_path, capsys):
    """A 200-point scan with a checkpoint trained on 48-point scans: 'auto' subsamples to
    48 for the network (labels still for all 200 points), equal to --num-points 48;
    'all' feeds all 200; bad values are one line."""
    rng = np.random.default_rng(1)
    np.save(tmp_path / "s.npy", rng.normal(size=(200, 3)) * [0.2, 0.8, 0.15])
    outs = {}
    for opt in ("auto", "48", "all"):
        out = tmp_path / opt
        assert geo3d_main(["arteq", "predict", "--checkpoint", str(_last(trained)), "--points",
                           str(tmp_path / "s.npy"), "--out", str(out), "--num-points", opt]) == 0
        outs[opt] = np.load(out / "s_smpl.npz")
        assert outs[opt]["part_labels"].shape == (200,)
    np.testing.assert_array_equal(outs["auto"]["body_pose"], outs["48"]["body_pose"])
    assert not np.allclose(outs["auto"]["betas"], outs["all"]["betas"], atol=1e-7)
    capsys.readouterr()
    for bad in ("0", "-3", "many", "2"):
        assert geo3d_main(["arteq", "predict", "--checkpoint", str(_last(trained)), "--points",
                           str(tmp_path / "s.npy"), "--out", str(tmp_path / "x"),
                           "--num-points", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--num-points" in err, err


def test_predict_reads_body_scan_outputs_and_notes_partial_without_refine(trained: Path,
                                                                           tmp_path, capsys):
    """Fresh-user run: predict refused the body layer's own `geo3d body scan` files (keys
    points_0, points_1, ...), and --partial without --refine silently did nothing. Each scan
    of such a file is now fitted (outputs <file>_0, <file>_1, ...), equal to fitting it
    alone, and --partial alone prints a warning."""
    scans = tmp_path / "scans.npz"
    assert geo3d_main(["body", "scan", "tiny", str(scans), "--num", "2", "--points",
                       "200"]) == 0
    z = np.load(scans)
    np.savez(tmp_path / "one.npz", points=z["points_1"])
    out = tmp_path / "out"
    capsys.readouterr()
    assert geo3d_main(["arteq", "predict", "--checkpoint", str(_last(trained)), "--points",
                       str(scans), str(tmp_path / "one.npz"), "--out", str(out),
                       "--partial"]) == 0
    err = capsys.readouterr().err
    assert "--partial changes only the refinement" in err
    a, b = np.load(out / "scans_1_smpl.npz"), np.load(out / "one_smpl.npz")
    for k in ("vertices", "betas", "part_labels", "scale"):
        np.testing.assert_array_equal(a[k], b[k])
    assert np.load(out / "scans_0_smpl.npz")["part_labels"].shape == (200,)
    assert not np.array_equal(np.load(out / "scans_0_smpl.npz")["vertices"], a["vertices"])


def test_validate_writes_results_and_logs_plain_metric_names(trained: Path):
    """Fresh-user run: `geo3d arteq validate --ckpt_path ...` wrote no results_val.json nor
    pictures (only the last epoch of `fit` did), and validation metrics were logged as
    val/val/v2v_cm."""
    from geo3d.apps.arteq.cli import run_lightning_cli

    for old in (trained / "run").rglob("results_val.json"):
        old.unlink()
    cli = run_lightning_cli(["validate", "--config", str(trained / "tiny.yaml"),
                             "--ckpt_path", str(_last(trained))])
    keys = set(cli.trainer.callback_metrics)
    assert {"val/v2v_cm", "val/mpjpe_cm", "val/part_acc"} <= keys
    assert not any(k.startswith("val/val/") for k in keys)
    res = sorted((trained / "run").rglob("results_val.json"))
    assert res and json.loads(res[-1].read_text())["metrics"]["val"]["num_scans"] > 0
    assert list((res[-1].parent / "pictures_val").glob("val_*.png"))
