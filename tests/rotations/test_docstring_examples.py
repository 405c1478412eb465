"""The runnable examples in the public docstrings of geo3d.rotations must run and print
what they show (a stale example is a documentation bug)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "geo3d.rotations._quat",
    "geo3d.rotations._axis_angle",
    "geo3d.rotations._euler",
    "geo3d.rotations._se3",
    "geo3d.rotations._sixd",
    "geo3d.rotations._procrustes",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0
    assert res.attempted > 0
