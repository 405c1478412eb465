"""``benchmarks/arteq_tree_search.py``: the search's rigid-part rig, nearest-point grid and
grid descent, against smplx and brute force (the recorded tree-search figures rest on them)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
ts = pytest.importorskip("arteq_tree_search")

from geo3d.body import load_body_model, write_tiny_body  # noqa: E402
from geo3d.rotations import (  # noqa: E402
    axis_angle_to_matrix,
    geodesic_distance,
    random_rotation_matrix,
)

F64 = torch.float64


@pytest.fixture(scope="module")
def body(tmp_path_factory):
    return load_body_model(write_tiny_body(tmp_path_factory.mktemp("b") / "tiny.npz"), dtype=F64)


@pytest.fixture(scope="module")
def rigid_body(tmp_path_factory):
    """The tiny body with one-hot skinning weights: smplx's LBS then moves rigid parts."""
    m = load_body_model(write_tiny_body(tmp_path_factory.mktemp("r") / "tiny.npz"), dtype=F64)
    w = m.lbs_weights
    m.lbs_weights = torch.nn.functional.one_hot(w.argmax(-1), w.shape[1]).to(w)
    return m


def _random_pose(g, n=1):
    return random_rotation_matrix(n * 24, generator=g, dtype=F64).reshape(n, 24, 3, 3)


def test_rig_matches_smplx_lbs_with_one_hot_weights(rigid_body):
    """Joint positions and vertices of ``Rig.fk``/``verts`` (root convention ``t + R0 J0``)
    equal smplx's output (transl ``t + R0 J0 - J0``); catches a wrong parent, bone offset or
    root convention."""
    g = torch.Generator().manual_seed(0)
    betas = torch.randn(1, 10, generator=g, dtype=F64) * 0.5
    rig = ts.Rig(rigid_body, betas[0], m=10_000)
    L = _random_pose(g)
    t = torch.randn(1, 3, generator=g, dtype=F64)
    G, P = rig.fk(L, L[:, 0], t)
    j0 = rig.J[0]
    out = rigid_body(betas=betas, global_orient=L[:, :1], body_pose=L[:, 1:],
                     transl=t + L[:, 0] @ j0 - j0, pose2rot=False)
    torch.testing.assert_close(P, out.joints[:, :24], rtol=0, atol=1e-12)
    idx = torch.randperm(len(rigid_body.v_template), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rig.verts(G, P), out.vertices[:, idx], rtol=0, atol=1e-12)


def test_scan_field_is_near_exact_nearest(body):
    """The grid's nearest point is within ``h sqrt(3)`` of the brute-force nearest distance
    (the bound of a nearest-to-cell-centre lookup); outside the grid the distance is the
    truncation."""
    g = torch.Generator().manual_seed(1)
    scan = torch.rand(400, 3, generator=g, dtype=F64)
    f = ts.ScanField(scan, h=0.03, margin=0.2)
    x = torch.rand(2000, 3, generator=g, dtype=F64) * 1.4 - 0.2
    i, inside = f.nearest(x)
    assert inside.all()
    got = (x - scan[i]).norm(dim=-1)
    true = torch.cdist(x, scan).min(1).values
    assert (got >= true - 1e-12).all()
    assert float((got - true).max()) <= 0.03 * math.sqrt(3)
    assert float((got - true).mean()) < 0.01  # mostly the exact nearest
    far = torch.tensor([[5.0, 0.0, 0.0]], dtype=F64)
    assert float(f.d2(far, 0.01)) == 0.01


def test_sqdist_brute_force():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 7, 3, generator=g, dtype=F64), torch.randn(1, 5, 3, generator=g,
                                                                     dtype=F64)
    torch.testing.assert_close(ts.sqdist(a, b), torch.cdist(a, b.expand(3, -1, -1)) ** 2,
                               rtol=1e-5, atol=1e-5)


def test_super_fibonacci_rotations_cover_so3():
    R = ts.super_fibonacci(1500)
    eye = torch.eye(3, dtype=F64)
    torch.testing.assert_close(R.transpose(1, 2) @ R, eye.expand(1500, 3, 3), rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.det(R), torch.ones(1500, dtype=F64), rtol=0, atol=1e-12)
    haar = random_rotation_matrix(1500, generator=torch.Generator().manual_seed(9), dtype=F64)
    q = random_rotation_matrix(2000, generator=torch.Generator().manual_seed(3), dtype=F64)

    def gaps(X):
        return geodesic_distance(q[:, None], X[None]).min(1).values.rad2deg()

    # measured: largest gap 17.7 vs 26.8 degrees for 1500 Haar-random rotations, mean
    # 10.3 vs 11.7; a clustered spiral (a wrong angle or radius) has larger gaps than Haar's
    assert float(gaps(R).max()) < 0.75 * float(gaps(haar).max())
    assert float(gaps(R).mean()) < 0.95 * float(gaps(haar).mean())


@pytest.mark.parametrize("chain", [2, 3, 4])
def test_descend_recovers_a_planted_grid_pose(body, chain):
    """A scan made of the rig's own vertices, an arm or leg at a grid candidate: one descent
    over that chain from the rest pose finds the candidate's locals exactly."""
    rig = ts.Rig(body, torch.zeros(10, dtype=F64), m=10_000)
    joints, cand = ts.chain_specs()[chain]
    eye = torch.eye(3, dtype=F64)
    L_true = eye.repeat(24, 1, 1)
    k = len(cand) // 3 + 7
    for i, j in enumerate(joints):
        L_true[j] = cand[k, i]
    R0, t = random_rotation_matrix(1, generator=torch.Generator().manual_seed(4), dtype=F64)[0], \
        torch.tensor([0.1, -0.2, 0.3], dtype=F64)
    G, P = rig.fk(L_true[None], R0[None], t[None])
    scan = rig.verts(G, P)[0]
    field = ts.ScanField(scan)
    L = ts.descend(rig, eye.repeat(24, 1, 1), R0, t, scan, field, joints, cand, 0.01)
    torch.testing.assert_close(L, L_true, rtol=0, atol=1e-12)
    # float32 distances (sqdist): zero up to cancellation, ~1e-8 m^2 here
    assert float(ts.objective(rig, L[None], R0[None], t[None], scan, 0.01)) < 1e-6


def test_descendants():
    assert ts.descendants(16) == [16, 18, 20, 22]
    assert ts.descendants(1) == [1, 4, 7, 10]
    assert ts.descendants(9) == [9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]
    assert ts.descendants(0) == list(range(24))


def test_weighted_kabsch_and_body_icp_recover_planted_motions(body):
    """``_kabsch_weighted`` returns the motion src -> dst (zero-weight outliers ignored), and
    ``rigid_icp_body`` moves a displaced body back onto a scan of itself."""
    g = torch.Generator().manual_seed(5)
    R = random_rotation_matrix(1, generator=g, dtype=F64)[0]
    t = torch.tensor([0.3, -0.1, 0.2], dtype=F64)
    src = torch.randn(50, 3, generator=g, dtype=F64)
    dst = src @ R.T + t
    w = torch.ones(50, dtype=F64)
    dst[:5] += 10.0  # outliers with zero weight
    w[:5] = 0
    dR, dt = ts._kabsch_weighted(src, dst, w)
    torch.testing.assert_close(dR, R, rtol=0, atol=1e-12)
    torch.testing.assert_close(dt, t, rtol=0, atol=1e-12)

    rig = ts.Rig(body, torch.zeros(10, dtype=F64), m=10_000)
    L = torch.eye(3, dtype=F64).repeat(24, 1, 1)
    R0 = random_rotation_matrix(1, generator=g, dtype=F64)[0]
    t0 = torch.tensor([0.05, 0.1, -0.2], dtype=F64)
    G, P = rig.fk(L[None], R0[None], t0[None])
    scan = rig.verts(G, P)[0]
    turn = axis_angle_to_matrix(torch.tensor([0.1, -0.15, 0.2], dtype=F64))  # 15 degrees
    R1, t1 = ts.rigid_icp_body(rig, L, turn @ R0, t0 + 0.02, scan, iters=30)
    torch.testing.assert_close(R1, R0, rtol=0, atol=1e-6)
    torch.testing.assert_close(t1, t0, rtol=0, atol=1e-6)


def test_descend_keeps_the_current_value_when_no_candidate_is_better(body):
    """Starting at the planted pose with a grid that does not contain it, the descent keeps
    the current locals (they are a candidate; dropping them would move the arm)."""
    rig = ts.Rig(body, torch.zeros(10, dtype=F64), m=10_000)
    joints, cand = ts.chain_specs()[2]
    L = torch.eye(3, dtype=F64).repeat(24, 1, 1)
    L[16] = ts._euler_grid(16, (1, 1, 1))[0] @ axis_angle_to_matrix(
        torch.tensor([0.05, 0.07, -0.04], dtype=F64))  # off the grid
    R0, t = torch.eye(3, dtype=F64), torch.zeros(3, dtype=F64)
    G, P = rig.fk(L[None], R0[None], t[None])
    scan = rig.verts(G, P)[0]
    got = ts.descend(rig, L, R0, t, scan, ts.ScanField(scan), joints, cand, 0.01)
    torch.testing.assert_close(got, L, rtol=0, atol=0)
