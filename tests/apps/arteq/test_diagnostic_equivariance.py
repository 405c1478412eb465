"""``benchmarks/arteq_diagnostic.py``: ``--equivariance``, the measured equivariance error
behind the recorded chordal-readout figures (docs/arteq_experiments.md): an exact net reads
~0, a net that ignores the rotation reads the rotation angles of the drawn ``g`` (checked
with scipy), and the chordal readout reads a nonzero error; and ``seg_errors``, the kinds of
segmentation error, by anatomy, against a brute force by joint name, and by geometry."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from geo3d.apps.arteq._model import ArtEqNet
from scipy.spatial.transform import Rotation

from geo3d.rotations import random_rotation_matrix

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
diag = pytest.importorskip("arteq_diagnostic")

CFG = {"k": 8, "feat_dim": 8, "hidden": (8, 8), "d_model": 32, "num_heads": 2, "rot_hidden": 8,
       "batch_norm": False, "seg_norms": True, "chiral": True, "normalize_invariants": True,
       "pool_power": 16.0, "part_geometry": True, "rot_context": "geometry",
       "seg_descriptors": True}


def _cloud(S: int, N: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(S, N, 3, generator=g) * torch.tensor([0.8, 0.4, 0.2])


class _Frozen(torch.nn.Module):
    """Ignores its input's orientation: part rotations always the identity."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> dict:
        B, N, _ = x.shape
        eye = torch.eye(3, dtype=x.dtype).expand(B, 22, 3, 3) + 0 * self.w
        logits = (x - x.mean(1, keepdim=True)).norm(dim=-1, keepdim=True).expand(B, N, 22)
        return {"part_rot": eye, "betas": torch.zeros(B, 10, dtype=x.dtype),
                "part_logits": logits * torch.arange(22, dtype=x.dtype)}


def test_exact_net_reads_rounding_only():
    # the svd readout is exactly SE(3)-equivariant: a wrong side of g (g R vs R g) or a
    # missing translation in the measurement would show degrees here
    torch.manual_seed(0)
    net = ArtEqNet("vn_dgcnn", **CFG).eval()
    r = diag.equivariance_error(net, _cloud(2, 70), rotations=3)
    assert r["num_scans"] == 2 and r["rotations_per_scan"] == 3
    assert r["part_rot_err_deg_max"] < 1e-8
    assert r["betas_max_abs_diff"] < 1e-10
    assert r["part_label_flip_frac"] == 0.0
    assert next(net.parameters()).dtype == torch.float32  # measured on a float64 copy


def test_rotation_blind_net_reads_the_angles_of_g():
    # part_rot = I whatever the input: the error of every part is the angle of g, so the
    # mean / median / max are those of the drawn rotations (same generator, scipy angles)
    S, rot = 2, 4
    r = diag.equivariance_error(_Frozen(), _cloud(S, 50, seed=1), rotations=rot, seed=3)
    gen = torch.Generator().manual_seed(3)
    ang = []
    for _ in range(S * rot):
        g = random_rotation_matrix(generator=gen, dtype=torch.float64)
        torch.randn(3, generator=gen, dtype=torch.float64)  # the translation draw
        ang.append(np.degrees(Rotation.from_matrix(g.numpy()).magnitude()))
    ang = np.repeat(np.array(ang), 22)
    np.testing.assert_allclose(r["part_rot_err_deg_mean"], ang.mean(), rtol=1e-9)
    np.testing.assert_allclose(r["part_rot_err_deg_max"], ang.max(), rtol=1e-9)
    np.testing.assert_allclose(r["part_rot_err_deg_median"], np.sort(ang)[(len(ang) - 1) // 2],
                               rtol=1e-9)
    assert r["betas_max_abs_diff"] == 0.0
    assert r["part_label_flip_frac"] == 0.0  # the logits are invariant norms


def test_chordal_readout_reads_a_nonzero_error():
    # exact for 60 elements only: Haar rotations fall between them
    torch.manual_seed(2)
    net = ArtEqNet("vn_dgcnn", **{**CFG, "rot_readout": "chordal"}).eval()
    r = diag.equivariance_error(net, _cloud(1, 80, seed=6), rotations=2)
    assert r["part_rot_err_deg_mean"] > 1e-4
    assert r["betas_max_abs_diff"] < 1e-10  # betas do not go through the readout


@pytest.mark.parametrize("points, rotations, match", [
    (torch.zeros(0, 10, 3), 2, "points"),          # no scans: torch.cat on an empty list
    (torch.zeros(10, 3), 2, "points"),             # one cloud without the scan axis
    (torch.zeros(1, 10, 2), 2, "points"),
    ([torch.zeros(10, 3)], 2, "points"),
    (torch.zeros(1, 10, 3), 0, "rotations"),
    (torch.zeros(1, 10, 3), 2.5, "rotations"),
])
def test_bad_arguments_name_the_argument(points, rotations, match):
    with pytest.raises(ValueError, match=match):
        diag.equivariance_error(_Frozen(), points, rotations=rotations)


def test_seg_error_kinds_by_anatomy():
    # true left knee (4) predicted as: itself, the right knee (mirror), the left hip (parent),
    # the left ankle (child), the right hip (the parent's mirror image), the head (distant);
    # spine3 (9) as the left collar (a child) and the right knee (distant); a mirror map that
    # swaps the wrong pair or an adjacency with the parents' direction only fails here
    t = torch.tensor([[4, 4, 4, 4, 4, 4, 9, 9]])
    p = torch.tensor([[4, 5, 1, 7, 2, 15, 13, 5]])
    r = diag.seg_error_kinds(p, t)
    assert r == {"correct": 1 / 8, "mirror": 1 / 8, "neighbour": 3 / 8,
                 "mirror_neighbour": 1 / 8, "distant": 2 / 8,
                 "distant_top": [("left_knee -> head", 1 / 8), ("spine3 -> right_knee", 1 / 8)]}


def test_seg_error_kinds_sum_to_one():
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 22, (3, 500), generator=g)
    p = torch.where(torch.rand(3, 500, generator=g) < 0.4, t,
                    torch.randint(0, 22, (3, 500), generator=g))
    r = diag.seg_error_kinds(p, t)
    top = r.pop("distant_top")
    np.testing.assert_allclose(sum(r.values()), 1.0, rtol=0, atol=1e-12)
    # the top pairs against a brute force over (true, predicted) pairs by name: neither the
    # part, its mirror, a tree neighbour nor a neighbour's mirror; the five largest counts
    from geo3d.body import SMPL_PARENTS
    from geo3d.body._kinematics import SMPL_JOINT_NAMES as names

    def mirror(n):
        return n.replace("left", "@").replace("right", "left").replace("@", "right")

    def near(a, b):
        return SMPL_PARENTS[a] == b or SMPL_PARENTS[b] == a

    counts = {}
    for a, b in zip(t.flatten().tolist(), p.flatten().tolist(), strict=True):
        if a == b or names[b] == mirror(names[a]) or near(a, b) \
                or near(a, names.index(mirror(names[b]))):
            continue
        counts[(a, b)] = counts.get((a, b), 0) + 1
    want = sorted(counts.values(), reverse=True)[:5]
    assert [f for _, f in top] == [c / t.numel() for c in want]
    for pair, f in top:
        a, b = (names.index(x) for x in pair.split(" -> "))
        assert counts[(a, b)] / t.numel() == f


def test_seg_error_near_far_by_geometry():
    # points on a line 4 cm apart; true parts: 0 0 0 | 3 3 3 | 6 6 6 (pelvis, spine1, spine2)
    # point 3 predicted as 0 (4 cm from point 2: near), point 8 predicted as 0
    # (24 cm from point 2: far), point 5 predicted as 15 (head: no head point, far)
    x = torch.zeros(1, 9, 3, dtype=torch.float64)
    x[0, :, 0] = 0.04 * torch.arange(9, dtype=torch.float64)
    t = torch.tensor([[0, 0, 0, 3, 3, 3, 6, 6, 6]])
    p = torch.tensor([[0, 0, 0, 0, 3, 15, 6, 6, 0]])
    r = diag.seg_error_kinds(p, t, x, near_m=0.1)
    assert r["wrong_near"] == 1 / 9 and r["wrong_far"] == 2 / 9
    # a threshold below the spacing makes the boundary error far
    r = diag.seg_error_kinds(p, t, x, near_m=0.03)
    assert r["wrong_near"] == 0.0 and r["wrong_far"] == 3 / 9
    assert "wrong_near" not in diag.seg_error_kinds(p, t)
