"""Physical plausibility (apps/assembly/_plausibility.py): contact/penetration counts
against a brute-force loop, a box cut in two halves with a known answer, the contact ICP,
hypothesis selection with its no-regression fallback, and the pipeline's "select" method
(equivariance in float64, degenerate pieces)."""

from __future__ import annotations

import math

import pytest
import torch
from geo3d.apps.assembly._pipeline import assemble_from_outputs
from geo3d.apps.assembly._plausibility import (
    assembly_score,
    contact_penetration,
    icp_contact,
    rotation_grid,
    select_hypotheses,
)

from geo3d.rotations import random_rotation_matrix

F64 = torch.float64


def _box(lo, hi, d):
    """Points at the cell centres of a grid of spacing ``d`` on each face of the box
    ``[lo, hi]`` (no point on an edge), and their outward normals."""
    pts, nrm = [], []
    for ax in range(3):
        u, v = [a for a in range(3) if a != ax]
        nu = max(1, round((hi[u] - lo[u]) / d))
        nv = max(1, round((hi[v] - lo[v]) / d))
        gu = lo[u] + (torch.arange(nu, dtype=F64) + 0.5) * (hi[u] - lo[u]) / nu
        gv = lo[v] + (torch.arange(nv, dtype=F64) + 0.5) * (hi[v] - lo[v]) / nv
        U, V = torch.meshgrid(gu, gv, indexing="ij")
        for side, val in ((-1.0, lo[ax]), (1.0, hi[ax])):
            p = torch.zeros(U.numel(), 3, dtype=F64)
            p[:, u], p[:, v], p[:, ax] = U.flatten(), V.flatten(), val
            n = torch.zeros_like(p)
            n[:, ax] = side
            pts.append(p)
            nrm.append(n)
    return torch.cat(pts), torch.cat(nrm)


D = 0.1
HALF_A = _box((-1.0, -0.5, -0.5), (0.0, 0.5, 0.5), D)  # cut face x = 0, normal +x
HALF_A[0][:, 0] *= 1.2  # x in [-1.2, 0]: the larger piece (the pipeline's anchor); same count
HALF_B = _box((0.0, -0.5, -0.5), (1.0, 0.5, 0.5), D)  # cut face x = 0, normal -x
N_CUT = 100  # 10 x 10 points on each cut face
KW = dict(contact_radius=1.5 * D, pen_radius=3 * D, pen_depth=0.5 * D)


def _shift(x, n, dx, dy=0.0, dz=0.0):
    return x + torch.tensor([dx, dy, dz], dtype=F64), n


def _brute(x, nx, y, ny, contact_radius, pen_radius, pen_depth, cos_opposite=-0.5):
    """Plain Python loops: for every point, its nearest point on the other piece."""
    def side(q, nq, s, ns):
        c = p = 0
        for i in range(len(q)):
            best, bj = math.inf, -1
            for j in range(len(s)):
                dd = math.dist(q[i], s[j])
                if dd < best:
                    best, bj = dd, j
            dot = sum(a * b for a, b in zip(ns[bj], nq[i], strict=True))
            sd = sum(a * (b - cc) for a, b, cc in zip(ns[bj], q[i], s[bj], strict=True))
            c += best <= contact_radius and dot < cos_opposite
            p += best <= pen_radius and sd < -pen_depth
        return c, p

    c1, p1 = side(y.tolist(), ny.tolist(), x.tolist(), nx.tolist())
    c2, p2 = side(x.tolist(), nx.tolist(), y.tolist(), ny.tolist())
    return c1 + c2, p1 + p2


class TestContactPenetration:
    def test_brute_force_counts(self):
        g = torch.Generator().manual_seed(3)
        x = torch.rand(40, 3, generator=g, dtype=F64)
        y = torch.rand(35, 3, generator=g, dtype=F64) + 0.3
        nx = torch.nn.functional.normalize(torch.randn(40, 3, generator=g, dtype=F64), dim=-1)
        ny = torch.nn.functional.normalize(torch.randn(35, 3, generator=g, dtype=F64), dim=-1)
        kw = dict(contact_radius=0.2, pen_radius=0.3, pen_depth=0.02)
        c, p = contact_penetration(x, nx, y, ny, **kw)
        cb, pb = _brute(x, nx, y, ny, **kw)
        assert (float(c), float(p)) == (cb, pb)
        assert cb > 0 and pb > 0  # the scene exercises both counts

    def test_box_halves_known_answer(self):
        (xa, na), (xb, nb) = HALF_A, HALF_B
        c, p = contact_penetration(xa, na, xb, nb, **KW)
        # true pose: the two cut faces coincide point for point, nothing is inside
        assert (float(c), float(p)) == (2 * N_CUT, 0.0)
        assert (float(c), float(p)) == _brute(xa, na, xb, nb, **KW)
        sep = contact_penetration(xa, na, *_shift(xb, nb, 0.5), **KW)
        # (off-grid in y, z: no nearest-neighbour distance ties)
        pen = contact_penetration(xa, na, *_shift(xb, nb, -0.3, 0.0123, 0.0071), **KW)
        assert [float(v) for v in sep] == [0.0, 0.0]
        assert tuple(float(v) for v in pen) == _brute(xa, na, *_shift(xb, nb, -0.3, 0.0123, 0.0071), **KW)
        score = lambda cp: float(cp[0] - cp[1])  # noqa: E731
        assert score((c, p)) > score(pen) and score((c, p)) > score(sep)
        assert float(pen[1]) > 0

    def test_batched_placements_match_single(self):
        (xa, na), (xb, nb) = HALF_A, HALF_B
        shifts = [0.0, 0.05, -0.3, 0.5]
        yb = torch.stack([_shift(xb, nb, s)[0] for s in shifts])
        c, p = contact_penetration(xa, na, yb, nb.expand(4, -1, -1), **KW)
        for k, s in enumerate(shifts):
            c1, p1 = contact_penetration(xa, na, *_shift(xb, nb, s), **KW)
            assert (float(c[k]), float(p[k])) == (float(c1), float(p1))

    def test_bad_input(self):
        x = torch.zeros(4, 3)
        with pytest.raises(ValueError, match="contact_radius"):
            contact_penetration(x, x, x, x, contact_radius=0.0, pen_radius=1.0)
        with pytest.raises(ValueError, match="ny"):
            contact_penetration(x, x, x, torch.zeros(3, 3), contact_radius=1.0, pen_radius=1.0)


def test_rotation_grid_formula():
    R = rotation_grid(64)
    eye = torch.eye(3, dtype=F64).expand(64, 3, 3)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(64, dtype=F64))
    # sample i = 0 of Alexa's super-Fibonacci spiral, written out with math
    s, n = 0.5, 64
    r, rr = math.sqrt(s / n), math.sqrt(1 - s / n)
    a, b = 2 * math.pi * s / math.sqrt(2), 2 * math.pi * s / 1.533751168755204288118041
    w, x, y, z = r * math.sin(a), r * math.cos(a), rr * math.sin(b), rr * math.cos(b)
    ref = torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]],
                       dtype=F64)
    torch.testing.assert_close(R[0], ref, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="n"):
        rotation_grid(0)


def test_icp_closes_the_normal_gap_only():
    """Point-to-plane ICP on two flat cut faces: the gap along the normal and the tilt
    close; the in-plane offset is unobservable and stays."""
    (xa, na), (xb, nb) = HALF_A, HALF_B
    G = torch.eye(4, dtype=F64)[None].clone()
    G[0, :3, 3] = torch.tensor([0.06, 0.02, 0.0], dtype=F64)
    out = icp_contact(xa, na, xb, nb, G, radius=1.5 * D, steps=8)
    torch.testing.assert_close(out[0, :3, :3], torch.eye(3, dtype=F64), rtol=0, atol=1e-9)
    torch.testing.assert_close(out[0, :3, 3], torch.tensor([0.0, 0.02, 0.0], dtype=F64),
                               rtol=0, atol=1e-9)


def _scene(generator, wrong_top1=True):
    """Two box halves (jittered: no distance ties) in random input poses and a fake
    equivariant network: its poses are the truth composed with the input pose; piece 1's
    top-scored hypothesis is separated by 0.5 (if ``wrong_top1``), its second the truth."""
    (xa, na), (xb, nb) = HALF_A, HALF_B
    x = torch.stack([xa, xb])
    x = x + 0.002 * torch.randn(x.shape, generator=generator, dtype=F64)
    n = torch.stack([na, nb])
    A = torch.eye(4, dtype=F64).repeat(2, 1, 1)
    A[:, :3, :3] = random_rotation_matrix(2, generator=generator, dtype=F64)
    A[:, :3, 3] = torch.randn(2, 3, generator=generator, dtype=F64)
    p = x @ A[:, :3, :3].transpose(-1, -2) + A[:, None, :3, 3]
    pn = n @ A[:, :3, :3].transpose(-1, -2)
    truth = torch.linalg.inv(A)  # input -> assembled
    off = torch.eye(4, dtype=F64)
    off[0, 3] = 0.5
    hyp = torch.stack([truth, truth, truth], 1)  # (2, 3, 4, 4)
    if wrong_top1:
        hyp[1, 0] = off @ truth[1]
    hyp[1, 2] = off.inverse() @ truth[1]  # interpenetrating
    logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]], dtype=F64)
    out = {"rot": hyp[:, 0, :3, :3][None], "trans": hyp[:, 0, :3, 3][None],
           "hyp_rot": hyp[..., :3, :3][None], "hyp_trans": hyp[..., :3, 3][None],
           "hyp_logits": logits[None]}
    return p, pn, truth, out


def _placed(p, T):
    return p @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


class TestSelect:
    def test_picks_the_touching_hypothesis(self):
        g = torch.Generator().manual_seed(0)
        p, pn, truth, out = _scene(g)
        T, info = select_hypotheses(p, pn, torch.ones(2, dtype=torch.bool), 0,
                                    torch.stack([truth[0], _net(out)[1]]),
                                    _hyp(out), out["hyp_logits"][0], icp_steps=0)
        assert info["moved"] and info["choice"] == [-1, 1]
        torch.testing.assert_close(T, truth, rtol=0, atol=1e-12)

    def test_no_move_on_weak_evidence(self):
        """When the network's assembly is already the most plausible one, its poses come
        back bit for bit (ICP would otherwise nudge them)."""
        g = torch.Generator().manual_seed(1)
        p, pn, truth, out = _scene(g, wrong_top1=False)
        net = _net(out)
        T, info = select_hypotheses(p, pn, torch.ones(2, dtype=torch.bool), 0, net,
                                    _hyp(out), out["hyp_logits"][0])
        assert not info["moved"]
        assert torch.equal(T, net)
        # a margin larger than any achievable gain: the network's (wrong) poses are kept
        p, pn, truth, out = _scene(torch.Generator().manual_seed(2))
        net = _net(out)
        T, info = select_hypotheses(p, pn, torch.ones(2, dtype=torch.bool), 0, net,
                                    _hyp(out), out["hyp_logits"][0], margin=1e9)
        assert not info["moved"] and torch.equal(T, net)

    @pytest.mark.parametrize("normals", [True, False])
    def test_pipeline_select_is_invariant_to_piece_motions(self, normals):
        g = torch.Generator().manual_seed(5)
        p, pn, truth, out = _scene(g)
        valid = torch.ones(1, 2, dtype=torch.bool)
        kw = dict(method="select")
        T1 = assemble_from_outputs(p[None], valid, out, normals=pn[None] if normals else None,
                                   **kw)[0]
        # move every input piece by a random rigid motion; the equivariant network's poses
        # become T g⁻¹
        M = torch.eye(4, dtype=F64).repeat(2, 1, 1)
        M[:, :3, :3] = random_rotation_matrix(2, generator=g, dtype=F64)
        M[:, :3, 3] = 10 * torch.randn(2, 3, generator=g, dtype=F64)
        q = _placed(p, M)
        qn = pn @ M[:, :3, :3].transpose(-1, -2)
        Mi = torch.linalg.inv(M)
        out2 = dict(out)
        H = torch.eye(4, dtype=F64).repeat(1, 2, 3, 1, 1)
        H[..., :3, :3], H[..., :3, 3] = out["hyp_rot"], out["hyp_trans"]
        H = H @ Mi[None, :, None]
        out2["hyp_rot"], out2["hyp_trans"] = H[..., :3, :3], H[..., :3, 3]
        Tn = torch.eye(4, dtype=F64).repeat(1, 2, 1, 1)
        Tn[..., :3, :3], Tn[..., :3, 3] = out["rot"], out["trans"]
        Tn = Tn @ Mi[None]
        out2["rot"], out2["trans"] = Tn[..., :3, :3], Tn[..., :3, 3]
        T2 = assemble_from_outputs(q[None], valid, out2, normals=qn[None] if normals else None,
                                   **kw)[0]
        torch.testing.assert_close(_placed(q, T2), _placed(p, T1), rtol=0, atol=1e-9)
        # and the touching hypothesis won (the others are 0.5 off); the contact ICP nudges
        # it in-plane by up to ~0.03 with estimated normals (tilted at the box's edges)
        torch.testing.assert_close(_placed(p, T1), _placed(p, truth), rtol=0, atol=0.05)

    def test_degenerate_pieces(self):
        """Duplicated points and a planar piece: finite rigid poses, the same choice."""
        g = torch.Generator().manual_seed(7)
        p, pn, truth, out = _scene(g)
        p = torch.cat([p, p], 1)  # every point twice
        pn = torch.cat([pn, pn], 1)
        T = assemble_from_outputs(p[None], torch.ones(1, 2, dtype=torch.bool), out,
                                  method="select")[0]
        torch.testing.assert_close(_placed(p, T), _placed(p, truth), rtol=0, atol=1e-2)
        flat = torch.randn(2, 50, 3, generator=g, dtype=F64)
        flat[..., 2] = 0.0
        out_f = {k: v for k, v in out.items()}
        T = assemble_from_outputs(flat[None], torch.ones(1, 2, dtype=torch.bool), out_f,
                                  method="select")[0]
        assert bool(torch.isfinite(T).all())
        R = T[:, :3, :3]
        torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=F64).expand(2, 3, 3),
                                   rtol=0, atol=1e-9)

    def test_errors(self):
        g = torch.Generator().manual_seed(8)
        p, pn, truth, out = _scene(g)
        valid = torch.ones(1, 2, dtype=torch.bool)
        with pytest.raises(ValueError, match="select_kwargs"):
            assemble_from_outputs(p[None], valid, out, method="select",
                                  select_kwargs={"nope": 1})
        bad = dict(out, hyp_logits=torch.zeros(1, 2, 5, dtype=F64))
        with pytest.raises(ValueError, match="hyp_logits"):
            assemble_from_outputs(p[None], valid, bad, method="select")
        v2 = torch.ones(2, dtype=torch.bool)
        with pytest.raises(ValueError, match="hyp_logits"):
            select_hypotheses(p, pn, v2, 0, _net(out), _hyp(out), torch.zeros(2, 4, dtype=F64))
        with pytest.raises(ValueError, match="anchor"):
            select_hypotheses(p, pn, v2, 2, _net(out), _hyp(out), out["hyp_logits"][0])
        with pytest.raises(ValueError, match="normals"):
            select_hypotheses(p, pn[:, :5], v2, 0, _net(out))
        with pytest.raises(ValueError, match="'rot'"):
            assemble_from_outputs(p[None], valid, {"desc": torch.zeros(1, 2, p.shape[1], 4)},
                                  method="select")


def _net(out):
    T = torch.eye(4, dtype=F64).repeat(2, 1, 1)
    T[:, :3, :3], T[:, :3, 3] = out["rot"][0], out["trans"][0]
    return T


def _hyp(out):
    H = torch.eye(4, dtype=F64).repeat(2, 3, 1, 1)
    H[..., :3, :3], H[..., :3, 3] = out["hyp_rot"][0], out["hyp_trans"][0]
    return H


def test_assembly_score_sums_pairs():
    (xa, na), (xb, nb) = HALF_A, HALF_B
    pts, nrm = torch.stack([xa, xb]), torch.stack([na, nb])
    T = torch.eye(4, dtype=F64).repeat(2, 1, 1)
    s = assembly_score(pts, nrm, T, **KW)
    assert float(s) == 2 * N_CUT
    T2 = T.clone()
    T2[1, 0, 3] = 0.5
    assert float(assembly_score(pts, nrm, torch.stack([T, T2]), **KW)[1]) == 0.0


def test_pair_search_moves_with_the_pieces():
    """Candidates of the complementary-surface search are computed in the pieces'
    principal frames: moving piece A by M_a and piece B by M_b turns every relative pose
    G into M_a G M_b⁻¹ with the same scores (float64; generic pieces: distinct covariance
    eigenvalues and skewed, as the principal frame needs)."""
    from geo3d.apps.assembly._plausibility import pair_search
    from geo3d.apps.assembly._refine import estimate_normals

    g = torch.Generator().manual_seed(11)
    scale = torch.tensor([1.0, 0.6, 0.3], dtype=F64)
    xa = torch.randn(80, 3, generator=g, dtype=F64) * scale
    xb = torch.randn(70, 3, generator=g, dtype=F64) * scale
    xa, xb = xa + 0.3 * xa ** 2, xb - 0.3 * xb ** 2 + 1.0
    na, nb = estimate_normals(xa, k=8), estimate_normals(xb, k=8)
    G1, s1 = pair_search(xa, na, xb, nb, rotations=64, top=16, icp_steps=2)
    M = torch.eye(4, dtype=F64).repeat(2, 1, 1)
    M[:, :3, :3] = random_rotation_matrix(2, generator=g, dtype=F64)
    M[:, :3, 3] = 5 * torch.randn(2, 3, generator=g, dtype=F64)
    G2, s2 = pair_search(_placed(xa, M[0]), na @ M[0, :3, :3].T, _placed(xb, M[1]),
                         nb @ M[1, :3, :3].T, rotations=64, top=16, icp_steps=2)
    assert torch.equal(s1, s2) and float(s1[0]) > 0
    torch.testing.assert_close(G2, M[0] @ G1 @ torch.linalg.inv(M[1]), rtol=0, atol=1e-9)
