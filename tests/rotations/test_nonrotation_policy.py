"""Matrices that are not rotations (issue #11, item 2).

Policy: with value checks on, NaN/inf or det <= 0 raises ValueError naming the argument;
any det > 0 matrix is read as its nearest rotation (scipy >= 1.15 ``from_matrix``);
with value checks off / under tracing the input is assumed to be a rotation.
Plausible bugs caught: a reflection, the zero matrix or a rank-1 matrix silently read as
the identity; -I read as a rotation by π; a non-orthogonal matrix read off its raw
entries (22.6° from its nearest rotation in scipy's doc example)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy
import torch
from scipy.spatial.transform import Rotation

import geo3d.rotations as G

D = torch.float64


def _T(R: torch.Tensor) -> torch.Tensor:
    T = torch.eye(4, dtype=R.dtype).repeat(*R.shape[:-2], 1, 1)
    T[..., :3, :3] = R
    T[..., :3, 3] = 1.0
    return T


READERS = {
    "matrix_to_quat": (lambda R: G.matrix_to_quat(R), "R"),
    "matrix_to_axis_angle": (lambda R: G.matrix_to_axis_angle(R), "R"),
    "matrix_to_euler": (lambda R: G.matrix_to_euler(R, "xyz"), "R"),
    "matrix_to_sixd": (lambda R: G.matrix_to_sixd(R), "R"),
    "mean_rotation": (lambda R: G.mean_rotation(R.expand(2, 3, 3)), "R"),
    "se3_log": (lambda R: G.se3_log(_T(R)), "T"),
    "se3_inverse": (lambda R: G.se3_inverse(_T(R)), "T"),
}

BAD = {
    "reflection": torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=D)),
    "minus_identity": -torch.eye(3, dtype=D),
    "zero": torch.zeros(3, 3, dtype=D),
    "rank_one": torch.outer(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, -1.0, 2.0])).double(),
    "rank_two": torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=D)),
    "rotated_reflection": G.axis_angle_to_matrix(torch.tensor([0.3, -1.0, 0.2], dtype=D))
    @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=D)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("name", sorted(READERS))
def test_det_not_positive_raises(name, bad, dtype):
    fn, arg = READERS[name]
    # in a batch of valid rotations, too: one bad element is enough
    batch = torch.cat((torch.eye(3, dtype=D)[None], BAD[bad][None])).to(dtype)
    for R in (BAD[bad].to(dtype), batch):
        with pytest.raises(ValueError, match=rf"^{arg}: expected .*det > 0.*det <= 0"):
            fn(R if name != "mean_rotation" else R.reshape(-1, 3, 3)[-1])


@pytest.mark.parametrize("name", sorted(READERS))
def test_non_finite_raises(name):
    fn, arg = READERS[name]
    for v in (float("nan"), float("inf")):
        R = torch.eye(3, dtype=D)
        R[1, 2] = v
        with pytest.raises(ValueError, match=rf"^{arg}: expected finite values"):
            fn(R)


def _sp_from_matrix(M: torch.Tensor):
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(M.numpy())


SCIPY_DOC = torch.tensor([[0.0, -0.5, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.5]], dtype=D)


def test_scipy_doc_example_gives_the_nearest_rotation():
    """scipy's documentation example of a non-orthogonal matrix: scipy >= 1.15 returns the
    rotation of its nearest orthogonal matrix (here Rz(90°)); geo3d must agree."""
    major, minor = (int(x) for x in scipy.__version__.split(".")[:2])
    assert (major, minor) >= (1, 15), "scipy >= 1.15 is the reference for this policy"
    ref = _sp_from_matrix(SCIPY_DOC)
    q = G.matrix_to_quat(SCIPY_DOC)
    ref_q = torch.from_numpy(ref.as_quat()[[3, 0, 1, 2]].copy())
    assert (q - ref_q * torch.sign(ref_q[0])).abs().max() < 1e-12
    assert (
        G.matrix_to_axis_angle(SCIPY_DOC) - torch.from_numpy(ref.as_rotvec())
    ).abs().max() < 1e-12
    e = G.matrix_to_euler(SCIPY_DOC, "ZYX")
    assert (e - torch.from_numpy(ref.as_euler("ZYX"))).abs().max() < 1e-12
    # and the nearest rotation is Rz(90°) exactly (analytic)
    assert (
        G.matrix_to_axis_angle(SCIPY_DOC) - torch.tensor([0, 0, np.pi / 2], dtype=D)
    ).abs().max() < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_det_positive_matrices_match_scipy(dtype):
    """Random det > 0 matrices (far from orthogonal), a batch mixing them with exact
    rotations: quaternion, rotation vector and Euler angles of the nearest rotation."""
    g = torch.Generator().manual_seed(5)
    M = torch.randn(60, 3, 3, generator=g, dtype=D)
    M = M * torch.sign(torch.det(M))[:, None, None]  # det > 0
    rots = G.random_rotation_matrix(20, generator=g, dtype=D)
    batch = torch.cat((M, rots))
    ref = _sp_from_matrix(batch)
    tol = 1e-10 if dtype == D else 2e-4
    q = G.matrix_to_quat(batch.to(dtype)).double()
    ref_q = torch.from_numpy(ref.as_quat()[:, [3, 0, 1, 2]].copy())
    assert torch.minimum((q - ref_q).abs().amax(-1), (q + ref_q).abs().amax(-1)).max() < tol
    v = G.matrix_to_axis_angle(batch.to(dtype)).double()
    assert (v - torch.from_numpy(ref.as_rotvec())).abs().max() < tol
    s6 = G.matrix_to_sixd(batch.to(dtype)).double()
    Rn = torch.from_numpy(ref.as_matrix())
    assert (s6 - torch.cat((Rn[..., :, 0], Rn[..., :, 1]), -1)).abs().max() < tol
    T = _T(batch.to(dtype))
    assert (G.se3_log(T)[..., 3:].double() - torch.from_numpy(ref.as_rotvec())).abs().max() < tol


def test_orthonormal_input_skips_the_projection_exactly():
    """Rotations within the tolerance (64 eps of the dtype) are read as they are
    (bitwise the Shepperd result); a matrix outside it is projected."""
    g = torch.Generator().manual_seed(6)
    R = G.random_rotation_matrix(50, generator=g, dtype=D)
    w, x, y, z = G.matrix_to_quat(R).unbind(-1)
    from geo3d.rotations._quat import _quat_from_rotation

    assert torch.equal(G.matrix_to_quat(R), _quat_from_rotation(R))
    R32 = R.float()  # float32 rotations: skipped in float32
    assert torch.equal(G.matrix_to_quat(R32), _quat_from_rotation(R32))
    S = 1e-4 * torch.eye(3, dtype=D)  # |RᵀR - I| ~ 2e-4 > 7.6e-6: projected to R exactly
    assert (
        G.matrix_to_quat(R @ (torch.eye(3, dtype=D) + S)) - G.matrix_to_quat(R)
    ).abs().max() < 1e-14
    del w, x, y, z


def test_value_checks_off_and_tracing_assume_rotations():
    """No data-dependent branch with checks off or under vmap: a reflection is then read
    through the rotation formula (documented), and nothing raises."""
    F = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=D))
    old = G.set_value_checks(False)
    try:
        q = G.matrix_to_quat(F)
    finally:
        G.set_value_checks(old)
    assert torch.isfinite(q).all()
    qv = torch.vmap(G.matrix_to_quat)(F[None])
    assert torch.equal(qv[0], q)


@pytest.mark.parametrize("name", ["matrix_to_quat", "matrix_to_axis_angle", "se3_log"])
def test_gradient_of_the_projected_reading_matches_finite_differences(name):
    """At a det > 0 non-orthogonal input the derivative is that of f(project_to_so3(M)):
    gradcheck (float64 finite differences) passes through the projection path."""
    fn, _ = READERS[name]
    M = SCIPY_DOC + 0.1 * torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=D)
    assert torch.det(M) > 0
    assert torch.autograd.gradcheck(fn, (M.requires_grad_(True),), eps=1e-6, atol=1e-6)


def _scipy_quat(M: torch.Tensor) -> torch.Tensor:
    q = torch.from_numpy(Rotation.from_matrix(M.numpy()).as_quat()[..., [3, 0, 1, 2]])
    return q * torch.where(q[..., :1] < 0, -1.0, 1.0)


def test_float64_skip_tolerance_is_rounding_level():
    """float64 matrices off by 1e-6 (or float32 rotations cast to float64) are read as
    their nearest rotation: matrix_to_axis_angle/quat/euler agree with scipy's
    from_matrix (which projects) to 1e-10. Catches a float32-sized skip tolerance in
    float64 (that gives ~1e-6 errors)."""
    P = torch.tensor([[0, 1, -2], [3, 0, 1], [-1, 2, 0.5]], dtype=D)
    R = G.axis_angle_to_matrix(torch.tensor([0.3, -1.2, 2.0], dtype=D)) + 1e-6 * P
    ref = Rotation.from_matrix(R.numpy())
    assert (G.matrix_to_axis_angle(R) - torch.from_numpy(ref.as_rotvec())).abs().max() < 1e-10
    assert (G.matrix_to_quat(R) - _scipy_quat(R)).abs().max() < 1e-10
    e = G.matrix_to_euler(R, "ZYX")
    assert (e - torch.from_numpy(ref.as_euler("ZYX"))).abs().max() < 1e-10
    # float32-generated rotations cast to float64 (Newton-Schulz band) and a far matrix
    g = torch.Generator().manual_seed(3)
    R32 = G.random_rotation_matrix(64, generator=g).double()
    assert (G.matrix_to_quat(R32) - _scipy_quat(R32)).abs().max() < 1e-12
    ref32 = torch.from_numpy(Rotation.from_matrix(R32.numpy()).as_rotvec())
    assert (G.matrix_to_axis_angle(R32) - ref32).abs().max() < 1e-12
    mixed = torch.cat([R32[:3], R32[3:6] * 1.01, R32[6:9] + 1e-3])
    assert (G.matrix_to_quat(mixed) - _scipy_quat(mixed)).abs().max() < 1e-12


def test_float64_gradients_agree_with_finite_differences_near_and_off_rotations():
    """float64 autograd of a matrix reading equals central differences (step 1e-6) at an
    exact rotation, in the Newton-Schulz band and beyond it: the derivative is that of
    f(nearest rotation) on each side of every tolerance edge."""
    R = G.axis_angle_to_matrix(torch.tensor([0.3, -1.2, 2.0], dtype=D))
    P = torch.tensor([[0, 1, -2], [3, 0, 1], [-1, 2, 0.5]], dtype=D)
    for M in (R, R + 2e-6 * P, R + 1e-3 * P):
        M = M.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(G.matrix_to_axis_angle, (M,))
        assert torch.autograd.gradcheck(G.matrix_to_quat, (M,))
