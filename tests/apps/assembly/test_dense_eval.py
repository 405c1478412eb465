"""Dense mesh samples with face normals in the assembly evaluation path (issue 17):
``AssemblyDataModule(dense_points=M)`` / :class:`DenseSurface` and the module's routing of
them to ``method="fracture_registration"``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

M = 80  # dense samples per piece in these tests
TINY = dict(feat_dim=8, k=5, hidden=[4, 4, 8], d_model=16, num_layers=1, num_heads=2,
            num_pictures=0)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """2 train + 2 val objects, of 2 and 3 pieces each (~1 s)."""
    from geo3d.datasets.fracture import generate_dataset

    out = tmp_path_factory.mktemp("dense")
    generate_dataset(out, 4, min_parts=2, max_parts=3, seed=1, fractures_per_object=1,
                     val_fraction=0.5, categories=["Chair", "Bracket"], progress=False)
    return out


def _dm(root: Path, **kw: Any):
    from geo3d.apps.assembly._data import AssemblyDataModule

    kw.setdefault("dense_points", M)
    return AssemblyDataModule(str(root), num_points=48, max_parts=4, batch_size=2, **kw)


def _mesh_of_part(x: torch.Tensor, meshes: list) -> int:
    """The mesh the part's (original-frame) points lie on, by exact point-to-mesh distance
    (independent of the loader's own part bookkeeping)."""
    x = x.numpy()
    d = [_face_distances(x, np.asarray(m.triangles)).min(1).max() for m in meshes]
    return int(np.argmin(d))


def _face_distances(pts: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """(K, F) exact distances of every point to every triangle (trimesh, brute force)."""
    import trimesh.triangles

    K, F = len(pts), len(tri)
    closest = trimesh.triangles.closest_point(np.repeat(tri[None], K, 0).reshape(-1, 3, 3),
                                              np.repeat(pts, F, 0))
    return np.linalg.norm(closest - np.repeat(pts, F, 0), axis=-1).reshape(K, F)


def _to_original(item: dict, j: int, x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Points of part ``j`` in the original mesh frame, by the loader's convention:
    ``assembled = rot @ x + trans``; ``original = scale * assembled + center``."""
    a = x.double() @ item["rot"][j].double().T + item["trans"][j].double()
    return a * item["scale"].double() + item["center"].double() if normalize else a


def _check_item(item: dict, samples: list, normalize: bool) -> list[int]:
    """Asserts that every valid part's dense points lie on its piece's mesh and that its
    normals are that mesh's face normals carried into the item's frame; returns the mesh
    index of each valid part."""
    from geo3d.datasets._io import load_mesh

    meshes = [load_mesh(p) for p in samples]
    valid = item["valid"]
    n = int(valid.sum())
    assert item["dense_points"].shape == (valid.shape[0], M, 3)
    assert item["dense_normals"].shape == (valid.shape[0], M, 3)
    assert item["dense_points"].dtype == item["dense_normals"].dtype == torch.float32
    assert (item["dense_points"][~valid] == 0).all() and (item["dense_normals"][~valid] == 0).all()
    order = []
    for j in range(n):
        rot, trans = item["rot"][j].double(), item["trans"][j].double()
        k = _mesh_of_part(_to_original(item, j, item["points"][j], normalize), meshes)
        order.append(k)
        mesh = meshes[k]
        diag = float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))
        y = _to_original(item, j, item["dense_points"][j], normalize).numpy()
        tri = np.asarray(mesh.triangles)
        dist = _face_distances(y, tri)
        dmin = dist.min(1)
        assert dmin.max() < 1e-5 * diag, dmin.max()  # float32 rounding of the item
        # normals: the face's normal pushed into the item frame (its vertices mapped by
        # the inverse of the part's pose; right-hand rule of the mapped triangle)
        vert = torch.tensor(tri, dtype=torch.float64)  # (F, 3, 3) original frame
        if normalize:
            vert = (vert - item["center"].double()) / item["scale"].double()
        vin = (torch.linalg.inv(rot) @ (vert - trans)[..., None])[..., 0]
        fn = torch.nn.functional.normalize(
            torch.cross(vin[:, 1] - vin[:, 0], vin[:, 2] - vin[:, 0], dim=-1), dim=-1)
        got = item["dense_normals"][j].double()
        assert torch.allclose(got.norm(dim=-1), torch.ones(M, dtype=torch.float64), atol=1e-6)
        cos = got @ fn.T  # (M, F)
        near = torch.as_tensor(dist <= dmin[:, None] + 1e-6 * diag)  # the sampled face (ties)
        best = torch.where(near, cos, torch.full_like(cos, -2.0)).max(1).values
        assert best.min() > 1 - 1e-6, best.min()
    assert sorted(order) == list(range(len(meshes)))
    return order


@pytest.mark.parametrize("kw, labels", [
    ({}, True), ({"shuffle_parts": True}, True), ({"shuffle_parts": True}, False),
    ({"shuffle_parts": True, "normalize": True}, False), ({"anisotropic": True}, True),
], ids=["plain", "shuffled", "shuffled-nolabels", "shuffled-normalized-nolabels",
        "affine-transform"])
def test_dense_samples_lie_on_their_mesh_with_its_face_normals(root, kw, labels):
    """Catches: a wrong frame (rotᵀ vs rot, missing trans or normalisation), normals not
    rotated, a part mapped to the wrong mesh file under part shuffling (file order
    assumed), an affine transform folded into rot inverted as if it were a rotation,
    and samples that depend on the item's random pose (not reproducible per piece)."""
    from geo3d.apps.assembly._data import DenseSurface, FractureLabelled

    kw = dict(kw)
    if kw.pop("anisotropic", False):
        from geo3d.datasets._transforms import RandomScale

        kw["transform"] = RandomScale(0.7, 1.4, anisotropic=True)
    dm = _dm(root, loader_kwargs=kw, fracture_labels=labels)
    ds = dm.dataset("val")
    assert isinstance(ds, DenseSurface)
    assert isinstance(ds.base, FractureLabelled) == labels
    normalize = bool(kw.get("normalize", False))
    permuted = False
    canon: dict[tuple[str, int], torch.Tensor] = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            order = _check_item(item, ds.samples[item["index"]][1], normalize)
            permuted |= order != sorted(order)
            if labels:
                assert "fracture" in item
            # same piece -> the same dense samples in the original frame, whatever the pose
            for j, k in enumerate(order):
                a = _to_original(item, j, item["dense_points"][j], normalize)
                key = (item["name"], k)
                if key in canon:
                    assert torch.allclose(a, canon[key], atol=1e-5), key
                canon[key] = a
    assert permuted == bool(kw.get("shuffle_parts", False))  # the shuffle was exercised


def test_collate_trims_the_dense_part_axis(root):
    """Catches: dense keys left at max_parts (misaligned with points/valid) or trimmed
    differently from points."""
    from geo3d.apps.assembly._data import _collate

    dm = _dm(root)
    ds = dm.dataset("val")  # objects of 2 and 3 pieces, padded to max_parts=4
    two, three = sorted((ds[0], ds[1]), key=lambda it: int(it["num_parts"]))
    assert (int(two["num_parts"]), int(three["num_parts"])) == (2, 3)
    for items in ([two, three], [three, two]):  # padded object first and last
        b = _collate(items)
        P = b["points"].shape[1]
        assert P == 3 and b["valid"].shape == (2, 3)
        for key in ("dense_points", "dense_normals"):
            assert b[key].shape == (2, P, M, 3)
            for i, it in enumerate(items):
                assert torch.equal(b[key][i], it[key][:P])
                assert (it[key][P:] == 0).all()  # only padding was cut
                assert (b[key][i][~b["valid"][i]] == 0).all()
                assert (b[key][i][b["valid"][i]].norm(dim=-1) > 0).all()


def test_dense_off_leaves_items_unchanged_and_train_never_dense(root):
    """Catches: the wrapper altering the loader's own fields, dense keys added with
    dense_points=0, or dense sampling on the training split."""
    off = _dm(root, dense_points=0)
    on = _dm(root)
    a, b = off.dataset("val")[0], on.dataset("val")[0]
    assert "dense_points" not in a and "dense_normals" not in a
    assert set(b) - set(a) == {"dense_points", "dense_normals"}
    for k, v in a.items():
        assert torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k], k
    tr = next(iter(on.train_dataloader()))
    assert "dense_points" not in tr and "dense_normals" not in tr
    for loader in (on.val_dataloader(), on.test_dataloader(), on.predict_dataloader()):
        batch = next(iter(loader))
        assert batch["dense_points"].shape == (*batch["points"].shape[:2], M, 3)


@pytest.mark.parametrize("bad", [-1, 1, 64, 100.0, True, "200", None])
def test_bad_dense_points_raise(root, bad):
    with pytest.raises(ValueError, match="dense_points"):
        _dm(root, dense_points=bad)


def test_dense_surface_rejects_too_few_points(root):
    from geo3d.apps.assembly._data import DenseSurface

    with pytest.raises(ValueError, match="num_points"):
        DenseSurface(_dm(root, dense_points=0).dataset("val"), 64)


def _module(methods: list[str]):
    from geo3d.apps.assembly._module import AssemblyModule

    torch.manual_seed(0)
    return AssemblyModule(**TINY, eval_methods=methods).eval()


def _recorder(monkeypatch, fail: set[tuple[str, int]] = frozenset()) -> list[dict]:
    """Replaces the pipeline by a recorder returning identity poses; calls whose
    (method, batch size) is in ``fail`` raise RuntimeError."""
    from geo3d.apps.assembly import _pipeline

    calls: list[dict] = []

    def fake(points, valid, out, method="matching", refine=True, generator=None,
             timings=None, *, normals=None, **kw):
        calls.append({"method": method, "points": points, "normals": normals})
        if (method, points.shape[0]) in fail:
            raise RuntimeError("singular")
        B, P = valid.shape
        return torch.eye(4).repeat(B, P, 1, 1)

    monkeypatch.setattr(_pipeline, "assemble_from_outputs", fake)
    return calls


def test_module_passes_dense_samples_to_fracture_registration_only(root, monkeypatch):
    """Catches: dense samples not reaching fracture_registration (evaluated on the 128
    network points), or reaching other methods; normals not passed; the network not run
    on its own points."""
    from geo3d.apps.assembly._data import _collate

    ds = _dm(root).dataset("val")
    batch = _collate([ds[0], ds[1]])
    calls = _recorder(monkeypatch)
    mod = _module(["fracture_registration", "network"])
    seen = []
    mod.net.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    mod._eval_step(batch, "val")
    assert len(seen) == 1 and torch.equal(seen[0], batch["points"])
    assert [c["method"] for c in calls] == ["fracture_registration", "network"]
    assert calls[0]["points"] is batch["dense_points"]
    assert calls[0]["normals"] is batch["dense_normals"]
    assert calls[1]["points"] is batch["points"] and calls[1]["normals"] is None
    # predict: the primary method gets them too
    calls.clear()
    mod.predict_step(batch, 0)
    assert calls[0]["points"] is batch["dense_points"]
    assert calls[0]["normals"] is batch["dense_normals"]
    # without dense keys: today's behaviour (network points, estimated normals)
    calls.clear()
    plain = {k: v for k, v in batch.items() if not k.startswith("dense_")}
    mod._eval_step(plain, "val")
    assert calls[0]["points"] is plain["points"] and calls[0]["normals"] is None


def test_module_per_object_fallback_keeps_dense_samples(root, monkeypatch):
    """Catches: the per-object re-run after a failed batch dropping the dense samples or
    slicing them out of step with the objects."""
    from geo3d.apps.assembly._data import _collate

    ds = _dm(root).dataset("val")
    batch = _collate([ds[0], ds[1]])
    calls = _recorder(monkeypatch, fail={("fracture_registration", 2)})
    mod = _module(["fracture_registration"])
    mod._eval_step(batch, "val")
    fr = [c for c in calls if c["method"] == "fracture_registration"]
    assert len(fr) == 3 and [c["points"].shape[0] for c in fr] == [2, 1, 1]
    for b, c in enumerate(fr[1:]):
        assert torch.equal(c["points"], batch["dense_points"][b:b + 1])
        assert torch.equal(c["normals"], batch["dense_normals"][b:b + 1])
    assert float(mod._eval_sums["fracture_registration/errors/pipeline"][0]) == 0.0
    # an object that fails alone is evaluated with the network's poses and counted
    calls = _recorder(monkeypatch, fail={("fracture_registration", 2),
                                         ("fracture_registration", 1)})
    mod._eval_sums = {}
    mod._eval_step(batch, "val")
    assert [c["method"] for c in calls].count("network") == 2
    assert float(mod._eval_sums["fracture_registration/errors/pipeline"][0]) == 2.0


def test_real_pipeline_accepts_the_dense_batch(root):
    """The real fracture_registration on a collated dense batch (shapes, normals accepted,
    no fallback). Catches a dense batch the pipeline rejects or that raises."""
    pytest.importorskip("open3d")
    from geo3d.apps.assembly._data import _collate

    ds = _dm(root).dataset("val")
    batch = _collate([ds[0]])
    mod = _module(["fracture_registration"])
    mod._eval_step(batch, "val")
    assert float(mod._eval_sums["fracture_registration/errors/pipeline"][0]) == 0.0
    assert float(mod._eval_sums["count"][0]) == 1.0



def _rigid(g: torch.Generator, n: int) -> torch.Tensor:
    from geo3d.rotations import random_rotation_matrix

    T = torch.eye(4, dtype=torch.float64).repeat(n, 1, 1)
    T[:, :3, :3] = random_rotation_matrix(n, generator=g, dtype=torch.float64)
    T[:, :3, 3] = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return T


def test_predict_keeps_the_network_anchor_when_dense_samples_pick_another(monkeypatch):
    """On dense samples the largest piece (the pipeline's anchor) can differ from the
    network points' one (the metrics' and assemble()'s anchor): the assembly is moved
    rigidly so that the latter keeps the network's pose. Catches: the absolute protocol
    anchored on another piece than the metrics' anchor, or relative poses changed."""
    from geo3d.apps.assembly import _pipeline

    g = torch.Generator().manual_seed(3)
    points = torch.randn(1, 3, 48, 3, generator=g)
    points[0, 0] *= 3.0  # network points: piece 0 is the largest
    dense = torch.randn(1, 3, M, 3, generator=g)
    dense[0, 1] *= 3.0  # dense samples: piece 1 is the largest
    batch = {"points": points, "valid": torch.tensor([[True, True, False]]),
             "dense_points": dense,
             "dense_normals": torch.nn.functional.normalize(dense, dim=-1)}
    mod = _module(["fracture_registration"])
    with torch.no_grad():
        pred = mod(points, batch["valid"])
    T_net = _pipeline.network_poses(pred, 1, 3, torch.float64, torch.device("cpu"))
    G = _rigid(g, 3)
    G[1] = torch.eye(4, dtype=torch.float64)
    T_pipe = (T_net[0, 1] @ G)[None].float()  # the pipeline's anchor 1 keeps its pose
    T_pipe[0, 2] = torch.eye(4)

    def fake(pts, valid, out, method="matching", **kw):
        assert pts is dense
        return T_pipe.clone()

    monkeypatch.setattr(_pipeline, "assemble_from_outputs", fake)
    res = mod.predict_step(batch, 0)
    T = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    T[:, :3, :3], T[:, :3, 3] = res["rot"][0].double(), res["trans"][0].double()
    torch.testing.assert_close(T[0], T_net[0, 0], atol=1e-5, rtol=0)  # anchor 0: network pose
    rel = torch.linalg.inv(T[0]) @ T[1]
    rel_pipe = torch.linalg.inv(T_pipe[0, 0].double()) @ T_pipe[0, 1].double()
    torch.testing.assert_close(rel, rel_pipe, atol=1e-5, rtol=0)
    assert torch.equal(T[2], torch.eye(4, dtype=torch.float64))  # padding untouched
    # same anchor on both point sets: the pipeline's poses bit for bit
    dense[0, 1] /= 9.0
    T_pipe[0, 0] = (T_net[0, 0] @ G[2]).float()
    res = mod.predict_step(batch, 0)
    assert torch.equal(res["rot"][0], T_pipe[0, :, :3, :3])
    assert torch.equal(res["trans"][0], T_pipe[0, :, :3, 3])
    # the evaluation re-anchors the same way, on the network points' anchor
    from geo3d.apps.assembly._module import AssemblyModule

    seen = []
    keep = AssemblyModule._keep_anchor

    def spy(T, method_points, valid, anchor, pred):
        seen.append((method_points, anchor.tolist()))
        return keep(T, method_points, valid, anchor, pred)

    monkeypatch.setattr(AssemblyModule, "_keep_anchor", staticmethod(spy))
    batch.update(rot=torch.eye(3).repeat(1, 3, 1, 1), trans=torch.zeros(1, 3, 3))
    mod._eval_step(batch, "val")
    assert len(seen) == 1 and seen[0][0] is dense and seen[0][1] == [0]
