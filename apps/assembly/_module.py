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
from geo3d.apps.assembly._losses import assembly_loss, correspondence_loss
from geo3d.apps.assembly._model import EquivariantAssembler, GlobalAssembler
from torch import Tensor

from geo3d._app import evaluated_progress
from geo3d.eval import anchor_parts, assembly_metrics

__all__ = ["AssemblyModule", "PROTOCOLS", "METRICS", "EVAL_METHODS", "MAX_COUNTED_PARTS"]

EVAL_METHODS = ("matching", "network", "fracture_registration")
#: part counts 1..MAX_COUNTED_PARTS get their own accuracy in the results (more: pooled
#: into the last bin)
MAX_COUNTED_PARTS = 20

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
        desc_dim: width of the correspondence head's per-point descriptors (0: no head;
            see :class:`EquivariantAssembler`).
        w_desc, w_frac: weights of the contrastive matching loss and of the
            fracture-surface BCE (:func:`correspondence_loss`).
        corr_radius: contact distance of the ground-truth correspondences (data units).
        corr_temperature: InfoNCE temperature.
        eval_methods: test-time pipelines evaluated at validation/test
            (:func:`geo3d.apps.assembly._pipeline.assemble_from_outputs`), the first is
            the primary one (``val/anchor/part_acc``, pictures, the results' top level);
            default ``["matching", "network"]`` with a correspondence head, else
            ``["network"]``. ``"fracture_registration"`` works on the batch's dense mesh
            samples with face normals when the data module provides them
            (``AssemblyDataModule(dense_points=M)``), else on the network's input points.
        val_methods: the pipelines run at validation (during training), same rules;
            default: ``eval_methods``. Validation then logs ``val_methods[0]`` under the
            plain names (``fracture_registration`` takes seconds per object and does not
            change with training except for the anchor's pose, so the configs validate
            the cheaper methods only).
        refine: run the pipeline's joint refinement after the spanning tree.
        eval_seed: seed of the pipeline's RANSAC generator (reset every evaluation).
        templates: put objects assembled by ``"fracture_registration"`` in the dataset's
            frame (absolute protocol) by registration to the training objects
            (:class:`~geo3d.apps.assembly._canonical.TemplateBank`, ``template_bank``)
            instead of by the network's pose of the anchor. The bank is collected from
            the training batches of the first epoch (the true poses; at its last batch,
            so the epoch's checkpoint has it) and stored in the checkpoint
            (``checkpoint["assembly_templates"]``); a checkpoint without one
            gets it from the data module's training split at evaluation
            (:meth:`ensure_templates`), and without either the anchor rule is used.
        template_points: points per training object in the bank (int >= 8).
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
        desc_dim: int = 0,
        w_desc: float = 1.0,
        w_frac: float = 1.0,
        corr_radius: float = 0.1,
        corr_temperature: float = 0.1,
        eval_methods: list[str] | None = None,
        val_methods: list[str] | None = None,
        refine: bool = True,
        eval_seed: int = 0,
        templates: bool = True,
        template_points: int = 512,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if arch == "equivariant":
            self.net = EquivariantAssembler(
                encoder, feat_dim, k, d_model, num_layers, num_heads, 0.0, hidden, batch_norm,
                rot_readout, dynamic_graph, hypotheses, desc_dim,
            )
        elif arch == "global":
            self.net = GlobalAssembler(encoder, feat_dim, k, d_model, hidden, batch_norm,
                                       desc_dim)
        else:
            raise ValueError(f"arch: expected 'equivariant' or 'global', got {arch!r}")
        if loss_frame not in PROTOCOLS:
            raise ValueError(f"loss_frame: expected one of {PROTOCOLS}, got {loss_frame!r}")
        if eval_methods is None:
            eval_methods = ["matching", "network"] if desc_dim else ["network"]
        eval_methods = list(eval_methods)
        if not eval_methods or any(m not in EVAL_METHODS for m in eval_methods):
            raise ValueError(f"eval_methods: expected a non-empty list of {EVAL_METHODS}, "
                             f"got {eval_methods!r}")
        self.eval_methods = eval_methods
        if val_methods is not None:
            val_methods = list(val_methods)
            if not val_methods or any(m not in EVAL_METHODS for m in val_methods):
                raise ValueError(f"val_methods: expected a non-empty list of {EVAL_METHODS}, "
                                 f"got {val_methods!r}")
        self.val_methods = val_methods if val_methods is not None else list(eval_methods)
        if not isinstance(template_points, int) or isinstance(template_points, bool) or \
                template_points < 8:
            raise ValueError(f"template_points: expected an int >= 8, got {template_points!r}")
        #: :class:`~geo3d.apps.assembly._canonical.TemplateBank` of the training objects
        self.template_bank: Any = None
        # (0, item index, 0), or (1, rank, running count) for items without an index
        self._template_clouds: dict[tuple[int, int, int], Tensor] = {}
        self._eval_gen: torch.Generator | None = None
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
        if self.hparams.templates and self.template_bank is None:
            self._collect_templates(batch)
            if self._trainer_attached() and self.trainer.is_last_batch:
                self._finish_templates()  # before the epoch-end checkpoint is written

    # ------------------------------------------------------------------ template bank
    def _collect_templates(self, batch: dict[str, Any]) -> None:
        """Keep each training object of the batch assembled at its true poses (reduced
        to ``template_points``), once per object (``batch["index"]``)."""
        from geo3d.apps.assembly._canonical import _sample, assembled_clouds

        clouds = assembled_clouds(batch["points"].detach().cpu(), batch["valid"].cpu(),
                                  batch["rot"].detach().cpu(), batch["trans"].detach().cpu())
        index = batch.get("index")
        for i, x in enumerate(clouds):
            key = (0, int(index[i]), 0) if index is not None else \
                (1, int(self.global_rank), len(self._template_clouds))
            if key not in self._template_clouds and x.shape[0] >= 4:
                self._template_clouds[key] = _sample(x, int(self.hparams.template_points))

    def _finish_templates(self) -> None:
        """Turn the clouds collected over the first epoch into the bank (all ranks')."""
        if self.template_bank is not None or not self._template_clouds:
            return
        from geo3d.apps.assembly._canonical import TemplateBank

        clouds = self._template_clouds
        if self._trainer_attached() and self.trainer.world_size > 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                every: list[Any] = [None] * dist.get_world_size()
                dist.all_gather_object(every, clouds)
                clouds = {k: v for part in every for k, v in part.items()}
        # float32 like the checkpoint's copy: the bank in memory is the one a reload gets
        self.template_bank = TemplateBank(torch.stack([clouds[k] for k in sorted(clouds)])
                                          .float())
        self._template_clouds = {}

    def ensure_templates(self, dataset: Any | None = None) -> bool:
        """Build the template bank from ``dataset`` (default: the trainer's data module's
        training split) if the module has none and ``templates`` is on; True when a
        bank is then available. Items need ``points``, ``valid``, ``rot``, ``trans``
        (the true poses). For a checkpoint trained before banks existed:
        ``model = load_model(ckpt); model.ensure_templates(AssemblyDataModule(root=...,
        ...).dataset("train", dense=False))``, then ``assemble(pieces, model)``."""
        if self.template_bank is not None or not self.hparams.templates:
            return self.template_bank is not None
        if dataset is None:
            dm = getattr(self.trainer, "datamodule", None) if self._trainer_attached() \
                else None
            if dm is None or not hasattr(dm, "dataset"):
                return False
            dataset = dm.dataset(dm.hparams.train_split, dense=False)
        from geo3d.apps.assembly._canonical import TemplateBank, _sample, assembled_clouds

        m = int(self.hparams.template_points)
        clouds = []
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(f"assembly: building the template bank from {len(dataset)} training "
                       "objects (the checkpoint has none)")
        for i in range(len(dataset)):
            it = dataset[i]
            x = assembled_clouds(it["points"][None], it["valid"][None], it["rot"][None],
                                 it["trans"][None])[0]
            if x.shape[0] >= 4:
                clouds.append(_sample(x, m))
        if clouds:
            self.template_bank = TemplateBank(torch.stack(clouds).float())
        return self.template_bank is not None

    def _trainer_attached(self) -> bool:
        try:
            return self.trainer is not None
        except RuntimeError:  # Lightning raises when no trainer is attached
            return False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.template_bank is not None:
            checkpoint["assembly_templates"] = self.template_bank.state()
        elif self._template_clouds:  # mid first epoch: what was collected so far
            keys = sorted(self._template_clouds)
            checkpoint["assembly_templates_partial"] = {
                "index": torch.tensor(keys, dtype=torch.long),  # (n, 3) keys
                "points": torch.stack([self._template_clouds[k] for k in keys]).float()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        t = checkpoint.get("assembly_templates")
        part = checkpoint.get("assembly_templates_partial")
        if isinstance(t, Tensor):
            from geo3d.apps.assembly._canonical import TemplateBank

            self.template_bank = TemplateBank(t)
        elif isinstance(part, dict) and isinstance(part.get("points"), Tensor):
            # resumed inside the first epoch: collection goes on from here
            self._template_clouds = {tuple(int(v) for v in k): x.double() for k, x in
                                     zip(part["index"].tolist(), part["points"], strict=True)}

    def _uses_templates(self, method: str) -> bool:
        return method == "fracture_registration" and bool(self.hparams.templates) and \
            self.template_bank is not None

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
        if "desc" in pred and (h.w_desc or h.w_frac):
            lc, cterms = correspondence_loss(
                pred["desc"], pred["frac_score"], points, valid, rot, batch["trans"],
                batch.get("fracture"), h.corr_radius, h.corr_temperature, h.w_desc, h.w_frac,
            )
            loss = loss + lc
            terms.update({f"corr_{k}": v for k, v in cterms.items()})
        B = points.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        for k, v in terms.items():
            self.log(f"train/{k}", v, batch_size=B)
        self.log("train/parts", valid.sum().to(torch.float32), reduce_fx="sum", batch_size=B)
        return loss

    def _add(self, key: str, value: Tensor) -> None:
        v = value.detach().double().reshape(-1)
        self._eval_sums[key] = self._eval_sums[key] + v if key in self._eval_sums else v

    @staticmethod
    def _method_inputs(batch: dict[str, Any], method: str) -> tuple[Tensor, Tensor | None]:
        """``(points, normals)`` the pipeline gets for ``method``: the batch's dense
        mesh samples with face normals (``dense_points``/``dense_normals`` :math:`(B, P,
        M, 3)`, see :class:`~geo3d.apps.assembly._data.DenseSurface`) for
        ``"fracture_registration"`` when the batch has them, else the network's input
        ``points`` :math:`(B, P, N, 3)` and no normals. Both are in the same per-part
        input frames, so the poses apply to either."""
        if method == "fracture_registration" and "dense_points" in batch \
                and "dense_normals" in batch:
            return batch["dense_points"], batch["dense_normals"]
        return batch["points"], None

    @staticmethod
    def _keep_anchor(T: Tensor, method_points: Tensor, valid: Tensor, anchor: Tensor,
                     pred: dict[str, Tensor]) -> Tensor:
        """Re-anchor poses computed on other points than the network's.

        The pipeline keeps the network's pose for the anchor it finds in the points it is
        given (:func:`geo3d.eval.anchor_parts`, the largest piece); on dense samples that
        can be another piece than the anchor of the network's input points (the one the
        metrics, :meth:`_eval_step`, and :func:`~geo3d.apps.assembly._api.assemble` use)
        when two pieces are about equally large. For those objects the whole assembly
        is moved rigidly (``T' = T_net[a] T[a]⁻¹ T``, relative poses unchanged) so that
        ``anchor`` keeps the network's pose; other objects are returned bit for bit.

        Args:
            T: poses :math:`(B, P, 4, 4)`; method_points :math:`(B, P, M, 3)`;
            valid :math:`(B, P)` bool; anchor :math:`(B,)` long; pred: the network's
            output (``rot``, ``trans``; without them the identity is the network's pose).
        """
        from geo3d.apps.assembly._pipeline import network_poses

        found = anchor_parts(method_points, valid)
        moved = (found != anchor).nonzero().flatten().tolist()
        if not moved:
            return T
        B, P = valid.shape
        T_net = network_poses(pred, B, P, torch.float64, T.device)
        T = T.clone()
        for b in moved:
            a = int(anchor[b])
            Ta = T[b, a].double()
            inv = torch.eye(4, dtype=torch.float64, device=T.device)
            inv[:3, :3] = Ta[:3, :3].T
            inv[:3, 3] = -Ta[:3, :3].T @ Ta[:3, 3]
            goal = T_net[b, a] if T_net is not None else torch.eye(4, dtype=torch.float64,
                                                                   device=T.device)
            moved_b = (goal @ inv)[None] @ T[b].double()
            T[b] = torch.where(valid[b][:, None, None], moved_b.to(T.dtype), T[b])
        return T

    def _pipeline(self, points: Tensor, valid: Tensor, pred: dict[str, Tensor], method: str,
                  tim: dict[str, float], normals: Tensor | None = None) -> tuple[Tensor, int]:
        """Poses of a batch from the pipeline; an object on which it raises a
        ``RuntimeError`` (e.g. a singular linear solve) is evaluated with the network's
        poses instead and counted (``errors/pipeline`` in the results).

        ``points`` :math:`(B, P, N', 3)` and the optional ``normals`` (same shape) are what
        the method works on (the network's input points, or dense mesh samples in the same
        frames, see :meth:`_method_inputs`); ``pred`` is the network's output on its own
        input. ``tim`` receives the stage timings of the successful calls only (each
        attempt times into a fresh dict): after a failed batch the per-object re-runs are
        counted once, and ``total`` sums over every object of the batch."""
        from geo3d.apps.assembly._pipeline import assemble_from_outputs

        def run(pts: Tensor, v: Tensor, o: dict[str, Tensor], **kw: Any) -> Tensor:
            t: dict[str, float] = {}
            res = assemble_from_outputs(pts, v, o, timings=t, **kw)
            for k, sec in t.items():  # merged only when the call returned
                tim[k] = tim.get(k, 0.0) + sec
            return res

        kw: dict[str, Any] = dict(method=method, refine=bool(self.hparams.refine))
        if self._uses_templates(method):
            kw["templates"] = self.template_bank
        with torch.no_grad():
            try:
                return run(points, valid, pred, generator=self._eval_gen, normals=normals,
                           **kw), 0
            except RuntimeError:
                pass
            rows, errors = [], 0
            for b in range(points.shape[0]):
                sl = slice(b, b + 1)
                o = {k: v[sl] for k, v in pred.items()}
                nb = None if normals is None else normals[sl]
                try:
                    rows.append(run(points[sl], valid[sl], o, generator=self._eval_gen,
                                    normals=nb, **kw))
                except RuntimeError:
                    errors += 1
                    rows.append(run(points[sl], valid[sl], o, method="network"))
            return torch.cat(rows), errors

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        points, valid = batch["points"], batch["valid"].bool()
        t0 = time.perf_counter()
        pred = self(points, valid)
        t_net = time.perf_counter() - t0
        anchor = anchor_parts(points, valid)
        B, dev = points.shape[0], points.device
        nparts = valid.sum(1).clamp_max(MAX_COUNTED_PARTS)
        onehot = torch.nn.functional.one_hot(nparts, MAX_COUNTED_PARTS + 1).double()  # (B, K)
        self._add("count", torch.tensor([float(B)], dtype=torch.float64, device=dev))
        self._add("count_by_parts", onehot.sum(0))
        if self._eval_gen is None:
            self._eval_gen = torch.Generator().manual_seed(int(self.hparams.eval_seed))
        primary = None
        for method in self._methods(stage):
            tim: dict[str, float] = {}
            pts_m, nrm_m = self._method_inputs(batch, method)
            T, errors = self._pipeline(pts_m, valid, pred, method, tim, nrm_m)
            if pts_m is not points and not self._uses_templates(method):
                T = self._keep_anchor(T, pts_m, valid, anchor, pred)
            self._add(f"{method}/errors/pipeline",
                      torch.tensor([float(errors)], dtype=torch.float64, device=dev))
            rot, trans = T[..., :3, :3], T[..., :3, 3]
            if primary is None:
                primary = (rot, trans)
            tim["network"] = t_net
            tim.pop("objects", None)
            for stg, sec in tim.items():
                self._add(f"{method}/time_s/{stg}",
                          torch.tensor([float(sec)], dtype=torch.float64, device=dev))
            for proto in PROTOCOLS:
                m = assembly_metrics(
                    points, valid, rot, trans, batch["rot"], batch["trans"],
                    protocol=proto, anchor=anchor, reduction="none",
                )
                for k, v in m.items():
                    self._add(f"{method}/{proto}/{k}", v.sum())
                self._add(f"{method}/{proto}/part_acc_by_parts",
                          (m["part_acc"].double()[:, None] * onehot).sum(0))
        rot, trans = primary
        if len(self._pictures) < int(self.hparams.num_pictures) and self._want_pictures(stage):
            n = min(points.shape[0], int(self.hparams.num_pictures) - len(self._pictures))
            for i in range(n):
                self._pictures.append({
                    "name": str(batch["name"][i]) if "name" in batch else f"object_{i}",
                    "points": points[i].detach().cpu(),
                    "valid": valid[i].cpu(),
                    "pred_rot": rot[i].detach().cpu(),
                    "pred_trans": trans[i].detach().cpu(),
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

    def _methods(self, stage: str) -> list[str]:
        """The pipelines evaluated at ``stage`` ("val": ``val_methods``, else
        ``eval_methods``); the first is the primary one."""
        return self.val_methods if stage == "val" else self.eval_methods

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Poses from the primary evaluation pipeline (``eval_methods[0]``)."""
        from geo3d.apps.assembly._pipeline import assemble_from_outputs

        points, valid = batch["points"], batch["valid"].bool()
        pred = self(points, valid)
        if self._eval_gen is None:
            self._eval_gen = torch.Generator().manual_seed(int(self.hparams.eval_seed))
        method = self.eval_methods[0]
        pts_m, nrm_m = self._method_inputs(batch, method)
        T = assemble_from_outputs(pts_m, valid, pred, method=method,
                                  refine=bool(self.hparams.refine), generator=self._eval_gen,
                                  normals=nrm_m, templates=self.template_bank
                                  if self._uses_templates(method) else None)
        if pts_m is not points and not self._uses_templates(method):
            T = self._keep_anchor(T, pts_m, valid, anchor_parts(points, valid), pred)
        return {
            "name": list(batch.get("name", [])),
            "valid": valid.cpu(),
            "rot": T[..., :3, :3].detach().cpu(),
            "trans": T[..., :3, 3].detach().cpu(),
        }

    def on_validation_epoch_start(self) -> None:
        self._eval_sums, self._pictures = {}, []
        self._eval_gen = None  # every evaluation draws the same RANSAC samples

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()
        if "fracture_registration" in self.eval_methods:
            self.ensure_templates()

    def on_predict_epoch_start(self) -> None:
        if self.eval_methods[0] == "fracture_registration":
            self.ensure_templates()

    def _finish_eval(self, stage: str) -> None:
        if not self._eval_sums:
            return
        keys = sorted(self._eval_sums)
        parts = [torch.as_tensor(self._eval_sums[k]).to(self.device).reshape(-1) for k in keys]
        vec = torch.cat(parts)
        if self.trainer is not None and self.trainer.world_size > 1:
            vec = self.trainer.strategy.reduce(vec, reduce_op="sum")
        sums = dict(zip(keys, torch.split(vec, [len(p) for p in parts]), strict=True))
        count = float(sums.pop("count")[0])
        by_n = sums.pop("count_by_parts").tolist()
        methods = self._methods(stage)
        results: dict[str, Any] = {"num_objects": int(count), "methods": {},
                                   "primary_method": methods[0]}
        for key, total in sums.items():
            method, group, metric = key.split("/")
            res = results["methods"].setdefault(method, {})
            if group == "errors":  # objects on which the pipeline raised (network poses used)
                res["pipeline_errors"] = int(total[0])
            elif group == "time_s":  # wall seconds per object and stage
                res.setdefault("time_s_per_object", {})[metric] = float(total[0]) / max(count, 1)
            elif metric == "part_acc_by_parts":
                res.setdefault("part_acc_by_num_parts", {})[group] = {
                    str(n): {"num_objects": int(c), "part_acc": float(total[n]) / c}
                    for n, c in enumerate(by_n) if c > 0
                }
            else:
                res.setdefault(group, {})[metric] = float(total[0]) / max(count, 1.0)
        for method, res in results["methods"].items():
            for proto in PROTOCOLS:
                for metric, v in res.get(proto, {}).items():
                    primary = method == methods[0]
                    self.log(f"{stage}/{method}/{proto}/{metric}", v, sync_dist=False,
                             rank_zero_only=True)
                    if primary:  # the primary method also under the plain names
                        self.log(f"{stage}/{proto}/{metric}", v,
                                 prog_bar=(proto == "anchor" and metric == "part_acc"),
                                 sync_dist=False, rank_zero_only=True)
        prim = results["methods"][methods[0]]
        results.update({p: prim[p] for p in PROTOCOLS if p in prim})
        self.last_results = results
        if self.trainer is None or self.trainer.sanity_checking or self.global_rank != 0:
            return
        out_dir = self._out_dir()
        if out_dir is not None and (stage == "test" or self._want_pictures("val")):
            epoch, step = evaluated_progress(self)  # test --ckpt_path X: X's, not 0/0
            payload = {"stage": stage, "epoch": epoch,
                       "global_step": step, "hparams": dict(self.hparams),
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

