"""Shape-assembly metrics against brute-force / scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from geo3d.eval import (
    align_to_anchor,
    anchor_parts,
    assembly_metrics,
    part_accuracy,
    rotation_errors,
    shape_chamfer,
    translation_errors,
)
from geo3d.rotations import random_rotation_matrix


def _batch(gen: torch.Generator, dtype=torch.float64, B=3, P=4, N=16):
    pts = torch.randn(B, P, N, 3, generator=gen, dtype=dtype)
    pts = pts - pts.mean(2, keepdim=True)
    rot = random_rotation_matrix(B, P, generator=gen, dtype=dtype)
    trans = torch.randn(B, P, 3, generator=gen, dtype=dtype)
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)[:B]
    return pts, valid, rot, trans


def _brute_cd(x: torch.Tensor, y: torch.Tensor) -> float:
    d = torch.cdist(x, y) ** 2
    return float(d.min(1).values.mean() + d.min(0).values.mean())


def test_perfect_prediction(generator, device):
    pts, valid, rot, trans = (t.to(device) for t in _batch(generator))
    for proto in ("absolute", "anchor"):
        m = assembly_metrics(pts, valid, rot, trans, rot, trans, protocol=proto)
        assert m["part_acc"].item() == 1.0
        for k in ("shape_cd", "rmse_r_euler", "mae_r_euler", "rmse_t", "mae_t"):
            assert m[k].abs().item() < 1e-6, k
        assert m["rmse_r_geo"].item() < 1e-3  # acos/asin near 0 in float64


def test_shape_chamfer_matches_brute_force_and_ignores_padding(generator):
    pts, valid, rot, trans = _batch(generator)
    prot = random_rotation_matrix(3, 4, generator=generator, dtype=pts.dtype)
    ptrans = trans + 0.1 * torch.randn(trans.shape, generator=generator, dtype=pts.dtype)
    got = shape_chamfer(pts, prot, ptrans, rot, trans, valid, reduction="none")
    junk = pts.clone()
    junk[~valid] = 1e4  # padded parts must not enter
    got2 = shape_chamfer(junk, prot, ptrans, rot, trans, valid, reduction="none")
    for b in range(3):
        v = valid[b]
        x = (pts[b, v] @ prot[b, v].transpose(-1, -2) + ptrans[b, v, None]).reshape(-1, 3)
        y = (pts[b, v] @ rot[b, v].transpose(-1, -2) + trans[b, v, None]).reshape(-1, 3)
        assert got[b].item() == pytest.approx(_brute_cd(x, y), rel=1e-9)
        assert got2[b].item() == pytest.approx(_brute_cd(x, y), rel=1e-9)
    assert shape_chamfer(pts, prot, ptrans, rot, trans, valid).item() == pytest.approx(
        got.mean().item())


def test_part_accuracy_threshold_and_true_part_count():
    # single-point parts: a translation error d gives chamfer 2 d^2 exactly
    B, P = 1, 4
    pts = torch.zeros(B, P, 1, 3, dtype=torch.float64)
    rot = torch.eye(3, dtype=torch.float64).repeat(B, P, 1, 1)
    trans = torch.zeros(B, P, 3, dtype=torch.float64)
    valid = torch.tensor([[True, True, True, False]])
    pred = trans.clone()
    pred[0, 0, 0] = 0.05  # cd = 0.005 < 0.01 -> correct
    pred[0, 1, 0] = 0.1  # cd = 0.02 -> wrong
    pred[0, 3, 0] = 5.0  # padded: ignored
    acc = part_accuracy(pts, rot, pred, rot, trans, valid)
    assert acc.item() == pytest.approx(2 / 3)  # over 3 true parts, not the padded 4
    acc = part_accuracy(pts, rot, pred, rot, trans, valid, threshold=0.001)
    assert acc.item() == pytest.approx(1 / 3)


def test_rotation_errors_against_scipy_with_wrap(generator):
    B, P = 4, 3
    gt = random_rotation_matrix(B, P, generator=generator, dtype=torch.float64)
    pred = random_rotation_matrix(B, P, generator=generator, dtype=torch.float64)
    valid = torch.ones(B, P, dtype=torch.bool)
    valid[0, 2] = False
    got = rotation_errors(pred, gt, valid, reduction="none")
    e1 = Rotation.from_matrix(pred.reshape(-1, 3, 3).numpy()).as_euler("xyz", degrees=True)
    e2 = Rotation.from_matrix(gt.reshape(-1, 3, 3).numpy()).as_euler("xyz", degrees=True)
    d = np.abs(e1 - e2)
    d = np.minimum(d, 360 - d).reshape(B, P, 3)
    rel = Rotation.from_matrix(pred.reshape(-1, 3, 3).numpy()).inv() * Rotation.from_matrix(
        gt.reshape(-1, 3, 3).numpy())
    geo = np.degrees(rel.magnitude()).reshape(B, P)
    v = valid.numpy()
    for b in range(B):
        assert got["rmse_r_euler"][b].item() == pytest.approx(
            math.sqrt((d[b][v[b]] ** 2).mean()), rel=1e-6)
        assert got["mae_r_euler"][b].item() == pytest.approx(d[b][v[b]].mean(), rel=1e-6)
        assert got["rmse_r_geo"][b].item() == pytest.approx(
            math.sqrt((geo[b][v[b]] ** 2).mean()), rel=1e-6)
        assert got["mae_r_geo"][b].item() == pytest.approx(geo[b][v[b]].mean(), rel=1e-6)


def test_euler_wrap_179_vs_minus_179():
    a = torch.tensor(Rotation.from_euler("xyz", [179, 10, 20], degrees=True).as_matrix())
    b = torch.tensor(Rotation.from_euler("xyz", [-179, 10, 20], degrees=True).as_matrix())
    got = rotation_errors(a[None, None], b[None, None], torch.ones(1, 1, dtype=torch.bool))
    assert got["mae_r_euler"].item() == pytest.approx(2 / 3, abs=1e-6)  # (2 + 0 + 0) / 3
    assert got["mae_r_geo"].item() == pytest.approx(2.0, abs=1e-6)


def test_translation_errors(generator):
    _, valid, _, trans = _batch(generator)
    pred = trans + 1.0
    pred[~valid] = 1e6
    got = translation_errors(pred, trans, valid)
    assert got["rmse_t"].item() == pytest.approx(1.0)
    assert got["mae_t"].item() == pytest.approx(1.0)


def test_anchor_protocol_removes_a_global_rigid_motion(generator):
    pts, valid, rot, trans = _batch(generator)
    A = random_rotation_matrix(3, generator=generator, dtype=pts.dtype)[:, None]
    a = torch.randn(3, 1, 3, generator=generator, dtype=pts.dtype)
    prot = A @ rot
    ptrans = (A @ trans[..., None])[..., 0] + a
    absolute = assembly_metrics(pts, valid, prot, ptrans, rot, trans, protocol="absolute")
    anchor = assembly_metrics(pts, valid, prot, ptrans, rot, trans, protocol="anchor")
    assert absolute["part_acc"].item() < 0.5
    assert anchor["part_acc"].item() == 1.0
    assert anchor["rmse_t"].item() < 1e-9


def test_align_to_anchor_makes_the_anchor_exact(generator):
    pts, valid, rot, trans = _batch(generator)
    prot = random_rotation_matrix(3, 4, generator=generator, dtype=pts.dtype)
    ptrans = torch.randn(3, 4, 3, generator=generator, dtype=pts.dtype)
    anchor = anchor_parts(pts, valid)
    r, t = align_to_anchor(prot, ptrans, rot, trans, anchor)
    ar = torch.arange(3)
    assert torch.allclose(r[ar, anchor], rot[ar, anchor], atol=1e-12)
    assert torch.allclose(t[ar, anchor], trans[ar, anchor], atol=1e-12)
    # relative poses between parts are preserved
    rel_before = prot[:, 0].transpose(-1, -2) @ prot[:, 1]
    rel_after = r[:, 0].transpose(-1, -2) @ r[:, 1]
    assert torch.allclose(rel_before, rel_after, atol=1e-12)


def test_anchor_is_the_largest_valid_part(generator):
    pts, valid, _, _ = _batch(generator)
    pts = pts.clone()
    pts[0, 2] *= 5
    pts[1, 3] *= 50  # padded: never the anchor
    pts[1, 1] *= 3
    assert anchor_parts(pts, valid).tolist()[:2] == [2, 1]


def test_metrics_float32_and_reduction(generator):
    pts, valid, rot, trans = _batch(generator, dtype=torch.float32)
    prot = random_rotation_matrix(3, 4, generator=generator)
    m = assembly_metrics(pts, valid, prot, trans, rot, trans, reduction="none")
    assert all(v.shape == (3,) for v in m.values())
    assert all(torch.isfinite(v).all() for v in m.values())


def test_bad_input(generator):
    pts, valid, rot, trans = _batch(generator)
    with pytest.raises(ValueError, match="valid"):
        part_accuracy(pts, rot, trans, rot, trans, valid[:, :2])
    with pytest.raises(ValueError, match="rot"):
        part_accuracy(pts, rot[:, :2], trans, rot, trans, valid)
    with pytest.raises(ValueError, match="protocol"):
        assembly_metrics(pts, valid, rot, trans, rot, trans, protocol="foo")
    with pytest.raises(ValueError, match="valid"):
        assembly_metrics(pts, torch.zeros_like(valid), rot, trans, rot, trans)
    with pytest.raises(ValueError, match="reduction"):
        translation_errors(trans, trans, valid, reduction="sum")
