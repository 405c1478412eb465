"""The object's pose in the dataset's frame by registration to training objects
(TemplateBank), in the pipeline, the Lightning module and the API."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from geo3d.apps.assembly._canonical import OCTAHEDRAL_ROTATIONS, TemplateBank
from scipy.spatial.transform import Rotation

CATS = ("Mug", "Chair", "Bracket", "Hammer", "Stairs")


def _surface(mesh, n: int, seed: int) -> np.ndarray:
    import trimesh

    return np.asarray(trimesh.sample.sample_surface(mesh, n, seed=seed)[0], dtype=np.float64)


@pytest.fixture(scope="module")
def shapes():
    pytest.importorskip("manifold3d")
    from geo3d.datasets.shapes import make_shape

    return {c: make_shape(c, seed=0) for c in CATS}


@pytest.fixture(scope="module")
def bank(shapes):
    # the five oriented categories in the generator's frame, one sampling each
    return TemplateBank.from_objects([_surface(m, 1500, seed=3) for m in shapes.values()])


def _motion(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return Rotation.random(random_state=rng).as_matrix(), rng.normal(size=3) * 3.0


def test_octahedral_rotations_are_the_24_proper_signed_permutations():
    O = OCTAHEDRAL_ROTATIONS.numpy()
    assert O.shape == (24, 3, 3)
    assert np.allclose(O @ O.transpose(0, 2, 1), np.eye(3)) and np.allclose(np.linalg.det(O), 1)
    assert len({tuple(m.round().astype(int).ravel()) for m in O}) == 24  # all distinct
    assert set(np.unique(O)) == {-1.0, 0.0, 1.0}


@pytest.mark.parametrize("cat", CATS)
def test_recovers_the_pose_of_a_resampled_known_object(shapes, bank, cat):
    # another sampling of a bank object, moved by a random rigid motion: the pose must
    # undo the motion (scipy draws it; errors from the two samplings only)
    rng = np.random.default_rng(CATS.index(cat))
    x = _surface(shapes[cat], 2000, seed=11)
    R, u = _motion(rng)
    T, dist = bank.pose(x @ R.T + u)
    T = T.numpy()
    ang = np.degrees(np.arccos(np.clip((np.trace(T[:3, :3] @ R) - 1) / 2, -1, 1)))
    assert ang < 3.0, ang  # the Mug, nearly symmetric about its axis: 2.3 degrees
    back = (x @ R.T + u) @ T[:3, :3].T + T[:3, 3]
    assert np.abs(back - x).max() < 0.04  # objects are 1 across (Mug: 0.03)


def test_pose_is_equivariant_in_float64(shapes, bank):
    # T(g x) g = T(x): the same placement whatever the input's pose
    x = _surface(shapes["Hammer"], 1200, seed=5)
    T0 = bank.pose(x)[0].numpy()
    rng = np.random.default_rng(7)
    for _ in range(3):
        R, u = _motion(rng)
        g = np.eye(4)
        g[:3, :3], g[:3, 3] = R, u
        T = bank.pose(x @ R.T + u)[0].numpy()
        assert np.abs(T @ g - T0).max() < 1e-9


def test_candidates_can_only_lower_the_distance(shapes, bank):
    x = _surface(shapes["Bracket"], 800, seed=2)
    R, u = _motion(np.random.default_rng(1))
    y = x @ R.T + u
    _, d0 = bank.pose(y)
    cand = torch.from_numpy(np.stack([R.T, np.eye(3)]))
    _, d1 = bank.pose(y, cand)
    assert d1 <= d0 + 1e-12


def test_a_candidate_decides_when_the_principal_frames_cannot(shapes, monkeypatch):
    # the template itself, moved: its exact pose is found (distance 0) by the principal
    # frames; with them replaced by a wrong rotation (no ICP), only a true candidate can
    from geo3d.apps.assembly import _canonical

    x = torch.from_numpy(_surface(shapes["Hammer"], 600, seed=4))
    bank = TemplateBank.from_objects([x], num_points=128, icp_iterations=0, top=1)
    R = torch.from_numpy(Rotation.from_euler("xyz", [20, 35, 50], degrees=True).as_matrix())
    y = bank.templates[0] @ R.T + 1.0
    T, d = bank.pose(y)
    assert d < 1e-7 and torch.allclose(T[:3, :3], R.T, atol=1e-9)  # cdist: ~1e-9
    wrong = torch.from_numpy(Rotation.from_rotvec([0.3, 0.6, 0.9]).as_matrix())[None]
    monkeypatch.setattr(_canonical, "_PRINCIPAL_CANDIDATES", [wrong])
    _, d_free = bank.pose(y)
    T, d = bank.pose(y, R.T[None])
    assert d < 1e-7 and d_free > 0.05
    assert torch.allclose(T[:3, :3], R.T, atol=1e-9)
    assert torch.allclose(T[:3, 3], -1.0 * R.T.sum(1), atol=1e-9)  # undoes the shift


@pytest.mark.parametrize(("kw", "name"), [
    ({"templates": torch.zeros(0, 16, 3)}, "templates"),
    ({"templates": torch.zeros(2, 16, 2)}, "templates"),
    ({"templates": torch.full((1, 16, 3), float("nan"))}, "templates"),
    ({"templates": torch.zeros(1, 16, 3), "coarse_points": 32}, "coarse_points"),
    ({"templates": torch.zeros(1, 16, 3), "top": 0}, "top"),
    ({"templates": torch.zeros(1, 16, 3), "icp_iterations": -1}, "icp_iterations"),
    ({"templates": torch.zeros(1, 16, 3), "top": True}, "top"),
])
def test_bank_arguments_are_checked(kw, name):
    with pytest.raises(ValueError, match=name):
        TemplateBank(**kw)


def test_bad_objects_and_points_are_reported():
    with pytest.raises(ValueError, match="objects: expected at least one"):
        TemplateBank.from_objects([])
    with pytest.raises(ValueError, match=r"objects\[1\]"):
        TemplateBank.from_objects([np.zeros((10, 3)), np.zeros((10, 2))])
    with pytest.raises(ValueError, match="num_points"):
        TemplateBank.from_objects([np.zeros((10, 3))], num_points=4)
    bank = TemplateBank.from_objects([np.random.default_rng(0).normal(size=(50, 3))],
                                     num_points=32)
    with pytest.raises(ValueError, match="points: expected finite"):
        bank.pose(np.full((20, 3), np.nan))
    with pytest.raises(ValueError, match=r"points: expected shape \(n, 3\) with n >= 4"):
        bank.pose(np.zeros((3, 3)))
    y = np.random.default_rng(1).normal(size=(20, 3))
    with pytest.raises(ValueError, match="candidates"):
        bank.pose(y, np.zeros((2, 3)))
    # not rotations: a scaled identity, a reflection, zeros (they would give non-rigid T)
    for bad in (0.9 * np.eye(3), np.diag([1.0, 1.0, -1.0]), np.zeros((3, 3))):
        with pytest.raises(ValueError, match="candidates: expected rotations"):
            bank.pose(y, bad[None])
    with pytest.raises(ValueError, match="points: expected coordinates of magnitude"):
        bank.pose(y * 1e200)
    with pytest.raises(ValueError, match="templates: expected an array of numbers"):
        TemplateBank("abc")
    with pytest.raises(ValueError, match="wrap it in a list"):
        TemplateBank.from_objects(y)
    with pytest.warns(RuntimeWarning, match="collinear"):
        bank.pose(np.outer(np.linspace(0, 1, 10), [1.0, 2.0, 3.0]))
    with pytest.warns(RuntimeWarning, match="coincident"):  # ICP's SVD is singular here
        R = bank.pose(np.ones((10, 3)))[0][:3, :3]
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=R.dtype)) and torch.linalg.det(R) > 0
    assert TemplateBank(bank.templates, top=np.int64(2)).top == 2  # numpy ints are ints
    assert len(bank) == 1 and bank.num_points == 32
    assert TemplateBank(bank.state()).templates.shape == (1, 32, 3)


def _fractured_chair(n: int = 1000):
    """A Chair cut in two by the dataset generator: per piece ``n`` samples with face
    normals in the generator's frame."""
    pytest.importorskip("manifold3d")
    pytest.importorskip("open3d")
    import trimesh
    from geo3d.datasets.fracture import fracture_mesh
    from geo3d.datasets.shapes import make_shape

    pieces = fracture_mesh(make_shape("Chair", seed=0), 2, seed=0, noise=0.02)
    pts, nrm = [], []
    for i, m in enumerate(pieces):
        p, fi = trimesh.sample.sample_surface(m, n, seed=10 + i)
        pts.append(np.asarray(p, dtype=np.float64))
        nrm.append(np.asarray(m.face_normals[fi], dtype=np.float64))
    return pieces, pts, nrm


def test_pipeline_puts_the_assembly_in_the_dataset_frame(bank):
    from geo3d.apps.assembly._pipeline import assemble_from_outputs

    _, pts, nrm = _fractured_chair()
    rng = np.random.default_rng(0)
    inp, inn = [], []
    for p, n in zip(pts, nrm, strict=True):
        R = Rotation.random(random_state=rng).as_matrix()
        c = p.mean(0)
        inp.append((p - c) @ R.T)
        inn.append(n @ R.T)
    x = torch.from_numpy(np.stack(inp))[None]
    nx = torch.from_numpy(np.stack(inn))[None]
    valid = torch.ones(1, 2, dtype=torch.bool)
    T = assemble_from_outputs(x, valid, {}, method="fracture_registration", normals=nx,
                              templates=bank)[0].numpy()
    for i in range(2):  # every point back where the generator put it
        placed = inp[i] @ T[i, :3, :3].T + T[i, :3, 3]
        assert np.abs(placed - pts[i]).max() < 0.02
    # without the bank (and no network) the anchor keeps its input frame: not the dataset's
    T0 = assemble_from_outputs(x, valid, {}, method="fracture_registration", normals=nx)[0]
    assert np.abs(inp[0] @ T0[0, :3, :3].numpy().T + T0[0, :3, 3].numpy() - pts[0]).max() > 0.1


sys.path.insert(0, str(Path(__file__).parent))
from _toy import ToyParts  # noqa: E402

TINY = dict(feat_dim=8, k=5, hidden=[4, 4, 8], d_model=16, num_layers=1, num_heads=2,
            num_pictures=0, template_points=16)


def test_training_collects_the_bank_into_the_checkpoint(tmp_path):
    import lightning as L
    from geo3d.apps.assembly import AssemblyModule, load_checkpoint, load_model
    from geo3d.apps.assembly._canonical import _sample, assembled_clouds
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    L.seed_everything(0)
    data = ToyParts(6, max_parts=3, num_points=24, seed=0)
    model = AssemblyModule(**TINY)
    tr = L.Trainer(max_epochs=1, default_root_dir=tmp_path, accelerator="cpu", devices=1,
                   callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
                   enable_progress_bar=False, enable_model_summary=False, logger=False,
                   num_sanity_val_steps=0)
    tr.fit(model, DataLoader(data, batch_size=4))
    ckpt = load_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    bank = ckpt["assembly_templates"]
    assert bank.shape == (6, 16, 3) and bank.dtype == torch.float32
    # object i of the bank: its pieces at their true poses, farthest-point sampled
    for i in range(6):
        it = data[i]
        ref = _sample(assembled_clouds(it["points"][None], it["valid"][None], it["rot"][None],
                                       it["trans"][None])[0], 16)
        assert torch.allclose(bank[i].double(), ref, atol=1e-6)
    loaded = load_model(tmp_path / "ckpt" / "last.ckpt")
    assert torch.equal(loaded.template_bank.state(), bank)
    # a module without a bank builds it from a dataset; templates=False never does
    fresh = AssemblyModule(**TINY)
    assert fresh.ensure_templates(data) and len(fresh.template_bank) == 6
    off = AssemblyModule(**TINY, templates=False)
    assert not off.ensure_templates(data) and off.template_bank is None
    with pytest.raises(ValueError, match="template_points"):
        AssemblyModule(**{**TINY, "template_points": 4})


def test_a_checkpoint_inside_the_first_epoch_keeps_the_collected_objects():
    from geo3d.apps.assembly import AssemblyModule
    from torch.utils.data import default_collate

    data = ToyParts(6, max_parts=3, num_points=24, seed=0)
    model = AssemblyModule(**TINY)
    batch = default_collate([data[i] for i in range(3)])
    batch["index"] = torch.tensor([4, 0, 2])
    model._collect_templates(batch)
    model._collect_templates(batch)  # seen again: kept once
    ckpt: dict = {}
    model.on_save_checkpoint(ckpt)
    assert "assembly_templates" not in ckpt
    assert ckpt["assembly_templates_partial"]["index"][:, 1].tolist() == [0, 2, 4]
    resumed = AssemblyModule(**TINY)
    resumed.on_load_checkpoint(ckpt)
    assert resumed.template_bank is None
    assert sorted(resumed._template_clouds) == [(0, 0, 0), (0, 2, 0), (0, 4, 0)]
    resumed._finish_templates()
    assert resumed.template_bank is not None and len(resumed.template_bank) == 3


def test_api_uses_the_checkpoint_bank(tmp_path, bank):
    from geo3d.apps.assembly import AssemblyModule, assemble

    pieces, pts, _ = _fractured_chair()
    rng = np.random.default_rng(3)
    files, moves = [], []
    for i, m in enumerate(pieces):
        R, u = _motion(rng)
        g = np.eye(4)
        g[:3, :3], g[:3, 3] = R, u
        path = tmp_path / f"piece_{i}.obj"
        m.copy().apply_transform(g).export(path)
        files.append(path)
        moves.append(g)
    model = AssemblyModule(**{**TINY, "desc_dim": 8}).eval()
    model.template_bank = bank
    T = assemble(files, model, generator=torch.Generator().manual_seed(0)).numpy()
    for i in range(2):  # T[i] g_i = identity: each piece back in the generator's frame
        back = pts[i] @ (T[i] @ moves[i])[:3, :3].T + (T[i] @ moves[i])[:3, 3]
        assert np.abs(back - pts[i]).max() < 0.02
    # no bank: same relative poses, the frame from the network's anchor pose, and a warning
    model.template_bank = None
    with pytest.warns(UserWarning, match="no template bank"):
        T0 = assemble(files, model, generator=torch.Generator().manual_seed(0)).numpy()
    rel = np.linalg.inv(T[0]) @ T[1]
    assert np.abs(np.linalg.inv(T0[0]) @ T0[1] - rel).max() < 1e-6


def test_cli_predict_names_the_frame(tmp_path, bank):
    import json

    from geo3d.apps.assembly import AssemblyModule

    from geo3d.cli import main as geo3d_main

    pieces, pts, _ = _fractured_chair()
    files = []
    for i, m in enumerate(pieces):
        files.append(str(tmp_path / f"p{i}.obj"))
        m.export(files[-1])
    model = AssemblyModule(**{**TINY, "desc_dim": 8})
    for with_bank in (True, False):
        ck = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
        if with_bank:
            ck["assembly_templates"] = bank.state()
        path = tmp_path / f"m{int(with_bank)}.ckpt"
        torch.save(ck, path)
        out = tmp_path / f"o{int(with_bank)}.json"
        assert geo3d_main(["assembly", "predict", "--checkpoint", str(path), "--pieces", *files,
                           "--out", str(out)]) == 0
        got = json.loads(out.read_text())
        assert got["method"] == "fracture_registration"
        assert got["frame"] == ("templates" if with_bank else "network_anchor")
        if with_bank:  # the pieces were given in the generator's frame: identity poses
            for i in range(2):
                T = np.asarray(got["poses"][i])
                assert np.abs(pts[i] @ T[:3, :3].T + T[:3, 3] - pts[i]).max() < 0.02
