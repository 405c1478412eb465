"""Degenerate extents and bad arguments in the assembly pipeline (fresh-user findings):
one match / identical points / zero-extent pieces must give the documented identity +
score 0 (never 'inlier_thresh ... got 0.0'); bad arguments raise one-line ValueErrors
naming the argument."""

from __future__ import annotations

import pytest
import torch
from geo3d.apps.assembly._matching import pairwise_poses, ransac_kabsch
from geo3d.apps.assembly._pipeline import assemble_from_outputs

F64 = torch.float64
EYE3 = torch.eye(3, dtype=F64)


class TestZeroExtent:
    @pytest.mark.parametrize("m", [0, 1, 2])
    def test_fewer_than_three_matches(self, m, generator):
        x = torch.randn(m, 3, generator=generator, dtype=F64)
        R, t, s, inl = ransac_kabsch(x, x + 2.0, return_inliers=True, generator=generator)
        assert torch.equal(R, EYE3) and torch.equal(t, torch.zeros(3, dtype=F64))
        assert float(s) == 0.0 and inl.shape == (m,) and not bool(inl.any())

    def test_all_points_identical(self):
        x = torch.ones(7, 3, dtype=F64)
        R, t, s = ransac_kabsch(x, x - 3.0)
        assert torch.equal(R, EYE3) and torch.equal(t, torch.zeros(3, dtype=F64))
        assert float(s) == 0.0

    def test_one_zero_extent_side_still_fits(self, generator):
        # only both sides degenerate falls back: a zero-extent x with a spread y is a real
        # (bad) fit whose threshold comes from y
        x = torch.zeros(6, 3, dtype=F64)
        y = 2.0 + 1e-3 * torch.randn(6, 3, generator=generator, dtype=F64)
        y[5] += 1.0  # one outlier
        R, t, s, inl = ransac_kabsch(x, y, generator=generator, return_inliers=True)
        torch.testing.assert_close(R @ R.T, EYE3)
        assert inl.tolist() == [True] * 5 + [False] and float(s) == 5.0
        torch.testing.assert_close(t, y[:5].mean(0))  # least squares y ≈ t on the inliers

    def test_two_zero_extent_pieces_pairwise_and_pipeline(self, generator):
        pts = torch.zeros(1, 3, 32, 3, dtype=F64)
        pts[0, 1] += 1.0
        pts[0, 2] = torch.randn(32, 3, generator=generator, dtype=F64)
        d = torch.randn(32, 8, generator=generator, dtype=F64).expand(1, 3, 32, 8)
        pw = pairwise_poses(pts[0], d[0], None, torch.ones(3, dtype=torch.bool),
                            min_points=3, generator=generator)
        assert float(pw.score[0, 1]) == 0.0 and (0, 1) not in pw.matches
        assert torch.equal(pw.rel[0, 1], torch.eye(4, dtype=F64))
        assert float(pw.thresh[0, 1]) == 0.0 and float(pw.thresh[0, 2]) > 0
        T = assemble_from_outputs(pts, torch.ones(1, 3, dtype=torch.bool), {"desc": d},
                                  generator=generator, min_points=3)
        assert T.shape == (1, 3, 4, 4) and bool(torch.isfinite(T).all())
        torch.testing.assert_close(T[0, :, :3, :3] @ T[0, :, :3, :3].transpose(-1, -2),
                                   EYE3.expand(3, 3, 3))


class _IndexDescriptorModel(torch.nn.Module):
    """Stand-in network whose outputs do not depend on the points: descriptor = a fixed
    random vector per point index (the same for every piece), identity poses. Isolates the
    pipeline after the network (matching, RANSAC, refinement) from the float32 network."""

    def __init__(self, n: int, c: int = 16):
        super().__init__()
        self.register_buffer("d", torch.randn(n, c, generator=torch.Generator().manual_seed(1)))

    def forward(self, x, valid):
        B, P, N, _ = x.shape
        return {"desc": self.d.expand(B, P, N, -1), "rot": torch.eye(3).expand(B, P, 3, 3),
                "trans": torch.zeros(B, P, 3)}


def _overlapping_pieces(seed: int) -> list[torch.Tensor]:
    # 3 pieces sharing 24 surface points (index n <-> index n, each copy rigidly moved and
    # perturbed by 1e-3 so the fit is not exact) plus 8 own points each; piece 0 is the
    # largest (the anchor)
    g = torch.Generator().manual_seed(seed)
    from geo3d.rotations import random_rotation_matrix

    common = torch.randn(24, 3, generator=g, dtype=F64) * 0.3
    out = []
    for i in range(3):
        own = torch.randn(8, 3, generator=g, dtype=F64) * (1.0 if i == 0 else 0.3)
        R = random_rotation_matrix(1, generator=g, dtype=F64)[0]
        p = torch.cat([common + 1e-3 * torch.randn(24, 3, generator=g, dtype=F64), own])
        out.append(p @ R.T + torch.randn(3, generator=g, dtype=F64))
    return out


def test_assemble_pipeline_runs_in_float64():
    """Moving one (non-anchor) input piece rigidly moves only that piece's input: the
    assembled object must not change (refinement on, fixed generator). With the pipeline
    on the float32 network input this changed it by 1e-6..1e-2."""
    from geo3d.apps.assembly import assemble

    from geo3d.rotations import random_rotation_matrix

    model = _IndexDescriptorModel(32)
    pieces = _overlapping_pieces(0)
    g = torch.Generator().manual_seed(5)
    R = random_rotation_matrix(1, generator=g, dtype=F64)[0]
    t = torch.tensor([30.0, -7.0, 2.5], dtype=F64)
    moved = list(pieces)
    moved[2] = pieces[2] @ R.T + t

    def placed(ps):
        T = assemble(ps, model, num_points=32, generator=torch.Generator().manual_seed(0),
                     refine=True)
        return torch.stack([p @ T[i, :3, :3].T + T[i, :3, 3] for i, p in enumerate(ps)])

    a, b = placed(pieces), placed(moved)
    # the shared points of pieces 1, 2 land on those of the anchor (the fit worked) ...
    assert float((a[1:, :24] - a[0, :24]).norm(dim=-1).max()) < 1e-2
    # ... and the object does not depend on piece 2's input pose
    assert float((a - b).abs().max()) < 1e-9


def test_assemble_refine_must_be_a_bool():
    from geo3d.apps.assembly import assemble

    with pytest.raises(ValueError, match="refine"):
        assemble(_overlapping_pieces(0), _IndexDescriptorModel(32), num_points=32,
                 refine="no")


# ----------------------------------------------------------------------------- bad arguments
def _scene(seed: int = 0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(1, 2, 32, 3, generator=g, dtype=F64)
    pts[0, 1] = pts[0, 0] + 0.5
    d = torch.randn(32, 8, generator=g, dtype=F64).expand(1, 2, 32, 8)
    return pts.to(dtype), torch.ones(1, 2, dtype=torch.bool), {"desc": d.to(dtype)}


class TestBadArguments:
    def test_refine_matches_out_of_range(self):
        from geo3d.apps.assembly._refine import assembly_energy, refine_poses

        pts = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
        T = torch.eye(4, dtype=F64).repeat(2, 1, 1)
        one = torch.ones(3, dtype=F64)
        ok = torch.tensor([0, 1, 2])
        for m in ({(0, 2): (ok, ok, one)}, {(1, 1): (ok, ok, one)},
                  {(0, 1): (ok, torch.tensor([0, 1, 8]), one)},
                  {(0, 1): (torch.tensor([-1, 0, 1]), ok, one)},
                  {(0, 1): (ok, ok, -one)}, {(0, 1): (ok, ok[:2], one)}):
            with pytest.raises(ValueError, match="matches"):
                refine_poses(pts, T, m, 0)
            with pytest.raises(ValueError, match="matches"):
                assembly_energy(pts, T, m)

    def test_refine_non_rigid_start(self):
        from geo3d.apps.assembly._refine import refine_poses

        pts = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
        for bad in (torch.diag(torch.tensor([1.1, 1.0, 1.0, 1.0], dtype=F64)),  # scaled
                    torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=F64)),  # reflection
                    torch.full((4, 4), float("nan"), dtype=F64)):
            T = torch.eye(4, dtype=F64).repeat(2, 1, 1)
            T[1] = bad
            with pytest.raises(ValueError, match="poses"):
                refine_poses(pts, T, None, 0)
        # an invalid (padded) piece's pose is not looked at; float32 rounding is accepted
        T = torch.eye(4, dtype=F64).repeat(2, 1, 1)
        T[1] = torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0], dtype=F64))
        refine_poses(pts, T, None, 0, valid=torch.tensor([True, False]))
        from geo3d.rotations import random_rotation_matrix

        T[1, :3, :3] = random_rotation_matrix(1, generator=torch.Generator().manual_seed(0))[0]
        refine_poses(pts, T, None, 0, steps=1)

    def test_refine_steps_consistent(self):
        from geo3d.apps.assembly._refine import refine_poses

        pts, valid, out = _scene()
        with pytest.raises(ValueError, match="refine_steps"):
            assemble_from_outputs(pts, valid, out, refine_steps=-1)
        with pytest.raises(ValueError, match="steps"):
            refine_poses(pts[0], torch.eye(4, dtype=F64).repeat(2, 1, 1), None, 0, steps=-1)
        with pytest.raises(ValueError, match="refine"):
            assemble_from_outputs(pts, valid, out, refine="no")

    def test_unknown_kwargs(self):
        pts, valid, out = _scene()
        with pytest.raises(ValueError, match="match_kwargs.*temprature"):
            assemble_from_outputs(pts, valid, out, match_kwargs={"temprature": 0.1})
        with pytest.raises(ValueError, match="refine_kwargs.*steps"):
            assemble_from_outputs(pts, valid, out, refine_kwargs={"steps": 3})
        with pytest.raises(ValueError, match="match_kwargs"):
            pairwise_poses(pts[0], out["desc"][0], tempreature=0.1)
        # a non-positive threshold is an error, not "every pair has zero extent"
        for bad in (0.0, -0.1, float("nan")):
            with pytest.raises(ValueError, match="rel_thresh"):
                pairwise_poses(pts[0], out["desc"][0], rel_thresh=bad)
        # known keys pass through
        assemble_from_outputs(pts, valid, out, match_kwargs={"temperature": 0.05},
                              refine_kwargs={"w_pen": 0.0}, min_points=3,
                              generator=torch.Generator().manual_seed(0))

    def test_global_assembly_non_finite_rel(self):
        from geo3d.apps.assembly._matching import global_assembly

        rel = torch.eye(4, dtype=F64).repeat(2, 2, 1, 1)
        rel[0, 1, 0, 3] = float("nan")
        score = torch.full((2, 2), 10.0, dtype=F64)
        with pytest.raises(ValueError, match="pairwise.*rel"):
            global_assembly((rel, score), 0)
        score[0, 1] = float("nan")
        with pytest.raises(ValueError, match="pairwise.*score"):
            global_assembly((torch.eye(4, dtype=F64).repeat(2, 2, 1, 1), score), 0)

    @pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
    def test_match_scores_must_be_probabilities(self, bad):
        from geo3d.apps.assembly._matching import match_pieces

        d = torch.eye(4, dtype=F64)
        s = torch.full((4,), 0.5, dtype=F64)
        s[2] = bad
        with pytest.raises(ValueError, match="score_a"):
            match_pieces(d, d, s, None)
        with pytest.raises(ValueError, match="score_b"):
            match_pieces(d, d, None, s)
        pts = torch.randn(2, 4, 3, dtype=F64)
        with pytest.raises(ValueError, match="score"):
            pairwise_poses(pts, d.expand(2, 4, 4), s.expand(2, 4))

    @pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
    def test_half_precision_matches_float32(self, half):
        # computed in float32 and cast back: equal to the float32 run on the same
        # (half-rounded) inputs, cast to half
        pts, valid, out = _scene(dtype=half)
        kw = dict(min_points=3, refine_steps=3)
        T = assemble_from_outputs(pts, valid, out, generator=torch.Generator().manual_seed(0),
                                  **kw)
        T32 = assemble_from_outputs(pts.float(), valid, {"desc": out["desc"].float()},
                                    generator=torch.Generator().manual_seed(0), **kw)
        assert T.dtype == half
        torch.testing.assert_close(T, T32.to(half), atol=0, rtol=0)
        from geo3d.apps.assembly._refine import refine_poses

        G = refine_poses(pts[0], torch.eye(4, dtype=half).repeat(2, 1, 1), None, 0, steps=2)
        assert G.dtype == half and bool(torch.isfinite(G).all())


def test_registration_baseline_zero_extent_target(open3d_module):
    from geo3d.apps.assembly._registration import register_pair

    src = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=F64).numpy()
    tgt = torch.full((16, 3), 2.0, dtype=F64).numpy()
    T = register_pair(src, tgt)  # default voxel = 3% of a zero diagonal
    expect = torch.eye(4, dtype=F64)
    expect[:3, 3] = torch.from_numpy(tgt.mean(0) - src.mean(0))
    torch.testing.assert_close(torch.from_numpy(T), expect, atol=0, rtol=0)
    with pytest.raises(ValueError, match="voxel"):
        register_pair(src, src, voxel=0.0)
