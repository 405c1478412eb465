"""ArtEqNet on tiny-body scans: articulation locality (exact) and an overfit sanity run."""

from __future__ import annotations

import math

import pytest
import torch
from geo3d.apps.arteq._model import ARTEQ_PARENTS, ArtEqNet

from geo3d.body import (
    SMPL_PARENTS,
    load_body_model,
    local_to_global,
    pose_body,
    sample_surface_scan,
    tiny_body_dict,
    write_tiny_body,
)
from geo3d.rotations import axis_angle_to_matrix, geodesic_distance, random_rotation_matrix

SMALL = {"k": 8, "feat_dim": 8, "hidden": (8, 8), "d_model": 32, "num_heads": 2,
         "rot_hidden": 8}
LEFT_ELBOW = 18


@pytest.fixture(scope="module")
def body():
    import tempfile
    from pathlib import Path

    d = tiny_body_dict()
    with tempfile.TemporaryDirectory() as tmp:
        model = load_body_model(write_tiny_body(Path(tmp) / "tiny.npz"), dtype=torch.float64)
    return model, torch.as_tensor(d["f"]).long(), torch.as_tensor(d["weights"], dtype=torch.float64)


def _two_scans(body, n: int = 400):
    """Scans of a T-pose and of the same body with the left elbow bent by 1.2 rad: the same
    surface samples (faces, barycentric coordinates) and the same 1 mm noise, so points not
    skinned to the forearm are identical in both."""
    model, faces, weights = body
    pose = torch.eye(3, dtype=torch.float64).repeat(2, 24, 1, 1)
    pose[1, LEFT_ELBOW] = axis_angle_to_matrix(torch.tensor([0.0, 0.0, 1.2], dtype=torch.float64))
    v = pose_body(model, pose).vertices.detach()
    g = torch.Generator().manual_seed(0)
    s = sample_surface_scan(v[0], faces, weights, n, noise_std=0.0, generator=g)
    tri = faces[s.faces]
    noise = 1e-3 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    pts = torch.stack([(v[i][tri] * s.barycentric[..., None]).sum(1) + noise for i in range(2)])
    return pts, s.arteq_labels.expand(2, n)


def _far_parts(pts: torch.Tensor, labels: torch.Tensor, reach: float) -> list[int]:
    """Parts whose points and whose parent's points lie farther than ``reach`` from every
    point that moved (in either scan). smplx's batched skinning moves a few torso vertices
    by ~1e-18 m (rounding): "moved" means by more than 1 nm."""
    moved = (pts[0] - pts[1]).abs().amax(-1) > 1e-9
    d = torch.minimum(torch.cdist(pts[0], pts[0][moved]).amin(-1),
                      torch.cdist(pts[1], pts[1][moved]).amin(-1))
    lab = labels[0]
    far = []
    for p in range(22):
        own = lab == p
        par = lab == ARTEQ_PARENTS[p] if p > 0 else own
        if own.any() and float(d[own | par].min()) > reach:
            far.append(p)
    return far


class TestArticulation:
    def test_local_backbone_far_parts_unchanged(self, body, capsys):
        pts, labels = _two_scans(body)
        torch.manual_seed(0)
        net = ArtEqNet("vn", **SMALL, num_centers=None).double().eval()
        # receptive field: one hop per EdgeConv block; hop length = the largest soft-kNN
        # radius (distance to the (k+1)-th neighbour) in either scan, x1.25 margin
        kth = torch.cdist(pts, pts).topk(SMALL["k"] + 1, largest=False).values[..., -1].amax()
        reach = 1.25 * len(SMALL["hidden"]) * float(kth)
        far = _far_parts(pts, labels, reach)
        # premise: knees, ankles, right elbow and wrist are far from the left forearm
        assert {4, 5, 7, 8, 19, 21} <= set(far), far
        with torch.no_grad():
            gt = net(pts, labels)
            pred = net(pts)
        ang_gt = geodesic_distance(gt["part_rot"][0], gt["part_rot"][1]) * 180 / math.pi
        ang_pr = geodesic_distance(pred["part_rot"][0], pred["part_rot"][1]) * 180 / math.pi
        with capsys.disabled():
            print(f"\narticulation (left elbow +1.2 rad, random init, vn): far parts {far}")
            print("  change deg, GT pooling:", [round(float(a), 3) for a in ang_gt])
            print("  change deg, predicted :", [round(float(a), 3) for a in ang_pr])
        # exact: with ground-truth pooling the far parts' rotations do not move at all
        # (a centroid-dependent feature or cross-part mixing in the readout breaks this)
        diff = (gt["part_rot"][0, far] - gt["part_rot"][1, far]).abs().max()
        assert float(diff) < 1e-10
        # the moved limb itself does change (the test is not vacuous)
        assert float(ang_gt[LEFT_ELBOW]) > 1.0 and float(ang_gt[20]) > 1.0

    def test_global_rotation_context_far_parts_move(self, body):
        # rot_context="global" trades the locality for whole-body context
        pts, labels = _two_scans(body)
        torch.manual_seed(0)
        net = ArtEqNet("vn", **SMALL, num_centers=None, rot_context="global").double().eval()
        with torch.no_grad():
            out = net(pts, labels)
        legs = [4, 5, 7, 8]
        assert float((out["part_rot"][0, legs] - out["part_rot"][1, legs]).abs().max()) > 1e-6

    def test_global_backbone_far_parts_move(self, body):
        # contrast: VN-DGCNN feeds positions relative to the centroid into every feature,
        # so bending the elbow moves every part's prediction (why "vn" is the default)
        pts, labels = _two_scans(body)
        torch.manual_seed(0)
        net = ArtEqNet("vn_dgcnn", **SMALL, num_centers=None).double().eval()
        with torch.no_grad():
            out = net(pts, labels)
        legs = [1, 2, 4, 5, 7, 8]
        assert float((out["part_rot"][0, legs] - out["part_rot"][1, legs]).abs().max()) > 1e-6


def test_float32_equivariance_on_body_scans(body, capsys):
    """float32 error on posed body scans under random rotations + translations (recorded).

    Soft kNN weights keep it at the rounding level. (A hard, tie-tolerant kNN graph gave
    ~1e-2 at the default size on 5000-point scans, where a near-tied neighbour flipped
    between a scan and its rotated copy; at this size no flip occurs, so that regression is
    caught by ``TestLocalEncoder.test_continuous_at_the_knn_boundary`` instead.)"""
    model, faces, weights = body
    g = torch.Generator().manual_seed(1)
    pose = axis_angle_to_matrix(0.3 * torch.randn(3, 24, 3, generator=g, dtype=torch.float64))
    v = pose_body(model, pose).vertices.detach().float()
    x = torch.stack([sample_surface_scan(v[i], faces, weights.float(), 1500, generator=g).points
                     for i in range(3)])
    R = random_rotation_matrix(3, generator=g)
    t = torch.randn(3, 3, generator=g)
    y = x @ R.transpose(-1, -2) + t[:, None]
    torch.manual_seed(0)
    net = ArtEqNet("vn", **SMALL, num_centers=512).eval()
    with torch.no_grad():
        a, b = net(x), net(y)
    err = float((b["part_rot"] - R[:, None] @ a["part_rot"]).abs().max())
    err_pose = float((b["body_pose"] - a["body_pose"]).abs().max())
    err_betas = float((b["betas"] - a["betas"]).abs().max())
    with capsys.disabled():
        print(f"\nfloat32 body scans: part_rot {err:.2e}, body_pose {err_pose:.2e}, "
              f"betas {err_betas:.2e}")
    assert err < 1e-3 and err_pose < 1e-3 and err_betas < 1e-4


def test_overfit_two_scans(body):
    """A few Adam steps on two posed tiny-body scans cut the rotation loss (train mode)."""
    model, faces, weights = body
    g = torch.Generator().manual_seed(0)
    pose = axis_angle_to_matrix(0.4 * torch.randn(2, 24, 3, generator=g, dtype=torch.float64))
    v = pose_body(model, pose).vertices.detach().float()
    scans = [sample_surface_scan(v[i], faces, weights.float(), 200, generator=g) for i in range(2)]
    x = torch.stack([s.points for s in scans])
    labels = torch.stack([s.arteq_labels for s in scans])
    gt = local_to_global(pose, SMPL_PARENTS)[:, :22].float()
    torch.manual_seed(0)
    net = ArtEqNet("vn", **SMALL)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = (net(x, labels)["part_rot"] - gt).square().sum((-1, -2)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    # measured: 6.25 -> ~1.7 (x0.27) in 30 steps; a readout that cannot fit (e.g. weights
    # shared across parts, a detached branch) stays near the initial ~6
    assert losses[-1] < 0.5 * losses[0], losses
