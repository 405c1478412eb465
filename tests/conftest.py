"""Shared pytest configuration for the geo3d suite."""

from __future__ import annotations

import os

import pytest
import torch

# Under pytest-xdist every worker is its own process: one intra-op thread each keeps
# 2 workers on 2 cores from oversubscribing the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """Every available device: CPU always, CUDA when present."""
    return request.param


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded CPU generator (tests must not depend on global RNG state)."""
    return torch.Generator().manual_seed(0)


def require_open3d():
    """Import open3d or skip, naming the missing system library when that is the cause."""
    try:
        import open3d  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the machine
        msg = str(err)
        if "libusb" in msg:
            pytest.skip("open3d needs the system library libusb-1.0 (apt install libusb-1.0-0)")
        pytest.skip(f"open3d not importable: {msg}")
    return open3d


@pytest.fixture
def open3d_module():
    return require_open3d()
