"""The fused (torch.compile) path: fallback behaviour (fast) and numerics (slow)."""

from __future__ import annotations

import warnings

import pytest
import torch

import geo3d.rotations as G
from geo3d.rotations import _compiled


@pytest.fixture
def fresh_cache():
    saved = dict(_compiled._CACHE), set(_compiled._FAILED)
    _compiled._CACHE.clear()
    _compiled._FAILED.clear()
    yield
    _compiled._CACHE.clear()
    _compiled._FAILED.clear()
    _compiled._CACHE.update(saved[0])
    _compiled._FAILED.update(saved[1])


def test_unknown_name():
    with pytest.raises(ValueError, match=r"name: expected one of .*got 'nope'"):
        G.fused("nope")
    with pytest.raises(AttributeError):
        G.compiled.nope  # noqa: B018


def test_falls_back_to_eager_with_a_warning(monkeypatch, fresh_cache):
    def broken(fn, **kwargs):
        def call(*a, **k):
            raise RuntimeError("no compiler here")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    q = G.random_quat(10, generator=torch.Generator().manual_seed(0))
    f = G.fused("quat_to_matrix")
    with pytest.warns(RuntimeWarning, match="compiling quat_to_matrix failed.*falling back"):
        out = f(q)
    assert torch.equal(out, G.quat_to_matrix(q))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; later calls are silent and eager
        assert torch.equal(f(q), G.quat_to_matrix(q))
    assert G.fused("quat_to_matrix") is f  # cached
    # ValueErrors from input validation are not swallowed by the fallback
    with pytest.raises(ValueError, match="q: expected shape"):
        f(torch.zeros(3))


def test_compile_unavailable(monkeypatch, fresh_cache):
    def raising(fn, **kwargs):
        raise RuntimeError("torch.compile is not supported")

    monkeypatch.setattr(torch, "compile", raising)
    with pytest.warns(RuntimeWarning, match="torch.compile unavailable"):
        f = G.compiled.matrix_to_quat
    R = G.random_rotation_matrix(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(f(R), G.matrix_to_quat(R))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quat_to_matrix", "matrix_to_quat", "axis_angle_to_matrix"])
def test_fused_matches_eager(name):
    g = torch.Generator().manual_seed(0)
    q = G.random_quat(257, generator=g, dtype=torch.float64)
    x = {
        "quat_to_matrix": q,
        "matrix_to_quat": G.quat_to_matrix(q),
        "axis_angle_to_matrix": G.quat_to_axis_angle(q),
    }[name]
    f = G.fused(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # must really compile here
        out = f(x)
        out2 = f(x[:100])  # new size: dynamic shapes, no failure
    ref = getattr(G, name)(x)
    assert (out - ref).abs().max() < 1e-13
    assert (out2 - ref[:100]).abs().max() < 1e-13
    xg = x.detach().clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(f(xg).sum(), xg)
    (ge,) = torch.autograd.grad(getattr(G, name)(xg).sum(), xg)
    assert (gr - ge).abs().max() < 1e-12
