"""farthest_point_sampling and gather_points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geo3d.ops import farthest_point_sampling, gather_points, knn


def _fps_reference(pts: np.ndarray, n: int, start: int = 0) -> list[int]:
    """Textbook O(n N) FPS in float64 numpy; ties -> first index (np.argmax)."""
    sel = [start]
    mind = ((pts - pts[start]) ** 2).sum(-1)
    mind[start] = -1.0
    for _ in range(min(n, len(pts)) - 1):
        j = int(np.argmax(mind))
        sel.append(j)
        mind = np.minimum(mind, ((pts - pts[j]) ** 2).sum(-1))
        mind[sel] = -1.0
    return sel + [-1] * (n - len(sel))


class TestFPS:
    def test_matches_reference(self, generator):
        x = torch.rand(3, 200, 3, generator=generator, dtype=torch.float64)
        idx = farthest_point_sampling(x, 32)
        assert idx.shape == (3, 32) and idx.dtype == torch.long
        for b in range(3):
            assert idx[b].tolist() == _fps_reference(x[b].numpy(), 32)

    def test_lengths_and_fill(self, generator):
        x = torch.rand(2, 50, 3, generator=generator, dtype=torch.float64)
        x[1, 20:] = 100.0  # far away padding would be picked first if not ignored
        idx = farthest_point_sampling(x, 25, lengths=torch.tensor([50, 20]))
        assert idx[0].tolist() == _fps_reference(x[0].numpy(), 25)
        assert idx[1].tolist() == _fps_reference(x[1, :20].numpy(), 25)
        assert sorted(idx[1, :20].tolist()) == list(range(20))  # every valid point once
        assert torch.all(idx[1, 20:] == -1)

    def test_duplicates_and_ties(self):
        x = torch.tensor([[[0.0, 0], [1, 0], [0, 0], [-1, 0], [1, 0]]])
        # from 0: indices 1 and 3 tie at distance 1 -> 1; then 3 (distance 4 from 1);
        # the duplicates 2 and 4 come last
        assert farthest_point_sampling(x, 5).tolist() == [[0, 1, 3, 2, 4]]

    def test_random_start_uses_generator(self):
        x = torch.rand(4, 100, 3, generator=torch.Generator().manual_seed(5))
        lengths = torch.tensor([100, 10, 1, 50])
        a = farthest_point_sampling(
            x, 8, lengths, random_start=True, generator=torch.Generator().manual_seed(1)
        )
        b = farthest_point_sampling(
            x, 8, lengths, random_start=True, generator=torch.Generator().manual_seed(1)
        )
        c = farthest_point_sampling(
            x, 8, lengths, random_start=True, generator=torch.Generator().manual_seed(2)
        )
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert torch.all(a[:, 0] < lengths) and a[2].tolist() == [0] + [-1] * 7
        for i in (0, 1, 3):
            ref = _fps_reference(x[i, : lengths[i]].double().numpy(), 8, start=int(a[i, 0]))
            assert a[i].tolist() == ref

    def test_leading_dims_float32(self, generator):
        x = torch.rand(2, 3, 40, 3, generator=generator)
        idx = farthest_point_sampling(x, 5)
        assert idx.shape == (2, 3, 5)
        assert idx[1, 2].tolist() == _fps_reference(x[1, 2].double().numpy(), 5)

    def test_errors(self):
        with pytest.raises(ValueError, match=r"^n: expected an int >= 1, got 0"):
            farthest_point_sampling(torch.rand(1, 5, 3), 0)
        with pytest.raises(ValueError, match=r"^lengths: expected values in \[0, 5\], got values in \[1, 9\]"):
            farthest_point_sampling(torch.rand(2, 5, 3), 2, lengths=torch.tensor([9, 1]))
        with pytest.raises(ValueError, match=r"^x: expected shape \(\.\.\., N, D\), got shape \(5,\)"):
            farthest_point_sampling(torch.rand(5), 2)


class TestGather:
    def test_gather_with_fill_and_grad(self, generator):
        x = torch.rand(2, 10, 4, generator=generator, dtype=torch.float64, requires_grad=True)
        idx = torch.tensor([[[0, 3], [9, -1]], [[-1, -1], [5, 5]]])
        out = gather_points(x, idx)
        assert out.shape == (2, 2, 2, 4)
        assert torch.equal(out[0, 0, 1], x[0, 3]) and torch.equal(out[1, 1, 0], x[1, 5])
        assert torch.all(out[0, 1, 1] == 0) and torch.all(out[1, 0] == 0)
        assert torch.all(gather_points(x, idx, fill_value=7.0)[1, 0] == 7.0)
        out.sum().backward()
        assert x.grad[1, 5].tolist() == [2.0] * 4 and x.grad[0, 1].tolist() == [0.0] * 4

    def test_with_knn_and_trailing_dims(self, generator):
        x = torch.rand(2, 30, 3, generator=generator)
        feats = torch.rand(2, 30, 2, 5, generator=generator)
        d, i = knn(x, x, 4)
        nb = gather_points(x, i)
        torch.testing.assert_close(((nb - x[:, :, None]) ** 2).sum(-1), d)
        assert gather_points(feats, i).shape == (2, 30, 4, 2, 5)

    def test_errors(self):
        x = torch.rand(2, 5, 3)
        with pytest.raises(ValueError, match=r"^idx: expected values in \[-1, 5\)"):
            gather_points(x, torch.tensor([[5]] * 2))
        with pytest.raises(ValueError, match=r"^idx: expected an integer tensor of shape \(2, \.\.\.\), got \(3, 1\)"):
            gather_points(x, torch.zeros(3, 1, dtype=torch.long))
        with pytest.raises(ValueError, match=r"^idx: expected an integer tensor, got dtype torch.float32"):
            gather_points(x, torch.zeros(2, 1))
