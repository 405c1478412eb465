"""Pixel and pair sampling: hand-made views with known 3D points, brute-force distances,
camera angles from hand-placed cameras."""

from __future__ import annotations

import math

import pytest
import torch
from geo3d.apps.multiview_corr._sampling import (
    foreground_mask,
    pair_angle,
    pair_angle_ok,
    sample_foreground_pixels,
    sample_pixel_pairs,
    sample_view_pair,
    valid_view_pairs,
    view_points,
)

from geo3d.render import look_at, random_viewpoints, relative_rotation_angle


def _view(h=5, w=7, seed=0, frac=0.6):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(h, w, generator=g) < frac
    # points on a coarse lattice (many exact duplicates and 5e-3-close pairs) plus jitter
    pts = torch.randint(0, 3, (h, w, 3), generator=g).float() * 0.05
    pts += (torch.rand(h, w, 3, generator=g) - 0.5) * 0.004
    return {"mask": mask, "points": pts}


def test_pixels_are_foreground_and_points_match_non_square_view():
    v = _view(5, 7)
    g = torch.Generator().manual_seed(1)
    s = sample_pixel_pairs(v, _view(5, 7, seed=2), num_pixels=6, generator=g)
    pix = s["pixels_a"]
    assert pix.dtype == torch.long and pix.shape == (6, 2)
    u, vv = pix[:, 0], pix[:, 1]
    assert bool((u < 7).all()) and bool((vv < 5).all())
    assert bool(v["mask"][vv, u].all())  # (u, v) = (column, row)
    for k in range(6):  # catches a u/v swap in the point lookup
        assert torch.equal(s["points_a"][k], v["points"][int(vv[k]), int(u[k])])


def test_without_replacement_when_enough_with_replacement_otherwise():
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[1:4, 2:5] = True  # 9 pixels
    g = torch.Generator().manual_seed(0)
    few = sample_foreground_pixels(mask, 9, g)
    assert len({tuple(p) for p in few.tolist()}) == 9  # every foreground pixel once
    many = sample_foreground_pixels(mask, 50, g)
    assert many.shape == (50, 2)
    assert {tuple(p) for p in many.tolist()} <= {(u, v) for v in range(1, 4) for u in range(2, 5)}
    assert sample_foreground_pixels(torch.zeros(3, 3, dtype=torch.bool), 5).shape == (0, 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masks_against_brute_force_distances(seed):
    va, vb = _view(9, 11, seed=seed, frac=0.8), _view(9, 11, seed=seed + 10, frac=0.8)
    s = sample_pixel_pairs(
        va,
        vb,
        num_pixels=40,
        pos_radius=5e-3,
        neg_radius=0.1,
        generator=torch.Generator().manual_seed(seed),
    )
    pa, pb = s["points_a"].tolist(), s["points_b"].tolist()
    n_pos = n_neg = 0
    for i in range(40):
        for j in range(40):
            d = math.dist(pa[i], pb[j])
            assert bool(s["pos_mask"][i, j]) == (d < 5e-3)
            assert bool(s["neg_mask"][i, j]) == (d > 0.1)
            n_pos += d < 5e-3
            n_neg += d > 0.1
    assert n_pos > 0 and n_neg > 0  # both classes exercised
    assert not bool((s["pos_mask"] & s["neg_mask"]).any())


def test_radii_are_configurable():
    va, vb = _view(seed=3, frac=1.0), _view(seed=4, frac=1.0)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = sample_pixel_pairs(va, vb, 20, generator=g())
    b = sample_pixel_pairs(va, vb, 20, pos_radius=0.06, neg_radius=0.07, generator=g())
    assert torch.equal(a["pixels_a"], b["pixels_a"])
    assert int(b["pos_mask"].sum()) > int(a["pos_mask"].sum())
    assert int(b["neg_mask"].sum()) > int(a["neg_mask"].sum())


def test_generator_reproducible_and_used():
    va, vb = _view(seed=3, frac=1.0), _view(seed=4, frac=1.0)
    s1 = sample_pixel_pairs(va, vb, 10, generator=torch.Generator().manual_seed(5))
    s2 = sample_pixel_pairs(va, vb, 10, generator=torch.Generator().manual_seed(5))
    s3 = sample_pixel_pairs(va, vb, 10, generator=torch.Generator().manual_seed(6))
    assert torch.equal(s1["pixels_a"], s2["pixels_a"]) and torch.equal(
        s1["pixels_b"], s2["pixels_b"]
    )
    assert not torch.equal(s1["pixels_a"], s3["pixels_a"])


def test_points_from_depth_match_manual_backprojection():
    K = torch.tensor([[30.0, 0.0, 3.5], [0.0, 25.0, 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    T = look_at([1.5, -1.0, 0.7])
    g = torch.Generator().manual_seed(0)
    depth = 1.0 + torch.rand(5, 8, generator=g, dtype=torch.float64)
    depth[0, 0] = 0.0  # background
    view = {"mask": torch.ones(5, 8, dtype=torch.bool), "depth": depth, "K": K, "world_to_cam": T}
    pts = view_points(view)
    R, t = T[:3, :3], T[:3, 3]
    for v, u in [(1, 2), (4, 7), (3, 0)]:
        z = float(depth[v, u])
        xc = torch.tensor([(u - 3.5) / 30.0 * z, (v - 2.0) / 25.0 * z, z], dtype=torch.float64)
        assert torch.allclose(pts[v, u], R.t() @ (xc - t), atol=1e-12)
    fg = foreground_mask(view)
    assert not bool(fg[0, 0]) and int(fg.sum()) == 39  # depth 0 is not foreground


def test_empty_foreground_gives_empty_samples():
    va = _view(frac=1.0)
    vb = {"mask": torch.zeros(5, 7, dtype=torch.bool), "points": torch.zeros(5, 7, 3)}
    s = sample_pixel_pairs(va, vb, 8)
    assert s["pixels_b"].shape == (0, 2) and s["pos_mask"].shape == (8, 0)


def test_nonfinite_points_are_not_sampled():
    v = _view(frac=1.0)
    v["points"][0, :] = float("nan")
    s = sample_pixel_pairs(v, v, 1000, generator=torch.Generator().manual_seed(0))
    assert bool((s["pixels_a"][:, 1] != 0).all())


def test_bad_input():
    v = _view()
    with pytest.raises(ValueError, match="view_b"):
        sample_pixel_pairs(v, {"mask": v["mask"]})
    with pytest.raises(ValueError, match="view_a"):
        sample_pixel_pairs({"mask": v["mask"], "points": torch.zeros(5, 6, 3)}, v)
    with pytest.raises(ValueError, match="neg_radius"):
        sample_pixel_pairs(v, v, pos_radius=0.2, neg_radius=0.1)
    with pytest.raises(ValueError, match="pos_radius"):
        sample_pixel_pairs(v, v, pos_radius=-1.0)
    with pytest.raises(ValueError, match="num_pixels"):
        sample_pixel_pairs(v, v, num_pixels=0)
    with pytest.raises(ValueError, match="mask"):
        sample_foreground_pixels(torch.ones(3, 3), 2)


# ------------------------------------------------------------------------ view pairs
def _ring(deg: float, r: float = 2.0):
    a = math.radians(deg)
    return look_at([r * math.cos(a), r * math.sin(a), 0.0])


@pytest.mark.parametrize("deg", [0.0, 37.0, 90.0, 119.0, 150.0, 180.0])
def test_angles_of_cameras_on_a_ring(deg):
    # cameras on the equator looking at the origin, up = z: the relative rotation is the
    # rotation about z by `deg`, and the optical axes are `deg` apart
    a, b = _ring(0.0), _ring(deg)
    assert float(pair_angle(a, b)) == pytest.approx(deg, abs=1e-5)
    assert float(pair_angle(a, b, "direction")) == pytest.approx(deg, abs=1e-9)


def test_roll_separates_the_two_definitions():
    a = look_at([2.0, 0.0, 0.0])
    roll = torch.eye(4, dtype=torch.float64)
    roll[:2, :2] = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)  # 90° about z_cam
    b = roll @ a
    assert float(pair_angle(a, b, "direction")) == pytest.approx(0.0, abs=1e-9)
    assert float(pair_angle(a, b, "rotation")) == pytest.approx(90.0, abs=1e-9)
    assert pair_angle_ok(a, b, 45.0, "direction") and not pair_angle_ok(a, b, 45.0)


def test_threshold_is_inclusive():
    a = _ring(0.0)
    assert pair_angle_ok(a, _ring(120.0), 120.0)
    assert pair_angle_ok(a, _ring(120.0), 120.0, "direction")
    assert not pair_angle_ok(a, _ring(120.01), 120.0)
    assert not pair_angle_ok(a, _ring(121.0), 120.0, "direction")
    with pytest.raises(ValueError, match="max_deg"):
        pair_angle_ok(a, a, float("nan"))
    with pytest.raises(ValueError, match="kind"):
        pair_angle(a, a, "axis")


def test_sample_view_pair_uniform_over_valid_pairs():
    # 6 cameras on a ring every 60°: pairs within 120° are ring distance 1 or 2
    T = torch.stack([_ring(60.0 * k) for k in range(6)])
    g = torch.Generator().manual_seed(0)
    pairs = valid_view_pairs(T, 120.0)
    assert sorted(map(tuple, pairs.tolist())) == sorted(
        (i, j) for i in range(6) for j in range(6) if min((i - j) % 6, (j - i) % 6) in (1, 2)
    )
    seen = {}
    for _ in range(200):
        i, j = sample_view_pair(T, 120.0, generator=g)
        assert i != j and min((i - j) % 6, (j - i) % 6) in (1, 2)
        seen[(i, j)] = seen.get((i, j), 0) + 1
    assert len(seen) == 24  # 6 views x 4 partners, ordered
    assert min(seen.values()) >= 2  # expected 8.3 each
    i, j = sample_view_pair(T, 120.0, exclude=[0, 1, 2, 3], generator=g)
    assert {i, j} == {4, 5}
    with pytest.raises(ValueError, match="max_deg"):
        sample_view_pair(T, 30.0)
    with pytest.raises(ValueError, match="exclude"):
        valid_view_pairs(T, exclude=[6])


def test_rotation_angle_agrees_with_the_render_filter_on_random_cameras():
    g = torch.Generator().manual_seed(0)
    eyes = random_viewpoints(12, 2.0, generator=g)
    T = look_at(eyes)
    want = relative_rotation_angle(T[:, None], T[None, :])  # the MultiviewPairs quantity
    got = pair_angle(T[:, None], T[None, :])
    assert torch.allclose(got, want, atol=1e-5)  # arccos near 0: ~1e-6 degrees of rounding
    # directions: the optical axis of a look-at camera points from its centre to the origin
    d = -eyes / eyes.norm(dim=-1, keepdim=True)
    cosang = (d[:, None] * d[None, :]).sum(-1).clamp(-1, 1)
    assert torch.allclose(
        pair_angle(T[:, None], T[None, :], "direction"),
        torch.rad2deg(torch.arccos(cosang)),
        atol=1e-5,
    )
    pairs = valid_view_pairs(T, 100.0)
    assert sorted(map(tuple, pairs.tolist())) == [
        (i, j) for i in range(12) for j in range(12) if i != j and float(want[i, j]) <= 100.0
    ]
