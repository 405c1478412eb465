"""``benchmarks/arteq_coverage_data.py``: its ``box`` poses span the joint-limit box (checked
with scipy's Euler decomposition, not the script's formula) and its ``extreme`` poses are
new draws of the ``ood`` generator, not the test set's (the coverage figures rest on both)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
cov = pytest.importorskip("arteq_coverage_data")


def _euler_in_limits(R: np.ndarray, lim: np.ndarray) -> np.ndarray:
    """Angles (n, 3) (a, b, c) of R (n, 3, 3) = Rx(a) Ry(b) Rz(c) within ``lim`` (3, 2),
    choosing per row between scipy's solution (|b| <= pi/2) and the other one
    (a + pi, pi - b, c + pi); fails if neither lies within the limits."""
    from scipy.spatial.transform import Rotation

    def wrap(x: np.ndarray) -> np.ndarray:
        return (x + math.pi) % (2 * math.pi) - math.pi

    e = wrap(Rotation.from_matrix(R).as_euler("XYZ"))
    alt = wrap(e + np.array([math.pi, 0.0, math.pi]))
    alt[:, 1] = wrap(math.pi - e[:, 1])

    def inside(x: np.ndarray) -> np.ndarray:
        return np.all((x >= lim[:, 0] - 1e-9) & (x <= lim[:, 1] + 1e-9), axis=1)

    ok_e, ok_alt = inside(e), inside(alt)
    assert np.all(ok_e | ok_alt), f"{int((~(ok_e | ok_alt)).sum())} rows outside {lim.tolist()}"
    return np.where(ok_e[:, None], e, alt)


def test_box_poses_fill_the_joint_limits():
    """Every non-root joint's rotation has Euler angles within its limits, and over 3000
    poses each angle comes within 1% of the range's width of both ends (a half range, a
    swapped joint or angle, or a fixed angle fails); the root is not fixed (Haar: the mean
    rotation matrix is near zero)."""
    from geo3d.body import JOINT_LIMITS
    from geo3d.rotations import axis_angle_to_matrix

    n = 3000
    R = axis_angle_to_matrix(cov.box_poses(n, torch.Generator().manual_seed(0))
                             .reshape(n, 24, 3)).numpy()
    lim = JOINT_LIMITS.numpy()
    for j in range(1, 24):
        ang = _euler_in_limits(R[:, j], lim[j])
        width = lim[j, :, 1] - lim[j, :, 0]
        np.testing.assert_array_less(ang.min(0) - lim[j, :, 0], 0.01 * width)
        np.testing.assert_array_less(lim[j, :, 1] - ang.max(0), 0.01 * width)
    # the mean of Haar-random rotation matrices is 0; each entry's sd is 1/sqrt(3)
    assert np.abs(R[:, 0].mean(0)).max() < 4 / math.sqrt(3 * n)


def test_extreme_extra_frames_are_new_draws():
    """The extra ``extreme`` frames come from the ood generator's rule (every non-root angle
    within 10% of a limit) under the script's own seed: they differ from the first draws of
    any generator seeded like the data module (seed 0) and cycle over the subjects."""
    from geo3d.body import JOINT_LIMITS, extreme_poses

    subjects = torch.arange(6, dtype=torch.float64)[:, None].expand(6, 10)
    fr = cov.extra_frames("extreme", 12, subjects)
    assert fr["pose"].shape == (12, 72) and fr["transl"].abs().max() == 0
    np.testing.assert_array_equal(fr["betas"][:, 0].numpy(), np.arange(12) % 6)
    ref = extreme_poses(12, generator=torch.Generator().manual_seed(cov.SEED["extreme"]))
    np.testing.assert_array_equal(fr["pose"].numpy(), ref.poses.numpy())
    ang = torch.as_tensor(ref.extra["euler"])[:, 1:]
    lo, hi = JOINT_LIMITS[1:, :, 0], JOINT_LIMITS[1:, :, 1]
    near = torch.minimum(ang - lo, hi - ang) <= 0.1 * (hi - lo) + 1e-12
    assert bool(near.all())
    other = extreme_poses(12, generator=torch.Generator().manual_seed(0)).poses
    assert float((other - fr["pose"]).abs().max()) > 0.5
