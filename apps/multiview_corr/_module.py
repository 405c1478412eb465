"""LightningModule: multiview-equivariance finetuning of a ViT (LoRA + 3x3 conv).

One step takes a pair of views of one object (``batch_size`` pairs per step, reference
1), runs both images through :class:`~geo3d.apps.multiview_corr._model.CorrFeatureModel`,
reads the feature map at the pixels drawn by
:func:`~geo3d.apps.multiview_corr._sampling.sample_pixel_pairs` (bilinear, pixel centres at
integer coordinates) and minimises
:func:`~geo3d.apps.multiview_corr._loss.smooth_ap_loss`; AdamW (reference: lr 1e-5,
weight decay 1e-4, gradient clip 1.0 set on the Trainer) updates the adapter only.
Validation and test compute the dense 3D-equivariance metrics of
:func:`geo3d.eval.dense_correspondence_metrics` (APE, PCDP) on pairs of held-out objects.

Checkpoints hold the trainable weights only (``state_dict``: the LoRA factors and the
conv; the frozen backbone is rebuilt from ``hyper_parameters``, i.e. from the same
``vit`` source) plus a fingerprint of the backbone, so resuming or loading onto another
backbone fails loudly. They load with ``torch.load(weights_only=True)``.

Reference: You et al., "Multiview Equivariance Improves 3D Correspondence Understanding
with Minimal Feature Finetuning", ICLR 2025, arXiv:2411.19458; qq456cvb/3DCorrEnhance
``finetune.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from geo3d._app import CheckpointError, evaluated_progress, load_checkpoint
from geo3d._app_lightning import AtomicCheckpointIO
from geo3d._atomic import atomic_write_text

__all__ = ["MultiviewCorrModule", "AtomicCheckpointIO", "build_backbone", "load_adapter",
           "backbone_fingerprint", "BackboneExtractor", "default_vit_path",
           "ADAPTER_FORMAT"]

#: Version tag stored in every checkpoint (``checkpoint["multiview_corr"]["format"]``).
ADAPTER_FORMAT = 1


def default_vit_path(**pretrain: Any) -> Path:
    """The ViT-S/14 pretrained on synthetic renders (the default starting weights here,
    where no DINOv2 checkpoint can be downloaded): built once by
    :func:`geo3d.apps.multiview_corr._pretrain.pretrain_vit` (``pretrain`` overrides its
    arguments) and cached by it (``$GEO3D_CACHE_DIR``, default ``~/.cache/geo3d``); later
    calls with the same settings return the cached file."""
    from geo3d.apps.multiview_corr._pretrain import pretrain_vit

    return Path(pretrain_vit(**pretrain))


def build_backbone(vit: str = "random", vit_config: dict[str, Any] | None = None,
                   pretrain: dict[str, Any] | None = None,
                   seed: int = 0) -> nn.Module:
    """The frozen ViT to finetune.

    Args:
        vit: ``"random"`` (default: random initialisation of ``vit_config``, seeded),
            ``"pretrained"`` (:func:`default_vit_path`; measured worse than random
            initialisation for matching, benchmarks/results/mv_core_pretrain.json), or a
            path to an official DINOv2
            ``.pth`` or a Hugging Face folder (:func:`geo3d.nn.load_vit`).
        vit_config: :class:`geo3d.nn.VisionTransformer` arguments for ``"random"``
            (default: ViT-S/14 at 224²).
        pretrain: arguments of :func:`default_vit_path`.
        seed: seed of the random initialisation.

    Raises:
        ValueError: an unknown ``vit`` (neither a keyword nor an existing path).
    """
    from geo3d.nn import VisionTransformer, load_vit, vit_small

    if vit == "random":
        g = torch.Generator().manual_seed(int(seed))
        if vit_config:
            return VisionTransformer(**dict(vit_config), generator=g)
        return vit_small(img_size=224, generator=g)
    if vit == "pretrained":
        return load_vit(default_vit_path(**dict(pretrain or {})))
    if not Path(vit).exists():
        raise ValueError(f"vit: expected 'pretrained', 'random' or an existing DINOv2 .pth "
                         f"file / Hugging Face folder, got {vit!r} (no such path)")
    return load_vit(vit)


@torch.no_grad()
def backbone_fingerprint(vit: nn.Module) -> str:
    """A short hash of every frozen backbone tensor (shapes and float64 sums of values and
    of values times a fixed ramp), to check that an adapter is loaded onto the backbone it
    was trained on."""
    h = hashlib.sha256()
    for name, t in sorted(vit.state_dict().items()):
        t = t.detach().double().flatten()
        ramp = torch.linspace(-1.0, 1.0, t.numel(), dtype=torch.float64) if t.numel() else t
        h.update(f"{name}:{tuple(t.shape)}:{float(t.sum()):.9e}:{float((t * ramp).sum()):.9e};".encode())
    return h.hexdigest()[:16]


class BackboneExtractor(nn.Module):
    """The "before finetuning" feature extractor: the backbone's normalised patch tokens
    ``(B, C, h, w)`` of images ``(B, 3, H, W)`` in [0, 1], with the same input resizing
    (``long_side``, ``downsample``) and normalisation as
    :class:`~geo3d.apps.multiview_corr._model.CorrFeatureModel` (built as one without
    convolution, whose zero-initialised LoRA leaves the backbone unchanged).

    ``vit`` is adapted in place (frozen): pass a backbone that is not used elsewhere.
    """

    def __init__(self, vit: nn.Module, long_side: int | None = None,
                 downsample: int | None = None) -> None:
        super().__init__()
        from geo3d.apps.multiview_corr._model import CorrFeatureModel

        self.model = CorrFeatureModel(vit, lora_rank=1, lora_blocks=1, conv=False,
                                      long_side=long_side, downsample=downsample)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the adapter
    (:func:`geo3d._app.load_checkpoint`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a truncated / foreign file (names it).
    """
    try:
        return load_checkpoint(path, map_location)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"adapter: no such checkpoint file {str(path)!r}") from err
    except CheckpointError as err:
        raise ValueError(f"adapter: expected a readable torch checkpoint dict, got {err}"
                         ) from err


class MultiviewCorrModule(L.LightningModule):
    """Finetunes :class:`~geo3d.apps.multiview_corr._model.CorrFeatureModel` on view pairs.

    Args:
        vit: starting weights, see :func:`build_backbone` (``"random"``, the default,
            ``"pretrained"`` or a DINOv2 ``.pth`` / Hugging Face folder path).
        vit_config: ViT architecture for ``vit="random"``.
        pretrain: arguments for the default pretrained ViT (:func:`default_vit_path`).
        lora_rank, lora_blocks, conv: adapter (reference: rank 4 on q and v of the last
            4 blocks, one 3x3 conv).
        conv_init: ``"identity"`` (features before finetuning = the backbone's) or
            ``"reference"`` (PyTorch's default, as the reference code).
        long_side, downsample: ViT input size (reference: 640 and 8, i.e. an 80-token
            long side; ``None``: the image size rounded down to a multiple of the patch),
            see :func:`geo3d.apps.multiview_corr._model.network_input_size`.
        temperature: sigmoid temperature of the SmoothAP loss (reference 0.01).
        loss_mode: ``"reference"`` (the reference code's per-positive-pair lists with a
            self-match) or ``"anchor"`` (Smooth-AP per anchor), see
            :func:`~geo3d.apps.multiview_corr._loss.smooth_ap_loss`.
        lr, weight_decay: AdamW (reference 1e-5, 1e-4).
        thresholds: PCDP thresholds of the validation metrics.
        val_max_points: foreground pixels per held-out view scored by the metrics.
        seed: seed of the backbone initialisation (``"random"``) and of the metrics' draws.

    Raises:
        ValueError: bad ``vit``; a checkpoint whose backbone fingerprint differs.

    Example:
        >>> m = MultiviewCorrModule(vit="random", vit_config=dict(embed_dim=32, depth=2,
        ...     num_heads=2, patch_size=4, img_size=32), lora_blocks=1)
        >>> m.model(torch.rand(1, 3, 32, 32)).shape[-2:]
        torch.Size([8, 8])
    """

    def __init__(
        self,
        vit: str = "random",
        vit_config: dict[str, Any] | None = None,
        pretrain: dict[str, Any] | None = None,
        lora_rank: int = 4,
        lora_blocks: int = 4,
        conv: bool = True,
        conv_init: str = "identity",
        long_side: int | None = None,
        downsample: int | None = None,
        temperature: float = 0.01,
        loss_mode: str = "reference",
        lr: float = 1e-5,
        weight_decay: float = 1e-4,
        thresholds: list[float] | None = None,
        val_max_points: int = 2000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        from geo3d.apps.multiview_corr._model import CorrFeatureModel

        if loss_mode not in ("reference", "anchor"):
            raise ValueError(f"loss_mode: expected 'reference' or 'anchor', got {loss_mode!r}")
        backbone = build_backbone(vit, vit_config, pretrain, seed)
        self.fingerprint = backbone_fingerprint(backbone)
        self.model = CorrFeatureModel(backbone, lora_rank=lora_rank, lora_blocks=lora_blocks,
                                      conv=conv, conv_init=conv_init, long_side=long_side,
                                      downsample=downsample,
                                      generator=torch.Generator().manual_seed(int(seed)))
        self.strict_loading = False  # checkpoints hold the trainable weights only
        self._sums: dict[str, float] = {}
        self._count = 0
        self.last_results: dict[str, Any] = {}
        self.train_seconds = 0.0
        self.train_steps = 0
        self._t0 = 0.0

    # ------------------------------------------------------------------ features / loss
    def forward(self, images: Tensor) -> Tensor:
        """Feature maps ``(B, C, h, w)`` of images ``(B, 3, H, W)`` in [0, 1]."""
        return self.model(images)

    def trainable_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def pair_loss(self, pair: dict[str, Any]) -> Tensor:
        """SmoothAP loss of one pair with its ``"sample"`` (see module docstring)."""
        from geo3d.apps.multiview_corr._loss import smooth_ap_loss

        from geo3d.eval._correspondence import sample_features

        va, vb, s = pair["view_a"], pair["view_b"], pair["sample"]
        feats = self(torch.stack([va["rgb"], vb["rgb"]]).to(self.device))
        fa = sample_features(feats[0], s["pixels_a"].to(self.device), tuple(va["rgb"].shape[-2:]))
        fb = sample_features(feats[1], s["pixels_b"].to(self.device), tuple(vb["rgb"].shape[-2:]))
        return smooth_ap_loss(fa, fb, s["pos_mask"].to(self.device), s["neg_mask"].to(self.device),
                              temperature=float(self.hparams.temperature),
                              mode=self.hparams.loss_mode)

    def on_train_epoch_start(self) -> None:
        loader = self.trainer.train_dataloader if self.trainer is not None else None
        ds = getattr(loader, "dataset", None)
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(int(self.current_epoch))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.train_seconds += time.perf_counter() - self._t0
        self.train_steps += 1

    def training_step(self, batch: list[dict[str, Any]], batch_idx: int) -> Tensor:
        losses = [self.pair_loss(p) for p in batch]
        loss = torch.stack(losses).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:
        self._sums, self._count = {}, 0

    on_test_epoch_start = on_validation_epoch_start

    def _eval_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        from geo3d.eval import dense_correspondence_metrics

        th = tuple(self.hparams.thresholds or (0.05, 0.1, 0.2))
        for i, pair in enumerate(batch):
            g = torch.Generator().manual_seed(int(self.hparams.seed) * 100_003 + batch_idx * 1009 + i)
            with torch.no_grad():
                m = dense_correspondence_metrics(self, pair["view_a"], pair["view_b"],
                                                 thresholds=th,
                                                 max_points=int(self.hparams.val_max_points),
                                                 generator=g)
            for k, v in m.items():
                if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1):
                    self._sums[k] = self._sums.get(k, 0.0) + float(v)
            self._count += 1

    def validation_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx)

    def test_step(self, batch: list[dict[str, Any]], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx)

    def _finish(self, stage: str) -> None:
        if not self._count:
            return
        keys = sorted(self._sums)
        vec = torch.tensor([self._sums[k] for k in keys] + [float(self._count)],
                           dtype=torch.float64, device=self.device)
        if self.trainer is not None and self.trainer.world_size > 1:
            vec = self.trainer.strategy.reduce(vec, reduce_op="sum")
        count = float(vec[-1])
        res = {k: float(v) / count for k, v in zip(keys, vec[:-1].tolist(), strict=True)}
        for k, v in res.items():
            self.log(f"{stage}/{k}", v, prog_bar=k == "ape_px", sync_dist=False,
                     rank_zero_only=True)
        self.last_results = {"num_pairs": int(count), **res}
        if self.trainer is None or self.trainer.sanity_checking or self.global_rank != 0:
            return
        d = self.trainer.log_dir or self.trainer.default_root_dir
        if d:
            epoch, step = evaluated_progress(self)  # test --ckpt_path X: X's, not 0/0
            payload = {"stage": stage, "epoch": epoch, "global_step": step,
                       "metrics": self.last_results}
            atomic_write_text(Path(d) / f"results_{stage}.json", json.dumps(payload, indent=2))

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = set(self.trainable_names())
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["multiview_corr"] = {
            "format": ADAPTER_FORMAT,
            "backbone_fingerprint": self.fingerprint,
            "trainable_parameters": int(sum(p.numel() for p in self.parameters()
                                            if p.requires_grad)),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_adapter_checkpoint(checkpoint, self, "ckpt_path")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=float(self.hparams.lr),
                                 weight_decay=float(self.hparams.weight_decay))


def check_adapter_checkpoint(ckpt: dict[str, Any], module: MultiviewCorrModule,
                             name: str = "adapter") -> None:
    """Raise ``ValueError`` (naming ``name``) unless ``ckpt`` is an adapter checkpoint of
    this module: format tag, the same backbone fingerprint, every trainable key present
    and nothing else."""
    meta = ckpt.get("multiview_corr")
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{name}: expected a geo3d multiview adapter checkpoint (written by "
                         f"`geo3d multiview fit`), got one without its 'multiview_corr' tag")
    if meta.get("backbone_fingerprint") != module.fingerprint:
        raise ValueError(f"{name}: expected an adapter trained on this backbone (fingerprint "
                         f"{module.fingerprint}), got one trained on backbone "
                         f"{meta.get('backbone_fingerprint')}: pass the same --vit as for fit")
    want = set(module.trainable_names())
    have = set(ckpt.get("state_dict", {}))
    if want != have:
        raise ValueError(f"{name}: expected the trainable weights {len(want)} tensors, got "
                         f"{len(have)} (missing {sorted(want - have)[:3]}, unexpected "
                         f"{sorted(have - want)[:3]})")


def load_adapter(path: str | os.PathLike, vit: str | None = None,
                 map_location: Any = "cpu") -> MultiviewCorrModule:
    """Rebuild a finetuned model from an adapter checkpoint written by ``fit``.

    Args:
        path: the ``.ckpt`` file.
        vit: overrides the backbone source stored in the checkpoint (e.g. the same DINOv2
            file at another path); its fingerprint must match.
        map_location: where to load tensors.

    Returns:
        the :class:`MultiviewCorrModule` in eval mode, adapter loaded.

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable or foreign checkpoint, or
        a backbone other than the one it was trained on.
    """
    ckpt = read_checkpoint(path, map_location)
    hp = dict(ckpt.get("hyper_parameters") or {})
    hp = {k: v for k, v in hp.items() if not k.startswith("_")}
    if vit is not None:
        hp["vit"] = vit
    try:
        module = MultiviewCorrModule(**hp)
    except TypeError as err:
        raise ValueError(f"adapter: expected the hyper-parameters of a multiview adapter "
                         f"checkpoint in {str(path)!r}, got {sorted(hp)} ({err})") from err
    except ValueError as err:
        if vit is None:
            raise
        # e.g. 'lora_blocks: expected an int in [1, 2]': the adapter's settings do not fit
        # the backbone given instead of the recorded one
        raise ValueError(f"vit: the adapter in {str(path)!r} was trained on another backbone "
                         f"than {vit!r} ({err})") from err
    check_adapter_checkpoint(ckpt, module, "adapter")
    module.load_state_dict(ckpt["state_dict"], strict=False)
    return module.eval()
