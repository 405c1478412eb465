"""MultiviewCorrModule: 2-process DDP (gloo, CPU) gives the gradient of the union batch."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.distributed as dist
from geo3d.apps.multiview_corr._data import MultiviewCorrDataModule, collate_pairs
from geo3d.apps.multiview_corr._module import MultiviewCorrModule
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

TINY = dict(vit="random", vit_config={"embed_dim": 32, "depth": 2, "num_heads": 2,
                                      "patch_size": 4, "img_size": 32},
            lora_rank=2, lora_blocks=1, conv_init="reference")


class _SaveGrads(Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_after_backward(self, trainer, pl_module) -> None:
        grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters()
                 if p.grad is not None}
        torch.save(grads, f"{self.out}/grads_rank{trainer.global_rank}.pt")


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                    reason="torch.distributed with gloo is not available")
def test_ddp_two_processes_match_the_union_batch(tmp_path):
    dm = MultiviewCorrDataModule(
        str(tmp_path / "data"), render={"num_synthetic": 2, "seed": 0, "size": 32,
                                        "focal": 36.0, "level": 0},
        num_val_objects=1, pairs_per_object=4, num_pixels=64, pos_radius=0.05)
    dm.prepare_data()
    ds = dm.dataset("train")
    model = MultiviewCorrModule(**TINY)
    trainable = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=1,
        callbacks=[_SaveGrads(str(tmp_path))], default_root_dir=tmp_path, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    loader = DataLoader(ds, batch_size=1, shuffle=False, collate_fn=collate_pairs)
    try:
        trainer.fit(model, loader)
    except (RuntimeError, OSError) as err:  # pragma: no cover - platform dependent
        if "spawn" in str(err).lower() or "gloo" in str(err).lower():
            pytest.skip(f"cannot spawn a 2-process gloo group here: {err}")
        raise
    g0 = torch.load(tmp_path / "grads_rank0.pt", weights_only=True)
    g1 = torch.load(tmp_path / "grads_rank1.pt", weights_only=True)
    ref = MultiviewCorrModule(**TINY)
    ref.load_state_dict(trainable)
    # DistributedSampler (no shuffle): rank 0 gets item 0, rank 1 item 1; DDP averages
    ref.training_step([ds[0], ds[1]], 0).backward()
    grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert set(grads) == set(g0) == set(g1)
    for n, g in grads.items():
        assert torch.allclose(g0[n], g1[n], atol=1e-7), n
        scale = float(g.abs().max())
        assert float((g0[n] - g).abs().max()) <= 1e-5 * scale + 1e-7, n


def test_loss_and_step_on_one_pair(tmp_path):
    """One optimiser step on a pair changes only trainable weights and lowers that pair's
    loss (lr 1e-3, reference conv init)."""
    dm = MultiviewCorrDataModule(
        str(tmp_path / "data"), render={"num_synthetic": 2, "seed": 0, "size": 32,
                                        "focal": 36.0, "level": 0},
        num_val_objects=1, pairs_per_object=2, num_pixels=64, pos_radius=0.05)
    dm.prepare_data()
    pair = dm.dataset("train")[0]
    m = MultiviewCorrModule(**TINY, lr=1e-3)
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    opt = m.configure_optimizers()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == \
        {id(p) for p in m.parameters() if p.requires_grad}
    l0 = m.pair_loss(pair)
    l0.backward()
    opt.step()
    with torch.no_grad():
        l1 = m.pair_loss(pair)
    assert float(l1) < float(l0)
    for n, p in m.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), n
