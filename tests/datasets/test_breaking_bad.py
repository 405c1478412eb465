"""BreakingBad loader on generated data in the published layout (issue: datasets §2, §4)."""

from __future__ import annotations

import warnings
from pathlib import Path

import geo3d.datasets.breaking_bad as bb_module
import numpy as np
import pytest
import torch
from geo3d.datasets import BreakingBad, BreakingBadError, RandomSE3, collate_parts
from torch.utils.data import DataLoader


@pytest.fixture(autouse=True)
def _helpers(layout):
    """Bind the layout helpers from conftest (test modules cannot import it directly)."""
    global OBJECTS, box_pieces, write_layout
    OBJECTS, box_pieces, write_layout = layout.OBJECTS, layout.box_pieces, layout.write_layout


def _boxes_of(name: str):
    """The generating boxes (bounds) of a sample name 'everyday/Cat/obj/fractured_0'."""
    _, cat, obj, folder = name.split("/")
    cuts = next(c for ca, o, c in OBJECTS if o == obj)
    pieces = box_pieces(cuts if folder == "fractured_0" else cuts[:1])
    return [torch.as_tensor(np.array(p.bounds), dtype=torch.float64) for p in pieces]


def _dist_to_box_surface(p: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
    c = bounds.mean(0)
    half = (bounds[1] - bounds[0]) / 2
    q = (p - c).abs() - half
    return (q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0)).abs()


def _assemble(item):
    p = item["points"].double()
    return p @ item["rot"].double().transpose(-1, -2) + item["trans"].double()[:, None]


def _quiet(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the clean fixture must not warn
        return BreakingBad(**kw)


class TestIndex:
    def test_lines_map_to_fracture_folders(self, bb_root):
        ds = _quiet(root=bb_root, max_parts=4, num_points=64)
        names = [n for n, _ in ds.samples]
        expected = [f"everyday/{c}/{o}/{f}" for c, o, _ in OBJECTS
                    for f in ("fractured_0", "mode_0")]
        assert names == expected and len(ds) == 6
        pieces = dict(ds.samples)["everyday/Bottle/obj_b/fractured_0"]
        assert [p.name for p in pieces] == ["piece_0.obj", "piece_1.obj", "piece_2.obj"]

    def test_natural_piece_order_and_gaps(self, tmp_path):
        root = write_layout(tmp_path / "r", objects=[("Vase", "v", [0.0])], modes=False)
        frac = root / "everyday/Vase/v/fractured_0"
        meshes = box_pieces([-0.5, -0.2, 0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95])
        for f in frac.iterdir():
            f.unlink()
        for i, m in zip([0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11], meshes, strict=True):  # gap at 9
            m.export(frac / f"piece_{i}.obj")
        ds = _quiet(root=root, max_parts=20, num_points=16)
        assert [p.stem for p in ds.samples[0][1]] == [f"piece_{i}" for i in
                                                      [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11]]

    def test_filters(self, bb_root):
        assert len(_quiet(root=bb_root, categories=["mug"], num_points=8)) == 2
        assert len(_quiet(root=bb_root, categories="Bottle", num_points=8)) == 4
        assert len(_quiet(root=bb_root, categories="all", num_points=8)) == 6
        ds = _quiet(root=bb_root, fracture_types=["fractured"], num_points=8)
        assert all(n.endswith("fractured_0") for n, _ in ds.samples) and len(ds) == 3
        ds = _quiet(root=bb_root, min_parts=3, num_points=8)  # only the 3-piece fractures
        assert len(ds) == 2 and ds.num_filtered == 4
        ds = _quiet(root=bb_root, max_parts=2, num_points=8)
        assert len(ds) == 4

    def test_split_subset_and_direct_fracture_lines(self, tmp_path):
        root = write_layout(tmp_path / "r", val=("obj_c",))
        assert len(_quiet(root=root, split="train", num_points=8)) == 4
        assert len(_quiet(root=root, split="val", num_points=8)) == 2
        # split files directly in ROOT (multi_part_assembly's placement) are found too
        for f in (root / "data_split").iterdir():
            f.rename(root / f.name)
        assert len(_quiet(root=root, split="val", num_points=8)) == 2
        for f in root.glob("*.txt"):
            f.rename(root / "data_split" / f.name)
        # artifact: no category level; a line may also name a fracture folder directly
        art = root / "artifact" / "39084_sf" / "fractured_3"
        art.mkdir(parents=True)
        for i, m in enumerate(box_pieces([0.1])):
            m.export(art / f"piece_{i}.obj")
        (root / "data_split" / "artifact.train.txt").write_text(
            "artifact/39084_sf\nartifact/39084_sf/fractured_3\n")
        (root / "data_split" / "artifact.val.txt").write_text("")
        ds = _quiet(root=root, subset=["everyday", "artifact"], num_points=8)
        assert [n for n, _ in ds.samples][-2:] == ["artifact/39084_sf/fractured_3"] * 2
        assert ds[len(ds) - 1]["category"] == "artifact"
        assert ds[0]["category"] == "Bottle"

    def test_bad_arguments(self, bb_root, tmp_path):
        with pytest.raises(FileNotFoundError, match="root"):
            BreakingBad(tmp_path / "nothing")
        with pytest.raises(FileNotFoundError, match="artifact.train.txt"):
            BreakingBad(bb_root, subset="artifact")
        for kw, match in [({"subset": "daily"}, "subset"), ({"split": "test"}, "split"),
                          ({"min_parts": 5, "max_parts": 3}, "min_parts"),
                          ({"num_points": 0}, "num_points"),
                          ({"fracture_types": ["pieces"]}, "fracture_types"),
                          ({"seed": "x"}, "seed")]:
            with pytest.raises(ValueError, match=match):
                BreakingBad(bb_root, **kw)
        ds = BreakingBad(bb_root, num_points=8)
        with pytest.raises(IndexError):
            ds[6]
        with pytest.raises(ValueError, match="epoch"):
            ds.set_epoch(-1)


class TestItems:
    def test_shapes_masks_padding(self, bb_root):
        ds = BreakingBad(bb_root, max_parts=5, num_points=100, seed=0)
        item = ds[2]  # obj_b/fractured_0: 3 pieces
        assert item["name"] == "everyday/Bottle/obj_b/fractured_0"
        assert item["num_parts"] == 3 and item["index"] == 2
        for k, shape in [("points", (5, 100, 3)), ("normals", (5, 100, 3)), ("valid", (5,)),
                         ("rot", (5, 3, 3)), ("trans", (5, 3)), ("center", (3,)),
                         ("scale", ())]:
            assert item[k].shape == shape, k
        assert item["points"].dtype == torch.float32 and item["valid"].dtype == torch.bool
        assert item["valid"].tolist() == [True] * 3 + [False] * 2
        assert (item["points"][3:] == 0).all() and (item["normals"][3:] == 0).all()
        assert (item["trans"][3:] == 0).all()
        assert torch.equal(item["rot"][3:], torch.eye(3).expand(2, 3, 3))
        # each valid part is centred at its own centroid
        assert item["points"][:3].mean(1).abs().max() < 1e-5

    @pytest.mark.parametrize("shuffle_parts", [False, True])
    def test_ground_truth_reassembles_object(self, bb_root, shuffle_parts):
        ds = BreakingBad(bb_root, max_parts=4, num_points=200, seed=3,
                         shuffle_parts=shuffle_parts)
        for i in range(len(ds)):
            item = ds[i]
            n = item["num_parts"]
            R = item["rot"][:n].double()
            torch.testing.assert_close(R @ R.transpose(-1, -2),
                                       torch.eye(3, dtype=torch.float64).expand(n, 3, 3),
                                       atol=1e-6, rtol=0)
            assert (torch.linalg.det(R) - 1).abs().max() < 1e-6
            assembled = _assemble(item)[:n]
            boxes = _boxes_of(item["name"])
            assert len(boxes) == n
            d = torch.stack([_dist_to_box_surface(assembled, b) for b in boxes])  # (box, part, N)
            if shuffle_parts:
                match = d.amax(-1).argmin(0)  # each part lies on exactly one piece
                assert sorted(match.tolist()) == list(range(n))
            else:
                match = torch.arange(n)
            err = d[match, torch.arange(n)].max()
            assert err < 1e-5, (item["name"], err)
            # normals: rotated back they are the axis-aligned face normals of the box
            nb = item["normals"][:n].double() @ R.transpose(-1, -2)
            assert (nb.abs().amax(-1) - 1).abs().max() < 1e-5

    def test_eval_options_give_canonical_points(self, bb_root):
        ds = BreakingBad(bb_root, max_parts=4, num_points=50, rotate=False,
                         shuffle_points=False, seed=0)
        a, b = ds[0], BreakingBad(bb_root, max_parts=4, num_points=50, rotate=False,
                                  shuffle_points=False, seed=99)[0]
        assert torch.equal(a["points"], b["points"])  # nothing random left
        assert torch.equal(a["rot"][: a["num_parts"]], torch.eye(3).expand(2, 3, 3))

    def test_normalize(self, bb_root):
        ds = BreakingBad(bb_root, max_parts=4, num_points=200, seed=0, normalize=True)
        item = ds[2]
        n = item["num_parts"]
        assembled = _assemble(item)[:n]
        assert abs(assembled.reshape(-1, 3).norm(dim=-1).max() - 1) < 1e-5
        assert assembled.reshape(-1, 3).mean(0).abs().max() < 1e-5
        original = assembled * item["scale"].double() + item["center"].double()
        boxes = _boxes_of(item["name"])
        err = max(_dist_to_box_surface(original[i], boxes[i]).max() for i in range(n))
        assert err < 1e-5

    def test_transform_is_folded_into_ground_truth(self, bb_root):
        ds = BreakingBad(bb_root, max_parts=4, num_points=100, seed=0,
                         transform=RandomSE3(translation_std=2.0))
        plain = BreakingBad(bb_root, max_parts=4, num_points=100, seed=0)
        item, ref = ds[1], plain[1]
        n = item["num_parts"]
        assert not torch.allclose(item["points"][:n].mean(1), ref["points"][:n].mean(1))
        torch.testing.assert_close(_assemble(item)[:n], _assemble(ref)[:n], atol=1e-5, rtol=0)


class TestSeeding:
    def test_reproducible_per_seed_epoch_index(self, bb_root):
        ds = BreakingBad(bb_root, max_parts=4, num_points=32, seed=7)
        a = ds[3]
        assert torch.equal(a["points"], BreakingBad(bb_root, max_parts=4, num_points=32,
                                                    seed=7)[3]["points"])
        ds.set_epoch(1)
        b = ds[3]
        assert not torch.equal(a["rot"], b["rot"])
        ds.set_epoch(0)
        assert torch.equal(ds[3]["rot"], a["rot"])
        assert torch.equal(ds[np.int64(3)]["rot"], a["rot"])
        assert torch.equal(ds[-3]["rot"], a["rot"])  # len 6: -3 is index 3
        assert not torch.equal(BreakingBad(bb_root, max_parts=4, num_points=32, seed=8)[3]["rot"],
                               a["rot"])

    def test_workers_do_not_change_samples(self, bb_root):
        ds = BreakingBad(bb_root, max_parts=4, num_points=32, seed=1)

        def run(workers, persistent=False):
            loader = DataLoader(ds, batch_size=2, num_workers=workers,
                                collate_fn=BreakingBad.collate, persistent_workers=persistent)
            out = []
            for epoch in range(2):
                ds.set_epoch(epoch)
                out.append([b["points"] for b in loader])
            ds.set_epoch(0)
            return out

        ref = run(0)
        assert not torch.equal(ref[0][0], ref[1][0])  # epochs differ
        for workers, persistent in [(2, False), (2, True)]:
            got = run(workers, persistent)
            for e in range(2):
                for x, y in zip(ref[e], got[e], strict=True):
                    assert torch.equal(x, y), (workers, persistent, e)

    def test_collate(self, bb_root):
        ds = BreakingBad(bb_root, max_parts=6, num_points=16, seed=0)
        batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=ds.collate)))
        assert batch["points"].shape == (3, 6, 16, 3) and batch["valid"].shape == (3, 6)
        assert batch["num_parts"].tolist() == [2, 2, 3] and len(batch["name"]) == 3
        trimmed = collate_parts([ds[i] for i in range(3)], trim=True)
        assert trimmed["points"].shape == (3, 3, 16, 3) and trimmed["rot"].shape == (3, 3, 3, 3)
        default = next(iter(DataLoader(ds, batch_size=2)))  # the default collate works too
        assert default["rot"].shape == (2, 6, 3, 3)


class TestCache:
    def _count_reads(self, monkeypatch):
        calls = []
        real = bb_module.load_mesh

        def counting(path, **kw):
            calls.append(Path(path).name)
            return real(path, **kw)

        monkeypatch.setattr(bb_module, "load_mesh", counting)
        return calls

    def test_hit_in_a_new_dataset(self, bb_root, tmp_path, monkeypatch):
        calls = self._count_reads(monkeypatch)
        kw = dict(max_parts=4, num_points=40, seed=0, cache_dir=tmp_path / "cache")
        first = BreakingBad(bb_root, **kw)[2]
        assert len(calls) == 3
        assert any((tmp_path / "cache").rglob("*.npz"))
        assert not [p for p in (tmp_path / "cache").rglob("*") if ".tmp" in p.name]
        ds2 = BreakingBad(bb_root, **kw)  # e.g. the next epoch in fresh workers
        second = ds2[2]
        assert len(calls) == 3 and ds2.cache.hits == 3
        assert torch.equal(first["points"], second["points"])
        # cached canonical points, random rotation per access: augmentation is not frozen
        ds2.set_epoch(1)
        assert not torch.equal(ds2[2]["points"], first["points"]) and len(calls) == 3

    def test_default_cache_dir_and_disable(self, bb_root, monkeypatch):
        calls = self._count_reads(monkeypatch)
        BreakingBad(bb_root, max_parts=4, num_points=8)[0]
        assert any((bb_root / ".geo3d_cache").rglob("*.npz"))
        BreakingBad(bb_root, max_parts=4, num_points=8)[0]
        assert len(calls) == 2
        BreakingBad(bb_root, max_parts=4, num_points=8, cache=False)[0]
        BreakingBad(bb_root, max_parts=4, num_points=8, cache=False)[0]
        assert len(calls) == 6

    @pytest.mark.parametrize("hash_mode", ["content", "stat"])
    def test_invalidation_on_content_change(self, bb_root, tmp_path, monkeypatch, hash_mode):
        calls = self._count_reads(monkeypatch)
        kw = dict(max_parts=4, num_points=40, seed=0, rotate=False, shuffle_points=False,
                  cache_dir=tmp_path / "c", hash_mode=hash_mode)
        before = BreakingBad(bb_root, **kw)[0]
        piece = bb_root / "everyday/Bottle/obj_a/fractured_0/piece_1.obj"
        moved = box_pieces([0.3])[1]
        moved.apply_translation([0.0, 0.0, 5.0])
        moved.export(piece)
        calls.clear()
        after = BreakingBad(bb_root, **kw)[0]
        assert calls == ["piece_1.obj"]  # only the edited piece is resampled
        assert torch.equal(after["points"][0], before["points"][0])
        assert abs(after["trans"][1, 2] - before["trans"][1, 2] - 5.0) < 1e-4
        calls.clear()
        BreakingBad(bb_root, **{**kw, "num_points": 41})[0]  # sampling option changed
        assert len(calls) == 2

    def test_corrupt_entry_is_a_miss(self, bb_root, tmp_path, monkeypatch):
        calls = self._count_reads(monkeypatch)
        kw = dict(max_parts=4, num_points=16, seed=0, cache_dir=tmp_path / "c")
        ref = BreakingBad(bb_root, **kw)[0]
        for f in (tmp_path / "c").rglob("*.npz"):
            f.write_bytes(b"truncated")
        again = BreakingBad(bb_root, **kw)[0]
        assert len(calls) == 4 and torch.equal(ref["points"], again["points"])


class TestBrokenData:
    def _break(self, root: Path):
        (root / "everyday/Bottle/obj_a/fractured_0/piece_1.obj").write_bytes(b"")  # zero-byte
        for f in (root / "everyday/Mug/obj_c/mode_0").iterdir():  # empty fracture folder
            f.unlink()
        split = root / "data_split/everyday.train.txt"
        split.write_text(split.read_text() + "everyday/Mug/missing_obj\n")
        (root / "everyday/Mug/no_fracs").mkdir()
        split.write_text(split.read_text() + "everyday/Mug/no_fracs\n")

    def test_index_time_problems_one_summary_warning(self, bb_root):
        self._break(bb_root)
        with pytest.warns(RuntimeWarning) as rec:
            ds = BreakingBad(bb_root, max_parts=4, num_points=16, seed=0)
        assert len(rec) == 1 and "skipped 4" in str(rec[0].message)
        assert len(ds) == 4 and len(ds.skipped) == 4
        reasons = " ".join(r for _, r in ds.skipped)
        for word in ("empty", "no piece", "does not exist", "no fractured_k"):
            assert word in reasons
        for i in range(len(ds)):
            ds[i]

    def test_strict_raises_with_path(self, bb_root):
        self._break(bb_root)
        with pytest.raises(BreakingBadError, match="piece_1.obj") as e:
            BreakingBad(bb_root, strict=True, num_points=16)
        assert e.value.path.endswith("piece_1.obj")

    def _garbage(self, root: Path) -> Path:
        bad = root / "everyday/Bottle/obj_b/fractured_0/piece_2.obj"
        bad.write_bytes(bytes(range(256)) * 4)
        return bad

    def test_load_time_failure_substitutes_and_counts(self, bb_root):
        self._garbage(bb_root)
        ds = BreakingBad(bb_root, max_parts=4, num_points=16, seed=0)  # not detectable yet
        assert len(ds) == 6
        with pytest.warns(RuntimeWarning, match="obj_b/fractured_0") as rec:
            items = [b for b in DataLoader(ds, batch_size=1, collate_fn=ds.collate)]
        assert len(rec) == 1 and len(items) == 6
        assert "everyday/Bottle/obj_b/fractured_0" not in [b["name"][0] for b in items]
        assert list(ds.load_failures) == ["everyday/Bottle/obj_b/fractured_0"]
        # the substitute is deterministic for (seed, epoch, index)
        assert torch.equal(ds[2]["points"], ds[2]["points"]) and ds[2]["index"] != 2

    def test_load_time_failure_strict(self, bb_root):
        bad = self._garbage(bb_root)
        ds = BreakingBad(bb_root, max_parts=4, num_points=16, seed=0, strict=True)
        ds[0]
        with pytest.raises(BreakingBadError, match=str(bad.name)):
            ds[2]

    def test_piece_deleted_after_indexing(self, bb_root):
        ds = BreakingBad(bb_root, max_parts=4, num_points=16, seed=0)
        (bb_root / "everyday/Mug/obj_c/fractured_0/piece_0.obj").unlink()
        with pytest.warns(RuntimeWarning, match="obj_c/fractured_0"):
            item = ds[4]
        assert item["name"] != "everyday/Mug/obj_c/fractured_0"

    def test_validate_finds_garbage_at_index_time(self, bb_root):
        self._garbage(bb_root)
        with pytest.warns(RuntimeWarning, match="skipped 1") as rec:
            ds = BreakingBad(bb_root, max_parts=4, num_points=16, seed=0, validate=True)
        assert len(rec) == 1 and len(ds) == 5
        with pytest.raises(BreakingBadError, match="piece_2.obj"):
            BreakingBad(bb_root, num_points=16, validate=True, strict=True)


def test_ground_truth_is_equivariant_to_moving_the_files(bb_root, tmp_path):
    """Moving every piece file by g in SE(3) moves the reassembled object by g."""
    import shutil

    import trimesh

    from geo3d.groups import SE3

    kw = dict(max_parts=4, num_points=100, seed=0, cache=False)
    ref = BreakingBad(bb_root, **kw)
    for k, g in enumerate(SE3().sample(3, generator=torch.Generator().manual_seed(11),
                                       dtype=torch.float64)):
        moved = tmp_path / f"moved{k}"
        shutil.copytree(bb_root, moved)
        for f in moved.rglob("*.obj"):
            m = trimesh.load(f, force="mesh", process=False)
            m.apply_transform(g.numpy())
            m.export(f)
        ds = BreakingBad(moved, **kw)
        for i in (0, 2, 5):
            a, b = ref[i], ds[i]
            n = a["num_parts"]
            expected = _assemble(a)[:n] @ g[:3, :3].T + g[:3, 3]
            torch.testing.assert_close(_assemble(b)[:n], expected, atol=1e-5, rtol=0)


def test_identical_piece_files_do_not_share_a_cache_entry(bb_root, tmp_path):
    """Sampling is seeded by the piece's path; the cache must not mix two such pieces."""
    import shutil

    src = bb_root / "everyday/Bottle/obj_a/fractured_0"
    shutil.copytree(src, bb_root / "everyday/Bottle/obj_a/fractured_1")  # byte-identical
    kw = dict(max_parts=4, num_points=32, seed=0, rotate=False, shuffle_points=False)
    fresh = BreakingBad(bb_root, **kw, cache=False)
    forward = BreakingBad(bb_root, **kw, cache_dir=tmp_path / "c1")
    backward = BreakingBad(bb_root, **kw, cache_dir=tmp_path / "c2")
    names = [n for n, _ in fresh.samples]
    i0, i1 = names.index("everyday/Bottle/obj_a/fractured_0"), names.index(
        "everyday/Bottle/obj_a/fractured_1")
    a = [forward[i0]["points"], forward[i1]["points"]]
    b = [backward[i1]["points"], backward[i0]["points"]][::-1]  # other access order
    c = [fresh[i0]["points"], fresh[i1]["points"]]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])


class TestEmptySplit:
    """No object of a split found (folders renamed on decompression, a filter that keeps
    nothing): a clear error naming the root and the split file, never a length-0 dataset
    that makes training die later with torch's num_samples=0 error."""

    def test_renamed_object_folders(self, bb_root):
        (bb_root / "everyday").rename(bb_root / "everyday_renamed")
        with pytest.raises(BreakingBadError, match="no sample found") as e:
            BreakingBad(bb_root, num_points=16)
        msg = str(e.value)
        assert str(bb_root) in msg and "everyday.train.txt" in msg
        assert "object folder listed in the split does not exist" in msg
        assert e.value.path.endswith("everyday.train.txt")

    def test_filters_that_keep_nothing(self, bb_root):
        with pytest.raises(BreakingBadError, match=r"min_parts..max_parts = 5..6"):
            BreakingBad(bb_root, min_parts=5, max_parts=6, num_points=16)
        with pytest.raises(BreakingBadError, match="category filter"):
            BreakingBad(bb_root, categories=["Chair"], num_points=16)


class TestLargeCoordinates:
    def test_pieces_far_from_the_origin_keep_their_shape(self, tmp_path, layout):
        """Pieces stored at (1e5, -1e5, 5e4) (e.g. scans in mm): sampled in float64 and
        centred per part in float64, they give the same centred points as the same
        pieces at the origin (float32 sampling/caching would cancel ~1e-2)."""
        shift = (1e5, -1e5, 5e4)
        near = layout.write_layout(tmp_path / "near")
        far = layout.write_layout(tmp_path / "far", shift=shift)
        for normalize in (False, True):
            kw = dict(max_parts=4, num_points=64, seed=0, normalize=normalize)
            a, b = BreakingBad(near, **kw), BreakingBad(far, **kw)
            for i in range(len(a)):
                ia, ib = a[i], b[i]
                assert (ia["points"] - ib["points"]).abs().max() < 1e-5
                n = ia["num_parts"]
                if normalize:  # object centred in float64 first: the whole item matches
                    assert (ia["trans"] - ib["trans"]).abs().max() < 1e-5
                    assert (ib["center"].double() - ia["center"].double()
                            - torch.tensor(shift, dtype=torch.float64)).abs().max() < 1e-2
                else:  # float32 ground-truth translations: exact up to float32 spacing
                    d = ib["trans"][:n].double() - ia["trans"][:n].double()
                    assert (d - torch.tensor(shift, dtype=torch.float64)).abs().max() < 1e-2
        # a second pass reads the float64 cache and gives the same items
        kw = dict(max_parts=4, num_points=64, seed=0)
        assert torch.equal(BreakingBad(far, **kw)[0]["points"], BreakingBad(far, **kw)[0]["points"])

    def test_coordinates_that_overflow_float32_name_the_piece(self, tmp_path, layout):
        """Kind: checked after the cast. Pieces at 1e39 are finite in float64 (the
        sampling and the per-part centring run there) but the float32 translations are
        inf: an error naming the piece file, not inf ground truth."""
        root = layout.write_layout(tmp_path / "huge", shift=(1e39, 0.0, 0.0))
        ds = BreakingBad(root, max_parts=4, num_points=16, seed=0, normalize=False,
                         strict=True)
        with pytest.raises(BreakingBadError, match=r"piece_0\.obj.*piece 0 of .*overflow "
                                                   r"float32"):
            ds[0]
        with pytest.raises(BreakingBadError, match=r"piece_0\.obj.*centre/scale overflow"):
            BreakingBad(root, max_parts=4, num_points=16, seed=0, normalize=True,
                        strict=True)[0]
        near = layout.write_layout(tmp_path / "near", shift=(1e30, 0.0, 0.0))  # fits float32
        assert torch.isfinite(BreakingBad(near, max_parts=4, num_points=16, seed=0,
                                          normalize=False)[0]["trans"]).all()
