"""Issue 11 hardening of geo3d.reps: every rep's ``matrix``/``act`` rejects matrices that are
not group elements, rejects batch dims that do not broadcast with a ValueError, never
returns a view of its input, handles empty batches, and has the Lie-algebra generators
as derivative at the identity."""

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
    Lorentz,
    OcticGroup,
    boost,
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
from geo3d.rotations import set_value_checks

F64 = torch.float64


def _custom_linear():
    so3 = SO3()
    return Custom(
        so3,
        act=lambda g, x: (g @ x[..., None])[..., 0],
        randn=lambda *b, generator=None, dtype=None, device=None: torch.randn(
            *b, 3, generator=generator, dtype=dtype, device=device
        ),
        matrix=lambda g: g,  # returns its input: Custom must copy it
        name="CustomVector",
    )


REPS = [
    Trivial(SO3(), dim=3),
    Trivial(CyclicGroup(4), dim=2),
    Vector(SO2()),
    Vector(O2()),
    Vector(O3()),
    Vector(SE3()),
    Vector(Lorentz()),
    Points(SE3()),
    Points(O3()),
    Irreps(O3(), "1x0e + 1x1o + 1x2e"),
    Irreps(SO3(), "1x1o + 1x2e", axis=-2),
    Irreps(SE3(), "1x1o + 1x3o"),
    Regular(DihedralGroup(3)),
    Regular(CyclicGroup(5), axis=0),
    Image(OcticGroup()),
    Image(CyclicGroup(2), size=5, channels=3),
    LorentzVector(Lorentz()),
    LorentzVector(Lorentz(proper=True)),
    LorentzTensor(Lorentz()),
    _custom_linear(),
]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _bad(group) -> dict[str, torch.Tensor]:
    """Matrices of the right shape that are not elements of ``group``."""
    n = group.element_shape[-1]
    g = group.sample(1, generator=_gen(1), dtype=F64)[0]
    shear = torch.eye(n, dtype=F64)
    shear[0, 1] = 0.5
    bad = {
        "2·g": 2 * g,
        "shear": shear,
        "NaN": torch.full((n, n), math.nan, dtype=F64),
    }
    if type(group) in (SO2, SO3) or isinstance(group, CyclicGroup):
        refl = torch.eye(n, dtype=F64)
        refl[0, 0] = -1
        bad["reflection"] = refl
    if isinstance(group, Lorentz) and group.proper:
        bad["parity"] = torch.diag(torch.tensor([1.0, -1, -1, -1], dtype=F64))
    return bad


def _x(rep, *batch):
    return rep.randn(*batch, generator=_gen(2), dtype=F64)


# ---------------------------------------------------------------- item 2: membership
@pytest.mark.parametrize("rep", REPS, ids=repr)
class TestRepMembership:
    def test_valid_elements_pass_and_checks_do_not_change_results(self, rep):
        g = rep.group.sample(3, generator=_gen(), dtype=F64)
        x = _x(rep, 3)
        y = rep.act(g, x)
        m = rep.matrix(g) if rep.is_linear else None
        old = set_value_checks(False)
        try:
            assert torch.equal(rep.act(g, x), y)
            if m is not None:
                assert torch.equal(rep.matrix(g), m)
        finally:
            set_value_checks(old)

    def test_non_elements_raise_naming_g(self, rep):
        x = _x(rep, 1)
        for bad in _bad(rep.group).values():
            with pytest.raises(ValueError, match=r"^g: expected elements of "):
                rep.act(bad, x)
            if rep.is_linear:
                with pytest.raises(ValueError, match=r"^g: expected elements of "):
                    rep.matrix(bad)
            # one bad element inside a batch
            e = rep.group.identity(dtype=F64)
            with pytest.raises(ValueError, match=r"^g: expected elements of "):
                rep.act(torch.stack([e, bad]), _x(rep, 2))


def test_irreps_of_a_non_rotation_would_not_be_orthogonal():
    # why the check exists: with value checks off, 2·R and a shear give Wigner blocks that
    # are not orthogonal (so `act` silently scales/skews features)
    rep = Irreps(SO3(), "1x1o + 1x2e")
    r = SO3().sample(1, generator=_gen(), dtype=F64)[0]
    shear = torch.eye(3, dtype=F64)
    shear[0, 1] = 0.5
    eye = torch.eye(rep.dim, dtype=F64)
    d = rep.matrix(r)
    torch.testing.assert_close(d @ d.mT, eye, rtol=0, atol=1e-13)
    old = set_value_checks(False)
    try:
        for bad in (2 * r, shear):
            d = rep.matrix(bad)
            assert float((d @ d.mT - eye).abs().max()) > 0.1
    finally:
        set_value_checks(old)
    for bad in (2 * r, shear, -r):
        with pytest.raises(ValueError, match=r"g: expected elements of SO3\(\)"):
            rep.matrix(bad)


@pytest.mark.parametrize(
    "rep",
    [
        Vector(SO3()),
        Vector(SE3()),
        Points(SE3()),
        Irreps(O3(), "1x0e + 1x1o + 1x2e"),
        LorentzVector(),
        LorentzTensor(),
        Trivial(O3(), dim=2),
    ],
    ids=repr,
)
def test_vmap_skips_the_data_dependent_check(rep):
    g = rep.group.sample(3, generator=_gen(), dtype=F64)
    x = _x(rep, 3)
    torch.testing.assert_close(torch.vmap(rep.act)(g, x), rep.act(g, x), rtol=0, atol=1e-13)


# ---------------------------------------------------------------- item 6a: generators
# torch's own forward-AD decompositions call the deprecated torch.jit.script on first use
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_irreps_derivative_at_identity_is_e3nn_generators():
    # reference: e3nn's analytic so(3) generators of each degree l (e3nn.o3.so3_generators)
    from e3nn import o3

    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)  # e3nn builds its generators in the default dtype
    try:
        gens = [o3.so3_generators(l) for l in range(5)]
    finally:
        torch.set_default_dtype(old)
    rep = Irreps(O3(), "1x0e + 1x1o + 1x2e + 1x3o + 1x4e")
    lx = gens[1]  # Cartesian L_x, L_y, L_z
    for i in range(3):
        # forward mode: one pass for a scalar input (reverse mode needs 625)
        jac = torch.func.jacfwd(lambda e, i=i: rep.matrix(torch.linalg.matrix_exp(e * lx[i])))(
            torch.zeros((), dtype=F64)
        )
        ref = torch.block_diag(*[gens[l][i] for l in range(5)])
        torch.testing.assert_close(jac, ref, rtol=0, atol=1e-12)


def test_lorentz_reps_derivative_at_identity():
    k = torch.zeros(3, 4, 4, dtype=F64)
    for i in range(3):
        k[i, 0, i + 1] = k[i, i + 1, 0] = 1.0
    eye = torch.eye(4, dtype=F64)
    for rep, ref in (
        (LorentzVector(), k),
        (LorentzTensor(), torch.stack([torch.kron(ki, eye) + torch.kron(eye, ki) for ki in k])),
    ):
        jac = torch.autograd.functional.jacobian(
            lambda z, rep=rep: rep.matrix(boost(z)), torch.zeros(3, dtype=F64)
        )
        torch.testing.assert_close(jac.permute(2, 0, 1), ref, rtol=0, atol=0)


# ---------------------------------------------------------------- item 6b: no aliasing
def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"contiguous": x.clone(), "strided": torch.stack([x, x], -1)[..., 0]}
    if x.dim() >= 2:
        out["column-major"] = x.mT.contiguous().mT
    return out


@pytest.mark.parametrize("rep", REPS, ids=repr)
def test_outputs_never_alias_inputs(rep):
    e = rep.group.identity(dtype=F64)
    g = torch.cat([e[None], rep.group.sample(2, generator=_gen(), dtype=F64)])
    x = _x(rep, 3)
    for gl in _layouts(g).values():
        for xl in _layouts(x).values():
            for gg in (gl[0], gl):  # a single identity element, and a batch
                before_x, before_g = xl.clone(), gl.clone()
                y = rep.act(gg, xl)
                y.add_(1.0)
                assert torch.equal(xl, before_x) and torch.equal(gl, before_g)
                if rep.is_linear:
                    rep.matrix(gg).add_(1.0)
                    assert torch.equal(gl, before_g)


def test_custom_identity_action_is_copied():
    so3 = SO3()
    rep = Custom(so3, act=lambda g, x: x)
    x = torch.randn(4, 3, dtype=F64)
    y = rep.act(so3.identity(dtype=F64), x)
    assert torch.equal(y, x)
    y.add_(1.0)
    assert not torch.equal(y, x)  # editing the output leaves x alone
    # a tuple output aliasing x is copied part by part
    rep2 = Custom(so3, act=lambda g, x: (x, x[:1]))
    a, b = rep2.act(so3.identity(dtype=F64), x)
    a.zero_(), b.zero_()
    assert bool((x != 0).all())


# ---------------------------------------------------------------- item 6c: broadcasting
@pytest.mark.parametrize(
    "rep, x_shape",
    [
        (Vector(SO3()), (4, 3)),
        (Vector(SE3()), (4, 3)),
        (Points(SE3()), (4, 3)),
        (Points(O3()), (4, 3)),
        (Irreps(SO3(), "1x1o + 1x2e", axis=-2), (4, 8, 5)),
        (Regular(CyclicGroup(5)), (4, 5)),
        (Image(OcticGroup()), (4, 6, 6)),
        (LorentzVector(), (4, 4)),
        (LorentzTensor(), (4, 4, 4)),
    ],
    ids=lambda v: repr(v) if not isinstance(v, tuple) else str(v),
)
def test_batch_dims_that_do_not_broadcast_raise_value_error(rep, x_shape):
    g = rep.group.sample(3, generator=_gen(), dtype=F64)
    with pytest.raises(ValueError, match=r"^x: expected batch dims that broadcast against g's"):
        rep.act(g, torch.zeros(x_shape, dtype=F64))


# ---------------------------------------------------------------- item 6d: empty batches
@pytest.mark.parametrize("rep", REPS, ids=repr)
def test_empty_batches(rep):
    g0 = rep.group.sample(0, dtype=F64)
    g1 = rep.group.sample(1, generator=_gen(), dtype=F64)
    x0 = _x(rep, 0)
    x1 = _x(rep, 1)
    if isinstance(rep, Image) and rep.channels:  # g's batch aligns with (batch, channels)
        g0 = g0[:, None]
    cases = [(g0, x0), (g1[0], x0)]
    if not isinstance(rep, Trivial):  # Trivial.act returns x whatever g's batch shape
        cases.append((g0, x1))
    for g, x in cases:
        y = rep.act(g, x)
        assert isinstance(y, torch.Tensor) and y.numel() == 0
    assert rep.act(g0, x0).shape == x0.shape
    if rep.is_linear:
        m = rep.matrix(g0)
        assert m.shape[0] == 0 and m.shape[-1] == m.shape[-2] == (rep.dim or 3)


def test_image_empty_batch_regression():
    # the batched path used to return None when the batch was empty
    rep = Image(OcticGroup())
    out = rep.act(OcticGroup().sample(0), torch.zeros(0, 6, 6))
    assert out.shape == (0, 6, 6)


def test_irreps_above_degree_12_are_refused_at_construction():
    """Audit: Irreps(SO3(), "1x13e") was built and failed only at .matrix() with e3nn's
    NotImplementedError (its spherical harmonics stop at l = 12); l = 12 still works."""
    import torch

    from geo3d.groups import SO3
    from geo3d.reps import Irreps

    r = Irreps(SO3(), "1x12e")
    d = r.matrix(torch.eye(3, dtype=torch.float64)[None])
    torch.testing.assert_close(d[0], torch.eye(25, dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="degrees l <= 12.*l = 13"):
        Irreps(SO3(), "2x0e + 1x13e")
