"""ArtEqNet ``part_geometry``: explicit per-part geometry vectors (values, equivariance, wiring)."""

from __future__ import annotations

import pytest
import torch
from geo3d.apps.arteq._model import ARTEQ_PARENTS, GEOMETRY_VECTORS, ArtEqNet, part_geometry

from geo3d.rotations import random_rotation_matrix

SMALL = {"k": 8, "feat_dim": 8, "hidden": (8, 8), "d_model": 32, "num_heads": 2,
         "rot_hidden": 8, "batch_norm": False}


def _net(backbone: str, **kw) -> ArtEqNet:
    torch.manual_seed(0)
    return ArtEqNet(backbone, **{**SMALL, **kw}).double().eval()


def _cloud(B: int, N: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [0.8, 0.4, 0.2], dtype=torch.float64)


def _weights(B: int, N: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(B, N, 22, generator=g, dtype=torch.float64)
    return w / w.sum(1, keepdim=True)


def test_part_geometry_matches_a_loop_over_parts_and_points():
    # independent brute force: explicit sums over points per part, children from the parent
    # list, covariance as a sum of outer products
    x, w = _cloud(2, 30), _weights(2, 30)
    got = part_geometry(x, w)
    assert got.shape == (2, 22, GEOMETRY_VECTORS, 3)
    for b in range(2):
        cen = [sum(w[b, n, k] * x[b, n] for n in range(30)) for k in range(22)]
        for k in range(22):
            p = ARTEQ_PARENTS[k]
            a = cen[k] - cen[p] if p >= 0 else cen[k]
            kids = [j for j in range(22) if ARTEQ_PARENTS[j] == k]
            bb = sum(cen[j] - cen[k] for j in kids) / len(kids) if kids else torch.zeros(3,
                                                                                      dtype=x.dtype)
            C = sum(w[b, n, k] * torch.outer(x[b, n] - cen[k], x[b, n] - cen[k])
                    for n in range(30))
            want = torch.stack([a, bb, C @ a, C @ bb, C @ C @ a, C @ C @ bb])
            torch.testing.assert_close(got[b, k], want, atol=1e-12, rtol=1e-12)
    # leaves (head 15, wrists 20/21, feet 10/11) have no child vector
    for leaf in (10, 11, 15, 20, 21):
        assert float(got[:, leaf, 1].abs().max()) == 0.0


def test_part_geometry_rotates_with_the_points():
    x, w = _cloud(3, 50), _weights(3, 50)
    x = x - x.mean(1, keepdim=True)
    R = random_rotation_matrix(3, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    a = part_geometry(x, w)
    b = part_geometry(x @ R.transpose(-1, -2), w)
    torch.testing.assert_close(b, a @ R[:, None].transpose(-1, -2), atol=1e-12, rtol=0)


@pytest.mark.parametrize("labels", [False, True])
@pytest.mark.parametrize("backbone,rot_context,chiral,twist", [
    ("vn_dgcnn", "local", False, False), ("vn_dgcnn", "global", False, False),
    ("vn_dgcnn", "local", True, False), ("vn", "local", True, False),
    ("vn_dgcnn", "geometry", True, False), ("vn_dgcnn", "geometry", False, False),
    ("vn", "geometry", True, False), ("tfn", "geometry", True, False),
    # twist_vectors (child offsets, third moments) in every readout context
    ("vn_dgcnn", "geometry", True, True), ("vn_dgcnn", "local", True, True),
    ("vn", "global", True, True)])
def test_net_with_part_geometry_is_exactly_se3_equivariant(labels, backbone, rot_context,
                                                           chiral, twist):
    net = _net(backbone, part_geometry=True, rot_context=rot_context, chiral=chiral,
               normalize_invariants=chiral, twist_vectors=twist)
    # adversarial: far from the origin, duplicated points, one part without labels
    x = _cloud(2, 90, seed=5) + 50.0
    x[:, 45:60] = x[:, 30:45]
    lab = torch.randint(0, 22, (2, 90), generator=torch.Generator().manual_seed(2))
    lab[lab == 7] = 8
    part_labels = lab if labels else None
    g = torch.Generator().manual_seed(11)
    for _ in range(3):
        R = random_rotation_matrix(2, generator=g, dtype=x.dtype)
        t = 100.0 * torch.randn(2, 3, generator=g, dtype=x.dtype)
        y = x @ R.transpose(-1, -2) + t[:, None]
        with torch.no_grad():
            a, b = net(x, part_labels), net(y, part_labels)
        tol = 1e-6 if backbone == "tfn" else 1e-9  # e3nn's float64 rounding (~1e-8)
        torch.testing.assert_close(b["part_rot"], R[:, None] @ a["part_rot"], atol=tol, rtol=0)
        torch.testing.assert_close(b["body_pose"], a["body_pose"], atol=tol, rtol=0)
        torch.testing.assert_close(b["betas"], a["betas"], atol=tol, rtol=0)
        torch.testing.assert_close(b["part_logits"], a["part_logits"], atol=tol, rtol=0)


def test_part_geometry_is_wired_into_the_readouts():
    # the option widens the rotation readout / token, and the readouts depend on the
    # geometry: zeroing the geometry channels' weights changes the outputs
    plain, geo = _net("vn_dgcnn"), _net("vn_dgcnn", part_geometry=True)
    n = 2 * GEOMETRY_VECTORS
    assert geo.rot_mlp.map_to_feat.weight.shape[1] == plain.rot_mlp.map_to_feat.weight.shape[1] + n
    assert geo.config["part_geometry"] is True and ArtEqNet(**geo.config).part_geometry
    x = _cloud(1, 80)
    lab = torch.randint(0, 22, (1, 80), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = geo(x, lab)
        geo.rot_mlp.map_to_feat.weight[:, -n:] = 0.0
        geo.rot_mlp.map_to_dir.weight[:, -n:] = 0.0
        b = geo(x, lab)
    assert float((a["part_rot"] - b["part_rot"]).abs().max()) > 1e-6
    # the baseline gets the same geometry as plain numbers in its token
    base, base_geo = _net("dgcnn"), _net("dgcnn", part_geometry=True)
    assert base_geo.token[0].in_features == base.token[0].in_features + 3 * n
    with torch.no_grad():
        a = base_geo(x, lab)
        base_geo.token[0].weight[:, -3 * n:] = 0.0
        b = base_geo(x, lab)
    assert float((a["part_rot"] - b["part_rot"]).abs().max()) > 1e-6


def test_ground_truth_pooling_geometry_sees_the_labels():
    # with labels, the geometry is that of the labelled points: moving only the points of
    # part 18 (left elbow) changes part 18's rotation input but not the pelvis's geometry
    x = _cloud(1, 120, seed=3)
    lab = torch.arange(120).remainder(22)[None]
    w = torch.nn.functional.one_hot(lab, 22).double()
    w = w / w.sum(1, keepdim=True)
    y = x.clone()
    y[lab == 18] += torch.tensor([0.3, -0.2, 0.1], dtype=x.dtype)
    a, b = part_geometry(x, w), part_geometry(y, w)
    assert float((a[:, 18] - b[:, 18]).abs().max()) > 1e-3
    torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("backbone", ["vn", "vn_dgcnn"])
def test_normalize_invariants_gives_unit_rms_and_keeps_equivariance(backbone):
    net = _net(backbone, normalize_invariants=True, seg_norms=True, part_geometry=True)
    assert ArtEqNet(**net.config).normalize_invariants
    seen = []
    hook = net.seg_head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    x = _cloud(2, 70, seed=8) * 0.3 + 7.0
    with torch.no_grad():
        net(x)
    hook.remove()
    c = 3 * SMALL["feat_dim"]  # per-point invariants first, then the global invariant
    rms_pt = seen[0][..., :c].square().mean(dim=(1, 2)).sqrt()
    rms_gl = seen[0][:, 0, c:2 * c].square().mean(dim=-1).sqrt()
    torch.testing.assert_close(rms_pt, torch.ones(2, dtype=x.dtype), atol=1e-12, rtol=0)
    torch.testing.assert_close(rms_gl, torch.ones(2, dtype=x.dtype), atol=1e-12, rtol=0)
    # without the option the same invariants are orders of magnitude smaller
    seen.clear()
    plain = _net(backbone, seg_norms=True)
    hook = plain.seg_head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        plain(x)
    hook.remove()
    assert float(seen[0][..., :c].square().mean().sqrt()) < 0.1
    g = torch.Generator().manual_seed(9)
    R = random_rotation_matrix(2, generator=g, dtype=x.dtype)
    t = 30.0 * torch.randn(2, 3, generator=g, dtype=x.dtype)
    with torch.no_grad():
        a, b = net(x), net(x @ R.transpose(-1, -2) + t[:, None])
    torch.testing.assert_close(b["part_rot"], R[:, None] @ a["part_rot"], atol=1e-9, rtol=0)
    torch.testing.assert_close(b["part_logits"], a["part_logits"], atol=1e-9, rtol=0)
    torch.testing.assert_close(b["betas"], a["betas"], atol=1e-9, rtol=0)


@pytest.mark.parametrize("backbone", ["vn_dgcnn", "dgcnn"])
def test_pool_power_sharpens_towards_argmax_pooling(backbone):
    net = _net(backbone, part_geometry=True)
    x = _cloud(2, 90, seed=12)
    with torch.no_grad():
        soft = net(x)
        net.pool_power = 1e6  # effectively argmax pooling
        sharp = net(x)
        # one-hot pooling on the argmax labels (parts without points fall back to the
        # sharpened weights in both calls)
        hard = net(x, part_labels=soft["part_logits"].argmax(-1))
    assert float((soft["part_rot"] - hard["part_rot"]).abs().max()) > 1e-4
    torch.testing.assert_close(sharp["part_rot"], hard["part_rot"], atol=1e-9, rtol=0)
    torch.testing.assert_close(sharp["betas"], hard["betas"], atol=1e-9, rtol=0)
    torch.testing.assert_close(sharp["part_logits"], soft["part_logits"], atol=0, rtol=0)
    assert ArtEqNet(**{**net.config, "pool_power": 3.0}).pool_power == 3.0
    for bad in (0.5, float("inf"), True, "2"):
        with pytest.raises(ValueError, match="pool_power"):
            ArtEqNet(backbone, pool_power=bad)



@pytest.mark.parametrize("backbone", ["vn", "vn_dgcnn"])
def test_chiral_features_tell_a_cloud_from_its_mirror_image(backbone):
    # O(3)-equivariant VN nets give the same invariants for a mirrored cloud (left/right
    # cannot be told apart); chiral=True must not, and stays exact for rotations
    x = _cloud(2, 80, seed=13)
    M = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=x.dtype))
    plain, chiral = _net(backbone, seg_norms=True), _net(backbone, seg_norms=True, chiral=True)
    assert chiral.config["chiral"] is True and ArtEqNet(**chiral.config).chiral
    assert not _net("dgcnn", chiral=True).chiral  # baselines: ignored
    with torch.no_grad():
        a, b = plain(x), plain(x @ M)
        c, d = chiral(x), chiral(x @ M)
    torch.testing.assert_close(b["part_logits"], a["part_logits"], atol=1e-9, rtol=0)
    torch.testing.assert_close(b["betas"], a["betas"], atol=1e-9, rtol=0)
    assert float((d["part_logits"] - c["part_logits"]).abs().max()) > 1e-3
    assert float((d["betas"] - c["betas"]).abs().max()) > 1e-6
    # the readout's cross-product channels change the rotations when present
    lab = torch.randint(0, 22, (2, 80), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        e = chiral(x, lab)
        hc = chiral.rot_cross.out_channels // 2
        H = chiral.rot_static.shape[-1]
        chiral.rot_static[..., H - hc:] = 0.0  # only the cross-product channels' weights
        rows = torch.arange(3 * H).view(3, H)[:, H - hc:].reshape(-1)
        chiral.rot_steer[-1].weight[rows] = 0.0
        chiral.rot_steer[-1].bias[rows] = 0.0
        f = chiral(x, lab)
    assert float((e["part_rot"] - f["part_rot"]).abs().max()) > 1e-6


@pytest.mark.parametrize("name", ["demo", "long"])
def test_packaged_config_net_is_exactly_se3_equivariant(name):
    # the configs' equivariant net (chiral, normalised invariants, sharp pooling) as built by
    # the CLI: float64, random rotations + translations, adversarial duplicates, far away
    import yaml
    from geo3d.apps.arteq.cli import config_path

    cfg = yaml.safe_load(open(config_path(name)))["model"]
    torch.manual_seed(0)
    net = ArtEqNet(cfg["backbone"], **cfg["net"]).double().eval()
    assert net.equivariant and net.chiral
    x = _cloud(2, 120, seed=21) * 0.5 + 20.0
    x[:, 100:] = x[:, :20]
    g = torch.Generator().manual_seed(22)
    for _ in range(2):
        R = random_rotation_matrix(2, generator=g, dtype=x.dtype)
        t = 10.0 * torch.randn(2, 3, generator=g, dtype=x.dtype)
        with torch.no_grad():
            a, b = net(x), net(x @ R.transpose(-1, -2) + t[:, None])
        tol = 1e-9
        torch.testing.assert_close(b["part_rot"], R[:, None] @ a["part_rot"], atol=tol, rtol=0)
        torch.testing.assert_close(b["body_pose"], a["body_pose"], atol=tol, rtol=0)
        torch.testing.assert_close(b["betas"], a["betas"], atol=tol, rtol=0)
        torch.testing.assert_close(b["part_logits"], a["part_logits"], atol=tol, rtol=0)


def test_sharp_pooling_of_a_never_predicted_part_has_finite_gradients():
    # pool_power 16: a part far below the others everywhere has probabilities that underflow
    # at every point; its pooling weights and their gradients must stay finite (a clamped
    # sum gave NaN gradients in training)
    torch.manual_seed(0)
    net = ArtEqNet("vn_dgcnn", **{**SMALL, "pool_power": 16.0})
    with torch.no_grad():
        net.seg_head[-1].bias[10] = -50.0  # part 10 (a foot) never predicted
    x = _cloud(2, 60, seed=3).float()
    out = net(x)
    loss = out["part_rot"].square().sum() + out["betas"].square().sum()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is None or bool(torch.isfinite(p.grad).all()), name


def test_geometry_rot_context_reads_only_the_part_geometry():
    # rot_context="geometry": with given part labels the pooling weights are one-hot, so the
    # rotations depend on the points and labels only, not on the backbone: changing every
    # backbone and segmentation weight leaves part_rot and body_pose unchanged (a readout
    # still wired to the pooled backbone features would move)
    net = _net("vn_dgcnn", part_geometry=True, rot_context="geometry", chiral=True,
               normalize_invariants=True)
    assert ArtEqNet(**net.config).rot_context == "geometry"
    x = _cloud(2, 90, seed=8)
    # every part labelled (an unlabelled part falls back to its predicted weights)
    gl = torch.Generator().manual_seed(3)
    lab = torch.stack([(torch.arange(90) % 22)[torch.randperm(90, generator=gl)] for _ in "ab"])
    with torch.no_grad():
        a = net(x, lab)
        g = torch.Generator().manual_seed(4)
        for mod in (net.encoder, net.seg_head, net.chiral_axes):
            for p in mod.parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        b = net(x, lab)
    assert float((b["part_logits"] - a["part_logits"]).abs().max()) > 1e-3
    torch.testing.assert_close(b["part_rot"], a["part_rot"], atol=1e-12, rtol=0)
    torch.testing.assert_close(b["body_pose"], a["body_pose"], atol=1e-12, rtol=0)
    # while "local" reads the backbone features too
    loc = _net("vn_dgcnn", part_geometry=True, rot_context="local")
    with torch.no_grad():
        c = loc(x, lab)
        for p in loc.encoder.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        d = loc(x, lab)
    assert float((d["part_rot"] - c["part_rot"]).abs().max()) > 1e-6


def test_geometry_rot_context_needs_part_geometry():
    with pytest.raises(ValueError, match="rot_context.*part_geometry"):
        ArtEqNet("vn_dgcnn", rot_context="geometry")
