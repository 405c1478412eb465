"""End to end on generated fractures: `geo3d assembly fit/test/predict`, `assemble()`."""

from __future__ import annotations

import json
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
    metrics = json.loads(res[-1].read_text())["metrics"]
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
    for i, p in enumerate(pieces):
        a = p @ T[i, :3, :3].T + T[i, :3, 3]
        b = moved[i] @ T2[i, :3, :3].T + T2[i, :3, 3]
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
    with pytest.raises(FileNotFoundError, match="missing.obj"):
        assemble([tmp_path / "missing.obj"], ckpt)
    with pytest.raises(ValueError, match="pieces"):
        assemble([np.zeros((5, 2))], ckpt)
