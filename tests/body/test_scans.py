from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from geo3d.body import (
    arteq_part_labels,
    depth_camera_scan,
    look_at,
    part_labels,
    pinhole_intrinsics,
    sample_surface_scan,
    tiny_body_dict,
)


@pytest.fixture(scope="module")
def body():
    d = tiny_body_dict()
    return (
        torch.as_tensor(d["v_template"]),
        torch.as_tensor(d["f"]),
        torch.as_tensor(d["weights"]),
    )


def test_full_scan_weights_match_trimesh_barycentrics(body):
    V, F, W = body
    s = sample_surface_scan(V, F, W, 500, noise_std=0.0, generator=torch.Generator().manual_seed(0))
    mesh = trimesh.Trimesh(V.numpy(), F.numpy(), process=False)
    # independent: trimesh's closest point, face and barycentric coordinates
    closest, dist, tri = trimesh.proximity.closest_point(mesh, s.points.numpy())
    assert dist.max() < 1e-9
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], closest)
    ref_w = (W.numpy()[F.numpy()[tri]] * bary[..., None]).sum(1)
    # a point on a shared edge may be attributed to the neighbour triangle: same weights there
    np.testing.assert_allclose(s.weights.numpy(), ref_w, atol=1e-9)
    np.testing.assert_array_equal(s.labels.numpy(), ref_w.argmax(1))
    torch.testing.assert_close(s.arteq_labels, arteq_part_labels(s.weights))


def test_full_scan_is_area_uniform(body):
    V, F, W = body
    N = 20000
    s = sample_surface_scan(V, F, W, N, noise_std=0.0, generator=torch.Generator().manual_seed(1))
    area = trimesh.Trimesh(V.numpy(), F.numpy(), process=False).area_faces
    seg = np.arange(len(F)) // 60  # 60 triangles per joint segment
    p = np.bincount(seg, weights=area, minlength=24) / area.sum()
    got = np.bincount(seg[s.faces.numpy()], minlength=24) / N
    np.testing.assert_allclose(got, p, atol=4 * np.sqrt(p * (1 - p) / N).max())


def test_full_scan_noise_is_1mm_and_seeded(body):
    V, F, W = body
    clean = sample_surface_scan(
        V, F, W, 4000, noise_std=0.0, generator=torch.Generator().manual_seed(2)
    )
    noisy = sample_surface_scan(V, F, W, 4000, generator=torch.Generator().manual_seed(2))
    again = sample_surface_scan(V, F, W, 4000, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(noisy.points, again.points, atol=0, rtol=0)
    torch.testing.assert_close(noisy.weights, clean.weights, atol=0, rtol=0)
    std = (noisy.points - clean.points).std().item()
    assert abs(std - 1e-3) < 0.05e-3


def test_full_scan_errors(body):
    V, F, W = body
    with pytest.raises(ValueError, match="num_points"):
        sample_surface_scan(V, F, W, 0)
    with pytest.raises(ValueError, match="weights"):
        sample_surface_scan(V, F, W[:10], 5)
    with pytest.raises(ValueError, match="faces"):
        sample_surface_scan(V, F + 1000, W, 5)
    with pytest.raises(ValueError, match="vertices"):
        sample_surface_scan(V[:, :2], F, W, 5)
    with pytest.raises(ValueError, match="noise_std"):
        sample_surface_scan(V, F, W, 5, noise_std=-1.0)


def test_look_at_axes():
    T = look_at(
        torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    )
    # a viewer at +z facing the body (-z): image right is world +x, image down is world -y
    torch.testing.assert_close(
        T[:3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    )
    torch.testing.assert_close(T[:3, 3], torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="up"):
        look_at(torch.tensor([0.0, 3.0, 0.0]), torch.zeros(3))


def test_depth_scan_against_trimesh_rays(body):
    pytest.importorskip("open3d")
    V, F, W = body
    W_, H_ = 64, 48
    K = pinhole_intrinsics(W_, H_, 60.0)
    T = look_at(
        torch.tensor([0.4, 0.3, 2.5], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    )
    s = depth_camera_scan(V, F, W, K, T, W_, H_)
    assert len(s.points) > 100
    # each point projects to its pixel centre and its camera depth is the depth image value
    Rt = torch.linalg.inv(T)
    pc = s.points @ Rt[:3, :3].T + Rt[:3, 3]
    uv = pc[:, :2] / pc[:, 2:] @ K[:2, :2].T + K[:2, 2]
    torch.testing.assert_close(uv, s.pixels.flip(-1).double() + 0.5, atol=1e-4, rtol=0)
    torch.testing.assert_close(pc[:, 2], s.depth[s.pixels[:, 0], s.pixels[:, 1]], atol=1e-5, rtol=0)
    # independent ray casting: trimesh's first hits
    mesh = trimesh.Trimesh(V.numpy(), F.numpy(), process=False)
    rows, cols = np.meshgrid(np.arange(H_), np.arange(W_), indexing="ij")
    pix = np.stack([cols + 0.5, rows + 0.5, np.ones_like(rows)], -1).reshape(-1, 3)
    d = pix @ np.linalg.inv(K.numpy()).T @ T[:3, :3].numpy().T
    o = np.broadcast_to(T[:3, 3].numpy(), d.shape)
    loc, ray_idx, _ = mesh.ray.intersects_location(o, d, multiple_hits=True)
    t = np.full(len(d), np.inf)
    np.minimum.at(
        t,
        ray_idx,
        np.einsum("ij,ij->i", loc - o[ray_idx], d[ray_idx])
        / np.einsum("ij,ij->i", d[ray_idx], d[ray_idx]),
    )
    ref = t.reshape(H_, W_)
    hit = np.isfinite(ref)
    # same silhouette except for rays grazing an edge
    assert (hit != np.isfinite(s.depth.numpy())).sum() <= 3
    both = hit & np.isfinite(s.depth.numpy())
    np.testing.assert_allclose(s.depth.numpy()[both], ref[both], atol=1e-5)
    torch.testing.assert_close(s.labels, part_labels(s.weights))


def test_depth_scan_noise_moves_along_rays(body):
    pytest.importorskip("open3d")
    V, F, W = body
    K = pinhole_intrinsics(32, 24, 60.0)
    T = look_at(
        torch.tensor([0.0, 0.0, 2.5], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    )
    clean = depth_camera_scan(V, F, W, K, T, 32, 24)
    noisy = depth_camera_scan(
        V, F, W, K, T, 32, 24, depth_noise_std=0.01, generator=torch.Generator().manual_seed(0)
    )
    Rt = torch.linalg.inv(T)
    pc = noisy.points @ Rt[:3, :3].T + Rt[:3, 3]
    uv = pc[:, :2] / pc[:, 2:] @ K[:2, :2].T + K[:2, 2]
    torch.testing.assert_close(uv, noisy.pixels.flip(-1).double() + 0.5, atol=1e-4, rtol=0)
    dz = (noisy.depth - clean.depth)[torch.isfinite(clean.depth)]
    assert abs(dz.std().item() - 0.01) < 0.002
    with pytest.raises(ValueError, match="intrinsics"):
        depth_camera_scan(V, F, W, K[:2], T, 32, 24)
