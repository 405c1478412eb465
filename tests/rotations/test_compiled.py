"""The fused path: fallback behaviour, every compiled formulation uncompiled + one compiled
kernel (default suite), every compiled kernel (slow)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import geo3d.rotations as G
from geo3d.rotations import _compiled


@pytest.fixture
def fresh_cache():
    saved = dict(_compiled._CACHE), set(_compiled._FAILED)
    _compiled._CACHE.clear()
    _compiled._FAILED.clear()
    yield
    _compiled._CACHE.clear()
    _compiled._FAILED.clear()
    _compiled._CACHE.update(saved[0])
    _compiled._FAILED.update(saved[1])


def test_unknown_name():
    with pytest.raises(ValueError, match=r"name: expected one of .*got 'nope'"):
        G.fused("nope")
    with pytest.raises(AttributeError):
        G.compiled.nope  # noqa: B018


def test_falls_back_to_eager_with_a_warning(monkeypatch, fresh_cache):
    monkeypatch.setenv("GEO3D_NATIVE", "0")  # the float32 C kernels would serve q

    def broken(fn, **kwargs):
        def call(*a, **k):
            raise RuntimeError("no compiler here")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    q = G.random_quat(10, generator=torch.Generator().manual_seed(0))
    f = G.fused("quat_to_matrix")
    with pytest.warns(RuntimeWarning, match="compiling quat_to_matrix failed.*falling back"):
        out = f(q)
    assert torch.equal(out, G.quat_to_matrix(q))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls are silent and eager
        assert torch.equal(f(q), G.quat_to_matrix(q))
    assert G.fused("quat_to_matrix") is f  # cached
    # ValueErrors from input validation are not swallowed by the fallback
    with pytest.raises(ValueError, match="q: expected shape"):
        f(torch.zeros(3))


def test_compile_unavailable(monkeypatch, fresh_cache):
    monkeypatch.setenv("GEO3D_NATIVE", "0")

    def raising(fn, **kwargs):
        raise RuntimeError("torch.compile is not supported")

    monkeypatch.setattr(torch, "compile", raising)
    with pytest.warns(RuntimeWarning, match="torch.compile unavailable"):
        f = G.compiled.matrix_to_quat
    R = G.random_rotation_matrix(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(f(R), G.matrix_to_quat(R))


def _inputs(name: str, q: torch.Tensor, g: torch.Generator) -> tuple:
    """Arguments for ``name`` built from unit quaternions ``q`` (hard cases included)."""
    R = G.quat_to_matrix(q)
    v = G.quat_to_axis_angle(q)
    n = len(q)
    noise = torch.randn(n, 6, generator=g, dtype=q.dtype)
    q2 = G.random_quat(n, generator=g, dtype=q.dtype)
    return {
        "quat_to_matrix": (q,),
        "matrix_to_quat": (R,),
        # angles up to 2π: the antipodal branch of axis_angle_to_quat is exercised
        "axis_angle_to_matrix": (v * 1.9,),
        "matrix_to_axis_angle": (R,),
        "axis_angle_to_quat": (v * 1.9,),
        "quat_to_axis_angle": (q * 1.5,),  # non-unit: implicitly normalised
        "sixd_to_matrix": (G.matrix_to_sixd(R) + 0.1 * noise,),
        "matrix_to_sixd": (R,),
        "euler_to_matrix": (G.matrix_to_euler(R, "xyz", warn=False), "xyz"),
        "matrix_to_euler": (R, "ZXZ"),
        "quat_multiply": (q, q2),
        "quat_apply": (q * 2.0, noise[:, :3]),
    }[name]


def _value_and_grad(f, args: tuple) -> tuple[torch.Tensor, list[torch.Tensor]]:
    xs = [a.detach().clone().requires_grad_(True) for a in args if isinstance(a, torch.Tensor)]
    it = iter(xs)
    full = [next(it) if isinstance(a, torch.Tensor) else a for a in args]
    out = f(*full)
    w = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    return out.detach(), list(torch.autograd.grad((out * w).sum(), xs))


# ---------------------------------------------------------------------------------------
# Default suite. The formulations that fused() compiles are plain torch code: every one
# of them runs here without compiling (float64 and float32, inputs requiring grad)
# against float64 eager with value checks off (fused's documented semantics), on the
# hard cases + exact w = 0 rows + 100 random rows + non-orthogonal matrices. One is also
# compiled through fused() (float64, with grad: ~15 s of CPU time for the forward and
# backward kernels, cold cache) to check inductor's code. Compiling every kernel
# costs minutes here: that is the slow suite below (test_fused_matches_eager,
# test_fused_float32). The native float32 kernels: test_native.py.
# ---------------------------------------------------------------------------------------

_EULER_CONVENTIONS = ("xyz", "ZXZ")


def _cases(q: torch.Tensor, g: torch.Generator) -> dict[str, tuple]:
    out = {}
    for name in G.FUSED_FUNCTIONS:
        args = _inputs(name, q, g)
        if name == "matrix_to_euler":
            for c in _EULER_CONVENTIONS:
                out[f"{name}_{c}"] = (args[0], c)
        elif name == "euler_to_matrix":
            for c in _EULER_CONVENTIONS:
                out[f"{name}_{c}"] = (G.matrix_to_euler(G.quat_to_matrix(q), c, warn=False), c)
        else:
            out[name] = args
        if name.startswith("matrix_to"):  # non-orthogonal det > 0 rows: taken as rotations
            for key in [k for k in out if k.startswith(name)]:
                M = out[key][0].clone()
                M[-3:] = M[-3:] * torch.tensor([1.3, 0.9, 1.1], dtype=M.dtype)
                out[key] = (M, *out[key][1:])
    return out


@pytest.fixture(scope="module")
def fused_inputs(hard_quats) -> dict:
    g = torch.Generator().manual_seed(3)
    # w exactly 0 (the hard cases' π rotations have w ~ 6e-17): the one-sided derivative
    exact_pi = torch.tensor([[0.0, 1, 0, 0], [0, 0, 0.6, 0.8], [0, 0, 0, 1]], dtype=torch.float64)
    q = torch.cat((hard_quats, exact_pi, G.random_quat(100, generator=g, dtype=torch.float64)))
    return _cases(q, g)


def _name(case: str) -> str:
    return next(n for n in G.FUSED_FUNCTIONS if case.startswith(n))


def _run(f, args: tuple, dtype) -> tuple[torch.Tensor, tuple]:
    xs = [a.detach().to(dtype).requires_grad_(True) if isinstance(a, torch.Tensor) else a
          for a in args]
    out = f(*xs)
    w = torch.linspace(-1.0, 1.0, out.numel(), dtype=dtype).view(out.shape)
    gs = torch.autograd.grad((out * w).sum(), [x for x in xs if isinstance(x, torch.Tensor)])
    return out.detach(), gs


def _eager(case: str, fn=None):
    name = _name(case)
    kw = {"warn": False} if name == "matrix_to_euler" else {}
    fn = getattr(G, name) if fn is None else fn

    def f(*a):
        old = G.set_value_checks(False)  # fused applies the checks-off semantics
        try:
            return fn(*a, **kw)
        finally:
            G.set_value_checks(old)

    return f


def _angle_err(case: str, e: torch.Tensor) -> torch.Tensor:
    if case.startswith("matrix_to_euler"):  # angles near ±π may wrap to the other end
        e = torch.minimum(e, (e - 2 * math.pi).abs())
    return e


_CASES = [c for n in G.FUSED_FUNCTIONS for c in
          ([f"{n}_{k}" for k in _EULER_CONVENTIONS] if "euler" in n else [n])]


@pytest.mark.parametrize("case", _CASES)
def test_fused_formulations_match_float64_eager(fused_inputs, case):
    """Each formulation fused() compiles: float64 values within 1e-12 and gradients within
    1e-9 (relative) of eager; float32 values as close to the float64 result as the eager
    float32 function (2x + 1e-6), finite float32 gradients. Plausible bugs: a formula that
    differs from eager (a sign, a branch, the w >= 0 rule, abs's zero subgradient at
    w = 0 instead of the one-sided one, a missing projection derivative for matrices)."""
    impl = _eager(case, _compiled._IMPLS[_name(case)])  # checks off, as when traced
    args = fused_inputs[case]
    out, grads = _run(impl, args, torch.float64)
    ref, ref_grads = _run(_eager(case), args, torch.float64)
    assert out.dtype == torch.float64 and out.shape == ref.shape
    assert _angle_err(case, (out - ref).abs()).max() < 1e-12
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.isfinite(a).all()
        assert ((a - b).abs() <= 1e-9 * (1.0 + b.abs())).all(), (a - b).abs().max()
    args32 = tuple(a.float() if isinstance(a, torch.Tensor) else a for a in args)
    out32, grads32 = _run(impl, args32, torch.float32)
    ref32, _ = _run(_eager(case), args32, torch.float32)
    assert out32.dtype == torch.float32
    err = _angle_err(case, (out32.double() - ref).abs()).max()
    err_eager = _angle_err(case, (ref32.double() - ref).abs()).max()
    assert err <= 2.0 * err_eager + 1e-6, (err, err_eager)
    for a in grads32:
        assert torch.isfinite(a).all()


def test_one_compiled_kernel_matches_float64_eager(fused_inputs):
    """fused() through torch.compile (float64 input requiring grad: not the native path):
    quat_to_axis_angle's values and gradients (the rotation-vector factor, the one-sided
    derivative at w = 0) equal eager's on the hard cases and non-unit quaternions."""
    case = "quat_to_axis_angle"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # must really compile
        out, grads = _run(G.fused(case), fused_inputs[case], torch.float64)
    ref, ref_grads = _run(_eager(case), fused_inputs[case], torch.float64)
    assert (out - ref).abs().max() < 1e-12
    assert ((grads[0] - ref_grads[0]).abs() <= 1e-9 * (1.0 + ref_grads[0].abs())).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", G.FUSED_FUNCTIONS)
def test_fused_matches_eager(name, all_quats):
    """Float64: the fused formulation equals the eager function to ~1e-13 on hard cases
    (angles 0, π, near-π, Shepperd ties) and random rotations, with equal and finite
    gradients; a second batch size (dynamic shapes) works without failure."""
    g = torch.Generator().manual_seed(0)
    args = _inputs(name, all_quats, g)
    kw = {"warn": False} if name == "matrix_to_euler" else {}

    def eager(*a):
        return getattr(G, name)(*a, **kw)

    f = G.fused(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # must really compile here
        out, gf = _value_and_grad(f, args)
        # fused = eager with value checks off (matrices taken as rotations): with checks
        # on, float64 eager differentiates f(nearest rotation) (Newton-Schulz steps)
        prev = G.set_value_checks(False)
        try:
            ref, ge = _value_and_grad(eager, args)
        finally:
            G.set_value_checks(prev)
        assert out.dtype == torch.float64 and out.shape == ref.shape
        assert (out - ref).abs().max() < 1e-12
        for a, b in zip(gf, ge, strict=True):
            assert torch.isfinite(a).all()
            assert ((a - b).abs() <= 1e-9 * (1.0 + b.abs())).all()
        if name in ("quat_to_matrix", "matrix_to_axis_angle", "euler_to_matrix"):
            part = tuple(a[:100] if isinstance(a, torch.Tensor) else a for a in args)
            out2, _ = _value_and_grad(f, part)  # new size: dynamic shapes, no failure
            assert (out2 - ref[:100]).abs().max() < 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("native", [True, False], ids=["native", "compiled"])
@pytest.mark.parametrize("name", G.FUSED_FUNCTIONS)
def test_fused_float32(name, native):
    """Float32, both back ends (the C kernels and the compiled ones): as close to the
    float64 result on the same float32 input as the eager float32 function is."""
    from geo3d.rotations import _native

    g = torch.Generator().manual_seed(1)
    q = G.random_quat(4096, generator=g)
    args = _inputs(name, q, g)
    kw = {"warn": False} if name == "matrix_to_euler" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        if native:
            out = G.fused(name)(*args)
        else:
            with _native.disabled():
                out = G.fused(name)(*args)
    ref = getattr(G, name)(*args, **kw)
    ref64 = getattr(G, name)(*(a.double() if isinstance(a, torch.Tensor) else a
                               for a in args), **kw)
    assert out.dtype == torch.float32

    def err(x):
        e = (x.double() - ref64).abs()
        if name == "matrix_to_euler":  # angles near ±π may wrap to the other end
            e = torch.minimum(e, (e - 2 * torch.pi).abs())
        return e.max().item()

    assert err(out) <= 2.0 * err(ref) + 1e-6


@pytest.mark.slow
def test_fused_euler_conventions_and_bad_input():
    """One compiled graph per convention; bad conventions/shapes raise ValueError."""
    g = torch.Generator().manual_seed(2)
    R = G.random_rotation_matrix(64, generator=g, dtype=torch.float64)
    f = G.fused("matrix_to_euler")
    for conv in ("xyz", "ZYX"):
        ang = f(R, conv)
        assert (ang - G.matrix_to_euler(R, conv, warn=False)).abs().max() < 1e-12
        assert (G.fused("euler_to_matrix")(ang, convention=conv) - R).abs().max() < 1e-12
    with pytest.raises(ValueError, match="convention"):
        f(R, "xyy")
    with pytest.raises(ValueError, match="R: expected shape"):
        f(R[..., :2], "xyz")


def test_half_angle_over_sin_accuracy_and_gradients():
    """The float32 rotation-vector factor 2 atan2(n, |w|) / n of the fused kernels: relative
    error ≤ 2 ulp against float64 over all angles and scales, 2/|w| at n = 0, finite
    gradients at the identity and at π; float64 takes the exact torch.atan2 route."""
    from geo3d.rotations._fast_math import half_angle_over_sin

    th = torch.linspace(0.0, math.pi / 2, 200_001, dtype=torch.float64)  # θ/2 in [0, π/2]
    for r in (1.0, 3.7, 1e-18, 1e18):
        n, aw = (r * torch.sin(th)).float(), (r * torch.cos(th)).float()
        nd, awd = n.double(), aw.double()
        ref = torch.where(nd == 0, 2.0 / awd, 2.0 * torch.atan2(nd, awd) / nd.clamp_min(1e-300))
        got = half_angle_over_sin(n, aw).double()
        assert ((got - ref).abs() / ref).max() < 2.4e-7  # 2 float32 ulp
    assert half_angle_over_sin(torch.tensor([0.0]), torch.tensor([0.5])).item() == 4.0
    n = torch.tensor([0.0, 1e-4, 1.0, 1.0], requires_grad=True)
    aw = torch.tensor([1.0, 1.0, 1e-4, 0.0], requires_grad=True)
    gn, ga = torch.autograd.grad(half_angle_over_sin(n, aw).sum(), (n, aw))
    assert torch.isfinite(gn).all() and torch.isfinite(ga).all()
    n64, aw64 = torch.tensor([0.3, 0.0], dtype=torch.float64), torch.tensor([0.9, 0.5],
                                                                            dtype=torch.float64)
    exact = torch.tensor([2.0 * math.atan2(0.3, 0.9) / 0.3, 4.0], dtype=torch.float64)
    assert torch.allclose(half_angle_over_sin(n64, aw64), exact, rtol=1e-15)


def test_fast_atan2_accuracy_and_conventions():
    """The float32 atan2 of the fused kernels: ≤ 3e-7 rad (~1 ulp at π) from the float64 atan2 over
    all quadrants and scales, torch's signed-zero conventions, finite gradients."""
    from geo3d.rotations._fast_math import atan2

    th = torch.linspace(-math.pi, math.pi, 400_001, dtype=torch.float64)
    for r in (1.0, 3.7, 1e-30, 1e30):
        y, x = (r * torch.sin(th)).float(), (r * torch.cos(th)).float()
        ref = torch.atan2(y.double(), x.double())
        assert (atan2(y, x).double() - ref).abs().max() < 3e-7
        ay, ax = y.abs(), x.abs()
        ref1 = torch.atan2(ay.double(), ax.double())
        assert (atan2(ay, ax, nonneg=True).double() - ref1).abs().max() < 3e-7
    z = torch.tensor([0.0, -0.0, 0.0, -0.0, 1.0, -1.0, 0.0, -0.0, 2.0, -2.0])
    w = torch.tensor([0.0, 0.0, -0.0, -0.0, 0.0, -0.0, 1.0, -1.0, -2.0, 2.0])
    out, ref = atan2(z, w), torch.atan2(z, w)
    assert torch.equal(out.signbit(), ref.signbit())
    assert (out - ref).abs().max() < 3e-7
    # float64 is passed to torch.atan2 (exact), with a zero gradient at (0, 0)
    y64 = torch.tensor([0.3, -2.0, 0.0], dtype=torch.float64, requires_grad=True)
    x64 = torch.tensor([-1.0, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    assert torch.equal(atan2(y64, x64)[:2], torch.atan2(y64, x64)[:2])
    gy, gx = torch.autograd.grad(atan2(y64, x64).sum(), (y64, x64))
    assert torch.isfinite(gy).all() and torch.isfinite(gx).all()
    # float32 gradient: that of the polynomial, close to the exact one, finite at (0, 0)
    y = torch.tensor([0.3, -2.0, 1e-3, 0.0], requires_grad=True)
    x = torch.tensor([-1.0, 0.5, 1.0, 0.0], requires_grad=True)
    gy, gx = torch.autograd.grad(atan2(y, x).sum(), (y, x))
    assert torch.isfinite(gy).all() and torch.isfinite(gx).all()
    n2 = x.detach()[:3] ** 2 + y.detach()[:3] ** 2
    assert (gy[:3] - x.detach()[:3] / n2).abs().max() < 1e-5
    assert (gx[:3] + y.detach()[:3] / n2).abs().max() < 1e-5


@pytest.mark.parametrize("dtype,scales", [(torch.float32, (1e20, 1e-20, 1e-40, 1e30)),
                                          (torch.float64, (1e160, 1e-160, 1e300))])
def test_scale_invariant_formulations_take_any_scale(dtype, scales):
    """Audit: the fused quat_to_axis_angle / quat_apply / sixd_to_matrix squared the raw
    components, so |q| = 1e20 (float32) or 1e160 (float64) overflowed (a zero rotation
    vector, NaN, a zero column) and 1e-20 underflowed, where the eager functions rescale
    first. Run uncompiled here (the same code torch.compile fuses); compared with float64
    eager on the same input."""
    base = torch.tensor([[0.3, -0.5, 0.7, 0.1], [-0.2, 0.1, 0.0, 0.9], [0.0, 0.0, 0.0, -2.0]],
                        dtype=dtype)
    v = torch.tensor([[1.0, 2.0, -0.5], [0.3, -1.0, 2.0], [0.5, 0.5, 0.5]], dtype=dtype)
    x = torch.tensor([[1.0, 0.2, 0.1, 0.0, 1.0, 0.3], [0.0, 2.0, 0.0, 3.0, 0.5, -1.0]],
                     dtype=dtype)
    tol = 4 * torch.finfo(dtype).eps
    for s in scales:
        for name, args in (("quat_to_axis_angle", (base * s,)),
                           ("quat_apply", (base * s, v)),
                           ("sixd_to_matrix", (x * s,))):
            got = _compiled._IMPLS[name](*args)
            # eager in float64 on the same (scaled) input: subnormal inputs lose digits
            ref = getattr(G, name)(*(a.double() for a in args)).to(dtype)
            assert torch.isfinite(got).all(), (name, s)
            torch.testing.assert_close(got, ref, rtol=0, atol=tol * 10, msg=f"{name} {s}")
