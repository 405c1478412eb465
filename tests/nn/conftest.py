"""Fixtures for the geo3d.nn tests."""

from __future__ import annotations

import pytest
import torch


def _build(factory, seed: int = 0, dtype: torch.dtype = torch.float64, device: str = "cpu"):
    # Deterministic module initialisation without touching the caller's global RNG.
    # Built under the target default dtype so that constant buffers (e.g. e3nn's
    # Clebsch-Gordan coefficients) are created at full precision, not cast from float32.
    old = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            module = factory()
        finally:
            torch.set_default_dtype(old)
    return module.to(dtype=dtype, device=device)


@pytest.fixture
def build():
    """``build(factory, seed=0, dtype=float64, device="cpu")`` -> seeded module."""
    return _build
