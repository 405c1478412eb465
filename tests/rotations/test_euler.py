"""Euler angles: scipy semantics for all 24 conventions, both directions, gimbal lock."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import geo3d.rotations as G

SEQS = ("xyz", "xzy", "yxz", "yzx", "zxy", "zyx", "xyx", "xzx", "yxy", "yzy", "zxz", "zyz")
CONVENTIONS = list(SEQS) + [s.upper() for s in SEQS]
TOL = 1e-10


def _wrap_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(a - b) % (2 * np.pi)
    return np.minimum(d, 2 * np.pi - d)


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_matches_scipy_both_ways(conv, all_quats, sp):
    r = sp.from_quat(all_quats)
    Rm = r.as_matrix()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hard cases include gimbal locks for some sequences
        ref = r.as_euler(conv)
        ours = G.matrix_to_euler(torch.from_numpy(Rm), conv, warn=False).numpy()
    # Same angles (mod 2π at the ±π boundary) and the same ranges as scipy.
    assert _wrap_err(ours, ref).max() < TOL
    assert (ours >= -np.pi).all() and (ours < np.pi).all()
    if conv[0].lower() == conv[2].lower():
        # [0, π], with π itself wrapped to -π as scipy does
        assert ((ours[:, 1] >= 0) | (np.abs(ours[:, 1] + np.pi) < 1e-7)).all()
    else:
        assert (np.abs(ours[:, 1]) <= np.pi / 2 + 1e-12).all()
    # euler -> matrix against scipy, with arbitrary (unwrapped) angles too
    g = torch.Generator().manual_seed(1)
    ang = torch.cat((torch.from_numpy(ref), 4 * torch.randn(100, 3, generator=g).double()))
    Rg = G.euler_to_matrix(ang, conv).numpy()
    assert np.abs(Rg - sp.R.from_euler(conv, ang.numpy()).as_matrix()).max() < TOL
    # round trip: exact, except where scipy's gimbal rule (middle angle within 1e-7 of its
    # limit => third angle := 0) discards up to ~1e-7 by design
    mid = ours[:, 1] if conv[0].lower() == conv[2].lower() else ours[:, 1] + np.pi / 2
    lock = (np.abs(mid) <= 2e-7) | (np.abs(mid - np.pi) <= 2e-7)
    err = np.abs(G.euler_to_matrix(torch.from_numpy(ours), conv).numpy() - Rm).max((-1, -2))
    assert err[~lock].max() < TOL and (err[lock].max(initial=0.0) < 1e-6)


@pytest.mark.parametrize("conv", CONVENTIONS)
def test_gimbal_lock_like_scipy(conv, sp):
    symmetric = conv[0].lower() == conv[2].lower()
    g = torch.Generator().manual_seed(2)
    ang = (torch.rand(12, 3, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi
    locks = [0.0, math.pi] if symmetric else [-math.pi / 2, math.pi / 2]
    ang[:6, 1] = locks[0]
    ang[6:, 1] = locks[1]
    Rm = sp.R.from_euler(conv, ang.numpy()).as_matrix()
    with pytest.warns(UserWarning, match="Gimbal lock"):
        ref = sp.R.from_matrix(Rm).as_euler(conv)
    with pytest.warns(UserWarning, match="Gimbal lock"):
        ours = G.matrix_to_euler(torch.from_numpy(Rm), conv).numpy()
    assert np.all(ours[:, 2] == 0.0)  # scipy's rule: the angle at index 2 is set to 0
    assert _wrap_err(ours, ref).max() < 1e-9
    assert np.abs(G.euler_to_matrix(torch.from_numpy(ours), conv).numpy() - Rm).max() < 1e-9
    # near (not at) the lock: no warning, still exact
    ang[:, 1] += 1e-4
    Rm = sp.R.from_euler(conv, ang.numpy()).as_matrix()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = G.matrix_to_euler(torch.from_numpy(Rm), conv).numpy()
        ref = sp.R.from_matrix(Rm).as_euler(conv)
    assert _wrap_err(ours, ref).max() < 1e-9


def test_no_warning_when_disabled():
    R = torch.eye(3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e = G.matrix_to_euler(R, "zxz", warn=False)
    assert torch.equal(e, torch.zeros(3, dtype=torch.float64))


def test_intrinsic_is_reversed_extrinsic():
    g = torch.Generator().manual_seed(3)
    ang = torch.randn(20, 3, generator=g, dtype=torch.float64)
    a = G.euler_to_matrix(ang, "XYZ")
    b = G.euler_to_matrix(ang.flip(-1), "zyx")
    assert (a - b).abs().max() < 1e-14
    Rx = G.axis_angle_to_matrix(ang[:, :1] * torch.tensor([1.0, 0, 0], dtype=torch.float64))
    Ry = G.axis_angle_to_matrix(ang[:, 1:2] * torch.tensor([0, 1.0, 0], dtype=torch.float64))
    Rz = G.axis_angle_to_matrix(ang[:, 2:] * torch.tensor([0, 0, 1.0], dtype=torch.float64))
    assert (a - Rx @ Ry @ Rz).abs().max() < 1e-14
    assert (G.euler_to_matrix(ang, "xyz") - Rz @ Ry @ Rx).abs().max() < 1e-14
