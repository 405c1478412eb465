"""TAP-Vid metrics on hand-made tracks, rendered track ground truth, feature tracker (issue 16 §2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geo3d.eval import tapvid_metrics, track_points, tracking_metrics


def _hand_tracks():
    """2 tracks x 4 frames at 256 x 256 (no scaling). Track A: query frame 0, always visible,
    errors 0 / 0.5 / 3 / 20 px, predicted occluded in frame 3. Track B: query frame 1,
    occluded in frames 0 and 2; predicted visible at frame 2 (a false positive) and
    sqrt(2) px off in frame 3."""
    gt = torch.tensor([[[10.0, 10.0]] * 4, [[50.0, 50.0]] * 4])
    pred = torch.tensor([
        [[10.0, 10.0], [10.5, 10.0], [13.0, 10.0], [30.0, 10.0]],
        [[0.0, 0.0], [50.0, 50.0], [50.0, 50.0], [51.0, 51.0]],
    ])
    gt_occ = torch.tensor([[False, False, False, False], [True, False, True, False]])
    pred_occ = torch.tensor([[False, False, False, True], [True, False, False, False]])
    return pred, pred_occ, gt, gt_occ, torch.tensor([0, 1])


def _loop_reference(pred, pred_occ, gt, gt_occ, qf, size, mode, ths=(1, 2, 4, 8, 16)):
    """Straightforward per-point loop over the published definitions (one video)."""
    H, W = size
    n_eval = n_occ_ok = n_vis = 0
    within = dict.fromkeys(ths, 0)
    tp = dict.fromkeys(ths, 0)
    fp = dict.fromkeys(ths, 0)
    for i in range(gt.shape[0]):
        for t in range(gt.shape[1]):
            if (mode == "first" and t <= qf[i]) or (mode == "strided" and t == qf[i]):
                continue
            n_eval += 1
            g_vis = not bool(gt_occ[i, t])
            p_vis = not bool(pred_occ[i, t])
            n_occ_ok += int(g_vis == p_vis)
            n_vis += int(g_vis)
            dx = (float(pred[i, t, 0]) - float(gt[i, t, 0])) * 256 / W
            dy = (float(pred[i, t, 1]) - float(gt[i, t, 1])) * 256 / H
            d = math.hypot(dx, dy)
            for th in ths:
                close = d < th
                within[th] += int(close and g_vis)
                tp[th] += int(close and g_vis and p_vis)
                fp[th] += int(p_vis and (not g_vis or not close))
    out = {"occlusion_accuracy": n_occ_ok / n_eval}
    for th in ths:
        out[f"pts_within_{th}"] = within[th] / n_vis
        out[f"jaccard_{th}"] = tp[th] / (n_vis + fp[th])
    out["average_pts_within_thresh"] = sum(out[f"pts_within_{th}"] for th in ths) / len(ths)
    out["average_jaccard"] = sum(out[f"jaccard_{th}"] for th in ths) / len(ths)
    return out


class TestTapVidMetrics:
    def test_hand_computed(self):
        """Evaluated pairs ("first"): A at frames 1-3, B at frame 3 and the (occluded) frame 2.

        OA: A1 ok, A2 ok, A3 wrong (pred occluded), B2 wrong (pred visible), B3 ok -> 3/5.
        Visible evaluated: A1, A2, A3, B3 (4). Errors 0.5, 3, 20, sqrt 2.
        within (strict <): d=1: {A1}; 2: {A1, B3}; 4, 8, 16: {A1, A2, B3} -> 1/4, 2/4, 3/4 x3.
        Jaccard: predicted visible evaluated = A1, A2, B2, B3.
          d=1: TP {A1}, FP {A2, B2, B3} -> 1/7; d=2: TP {A1, B3}, FP {A2, B2} -> 2/6;
          d=4, 8, 16: TP {A1, A2, B3}, FP {B2} -> 3/5 (A3 is a false negative).
        """
        pred, pred_occ, gt, gt_occ, qf = _hand_tracks()
        m = tapvid_metrics(pred, pred_occ, gt, gt_occ, image_size=(256, 256), query_frames=qf)
        assert m["occlusion_accuracy"] == pytest.approx(3 / 5, abs=1e-15)
        expect_w = [1 / 4, 2 / 4, 3 / 4, 3 / 4, 3 / 4]
        expect_j = [1 / 7, 2 / 6, 3 / 5, 3 / 5, 3 / 5]
        for th, w, j in zip((1, 2, 4, 8, 16), expect_w, expect_j, strict=True):
            assert m[f"pts_within_{th}"] == pytest.approx(w, abs=1e-15)
            assert m[f"jaccard_{th}"] == pytest.approx(j, abs=1e-15)
        assert m["average_pts_within_thresh"] == pytest.approx(sum(expect_w) / 5, abs=1e-15)
        assert m["average_jaccard"] == pytest.approx(sum(expect_j) / 5, abs=1e-15)
        # "strided" also evaluates B at frame 0 (occluded, predicted occluded): OA 4/6, rest unchanged
        s = tapvid_metrics(pred, pred_occ, gt, gt_occ, image_size=(256, 256), query_frames=qf, query_mode="strided")
        assert s["occlusion_accuracy"] == pytest.approx(4 / 6, abs=1e-15)
        assert s["average_jaccard"] == pytest.approx(m["average_jaccard"], abs=1e-15)
        # the query frame is excluded: a wrong prediction there changes nothing
        pred2 = pred.clone()
        pred2[0, 0] = torch.tensor([200.0, 200.0])
        assert tapvid_metrics(pred2, pred_occ, gt, gt_occ, image_size=(256, 256), query_frames=qf)["average_jaccard"] == m["average_jaccard"]

    def test_scaling_to_256(self):
        """At H=128, W=512 an x error of 3 px and a y error of 0.75 px are both 1.5 px at 256 x 256."""
        gt = torch.zeros(2, 2, 2)
        pred = gt.clone()
        pred[0, 1] = torch.tensor([3.0, 0.0])
        pred[1, 1] = torch.tensor([0.0, 0.75])
        occ = torch.zeros(2, 2, dtype=torch.bool)
        m = tapvid_metrics(pred, occ, gt, occ, image_size=(128, 512))
        assert m["pts_within_1"] == 0.0 and m["pts_within_2"] == 1.0

    def test_against_loop_random_batch(self, generator):
        B, N, T, size = 3, 7, 9, (120, 200)
        gt = torch.rand(B, N, T, 2, generator=generator, dtype=torch.float64) * 100
        pred = gt + torch.randn(B, N, T, 2, generator=generator, dtype=torch.float64) * 6
        gt_occ = torch.rand(B, N, T, generator=generator) < 0.3
        pred_occ = torch.rand(B, N, T, generator=generator) < 0.3
        qf = torch.randint(0, T - 2, (B, N), generator=generator)
        for mode in ("first", "strided"):
            m = tapvid_metrics(pred, pred_occ, gt, gt_occ, image_size=size, query_frames=qf, query_mode=mode)
            refs = [_loop_reference(pred[b], pred_occ[b], gt[b], gt_occ[b], qf[b].tolist(), size, mode) for b in range(B)]
            for k in refs[0]:
                torch.testing.assert_close(m["per_video"][k], torch.tensor([r[k] for r in refs], dtype=torch.float64),
                                           rtol=0, atol=1e-12)
                assert m[k] == pytest.approx(float(np.mean([r[k] for r in refs])), abs=1e-12)

    def test_perfect_prediction(self):
        pred, pred_occ, gt, gt_occ, qf = _hand_tracks()
        m = tapvid_metrics(gt, gt_occ, gt, gt_occ, image_size=(256, 256), query_frames=qf)
        assert m["average_jaccard"] == 1.0 and m["occlusion_accuracy"] == 1.0 and m["average_pts_within_thresh"] == 1.0

    def test_errors(self):
        pred, pred_occ, gt, gt_occ, qf = _hand_tracks()
        with pytest.raises(ValueError, match="query_mode"):
            tapvid_metrics(pred, pred_occ, gt, gt_occ, image_size=(256, 256), query_mode="last")
        with pytest.raises(ValueError, match="pred_tracks"):
            tapvid_metrics(pred[:, :3], pred_occ, gt, gt_occ, image_size=(256, 256))
        with pytest.raises(ValueError, match="gt_occluded"):
            tapvid_metrics(pred, pred_occ, gt, gt_occ[:, :3], image_size=(256, 256))
        with pytest.raises(ValueError, match="query_frames"):
            tapvid_metrics(pred, pred_occ, gt, gt_occ, image_size=(256, 256), query_frames=torch.tensor([0, 4]))


# ----------------------------------------------------------------------------- rendered tracks
def _scene():
    import trimesh

    a = trimesh.creation.box(extents=(0.8, 0.6, 0.4))
    b = trimesh.creation.box(extents=(0.3, 0.3, 0.5))
    b.apply_translation((0.15, 0.0, 0.4))
    return trimesh.util.concatenate([a, b])


def _camera(size):
    from geo3d.render import intrinsics_matrix, look_at

    K = intrinsics_matrix(1.1 * size, 1.0 * size, cx=size / 2 - 0.3, cy=size / 2 + 0.2)
    return K, look_at([0.3, -2.2, 1.0])


@pytest.mark.usefixtures("open3d_module")
class TestRenderTracks:
    def _render(self, size=48, T=6, **kw):
        from geo3d.render import Renderer, render_tracks, smooth_rigid_trajectory

        mesh = _scene()
        P = smooth_rigid_trajectory(T, max_rotation_deg=150.0, max_translation=0.3,
                                    generator=torch.Generator().manual_seed(1))
        K, Tc = _camera(size)
        r = Renderer(mesh)
        out = render_tracks(r, K, Tc, P, (size, size), num_queries=40, generator=torch.Generator().manual_seed(2), **kw)
        return mesh, out, K, Tc, P

    def test_tracks_are_projections_of_moved_points(self):
        mesh, out, K, Tc, P = self._render()
        X = out["query_points"].numpy()
        Kn, Tn, Pn = K.numpy(), Tc.numpy(), P.numpy()
        for t in range(P.shape[0]):
            Xw = X @ Pn[t, :3, :3].T + Pn[t, :3, 3]  # object -> world
            Xc = Xw @ Tn[:3, :3].T + Tn[:3, 3]  # world -> camera
            uv = (Xc @ Kn.T)[:, :2] / Xc[:, 2:3]
            np.testing.assert_allclose(out["tracks"][:, t].numpy(), uv, rtol=0, atol=1e-9)
        # frame 0: the query pixels themselves, visible
        np.testing.assert_allclose(out["tracks"][:, 0].numpy(), out["query_pixels"].double().numpy(), atol=1e-4)
        assert not bool(out["occluded"][:, 0].any())
        # the query points lie on the mesh surface
        closest, dist, _ = mesh.nearest.on_surface(X)
        assert float(dist.max()) < 1e-6

    def test_occlusion_matches_trimesh_ray_test(self):
        """Occlusion flags agree with an independent ray/triangle test (trimesh, not Embree)."""
        from trimesh.ray.ray_triangle import RayMeshIntersector

        mesh, out, K, Tc, P = self._render()
        X = out["query_points"].numpy()
        inter = RayMeshIntersector(mesh)
        poses = (Tc @ P).numpy()
        H = W = 48
        expected = np.zeros(out["occluded"].shape, dtype=bool)
        for t in range(P.shape[0]):
            R, tr = poses[t, :3, :3], poses[t, :3, 3]
            c = -R.T @ tr  # camera centre, object frame
            d = X - c
            dist = np.linalg.norm(d, axis=1)
            locs, ray_idx, _ = inter.intersects_location(np.repeat(c[None], len(X), 0), d / dist[:, None], multiple_hits=True)
            first = np.full(len(X), np.inf)
            for loc, i in zip(locs, ray_idx, strict=True):
                first[i] = min(first[i], np.linalg.norm(loc - c))
            blocked = first < dist - 1e-4
            Xc = X @ R.T + tr
            uv = (Xc @ K.numpy().T)[:, :2] / Xc[:, 2:3]
            off = (Xc[:, 2] <= 0) | (uv[:, 0] < -0.5) | (uv[:, 0] > W - 0.5) | (uv[:, 1] < -0.5) | (uv[:, 1] > H - 0.5)
            expected[:, t] = blocked | off
        assert np.array_equal(out["occluded"].numpy(), expected)
        # the motion really occludes some points later on, and keeps others visible
        assert 0 < int(out["occluded"][:, 1:].sum()) < out["occluded"][:, 1:].numel()

    def test_off_image_points_are_occluded(self):
        from geo3d.render import render_tracks

        K, Tc = _camera(32)
        P = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
        P[1, 0, 3] = 5.0  # the object leaves the image sideways in frame 1
        out = render_tracks(_scene(), K, Tc, P, (32, 32), num_queries=10, generator=torch.Generator().manual_seed(0))
        assert out["occluded"][:, 1].all() and not out["occluded"][:, 0].any()

    def test_query_pixel_errors(self):
        from geo3d.render import render_tracks

        K, Tc = _camera(32)
        P = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
        with pytest.raises(ValueError, match="query_pixels"):
            render_tracks(_scene(), K, Tc, P, (32, 32), query_pixels=torch.tensor([[0, 0]]))  # background corner
        with pytest.raises(ValueError, match="object_poses"):
            render_tracks(_scene(), K, Tc, P[0], (32, 32))

    def test_trajectory_is_smooth_rigid(self):
        from geo3d.render import smooth_rigid_trajectory

        P = smooth_rigid_trajectory(30, max_rotation_deg=90.0, max_translation=0.4,
                                    generator=torch.Generator().manual_seed(0))
        R = P[:, :3, :3]
        torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(30, 3, 3))
        # constant angular speed about one axis: the total angle is 90 degrees
        c = ((R[-1].diagonal().sum() - 1) / 2).clamp(-1, 1)
        assert math.degrees(math.acos(float(c))) == pytest.approx(90.0, abs=1e-9)
        assert float(P[:, :3, 3].norm(dim=1).max()) <= 0.4
        with pytest.raises(ValueError, match="num_frames"):
            smooth_rigid_trajectory(0)


def _oracle_colours(p):
    return (p + 1.0) / 2.0


def _oracle(images: torch.Tensor) -> torch.Tensor:
    p = images.double() * 2.0 - 1.0
    s = (4.0 - (p**2).sum(1, keepdim=True)).clamp_min(0.0).sqrt()
    return torch.cat([p, s], dim=1).float()


@pytest.mark.usefixtures("open3d_module")
class TestTracker:
    def test_still_video_is_tracked_exactly(self):
        video = torch.rand(4, 3, 20, 24, generator=torch.Generator().manual_seed(0))
        video[1:] = video[0]
        q = torch.tensor([[3.0, 4.0], [23.0, 19.0], [10.0, 0.0]])
        out = track_points(lambda x: x, video, q)
        assert torch.equal(out["tracks"], q[:, None].double().expand(3, 4, 2))
        assert not out["occluded"].any()
        out = track_points(lambda x: x, video, q, occlusion="similarity", similarity_threshold=0.999)
        assert not out["occluded"].any()

    def test_coarse_features_against_explicit_upsampling(self, generator):
        """With a half-resolution map the tracker equals brute force on F.interpolate'd features."""
        video = torch.rand(3, 3, 12, 18, generator=generator)
        q = torch.tensor([[3.0, 4.0], [17.0, 11.0], [8.5, 2.25]])  # one sub-pixel query

        def coarse(x):
            return torch.nn.functional.avg_pool2d(x, 2) * torch.tensor([1.0, -2.0, 0.5])[None, :, None, None]

        out = track_points(coarse, video, q)
        maps = coarse(video).double()
        up = torch.nn.functional.interpolate(maps, (12, 18), mode="bilinear", align_corners=False)
        grid = torch.stack([(2 * q[:, 0] + 1) / 18 - 1, (2 * q[:, 1] + 1) / 12 - 1], -1).double()
        fq = torch.nn.functional.grid_sample(maps[:1], grid[None, None], align_corners=False, padding_mode="border")[0, :, 0].T
        for t in (1, 2):
            sims = torch.nn.functional.normalize(fq, dim=1) @ torch.nn.functional.normalize(up[t].flatten(1), dim=0)
            best = sims.argmax(dim=1)
            assert torch.equal(out["tracks"][:, t], torch.stack([best % 18, best // 18], 1).double())

    def test_occlusion_prediction_hand_made(self):
        """Frame 0: the query colour at (2, 3) and a similar colour at (12, 10). Frame 1: the
        query colour is gone, the similar one sits at (6, 6): the match goes there and its
        back-match is (12, 10), far from the query -> occluded (cycle), similarity
        cos((1, 0, 0), (1, 0.2, 0)) = 0.981 < 0.99 -> occluded (similarity). Frame 2: the query
        colour reappears at (7, 1): tracked there, cycle closes, similarity 1 -> visible."""
        H, W = 16, 20
        video = torch.zeros(3, 3, H, W)
        video[:, 2] = 1.0  # background colour (0, 0, 1)
        q, sim_c = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 0.2, 0.0])
        video[0, :, 3, 2] = q
        video[0, :, 10, 12] = sim_c
        video[1, :, 6, 6] = sim_c
        video[2, :, 1, 7] = q
        video[2, :, 10, 12] = sim_c
        query = torch.tensor([[2.0, 3.0]])
        out = track_points(lambda x: x, video, query)
        assert out["tracks"][0].tolist() == [[2.0, 3.0], [6.0, 6.0], [7.0, 1.0]]
        assert out["occluded"][0].tolist() == [False, True, False]
        out = track_points(lambda x: x, video, query, occlusion="similarity", similarity_threshold=0.99)
        assert out["occluded"][0].tolist() == [False, True, False]
        assert float(out["similarity"][0, 1]) == pytest.approx(1 / math.sqrt(1.04), rel=1e-6)
        # a huge cycle threshold accepts the wrong match
        out = track_points(lambda x: x, video, query, cycle_threshold=1000.0)
        assert out["occluded"][0].tolist() == [False, False, False]

    def test_oracle_vs_constant_on_rendered_motion(self):
        """Object-frame colours make the oracle track the surface point; constant features cannot."""
        from geo3d.render import Renderer, as_render_mesh, render_tracks, smooth_rigid_trajectory

        mesh = as_render_mesh(_scene(), color_fn=_oracle_colours)
        r = Renderer(mesh, ambient=1.0, diffuse=0.0)
        K, Tc = _camera(48)
        P = smooth_rigid_trajectory(5, max_rotation_deg=120.0, max_translation=0.2,
                                    generator=torch.Generator().manual_seed(1))
        ts = render_tracks(r, K, Tc, P, (48, 48), num_queries=40, generator=torch.Generator().manual_seed(2))
        m = tracking_metrics(_oracle, ts)
        pred = m["pred"]
        # brute force: every track position is the pixel of frame t whose (float64) oracle
        # feature has the largest cosine similarity with the query's
        f = torch.nn.functional.normalize(_oracle(ts["video"]).double(), dim=1)  # (T, C, H, W)
        qp = ts["query_pixels"]
        fq = f[0][:, qp[:, 1], qp[:, 0]].T  # (N, C)
        for t in range(1, f.shape[0]):
            best = (fq @ f[t].flatten(1)).argmax(dim=1)
            expect = torch.stack([best % 48, best // 48], dim=1).double()
            assert torch.equal(pred["tracks"][:, t], expect)
        # measured: delta_avg 0.62 (errors of 1-4 px at 48 px appear on faces seen at grazing
        # angles, where the nearest rendered surface sample is a few pixels away)
        assert m["pts_within_16"] >= 0.95
        const = tracking_metrics(lambda x: torch.ones(x.shape[0], 2, 6, 6), ts)
        assert const["average_pts_within_thresh"] < 0.2 < m["average_pts_within_thresh"]
        assert const["average_jaccard"] < m["average_jaccard"]

    def test_errors(self):
        video = torch.rand(3, 3, 8, 8)
        with pytest.raises(ValueError, match="query_frame"):
            track_points(lambda x: x, video, torch.zeros(1, 2), query_frame=3)
        with pytest.raises(ValueError, match="occlusion"):
            track_points(lambda x: x, video, torch.zeros(1, 2), occlusion="flow")
        with pytest.raises(ValueError, match="query_pixels"):
            track_points(lambda x: x, video, torch.zeros(2))
        with pytest.raises(ValueError, match="track_set"):
            tracking_metrics(lambda x: x, {"video": video})
