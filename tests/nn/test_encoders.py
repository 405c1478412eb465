"""Encoders: equivariance claims (rotations, reflections, translations, permutations),
padding masks, gradients and input validation, on small clouds in float64."""

from __future__ import annotations

import pytest
import torch
from e3nn.util.test import FLOAT_TOLERANCE

from geo3d.groups import O3, SE3, SO3
from geo3d.nn import DGCNN, EGNN, VNDGCNN, EncoderOutput, PointNet, TFNEncoder, VNPointNet
from geo3d.reps import Points, Trivial, Vector
from geo3d.testing import assert_equivariant

B, N = 2, 40

# name -> (factory, rotation group claimed, atol in float64); all claim translation invariance
EQUIVARIANT = {
    "vn_dgcnn": (lambda: VNDGCNN(k=8, feat_dim=12, hidden=(4, 4, 6)), O3, 1e-9),
    "vn_dgcnn_max_cross": (
        lambda: VNDGCNN(k=6, feat_dim=8, hidden=(4, 6), pooling="max", neighbor_pooling="max",
                        cross=True, normalize_frame=True), SO3, 1e-9),
    "vn_dgcnn_static": (lambda: VNDGCNN(k=8, feat_dim=12, hidden=(4, 4, 6), dynamic=False),
                        O3, 1e-9),
    "vn_pointnet": (lambda: VNPointNet(k=8, feat_dim=12, hidden=(4, 6, 8)), O3, 1e-9),
    "egnn_knn": (lambda: EGNN(hidden_dim=16, num_layers=2, out_dim=8, vector_dim=4, k=8), O3, 1e-9),
    "egnn_full": (lambda: EGNN(hidden_dim=16, num_layers=2, out_dim=8, vector_dim=4, k=None), O3,
                  1e-9),
    # e3nn: float64 tolerance of e3nn's own equivariance tests (1e-9).
    "tfn": (lambda: TFNEncoder(irreps_hidden="8x0e + 4x0o + 4x1o + 4x1e",
                               irreps_out="8x0e + 4x1o", num_layers=1, k=6), O3,
            float(FLOAT_TOLERANCE[torch.float64])),
}
BASELINES = {
    "pointnet": lambda: PointNet(feat_dim=16, hidden=(8, 8)),
    "dgcnn": lambda: DGCNN(k=8, feat_dim=16, hidden=(8, 8)),
}
ALL = {**{k: v[0] for k, v in EQUIVARIANT.items()}, **BASELINES}


def _cloud(gen, b=B, n=N, dtype=torch.float64):
    pts = torch.randn(b, n, 3, generator=gen, dtype=dtype)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, n - 9:] = False  # ragged: second cloud padded
    return pts, mask


def _flat(out: EncoderOutput):
    return tuple(t for t in (out.invariant, out.equivariant, out.point_features,
                             out.point_equivariant) if t is not None)


def _out_reps(model, out: EncoderOutput, group):
    reps = [Trivial(group, dim=out.invariant.shape[-1])]
    if out.equivariant is not None:
        reps.append(Vector(group))
    if out.point_features is not None:
        reps.append(Trivial(group, dim=out.point_features.shape[-1]))
    if out.point_equivariant is not None:
        reps.append(Vector(group))
    return tuple(reps)


@pytest.mark.parametrize("name", list(EQUIVARIANT))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_rotation_equivariance(build, generator, name, train):
    factory, group_cls, atol = EQUIVARIANT[name]
    model = build(factory).train(train)
    pts, mask = _cloud(generator)
    out = model(pts, mask)
    assert out.equivariant is not None and out.equivariant.shape[-1] == 3
    group = group_cls()
    assert_equivariant(lambda p: _flat(model(p, mask)), group, Points(group),
                       _out_reps(model, out, group), inputs=(pts,), n_samples=3, atol=atol,
                       generator=generator)


@pytest.mark.parametrize("name", list(EQUIVARIANT))
def test_se3_translation_invariance(build, generator, name):
    factory, _, atol = EQUIVARIANT[name]
    model = build(factory).eval()
    pts, mask = _cloud(generator)
    out = model(pts, mask)
    group = SE3(translation_scale=3.0)
    # Rotated and translated inputs: invariant outputs unchanged, vectors only rotated.
    assert_equivariant(lambda p: _flat(model(p, mask)), group, Points(group),
                       _out_reps(model, out, group), inputs=(pts,), n_samples=3,
                       atol=atol, generator=generator)


@pytest.mark.parametrize("name", ["vn_dgcnn", "vn_pointnet"])
def test_vn_without_centering_is_not_translation_invariant(build, generator, name):
    factory = EQUIVARIANT[name][0]

    def uncentred():
        m = factory()
        m.center = False
        return m

    model = build(uncentred).eval()
    pts, mask = _cloud(generator)
    shift = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    assert not torch.allclose(model(pts, mask).invariant, model(pts + shift, mask).invariant)
    # ...but still rotation-equivariant.
    assert_equivariant(lambda p: model(p, mask).equivariant, SO3(), Vector(SO3()), Vector(SO3()),
                       inputs=(pts,), n_samples=2, atol=1e-9, generator=generator)


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_translation_invariant_not_rotation_invariant(build, generator, name):
    model = build(BASELINES[name]).eval()
    pts, mask = _cloud(generator)
    out = model(pts, mask)
    assert out.equivariant is None
    shift = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(model(pts + shift, mask).invariant, out.invariant, atol=1e-9,
                               rtol=0)
    R = SO3().sample(1, generator=generator, dtype=torch.float64)[0]
    assert not torch.allclose(model(pts @ R.T, mask).invariant, out.invariant, atol=1e-6)


@pytest.mark.parametrize("name", list(ALL))
def test_permutation(build, generator, name):
    model = build(ALL[name]).train()
    pts, mask = _cloud(generator)
    perm = torch.randperm(N, generator=generator)
    out = model(pts, mask)
    outp = model(pts[:, perm], mask[:, perm])
    torch.testing.assert_close(outp.invariant, out.invariant, atol=1e-9, rtol=0)
    if out.equivariant is not None:
        torch.testing.assert_close(outp.equivariant, out.equivariant, atol=1e-9, rtol=0)
    mp = mask[:, perm]
    torch.testing.assert_close(outp.point_features[mp], out.point_features[:, perm][mp],
                               atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_padding_does_not_leak(build, generator, name, train):
    model = build(ALL[name]).train(train)
    pts, mask = _cloud(generator)
    out = model(pts, mask)
    # Other values at padded slots, and 7 more padded points.
    extra = 7
    pts2 = torch.cat([pts, torch.zeros(B, extra, 3, dtype=pts.dtype)], dim=1)
    mask2 = torch.cat([mask, torch.zeros(B, extra, dtype=torch.bool)], dim=1)
    noise = 50 * torch.randn(pts2.shape, generator=generator, dtype=pts.dtype)
    pts2 = torch.where(mask2[..., None], pts2, noise)
    out2 = model(pts2, mask2)
    torch.testing.assert_close(out2.invariant, out.invariant, atol=1e-9, rtol=0)
    if out.equivariant is not None:
        torch.testing.assert_close(out2.equivariant, out.equivariant, atol=1e-9, rtol=0)
    torch.testing.assert_close(out2.point_features[:, :N][mask], out.point_features[mask],
                               atol=1e-9, rtol=0)
    # Non-finite values at padded slots do not leak either.
    pts3 = torch.where(mask2[..., None], pts2, torch.full_like(pts2, float("nan")))
    out3 = model(pts3, mask2)
    torch.testing.assert_close(out3.invariant, out.invariant, atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", list(ALL))
def test_padded_batch_equals_single_clouds(build, generator, name):
    model = build(ALL[name]).eval()  # eval: per-sample results do not depend on the batch
    pts, mask = _cloud(generator)
    out = model(pts, mask)
    for b in range(B):
        single = model(pts[b : b + 1][:, mask[b]])
        torch.testing.assert_close(single.invariant[0], out.invariant[b], atol=1e-9, rtol=0)
        if out.equivariant is not None:
            torch.testing.assert_close(single.equivariant[0], out.equivariant[b], atol=1e-9,
                                       rtol=0)


@pytest.mark.parametrize("name", list(ALL))
def test_fewer_valid_points_than_k_and_gradients(build, generator, name):
    model = build(ALL[name]).train()
    pts, mask = _cloud(generator, n=12)
    mask[1, 3:] = False  # 3 valid points, k = 6 or 8
    pts[0, 5] = pts[0, 4]  # a duplicated point
    pts = pts.clone().requires_grad_(True)
    out = model(pts, mask)
    loss = sum(t.pow(2).sum() for t in _flat(out))
    loss.backward()
    assert all(torch.isfinite(t).all() for t in _flat(out))
    assert torch.isfinite(pts.grad).all()
    assert pts.grad[~mask].abs().max() == 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", list(ALL))
def test_float32_and_dims(build, generator, name):
    model = build(ALL[name], dtype=torch.float32)
    pts = torch.randn(3, 20, 3, generator=generator)
    out = model(pts)
    assert out.invariant.dtype == torch.float32
    assert out.invariant.shape == (3, model.invariant_dim)
    assert out.point_features.shape == (3, 20, model.point_dim)
    if out.equivariant is not None:
        assert out.equivariant.shape == (3, model.equivariant_dim, 3)


@pytest.mark.parametrize("name", list(ALL))
def test_bad_input(build, name):
    model = build(ALL[name])
    with pytest.raises(ValueError, match=r"^points: expected shape \(B, N, 3\), got \(2, 10, 2\)"):
        model(torch.zeros(2, 10, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^points: expected at least one point"):
        model(torch.zeros(2, 0, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^mask: expected shape \(B, N\) = \(2, 10\), got \(2, 9\)"):
        model(torch.zeros(2, 10, 3, dtype=torch.float64), torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^mask: expected dtype torch.bool"):
        model(torch.zeros(2, 10, 3, dtype=torch.float64), torch.ones(2, 10))


def test_vn_dgcnn_defaults_match_assembly_configuration():
    model = VNDGCNN()
    assert model.k == 20 and model.feat_dim == 512
    assert isinstance(model.global_pool, type(model.pools[0]))  # mean pooling throughout
    assert type(model.global_pool).__name__ == "VNMeanPool"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
@pytest.mark.parametrize("name", list(ALL))
def test_cuda_matches_cpu(build, generator, name):
    model = build(ALL[name]).eval()
    pts, mask = _cloud(generator)
    out = model(pts, mask)
    out_gpu = model.cuda()(pts.cuda(), mask.cuda())
    torch.testing.assert_close(out_gpu.invariant.cpu(), out.invariant, atol=1e-8, rtol=1e-6)


def test_vn_dgcnn_static_graph_computes_one_knn(monkeypatch):
    """dynamic=False reuses the coordinate graph: one kNN per forward, not one per block,
    and the first block sees the same neighbours as the dynamic model."""
    import geo3d.nn._vn_encoders as enc

    calls = []
    real = enc._knn_neighborhood

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(enc, "_knn_neighborhood", spy)
    x = torch.randn(2, 30, 3, generator=torch.Generator().manual_seed(0))
    VNDGCNN(k=6, feat_dim=8, hidden=(4, 4, 6), dynamic=False)(x)
    assert len(calls) == 1
    calls.clear()
    VNDGCNN(k=6, feat_dim=8, hidden=(4, 4, 6))(x)
    assert len(calls) == 3
