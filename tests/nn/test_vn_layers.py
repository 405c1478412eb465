"""Vector Neuron layers: O(3) equivariance (float64, 1e-9), masks, batch norm, gradients."""

from __future__ import annotations

import pytest
import torch

from geo3d.groups import O3, SO3
from geo3d.nn import (
    MaskedBatchNorm,
    VNBatchNorm,
    VNInvariant,
    VNLeakyReLU,
    VNLinear,
    VNLinearLeakyReLU,
    VNMaxPool,
    VNMeanPool,
    vn_edge_features,
)
from geo3d.reps import Trivial, Vector
from geo3d.testing import assert_equivariant

ATOL = 1e-9


def _feats(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


class TestEquivariance:
    @pytest.mark.parametrize(
        "factory",
        [
            lambda: VNLinear(5, 7),
            lambda: VNLeakyReLU(5),
            lambda: VNLeakyReLU(5, share_nonlinearity=True, negative_slope=0.0),
            lambda: VNBatchNorm(5),
            lambda: VNLinearLeakyReLU(5, 7),
            lambda: VNLinearLeakyReLU(5, 7, batch_norm=False, share_nonlinearity=True),
        ],
        ids=["linear", "leaky_relu", "relu_shared", "batchnorm", "linear_leaky_relu", "lin_relu_nobn"],
    )
    @pytest.mark.parametrize("train", [True, False])
    def test_pointwise_layers_o3(self, build, generator, factory, train):
        layer = build(factory).train(train)
        x = _feats(generator, 3, 5, 3, 11, 4)  # (B, C, 3, N, k)
        rep = Vector(O3(), axis=2)
        assert_equivariant(layer, O3(), rep, rep, inputs=(x,), n_samples=4, atol=ATOL,
                           generator=generator)

    @pytest.mark.parametrize("pool", ["max", "mean"])
    def test_pools_o3(self, build, generator, pool):
        layer = build(lambda: VNMaxPool(5) if pool == "max" else VNMeanPool())
        x = _feats(generator, 2, 5, 3, 9, 6)
        mask = torch.rand(2, 9, 6, generator=generator) > 0.3
        assert_equivariant(lambda v: layer(v, mask), O3(), Vector(O3(), axis=2),
                           Vector(O3(), axis=2), inputs=(x,), n_samples=4, atol=ATOL,
                           generator=generator)

    def test_invariant_readout_o3(self, build, generator):
        layer = build(lambda: VNInvariant(8))
        x = _feats(generator, 4, 8, 3, 10)

        def fn(v):
            inv, frame = layer(v)
            return inv, frame

        assert_equivariant(fn, O3(), Vector(O3(), axis=2),
                           (Trivial(O3(), dim=10), Vector(O3(), axis=2)), inputs=(x,),
                           n_samples=4, atol=ATOL, generator=generator)

    def test_invariant_readout_normalized_frame(self, build, generator):
        layer = build(lambda: VNInvariant(8, normalize_frame=True)).eval()
        x = _feats(generator, 4, 8, 3)
        inv, frame = layer(x)
        assert inv.shape == (4, 8, 3) and frame.shape == (4, 3, 3)
        eye = torch.eye(3, dtype=torch.float64).expand(4, 3, 3)
        torch.testing.assert_close(frame @ frame.transpose(1, 2), eye, atol=1e-10, rtol=0)
        torch.testing.assert_close(torch.linalg.det(frame), torch.ones(4, dtype=torch.float64))
        # Invariant under rotations (SO(3)); the frame is built with a cross product.
        assert_equivariant(lambda v: layer(v)[0], SO3(), Vector(SO3(), axis=2), None,
                           inputs=(x,), n_samples=4, atol=ATOL, generator=generator)
        # The orthonormal frame expresses x exactly: x_c = sum_j inv[c, j] z_j.
        torch.testing.assert_close(torch.einsum("bcj,bjx->bcx", inv, frame), x)

    def test_edge_features(self, generator):
        x = _feats(generator, 2, 4, 3, 7)
        idx = torch.randint(0, 7, (2, 7, 3), generator=generator)
        e = vn_edge_features(x, idx)
        assert e.shape == (2, 8, 3, 7, 3)
        b, i, j = 1, 5, 2
        torch.testing.assert_close(e[b, :4, :, i, j], x[b, :, :, idx[b, i, j]] - x[b, :, :, i])
        torch.testing.assert_close(e[b, 4:, :, i, j], x[b, :, :, i])
        ec = vn_edge_features(x, idx, cross=True)
        torch.testing.assert_close(
            ec[b, 8:, :, i, j], torch.cross(x[b, :, :, idx[b, i, j]], x[b, :, :, i], dim=-1))
        assert_equivariant(lambda v: vn_edge_features(v, idx, cross=True), SO3(),
                           Vector(SO3(), axis=2), Vector(SO3(), axis=2), inputs=(x,),
                           n_samples=4, atol=ATOL, generator=generator)


class TestSemantics:
    def test_linear_mixes_channels_only(self, build, generator):
        layer = build(lambda: VNLinear(3, 2))
        x = _feats(generator, 2, 3, 3, 5)
        expected = torch.einsum("oc,bcxn->boxn", layer.map.weight, x)
        torch.testing.assert_close(layer(x), expected)

    def test_leaky_relu_definition(self, build, generator):
        layer = build(lambda: VNLeakyReLU(4, negative_slope=0.2))
        x = _feats(generator, 6, 4, 3)
        d = torch.einsum("oc,bcx->box", layer.map_to_dir.weight, x)
        out = layer(x)
        dot = (x * d).sum(-1, keepdim=True)
        proj = x - dot / ((d * d).sum(-1, keepdim=True) + layer.eps) * d
        ref = torch.where(dot >= 0, x, 0.2 * x + 0.8 * proj)
        torch.testing.assert_close(out, ref)
        # Where <x, d> < 0, the non-leaky part has no component along d.
        assert (dot < 0).any() and (dot >= 0).any()

    def test_batchnorm_keeps_direction_and_normalises_norms(self, build, generator):
        layer = build(lambda: VNBatchNorm(4)).train()
        x = _feats(generator, 8, 4, 3, 16)
        y = layer(x)
        # Collinear with the input (BN of the norms may be negative: the vector flips).
        cos = torch.nn.functional.cosine_similarity(x, y, dim=2)
        torch.testing.assert_close(cos.abs(), torch.ones_like(cos), atol=1e-9, rtol=0)
        norms = torch.linalg.vector_norm(x, dim=2)  # (B, C, N)
        ref = torch.nn.functional.batch_norm(norms, None, None, training=True, eps=1e-5)
        torch.testing.assert_close(y, x / (norms + layer.eps).unsqueeze(2) * ref.unsqueeze(2))

    def test_max_pool_selects_existing_valid_vectors(self, build, generator):
        layer = build(lambda: VNMaxPool(3))
        x = _feats(generator, 2, 3, 3, 8)
        mask = torch.zeros(2, 8, dtype=torch.bool)
        mask[0, :3] = True
        mask[1, 5] = True
        out = layer(x, mask)  # (B, C, 3)
        d = torch.einsum("oc,bcxn->boxn", layer.map_to_dir.weight, x)
        dot = (x * d).sum(2).masked_fill(~mask[:, None], float("-inf"))
        best = dot.argmax(-1)
        for b in range(2):
            for c in range(3):
                torch.testing.assert_close(out[b, c], x[b, c, :, best[b, c]])
                assert mask[b, best[b, c]]

    def test_mean_pool_mask(self, generator):
        x = _feats(generator, 2, 3, 3, 8)
        mask = torch.rand(2, 8, generator=generator) > 0.5
        mask[:, 0] = True
        out = VNMeanPool()(x, mask)
        for b in range(2):
            torch.testing.assert_close(out[b], x[b][..., mask[b]].mean(-1))


class TestMaskedBatchNorm:
    def test_matches_torch_without_mask(self, build, generator):
        ours = build(lambda: MaskedBatchNorm(5, momentum=0.3)).train()
        ref = build(lambda: torch.nn.BatchNorm1d(5, momentum=0.3)).train()
        with torch.no_grad():
            ours.weight.copy_(torch.randn(5, generator=generator))
            ref.weight.copy_(ours.weight)
            ours.bias.copy_(torch.randn(5, generator=generator))
            ref.bias.copy_(ours.bias)
        x = _feats(generator, 4, 5, 9)
        torch.testing.assert_close(ours(x), ref(x))
        torch.testing.assert_close(ours.running_mean, ref.running_mean)
        torch.testing.assert_close(ours.running_var, ref.running_var)
        ours.eval()
        ref.eval()
        torch.testing.assert_close(ours(x), ref(x))

    def test_mask_equals_bn_on_valid_entries(self, build, generator):
        ours = build(lambda: MaskedBatchNorm(3)).train()
        ref = build(lambda: torch.nn.BatchNorm1d(3)).train()
        x = _feats(generator, 4, 3, 10)
        mask = torch.rand(4, 10, generator=generator) > 0.4
        y = ours(x, mask)
        valid = x.permute(0, 2, 1)[mask]  # (M, C)
        torch.testing.assert_close(y.permute(0, 2, 1)[mask], ref(valid))
        torch.testing.assert_close(ours.running_var, ref.running_var)
        # Padded values (even non-finite ones) never reach valid outputs.
        x2 = x.clone()
        x2.permute(0, 2, 1)[~mask] = float("nan")
        y2 = build(lambda: MaskedBatchNorm(3)).train()(x2, mask)
        torch.testing.assert_close(y2.permute(0, 2, 1)[mask], y.permute(0, 2, 1)[mask])


class TestGradientsAndErrors:
    def test_finite_gradients_at_zero_vectors(self, build):
        layers = [build(lambda: VNLinearLeakyReLU(2, 3)), build(lambda: VNBatchNorm(2)),
                  build(lambda: VNLeakyReLU(2))]
        for layer in layers:
            x = torch.zeros(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
            layer(x).sum().backward()
            assert torch.isfinite(x.grad).all()
            assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)

    def test_float32(self, build, generator):
        layer = build(lambda: VNLinearLeakyReLU(4, 6), dtype=torch.float32)
        x = torch.randn(2, 4, 3, 5, generator=generator)
        assert layer(x).dtype == torch.float32

    def test_bad_shapes(self, build):
        with pytest.raises(ValueError, match="x: expected VN features"):
            VNLinear(4, 2)(torch.zeros(2, 4, 2, 5))
        with pytest.raises(ValueError, match="x: expected VN features"):
            VNLeakyReLU(4)(torch.zeros(2, 3, 3, 5))
        with pytest.raises(ValueError, match=r"^mask: expected bool tensor of shape \(2, 5\)"):
            VNBatchNorm(4)(torch.zeros(2, 4, 3, 5), torch.ones(2, 6, dtype=torch.bool))
        # masks that would broadcast are rejected too (not a RuntimeError later)
        for bad in (torch.ones(1, 5, dtype=torch.bool), torch.ones(2, 1, dtype=torch.bool)):
            with pytest.raises(ValueError, match=r"^mask: expected bool tensor of shape \(2, 5\)"):
                VNMeanPool()(torch.zeros(2, 4, 3, 5), bad)
            with pytest.raises(ValueError, match=r"^mask: expected bool tensor of shape \(2, 5\)"):
                VNMaxPool(4)(torch.zeros(2, 4, 3, 5), bad)
        with pytest.raises(ValueError, match=r"^negative_slope: expected a value in \[0, 1\)"):
            VNLeakyReLU(4, negative_slope=1.5)
        with pytest.raises(ValueError, match=r"^idx: expected shape \(B, N, k\)"):
            vn_edge_features(torch.zeros(2, 4, 3, 5), torch.zeros(2, 4, 3, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
def test_cuda_matches_cpu(build, generator):
    layer = build(lambda: VNLinearLeakyReLU(4, 6)).eval()
    x = _feats(generator, 2, 4, 3, 5)
    out_cpu = layer(x)
    out_gpu = layer.cuda()(x.cuda())
    torch.testing.assert_close(out_gpu.cpu(), out_cpu)


def test_fused_edge_conv_equals_edge_features_then_conv(build, generator):
    from geo3d.nn._vn_encoders import _edge_conv

    conv = build(lambda: VNLinearLeakyReLU(6, 5))
    x = _feats(generator, 2, 3, 3, 30)
    idx = torch.randint(0, 30, (2, 30, 8), generator=generator)
    mask = torch.rand(2, 30, 8, generator=generator) > 0.2
    for cross, c in ((False, conv), (True, build(lambda: VNLinearLeakyReLU(9, 5)))):
        ref = c(vn_edge_features(x, idx, cross=cross), mask)
        torch.testing.assert_close(_edge_conv(c, x, idx, cross, mask), ref, atol=1e-12, rtol=0)
