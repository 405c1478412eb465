"""The native float32 CPU kernels behind ``geo3d.rotations.fused`` (``_native.c``).

Every kernel is checked against the float64 eager function applied to the same float32
input (so that the input's rounding is not counted), on random inputs and the hard cases
of ``all_quats`` (angles 0 and π, within 1e-8 of them, Shepperd ties, w ≈ 0)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import geo3d.rotations as G
from geo3d.rotations import _compiled, _native

EPS = torch.finfo(torch.float32).eps
CONVENTIONS = [c for s in _native.SEQUENCES for c in (s, s.upper())]


@pytest.fixture(scope="module")
def lib():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the build must work here
        out = _native.library()
    assert out is not None
    return out


@pytest.fixture(scope="module")
def quats(all_quats) -> torch.Tensor:
    """float32 unit quaternions: the hard cases, then random ones (odd count: the scalar
    tail of every vector loop runs too)."""
    g = torch.Generator().manual_seed(7)
    q = torch.cat((all_quats, G.random_quat(20_011, generator=g, dtype=torch.float64)))
    return q.float()


def _ref(name: str, x: torch.Tensor, **kw) -> torch.Tensor:
    """The float64 eager result for the float32 input x."""
    return getattr(G, name)(x.double(), **kw)


def _native_out(name: str, x: torch.Tensor, **kw) -> torch.Tensor:
    out = G.fused(name)(x, **kw)
    assert out.dtype == torch.float32
    return out


@pytest.mark.parametrize(
    "name, scale",
    [
        ("quat_to_matrix", 1.0),
        ("matrix_to_quat", 1.0),
        ("axis_angle_to_matrix", 1.9),  # angles up to 1.9π
        ("matrix_to_axis_angle", 1.0),
        ("axis_angle_to_quat", 1.9),
        ("quat_to_axis_angle", 1.5),  # non-unit: implicitly normalised
        ("sixd_to_matrix", 1.0),
    ],
)
def test_kernels_match_float64(lib, quats, name, scale):
    R = G.quat_to_matrix(quats)
    x = {
        "quat_to_matrix": quats,
        "matrix_to_quat": R,
        "axis_angle_to_matrix": G.quat_to_axis_angle(quats) * scale,
        "matrix_to_axis_angle": R,
        "axis_angle_to_quat": G.quat_to_axis_angle(quats) * scale,
        "quat_to_axis_angle": quats * scale,
        "sixd_to_matrix": G.matrix_to_sixd(R)
        + 0.1 * torch.randn(len(R), 6, generator=torch.Generator().manual_seed(3)),
    }[name]
    assert _native.applies(name, x)
    out = _native_out(name, x)
    ref = _ref(name, x)
    assert out.shape == ref.shape
    err = (out.double() - ref).abs()
    if name in ("matrix_to_quat",):  # q and -q are the same rotation when w = 0
        err = torch.minimum(err, (out.double() + ref).abs())
    # values are O(1) (O(π) for rotation vectors): a few float32 ulps
    bound = {"matrix_to_axis_angle": 8 * math.pi, "quat_to_axis_angle": 8 * math.pi,
             "axis_angle_to_quat": 8.0, "axis_angle_to_matrix": 8.0}.get(name, 4.0) * EPS
    if name == "matrix_to_axis_angle":
        # at π, v and -v are the same rotation
        err = torch.minimum(err, (out.double() + ref).abs())
    assert err.max() < bound, (name, err.max().item())


def test_quat_to_matrix_normalize_and_large_angles(lib):
    g = torch.Generator().manual_seed(5)
    q = torch.randn(4099, 4, generator=g) * 3.0
    out = G.fused("quat_to_matrix")(q, normalize=True)
    ref = G.quat_to_matrix(q.double(), normalize=True)
    assert (out.double() - ref).abs().max() < 4 * EPS
    # rotation vectors far beyond 2π: the trig argument reduction stays accurate
    v = torch.randn(4099, 3, generator=g) * 300.0
    theta = v.double().norm(dim=-1)
    for name in ("axis_angle_to_quat", "axis_angle_to_matrix"):
        err = (G.fused(name)(v).double() - _ref(name, v)).abs()
        if name == "axis_angle_to_quat":
            err = torch.minimum(err, (G.fused(name)(v).double() + _ref(name, v)).abs())
        # float32 θ = |v| itself is off by an ulp of θ, which no float32 code avoids
        err = err.flatten(1).max(1).values
        assert (err < 4 * EPS * (2.0 + theta)).all(), (name, (err / theta).max().item())
    # exactly zero rotation vectors: the identity, no NaN
    z = torch.zeros(33, 3)
    assert torch.equal(G.fused("axis_angle_to_matrix")(z), torch.eye(3).expand(33, 3, 3))
    assert torch.equal(G.fused("axis_angle_to_quat")(z)[:, 0], torch.ones(33))


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_euler_kernels_all_conventions(lib, quats, convention):
    R = G.quat_to_matrix(quats)
    ang = G.fused("matrix_to_euler")(R, convention)
    # fused kernels take the input as a rotation (value-checks-off semantics): so does
    # the float64 reference (with checks on, float64 reads the float32-rounded matrix
    # as its nearest rotation, which differs from it by ~1e-7)
    prev = G.set_value_checks(False)
    try:
        ref = G.matrix_to_euler(R.double(), convention, warn=False)
    finally:
        G.set_value_checks(prev)
    # gimbal lock rows (and rows so near it that float32 and float64 decide differently)
    # have ill-conditioned individual angles: there the rotation they give is compared
    mid = ref[:, 1] if convention.lower()[0] == convention.lower()[2] else ref[:, 1] + math.pi / 2
    safe = (mid.abs() > 1e-3) & ((mid.abs() - math.pi).abs() > 1e-3)
    d = (ang.double() - ref).abs()
    d = torch.minimum(d, (d - 2 * math.pi).abs())  # -π and π are the same angle
    assert d[safe].max() < 2e-5
    assert ((ang >= -math.pi) & (ang < math.pi)).all()  # scipy's range, wrapped
    back = G.euler_to_matrix(ang.double(), convention)
    assert (back - R.double()).abs().max() < 1e-5
    # and the other way
    a = torch.rand(20_011, 3, generator=torch.Generator().manual_seed(11)) * 4 * math.pi
    a = a - 2 * math.pi
    out = G.fused("euler_to_matrix")(a, convention)
    assert (out.double() - G.euler_to_matrix(a.double(), convention)).abs().max() < 8 * EPS


def test_same_result_for_any_thread_count_and_layout(lib, quats):
    R = G.quat_to_matrix(quats)
    v = G.quat_to_axis_angle(quats)
    old = torch.get_num_threads()
    big_R = R.repeat(3, 1, 1)  # 60k rows: several threads and chunk boundaries
    try:
        torch.set_num_threads(1)
        one = (G.fused("matrix_to_euler")(big_R, "zyx"), G.fused("axis_angle_to_quat")(v))
        torch.set_num_threads(4)
        many = (G.fused("matrix_to_euler")(big_R, "zyx"), G.fused("axis_angle_to_quat")(v))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(one, many, strict=True):
        assert torch.equal(a, b)
    # batch shapes, non-contiguous and expanded inputs, the input left alone
    Rb = R[:240].reshape(4, 6, 10, 3, 3)
    out = G.fused("matrix_to_axis_angle")(Rb)
    assert out.shape == (4, 6, 10, 3)
    assert torch.equal(out.reshape(240, 3), G.fused("matrix_to_axis_angle")(R[:240]))
    Rt = R[:100].transpose(-1, -2)  # non-contiguous
    assert not Rt.is_contiguous()
    assert torch.equal(G.fused("matrix_to_quat")(Rt),
                       G.fused("matrix_to_quat")(Rt.contiguous()))
    e = torch.eye(3).expand(5, 7, 3, 3)
    assert G.fused("matrix_to_quat")(e).shape == (5, 7, 4)
    keep = v.clone()
    G.fused("axis_angle_to_matrix")(v)
    assert torch.equal(v, keep)
    assert G.fused("sixd_to_matrix")(torch.zeros(0, 6)).shape == (0, 3, 3)
    assert G.fused("quat_to_matrix")(quats[0]).shape == (3, 3)  # no batch dims


def test_when_the_native_path_applies(lib, monkeypatch):
    x = torch.randn(10, 3)
    assert _native.applies("axis_angle_to_quat", x)
    assert not _native.applies("axis_angle_to_quat", x.double())
    assert not _native.applies("quat_apply", torch.randn(10, 4))  # no kernel
    xg = x.clone().requires_grad_(True)
    assert not _native.applies("axis_angle_to_quat", xg)  # needs the autograd graph
    with torch.no_grad():
        assert _native.applies("axis_angle_to_quat", xg)
    with _native.disabled():
        assert not _native.applies("axis_angle_to_quat", x)
    assert _native.applies("axis_angle_to_quat", x)
    monkeypatch.setenv("GEO3D_NATIVE", "0")
    assert not _native.applies("axis_angle_to_quat", x)


def test_bad_input_is_rejected_before_the_kernel(lib):
    with pytest.raises(ValueError, match=r"R: expected shape \(\.\.\., 3, 3\), got \(4, 3\)"):
        G.fused("matrix_to_quat")(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="convention"):
        G.fused("matrix_to_euler")(torch.eye(3), "xyy")
    with pytest.raises(ValueError, match="convention"):
        G.fused("euler_to_matrix")(torch.zeros(3), "abc")
    with pytest.raises(ValueError, match=r"q: expected shape \(\.\.\., 4\)"):
        G.fused("quat_to_axis_angle")(torch.zeros(2, 3))


def test_build_failure_warns_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "_STATE", {"lib": None, "error": None, "warned": False,
                                            "off": 0})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("GEO3D_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="native float32 kernels unavailable"):
        assert _native.library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert _native.library() is None
        assert not _native.applies("matrix_to_quat", torch.eye(3))
    sig = _compiled.inspect.signature(G.matrix_to_quat)
    assert _compiled._native_call("matrix_to_quat", sig, (torch.eye(3),), {}) is None


def test_cache_key_and_location(monkeypatch, tmp_path):
    monkeypatch.setenv("GEO3D_CACHE_DIR", str(tmp_path))
    assert _native._cache_dir() == tmp_path / "native"
    monkeypatch.delenv("GEO3D_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _native._cache_dir() == tmp_path / "xdg" / "geo3d" / "native"
    sig = _native._cpu_signature()
    assert sig.splitlines()[0]  # machine name first


def test_failed_compiler_run_reports_its_error(monkeypatch, tmp_path):
    """A compiler that runs but fails: the error names it, the build is retried without
    -march=native (the flag a non-x86 compiler may lack), and no partial file stays."""
    script = tmp_path / "fakecc"
    script.write_text("#!/bin/sh\necho 'fakecc 1.0'\n"
                      "case \"$1\" in --version) exit 0;; esac\necho boom >&2\nexit 3\n")
    script.chmod(0o755)
    monkeypatch.setenv("CC", str(script))
    monkeypatch.setenv("GEO3D_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="fakecc -O3 -fno-math-errno.* exited with 3: boom"):
        _native._build()
    assert list((tmp_path / "cache" / "native").iterdir()) == []


def test_non_finite_rows_stay_in_their_row(lib):
    """Fused semantics = eager with value checks off: no ValueError; a NaN in a row makes
    that row non-finite (as eager with checks off does) and leaves every other row equal
    to the result without it. Plausible bugs: a NaN leaking across the 64-row blocks or
    vector lanes, a NaN silently turned into a finite rotation."""
    g = torch.Generator().manual_seed(4)
    q = G.random_quat(200, generator=g)
    R = G.quat_to_matrix(q)
    v = G.quat_to_axis_angle(q)
    inputs = {"quat_to_matrix": q, "matrix_to_quat": R, "axis_angle_to_matrix": v,
              "matrix_to_axis_angle": R, "axis_angle_to_quat": v, "quat_to_axis_angle": q,
              "sixd_to_matrix": G.matrix_to_sixd(R), "euler_to_matrix": v,
              "matrix_to_euler": R}
    bad_rows = [0, 63, 64, 130, 199]
    for name, x in inputs.items():
        args = (x, "zyx") if "euler" in name else (x,)
        clean = G.fused(name)(*args)
        xb = x.clone()
        xb.view(len(x), -1)[bad_rows, 1] = float("nan")
        out = G.fused(name)(xb, *args[1:])
        finite = torch.isfinite(out.view(len(x), -1)).all(-1)
        assert not finite[bad_rows].any(), name
        keep = torch.ones(len(x), dtype=torch.bool)
        keep[bad_rows] = False
        assert torch.equal(out[keep], clean[keep]), name


@pytest.mark.parametrize("scale", [1e20, 1e-20, 1e-40, 1e30])
def test_scale_invariant_kernels_take_any_scale(lib, scale):
    """Audit: the float32 kernels for quat_to_axis_angle, quat_to_matrix(normalize=True)
    and sixd_to_matrix squared the raw components: |q| = 1e20 gave a zero rotation vector
    and a wrong matrix, 1e-40 (subnormal) -inf/NaN, a 6D column of 1e20 a zero column. They
    now divide each row by its largest component first, as the eager functions do."""
    base = torch.tensor([[0.3, -0.5, 0.7, 0.1], [-0.2, 0.1, 0.0, 0.9], [0.0, 0.0, 0.0, -2.0]])
    x = torch.tensor([[1.0, 0.2, 0.1, 0.0, 1.0, 0.3], [0.0, 2.0, 0.0, 3.0, 0.5, -1.0]])
    tol = 8 * EPS
    cases = (("quat_to_axis_angle", base, {}), ("quat_to_matrix_normalize", base, {}),
             ("sixd_to_matrix", x, {}))
    for kernel, inp, _ in cases:
        got = _native.run(kernel, inp * scale, None)
        name = "quat_to_matrix" if kernel == "quat_to_matrix_normalize" else kernel
        kw = {"normalize": True} if kernel == "quat_to_matrix_normalize" else {}
        # the float64 eager result of the same float32 input (1e-40 is subnormal: the
        # input itself has lost digits)
        ref = getattr(G, name)((inp * scale).double(), **kw).float()
        assert torch.isfinite(got).all(), kernel
        torch.testing.assert_close(got, ref, rtol=0, atol=tol, msg=kernel)
