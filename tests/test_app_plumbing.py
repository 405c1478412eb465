"""The apps' shared command-line plumbing (geo3d._app, geo3d._app_lightning)."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch

from geo3d._app import (
    CheckpointError,
    PackagedConfigs,
    UsageError,
    evaluated_progress,
    load_checkpoint,
    resolve_device,
    resolve_last_checkpoint,
)


@pytest.fixture()
def configs(tmp_path: Path) -> PackagedConfigs:
    d = tmp_path / "configs"
    d.mkdir()
    (d / "demo.yaml").write_text("seed_everything: 0\n")
    (d / "long.yaml").write_text("seed_everything: 1\n")
    return PackagedConfigs(d)


def test_config_names_paths_and_inline_yaml(configs: PackagedConfigs, tmp_path: Path) -> None:
    demo = str(configs.directory / "demo.yaml")
    assert configs.names() == ["demo", "long"]
    assert configs.path("demo") == demo and configs.path("demo.yaml") == demo
    own = tmp_path / "mine.yaml"
    own.write_text("a: 1\n")
    assert configs.path(str(own)) == str(own)  # an existing file wins over the packaged ones
    assert configs.existing("{trainer: {max_epochs: 1}}") == "{trainer: {max_epochs: 1}}"
    with pytest.raises(UsageError, match=r"--config: .*\(demo, long\), got 'nope'"):
        configs.existing("nope")


def test_resolve_args_configs_and_aliases(configs: PackagedConfigs) -> None:
    demo = str(configs.directory / "demo.yaml")
    aliases = {"--vit": ("--model.vit", "a .pth file")}
    got = configs.resolve_args(["fit", "--config", "demo", "--vit", "w.pth", "--config=long",
                                "--vit=x", "--trainer.max_steps", "2"], aliases)
    assert got == ["fit", "--config", demo, "--model.vit", "w.pth",
                   f"--config={configs.directory / 'long.yaml'}", "--model.vit=x",
                   "--trainer.max_steps", "2"]
    with pytest.raises(UsageError, match="--config: expected a YAML file after it"):
        configs.resolve_args(["fit", "--config"])
    with pytest.raises(UsageError, match="--vit: expected a .pth file after it"):
        configs.resolve_args(["fit", "--vit", "--config", "demo"], aliases)
    with pytest.raises(UsageError, match="--config"):
        configs.resolve_args(["fit", "--config=missing"])
    # the short form -c is resolved like --config (LightningCLI accepts both)
    assert configs.resolve_args(["fit", "-c", "demo", "-c=long"]) == [
        "fit", "-c", demo, f"-c={configs.directory / 'long.yaml'}"]
    with pytest.raises(UsageError, match="-c: expected a YAML file after it"):
        configs.resolve_args(["fit", "-c"])


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint: no such file"):
        load_checkpoint(tmp_path / "none.ckpt")
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, good)
    assert torch.equal(load_checkpoint(good)["state_dict"]["w"], torch.ones(3))
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_checkpoint(cut)
    assert err.value.path == str(cut)
    lst = tmp_path / "list.ckpt"
    torch.save([1, 2], lst)
    with pytest.raises(CheckpointError, match="expected a dict, got list"):
        load_checkpoint(lst)
    # an arbitrary pickled object is refused by weights_only=True, not executed
    evil = tmp_path / "evil.ckpt"
    torch.save({"f": types.SimpleNamespace(a=1)}, evil)
    with pytest.raises(CheckpointError, match="could not be read") as err:
        load_checkpoint(evil)
    # torch's own text advises weights_only=False (unsafe for a foreign file): not passed on
    assert "weights_only" not in str(err.value) and "UnpicklingError" in str(err.value)
    # a user's mesh passed as the checkpoint: neutral advice (it need not be a run's file)
    mesh = tmp_path / "piece.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(CheckpointError, match="not a torch checkpoint") as err:
        load_checkpoint(mesh)
    msg = str(err.value)
    assert "\n" not in msg and "Delete" not in msg
    assert msg.endswith("if it is a run's checkpoint, resume from an earlier one")


def test_resolve_device_names_the_argument(monkeypatch) -> None:
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(None, default=torch.device("meta")) == torch.device("meta")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="gpu_dev: expected a torch device"):
        resolve_device("nonsense", "gpu_dev")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device: expected an available device, got 'cuda'"):
        resolve_device("cuda")


def test_evaluated_progress_reads_the_tested_checkpoint(tmp_path: Path) -> None:
    ck = tmp_path / "last.ckpt"
    torch.save({"epoch": 4, "global_step": 50, "state_dict": {}}, ck)
    trainer = types.SimpleNamespace(training=False, ckpt_path=str(ck))
    fresh = types.SimpleNamespace(current_epoch=0, global_step=0, trainer=trainer)
    assert evaluated_progress(fresh) == (4, 50)  # test --ckpt_path X on a fresh trainer
    trainer.training = True  # while fitting: the trainer's own counters
    assert evaluated_progress(fresh) == (0, 0)
    trainer.training, trainer.ckpt_path = False, None  # untrained weights, no checkpoint
    assert evaluated_progress(fresh) == (0, 0)
    trainer.ckpt_path = str(ck)
    after_fit = types.SimpleNamespace(current_epoch=2, global_step=7, trainer=trainer)
    assert evaluated_progress(after_fit) == (2, 7)  # test right after fit in one trainer


def test_cli_ctrl_c_is_one_line_exit_130(monkeypatch, capsys) -> None:
    import geo3d.apps.arteq.cli as arteq_cli

    from geo3d.cli import main

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(arteq_cli, "_predict", interrupted)
    assert main(["arteq", "predict", "--checkpoint", "x"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "geo3d: interrupted" and "Traceback" not in err


def test_resolve_last_checkpoint_newest_anywhere(tmp_path: Path, capsys) -> None:
    root = tmp_path / "run"
    trainer = types.SimpleNamespace(default_root_dir=str(root), checkpoint_callback=None)
    assert resolve_last_checkpoint(trainer, "fit", "geo3d x") is None
    assert "starting a fresh run" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="ckpt_path: 'last'"):
        resolve_last_checkpoint(trainer, "test", "geo3d x")
    old = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    new = root / "lightning_logs" / "version_1" / "checkpoints" / "last-v1.ckpt"
    for p in (old, new):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
    os.utime(old, ns=(2_000_000_000, 2_000_000_000))
    os.utime(new, ns=(1_000_000_000, 1_000_000_000))
    assert resolve_last_checkpoint(trainer, "test", "geo3d x") == str(old)  # newest by mtime
    os.utime(new, ns=(3_000_000_000, 3_000_000_000))
    assert resolve_last_checkpoint(trainer, "fit", "geo3d x") == str(new)
    # an explicit checkpoint.dirpath outside the run folder is searched too
    other = tmp_path / "elsewhere" / "last.ckpt"
    other.parent.mkdir()
    other.write_bytes(b"x")
    os.utime(other, ns=(4_000_000_000, 4_000_000_000))
    trainer.checkpoint_callback = types.SimpleNamespace(dirpath=str(other.parent))
    assert resolve_last_checkpoint(trainer, "validate", "geo3d x") == str(other)


def test_atomic_checkpoint_io_round_trip_and_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    from geo3d._app_lightning import AtomicCheckpointIO

    io_ = AtomicCheckpointIO()
    path = tmp_path / "ck" / "last.ckpt"
    path.parent.mkdir()
    io_.save_checkpoint({"w": torch.arange(3)}, path)
    assert torch.equal(io_.load_checkpoint(path)["w"], torch.arange(3))
    before = path.read_bytes()

    def boom(*a, **k):  # the rename fails: the old checkpoint must survive untouched
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        io_.save_checkpoint({"w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_split_config_files_keeps_both_orders():
    from geo3d._app_lightning import _split_config_files

    args = ["--config", "a.yaml", "--model.lr", "0.1", "-c", "b.yaml", "--config=c.yaml",
            "--ckpt_path", "x.ckpt", "--trainer.config_like", "1"]
    assert _split_config_files(args) == (
        ["--config", "a.yaml", "-c", "b.yaml", "--config=c.yaml"],
        ["--model.lr", "0.1", "--ckpt_path", "x.ckpt", "--trainer.config_like", "1"])


def test_check_training_limits_refuses_empty_and_invalid_runs():
    import datetime

    from geo3d._app import UsageError
    from geo3d._app_lightning import check_training_limits

    for ok in ({}, {"max_steps": -1, "max_epochs": None}, {"max_steps": 5},
               {"max_epochs": -1, "max_time": "00:00:22:00"}, {"max_time": {"minutes": 1}},
               {"max_time": datetime.timedelta(seconds=1)}):
        check_training_limits(ok, "x fit")
    for bad, key in (({"max_steps": 0}, "max_steps"), ({"max_epochs": 0}, "max_epochs"),
                     ({"max_steps": -5}, "max_steps"), ({"max_epochs": -2}, "max_epochs"),
                     ({"max_steps": True}, "max_steps"),
                     ({"max_time": "00:00:00:00"}, "max_time"),
                     ({"max_time": {"minutes": 0}}, "max_time"),
                     ({"max_time": datetime.timedelta(0)}, "max_time")):
        with pytest.raises(UsageError, match=rf"^x fit: trainer\.{key}: expected"):
            check_training_limits(bad, "x fit")


def test_ckpt_path_with_a_required_setting_given_as_a_flag(tmp_path, monkeypatch):
    """`validate --config X --data.root R --ckpt_path FILE`, X without data.root (required
    by the assembly data module): the config files are parsed alone before the checkpoint's
    settings, and that parse must not demand data.root (it was reported as 'a checkpoint of
    another geo3d app'); the flag and the checkpoint's model setting both arrive."""
    import torch
    import yaml
    from geo3d.apps.assembly.cli import config_path, run_lightning_cli

    import geo3d._app_lightning as al

    cfg = yaml.safe_load(Path(config_path("demo")).read_text())
    cfg["data"].pop("root", None)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    ckpt = tmp_path / "a.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.6.0",
                "hyper_parameters": {"feat_dim": 24}}, ckpt)
    seen = {}
    monkeypatch.setattr(al.AppLightningCLI, "_run_subcommand",
                        lambda self, sub: seen.update(
                            root=self.config[sub].data.root,
                            feat_dim=self.config[sub].model.feat_dim))
    monkeypatch.setattr(al.AppLightningCLI, "instantiate_classes", lambda self: None)
    run_lightning_cli(["validate", "--config", str(tmp_path / "c.yaml"), "--data.root",
                       str(tmp_path / "d"), "--ckpt_path", str(ckpt),
                       "--trainer.logger", "false"])
    assert seen == {"root": str(tmp_path / "d"), "feat_dim": 24}
