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
    # Haar-random rotation matrices: each entry has mean 0 and mean square 1/3 (a root with
    # uniform Euler angles has R[0, 2] = sin b, mean square 1/2; a fixed root fails both)
    assert np.abs(R[:, 0].mean(0)).max() < 4 / math.sqrt(3 * n)
    np.testing.assert_allclose((R[:, 0] ** 2).mean(0), np.full((3, 3), 1 / 3), atol=0.03)


def test_extreme_extra_frames_are_new_draws():
    """The extra ``extreme`` frames come from the ood generator's rule (every non-root angle
    within 10% of a limit) under the script's own seed, and cycle over the subjects."""
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


def test_extreme_extra_poses_are_not_the_test_poses(monkeypatch):
    """No leakage: none of 840 extra ``extreme`` poses repeats one of the demo data module's
    own ``ood`` test poses (captured from its generation, scans not rendered)."""
    import yaml
    from geo3d.apps.arteq import _data
    from geo3d.apps.arteq.cli import config_path

    seen: dict[int, torch.Tensor] = {}

    def capture(body, frames, *args, **kw):
        seen[len(seen)] = frames["pose"]
        n = len(frames["pose"])
        return {"points": torch.zeros(n, 1, 3)}

    monkeypatch.setattr(_data, "generate_scans", capture)
    monkeypatch.setattr(_data, "load_body", lambda *a, **kw: None)  # frames need no body
    cfg = yaml.safe_load(Path(config_path("demo")).read_text())["data"]
    dm = _data.ArtEqDataModule(**{**cfg, "root": "unused"})
    dm._generate(["ood"])
    (ood,) = seen.values()
    assert ood.shape == (cfg["ood_poses"], 72)
    extra = cov.extra_frames("extreme", 840, torch.zeros(20, 10, dtype=torch.float64))["pose"]
    gap = (extra[:, None] - ood[None]).abs().amax(-1)  # (840, 42) largest angle difference
    assert float(gap.min()) > 0.1


def test_refuses_to_write_into_its_source(tmp_path, monkeypatch):
    """--dst naming the data root that holds --src would grow the source's train.pt (the
    folder key is the demo's): the script exits before writing anything."""
    src = tmp_path / "arteq_0123456789abcdef"
    src.mkdir()
    (src / "train.pt").write_bytes(b"not touched")
    monkeypatch.setattr(sys, "argv", ["arteq_coverage_data.py", "--src", str(tmp_path),
                                      "--dst", str(tmp_path), "--poses", "box", "--count", "2"])
    with pytest.raises(SystemExit, match="holds the source folder"):
        cov.main()
    assert (src / "train.pt").read_bytes() == b"not touched"
