"""``benchmarks/arteq_shape_probe.py``: its part measurements and its ridge regression, against
values known in closed form (the recorded shape-probe figures rest on them)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
sp = pytest.importorskip("arteq_shape_probe")


def test_part_features_extents_shares_and_bones():
    """Part 0: points on a 3-4-12 box's corners (principal extents are the half-sides,
    1.5, 2, 6, sorted ascending); part 3 (spine1, parent 0) shifted by (0, 5, 0); the other
    parts are empty: zeros, centroid = the cloud's."""
    from geo3d.body import SMPL_PARENTS

    corners = torch.tensor([[x, y, z] for x in (-1.5, 1.5) for y in (-2.0, 2.0)
                            for z in (-6.0, 6.0)], dtype=torch.float64)
    pts = torch.cat([corners, corners * 0.5 + torch.tensor([0.0, 5.0, 0.0])])
    lab = torch.tensor([0] * 8 + [3] * 8)
    f = sp.part_features(pts[None], lab[None])[0]
    n = 8 / 7  # torch.cov is unbiased: variance of +-a over 8 corners is a^2 * 8 / 7
    np.testing.assert_allclose(f[:4], [1.5 * math.sqrt(n), 2 * math.sqrt(n), 6 * math.sqrt(n),
                                       0.5], rtol=1e-12)
    np.testing.assert_allclose(f[12:16], [0.75 * math.sqrt(n), math.sqrt(n), 3 * math.sqrt(n),
                                          0.5], rtol=1e-12)
    assert np.all(f[4:12] == 0) and np.all(f[16:88] == 0)
    bones = f[88:]
    assert len(bones) == 21 and SMPL_PARENTS[3] == 0
    cloud = pts.mean(0)
    np.testing.assert_allclose(bones[2], 5.0, rtol=1e-12)  # part 3 to part 0
    # part 1 (empty: the cloud's centroid) to part 0 (the box's centre, the origin)
    np.testing.assert_allclose(bones[0], float(cloud.norm()), rtol=1e-12)


def test_ridge_recovers_a_linear_map_and_picks_a_small_penalty():
    """Noise-free targets linear in the features: the cross-validated penalty is the
    smallest tried and the predictions of new features are exact to ~1e-3."""
    g = np.random.default_rng(0)
    subjects = g.normal(size=(20, 10))
    Y = np.repeat(subjects, 10, axis=0)  # 20 subjects x 10 scans, as the demo data
    A = g.normal(size=(10, 30))
    X = Y @ A
    m = sp.Ridge(X, Y)
    assert m.alpha == pytest.approx(1e-3)
    Yn = g.normal(size=(5, 10))
    np.testing.assert_allclose(m.predict(Yn @ A), Yn, atol=2e-3)
