"""torch.func, generators at the identity, aliasing, broadcasting of weights, empty
batches (issue #11, items 6a-6d and 7), for every public function of geo3d.rotations.

Plausible bugs caught: a ``bool(tensor)`` value check that breaks ``vmap``/``jacrev``
with value checks ON; a custom autograd Function without ``jvp``/vmap rule; a direction
masked to zero at the identity (derivative ≠ Lie-algebra generator); an output that is a
view of the input (in-place edits leak back); weights that broadcast wrongly raising a
RuntimeError or silently changing the output shape; NaN from an empty batch."""

from __future__ import annotations

import pytest
import torch

import geo3d.rotations as G

D = torch.float64


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _inputs(B: int = 4, dtype=D):
    g = _g(3)
    R = G.random_rotation_matrix(B, generator=g, dtype=dtype)
    R2 = G.random_rotation_matrix(B, generator=g, dtype=dtype)
    q = G.random_quat(B, generator=g, dtype=dtype)
    q2 = G.random_quat(B, generator=g, dtype=dtype)
    v = torch.randn(B, 3, generator=g, dtype=dtype)
    x6 = torch.randn(B, 6, generator=g, dtype=dtype)
    M = torch.randn(B, 3, 3, generator=g, dtype=dtype)
    P = torch.randn(B, 7, 3, generator=g, dtype=dtype)
    Q = P @ R.mT + 0.1 * torch.randn(B, 7, 3, generator=g, dtype=dtype)
    w = torch.rand(B, 7, generator=g, dtype=dtype) + 0.1
    T = G.se3_exp(torch.randn(B, 6, generator=g, dtype=dtype))
    Rs = G.random_rotation_matrix(B, 5, generator=g, dtype=dtype)
    ws = torch.rand(B, 5, generator=g, dtype=dtype) + 0.1
    t = torch.rand(B, generator=g, dtype=dtype)
    return dict(R=R, R2=R2, q=q, q2=q2, v=v, x6=x6, M=M, P=P, Q=Q, w=w, T=T, Rs=Rs, ws=ws, t=t)


# name -> (function of tensors, names of the (batched) inputs)
PUBLIC = {
    "quat_to_matrix": (G.quat_to_matrix, ("q",)),
    "quat_to_matrix_normalize": (lambda q: G.quat_to_matrix(q, normalize=True), ("q",)),
    "matrix_to_quat": (G.matrix_to_quat, ("R",)),
    "axis_angle_to_matrix": (G.axis_angle_to_matrix, ("v",)),
    "matrix_to_axis_angle": (G.matrix_to_axis_angle, ("R",)),
    "axis_angle_to_quat": (G.axis_angle_to_quat, ("v",)),
    "quat_to_axis_angle": (G.quat_to_axis_angle, ("q",)),
    "sixd_to_matrix": (G.sixd_to_matrix, ("x6",)),
    "matrix_to_sixd": (G.matrix_to_sixd, ("R",)),
    "euler_to_matrix": (lambda a: G.euler_to_matrix(a, "zyx"), ("v",)),
    "euler_to_quat": (lambda a: G.euler_to_quat(a, "XZX"), ("v",)),
    "matrix_to_euler": (lambda R: G.matrix_to_euler(R, "ZYX"), ("R",)),
    "quat_to_euler": (lambda q: G.quat_to_euler(q, "xyz"), ("q",)),
    "quat_multiply": (G.quat_multiply, ("q", "q2")),
    "quat_conjugate": (G.quat_conjugate, ("q",)),
    "quat_apply": (G.quat_apply, ("q", "v")),
    "quat_slerp": (G.quat_slerp, ("q", "q2", "t")),
    "quat_distance": (G.quat_distance, ("q", "q2")),
    "quat_normalize": (G.quat_normalize, ("q",)),
    "geodesic_distance": (G.geodesic_distance, ("R", "R2")),
    "project_to_so3": (G.project_to_so3, ("M",)),
    "mean_rotation": (G.mean_rotation, ("Rs",)),
    "mean_rotation_weighted": (G.mean_rotation, ("Rs", "ws")),
    "kabsch": (G.kabsch, ("P", "Q", "w")),
    "umeyama": (G.umeyama, ("P", "Q", "w")),
    "se3_exp": (G.se3_exp, ("x6",)),
    "se3_log": (G.se3_log, ("T",)),
    "se3_inverse": (G.se3_inverse, ("T",)),
    "se3_apply": (G.se3_apply, ("T", "v")),
    "so3_hat": (G.so3_hat, ("v",)),
    "so3_vee": (G.so3_vee, ("M",)),
}


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_vmap_equals_the_batched_call_with_value_checks_on(name):
    fn, keys = PUBLIC[name]
    inp = _inputs()
    args = [inp[k] for k in keys]
    assert G.set_value_checks(True) is True  # the default; checks stay on
    want = _as_tuple(fn(*args))
    got = _as_tuple(torch.vmap(fn)(*args))
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-12, name


def _scalar_loss(fn, keys, inp):
    """A smooth scalar function of the first input (others fixed), for jacobians."""
    rest = [inp[k] for k in keys[1:]]
    outs = _as_tuple(fn(inp[keys[0]], *rest))
    cot = [torch.randn(o.shape, generator=_g(9 + i), dtype=o.dtype) for i, o in enumerate(outs)]

    def f(x):
        return sum((o * c).sum() for o, c in zip(_as_tuple(fn(x, *rest)), cot, strict=True))

    return f


JAC_CASES = [
    "matrix_to_axis_angle",
    "matrix_to_quat",
    "matrix_to_euler",
    "axis_angle_to_matrix",
    "quat_to_axis_angle",
    "project_to_so3",
    "kabsch",
    "umeyama",
    "mean_rotation_weighted",
    "se3_log",
    "se3_exp",
    "quat_slerp",
    "sixd_to_matrix",
]


def _fd_grad(f, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    out = torch.zeros_like(x)
    flat = out.view(-1)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = h
        e = e.view_as(x)
        flat[i] = (f(x + e) - f(x - e)) / (2 * h)
    return out


@pytest.mark.parametrize("name", JAC_CASES)
def test_jacrev_equals_jacfwd_equals_finite_differences(name):
    fn, keys = PUBLIC[name]
    inp = _inputs(B=2)
    x = inp[keys[0]]
    f = _scalar_loss(fn, keys, inp)
    jr = torch.func.jacrev(f)(x)
    jf = torch.func.jacfwd(f)(x)
    # under tracing a matrix input is taken as a rotation (the value-checks-off
    # semantics), so the reference differences are taken with the checks off; eager
    # float64 with checks on differentiates f(nearest rotation) instead (another
    # Jacobian off the tangent space, tested in test_nonrotation_policy.py)
    prev = G.set_value_checks(False)
    try:
        fd = _fd_grad(f, x)
    finally:
        G.set_value_checks(prev)
    assert (jr - jf).abs().max() <= 1e-10 * (1 + jr.abs().max())
    assert (jr - fd).abs().max() <= 1e-6 * (1 + fd.abs().max())


def test_gradcheck_forward_ad_on_custom_functions():
    g = _g(4)
    M = torch.randn(3, 3, 3, generator=g, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(G.project_to_so3, (M,), check_forward_ad=True)
    inp = _inputs(B=1)
    P = inp["P"][0, :4].clone().requires_grad_(True)
    Q = inp["Q"][0, :4].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(G.kabsch, (P, Q), check_forward_ad=True)
    # double vmap and vmap of a jacobian (the vmap rule composes)
    Ms = torch.randn(2, 3, 3, 3, generator=g, dtype=D)
    assert torch.allclose(torch.vmap(torch.vmap(G.project_to_so3))(Ms), G.project_to_so3(Ms))
    J = torch.vmap(torch.func.jacrev(G.project_to_so3))(Ms[0])
    J2 = torch.stack([torch.func.jacfwd(G.project_to_so3)(m) for m in Ms[0]])
    assert (J - J2).abs().max() < 1e-10


# ---------------------------------------------------------------- 6a: generators
def _hat(i: int) -> torch.Tensor:
    e = torch.zeros(3, dtype=D)
    e[i] = 1.0
    return G.so3_hat(e)


def _se3_hat(i: int) -> torch.Tensor:
    X = torch.zeros(4, 4, dtype=D)
    if i < 3:
        X[i, 3] = 1.0  # translation generators (v first)
    else:
        X[:3, :3] = _hat(i - 3)
    return X


def _jac_at(f, x0: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(f, x0)


def test_constructors_have_the_lie_algebra_generators_at_the_identity():
    """d/dt f(t e_i) at t = 0 equals the analytic generator for every parametrised
    constructor (no direction masked to zero at the origin)."""
    J = _jac_at(G.axis_angle_to_matrix, torch.zeros(3, dtype=D))
    for i in range(3):
        assert torch.equal(J[..., i], _hat(i))
    J = _jac_at(G.axis_angle_to_quat, torch.zeros(3, dtype=D))
    for i in range(3):
        ref = torch.zeros(4, dtype=D)
        ref[1 + i] = 0.5  # d/dt (cos(t/2), sin(t/2) e_i)
        assert torch.equal(J[..., i], ref)
    J = _jac_at(G.se3_exp, torch.zeros(6, dtype=D))
    for i in range(6):
        assert (J[..., i] - _se3_hat(i)).abs().max() < 1e-15
    # quaternion (1, t e_i / 2) -> generator [e_i]x
    J = _jac_at(
        lambda u: G.quat_to_matrix(torch.cat((torch.ones(1, dtype=D), 0.5 * u))),
        torch.zeros(3, dtype=D),
    )
    for i in range(3):
        assert (J[..., i] - _hat(i)).abs().max() < 1e-15
    # Euler angles: each angle at 0 generates its own axis, for every convention kind
    for conv in ("xyz", "ZYX", "zxz", "XYX"):
        axes = ["xyz".index(c) for c in conv.lower()]
        J = _jac_at(lambda a, conv=conv: G.euler_to_matrix(a, conv), torch.zeros(3, dtype=D))
        for k in range(3):
            assert (J[..., k] - _hat(axes[k])).abs().max() < 1e-15, conv
    # 6D: moving the columns of I along the first two columns of [e_i]x
    x0 = G.matrix_to_sixd(torch.eye(3, dtype=D))
    J = _jac_at(G.sixd_to_matrix, x0)
    for i in range(3):
        d = torch.cat((_hat(i)[:, 0], _hat(i)[:, 1]))  # the first two columns of [e_i]x
        assert ((J @ d) - _hat(i)).abs().max() < 1e-15


# ---------------------------------------------------------------- 6b: no aliasing
def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Same values, different memory layouts (contiguous, transposed storage, strided)."""
    out = {"contiguous": x.contiguous()}
    if x.ndim >= 2:
        out["transposed_storage"] = x.mT.contiguous().mT  # column-major last two dims
    big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
    big[..., ::2] = x
    out["strided"] = big[..., ::2]
    out["batch_first_stride"] = x.movedim(0, -1).contiguous().movedim(-1, 0)
    return out


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_outputs_never_alias_inputs(name):
    fn, keys = PUBLIC[name]
    inp = _inputs()
    for layout in ("contiguous", "transposed_storage", "strided", "batch_first_stride"):
        args = []
        for k in keys:
            lays = _layouts(inp[k])
            args.append(lays.get(layout, lays["contiguous"]))
        before = [a.clone() for a in args]
        outs = _as_tuple(fn(*args))
        for o in outs:
            o.add_(1.0)  # in-place edit of every output
        for a, b in zip(args, before, strict=True):
            assert torch.equal(a, b), (name, layout)


# ---------------------------------------------------------------- 6c: weights
BAD_WEIGHTS = [
    ("kabsch", lambda P, w: G.kabsch(P, P, weights=w), (5, 3), [(1, 5), (5, 1), (2, 5), (4,)]),
    ("umeyama", lambda P, w: G.umeyama(P, P, weights=w), (5, 3), [(1, 5), (5, 1), (2, 5), (6,)]),
    (
        "kabsch_batched",
        lambda P, w: G.kabsch(P, P, weights=w),
        (2, 5, 3),
        [(1, 2, 5), (5, 2), (3, 5)],
    ),
    (
        "mean_rotation",
        lambda R, w: G.mean_rotation(R, weights=w),
        (4, 3, 3),
        [(1, 4), (4, 1), (3,)],
    ),
    (
        "mean_rotation_batched",
        lambda R, w: G.mean_rotation(R, weights=w, dim=1),
        (2, 4, 3, 3),
        [(3, 2, 4), (4, 2), (2, 4, 1)],
    ),
]


@pytest.mark.parametrize("case", range(len(BAD_WEIGHTS)))
def test_weights_that_broadcast_wrongly_raise_value_error(case):
    name, fn, shape, bad_shapes = BAD_WEIGHTS[case]
    if name.startswith("mean"):
        X = G.random_rotation_matrix(*shape[:-2], generator=_g(1), dtype=D)
    else:
        X = torch.randn(*shape, generator=_g(1), dtype=D)
    for ws in bad_shapes:
        with pytest.raises(ValueError, match=r"^weights: expected shape broadcastable to"):
            fn(X, torch.ones(ws, dtype=D))
    # weights that broadcast TO the shape are fine: a scalar, or a missing leading dim
    fn(X, torch.ones((), dtype=D))
    fn(X, torch.ones(shape[-3 if name.startswith("mean") else -2], dtype=D))
    with pytest.raises(ValueError, match=r"^weights: expected a floating-point tensor"):
        fn(X, torch.ones(shape[:-2] if name.startswith("mean") else shape[:-1], dtype=torch.long))


# ---------------------------------------------------------------- 6d: empty batches
@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_empty_batches_give_empty_results(name):
    fn, keys = PUBLIC[name]
    inp = _inputs(B=4)
    args = [inp[k][:0] for k in keys]
    outs = _as_tuple(fn(*args))
    for o in outs:
        assert o.shape[0] == 0


def test_documented_values_of_empty_reductions():
    eye = torch.eye(3, dtype=D)
    # kabsch over zero points: R = I, t = 0 (documented); umeyama raises (zero variance)
    R, t = G.kabsch(torch.zeros(2, 0, 3, dtype=D), torch.zeros(2, 0, 3, dtype=D))
    assert torch.equal(R, eye.expand(2, 3, 3)) and torch.equal(t, torch.zeros(2, 3, dtype=D))
    with pytest.raises(ValueError, match=r"^P: expected points that are not all identical"):
        G.umeyama(torch.zeros(0, 3, dtype=D), torch.zeros(0, 3, dtype=D))
    # mean over an empty dim raises; an empty batch next to it is fine
    with pytest.raises(ValueError, match=r"^R: expected at least one rotation"):
        G.mean_rotation(torch.zeros(2, 0, 3, 3, dtype=D), dim=1)
    assert G.mean_rotation(torch.zeros(0, 4, 3, 3, dtype=D), dim=1).shape == (0, 3, 3)
    assert G.mean_rotation(
        torch.zeros(0, 4, 3, 3, dtype=D), weights=torch.ones(0, 4, dtype=D), dim=1
    ).shape == (0, 3, 3)
