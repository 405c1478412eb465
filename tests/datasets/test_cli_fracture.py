"""generate_dataset / ``geo3d data fracture|info``: Breaking Bad layout, splits, resume."""

from __future__ import annotations

import functools
import json
import operator
import re
import shutil
from pathlib import Path

import pytest

pytest.importorskip("trimesh")
pytest.importorskip("manifold3d")
from geo3d.datasets.fracture import generate_dataset  # noqa: E402

from geo3d.cli import main  # noqa: E402

SMALL = dict(min_parts=2, max_parts=4, fractures_per_object=2, progress=False)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _split(root: Path, subset: str, name: str) -> list[str]:
    text = (root / "data_split" / f"{subset}.{name}.txt").read_text()
    return [ln for ln in text.splitlines() if ln]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("bb") / "root"
    summary = generate_dataset(root, 8, seed=3, val_fraction=0.25, num_modes=1, **SMALL)
    return root, summary


def test_layout_matches_breaking_bad(generated):
    root, summary = generated
    assert summary["failed"] == [] and summary["generated"] == 8
    # all six split files exist, as in the released dataset
    for subset in ("everyday", "artifact", "other"):
        for name in ("train", "val"):
            assert (root / "data_split" / f"{subset}.{name}.txt").is_file()
    train, val = _split(root, "everyday", "train"), _split(root, "everyday", "val")
    assert len(train) == 6 and len(val) == 2
    assert not set(train) & set(val)  # split by object
    assert _split(root, "artifact", "train") == []
    for line in train + val:
        assert re.fullmatch(r"everyday/[A-Z][A-Za-z]+/[a-z]+_\d{5}", line), line
        obj = root / line
        folders = sorted(p.name for p in obj.iterdir())
        assert folders == ["fractured_0", "fractured_1", "mode_0"]
        counts = []
        for folder in folders:
            files = sorted(p.name for p in (obj / folder).iterdir())
            n = len(files)
            assert 2 <= n <= 4
            assert files == sorted(f"piece_{i}.obj" for i in range(n))
            counts.append(n)
        assert len(set(counts)) > 1  # fracture variants with different part counts
    # no temp folders left behind
    assert not list(root.rglob(".tmp-*"))


def test_pieces_on_disk_tile_the_object(generated):
    import manifold3d
    import numpy as np
    import trimesh
    from geo3d.datasets.fracture import _object_rng
    from geo3d.datasets.shapes import make_shape

    root, _ = generated
    for line in _split(root, "everyday", "train")[:3]:
        _, category, name = line.split("/")
        index = int(name.rsplit("_", 1)[1])
        # the object is make_shape(category) drawn from the object's own (seed, index) stream
        original = make_shape(category, rng=_object_rng(3, index, 0))
        for folder in ("fractured_0", "fractured_1", "mode_0"):
            files = sorted((root / line / folder).iterdir())
            pieces = [trimesh.load(p, force="mesh") for p in files]
            assert all(p.is_watertight for p in pieces)
            total = sum(p.volume for p in pieces)
            assert abs(total - original.volume) <= 1e-6 * original.volume
            solids = [
                manifold3d.Manifold(
                    manifold3d.Mesh64(
                        vert_properties=np.ascontiguousarray(p.vertices, dtype=np.float64),
                        tri_verts=np.ascontiguousarray(p.faces, dtype=np.uint64),
                    )
                )
                for p in pieces
            ]
            union = functools.reduce(operator.add, solids)  # (batch_boolean is less exact)
            assert abs(union.volume() - original.volume) <= 1e-6 * original.volume


def test_same_seed_same_bytes_and_resume(generated, tmp_path):
    root, _ = generated
    other = tmp_path / "again"
    generate_dataset(other, 8, seed=3, val_fraction=0.25, num_modes=1, **SMALL)
    assert _tree(other) == _tree(root)
    # resume: delete one object, leave a stale temp folder behind, run again
    line = _split(other, "everyday", "val")[0]
    victim = other / line
    shutil.rmtree(victim)
    stale = victim.parent / f".tmp-{victim.name}-crash"
    (stale / "fractured_0").mkdir(parents=True)
    summary = generate_dataset(other, 8, seed=3, val_fraction=0.25, num_modes=1, **SMALL)
    assert summary["generated"] == 1 and summary["skipped"] == 7
    assert not stale.exists()
    assert _tree(other) == _tree(root)
    # different arguments on the same folder are refused (no silent mixing)
    with pytest.raises(ValueError, match="different generation arguments"):
        generate_dataset(other, 8, seed=4, val_fraction=0.25, num_modes=1, **SMALL)


def test_different_seed_different_data(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    generate_dataset(a, 1, seed=0, noise=0.0, **SMALL)
    generate_dataset(b, 1, seed=1, noise=0.0, **SMALL)
    assert _tree(a) != _tree(b)


def test_mesh_files_and_loader_end_to_end(tmp_path):
    import trimesh
    from geo3d.datasets import BreakingBad

    mesh_path = tmp_path / "my rock.obj"
    trimesh.creation.icosphere(subdivisions=2).export(mesh_path)
    root = tmp_path / "bb"
    summary = generate_dataset(
        root, meshes=[mesh_path], mesh_category="Rock", val_fraction=0.0, seed=0, **SMALL
    )
    assert summary["failed"] == []
    assert _split(root, "everyday", "train") == ["everyday/Rock/my_rock"]
    ds = BreakingBad(root, subset="everyday", split="train", num_points=64, max_parts=4)
    assert len(ds) == 2
    item = ds[0]
    n = item["num_parts"]
    n_files = len(list((root / "everyday/Rock/my_rock/fractured_0").iterdir()))
    assert n == n_files and bool(item["valid"][:n].all()) and not bool(item["valid"][n:].any())


def test_non_watertight_mesh_is_reported(tmp_path):
    import trimesh

    m = trimesh.creation.box()
    broken = trimesh.Trimesh(m.vertices, m.faces[:-1], process=False)
    path = tmp_path / "broken.obj"
    broken.export(path)
    summary = generate_dataset(tmp_path / "bb", meshes=[path], seed=0, **SMALL)
    assert len(summary["failed"]) == 1 and "watertight" in summary["failed"][0]
    assert summary["train"] == 0 and summary["val"] == 0


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 4,
                                     b"v 0 0 0\nv 1 0 0\nv nan 1 0\nv 0 0 1\n"
                                     b"f 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n"],
                         ids=["empty", "garbage", "nan"])
def test_unreadable_mesh_is_reported_with_its_name(tmp_path, content):
    path = tmp_path / "bad.obj"
    path.write_bytes(content)
    summary = generate_dataset(tmp_path / "bb", meshes=[path], seed=0, **SMALL)
    assert len(summary["failed"]) == 1
    assert "cannot read mesh" in summary["failed"][0] and "bad.obj" in summary["failed"][0]


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="subset"):
        generate_dataset(tmp_path, 1, subset="kitchen")
    with pytest.raises(ValueError, match="min_parts"):
        generate_dataset(tmp_path, 1, min_parts=1)
    with pytest.raises(ValueError, match="val_fraction"):
        generate_dataset(tmp_path, 1, val_fraction=1.0)
    with pytest.raises(ValueError, match="categories"):
        generate_dataset(tmp_path, 1, categories=["Teapot"])
    with pytest.raises(ValueError, match="meshes"):
        generate_dataset(tmp_path, meshes=[tmp_path / "missing.obj"])


def test_cli_fracture_and_info(tmp_path, capsys):
    root = tmp_path / "cli"
    rc = main(
        [
            "data",
            "fracture",
            str(root),
            "--num-objects",
            "3",
            "--min-parts",
            "2",
            "--max-parts",
            "3",
            "--seed",
            "0",
            "--val-fraction",
            "0.34",
            "--fractures-per-object",
            "1",
            "--categories",
            "Box",
            "Sphere",
            "--noise",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "3 generated" in out
    assert len(_split(root, "everyday", "train")) == 2
    assert len(_split(root, "everyday", "val")) == 1
    assert main(["data", "info", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["everyday"]["train"]["objects"] == 2
    assert info["everyday"]["val"]["fractures"] == 1
    assert set(info["everyday"]["train"]["categories"]) <= {"Box", "Sphere"}
    assert main(["data", "info", str(root)]) == 0
    assert "everyday.train: 2 objects" in capsys.readouterr().out
    # user errors exit with 2 and a message, not a traceback
    assert main(["data", "fracture", str(tmp_path / "x"), "--min-parts", "1", "--no-progress"]) == 2
    assert "min_parts" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path / "nowhere")]) == 2


@pytest.mark.slow
def test_workers_do_not_change_the_bytes(tmp_path):
    a, b = tmp_path / "w1", tmp_path / "w2"
    generate_dataset(a, 6, seed=5, workers=1, **SMALL)
    generate_dataset(b, 6, seed=5, workers=2, **SMALL)
    assert _tree(a) == _tree(b)
