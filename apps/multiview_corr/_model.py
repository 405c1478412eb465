"""The finetuned feature extractor: a frozen ViT with LoRA adapters and a 3x3 convolution.

Setting of the reference (qq456cvb/3DCorrEnhance ``finetune.py``, ``FinetuneDINO``):
rank-4 LoRA on the query and value slices of the fused ``qkv`` projection of the last 4
blocks (``A`` Kaiming-uniform, ``B`` zero, no ``alpha / r`` scaling), the backbone frozen,
and one ``Conv2d(C, C, 3, padding=1)`` applied to the normalised patch-token map
(``x_norm_patchtokens``). The reference's convolution is a plain layer (not residual)
with PyTorch's default initialisation, so its features already differ from DINOv2's at
step 0; ``conv_init="identity"`` (default here) starts it at the identity map instead
(centre tap ``I``, other taps and bias 0): the same layer, parameter count and checkpoint
layout, but the model's features before finetuning are exactly the backbone's, which makes
"before vs after finetuning" comparisons start from the plain ViT.
``conv_init="reference"`` reproduces the reference.

Trainable parameters: ``blocks * 2 (q, v) * r * (C + C)`` for LoRA plus ``9 C^2 + C`` for
the convolution: 5,358,336 for ViT-B (C = 768; 5.36M as the paper reports, 5,309,184 of it
the convolution) and 1,352,064 for ViT-S (C = 384).

Input size: the reference resizes an image so that its long side is ``target_res = 640``
and then takes ``640 // downsample_factor (8) = 80`` patches along it, i.e. the ViT sees
an 80 x 14 = 1120 pixel long side and returns an 80-token-long feature map. Here
``long_side`` and ``downsample`` express both conventions: the token grid along the long
side is ``long_side // downsample`` (``downsample=None`` means the patch size, so the ViT
input's long side is ``long_side`` rounded down to a multiple of the patch) and the short
side keeps the aspect ratio (``int(short * long_side / long) // downsample`` tokens,
at least 1). ``long_side=None`` keeps the input's size and only rounds it down to a
multiple of the patch. Reference: ``long_side=640, downsample=8``; the CPU demo:
``long_side=224`` (ViT-S/14: a 16 x 16 grid). Resizing is bilinear with antialiasing
(as torchvision's ``resize`` on tensors that the reference calls).

References:
    You et al., "Multiview Equivariance Improves 3D Correspondence Understanding with
    Minimal Feature Finetuning", ICLR 2025, arXiv:2411.19458; code qq456cvb/3DCorrEnhance
    ``finetune.py`` (``FinetuneDINO.__init__``, ``get_feature``) and ``utils/model.py``
    (``_LoRA_qkv``). Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models",
    arXiv:2106.09685.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geo3d.nn import LoRAViT, VisionTransformer
from geo3d.nn._vit import imagenet_normalize

__all__ = ["CorrFeatureModel", "corr_trainable_parameter_count", "network_input_size"]


def corr_trainable_parameter_count(
    embed_dim: int, lora_rank: int = 4, lora_blocks: int = 4, conv: bool = True
) -> int:
    """Trainable parameters of :class:`CorrFeatureModel`: ``lora_blocks * 2 * r * 2C``
    (q and v, ``A (r, C)`` and ``B (C, r)``) plus ``9 C^2 + C`` for the convolution.

    Example:
        >>> corr_trainable_parameter_count(768), corr_trainable_parameter_count(384)
        (5358336, 1352064)
    """
    c = int(embed_dim)
    return lora_blocks * 2 * lora_rank * 2 * c + ((9 * c * c + c) if conv else 0)


def network_input_size(
    height: int,
    width: int,
    patch_size: int,
    long_side: int | None = None,
    downsample: int | None = None,
) -> tuple[int, int]:
    """The ViT input size ``(H', W')`` (multiples of ``patch_size``) for an image of
    ``height x width`` pixels (conventions in the module docstring).

    Raises:
        ValueError: for sizes, ``long_side`` or ``downsample`` that are not positive ints.

    Example:
        >>> network_input_size(512, 512, 14, long_side=640, downsample=8)  # the reference
        (1120, 1120)
        >>> network_input_size(480, 640, 14, long_side=224)
        (168, 224)
        >>> network_input_size(100, 60, 14)
        (98, 56)
    """
    for name, v in (("height", height), ("width", width), ("patch_size", patch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    for name, v in (("long_side", long_side), ("downsample", downsample)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{name}: expected a positive int or None, got {v!r}")
    d = patch_size if downsample is None else downsample
    if long_side is None:
        return max(1, height // patch_size) * patch_size, max(1, width // patch_size) * patch_size
    # the reference: tgt = (int(H * L / W), L) for landscape / square, (L, int(W * L / H))
    if width >= height:
        th, tw = int(height * long_side / width), long_side
    else:
        th, tw = long_side, int(width * long_side / height)
    return max(1, th // d) * patch_size, max(1, tw // d) * patch_size


class CorrFeatureModel(nn.Module):
    """Frozen ViT + LoRA (q, v of the last blocks) + 3x3 convolution on the token map.

    A feature extractor ``images (B, 3, H, W) in [0, 1] -> (B, C, h, w)``: images are
    resized (:func:`network_input_size`), ImageNet-normalised, run through the adapted
    ViT, and the final-norm patch tokens go through the convolution.

    Args:
        vit: a :class:`~geo3d.nn.VisionTransformer` (e.g. from :func:`geo3d.nn.load_vit`);
            its parameters are frozen in place and its last ``lora_blocks`` ``qkv`` layers
            are wrapped (the same object is adapted: pass a copy to keep the original).
        lora_rank: LoRA rank ``r`` (reference: 4).
        lora_blocks: number of last blocks adapted (reference: 4).
        conv: add the 3x3 convolution (reference: yes).
        conv_init: ``"identity"`` (default: output = backbone features at initialisation)
            or ``"reference"`` (PyTorch's default init, as the reference).
        long_side, downsample: input resizing (module docstring); ``None`` keeps the input
            size rounded down to a multiple of the patch.
        generator: source of the LoRA ``A`` (and the reference conv) initialisation.

    Attributes:
        lora: the :class:`~geo3d.nn.LoRAViT` holding adapters and convolution.
        vit: the backbone (property, the same module as ``lora.vit``).

    Raises:
        ValueError: for a ``vit`` that is not a VisionTransformer, ``lora_rank`` or
            ``lora_blocks`` not an int in ``1..depth``, an unknown ``conv_init``, or bad
            ``long_side`` / ``downsample``.

    Example:
        >>> vit = VisionTransformer(embed_dim=32, depth=4, num_heads=2, img_size=28)
        >>> m = CorrFeatureModel(vit, long_side=56)
        >>> m(torch.rand(2, 3, 40, 60)).shape
        torch.Size([2, 32, 2, 4])
        >>> m.trainable_parameters() == corr_trainable_parameter_count(32)
        True

    Source: qq456cvb/3DCorrEnhance ``finetune.py`` (``FinetuneDINO``).
    """

    def __init__(
        self,
        vit: VisionTransformer,
        lora_rank: int = 4,
        lora_blocks: int = 4,
        conv: bool = True,
        *,
        conv_init: Literal["identity", "reference"] = "identity",
        long_side: int | None = None,
        downsample: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(vit, VisionTransformer):
            raise ValueError(
                f"vit: expected a geo3d.nn.VisionTransformer, got {type(vit).__name__}"
            )
        depth = len(vit.blocks)
        if (
            not isinstance(lora_blocks, int)
            or isinstance(lora_blocks, bool)
            or not (1 <= lora_blocks <= depth)
        ):
            raise ValueError(f"lora_blocks: expected an int in [1, {depth}], got {lora_blocks!r}")
        if not isinstance(lora_rank, int) or isinstance(lora_rank, bool) or lora_rank < 1:
            raise ValueError(f"lora_rank: expected an int >= 1, got {lora_rank!r}")
        if conv_init not in ("identity", "reference"):
            raise ValueError(f"conv_init: expected 'identity' or 'reference', got {conv_init!r}")
        network_input_size(1, 1, vit.patch_size, long_side, downsample)  # checks both
        self.lora = LoRAViT(
            vit,
            rank=lora_rank,
            blocks=list(range(depth - lora_blocks, depth)),
            targets=("q", "v"),
            scale=1.0,
            refine_conv=bool(conv),
            generator=generator,
        )
        self.long_side, self.downsample = long_side, downsample
        self.conv_init = conv_init
        self.config = {
            "lora_rank": lora_rank,
            "lora_blocks": lora_blocks,
            "conv": bool(conv),
            "conv_init": conv_init,
            "long_side": long_side,
            "downsample": downsample,
        }
        if conv and conv_init == "identity" and not vit.cls_token.is_meta:
            self.reset_conv_to_identity()

    @property
    def vit(self) -> VisionTransformer:
        return self.lora.vit

    @property
    def patch_size(self) -> int:
        return int(self.lora.vit.patch_size)

    @property
    def embed_dim(self) -> int:
        return int(self.lora.vit.embed_dim)

    @torch.no_grad()
    def reset_conv_to_identity(self) -> None:
        """Set the convolution to the identity map (centre tap ``I``, rest and bias 0)."""
        conv = self.lora.refine_conv
        if conv is None:
            raise ValueError("conv: expected a model with the convolution, got conv=False")
        conv.weight.zero_()
        c = conv.weight.shape[0]
        conv.weight[torch.arange(c), torch.arange(c), 1, 1] = 1.0
        conv.bias.zero_()

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """ViT input size for an image of ``height x width`` (:func:`network_input_size`)."""
        return network_input_size(height, width, self.patch_size, self.long_side, self.downsample)

    def prepare(self, images: Tensor) -> Tensor:
        """Resize ``images (B, 3, H, W)`` in [0, 1] to :meth:`input_size` (bilinear,
        antialiased) and ImageNet-normalise them; returns ``(B, 3, H', W')``.

        Raises:
            ValueError: for images that are not a floating ``(B, 3, H, W)`` tensor.
        """
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images: expected shape (B, 3, H, W) RGB in [0, 1], got {got}")
        if not images.is_floating_point():
            raise ValueError(
                f"images: expected floating RGB in [0, 1] (convert uint8 with .float() / 255), "
                f"got dtype {images.dtype}"
            )
        size = self.input_size(int(images.shape[2]), int(images.shape[3]))
        if tuple(images.shape[2:]) != size:
            images = F.interpolate(
                images, size=size, mode="bilinear", align_corners=False, antialias=True
            )
        return imagenet_normalize(images)

    def forward_features(self, images: Tensor) -> dict[str, Tensor]:
        """:meth:`geo3d.nn.LoRAViT.forward_features` of :meth:`prepare` d images:
        ``patch_tokens (B, C, h, w)`` (after the convolution), ``patch_tokens_backbone``
        (before it, when there is one), ``cls``, ``registers``, ``prenorm``."""
        return self.lora.forward_features(self.prepare(images))

    def forward(self, images: Tensor) -> Tensor:
        """Feature map ``(B, C, h, w)`` of ``images (B, 3, H, W)`` float in [0, 1] (not
        L2-normalised; the loss and the metrics normalise). ``h, w`` = the token grid of
        :meth:`input_size`. Images must have the model's dtype (as the ViT: no silent cast).
        """
        return self.forward_features(images)["patch_tokens"]

    # ----------------------------------------------------------------- adapters
    def trainable_parameters(self) -> int:
        """Number of parameters with ``requires_grad`` (LoRA ``A``/``B`` + convolution)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """Trainable weights only, detached: ``blocks.{i}.{q,v}.{A,B}`` and
        ``refine_conv.{weight,bias}`` (:meth:`geo3d.nn.LoRAViT.adapter_state_dict`).

        Raises:
            ValueError: after :meth:`merge` (the adapters no longer exist).
        """
        return self.lora.adapter_state_dict()

    def load_adapter(self, source: Mapping[str, Tensor] | str | os.PathLike) -> None:
        """Load trainable weights from an :meth:`adapter_state_dict` dict, or from a file
        written by :meth:`save_adapter` (geo3d or the reference's ``w_a_000``/``w_b_000``
        + ``refine_conv`` layout, including the reference's Lightning ``.ckpt``).

        Raises:
            FileNotFoundError: for a missing file.
            ValueError: for missing/unexpected keys, shapes that do not match, an
                unreadable file, or a merged model.
        """
        if isinstance(source, (str, os.PathLike)):
            self.lora.load_adapters(source)
            return
        if not isinstance(source, Mapping):
            raise ValueError(
                f"source: expected a state dict or a path, got {type(source).__name__}"
            )
        self.lora._load_obj({"format": "geo3d.lora", "state_dict": dict(source)})

    def save_adapter(
        self, path: str | os.PathLike, format: Literal["geo3d", "reference"] = "geo3d"
    ) -> Path:
        """Write the trainable weights atomically (:meth:`geo3d.nn.LoRAViT.save_adapters`)."""
        return self.lora.save_adapters(path, format)

    def merge(self) -> CorrFeatureModel:
        """Fold the LoRA updates into the ``qkv`` weights in place (same outputs, no
        adapter cost at inference); the convolution stays. Returns ``self``."""
        self.lora.merge_()
        return self
