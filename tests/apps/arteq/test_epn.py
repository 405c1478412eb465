"""The EPN-style icosahedral backbone: a brute-force reference, exact equivariance for the 60
group elements (float64), the measured error between them, locality, the ArtEqNet wiring."""

from __future__ import annotations

import pytest
import torch
from geo3d.apps.arteq._backbones import EPNLocalEncoder
from geo3d.apps.arteq._model import EPN_KERNEL_SCALE, ArtEqNet

from geo3d.groups import IcosahedralGroup
from geo3d.rotations import random_rotation_matrix

ELS = IcosahedralGroup().elements(dtype=torch.float64)


def _enc(seed: int = 0, **kw) -> EPNLocalEncoder:
    torch.manual_seed(seed)
    enc = EPNLocalEncoder(**{"k": 6, "feat_dim": 5, "hidden": (4, 6), **kw}).double().eval()
    with torch.no_grad():  # spread the intra-group weights so that every step matters
        for gw in enc.group_w:
            gw.copy_(torch.randn(gw.shape, generator=torch.Generator().manual_seed(seed)))
    return enc


def _cloud(B: int, N: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [0.8, 0.4, 0.2], dtype=torch.float64)


def _brute_force(enc: EPNLocalEncoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The block definitions written out: rotate every offset by every element, correlate with
    the 13 kernel points, find ``R_a R_s`` by matching matrices (no tables of the encoder)."""
    lrelu = torch.nn.functional.leaky_relu
    N = x.shape[0]
    K = min(enc.k + 1, N)
    verts = IcosahedralGroup.vertices(torch.float64)
    kernel = torch.cat([torch.zeros(1, 3, dtype=torch.float64), enc.kernel_radius * verts])
    cos = (ELS.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    steps = [0] + [b for b in range(60) if abs(float(cos[b]) - 0.30901699437494745) < 1e-9]
    prod = {}
    for a in range(60):
        for s, b in enumerate(steps):
            m = ELS[a] @ ELS[b]
            prod[a, s] = int((ELS - m).abs().amax(dim=(-2, -1)).argmin())
    d = torch.cdist(x, x)
    nbrs, wts, radii = [], [], []
    for i in range(N):
        nb = d[i].argsort()[:K]
        r2 = d[i, nb].max() ** 2
        w = (1 - d[i, nb] ** 2 / r2).clamp(min=0) ** 2
        nbrs.append(nb), wts.append(w / w.sum()), radii.append(r2.sqrt())
    F = torch.ones(N, 60, 1, dtype=torch.float64)
    for spatial, gw, mix, norm in zip(enc.spatial, enc.group_w, enc.mix, enc.norms, strict=True):
        G = torch.zeros(N, 60, kernel.shape[0], F.shape[-1], dtype=torch.float64)
        for i in range(N):
            s = radii[i] if enc.kernel_scale is None else enc.kernel_scale
            u = (x[nbrs[i]] - x[i]) / s  # (K, 3)
            for a in range(60):
                ua = u @ ELS[a]  # rows R_a^T u_j
                kap = torch.exp(-((ua[:, None] - kernel[None]) ** 2).sum(-1)
                                / (2 * enc.kernel_sigma ** 2))  # (K, 13)
                G[i, a] = torch.einsum("k,km,kc->mc", wts[i], kap, F[nbrs[i], a])
        H = spatial(G.flatten(2))
        H2 = torch.zeros_like(H)
        for a in range(60):
            for s in range(len(steps)):
                H2[:, a] += gw[s] * H[:, prod[a, s]]
        F = lrelu(norm(mix(H2)), enc.negative_slope)
    inv = lrelu(enc.out_inv(F), enc.negative_slope).mean(dim=1)
    f = enc.out_vec(F)  # (N, 60, C)
    V = torch.stack([sum(f[:, a, c:c + 1] * ELS[a][:, c % 3] for a in range(60)) / 60
                     for c in range(f.shape[-1])], dim=1)
    return inv, V


@pytest.mark.parametrize("kernel_scale", [None, 0.7])
def test_encoder_matches_the_brute_force_definition(kernel_scale):
    # catches a permutation taken the wrong way round (R_a instead of R_a^T on the offsets),
    # a wrong group product order in the intra-group conv, or a wrong anchor/kernel layout
    enc = _enc(kernel_scale=kernel_scale)
    x = _cloud(1, 24, seed=3)
    with torch.no_grad():
        out = enc(x)
        inv, V = _brute_force(enc, x[0])
    torch.testing.assert_close(out.point_features[0], inv, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.point_equivariant[0], V, atol=1e-12, rtol=0)
    assert float(V.abs().max()) > 1e-3  # the vectors are not trivially zero


@pytest.mark.parametrize("case", ["generic", "duplicates", "grid", "far"])
def test_exact_equivariance_for_every_group_element(case):
    enc = _enc(seed=1)
    if case == "grid":  # many tied distances
        r = torch.arange(4, dtype=torch.float64)
        x = torch.stack(torch.meshgrid(r, r, r[:3], indexing="ij"), -1).reshape(1, -1, 3)
    else:
        x = _cloud(1, 50, seed=2)
        if case == "duplicates":
            x[:, 25:40] = x[:, 10:25]
        if case == "far":
            x = x + 1e4
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        a = enc(x)
        worst = 0.0
        for R in ELS:
            t = 10.0 * torch.randn(3, generator=g, dtype=torch.float64)
            b = enc(x @ R.T + t)
            worst = max(worst, float((b.point_features - a.point_features).abs().max()),
                        float((b.point_equivariant - a.point_equivariant @ R.T).abs().max()),
                        float((b.equivariant - a.equivariant @ R.T).abs().max()),
                        float((b.invariant - a.invariant).abs().max()))
    assert worst < 1e-9, worst
    assert float(a.point_equivariant.abs().max()) > 1e-3


def test_error_between_group_elements_is_measured(capsys):
    # only the 60 elements are exact; between them the error is that of the discretisation
    enc = _enc(seed=2, k=12, hidden=(8, 8))
    x = _cloud(2, 120, seed=4)
    R = random_rotation_matrix(8, generator=torch.Generator().manual_seed(6), dtype=x.dtype)
    inv_err, vec_err = [], []
    with torch.no_grad():
        a = enc(x)
        for r in R:
            b = enc(x @ r.T)
            inv_err.append(float((b.point_features - a.point_features).norm()
                                 / a.point_features.norm()))
            vec_err.append(float((b.point_equivariant - a.point_equivariant @ r.T).norm()
                                 / a.point_equivariant.norm()))
    with capsys.disabled():
        print(f"\nEPN, random rotations (8, untrained weights): relative error of the invariants "
              f"{max(inv_err):.2e}, of the vectors {max(vec_err):.2e}")
    # not equivariant to rounding (the test would not be measuring anything otherwise) ...
    assert min(inv_err) > 1e-8
    # ... but close: the 60 elements sample SO(3) at ~37 deg (max distance to an element)
    assert max(inv_err) < 0.05 and max(vec_err) < 0.2


def test_features_are_local():
    # two clusters far apart: moving one rigidly leaves the other's features unchanged
    enc = _enc(seed=3)
    a_pts, b_pts = _cloud(1, 30, seed=7), _cloud(1, 30, seed=8) + 100.0
    R = random_rotation_matrix(1, generator=torch.Generator().manual_seed(9), dtype=a_pts.dtype)
    with torch.no_grad():
        one = enc(torch.cat([a_pts, b_pts], 1))
        two = enc(torch.cat([a_pts, b_pts @ R[0].T + 5.0], 1))
    torch.testing.assert_close(two.point_features[:, :30], one.point_features[:, :30],
                               atol=0, rtol=0)
    assert float((two.point_features[:, 30:] - one.point_features[:, 30:]).abs().max()) > 1e-6


def test_kernel_scale_makes_the_features_see_absolute_size():
    # scale-free kernels (None) give the same invariants for a cloud and a scaled copy, so
    # they carry no size (the shape head of ArtEqNet needs it); a fixed kernel scale does not
    x = _cloud(1, 40, seed=9)
    free, fixed = _enc(seed=5), _enc(seed=5, kernel_scale=0.5)
    with torch.no_grad():
        torch.testing.assert_close(free(1.3 * x).point_features, free(x).point_features,
                                   atol=1e-12, rtol=0)
        diff = (fixed(1.3 * x).point_features - fixed(x).point_features).abs().max()
    assert float(diff) > 1e-3


def test_float32_matches_float64_and_is_equivariant_for_the_group():
    # training runs in float32, on float32 copies of the group tables: a wrong float32 table
    # (transposed elements, a negated kernel) breaks both checks
    enc64 = _enc(seed=4)
    enc32 = _enc(seed=4).float()
    x = _cloud(1, 60, seed=6)
    with torch.no_grad():
        a64, a32 = enc64(x), enc32(x.float())
        torch.testing.assert_close(a32.point_features.double(), a64.point_features,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(a32.point_equivariant.double(), a64.point_equivariant,
                                   atol=1e-5, rtol=0)
        for R in ELS[1::11]:
            b = enc32((x @ R.T).float())
            torch.testing.assert_close(b.point_equivariant, a32.point_equivariant @ R.float().T,
                                       atol=1e-5, rtol=0)
            torch.testing.assert_close(b.point_features, a32.point_features, atol=1e-5, rtol=0)


def test_gradients_and_degenerate_input():
    torch.manual_seed(0)
    enc = EPNLocalEncoder(k=4, feat_dim=4, hidden=(4,))
    # the parameters get gradients through every block (what training needs)
    out = enc(torch.randn(2, 20, 3))
    (out.point_features.sum() + out.point_equivariant.square().sum()).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name
    # an empty batch gives empty outputs
    o = enc(torch.zeros(0, 10, 3))
    assert o.point_features.shape == (0, 10, 12) and o.point_equivariant.shape == (0, 10, 4, 3)
    # all points equal (r_i = 0) and a single point: finite, and no vector direction
    for pts in (torch.zeros(1, 8, 3), torch.ones(1, 1, 3)):
        o = enc(pts)
        assert torch.isfinite(o.point_features).all() and torch.isfinite(o.point_equivariant).all()


@pytest.mark.parametrize("kw,match", [({"k": 0}, "k:"), ({"k": True}, "k:"),
                                      ({"feat_dim": 0}, "feat_dim:"), ({"hidden": ()}, "hidden:"),
                                      ({"hidden": (4, 0)}, "hidden:"),
                                      ({"hidden": (4, 1)}, "hidden:"),
                                      ({"negative_slope": float("nan")}, "negative_slope:"),
                                      ({"kernel_radius": 0.0}, "kernel_radius:"),
                                      ({"kernel_sigma": float("inf")}, "kernel_sigma:"),
                                      ({"kernel_scale": 0.0}, "kernel_scale:")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        EPNLocalEncoder(**kw)
    with pytest.raises(ValueError, match="points"):
        EPNLocalEncoder(k=2, feat_dim=2, hidden=(2,))(torch.zeros(4, 3))


@pytest.mark.parametrize("labels", [False, True])
def test_arteq_net_with_epn_is_equivariant_for_the_group(labels):
    torch.manual_seed(0)
    net = ArtEqNet("epn", k=6, feat_dim=6, hidden=(6, 6), d_model=32, num_heads=2, rot_hidden=8,
                   part_geometry=True, rot_context="geometry", chiral=True, seg_norms=True,
                   normalize_invariants=True, num_centers=40).double().eval()
    assert net.equivariant and ArtEqNet(**net.config).backbone == "epn"
    assert net.encoder.kernel_scale == EPN_KERNEL_SCALE  # absolute lengths in ArtEqNet
    x = _cloud(2, 70, seed=5) + 30.0  # 70 points, 40 centres: the interpolation path too
    x[:, 50:60] = x[:, 40:50]
    lab = torch.randint(0, 22, (2, 70), generator=torch.Generator().manual_seed(2))
    part_labels = lab if labels else None
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        a = net(x, part_labels)
        for idx in torch.randint(1, 60, (6,), generator=g).tolist():
            R = ELS[idx]
            t = 50.0 * torch.randn(3, generator=g, dtype=x.dtype)
            b = net(x @ R.T + t, part_labels)
            torch.testing.assert_close(b["part_rot"], R @ a["part_rot"], atol=1e-9, rtol=0)
            torch.testing.assert_close(b["body_pose"], a["body_pose"], atol=1e-9, rtol=0)
            torch.testing.assert_close(b["betas"], a["betas"], atol=1e-9, rtol=0)
            torch.testing.assert_close(b["part_logits"], a["part_logits"], atol=1e-9, rtol=0)
            torch.testing.assert_close(b["centre"], a["centre"] @ R.T + t, atol=1e-9, rtol=0)
