"""chamfer_distance: pytorch3d semantics, reductions, lengths, per-point outputs, gradients."""

from __future__ import annotations

import pytest
import torch

from geo3d.ops import chamfer_distance


def _dense_terms(x, y, sqdist_ref, squared=True):
    """Per batch element: nearest distances both ways from the dense matrix."""
    d = sqdist_ref(x, y)
    dxy, dyx = d.min(-1).values, d.min(-2).values
    if not squared:
        dxy, dyx = dxy.sqrt(), dyx.sqrt()
    return dxy, dyx


def _rand(g, *shape, dtype=torch.float64):
    return torch.rand(*shape, generator=g, dtype=dtype)


class TestValues:
    @pytest.mark.parametrize("squared", [True, False])
    @pytest.mark.parametrize("reduction", ["mean", "sum", None])
    @pytest.mark.parametrize("point_reduction", ["mean", "sum"])
    def test_reductions(self, squared, reduction, point_reduction, generator, sqdist_ref):
        x, y = _rand(generator, 3, 40, 3), _rand(generator, 3, 55, 3)
        out = chamfer_distance(
            x, y, squared=squared, reduction=reduction, point_reduction=point_reduction
        )
        dxy, dyx = _dense_terms(x, y, sqdist_ref, squared)
        red = (lambda t: t.mean(-1)) if point_reduction == "mean" else (lambda t: t.sum(-1))
        per_batch = red(dxy) + red(dyx)
        expected = {"mean": per_batch.mean(), "sum": per_batch.sum(), None: per_batch}[reduction]
        torch.testing.assert_close(out, expected)

    def test_default_is_pytorch3d_assembly_convention(self, generator):
        # sum of the two mean squared nearest distances, averaged over the batch
        x, y = _rand(generator, 2, 30, 3), _rand(generator, 2, 20, 3)
        expected = 0
        for b in range(2):
            d = ((x[b, :, None] - y[b, None]) ** 2).sum(-1)
            expected = expected + d.min(1).values.mean() + d.min(0).values.mean()
        torch.testing.assert_close(chamfer_distance(x, y), expected / 2)

    def test_identical_sets_are_zero(self, generator):
        x = _rand(generator, 2, 30, 3)
        perm = torch.randperm(30, generator=generator)
        assert chamfer_distance(x, x[:, perm]) == 0
        assert chamfer_distance(x, x[:, perm], squared=False) == 0

    def test_point_reduction_none(self, generator, sqdist_ref):
        x, y = _rand(generator, 2, 10, 3), _rand(generator, 2, 12, 3)
        dxy, dyx = chamfer_distance(x, y, reduction=None, point_reduction=None)
        rxy, ryx = _dense_terms(x, y, sqdist_ref)
        torch.testing.assert_close(dxy, rxy)
        torch.testing.assert_close(dyx, ryx)

    def test_single_directional(self, generator, sqdist_ref):
        x, y = _rand(generator, 2, 10, 3), _rand(generator, 2, 12, 3)
        out = chamfer_distance(x, y, single_directional=True)
        torch.testing.assert_close(out, _dense_terms(x, y, sqdist_ref)[0].mean())

    @pytest.mark.parametrize("backend", ["brute", "kdtree"])
    def test_lengths_ignore_padding(self, backend, generator):
        x, y = _rand(generator, 3, 30, 3), _rand(generator, 3, 25, 3)
        xl, yl = torch.tensor([30, 12, 5]), torch.tensor([25, 25, 9])
        x[1, 12:] = 1e3  # garbage in the padding must not matter
        y[2, 9:] = x[2, :16].clone()
        out = chamfer_distance(x, y, xl, yl, reduction=None, backend=backend)
        for b in range(3):
            ref = chamfer_distance(x[b : b + 1, : xl[b]], y[b : b + 1, : yl[b]], reduction=None)
            torch.testing.assert_close(out[b], ref[0])
        dxy, dyx = chamfer_distance(x, y, xl, yl, reduction=None, point_reduction=None)
        assert torch.all(dxy[1, 12:] == 0) and torch.all(dyx[2, 9:] == 0)
        s = chamfer_distance(x, y, xl, yl, reduction=None, point_reduction="sum")
        torch.testing.assert_close(s, dxy.sum(-1) + dyx.sum(-1))

    def test_return_per_point(self, generator, knn_ref):
        x, y = _rand(generator, 2, 15, 3), _rand(generator, 2, 11, 3)
        loss, pp = chamfer_distance(
            x, y, y_lengths=torch.tensor([11, 6]), squared=False, return_per_point=True
        )
        for b, ny in enumerate([11, 6]):
            rd, ri = knn_ref(x[b], y[b, :ny], 1)
            assert torch.equal(pp.idx_xy[b], ri[:, 0])
            torch.testing.assert_close(pp.dist_xy[b], rd[:, 0].sqrt())
            rd, ri = knn_ref(y[b, :ny], x[b], 1)
            assert torch.equal(pp.idx_yx[b, :ny], ri[:, 0])
            assert torch.all(pp.idx_yx[b, ny:] == -1) and torch.all(pp.dist_yx[b, ny:] == 0)
        assert pp.dist_xy.shape == (2, 15) and pp.dist_yx.shape == (2, 11)

    def test_float32_and_leading_dims(self, generator, sqdist_ref):
        x, y = _rand(generator, 2, 2, 20, 3).float(), _rand(generator, 2, 2, 25, 3).float()
        out = chamfer_distance(x, y, reduction=None)
        assert out.shape == (2, 2) and out.dtype == torch.float32
        dxy, dyx = _dense_terms(x, y, sqdist_ref)
        torch.testing.assert_close(out, dxy.mean(-1) + dyx.mean(-1))


class TestFusedBrutePass:
    """The brute backend finds both directions from one chunked pass: check the merge of
    column minima across row blocks, ties and padding against the dense reference."""

    @pytest.mark.parametrize("chunk_size", [1, 3, 7, None])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_exact_per_point(self, chunk_size, dtype, generator, knn_ref):
        x = _rand(generator, 3, 23, 3, dtype=dtype)
        y = _rand(generator, 3, 17, 3, dtype=dtype)
        y[0, 10:] = y[0, :7].clone()  # exact duplicates: ties must go to the lower index
        x[1, 5:9] = y[1, 2].clone()  # several x tie for the same y
        xl, yl = torch.tensor([23, 9, 1]), torch.tensor([17, 17, 4])
        _, pp = chamfer_distance(
            x,
            y,
            xl,
            yl,
            reduction=None,
            return_per_point=True,
            backend="brute",
            chunk_size=chunk_size,
        )
        for b in range(3):
            nx, ny = int(xl[b]), int(yl[b])
            rd, ri = knn_ref(x[b, :nx], y[b, :ny], 1)
            assert torch.equal(pp.idx_xy[b, :nx], ri[:, 0])
            assert torch.equal(pp.dist_xy[b, :nx], rd[:, 0])
            rd, ri = knn_ref(y[b, :ny], x[b, :nx], 1)
            assert torch.equal(pp.idx_yx[b, :ny], ri[:, 0])
            assert torch.equal(pp.dist_yx[b, :ny], rd[:, 0])
            assert torch.all(pp.idx_xy[b, nx:] == -1) and torch.all(pp.idx_yx[b, ny:] == -1)

    def test_same_as_kdtree(self, generator):
        x, y = _rand(generator, 2, 300, 3), _rand(generator, 2, 200, 3)
        a = chamfer_distance(x, y, reduction=None, backend="brute", chunk_size=64)
        b = chamfer_distance(x, y, reduction=None, backend="kdtree")
        assert torch.equal(a, b)


class TestGradients:
    @pytest.mark.parametrize("squared", [True, False])
    def test_gradcheck(self, squared, generator):
        x = _rand(generator, 2, 5, 3).requires_grad_()
        y = _rand(generator, 2, 6, 3).requires_grad_()

        def f(a, b):
            return chamfer_distance(a, b, y_lengths=torch.tensor([6, 4]), squared=squared)

        assert torch.autograd.gradcheck(f, (x, y))

    def test_finite_gradient_at_coincident_points(self, generator):
        x = _rand(generator, 1, 8, 3).requires_grad_()
        y = x.detach().clone().requires_grad_()
        chamfer_distance(x, y, squared=False).backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


class TestErrors:
    def test_bad_arguments(self, generator):
        x = _rand(generator, 2, 5, 3)
        with pytest.raises(ValueError, match=r"^reduction: expected 'mean', 'sum' or None, got 'max'"):
            chamfer_distance(x, x, reduction="max")
        with pytest.raises(ValueError, match=r"^point_reduction: expected 'mean', 'sum' or None, got 'median'"):
            chamfer_distance(x, x, point_reduction="median")
        with pytest.raises(ValueError, match=r"^reduction: expected None with point_reduction=None"):
            chamfer_distance(x, x, point_reduction=None)
        with pytest.raises(ValueError, match=r"^x_lengths: expected shape \(2,\) \(the batch shape\), got shape \(1,\)"):
            chamfer_distance(x, x, x_lengths=torch.tensor([1]))
        with pytest.raises(ValueError, match=r"^y: expected last dimension D = 3"):
            chamfer_distance(x, x[..., :2])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chamfer_cuda(generator):
    x, y = _rand(generator, 2, 300, 3), _rand(generator, 2, 200, 3)
    ref = chamfer_distance(x, y, torch.tensor([300, 100]), reduction=None)
    out = chamfer_distance(x.cuda(), y.cuda(), torch.tensor([300, 100]).cuda(), reduction=None)
    torch.testing.assert_close(out.cpu(), ref)
