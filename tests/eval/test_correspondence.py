"""geo3d.eval dense-correspondence metrics (APE, PCDP) and keypoint PCK (issue 16 §2).

The scene is built so that the ground truth is known by hand: two fronto-parallel squares
(a back plane at z = 0 and a smaller occluder at z = -1) seen by two cameras that differ by
a sideways translation of 0.25. With f = 16 the back plane shifts by exactly 2 pixels and
the occluder by exactly 4, so every correspondence lands on a pixel centre, and the
occluder's edges project to half-integers, so the analytic occlusion test (a ray against
the occluder square) never sits on a rounding boundary.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geo3d.eval import (
    dense_correspondence_metrics,
    dense_cosine_similarity,
    keypoint_pck,
    keypoints_from_points,
    mask_bbox_size,
    nearest_pixels,
    sample_features,
    transfer_keypoints,
    views_from_pair,
)

pytestmark = pytest.mark.usefixtures("open3d_module")

F_PX, SIZE, CX = 16.0, 32, 15.5
DX = 0.25  # camera B's sideways offset: 2 px on the back plane (depth 2), 4 px on the occluder (depth 1)


def _quad(x0, x1, y0, y1, z):
    v = [[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]]
    return v, [[0, 1, 2], [0, 2, 3]]


def _scene_views(dx: float = DX):
    """Views A and B of the two-square scene, colours = world coordinates mapped to [0, 1]."""
    from geo3d.render import Renderer, as_render_mesh, intrinsics_matrix, look_at

    vb, fb = _quad(-0.9, 0.9, -0.9, 0.9, 0.0)
    vo, fo = _quad(-0.25, 0.25, -0.25, 0.25, -1.0)
    verts = torch.tensor(vb + vo, dtype=torch.float64)
    faces = torch.tensor(fb + [[a + 4, b + 4, c + 4] for a, b, c in fo])
    mesh = as_render_mesh(verts, faces, color_fn=lambda p: (p + 1.0) / 2.0)
    r = Renderer(mesh, ambient=1.0, diffuse=0.0)
    K = intrinsics_matrix(F_PX, cx=CX, cy=CX)
    views = []
    for x in (0.0, dx):
        T = look_at([x, 0.0, -2.0], [x, 0.0, 0.0], up=[0.0, -1.0, 0.0])  # camera axes = world axes
        out = r.render(K, T, (SIZE, SIZE), dtype=torch.float64)
        views.append({"rgb": out["rgb"], "depth": out["depth"], "mask": out["mask"], "K": K, "world_to_cam": T})
    return views


def _oracle(images: torch.Tensor) -> torch.Tensor:
    """Features = the pixel's world point, lifted onto a sphere of radius 2 (cosine NN = 3D NN)."""
    p = images.double() * 2.0 - 1.0
    s = (4.0 - (p**2).sum(1, keepdim=True)).clamp_min(0.0).sqrt()
    return torch.cat([p, s], dim=1).float()


def _constant(images: torch.Tensor) -> torch.Tensor:
    return torch.ones(images.shape[0], 5, images.shape[2], images.shape[3])


def _expected_visible(view_a, dx: float = DX):
    """Hand ground truth: A's foreground pixels visible in B and their pixels in B.

    An occluder point (depth 1) is always visible and shifts by 4 px; a back-plane point
    (depth 2) shifts by 2 px and is hidden when the ray from B's centre to it crosses the
    occluder square (ray/square intersection, no depth maps involved).
    """
    expected = {}
    c = (dx, 0.0, -2.0)
    for v in range(SIZE):
        for u in range(SIZE):
            d = float(view_a["depth"][v, u])
            if d == 0:
                continue
            X = ((u - CX) / F_PX * d, (v - CX) / F_PX * d, d - 2.0)
            if abs(d - 1.0) < 1e-6:  # occluder
                expected[(u, v)] = (u - 4, v)
                continue
            s = (-1.0 - c[2]) / (X[2] - c[2])  # where the ray crosses z = -1
            hx, hy = c[0] + s * (X[0] - c[0]), c[1] + s * (X[1] - c[1])
            if abs(hx) <= 0.25 and abs(hy) <= 0.25:
                continue
            expected[(u, v)] = (u - 2, v)
    return expected


class TestDenseCorrespondence:
    def test_oracle_extractor_is_exact(self):
        va, vb = _scene_views()
        m = dense_correspondence_metrics(_oracle, va, vb, max_points=None, return_details=True)
        assert m["ape_px"] == 0.0 and m["ape_img"] == 0.0 and m["ape_bbox"] == 0.0
        for t in ("0.05", "0.1", "0.2"):
            assert m[f"pcdp_img@{t}"] == 1.0 and m[f"pcdp_bbox@{t}"] == 1.0
        assert torch.equal(m["pred_b"], m["gt_b"])

    def test_visibility_excludes_occluded_points(self):
        """The evaluated pixels are exactly the hand-computed visible ones (with their GT)."""
        va, vb = _scene_views()
        expected = _expected_visible(va)
        hidden = int(va["mask"].sum()) - len(expected)
        # hidden in B: back-plane points with X in [-0.75, -0.5) and |Y| <= 0.5 (visible beside
        # the occluder in A, behind it from B): columns 10, 11 x rows 12..19
        assert hidden == 16
        m = dense_correspondence_metrics(_oracle, va, vb, max_points=None, return_details=True)
        got = {tuple(p): tuple(q) for p, q in zip(m["pixels_a"].tolist(), m["gt_b"].tolist(), strict=True)}
        assert got == expected
        assert m["num_visible"] == m["num_points"] == len(expected)

    def test_constant_extractor_hand_value(self):
        """Constant features tie everywhere: every match is B's first foreground pixel (row-major)."""
        va, vb = _scene_views()
        expected = _expected_visible(va)
        first = next((u, v) for v in range(SIZE) for u in range(SIZE) if bool(vb["mask"][v, u]))
        errs = [math.hypot(first[0] - q[0], first[1] - q[1]) for q in expected.values()]
        box = 14.0  # the back plane in B covers columns 7..20 and rows 9..22 (u = 8 X + 13.5, v = 8 Y + 15.5)
        m = dense_correspondence_metrics(_constant, va, vb, max_points=None)
        assert m["bbox_size"] == box and m["img_size"] == 32.0
        assert m["ape_px"] == pytest.approx(sum(errs) / len(errs), rel=1e-12)
        assert m["ape_img"] == pytest.approx(sum(e / 32.0 for e in errs) / len(errs), rel=1e-12)
        assert m["ape_bbox"] == pytest.approx(sum(e / box for e in errs) / len(errs), rel=1e-12)
        for a in (0.05, 0.1, 0.2):
            assert m[f"pcdp_img@{a:g}"] == pytest.approx(sum(e <= a * 32 for e in errs) / len(errs), abs=0)
            assert m[f"pcdp_bbox@{a:g}"] == pytest.approx(sum(e <= a * box for e in errs) / len(errs), abs=0)
        # the thresholds separate the two normalisations on this scene
        assert m["pcdp_img@0.2"] != m["pcdp_bbox@0.2"]

    def test_device(self, device):
        """The extractor runs on ``device``; results equal the default CPU run."""
        va, vb = _scene_views()
        seen = []

        def oracle_on_device(images):
            seen.append(images.device.type)
            return _oracle(images)

        m = dense_correspondence_metrics(oracle_on_device, va, vb, max_points=None, device=device, return_details=True)
        assert seen == [torch.device(device).type] and m["ape_px"] == 0.0
        assert m["pred_b"].device.type == "cpu"

    def test_subsample_is_seeded_and_bounded(self):
        va, vb = _scene_views()
        kw = dict(max_points=25, return_details=True)
        a = dense_correspondence_metrics(_constant, va, vb, generator=torch.Generator().manual_seed(3), **kw)
        b = dense_correspondence_metrics(_constant, va, vb, generator=torch.Generator().manual_seed(3), **kw)
        c = dense_correspondence_metrics(_constant, va, vb, generator=torch.Generator().manual_seed(4), **kw)
        assert a["num_points"] == 25 and torch.equal(a["pixels_a"], b["pixels_a"])
        assert not torch.equal(a["pixels_a"], c["pixels_a"])
        expected = _expected_visible(va)
        assert all(tuple(p) in expected for p in a["pixels_a"].tolist())

    def test_feature_map_coarser_than_image(self):
        """A half-resolution map is upsampled bilinearly (align_corners=False) before matching."""
        va, vb = _scene_views()

        def coarse(images):
            return F.avg_pool2d(_oracle(images), 2)

        fa, fb = coarse(torch.stack([va["rgb"].permute(2, 0, 1), vb["rgb"].permute(2, 0, 1)]).float())
        m = dense_correspondence_metrics(coarse, va, vb, max_points=None, return_details=True)
        up_b = F.interpolate(fb[None], (SIZE, SIZE), mode="bilinear", align_corners=False)[0]
        up_a = F.interpolate(fa[None], (SIZE, SIZE), mode="bilinear", align_corners=False)[0]
        # brute force over B's foreground on the explicitly upsampled maps
        vv, uu = torch.nonzero(vb["mask"], as_tuple=True)
        cand = F.normalize(up_b[:, vv, uu].T, dim=1)
        pa = m["pixels_a"]
        q = F.normalize(up_a[:, pa[:, 1], pa[:, 0]].T, dim=1)
        best = (q @ cand.T).argmax(dim=1)
        assert torch.equal(m["pred_b"], torch.stack([uu, vv], 1)[best])

    def test_views_from_pair_and_chw_images(self):
        va, vb = _scene_views()
        item = {"image1": va["rgb"].permute(2, 0, 1), "image2": vb["rgb"].permute(2, 0, 1),
                "depth1": va["depth"], "depth2": vb["depth"], "mask1": va["mask"], "mask2": vb["mask"],
                "K": va["K"], "pose1": va["world_to_cam"], "pose2": vb["world_to_cam"]}
        a, b = views_from_pair(item)
        m1 = dense_correspondence_metrics(_oracle, a, b, max_points=None)
        m2 = dense_correspondence_metrics(_oracle, va, vb, max_points=None)
        assert m1 == m2

    def test_invariant_to_the_world_frame(self, generator):
        """Moving the world frame (object and cameras together: world_to_cam -> T g^-1) changes
        no image, so no metric: catches a pose used inverted or a point taken in the wrong frame."""
        from geo3d.rotations import random_rotation_matrix

        va, vb = _scene_views()
        g = torch.eye(4, dtype=torch.float64)
        g[:3, :3] = random_rotation_matrix(generator=generator, dtype=torch.float64)
        g[:3, 3] = torch.randn(3, generator=generator, dtype=torch.float64) * 5
        gi = torch.linalg.inv(g)
        ma = dense_correspondence_metrics(_oracle, va, vb, max_points=None, return_details=True)
        mb = dense_correspondence_metrics(_oracle, dict(va, world_to_cam=va["world_to_cam"] @ gi),
                                          dict(vb, world_to_cam=vb["world_to_cam"] @ gi),
                                          max_points=None, return_details=True)
        assert torch.equal(ma["pixels_a"], mb["pixels_a"]) and torch.equal(ma["gt_b"], mb["gt_b"])
        assert ma["ape_px"] == mb["ape_px"] == 0.0

    def test_uint8_images_are_scaled(self):
        """uint8 images (as load_view reads PNGs) reach the extractor as floats in [0, 1]."""
        va, vb = _scene_views()
        seen = []

        def spy(images):
            seen.append((images.dtype, float(images.max())))
            return _constant(images)

        a8 = dict(va, rgb=(va["rgb"] * 255).round().to(torch.uint8))
        b8 = dict(vb, rgb=(vb["rgb"] * 255).round().to(torch.uint8))
        m8 = dense_correspondence_metrics(spy, a8, b8, max_points=None)
        assert seen[0][0] == torch.float32 and 0.5 < seen[0][1] <= 1.0
        assert m8 == dense_correspondence_metrics(_constant, va, vb, max_points=None)

    def test_no_visible_points_gives_nan(self):
        va, vb = _scene_views(dx=40.0)  # B looks far away: nothing of A is in its image
        vb = dict(vb, mask=va["mask"], depth=va["depth"])  # give B a foreground to match against
        m = dense_correspondence_metrics(_constant, va, vb)
        assert m["num_points"] == 0 and math.isnan(m["ape_px"]) and math.isnan(m["pcdp_bbox@0.1"])

    def test_errors(self):
        va, vb = _scene_views()
        with pytest.raises(ValueError, match="view_b"):
            dense_correspondence_metrics(_oracle, va, {k: v for k, v in vb.items() if k != "K"})
        with pytest.raises(ValueError, match="depth"):
            dense_correspondence_metrics(_oracle, dict(va, depth=va["depth"][:-1]), vb)
        with pytest.raises(ValueError, match="thresholds"):
            dense_correspondence_metrics(_oracle, va, vb, thresholds=(0.1, -0.2))
        with pytest.raises(ValueError, match="max_points"):
            dense_correspondence_metrics(_oracle, va, vb, max_points=0)
        with pytest.raises(ValueError, match="extractor"):
            dense_correspondence_metrics(lambda x: x[0], va, vb)
        with pytest.raises(ValueError, match="view_b"):
            dense_correspondence_metrics(_oracle, va, dict(vb, mask=torch.zeros(SIZE, SIZE, dtype=torch.bool)))


class TestHelpers:
    def test_sample_features_equals_upsampling(self, generator):
        f = torch.randn(5, 7, 9, generator=generator, dtype=torch.float64)
        up = F.interpolate(f[None], (20, 33), mode="bilinear", align_corners=False)[0]
        vv, uu = torch.meshgrid(torch.arange(20), torch.arange(33), indexing="ij")
        pix = torch.stack([uu.flatten(), vv.flatten()], 1)
        got = sample_features(f, pix, (20, 33))
        torch.testing.assert_close(got, up[:, pix[:, 1], pix[:, 0]].T, rtol=0, atol=1e-12)

    @pytest.mark.parametrize("hw,HW", [((7, 9), (20, 33)), ((5, 5), (5, 5)), ((16, 12), (9, 7)), ((1, 4), (3, 8))])
    def test_dense_cosine_similarity_equals_explicit_upsampling(self, generator, hw, HW):
        """Up-, same- and down-sampling, a 1-row map (border clamping): against cos of F.interpolate."""
        f = torch.randn(6, *hw, generator=generator, dtype=torch.float64)
        f[:, 0, 0] = 0.0  # a zero feature: its neighbourhood has small norms
        q = torch.randn(4, 6, generator=generator, dtype=torch.float64)
        up = F.interpolate(f[None], HW, mode="bilinear", align_corners=False)[0]
        ref = F.normalize(q, dim=1) @ F.normalize(up.flatten(1), dim=0)
        got = dense_cosine_similarity(q, f, HW)
        torch.testing.assert_close(got.flatten(1), ref, rtol=0, atol=1e-10)
        # a pixel subset (shuffled, with a duplicate) reads the same values
        vv, uu = torch.meshgrid(torch.arange(HW[0]), torch.arange(HW[1]), indexing="ij")
        pix = torch.stack([uu.flatten(), vv.flatten()], 1)
        sel = torch.cat([torch.randperm(len(pix), generator=generator)[:9], torch.tensor([0])])
        sub = dense_cosine_similarity(q, f, HW, pixels=pix[sel])
        torch.testing.assert_close(sub, ref[:, pix[sel, 1] * HW[1] + pix[sel, 0]], rtol=0, atol=1e-10)
        with pytest.raises(ValueError, match="feat_query"):
            dense_cosine_similarity(q[:, :5], f, HW)

    def test_nearest_pixels_brute_force_and_ties(self, generator):
        a = torch.randn(50, 8, generator=generator)
        b = torch.randn(300, 8, generator=generator)
        idx, sim = nearest_pixels(a, b, chunk=7)
        # float64, unchunked: the reference cosine similarities
        ref = (F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T).argmax(dim=1)
        assert torch.equal(idx, ref)
        # ties go to the first index, also when the tie is at a scaled copy
        idx, _ = nearest_pixels(torch.ones(2, 3), torch.tensor([[0.0, 1, 0], [1.0, 1, 1], [2.0, 2, 2]]))
        assert idx.tolist() == [1, 1]

    def test_mask_bbox_size(self):
        m = torch.zeros(10, 12, dtype=torch.bool)
        m[2, 3] = m[6, 4] = True  # 2 columns (3, 4), 5 rows (2..6)
        assert mask_bbox_size(m) == 5.0
        with pytest.raises(ValueError, match="mask"):
            mask_bbox_size(torch.zeros(3, 3, dtype=torch.bool))


class TestKeypoints:
    def test_pck_hand_made(self):
        pred = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]], [[1.0, 1.0], [0.0, 0.0], [0.0, 30.0]]])
        gt = torch.zeros(2, 3, 2)
        vis = torch.tensor([[True, True, True], [True, False, True]])
        # errors: pair 0: 0, 5, 10 (norm 100); pair 1: sqrt 2, (hidden), 30 (norm 60)
        m = keypoint_pck(pred, gt, torch.tensor([100.0, 60.0]), visible=vis, alphas=(0.05, 0.1, 0.5))
        # alpha 0.05: thresholds 5 / 3 -> 0, 5 (inclusive), sqrt 2: 3 of 5; alpha 0.1
        # (10 / 6): 0, 5, 10, sqrt 2: 4 of 5; alpha 0.5 (50 / 30): all 5 (30 <= 30)
        assert m == {"pck@0.05": 3 / 5, "pck@0.1": 4 / 5, "pck@0.5": 5 / 5, "num_keypoints": 5}
        assert keypoint_pck(pred, gt, 100.0, visible=torch.zeros(2, 3, dtype=torch.bool))["num_keypoints"] == 0

    def test_pck_errors(self):
        with pytest.raises(ValueError, match="norm"):
            keypoint_pck(torch.zeros(3, 2), torch.zeros(3, 2), 0.0)
        with pytest.raises(ValueError, match="visible"):
            keypoint_pck(torch.zeros(3, 2), torch.zeros(3, 2), 1.0, visible=torch.ones(2, dtype=torch.bool))
        with pytest.raises(ValueError, match="target"):
            keypoint_pck(torch.zeros(3, 2), torch.zeros(4, 2), 1.0)

    def test_keypoints_from_points_and_transfer(self):
        va, vb = _scene_views()
        pts = torch.tensor([[0.5, 0.5, 0.0],   # back plane, visible in both
                            [0.0, 0.0, -1.0],   # occluder centre
                            [0.0, 0.0, 0.0],    # behind the occluder: hidden in both
                            [-0.6, 0.1, 0.0]])  # visible in A, hidden in B (parallax)
        uv_a, vis_a = keypoints_from_points(pts, va)
        uv_b, vis_b = keypoints_from_points(pts, vb)
        # hand projections: u = 16 (X - x_cam) / depth + 15.5
        torch.testing.assert_close(uv_a[0], torch.tensor([19.5, 19.5], dtype=torch.float64))
        torch.testing.assert_close(uv_b[1], torch.tensor([11.5, 15.5], dtype=torch.float64))
        assert vis_a.tolist() == [True, True, False, True]
        assert vis_b.tolist() == [True, True, False, False]
        # transfer with the oracle on integer keypoints of A: exact where visible in both
        kp_a = torch.tensor([[21.0, 21.0], [14.0, 15.0]])  # back plane (shift 2), occluder (shift 4)
        pred = transfer_keypoints(_oracle, va["rgb"], vb["rgb"], kp_a, mask_b=vb["mask"])
        assert pred.tolist() == [[19, 21], [10, 15]]
        m = keypoint_pck(pred, torch.tensor([[19.0, 21.0], [10.0, 15.0]]), mask_bbox_size(vb["mask"]))
        assert m["pck@0.05"] == 1.0


class TestBadInputFromAFreshUser:
    def test_uint16_and_0_255_float_images_are_refused(self):
        """uint16 images went to the extractor as 0..65535 (a plausible APE, no error);
        float images in [0, 255] too."""
        va, vb = _scene_views()
        for bad, match in ((va["rgb"].mul(65535).to(torch.int32), "expected a float image"),
                           (va["rgb"].float() * 255.0, r"values in \[")):
            with pytest.raises(ValueError, match=match):
                dense_correspondence_metrics(_oracle, dict(va, rgb=bad), vb)

    def test_nan_features_are_refused_not_matched_to_pixel_0(self):
        """One NaN in a feature map made every similarity NaN and every match candidate 0
        (APE 0.12 -> 17 px, silently)."""
        va, vb = _scene_views()
        fa, fb = _oracle(torch.stack([va["rgb"], vb["rgb"]]).permute(0, 3, 1, 2)
                         if va["rgb"].shape[-1] == 3 else torch.stack([va["rgb"], vb["rgb"]]))
        fb = fb.clone()
        fb[:, 5, 7] = float("nan")
        with pytest.raises(ValueError, match="fmap: expected finite"):
            dense_correspondence_metrics(None, va, vb, features=(fa, fb), max_points=None)
        with pytest.raises(ValueError, match="feat_target: expected finite"):
            nearest_pixels(torch.ones(2, 3), torch.tensor([[1.0, 0, 0], [float("nan"), 0, 0]]))

    def test_keypoints_outside_image_a_or_nan_are_refused(self):
        """They read the border feature (or NaN) and came back as pixel (0, 0)."""
        img = torch.rand(3, 8, 10, generator=torch.Generator().manual_seed(0))
        assert transfer_keypoints(lambda x: x, img, img, torch.tensor([[9.5, -0.5]])).tolist() \
            == [[9, 0]]  # the edges themselves are inside
        for kp in ([[-50.0, -50.0]], [[1e6, 3.0]], [[float("nan"), 3.0]], [[3.0, 7.6]]):
            with pytest.raises(ValueError, match="keypoints_a: expected finite"):
                transfer_keypoints(lambda x: x, img, img, torch.tensor(kp))
