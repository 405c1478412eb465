"""knn: exact agreement with brute force, ties, ragged batches, fills, gradients, memory."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import geo3d.ops._knn as knn_mod
from geo3d.ops import knn

BACKENDS = ["brute", "kdtree", "auto"]
INF = float("inf")


def _rand(g, *shape, dtype=torch.float32):
    return torch.rand(*shape, generator=g, dtype=dtype)


class TestExact:
    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("dim", [1, 3, 5, 16])
    def test_matches_brute_force(self, backend, dtype, dim, generator, knn_ref):
        x = _rand(generator, 2, 300, dim, dtype=dtype)
        y = _rand(generator, 2, 400, dim, dtype=dtype)
        d, i = knn(x, y, 7, backend=backend)
        rd, ri = knn_ref(x, y, 7)
        assert d.dtype == dtype and i.dtype == torch.long
        assert d.shape == i.shape == (2, 300, 7)
        assert torch.equal(i, ri)
        assert torch.equal(d, rd)  # bitwise: same formula, same summation order

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_integer_grid_ties(self, backend, knn_ref):
        # many exactly equal distances: ties must go to the lower index, including which of
        # the tied points at the k-th distance make it into the result
        ax = torch.arange(7.0)
        grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(1, -1, 3)
        perm = torch.randperm(grid.shape[1], generator=torch.Generator().manual_seed(1))
        grid = grid[:, perm]  # ties between non-adjacent indices
        for k in (1, 5, 7, 19, 27):
            d, i = knn(grid, grid, k, backend=backend)
            rd, ri = knn_ref(grid, grid, k)
            assert torch.equal(i, ri), k
            assert torch.equal(d, rd), k

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_duplicate_points(self, backend, knn_ref):
        y = torch.zeros(1, 40, 3)
        y[:, 20:] = 1.0
        x = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]]])
        d, i = knn(x, y, 25, backend=backend)
        rd, ri = knn_ref(x, y, 25)
        assert torch.equal(i, ri) and torch.equal(d, rd)
        assert i[0, 0].tolist() == list(range(20)) + list(range(20, 25))
        assert i[0, 1].tolist() == list(range(20, 40)) + list(range(5))

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_far_from_origin_near_ties(self, backend, dtype, generator, knn_ref):
        # a small cloud far from the origin: the expanded form |x|^2+|y|^2-2xy is useless
        # there without care; near-ties one ulp apart must still be ordered exactly
        base = torch.tensor([1.0e4, -2.0e4, 3.0e4], dtype=dtype)
        y = base + 1e-2 * _rand(generator, 1, 500, 3, dtype=dtype)
        x = base + 1e-2 * _rand(generator, 1, 200, 3, dtype=dtype)
        d, i = knn(x, y, 9, backend=backend)
        rd, ri = knn_ref(x, y, 9)
        assert torch.equal(i, ri) and torch.equal(d, rd)

    @pytest.mark.parametrize("backend", ["brute", "kdtree"])
    def test_ulp_apart_candidates(self, backend, knn_ref):
        # points on a sphere around the query whose exact distances differ by a few ulps
        g = torch.Generator().manual_seed(3)
        dirs = torch.nn.functional.normalize(torch.randn(1, 300, 3, generator=g), dim=-1)
        y = (dirs * 0.7).float()
        x = torch.zeros(1, 1, 3)
        for k in (1, 10, 50):
            d, i = knn(x, y, k, backend=backend)
            rd, ri = knn_ref(x, y, k)
            assert torch.equal(i, ri) and torch.equal(d, rd)

    @pytest.mark.parametrize("backend", ["brute", "kdtree"])
    def test_fallback_path_is_exact(self, backend, monkeypatch, generator, knn_ref):
        # a bound of -inf certifies nothing: every row goes through the exact fallback
        name = "_brute_candidates" if backend == "brute" else "_kdtree_candidates"
        orig = getattr(knn_mod, name)

        def useless_bound(*args, **kwargs):
            cand, bound = orig(*args, **kwargs)
            return cand, torch.full_like(bound, -INF)

        monkeypatch.setattr(knn_mod, name, useless_bound)
        monkeypatch.setattr(knn_mod, "MEMORY_BUDGET_CPU", 4096)  # tiny chunks too
        x = _rand(generator, 2, 60, 3)
        y = torch.cat([_rand(generator, 2, 50, 3), torch.zeros(2, 10, 3)], 1)  # with ties
        lengths = torch.tensor([60, 33])
        d, i = knn(x, y, 12, x_lengths=lengths, y_lengths=torch.tensor([60, 55]), backend=backend)
        for b, (nx, ny) in enumerate([(60, 60), (33, 55)]):
            rd, ri = knn_ref(x[b : b + 1, :nx], y[b : b + 1, :ny], 12)
            assert torch.equal(i[b, :nx], ri[0]) and torch.equal(d[b, :nx], rd[0])

    def test_wrong_candidates_are_caught(self, monkeypatch, generator, knn_ref):
        # a candidate generator that misses true neighbours but reports an honest bound:
        # certification must reject those rows and the result must still be exact
        orig = knn_mod._brute_candidates

        def bad(x, y, k, xl, yl, chunk_size):
            cand, bound = orig(x, y, k, xl, yl, chunk_size)
            cand, bound = cand.clone(), bound.clone()
            lost = cand[:, ::3, 0].clone()
            cand[:, ::3, 0] = (lost + 17) % y.shape[1]  # corrupt a third of the rows
            # honest bound for those rows: the lost true neighbour is now the nearest
            # excluded point
            lost_d = ((x[:, ::3] - y[0, lost[0]][None]) ** 2).sum(-1)
            bound[:, ::3] = torch.minimum(bound[:, ::3], lost_d)
            return cand, bound

        monkeypatch.setattr(knn_mod, "_brute_candidates", bad)
        x, y = _rand(generator, 1, 90, 3), _rand(generator, 1, 120, 3)
        d, i = knn(x, y, 4, backend="brute")
        rd, ri = knn_ref(x, y, 4)
        assert torch.equal(i, ri) and torch.equal(d, rd)

    @pytest.mark.parametrize("chunk_size", [1, 7, 1000])
    def test_chunk_size_does_not_change_result(self, chunk_size, generator, knn_ref):
        x, y = _rand(generator, 3, 50, 3), _rand(generator, 3, 80, 3)
        d, i = knn(x, y, 5, backend="brute", chunk_size=chunk_size)
        rd, ri = knn_ref(x, y, 5)
        assert torch.equal(i, ri) and torch.equal(d, rd)

    def test_self_is_first_neighbour(self, generator):
        x = _rand(generator, 4, 200, 3)
        for backend in ("brute", "kdtree"):
            d, i = knn(x, x, 3, backend=backend)
            assert torch.equal(i[..., 0], torch.arange(200).expand(4, 200))
            assert torch.all(d[..., 0] == 0)


class TestRaggedAndFill:
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_lengths(self, backend, generator, knn_ref):
        x = _rand(generator, 3, 40, 3)
        y = _rand(generator, 3, 50, 3)
        # padded reference points sit right on the queries: they must never be returned
        y[1, 30:] = x[1, :20].clone()
        # row 2: 12 valid queries against 7 valid reference points (k = 10 > 7)
        xl, yl = torch.tensor([40, 25, 12]), torch.tensor([50, 30, 7])
        d, i = knn(x, y, 10, x_lengths=xl, y_lengths=yl, backend=backend)
        for b in range(3):
            nx, ny = int(xl[b]), int(yl[b])
            rd, ri = knn_ref(x[b : b + 1, :nx], y[b : b + 1, :ny], 10)
            assert torch.equal(i[b, :nx], ri[0]) and torch.equal(d[b, :nx], rd[0])
            # padded query rows: index -1, distance inf
            assert torch.all(i[b, nx:] == -1) and torch.all(d[b, nx:] == INF)
        # k > y_length on a non-empty row: the 7 real neighbours first (each valid point
        # exactly once, finite distances), then the missing ones as (inf, -1)
        assert torch.all(i[2, :12, 7:] == -1) and torch.all(d[2, :12, 7:] == INF)
        assert all(sorted(r) == list(range(7)) for r in i[2, :12, :7].tolist())
        assert torch.isfinite(d[2, :12, :7]).all()

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_k_larger_than_m(self, backend, generator, knn_ref):
        x, y = _rand(generator, 2, 10, 3), _rand(generator, 2, 4, 3)
        d, i = knn(x, y, 6, backend=backend)
        rd, ri = knn_ref(x, y, 6)
        assert torch.equal(i, ri) and torch.equal(d, rd)
        assert torch.all(i[..., 4:] == -1) and torch.all(d[..., 4:] == INF)

    def test_empty_reference(self, generator):
        x = _rand(generator, 2, 5, 3)
        d, i = knn(x, torch.zeros(2, 0, 3), 2)
        assert torch.all(i == -1) and torch.all(d == INF)
        d, i = knn(x, _rand(generator, 2, 5, 3), 2, y_lengths=torch.tensor([0, 5]))
        assert torch.all(i[0] == -1) and torch.all(i[1] >= 0)

    def test_leading_batch_dims_and_unbatched(self, generator, knn_ref):
        x, y = _rand(generator, 2, 3, 30, 3), _rand(generator, 2, 3, 20, 3)
        yl = torch.tensor([[20, 5, 9], [1, 20, 13]])
        d, i = knn(x, y, 4, y_lengths=yl)
        assert d.shape == (2, 3, 30, 4)
        for a in range(2):
            for b in range(3):
                rd, ri = knn_ref(x[a, b], y[a, b, : int(yl[a, b])], 4)
                assert torch.equal(i[a, b], ri)
        d2, i2 = knn(x[0, 0], y[0, 0], 4)  # (N, D) without batch axis
        rd, ri = knn_ref(x[0, 0], y[0, 0], 4)
        assert d2.shape == (30, 4) and torch.equal(i2, ri)


class TestGradients:
    @pytest.mark.parametrize("backend", ["brute", "kdtree"])
    def test_gradcheck(self, backend, generator):
        x = _rand(generator, 2, 6, 3, dtype=torch.float64).requires_grad_()
        y = _rand(generator, 2, 8, 3, dtype=torch.float64).requires_grad_()

        def f(a, b):
            return knn(a, b, 3, y_lengths=torch.tensor([8, 5]), backend=backend).dists

        assert torch.autograd.gradcheck(f, (x, y))

    def test_gradient_is_analytic(self, generator):
        x = _rand(generator, 1, 20, 3, dtype=torch.float64).requires_grad_()
        y = _rand(generator, 1, 30, 3, dtype=torch.float64)
        d, i = knn(x, y, 2)
        d.sum().backward()
        nn = y[0, i[0]]  # (20, 2, 3)
        expected = 2 * (x[0, :, None, :] - nn).sum(1)
        torch.testing.assert_close(x.grad[0], expected.detach())

    def test_padded_entries_have_zero_gradient(self, generator):
        x = _rand(generator, 1, 5, 3, dtype=torch.float64).requires_grad_()
        y = _rand(generator, 1, 3, 3, dtype=torch.float64).requires_grad_()
        d, _ = knn(x, y, 4, x_lengths=torch.tensor([3]))
        torch.where(torch.isinf(d), 0, d).sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
        assert torch.all(x.grad[0, 3:] == 0)


class TestMemory:
    def test_blocks_respect_the_budget(self, monkeypatch, generator, knn_ref):
        blocks = []
        orig = torch.bmm

        def spy(a, b, **kw):
            out = orig(a, b, **kw)
            blocks.append(out.numel())
            return out

        monkeypatch.setattr(knn_mod.torch, "bmm", spy)
        monkeypatch.setattr(knn_mod, "MEMORY_BUDGET_CPU", 64 * 1024)
        x, y = _rand(generator, 2, 300, 3), _rand(generator, 2, 500, 3)
        d, i = knn(x, y, 4, backend="brute")
        assert len(blocks) > 2
        assert max(blocks) * 4 <= 64 * 1024  # never the full 2 x 300 x 500 matrix
        assert torch.equal(i, knn_ref(x, y, 4)[1])


class TestErrors:
    def test_bad_inputs(self, generator):
        x = _rand(generator, 2, 5, 3)
        with pytest.raises(ValueError, match=r"^y: expected last dimension D = 3 \(to match\), got shape \(2, 5, 2\)"):
            knn(x, _rand(generator, 2, 5, 2), 1)
        with pytest.raises(ValueError, match=r"^y: expected the batch shape of x \(2,\)"):
            knn(x, _rand(generator, 3, 5, 3), 1)
        with pytest.raises(ValueError, match=r"^k: expected an int >= 1, got 0"):
            knn(x, x, 0)
        with pytest.raises(ValueError, match=r"^x_lengths: expected shape \(2,\) \(the batch shape\), got shape \(3,\)"):
            knn(x, x, 1, x_lengths=torch.tensor([1, 2, 3]))
        with pytest.raises(ValueError, match=r"^y_lengths: expected values in \[0, 5\], got values in \[1, 9\]"):
            knn(x, x, 1, y_lengths=torch.tensor([1, 9]))
        with pytest.raises(ValueError, match=r"^backend: expected one of"):
            knn(x, x, 1, backend="nope")
        with pytest.raises(ValueError, match=r"^x: expected shape \(\.\.\., N, D\), got shape \(5,\)"):
            knn(torch.zeros(5), x, 1)
        with pytest.raises(ValueError, match=r"^y: expected dtype torch.float32 \(the dtype of x\), got dtype torch.float64"):
            knn(x, x.double(), 1)
        with pytest.raises(ValueError, match=r"^x: expected a floating-point tensor, got dtype torch.int64"):
            knn(x.long(), x.long(), 1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu_reference(dtype, generator, knn_ref):
    x, y = _rand(generator, 2, 500, 3, dtype=dtype), _rand(generator, 2, 700, 3, dtype=dtype)
    yl = torch.tensor([700, 321])
    d, i = knn(x.cuda(), y.cuda(), 16, y_lengths=yl.cuda())
    assert d.device.type == "cuda"
    for b in range(2):
        rd, ri = knn_ref(x[b], y[b, : int(yl[b])], 16)
        assert torch.equal(i[b].cpu(), ri) and torch.equal(d[b].cpu(), rd)


@pytest.mark.skipif(importlib.util.find_spec("pytorch3d") is None, reason="pytorch3d not installed")
def test_pytorch3d_backend_matches(generator, knn_ref):  # pragma: no cover - optional dep
    x, y = _rand(generator, 2, 200, 3), _rand(generator, 2, 300, 3)
    d, i = knn(x, y, 8, backend="pytorch3d")
    rd, ri = knn_ref(x, y, 8)
    assert torch.equal(i, ri) and torch.equal(d, rd)
    from pytorch3d.ops import knn_points

    ref = knn_points(x, y, K=8)
    torch.testing.assert_close(ref.dists, d)


@pytest.mark.skipif(
    importlib.util.find_spec("torch_cluster") is None, reason="torch_cluster not installed"
)
def test_torch_cluster_backend_matches(generator, knn_ref):  # pragma: no cover - optional dep
    x, y = _rand(generator, 2, 200, 3), _rand(generator, 2, 300, 3)
    d, i = knn(x, y, 8, y_lengths=torch.tensor([300, 150]), backend="torch_cluster")
    for b, ny in enumerate([300, 150]):
        rd, ri = knn_ref(x[b], y[b, :ny], 8)
        assert torch.equal(i[b], ri) and torch.equal(d[b], rd)
