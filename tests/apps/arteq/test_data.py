"""ArtEq data: labels, ground truth, splits, Haar augmentation and the on-disk cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from geo3d.apps.arteq._data import ArtEqDataModule, ScanSet, load_body, rotate_item

from geo3d.body import tiny_body_dict

SMALL = dict(body_model="tiny", num_points=96, train_subjects=3, val_subjects=1,
             test_subjects=2, train_motions=2, val_motions=1, test_motions=1,
             frames_per_motion=4, frame_stride=2, ood_poses=3, partial_resolution=48,
             batch_size=2)


@pytest.fixture(scope="module")
def dm(tmp_path_factory) -> ArtEqDataModule:
    d = ArtEqDataModule(root=str(tmp_path_factory.mktemp("arteq_data")), noise_std=0.0, **SMALL)
    d.prepare_data()
    return d


def _pose(body, data, i):
    return body(betas=data["betas"][i:i + 1], global_orient=data["global_orient"][i:i + 1, None],
                body_pose=data["body_pose"][i:i + 1], transl=data["transl"][i:i + 1],
                pose2rot=False)


@pytest.mark.parametrize("split", ["train", "ood", "partial"])
def test_labels_match_an_independent_closest_triangle_recomputation(dm, split):
    # noise-free scans: every point lies on the posed mesh; recompute its label from
    # trimesh's closest triangle + barycentric weights + the merge table written out here
    body = load_body("tiny")
    W = tiny_body_dict()["weights"]
    merge = {10: 7, 11: 8, 22: 20, 23: 21}
    Wa = np.zeros((W.shape[0], 22))
    for j in range(24):
        Wa[:, merge.get(j, j)] += W[:, j]
    data = dm.split_data(split)
    for i in range(len(data["points"])):
        with torch.no_grad():
            v = _pose(body, data, i).vertices[0].double().numpy()
        mesh = trimesh.Trimesh(v, body.faces_tensor.numpy(), process=False)
        pts = data["points"][i].double().numpy()
        closest, dist, tri = trimesh.proximity.closest_point(mesh, pts)
        assert dist.max() < 1e-5  # the points are on the GT mesh (float32 storage)
        bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri], closest)
        w = (Wa[mesh.faces[tri]] * bary[..., None]).sum(1)
        top2 = np.sort(w, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-4  # skip exact ties between two parts
        want = w.argmax(1)
        got = data["labels"][i].numpy()
        assert clear.mean() > 0.7
        np.testing.assert_array_equal(got[clear], want[clear])


def test_ground_truth_joints_are_the_posed_models_first_24(dm):
    body = load_body("tiny")
    data = dm.split_data("in_dist")
    for i in range(len(data["points"])):
        with torch.no_grad():
            j = _pose(body, data, i).joints[0, :24]
        torch.testing.assert_close(data["joints"][i], j, atol=1e-5, rtol=0)


def test_subjects_and_motions_are_disjoint_between_splits(dm):
    def rows(split, key):
        return {tuple(np.round(r.numpy().ravel(), 5)) for r in dm.split_data(split)[key]}

    for key in ("betas", "body_pose"):
        tr, va, te = rows("train", key), rows("val", key), rows("in_dist", key)
        assert not tr & te and not tr & va and not va & te, key
    assert rows("ood", "betas") <= rows("in_dist", "betas")  # ood uses the test subjects


def test_haar_augmentation_moves_scan_and_ground_truth_together(dm):
    body = load_body("tiny", dtype=torch.float64)
    ds = dm.dataset("train")
    raw = dm.split_data("train")
    ds.set_epoch(3)
    r0 = ds[0]["rot"]
    for i in range(len(ds)):
        it = ds[i]
        R = it["rot"].double()
        assert not torch.allclose(R, torch.eye(3, dtype=torch.float64))
        d64 = {k: v.double() for k, v in raw.items() if v.is_floating_point()}
        with torch.no_grad():
            orig = _pose(body, d64, i)
            aug = body(betas=it["betas"][None].double(),
                       global_orient=it["global_orient"][None, None].double(),
                       body_pose=it["body_pose"][None].double(),
                       transl=it["transl"][None].double(), pose2rot=False)
        # the body posed with the augmented parameters is the rotated original body
        torch.testing.assert_close(aug.vertices[0], orig.vertices[0] @ R.T, atol=1e-5, rtol=0)
        torch.testing.assert_close(it["points"].double(), raw["points"][i].double() @ R.T,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(it["joints"].double(), orig.joints[0, :24] @ R.T,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(it["labels"], raw["labels"][i])
    # a new epoch draws new rotations; the same epoch repeats them (resumable)
    ds.set_epoch(4)
    assert not torch.allclose(ds[0]["rot"], r0)
    ds.set_epoch(3)
    torch.testing.assert_close(ds[0]["rot"], r0)


def test_rotations_are_haar_distributed():
    # Haar on SO(3): E[tr R] = 0 and E[(tr R)^2] = 1 (character orthonormality). The
    # reference's uniform offsets of the root's Euler angles in a box fail this.
    n = 1000
    data = {"points": torch.zeros(n, 1, 3), "joints": torch.zeros(n, 1, 3),
            "global_orient": torch.eye(3).expand(n, 3, 3), "transl": torch.zeros(n, 3),
            "root": torch.zeros(n, 3)}
    ds = ScanSet(data, "fixed", seed=5)
    tr = torch.stack([ds[i]["rot"].double().diagonal().sum() for i in range(len(ds))])
    se = 1.0 / len(tr) ** 0.5
    assert abs(float(tr.mean())) < 4 * se
    assert abs(float((tr ** 2).mean()) - 1.0) < 4 * 1.5 * se


def test_rotate_item_composes(generator):
    from geo3d.rotations import random_rotation_matrix

    item = {"points": torch.randn(5, 3, dtype=torch.float64, generator=generator),
            "joints": torch.randn(24, 3, dtype=torch.float64, generator=generator),
            "global_orient": random_rotation_matrix(generator=generator, dtype=torch.float64),
            "transl": torch.randn(3, dtype=torch.float64, generator=generator),
            "root": torch.randn(3, dtype=torch.float64, generator=generator)}
    g1, g2 = random_rotation_matrix(2, generator=generator, dtype=torch.float64)
    a = rotate_item(rotate_item(item, g1), g2)
    b = rotate_item(item, g2 @ g1)
    for k in ("points", "joints", "global_orient", "transl", "rot"):
        torch.testing.assert_close(a[k], b[k])


def test_cache_is_reused_and_keyed_by_the_configuration(dm, monkeypatch):
    again = ArtEqDataModule(root=dm.hparams.root, noise_std=0.0, **SMALL)
    assert again.cache_dir() == dm.cache_dir()

    def boom(*a, **k):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(ArtEqDataModule, "_generate", boom)
    again.prepare_data()
    torch.testing.assert_close(again.split_data("ood")["points"], dm.split_data("ood")["points"])
    other = ArtEqDataModule(root=dm.hparams.root, noise_std=0.0, **{**SMALL, "num_points": 97})
    assert other.cache_dir() != dm.cache_dir()


def test_unreadable_cache_file_is_regenerated_with_a_warning(dm, tmp_path):
    """A truncated split file, a foreign torch file, a split without 'joints' and one of
    another configuration (50 points per scan, not 96) under a split's name: the split is
    generated again (the same scans: one generator per split) with a warning naming the
    file, instead of a raw traceback (or, for the last, silently other scans)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dm.hparams.root, copy)
    fresh = ArtEqDataModule(root=str(copy), noise_std=0.0, **SMALL)
    ood = fresh.cache_dir() / "ood.pt"
    ood.write_bytes(ood.read_bytes()[:500])
    torch.save({"a": torch.zeros(1)}, fresh.cache_dir() / "val.pt")
    good = dm.split_data("train")
    torch.save({k: v for k, v in good.items() if k != "joints"}, fresh.cache_dir() / "train.pt")
    # a split of another configuration (fewer points per scan) under this one's name
    torch.save({**dm.split_data("in_dist"), "points": dm.split_data("in_dist")["points"][:, :50],
                "labels": dm.split_data("in_dist")["labels"][:, :50]},
               fresh.cache_dir() / "in_dist.pt")
    for split, file in (("ood", ood), ("val", fresh.cache_dir() / "val.pt"),
                        ("train", fresh.cache_dir() / "train.pt"),
                        ("in_dist", fresh.cache_dir() / "in_dist.pt")):
        with pytest.warns(UserWarning, match=f"data cache '{file}'.*regenerating"):
            got = fresh.split_data(split)
        torch.testing.assert_close(got["points"], dm.split_data(split)["points"], rtol=0, atol=0)
        assert ArtEqDataModule(root=str(copy), noise_std=0.0, **SMALL).split_data(split)[
            "points"].shape == got["points"].shape  # the rewritten file reads


def test_partial_scans_see_one_side(dm):
    # a single view sees surface facing the camera: the mean outward normal at the scan's
    # points is far from zero; a full scan's is close to zero
    body = load_body("tiny")
    full, part = dm.split_data("in_dist"), dm.split_data("partial")
    assert part["points"].shape == full["points"].shape
    for i in range(len(part["points"])):
        with torch.no_grad():
            v = _pose(body, part, i).vertices[0].double().numpy()
        mesh = trimesh.Trimesh(v, body.faces_tensor.numpy(), process=False)
        means = []
        for d in (part, full):
            _, dist, tri = trimesh.proximity.closest_point(mesh, d["points"][i].double().numpy())
            assert dist.max() < 1e-5
            means.append(np.linalg.norm(mesh.face_normals[tri].mean(0)))
        assert means[0] > 0.3 and means[1] < 0.25, means


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_points"):
        ArtEqDataModule(num_points=0)
    with pytest.raises(ValueError, match="test_conditions"):
        ArtEqDataModule(test_conditions=["sideways"])
    with pytest.raises(ValueError, match="noise_std"):
        ArtEqDataModule(noise_std=-1.0)
    with pytest.raises(ValueError, match="rotate"):
        ScanSet({"points": torch.zeros(1, 1, 3)}, "sometimes")
