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
    # the reported metrics are the model's predictions scored against the ground truth:
    # recompute them independently (numpy/scipy brute force) from the same objects
    model.eval()
    objs = []
    with torch.no_grad():
        for batch in _loader(4, seed=1):
            pred = model(batch["points"], batch["valid"])
            for i in range(batch["points"].shape[0]):
                objs.append((batch["points"][i], batch["valid"][i], pred["rot"][i],
                             pred["trans"][i], batch["rot"][i], batch["trans"][i]))
    for proto in ("absolute", "anchor"):
        ref = _brute_force_metrics(objs, proto)
        got = res["metrics"][proto]
        assert set(got) == set(ref)
        for k, v in ref.items():
            tol = 0.05 if "_r_" in k else 1e-5  # degrees / lengths (float32 model)
            assert got[k] == pytest.approx(v, rel=1e-4, abs=tol), (proto, k)
        # ... and they are not the values of a perfect prediction (ground truth vs itself)
        assert got["part_acc"] < 1.0 and got["rmse_r_geo"] > 1.0 and got["shape_cd"] > 1e-4
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


def _brute_force_metrics(objs, protocol: str) -> dict[str, float]:
    """Breaking Bad metrics per object with numpy/scipy, means over objects (independent
    of geo3d.eval): per-part chamfer (squared, means both ways), part accuracy (< 0.01),
    shape chamfer over the valid parts, Euler ("xyz", degrees, wrapped) per-part RMSE/MAE,
    geodesic angles, translation per-part RMSE/MAE, pooled RMSEs; ``anchor``: the largest
    part (radius of gyration) is first moved onto its true pose with the whole assembly."""
    import numpy as np
    from scipy.spatial.transform import Rotation

    def cd(x, y):
        d = ((x[:, None] - y[None]) ** 2).sum(-1)
        return d.min(1).mean() + d.min(0).mean()

    rows = []
    for pts, valid, pr, pt, gr, gt in objs:
        v = valid.numpy().astype(bool)
        p = pts.double().numpy()[v]
        pr, pt = pr.double().numpy()[v], pt.double().numpy()[v]
        gr, gt = gr.double().numpy()[v], gt.double().numpy()[v]
        if protocol == "anchor":
            a = int(np.argmax([((q - q.mean(0)) ** 2).sum(1).mean() for q in p]))
            RA = gr[a] @ pr[a].T
            tA = gt[a] - RA @ pt[a]
            pr = RA[None] @ pr
            pt = pt @ RA.T + tA
        xs = [q @ R.T + t for q, R, t in zip(p, pr, pt, strict=True)]
        ys = [q @ R.T + t for q, R, t in zip(p, gr, gt, strict=True)]
        part_cd = np.array([cd(x, y) for x, y in zip(xs, ys, strict=True)])
        e1 = Rotation.from_matrix(pr).as_euler("xyz", degrees=True)
        e2 = Rotation.from_matrix(gr).as_euler("xyz", degrees=True)
        de = np.abs(e1 - e2)
        de = np.minimum(de, 360 - de)
        geo = np.degrees((Rotation.from_matrix(pr).inv() * Rotation.from_matrix(gr)).magnitude())
        dt = pt - gt
        rows.append({
            "part_acc": (part_cd < 0.01).mean(),
            "shape_cd": cd(np.concatenate(xs), np.concatenate(ys)),
            "rmse_r_euler": np.sqrt((de**2).mean(1)).mean(),
            "mae_r_euler": de.mean(),
            "rmse_r_euler_pooled": np.sqrt((de**2).mean()),
            "rmse_r_geo": np.sqrt((geo**2).mean()),
            "mae_r_geo": geo.mean(),
            "rmse_t": np.sqrt((dt**2).mean(1)).mean(),
            "mae_t": np.abs(dt).mean(),
            "rmse_t_pooled": np.sqrt((dt**2).mean()),
        })
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


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
