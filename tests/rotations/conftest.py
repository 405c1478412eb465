"""Fixtures for the rotation tests: scipy bridges and hard cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


def _axis_quats(angles: list[float], axes: torch.Tensor) -> torch.Tensor:
    out = []
    for a in angles:
        h = torch.tensor(a / 2, dtype=torch.float64)
        w = torch.cos(h).expand(len(axes), 1)
        out.append(torch.cat((w, axes * torch.sin(h)), dim=-1))
    return torch.cat(out)


@pytest.fixture(scope="session")
def hard_quats() -> torch.Tensor:
    """Unit wxyz float64 quaternions of hard cases: angles 0, within 1e-8 of 0, exactly π
    and within 1e-8 of π about axes (coordinate axes, diagonals that tie Shepperd's
    branches, random axes), and w within 1e-9 of 0 of both signs."""
    g = torch.Generator().manual_seed(1234)
    rnd = torch.randn(8, 3, generator=g, dtype=torch.float64)
    axes = torch.cat(
        (
            torch.eye(3, dtype=torch.float64),
            -torch.eye(3, dtype=torch.float64),
            torch.tensor([[1.0, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1], [1, -1, 1]]).double(),
            rnd,
        )
    )
    axes = axes / axes.norm(dim=-1, keepdim=True)
    angles = [0.0, 1e-12, 1e-9, 1e-8, 3e-8, 1e-4, math.pi, math.pi - 1e-8, math.pi - 1e-9]
    angles += [math.pi - 3e-8, math.pi + 1e-9, math.pi / 2, 2 * math.pi - 1e-8]
    q = _axis_quats(angles, axes)
    near_w0 = torch.cat((torch.full((8, 1), 1e-9, dtype=torch.float64), rnd), dim=-1)
    near_w0m = torch.cat((torch.full((8, 1), -1e-9, dtype=torch.float64), rnd), dim=-1)
    q = torch.cat((q, near_w0, near_w0m))
    return q / q.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="session")
def random_quats() -> torch.Tensor:
    g = torch.Generator().manual_seed(99)
    q = torch.randn(500, 4, generator=g, dtype=torch.float64)
    return q / q.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="session")
def all_quats(hard_quats: torch.Tensor, random_quats: torch.Tensor) -> torch.Tensor:
    return torch.cat((hard_quats, random_quats))


@pytest.fixture(scope="session")
def sp():
    """Bridges to scipy (xyzw) from our wxyz convention."""
    from scipy.spatial.transform import Rotation

    class _SP:
        R = Rotation

        @staticmethod
        def from_quat(q: torch.Tensor) -> Rotation:
            return Rotation.from_quat(q[..., [1, 2, 3, 0]].detach().cpu().numpy())

        @staticmethod
        def as_quat(r: Rotation) -> torch.Tensor:
            return torch.from_numpy(np.asarray(r.as_quat())[..., [3, 0, 1, 2]].copy())

    return _SP


def close_up_to_sign(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row max error between a and ±b (sign chosen per row)."""
    e1 = (a - b).abs().amax(-1)
    e2 = (a + b).abs().amax(-1)
    return torch.minimum(e1, e2)


@pytest.fixture(scope="session")
def up_to_sign():
    return close_up_to_sign
