"""knn_graph / radius_graph: torch_geometric edge_index conventions, exact vs brute force."""

from __future__ import annotations

import pytest
import torch

from geo3d.ops import knn_graph, radius_graph


def _reference_edges(x, batch, sqdist_ref, k=None, r=None, loop=False, max_nb=None):
    """(neighbour j, centre i) pairs, grouped by centre, nearest first, ties -> lower j."""
    n = x.shape[0]
    batch = torch.zeros(n, dtype=torch.long) if batch is None else batch
    d = sqdist_ref(x, x)
    src, dst = [], []
    for i in range(n):
        cand = [j for j in range(n) if batch[j] == batch[i] and (loop or j != i)]
        cand.sort(key=lambda j: (float(d[i, j]), j))
        if r is not None:
            cand = [j for j in cand if d[i, j] < torch.tensor(r * r, dtype=x.dtype)][:max_nb]
        else:
            cand = cand[:k]
        src += cand
        dst += [i] * len(cand)
    return torch.tensor([src, dst], dtype=torch.long).reshape(2, -1)


class TestKnnGraph:
    @pytest.mark.parametrize("loop", [False, True])
    @pytest.mark.parametrize("backend", ["brute", "kdtree"])
    def test_matches_reference(self, loop, backend, generator, sqdist_ref):
        x = torch.rand(60, 3, generator=generator)
        batch = torch.tensor([0] * 25 + [1] * 30 + [2] * 5)
        ei = knn_graph(x, 6, batch=batch, loop=loop, backend=backend)
        ref = _reference_edges(x, batch, sqdist_ref, k=6, loop=loop)
        assert ei.dtype == torch.long and ei.shape[0] == 2
        assert torch.equal(ei, ref)

    def test_conventions_torch_geometric(self, generator):
        # (torch_geometric.nn.knn_graph docs: flow="source_to_target" puts the centre in row 1;
        # importing torch_geometric here would cost seconds, so the degree is a bincount)
        x = torch.rand(40, 3, generator=generator)
        ei = knn_graph(x, 5)
        # source_to_target: row 1 is the centre, so every node receives exactly k messages
        assert torch.equal(torch.bincount(ei[1], minlength=40), torch.full((40,), 5))
        assert not torch.any(ei[0] == ei[1])
        ei2 = knn_graph(x, 5, flow="target_to_source")
        assert torch.equal(ei2, ei.flip(0))
        # row 0 holds the neighbours: the nearest one of node 0 is its nearest point
        d = ((x[0] - x) ** 2).sum(-1)
        d[0] = float("inf")
        assert int(ei[0, ei[1] == 0][0]) == int(d.argmin())

    def test_unsorted_batch_and_small_graphs(self, generator, sqdist_ref):
        x = torch.rand(30, 2, generator=generator)
        batch = torch.randint(0, 4, (30,), generator=generator)
        batch[:3] = 5  # a graph of 3 nodes with k = 4: only 2 neighbours each
        ei = knn_graph(x, 4, batch=batch)
        assert torch.equal(ei, _reference_edges(x, batch, sqdist_ref, k=4))

    def test_duplicates_give_exactly_k_and_no_self(self):
        x = torch.zeros(10, 3)
        ei = knn_graph(x, 3)
        assert ei.shape == (2, 30)
        assert not torch.any(ei[0] == ei[1])
        for i in range(10):
            assert ei[0, ei[1] == i].tolist() == [j for j in range(10) if j != i][:3]

    def test_cosine(self, generator):
        x = torch.randn(20, 4, generator=generator, dtype=torch.float64)
        ei = knn_graph(x, 3, cosine=True)
        xn = torch.nn.functional.normalize(x, dim=-1)
        cos = xn @ xn.T
        cos.fill_diagonal_(-2)
        for i in range(20):
            assert ei[0, ei[1] == i].tolist() == cos[i].argsort(descending=True)[:3].tolist()

    def test_errors(self):
        with pytest.raises(ValueError, match=r"^x: expected a floating tensor of shape \(N, D\), got \(2, 3, 3\)"):
            knn_graph(torch.zeros(2, 3, 3), 2)
        with pytest.raises(ValueError, match=r"^batch: expected an integer tensor of shape \(5,\), got \(4,\)"):
            knn_graph(torch.zeros(5, 3), 2, batch=torch.zeros(4, dtype=torch.long))
        with pytest.raises(ValueError, match=r"^flow: expected 'source_to_target' or 'target_to_source', got 'up'"):
            knn_graph(torch.zeros(5, 3), 2, flow="up")
        with pytest.raises(ValueError, match=r"^k: expected an int >= 1, got 0"):
            knn_graph(torch.zeros(5, 3), 0)


class TestRadiusGraph:
    @pytest.mark.parametrize("loop", [False, True])
    @pytest.mark.parametrize("max_nb", [3, 32])
    def test_matches_reference(self, loop, max_nb, generator, sqdist_ref):
        x = torch.rand(50, 3, generator=generator)
        batch = torch.tensor([0] * 20 + [1] * 30)
        ei = radius_graph(x, 0.3, batch=batch, loop=loop, max_num_neighbors=max_nb)
        ref = _reference_edges(x, batch, sqdist_ref, r=0.3, loop=loop, max_nb=max_nb)
        assert torch.equal(ei, ref)

    def test_strict_radius(self):
        x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.4, 0.0]])
        ei = radius_graph(x, 1.0)
        assert ei.shape == (2, 0)  # distance exactly r is excluded, as in torch_cluster
        ei = radius_graph(x, 1.5)
        assert ei.tolist() == [[1, 0, 2, 1], [0, 1, 1, 2]]

    def test_errors(self):
        with pytest.raises(ValueError, match=r"^r: expected a positive number, got -1.0"):
            radius_graph(torch.zeros(5, 3), -1.0)
        with pytest.raises(ValueError, match=r"^max_num_neighbors: expected an int >= 1, got 0"):
            radius_graph(torch.zeros(5, 3), 1.0, max_num_neighbors=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphs_on_cuda(generator, sqdist_ref):
    x = torch.rand(60, 3, generator=generator)
    batch = torch.tensor([0] * 25 + [1] * 35)
    ei = knn_graph(x.cuda(), 5, batch=batch.cuda())
    assert ei.device.type == "cuda"
    assert torch.equal(ei.cpu(), _reference_edges(x, batch, sqdist_ref, k=5))
    ei = radius_graph(x.cuda(), 0.25, batch=batch.cuda())
    assert torch.equal(ei.cpu(), _reference_edges(x, batch, sqdist_ref, r=0.25, max_nb=32))
