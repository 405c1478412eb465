"""geo3d.nn.LoRAViT / LoRAQKV: the reference (3DCorrEnhance) adapter setting, save/load in
both formats, merging, trainable-parameter counts."""

from __future__ import annotations

import os

import pytest
import torch

from geo3d.nn import (
    LoRAQKV,
    LoRAViT,
    VisionTransformer,
    lora_trainable_parameter_count,
    vit_base,
    vit_small,
)

DIM = 64


def _vit(depth=6, dtype=torch.float64, seed=0) -> VisionTransformer:
    vit = VisionTransformer(
        DIM, depth, 2, img_size=28, generator=torch.Generator().manual_seed(seed)
    )
    return vit.to(dtype).eval()


def _lora(depth=6, dtype=torch.float64, seed=0, randomize_b=True, **kw) -> LoRAViT:
    model = LoRAViT(_vit(depth, dtype), generator=torch.Generator().manual_seed(seed + 1), **kw)
    if randomize_b:  # B starts at zero; give it values so that the adapters act
        g = torch.Generator().manual_seed(seed + 2)
        with torch.no_grad():
            for a in model.adapters.values():
                for p in a.lora_B.values():
                    p.copy_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


class TestLoRAQKV:
    def test_update_on_target_slices_only(self):
        # independent formula: y = x W^T + b + [x A_q^T B_q^T, 0, x A_v^T B_v^T]
        g = torch.Generator().manual_seed(0)
        base = torch.nn.Linear(8, 24).double()
        layer = LoRAQKV(base, rank=3, targets=("v", "q"), generator=g)
        assert layer.targets == ("q", "v")
        with torch.no_grad():
            for p in layer.lora_B.values():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        x = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
        y = layer(x)
        plain = base(x)
        dq = x @ layer.lora_A["q"].T @ layer.lora_B["q"].T
        dv = x @ layer.lora_A["v"].T @ layer.lora_B["v"].T
        torch.testing.assert_close(y[..., :8], plain[..., :8] + dq, atol=1e-12, rtol=0)
        torch.testing.assert_close(y[..., 8:16], plain[..., 8:16], atol=0, rtol=0)
        torch.testing.assert_close(y[..., 16:], plain[..., 16:] + dv, atol=1e-12, rtol=0)
        torch.testing.assert_close(layer.merged()(x), y, atol=1e-12, rtol=0)

    def test_init_matches_reference(self):
        # A as nn.Linear(C, r) (kaiming_uniform a=sqrt(5): |A| <= 1/sqrt(C)), B zero
        layer = LoRAQKV(
            torch.nn.Linear(64, 192), rank=4, generator=torch.Generator().manual_seed(0)
        )
        for t in ("q", "v"):
            assert layer.lora_A[t].shape == (4, 64) and layer.lora_B[t].shape == (64, 4)
            assert torch.equal(layer.lora_B[t], torch.zeros(64, 4))
            assert float(layer.lora_A[t].detach().abs().max()) <= 1 / 8
            assert float(layer.lora_A[t].detach().std()) > 0.05  # not zero / not tiny
        ref = torch.nn.Linear(64, 4, bias=False)
        torch.nn.init.kaiming_uniform_(
            ref.weight, a=5**0.5, generator=torch.Generator().manual_seed(0)
        )
        torch.testing.assert_close(layer.lora_A["q"], ref.weight)

    @pytest.mark.parametrize(
        "kw,name",
        [
            ({"rank": 0}, "rank"),
            ({"rank": True}, "rank"),
            ({"scale": float("nan")}, "scale"),
            ({"scale": float("inf")}, "scale"),
            ({"targets": ("q", "x")}, "targets"),
            ({"targets": ()}, "targets"),
            ({"targets": ("q", "q")}, "targets"),
        ],
    )
    def test_bad_arguments(self, kw, name):
        with pytest.raises(ValueError, match=name):
            LoRAQKV(torch.nn.Linear(8, 24), **kw)
        with pytest.raises(ValueError, match="base"):
            LoRAQKV(torch.nn.Linear(8, 16))


class TestLoRAViT:
    def test_zero_b_is_the_backbone(self):
        model = _lora(randomize_b=False, refine_conv=False)
        plain = _vit()
        x = torch.randn(1, 3, 28, 42, dtype=torch.float64)
        torch.testing.assert_close(
            model.forward_features(x)["patch_tokens"],
            plain.forward_features(x)["patch_tokens"],
            atol=1e-12,
            rtol=0,
        )

    def test_reference_setting_blocks_and_freezing(self):
        model = _lora()
        assert model.block_indices == (2, 3, 4, 5) and model.targets == ("q", "v")
        for i in range(6):
            assert isinstance(model.vit.blocks[i].attn.qkv, LoRAQKV) == (i >= 2)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert all("lora_" in n or n.startswith("refine_conv") for n in trainable)
        x = torch.randn(1, 3, 28, 28, dtype=torch.float64)
        model.train()
        model(x).square().sum().backward()
        assert model.vit.blocks[5].attn.qkv.base.weight.grad is None
        assert model.adapters["5"].lora_A["q"].grad.abs().sum() > 0
        assert model.refine_conv.weight.grad.abs().sum() > 0

    def test_refine_conv_on_patch_grid(self):
        model = _lora()
        x = torch.randn(1, 3, 42, 28, dtype=torch.float64)
        out = model.forward_features(x)
        torch.testing.assert_close(
            out["patch_tokens"], model.refine_conv(out["patch_tokens_backbone"])
        )
        assert out["patch_tokens"].shape == (1, DIM, 3, 2)

    @pytest.mark.parametrize("factory,dim", [(vit_small, 384), (vit_base, 768)])
    def test_trainable_parameter_counts(self, factory, dim):
        model = LoRAViT(factory(device="meta"), rank=4)
        n = model.num_trainable_parameters()
        # 4 blocks x (q, v) x (A: 4 x C + B: C x 4) + Conv2d(C, C, 3) with bias
        assert n == 4 * 2 * (4 * dim + dim * 4) + (dim * dim * 9 + dim)
        assert n == lora_trainable_parameter_count(dim)
        assert n == {384: 1_352_064, 768: 5_358_336}[dim]

    def test_configurable(self):
        model = _lora(rank=2, blocks=[0, -1], targets=("k",), refine_conv=False)
        assert model.block_indices == (0, 5)
        assert model.num_trainable_parameters() == 2 * 1 * 2 * 2 * DIM
        assert set(model.adapters["0"].lora_A) == {"k"}

    @pytest.mark.parametrize(
        "kw,name",
        [
            ({"blocks": [6]}, "blocks"),
            ({"blocks": [-7]}, "blocks"),
            ({"blocks": [1, -5]}, "blocks"),  # -5 is block 1 of 6: a duplicate
            ({"blocks": [True]}, "blocks"),  # a bool is an int in Python: not block 1
            ({"blocks": [2.0]}, "blocks"),
            ({"blocks": []}, "blocks"),
            ({"blocks": 3}, "blocks"),
            ({"rank": -1}, "rank"),
            ({"rank": 0}, "rank"),
            ({"rank": 2.0}, "rank"),
            ({"scale": float("nan")}, "scale"),
            ({"scale": float("-inf")}, "scale"),
            ({"scale": "1"}, "scale"),
            ({"targets": ("q", "w")}, "targets"),
        ],
    )
    def test_bad_arguments(self, kw, name):
        vit = _vit()
        with pytest.raises(ValueError, match=name):
            LoRAViT(vit, **kw)
        # nothing was changed: the backbone is neither frozen nor wrapped
        assert all(p.requires_grad for p in vit.parameters())
        assert not any(isinstance(b.attn.qkv, LoRAQKV) for b in vit.blocks)

    def test_double_wrap_rejected(self):
        vit = _vit()
        LoRAViT(vit)
        with pytest.raises(ValueError, match="vit"):
            LoRAViT(vit)


class TestMerge:
    @pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
    def test_merged_equals_unmerged(self, dtype, tol):
        model = _lora(dtype=dtype)
        x = torch.randn(2, 3, 28, 42, dtype=dtype)
        before = model.forward_features(x)
        model.merge_()
        after = model.forward_features(x)
        for k in ("cls", "patch_tokens"):
            torch.testing.assert_close(after[k], before[k], atol=tol, rtol=0)
        assert all(type(b.attn.qkv) is torch.nn.Linear for b in model.vit.blocks)
        assert model.vit.state_dict().keys() == _vit().state_dict().keys()
        with pytest.raises(ValueError, match="merged"):
            model.adapter_state_dict()


class TestSaveLoad:
    def test_geo3d_roundtrip(self, tmp_path):
        a = _lora(seed=0)
        b = _lora(seed=10)
        x = torch.randn(1, 3, 28, 28, dtype=torch.float64)
        assert not torch.allclose(a(x), b(x))
        path = a.save_adapters(tmp_path / "sub" / "adapters.pt")
        obj = torch.load(path, weights_only=True)
        assert obj["format"] == "geo3d.lora" and obj["config"]["rank"] == 4
        assert set(obj["state_dict"]) == set(a.adapter_state_dict())  # adapters only
        b.load_adapters(path)
        torch.testing.assert_close(b(x), a(x), atol=0, rtol=0)
        assert os.listdir(tmp_path / "sub") == ["adapters.pt"]  # no temp file left

    def test_reference_layout(self, tmp_path):
        a = _lora()
        a.save_adapters(tmp_path / "ref.ckpt", format="reference")
        obj = torch.load(tmp_path / "ref.ckpt", weights_only=True)
        assert sorted(k for k in obj if k.startswith("w_a_")) == [f"w_a_{i:03d}" for i in range(8)]
        # alternating q/v per block, blocks ascending (the reference's append order)
        assert torch.equal(obj["w_a_000"], a.adapters["2"].lora_A["q"])
        assert torch.equal(obj["w_a_001"], a.adapters["2"].lora_A["v"])
        assert torch.equal(obj["w_b_006"], a.adapters["5"].lora_B["q"])
        assert torch.equal(obj["w_b_007"], a.adapters["5"].lora_B["v"])
        assert set(obj["state_dict"]["refine_conv"]) == {"weight", "bias"}

    def test_loads_a_reference_style_checkpoint(self, tmp_path):
        # a Lightning checkpoint as the reference's on_save_checkpoint writes it
        g = torch.Generator().manual_seed(3)
        ckpt = {
            "epoch": 99,
            "global_step": 1000,
            "pytorch-lightning_version": "2.0.0",
            "state_dict": {
                "refine_conv": {
                    "weight": torch.randn(DIM, DIM, 3, 3, generator=g, dtype=torch.float64),
                    "bias": torch.randn(DIM, generator=g, dtype=torch.float64),
                }
            },
        }
        for n in range(8):
            ckpt[f"w_a_{n:03d}"] = torch.randn(4, DIM, generator=g, dtype=torch.float64)
            ckpt[f"w_b_{n:03d}"] = torch.randn(DIM, 4, generator=g, dtype=torch.float64)
        torch.save(ckpt, tmp_path / "last.ckpt")
        model = _lora()
        model.load_adapters(tmp_path / "last.ckpt")
        assert torch.equal(model.adapters["3"].lora_A["v"], ckpt["w_a_003"])
        assert torch.equal(model.adapters["4"].lora_B["q"], ckpt["w_b_004"])
        assert torch.equal(model.refine_conv.bias, ckpt["state_dict"]["refine_conv"]["bias"])

    def test_mismatch_errors(self, tmp_path):
        _lora().save_adapters(tmp_path / "a.pt")
        with pytest.raises(ValueError, match="shape"):
            _lora(rank=2).load_adapters(tmp_path / "a.pt")
        with pytest.raises(ValueError, match="missing"):
            _lora(blocks=[1, 2, 3, 4, 5]).load_adapters(tmp_path / "a.pt")
        _lora().save_adapters(tmp_path / "r.ckpt", format="reference")
        with pytest.raises(ValueError, match="w_a_"):
            _lora(blocks=[4, 5]).load_adapters(tmp_path / "r.ckpt")
        torch.save({"foo": torch.zeros(1)}, tmp_path / "x.pt")
        with pytest.raises(ValueError, match="path"):
            _lora().load_adapters(tmp_path / "x.pt")
        with pytest.raises(ValueError, match="format"):
            _lora().save_adapters(tmp_path / "y.pt", format="peft")
        with pytest.raises(ValueError, match="refine_conv"):
            _lora(refine_conv=False).save_adapters(tmp_path / "y.pt", format="reference")

    def test_save_onto_a_directory_names_it(self, tmp_path):
        d = tmp_path / "ad"
        d.mkdir()
        with pytest.raises(IsADirectoryError, match="path") as info:
            _lora().save_adapters(d)
        assert str(d) in str(info.value) and ".tmp" not in str(info.value)
        assert os.listdir(tmp_path) == ["ad"] and os.listdir(d) == []  # no temp file left

    def test_unreadable_adapter_files_named(self, tmp_path):
        _lora().save_adapters(tmp_path / "a.pt")
        data = (tmp_path / "a.pt").read_bytes()
        (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
        (tmp_path / "junk.pt").write_bytes(b"garbage bytes, not a checkpoint")
        for name in ("trunc.pt", "junk.pt"):
            with pytest.raises(ValueError, match="cannot be read") as info:
                _lora().load_adapters(tmp_path / name)
            assert name in str(info.value) and info.value.__cause__ is not None
        torch.save({"x": ValueError("obj")}, tmp_path / "evil.pt")  # a pickled object
        with pytest.raises(ValueError, match="cannot be read") as info:
            _lora().load_adapters(tmp_path / "evil.pt")
        assert "weights_only=False" not in str(info.value)  # torch's unsafe advice dropped
        torch.save({"format": "geo3d.lora", "state_dict": [1]}, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match="state_dict") as info:
            _lora().load_adapters(tmp_path / "bad.pt")
        assert "bad.pt" in str(info.value)
        with pytest.raises(FileNotFoundError, match="path"):
            _lora().load_adapters(tmp_path / "missing.pt")

    def test_atomic_write_keeps_old_file_on_failure(self, tmp_path, monkeypatch):
        path = tmp_path / "adapters.pt"
        path.write_bytes(b"old")

        def boom(obj, f, *a, **k):
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise RuntimeError("disk full")

        monkeypatch.setattr(torch, "save", boom)
        with pytest.raises(RuntimeError, match="disk full"):
            _lora().save_adapters(path)
        assert path.read_bytes() == b"old"
        assert os.listdir(tmp_path) == ["adapters.pt"]
