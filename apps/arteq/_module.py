"""LightningModule for ArtEq: training losses, per-condition evaluation, pictures, results.

Losses (weights as in the reference release, HavenFeng/ArtEq ``train.py``):
segmentation NLL (5), per-part global rotation MSE (5), betas MSE (1), body-model joints
MSE (100; smplx's joint set: 45 for an official SMPL file, 29 for the tiny and Anny-derived
bodies), vertices MSE (100), vertex normals MSE (1), marker vertices MSE (200) and part
centroids MSE (100). Meshes are posed without translation (the network predicts none: it
works on centred points). The reference computes the rotation term on batch element 0 only;
here it is averaged over the whole batch. Its 67 marker vertices are indices into SMPL's
mesh; for any topology this module picks ``num_markers`` template vertices by farthest
point sampling instead (deterministic).

During the first ``gt_seg_epochs`` epochs the per-part pooling uses the ground-truth
segmentation (as the reference does for its first epoch); ``gt_seg_epochs=-1`` pools with it
throughout training (the pose and shape heads then always see true parts; the segmentation
head keeps its own loss and provides the pooling at test time).

Evaluation (val: one loader; test: one loader per condition of the data module, see
:data:`geo3d.apps.arteq._data.CONDITIONS`): the network output is decoded to a posed body
with translation (:func:`geo3d.apps.arteq._fit.decode`) and compared with the ground-truth
body: V2V (cm, mean vertex distance, no alignment), MPJPE over the 24 SMPL joints (cm) and
point part accuracy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from geo3d._atomic import atomic_write_text

__all__ = ["ArtEqModule", "LOSS_WEIGHTS", "vertex_normals", "farthest_vertices"]

#: Reference loss weights (HavenFeng/ArtEq).
LOSS_WEIGHTS = {"seg": 5.0, "rot": 5.0, "betas": 1.0, "joints": 100.0, "vertices": 100.0,
                "normals": 1.0, "markers": 200.0, "centroids": 100.0}


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals, shape :math:`(B, V, 3)` from ``vertices (B, V, 3)``
    and ``faces (F, 3)``."""
    tri = vertices[:, faces]  # (B, F, 3, 3)
    n = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])
    out = torch.zeros_like(vertices)
    for k in range(3):
        out = out.index_add(1, faces[:, k], n)
    return out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def farthest_vertices(vertices: Tensor, k: int) -> Tensor:
    """``k`` vertex indices by farthest point sampling from vertex 0 (deterministic)."""
    V = vertices.shape[0]
    k = min(k, V)
    idx = torch.zeros(k, dtype=torch.long)
    d = (vertices - vertices[0]).norm(dim=-1)
    for i in range(1, k):
        idx[i] = int(d.argmax())
        d = torch.minimum(d, (vertices - vertices[idx[i]]).norm(dim=-1))
    return idx


class ArtEqModule(L.LightningModule):
    """Trains :class:`~geo3d.apps.arteq._model.ArtEqNet` on body scans.

    Args:
        backbone: ``"vn"``, ``"vn_dgcnn"``, ``"tfn"`` or ``"epn"`` (equivariant; ``"epn"``
            for the 60 icosahedral rotations), ``"pointnet"`` or ``"dgcnn"``
            (baselines); see :class:`~geo3d.apps.arteq._model.ArtEqNet`.
        net: other :class:`ArtEqNet` keyword arguments (``k``, ``feat_dim``, ``hidden``,
            ``d_model``, ``num_layers``, ``num_heads``, ...).
        body_model: body model of the data (``"anny"``, ``"tiny"`` or a path; linked to
            ``data.body_model`` by the CLI).
        gender: for a folder ``body_model``.
        num_betas: shape coefficients (linked to ``data.num_betas``).
        lr, weight_decay: Adam settings (reference: 1e-4, 0).
        gt_seg_epochs: epochs that pool parts with the ground-truth segmentation (``-1``:
            every training step).
        w_seg, w_rot, w_betas, w_joints, w_vertices, w_normals, w_markers, w_centroids:
            loss weights (defaults: :data:`LOSS_WEIGHTS`).
        num_markers: marker vertices of the marker loss.
        num_pictures: scans drawn per test condition (and for validation, last epoch).
        icp_steps: translation-only ICP updates of :func:`~geo3d.apps.arteq._fit.decode` when
            evaluating (0: centroid match only; each step costs a closest-point search).
        seed: unused by the module itself; kept for the record in results.

    Raises:
        ValueError: naming the argument: ``gt_seg_epochs`` below -1; ``lr`` not a positive
            finite number; ``weight_decay`` or a loss weight negative, NaN or infinite;
            ``num_markers`` < 1, ``num_pictures``/``icp_steps`` < 0, or any of these or
            ``seed`` not an int (bools refused); bad ``net`` options (see ArtEqNet).
    """

    def __init__(
        self,
        backbone: str = "vn",
        net: dict[str, Any] | None = None,
        body_model: str = "anny",
        gender: str = "neutral",
        num_betas: int = 10,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        gt_seg_epochs: int = 1,
        w_seg: float = 5.0,
        w_rot: float = 5.0,
        w_betas: float = 1.0,
        w_joints: float = 100.0,
        w_vertices: float = 100.0,
        w_normals: float = 1.0,
        w_markers: float = 200.0,
        w_centroids: float = 100.0,
        num_markers: int = 67,
        num_pictures: int = 2,
        icp_steps: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from geo3d.apps.arteq._model import ArtEqNet

        self.save_hyperparameters()
        self.net = ArtEqNet(backbone, num_betas, **dict(net or {}))
        if isinstance(gt_seg_epochs, bool) or not isinstance(gt_seg_epochs, int) or \
                gt_seg_epochs < -1:
            raise ValueError(f"gt_seg_epochs: expected a non-negative int or -1 (always), "
                             f"got {gt_seg_epochs!r}")
        for name, v in (("lr", lr), ("weight_decay", weight_decay), ("w_seg", w_seg),
                        ("w_rot", w_rot), ("w_betas", w_betas), ("w_joints", w_joints),
                        ("w_vertices", w_vertices), ("w_normals", w_normals),
                        ("w_markers", w_markers), ("w_centroids", w_centroids)):
            positive = name == "lr"
            if isinstance(v, bool) or not isinstance(v, (int, float)) or \
                    not (0 < v if positive else 0 <= v) or not v < float("inf"):
                what = "a positive finite number" if positive else "a finite number >= 0"
                raise ValueError(f"{name}: expected {what}, got {v!r}")
        for name, v, low in (("num_markers", num_markers, 1), ("num_pictures", num_pictures, 0),
                             ("icp_steps", icp_steps, 0), ("seed", seed, None)):
            if isinstance(v, bool) or not isinstance(v, int) or (low is not None and v < low):
                what = "an int" if low is None else f"an int >= {low}"
                raise ValueError(f"{name}: expected {what}, got {v!r}")
        self._body_cache: list[Any] = []  # not a submodule: kept out of the state dict
        self._sums: dict[str, Tensor] = {}
        self._pictures: list[dict[str, Any]] = []
        self.last_results: dict[str, Any] = {}
        self.eval_seconds: dict[str, float] = {}

    # ------------------------------------------------------------------ body model
    def body(self) -> Any:
        """The smplx body model (float32, on this module's device), loaded once."""
        if not self._body_cache:
            from geo3d.apps.arteq._data import load_body

            from geo3d.body import arteq_part_labels

            h = self.hparams
            m = load_body(h.body_model, h.gender, h.num_betas, torch.float32)
            m.requires_grad_(False)
            lab = arteq_part_labels(m.lbs_weights.double())
            markers = farthest_vertices(m.v_template.double(), int(h.num_markers))
            self._body_cache = [m, lab, markers]
        m = self._body_cache[0]
        if m.v_template.device != self.device:
            m.to(self.device)
            self._body_cache[1] = self._body_cache[1].to(self.device)
            self._body_cache[2] = self._body_cache[2].to(self.device)
        return m

    def pose(self, betas: Tensor, global_orient: Tensor, body_pose: Tensor,
             transl: Tensor | None = None) -> Any:
        """Pose the body model: ``global_orient (B, 3, 3)``, ``body_pose (B, 23, 3, 3)``."""
        m = self.body()
        B = betas.shape[0]
        if transl is None:
            transl = betas.new_zeros(B, 3)
        return m(betas=betas, global_orient=global_orient.unsqueeze(1), body_pose=body_pose,
                 transl=transl, pose2rot=False)

    # ------------------------------------------------------------------ training
    def forward(self, points: Tensor, part_labels: Tensor | None = None) -> dict[str, Tensor]:
        return self.net(points, part_labels)

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader if self.trainer is not None else None
        ds = getattr(loader, "dataset", None)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(int(self.current_epoch))

    def losses(self, out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every loss term (unweighted) of a batch; see the module docs."""
        from geo3d.body import SMPL_PARENTS, local_to_global

        m = self.body()
        lab_v, markers = self._body_cache[1], self._body_cache[2]
        P = out["part_logits"].shape[-1]
        terms = {"seg": F.cross_entropy(out["part_logits"].reshape(-1, P),
                                        batch["labels"].reshape(-1))}
        gt_local = torch.cat([batch["global_orient"].unsqueeze(1), batch["body_pose"]], 1)
        with torch.no_grad():
            gt_glob = local_to_global(gt_local.double(), SMPL_PARENTS).to(gt_local.dtype)
        # all batch elements (the reference used element 0 only)
        terms["rot"] = F.mse_loss(out["part_rot"], gt_glob[:, :P])
        terms["betas"] = F.mse_loss(out["betas"], batch["betas"])
        pred = self.pose(out["betas"], out["global_orient"], out["body_pose"])
        with torch.no_grad():
            gt = self.pose(batch["betas"], batch["global_orient"], batch["body_pose"])
        terms["joints"] = F.mse_loss(pred.joints, gt.joints)
        terms["vertices"] = F.mse_loss(pred.vertices, gt.vertices)
        faces = m.faces_tensor.long()
        with torch.no_grad():
            gt_n = vertex_normals(gt.vertices, faces)
        terms["normals"] = F.mse_loss(vertex_normals(pred.vertices, faces), gt_n)
        terms["markers"] = F.mse_loss(pred.vertices[:, markers], gt.vertices[:, markers])
        onehot = F.one_hot(lab_v, P).to(pred.vertices.dtype)  # (V, P)
        cnt = onehot.sum(0).clamp_min(1.0)
        cen_p = torch.einsum("vp,bvc->bpc", onehot, pred.vertices) / cnt[:, None]
        cen_g = torch.einsum("vp,bvc->bpc", onehot, gt.vertices) / cnt[:, None]
        present = onehot.sum(0) > 0
        terms["centroids"] = F.mse_loss(cen_p[:, present], cen_g[:, present])
        return terms

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        n_gt = int(self.hparams.gt_seg_epochs)
        use_gt = n_gt == -1 or self.current_epoch < n_gt
        out = self(batch["points"], batch["labels"] if use_gt else None)
        terms = self.losses(out, batch)
        h = self.hparams
        loss = sum(float(getattr(h, f"w_{k}")) * v for k, v in terms.items())
        B = batch["points"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        for k, v in terms.items():
            self.log(f"train/{k}", v, batch_size=B)
        return loss

    def _nonfinite_grad(self) -> bool:
        return any(p.grad is not None and not bool(torch.isfinite(p.grad).all())
                   for p in self.parameters())

    def _count_skipped(self) -> None:
        self.skipped_steps = getattr(self, "skipped_steps", 0) + 1
        self.log("train/skipped_steps", float(self.skipped_steps))

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Any = None) -> None:
        # a step with a non-finite gradient would poison every weight (and the next forward
        # fails). Zeroing its gradients is not enough: Adam still applies its momentum (and
        # weight decay) to every weight. So the closure (training_step + backward) runs
        # first, and on a non-finite gradient optimizer.step() is not called at all: weights
        # and optimizer state stay as they were; counted in train/skipped_steps. With a
        # GradScaler (16-bit AMP) Lightning's own path is kept: the scaler skips such steps
        # itself and must see them to lower its scale.
        plugin = getattr(self._trainer, "precision_plugin", None)
        if optimizer_closure is None or getattr(plugin, "scaler", None) is not None:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
            return
        loss = optimizer_closure()
        if self._nonfinite_grad():
            optimizer.zero_grad()
            self._count_skipped()
            return
        optimizer.step(closure=lambda: loss)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # second line of defence (e.g. the AMP path above): zero non-finite gradients
        if self._nonfinite_grad():
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.zero_()
            self._count_skipped()

    # ------------------------------------------------------------------ evaluation
    def _condition(self, stage: str, dataloader_idx: int) -> str:
        if stage != "test":
            return stage
        from geo3d.apps.arteq._data import CONDITIONS

        dm = getattr(self.trainer, "datamodule", None) if self.trainer is not None else None
        conds = getattr(dm, "conditions", CONDITIONS)
        return conds[dataloader_idx] if dataloader_idx < len(conds) else f"set{dataloader_idx}"

    def evaluate_batch(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Any, Any,
                                                                   Tensor]:
        """Per-scan metrics of one batch: ``({v2v_cm, mpjpe_cm, part_acc} (B,), fit, gt,
        predicted labels)``."""
        from geo3d.apps.arteq._fit import decode

        from geo3d.eval import mpjpe, part_accuracy_points, v2v_error

        out = self(batch["points"])
        fit = decode(out, self.body(), batch["points"], icp_steps=int(self.hparams.icp_steps))
        gt = self.pose(batch["betas"], batch["global_orient"], batch["body_pose"],
                       batch["transl"])
        pred_lab = out["part_logits"].argmax(-1)
        m = {
            "v2v_cm": 100.0 * v2v_error(fit.vertices.to(gt.vertices.dtype), gt.vertices),
            "mpjpe_cm": 100.0 * mpjpe(fit.joints[:, :24].to(gt.joints.dtype), gt.joints[:, :24]),
            "part_acc": part_accuracy_points(pred_lab, batch["labels"]),
        }
        return m, fit, gt, pred_lab

    def _eval_step(self, batch: dict[str, Tensor], stage: str, dataloader_idx: int) -> None:
        cond = self._condition(stage, dataloader_idx)
        t0 = time.perf_counter()
        m, fit, gt, pred_lab = self.evaluate_batch(batch)
        self.eval_seconds[cond] = self.eval_seconds.get(cond, 0.0) + time.perf_counter() - t0
        for k, v in m.items():
            key = f"{cond}/{k}"
            self._sums[key] = self._sums.get(key, 0.0) + v.detach().double().sum()
        self._sums[f"{cond}/count"] = self._sums.get(f"{cond}/count", 0.0) + torch.tensor(
            float(batch["points"].shape[0]), dtype=torch.float64, device=self.device)
        n_have = sum(p["condition"] == cond for p in self._pictures)
        if self._want_pictures(stage) and n_have < int(self.hparams.num_pictures):
            for i in range(min(batch["points"].shape[0], int(self.hparams.num_pictures) - n_have)):
                self._pictures.append({
                    "condition": cond, "index": int(batch["index"][i]),
                    "points": batch["points"][i].detach().cpu(),
                    "pred_labels": pred_lab[i].detach().cpu(),
                    "gt_labels": batch["labels"][i].detach().cpu(),
                    "fit_vertices": fit.vertices[i].detach().cpu(),
                    "gt_vertices": gt.vertices[i].detach().cpu(),
                    "v2v_cm": float(m["v2v_cm"][i]),
                })

    def _want_pictures(self, stage: str) -> bool:
        if self.trainer is None or self.trainer.sanity_checking or self.global_rank != 0:
            return False
        if stage == "test" or self.trainer.state.fn == "validate":  # `geo3d arteq validate`
            return True
        max_epochs = self.trainer.max_epochs
        return max_epochs is not None and self.current_epoch == max_epochs - 1

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int,
                  dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", dataloader_idx)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int,
                     dataloader_idx: int = 0) -> dict[str, Tensor]:
        from geo3d.apps.arteq._fit import decode

        out = self(batch["points"])
        fit = decode(out, self.body(), batch["points"], icp_steps=int(self.hparams.icp_steps))
        return {"index": batch["index"].cpu(), "betas": fit.betas.detach().cpu(),
                "global_orient": fit.global_orient.detach().cpu(),
                "body_pose": fit.body_pose.detach().cpu(), "transl": fit.transl.detach().cpu()}

    def on_validation_epoch_start(self) -> None:
        self._sums, self._pictures, self.eval_seconds = {}, [], {}

    on_test_epoch_start = on_validation_epoch_start

    def _finish(self, stage: str) -> None:
        if not self._sums:
            return
        keys = sorted(self._sums)
        vec = torch.stack([torch.as_tensor(self._sums[k]).to(self.device) for k in keys])
        if self.trainer is not None and self.trainer.world_size > 1:
            vec = self.trainer.strategy.reduce(vec, reduce_op="sum")
        sums = dict(zip(keys, vec.tolist(), strict=True))
        results: dict[str, Any] = {}
        for key, total in sums.items():
            cond, metric = key.split("/")
            if metric == "count":
                continue
            n = max(sums[f"{cond}/count"], 1.0)
            results.setdefault(cond, {"num_scans": int(sums[f"{cond}/count"])})[metric] = \
                total / n
            name = f"{stage}/{metric}" if cond == stage else f"{stage}/{cond}/{metric}"
            self.log(name, total / n, prog_bar=(metric == "v2v_cm"),  # val/v2v_cm, not
                     add_dataloader_idx=False, rank_zero_only=True)  # val/val/v2v_cm
        for cond, r in results.items():
            r["sec_per_scan"] = self.eval_seconds.get(cond, 0.0) / max(r["num_scans"], 1)
        self.last_results = results
        if self.trainer is None or self.trainer.sanity_checking or self.global_rank != 0:
            return
        out_dir = self._out_dir()
        if out_dir is None or not (stage == "test" or self._want_pictures("val")):
            return
        from geo3d._app import evaluated_progress

        epoch, step = evaluated_progress(self)  # test --ckpt_path X: X's, not 0/0
        payload = {"stage": stage, "epoch": epoch,
                   "global_step": step, "hparams": dict(self.hparams),
                   "params": self.net.num_parameters(), "units": "v2v_cm/mpjpe_cm: cm; "
                   "part_acc: fraction; sec_per_scan: forward + decode, wall clock",
                   "metrics": results}
        atomic_write_text(out_dir / f"results_{stage}.json",
                          json.dumps(payload, indent=2, default=str))
        if self._pictures:
            from geo3d.apps.arteq._viz import save_pictures

            save_pictures(self._pictures, self.body().faces_tensor.cpu(),
                          out_dir / f"pictures_{stage}")

    def _out_dir(self) -> Path | None:
        if self.trainer is None:
            return None
        d = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(d) if d else None

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # what `load_model` needs to rebuild the bare net, and the body it was trained on
        checkpoint["config"] = dict(self.net.config)
        checkpoint["arteq"] = {"body_model": str(self.hparams.body_model),
                               "num_betas": int(self.hparams.num_betas),
                               "gender": str(self.hparams.gender)}
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        n = getattr(getattr(dm, "hparams", None), "num_points", None)
        if isinstance(n, int):  # the scan density the net learned (fit_smpl resamples to it)
            checkpoint["arteq"]["num_points"] = n

    def configure_optimizers(self) -> Any:
        h = self.hparams
        return torch.optim.Adam(self.parameters(), lr=float(h.lr),
                                weight_decay=float(h.weight_decay))
