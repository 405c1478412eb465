"""Issue 11 hardening of geo3d.testing: non-element ``elements``, empty inputs (a check that
compares nothing must not pass), functions that edit their inputs, cached elements."""

from __future__ import annotations

import pytest
import torch

from geo3d.groups import SO3, CyclicGroup
from geo3d.reps import Trivial, Vector
from geo3d.rotations import set_value_checks
from geo3d.testing import (
    assert_equivariant,
    elements_to_test,
    equivariance_error,
)

F64 = torch.float64
SO = SO3()


def norm(x):
    return x.norm(dim=-1, keepdim=True)


def test_non_element_elements_raise_naming_elements():
    r = SO.sample(2, generator=torch.Generator().manual_seed(0), dtype=F64)
    shear = torch.eye(3, dtype=F64)
    shear[0, 1] = 0.5
    reflection = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=F64))
    for bad in (2 * r, torch.stack([r[0], shear]), reflection[None]):
        for check in (equivariance_error, assert_equivariant):
            with pytest.raises(ValueError, match=r"^elements: expected elements of SO3\(\)"):
                check(norm, SO, Vector(SO), Trivial(SO), elements=bad)
    # valid elements are used as given, in that order
    errs = equivariance_error(norm, SO, Vector(SO), Trivial(SO), elements=r)
    assert errs.shape == (2,) and float(errs.max()) < 1e-14


def test_value_checks_off_tests_what_it_is_given():
    # with checks off, 2·I is used as is: |2x| != |x|, so the invariance check FAILS
    # (measured error |x| exactly) instead of raising a ValueError
    x = torch.tensor([[3.0, 4.0, 0.0]], dtype=F64)
    old = set_value_checks(False)
    try:
        errs = equivariance_error(
            norm, SO, Vector(SO), Trivial(SO), inputs=x, elements=2 * torch.eye(3, dtype=F64)
        )
    finally:
        set_value_checks(old)
    torch.testing.assert_close(errs, torch.tensor([5.0], dtype=F64), rtol=0, atol=1e-15)


def test_empty_elements_raise():
    with pytest.raises(ValueError, match=r"elements: expected at least one group element"):
        equivariance_error(norm, SO, Vector(SO), Trivial(SO), elements=torch.empty(0, 3, 3))


@pytest.mark.parametrize("check", [equivariance_error, assert_equivariant])
def test_empty_inputs_raise_instead_of_passing(check):
    # an empty batch compares nothing: neither an error value nor a pass would be true
    with pytest.raises(ValueError, match=r"inputs: expected inputs for which fn has a non-empty"):
        check(norm, SO, Vector(SO), Trivial(SO), batch=(0,))
    with pytest.raises(ValueError, match=r"inputs: expected inputs .* got outputs of shape"):
        check(norm, SO, Vector(SO), Trivial(SO), inputs=torch.zeros(0, 3, dtype=F64))
    # one non-empty output is enough to measure something
    errs = check(lambda x: (norm(x), x[:0]), SO, Vector(SO), (Trivial(SO), Vector(SO)), batch=(3,))
    assert errs.shape[0] > 0 and float(errs.max()) < 1e-14


def test_function_editing_its_input_raises():
    def scale_in_place(x):
        return x.mul_(2.0).norm(dim=-1, keepdim=True)

    with pytest.raises(ValueError, match=r"fn: expected a function that leaves its inputs"):
        equivariance_error(scale_in_place, SO, Vector(SO), Trivial(SO))

    def edit_later(x):  # edits only transformed copies: harmless, the check passes
        y = x.clone()
        return norm(y.mul_(1.0))

    assert float(equivariance_error(edit_later, SO, Vector(SO), Trivial(SO)).max()) < 1e-14


def test_identity_function_with_trivial_reps():
    # Trivial.act returns a copy, so fn returning its input cannot corrupt the reference
    errs = assert_equivariant(lambda x: x, SO, Trivial(SO, dim=2), Trivial(SO, dim=2), atol=0)
    assert float(errs.max()) == 0.0


def test_elements_to_test_does_not_expose_the_cache():
    grp = CyclicGroup(4)
    els, _ = elements_to_test(grp)
    els.mul_(0)
    again, _ = elements_to_test(grp)
    torch.testing.assert_close(again, grp.elements(dtype=F64), rtol=0, atol=0)
    assert float(again.abs().sum()) > 0
