"""Shared fixtures of the app tests (arteq, assembly, multiview_corr)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread per test module: these tests run many small ops, which OpenMP
    slows down on a shared 2-core machine (measured on the assembly tests: a 50x50 Sinkhorn
    7 s with all threads vs 0.07 s with one)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
