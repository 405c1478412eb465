"""Brute-force references for the geo3d.ops tests (written independently of the library)."""

from __future__ import annotations

import pytest
import torch


def sqdist_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """All squared distances ``(..., N, M)``: coordinate by coordinate for D <= 8, else sum."""
    if x.shape[-1] > 8:
        diff = x[..., :, None, :] - y[..., None, :, :]
        return (diff * diff).sum(-1)
    acc = None
    for d in range(x.shape[-1]):
        diff = x[..., :, None, d] - y[..., None, :, d]
        acc = diff * diff if acc is None else acc + diff * diff
    return acc


def knn_reference(x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense N x M distances, stable sort (ties -> lower index), padded with (inf, -1)."""
    d = sqdist_matrix(x, y)
    ds, order = torch.sort(d, dim=-1, stable=True)
    kk = min(k, y.shape[-2])
    ds, order = ds[..., :kk], order[..., :kk]
    if kk < k:
        pad = list(ds.shape[:-1]) + [k - kk]
        ds = torch.cat([ds, torch.full(pad, float("inf"), dtype=ds.dtype)], -1)
        order = torch.cat([order, torch.full(pad, -1, dtype=torch.long)], -1)
    return ds, order


@pytest.fixture
def knn_ref():
    return knn_reference


@pytest.fixture
def sqdist_ref():
    return sqdist_matrix
