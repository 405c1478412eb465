"""assert_equivariant / equivariance_error: must pass on equivariant functions and FAIL on
approximately or partially equivariant ones."""

from __future__ import annotations

import pytest
import torch

from geo3d.groups import (
    O3,
    SE3,
    SO3,
    CyclicGroup,
    DihedralGroup,
    Lorentz,
    OcticGroup,
    minkowski_dot,
)
from geo3d.reps import Custom, Image, Irreps, LorentzVector, Points, Regular, Trivial, Vector
from geo3d.testing import assert_equivariant, elements_to_test, equivariance_error

F64 = torch.float64


def cross(a, b):
    return torch.linalg.cross(a, b, dim=-1)


def norm(x):
    return x.norm(dim=-1, keepdim=True)


# ------------------------------------------------------------------ passes
def test_passes_on_equivariant_functions():
    so3, o3, se3 = SO3(), O3(), SE3()
    errs = assert_equivariant(norm, o3, Vector(o3), Trivial(o3), atol=1e-12)
    assert errs.dtype == F64 and errs.ndim == 1
    assert_equivariant(cross, so3, (Vector(so3), Vector(so3)), Vector(so3), atol=1e-12)
    # under O(3) the cross product of two vectors is a pseudovector (1e)
    assert_equivariant(cross, o3, (Vector(o3), Vector(o3)), Irreps(o3, "1e"), atol=1e-12)
    # centroid of a point cloud is an SE(3) point; centred cloud transforms as vectors
    assert_equivariant(lambda p: p.mean(-2), se3, Points(se3), Points(se3), batch=(2, 9))
    assert_equivariant(
        lambda p: p - p.mean(-2, keepdim=True), se3, Points(se3), Vector(se3), batch=(2, 9)
    )
    lor = Lorentz(max_rapidity=3.0)
    v = LorentzVector(lor)
    assert_equivariant(
        lambda a, b: minkowski_dot(a, b), lor, (v, v), Trivial(lor), atol=0, rtol=1e-12
    )


def test_finite_groups_pass_and_test_every_element():
    grp = OcticGroup()
    im = Image(grp, size=6)
    errs = assert_equivariant(lambda x: x.flatten(-2).sum(-1), grp, im, Trivial(grp), atol=1e-12)
    assert errs.shape == (8,)
    # pixel-wise nonlinearity and a symmetric blur are equivariant
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=F64) / 16

    def blur(x):
        return torch.nn.functional.conv2d(x[:, None], kernel[None, None], padding=1)[:, 0]

    assert_equivariant(lambda x: torch.tanh(blur(x)), grp, im, im, atol=1e-12)
    c5 = CyclicGroup(5)
    assert_equivariant(lambda f: f.cumsum(-1)[..., -1:], c5, Regular(c5), Trivial(c5))
    assert equivariance_error(lambda f: f, c5, Regular(c5), Regular(c5)).shape == (5,)


def test_none_reps_for_masks_and_invariant_outputs(generator):
    so3 = SO3()
    pts = torch.randn(2, 6, 3, generator=generator, dtype=F64)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])

    def masked_norms(p, m):
        n = p.norm(dim=-1) * m
        return n, (p * m[..., None]).sum(1)

    assert_equivariant(
        masked_norms, so3, (Vector(so3), None), (None, Vector(so3)), inputs=(pts, mask)
    )


def test_returns_structured_plus_random(generator):
    els, labels = elements_to_test(SO3(), n_samples=7, generator=generator)
    k = len(labels)
    assert els.shape == (k, 3, 3) and k > 7
    assert labels[0] == "identity" and sum(lab.startswith("random") for lab in labels) == 7
    errs = equivariance_error(norm, SO3(), Vector(SO3()), Trivial(SO3()), n_samples=7)
    assert errs.shape == (k,)
    errs = equivariance_error(
        norm, SO3(), Vector(SO3()), Trivial(SO3()), n_samples=5, structured=False
    )
    assert errs.shape == (5,)
    given = SO3().sample(3, generator=generator, dtype=F64)
    assert equivariance_error(norm, SO3(), Vector(SO3()), None, elements=given).shape == (3,)
    # reproducible by default (fixed seed), different with another generator
    a = equivariance_error(lambda x: x**2, SO3(), Vector(SO3()), Vector(SO3()))
    b = equivariance_error(lambda x: x**2, SO3(), Vector(SO3()), Vector(SO3()))
    c = equivariance_error(lambda x: x**2, SO3(), Vector(SO3()), Vector(SO3()), generator=generator)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------ must fail
def test_fails_when_equivariant_only_about_z():
    so3 = SO3()

    def only_z(x):  # commutes with rotations about z only (x_z is preserved by them)
        return x * (1 + x[..., 2:3] ** 2)

    z_rot = torch.tensor([[0.6, -0.8, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    assert_equivariant(only_z, so3, Vector(so3), Vector(so3), elements=z_rot, atol=1e-12)
    with pytest.raises(AssertionError, match=r"not equivariant under SO3\(\)"):
        assert_equivariant(only_z, so3, Vector(so3), Vector(so3))


def test_fails_on_small_relative_error():
    so3 = SO3()

    def almost(x):  # equivariant up to a 1e-4 relative error term
        return x + 1e-4 * x.norm(dim=-1, keepdim=True) * torch.tensor(
            [1.0, 0.0, 0.0], dtype=x.dtype
        )

    with pytest.raises(AssertionError, match=r"error \d\.\d+e-0[45] > atol 1e-06"):
        assert_equivariant(almost, so3, Vector(so3), Vector(so3))
    # the same term at 1e-10 is within tolerance
    assert_equivariant(
        lambda x: x + 1e-10 * x.norm(dim=-1, keepdim=True), so3, Vector(so3), Vector(so3)
    )


def test_fails_for_so3_function_tested_under_o3():
    o3 = O3()
    with pytest.raises(AssertionError) as info:
        assert_equivariant(cross, o3, (Vector(o3), Vector(o3)), Vector(o3))
    msg = str(info.value)
    assert "O3()" in msg and ("inversion" in msg or "mirror" in msg or "rotoreflection" in msg)
    els, _ = elements_to_test(o3, 16, torch.Generator().manual_seed(0))
    errs = equivariance_error(cross, o3, (Vector(o3), Vector(o3)), Vector(o3), elements=els)
    det = torch.linalg.det(els)
    assert bool((errs[det > 0] < 1e-12).all()) and bool((errs[det < 0] > 1e-3).all())


def test_fails_on_one_bad_finite_group_element():
    grp = OcticGroup()
    im = Image(grp, size=5)
    x = im.randn(2, generator=torch.Generator().manual_seed(1), dtype=F64)
    bad_input = im.act(grp.elements(dtype=F64)[6], x)

    def buggy(img):  # identity map, except for one specific transformed input
        return img + 1.0 if torch.equal(img, bad_input) else img

    with pytest.raises(
        AssertionError, match=r"1 of 8 .* element 6 \(element 6 of OcticGroup\(\)\)"
    ):
        assert_equivariant(buggy, grp, im, im, inputs=x)
    errs = equivariance_error(buggy, grp, im, im, inputs=x)
    assert errs[6] == 1.0 and bool((errs[torch.arange(8) != 6] == 0).all())


def test_fails_on_rotation_only_function_under_flips():
    grp = DihedralGroup(4)
    im = Image(grp, size=6)

    c4_only = _c4_feature

    errs = equivariance_error(c4_only, grp, im, im)
    assert bool((errs[:4] < 1e-12).all()) and bool((errs[4:] > 1e-3).all())
    with pytest.raises(AssertionError, match="4 of 8"):
        assert_equivariant(c4_only, grp, im, im)


def _c4_feature(x):
    """A C4-equivariant but chiral image map: sum over rotations of a shifted image."""
    out = torch.zeros_like(x)
    for k in range(4):
        r = torch.rot90(x, k, (-2, -1))
        shifted = torch.roll(r, shifts=(1, 2), dims=(-2, -1))
        out = out + torch.rot90(shifted * r, -k, (-2, -1))
    return out


def test_structured_elements_catch_a_bug_at_rotations_by_pi():
    """A naive matrix->quaternion round trip breaks only at rotations by π (w = 0)."""
    so3 = SO3()
    left = Custom(so3, act=lambda g, r: g @ r)

    def naive_roundtrip(r):
        w = torch.sqrt((1 + r.diagonal(dim1=-2, dim2=-1).sum(-1)).clamp_min(0)) / 2
        x = (r[..., 2, 1] - r[..., 1, 2]) / (4 * w)
        y = (r[..., 0, 2] - r[..., 2, 0]) / (4 * w)
        z = (r[..., 1, 0] - r[..., 0, 1]) / (4 * w)
        q = torch.stack([w, x, y, z], -1)
        q = q / q.norm(dim=-1, keepdim=True)
        w, x, y, z = q.unbind(-1)
        return torch.stack(
            [
                1 - 2 * (y * y + z * z),
                2 * (x * y - z * w),
                2 * (x * z + y * w),
                2 * (x * y + z * w),
                1 - 2 * (x * x + z * z),
                2 * (y * z - x * w),
                2 * (x * z - y * w),
                2 * (y * z + x * w),
                1 - 2 * (x * x + y * y),
            ],
            -1,
        ).reshape(r.shape)

    start = torch.eye(3, dtype=F64).expand(2, 3, 3)
    # Haar samples alone almost never land on a rotation by π: the bug goes unnoticed
    assert_equivariant(
        naive_roundtrip, so3, left, left, inputs=start, structured=False, n_samples=32, atol=1e-9
    )
    with pytest.raises(AssertionError, match="rotation by π"):
        assert_equivariant(naive_roundtrip, so3, left, left, inputs=start, atol=1e-9)


def test_nan_output_fails():
    so3 = SO3()
    with pytest.raises(AssertionError, match="error inf"):
        assert_equivariant(lambda x: x / 0 * 0, so3, Vector(so3), Vector(so3))


def test_rtol_scales_with_output():
    so3 = SO3()

    def big(x):
        return 1e8 * x + 1e-9 * x[..., :1]

    with pytest.raises(AssertionError):
        assert_equivariant(big, so3, Vector(so3), Vector(so3), atol=1e-12)
    assert_equivariant(big, so3, Vector(so3), Vector(so3), atol=0, rtol=1e-12)


def test_float32_inputs(generator):
    so3 = SO3()
    x = torch.randn(4, 3, generator=generator)
    errs = assert_equivariant(norm, so3, Vector(so3), Trivial(so3), inputs=x, atol=1e-5)
    assert float(errs.max()) > 0  # float32 rounding is visible, float64 would be ~1e-16


# ------------------------------------------------------------------ bad input
def test_bad_input_raises_value_error():
    so3, o3 = SO3(), O3()
    with pytest.raises(ValueError, match="inputs: expected 2 inputs"):
        assert_equivariant(
            cross, so3, (Vector(so3), Vector(so3)), Vector(so3), inputs=torch.zeros(3)
        )
    with pytest.raises(
        ValueError, match=r"in_rep: Vector\(O3\(\)\) is for O3\(\), but group is SO3\(\)"
    ):
        assert_equivariant(norm, so3, Vector(o3), Trivial(so3))
    with pytest.raises(ValueError, match="fn must return 2 outputs"):
        assert_equivariant(norm, so3, Vector(so3), (Trivial(so3), Trivial(so3)))
    with pytest.raises(ValueError, match="inputs: required"):
        assert_equivariant(norm, so3, None, Trivial(so3))
    with pytest.raises(ValueError, match="in_rep"):
        assert_equivariant(norm, so3, "vector", Trivial(so3))
    with pytest.raises(ValueError, match="group"):
        assert_equivariant(norm, "SO3", Vector(so3), Trivial(so3))
    with pytest.raises(ValueError, match=r"elements: expected an element"):
        assert_equivariant(norm, so3, Vector(so3), Trivial(so3), elements=torch.eye(4))
    with pytest.raises(ValueError, match="x: expected size 3"):
        assert_equivariant(norm, so3, Vector(so3), Trivial(so3), inputs=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="out_rep: output 0 of fn does not fit"):
        assert_equivariant(lambda x: x[..., :2], so3, Vector(so3), Vector(so3))
    with pytest.raises(ValueError, match="n_samples"):
        equivariance_error(norm, so3, Vector(so3), None, n_samples=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
def test_cuda():
    se3 = SE3()
    errs = assert_equivariant(
        lambda p: p.mean(-2), se3, Points(se3), Points(se3), batch=(2, 9), device="cuda"
    )
    assert errs.shape[0] > 0


def test_reps_of_the_same_group_with_other_sampling_parameters():
    # LorentzVector() is built on Lorentz(); testing under Lorentz(max_rapidity=4) samples
    # larger boosts but it is the same group, so the reps are accepted
    lor = Lorentz(max_rapidity=4.0)
    v = LorentzVector()
    errs = assert_equivariant(minkowski_dot, lor, (v, v), None, atol=0, rtol=1e-11)
    assert errs.shape[0] > 16
