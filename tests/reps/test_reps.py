"""Representations: homomorphism property, conventions, shapes and errors."""

from __future__ import annotations

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
    Lorentz,
    OcticGroup,
    minkowski_metric,
)
from geo3d.reps import (
    Custom,
    Image,
    Irreps,
    LorentzTensor,
    LorentzVector,
    Points,
    Regular,
    Trivial,
    Vector,
)

F64 = torch.float64

REPS = [
    Trivial(SO3(), dim=3),
    Vector(SO2()),
    Vector(O2()),
    Vector(O3()),
    Vector(SE3()),
    Points(SE3()),
    Points(O3()),
    Irreps(O3(), "2x0e + 1x0o + 1x1o + 1x1e + 1x2e + 1x3o"),
    Irreps(SO3(), "1x1o + 2x2e", axis=-2),
    Irreps(SE3(), "1x1o + 1x4e"),
    Regular(DihedralGroup(3)),
    Regular(CyclicGroup(5), axis=0),
    Image(OcticGroup()),
    Image(CyclicGroup(2), size=5, channels=3),
    LorentzVector(Lorentz(max_rapidity=3.0)),
    LorentzTensor(Lorentz(max_rapidity=3.0)),
]


def _pair(group, generator, n=6):
    a = group.sample(n, generator=generator, dtype=F64)
    b = group.sample(n, generator=generator, dtype=F64)
    return a, b


@pytest.mark.parametrize("rep", REPS, ids=repr)
class TestRepLaws:
    def test_homomorphism(self, rep, generator):
        a, b = _pair(rep.group, generator)
        x = rep.randn(3, generator=generator, dtype=F64)
        for i in range(a.shape[0]):
            ab = rep.group.compose(a[i], b[i])
            lhs = rep.act(ab, x)
            rhs = rep.act(a[i], rep.act(b[i], x))
            scale = rhs.abs().max()
            assert float((lhs - rhs).abs().max()) <= 1e-12 * max(1.0, float(scale))

    def test_identity_acts_trivially(self, rep, generator):
        x = rep.randn(2, generator=generator, dtype=F64)
        e = rep.group.identity(dtype=F64)
        torch.testing.assert_close(rep.act(e, x), x, rtol=0, atol=1e-14)

    def test_matrix_matches_act(self, rep, generator):
        if not rep.is_linear or isinstance(rep, (Image, LorentzTensor)):
            pytest.skip("act-only rep")
        a, b = _pair(rep.group, generator, n=4)
        m = rep.matrix(a)
        assert m.shape == (4, rep.dim, rep.dim)
        torch.testing.assert_close(
            rep.matrix(rep.group.compose(a, b)), m @ rep.matrix(b), rtol=1e-12, atol=1e-12
        )
        x = rep.randn(4, generator=generator, dtype=F64)
        axis = getattr(rep, "axis", -1) % x.dim()
        xm = x.movedim(axis, -1)
        for i in range(4):
            expected = (m[i] @ xm[..., None])[..., 0].movedim(-1, axis)
            torch.testing.assert_close(rep.act(a[i], x), expected)

    def test_randn_reproducible(self, rep):
        x = rep.randn(2, generator=torch.Generator().manual_seed(1), dtype=F64)
        y = rep.randn(2, generator=torch.Generator().manual_seed(1), dtype=F64)
        assert torch.equal(x, y) and x.dtype == F64

    def test_float32_and_device(self, rep, device):
        gen = torch.Generator(device=device).manual_seed(0)
        g = rep.group.sample(1, generator=gen, dtype=torch.float32, device=device)[0]
        x = rep.randn(2, generator=gen, dtype=torch.float32, device=device)
        y = rep.act(g, x)
        assert y.dtype == torch.float32 and y.device.type == device


def test_batched_elements_broadcast(generator):
    rep = Vector(O3())
    g = O3().sample(5, generator=generator, dtype=F64)
    x = torch.randn(5, 7, 3, generator=generator, dtype=F64)
    y = rep.act(g[:, None], x)
    torch.testing.assert_close(y[2], x[2] @ g[2].T)
    rep2 = Vector(O3(), axis=1)  # features (B, 3, N)
    y2 = rep2.act(g[:, None], x.transpose(1, 2))  # g (5,1,3,3) vs other dims (5, 7)
    torch.testing.assert_close(y2.transpose(1, 2), y)


# ------------------------------------------------------------------ irreps
def test_irreps_against_e3nn_and_cartesian(generator):

    g = O3().sample(30, generator=generator, dtype=F64)
    det = torch.linalg.det(g)
    ir = Irreps(O3(), "1x0e + 1x0o + 1x1o + 1x1e + 1x2e + 1x2o + 1x3o")
    # independent reference: e3nn's angle-based D (accurate to ~1e-6 only)
    torch.testing.assert_close(ir.matrix(g), ir.irreps.D_from_matrix(g), rtol=0, atol=1e-5)
    # Cartesian conventions: 1o is a vector, 1e a pseudovector, 0o a pseudoscalar
    torch.testing.assert_close(Irreps(O3(), "1o").matrix(g), g, rtol=0, atol=1e-13)
    torch.testing.assert_close(
        Irreps(O3(), "1e").matrix(g), det[:, None, None] * g, rtol=0, atol=1e-13
    )
    torch.testing.assert_close(Irreps(O3(), "0o").matrix(g)[:, 0, 0], det)
    # orthogonal to float64 precision
    m = ir.matrix(g)
    eye = torch.eye(ir.dim, dtype=F64)
    assert float((m @ m.transpose(-1, -2) - eye).abs().max()) < 1e-13


def test_irreps_spherical_harmonics_equivariance(generator):
    from e3nn import o3

    for l in (2, 3, 6):
        x = torch.randn(20, 3, generator=generator, dtype=F64)
        r = SO3().sample(20, generator=generator, dtype=F64)
        d = Irreps(SO3(), f"1x{l}e").matrix(r)
        lhs = o3.spherical_harmonics(l, (r @ x[..., None])[..., 0], normalize=True)
        rhs = (d @ o3.spherical_harmonics(l, x, normalize=True)[..., None])[..., 0]
        torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)


def test_irreps_special_elements_accurate(generator):
    # π rotations and identity are gimbal-lock points for Euler-angle based Wigner-D
    els, _ = O3().special_elements(generator, F64)
    ir = Irreps(O3(), "1x1o + 1x2e + 1x5o")
    r = O3().sample(8, generator=generator, dtype=F64)
    lhs = ir.matrix(els[:, None] @ r[None])
    rhs = ir.matrix(els)[:, None] @ ir.matrix(r)[None]
    assert float((lhs - rhs).abs().max()) < 1e-12


def test_irreps_se3_uses_rotation_only(generator):
    t = SE3().sample(3, generator=generator, dtype=F64)
    torch.testing.assert_close(
        Irreps(SE3(), "1o + 2e").matrix(t), Irreps(SO3(), "1o + 2e").matrix(t[:, :3, :3])
    )


def test_irreps_errors():
    with pytest.raises(ValueError, match="irreps: cannot parse 'bogus'"):
        Irreps(O3(), "bogus")
    with pytest.raises(ValueError, match="group"):
        Irreps(Lorentz(), "1o")
    ir = Irreps(O3(), "2x0e + 1x1o")
    with pytest.raises(ValueError, match=r"expected size 5 along axis -1 .* got shape \(2, 4\)"):
        ir.act(O3().identity(), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"g: expected an element .*\(\.\.\., 3, 3\)"):
        ir.act(torch.eye(4), torch.zeros(2, 5))


# ------------------------------------------------------------------ vectors / points
def test_vector_and_points_under_se3(generator):
    t = SE3().sample(4, generator=generator, dtype=F64)
    x = torch.randn(4, 3, generator=generator, dtype=F64)
    rot, tr = t[:, :3, :3], t[:, :3, 3]
    torch.testing.assert_close(Vector(SE3()).act(t, x), (rot @ x[..., None])[..., 0])
    torch.testing.assert_close(Points(SE3()).act(t, x), (rot @ x[..., None])[..., 0] + tr)
    assert not Points(SE3()).is_linear and Points(SO3()).is_linear
    with pytest.raises(ValueError, match="not a linear representation"):
        Points(SE3()).matrix(t)


def test_trivial(generator):
    rep = Trivial(O3(), dim=4)
    g = O3().sample(3, generator=generator, dtype=F64)
    assert torch.equal(rep.matrix(g), torch.eye(4, dtype=F64).expand(3, 4, 4))
    x = torch.randn(5, generator=generator)  # invariant scalars of any shape are accepted
    y = rep.act(g[0], x)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()  # a copy, not x itself
    assert rep.randn(2, 3).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="dim"):
        Trivial(O3(), dim=0)


def test_randn_axis_placement():
    assert Vector(SO3(), axis=-2).randn(2, 5).shape == (2, 3, 5)
    assert Vector(SO3(), axis=0).randn(2, 5).shape == (3, 2, 5)
    assert Irreps(O3(), "2x1o").randn(4).shape == (4, 6)
    with pytest.raises(ValueError, match="batch"):
        Vector(SO3(), axis=-3).randn(2)
    with pytest.raises(ValueError, match="batch"):
        Vector(SO3()).randn(-1)


# ------------------------------------------------------------------ finite groups
@pytest.mark.parametrize(
    "group", [CyclicGroup(3), DihedralGroup(4), OcticGroup(), DihedralGroup(5)], ids=repr
)
def test_regular_rep(group):
    rep = Regular(group)
    els = group.elements(dtype=F64)
    m = rep.matrix(els)
    # permutation matrices
    assert bool(((m == 0) | (m == 1)).all()) and bool((m.sum(-1) == 1).all())
    # character of the regular rep: |G| at the identity, 0 elsewhere
    chi = m.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert chi[0] == group.order and bool((chi[1:] == 0).all())
    # (g·f)(g h) = f(h) for functions on the group
    f = torch.arange(group.order, dtype=F64)
    table = group.cayley_table()
    for k in range(group.order):
        gf = rep.act(els[k], f)
        assert torch.equal(gf[table[k]], f)
    assert torch.equal(m[table], m[:, None] @ m[None, :])


def _reference_image_action(g: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """(g·f)(p) = f(g⁻¹p) with pixel (i, j) at (x, y) = (j − c, c − i), by explicit indexing."""
    n = img.shape[-1]
    c = (n - 1) / 2
    out = torch.empty_like(img)
    ginv = g.T.double()
    for i in range(n):
        for j in range(n):
            x, y = j - c, c - i
            sx, sy = (ginv @ torch.tensor([x, y], dtype=F64)).tolist()
            si, sj = round(c - sy), round(sx + c)
            out[..., i, j] = img[..., si, sj]
    return out


@pytest.mark.parametrize(
    "group",
    [OcticGroup(), CyclicGroup(4), CyclicGroup(2), DihedralGroup(1), DihedralGroup(2)],
    ids=repr,
)
@pytest.mark.parametrize("size", [4, 5])
def test_image_matches_pixel_coordinates(group, size, generator):
    rep = Image(group, size=size)
    x = rep.randn(2, generator=generator, dtype=F64)
    for g in group.elements(dtype=F64):
        assert torch.equal(rep.act(g, x), _reference_image_action(g, x))


def test_image_conventions_and_batching(generator):
    grp = OcticGroup()
    rep = Image(grp, size=6, channels=2)
    x = rep.randn(3, generator=generator, dtype=F64)  # (3, 2, 6, 6)
    els = grp.elements(dtype=F64)
    # element 1 (rotation by +90°) is torch.rot90 (counter-clockwise on screen)
    assert torch.equal(rep.act(els[1], x), torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(rep.act(els[4], x), torch.flip(x, dims=(-2,)))
    # a batch of elements broadcasting against the image batch dims (3, 2)
    g = els[[1, 4, 7]][:, None]
    y = rep.act(g, x)
    for k, idx in enumerate([1, 4, 7]):
        assert torch.equal(y[k], rep.act(els[idx], x[k]))
    # non-square images: 90° rotations swap H and W
    img = torch.randn(2, 3, 5, generator=generator)
    assert rep.act(els[1], img).shape == (2, 5, 3)
    assert rep.act(els[2], img).shape == (2, 3, 5)
    with pytest.raises(ValueError, match="square"):
        rep.act(els[[1, 2]], img)


def test_image_errors():
    for grp in (CyclicGroup(3), DihedralGroup(8), CyclicGroup(6)):
        with pytest.raises(ValueError, match="n divides 4"):
            Image(grp)
    with pytest.raises(ValueError, match="group"):
        Image(SO2())
    rep = Image(CyclicGroup(4))
    flip = DihedralGroup(4).elements()[4]
    with pytest.raises(ValueError, match="not an element of CyclicGroup"):
        rep.act(flip, torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"x: expected an image tensor of shape \(\.\.\., H, W\)"):
        rep.act(CyclicGroup(4).identity(), torch.zeros(4))


def test_regular_rejects_continuous_group():
    with pytest.raises(ValueError, match="finite group"):
        Regular(SO2())


# ------------------------------------------------------------------ Lorentz
def test_lorentz_tensor(generator):
    grp = Lorentz(max_rapidity=3.0)
    lam = grp.sample(5, generator=generator, dtype=F64)
    t = torch.randn(5, 4, 4, generator=generator, dtype=F64)
    rep = LorentzTensor(grp)
    y = rep.act(lam, t)
    torch.testing.assert_close(y, torch.einsum("nma,nvb,nab->nmv", lam, lam, t))
    torch.testing.assert_close(
        (rep.matrix(lam) @ t.reshape(5, 16, 1)).reshape(5, 4, 4), y, rtol=1e-12, atol=1e-9
    )
    # the metric is an invariant contravariant tensor
    eta = minkowski_metric(F64)
    torch.testing.assert_close(rep.act(lam, eta.expand(5, 4, 4)), eta.expand(5, 4, 4))
    # outer products of vectors are rank-2 tensors
    a = torch.randn(5, 4, generator=generator, dtype=F64)
    va = LorentzVector(grp).act(lam, a)
    torch.testing.assert_close(
        rep.act(lam, a[:, :, None] * a[:, None]), va[:, :, None] * va[:, None]
    )
    with pytest.raises(ValueError, match="rank-2"):
        rep.act(lam, torch.zeros(5, 4))
    with pytest.raises(ValueError, match="group"):
        LorentzVector(SO3())


def test_custom_rep(generator):
    grp = SO3()
    right = Custom(grp, act=lambda g, r: r @ g.transpose(-1, -2), name="RightMul")
    r = grp.sample(3, generator=generator, dtype=F64)
    g = grp.sample(1, generator=generator, dtype=F64)[0]
    torch.testing.assert_close(right.act(g, r), r @ g.T)
    assert repr(right) == "RightMul(SO3())"
    with pytest.raises(ValueError, match="no randn"):
        right.randn(2)
    with pytest.raises(ValueError, match="act"):
        Custom(grp, act=3)
    rr = Custom(grp, act=right.act, randn=lambda *b, **kw: grp.sample(b[0], **kw))
    assert rr.randn(4, generator=generator, dtype=F64).shape == (4, 3, 3)


def test_gradients_finite_at_singular_elements():
    # Wigner-D at the identity and at a rotation by π (gimbal points of Euler angles)
    ir = Irreps(O3(), "1x1o + 1x2e + 1x3o")
    pi_z = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=F64))
    for g0 in (torch.eye(3, dtype=F64), pi_z):
        g = g0.clone().requires_grad_(True)
        ir.matrix(g).square().sum().backward()
        assert bool(torch.isfinite(g.grad).all())
    x = torch.randn(2, ir.dim, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ir.act(pi_z, x), (x,))
