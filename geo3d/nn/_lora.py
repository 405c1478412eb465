"""LoRA adapters on the fused ``qkv`` projection of a :class:`~geo3d.nn.VisionTransformer`.

The setting of the multiview-correspondence reference (qq456cvb/3DCorrEnhance,
``finetune.py`` and ``utils/model.py``): rank-4 adapters on the query and value slices of
the fused ``qkv`` of the last 4 blocks, ``A`` Kaiming-uniform, ``B`` zero, no scaling,
plus a 3x3 convolution on the patch-token grid; the backbone is frozen.

peft is not used: its LoRA on a fused ``nn.Linear`` adds one ``B A`` to all ``3C`` outputs,
whereas this adapter adds ``B_q A_q`` to the query rows and ``B_v A_v`` to the value rows
only (splitting ``qkv`` into three layers would change the backbone's module tree).

Reference: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models",
arXiv:2106.09685; Zhang et al., "Improving 2D Feature Representations by 3D-Aware
Fine-Tuning" code (qq456cvb/3DCorrEnhance).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from geo3d._atomic import atomic_path
from geo3d._validation import error_summary

from ._vit import VisionTransformer

__all__ = ["LoRAQKV", "LoRAViT", "lora_trainable_parameter_count"]

_TARGETS = ("q", "k", "v")


def _check_scale(scale) -> None:
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not math.isfinite(float(scale))
    ):
        raise ValueError(f"scale: expected a finite float, got {scale!r}")


def _check_targets(targets) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = (targets,)
    targets = tuple(targets)
    if not targets or any(t not in _TARGETS for t in targets) or len(set(targets)) != len(targets):
        raise ValueError(f"targets: expected distinct names from {_TARGETS}, got {targets!r}")
    return targets


class LoRAQKV(nn.Module):
    """A fused ``qkv`` linear layer plus low-rank updates on chosen slices.

    ``y = base(x)``; for each target ``t`` in ``targets``:
    ``y[..., slice_t] += scale * (x @ A_t^T) @ B_t^T`` with ``A_t (r, C)``, ``B_t (C, r)``.

    Args:
        base: the frozen ``nn.Linear(C, 3C)``.
        rank: ``r``.
        targets: subset of ``("q", "k", "v")``.
        scale: multiplier of the update (the reference: 1, i.e. no ``alpha / r``).
        generator: source of ``A``'s Kaiming-uniform init (``B`` starts at zero).

    Shape:
        ``(..., C) -> (..., 3C)``.

    Raises:
        ValueError: for a non-(C -> 3C) base, a rank that is not an int >= 1, a
            non-finite ``scale``, or unknown/duplicate targets.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int = 4,
        targets: Sequence[str] = ("q", "v"),
        scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear) or base.out_features != 3 * base.in_features:
            raise ValueError(f"base: expected nn.Linear(C, 3C), got {base!r}")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"rank: expected a positive int, got {rank!r}")
        _check_scale(scale)
        targets = _check_targets(targets)
        self.base = base
        self.rank, self.scale = rank, float(scale)
        self.targets = tuple(t for t in _TARGETS if t in targets)  # q, k, v order
        c = base.in_features
        f = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.ParameterDict(
            {t: nn.Parameter(torch.empty(rank, c, **f)) for t in self.targets}
        )
        self.lora_B = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros(c, rank, **f)) for t in self.targets}
        )
        with torch.no_grad():
            for t in self.targets:  # as nn.Linear(C, r).reset_parameters() in the reference
                nn.init.kaiming_uniform_(self.lora_A[t], a=math.sqrt(5), generator=generator)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> Tensor:
        """``(3C, C)`` update ``scale * B_t A_t`` on the target rows, zero elsewhere."""
        c = self.base.in_features
        parts = [
            self.scale * (self.lora_B[t] @ self.lora_A[t])
            if t in self.targets
            else self.base.weight.new_zeros(c, c)
            for t in _TARGETS
        ]
        return torch.cat(parts, 0)

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        c = self.base.in_features
        parts = list(y.split(c, dim=-1))
        for t in self.targets:
            j = _TARGETS.index(t)
            d = (x @ self.lora_A[t].t()) @ self.lora_B[t].t()
            parts[j] = parts[j] + (d if self.scale == 1.0 else self.scale * d)
        return torch.cat(parts, dim=-1)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + delta_weight()`` (same outputs, no adapter cost)."""
        base = self.base
        out = nn.Linear(
            base.in_features,
            base.out_features,
            base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        with torch.no_grad():
            out.weight.copy_(base.weight + self.delta_weight())
            if base.bias is not None:
                out.bias.copy_(base.bias)
        out.weight.requires_grad_(base.weight.requires_grad)
        if out.bias is not None:
            out.bias.requires_grad_(base.bias.requires_grad)
        return out


def lora_trainable_parameter_count(
    embed_dim: int, rank: int = 4, n_blocks: int = 4, n_targets: int = 2, refine_conv: bool = True
) -> int:
    """Trainable parameters of the adapter: ``2 r C`` per target and block, plus a
    ``C -> C`` 3x3 convolution with bias (``9 C^2 + C``).

    Example:
        >>> lora_trainable_parameter_count(768)   # DINOv2 ViT-B, reference setting
        5358336
    """
    return n_blocks * n_targets * 2 * rank * embed_dim + (
        9 * embed_dim * embed_dim + embed_dim if refine_conv else 0
    )


class LoRAViT(nn.Module):
    """A frozen :class:`~geo3d.nn.VisionTransformer` with LoRA adapters and an optional
    3x3 refinement convolution on the patch-token grid.

    Args:
        vit: the backbone (its parameters are frozen in place).
        rank: adapter rank (reference: 4).
        blocks: block indices to adapt (negative = from the end); ``None`` = last 4.
        targets: projections to adapt, subset of ``("q", "k", "v")`` (reference: q, v).
        scale: update multiplier (reference: 1).
        refine_conv: add ``Conv2d(C, C, 3, padding=1)`` on ``patch_tokens``.
        generator: source of the adapter and convolution initialisation.

    Raises:
        ValueError: for a ``rank`` that is not an int >= 1, a non-finite ``scale``, bad
            ``targets``, ``blocks`` that are not distinct ints in ``[-depth, depth)``
            (bools are rejected), or a backbone already adapted.

    Example:
        >>> vit = VisionTransformer(embed_dim=64, depth=4, num_heads=2, img_size=28)
        >>> model = LoRAViT(vit, rank=4)
        >>> model.num_trainable_parameters() == lora_trainable_parameter_count(64)
        True
        >>> model.forward_features(torch.rand(1, 3, 28, 28))["patch_tokens"].shape
        torch.Size([1, 64, 2, 2])
    """

    def __init__(
        self,
        vit: VisionTransformer,
        rank: int = 4,
        blocks: Sequence[int] | None = None,
        targets: Sequence[str] = ("q", "v"),
        scale: float = 1.0,
        refine_conv: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(vit, VisionTransformer):
            raise ValueError(f"vit: expected a VisionTransformer, got {type(vit).__name__}")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"rank: expected a positive int, got {rank!r}")
        _check_scale(scale)
        depth = len(vit.blocks)
        if blocks is None:
            blocks = range(max(depth - 4, 0), depth)
        if isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__iter__"):
            raise ValueError(
                f"blocks: expected a sequence of block indices, got {type(blocks).__name__}"
            )
        blocks = list(blocks)
        idx = []
        for b in blocks:
            # bools are ints in Python: True would silently mean block 1
            if not isinstance(b, int) or isinstance(b, bool) or not -depth <= b < depth:
                raise ValueError(
                    f"blocks: expected ints in [{-depth}, {depth - 1}] (not bools), got {blocks}"
                )
            idx.append(b % depth)
        if not idx:
            raise ValueError(f"blocks: expected at least one block index, got {blocks}")
        if len(set(idx)) != len(idx):
            raise ValueError(
                f"blocks: expected distinct block indices (negative ones count from the end, "
                f"depth {depth}), got {blocks}"
            )
        _check_targets(targets)
        self.block_indices = tuple(sorted(idx))
        for i in self.block_indices:  # check all before changing anything
            if isinstance(vit.blocks[i].attn.qkv, LoRAQKV):
                raise ValueError(f"vit: expected a backbone without adapters, block {i} has one")
        for p in vit.parameters():
            p.requires_grad_(False)
        self.vit = vit
        # the wrapped layers live in the backbone; this plain dict only indexes them
        self.adapters: dict[str, LoRAQKV] = {}
        for i in self.block_indices:
            attn = vit.blocks[i].attn
            if isinstance(attn.qkv, LoRAQKV):
                raise ValueError(f"vit: expected a backbone without adapters, block {i} has one")
            attn.qkv = LoRAQKV(attn.qkv, rank, targets, scale, generator)
            self.adapters[str(i)] = attn.qkv
        self.rank, self.targets, self.scale = (
            rank,
            self.adapters[str(self.block_indices[0])].targets,
            float(scale),
        )
        c = vit.embed_dim
        w = vit.cls_token
        self.refine_conv = (
            nn.Conv2d(c, c, 3, padding=1, device=w.device, dtype=w.dtype) if refine_conv else None
        )
        if self.refine_conv is not None and not w.is_meta:
            with torch.no_grad():  # nn.Conv2d's default init, drawn from `generator`
                nn.init.kaiming_uniform_(
                    self.refine_conv.weight, a=math.sqrt(5), generator=generator
                )
                bound = 1.0 / math.sqrt(9 * c)
                self.refine_conv.bias.uniform_(-bound, bound, generator=generator)
        self.merged = False

    def num_trainable_parameters(self) -> int:
        """Number of parameters with ``requires_grad`` (adapters + refinement conv)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward_features(
        self, images: Tensor, masks: Tensor | None = None, patch_stride: int | None = None
    ) -> dict[str, Tensor]:
        """:meth:`VisionTransformer.forward_features` with ``patch_tokens (B, C, H', W')``
        passed through the refinement convolution (the backbone's are kept as
        ``patch_tokens_backbone``)."""
        out = self.vit.forward_features(images, masks, patch_stride)
        if self.refine_conv is not None:
            out["patch_tokens_backbone"] = out["patch_tokens"]
            out["patch_tokens"] = self.refine_conv(out["patch_tokens"])
        return out

    def forward(self, images: Tensor) -> Tensor:
        """Refined patch-token grid ``(B, C, H', W')``."""
        return self.forward_features(images)["patch_tokens"]

    # ------------------------------------------------------------ state
    def adapter_state_dict(self) -> dict[str, Tensor]:
        """Adapter and convolution weights only (geo3d names), detached."""
        if self.merged:
            raise ValueError("merged: expected an unmerged model, got merged adapters")
        sd = {}
        for i in self.block_indices:
            a = self.adapters[str(i)]
            for t in a.targets:
                sd[f"blocks.{i}.{t}.A"] = a.lora_A[t].detach()
                sd[f"blocks.{i}.{t}.B"] = a.lora_B[t].detach()
        if self.refine_conv is not None:
            sd["refine_conv.weight"] = self.refine_conv.weight.detach()
            sd["refine_conv.bias"] = self.refine_conv.bias.detach()
        return sd

    def _meta(self) -> dict:
        return {
            "rank": self.rank,
            "targets": list(self.targets),
            "blocks": list(self.block_indices),
            "scale": self.scale,
            "refine_conv": self.refine_conv is not None,
            "depth": len(self.vit.blocks),
            "embed_dim": self.vit.embed_dim,
        }

    def save_adapters(
        self, path: str | os.PathLike, format: Literal["geo3d", "reference"] = "geo3d"
    ) -> Path:
        """Write only the adapter weights, atomically (temp file + rename).

        ``"geo3d"``: ``{"format": "geo3d.lora", "config": {...}, "state_dict": {...}}``.
        ``"reference"``: the 3DCorrEnhance checkpoint layout — ``w_a_000, w_a_001, ...``
        (``A`` as ``nn.Linear(C, r).weight``, ``(r, C)``) and ``w_b_000, ...`` (``(C, r)``),
        enumerated block by block (ascending) and, within a block, q then v; plus
        ``{"state_dict": {"refine_conv": {"weight", "bias"}}}``.

        Raises:
            ValueError: for an unknown format, merged adapters, or ``"reference"`` without
                the refinement convolution.
            IsADirectoryError: if ``path`` is an existing directory (named).
        """
        if format not in ("geo3d", "reference"):
            raise ValueError(f"format: expected 'geo3d' or 'reference', got {format!r}")
        sd = {k: v.clone().cpu() for k, v in self.adapter_state_dict().items()}
        if format == "geo3d":
            obj: dict = {"format": "geo3d.lora", "config": self._meta(), "state_dict": sd}
        else:
            if self.refine_conv is None:
                raise ValueError(
                    "refine_conv: expected a refinement convolution for the reference format, got None"
                )
            obj = {
                "state_dict": {
                    "refine_conv": {
                        "weight": sd["refine_conv.weight"],
                        "bias": sd["refine_conv.bias"],
                    }
                }
            }
            n = 0
            for i in self.block_indices:
                for t in self.targets:
                    obj[f"w_a_{n:03d}"] = sd[f"blocks.{i}.{t}.A"]
                    obj[f"w_b_{n:03d}"] = sd[f"blocks.{i}.{t}.B"]
                    n += 1
        path = Path(path)
        if path.is_dir():  # else the rename onto it fails naming the temporary file
            raise IsADirectoryError(
                f"path: expected a file name to write the adapters to, got the existing "
                f"directory {str(path)!r}"
            )
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
        return path

    def load_adapters(self, path: str | os.PathLike) -> None:
        """Load adapter weights written by :meth:`save_adapters` (either format; the
        reference's Lightning ``.ckpt`` files too), with ``torch.load(weights_only=True)``.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: naming ``path``, if the file cannot be read (truncated or not a
                torch checkpoint; the reader's error is chained), or its layout, count or
                shapes do not match this model.
        """
        if not Path(path).exists():
            raise FileNotFoundError(f"path: expected an existing file, got {str(path)!r}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, MemoryError):
            raise
        except Exception as err:  # truncated zip, garbage bytes, disallowed pickle
            raise ValueError(
                f"path: expected a torch checkpoint (torch.load, weights_only=True), got a "
                f"file that cannot be read: {str(path)!r} ({type(err).__name__}: "
                f"{error_summary(err)})"
            ) from err
        try:
            self._load_obj(obj)
        except ValueError as err:
            raise ValueError(f"path {str(path)!r}: {err}") from err

    def _load_obj(self, obj) -> None:
        if not isinstance(obj, dict):
            raise ValueError(f"path: expected a dict checkpoint, got {type(obj).__name__}")
        if obj.get("format") == "geo3d.lora":
            sd = obj.get("state_dict")
            if not isinstance(sd, dict):
                raise ValueError(f"state_dict: expected a dict of tensors, got {type(sd).__name__}")
        elif any(k.startswith("w_a_") for k in obj):
            sd = self._from_reference(obj)
        else:
            raise ValueError(
                f"path: expected a geo3d.lora or reference (w_a_000...) checkpoint, got keys "
                f"{sorted(obj)[:8]}"
            )
        mine = self.adapter_state_dict()
        missing = sorted(set(mine) - set(sd))
        unexpected = sorted(set(sd) - set(mine))
        if missing or unexpected:
            raise ValueError(
                f"path: expected adapter keys {sorted(mine)[:6]}..., got missing {missing[:6]}, "
                f"unexpected {unexpected[:6]}"
            )
        for k, v in sd.items():
            if not isinstance(v, Tensor):
                raise ValueError(f"{k}: expected a tensor, got {type(v).__name__}")
            if v.shape != mine[k].shape:
                raise ValueError(
                    f"{k}: expected shape {tuple(mine[k].shape)}, got {tuple(v.shape)}"
                )
        with torch.no_grad():
            for k, v in sd.items():
                mine[k].copy_(v)  # detached views share storage with the parameters

    def _from_reference(self, obj: dict) -> dict[str, Tensor]:
        a_keys = sorted(k for k in obj if k.startswith("w_a_"))
        b_keys = sorted(k for k in obj if k.startswith("w_b_"))
        slots = [(i, t) for i in self.block_indices for t in self.targets]
        if len(a_keys) != len(slots) or len(b_keys) != len(slots):
            raise ValueError(
                f"path: expected {len(slots)} w_a_/w_b_ tensors ({len(self.block_indices)} "
                f"blocks x {self.targets}), got {len(a_keys)} and {len(b_keys)}"
            )
        names = [f"w_{ab}_{n:03d}" for n in range(len(slots)) for ab in "ab"]
        if sorted(names) != sorted(a_keys + b_keys):
            raise ValueError(
                f"path: expected w_a_/w_b_ tensors numbered 000..{len(slots) - 1:03d}, got "
                f"{sorted(a_keys + b_keys)[:8]}"
            )
        sd = {}
        for n, (i, t) in enumerate(slots):
            sd[f"blocks.{i}.{t}.A"] = obj[f"w_a_{n:03d}"]
            sd[f"blocks.{i}.{t}.B"] = obj[f"w_b_{n:03d}"]
        inner = obj.get("state_dict", {})
        conv = inner.get("refine_conv") if isinstance(inner, dict) else None
        if conv is not None:
            if not isinstance(conv, dict) or not {"weight", "bias"} <= set(conv):
                raise ValueError(
                    "refine_conv: expected a dict with 'weight' and 'bias', got "
                    f"{sorted(conv) if isinstance(conv, dict) else type(conv).__name__}"
                )
            sd["refine_conv.weight"] = conv["weight"]
            sd["refine_conv.bias"] = conv["bias"]
        return sd

    # ------------------------------------------------------------ merge
    @torch.no_grad()
    def merge_(self) -> LoRAViT:
        """Fold every adapter into its ``qkv`` weight (in place): the backbone becomes a
        plain :class:`VisionTransformer` again with identical outputs and no adapter cost.
        The refinement convolution stays. Returns ``self``."""
        for i in self.block_indices:
            attn = self.vit.blocks[i].attn
            if isinstance(attn.qkv, LoRAQKV):
                attn.qkv = attn.qkv.merged()
        self.adapters = {}
        self.merged = True
        return self
