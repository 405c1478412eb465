"""ArtEqModule losses and evaluation against the ground truth (tiny body, no training)."""

from __future__ import annotations

import pytest
import torch
from geo3d.apps.arteq._data import ArtEqDataModule
from geo3d.apps.arteq._module import ArtEqModule, farthest_vertices, vertex_normals

from geo3d.body import SMPL_PARENTS, local_to_global

NET = {"k": 4, "feat_dim": 4, "hidden": [4], "d_model": 8, "num_layers": 1, "num_heads": 2,
       "rot_hidden": 4}


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict[str, torch.Tensor]:
    dm = ArtEqDataModule(root=str(tmp_path_factory.mktemp("arteq_mod")), body_model="tiny",
                         num_points=64, train_subjects=2, val_subjects=1, test_subjects=1,
                         train_motions=2, val_motions=1, test_motions=1, frames_per_motion=2,
                         frame_stride=1, ood_poses=1, partial_resolution=32,
                         test_conditions=["in_dist"])
    ds = dm.dataset("train")  # Haar-rotated items
    return {k: torch.stack([ds[i][k] for i in range(3)]) for k in ds[0]}


def _oracle(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    local = torch.cat([batch["global_orient"][:, None], batch["body_pose"]], 1)
    glob = local_to_global(local.double(), SMPL_PARENTS).float()
    return {"part_logits": 50.0 * torch.nn.functional.one_hot(batch["labels"], 22).float(),
            "part_rot": glob[:, :22], "global_orient": batch["global_orient"],
            "body_pose": batch["body_pose"], "betas": batch["betas"]}


def test_ground_truth_prediction_has_zero_loss_and_zero_error(batch):
    m = ArtEqModule("pointnet", NET, body_model="tiny", icp_steps=0)
    terms = m.losses(_oracle(batch), batch)
    assert set(terms) == {"seg", "rot", "betas", "joints", "vertices", "normals", "markers",
                          "centroids"}
    for k, v in terms.items():
        assert float(v) < 1e-9, (k, float(v))
    # the evaluation decodes the oracle into the scan's frame: V2V ~ the translation
    # estimate's error only (centroid match on a 64-point noisy scan: a few cm on this body)
    m.forward = lambda points, part_labels=None: _oracle(batch)  # type: ignore[method-assign]
    metrics, fit, gt, labels = m.evaluate_batch(batch)
    torch.testing.assert_close(metrics["part_acc"], torch.ones(3))
    centred = (fit.vertices - fit.vertices.mean(1, keepdim=True)) - \
        (gt.vertices - gt.vertices.mean(1, keepdim=True))
    assert float(centred.abs().max()) < 1e-4  # same body up to translation


def test_rotation_loss_covers_every_batch_element(batch):
    # the reference computed it on batch element 0 only: a wrong rotation of element 2
    # must count
    m = ArtEqModule("pointnet", NET, body_model="tiny")
    out = _oracle(batch)
    out["part_rot"] = out["part_rot"].clone()
    out["part_rot"][2, 5] = -out["part_rot"][2, 5]
    # 9 entries of one of 3 * 22 matrices changed by 2x their value: MSE = 4 * 3 / (66 * 9)
    want = 4.0 * float(out["part_rot"][2, 5].square().sum()) / (3 * 22 * 9)
    assert float(m.losses(out, batch)["rot"]) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("gt_seg_epochs, epochs, want_gt", [
    (1, (0, 1), (True, False)),  # the reference: ground-truth pooling in the first epoch only
    (-1, (0, 1, 7), (True, True, True)),  # every training step
])
def test_training_pools_with_ground_truth_labels_in_the_configured_epochs(
        batch, monkeypatch, gt_seg_epochs, epochs, want_gt):
    m = ArtEqModule("pointnet", NET, body_model="tiny", gt_seg_epochs=gt_seg_epochs)
    seen = []
    real = m.net.forward

    def spy(points, part_labels=None, **kw):
        seen.append(part_labels)
        return real(points, part_labels, **kw)

    monkeypatch.setattr(m.net, "forward", spy)
    monkeypatch.setattr(type(m), "current_epoch", property(lambda self: self._epoch))
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    for epoch in epochs:
        m._epoch = epoch
        m.training_step(batch, 0)
    assert len(seen) == len(epochs)
    for s, gt in zip(seen, want_gt, strict=True):
        assert torch.equal(s, batch["labels"]) if gt else s is None
    # evaluation never sees labels (the segmentation head pools at test time)
    m.evaluate_batch(batch)
    assert seen[-1] is None


def test_non_finite_gradients_skip_the_step(monkeypatch):
    m = ArtEqModule("pointnet", NET, body_model="tiny")
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    params = [p for p in m.parameters()]
    for p in params:
        p.grad = torch.ones_like(p)
    m.on_before_optimizer_step(None)  # finite: untouched
    assert all(bool((p.grad == 1).all()) for p in params)
    params[3].grad[0] = float("nan")
    m.on_before_optimizer_step(None)
    assert all(bool((p.grad == 0).all()) for p in params) and m.skipped_steps == 1


def test_vertex_normals_of_a_cube_point_outward():
    import trimesh

    box = trimesh.creation.box((1.0, 1.0, 1.0))
    v = torch.as_tensor(box.vertices, dtype=torch.float64)[None]
    n = vertex_normals(v, torch.as_tensor(box.faces))
    # corners of a centred cube: outward normal along the corner direction
    want = v[0] / v[0].norm(dim=-1, keepdim=True)
    assert float((n[0] * want).sum(-1).min()) > 0.7
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(1, 8, dtype=torch.float64))


def test_farthest_vertices_are_spread_and_deterministic():
    x = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.1, 0, 0], [0.5, 0, 0]])
    assert farthest_vertices(x, 3).tolist() == [0, 1, 3]


def test_bad_hparams():
    with pytest.raises(ValueError, match="backbone"):
        ArtEqModule("transformer", NET, body_model="tiny")
    with pytest.raises(ValueError, match="gt_seg_epochs"):
        ArtEqModule("pointnet", NET, body_model="tiny", gt_seg_epochs=-2)
    with pytest.raises(ValueError, match="gt_seg_epochs"):
        ArtEqModule("pointnet", NET, body_model="tiny", gt_seg_epochs=True)
