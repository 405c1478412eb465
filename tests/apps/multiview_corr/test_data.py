"""MultiviewCorrDataModule / ViewPairDataset on tiny rendered objects."""

from __future__ import annotations

import pytest
import torch
from geo3d.apps.multiview_corr._data import (
    MultiviewCorrDataModule,
    ViewPairDataset,
    resize_view,
    split_objects,
)

from geo3d.render import project_points, relative_rotation_angle

RENDER = {"num_synthetic": 2, "seed": 0, "size": 32, "focal": 36.0, "level": 0}


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    root = tmp_path_factory.mktemp("mv") / "data"
    dm = MultiviewCorrDataModule(str(root), render=RENDER, num_val_objects=1,
                                 pairs_per_object=6, val_pairs_per_object=3, max_angle=70.0,
                                 num_pixels=64, pos_radius=0.05, neg_radius=0.1)
    dm.prepare_data()
    return dm


def test_renders_and_splits(dm):
    train, held = dm.object_split()
    assert len(train) == 1 and len(held) == 1 and set(train).isdisjoint(held)
    assert len(dm.dataset("train")) == 6 and len(dm.dataset("val")) == 3
    # the loaders keep pairs as a list of dicts (one pair per step by default)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, list) and len(batch) == 1 and batch[0]["object"] == train[0]


def test_pairs_within_angle_and_positives_consistent(dm):
    ds = dm.dataset("train")
    n_pos = 0
    for k in range(len(ds)):
        item = ds[k]
        va, vb = item["view_a"], item["view_b"]
        a, b = item["views"].tolist()
        assert a != b
        ang = float(relative_rotation_angle(va["world_to_cam"], vb["world_to_cam"]))
        assert ang <= 70.0 + 1e-6 and ang == pytest.approx(item["angle"])
        s = item["sample"]
        pa, pb = s["pixels_a"], s["pixels_b"]
        # sampled pixels are foreground of their own view
        assert bool(va["mask"][pa[:, 1], pa[:, 0]].all()) and bool(vb["mask"][pb[:, 1], pb[:, 0]].all())
        i, j = torch.nonzero(s["pos_mask"], as_tuple=True)
        n_pos += len(i)
        # independent check through projection: the 3D point of a positive pixel of A,
        # projected into B, lands within a few pixels of its positive partner in B
        X = va["points"][pa[i, 1], pa[i, 0]].double()
        uv, z = project_points(X, vb["K"], vb["world_to_cam"])
        assert bool((z > 0).all())
        radius_px = 0.05 * 36.0 / 1.0  # pos radius at ~1.5 units distance, with margin
        assert float((uv - pb[j].double()).norm(dim=1).max()) < radius_px
        # positives and negatives are disjoint
        assert not bool((s["pos_mask"] & s["neg_mask"]).any())
    assert n_pos > 0


def test_pairs_deterministic_and_epoch_dependent(dm):
    ds = dm.dataset("train")
    v0 = [ds[k]["views"].tolist() for k in range(len(ds))]
    assert v0 == [ds[k]["views"].tolist() for k in range(len(ds))]
    ds.set_epoch(1)
    try:
        v1 = [ds[k]["views"].tolist() for k in range(len(ds))]
    finally:
        ds.set_epoch(0)
    assert v1 != v0


def test_held_out_has_no_sample(dm):
    item = dm.dataset("val")[0]
    assert "sample" not in item and item["object"] == dm.object_split()[1][0]


def test_resize_view_geometry(dm):
    """After a 2x downscale, the 3D point stored at a new pixel projects (with the new K)
    within half a new pixel of that pixel, and the colours are the box average."""
    item = dm.dataset("val")[0]
    v = item["view_a"]
    r = resize_view(v, 16)
    assert r["rgb"].shape == (3, 16, 16) and r["depth"].shape == (16, 16)
    vv, uu = torch.nonzero(r["mask"], as_tuple=True)
    X = r["points"][vv, uu].double()
    uv, _ = project_points(X, r["K"], r["world_to_cam"])
    err = (uv - torch.stack([uu, vv], 1).double()).abs().max()
    # nearest-exact picks source pixel 2u+1, whose centre is u + 0.25 in the new grid;
    # scaling K without the half-pixel shift would give 0.5
    assert float(err) == pytest.approx(0.25, abs=1e-6)
    # antialiased bilinear downscale, as PIL's BILINEAR reduction (independent code)
    import numpy as np
    from PIL import Image

    ref = np.stack([np.asarray(Image.fromarray(c.numpy().astype("float32")).resize((16, 16), Image.BILINEAR))
                    for c in v["rgb"]])
    torch.testing.assert_close(r["rgb"], torch.from_numpy(ref).clamp(0, 1), atol=1e-4, rtol=0)
    assert resize_view(v, None) is v and resize_view(v, 32) is v


def test_bad_input(tmp_path, dm):
    with pytest.raises(ValueError, match="num_val_objects"):
        split_objects(["a", "b"], 2)
    with pytest.raises(ValueError, match="objects"):
        split_objects(["a", "a", "b"], 1)
    with pytest.raises(ValueError, match="image_size"):
        resize_view(dm.dataset("val")[0]["view_a"], 4)
    with pytest.raises(ValueError, match="root"):
        MultiviewCorrDataModule(str(tmp_path / "empty")).prepare_data()
    with pytest.raises(ValueError, match="pairs_per_object"):
        ViewPairDataset(dm.hparams.root, dm.object_split()[0], pairs_per_object=0)


@pytest.mark.parametrize("max_angle", [70.0, 120.0])
def test_valid_pairs_equal_brute_force_and_skip_empty_views(dm, tmp_path, max_angle):
    """valid_pairs (one batched check) == the V x V loop over geo3d.render's relative
    rotation angle, with the views that meta.json lists as empty left out."""
    import json
    import shutil

    import numpy as np

    train, _ = dm.object_split()
    name = train[0]
    src = dm.dataset("train").root / name
    dst = tmp_path / name
    shutil.copytree(src, dst)
    meta = json.loads((dst / "meta.json").read_text())
    meta["empty_views"] = [0, 5, 99]  # 99: out of range, ignored as before
    (dst / "meta.json").write_text(json.dumps(meta))
    ds = ViewPairDataset(tmp_path, [name], pairs_per_object=1, max_angle=max_angle)
    T = torch.from_numpy(np.load(dst / "poses.npy")).double()
    want = [[i, j] for i in range(len(T)) for j in range(len(T))
            if i != j and i not in (0, 5)
            and j not in (0, 5)
            and float(relative_rotation_angle(T[i], T[j])) <= max_angle + 1e-6]
    got = ds.valid_pairs(name)
    assert got.dtype == np.int64 and got.shape == (len(want), 2)
    assert got.tolist() == want
    assert 0 < len(want) < len(T) * (len(T) - 1)  # the angle limit does reject pairs


@pytest.mark.parametrize("listed", [True, False])
def test_object_without_foreground_named_in_one_error(dm, tmp_path, listed):
    """An object whose every mask is empty: listed in meta.json (as geo3d data render
    writes it) or not (a foreign dataset) -> a ValueError that names the object, not a
    misleading max_angle / "view B" message."""
    import json
    import shutil

    import numpy as np
    from geo3d.datasets.multiview_render import write_png

    train, _ = dm.object_split()
    name = train[0]
    dst = tmp_path / name
    shutil.copytree(dm.dataset("train").root / name, dst)
    for m in dst.glob("mask_*.png"):
        write_png(m, np.zeros((32, 32), np.uint8))
    meta = json.loads((dst / "meta.json").read_text())
    meta["empty_views"] = list(range(meta["num_views"])) if listed else []
    (dst / "meta.json").write_text(json.dumps(meta))
    ds = ViewPairDataset(tmp_path, [name], pairs_per_object=1, num_pixels=16)
    with pytest.raises(ValueError, match="0 of 12" if listed else "empty mask") as err:
        ds[0]
    assert name in str(err.value) and "max_angle" not in str(err.value)
