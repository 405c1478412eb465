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
    transform_parts,
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
    valid[3, 0] = False  # leading padding too
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
        db = d[b][v[b]]  # (n, 3)
        # benchmark: per-part RMSE over the 3 angles, then the mean over valid parts
        assert got["rmse_r_euler"][b].item() == pytest.approx(
            np.sqrt((db**2).mean(-1)).mean(), rel=1e-6)
        assert got["rmse_r_euler_pooled"][b].item() == pytest.approx(
            math.sqrt((db**2).mean()), rel=1e-6)
        assert got["mae_r_euler"][b].item() == pytest.approx(db.mean(), rel=1e-6)
        assert got["rmse_r_geo"][b].item() == pytest.approx(
            math.sqrt((geo[b][v[b]] ** 2).mean()), rel=1e-6)
        assert got["mae_r_geo"][b].item() == pytest.approx(geo[b][v[b]].mean(), rel=1e-6)


def test_benchmark_rmse_hand_computed_two_parts():
    """One exact part, one off by 30 deg about x: the benchmark's RMSE(R) is
    (0 + sqrt(30^2 / 3)) / 2 = 8.660 deg; pooling the parts first gives sqrt(30^2 / 6)."""
    r30 = torch.tensor(Rotation.from_euler("x", 30, degrees=True).as_matrix())
    eye = torch.eye(3, dtype=torch.float64)
    pred = torch.stack([eye, r30])[None]
    gt = torch.stack([eye, eye])[None]
    valid = torch.ones(1, 2, dtype=torch.bool)
    got = rotation_errors(pred, gt, valid)
    assert got["rmse_r_euler"].item() == pytest.approx(5 * math.sqrt(3), abs=1e-9)  # 8.660
    assert got["rmse_r_euler_pooled"].item() == pytest.approx(math.sqrt(150), abs=1e-9)
    assert got["mae_r_euler"].item() == pytest.approx(5.0, abs=1e-9)
    assert got["mae_r_geo"].item() == pytest.approx(15.0, abs=1e-9)
    assert got["rmse_r_geo"].item() == pytest.approx(math.sqrt(450), abs=1e-9)
    # translations: one exact part, one off by (3, 0, 0)
    t = translation_errors(torch.tensor([[[0.0, 0, 0], [3, 0, 0]]], dtype=torch.float64),
                           torch.zeros(1, 2, 3, dtype=torch.float64), valid)
    assert t["rmse_t"].item() == pytest.approx(math.sqrt(3) / 2, abs=1e-12)
    assert t["rmse_t_pooled"].item() == pytest.approx(math.sqrt(1.5), abs=1e-12)
    assert t["mae_t"].item() == pytest.approx(0.5, abs=1e-12)


def _reference_rot_metrics(pred, gt, valid):
    """Brute-force transcription of the benchmark's definition, pure Python per part:
    quaternion (scipy) -> Euler angles by the quaternion formulas of the reference's
    qeuler(q, "zyx") (R = Rz Ry Rx), d = min(|e1 - e2|, 360 - |e1 - e2|), per-part
    sqrt(mean d^2) and mean |d|, means over valid parts then over objects."""

    def euler(R):
        x, y, z, w = Rotation.from_matrix(R).as_quat()  # scipy: scalar last
        ex = math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
        ey = math.asin(max(-1.0, min(1.0, 2 * (w * y - x * z))))
        ez = math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        return [math.degrees(ex), math.degrees(ey), math.degrees(ez)]

    rmse_obj, mae_obj = [], []
    for b in range(pred.shape[0]):
        rm, ma = [], []
        for p in range(pred.shape[1]):
            if not valid[b, p]:
                continue
            e1, e2 = euler(pred[b, p].numpy()), euler(gt[b, p].numpy())
            d = [min(abs(u - w), 360 - abs(u - w)) for u, w in zip(e1, e2, strict=True)]
            rm.append(math.sqrt(sum(x * x for x in d) / 3))
            ma.append(sum(d) / 3)
        rmse_obj.append(sum(rm) / len(rm))
        mae_obj.append(sum(ma) / len(ma))
    return sum(rmse_obj) / len(rmse_obj), sum(mae_obj) / len(mae_obj)


def test_rotation_errors_match_a_brute_force_benchmark_transcription(generator):
    B, P = 5, 4
    gt = random_rotation_matrix(B, P, generator=generator, dtype=torch.float64)
    # errors of all sizes, small to large
    small = random_rotation_matrix(B, P, generator=generator, dtype=torch.float64)
    pred = gt.clone()
    pred[:2] = random_rotation_matrix(2, P, generator=generator, dtype=torch.float64)
    pred[2:] = gt[2:] @ torch.linalg.matrix_exp(
        0.1 * (small[2:] - small[2:].transpose(-1, -2)))
    valid = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 0],
                          [1, 1, 0, 1]], dtype=torch.bool)
    rmse, mae = _reference_rot_metrics(pred, gt, valid)
    got = rotation_errors(pred, gt, valid)
    assert got["rmse_r_euler"].item() == pytest.approx(rmse, rel=1e-9)
    assert got["mae_r_euler"].item() == pytest.approx(mae, rel=1e-9)


def test_euler_wrap_179_vs_minus_179():
    a = torch.tensor(Rotation.from_euler("xyz", [179, 10, 20], degrees=True).as_matrix())
    b = torch.tensor(Rotation.from_euler("xyz", [-179, 10, 20], degrees=True).as_matrix())
    got = rotation_errors(a[None, None], b[None, None], torch.ones(1, 1, dtype=torch.bool))
    assert got["mae_r_euler"].item() == pytest.approx(2 / 3, abs=1e-6)  # (2 + 0 + 0) / 3
    assert got["mae_r_geo"].item() == pytest.approx(2.0, abs=1e-6)


def test_translation_errors(generator):
    _, valid, _, trans = _batch(generator)
    # errors of both signs per part: (+1, -2, +2) and (-1, +2, -2) alternate
    err = torch.tensor([[1.0, -2.0, 2.0], [-1.0, 2.0, -2.0]], dtype=trans.dtype)
    pred = trans + err.repeat(1, 2, 1)[:, : trans.shape[1]]
    pred[~valid] = 1e6
    got = translation_errors(pred, trans, valid)
    assert got["rmse_t"].item() == pytest.approx(math.sqrt(3.0))  # sqrt((1+4+4)/3)
    assert got["mae_t"].item() == pytest.approx(5 / 3)  # (1+2+2)/3, not the signed mean
    # per-part errors of different sizes: benchmark mean of per-part RMSEs
    pred = trans.clone()
    pred[:, 0, 0] -= 3.0
    got = translation_errors(pred, trans, valid, reduction="none")
    n = valid.sum(1).double()
    assert torch.allclose(got["rmse_t"], math.sqrt(3.0) / n)
    assert torch.allclose(got["rmse_t_pooled"], (3.0 / n).sqrt())
    assert torch.allclose(got["mae_t"], 1.0 / n)


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


def test_mixed_float_dtypes_are_scored_in_the_wider_dtype(generator):
    """float32 predictions against float64 ground truth (and float32 points against
    float64 poses): every metric equals the all-float64 result to float64 precision. Before,
    part_chamfer/shape_chamfer/assembly_metrics raised a raw RuntimeError and
    rotation_errors/align_to_anchor rounded the float64 truth to float32."""
    pts, valid, rot, trans = _batch(generator)
    prot = random_rotation_matrix(3, 4, generator=generator, dtype=torch.float64)
    ptrans = trans + 0.3 * torch.randn(trans.shape, generator=generator, dtype=torch.float64)
    p32, t32 = prot.float(), ptrans.float()
    for proto in ("absolute", "anchor"):
        for args in ((pts, valid, p32, t32, rot, trans),
                     (pts.float(), valid, p32.double(), t32.double(), rot, trans)):
            ref = assembly_metrics(*(a.double() if a.is_floating_point() else a for a in args),
                                   protocol=proto, reduction="none")
            got = assembly_metrics(*args, protocol=proto, reduction="none")
            for k, v in ref.items():
                assert got[k].dtype == torch.float64, k
                torch.testing.assert_close(got[k], v, rtol=1e-12, atol=1e-12, msg=k)
    # the pieces: the float64 path (tested against scipy elsewhere), and a float32 rounding
    # of the truth is visibly different, so the comparison can fail
    e = rotation_errors(p32, rot, valid, reduction="none")
    e64 = rotation_errors(p32.double(), rot, valid, reduction="none")
    e32 = rotation_errors(p32, rot.float(), valid, reduction="none")
    for k in e:
        assert e[k].dtype == torch.float64
        torch.testing.assert_close(e[k], e64[k], rtol=1e-12, atol=1e-12)
    assert (e32["mae_r_geo"].double() - e64["mae_r_geo"]).abs().max() > 1e-7
    d = (t32.double() - trans).numpy()
    te = translation_errors(t32, trans, valid, reduction="none")["mae_t"]
    np.testing.assert_allclose(te.numpy(), [np.abs(d[b][valid[b].numpy()]).mean()
                                            for b in range(3)], rtol=1e-12)
    r, t = align_to_anchor(p32, t32, rot, trans, torch.zeros(3, dtype=torch.long))
    assert r.dtype == t.dtype == torch.float64
    r64, t64 = align_to_anchor(p32.double(), t32.double(), rot, trans,
                               torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(r, r64, rtol=0, atol=1e-14)
    torch.testing.assert_close(t, t64, rtol=0, atol=1e-14)
    x = transform_parts(pts.float(), rot, trans)
    assert x.dtype == torch.float64
    torch.testing.assert_close(x, torch.einsum("bpij,bpnj->bpni", rot, pts.float().double())
                               + trans[:, :, None], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="points: expected a floating tensor"):
        part_accuracy(pts.long(), rot, trans, rot, trans, valid)
    with pytest.raises(ValueError, match="gt_trans"):
        shape_chamfer(pts, rot, trans, rot, trans.to("meta"), valid)


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


def test_anchor_with_leading_padding_and_point_mask_against_brute_force(generator):
    B, P, N = 3, 4, 12
    pts = torch.randn(B, P, N, 3, generator=generator, dtype=torch.float64)
    pts = pts * torch.rand(B, P, 1, 1, generator=generator, dtype=torch.float64) * 3
    valid = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    point_mask = torch.rand(B, P, N, generator=generator) < 0.6
    point_mask[..., 0] = True
    junk = pts.clone()
    junk[~point_mask] = float("nan")  # masked points must not enter
    junk[~valid] = 1e6  # padded parts (leading here) are never the anchor
    got = anchor_parts(junk, valid, point_mask)
    for b in range(B):
        sizes = []
        for p in range(P):
            if not valid[b, p]:
                sizes.append(-1.0)
                continue
            x = pts[b, p][point_mask[b, p]].numpy()
            sizes.append(float(((x - x.mean(0)) ** 2).sum(1).mean()))
        assert got[b].item() == int(np.argmax(sizes))
    # the point mask changes the answer: a part that is large only through masked points
    pts2 = pts.clone()
    pts2[0, 2] = pts2[0, 3] * 0.5
    pts2[0, 2, 0] = 1e3  # one huge point ...
    pm = torch.ones(B, P, N, dtype=torch.bool)
    assert anchor_parts(pts2, valid, pm)[0].item() == 2
    pm[0, 2, 0] = False  # ... masked out
    assert anchor_parts(pts2, valid, pm)[0].item() == 3


def test_metrics_with_leading_padded_parts_against_brute_force(generator):
    pts, _, rot, trans = _batch(generator)
    valid = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=torch.bool)
    prot = random_rotation_matrix(3, 4, generator=generator, dtype=pts.dtype)
    ptrans = trans + 0.3 * torch.randn(trans.shape, generator=generator, dtype=pts.dtype)
    junk_pts, junk_rot = pts.clone(), prot.clone()
    junk_pts[~valid] = float("nan")
    junk_rot[~valid] = 0.0  # not a rotation: padded parts must not be converted
    m = assembly_metrics(junk_pts, valid, junk_rot, ptrans, rot, trans, reduction="none")
    for b in range(3):
        v = valid[b]
        x = (pts[b, v] @ prot[b, v].transpose(-1, -2) + ptrans[b, v, None]).reshape(-1, 3)
        y = (pts[b, v] @ rot[b, v].transpose(-1, -2) + trans[b, v, None]).reshape(-1, 3)
        assert m["shape_cd"][b].item() == pytest.approx(_brute_cd(x, y), rel=1e-9)
        per_part = [_brute_cd(pts[b, p] @ prot[b, p].T + ptrans[b, p],
                              pts[b, p] @ rot[b, p].T + trans[b, p]) for p in range(4) if v[p]]
        assert m["part_acc"][b].item() == pytest.approx(np.mean(np.array(per_part) < 0.01))
        d = (ptrans[b, v] - trans[b, v]).numpy()
        assert m["rmse_t"][b].item() == pytest.approx(np.sqrt((d**2).mean(1)).mean(), rel=1e-9)
        assert m["mae_t"][b].item() == pytest.approx(np.abs(d).mean(), rel=1e-9)
        geo = np.degrees((Rotation.from_matrix(prot[b, v].numpy()).inv()
                          * Rotation.from_matrix(rot[b, v].numpy())).magnitude())
        assert m["mae_r_geo"][b].item() == pytest.approx(geo.mean(), rel=1e-7)
    assert all(torch.isfinite(v).all() for v in m.values())


def test_empty_batch_and_empty_parts():
    pts = torch.zeros(0, 2, 5, 3)
    valid = torch.zeros(0, 2, dtype=torch.bool)
    rot, trans = torch.eye(3).expand(0, 2, 3, 3), torch.zeros(0, 2, 3)
    m = rotation_errors(rot, rot, valid, reduction="none")
    assert all(v.shape == (0,) for v in m.values())
    t = translation_errors(trans, trans, valid, reduction="none")
    assert all(v.shape == (0,) for v in t.values())
    assert anchor_parts(pts, valid).shape == (0,)
    with pytest.raises(ValueError, match="reduction"):
        rotation_errors(rot, rot, valid)
    with pytest.raises(ValueError, match="reduction"):
        translation_errors(trans, trans, valid)
    empty_parts = torch.zeros(1, 2, 0, 3)
    v1 = torch.ones(1, 2, dtype=torch.bool)
    r1, t1 = torch.eye(3).expand(1, 2, 3, 3), torch.zeros(1, 2, 3)
    with pytest.raises(ValueError, match="points"):
        assembly_metrics(empty_parts, v1, r1, t1, r1, t1)
    with pytest.raises(ValueError, match="points"):
        anchor_parts(empty_parts, v1)


def test_masks_that_do_not_match_raise_value_errors(generator):
    pts, valid, rot, trans = _batch(generator)
    with pytest.raises(ValueError, match="point_mask"):
        anchor_parts(pts, valid, torch.ones(3, 4, 1, dtype=torch.bool))  # would broadcast
    with pytest.raises(ValueError, match="point_mask"):
        anchor_parts(pts, valid, torch.ones(4, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid"):
        rotation_errors(rot, rot, valid[:1])  # would broadcast over B
    with pytest.raises(ValueError, match="valid"):
        translation_errors(trans, trans, valid[:, :1])
    with pytest.raises(ValueError, match="anchor"):
        align_to_anchor(rot, trans, rot, trans, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match="anchor"):
        align_to_anchor(rot, trans, rot, trans, torch.tensor([0.0, 1.0, 1.0]))


def test_outputs_never_alias_inputs(generator):
    pts, valid, rot, trans = _batch(generator)
    anchor = anchor_parts(pts, valid)
    r, t = align_to_anchor(rot, trans, rot, trans, anchor)
    before = rot.clone(), trans.clone()
    r.add_(1.0)
    t.add_(1.0)
    assert torch.equal(rot, before[0]) and torch.equal(trans, before[1])
    # column-major input
    pts_f = pts.transpose(-1, -2).contiguous().transpose(-1, -2)
    out = transform_parts(pts_f, rot, trans)
    out.add_(1.0)
    assert torch.equal(pts_f, pts)


@pytest.mark.parametrize("protocol", ["absolute", "anchor"])
def test_float32_far_from_the_origin_scores_like_near_it(generator, protocol):
    """Translating the whole scene by (1e5, -1e5, 5e4) in float32 changes no metric: the
    metrics work relative to the object (float64 offsets), not in absolute float32."""
    pts, valid, rot, trans = _batch(generator)
    small = Rotation.from_rotvec(0.1 * np.random.default_rng(0).normal(size=(12, 3)))
    prot = rot @ torch.as_tensor(small.as_matrix()).reshape(3, 4, 3, 3)
    ptrans = trans + 0.05 * torch.randn(trans.shape, generator=generator, dtype=pts.dtype)
    shift = torch.tensor([1e5, -1e5, 5e4], dtype=torch.float64)
    f = torch.float32
    near = assembly_metrics(pts, valid, prot, ptrans, rot, trans, protocol=protocol,
                            reduction="none")
    # float32 inputs whose translations are far away (representable offsets: 1/128 grid)
    far_t = (trans * 128).round() / 128
    far_pt = (ptrans * 128).round() / 128
    ref = assembly_metrics(pts, valid, prot, far_pt, rot, far_t, protocol=protocol,
                           reduction="none")
    far = assembly_metrics(pts.to(f), valid, prot.to(f), (far_pt + shift).to(f),
                           rot.to(f), (far_t + shift).to(f), protocol=protocol,
                           reduction="none")
    assert near["part_acc"].shape == (3,)
    for k in ("shape_cd", "rmse_t", "mae_t", "part_acc"):
        assert torch.allclose(far[k].double(), ref[k], rtol=1e-4, atol=1e-6), k


def test_nan_poses_thresholds_and_meta_are_named(generator):
    """Fresh-user run 2: a NaN pred_trans was reported as 'x' (chamfer's argument), a
    negative or NaN threshold was accepted, 'meta' tensors gave a raw .item() error. NaN in
    a padded part still counts for nothing."""
    pts, valid, rot, trans = _batch(generator)
    bad = trans.clone()
    bad[0, 1, 2] = float("nan")
    for fn in (lambda t: assembly_metrics(pts, valid, rot, t, rot, trans),
               lambda t: part_accuracy(pts, rot, t, rot, trans, valid),
               lambda t: shape_chamfer(pts, rot, t, rot, trans, valid)):
        with pytest.raises(ValueError, match="^pred_trans: expected finite"):
            fn(bad)
    pad = trans.clone()
    pad[1, 3] = float("nan")  # object 1's part 3 is padding
    prot = rot.clone()
    prot[1, 3] = float("nan")
    ref = assembly_metrics(pts, valid, rot, trans, rot, trans, reduction="none")
    got = assembly_metrics(pts, valid, prot, pad, rot, trans, reduction="none")
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], msg=k)
    for t in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="^threshold: expected a finite number >= 0"):
            assembly_metrics(pts, valid, rot, trans, rot, trans, threshold=t)
    with pytest.raises(ValueError, match="^points: expected a tensor on a device that computes"):
        assembly_metrics(pts.to("meta"), valid.to("meta"), rot.to("meta"), trans.to("meta"),
                         rot.to("meta"), trans.to("meta"))
