"""ArtEqNet ``twist_vectors``: per-child offsets and third-moment vectors in the part geometry."""

from __future__ import annotations

import math

import pytest
import torch
from geo3d.apps.arteq._model import (
    ARTEQ_PARENTS,
    GEOMETRY_VECTORS,
    TWIST_VECTORS,
    ArtEqNet,
    part_geometry,
)

from geo3d.rotations import axis_angle_to_matrix, random_rotation_matrix

from .test_model_geometry import SMALL, _cloud, _weights  # noqa: E402


def _net(backbone: str = "vn_dgcnn", **kw) -> ArtEqNet:
    torch.manual_seed(0)
    kw = {"part_geometry": True, "twist_vectors": True, **kw}
    return ArtEqNet(backbone, **{**SMALL, **kw}).double().eval()


def test_twist_vectors_match_a_loop_over_parts_and_points():
    # independent brute force: children read from the parent list, the third moment as an
    # explicit sum over points, the covariance as a sum of outer products
    x, w = _cloud(2, 25), _weights(2, 25)
    got = part_geometry(x, w, twist=True)
    assert got.shape == (2, 22, GEOMETRY_VECTORS + TWIST_VECTORS, 3)
    torch.testing.assert_close(got[..., :GEOMETRY_VECTORS, :], part_geometry(x, w),
                               atol=0, rtol=0)
    zero = torch.zeros(3, dtype=x.dtype)
    for b in range(2):
        cen = [sum(w[b, n, k] * x[b, n] for n in range(25)) for k in range(22)]
        for k in range(22):
            kids = [j for j in range(22) if ARTEQ_PARENTS[j] == k]
            d = [cen[j] - cen[k] for j in kids] + [zero] * (3 - len(kids))
            C = sum(w[b, n, k] * torch.outer(x[b, n] - cen[k], x[b, n] - cen[k])
                    for n in range(25))
            tr = torch.trace(C)
            m = sum(w[b, n, k] * (x[b, n] - cen[k]).dot(x[b, n] - cen[k]) * (x[b, n] - cen[k])
                    for n in range(25)) / tr
            want = torch.stack([*d, m, C @ m / tr])
            torch.testing.assert_close(got[b, k, GEOMETRY_VECTORS:], want, atol=1e-12,
                                       rtol=1e-12)
    # the pelvis has three children (hips 1, 2 and spine1 3), the head none
    assert float(got[:, 0, GEOMETRY_VECTORS + 2].abs().min()) > 0.0
    assert float(got[:, 15, GEOMETRY_VECTORS:GEOMETRY_VECTORS + 3].abs().max()) == 0.0


def test_twist_vectors_rotate_with_the_points_and_ignore_translation():
    x, w = _cloud(3, 60), _weights(3, 60)
    x = x - x.mean(1, keepdim=True)
    R = random_rotation_matrix(3, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    a = part_geometry(x, w, twist=True)
    b = part_geometry(x @ R.transpose(-1, -2), w, twist=True)
    torch.testing.assert_close(b, a @ R[:, None].transpose(-1, -2), atol=1e-12, rtol=0)
    # the twist vectors are offsets and central moments: a translation leaves them alone
    c = part_geometry(x + torch.tensor([3.0, -2.0, 5.0], dtype=x.dtype), w, twist=True)
    torch.testing.assert_close(c[:, :, GEOMETRY_VECTORS:], a[:, :, GEOMETRY_VECTORS:],
                               atol=1e-11, rtol=0)


def _pelvis_scene(theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pelvis points on a ring about the y axis (rotationally symmetric), the hips at +-x
    below it and spine1 above, all turned by ``theta`` about y: a pure pelvis twist."""
    ring = torch.linspace(0, 2 * math.pi, 13, dtype=torch.float64)[:-1]
    pelvis = torch.stack([0.15 * ring.cos(), torch.zeros_like(ring), 0.15 * ring.sin()], -1)
    hips = torch.tensor([[0.1, -0.1, 0.0], [-0.1, -0.1, 0.0]], dtype=torch.float64)
    spine = torch.tensor([[0.0, 0.2, 0.0]], dtype=torch.float64)
    x = torch.cat([pelvis, hips, spine])
    lab = torch.tensor([0] * 12 + [1, 2, 3])
    R = axis_angle_to_matrix(torch.tensor([0.0, theta, 0.0], dtype=torch.float64))
    w = torch.nn.functional.one_hot(lab, 22).double()
    w[:, 4:] = 1.0 / 15  # parts without points: uniform (any fixed weights)
    w = w / w.sum(0, keepdim=True)
    return (x @ R.T)[None], w[None]


def test_twist_vectors_see_a_pelvis_twist_that_the_six_vectors_miss():
    # the plausible bug this option fixes: a pelvis turned about the spine (a twist) with a
    # symmetric pelvis ring gives the same six vectors (a, mean child offset, C a, ...) - the
    # hips' sideways offsets cancel in the mean - so the readout cannot see it
    x0, w = _pelvis_scene(0.0)
    x1, _ = _pelvis_scene(0.7)
    a, b = part_geometry(x0, w, twist=True), part_geometry(x1, w, twist=True)
    torch.testing.assert_close(b[0, 0, :GEOMETRY_VECTORS], a[0, 0, :GEOMETRY_VECTORS],
                               atol=1e-12, rtol=0)
    # each hip's own offset turns by the twist angle about y
    d0, d1 = a[0, 0, GEOMETRY_VECTORS], b[0, 0, GEOMETRY_VECTORS]
    ang = math.atan2(float(d0[2] * d1[0] - d0[0] * d1[2]), float(d0[0] * d1[0] + d0[2] * d1[2]))
    assert ang == pytest.approx(0.7, abs=1e-12)


def test_twist_vectors_are_wired_into_the_readouts():
    plain = _net(twist_vectors=False, rot_context="geometry")
    tw = _net(rot_context="geometry")
    n = 2 * TWIST_VECTORS
    assert tw.rot_mlp.map_to_feat.weight.shape[1] == plain.rot_mlp.map_to_feat.weight.shape[1] + n
    assert tw.config["twist_vectors"] is True and ArtEqNet(**tw.config).twist_vectors
    x = _cloud(1, 80)
    lab = torch.randint(0, 22, (1, 80), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = tw(x, lab)
        # the rotation input is [part (11), parent (11)]: zero the twist channels of both
        idx = list(range(6, 11)) + list(range(17, 22))
        tw.rot_mlp.map_to_feat.weight[:, idx] = 0.0
        tw.rot_mlp.map_to_dir.weight[:, idx] = 0.0
        b = tw(x, lab)
    assert float((a["part_rot"] - b["part_rot"]).abs().max()) > 1e-6
    # the baseline gets the same numbers in its token
    base, base_tw = _net("dgcnn", twist_vectors=False), _net("dgcnn")
    assert base_tw.token[0].in_features == base.token[0].in_features + 3 * n


def test_geometry_readout_gets_the_twist_vectors_of_the_part_and_of_its_parent():
    # what enters the rotation readout: [part's 11 vectors, parent's 11 vectors] with the
    # part geometry of the labelled points in units of the cloud's RMS radius
    net = _net(rot_context="geometry", chiral=True)
    x = _cloud(2, 70, seed=9)
    lab = torch.arange(70).remainder(22).expand(2, -1)
    seen = []
    hook = net.rot_mlp.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        net(x, lab)
    hook.remove()
    got = seen[0].permute(0, 3, 1, 2)  # VN layout (B, C, 3, P) -> (B, P, C, 3)
    xc = x - x.mean(1, keepdim=True)
    xc = xc / xc.square().sum(-1).mean(1).sqrt()[:, None, None]
    w = torch.nn.functional.one_hot(lab, 22).double()
    geo = part_geometry(xc, w / w.sum(1, keepdim=True), twist=True)
    par = [max(p, 0) for p in ARTEQ_PARENTS]
    n = GEOMETRY_VECTORS + TWIST_VECTORS
    torch.testing.assert_close(got[:, :, :n], geo, atol=1e-12, rtol=0)
    torch.testing.assert_close(got[:, :, n:], geo[:, par], atol=1e-12, rtol=0)


def test_twist_vectors_are_validated():
    with pytest.raises(ValueError, match="twist_vectors.*part_geometry"):
        ArtEqNet("vn_dgcnn", **SMALL, twist_vectors=True)
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="twist_vectors"):
            ArtEqNet("vn_dgcnn", **SMALL, part_geometry=True, twist_vectors=bad)
    assert ArtEqNet("vn_dgcnn", **SMALL).config["twist_vectors"] is False


def test_twist_vectors_finite_for_a_part_with_coincident_points():
    # tr C ~ 0 (all of a part's weight on duplicates; the centroid differs from them by
    # rounding): m and C m / tr C are bounded by the points' spread (~1e-16 here), not
    # ~1e246 as when tr C came from the cancelling second moment minus c c^T
    g = torch.Generator().manual_seed(3)
    for _ in range(20):  # random weights: the cancelled trace is sometimes ~1e-30, not 1e-11
        x = _cloud(1, 30) * 1e3
        x[0, :10] = x[0, 0]
        w = torch.zeros(1, 30, 22, dtype=torch.float64)
        w[0, :10, :] = torch.rand(10, 22, generator=g, dtype=torch.float64)
        w = w / w.sum(1, keepdim=True)
        got = part_geometry(x, w, twist=True)
        assert torch.isfinite(got).all()
        assert float(got[..., GEOMETRY_VECTORS + 3:, :].abs().max()) < 1e-9
    w[0, :10, :] = 0.0  # exactly coincident: the same point with all the weight
    w[0, 0, :] = 1.0
    got = part_geometry(x, w, twist=True)
    assert float(got[..., GEOMETRY_VECTORS + 3:, :].abs().max()) == 0.0
