"""Correspondence head (issue 17): fracture-surface labels, invariant descriptors, the
contrastive/BCE losses, the matching pipeline as the default of assemble()/predict and in
the LightningModule's evaluation (per-method, per-part-count metrics, per-stage times)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from geo3d.rotations import random_rotation_matrix

sys.path.insert(0, str(Path(__file__).parent))
from _toy import ToyParts  # noqa: E402

TINY = dict(feat_dim=8, k=5, hidden=[4, 4, 8], d_model=16, num_layers=1, num_heads=2,
            num_pictures=1)


# ----------------------------------------------------------------------------- labels
def test_point_mesh_distance_matches_trimesh():
    import trimesh
    import trimesh.proximity
    from geo3d.datasets.fracture import point_mesh_distance

    mesh = trimesh.creation.icosphere(subdivisions=1)
    g = np.random.default_rng(0)
    pts = np.concatenate([
        g.normal(size=(40, 3)) * 1.5,             # inside and outside
        mesh.vertices[:5],                         # on vertices (distance 0)
        (mesh.vertices[mesh.edges[:5, 0]] + mesh.vertices[mesh.edges[:5, 1]]) / 2,  # on edges
        g.normal(size=(3, 3)) * 1e3,              # far away
    ])
    _, ref, _ = trimesh.proximity.closest_point_naive(mesh, pts)
    got = point_mesh_distance(pts, mesh.vertices, mesh.faces).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="faces"):
        point_mesh_distance(pts, mesh.vertices, np.zeros((0, 3), dtype=np.int64))


def test_fracture_labels_agree_with_the_original_surface():
    """Label = "on another piece" (sibling meshes) vs an independent criterion from the
    generator's geometry: "not on the unfractured object's surface" (trimesh distance)."""
    import trimesh.proximity
    from geo3d.datasets.fracture import fracture_mesh, fracture_surface_labels
    from geo3d.datasets.shapes import make_shape

    mesh = make_shape("Hammer", rng=np.random.default_rng(3))
    pieces = fracture_mesh(mesh, 3, seed=1, noise=0.02)
    diag = float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))
    pts = [p.sample(150, seed=i) if _has_seed_kw() else _sample(p, 150, i)
           for i, p in enumerate(pieces)]
    labels = fracture_surface_labels(pts, pieces)
    agree, ambiguous, total, n_frac = 0, 0, 0, 0
    for i, (x, lab) in enumerate(zip(pts, labels, strict=True)):
        _, d_orig, _ = trimesh.proximity.closest_point_naive(mesh, x)
        others = [trimesh.proximity.closest_point_naive(p, x)[1]
                  for j, p in enumerate(pieces) if j != i]
        d_sib = np.min(others, axis=0)
        near_edge = (d_orig < 1e-3 * diag) & (d_sib < 1e-3 * diag)  # both surfaces meet
        indep = d_orig > 1e-6 * diag  # a cut face is not on the original surface
        keep = ~near_edge
        agree += int((lab.numpy()[keep] == indep[keep]).sum())
        total += int(keep.sum())
        ambiguous += int(near_edge.sum())
        n_frac += int(lab.sum())
    assert agree == total  # every unambiguous point labelled as the original surface says
    assert ambiguous <= 0.05 * 450
    assert 0 < n_frac < 450  # both classes present


def _has_seed_kw() -> bool:
    import inspect

    import trimesh

    return "seed" in inspect.signature(trimesh.Trimesh.sample).parameters


def _sample(mesh, n: int, seed: int) -> np.ndarray:
    from geo3d.datasets._io import sample_surface

    v = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long)
    return sample_surface(v, f, n, generator=torch.Generator().manual_seed(seed))[0].numpy()


@pytest.fixture(scope="module")
def fracture_root(tmp_path_factory) -> Path:
    from geo3d.datasets.fracture import generate_dataset

    root = tmp_path_factory.mktemp("frac")
    generate_dataset(root, 2, min_parts=2, max_parts=3, seed=0, fractures_per_object=1,
                     val_fraction=0.5, categories=["Chair", "Bracket"], progress=False)
    return root


def test_dataset_labels_follow_shuffles_and_rotations(fracture_root):
    """The loader's labels (computed once on canonical samples, mapped back through the
    assembled positions) equal labels computed directly on each item's own points."""
    from geo3d.apps.assembly._data import AssemblyDataModule, _collate
    from geo3d.datasets._io import load_mesh
    from geo3d.datasets.fracture import fracture_surface_labels

    dm = AssemblyDataModule(str(fracture_root), num_points=48, max_parts=3, batch_size=2,
                            loader_kwargs={"shuffle_parts": True})
    ds = dm.dataset("train")
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        item = ds[0]
        v = item["valid"]
        x = item["points"].double() @ item["rot"].double().transpose(-1, -2) \
            + item["trans"].double()[:, None]
        pieces = [load_mesh(p) for p in ds.samples[item["index"]][1]]
        # shuffled parts: find each item part's mesh as the one its points lie on
        from geo3d.datasets.fracture import point_mesh_distance

        order = [int(np.argmin([float(point_mesh_distance(x[j], m.vertices, m.faces).max())
                                for m in pieces])) for j in range(int(v.sum()))]
        assert sorted(order) == list(range(len(pieces)))
        ref = fracture_surface_labels([x[j] for j in range(int(v.sum()))],
                                      [pieces[o] for o in order])
        for j in range(int(v.sum())):
            assert torch.equal(item["fracture"][j], ref[j])
        assert not item["fracture"][~v].any()
        assert item["fracture"][v].any()
    b = _collate([ds[0], ds[0]])
    assert b["fracture"].shape == b["points"].shape[:3] and b["fracture"].dtype == torch.bool


# ----------------------------------------------------------------------------- head
def _model(readout: str = "pca", **kw):
    from geo3d.apps.assembly._model import EquivariantAssembler

    hyp = 4 if readout == "pca" else 1
    torch.manual_seed(0)
    return EquivariantAssembler(feat_dim=8, k=5, hidden=[4, 4, 8], d_model=16, num_layers=1,
                                num_heads=2, rot_readout=readout, hypotheses=hyp,
                                dynamic_graph=False, desc_dim=6, **kw).double().eval()


def _rigid(points: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    B, P = points.shape[:2]
    R = random_rotation_matrix(B, P, generator=g, dtype=points.dtype)
    s = torch.randn(B, P, 1, 3, generator=g, dtype=points.dtype) * 3
    return points @ R.transpose(-1, -2) + s


@pytest.mark.parametrize("readout", ["pca", "steer"])
@pytest.mark.parametrize("case", ["random", "duplicates", "planar", "far"])
def test_descriptors_and_fracture_logits_are_invariant_float64(readout, case):
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(2, 3, 24, 3, generator=g, dtype=torch.float64)
    pts[:, :, :, 0] *= 2.0  # distinct extents: a generic principal frame
    if case == "duplicates":
        pts[:, :, 12:] = pts[:, :, :12]  # every point twice
    elif case == "planar":
        pts[0, 1, :, 2] = 0.0  # a flat piece (degenerate third axis)
    elif case == "far":
        pts = pts + 1e3
    valid = torch.tensor([[True, True, True], [True, True, False]])
    net = _model(readout)
    with torch.no_grad():
        a = net(pts, valid)
        b = net(_rigid(pts, g), valid)
    assert a["desc"].shape == (2, 3, 24, 6) and a["frac_score"].shape == (2, 3, 24)
    norms = a["desc"].norm(dim=-1)
    assert torch.allclose(norms[valid], torch.ones_like(norms[valid]), atol=1e-12)
    assert (a["desc"][~valid] == 0).all()
    for key in ("desc", "frac_score"):
        err = (a[key] - b[key])[valid].abs().max().item()
        assert err < 1e-9, (key, err)
    # ... and the descriptors are not trivially constant
    assert a["desc"][0, 0].std(0).max() > 1e-3


def test_global_baseline_head_shapes_and_not_invariant():
    from geo3d.apps.assembly._model import GlobalAssembler

    torch.manual_seed(0)
    net = GlobalAssembler("dgcnn", feat_dim=8, k=5, d_model=16, hidden=[4, 4, 8],
                          desc_dim=6).double().eval()
    g = torch.Generator().manual_seed(2)
    pts = torch.randn(1, 2, 20, 3, generator=g, dtype=torch.float64)
    valid = torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        a, b = net(pts, valid), net(_rigid(pts, g), valid)
    assert a["desc"].shape == (1, 2, 20, 6) and a["frac_score"].shape == (1, 2, 20)
    assert (a["desc"] - b["desc"]).abs().max() > 1e-4  # learned from augmentation only


def test_head_parameters_get_gradients_from_the_correspondence_loss():
    from geo3d.apps.assembly._losses import correspondence_loss

    net = _model("pca").float().train()
    b = _toy_batch(4)
    out = net(b["points"], b["valid"])
    loss, terms = correspondence_loss(out["desc"], out["frac_score"], b["points"], b["valid"],
                                      b["rot"], b["trans"], radius=0.3)
    loss.backward()
    assert terms["contacts"] > 0
    for name, p in net.corr.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- losses
def _toy_batch(n: int = 4, seed: int = 0) -> dict:
    from geo3d.apps.assembly._data import _collate

    return _collate([ToyParts(n, max_parts=3, num_points=24, seed=seed)[i] for i in range(n)])


def _brute_loss(desc, logit, points, valid, rot, trans, label, radius, temp):
    """Python loops over objects, part pairs and points (float64)."""
    import math

    B, P, N, _ = points.shape
    obj_losses, bces, counts = [], [], []
    for b in range(B):
        x = [points[b, i].double() @ rot[b, i].double().T + trans[b, i].double()
             for i in range(P)]
        tot, cnt = 0.0, 0
        has = [[False] * N for _ in range(P)]
        for i in range(P):
            for j in range(P):
                if i == j or not (valid[b, i] and valid[b, j]):
                    continue
                for n in range(N):
                    pos = [m for m in range(N) if float((x[i][n] - x[j][m]).norm()) < radius
                           and (label is None or (label[b, i, n] and label[b, j, m]))]
                    if not pos:
                        continue
                    has[i][n] = True
                    s = [float(desc[b, i, n].double() @ desc[b, j, m].double()) / temp
                         for m in range(N)]
                    lse = math.log(sum(math.exp(v) for v in s))
                    lpos = math.log(sum(math.exp(s[m]) for m in pos))
                    tot += lse - lpos
                    cnt += 1
        if cnt:
            obj_losses.append(tot / cnt)
        counts.append(cnt)
        bce, npts = 0.0, 0
        for i in range(P):
            if not valid[b, i]:
                continue
            for n in range(N):
                y = float(label[b, i, n]) if label is not None else float(has[i][n])
                z = float(logit[b, i, n])
                p = 1 / (1 + math.exp(-z))
                bce += -(y * math.log(p) + (1 - y) * math.log(1 - p))
                npts += 1
        bces.append(bce / npts)
    return (sum(obj_losses) / len(obj_losses), sum(bces) / len(bces), sum(counts) / B)


@pytest.mark.parametrize("with_labels", [False, True])
def test_correspondence_loss_matches_brute_force(with_labels):
    from geo3d.apps.assembly._losses import correspondence_loss

    b = _toy_batch(3, seed=4)
    g = torch.Generator().manual_seed(0)
    B, P, N = b["points"].shape[:3]
    desc = torch.nn.functional.normalize(torch.randn(B, P, N, 5, generator=g,
                                                     dtype=torch.float64), dim=-1)
    logit = torch.randn(B, P, N, generator=g, dtype=torch.float64)
    label = torch.rand(B, P, N, generator=g) < 0.6 if with_labels else None
    radius, temp = 0.35, 0.2
    loss, terms = correspondence_loss(desc, logit, b["points"].double(), b["valid"],
                                      b["rot"].double(), b["trans"].double(), label,
                                      radius=radius, temperature=temp, w_desc=2.0, w_frac=0.5)
    ref_desc, ref_bce, ref_cnt = _brute_loss(desc, logit, b["points"], b["valid"], b["rot"],
                                             b["trans"], label, radius, temp)
    assert ref_cnt > 0
    assert terms["desc"].item() == pytest.approx(ref_desc, rel=1e-9)
    assert terms["frac"].item() == pytest.approx(ref_bce, rel=1e-9)
    assert terms["contacts"].item() == pytest.approx(ref_cnt, rel=1e-12)
    assert loss.item() == pytest.approx(2.0 * ref_desc + 0.5 * ref_bce, rel=1e-9)


def test_correspondence_loss_bad_arguments():
    from geo3d.apps.assembly._losses import correspondence_loss

    b = _toy_batch(1)
    d = torch.zeros(*b["points"].shape[:3], 4)
    with pytest.raises(ValueError, match="radius"):
        correspondence_loss(d, d[..., 0], b["points"], b["valid"], b["rot"], b["trans"],
                            radius=0.0)
    with pytest.raises(ValueError, match="temperature"):
        correspondence_loss(d, d[..., 0], b["points"], b["valid"], b["rot"], b["trans"],
                            temperature=-1.0)


# ----------------------------------------------------------------------------- pipeline
def test_assembled_object_invariant_to_rigid_motions_of_any_piece_float64():
    """Matching pipeline (match + RANSAC + spanning tree + refinement) on an equivariant
    model: moving any input piece (the anchor too) leaves the assembled object unchanged."""
    from geo3d.apps.assembly._pipeline import assemble_from_outputs

    net = _model("pca")
    g = torch.Generator().manual_seed(5)
    pts = torch.randn(1, 3, 32, 3, generator=g, dtype=torch.float64)
    pts[..., 0] *= 2.0
    pts[0, 1] = pts[0, 0].flip(0) @ random_rotation_matrix(generator=g, dtype=torch.float64).T
    # pieces 0 and 1 are the same shape: identical descriptors, so the matching path
    # (real matches, RANSAC, a spanning-tree edge) is exercised, not only the fallback
    valid = torch.ones(1, 3, dtype=torch.bool)

    def placed(x, parents=False):
        with torch.no_grad():
            out = net(x, valid)
            T = assemble_from_outputs(x, valid, out, method="matching",
                                      refine=True, generator=torch.Generator().manual_seed(0),
                                      min_points=8, min_score=0.2)
        if parents:
            from geo3d.apps.assembly._matching import pairwise_poses

            pw = pairwise_poses(x[0], out["desc"][0], torch.sigmoid(out["frac_score"][0]),
                                min_points=8, generator=torch.Generator().manual_seed(0))
            return pw.score
        return x @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]

    assert placed(pts, parents=True)[0, 1] > 0.2  # a reliable edge between the twins
    ref = placed(pts)
    for i in range(3):
        moved = pts.clone()
        R = random_rotation_matrix(generator=g, dtype=torch.float64)
        moved[0, i] = moved[0, i] @ R.T + torch.randn(3, generator=g, dtype=torch.float64)
        err = (placed(moved) - ref).abs().max().item()
        assert err < 1e-9, (i, err)


def _ckpt(tmp_path: Path, desc_dim: int) -> Path:
    from geo3d.apps.assembly import AssemblyModule

    torch.manual_seed(0)
    m = AssemblyModule(**TINY, rot_readout="pca", hypotheses=4, dynamic_graph=False,
                       desc_dim=desc_dim)
    path = tmp_path / f"m{desc_dim}.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, path)
    return path


def test_assemble_auto_uses_matching_on_clouds_and_network_still_works(tmp_path, monkeypatch):
    """method="auto" (the default) on point clouds is the matching pipeline (meshes: see
    test_assemble_auto_uses_fracture_registration_on_meshes)."""
    import inspect

    import geo3d.apps.assembly._pipeline as pipeline
    from geo3d.apps.assembly import assemble, load_model

    from geo3d.cli import main as geo3d_main

    calls = []
    real = pipeline.assemble_from_outputs

    def spy(*args, **kwargs):
        calls.append((kwargs["method"], kwargs["refine"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "assemble_from_outputs", spy)

    assert inspect.signature(assemble).parameters["method"].default == "auto"
    ck = _ckpt(tmp_path, 6)
    g = torch.Generator().manual_seed(3)
    pieces = [torch.randn(40, 3, generator=g, dtype=torch.float64) * s for s in (1.0, 0.8)]
    files = []
    for i, p in enumerate(pieces):
        f = tmp_path / f"p{i}.npy"
        np.save(f, p.numpy())
        files.append(str(f))
    kw = dict(num_points=40)
    T_default = assemble(pieces, str(ck), generator=torch.Generator().manual_seed(0), **kw)
    T_match = assemble(pieces, str(ck), method="matching",
                       generator=torch.Generator().manual_seed(0), **kw)
    T_net = assemble(pieces, str(ck), method="network", **kw)
    assert calls == [("matching", True), ("matching", True), ("network", True)]
    assert torch.equal(T_default, T_match)
    # network: exactly the model's own poses (centred float32 input, see assemble())
    model = load_model(ck)
    x = torch.stack(pieces)
    c = x.mean(1)
    with torch.no_grad():
        out = model((x - c[:, None]).float()[None], torch.ones(1, 2, dtype=torch.bool))
    R = out["rot"][0].double()
    assert torch.allclose(T_net[:, :3, :3], R, atol=1e-7)
    assert torch.allclose(T_net[:, :3, 3], out["trans"][0].double() - (R @ c[..., None])[..., 0],
                          atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        assemble(pieces, str(ck), method="icp", **kw)
    # CLI: --method network gives the same poses as the API
    out_json = tmp_path / "poses.json"
    assert geo3d_main(["assembly", "predict", "--checkpoint", str(ck), "--pieces", *files,
                       "--num-points", "40", "--method", "network", "--out",
                       str(out_json)]) == 0
    got = json.loads(out_json.read_text())
    assert got["method"] == "network" and calls[-1] == ("network", True)
    T_cli = assemble(files, str(ck), method="network", num_points=40,
                     generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(np.asarray(got["poses"]), T_cli.numpy(), atol=1e-12)


def test_assemble_auto_uses_fracture_registration_on_meshes(tmp_path, monkeypatch):
    """Mesh files + open3d: method="auto" runs fracture registration (the spy sees the
    dense mesh samples, not the network's num_points), and gives the same poses as asking
    for it by name; one cloud among the pieces switches auto back to matching."""
    pytest.importorskip("open3d")
    import geo3d.apps.assembly._fracture_registration as fr
    import geo3d.apps.assembly._pipeline as pipeline
    import trimesh
    from geo3d.apps.assembly import assemble
    from geo3d.apps.assembly._api import FRACTURE_POINTS
    from geo3d.datasets.fracture import fracture_mesh

    seen, methods = [], []
    real_fa, real_ao = fr.fracture_assembly, pipeline.assemble_from_outputs

    def spy_fa(points, *a, **k):
        seen.append([len(p) for p in points])
        return real_fa(points, *a, **k)

    def spy_ao(*a, **k):
        methods.append(k["method"])
        return real_ao(*a, **k)

    monkeypatch.setattr(fr, "fracture_assembly", spy_fa)
    monkeypatch.setattr(pipeline, "assemble_from_outputs", spy_ao)
    ck = _ckpt(tmp_path, 6)
    parts = fracture_mesh(trimesh.creation.box(extents=(2.0, 1.4, 1.0)), 2, seed=0, noise=0.02)
    files = []
    for i, m in enumerate(parts):
        f = tmp_path / f"piece_{i}.obj"
        m.export(f)
        files.append(str(f))
    T_auto = assemble(files, str(ck), num_points=40, generator=torch.Generator().manual_seed(0))
    T_fr = assemble(files, str(ck), num_points=40, method="fracture_registration",
                    generator=torch.Generator().manual_seed(0))
    assert seen == [[FRACTURE_POINTS] * 2] * 2 and methods == []
    # equal up to rounding (the first call in a process differed by 4e-16)
    torch.testing.assert_close(T_auto, T_fr, atol=1e-12, rtol=0)
    # a piece exported with inverted winding (normals inward) is repaired first: the same
    # assembly (without the repair it was wrong by ~1/3 of the object's size)
    inv = parts[1].copy()
    inv.invert()
    f_inv = tmp_path / "piece_1_inverted.obj"
    inv.export(f_inv)
    T_inv = assemble([files[0], str(f_inv)], str(ck), num_points=40,
                     generator=torch.Generator().manual_seed(0))
    v = torch.as_tensor(np.asarray(parts[1].vertices), dtype=torch.float64)
    vh = torch.cat([v, torch.ones(len(v), 1, dtype=torch.float64)], 1)
    rel = lambda T: (torch.linalg.inv(T[0]) @ T[1] @ vh.T).T[:, :3]  # noqa: E731
    assert float((rel(T_inv) - rel(T_auto)).norm(dim=1).max()) < 0.02  # box 2.6 across
    # the CLI writes the method that ran
    from geo3d.cli import main as geo3d_main

    out_json = tmp_path / "auto.json"
    assert geo3d_main(["assembly", "predict", "--checkpoint", str(ck), "--pieces", *files,
                       "--num-points", "40", "--out", str(out_json)]) == 0
    got = json.loads(out_json.read_text())
    assert got["method"] == "fracture_registration" and got["requested_method"] == "auto"
    cloud = tmp_path / "cloud.npy"
    np.save(cloud, np.asarray(parts[1].sample(200, seed=0)))
    n_fr = len(seen)
    assemble([files[0], str(cloud)], str(ck), num_points=40)
    assert methods == ["matching"] and len(seen) == n_fr


def test_assemble_without_head_warns_and_uses_the_network(tmp_path):
    from geo3d.apps.assembly import assemble

    ck = _ckpt(tmp_path, 0)
    g = torch.Generator().manual_seed(3)
    pieces = [torch.randn(30, 3, generator=g) for _ in range(2)]
    with pytest.warns(UserWarning, match="correspondence head"):
        T = assemble(pieces, str(ck), num_points=30)
    assert torch.equal(T, assemble(pieces, str(ck), num_points=30, method="network"))


# ----------------------------------------------------------------------------- module
def test_two_step_fit_writes_per_method_per_part_count_metrics_and_timings(tmp_path):
    from geo3d.apps.assembly import AssemblyModule
    from test_training import _brute_force_metrics

    L.seed_everything(0)
    model = AssemblyModule(**{**TINY, "num_pictures": 0}, desc_dim=6, corr_radius=0.3)
    assert model.eval_methods == ["matching", "network"]
    tr = L.Trainer(max_steps=2, default_root_dir=tmp_path, accelerator="cpu", devices=1,
                   enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, limit_val_batches=0, logger=True)
    loader = DataLoader(ToyParts(8, max_parts=3, num_points=24), batch_size=4)
    test_loader = DataLoader(ToyParts(6, max_parts=3, num_points=24, seed=1), batch_size=3)
    tr.fit(model, loader)
    tr.test(model, test_loader, verbose=False)
    res = json.loads((Path(tr.log_dir) / "results_test.json").read_text())["metrics"]
    assert res["primary_method"] == "matching" and res["num_objects"] == 6
    assert res["anchor"] == res["methods"]["matching"]["anchor"]
    # per-part-count accuracy of the network method vs brute force grouped by count
    model.eval()
    objs = []
    with torch.no_grad():
        for b in test_loader:
            pred = model(b["points"], b["valid"])
            for i in range(b["points"].shape[0]):
                objs.append((b["points"][i], b["valid"][i], pred["rot"][i], pred["trans"][i],
                             b["rot"][i], b["trans"][i]))
    by = res["methods"]["network"]["part_acc_by_num_parts"]
    counts = {}
    for o in objs:
        counts.setdefault(int(o[1].sum()), []).append(o)
    assert set(by["anchor"]) == {str(n) for n in counts}
    for proto in ("absolute", "anchor"):
        for n, group in counts.items():
            ref = _brute_force_metrics(group, proto)["part_acc"]
            assert by[proto][str(n)]["num_objects"] == len(group)
            assert by[proto][str(n)]["part_acc"] == pytest.approx(ref, abs=1e-6)
    for method, stages in (("matching", {"network", "match", "ransac", "global", "refine",
                                         "total"}), ("network", {"network", "total"})):
        t = res["methods"][method]["time_s_per_object"]
        assert set(t) == stages and all(v >= 0 for v in t.values())
    assert res["methods"]["matching"]["time_s_per_object"]["match"] > 0


def test_label_lookup_picks_the_true_nearest_point_far_from_the_origin():
    # The data module matches every item's points back to the labelled canonical samples by
    # nearest neighbour. Far from the origin the matrix-product distance form of torch.cdist
    # cancels (|x|^2 ~ 1e12 in float64 leaves ~1e-4 of resolution) and picks wrong points.
    from geo3d.apps.assembly._data import _nearest

    g = torch.Generator().manual_seed(0)
    pts = torch.rand(200, 3, generator=g, dtype=torch.float64) * 0.1 + 1e6
    perm = torch.randperm(200, generator=g)
    x = pts[perm] + 1e-9 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    brute = torch.tensor([min(range(200), key=lambda j: float(((xi - pts[j]) ** 2).sum()))
                          for xi in x])
    assert torch.equal(brute, perm)
    assert torch.equal(_nearest(x, pts), perm)
