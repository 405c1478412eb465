"""geo3d.nn.VisionTransformer: position-embedding interpolation against an independent
bicubic implementation, strides, hooks, replaceable parts, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geo3d.nn import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VisionTransformer,
    imagenet_normalize,
    interpolate_pos_embed,
    vit_base,
    vit_giant2,
    vit_large,
    vit_small,
)


def _small(**kw) -> VisionTransformer:
    kw = {"embed_dim": 64, "depth": 2, "num_heads": 2, "img_size": 56, **kw}
    vit = VisionTransformer(generator=torch.Generator().manual_seed(0), **kw).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial LayerNorm/LayerScale/bias values
        for p in vit.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return vit


# ------------------------------------------------------------------ independent bicubic
def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    return np.where(
        x <= 1,
        (a + 2) * x**3 - (a + 3) * x**2 + 1,
        np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0),
    )


def _matrix_scale(n_in: int, n_out: int, inv_scale: float) -> np.ndarray:
    """Keys' bicubic (a = -0.75), half-pixel centres, source x = (i + 0.5) * inv_scale - 0.5,
    border-replicated taps: the semantics of PyTorch's bicubic (align_corners=False)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = (i + 0.5) * inv_scale - 0.5
        x0 = math.floor(x)
        for j in range(x0 - 1, x0 + 3):
            m[i, min(max(j, 0), n_in - 1)] += _cubic(np.array(x - j), -0.75)
    return m


def _matrix_antialias(n_in: int, n_out: int) -> np.ndarray:
    """PIL-style separable resampling (cubic a = -0.5, support widened when shrinking,
    weights normalised): the semantics of ``antialias=True``."""
    scale = n_in / n_out
    support = 2.0 * max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        js = np.arange(lo, hi)
        w = _cubic((js - centre + 0.5) / max(scale, 1.0), -0.5)
        m[i, lo:hi] = w / w.sum()
    return m


def _official_reference(pos: torch.Tensor, grid, registers: bool) -> torch.Tensor:
    """The official DINOv2 rule written independently: without registers, scale factor
    (n + 0.1) / M on each axis (sampling at (i + .5) * M / (n + .1) - .5); with registers,
    output size n and antialiasing."""
    p = pos.double().numpy()[0]
    n = p.shape[0] - 1
    m = int(round(math.sqrt(n)))
    table = p[1:].reshape(m, m, -1)
    h, w = grid
    if registers:
        mh, mw = _matrix_antialias(m, h), _matrix_antialias(m, w)
    else:
        mh = _matrix_scale(m, h, m / (h + 0.1))
        mw = _matrix_scale(m, w, m / (w + 0.1))
    out = np.einsum("ia,jb,abc->ijc", mh, mw, table).reshape(h * w, -1)
    return torch.from_numpy(np.concatenate([p[:1], out], 0))[None]


def _hf_reference(pos: torch.Tensor, grid) -> torch.Tensor:
    """transformers' Dinov2Model rule: output size, plain bicubic (no offset)."""
    p = pos.double().numpy()[0]
    m = int(round(math.sqrt(p.shape[0] - 1)))
    h, w = grid
    mh, mw = _matrix_scale(m, h, m / h), _matrix_scale(m, w, m / w)
    out = np.einsum("ia,jb,abc->ijc", mh, mw, p[1:].reshape(m, m, -1)).reshape(h * w, -1)
    return torch.from_numpy(np.concatenate([p[:1], out], 0))[None]


GRIDS = [(2, 5), (5, 5), (7, 3), (9, 11), (3, 3)]


class TestInterpolation:
    @pytest.mark.parametrize("grid", GRIDS)
    @pytest.mark.parametrize("registers", [False, True])
    def test_official_matches_independent_formula(self, grid, registers):
        # catches: a missing/misplaced 0.1 offset, H/W swapped, no antialias for registers
        vit = _small(num_register_tokens=4 if registers else 0).double()
        got = vit.position_embedding(grid)
        ref = _official_reference(vit.pos_embed.detach(), grid, registers)
        torch.testing.assert_close(got.detach(), ref, atol=1e-12, rtol=0)

    @pytest.mark.parametrize("grid", GRIDS)
    def test_hf_mode_matches_independent_formula(self, grid):
        vit = _small(interpolate="hf").double()
        ref = _hf_reference(vit.pos_embed.detach(), grid)
        torch.testing.assert_close(vit.position_embedding(grid).detach(), ref, atol=1e-12, rtol=0)

    @torch.no_grad()
    def test_official_and_hf_differ_off_native_size(self):
        # the 0.1 offset is real: a model that ignored `interpolate` would pass the two above
        # only by accident of grid; here the two modes must disagree.
        off = _small()
        hf = _small(interpolate="hf")
        d = (off.position_embedding((7, 3)) - hf.position_embedding((7, 3))).abs().max()
        assert float(d) > 1e-3

    def test_native_grid_returns_the_table(self):
        vit = _small()
        assert vit.position_embedding((4, 4)) is vit.pos_embed

    def test_float32_close_to_float64(self):
        vit = _small()
        ref = _official_reference(vit.pos_embed.detach(), (6, 9), False)
        torch.testing.assert_close(
            vit.position_embedding((6, 9)).detach().double(), ref, atol=1e-6, rtol=0
        )

    def test_non_square_table_rejected(self):
        with pytest.raises(ValueError, match="pos_embed"):
            interpolate_pos_embed(torch.zeros(1, 1 + 12, 4), (3, 3))


class TestForward:
    def test_shapes_and_token_layout(self):
        vit = _small(num_register_tokens=4)
        x = torch.randn(2, 3, 42, 70)
        out = vit.forward_features(x)
        assert out["cls"].shape == (2, 64)
        assert out["registers"].shape == (2, 4, 64)
        assert out["patch_tokens"].shape == (2, 64, 3, 5)
        normed = vit.norm(out["prenorm"])
        torch.testing.assert_close(out["cls"], normed[:, 0])
        torch.testing.assert_close(out["registers"], normed[:, 1:5])
        # row-major grid: token 5 + 1*5 + 3 is row 1, column 3
        torch.testing.assert_close(out["patch_tokens"][:, :, 1, 3], normed[:, 5 + 1 * 5 + 3])
        torch.testing.assert_close(vit(x), out["cls"])

    def test_batch_independence(self):
        vit = _small().double()
        x = torch.randn(3, 3, 28, 42, dtype=torch.float64)
        full = vit.forward_features(x)["patch_tokens"]
        one = vit.forward_features(x[1:2])["patch_tokens"]
        torch.testing.assert_close(full[1:2], one, atol=1e-12, rtol=0)

    def test_overlapping_patches(self):
        # stride 7: grid 1 + (H - 14) // 7; every second patch is the stride-14 patch
        vit = _small()
        x = torch.randn(1, 3, 42, 56)
        g7 = vit.patch_embed(x, stride=7)
        g14 = vit.patch_embed(x)
        assert g7.shape[-2:] == (5, 7)
        torch.testing.assert_close(g7[..., ::2, ::2], g14, atol=1e-5, rtol=0)
        out = vit.forward_features(x, patch_stride=7)
        assert out["patch_tokens"].shape == (1, 64, 5, 7)
        vs = _small(patch_stride=7)
        torch.testing.assert_close(vs.forward_features(x)["patch_tokens"], out["patch_tokens"])
        # the position table is resized to the strided grid (reference's _fix_pos_enc)
        prepared, hw = vit.prepare_tokens(x, patch_stride=7)
        ref = _official_reference(vit.pos_embed.detach(), (5, 7), False).float()
        torch.testing.assert_close(
            prepared[:, 1:] - g7.flatten(2).transpose(1, 2), ref[:, 1:], atol=1e-5, rtol=0
        )

    def test_masks_replace_patches(self):
        vit = _small()
        x = torch.randn(1, 3, 28, 28)
        masks = torch.tensor([[True, False, False, True]])
        tok, _ = vit.prepare_tokens(x, masks)
        pos = vit.position_embedding((2, 2))
        torch.testing.assert_close(tok[0, 1], vit.mask_token[0] + pos[0, 1])
        torch.testing.assert_close(tok[0, 4], vit.mask_token[0] + pos[0, 4])
        assert not torch.allclose(tok[0, 2], vit.mask_token[0] + pos[0, 2])

    def test_intermediate_layers(self):
        vit = _small()
        x = torch.randn(1, 3, 28, 42)
        layers = vit.get_intermediate_layers(x, n=2)
        torch.testing.assert_close(
            layers[-1]["patch_tokens"], vit.forward_features(x)["patch_tokens"]
        )
        tok, _ = vit.prepare_tokens(x)
        first = vit.norm(vit.blocks[0](tok))
        torch.testing.assert_close(layers[0]["cls"], first[:, 0])

    def test_float64_and_gradients(self):
        vit = _small().double().train()
        x = torch.randn(1, 3, 28, 28, dtype=torch.float64, requires_grad=True)
        vit.forward_features(x)["patch_tokens"].sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        assert vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


class TestHooks:
    def test_flip_hook_after_block_equals_manual(self):
        # a W-flip of the grid is layout dependent: catches H/W confusion in the grid view
        vit = _small(num_register_tokens=4)
        x = torch.randn(2, 3, 42, 28)  # grid 3 x 2
        h = vit.register_block_hook(0, lambda grid, prefix: torch.flip(grid, [-1]), when="after")
        got = vit.forward_features(x)
        h.remove()
        tok, (gh, gw) = vit.prepare_tokens(x)
        t = vit.blocks[0](tok)
        pre, pat = t[:, :5], t[:, 5:]
        pat = pat.reshape(2, gh, gw, 64).flip(2).reshape(2, gh * gw, 64)
        t = vit.norm(vit.blocks[1](torch.cat([pre, pat], 1)))
        torch.testing.assert_close(got["cls"], t[:, 0])
        torch.testing.assert_close(
            got["patch_tokens"], t[:, 5:].transpose(1, 2).reshape(2, 64, gh, gw)
        )
        # removed: back to the plain output; blocks are permutation equivariant (no position
        # term after the embedding), so the hooked grid is the plain grid flipped
        plain = vit.forward_features(x)["patch_tokens"]
        assert not torch.allclose(plain, got["patch_tokens"], atol=1e-3)
        torch.testing.assert_close(torch.flip(plain, [-1]), got["patch_tokens"], atol=1e-5, rtol=0)

    def test_before_hook_sees_grid_and_can_change_prefix(self):
        vit = _small()
        x = torch.randn(1, 3, 28, 42)
        seen = {}

        def hook(grid, prefix):
            seen["grid"], seen["prefix"] = grid.shape, prefix.shape
            return grid, torch.zeros_like(prefix)

        with vit.register_block_hook(-1, hook, when="before"):
            got = vit.forward_features(x)
        assert seen == {"grid": (1, 64, 2, 3), "prefix": (1, 1, 64)}
        tok, _ = vit.prepare_tokens(x)
        t = vit.blocks[0](tok)
        t = vit.norm(vit.blocks[1](torch.cat([torch.zeros_like(t[:, :1]), t[:, 1:]], 1)))
        torch.testing.assert_close(got["cls"], t[:, 0])

    def test_intermediate_output_includes_after_hook(self):
        vit = _small()
        x = torch.randn(1, 3, 28, 42)
        with vit.register_block_hook(0, lambda grid, prefix: 2 * grid):
            first = vit.get_intermediate_layers(x, n=2, norm=False)[0]
        tok, (gh, gw) = vit.prepare_tokens(x)
        t = vit.blocks[0](tok)
        expected = 2 * t[:, 1:].transpose(1, 2).reshape(1, 64, gh, gw)
        torch.testing.assert_close(first["patch_tokens"], expected)
        torch.testing.assert_close(first["cls"], t[:, 0])

    def test_none_hook_is_identity_and_bad_hooks_fail(self):
        vit = _small()
        x = torch.randn(1, 3, 28, 28)
        ref = vit.forward_features(x)["cls"]
        with vit.register_block_hook(2, lambda g, p: None, when="before"):
            torch.testing.assert_close(vit.forward_features(x)["cls"], ref)
        with vit.register_block_hook(0, lambda g, p: g[:, :, :1]):
            with pytest.raises(ValueError, match="hook"):
                vit.forward_features(x)
        with pytest.raises(ValueError, match="index"):
            vit.register_block_hook(2, lambda g, p: None, when="after")
        with pytest.raises(ValueError, match="when"):
            vit.register_block_hook(0, lambda g, p: None, when="during")


class TestReplaceableParts:
    def test_callable_position_encoding(self):
        conv = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64)
        vit = _small(pos_encoding=conv)
        assert vit.pos_embed is None and "pos_encoding.weight" in dict(vit.named_parameters())
        x = torch.randn(1, 3, 42, 28)
        tok, (h, w) = vit.prepare_tokens(x)
        grid = vit.patch_embed(x)
        ref = (grid + conv(grid)).flatten(2).transpose(1, 2)
        torch.testing.assert_close(tok[:, 1:], ref)
        torch.testing.assert_close(tok[:, 0], vit.cls_token[:, 0])

    def test_custom_patch_embedding(self):
        class Pixels(torch.nn.Module):  # 1x1 "patches" after 7x7 average pooling
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Conv2d(3, 64, 1)

            def forward(self, x):
                return self.lin(torch.nn.functional.avg_pool2d(x, 7))

        vit = _small(patch_embed=Pixels(), pos_encoding=None)
        out = vit.forward_features(torch.randn(1, 3, 35, 21))
        assert out["patch_tokens"].shape == (1, 64, 5, 3)


class TestConstruction:
    def test_generator_reproducible_and_no_global_rng(self):
        state = torch.random.get_rng_state()
        a = VisionTransformer(64, 1, 2, img_size=28, generator=torch.Generator().manual_seed(3))
        b = VisionTransformer(64, 1, 2, img_size=28, generator=torch.Generator().manual_seed(3))
        c = VisionTransformer(64, 1, 2, img_size=28, generator=torch.Generator().manual_seed(4))
        assert torch.equal(torch.random.get_rng_state(), state)
        for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(pa, pb), k
        assert not torch.equal(a.blocks[0].attn.qkv.weight, c.blocks[0].attn.qkv.weight)
        assert torch.equal(a.blocks[0].ls1.gamma, torch.ones(64))

    @pytest.mark.parametrize(
        "factory,size,heads,swiglu",
        [
            (vit_small, 384, 6, False),
            (vit_base, 768, 12, False),
            (vit_large, 1024, 16, False),
            (vit_giant2, 1536, 24, True),
        ],
    )
    def test_parameter_count_equals_transformers(self, factory, size, heads, swiglu):
        # an independent count: transformers' Dinov2Model with the same hyper-parameters
        tr = pytest.importorskip("transformers")
        depth = {384: 12, 768: 12, 1024: 24, 1536: 40}[size]
        cfg = tr.Dinov2Config(
            hidden_size=size,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            image_size=518,
            patch_size=14,
            use_swiglu_ffn=swiglu,
        )
        with torch.device("meta"):
            hf = tr.Dinov2Model(cfg)
        ours = factory(device="meta")
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())

    @pytest.mark.parametrize(
        "kw,name",
        [
            ({"num_heads": 3}, "num_heads"),
            ({"ffn": "gelu"}, "ffn"),
            ({"interpolate": "x"}, "interpolate"),
            ({"depth": -1}, "depth"),
            ({"img_size": 7}, "img_size"),
            ({"pos_encoding": "sincos"}, "pos_encoding"),
            ({"patch_stride": 0}, "patch_stride"),
        ],
    )
    def test_bad_arguments(self, kw, name):
        with pytest.raises(ValueError, match=name):
            VisionTransformer(**{"embed_dim": 64, "depth": 1, "num_heads": 2, "img_size": 28, **kw})

    def test_bad_images(self):
        vit = _small()
        with pytest.raises(ValueError, match="images"):
            vit.forward_features(torch.randn(1, 3, 30, 28))
        with pytest.raises(ValueError, match="images"):
            vit.forward_features(torch.randn(1, 4, 28, 28))
        with pytest.raises(ValueError, match="images"):
            vit.forward_features(torch.randn(3, 28, 28))
        with pytest.raises(ValueError, match="images"):
            vit.forward_features(torch.randn(1, 3, 36, 28), patch_stride=7)  # (36 - 14) % 7 != 0
        with pytest.raises(ValueError, match="masks"):
            vit.forward_features(
                torch.randn(1, 3, 28, 28), masks=torch.zeros(1, 3, dtype=torch.bool)
            )


class TestInputChecks:
    """Inputs are never cast silently; wrong dtypes and wrong part outputs are named."""

    def test_uint8_images_rejected_with_conversion_hint(self):
        with pytest.raises(ValueError, match=r"images: expected floating.*\[0, 1\].*uint8"):
            _small().forward_features(torch.zeros(1, 3, 28, 28, dtype=torch.uint8))

    def test_dtype_must_match_the_model(self):
        with pytest.raises(ValueError, match=r"images: expected dtype torch\.float32.*float64"):
            _small().forward_features(torch.zeros(1, 3, 28, 28, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"images: expected dtype torch\.float64.*float32"):
            _small().double()(torch.zeros(1, 3, 28, 28))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: mixed dtypes are fine
            out = _small().forward_features(torch.rand(1, 3, 28, 28))
        assert out["cls"].shape == (1, 64)

    def test_pos_encoding_wrong_output_named(self):
        vit = _small(pos_encoding=torch.nn.Conv2d(64, 32, 1))  # 32 channels instead of 64
        with pytest.raises(ValueError, match=r"pos_encoding: .*\(1, 64, 2, 2\).*\(1, 32, 2, 2\)"):
            vit.forward_features(torch.rand(1, 3, 28, 28))
        vit = _small(pos_encoding=lambda g: g.mean(1))
        with pytest.raises(ValueError, match="pos_encoding"):
            vit.forward_features(torch.rand(1, 3, 28, 28))

    def test_patch_embed_wrong_output_named(self):
        vit = _small(patch_embed=torch.nn.Conv2d(3, 48, 14, 14), pos_encoding=None)
        with pytest.raises(ValueError, match=r"patch_embed: .*C=64.*\(1, 48, 2, 2\)"):
            vit.forward_features(torch.rand(1, 3, 28, 28))
        flat = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 14, 14), torch.nn.Flatten(2))
        vit = _small(patch_embed=flat, pos_encoding=None)
        with pytest.raises(ValueError, match=r"patch_embed: .*\(1, 64, 4\)"):
            vit.forward_features(torch.rand(1, 3, 28, 28))

        class ToDouble(torch.nn.Module):
            def forward(self, x):
                return x.double()

        to64 = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 14, 14), ToDouble())
        vit = _small(patch_embed=to64, pos_encoding=None)
        with pytest.raises(ValueError, match=r"patch_embed: expected an output of dtype"):
            vit.forward_features(torch.rand(1, 3, 28, 28))


class TestIndexArguments:
    """Bools are ints in Python; indices that silently wrap or repeat are rejected."""

    @pytest.mark.parametrize("n", [True, 0, 3, [2], [-3], [0, -2], [True], [0.0], []])
    def test_intermediate_layer_indices(self, n):
        with pytest.raises(ValueError, match="n: expected"):
            _small().get_intermediate_layers(torch.rand(1, 3, 28, 28), n)

    def test_intermediate_layer_negative_indices_valid(self):
        vit, x = _small(), torch.rand(1, 3, 28, 28)
        a = vit.get_intermediate_layers(x, [-2])[0]["cls"]
        torch.testing.assert_close(a, vit.get_intermediate_layers(x, [0])[0]["cls"])

    @pytest.mark.parametrize("index", [True, 1.0])
    def test_hook_index(self, index):
        with pytest.raises(ValueError, match="index"):
            _small().register_block_hook(index, lambda g, p: None)

    @pytest.mark.parametrize("stride", [True, 7.0, 0])
    def test_patch_stride(self, stride):
        with pytest.raises(ValueError, match="patch_stride"):
            _small().forward_features(torch.rand(1, 3, 28, 28), patch_stride=stride)
        with pytest.raises(ValueError, match="patch_stride"):
            _small(patch_stride=stride)


def test_bad_images_message_only_for_bad_sizes():
    vit = _small()
    assert vit.forward_features(torch.randn(1, 3, 35, 28), patch_stride=7)["patch_tokens"].shape[
        -2:
    ] == (4, 3)


def test_imagenet_normalize():
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    y = imagenet_normalize(x)
    for c in range(3):
        torch.testing.assert_close(y[:, c], (x[:, c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
    assert VisionTransformer.normalize is imagenet_normalize or VisionTransformer.normalize(
        x
    ).equal(y)
    with pytest.raises(ValueError, match="images"):
        imagenet_normalize(torch.rand(2, 4, 4, 4))
    with pytest.raises(ValueError, match="images"):
        imagenet_normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))
