"""Issue 11 hardening of geo3d.groups: membership checks of every operation that takes
group elements, argument broadcasting, outputs that never alias inputs, empty batches,
and derivatives of the parametrised constructors at the identity."""

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
    minkowski_dot,
    minkowski_metric,
    rotation_2d,
    value_checks_active,
)
from geo3d.rotations import set_value_checks

F64 = torch.float64

GROUPS = [
    SO2(),
    O2(),
    CyclicGroup(5),
    DihedralGroup(3),
    OcticGroup(),
    SO3(),
    O3(),
    SE3(),
    Lorentz(),
    Lorentz(proper=True),
]


def _shear(n: int) -> torch.Tensor:
    s = torch.eye(n, dtype=F64)
    s[0, 1] = 0.5  # det 1 but not orthogonal (and not Lorentz)
    return s


def _bad_elements(group) -> dict[str, torch.Tensor]:
    """Matrices of the right shape that are NOT elements of ``group``, with a name."""
    n = group.element_shape[-1]
    g = group.sample(1, generator=torch.Generator().manual_seed(1), dtype=F64)[0]
    bad = {
        "2·g": 2 * g,
        "shear": _shear(n),
        "zero": torch.zeros(n, n, dtype=F64),
        "NaN entry": torch.where(torch.eye(n, dtype=torch.bool), math.nan, g),
    }
    if isinstance(group, (CyclicGroup, DihedralGroup)):
        bad["rotation by 0.3 rad"] = rotation_2d(torch.tensor(0.3, dtype=F64))
    if isinstance(group, CyclicGroup) or type(group) is SO2:
        bad["reflection"] = torch.diag(torch.tensor([1.0, -1.0], dtype=F64))
    if type(group) is SO3:
        bad["reflection diag(-1, 1, 1)"] = torch.diag(torch.tensor([-1.0, 1, 1], dtype=F64))
        bad["-I"] = -torch.eye(3, dtype=F64)
    if isinstance(group, SE3):
        bad["reflection block"] = torch.diag(torch.tensor([-1.0, 1, 1, 1], dtype=F64))
        h = torch.eye(4, dtype=F64)
        h[3, 0] = 1.0  # projective bottom row
        bad["bottom row (1, 0, 0, 1)"] = h
    if isinstance(group, Lorentz):
        bad["rotation by 0.3 of (t, x)"] = torch.eye(4, dtype=F64)
        c, s = math.cos(0.3), math.sin(0.3)
        bad["rotation by 0.3 of (t, x)"][:2, :2] = torch.tensor([[c, -s], [s, c]])
        if group.proper:
            bad["parity"] = torch.diag(torch.tensor([1.0, -1, -1, -1], dtype=F64))
            bad["time reversal"] = torch.diag(torch.tensor([-1.0, 1, 1, 1], dtype=F64))
    return bad


def _x(group, *batch):
    return torch.randn(*batch, group.dim, generator=torch.Generator().manual_seed(2), dtype=F64)


# ---------------------------------------------------------------- item 2: membership
@pytest.mark.parametrize("group", GROUPS, ids=repr)
class TestMembershipChecks:
    def test_valid_elements_pass(self, group):
        g = group.sample(4, generator=torch.Generator().manual_seed(0), dtype=F64)
        x = _x(group, 4)
        # results against plain matrix algebra (the independent reference)
        torch.testing.assert_close(group.matrix(g), g, rtol=0, atol=0)
        if isinstance(group, SE3):
            ref = (g[:, :3, :3] @ x[..., None])[..., 0] + g[:, :3, 3]
        else:
            ref = (g @ x[..., None])[..., 0]
        torch.testing.assert_close(group.act(g, x), ref, rtol=0, atol=1e-14)
        torch.testing.assert_close(group.compose(g, g), g @ g, rtol=0, atol=0)
        torch.testing.assert_close(group.inverse(g), torch.linalg.inv(g), rtol=1e-10, atol=1e-10)

    def test_float32_rounding_passes(self, group):
        # elements computed in float64 and rounded to float32 are elements at float32 scale
        g = group.sample(64, generator=torch.Generator().manual_seed(0), dtype=F64).float()
        group.validate(g)
        group.act(g, _x(group, 64).float())

    def test_float32_elements_cast_to_float64_pass(self, group):
        # elements generated in float32 and given in float64 (error ~1e-7, above float64's
        # sqrt(eps) 1.5e-8) are elements, as geo3d.rotations reads them; 2·g, a shear
        # still raise
        g = group.sample(64, generator=torch.Generator().manual_seed(1)).double()
        assert float(group.element_error(g).max()) > 1.5e-8 or group.is_finite
        group.validate(g)
        torch.testing.assert_close(group.matrix(g), g, rtol=0, atol=0)
        group.act(g, _x(group, 64))
        for what in ("2·g", "shear"):
            with pytest.raises(ValueError, match="g: expected elements"):
                group.validate(_bad_elements(group)[what])

    def test_non_elements_raise_naming_the_argument(self, group):
        x = _x(group)
        e = group.identity(dtype=F64)
        for what, bad in _bad_elements(group).items():
            assert not bool(group.is_element(bad)), what
            for call, name in (
                (lambda b: group.matrix(b), "g"),
                (lambda b: group.act(b, x), "g"),
                (lambda b: group.inverse(b), "a"),
                (lambda b: group.compose(b, e), "a"),
                (lambda b: group.compose(e, b), "b"),
            ):
                with pytest.raises(ValueError, match=rf"^{name}: expected elements of "):
                    call(bad)
            # inside a batch of good elements too
            batch = torch.stack([e, bad, e])
            with pytest.raises(ValueError, match=r"g: expected elements of .* got 1 of 3"):
                group.act(batch, x)

    def test_tolerance_scales_with_dtype(self, group):
        # float64 tolerance 1e-5 (the float32-rounding floor), float32 sqrt(eps) 3.5e-4:
        # a defect of 1e-6 passes both, 1e-4 only float32, 1e-2 neither
        e = group.identity(dtype=F64)
        d = torch.zeros_like(e)
        d[0, 0] = 1.0
        for eps, ok64, ok32 in ((1e-6, True, True), (1e-4, False, True), (1e-2, False, False)):
            g = e + eps * d
            for dtype, ok in ((F64, ok64), (torch.float32, ok32)):
                if ok:
                    group.validate(g.to(dtype))
                else:
                    with pytest.raises(ValueError, match="g: expected elements"):
                        group.validate(g.to(dtype))

    def test_value_checks_off_skips_membership(self, group):
        bad = _bad_elements(group)["2·g"]
        old = set_value_checks(False)
        try:
            assert not value_checks_active(bad)
            group.validate(bad)
            if not group.is_finite:  # finite groups act through their element index
                torch.testing.assert_close(group.matrix(bad), bad)
        finally:
            set_value_checks(old)
        with pytest.raises(ValueError, match="g: expected"):
            group.matrix(bad)

    def test_vmap_and_jacrev_skip_the_data_dependent_check(self, group):
        g = group.sample(3, generator=torch.Generator().manual_seed(0), dtype=F64)
        x = _x(group, 3)
        out = torch.vmap(group.act)(g, x)
        torch.testing.assert_close(out, group.act(g, x), rtol=0, atol=1e-15)
        jac = torch.func.jacrev(group.act, argnums=1)(g[0], x[0])
        ref = g[0, :3, :3] if isinstance(group, SE3) else g[0]
        torch.testing.assert_close(jac, ref, rtol=0, atol=1e-15)


# ---------------------------------------------------------------- item 6c: broadcasting
def test_batch_dims_that_do_not_broadcast_raise_value_errors():
    so3 = SO3()
    a = so3.sample(3, dtype=F64)
    b = so3.sample(4, dtype=F64)
    with pytest.raises(ValueError, match=r"b: expected batch dims that broadcast against a's"):
        so3.compose(a, b)
    with pytest.raises(ValueError, match=r"x: expected batch dims .* \(3,\), got \(4,\)"):
        so3.act(a, torch.zeros(4, 3, dtype=F64))
    se3 = SE3()
    with pytest.raises(ValueError, match=r"x: expected batch dims"):
        se3.act(se3.sample(3, dtype=F64), torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"trans: expected batch dims .* rot's"):
        SE3.from_rt(a, torch.zeros(4, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"b: expected batch dims"):
        minkowski_dot(torch.zeros(3, 4), torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"x: expected batch dims"):
        Lorentz().act(Lorentz().sample(3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"x: expected batch dims"):
        CyclicGroup(4).act(CyclicGroup(4).sample(3), torch.zeros(2, 2))
    # mixed dtypes: a ValueError naming the argument, not matmul's RuntimeError
    with pytest.raises(ValueError, match=r"x: expected dtype torch.float64 .* \(like g\)"):
        so3.act(a, torch.zeros(3, 3, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"b: expected dtype torch.float64 .* \(like a\)"):
        so3.compose(a, b[:3].float())
    with pytest.raises(ValueError, match=r"x: expected dtype"):
        se3.act(se3.sample(3, dtype=F64), torch.zeros(3, 3))
    # broadcasting that is valid still works (and agrees with explicit expansion)
    x = torch.randn(5, 1, 3, dtype=F64)
    torch.testing.assert_close(so3.act(a, x), so3.act(a.expand(5, 3, 3, 3), x.expand(5, 3, 3)))


# ---------------------------------------------------------------- item 6b: no aliasing
def _layouts(t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Same values in three memory layouts (the last two dims)."""
    return {
        "contiguous": t.clone(),
        "column-major": t.mT.contiguous().mT,
        "strided": torch.stack([t, t], -1)[..., 0],
    }


def _assert_no_alias(out: torch.Tensor, *inputs: torch.Tensor) -> None:
    before = [t.clone() for t in inputs]
    out.add_(1.0)  # raises if `out` is an expanded view; edits an input if it aliases one
    for t, b in zip(inputs, before, strict=True):
        assert torch.equal(t, b)


@pytest.mark.parametrize("group", GROUPS, ids=repr)
def test_outputs_never_alias_inputs(group):
    g = group.sample(3, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = _x(group, 3)
    e = group.identity(dtype=F64)
    for lay, gl in _layouts(torch.cat([e[None], g])).items():
        xl = _layouts(torch.cat([x[:1], x]))[lay]
        for out in (group.matrix(gl), group.inverse(gl), group.act(gl, xl)):
            _assert_no_alias(out, gl, xl)
        _assert_no_alias(group.compose(gl, gl), gl)
        # a single identity element (the case where "return the input" is tempting)
        _assert_no_alias(group.inverse(gl[0]), gl)
        _assert_no_alias(group.matrix(gl[0]), gl)
    # identity(): a new tensor every call
    i1 = group.identity(dtype=F64)
    i1.add_(1.0)
    assert torch.equal(group.identity(dtype=F64), e)


@pytest.mark.parametrize(
    "group", [CyclicGroup(4), DihedralGroup(3), OcticGroup(), CyclicGroup(1)], ids=repr
)
def test_finite_group_elements_are_not_the_cache(group):
    ref = group.elements(dtype=F64).clone()
    for dtype in (F64, torch.float32):
        els = group.elements(dtype=dtype)
        els.mul_(3.0)  # a user edit must not corrupt the group
        special, _ = group.special_elements(dtype=dtype)
        special.mul_(3.0)
    torch.testing.assert_close(group.elements(dtype=F64), ref, rtol=0, atol=0)
    assert torch.equal(group.index_of(ref), torch.arange(group.order))
    s = group.sample(20, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert bool(group.is_element(s).all())


def test_constructors_return_new_tensors():
    rot = SO3().sample(2, dtype=F64)
    t = torch.randn(2, 3, dtype=F64)
    for rl in _layouts(rot).values():
        _assert_no_alias(SE3.from_rt(rl, t), rl, t)
    ang = torch.tensor([0.0, 0.5], dtype=F64)
    _assert_no_alias(rotation_2d(ang), ang)
    z = torch.zeros(2, 3, dtype=F64)
    _assert_no_alias(boost(z), z)
    m = minkowski_metric(F64)
    m.add_(1)
    assert torch.equal(
        minkowski_metric(F64), torch.diag(torch.tensor([1.0, -1, -1, -1], dtype=F64))
    )


# ---------------------------------------------------------------- item 6d: empty batches
@pytest.mark.parametrize("group", GROUPS, ids=repr)
def test_empty_batches(group):
    g0 = group.sample(0, dtype=F64)
    assert g0.shape == (0, *group.element_shape)
    assert group.is_element(g0).shape == (0,)
    assert group.element_error(g0).shape == (0,)
    x0 = _x(group, 0)
    assert group.act(g0, x0).shape == (0, group.dim)
    assert group.act(group.identity(dtype=F64), x0).shape == (0, group.dim)
    assert group.act(g0, _x(group, 1)).shape == (0, group.dim)
    assert group.compose(g0, g0).shape == g0.shape
    assert group.inverse(g0).shape == g0.shape
    assert group.matrix(g0).shape == g0.shape
    if group.is_finite:
        assert group.index_of(g0).shape == (0,)


# ---------------------------------------------------------------- item 6a: generators
def _boost_generators() -> torch.Tensor:
    k = torch.zeros(3, 4, 4, dtype=F64)
    for i in range(3):
        k[i, 0, i + 1] = k[i, i + 1, 0] = 1.0
    return k


def test_rotation_2d_derivative_at_identity_is_the_generator():
    j = torch.autograd.functional.jacobian(rotation_2d, torch.zeros((), dtype=F64))
    torch.testing.assert_close(j, torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64))


def test_boost_derivative_at_identity_is_the_generator():
    k = _boost_generators()
    j = torch.autograd.functional.jacobian(boost, torch.zeros(3, dtype=F64))  # (4, 4, 3)
    torch.testing.assert_close(j.permute(2, 0, 1), k, rtol=0, atol=0)
    # near 0 (Taylor branch) the jacobian is K_i + O(|ζ|), in every direction
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        z = 1e-7 * torch.randn(3, generator=gen, dtype=F64)
        j = torch.autograd.functional.jacobian(boost, z).permute(2, 0, 1)
        torch.testing.assert_close(j, k, rtol=0, atol=1e-6)


def test_se3_from_rt_derivative_at_identity_is_the_se3_generator():
    # ξ = (v, ω) translation-first; T(ξ) = from_rt(exp([ω]×), v). Analytic se(3) generators:
    # E_i (translation: 1 at (i, 3)) and the hat matrices of e_i in the rotation block
    def t_of(xi):
        w = xi[3:]
        zero = torch.zeros((), dtype=xi.dtype)
        hat = torch.stack(
            [
                torch.stack([zero, -w[2], w[1]]),
                torch.stack([w[2], zero, -w[0]]),
                torch.stack([-w[1], w[0], zero]),
            ]
        )
        return SE3.from_rt(torch.linalg.matrix_exp(hat), xi[:3])

    jac = torch.autograd.functional.jacobian(t_of, torch.zeros(6, dtype=F64)).permute(2, 0, 1)
    ref = torch.zeros(6, 4, 4, dtype=F64)
    for i in range(3):
        ref[i, i, 3] = 1.0
    ref[3, 2, 1], ref[3, 1, 2] = 1.0, -1.0
    ref[4, 0, 2], ref[4, 2, 0] = 1.0, -1.0
    ref[5, 1, 0], ref[5, 0, 1] = 1.0, -1.0
    torch.testing.assert_close(jac, ref, rtol=0, atol=0)


def test_boost_is_the_exponential_of_the_generators():
    # reference: torch.linalg.matrix_exp of Σ ζ_i K_i, at magnitudes on both sides of the
    # series switch (|ζ| = 1e-2) and large ones
    k = _boost_generators()
    gen = torch.Generator().manual_seed(1)
    d = torch.randn(8, 3, generator=gen, dtype=F64)
    d = d / d.norm(dim=-1, keepdim=True)
    mags = torch.tensor([1e-6, 3e-3, 9.99e-3, 1.001e-2, 0.05, 1.0, 3.0, 6.0], dtype=F64)
    z = mags[:, None] * d
    ref = torch.linalg.matrix_exp(torch.einsum("ni,ijk->njk", z, k))
    out = boost(z)
    scale = out.abs().amax(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(out / scale, ref / scale, rtol=0, atol=1e-14)
    # first derivatives agree with finite differences on both sides of the switch
    for zi in z[:5]:
        assert torch.autograd.gradcheck(boost, (zi.clone().requires_grad_(),))


@pytest.mark.slow
def test_torch_compile_skips_the_data_dependent_check():
    # under torch.compile value checks are off (geo3d.rotations semantics): no graph break
    # on a host read, and the compiled action equals the eager one
    so3 = SO3()
    g = so3.sample(4, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = _x(so3, 4)
    f = torch.compile(so3.act, fullgraph=True)
    torch.testing.assert_close(f(g, x), so3.act(g, x), rtol=0, atol=1e-15)
    assert f(2 * g, x).shape == (4, 3)  # not checked inside compile
