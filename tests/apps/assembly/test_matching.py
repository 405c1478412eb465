"""Matching, RANSAC + Kabsch and the spanning-tree assembly (apps/assembly/_matching.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from geo3d.apps.assembly._matching import (
    PairwiseResult,
    global_assembly,
    log_sinkhorn,
    match_pieces,
    pairwise_poses,
    ransac_kabsch,
)

from geo3d.rotations import random_rotation_matrix

F64 = torch.float64


# ----------------------------------------------------------------------------- Sinkhorn
def _sinkhorn_numpy(K: np.ndarray, mu: np.ndarray, nu: np.ndarray, iters: int) -> np.ndarray:
    """Plain (not log-domain) Sinkhorn–Knopp scaling, an independent formula."""
    u = np.ones_like(mu)
    v = np.ones_like(nu)
    for _ in range(iters):
        u = mu / (K @ v)
        v = nu / (K.T @ u)
    return u[:, None] * K * v[None, :]


def test_log_sinkhorn_marginals_and_plain_sinkhorn(generator):
    M, N = 7, 5
    log_k = torch.randn(M, N, generator=generator, dtype=F64)
    mu = torch.rand(M, generator=generator, dtype=F64) + 0.1
    nu = torch.rand(N, generator=generator, dtype=F64) + 0.1
    mu, nu = mu / mu.sum(), nu / nu.sum()
    lp = log_sinkhorn(log_k, mu.log(), nu.log(), iters=500)
    plan = lp.exp()
    torch.testing.assert_close(plan.sum(0), nu, rtol=0, atol=1e-14)  # last update: columns
    torch.testing.assert_close(plan.sum(1), mu, rtol=0, atol=1e-12)
    ref = _sinkhorn_numpy(log_k.exp().numpy(), mu.numpy(), nu.numpy(), 500)
    np.testing.assert_allclose(plan.numpy(), ref, rtol=1e-10, atol=0)


def test_log_sinkhorn_batched_and_large_scores(generator):
    """Scores of 1e3 (a small temperature) overflow exp(); the log domain does not."""
    log_k = 1e3 * torch.randn(3, 6, 6, generator=generator, dtype=F64)
    lmu = torch.full((3, 6), -np.log(6.0), dtype=F64)
    plan = log_sinkhorn(log_k, lmu, lmu.clone(), iters=2000).exp()
    assert torch.isfinite(plan).all()
    torch.testing.assert_close(plan.sum(-2), lmu.exp(), rtol=0, atol=1e-12)


def test_log_sinkhorn_errors():
    with pytest.raises(ValueError, match="log_mu"):
        log_sinkhorn(torch.zeros(3, 4), torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="log_nu"):
        log_sinkhorn(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="iters"):
        log_sinkhorn(torch.zeros(3, 4), torch.zeros(3), torch.zeros(4), iters=0)


# ----------------------------------------------------------------------------- matching
def _mnn_brute(a: torch.Tensor, b: torch.Tensor) -> list[tuple[int, int]]:
    """Mutual nearest neighbours by explicit loops (first maximum wins ties)."""
    an = a / a.norm(dim=-1, keepdim=True)
    bn = b / b.norm(dim=-1, keepdim=True)
    S = (an @ bn.T).tolist()
    pairs = []
    for i in range(len(S)):
        j = max(range(len(S[i])), key=lambda jj: (S[i][jj], -jj))
        col = [S[k][j] for k in range(len(S))]
        i2 = max(range(len(col)), key=lambda kk: (col[kk], -kk))
        if i2 == i:
            pairs.append((i, j))
    return pairs


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_mnn_matches_brute_force_with_ties(generator, dtype):
    a = torch.randn(40, 8, generator=generator, dtype=dtype)
    b = torch.randn(30, 8, generator=generator, dtype=dtype)
    b[5] = a[3]
    b[6] = a[3]  # a duplicate: a[3]'s nearest is the lower index, 5
    a[10] = 2.0 * a[11]  # same direction: equal cosine, ties in b's argmax
    ia, ib, w = match_pieces(a, b, method="mnn", min_weight=-1.0)
    got = list(zip(ia.tolist(), ib.tolist(), strict=True))
    assert got == _mnn_brute(a.double(), b.double())
    assert (3, 5) in got and all(j != 6 for _, j in got)
    an, bn = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    torch.testing.assert_close(w, (an[ia] * bn[ib]).sum(-1).clamp_min(0))


@pytest.mark.parametrize("method", ["mnn", "sinkhorn"])
def test_match_recovers_a_permutation_and_ignores_zero_scores(generator, method):
    d = torch.randn(50, 32, generator=generator, dtype=F64)
    perm = torch.randperm(50, generator=generator)
    sb = torch.ones(50, dtype=F64)
    sb[:10] = 0.0  # b's first ten points are not fracture points
    ia, ib, w = match_pieces(d, d[perm], None, sb, method)
    assert torch.equal(perm[ib], ia)  # every match is correct
    assert set(ib.tolist()) == set(range(10, 50))  # exactly the scored points
    assert bool((w > 0.5).all())


def test_sinkhorn_auto_dustbin_scales_with_the_similarities(generator):
    """Noisy descriptors (true-pair cosine ~0.37, background std ~0.09): a fixed dustbin
    at 0.5 loses every match, the "auto" one keeps true ones (all correct)."""
    d = torch.randn(60, 128, generator=generator, dtype=F64)
    noisy = d + 2.5 * torch.randn(60, 128, generator=generator, dtype=F64)
    ia, ib, _ = match_pieces(d, noisy, method="sinkhorn", dustbin=0.5)
    assert len(ia) == 0
    ia, ib, _ = match_pieces(d, noisy, method="sinkhorn")
    assert len(ia) >= 20 and torch.equal(ia, ib)


def test_sinkhorn_auto_dustbin_few_channels(generator):
    """C = 4: random cosines spread so widely that mean + 3 std > 1 (every match would go
    to the dustbin); the caps (half-way to the median best similarity, 0.5) keep the
    exact matches."""
    d = torch.randn(64, 4, generator=generator, dtype=F64)
    perm = torch.randperm(64, generator=generator)
    ia, ib, _ = match_pieces(d, d[perm], method="sinkhorn")
    assert len(ia) >= 48 and torch.equal(perm[ib], ia)


def test_sinkhorn_auto_dustbin_compressed_similarities(generator):
    """Similarities compressed near 1 (like an untrained head: mean 0.93): any dustbin at
    or above the mean swallows every match; the 0.5 ceiling of "auto" keeps them."""
    base = torch.zeros(40, 6, dtype=F64)
    base[:, 0] = 1.0
    d = base + 0.12 * torch.randn(40, 6, generator=generator, dtype=F64)
    perm = torch.randperm(40, generator=generator)
    ia, ib, _ = match_pieces(d, d[perm], method="sinkhorn", dustbin=0.97)
    assert len(ia) == 0
    ia, ib, _ = match_pieces(d, d[perm], method="sinkhorn")
    assert len(ia) >= 10 and torch.equal(perm[ib], ia)


def test_sinkhorn_dustbin_leaves_unrelated_points_unmatched(generator):
    d = torch.randn(20, 64, generator=generator, dtype=F64)
    other = torch.randn(20, 64, generator=generator, dtype=F64)
    b = torch.cat([d[:10], other[:10]])  # only a's first ten have partners
    ia, ib, _ = match_pieces(d, b, method="sinkhorn", dustbin=0.5)
    assert ia.tolist() == list(range(10)) and ib.tolist() == list(range(10))
    ia, ib, _ = match_pieces(d, b, method="sinkhorn", dustbin=-1.0)  # no dustbin
    assert len(ia) > 10


def test_match_errors():
    a = torch.randn(5, 4)
    with pytest.raises(ValueError, match="desc_b"):
        match_pieces(a, torch.randn(5, 3))
    with pytest.raises(ValueError, match="method"):
        match_pieces(a, a, method="hungarian")
    with pytest.raises(ValueError, match="score_a"):
        match_pieces(a, a, -torch.ones(5))
    with pytest.raises(ValueError, match="score_b"):
        match_pieces(a, a, None, torch.ones(4))
    with pytest.raises(ValueError, match="temperature"):
        match_pieces(a, a, temperature=0.0)
    with pytest.raises(ValueError, match="dustbin"):
        match_pieces(a, a, dustbin="median")


# ----------------------------------------------------------------------------- RANSAC
def test_ransac_recovers_rigid_motion_with_half_outliers(generator):
    M = 100
    x = torch.randn(M, 3, generator=generator, dtype=F64)
    R = random_rotation_matrix(generator=generator, dtype=F64)
    t = torch.tensor([0.3, -2.0, 5.0], dtype=F64)
    y = x @ R.T + t
    out = torch.zeros(M, dtype=torch.bool)
    out[torch.randperm(M, generator=generator)[:50]] = True
    y[out] += 0.5 + torch.rand(50, 3, generator=generator, dtype=F64)  # >= 0.5 off
    w = 0.5 + torch.rand(M, generator=generator, dtype=F64)
    Rh, th, score, inl = ransac_kabsch(x, y, w, iters=300, inlier_thresh=0.1,
                                       generator=generator, return_inliers=True)
    torch.testing.assert_close(Rh, R, rtol=0, atol=1e-9)
    torch.testing.assert_close(th, t, rtol=0, atol=1e-9)
    assert torch.equal(inl, ~out)
    torch.testing.assert_close(score, w[~out].sum(), rtol=1e-14, atol=0)
    res = (x[~out] @ Rh.T + th - y[~out]).norm(dim=-1)
    assert float(res.max()) < 1e-9


def test_ransac_float32_and_too_few_matches(generator):
    x = torch.randn(30, 3, generator=generator)
    R = random_rotation_matrix(generator=generator)
    Rh, th, s = ransac_kabsch(x, x @ R.T + 1.0, generator=generator)
    torch.testing.assert_close(Rh, R, rtol=0, atol=1e-5)
    assert Rh.dtype == torch.float32 and float(s) == 30.0
    w = torch.zeros(30)
    w[:2] = 1.0
    Rh, th, s = ransac_kabsch(x, x, w)
    assert torch.equal(Rh, torch.eye(3)) and float(s) == 0.0


def test_ransac_draws_do_not_depend_on_coordinates(generator):
    """The same generator state and weights give the same inliers for a moved source."""
    x = torch.randn(60, 3, generator=generator, dtype=F64)
    y = x.clone()
    y[::3] += 1.0
    g = random_rotation_matrix(generator=generator, dtype=F64)
    R1, t1, s1 = ransac_kabsch(x, y, iters=8, inlier_thresh=0.05,
                               generator=torch.Generator().manual_seed(3))
    R2, t2, s2 = ransac_kabsch(x @ g.T + 2.0, y, iters=8, inlier_thresh=0.05,
                               generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(R2 @ g, R1, rtol=0, atol=1e-12)
    assert float(s1) == float(s2) == 40.0


def test_ransac_errors():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="y"):
        ransac_kabsch(x, torch.randn(9, 3))
    with pytest.raises(ValueError, match="weights"):
        ransac_kabsch(x, x, torch.ones(9))
    with pytest.raises(ValueError, match="weights"):
        ransac_kabsch(x, x, -torch.ones(10))
    with pytest.raises(ValueError, match="iters"):
        ransac_kabsch(x, x, iters=0)
    with pytest.raises(ValueError, match="inlier_thresh"):
        ransac_kabsch(x, x, inlier_thresh=-1.0)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x, y"):
        ransac_kabsch(bad, x)


# ----------------------------------------------------------------------------- pairs
def test_pairwise_poses_three_copies(generator):
    """Three rigidly moved copies of one cloud, identical descriptors: rel = T_i⁻¹ T_j."""
    base = torch.randn(80, 3, generator=generator, dtype=F64)
    T = torch.eye(4, dtype=F64).repeat(3, 1, 1)
    T[:, :3, :3] = random_rotation_matrix(3, generator=generator, dtype=F64)
    T[:, :3, 3] = torch.randn(3, 3, generator=generator, dtype=F64)
    # piece i's input p_i satisfies T_i p_i = base
    pts = torch.stack([(base - T[i, :3, 3]) @ T[i, :3, :3] for i in range(3)])
    d = torch.randn(80, 16, generator=generator, dtype=F64).expand(3, 80, 16)
    res = pairwise_poses(pts, d, method="mnn", generator=generator)
    for i in range(3):
        for j in range(3):
            torch.testing.assert_close(res.rel[i, j], torch.linalg.inv(T[i]) @ T[j],
                                       rtol=0, atol=1e-10)
    assert res.score[0, 1] == res.score[1, 0] and float(res.score[0, 1]) > 70
    assert float(res.score[0, 0]) == 0.0 and set(res.matches) == {(0, 1), (0, 2), (1, 2)}


# ----------------------------------------------------------------------------- graph
def _trans(x: float, y: float = 0.0) -> torch.Tensor:
    T = torch.eye(4, dtype=F64)
    T[0, 3], T[1, 3] = x, y
    return T


def test_global_assembly_maximum_spanning_tree_by_hand():
    """Graph (anchor 1): 1-0 (9), 1-2 (5), 0-2 (8), 2-3 (7), 0-3 (2), 4-5 (10), 4 and 5
    unreliable to the rest. Prim from 1: 0 (9), then 2 via 0 (8 > 5), then 3 via 2 (7);
    4 falls back (lowest unplaced), 5 hangs off 4 (10)."""
    P = 6
    rel = torch.eye(4, dtype=F64).repeat(P, P, 1, 1)
    score = torch.zeros(P, P, dtype=F64)
    edges = {(1, 0): 9, (1, 2): 5, (0, 2): 8, (2, 3): 7, (0, 3): 2, (4, 5): 10, (3, 4): 1}
    for k, ((i, j), s) in enumerate(edges.items()):
        rel[i, j] = _trans(k + 1.0, 10.0 * (i + 1))
        rel[j, i] = torch.linalg.inv(rel[i, j])
        score[i, j] = score[j, i] = s
    fb = torch.stack([_trans(100.0 + i) for i in range(P)])
    T, parent = global_assembly((rel, score), 1, fb, min_score=3.0, return_parents=True)
    assert parent.tolist() == [1, -1, 0, 2, -2, 4]
    expect = {1: torch.eye(4, dtype=F64)}
    expect[0] = rel[1, 0]
    expect[2] = expect[0] @ rel[0, 2]
    expect[3] = expect[2] @ rel[2, 3]
    expect[4] = fb[4]
    expect[5] = fb[4] @ rel[4, 5]
    for i in range(P):
        torch.testing.assert_close(T[i], expect[i], rtol=0, atol=0)
    # invalid pieces are skipped; without fallback poses unplaced ones get the identity
    valid = torch.tensor([True, True, True, True, False, True])
    T2, parent2 = global_assembly(PairwiseResult(rel, score), 1, valid=valid, min_score=3.0,
                                  return_parents=True)
    assert parent2.tolist() == [1, -1, 0, 2, -1, -2]
    assert torch.equal(T2[5], torch.eye(4, dtype=F64))
    assert torch.equal(T2[4], torch.eye(4, dtype=F64))


def test_global_assembly_errors():
    rel = torch.eye(4).repeat(3, 3, 1, 1)
    score = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="anchor"):
        global_assembly((rel, score), 3)
    with pytest.raises(ValueError, match="anchor"):
        global_assembly((rel, score), 0, valid=torch.tensor([False, True, True]))
    with pytest.raises(ValueError, match="score"):
        global_assembly((rel, torch.zeros(2, 2)), 0)
    with pytest.raises(ValueError, match="fallback_poses"):
        global_assembly((rel, score), 0, torch.eye(4).repeat(2, 1, 1))
    with pytest.raises(ValueError, match="pairwise"):
        global_assembly([rel, score], 0)
