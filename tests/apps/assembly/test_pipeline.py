"""assemble_from_outputs with oracle descriptors on generated fractured objects: accuracy,
equivariance (float64 asserted, float32 measured), the network fallback and errors."""

from __future__ import annotations

import pytest
import torch
from geo3d.apps.assembly._matching_oracle import fractured_object, oracle_outputs, random_poses
from geo3d.apps.assembly._pipeline import STAGES, assemble_from_outputs

from geo3d.eval import anchor_parts
from geo3d.rotations import geodesic_distance, random_rotation_matrix

F64 = torch.float64


@pytest.fixture(scope="module")
def objects() -> dict[int, dict[str, torch.Tensor]]:
    return {P: fractured_object(P, 512, category="Sphere", seed=1) for P in (2, 4)}


def _inputs(obj: dict, seed: int, dtype: torch.dtype = F64, n: int = 512):
    """Pieces (their first ``n`` points) in random poses: input p = A x + a for assembled
    x; the true pose of piece i (input -> assembled) is T_i = [A_iᵀ, -A_iᵀ a_i]."""
    g = torch.Generator().manual_seed(seed)
    x = obj["assembled"][:, :n]
    P = x.shape[0]
    A = random_poses(P, g)
    p = x @ A[:, :3, :3].transpose(-1, -2) + A[:, None, :3, 3]
    gt = torch.linalg.inv(A)
    out = oracle_outputs(x, obj["fracture"][:, :n], bandwidth=0.02 * float(obj["diag"]), generator=g)
    out = {k: v[None].to(dtype) for k, v in out.items()}
    return p[None].to(dtype), gt, out


def _place(p: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    return p @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


@pytest.mark.parametrize("P", [2, 4])
def test_oracle_assembly_is_accurate(objects, P):
    obj = objects[P]
    p, gt, out = _inputs(obj, seed=10 + P)
    valid = torch.ones(1, P, dtype=torch.bool)
    tim: dict[str, float] = {}
    T = assemble_from_outputs(p, valid, out, generator=torch.Generator().manual_seed(0),
                              timings=tim)[0]
    a = int(anchor_parts(p, valid)[0])
    assert torch.equal(T[a], torch.eye(4, dtype=F64))  # no network poses: anchor in place
    # relative to the anchor, every piece must sit at its true pose
    rel_pred = torch.linalg.inv(T[a]) @ T
    rel_gt = torch.linalg.inv(gt[a]) @ gt
    err_deg = torch.rad2deg(geodesic_distance(rel_pred[:, :3, :3], rel_gt[:, :3, :3]))
    err_pts = (_place(p[0], rel_pred) - _place(p[0], rel_gt)).norm(dim=-1).mean(-1)
    assert float(err_deg.max()) < 1.0, err_deg
    assert float(err_pts.max()) < 0.005 * float(obj["diag"]), err_pts
    assert set(STAGES) <= set(tim) and tim["objects"] == 1
    assert tim["total"] >= tim["match"] + tim["ransac"] + tim["refine"]


def test_refinement_keeps_a_thin_walled_assembly():
    """Regression: a 2-piece bowl (thin walls). PCA normals oriented away from the centroid
    point the wrong way on the inner wall; unbounded penetration residuals then pushed
    the correct RANSAC assembly (1.2°) to 33°. Penetration now only counts within 5% of
    the piece scale of the other surface (2.5° measured)."""
    obj = fractured_object(2, 512, category="Bowl", seed=1)
    p, gt, out = _inputs(obj, seed=1)
    valid = torch.ones(1, 2, dtype=torch.bool)
    T = assemble_from_outputs(p, valid, out, generator=torch.Generator().manual_seed(1))[0]
    rel = torch.linalg.inv(T[0]) @ T[1]
    rel_gt = torch.linalg.inv(gt[0]) @ gt[1]
    err = torch.rad2deg(geodesic_distance(rel[:3, :3], rel_gt[:3, :3]))
    assert float(err) < 5.0, err


def test_without_refinement_and_with_mnn(objects):
    p, gt, out = _inputs(objects[2], seed=3)
    valid = torch.ones(1, 2, dtype=torch.bool)
    T = assemble_from_outputs(p, valid, out, refine=False, match_method="mnn",
                              generator=torch.Generator().manual_seed(0))[0]
    rel = torch.linalg.inv(T[0]) @ T[1]
    err = torch.rad2deg(geodesic_distance(rel[:3, :3], (torch.linalg.inv(gt[0]) @ gt[1])[:3, :3]))
    assert float(err) < 2.0


def _equivariance_gap(obj: dict, dtype: torch.dtype, refine: bool, shift: float) -> float:
    """Max |assembled(moved inputs) - assembled(inputs)| over all points."""
    p, gt, out = _inputs(obj, seed=7, dtype=dtype, n=256)
    P = p.shape[1]
    valid = torch.ones(1, P, dtype=torch.bool)
    out = dict(out)
    # adversarial: exact duplicate points (with their descriptors and scores) in every
    # piece, so nearest-neighbour and argmax ties must be broken the same way in any frame
    p[:, :, 1:40:3] = p[:, :, 0:39:3]
    for key in ("desc", "frac_score"):
        out[key] = out[key].clone()
        out[key][:, :, 1:40:3] = out[key][:, :, 0:39:3]
    # an equivariant "network": its poses are the truth perturbed by a fixed error
    err = random_poses(P, torch.Generator().manual_seed(5), shift=0.05)
    T_net = gt @ err
    out["rot"], out["trans"] = T_net[None, :, :3, :3].to(dtype), T_net[None, :, :3, 3].to(dtype)
    T1 = assemble_from_outputs(p, valid, out, refine=refine,
                               generator=torch.Generator().manual_seed(0))
    # move every input piece (the anchor too) by its own rigid motion g_i
    g = torch.Generator().manual_seed(11)
    M = torch.eye(4, dtype=F64).repeat(P, 1, 1)
    M[:, :3, :3] = random_rotation_matrix(P, generator=g, dtype=F64)
    M[:, :3, 3] = shift * torch.randn(P, 3, generator=g, dtype=F64)
    p2 = _place(p[0].to(F64), M).to(dtype)[None]
    T_net2 = T_net @ torch.linalg.inv(M)
    out2 = dict(out)
    out2["rot"], out2["trans"] = T_net2[None, :, :3, :3].to(dtype), \
        T_net2[None, :, :3, 3].to(dtype)
    T2 = assemble_from_outputs(p2, valid, out2, refine=refine,
                               generator=torch.Generator().manual_seed(0))
    y1 = _place(p[0].to(F64), T1[0].to(F64))
    y2 = _place(p2[0].to(F64), T2[0].to(F64))
    return float((y1 - y2).abs().max())


@pytest.mark.parametrize("refine", [False, True])
def test_equivariance_float64(objects, refine):
    """Rotating/translating any input piece (descriptors unchanged, network poses moved
    with it) leaves the assembled object unchanged."""
    gap = _equivariance_gap(objects[4], F64, refine, shift=100.0)
    assert gap < 1e-9, gap


def test_equivariance_float32_measured(objects):
    """float32: the same test, measured (1.4e-6 on this 1.46-diagonal object, 2026-11-30):
    float32 rounding of the moved coordinates (~1e-7 relative) amplified by RANSAC's
    refit and the LM steps; asserted with a 70x margin."""
    gap = _equivariance_gap(objects[4], torch.float32, True, shift=1.0)
    assert gap < 1e-4, gap


def test_network_method_and_missing_desc(objects):
    p, gt, out = _inputs(objects[2], seed=1, n=256)
    valid = torch.tensor([[True, True]])
    net = {"rot": gt[None, :, :3, :3], "trans": gt[None, :, :3, 3]}
    T = assemble_from_outputs(p, valid, {**out, **net}, method="network")
    torch.testing.assert_close(T[0], gt, rtol=0, atol=0)
    T2 = assemble_from_outputs(p, valid, net)  # no desc: network poses
    torch.testing.assert_close(T2, T, rtol=0, atol=0)
    # with network poses the anchor keeps its network pose
    T3 = assemble_from_outputs(p, valid, {**out, **net}, refine=False,
                               generator=torch.Generator().manual_seed(0))
    a = int(anchor_parts(p, valid)[0])
    torch.testing.assert_close(T3[0, a], gt[a], rtol=0, atol=0)
    torch.testing.assert_close(T3[0], gt, rtol=0, atol=3e-2)  # ~1.7° (256 points, no LM)


def test_padded_pieces_and_batch(objects):
    """A batch of the same 2-piece object padded to 3 pieces, padding first and last:
    both give the unpadded result (padded pieces hold zeros and are never matched)."""
    p, gt, out = _inputs(objects[2], seed=2, n=256)
    gen = torch.Generator
    ref = assemble_from_outputs(p, torch.ones(1, 2, dtype=torch.bool), out,
                                generator=gen().manual_seed(0))[0]
    C = out["desc"].shape[-1]
    pts = torch.zeros(2, 3, 256, 3, dtype=F64)
    desc = torch.zeros(2, 3, 256, C, dtype=F64)
    score = torch.full((2, 3, 256), -8.0, dtype=F64)
    pts[0, 1:], pts[1, :2] = p[0], p[0]
    desc[0, 1:], desc[1, :2] = out["desc"][0], out["desc"][0]
    score[0, 1:], score[1, :2] = out["frac_score"][0], out["frac_score"][0]
    valid = torch.tensor([[False, True, True], [True, True, False]])
    T = assemble_from_outputs(pts, valid, {"desc": desc, "frac_score": score},
                              generator=gen().manual_seed(0))
    eye = torch.eye(4, dtype=F64)
    assert torch.equal(T[0, 0], eye) and torch.equal(T[1, 2], eye)
    # the first object draws from the generator in the same state as the reference
    torch.testing.assert_close(T[0, 1:], ref, rtol=0, atol=1e-12)
    # the second one after the first: other RANSAC draws, the same assembly
    torch.testing.assert_close(T[1, :2], ref, rtol=0, atol=1e-2)


def test_errors(objects):
    p, gt, out = _inputs(objects[2], seed=1, n=64)
    valid = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="method"):
        assemble_from_outputs(p, valid, out, method="icp")
    with pytest.raises(ValueError, match="rot"):
        assemble_from_outputs(p, valid, out, method="network")
    with pytest.raises(ValueError, match="valid"):
        assemble_from_outputs(p, valid[:, :1], out)
    with pytest.raises(ValueError, match="desc"):
        assemble_from_outputs(p, valid, {"desc": out["desc"][:, :, :10]})
    with pytest.raises(ValueError, match="frac_score"):
        assemble_from_outputs(p, valid, {**out, "frac_score": out["frac_score"][0]})
    with pytest.raises(ValueError, match="points"):
        assemble_from_outputs(p[0], valid, out)
