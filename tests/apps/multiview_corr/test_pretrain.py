"""Pretraining on synthetic renders: a 3-step run writes weights load_vit reads and that
moved from the initialisation; the cache is hit on a second call; head and loss checks."""

from __future__ import annotations

import json

import pytest
import torch
from geo3d.apps.multiview_corr import _pretrain
from geo3d.apps.multiview_corr._pretrain import _DenseHead, _loss, pretrain_vit

from geo3d.nn import VisionTransformer, load_vit

ARCH = (32, 2, 2)


def _sphere_views(root, name="sphere", size=28, views=2, radius=0.4):
    """Hand-made renders in the ``geo3d data render`` layout: a textured sphere seen from
    ``views`` cameras (analytic ray casting, no open3d: fast)."""
    import numpy as np
    from geo3d.datasets.multiview_render import write_png

    from geo3d.render import intrinsics_matrix, look_at

    d = root / name
    d.mkdir(parents=True)
    K = intrinsics_matrix(30.0, cx=(size - 1) / 2, cy=(size - 1) / 2).numpy()
    eyes = [[2.0, 0.0, 0.3], [0.0, 2.0, -0.2], [-1.4, 1.4, 0.5]][:views]
    poses = look_at(torch.tensor(eyes, dtype=torch.float64)).numpy()
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    for k, T in enumerate(poses):
        R, t = T[:3, :3], T[:3, 3]
        c = -R.T @ t
        rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
        dirs = rays @ R  # world directions (rows: R^T r)
        a = (dirs * dirs).sum(-1)
        b = 2 * (dirs @ c)
        disc = b * b - 4 * a * ((c @ c) - radius**2)
        hit = disc > 0
        s = np.where(hit, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), 0.0)  # z-depth
        pts = c + s[..., None] * dirs
        rgb = ((np.sin(8 * pts) * 0.5 + 0.5) * 255 * hit[..., None]).astype(np.uint8)
        write_png(d / f"color_{k:06d}.png", rgb)
        write_png(d / f"depth_{k:06d}.png", np.round(s * 1000).astype(np.uint16))
        write_png(d / f"mask_{k:06d}.png", (hit * 255).astype(np.uint8))
    np.save(d / "poses.npy", poses)
    np.save(d / "intrinsics.npy", K)
    return root


@pytest.fixture(scope="module")
def tiny_renders(tmp_path_factory):
    return _sphere_views(tmp_path_factory.mktemp("renders"))


def _run(tiny_renders, tmp_path, out_name, **kw):
    args = dict(
        steps=3,
        arch=ARCH,
        img_size=28,
        train_size=28,
        batch_size=2,
        max_views=2,
        warmup=1,
        cache_dir=tmp_path / "cache",
        progress=False,
        threads=1,
    )
    args.update(kw)
    return pretrain_vit(tmp_path / out_name, tiny_renders, **args)


def test_three_steps_write_loadable_weights_that_moved(tiny_renders, tmp_path):
    path = _run(tiny_renders, tmp_path, "vit.pth")
    assert path == tmp_path / "vit.pth" and path.is_file()
    vit = load_vit(path)  # official DINOv2 key layout, strict
    assert (vit.embed_dim, len(vit.blocks), vit.patch_size, vit.img_size) == (32, 2, 14, 28)
    init = VisionTransformer(
        embed_dim=32,
        depth=2,
        num_heads=2,
        patch_size=14,
        img_size=28,
        generator=torch.Generator().manual_seed(0),
    )  # the same seed as the run: the weights before training
    moved = [
        k
        for k, v in init.state_dict().items()
        if k != "mask_token" and not torch.equal(v, vit.state_dict()[k])
    ]
    assert "blocks.0.attn.qkv.weight" in moved and "patch_embed.proj.weight" in moved
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["steps"] == 3 and len(meta["loss_curve"]) == 3 and meta["num_views"] == 2
    assert meta["train_cpu_seconds"] > 0 and meta["seconds_per_step"] > 0
    assert all(v == v for v in meta["loss_curve"])  # finite, no NaN
    x = torch.rand(1, 3, 28, 28)
    assert torch.isfinite(vit.forward_features(x)["patch_tokens"]).all()


def test_cache_hit_does_not_retrain(tiny_renders, tmp_path, monkeypatch):
    first = _run(tiny_renders, tmp_path, "a.pth")
    calls = []
    real = _pretrain._train
    monkeypatch.setattr(_pretrain, "_train", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = _run(tiny_renders, tmp_path, "b.pth")
    assert calls == []
    assert first.read_bytes() == second.read_bytes()
    _run(tiny_renders, tmp_path, "c.pth", steps=4)  # another setting: another key, trains
    assert calls == [1]
    _run(tiny_renders, tmp_path, "d.pth", use_cache=False)  # forced
    assert calls == [1, 1]


def test_head_pixel_shuffle_layout():
    p = 3
    head = _DenseHead(4, p, None)
    with torch.no_grad():
        head.proj.weight.zero_()
        # channel k * p * p + dy * p + dx -> value 100 k + 10 dy + dx
        head.proj.bias.copy_(
            torch.tensor(
                [100.0 * k + 10 * dy + dx for k in range(5) for dy in range(p) for dx in range(p)]
            )
        )
    out = head(torch.zeros(1, 4, 2, 5)).detach()
    assert out.shape == (1, 5, 2 * p, 5 * p)
    for k, i, j, dy, dx in [(0, 0, 0, 0, 0), (3, 1, 4, 2, 1), (4, 1, 2, 0, 2)]:
        assert float(out[0, k, i * p + dy, j * p + dx]) == 100 * k + 10 * dy + dx


def test_loss_ignores_background_for_geometry():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 1, 6, 6, generator=g) > 0.5
    tgt = torch.randn(2, 4, 6, 6, generator=g)
    pred = torch.cat([torch.where(mask, 20.0, -20.0), tgt], 1)
    total, parts = _loss(pred, mask, tgt)
    assert parts["points"] == 0.0 and parts["depth"] == 0.0 and parts["mask"] < 1e-8
    pred2 = pred.clone()
    pred2[:, 1:] += (~mask).float() * 5.0  # change geometry on the background only
    assert _loss(pred2, mask, tgt)[1]["points"] == 0.0
    pred3 = pred.clone()
    pred3[:, 1:4] += mask.float() * 0.5  # 0.5 off on every foreground coordinate
    assert _loss(pred3, mask, tgt)[1]["points"] == pytest.approx(0.5, rel=1e-6)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        pretrain_vit(tmp_path / "x.pth", tmp_path, steps=0)
    with pytest.raises(ValueError, match="train_size"):
        pretrain_vit(tmp_path / "x.pth", tmp_path, train_size=100)
    with pytest.raises(ValueError, match="arch"):
        pretrain_vit(tmp_path / "x.pth", tmp_path, arch="huge")
    with pytest.raises(ValueError, match="^device: expected a torch device"):
        pretrain_vit(tmp_path / "x.pth", tmp_path, device="gpu0")
    with pytest.raises(ValueError, match="data_root"):
        pretrain_vit(tmp_path / "x.pth", tmp_path / "missing", cache_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="data_root"):
        pretrain_vit(tmp_path / "x.pth", tmp_path, cache_dir=tmp_path / "c")  # no objects


def test_loaded_targets_are_the_sphere(tiny_renders):
    data = _pretrain._load_views(tiny_renders, ["sphere"], None)
    assert data["rgb"].shape == (2, 3, 28, 28) and data["rgb"].dtype == torch.uint8
    m = data["mask"]
    assert int(m.sum()) > 50
    r = data["points"].permute(0, 2, 3, 1)[m].norm(dim=-1)
    # millimetre depth quantisation moves points by < 1e-3 along the ray
    assert float((r - 0.4).abs().max()) < 2e-3
    # depth relative to the camera distance: the sphere's front is within [-0.4, 0]
    dep = data["depth"][m]
    assert float(dep.min()) >= -0.4 - 2e-3 and float(dep.max()) <= 1e-3
    assert float(data["depth"][~m].abs().max()) == 0.0


def test_rgb_target_is_a_separate_cache_entry(tiny_renders, tmp_path):
    plain = _run(tiny_renders, tmp_path, "p.pth")
    rgb = _run(tiny_renders, tmp_path, "r.pth", rgb_weight=1.0)
    meta = json.loads(rgb.with_suffix(".json").read_text())
    assert meta["rgb_weight"] == 1.0 and "rgb" in meta["loss_first"]
    assert "rgb_weight" not in json.loads(plain.with_suffix(".json").read_text())
    assert plain.read_bytes() != rgb.read_bytes()
    assert len(list((tmp_path / "cache").glob("*.pth"))) == 2
    load_vit(rgb)  # the head (8 channels) is not saved: still a plain ViT file
