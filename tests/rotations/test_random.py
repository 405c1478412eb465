"""Haar-uniform sampling and generator reproducibility."""

from __future__ import annotations

import math

import torch

import geo3d.rotations as G


def test_generator_reproducible_and_global_state_untouched():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = G.random_quat(5, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    b = G.random_quat(5, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    c = G.random_quat(5, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    R1 = G.random_rotation_matrix((4,), generator=torch.Generator().manual_seed(7))
    R2 = G.random_rotation_matrix(4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.rand(3), expected_next)  # global RNG not consumed
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(R1, R2)
    assert a.shape == (5, 2, 4) and R1.shape == (4, 3, 3) and R1.dtype == torch.float32
    assert G.random_quat(generator=torch.Generator().manual_seed(0)).shape == (4,)
    assert (a[..., 0] >= 0).all() and ((a.norm(dim=-1) - 1).abs() < 1e-14).all()


def test_haar_uniform_angle_distribution():
    # Under the Haar measure the rotation angle θ has density (1 - cos θ)/π on [0, π],
    # i.e. CDF F(θ) = (θ - sin θ)/π. Kolmogorov–Smirnov with n = 20000: the 0.1% critical
    # value is 1.95/√n ≈ 0.0138 (fixed seed, so the test is deterministic).
    n = 20000
    R = G.random_rotation_matrix(
        n, generator=torch.Generator().manual_seed(2024), dtype=torch.float64
    )
    theta = G.matrix_to_axis_angle(R).norm(dim=-1).sort().values
    F = (theta - torch.sin(theta)) / math.pi
    i = torch.arange(1, n + 1, dtype=torch.float64)
    D = torch.maximum(i / n - F, F - (i - 1) / n).max().item()
    assert D < 1.95 / math.sqrt(n)
    # E[R] = 0 for the Haar measure; each entry has variance 1/3, so the mean of n draws has
    # standard deviation 1/sqrt(3n) ≈ 0.0041: 5 sigma bound.
    assert R.mean(0).abs().max() < 5 / math.sqrt(3 * n)
    # Rotation axes are isotropic: E[R e_z] = 0 is covered above; E[(R e_z)(R e_z)ᵀ] = I/3.
    z = R[..., 2]
    assert (
        (z.mT @ z) / n - torch.eye(3, dtype=torch.float64) / 3
    ).abs().max() < 5 * 0.3 / math.sqrt(n)


def test_biased_sampler_is_detected():
    # The KS statistic above is able to fail: a non-uniform sampler (uniform axis-angle
    # vectors in a ball, a common mistake) is rejected at the same threshold.
    n = 20000
    g = torch.Generator().manual_seed(2024)
    v = torch.randn(n, 3, generator=g, dtype=torch.float64)
    v = v / v.norm(dim=-1, keepdim=True) * math.pi * torch.rand(n, 1, generator=g).double()
    theta = v.norm(dim=-1).sort().values
    F = (theta - torch.sin(theta)) / math.pi
    i = torch.arange(1, n + 1, dtype=torch.float64)
    D = torch.maximum(i / n - F, F - (i - 1) / n).max().item()
    assert D > 1.95 / math.sqrt(n)


def test_device_and_dtype(device):
    g = torch.Generator(device=device).manual_seed(0)
    q = G.random_quat(3, generator=g, dtype=torch.float64)
    assert q.device.type == device and q.dtype == torch.float64
    R = G.random_rotation_matrix(3, device=device)
    assert R.device.type == device and R.shape == (3, 3, 3)
