"""Representations: how a feature transforms under a group.

Every rep has ``.group``, ``.dim``, ``.act(g, x)`` and ``.randn(*batch, generator=...)``;
linear reps also ``.matrix(g)`` and act along ``axis``.
"""

from geo3d.reps._base import LinearRep, Rep
from geo3d.reps._basic import Custom, Points, Trivial, Vector
from geo3d.reps._finite import Image, Regular
from geo3d.reps._irreps import Irreps
from geo3d.reps._lorentz import LorentzTensor, LorentzVector

__all__ = [
    "Custom",
    "Image",
    "Irreps",
    "LinearRep",
    "LorentzTensor",
    "LorentzVector",
    "Points",
    "Regular",
    "Rep",
    "Trivial",
    "Vector",
]
