"""LightningModule for shape assembly (equivariant model or Global baseline)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from geo3d.apps.assembly._checkpoint import atomic_write_text
from geo3d.apps.assembly._losses import assembly_loss
from geo3d.apps.assembly._model import EquivariantAssembler, GlobalAssembler
from torch import Tensor

from geo3d.eval import anchor_parts, assembly_metrics

__all__ = ["AssemblyModule", "PROTOCOLS", "METRICS"]

PROTOCOLS = ("absolute", "anchor")
METRICS = (
    "part_acc", "shape_cd", "rmse_r_euler", "mae_r_euler", "rmse_r_geo", "mae_r_geo",
    "rmse_t", "mae_t", "rmse_r_euler_pooled", "rmse_t_pooled",
)


def random_part_rotations(
    points: Tensor, rot: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Rotate every part by its own random ``g`` and keep the ground truth consistent.

    ``p' = g p`` and ``rot' = rot gᵀ`` so that ``rot' p' + trans = rot p + trans``.

    Args:
        points: shape :math:`(B, P, N, 3)`; rot: shape :math:`(B, P, 3, 3)`.

    Returns:
        ``(points', rot', g)`` with ``g`` of shape :math:`(B, P, 3, 3)`.
    """
    from geo3d.rotations import random_rotation_matrix

    B, P = points.shape[:2]
    g = random_rotation_matrix(B, P, generator=generator, dtype=points.dtype)
    g = g.to(points.device)
    return points @ g.transpose(-1, -2), rot @ g.transpose(-1, -2), g


class AssemblyModule(L.LightningModule):
    """Shape assembly: predicts one SE(3) pose per part of a fractured object.

    Args:
        arch: ``"equivariant"`` (:class:`EquivariantAssembler`) or ``"global"``
            (:class:`GlobalAssembler`, the benchmark baseline).
        encoder: ``"vn_dgcnn"``/``"vn_pointnet"`` (equivariant) or ``"dgcnn"``/``"pointnet"``.
        feat_dim: encoder width; k: DGCNN neighbours; hidden: encoder block widths.
        batch_norm: batch norm inside the encoder.
        d_model, num_layers, num_heads: pose head / cross-part attention sizes.
        rot_readout: equivariant rotation readout, ``"steer"``, ``"frame"`` or ``"pca"``
            (see :class:`EquivariantAssembler`).
        hypotheses: pose hypotheses per part (``"pca"`` readout; trained winner-takes-all
            with a score cross-entropy, see :func:`assembly_loss`).
        dynamic_graph: (equivariant arch only) VN-DGCNN recomputes its kNN graph from the
            features of every block (``False``: reuses the coordinate graph; see
            :class:`EquivariantAssembler`).
        lr, weight_decay: Adam(W) settings; cosine decay to ``lr * min_lr_ratio`` over the run.
        rot_augment: randomly re-rotate every training part (needed by ``global``; the
            equivariant model does not need it).
        w_rot, w_trans, w_part_cd, w_shape_cd: loss weights.
        loss_frame: ``"absolute"`` or ``"anchor"`` (see :func:`assembly_loss`).
        num_pictures: validation/test objects drawn as PNG + PLY (rank 0, last epoch / test).
        seed: seed of the augmentation generator.
    """

    def __init__(
        self,
        arch: str = "equivariant",
        encoder: str = "vn_dgcnn",
        feat_dim: int = 64,
        k: int = 10,
        hidden: list[int] | None = None,
        batch_norm: bool = True,
        d_model: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        rot_readout: str = "steer",
        dynamic_graph: bool = True,
        hypotheses: int = 1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        min_lr_ratio: float = 0.01,
        rot_augment: bool = False,
        w_rot: float = 1.0,
        w_trans: float = 1.0,
        w_part_cd: float = 1.0,
        w_shape_cd: float = 1.0,
        loss_frame: str = "absolute",
        num_pictures: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if arch == "equivariant":
            self.net = EquivariantAssembler(
                encoder, feat_dim, k, d_model, num_layers, num_heads, 0.0, hidden, batch_norm,
                rot_readout, dynamic_graph, hypotheses,
            )
        elif arch == "global":
            self.net = GlobalAssembler(encoder, feat_dim, k, d_model, hidden, batch_norm)
        else:
            raise ValueError(f"arch: expected 'equivariant' or 'global', got {arch!r}")
        if loss_frame not in PROTOCOLS:
            raise ValueError(f"loss_frame: expected one of {PROTOCOLS}, got {loss_frame!r}")
        self._gen: torch.Generator | None = None
        self._eval_sums: dict[str, Tensor] = {}
        self._pictures: list[dict[str, Any]] = []
        self.last_results: dict[str, Any] = {}
        # training throughput bookkeeping (forward + backward + optimiser step only)
        self.train_seconds = 0.0
        self.train_parts = 0
        self._t0 = 0.0

    # ------------------------------------------------------------------ forward / steps
    def forward(self, points: Tensor, valid: Tensor) -> dict[str, Tensor]:
        """Poses ``rot (B, P, 3, 3)``, ``trans (B, P, 3)`` of parts ``points (B, P, N, 3)``."""
        return self.net(points, valid)

    def _generator(self) -> torch.Generator:
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(int(self.hparams.seed) + self.global_rank)
        return self._gen

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader if self.trainer is not None else None
        ds = getattr(loader, "dataset", None)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(int(self.current_epoch))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.train_seconds += time.perf_counter() - self._t0
        self.train_parts += int(batch["valid"].sum())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        points, valid, rot = batch["points"], batch["valid"].bool(), batch["rot"]
        if self.hparams.rot_augment:
            points, rot, _ = random_part_rotations(points, rot, self._generator())
        pred = self(points, valid)
        h = self.hparams
        loss, terms = assembly_loss(
            points, valid, pred["rot"], pred["trans"], rot, batch["trans"],
            h.w_rot, h.w_trans, h.w_part_cd, h.w_shape_cd, h.loss_frame,
            hypotheses=pred if "hyp_rot" in pred else None,
        )
        B = points.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        for k, v in terms.items():
            self.log(f"train/{k}", v, batch_size=B)
        self.log("train/parts", valid.sum().to(torch.float32), reduce_fx="sum", batch_size=B)
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        points, valid = batch["points"], batch["valid"].bool()
        pred = self(points, valid)
        anchor = anchor_parts(points, valid)
        for proto in PROTOCOLS:
            m = assembly_metrics(
                points, valid, pred["rot"], pred["trans"], batch["rot"], batch["trans"],
                protocol=proto, anchor=anchor, reduction="none",
            )
            for k, v in m.items():
                key = f"{proto}/{k}"
                self._eval_sums[key] = self._eval_sums.get(key, 0.0) + v.double().sum()
        self._eval_sums["count"] = self._eval_sums.get("count", 0.0) + torch.tensor(
            float(points.shape[0]), dtype=torch.float64, device=points.device
        )
        if len(self._pictures) < int(self.hparams.num_pictures) and self._want_pictures(stage):
            n = min(points.shape[0], int(self.hparams.num_pictures) - len(self._pictures))
            for i in range(n):
                self._pictures.append({
                    "name": str(batch["name"][i]) if "name" in batch else f"object_{i}",
                    "points": points[i].detach().cpu(),
                    "valid": valid[i].cpu(),
                    "pred_rot": pred["rot"][i].detach().cpu(),
                    "pred_trans": pred["trans"][i].detach().cpu(),
                    "gt_rot": batch["rot"][i].detach().cpu(),
                    "gt_trans": batch["trans"][i].detach().cpu(),
                })

    def _want_pictures(self, stage: str) -> bool:
        if self.trainer is None or self.trainer.sanity_checking or self.global_rank != 0:
            return False
        if stage == "test":
            return True
        max_epochs = self.trainer.max_epochs
        return max_epochs is not None and self.current_epoch == max_epochs - 1

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        pred = self(batch["points"], batch["valid"].bool())
        return {
            "name": list(batch.get("name", [])),
            "valid": batch["valid"].bool().cpu(),
            "rot": pred["rot"].detach().cpu(),
            "trans": pred["trans"].detach().cpu(),
        }

    def on_validation_epoch_start(self) -> None:
        self._eval_sums, self._pictures = {}, []

    on_test_epoch_start = on_validation_epoch_start

    def _finish_eval(self, stage: str) -> None:
        if not self._eval_sums:
            return
        keys = sorted(self._eval_sums)
        vec = torch.stack([torch.as_tensor(self._eval_sums[k]).to(self.device) for k in keys])
        if self.trainer is not None and self.trainer.world_size > 1:
            vec = self.trainer.strategy.reduce(vec, reduce_op="sum")
        sums = dict(zip(keys, vec.tolist(), strict=True))
        count = sums.pop("count")
        results: dict[str, Any] = {"num_objects": int(count)}
        for key, total in sums.items():
            proto, metric = key.split("/")
            results.setdefault(proto, {})[metric] = total / max(count, 1.0)
            self.log(f"{stage}/{key}", total / max(count, 1.0), prog_bar=(key == "anchor/part_acc"),
                     sync_dist=False, rank_zero_only=True)
        self.last_results = results
        if self.trainer is None or self.trainer.sanity_checking or self.global_rank != 0:
            return
        out_dir = self._out_dir()
        if out_dir is not None and (stage == "test" or self._want_pictures("val")):
            payload = {"stage": stage, "epoch": int(self.current_epoch),
                       "global_step": int(self.global_step), "hparams": dict(self.hparams),
                       "metrics": results}
            atomic_write_text(out_dir / f"results_{stage}.json", json.dumps(payload, indent=2))
            if self._pictures:
                from geo3d.apps.assembly._viz import save_pictures

                save_pictures(self._pictures, out_dir / f"pictures_{stage}")

    def _out_dir(self) -> Path | None:
        if self.trainer is None:
            return None
        d = self.trainer.log_dir or self.trainer.default_root_dir
        return Path(d) if d else None

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        h = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self.trainer else 1
        ratio = float(h.min_lr_ratio)

        def schedule(step: int) -> float:
            p = min(step / total, 1.0)
            return ratio + (1.0 - ratio) * 0.5 * (1.0 + math.cos(math.pi * p))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

