"""Smooth-AP loss: against an independent float64 loop of the published formulas, the
tau -> 0 limit against exact AP by sorting, perfect features, gradients, edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from geo3d.apps.multiview_corr._loss import smooth_ap_loss


def _sig(x: float, tau: float) -> float:
    z = x / tau
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _cos(a, b) -> float:
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)


def _brute(fa, fb, pos, neg, tau, mode):
    """Loops over Python floats; written from the formulas of the papers, not the module."""
    fa, fb = fa.tolist(), fb.tolist()
    pos, neg = pos.tolist(), neg.tolist()
    n, m = len(fa), len(fb)
    s = [[_cos(fa[i], fb[j]) for j in range(m)] for i in range(n)]
    terms = []
    for i in range(n):
        ps = [j for j in range(m) if pos[i][j]]
        ns = [j for j in range(m) if neg[i][j]]
        if not ps:
            continue
        if mode == "reference":
            for p in ps:
                # ranked list: self-match (similarity 1), p, negatives; positives: self and p
                r1 = 1.0 + _sig(s[i][p] - 1.0, tau)
                a1 = r1 / (r1 + sum(_sig(s[i][k] - 1.0, tau) for k in ns))
                r2 = 1.0 + _sig(1.0 - s[i][p], tau)
                a2 = r2 / (r2 + sum(_sig(s[i][k] - s[i][p], tau) for k in ns))
                terms.append(1.0 - (a1 + a2) / 2.0)
        else:
            aps = []
            for p in ps:
                rp = 1.0 + sum(_sig(s[i][q] - s[i][p], tau) for q in ps if q != p)
                rn = sum(_sig(s[i][k] - s[i][p], tau) for k in ns)
                aps.append(rp / (rp + rn))
            terms.append(1.0 - sum(aps) / len(aps))
    return sum(terms) / len(terms)


def _random_case(seed: int, n: int = 7, m: int = 9, c: int = 5):
    g = torch.Generator().manual_seed(seed)
    fa = torch.randn(n, c, generator=g, dtype=torch.float64)
    fb = torch.randn(m, c, generator=g, dtype=torch.float64)
    u = torch.rand(n, m, generator=g)
    pos = u < 0.25
    neg = u > 0.45  # the band in between is ignored
    pos[0] = False  # an anchor without positives
    pos[1, :3] = True  # an anchor with several positives
    neg[1, :3] = False
    return fa, fb, pos, neg


@pytest.mark.parametrize("mode", ["reference", "anchor"])
@pytest.mark.parametrize("tau", [0.01, 0.3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_float64(mode, tau, seed):
    fa, fb, pos, neg = _random_case(seed)
    got = smooth_ap_loss(fa, fb, pos, neg, temperature=tau, mode=mode)
    assert got.dtype == torch.float64
    want = _brute(fa, fb, pos, neg, tau, mode)
    assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-14)


def _plane(sims):
    # unit 2D features with the given cosine to the anchor (1, 0)
    return torch.tensor([[c, math.sqrt(1 - c * c)] for c in sims], dtype=torch.float64)


def test_small_temperature_gives_exact_ap_anchor_mode():
    # sorted: 0.95 (n), 0.9 (p), 0.7 (n), 0.5 (p), 0.3 (n): precisions 1/2 and 2/4 -> AP 0.5
    sims = [0.9, 0.5, 0.7, 0.3, 0.95]
    fa = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    fb = _plane(sims)
    pos = torch.tensor([[True, True, False, False, False]])
    neg = ~pos
    exact = smooth_ap_loss(fa, fb, pos, neg, temperature=1e-3, mode="anchor")
    assert float(exact) == pytest.approx(0.5, abs=1e-12)
    smooth = smooth_ap_loss(fa, fb, pos, neg, temperature=0.05, mode="anchor")
    assert abs(float(smooth) - 0.5) > 1e-3  # the relaxation is not a step function


def test_small_temperature_gives_exact_ap_reference_mode():
    # list: self (1.0, pos), 0.95 (n), 0.9 (p), 0.7 (n): precisions 1/1 and 2/3 -> AP 5/6
    # second positive pair 0.6 with the same negatives: 1 and 2/4 -> AP 3/4
    fa = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    fb = _plane([0.9, 0.95, 0.7, 0.6])
    pos = torch.tensor([[True, False, False, True]])
    neg = torch.tensor([[False, True, True, False]])
    got = smooth_ap_loss(fa, fb, pos, neg, temperature=1e-3, mode="reference")
    want = ((1 - 5 / 6) + (1 - 3 / 4)) / 2
    assert float(got) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("mode", ["reference", "anchor"])
def test_perfect_features_give_zero_and_random_do_not(mode):
    g = torch.Generator().manual_seed(3)
    ids_a = torch.randint(0, 20, (50,), generator=g)
    ids_b = torch.randint(0, 20, (60,), generator=g)
    pos = ids_a[:, None] == ids_b[None, :]
    neg = ~pos
    eye = torch.eye(20)
    perfect = smooth_ap_loss(eye[ids_a], eye[ids_b], pos, neg, mode=mode)
    assert float(perfect) < 1e-20
    rand = smooth_ap_loss(
        torch.randn(50, 20, generator=g), torch.randn(60, 20, generator=g), pos, neg, mode=mode
    )
    assert float(rand) > 0.3


@pytest.mark.parametrize("mode", ["reference", "anchor"])
def test_anchors_without_positives_are_excluded(mode):
    fa, fb, pos, neg = _random_case(5)
    base = smooth_ap_loss(fa, fb, pos, neg, mode=mode)
    # append an anchor with negatives only: the loss must not change (not AP = 0, not NaN)
    fa2 = torch.cat([fa, torch.randn(1, fa.shape[1], dtype=fa.dtype)])
    pos2 = torch.cat([pos, torch.zeros(1, pos.shape[1], dtype=torch.bool)])
    neg2 = torch.cat([neg, torch.ones(1, neg.shape[1], dtype=torch.bool)])
    assert float(smooth_ap_loss(fa2, fb, pos2, neg2, mode=mode)) == pytest.approx(
        float(base), rel=1e-14
    )


def test_no_positive_at_all_is_zero_with_zero_gradients():
    fa = torch.randn(4, 3, requires_grad=True)
    fb = torch.randn(5, 3, requires_grad=True)
    loss = smooth_ap_loss(
        fa, fb, torch.zeros(4, 5, dtype=torch.bool), torch.ones(4, 5, dtype=torch.bool)
    )
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(fa.grad, torch.zeros_like(fa)) and torch.equal(fb.grad, torch.zeros_like(fb))


def test_empty_inputs():
    loss = smooth_ap_loss(
        torch.zeros(0, 3),
        torch.zeros(0, 3),
        torch.zeros(0, 0, dtype=torch.bool),
        torch.zeros(0, 0, dtype=torch.bool),
    )
    assert float(loss) == 0.0


@pytest.mark.parametrize("mode", ["reference", "anchor"])
def test_gradients_finite_and_gradcheck(mode):
    fa, fb, pos, neg = _random_case(7, n=4, m=5, c=3)
    fa.requires_grad_(True)
    fb.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: smooth_ap_loss(a, b, pos, neg, temperature=0.05, mode=mode), (fa, fb)
    )
    # float32 at the reference temperature, with near-duplicate features (saturated sigmoids)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 16, generator=g)
    b = torch.cat(
        [a[:150] + 1e-4 * torch.randn(150, 16, generator=g), torch.randn(150, 16, generator=g)]
    )
    a.requires_grad_(True)
    b.requires_grad_(True)
    pos = torch.zeros(300, 300, dtype=torch.bool)
    pos[torch.arange(150), torch.arange(150)] = True
    loss = smooth_ap_loss(a, b, pos, ~pos, mode=mode)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    assert a.grad.abs().sum() > 0


def test_one_gradient_step_reduces_the_loss():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 8, generator=g, requires_grad=True)
    b = torch.randn(40, 8, generator=g)
    pos = torch.eye(40, dtype=torch.bool)
    before = smooth_ap_loss(a, b, pos, ~pos, temperature=0.1)
    before.backward()
    with torch.no_grad():
        after = smooth_ap_loss(a - 0.5 * a.grad, b, pos, ~pos, temperature=0.1)
    assert float(after) < float(before.detach())


def test_bad_input():
    a, b = torch.randn(3, 4), torch.randn(5, 4)
    pos = torch.zeros(3, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="feat_a"):
        smooth_ap_loss(a[0], b, pos, pos)
    with pytest.raises(ValueError, match="feat_b"):
        smooth_ap_loss(a, torch.randn(5, 3), pos, pos)
    with pytest.raises(ValueError, match="pos_mask"):
        smooth_ap_loss(a, b, pos.float(), pos)
    with pytest.raises(ValueError, match="neg_mask"):
        smooth_ap_loss(a, b, pos, torch.zeros(5, 3, dtype=torch.bool))
    both = pos.clone()
    both[0, 0] = True
    with pytest.raises(ValueError, match="neg_mask"):
        smooth_ap_loss(a, b, both, both)
    for t in (0.0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="temperature"):
            smooth_ap_loss(a, b, pos, pos, temperature=t)
    with pytest.raises(ValueError, match="mode"):
        smooth_ap_loss(a, b, pos, pos, mode="pairs")
