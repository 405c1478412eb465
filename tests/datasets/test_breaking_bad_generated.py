"""End to end: the fracture generator's output read by BreakingBad (issue: datasets §4).

Generate a few fractured objects, load them, reassemble every part with its ground-truth
pose and compare with the original surface (and the in-place pieces) to 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from geo3d.datasets import BreakingBad

fracture = pytest.importorskip("geo3d.datasets.fracture")
trimesh = pytest.importorskip("trimesh")


def _assemble(item):
    p = item["points"].double()
    return p @ item["rot"].double().transpose(-1, -2) + item["trans"].double()[:, None]


def _surface_distance(mesh, pts: torch.Tensor) -> np.ndarray:
    _, dist, _ = trimesh.proximity.closest_point(mesh, pts.numpy())
    return dist


def test_generated_objects_reassemble_to_the_original(tmp_path):
    radius = 0.8
    ball = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    ball.export(tmp_path / "ball.obj")
    summary = fracture.generate_dataset(
        tmp_path / "bb", meshes=[tmp_path / "ball.obj"], min_parts=2, max_parts=4, seed=0,
        fractures_per_object=1, num_modes=1, noise=0.02, val_fraction=0.0, progress=False)
    assert not summary["failed"]
    ds = BreakingBad(tmp_path / "bb", max_parts=4, num_points=200, seed=0, shuffle_parts=True)
    assert len(ds) == 2  # fractured_0 and mode_0 of the one object
    for i in range(len(ds)):
        item = ds[i]
        n = item["num_parts"]
        assembled = _assemble(item)[:n]
        pieces = [trimesh.load(p, force="mesh") for p in ds.samples[i][1]]
        # every assembled part lies on exactly one in-place piece (parts were shuffled)
        d = np.stack([[_surface_distance(m, a).max() for a in assembled] for m in pieces])
        match = d.argmin(0)
        assert sorted(match.tolist()) == list(range(n))
        assert d[match, np.arange(n)].max() < 1e-5
        # and the union of the parts is the original object: all points are inside or on
        # the original surface, and the original surface points are recovered to 1e-5
        pts = assembled.reshape(-1, 3)
        d_orig = _surface_distance(ball, pts)
        inside = ball.contains(pts.numpy())
        assert np.all(inside | (d_orig < 1e-5))
        on_orig = pts[torch.as_tensor(d_orig < 1e-5)]
        assert len(on_orig) > 0.3 * len(pts)  # outer surface is well represented
        # every original face region is covered: samples of the original surface have an
        # assembled point nearby (a misplaced part would leave a hole)
        ref = torch.as_tensor(trimesh.sample.sample_surface(ball, 500, seed=0)[0])
        gap = torch.cdist(ref, on_orig).min(1).values.max()
        assert gap < 0.5 * radius  # a missing or misplaced part leaves a gap ~ radius


def test_generated_procedural_dataset_loads(tmp_path):
    summary = fracture.generate_dataset(tmp_path / "bb", num_objects=3, min_parts=2,
                                        max_parts=3, seed=1, fractures_per_object=1,
                                        noise=0.0, val_fraction=0.34, progress=False)
    assert not summary["failed"]
    train = BreakingBad(tmp_path / "bb", split="train", max_parts=3, num_points=100, seed=0)
    val = BreakingBad(tmp_path / "bb", split="val", max_parts=3, num_points=100, seed=0)
    assert len(train) + len(val) == 3 and len(val) >= 1
    for ds in (train, val):
        for i in range(len(ds)):
            item = ds[i]
            n = item["num_parts"]
            pieces = [trimesh.load(p, force="mesh") for p in ds.samples[i][1]]
            assembled = _assemble(item)[:n]
            err = max(_surface_distance(m, a).max() for m, a in zip(pieces, assembled,
                                                                     strict=True))
            assert err < 1e-5
            assert torch.equal(item["valid"], torch.arange(3) < n)
