"""End to end on generated fractures: `geo3d assembly fit/test/predict`, `assemble()`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from geo3d.apps.assembly import assemble, load_model

from geo3d.cli import main as geo3d_main
from geo3d.rotations import random_rotation_matrix

TINY_YAML = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 1
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}/run
model:
  feat_dim: 8
  k: 5
  hidden: [4, 4, 8]
  d_model: 16
  num_layers: 1
  num_heads: 2
  num_pictures: 1
data:
  root: {root}/data
  num_points: 32
  min_parts: 2
  max_parts: 3
  batch_size: 4
  generate:
    num_objects: 4
    min_parts: 2
    max_parts: 3
    seed: 0
    fractures_per_object: 1
    val_fraction: 0.5
    progress: false
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("asm")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY_YAML.format(root=root))
    assert geo3d_main(["assembly", "fit", "--config", str(cfg)]) == 0
    return root


def test_cli_fit_test_predict(trained: Path):
    root = trained
    cfg = str(root / "tiny.yaml")
    ckpts = sorted((root / "run").rglob("last.ckpt"))
    assert ckpts, "fit wrote no last.ckpt"
    ckpt = str(ckpts[-1])
    assert geo3d_main(["assembly", "test", "--config", cfg, "--ckpt_path", ckpt]) == 0
    res = sorted((root / "run").rglob("results_test.json"))
    assert res
    payload = json.loads(res[-1].read_text())
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    # the tested checkpoint's progress, not the fresh test trainer's 0/0
    assert (payload["epoch"], payload["global_step"]) == (raw["epoch"], raw["global_step"])
    assert raw["global_step"] > 0
    metrics = payload["metrics"]
    assert {"absolute", "anchor", "num_objects"} <= set(metrics)
    assert geo3d_main(["assembly", "predict", "--config", cfg, "--ckpt_path", ckpt]) == 0
    preds = json.loads(sorted((root / "run").rglob("predictions.json"))[-1].read_text())
    assert preds and np.asarray(preds[0]["poses"]).shape[1:] == (4, 4)
    # the piece-file mode of `predict`
    pieces = sorted((root / "data").rglob("piece_*.obj"))[:2]
    out = root / "poses.json"
    assert geo3d_main(["assembly", "predict", "--checkpoint", ckpt, "--pieces",
                       *map(str, pieces), "--out", str(out)]) == 0
    T = np.asarray(json.loads(out.read_text())["poses"])
    assert T.shape == (2, 4, 4)
    R = T[:, :3, :3]
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-5)


def test_packaged_config_names_resolve():
    from geo3d.apps.assembly.cli import config_path

    for name in ("demo", "demo_global", "long", "long_global", "breaking_bad_everyday"):
        assert Path(config_path(name)).is_file(), name


def test_assemble_api_is_equivariant_per_piece(trained: Path, generator):
    ckpt = sorted((trained / "run").rglob("last.ckpt"))[-1]
    model = load_model(ckpt)
    pieces = [torch.randn(32, 3, generator=generator) * torch.tensor([0.3, 0.2, 0.1])
              for _ in range(3)]
    T = assemble(pieces, model, num_points=32)
    assert T.shape == (3, 4, 4)
    g = random_rotation_matrix(3, generator=generator)
    s = torch.randn(3, 3, generator=generator)
    moved = [p @ g[i].T + s[i] for i, p in enumerate(pieces)]
    T2 = assemble(moved, ckpt, num_points=32)  # also loads from the path
    assert T.dtype == torch.float64
    for i, p in enumerate(pieces):
        a = p.double() @ T[i, :3, :3].T + T[i, :3, 3]
        b = moved[i].double() @ T2[i, :3, :3].T + T2[i, :3, 3]
        assert (a - b).abs().max() < 1e-4


def test_assemble_reads_mesh_files(trained: Path, tmp_path):
    ckpt = sorted((trained / "run").rglob("last.ckpt"))[-1]
    a = trimesh.creation.box((0.5, 0.3, 0.2))
    b = trimesh.creation.icosphere(1, 0.2)
    pa, pb = tmp_path / "a.obj", tmp_path / "b.ply"
    a.export(pa)
    b.export(pb)
    T = assemble([pa, pb], ckpt, num_points=32, generator=torch.Generator().manual_seed(0))
    assert T.shape == (2, 4, 4) and torch.isfinite(T).all()
    with pytest.raises(ValueError, match="pieces"):
        assemble([], ckpt)
    with pytest.raises(FileNotFoundError, match=r"pieces\[1\].*missing.obj"):
        assemble([pa, tmp_path / "missing.obj"], ckpt)
    with pytest.raises(ValueError, match=r"pieces\[0\].*shape \(M, 3\)"):
        assemble([np.zeros((5, 2)), np.zeros((5, 3))], ckpt)


def _ckpt(trained: Path) -> Path:
    return sorted((trained / "run").rglob("last.ckpt"))[-1]


def test_assemble_large_coordinates_keep_the_relative_placement(trained: Path, tmp_path):
    """Shifting every piece by (1e5, -1e5, 5e4) moves the assembly by exactly that shift:
    pieces are centred in float64 before the float32 network and poses are float64."""
    model = load_model(_ckpt(trained))
    g = torch.Generator().manual_seed(3)
    pieces = [torch.randn(40, 3, generator=g, dtype=torch.float64) * 0.2 + i * 0.3
              for i in range(3)]
    shift = torch.tensor([1e5, -1e5, 5e4], dtype=torch.float64)
    T = assemble(pieces, model, num_points=32, generator=torch.Generator().manual_seed(0))
    T2 = assemble([p + shift for p in pieces], model, num_points=32,
                  generator=torch.Generator().manual_seed(0))
    assert T.dtype == T2.dtype == torch.float64
    for i, p in enumerate(pieces):
        a = p @ T[i, :3, :3].T + T[i, :3, 3]
        b = (p + shift) @ T2[i, :3, :3].T + T2[i, :3, 3]
        assert (a - b).abs().max() < 1e-5, i
    # the same through files (read in float64) and with a scale factor
    files = []
    for i, p in enumerate(pieces):
        f = tmp_path / f"p{i}.xyz"
        f.write_text("\n".join(" ".join(repr(float(v)) for v in row) for row in p + shift))
        files.append(f)
    T3 = assemble(files, model, num_points=32, scale=2.0,
                  generator=torch.Generator().manual_seed(0))
    T4 = assemble([p * 1.0 for p in pieces], model, num_points=32, scale=2.0,
                  generator=torch.Generator().manual_seed(0))
    for i, p in enumerate(pieces):
        a = p @ T4[i, :3, :3].T + T4[i, :3, 3]
        b = (p + shift) @ T3[i, :3, :3].T + T3[i, :3, 3]
        assert (a - b).abs().max() < 1e-5, i


def test_assemble_reads_every_point_cloud_format(trained: Path, tmp_path):
    from geo3d.datasets import save_point_cloud

    model = load_model(_ckpt(trained))
    g = torch.Generator().manual_seed(1)
    cloud = torch.randn(50, 3, generator=g, dtype=torch.float64) * 0.2
    paths = []
    for ext in ("ply", "xyz"):
        paths.append(tmp_path / f"c.{ext}")
        save_point_cloud(paths[-1], cloud)
    np.save(tmp_path / "c.npy", cloud.numpy())
    np.savetxt(tmp_path / "c.txt", cloud.numpy())
    paths += [tmp_path / "c.npy", tmp_path / "c.txt"]
    try:
        import open3d  # noqa: F401

        paths.append(tmp_path / "c.pcd")
        save_point_cloud(paths[-1], cloud)
    except ImportError:
        pass
    Ts = [assemble([p, cloud], model, num_points=50, generator=torch.Generator().manual_seed(0))
          for p in paths]
    ref = assemble([cloud, cloud], model, num_points=50,
                   generator=torch.Generator().manual_seed(0))
    for p, T in zip(paths, Ts, strict=True):  # every reader returns the same points
        assert torch.allclose(T, ref, atol=1e-5), p.name


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    box = trimesh.creation.box((0.5, 0.3, 0.2))
    good = tmp_path / "good.ply"
    box.export(good)
    data = good.read_bytes()
    files = {"good": good}
    files["truncated"] = tmp_path / "truncated.ply"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["zero"] = tmp_path / "zero.ply"
    files["zero"].write_bytes(b"")
    files["garbage"] = tmp_path / "garbage.ply"
    files["garbage"].write_bytes(bytes(range(256)) * 3)
    files["nan"] = tmp_path / "nan.obj"
    files["nan"].write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv nan 0 1\nv 0 0 1\n"
                            "f 1 2 3\nf 1 2 4\nf 1 3 5\n")
    files["garbage_pcd"] = tmp_path / "garbage.pcd"
    files["garbage_pcd"].write_bytes(b"# .PCD v0.7\nFIELDS x y\nDATA ascii\n1 2\n")
    return files


@pytest.mark.parametrize("bad", ["truncated", "zero", "garbage", "nan", "garbage_pcd"])
def test_assemble_names_the_bad_piece(trained: Path, tmp_path, bad):
    from geo3d.apps.assembly import PieceError

    model = load_model(_ckpt(trained))
    f = _bad_files(tmp_path)
    if bad == "garbage_pcd":
        pytest.importorskip("open3d")
    with pytest.raises(PieceError, match=rf"pieces\[1\] \('.*{f[bad].name}'\)") as e:
        assemble([f["good"], f[bad], f["good"]], model, num_points=16)
    assert e.value.index == 1 and e.value.path == str(f[bad])


def test_assemble_nan_piece_small_piece_single_piece_and_too_many(trained: Path):
    from geo3d.apps.assembly import PieceError

    model = load_model(_ckpt(trained))
    assert model.trained_max_parts == 3  # recorded by the CLI run (data.max_parts)
    g = torch.Generator().manual_seed(0)
    good = torch.randn(20, 3, generator=g)
    nan = good.clone()
    nan[4, 1] = float("nan")
    with pytest.raises(PieceError, match=r"pieces\[2\].*non-finite.*row 4"):
        assemble([good, good, nan], model, num_points=16)
    with pytest.raises(PieceError, match=r"pieces\[1\].*k=5 distinct points.*got 3"):
        assemble([good, good[:3]], model, num_points=16)  # model k = 5
    with pytest.raises(ValueError, match=r"num_points.*k=5"):
        assemble([good, good], model, num_points=4)
    with pytest.raises(ValueError, match="at least 2 pieces"):
        assemble([good], model)
    with pytest.warns(UserWarning, match="at most 3 parts"):
        T = assemble([good + i for i in range(4)], model, num_points=16)
    assert T.shape == (4, 4, 4) and torch.isfinite(T).all()


def test_load_piece_never_aliases_its_input():
    from geo3d.apps.assembly import load_piece

    x = torch.rand(16, 3)
    out = load_piece(x, 16)
    out.add_(1.0)
    assert (x < 1).all()
    xt = torch.rand(3, 16).T  # column-major input
    before = xt.clone()
    load_piece(xt, 16).zero_()
    assert torch.equal(xt, before)
    a = np.random.default_rng(0).random((16, 3))  # float64 numpy, same dtype out
    a0 = a.copy()
    load_piece(a, 16, dtype=torch.float64).zero_()
    assert np.array_equal(a, a0)


def test_cli_prints_one_line_for_user_errors(trained: Path, tmp_path, capsys):
    f = _bad_files(tmp_path)
    ckpt = str(_ckpt(trained))
    argv = ["assembly", "predict", "--checkpoint", ckpt, "--pieces", str(f["good"]),
            str(f["truncated"])]
    assert geo3d_main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("geo3d: error: pieces[1]") and "truncated.ply" in lines[0]
    # a missing checkpoint, a truncated one
    assert geo3d_main(["assembly", "predict", "--checkpoint", str(tmp_path / "no.ckpt"),
                       "--pieces", str(f["good"]), str(f["good"])]) == 2
    assert "no.ckpt" in capsys.readouterr().err
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(Path(ckpt).read_bytes()[:1000])
    assert geo3d_main(["assembly", "predict", "--checkpoint", str(bad), "--pieces",
                       str(f["good"]), str(f["good"])]) == 2
    err = capsys.readouterr().err
    assert "bad.ckpt" in err and "truncated" in err and "Traceback" not in err
    # --debug: the full traceback, still exit code 2
    assert geo3d_main(["--debug", *argv]) == 2  # a user error: code 2, with traceback
    err = capsys.readouterr().err
    assert "Traceback" in err and "PieceError" in err and "truncated.ply" in err


@pytest.mark.parametrize("argv, expected", [
    (["assembly", "fit", "--config", "nope.yaml"],
     r"^geo3d: error: --config: expected an existing YAML file .*got 'nope\.yaml'"),
    (["assembly", "predict", "--checkpoint", "ck.ckpt", "a.ply", "b.ply"],
     r"^geo3d: error: geo3d assembly predict: unexpected positional argument\(s\) a\.ply "
     r"b\.ply: give the piece files after --pieces"),
    (["assembly", "predict", "--checkpoint", "ck.ckpt"],
     r"^geo3d: error: --pieces: expected the piece files"),
    (["assembly", "fit", "--config", "demo", "--no_such_flag", "3"],
     r"^geo3d: error: geo3d assembly fit: unrecognized arguments: --no_such_flag 3 \(see "
     r"`geo3d assembly fit --help`\)"),
])
def test_cli_usage_errors_are_one_line_exit_2(argv, expected, capsys, monkeypatch):
    """No 97-line LightningCLI usage, no `geo3d fit --help` tip for a command that does
    not exist, no YAML decoding of a checkpoint: one line naming the mistake, code 2."""
    import re

    monkeypatch.delenv("GEO3D_DEBUG", raising=False)
    assert geo3d_main(argv) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and re.search(expected, lines[0]), captured.err
    assert "tip:" not in captured.err and "usage:" not in captured.err
    assert geo3d_main(["--debug", *argv]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["tpu", "cuda:99", "nonsense:0", 3.5])
def test_assemble_rejects_devices_that_do_not_exist(device, tmp_path):
    """torch answers an unknown name with RuntimeError and CUDA on a CPU-only build with
    AssertionError; the API raises a ValueError naming the argument (before any file is
    read: the checkpoint here does not exist)."""
    good = torch.rand(20, 3)
    with pytest.raises(ValueError, match=r"^device: expected .*got " + re.escape(repr(device))):
        assemble([good, good], tmp_path / "none.ckpt", device=device)
    if isinstance(device, str):
        with pytest.raises(ValueError, match=r"^map_location: expected .*got "
                                             + re.escape(repr(device))):
            load_model(tmp_path / "none.ckpt", map_location=device)


def test_cli_predict_device_error_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("GEO3D_DEBUG", raising=False)
    argv = ["assembly", "predict", "--checkpoint", str(tmp_path / "x.ckpt"), "--pieces",
            "a.ply", "b.ply", "--device", "tpu"]
    assert geo3d_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("geo3d: error: --device: expected a torch "
                                                  "device such as 'cpu' or 'cuda', got 'tpu'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_assemble_rejects_cuda_without_cuda(tmp_path):
    good = torch.rand(20, 3)
    with pytest.raises(ValueError, match=r"^device: expected an available device, got 'cuda' "
                                         r"\(0 CUDA device"):
        assemble([good, good], tmp_path / "none.ckpt", device="cuda")


def test_assemble_checks_finiteness_after_the_float32_cast(trained: Path):
    """Kind: finite float64 values that overflow in the cast (1e39 > float32 max 3.4e38)
    are reported with the piece index, not handed to the network as inf."""
    from geo3d.apps.assembly import PieceError, load_piece

    model = load_model(_ckpt(trained))
    good = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(PieceError, match=r"^pieces\[1\]: centred coordinates times "
                                         r"scale=1.0 overflow float32"):
        assemble([good, good * 1e39], model, num_points=16)
    with pytest.raises(PieceError,
                       match=r"pieces\[1\]: centred coordinates times scale=1e\+30"):
        assemble([good * 1e-30, good * 1e10], model, num_points=16, scale=1e30)
    with pytest.raises(PieceError, match=r"^pieces: 16 point\(s\) with coordinates beyond "
                                         r"the range of torch.float32"):
        load_piece(good * 1e39, 16)
    assert torch.equal(load_piece(good * 1e39, 20, dtype=torch.float64).sort(0).values,
                       (good * 1e39).sort(0).values)


def test_cli_fit_resumes_with_ckpt_path_last(trained: Path, tmp_path, capsys):
    """The README's resume command continues the newest run (epoch and global step) instead
    of starting from scratch; last.ckpt is written after every epoch, also when validation
    runs only every 5 epochs; `last` with no checkpoint is a documented fresh start."""
    from geo3d.apps.assembly import load_checkpoint
    from geo3d.apps.assembly.cli import run_lightning_cli

    cfg = tmp_path / "tiny.yaml"
    text = (trained / "tiny.yaml").read_text().replace(f"{trained}/run", f"{tmp_path}/run")
    text = text.replace(f"{tmp_path}/data", f"{trained}/data")
    text = text.replace("  num_sanity_val_steps: 0", "  num_sanity_val_steps: 0\n"
                        "  check_val_every_n_epoch: 5")
    cfg.write_text(text)
    base = ["fit", "--config", str(cfg), "--trainer.default_root_dir", str(tmp_path / "run")]
    # no checkpoint yet: a fresh start, said so
    cli1 = run_lightning_cli([*base, "--ckpt_path", "last"])
    assert "no last.ckpt" in capsys.readouterr().err
    steps = cli1.trainer.global_step
    assert steps >= 1 and cli1.trainer.current_epoch == 1
    lasts = list((tmp_path / "run").rglob("last.ckpt"))
    assert len(lasts) == 1  # written without a validation epoch
    assert load_checkpoint(lasts[0])["global_step"] == steps
    parts_one_epoch = cli1.model.train_parts
    # resume: one more epoch only, continuing the step count
    cli2 = run_lightning_cli([*base, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert "--ckpt_path last ->" in capsys.readouterr().err
    assert cli2.trainer.current_epoch == 2
    assert cli2.trainer.global_step == 2 * steps
    assert cli2.model.train_parts == parts_one_epoch  # this process trained one epoch
    newest = max((tmp_path / "run").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    ck = load_checkpoint(newest)
    assert ck["global_step"] == 2 * steps and ck["epoch"] == 1
    # validate/test with `last` and nothing to find: a clear error
    with pytest.raises(FileNotFoundError, match="ckpt_path.*last"):
        run_lightning_cli(["test", "--config", str(cfg), "--trainer.default_root_dir",
                           str(tmp_path / "empty"), "--ckpt_path", "last"])


def test_cli_fit_on_an_empty_split_names_root_and_split_file(trained: Path, tmp_path, capsys):
    """Object folders renamed after decompression: `fit` stops with one line naming the
    root and the split file (not torch's num_samples=0 error from the sampler)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(trained / "data" / "data_split", root / "data_split")
    cfg = str(trained / "tiny.yaml")
    assert geo3d_main(["assembly", "fit", "--config", cfg, "--data.root", str(root),
                       "--trainer.default_root_dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("geo3d: error: ") and "no sample found" in err
    assert str(root) in err and "everyday.train.txt" in err


def test_assemble_names_scale_when_the_scaled_object_is_absurdly_sized(trained: Path):
    """Kind: a scale that leaves the float32 cast finite but puts the object far from the
    training data's size (tester 11:03: scale=1e30 failed inside the network naming "x",
    scale=1e-30 returned translations of 1e28). Absurd sizes are an error naming scale,
    merely unusual ones a warning."""
    model = load_model(_ckpt(trained))
    good = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for scale in (1e30, 1e-30):
        with pytest.raises(ValueError, match=r"^scale: the largest scaled piece has an RMS radius of .* units"):
            assemble([good, good * 0.5], model, num_points=16, scale=scale)
    with pytest.warns(UserWarning, match="far from the training data's ~1; check scale"):
        T = assemble([good, good * 0.5], model, num_points=16, scale=1e3)
    assert torch.isfinite(T).all()


def test_predict_refuses_foreign_checkpoints_and_unwritable_out_before_work(
        trained: Path, tmp_path, capsys, monkeypatch):
    """Fresh-user run: another app's checkpoint gave a raw TypeError (exit 1; assemble()
    raised TypeError, not CheckpointError); `--out afile/x.json` failed with a
    FileExistsError traceback after the whole assembly; `--out` an existing folder named
    the writer's temporary file; `demo --out afile` gave a traceback."""
    from geo3d._app import CheckpointError

    f = _bad_files(tmp_path)
    ckpt = _ckpt(trained)
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    raw["hyper_parameters"] = {"backbone": "vn_dgcnn", "net": {}}  # an ArtEq module's
    foreign = tmp_path / "arteq.ckpt"
    torch.save(raw, foreign)
    with pytest.raises(CheckpointError, match="not `geo3d assembly`'s"):
        assemble([f["good"], f["good"]], foreign)
    pieces = ["--pieces", str(f["good"]), str(f["good"])]
    assert geo3d_main(["assembly", "predict", "--checkpoint", str(foreign), *pieces]) == 2
    assert "a checkpoint of another geo3d app?" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    called = []
    import geo3d.apps.assembly._api as api

    monkeypatch.setattr(api, "assemble", lambda *a, **k: called.append(1))
    for out, needle in ((afile / "x.json", "is an existing file, not a folder"),
                        (tmp_path, "expected a file name, got the existing folder")):
        assert geo3d_main(["assembly", "predict", "--checkpoint", str(ckpt), *pieces,
                           "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--out: " in err and needle in err and "Traceback" not in err
    assert called == []  # refused before any work
    assert geo3d_main(["assembly", "demo", "--out", str(afile)]) == 2
    assert "--out: expected a folder, got the existing file" in capsys.readouterr().err
