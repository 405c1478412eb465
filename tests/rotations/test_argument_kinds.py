"""Issue 11 (fresh-user findings), by kind, for every public rotation function that takes
several tensors: batch dims that do not broadcast, mixed dtypes and mixed devices raise
``ValueError`` naming the second argument (not a RuntimeError from torch); float16 and
bfloat16 reach no missing SVD kernel (projected in float32, cast back); a non-floating
``dtype`` for the samplers is rejected by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import geo3d.rotations as G

_g = torch.Generator().manual_seed(0)
Q3 = G.random_quat(3, generator=_g, dtype=torch.float64)
R3 = G.random_rotation_matrix(3, generator=_g, dtype=torch.float64)
P3 = torch.randn(3, 5, 3, generator=_g, dtype=torch.float64)
T3 = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
T3[:, :3, :3] = R3


def _q(*s):
    return G.random_quat(*s, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# (name, call(first, second), first, second, second's name): `second` is replaced by a
# wrong-batch / wrong-dtype / wrong-device version of itself
CASES = [
    ("quat_multiply", lambda a, b: G.quat_multiply(a, b), Q3, Q3, "q"),
    ("quat_apply", lambda a, b: G.quat_apply(a, b), Q3, P3[:, 0], "v"),
    ("quat_slerp q1", lambda a, b: G.quat_slerp(a, b, 0.3), Q3, Q3, "q1"),
    ("quat_slerp t", lambda a, b: G.quat_slerp(a, a, b), Q3, torch.rand(3, dtype=torch.float64), "t"),
    ("quat_distance", lambda a, b: G.quat_distance(a, b), Q3, Q3, "q2"),
    ("geodesic_distance", lambda a, b: G.geodesic_distance(a, b), R3, R3, "R2"),
    ("se3_apply", lambda a, b: G.se3_apply(a, b), T3, P3[:, 0], "x"),
    ("kabsch", lambda a, b: G.kabsch(a, b), P3, P3, "Q"),
    ("umeyama", lambda a, b: G.umeyama(a, b), P3, P3, "Q"),
]


def _wrong_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    return x[:2] if name != "t" else torch.rand(4, dtype=x.dtype)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_batches_that_do_not_broadcast_raise_value_error(case):
    _, call, a, b, name = case
    call(a, b)  # the well-formed call works
    with pytest.raises(ValueError, match=rf"^{name}: expected .*broadcastable"):
        call(a, _wrong_batch(b, name))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mixed_dtypes_raise_value_error(case):
    _, call, a, b, name = case
    with pytest.raises(ValueError, match=rf"^{name}: expected .*dtype torch.float64, got torch.float32"):
        call(a, b.float())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mixed_devices_raise_value_error(case):
    _, call, a, b, name = case
    with pytest.raises(ValueError, match=rf"^{name}: expected a tensor on .*device cpu, got meta"):
        call(a, b.to("meta"))


def test_weights_on_another_device_raise_value_error():
    w = torch.ones(3, 5, dtype=torch.float64, device="meta")
    for call in (lambda: G.kabsch(P3, P3, w), lambda: G.mean_rotation(R3, w[:, 0])):
        with pytest.raises(ValueError, match="^weights: expected a tensor on device cpu, got meta"):
            call()


def test_fused_two_argument_functions_raise_value_error():
    with pytest.raises(ValueError, match="^q: expected batch dims broadcastable"):
        G.fused("quat_multiply")(_q(3), _q(2))
    with pytest.raises(ValueError, match="^q: expected p's dtype"):
        G.fused("quat_multiply")(_q(3), _q(3).float())
    with pytest.raises(ValueError, match="^v: expected batch dims broadcastable"):
        G.fused("quat_apply")(_q(3), torch.zeros(2, 3, dtype=torch.float64))
    # a bad call is the caller's error: it must not switch the compiled back end off
    from geo3d.rotations import _compiled

    assert "quat_multiply" not in _compiled._FAILED and "quat_apply" not in _compiled._FAILED


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_input_is_projected_in_float32(dtype):
    """No NotImplementedError from linalg_svd_cpu: the result is float32's, cast back;
    compared with scipy's nearest rotation (float64) to the dtype's resolution."""
    g = torch.Generator().manual_seed(2)
    M64 = G.random_rotation_matrix(4, generator=g, dtype=torch.float64) * 1.2 + 0.2
    M = M64.to(dtype)
    ref = Rotation.from_matrix(M.double().numpy())  # the nearest rotation of what was given
    tol = 8 * torch.finfo(dtype).eps
    R = G.project_to_so3(M)
    assert R.dtype == dtype
    assert (R.double() - torch.from_numpy(ref.as_matrix())).abs().max() < tol
    v = G.matrix_to_axis_angle(M)
    assert v.dtype == dtype
    assert (v.double() - torch.from_numpy(ref.as_rotvec())).abs().max() < 4 * tol
    Rm = G.mean_rotation(M[:1])
    assert (Rm.double() - torch.from_numpy(ref[0].as_matrix())).abs().max() < tol
    # kabsch/umeyama: points moved by a known rotation
    Rt = torch.from_numpy(ref.as_matrix())
    P = torch.randn(4, 20, 3, generator=g, dtype=torch.float64)
    Rk, _ = G.kabsch(P.to(dtype), (P @ Rt.mT).to(dtype))
    assert Rk.dtype == dtype
    assert (Rk.double() - Rt).abs().max() < 4 * tol
    s, Ru, _ = G.umeyama(P.to(dtype), (2 * P @ Rt.mT).to(dtype))
    assert (Ru.double() - Rt).abs().max() < 4 * tol
    assert abs(float(s.double().mean()) - 2.0) < 8 * tol


@pytest.mark.parametrize("fn", [G.random_rotation_matrix, G.random_quat])
def test_random_samplers_reject_non_floating_dtype(fn):
    with pytest.raises(ValueError, match="^dtype: expected a floating-point torch.dtype"):
        fn(2, dtype=torch.int64)
    assert fn(2, dtype=torch.float64).dtype == torch.float64


def test_matrix_reader_float16_skips_nothing_it_should_not():
    # a far-from-orthonormal float16 matrix goes through the float32 projection
    M = torch.tensor([[0.0, -0.5, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.5]], dtype=torch.float16)
    q = G.matrix_to_quat(M)
    ref = Rotation.from_matrix(M.double().numpy()).as_quat()[[3, 0, 1, 2]]
    ref = ref * np.sign(ref[0])
    assert (q.double() - torch.from_numpy(ref)).abs().max() < 8 * torch.finfo(torch.float16).eps
