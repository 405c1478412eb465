"""ArtEqNet / ArtEqModule robustness: scale-safe part geometry, option validation, skipped
non-finite steps (fresh-user tester report, items 1, 4, 5, 9)."""

from __future__ import annotations

import pytest
import torch
from geo3d.apps.arteq._model import ArtEqNet

from geo3d.rotations import random_rotation_matrix

TINY = {"k": 8, "feat_dim": 8, "hidden": (8, 8), "d_model": 16, "num_heads": 2,
        "rot_hidden": 8}


def _net(backbone: str = "vn", **kw) -> ArtEqNet:
    torch.manual_seed(0)
    return ArtEqNet(backbone, **{**TINY, **kw}).eval()


# ---------------------------------------------------------------- item 1: part_geometry scale
@pytest.mark.parametrize("backbone", ["vn", "vn_dgcnn", "pointnet"])
def test_part_geometry_net_is_finite_in_float32_at_large_spreads(backbone):
    # the C^2 geometry terms grew as the 5th power of the coordinates (in `unit`) and
    # overflowed float32 from a 10 m spread on ("M: expected finite values" in the SVD)
    net = _net(backbone, part_geometry=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 40, 3, generator=g)
    for spread in (10.0, 1e2, 1e3, 1e4, 1e5):
        with torch.no_grad():
            out = net(x * spread)
        for k, v in out.items():
            assert bool(torch.isfinite(v).all()), (spread, k)
        if backbone != "pointnet":
            R = out["part_rot"]
            eye = torch.eye(3).expand_as(R)
            torch.testing.assert_close(R.transpose(-1, -2) @ R, eye, atol=1e-4, rtol=0)


def test_part_geometry_input_is_scale_free_and_equivariant_in_float64():
    # the geometry vectors are those of the points over their RMS radius: scaling the
    # whole cloud (backbone features aside) leaves them unchanged; and the net stays
    # exactly SE(3)-equivariant far from the origin at a large scale
    net = _net("vn_dgcnn", part_geometry=True, batch_norm=False).double()
    seen = []
    hook = net.rot_mlp.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 60, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [0.8, 0.4, 0.2], dtype=torch.float64)
    lab = torch.randperm(60, generator=g).remainder(22).expand(2, 60)  # every part labelled
    with torch.no_grad():
        net(x, lab)
        net(1e4 * x, lab)
    hook.remove()
    n = 2 * 6  # geometry channels (part + parent) are the last ones of the readout input
    torch.testing.assert_close(seen[1][:, -n:], seen[0][:, -n:], atol=1e-12, rtol=1e-10)
    assert float(seen[1][:, -n:].abs().max()) < 100.0
    y0 = 1e3 * x + 5e3
    for _ in range(2):
        R = random_rotation_matrix(2, generator=g, dtype=x.dtype)
        t = 1e4 * torch.randn(2, 3, generator=g, dtype=x.dtype)
        with torch.no_grad():
            a, b = net(y0, lab), net(y0 @ R.transpose(-1, -2) + t[:, None], lab)
        torch.testing.assert_close(b["part_rot"], R[:, None] @ a["part_rot"], atol=1e-9, rtol=0)
        torch.testing.assert_close(b["betas"], a["betas"], atol=1e-9, rtol=0)
        torch.testing.assert_close(b["part_logits"], a["part_logits"], atol=1e-9, rtol=0)


# ---------------------------------------------------------------- item 4: skipped steps
def test_a_non_finite_gradient_step_moves_neither_weights_nor_optimizer_state(tmp_path):
    # zeroing the gradients of a bad step still let Adam apply its momentum to every weight
    # (up to 6.7e-5 after one good step): the optimizer step itself must be skipped
    import copy

    import lightning as L
    from geo3d.apps.arteq._module import ArtEqModule

    from geo3d.rotations import random_rotation_matrix as rot

    g = torch.Generator().manual_seed(0)
    items = [{"points": torch.randn(32, 3, generator=g),
              "labels": torch.randint(0, 22, (32,), generator=g),
              "global_orient": rot(1, generator=g)[0], "body_pose": rot(23, generator=g),
              "betas": 0.1 * torch.randn(10, generator=g)} for _ in range(3)]
    loader = torch.utils.data.DataLoader(items, batch_size=1, shuffle=False)
    torch.manual_seed(0)
    m = ArtEqModule("pointnet", {"k": 4, "feat_dim": 4, "hidden": [4], "d_model": 8,
                                 "num_layers": 1, "num_heads": 2, "rot_hidden": 4},
                    body_model="tiny", lr=1e-2, weight_decay=1e-3, num_pictures=0)
    poisoned = next(p for p in m.net.parameters() if p.numel() > 1)
    calls = []

    def hook(g):
        calls.append(1)
        return torch.full_like(g, float("nan")) if len(calls) == 2 else g

    poisoned.register_hook(hook)
    snaps = []

    class Snap(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            opt = trainer.optimizers[0]
            # parameters (batch-norm running statistics move in every training forward)
            snaps.append(({k: v.detach().clone() for k, v in module.named_parameters()},
                          copy.deepcopy(opt.state_dict()["state"])))

    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=3,
                        limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Snap()], default_root_dir=str(tmp_path))
    trainer.fit(m, train_dataloaders=loader)
    assert len(calls) == 3 and len(snaps) == 3 and m.skipped_steps == 1
    (w0, s0), (w1, s1), (w2, s2) = snaps
    for k in w0:  # the bad step (batch 1) left every weight exactly as after batch 0
        assert torch.equal(w1[k], w0[k]), k
    assert s1.keys() == s0.keys() and len(s0) > 0
    for i in s0:  # ... and Adam's moments and step counts
        for k in s0[i]:
            assert torch.equal(torch.as_tensor(s1[i][k]), torch.as_tensor(s0[i][k])), (i, k)
    # the good steps around it did train
    assert any(not torch.equal(w2[k], w1[k]) for k in w0)
    assert all(bool(torch.isfinite(v).all()) for v in w2.values())


# ---------------------------------------------------------------- item 5: pool_power attribute
def test_pool_power_assignment_is_validated_and_saved(tmp_path):
    from geo3d.apps.arteq._checkpoint import load_model, save_model

    net = _net("pointnet")
    for bad in (0, -3, 0.5, float("nan"), float("inf"), True, "2", None):
        with pytest.raises(ValueError, match="pool_power"):
            net.pool_power = bad
    assert net.pool_power == 1.0 and net.config["pool_power"] == 1.0  # unchanged
    net.pool_power = 4
    assert net.pool_power == 4.0 and isinstance(net.pool_power, float)
    assert net.config["pool_power"] == 4.0
    loaded = load_model(save_model(net, tmp_path / "net.pt"))
    assert loaded.pool_power == 4.0
    x = torch.randn(1, 30, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["part_rot"], net(x)["part_rot"], atol=0, rtol=0)


# ---------------------------------------------------------------- item 9: typed options
FLAGS = ("dynamic_graph", "batch_norm", "seg_norms", "part_geometry", "normalize_invariants",
         "chiral")


@pytest.mark.parametrize("name", FLAGS)
def test_boolean_net_options_must_be_bools(name):
    # bool("no") / bool("false") is True: such values turned the option on silently
    for bad in ("no", "false", 0, 1, None, 1.0):
        with pytest.raises(ValueError, match=name):
            ArtEqNet("vn_dgcnn", **{**TINY, name: bad})
    for ok in (False, True):
        assert ArtEqNet("vn_dgcnn", **{**TINY, name: ok}).config[name] is ok


def test_number_net_options_are_validated():
    cases = {"interp_sigma": (True, 0.0, -1.0, float("nan"), float("inf"), "0.03"),
             "unit": (True, 0.0, float("nan"), float("inf"), "0.05"),
             "hidden": ((), (8, 0), (8, True), (8, 2.5), ("8",), "88", 8),
             "k": (True, 0, 2.0), "num_centers": (True, 0, 1.5)}
    for name, bads in cases.items():
        for bad in bads:
            with pytest.raises(ValueError, match=name):
                ArtEqNet("pointnet", **{**TINY, name: bad})
    assert ArtEqNet("pointnet", **{**TINY, "hidden": [8, 4]}).config["hidden"] == [8, 4]


def test_module_number_options_are_validated():
    from geo3d.apps.arteq._module import ArtEqModule

    net = {"feat_dim": 4, "hidden": [4], "d_model": 8, "num_layers": 1, "num_heads": 2}
    cases = {"lr": (0.0, -1e-4, float("nan"), float("inf"), True, "1e-4"),
             "weight_decay": (-1.0, float("nan"), float("inf"), True, "0")}
    for w in ("seg", "rot", "betas", "joints", "vertices", "normals", "markers", "centroids"):
        cases[f"w_{w}"] = (-1.0, float("nan"), float("inf"), True, "5")
    cases.update({"num_markers": (0, -1, True, 2.0, "67"), "num_pictures": (-1, True, 1.5),
                  "icp_steps": (-1, True, 3.0, "3"), "seed": (True, 0.5, "0", None),
                  "gt_seg_epochs": (-2, True, 1.0, "1")})
    for name, bads in cases.items():
        for bad in bads:
            with pytest.raises(ValueError, match=name):
                ArtEqModule("pointnet", net, body_model="tiny", **{name: bad})
    with pytest.raises(ValueError, match="chiral"):
        ArtEqModule("vn", {**net, "chiral": "no"}, body_model="tiny")
    m = ArtEqModule("pointnet", net, body_model="tiny", lr=1, weight_decay=0, w_rot=0,
                    num_pictures=0, icp_steps=0, gt_seg_epochs=-1)
    assert m.hparams.lr == 1 and m.hparams.w_rot == 0


def test_data_module_flags_and_numbers_are_validated(tmp_path):
    from geo3d.apps.arteq._data import ArtEqDataModule

    cases = {"train_rotate": ("no", "false", 0, None), "val_rotate": ("no", 1),
             "noise_std": (True, -1e-3, float("nan"), float("inf"), "0.001"),
             "betas_std": (True, -1.0, float("nan"), float("inf")), "seed": (True, 0.5, "0")}
    for name, bads in cases.items():
        for bad in bads:
            with pytest.raises(ValueError, match=name):
                ArtEqDataModule(root=str(tmp_path), body_model="tiny", **{name: bad})
    dm = ArtEqDataModule(root=str(tmp_path), body_model="tiny", train_rotate=False,
                         noise_std=0, betas_std=0.5, seed=3)
    assert dm.hparams.train_rotate is False
