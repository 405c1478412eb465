"""CorrFeatureModel: parameter counts (reference setting), identity start, frozen backbone,
adapter state round trips, merge, input sizes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from geo3d.apps.multiview_corr._model import (
    CorrFeatureModel,
    corr_trainable_parameter_count,
    network_input_size,
)

from geo3d.nn import LoRAQKV, VisionTransformer, imagenet_normalize, vit_base, vit_small


def _tiny(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return VisionTransformer(
        embed_dim=32, depth=6, num_heads=2, patch_size=7, img_size=28, dtype=dtype, generator=g
    )


def _perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize(
    "factory, c, want", [(vit_base, 768, 5_358_336), (vit_small, 384, 1_352_064)]
)
def test_trainable_parameter_count_reference_setting(factory, c, want):
    model = CorrFeatureModel(factory(device="meta"))  # rank 4, q & v, last 4 blocks, conv
    # independent count: 4 blocks x 2 (q, v) x r (in + out) + 3x3 conv C -> C with bias
    lora = 4 * 2 * 4 * (c + c)
    conv = c * c * 9 + c
    assert model.trainable_parameters() == lora + conv == want
    assert corr_trainable_parameter_count(c) == want
    if c == 768:  # the paper: 5.36M trainable, 5.31M of them the convolution
        assert round(want / 1e6, 2) == 5.36 and round(conv / 1e6, 2) == 5.31


def test_adapters_sit_on_q_and_v_of_the_last_blocks_without_scaling():
    model = CorrFeatureModel(_tiny(), lora_blocks=4)
    wrapped = [i for i, b in enumerate(model.vit.blocks) if isinstance(b.attn.qkv, LoRAQKV)]
    assert wrapped == [2, 3, 4, 5]
    for i in wrapped:
        q = model.vit.blocks[i].attn.qkv
        assert q.targets == ("q", "v") and q.scale == 1.0 and q.rank == 4
        assert torch.count_nonzero(q.lora_B["q"]) == 0 and torch.count_nonzero(q.lora_A["q"]) > 0


def test_only_adapters_require_grad_and_receive_gradients():
    model = CorrFeatureModel(_tiny())
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(("lora_A" in n or "lora_B" in n or "refine_conv" in n) for n in names)
    assert sum(1 for n in names if "refine_conv" in n) == 2
    x = torch.rand(2, 3, 28, 35, dtype=torch.float64)
    model(x).square().sum().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, n
        else:
            assert p.grad is None, n
    b = model.vit.blocks[-1].attn.qkv.lora_B["v"]
    assert b.grad.abs().sum() > 0  # B starts at zero but gets a gradient


def test_identity_start_equals_the_plain_vit():
    vit = _tiny()
    plain = copy.deepcopy(vit)
    model = CorrFeatureModel(vit, long_side=42)
    x = torch.rand(2, 3, 30, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = model(x)
    xs = F.interpolate(x, size=(28, 42), mode="bilinear", align_corners=False, antialias=True)
    want = plain.forward_features(imagenet_normalize(xs))["patch_tokens"]
    assert got.shape == (2, 32, 4, 6)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # the reference's initialisation is a plain default-initialised conv: features differ
    ref = CorrFeatureModel(copy.deepcopy(plain), conv_init="reference", long_side=42)
    assert (ref(x) - want).abs().max() > 1e-2
    w = ref.lora.refine_conv.weight.detach()
    bound = 1.0 / math.sqrt(9 * 32)  # kaiming_uniform(a=sqrt(5)) of nn.Conv2d
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.9 * bound


def test_adapter_state_round_trip_dict_and_files(tmp_path):
    vit = _tiny()
    fresh_vit = copy.deepcopy(vit)
    model = CorrFeatureModel(vit, conv_init="reference", generator=torch.Generator().manual_seed(3))
    _perturb(model)
    x = torch.rand(1, 3, 28, 28, dtype=torch.float64)
    y = model(x)
    sd = model.adapter_state_dict()
    assert sum(v.numel() for v in sd.values()) == model.trainable_parameters()
    other = CorrFeatureModel(copy.deepcopy(fresh_vit))
    assert (other(x) - y).abs().max() > 1e-3
    other.load_adapter(sd)
    torch.testing.assert_close(other(x), y, rtol=0, atol=0)
    for fmt in ("geo3d", "reference"):
        path = model.save_adapter(tmp_path / f"a_{fmt}.pt", format=fmt)
        third = CorrFeatureModel(copy.deepcopy(fresh_vit))
        third.load_adapter(path)
        torch.testing.assert_close(third(x), y, rtol=0, atol=0)
    bad = dict(sd)
    bad.pop("refine_conv.bias")
    with pytest.raises(ValueError, match="missing"):
        other.load_adapter(bad)
    with pytest.raises(ValueError, match="source"):
        other.load_adapter(3)


def test_merge_keeps_outputs():
    model = CorrFeatureModel(_tiny())
    _perturb(model)
    x = torch.rand(2, 3, 28, 28, dtype=torch.float64)
    y = model(x)
    model.merge()
    assert not any(isinstance(b.attn.qkv, LoRAQKV) for b in model.vit.blocks)
    torch.testing.assert_close(model(x), y, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="merged"):
        model.adapter_state_dict()


def test_network_input_size_conventions():
    # the reference: long side 640, 640 // 8 = 80 patches of 14 px
    assert network_input_size(512, 512, 14, 640, 8) == (1120, 1120)
    # landscape 480 x 640: int(480 * 640 / 640) // 8 = 60 patches high, 80 wide
    assert network_input_size(480, 640, 14, 640, 8) == (840, 1120)
    # portrait 300 x 200 at 224, patch-sized steps: 224 // 14 = 16, int(200 * 224 / 300) = 149 -> 10
    assert network_input_size(300, 200, 14, 224) == (224, 140)
    assert network_input_size(30, 41, 14) == (28, 28)  # None: round down to the patch
    assert network_input_size(5, 5, 14) == (14, 14)  # at least one patch
    with pytest.raises(ValueError, match="long_side"):
        network_input_size(10, 10, 14, 0)
    with pytest.raises(ValueError, match="downsample"):
        network_input_size(10, 10, 14, 224, -8)


def test_bad_arguments():
    with pytest.raises(ValueError, match="vit"):
        CorrFeatureModel(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="lora_blocks"):
        CorrFeatureModel(_tiny(), lora_blocks=7)
    with pytest.raises(ValueError, match="lora_rank"):
        CorrFeatureModel(_tiny(), lora_rank=0)
    with pytest.raises(ValueError, match="conv_init"):
        CorrFeatureModel(_tiny(), conv_init="zero")
    model = CorrFeatureModel(_tiny())
    with pytest.raises(ValueError, match="images"):
        model(torch.rand(1, 4, 28, 28, dtype=torch.float64))
    with pytest.raises(ValueError, match="images"):
        model(torch.zeros(1, 3, 28, 28, dtype=torch.uint8))


def test_without_conv_and_float32():
    vit = _tiny(torch.float32)
    plain = copy.deepcopy(vit)
    model = CorrFeatureModel(vit, conv=False, lora_blocks=2, lora_rank=2)
    assert model.trainable_parameters() == corr_trainable_parameter_count(32, 2, 2, conv=False)
    x = torch.rand(1, 3, 28, 28)
    torch.testing.assert_close(
        model(x), plain.forward_features(imagenet_normalize(x))["patch_tokens"]
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = CorrFeatureModel(_tiny(torch.float32))
    _perturb(model)
    x = torch.rand(2, 3, 30, 30)
    y = model(x)
    torch.testing.assert_close(model.cuda()(x.cuda()).cpu(), y, rtol=1e-4, atol=1e-4)
