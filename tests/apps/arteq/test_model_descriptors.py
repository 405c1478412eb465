"""ArtEqNet ``seg_descriptors``: local shape descriptors (values, invariance, wiring)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from geo3d.apps.arteq._model import (
    DESCRIPTOR_AGG,
    DESCRIPTOR_SCALES,
    ArtEqNet,
    local_shape_descriptors,
)

from geo3d.rotations import random_rotation_matrix

SMALL = {"k": 8, "feat_dim": 8, "hidden": (8, 8), "d_model": 32, "num_heads": 2,
         "rot_hidden": 8, "batch_norm": False}
S = 7 * len(DESCRIPTOR_SCALES)  # numbers per point before the neighbourhood means
CHIRAL_COLS = [7 * i + 6 for i in range(len(DESCRIPTOR_SCALES))]  # the m3 column per scale


def _cloud(B: int, N: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [0.8, 0.4, 0.2], dtype=torch.float64)


def _soft_cbrt(p: float) -> float:
    return float(np.sign(p) * (np.cbrt(abs(p) + 1e-6) - 1e-2))


def _numpy_reference(x: np.ndarray, scales, agg) -> np.ndarray:
    """Brute force for one cloud without ties: full sort, per-point numpy eigh, loops."""
    y = x - x.mean(0)
    y = y / np.sqrt((y ** 2).sum(1).mean())
    N = len(y)
    d = np.sqrt(((y[:, None] - y[None]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")
    rows = []
    for n in range(N):
        r = []
        for k in scales:
            k = min(k, N)
            nb = y[order[n, :k]]
            c = nb.mean(0)
            z = nb - c
            ev, vec = np.linalg.eigh(z.T @ z / k)
            e1, e2 = vec[:, 2], vec[:, 1]
            # fix each axis's sign by the skewness (a different convention from the
            # function's, which never looks at signs): the numbers must not depend on it
            m1, m2 = ((z @ e1) ** 3).mean(), ((z @ e2) ** 3).mean()
            e1, e2 = np.sign(m1) * e1, np.sign(m2) * e2
            m1, m2 = abs(m1), abs(m2)
            m3 = ((z @ np.cross(e1, e2)) ** 3).mean()
            s1 = np.sqrt(ev[2])
            r += [*np.sqrt(np.clip(ev, 0, None)), np.linalg.norm(y[n] - c), d[n, order[n, k - 1]],
                  m1 / s1 ** 3, _soft_cbrt(m1 * m2 * m3 / s1 ** 9)]
        rows.append(r)
    f = np.array(rows)
    return np.concatenate([f] + [f[order[:, :min(a, N)]].mean(1) for a in agg], axis=1)


def test_descriptors_match_a_numpy_brute_force():
    # catches: wrong axis order (eigh is ascending), moments not centred, the k-th
    # neighbour off by one, the averaging over the wrong neighbourhood, missing scaling
    x = _cloud(2, 70, seed=3) * 3.0 + 5.0
    got = local_shape_descriptors(x, scales=(4, 9, 30), agg=(5, 20))
    assert got.shape == (2, 70, 7 * 3 * 3) and got.dtype == torch.float64
    for b in range(2):
        want = _numpy_reference(x[b].numpy(), (4, 9, 30), (5, 20))
        np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-9, atol=1e-12)


def test_descriptors_default_sizes_and_clamping():
    x = _cloud(1, 40, seed=1)
    assert local_shape_descriptors(x).shape == (1, 40, 7 * len(DESCRIPTOR_SCALES) * (
        1 + len(DESCRIPTOR_AGG)))
    # sizes above N use every point: same as asking for exactly N
    torch.testing.assert_close(local_shape_descriptors(x, (8, 100), (100,)),
                               local_shape_descriptors(x, (8, 40), (40,)), atol=0, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_descriptors_are_invariant_to_rotation_translation_and_scale(seed):
    x = _cloud(2, 120, seed=seed) + 30.0  # far from the origin
    g = torch.Generator().manual_seed(100 + seed)
    R = random_rotation_matrix(2, generator=g, dtype=x.dtype)
    t = 50.0 * torch.randn(2, 1, 3, generator=g, dtype=x.dtype)
    a = local_shape_descriptors(x)
    b = local_shape_descriptors(7.5 * (x @ R.transpose(-1, -2)) + t)
    torch.testing.assert_close(b, a, atol=1e-9, rtol=0)


def test_descriptors_only_the_chiral_columns_flip_under_a_mirror():
    # catches: a chirality-blind descriptor (no column changes) or one that is not a
    # pseudo-scalar (the other columns change)
    x = _cloud(1, 100, seed=9)
    M = torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=x.dtype))
    a, b = local_shape_descriptors(x), local_shape_descriptors(x @ M)
    odd = torch.zeros(a.shape[-1], dtype=torch.bool)
    for block in range(1 + len(DESCRIPTOR_AGG)):
        odd[[block * S + c for c in CHIRAL_COLS]] = True
    torch.testing.assert_close(b[..., ~odd], a[..., ~odd], atol=1e-9, rtol=0)
    torch.testing.assert_close(b[..., odd], -a[..., odd], atol=1e-9, rtol=0)
    assert float(a[..., odd].abs().min()) > 0  # not trivially zero


def test_descriptors_on_duplicates_and_grids_are_invariant_and_finite():
    # adversarial: duplicated points (distance-0 ties) and a jittered-free grid (many
    # equidistant neighbours at the k-th distance): the tie-symmetric neighbourhoods keep
    # the values independent of rounding; columns of eigen-axes that are not defined on
    # symmetric neighbourhoods (m1, m3) are excluded on the grid
    x = _cloud(1, 60, seed=4)
    x = torch.cat([x, x[:, :20]], dim=1)
    g = torch.Generator().manual_seed(5)
    R = random_rotation_matrix(1, generator=g, dtype=x.dtype)
    a = local_shape_descriptors(x)
    b = local_shape_descriptors(x @ R.transpose(-1, -2) + 3.0)
    torch.testing.assert_close(b, a, atol=1e-9, rtol=0)
    torch.testing.assert_close(a[0, 60:], a[0, :20], atol=0, rtol=0)  # duplicates agree
    ax = torch.arange(5, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(ax, ax, torch.arange(3, dtype=torch.float64),
                                      indexing="ij"), -1).reshape(1, -1, 3)
    c = local_shape_descriptors(grid, scales=(7, 20), agg=())
    d = local_shape_descriptors(grid @ R.transpose(-1, -2) - 2.0, scales=(7, 20), agg=())
    assert bool(torch.isfinite(c).all()) and bool(torch.isfinite(d).all())
    keep = [i for i in range(14) if i % 7 < 5]  # spreads, centroid offset, k-th distance
    torch.testing.assert_close(d[..., keep], c[..., keep], atol=1e-9, rtol=0)


def test_descriptors_reject_bad_input():
    for bad in (torch.zeros(3, 3), torch.zeros(1, 5, 2), torch.zeros(1, 0, 3), "x",
                torch.zeros(1, 5, 3, dtype=torch.long), torch.zeros(1, 5, 3, dtype=torch.bool)):
        with pytest.raises(ValueError, match="x"):
            local_shape_descriptors(bad)
    nan = torch.zeros(1, 5, 3)
    nan[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="x.*NaN"):
        local_shape_descriptors(nan)
    for kw in ({"scales": (0,)}, {"agg": (True,)}, {"scales": (2.5,)}, {"scales": ()},
               {"scales": 8}, {"scales": (k for k in (8, 16))}, {"agg": "16"}):
        with pytest.raises(ValueError, match="scales|agg"):
            local_shape_descriptors(torch.zeros(1, 5, 3), **kw)
    assert local_shape_descriptors(torch.randn(1, 5, 3), (2,), ()).shape == (1, 5, 7)


def test_descriptors_on_mirror_symmetric_clouds_are_invariant():
    # a neighbourhood symmetric under a mirror has zero skewness along its axes; signing an
    # axis by that skewness follows the rounding and flipped the chirality column under a
    # rotation (O(1) error in the net's outputs on a symmetric body template)
    g = torch.Generator().manual_seed(0)
    half = torch.randn(40, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [3.0, 1.0, 0.3], dtype=torch.float64)
    x = torch.cat([half, half * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)])[None]
    for seed in range(3):
        R = random_rotation_matrix(1, generator=torch.Generator().manual_seed(seed),
                                   dtype=x.dtype)
        a = local_shape_descriptors(x, scales=(20, 80), agg=(10,))
        b = local_shape_descriptors(x @ R.transpose(-1, -2) + 2.0, scales=(20, 80), agg=(10,))
        torch.testing.assert_close(b, a, atol=1e-9, rtol=0)
    # the whole cloud is its own mirror image: the odd columns of the 80-point scale vanish
    assert float(a[0, :, 13].abs().max()) < 1e-9


@pytest.mark.parametrize("scale", [1e150, 1e-150, 1e-200])
def test_descriptors_at_extreme_coordinate_scales_are_finite_and_scale_free(scale):
    # squares of 1e155 overflowed to inf and of 1e-200 underflowed to 0 (NaN descriptors)
    x = _cloud(1, 60, seed=8)
    a = local_shape_descriptors(x)
    b = local_shape_descriptors(x * scale)
    assert bool(torch.isfinite(b).all())
    torch.testing.assert_close(b, a, atol=1e-9, rtol=0)


@pytest.mark.parametrize("backbone", ["vn_dgcnn", "dgcnn"])
def test_seg_descriptors_option_is_wired_and_validated(backbone):
    torch.manual_seed(0)
    net = ArtEqNet(backbone, **SMALL, seg_descriptors=True).double().eval()
    assert net.config["seg_descriptors"] is True
    assert ArtEqNet(**net.config).seg_descriptors
    plain = ArtEqNet(backbone, **SMALL).double().eval()
    n_desc = 7 * len(DESCRIPTOR_SCALES) * (1 + len(DESCRIPTOR_AGG))
    assert net.seg_head[0].in_features == plain.seg_head[0].in_features + n_desc
    # the head reads them: zeroing the descriptor columns' weights changes the logits
    x = _cloud(2, 80, seed=2)
    with torch.no_grad():
        a = net(x)["part_logits"]
        net.seg_head[0].weight[:, -n_desc:] = 0.0
        b = net(x)["part_logits"]
    assert float((a - b).abs().max()) > 1e-6
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="seg_descriptors"):
            ArtEqNet(backbone, **SMALL, seg_descriptors=bad)


@pytest.mark.parametrize("labels", [False, True])
def test_net_with_seg_descriptors_is_exactly_se3_equivariant(labels):
    # the demo config's options + descriptors, float64; adversarial: far from the origin,
    # duplicated points
    torch.manual_seed(0)
    net = ArtEqNet("vn_dgcnn", **SMALL, chiral=True, seg_norms=True, normalize_invariants=True,
                   part_geometry=True, rot_context="geometry", pool_power=16.0,
                   seg_descriptors=True).double().eval()
    x = _cloud(2, 90, seed=5) + 50.0
    x[:, 60:75] = x[:, 30:45]
    lab = torch.randint(0, 22, (2, 90), generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(11)
    for _ in range(3):
        R = random_rotation_matrix(2, generator=g, dtype=x.dtype)
        t = 100.0 * torch.randn(2, 3, generator=g, dtype=x.dtype)
        with torch.no_grad():
            a = net(x, lab if labels else None)
            b = net(x @ R.transpose(-1, -2) + t[:, None], lab if labels else None)
        torch.testing.assert_close(b["part_logits"], a["part_logits"], atol=1e-9, rtol=0)
        torch.testing.assert_close(b["part_rot"], R[:, None] @ a["part_rot"], atol=1e-9, rtol=0)
        torch.testing.assert_close(b["body_pose"], a["body_pose"], atol=1e-9, rtol=0)
        torch.testing.assert_close(b["betas"], a["betas"], atol=1e-9, rtol=0)


def test_net_with_seg_descriptors_is_equivariant_on_a_mirror_symmetric_body():
    # the tiny body template is exactly left/right symmetric (the adversarial case of the
    # chirality column): rotations must still give the same invariants and rotated parts
    from geo3d.body import tiny_body_dict

    torch.manual_seed(0)
    net = ArtEqNet("vn_dgcnn", **SMALL, chiral=True, part_geometry=True, rot_context="geometry",
                   seg_descriptors=True).double().eval()
    v = torch.as_tensor(tiny_body_dict()["v_template"], dtype=torch.float64)[None]
    R = random_rotation_matrix(1, generator=torch.Generator().manual_seed(1), dtype=v.dtype)
    with torch.no_grad():
        a, b = net(v), net(v @ R.transpose(-1, -2))
    torch.testing.assert_close(b["part_logits"], a["part_logits"], atol=1e-9, rtol=0)
    torch.testing.assert_close(b["part_rot"], R[:, None] @ a["part_rot"], atol=1e-9, rtol=0)
    torch.testing.assert_close(b["body_pose"], a["body_pose"], atol=1e-9, rtol=0)


def test_seg_descriptors_tell_a_body_from_its_mirror_image_without_chiral_features():
    # a VN net without `chiral` is reflection-invariant; the descriptors' odd columns make
    # its segmentation see a mirror
    torch.manual_seed(0)
    net = ArtEqNet("vn_dgcnn", **SMALL, seg_descriptors=True).double().eval()
    x = _cloud(1, 80, seed=13)
    M = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=x.dtype))
    with torch.no_grad():
        a, b = net(x)["part_logits"], net(x @ M)["part_logits"]
    assert float((a - b).abs().max()) > 1e-4
