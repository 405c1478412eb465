"""Group axioms and interface of every group object."""

from __future__ import annotations

import math

import pytest
import torch

from geo3d.groups import (
    O2,
    O3,
    SE3,
    SO2,
    SO3,
    CyclicGroup,
    DihedralGroup,
    IcosahedralGroup,
    Lorentz,
    OcticGroup,
    rotation_2d,
)

GROUPS = [
    SO2(),
    O2(),
    CyclicGroup(5),
    DihedralGroup(3),
    OcticGroup(),
    SO3(),
    O3(),
    SE3(),
    IcosahedralGroup(),
    Lorentz(),
    Lorentz(proper=True),
]
FINITE = [
    CyclicGroup(1),
    CyclicGroup(4),
    CyclicGroup(7),
    DihedralGroup(1),
    DihedralGroup(6),
    OcticGroup(),
]


def _eye(group, dtype=torch.float64, device="cpu"):
    return torch.eye(group.element_shape[-1], dtype=dtype, device=device)


@pytest.mark.parametrize("group", GROUPS, ids=repr)
class TestGroupAxioms:
    def test_sample_shape_dtype_device(self, group, device):
        gen = torch.Generator(device=device).manual_seed(0)
        for dtype in (torch.float32, torch.float64):
            s = group.sample(7, generator=gen, dtype=dtype, device=device)
            assert s.shape == (7, *group.element_shape)
            assert s.dtype == dtype and s.device.type == device
            assert bool(group.is_element(s).all())
        assert group.sample(0).shape == (0, *group.element_shape)

    def test_generator_reproducible(self, group):
        a = group.sample(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        b = group.sample(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        c = group.sample(5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
        assert torch.equal(a, b)
        if not (group.is_finite and group.order == 1):
            assert not torch.equal(a, c)

    def test_identity(self, group, generator):
        e = group.identity(dtype=torch.float64)
        assert torch.equal(e, _eye(group))
        a = group.sample(6, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(group.compose(e, a), a, rtol=0, atol=1e-15)
        torch.testing.assert_close(group.compose(a, e), a, rtol=0, atol=1e-15)

    def test_inverse(self, group, generator):
        a = group.sample(20, generator=generator, dtype=torch.float64)
        inv = group.inverse(a)
        scale = a.abs().amax(dim=(-2, -1)) ** 2  # Lorentz entries grow like e^rapidity
        for prod in (group.compose(a, inv), group.compose(inv, a)):
            err = (prod - _eye(group)).abs().amax(dim=(-2, -1))
            assert bool((err <= 1e-13 * scale).all()), err.max()
        # agrees with the generic matrix inverse
        torch.testing.assert_close(inv, torch.linalg.inv(a), rtol=1e-9, atol=1e-9)

    def test_associativity_and_closure(self, group, generator):
        a, b, c = group.sample(30, generator=generator, dtype=torch.float64).split(10)
        left = group.compose(group.compose(a, b), c)
        right = group.compose(a, group.compose(b, c))
        scale = left.abs().amax(dim=(-2, -1))
        assert bool(((left - right).abs().amax(dim=(-2, -1)) <= 1e-12 * scale).all())
        assert bool(group.is_element(left).all())

    def test_compose_broadcasts(self, group, generator):
        a = group.sample(3, generator=generator, dtype=torch.float64)
        b = group.sample(4, generator=generator, dtype=torch.float64)
        ab = group.compose(a[:, None], b[None, :])
        assert ab.shape == (3, 4, *group.element_shape)
        torch.testing.assert_close(ab[2, 1], a[2] @ b[1])

    def test_act_is_homomorphism(self, group, generator):
        a = group.sample(5, generator=generator, dtype=torch.float64)
        b = group.sample(5, generator=generator, dtype=torch.float64)
        x = torch.randn(5, group.dim, generator=generator, dtype=torch.float64)
        lhs = group.act(group.compose(a, b), x)
        rhs = group.act(a, group.act(b, x))
        torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(group.act(group.identity(torch.float64), x), x)

    def test_special_elements_are_elements(self, group, generator):
        els, labels = group.special_elements(generator, torch.float64)
        assert els.shape[0] == len(labels) >= 1
        assert labels[0] in ("identity", f"element 0 of {group!r}")
        torch.testing.assert_close(els[0], _eye(group))
        assert bool(group.is_element(els).all())

    def test_bad_element_shape(self, group):
        bad = torch.zeros(3, 5, 5, dtype=torch.float64)
        with pytest.raises(ValueError, match=r"expected an element .* got shape \(3, 5, 5\)"):
            group.inverse(bad)
        with pytest.raises(ValueError, match="a:"):
            group.compose(bad, group.identity())
        with pytest.raises(ValueError, match="n:"):
            group.sample(-1)

    def test_is_element_rejects(self, group):
        g = 1.5 * group.identity(dtype=torch.float64)
        assert not bool(group.is_element(g))


@pytest.mark.parametrize("group", FINITE, ids=repr)
class TestFiniteGroups:
    def test_order_and_elements(self, group):
        n = group.n
        expected = n if isinstance(group, CyclicGroup) else 2 * n
        assert group.order == expected
        els = group.elements(dtype=torch.float64)
        assert els.shape == (expected, 2, 2)
        # distinct elements
        d = (els[:, None] - els[None]).abs().amax(dim=(-2, -1))
        assert bool((d + torch.eye(expected, dtype=torch.float64) > 1e-6).all())
        # rotations by 2πk/n and, for dihedral groups, reflections (det -1)
        det = torch.linalg.det(els)
        assert int((det < 0).sum()) == (0 if isinstance(group, CyclicGroup) else n)
        rot = els[:n]
        torch.testing.assert_close(
            rot, rotation_2d(2 * math.pi * torch.arange(n, dtype=torch.float64) / n)
        )

    def test_cayley_table_is_latin_square(self, group):
        t = group.cayley_table()
        ar = torch.arange(group.order)
        assert torch.equal(t.sort(dim=0).values, ar[:, None].expand_as(t))
        assert torch.equal(t.sort(dim=1).values, ar[None, :].expand_as(t))
        assert torch.equal(t[0], ar)  # element 0 is the identity
        els = group.elements(dtype=torch.float64)
        torch.testing.assert_close(els[t], els[:, None] @ els[None, :], rtol=0, atol=1e-12)

    def test_sample_covers_all_elements(self, group, generator):
        s = group.sample(40 * group.order, generator=generator, dtype=torch.float64)
        counts = torch.bincount(group.index_of(s), minlength=group.order)
        assert bool((counts > 0).all())

    def test_index_of_rejects_non_elements(self, group):
        g = rotation_2d(torch.tensor(0.3, dtype=torch.float64))
        with pytest.raises(ValueError, match="not an element"):
            group.index_of(g)


def test_octic_is_d4_with_exact_entries():
    els = OcticGroup().elements(dtype=torch.float64)
    torch.testing.assert_close(els, DihedralGroup(4).elements(dtype=torch.float64), rtol=0, atol=0)
    assert torch.equal(els, els.round())
    assert OcticGroup().order == 8


@pytest.mark.parametrize("group", [O2(), O3()], ids=repr)
def test_orthogonal_groups_sample_both_components(group, generator):
    det = torch.linalg.det(group.sample(200, generator=generator, dtype=torch.float64))
    assert 60 < int((det < 0).sum()) < 140
    torch.testing.assert_close(det.abs(), torch.ones_like(det))


@pytest.mark.parametrize("group", [SO2(), SO3()], ids=repr)
def test_special_orthogonal_rejects_reflections(group):
    refl = group.identity(dtype=torch.float64).clone()
    refl[0, 0] = -1
    assert not bool(group.is_element(refl))
    assert bool((O2() if group.dim == 2 else O3()).is_element(refl))


def test_so3_haar_mean_is_zero(generator):
    # Haar measure: E[R] = 0; a biased sampler (e.g. uniform Euler angles) fails this.
    r = SO3().sample(20000, generator=generator, dtype=torch.float64)
    assert float(r.mean(0).abs().max()) < 0.03
    # trace distribution: E[tr R] = 0, E[tr² R] = 1 for Haar rotations
    tr = r.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert abs(float(tr.mean())) < 0.03 and abs(float((tr**2).mean()) - 1) < 0.05


def test_se3_act_and_from_rt(generator):
    g = SE3(translation_scale=2.0)
    T = g.sample(4, generator=generator, dtype=torch.float64)
    R, t = T[:, :3, :3], T[:, :3, 3]
    assert torch.equal(T[:, 3], torch.tensor([0.0, 0, 0, 1], dtype=torch.float64).expand(4, 4))
    x = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(g.act(T, x), (R @ x[..., None])[..., 0] + t)
    torch.testing.assert_close(SE3.from_rt(R, t), T)
    # homogeneous action agrees
    xh = torch.cat([x, torch.ones(4, 1, dtype=torch.float64)], -1)
    torch.testing.assert_close(g.act(T, x), (T @ xh[..., None])[..., :3, 0])
    with pytest.raises(ValueError, match="translation_scale"):
        SE3(translation_scale=-1.0)


def test_constructor_validation():
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="n:"):
            CyclicGroup(bad)
        with pytest.raises(ValueError, match="n:"):
            DihedralGroup(bad)
    with pytest.raises(ValueError, match="dtype"):
        SO3().sample(2, dtype=torch.int64)


def test_group_equality():
    assert CyclicGroup(4) == CyclicGroup(4) and CyclicGroup(4) != CyclicGroup(3)
    assert SO3() == SO3() and SO3() != O3()
    assert hash(SE3()) == hash(SE3(translation_scale=3.0)) and SE3() == SE3(2.0)
    # equality is the mathematical group: sampling parameters do not matter
    assert OcticGroup() == DihedralGroup(4) and OcticGroup() != CyclicGroup(4)
    assert Lorentz(max_rapidity=3.0) == Lorentz() and Lorentz(proper=True) != Lorentz()
    assert SO3() != "SO3()"


def _golden_vertices() -> torch.Tensor:
    # independent construction: all sign choices of (0, ±1, ±φ) in the three cyclic orders,
    # as a set (the class's order is not assumed)
    phi = (1 + 5 ** 0.5) / 2
    pts = set()
    for a in (1.0, -1.0):
        for b in (phi, -phi):
            pts |= {(0.0, a, b), (a, b, 0.0), (b, 0.0, a)}
    v = torch.tensor(sorted(pts), dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True)


def test_icosahedral_group_is_the_rotation_group_of_the_icosahedron():
    G = IcosahedralGroup()
    els = G.elements(dtype=torch.float64)
    assert G.order == 60 and els.shape == (60, 3, 3)
    assert torch.equal(els[0], torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(els @ els.transpose(-1, -2),
                               torch.eye(3, dtype=torch.float64).expand(60, 3, 3),
                               rtol=0, atol=1e-14)
    torch.testing.assert_close(torch.linalg.det(els), torch.ones(60, dtype=torch.float64),
                               rtol=0, atol=1e-14)
    # distinct, and every element maps the 12 vertices onto themselves (a permutation)
    d = (els[:, None] - els[None]).abs().amax(dim=(-2, -1))
    assert bool((d + torch.eye(60, dtype=torch.float64) > 0.1).all())
    v = _golden_vertices()
    moved = torch.einsum("aij,vj->avi", els, v)
    dist = (moved[:, :, None] - v[None, None]).norm(dim=-1)  # (60, 12, 12)
    assert float(dist.min(-1).values.max()) < 1e-14
    assert all(len(set(dist[a].argmin(-1).tolist())) == 12 for a in range(60))
    # the class equation of the icosahedral group: rotation angles 0, 72, 120, 144, 180 deg
    # occur 1, 12, 20, 12, 15 times (6 five-fold, 10 three-fold, 15 two-fold axes)
    cos = (els.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    deg = torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).round().long()
    vals, counts = torch.unique(deg, return_counts=True)
    assert vals.tolist() == [0, 72, 120, 144, 180] and counts.tolist() == [1, 12, 20, 12, 15]
    # vertices(): the same set as the golden-ratio construction
    w = G.vertices(torch.float64)
    assert float((w[:, None] - v[None]).norm(dim=-1).min(-1).values.max()) < 1e-15


def test_icosahedral_group_table_and_membership():
    G = IcosahedralGroup()
    t = G.cayley_table()
    ar = torch.arange(60)
    assert torch.equal(t.sort(dim=0).values, ar[:, None].expand_as(t))
    assert torch.equal(t.sort(dim=1).values, ar[None, :].expand_as(t))
    els = G.elements(dtype=torch.float64)
    torch.testing.assert_close(els[t], els[:, None] @ els[None, :], rtol=0, atol=1e-13)
    # a rotation by 36 deg about a five-fold axis is in SO(3) but not in the group
    from geo3d.rotations import axis_angle_to_matrix

    axis = G.vertices(torch.float64)[0]
    half = axis_angle_to_matrix(axis * torch.pi / 5)
    assert bool(SO3().is_element(half)) and not bool(G.is_element(half))
    assert bool(G.is_element(half @ half))  # 72 deg: an element
    with pytest.raises(ValueError, match="not an element"):
        G.index_of(half)
    assert G == IcosahedralGroup() and G != SO3() and repr(G) == "IcosahedralGroup()"
