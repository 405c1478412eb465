"""Bad input raises ValueError naming the argument and the expected/actual shape or value."""

from __future__ import annotations

import math

import pytest
import torch

import geo3d.rotations as G

q = torch.tensor([1.0, 0, 0, 0])
R = torch.eye(3)
v3 = torch.zeros(3)
T = torch.eye(4)
P = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))

# (callable, regex that the message must match): wrong trailing shapes
SHAPE_CASES = [
    (lambda: G.quat_to_matrix(torch.zeros(3)), r"q: expected shape \(\.\.\., 4\), got \(3,\)"),
    (
        lambda: G.matrix_to_quat(torch.zeros(3, 4)),
        r"R: expected shape \(\.\.\., 3, 3\), got \(3, 4\)",
    ),
    (lambda: G.matrix_to_quat(torch.zeros(9)), r"R: expected shape \(\.\.\., 3, 3\), got \(9,\)"),
    (
        lambda: G.axis_angle_to_matrix(torch.zeros(4)),
        r"v: expected shape \(\.\.\., 3\), got \(4,\)",
    ),
    (lambda: G.matrix_to_axis_angle(torch.zeros(2, 3)), r"R: .*got \(2, 3\)"),
    (lambda: G.axis_angle_to_quat(torch.zeros(2, 2)), r"v: .*\(\.\.\., 3\).*got \(2, 2\)"),
    (lambda: G.quat_to_axis_angle(torch.zeros(3)), r"q: .*\(\.\.\., 4\).*got \(3,\)"),
    (lambda: G.sixd_to_matrix(torch.zeros(3, 3)), r"x: .*\(\.\.\., 6\).*got \(3, 3\)"),
    (lambda: G.matrix_to_sixd(torch.zeros(6)), r"R: .*got \(6,\)"),
    (lambda: G.euler_to_matrix(torch.zeros(2), "xyz"), r"angles: .*\(\.\.\., 3\).*got \(2,\)"),
    (lambda: G.matrix_to_euler(torch.zeros(4, 4), "xyz"), r"R: .*\(\.\.\., 3, 3\).*got \(4, 4\)"),
    (lambda: G.quat_multiply(q, torch.zeros(3)), r"q: .*\(\.\.\., 4\).*got \(3,\)"),
    (lambda: G.quat_multiply(torch.zeros(3), q), r"p: .*got \(3,\)"),
    (lambda: G.quat_conjugate(torch.zeros(5)), r"q: .*got \(5,\)"),
    (lambda: G.quat_apply(q, torch.zeros(4)), r"v: .*\(\.\.\., 3\).*got \(4,\)"),
    (lambda: G.quat_apply(torch.zeros(3), v3), r"q: .*got \(3,\)"),
    (lambda: G.quat_slerp(q, torch.zeros(3), 0.5), r"q1: .*got \(3,\)"),
    (lambda: G.quat_slerp(torch.zeros(3), q, 0.5), r"q0: .*got \(3,\)"),
    (lambda: G.quat_distance(q, torch.zeros(2)), r"q2: .*got \(2,\)"),
    (lambda: G.quat_normalize(torch.zeros(3)), r"q: .*got \(3,\)"),
    (lambda: G.geodesic_distance(R, torch.zeros(3, 2)), r"R2: .*\(\.\.\., 3, 3\).*got \(3, 2\)"),
    (lambda: G.geodesic_distance(torch.zeros(2, 3), R), r"R1: .*got \(2, 3\)"),
    (lambda: G.mean_rotation(torch.zeros(4, 3, 2)), r"R: .*got \(4, 3, 2\)"),
    (lambda: G.mean_rotation(R), r"R: expected shape \(\.\.\., \*, 3, 3\), got \(3, 3\)"),
    (lambda: G.project_to_so3(torch.zeros(2, 3)), r"M: .*\(\.\.\., 3, 3\).*got \(2, 3\)"),
    (lambda: G.kabsch(torch.zeros(5, 2), P), r"P: .*\(\.\.\., \*, 3\).*got \(5, 2\)"),
    (lambda: G.kabsch(P, torch.zeros(4, 3)), r"Q: .*same number of points.*5.*got shape \(4, 3\)"),
    (lambda: G.kabsch(P, P, weights=torch.ones(4)), r"weights: .*got \(4,\)"),
    (lambda: G.umeyama(P, torch.zeros(5, 2)), r"Q: .*got \(5, 2\)"),
    (lambda: G.umeyama(P, P, weights=torch.ones(2, 3)), r"weights: .*got \(2, 3\)"),
    (lambda: G.se3_exp(torch.zeros(3)), r"xi: .*\(\.\.\., 6\).*got \(3,\)"),
    (lambda: G.se3_log(torch.zeros(3, 3)), r"T: .*\(\.\.\., 4, 4\).*got \(3, 3\)"),
    (lambda: G.se3_inverse(torch.zeros(3, 4)), r"T: .*got \(3, 4\)"),
    (lambda: G.se3_apply(T, torch.zeros(4)), r"x: .*\(\.\.\., 3\).*got \(4,\)"),
    (
        lambda: G.se3_apply(torch.eye(4).repeat(2, 1, 1), torch.zeros(3, 3)),
        r"x: .*broadcastable.*\(2,\).*got \(3,\)",
    ),
    (lambda: G.so3_hat(torch.zeros(2)), r"omega: .*got \(2,\)"),
    (lambda: G.so3_vee(torch.zeros(3, 2)), r"K: .*got \(3, 2\)"),
    (lambda: G.random_quat(-1), r"shape: .*non-negative"),
    (lambda: G.random_rotation_matrix(2.5), r"shape: .*non-negative"),
]


@pytest.mark.parametrize("case", range(len(SHAPE_CASES)))
def test_wrong_shapes(case):
    fn, msg = SHAPE_CASES[case]
    with pytest.raises(ValueError, match=msg):
        fn()


def test_non_tensor_and_integer_input():
    with pytest.raises(ValueError, match=r"q: expected a torch.Tensor, got list"):
        G.quat_to_matrix([1.0, 0, 0, 0])
    with pytest.raises(
        ValueError, match=r"R: expected a floating-point tensor, got dtype torch.int64"
    ):
        G.matrix_to_quat(torch.eye(3, dtype=torch.long))


NAN = float("nan")
INF = float("inf")

VALUE_CASES = [
    (lambda: G.quat_to_matrix(torch.zeros(2, 4), normalize=True), r"q: .*zero quaternion"),
    (lambda: G.quat_to_matrix(torch.tensor([NAN, 0, 0, 1]), True), r"q: .*NaN/inf"),
    (lambda: G.quat_to_matrix(torch.tensor([INF, 0, 0, 1])), r"q: expected finite"),
    (lambda: G.quat_to_matrix(torch.tensor([NAN, 0, 0, 1])), r"q: expected finite"),
    (lambda: G.quat_apply(torch.zeros(4), v3), r"q: .*zero"),
    (lambda: G.quat_to_axis_angle(torch.zeros(4)), r"q: .*zero"),
    (lambda: G.quat_slerp(q, torch.zeros(4), 0.2), r"q1: .*zero"),
    (lambda: G.quat_distance(torch.tensor([NAN, 0, 0, 0]), q), r"q1: .*NaN"),
    (lambda: G.quat_normalize(torch.zeros(4)), r"q: .*zero"),
    (lambda: G.matrix_to_quat(torch.full((3, 3), NAN)), r"R: expected finite values"),
    (
        lambda: G.matrix_to_quat(torch.tensor([[1.0, INF, 0], [0, 1, 0], [0, 0, 1]])),
        r"R: expected finite",
    ),
    (
        lambda: G.matrix_to_axis_angle(torch.tensor([[1.0, 0, 0], [0, NAN, 0], [0, 0, 1]])),
        r"R: expected finite",
    ),
    (lambda: G.geodesic_distance(R, torch.full((3, 3), NAN)), r"R1, R2: expected finite"),
    (lambda: G.geodesic_distance(R.expand(2, 3, 3), R.expand(3, 3, 3)), r"R2: .*broadcastable"),
    (lambda: G.axis_angle_to_matrix(torch.tensor([NAN, 0, 0])), r"v: expected finite"),
    (lambda: G.axis_angle_to_quat(torch.tensor([0, INF, 0])), r"v: expected finite"),
    (lambda: G.euler_to_matrix(torch.tensor([0, NAN, 0]), "xyz"), r"angles: expected finite"),
    (lambda: G.sixd_to_matrix(torch.zeros(6)), r"x: .*non-zero first column"),
    (lambda: G.sixd_to_matrix(torch.tensor([1.0, 0, 0, 2.0, 0, 0])), r"x: .*parallel"),
    (lambda: G.sixd_to_matrix(torch.tensor([1.0, 0, 0, NAN, 0, 0])), r"x: .*"),
    (lambda: G.project_to_so3(torch.full((3, 3), INF)), r"M: expected finite"),
    (
        lambda: G.mean_rotation(R.expand(4, 3, 3), weights=-torch.ones(4)),
        r"weights: .*non-negative",
    ),
    (lambda: G.mean_rotation(R.expand(4, 3, 3), dim=-2), r"dim: .*batch dimension"),
    (lambda: G.mean_rotation(R.expand(4, 3, 3), dim=5), r"dim: expected an int"),
    (lambda: G.mean_rotation(torch.zeros(0, 3, 3)), r"R: expected at least one"),
    (
        lambda: G.mean_rotation(R.expand(4, 3, 3), weights=torch.zeros(4)),
        r"weights: .*positive total",
    ),
    (lambda: G.kabsch(P, P.clone().fill_(NAN)), r"Q: expected finite"),
    (lambda: G.kabsch(P, P, weights=torch.zeros(5)), r"weights: .*positive total"),
    (lambda: G.umeyama(torch.ones(5, 3), P), r"P: .*not all identical"),
    (lambda: G.se3_exp(torch.tensor([0, 0, 0, NAN, 0, 0])), r"xi: expected finite"),
]


@pytest.mark.parametrize("case", range(len(VALUE_CASES)))
def test_non_finite_and_degenerate_values(case):
    fn, msg = VALUE_CASES[case]
    with pytest.raises(ValueError, match=msg):
        fn()


@pytest.mark.parametrize(
    "conv", ["xy", "xyzx", "xyy", "xYz", "abc", "xxz", "XXY", "", 3, None, "x1z"]
)
def test_unknown_euler_conventions(conv):
    with pytest.raises(ValueError, match=r"convention: .*got"):
        G.euler_to_matrix(torch.zeros(3), conv)
    with pytest.raises(ValueError, match=r"convention: .*got"):
        G.matrix_to_euler(torch.eye(3), conv)


def test_value_checks_can_be_disabled():
    old = G.set_value_checks(False)
    try:
        out = G.quat_to_matrix(torch.zeros(4), normalize=True)
        assert not torch.isfinite(out).all()
    finally:
        G.set_value_checks(old)
    with pytest.raises(ValueError):
        G.quat_to_matrix(torch.zeros(4), normalize=True)


def test_valid_edge_values_do_not_raise():
    # 0 rotation vector, rotations by π, non-unit quaternions are all valid input
    assert torch.equal(G.axis_angle_to_matrix(torch.zeros(3)), torch.eye(3))
    assert G.matrix_to_axis_angle(
        torch.diag(torch.tensor([1.0, -1, -1]))
    ).abs().max() == pytest.approx(math.pi)
    assert torch.allclose(G.quat_to_matrix(torch.tensor([5.0, 0, 0, 0]), True), torch.eye(3))
