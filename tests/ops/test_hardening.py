"""geo3d.ops hardening (issue 11): self-first tie rule with duplicates, non-finite input,
empty reductions, outputs that never alias inputs, lengths that would only broadcast."""

from __future__ import annotations

import pytest
import torch

from geo3d._validation import check_finite
from geo3d.ops import (
    chamfer_distance,
    farthest_point_sampling,
    gather_points,
    knn,
    knn_graph,
    radius_graph,
)
from geo3d.rotations import set_value_checks

NAN, INF = float("nan"), float("inf")


def _self_first_reference(x: torch.Tensor, k: int) -> list[list[int]]:
    """Brute force in float64 python: the top k of every row by (distance, j != i, j)."""
    pts = x.double().tolist()
    out = []
    for i, p in enumerate(pts):
        d = [sum((a - b) ** 2 for a, b in zip(p, q, strict=True)) for q in pts]
        order = sorted(range(len(pts)), key=lambda j: (d[j], j != i, j))
        out.append(order[:k] + [-1] * (k - len(order[:k])))
    return out


def _dup_cloud(where: str) -> torch.Tensor:
    """8 points of which 4 coincide, the duplicates placed first or last (or spread)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, generator=g, dtype=torch.float64)
    dup = {"first": [0, 1, 2, 3], "last": [4, 5, 6, 7], "spread": [0, 3, 5, 7]}[where]
    x[dup] = x[dup[0]].clone()
    return x


class TestSelfFirst:
    @pytest.mark.parametrize("where", ["first", "last", "spread"])
    @pytest.mark.parametrize("backend", ["brute", "kdtree"])
    @pytest.mark.parametrize("k", [1, 2, 5])
    def test_knn_x_is_y(self, where, backend, k):
        x = _dup_cloud(where)
        d, i = knn(x, x, k, backend=backend)
        assert i.tolist() == _self_first_reference(x, k)
        assert torch.equal(i[:, 0], torch.arange(8)) and torch.all(d[:, 0] == 0)

    def test_knn_copy_keeps_the_index_rule(self):
        # knn(x, x.clone()) is an ordinary query: ties to the lower index (documented)
        x = _dup_cloud("first")
        _, i = knn(x, x.clone(), 1)
        assert i[:4, 0].tolist() == [0, 0, 0, 0]

    def test_knn_ragged_and_padded_rows(self):
        x = torch.stack([_dup_cloud("last"), _dup_cloud("first")]).float()
        d, i = knn(x, x, 3, x_lengths=torch.tensor([8, 5]), y_lengths=torch.tensor([8, 5]))
        assert i[0].tolist() == _self_first_reference(x[0], 3)
        assert i[1, :5].tolist() == _self_first_reference(x[1, :5], 3)
        assert torch.all(i[1, 5:] == -1) and torch.all(d[1, 5:] == INF)

    def test_issue_example_graphs(self):
        x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
        assert knn_graph(x, 1, loop=True).tolist() == [[0, 1, 2], [0, 1, 2]]
        ei = radius_graph(x, 1.0, loop=True, max_num_neighbors=1)
        assert ei.tolist() == [[0, 1, 2], [0, 1, 2]]
        # without loop node 0 and 1 are each other's neighbour
        assert knn_graph(x, 1).tolist() == [[1, 0, 0], [0, 1, 2]]

    @pytest.mark.parametrize("where", ["first", "last"])
    def test_graphs_with_loop_match_reference(self, where):
        x = _dup_cloud(where).float()
        ref = _self_first_reference(x, 3)
        ei = knn_graph(x, 3, loop=True)
        for c in range(8):
            assert ei[0, ei[1] == c].tolist() == ref[c]
        ei = radius_graph(x, 10.0, loop=True, max_num_neighbors=2)
        for c in range(8):
            assert ei[0, ei[1] == c].tolist() == ref[c][:2]

    @pytest.mark.parametrize("single", [False, True])
    def test_chamfer_of_a_cloud_with_itself(self, single):
        x = torch.stack([_dup_cloud("first"), _dup_cloud("last")])
        loss, pp = chamfer_distance(x, x, return_per_point=True, single_directional=single)
        assert loss.item() == 0.0
        assert torch.equal(pp.idx_xy, torch.arange(8).expand(2, 8))
        if not single:
            assert torch.equal(pp.idx_yx, torch.arange(8).expand(2, 8))
        # a copy is a different cloud: ties to the lower index
        _, pp = chamfer_distance(x, x.clone(), return_per_point=True)
        assert pp.idx_xy[0, :4].tolist() == [0, 0, 0, 0]

    def test_fps_duplicates_first_and_last(self):
        # by hand: start 0; (3, 0) at 3 and 4 tie at 9 -> 3; then (1, 0) (min distance 1);
        # the duplicates 1 (of 0) and 4 (of 3) tie at 0 -> 1, then 4
        x = torch.tensor([[[0.0, 0], [0, 0], [1, 0], [3, 0], [3, 0]]])
        assert farthest_point_sampling(x, 5).tolist() == [[0, 3, 2, 1, 4]]
        # duplicates last: start 0; 2 and 3 tie at 9 -> 2; then 1; then 3, 4 (both at 0)
        x = torch.tensor([[[3.0, 0], [1, 0], [0, 0], [0, 0], [3, 0]]])
        assert farthest_point_sampling(x, 5).tolist() == [[0, 2, 1, 3, 4]]


class TestNonFinite:
    @pytest.mark.parametrize("bad", [NAN, INF, -INF])
    def test_every_entry_point_names_the_argument(self, bad):
        x = torch.rand(2, 6, 3, generator=torch.Generator().manual_seed(1))
        xb = x.clone()
        xb[1, 2, 1] = bad
        msg = r"^{}: expected finite coordinates, got 1 NaN/inf value\(s\) \(first at index \(1, 2, 1\)\)"
        with pytest.raises(ValueError, match=msg.format("x")):
            knn(xb, x, 2)
        with pytest.raises(ValueError, match=msg.format("y")):
            knn(x, xb, 2)
        with pytest.raises(ValueError, match=msg.format("x")):
            knn(xb, xb, 2)
        with pytest.raises(ValueError, match=msg.format("x")):
            chamfer_distance(xb, x)
        with pytest.raises(ValueError, match=msg.format("y")):
            chamfer_distance(x, xb, single_directional=True)
        with pytest.raises(ValueError, match=msg.format("x")):
            farthest_point_sampling(xb, 3)
        flat_msg = r"^x: expected finite coordinates, got 1 NaN/inf value\(s\) \(first at index \(8, 1\)\)"
        with pytest.raises(ValueError, match=flat_msg):
            knn_graph(xb.reshape(12, 3), 2)
        with pytest.raises(ValueError, match=flat_msg):
            radius_graph(xb.reshape(12, 3), 0.5)

    def test_padding_is_not_checked(self):
        g = torch.Generator().manual_seed(2)
        x, y = torch.rand(2, 6, 3, generator=g), torch.rand(2, 5, 3, generator=g)
        xl, yl = torch.tensor([6, 4]), torch.tensor([3, 5])
        xp, yp = x.clone(), y.clone()
        xp[1, 4:] = NAN
        yp[0, 3:] = INF
        ref, r = knn(x, y, 2, xl, yl), knn(xp, yp, 2, xl, yl)
        assert torch.equal(r.idx, ref.idx) and torch.equal(r.dists, ref.dists)
        torch.testing.assert_close(
            chamfer_distance(xp, yp, xl, yl), chamfer_distance(x, y, xl, yl), rtol=0, atol=0
        )
        assert torch.equal(
            farthest_point_sampling(xp, 4, xl), farthest_point_sampling(x, 4, xl)
        )

    def test_value_checks_switch(self):
        xb = torch.rand(1, 6, 3)
        xb[0, 0, 0] = NAN
        old = set_value_checks(False)
        try:
            knn(xb, xb, 2)  # no error: the caller opted out
            chamfer_distance(xb, xb)
            farthest_point_sampling(xb, 2)
            knn_graph(xb[0], 2)
        finally:
            set_value_checks(old)
        with pytest.raises(ValueError, match="^x: expected finite"):
            knn(xb, xb, 2)

    def test_check_does_not_break_vmap_or_compile(self):
        def f(t):
            check_finite("x", t)
            return t * 2

        t = torch.ones(3, 4)
        t[0, 0] = NAN  # a vmapped / compiled check cannot read values: it is skipped
        out = torch.vmap(f)(t)
        assert out.shape == (3, 4)
        out = torch.compile(f, backend="eager", fullgraph=True)(t)
        assert out.shape == (3, 4)


class TestEmptyReductions:
    def test_chamfer_empty_batch_and_empty_clouds(self):
        e = torch.zeros(0, 5, 3)
        for red in ("mean", "sum"):
            out = chamfer_distance(e, e, reduction=red)
            assert out.shape == () and out.item() == 0.0
        assert chamfer_distance(e, e, reduction=None).shape == (0,)
        # clouds with 0 points: "a mean over zero points is 0" per direction
        z = torch.zeros(2, 0, 3)
        assert chamfer_distance(z, z).item() == 0.0
        x = torch.rand(2, 4, 3, generator=torch.Generator().manual_seed(0))
        # x has points, y none: x -> y distances are inf (documented), y -> x mean over 0 is 0
        assert chamfer_distance(x, z, reduction=None).tolist() == [INF, INF]
        out = chamfer_distance(x, x, x_lengths=torch.tensor([0, 4]), y_lengths=torch.tensor([0, 4]),
                               reduction=None)
        assert out.tolist() == [0.0, 0.0]

    def test_fps_and_knn_empty(self):
        assert farthest_point_sampling(torch.zeros(2, 0, 3), 3).tolist() == [[-1] * 3] * 2
        assert farthest_point_sampling(torch.zeros(0, 5, 3), 3).shape == (0, 3)
        out = farthest_point_sampling(torch.rand(2, 5, 3), 2, lengths=torch.tensor([0, 5]))
        assert out[0].tolist() == [-1, -1]
        d, i = knn(torch.zeros(0, 4, 3), torch.zeros(0, 5, 3), 2)
        assert d.shape == i.shape == (0, 4, 2)
        assert knn_graph(torch.zeros(0, 3), 2).shape == (2, 0)


def _layouts(x: torch.Tensor):
    """The same values in contiguous, column-major (transposed storage) and strided layouts."""
    yield "contiguous", x.contiguous()
    yield "column_major", x.transpose(-1, -2).contiguous().transpose(-1, -2)
    big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
    big[..., ::2] = x
    yield "strided", big[..., ::2]


def _shares(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class TestNoAliasing:
    def test_outputs_are_new_memory(self):
        g = torch.Generator().manual_seed(3)
        x0 = torch.rand(2, 7, 3, generator=g, dtype=torch.float64)
        ref = knn(x0, x0, 3)
        for name, x in _layouts(x0):
            keep = x.clone()
            outs = list(knn(x, x, 3)) + list(knn(x, x0, 3))
            loss, pp = chamfer_distance(x, x0, return_per_point=True, reduction=None)
            outs += [loss, *[t for t in pp if t is not None]]
            outs += list(chamfer_distance(x, x0, point_reduction=None, reduction=None))
            outs.append(farthest_point_sampling(x, 4))
            idx = torch.zeros(2, 7, dtype=torch.long)
            outs.append(gather_points(x, idx))
            outs.append(gather_points(x, torch.arange(7).expand(2, 7)))  # identity gather
            outs.append(knn_graph(x[0], 2))
            for o in outs:
                assert not _shares(o, x), name
                o.add_(1)  # an in-place edit of an output must not reach the input
            assert torch.equal(x, keep), name
            assert torch.equal(knn(x, x, 3).idx, ref.idx), name


class TestBroadcastingLengths:
    @pytest.mark.parametrize("bad", [torch.tensor([5]), torch.tensor([[5], [5]]), torch.tensor(5)])
    def test_lengths_must_match_the_batch_shape(self, bad):
        x = torch.rand(2, 5, 3)
        msg = r"^{}: expected shape \(2,\) \(the batch shape\), got shape"
        with pytest.raises(ValueError, match=msg.format("x_lengths")):
            knn(x, x, 2, x_lengths=bad)
        with pytest.raises(ValueError, match=msg.format("y_lengths")):
            knn(x, x, 2, y_lengths=bad)
        with pytest.raises(ValueError, match=msg.format("y_lengths")):
            chamfer_distance(x, x, y_lengths=bad)
        with pytest.raises(ValueError, match=msg.format("lengths")):
            farthest_point_sampling(x, 2, lengths=bad)

    def test_batch_vector_must_match(self):
        with pytest.raises(ValueError, match=r"^batch: expected an integer tensor of shape \(4,\)"):
            knn_graph(torch.rand(4, 3), 2, batch=torch.zeros(1, dtype=torch.long))


def test_float32_graph_self_first_on_lattice():
    # a float32 lattice (many exact ties at every distance): every node its own first
    # neighbour with loop=True, never with loop=False; degree exactly k
    ax = torch.arange(4.0)
    g = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    g = torch.cat([g, g[:5]])  # 5 duplicates at the end
    ei = knn_graph(g, 4, loop=True)
    first = ei[0].reshape(-1, 4)[:, 0]
    assert torch.equal(first, torch.arange(g.shape[0]))
    ei = knn_graph(g, 4)
    assert not torch.any(ei[0] == ei[1])
    assert torch.equal(torch.bincount(ei[1]), torch.full((g.shape[0],), 4))
