"""Body-fitting metrics (V2V, MPJPE, per-point part accuracy) against brute-force float64
numpy loops and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import geo3d.eval as ev
from geo3d.eval import mpjpe, part_accuracy_points, v2v_error


def _brute_mean_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros(a.shape[0])
    for i in range(a.shape[0]):
        tot = 0.0
        for v in range(a.shape[1]):
            tot += math.sqrt(sum((float(a[i, v, d]) - float(b[i, v, d])) ** 2 for d in range(3)))
        out[i] = tot / a.shape[1]
    return out


class TestV2V:
    def test_brute_force_float64(self):
        g = torch.Generator().manual_seed(0)
        a = torch.randn(3, 40, 3, generator=g, dtype=torch.float64)
        b = torch.randn(3, 40, 3, generator=g, dtype=torch.float64)
        got = v2v_error(a, b)
        assert got.shape == (3,)
        np.testing.assert_allclose(got.numpy(), _brute_mean_dist(a.numpy(), b.numpy()), rtol=1e-13)

    def test_float32_close_to_float64(self):
        g = torch.Generator().manual_seed(1)
        a = torch.randn(2, 30, 3, generator=g, dtype=torch.float64)
        b = a + 0.01 * torch.randn(2, 30, 3, generator=g, dtype=torch.float64)
        got = v2v_error(a.float(), b.float())
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.double().numpy(), _brute_mean_dist(a.numpy(), b.numpy()),
                                   rtol=1e-4)

    def test_hand_values_no_alignment_per_element(self):
        # element 0 shifted by (3,4,0) -> 5 (a centring/alignment bug would give 0);
        # element 1: one vertex off by 2, the other exact -> mean 1 (a global mean over
        # the batch would mix the two elements).
        gt = torch.zeros(2, 2, 3)
        pred = gt.clone()
        pred[0] += torch.tensor([3.0, 4.0, 0.0])
        pred[1, 0, 2] = 2.0
        assert v2v_error(pred, gt).tolist() == [5.0, 1.0]

    def test_leading_batch_dims(self):
        g = torch.Generator().manual_seed(2)
        a = torch.randn(2, 3, 7, 3, generator=g, dtype=torch.float64)
        b = torch.randn(2, 3, 7, 3, generator=g, dtype=torch.float64)
        got = v2v_error(a, b)
        ref = _brute_mean_dist(a.reshape(6, 7, 3).numpy(), b.reshape(6, 7, 3).numpy())
        np.testing.assert_allclose(got.reshape(6).numpy(), ref, rtol=1e-13)

    def test_errors(self):
        x = torch.zeros(1, 4, 3)
        with pytest.raises(ValueError, match="gt_vertices"):
            v2v_error(x, torch.zeros(1, 5, 3))
        with pytest.raises(ValueError, match="pred_vertices"):
            v2v_error(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2))
        with pytest.raises(ValueError, match="pred_vertices"):
            v2v_error(torch.zeros(1, 4, 3, dtype=torch.long), x)
        with pytest.raises(ValueError, match="gt_vertices.*meta"):
            v2v_error(x, x.to("meta"))
        with pytest.raises(ValueError, match="pred_vertices"):
            v2v_error(torch.zeros(1, 0, 3), torch.zeros(1, 0, 3))
        with pytest.raises(ValueError, match="gt_vertices"):
            v2v_error(x, x.numpy())


    @pytest.mark.parametrize("fn", [v2v_error, mpjpe])
    def test_mixed_float_dtypes_are_scored_in_float64(self, fn):
        """A float32 fit against float64 ground truth (or the reverse) is scored in float64:
        the float32 rounding of a copy is a real error of ~1e-8, which a cast of the truth
        to float32 would hide (it scored 0; before, the pair was refused)."""
        g = torch.Generator().manual_seed(9)
        gt = 1.7 + torch.randn(3, 25, 3, generator=g, dtype=torch.float64)
        pred = gt.to(torch.float32)
        ref = _brute_mean_dist(pred.double().numpy(), gt.numpy())
        assert ref.min() > 1e-9
        for a, b in ((pred, gt), (gt, pred)):
            got = fn(a, b)
            assert got.dtype == torch.float64
            np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=0)


class TestMPJPE:
    def test_brute_force_none_and_root(self):
        g = torch.Generator().manual_seed(3)
        a = torch.randn(4, 24, 3, generator=g, dtype=torch.float64)
        b = torch.randn(4, 24, 3, generator=g, dtype=torch.float64)
        an, bn = a.numpy(), b.numpy()
        np.testing.assert_allclose(mpjpe(a, b).numpy(), _brute_mean_dist(an, bn), rtol=1e-13)
        ar = an - an[:, 5:6]
        br = bn - bn[:, 5:6]
        np.testing.assert_allclose(mpjpe(a, b, align="root", root_index=5).numpy(),
                                   _brute_mean_dist(ar, br), rtol=1e-13)

    def test_translation_counts_unless_root_aligned(self):
        gt = torch.randn(2, 24, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        pred = gt + torch.tensor([0.0, 0.3, 0.4], dtype=torch.float64)
        torch.testing.assert_close(mpjpe(pred, gt), torch.full((2,), 0.5, dtype=torch.float64))
        torch.testing.assert_close(mpjpe(pred, gt, align="root"),
                                   torch.zeros(2, dtype=torch.float64), atol=1e-15, rtol=0)

    def test_errors(self):
        x = torch.zeros(1, 24, 3)
        with pytest.raises(ValueError, match="align"):
            mpjpe(x, x, align="procrustes")
        with pytest.raises(ValueError, match="root_index"):
            mpjpe(x, x, align="root", root_index=24)
        with pytest.raises(ValueError, match="gt_joints"):
            mpjpe(x, torch.zeros(1, 45, 3))

    def test_smplx_joint_set_of_pose_body(self, tmp_path):
        # The joints pose_body returns beyond SMPL's 24 are smplx's vertex keypoints (the
        # tiny body defines nose, eyes, ears -> 29 joints). MPJPE over them equals a brute
        # force over [24 regressed joints, selected vertices].
        from geo3d.body import load_body_model, pose_body, tiny_body_dict, write_tiny_body

        d = tiny_body_dict()
        m = load_body_model(write_tiny_body(tmp_path / "t.npz"), dtype=torch.float64)
        g = torch.Generator().manual_seed(5)
        p1 = 0.3 * torch.randn(2, 72, generator=g, dtype=torch.float64)
        p2 = p1 + 0.2 * torch.randn(2, 72, generator=g, dtype=torch.float64)
        o1, o2 = pose_body(m, p1), pose_body(m, p2)
        assert o1.joints.shape == (2, 29, 3)
        vid = torch.as_tensor(d["vertex_id_values"])
        torch.testing.assert_close(o1.joints[:, 24:], o1.vertices[:, vid], rtol=0, atol=1e-12)
        j1 = np.concatenate([o1.joints[:, :24].numpy(), o1.vertices[:, vid].numpy()], 1)
        j2 = np.concatenate([o2.joints[:, :24].numpy(), o2.vertices[:, vid].numpy()], 1)
        np.testing.assert_allclose(mpjpe(o1.joints, o2.joints).numpy(), _brute_mean_dist(j1, j2),
                                   rtol=1e-12)
        np.testing.assert_allclose(v2v_error(o1.vertices, o2.vertices).numpy(),
                                   _brute_mean_dist(o1.vertices.numpy(), o2.vertices.numpy()),
                                   rtol=1e-12)


class TestPartAccuracyPoints:
    def test_brute_force_with_mask(self):
        g = torch.Generator().manual_seed(6)
        pred = torch.randint(0, 4, (5, 33), generator=g)
        gt = torch.randint(0, 4, (5, 33), generator=g)
        mask = torch.rand(5, 33, generator=g) > 0.3
        got = part_accuracy_points(pred, gt, mask)
        for b in range(5):
            n = sum(1 for i in range(33) if mask[b, i])
            c = sum(1 for i in range(33) if mask[b, i] and pred[b, i] == gt[b, i])
            assert got[b].item() == pytest.approx(c / n, abs=1e-7)
        nomask = part_accuracy_points(pred, gt)
        for b in range(5):
            assert nomask[b].item() == pytest.approx(float((pred[b] == gt[b]).float().mean()),
                                                     abs=1e-7)

    def test_hand_values(self):
        pred = torch.tensor([[0, 1, 2, 2], [5, 5, 5, 5]])
        gt = torch.tensor([[0, 1, 1, 2], [5, 0, 0, 0]])
        mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
        assert part_accuracy_points(pred, gt, mask).tolist() == [0.75, 0.5]

    def test_empty_row_is_nan(self):
        out = part_accuracy_points(torch.zeros(2, 3, dtype=torch.long),
                                   torch.zeros(2, 3, dtype=torch.long),
                                   torch.tensor([[True, False, False], [False] * 3]))
        assert out[0].item() == 1.0 and math.isnan(out[1].item())

    def test_errors(self):
        x = torch.zeros(1, 4, dtype=torch.long)
        with pytest.raises(ValueError, match="pred_labels"):
            part_accuracy_points(torch.zeros(1, 4), x)
        with pytest.raises(ValueError, match="gt_labels"):
            part_accuracy_points(x, torch.zeros(1, 5, dtype=torch.long))
        with pytest.raises(ValueError, match="mask"):
            part_accuracy_points(x, x, torch.ones(1, 4))
        with pytest.raises(ValueError, match="mask"):
            part_accuracy_points(x, x, torch.ones(1, 3, dtype=torch.bool))

    def test_negative_labels_are_padding_not_matches(self):
        # ragged FitResult.part_labels pad with -1; a padded gt (-1) matched by a padded
        # prediction (-1) must not count as correct, nor a real label against padding
        pred = torch.tensor([[0, 1, -1, -1], [2, -1, 3, 3]])
        gt = torch.tensor([[0, 2, -1, 1], [2, 2, -1, 3]])
        # row 0: valid points 0, 1 -> 1/2; row 1: valid points 0, 3 -> 2/2
        assert part_accuracy_points(pred, gt).tolist() == [0.5, 1.0]
        assert math.isnan(part_accuracy_points(torch.full((1, 3), -1),
                                               torch.full((1, 3), -1)).item())

    @pytest.mark.parametrize("fn", [v2v_error, mpjpe])
    def test_nan_coordinates_raise_naming_the_argument(self, fn):
        from geo3d.rotations import set_value_checks

        a = torch.zeros(2, 5, 3)
        b = a.clone()
        b[1, 3, 0] = float("nan")
        first = "pred_vertices" if fn is v2v_error else "pred_joints"
        second = "gt_vertices" if fn is v2v_error else "gt_joints"
        with pytest.raises(ValueError, match=rf"{second}: expected finite"):
            fn(a, b)
        with pytest.raises(ValueError, match=rf"{first}: expected finite"):
            fn(b, a)
        old = set_value_checks(False)
        try:
            assert math.isnan(fn(a, b)[1].item())  # checks off: no host sync, NaN propagates
        finally:
            set_value_checks(old)

    def test_assembly_part_accuracy_not_shadowed(self):
        from geo3d.eval._assembly_metrics import part_accuracy

        assert ev.part_accuracy is part_accuracy
        assert ev.part_accuracy_points is part_accuracy_points


def test_meta_tensors_numpy_root_index_and_shape_text():
    """Fresh-user run 2: 'meta' tensors gave a raw .item() RuntimeError; root_index as a
    numpy integer was refused; the shape message said (B, V, 3) where any leading shape is
    accepted."""
    x = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="^pred_vertices: expected a tensor on a device"):
        v2v_error(x.to("meta"), x.to("meta"))
    with pytest.raises(ValueError, match=r"expected shape \(\*, V, 3\)"):
        v2v_error(torch.zeros(2, 5, 2), torch.zeros(2, 5, 2))
    g = torch.Generator().manual_seed(5)
    a = torch.randn(2, 24, 3, generator=g, dtype=torch.float64)
    b = torch.randn(2, 24, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(mpjpe(a, b, align="root", root_index=np.int64(3)),
                               mpjpe(a, b, align="root", root_index=3), rtol=0, atol=0)
    with pytest.raises(ValueError, match="root_index"):
        mpjpe(a, b, align="root", root_index=np.int64(24))
