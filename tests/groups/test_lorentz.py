"""Lorentz group O(1,3) / SO⁺(1,3)."""

from __future__ import annotations

import math

import pytest
import torch

from geo3d.groups import Lorentz, boost, minkowski_dot, minkowski_metric

ETA = torch.diag(torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64))


def _rel_defect(lam):
    d = (lam.transpose(-1, -2) @ ETA @ lam - ETA).abs().amax(dim=(-2, -1))
    return d / (lam * lam).sum(-2).amax(-1)


def test_metric_and_dot(generator):
    torch.testing.assert_close(minkowski_metric(torch.float64), ETA)
    a = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    b = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(minkowski_dot(a, b), torch.einsum("ni,ij,nj->n", a, ETA, b))
    with pytest.raises(ValueError, match=r"a: expected shape \(\.\.\., 4\)"):
        minkowski_dot(a[:, :3], b)


def test_boost_physics():
    # a boost with rapidity φ along x sends the rest 4-velocity to (cosh φ, sinh φ, 0, 0),
    # i.e. velocity tanh φ; collinear rapidities add.
    phi = torch.tensor([0.0, 0.3, 2.0, 6.0], dtype=torch.float64)
    n = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    b = boost(phi[:, None] * n)
    rest = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    u = b @ rest
    torch.testing.assert_close(u[:, 0], torch.cosh(phi))
    torch.testing.assert_close(u[:, 1] / u[:, 0], torch.tanh(phi))
    ab = boost(torch.tensor([[1.5, 0, 0]], dtype=torch.float64)) @ boost(
        torch.tensor([[2.5, 0, 0]], dtype=torch.float64)
    )
    expected = boost(torch.tensor([[4.0, 0, 0]], dtype=torch.float64))
    torch.testing.assert_close(ab, expected, rtol=1e-13, atol=0)
    # symmetric, det 1, and a zero rapidity is the identity (no NaN)
    torch.testing.assert_close(b, b.transpose(-1, -2))
    torch.testing.assert_close(b[0], torch.eye(4, dtype=torch.float64))


def test_boost_gradient_finite_at_zero():
    z = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    boost(z).sum().backward()
    assert bool(torch.isfinite(z.grad).all())


def test_products_at_rapidity_6_preserve_metric(generator):
    """ΛᵀηΛ = η to 1e-9 relative for products of sampled elements with |rapidity| ≤ 6."""
    g = Lorentz(max_rapidity=6.0)
    a, b, c = g.sample(3000, generator=generator, dtype=torch.float64).split(1000)
    for lam in (a, a @ b, a @ b @ c, a @ g.inverse(b), g.inverse(a) @ a):
        assert float(_rel_defect(lam).max()) < 1e-9
        assert bool(g.is_element(lam, atol=1e-9).all())
    # sampled rapidities reach the bound but never exceed it: cosh φ = |Λ₀₀|
    phi = torch.acosh(a[:, 0, 0].abs())
    assert float(phi.max()) <= 6.0 + 1e-9 and float(phi.max()) > 5.5


def test_inverse_is_eta_transpose_eta(generator):
    g = Lorentz(max_rapidity=3.0)
    lam = g.sample(50, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(g.inverse(lam), ETA @ lam.transpose(-1, -2) @ ETA)
    torch.testing.assert_close(g.inverse(lam), torch.linalg.inv(lam), rtol=1e-9, atol=1e-9)


def test_improper_samples_all_four_components(generator):
    lam = Lorentz().sample(400, generator=generator, dtype=torch.float64)
    ortho = lam[:, 0, 0] > 0
    det_pos = torch.linalg.det(lam) > 0
    for o in (True, False):
        for d in (True, False):
            count = int(((ortho == o) & (det_pos == d)).sum())
            assert 60 < count < 140, (o, d, count)
    assert bool((lam[:, 0, 0].abs() >= 1 - 1e-12).all())


def test_proper_subgroup(generator):
    g = Lorentz(proper=True)
    lam = g.sample(200, generator=generator, dtype=torch.float64)
    assert bool((lam[:, 0, 0] >= 1).all())
    torch.testing.assert_close(torch.linalg.det(lam), torch.ones(200, dtype=torch.float64))
    parity = torch.diag(torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64))
    assert not bool(g.is_element(parity))
    assert not bool(g.is_element(-torch.eye(4, dtype=torch.float64)))
    assert bool(Lorentz().is_element(parity))


def test_is_element_rejects_non_lorentz(generator):
    g = Lorentz()
    lam = g.sample(10, generator=generator, dtype=torch.float64)
    assert not bool(g.is_element(lam * 1.001).any())
    # a Euclidean rotation in the (t, x) plane is not a Lorentz transformation
    c, s = math.cos(0.4), math.sin(0.4)
    r = torch.eye(4, dtype=torch.float64)
    r[:2, :2] = torch.tensor([[c, -s], [s, c]])
    assert not bool(g.is_element(r))


def test_minkowski_dot_invariant(generator):
    g = Lorentz(max_rapidity=4.0)
    lam = g.sample(100, generator=generator, dtype=torch.float64)
    a = torch.randn(100, 4, generator=generator, dtype=torch.float64)
    b = torch.randn(100, 4, generator=generator, dtype=torch.float64)
    before = minkowski_dot(a, b)
    after = minkowski_dot(g.act(lam, a), g.act(lam, b))
    scale = (lam @ a[..., None]).abs().amax((-2, -1)) * (lam @ b[..., None]).abs().amax((-2, -1))
    assert bool(((after - before).abs() <= 1e-13 * scale).all())


def test_float32(generator):
    g = Lorentz(max_rapidity=2.0)
    lam = g.sample(100, generator=generator, dtype=torch.float32)
    assert lam.dtype == torch.float32
    assert bool(g.is_element(lam).all())


def test_bad_max_rapidity():
    with pytest.raises(ValueError, match="max_rapidity"):
        Lorentz(max_rapidity=-1.0)
    with pytest.raises(ValueError, match="rapidity"):
        boost(torch.zeros(2, 4))


@pytest.mark.parametrize("dtype,rapidity", [(torch.float32, 50.0), (torch.float32, 80.0),
                                            (torch.float64, 360.0), (torch.float64, 700.0)])
def test_element_error_of_huge_boosts(dtype, rapidity):
    """Audit: element_error squared Λ's entries, so a boost of rapidity 50 (float32) or 360
    (float64), itself finite (cosh 50 = 2.6e21), gave NaN: valid elements were refused by
    inverse/compose. It is now computed on Λ / max|Λ|: ~eps for exact elements, and a
    non-element is still refused."""
    L = Lorentz()
    b = boost(torch.tensor([0.0, 0.0, rapidity], dtype=dtype))
    assert torch.isfinite(b).all()
    eps = torch.finfo(dtype).eps
    assert float(L.element_error(b)) <= 4 * eps
    inv = L.inverse(b)
    # η Bᵀ η of a z-boost is the boost of -ζ: compare with cosh/sinh computed here
    ch, sh = math.cosh(rapidity), math.sinh(rapidity)
    assert float(inv[0, 0]) == pytest.approx(ch, rel=8 * eps)
    assert float(inv[0, 3]) == pytest.approx(-sh, rel=8 * eps)
    bad = b.clone()
    bad[0, 3] = bad[3, 0] = 0.0  # cosh without its sinh: not an element
    assert float(L.element_error(bad)) > 0.5
    with pytest.raises(ValueError):
        L.inverse(bad)
