"""Lightning training: outputs, atomic checkpoints, resume after a kill, truncated files."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from geo3d.apps.assembly import AssemblyModule, AtomicCheckpointIO, load_checkpoint, load_model
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from _toy import ToyParts  # noqa: E402

TINY = dict(feat_dim=8, k=5, hidden=[4, 4, 8], d_model=16, num_layers=1, num_heads=2,
            num_pictures=2)


def _loader(n: int = 8, seed: int = 0, batch_size: int = 4) -> DataLoader:
    return DataLoader(ToyParts(n, max_parts=3, num_points=24, seed=seed), batch_size=batch_size)


def _trainer(root: Path, max_epochs: int, callbacks=(), every_n: int | None = None) -> L.Trainer:
    ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=every_n,
                           save_top_k=-1 if every_n else 1)
    return L.Trainer(
        max_epochs=max_epochs, default_root_dir=root, accelerator="cpu", devices=1,
        plugins=[AtomicCheckpointIO()], callbacks=[ckpt, *callbacks],
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
        num_sanity_val_steps=0,
    )


def test_fit_writes_results_pictures_logs_and_loadable_checkpoint(tmp_path):
    L.seed_everything(0)
    model = AssemblyModule(**TINY)
    tr = _trainer(tmp_path, max_epochs=2)
    tr.fit(model, _loader(), _loader(4, seed=1))
    tr.test(model, _loader(4, seed=1), verbose=False)
    log_dir = Path(tr.log_dir)
    res = json.loads((log_dir / "results_test.json").read_text())
    assert res["metrics"]["num_objects"] == 4
    for proto in ("absolute", "anchor"):
        assert 0.0 <= res["metrics"][proto]["part_acc"] <= 1.0
        assert res["metrics"][proto]["rmse_r_geo"] >= 0.0
    pngs = sorted((log_dir / "pictures_test").glob("*.png"))
    plys = sorted((log_dir / "pictures_test").glob("*.ply"))
    assert len(pngs) == 2 and len(plys) == 2
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    head = plys[0].read_text().splitlines()
    assert head[0] == "ply" and "property uchar red" in head
    n_vert = int(next(h for h in head if h.startswith("element vertex")).split()[-1])
    assert n_vert == len(head) - head.index("end_header") - 1
    assert list(log_dir.glob("events.out.tfevents*"))  # TensorBoard
    last = tmp_path / "ckpt" / "last.ckpt"
    ckpt = load_checkpoint(last)  # weights_only=True
    assert ckpt["global_step"] == 4
    m2 = load_model(last)
    pts = ToyParts(1, 3, 24, seed=5)[0]
    with torch.no_grad():
        a = model.eval()(pts["points"][None], pts["valid"][None])
        b = m2(pts["points"][None], pts["valid"][None])
    assert torch.allclose(a["rot"], b["rot"]) and torch.allclose(a["trans"], b["trans"])
    assert not list((tmp_path / "ckpt").glob("*.tmp"))


class _Kill(Callback):
    """Simulates a kill mid-epoch at a given global step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt("simulated kill")


def test_killed_run_resumes_from_last_checkpoint(tmp_path):
    L.seed_everything(0)
    steps_per_epoch, epochs = 3, 3  # 12 objects / batch 4
    tr = _trainer(tmp_path, epochs, callbacks=[_Kill(4)], every_n=2)
    model = AssemblyModule(**TINY)
    try:
        tr.fit(model, _loader(12))
    except (KeyboardInterrupt, SystemExit):
        pass
    last = tmp_path / "ckpt" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 4  # mid-epoch 2 (steps 3..5)
    tr2 = _trainer(tmp_path, epochs, every_n=2)
    model2 = AssemblyModule(**TINY)
    tr2.fit(model2, _loader(12), ckpt_path="last")
    assert tr2.global_step == steps_per_epoch * epochs
    assert tr2.current_epoch == epochs
    assert load_checkpoint(last)["global_step"] == 8  # last multiple of every_n_train_steps


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    model = AssemblyModule(**TINY)
    tr = _trainer(tmp_path, 1)
    tr.fit(model, _loader(4))
    last = tmp_path / "ckpt" / "last.ckpt"
    bad = tmp_path / "bad.ckpt"
    data = last.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="bad.ckpt.*truncated"):
        load_checkpoint(bad)
    with pytest.raises(RuntimeError, match="bad.ckpt"):
        _trainer(tmp_path / "b", 2).fit(AssemblyModule(**TINY), _loader(4), ckpt_path=str(bad))
    with pytest.raises(RuntimeError, match="bad.ckpt"):
        load_model(bad)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "a.ckpt"
    io.save_checkpoint({"x": torch.ones(3)}, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk died during rename")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk died"):
        io.save_checkpoint({"x": torch.zeros(1000)}, path)
    assert path.read_bytes() == before  # old checkpoint intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]  # no temp left behind
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(path)["x"], torch.ones(3))


def test_rotation_augmentation_keeps_ground_truth_consistent(generator):
    from geo3d.apps.assembly._module import random_part_rotations

    item = ToyParts(1, 3, 16)[0]
    pts, rot = item["points"][None], item["rot"][None]
    p2, r2, _ = random_part_rotations(pts, rot, generator)
    a1 = pts @ rot.transpose(-1, -2)
    a2 = p2 @ r2.transpose(-1, -2)
    assert torch.allclose(a1, a2, atol=1e-5)
    assert not torch.allclose(pts, p2)


def test_bad_hparams():
    with pytest.raises(ValueError, match="arch"):
        AssemblyModule(arch="transformer")
    with pytest.raises(ValueError, match="loss_frame"):
        AssemblyModule(loss_frame="world", **TINY)
