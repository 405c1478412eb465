"""A compact Vision Transformer with DINOv2's architecture (and its parameter names).

The module tree mirrors the official code (``facebookresearch/dinov2``,
``dinov2/models/vision_transformer.py``): ``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``register_tokens``, ``mask_token``, ``blocks.N.{norm1, attn.qkv, attn.proj,
ls1.gamma, norm2, mlp.fc1/fc2 | mlp.w12/w3, ls2.gamma}``, ``norm``; an official state
dict therefore loads with ``load_state_dict`` (see :func:`geo3d.nn.load_vit` for files).

References:
    Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision",
    arXiv:2304.07193. Darcet et al., "Vision Transformers Need Registers",
    arXiv:2309.16588.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_normalize",
    "interpolate_pos_embed",
    "PatchEmbed",
    "VisionTransformer",
    "vit_small",
    "vit_base",
    "vit_large",
    "vit_giant2",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: DINOv2 sizes: (embed_dim, depth, num_heads, ffn). Head dimension is 64 in all of them.
VIT_SIZES: dict[str, tuple[int, int, int, str]] = {
    "small": (384, 12, 6, "mlp"),
    "base": (768, 12, 12, "mlp"),
    "large": (1024, 24, 16, "mlp"),
    "giant2": (1536, 40, 24, "swiglu"),
}


def imagenet_normalize(images: Tensor) -> Tensor:
    """ImageNet normalisation expected by DINOv2: ``(x - mean) / std`` per RGB channel.

    Args:
        images: ``(..., 3, H, W)`` RGB in ``[0, 1]`` (not 0..255, not BGR).

    Returns:
        ``(..., 3, H, W)`` normalised with mean ``(0.485, 0.456, 0.406)`` and std
        ``(0.229, 0.224, 0.225)``.

    Raises:
        ValueError: if ``images`` is not a floating tensor with 3 channels at dim -3.

    Example:
        >>> x = imagenet_normalize(torch.full((1, 3, 2, 2), 0.5))
        >>> round(float(x[0, 0, 0, 0]), 4)
        0.0655
    """
    if not isinstance(images, Tensor) or images.ndim < 3 or images.shape[-3] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images: expected a tensor of shape (..., 3, H, W), got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images: expected a floating tensor in [0, 1], got dtype {images.dtype}")
    mean = images.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (images - mean) / std


def interpolate_pos_embed(
    pos_embed: Tensor,
    grid: tuple[int, int],
    offset: float = 0.1,
    antialias: bool = False,
) -> Tensor:
    """Resize learned absolute position embeddings to a patch grid, as DINOv2 does.

    The CLS entry is kept; the ``M x M`` patch entries are resampled bicubically to
    ``grid = (H', W')``. With ``offset > 0`` the official code passes a *scale factor*
    ``(H' + offset) / M, (W' + offset) / M`` (a historical work-around from DINO issue #8
    that it keeps for backward compatibility); with ``offset == 0`` it passes the output
    size. DINOv2 models without registers use ``offset=0.1, antialias=False``; register
    models ``offset=0, antialias=True``. Transformers' ``Dinov2Model`` uses
    ``offset=0, antialias=False`` (and its registers model ``offset=0, antialias=True``),
    so at non-native sizes its outputs differ from the official non-register model.
    At the native grid ``(M, M)`` the embeddings are returned unchanged (as in both codes).

    Args:
        pos_embed: ``(1, 1 + M*M, C)``.
        grid: target patch grid ``(H', W')``.
        offset: the scale-factor offset (0 = use the output size).
        antialias: ``antialias`` flag of :func:`torch.nn.functional.interpolate`.

    Returns:
        ``(1, 1 + H'*W', C)`` in ``pos_embed``'s dtype (computed in float32 for half
        precision, in float64 for float64).

    Raises:
        ValueError: if ``pos_embed`` does not hold a square number of patch positions.

    Example:
        >>> interpolate_pos_embed(torch.randn(1, 1 + 16, 8), (6, 3)).shape
        torch.Size([1, 19, 8])

    Source: ``interpolate_pos_encoding`` in facebookresearch/dinov2
    ``dinov2/models/vision_transformer.py`` and transformers' ``modeling_dinov2.py``.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed: expected shape (1, 1 + M*M, C), got {tuple(pos_embed.shape)}")
    n = pos_embed.shape[1] - 1
    m = math.isqrt(max(n, 0))
    if m * m != n or n == 0:
        raise ValueError(
            f"pos_embed: expected a square number of patch positions, got {n} "
            f"(shape {tuple(pos_embed.shape)})"
        )
    h, w = int(grid[0]), int(grid[1])
    if (h, w) == (m, m):
        return pos_embed
    dim = pos_embed.shape[-1]
    work = pos_embed if pos_embed.dtype == torch.float64 else pos_embed.float()
    patch = work[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if offset:
        kwargs: dict = {"scale_factor": (float(h + offset) / m, float(w + offset) / m)}
    else:
        kwargs = {"size": (h, w)}
    patch = F.interpolate(patch, mode="bicubic", antialias=antialias, **kwargs)
    if patch.shape[-2:] != (h, w):  # cannot happen for offset in [0, 1); guards odd offsets
        raise ValueError(
            f"offset: expected a value giving grid {(h, w)}, got {tuple(patch.shape[-2:])}"
        )
    patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat((work[:, :1], patch), dim=1).to(pos_embed.dtype)


class PatchEmbed(nn.Module):
    """Patch embedding: a ``patch x patch`` convolution with stride ``stride``.

    ``stride < patch_size`` gives overlapping patches (the grid is
    ``1 + (H - patch) // stride`` by ``1 + (W - patch) // stride``).

    Args:
        patch_size: kernel size (square).
        in_chans: image channels.
        embed_dim: token width ``C``.
        stride: default stride (``None`` = ``patch_size``).

    Shape:
        ``(B, in_chans, H, W) -> (B, C, H', W')``.
    """

    def __init__(
        self,
        patch_size: int = 14,
        in_chans: int = 3,
        embed_dim: int = 384,
        stride: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.patch_size = int(patch_size)
        self.stride = int(stride) if stride is not None else self.patch_size
        self.proj = nn.Conv2d(
            in_chans, embed_dim, patch_size, patch_size, device=device, dtype=dtype
        )

    def forward(self, images: Tensor, stride: int | None = None) -> Tensor:
        s = self.stride if stride is None else int(stride)
        return F.conv2d(images, self.proj.weight, self.proj.bias, stride=s)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (DINOv2 layout)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, **factory) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads: expected a divisor of embed_dim={dim}, got {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **factory)
        self.proj = nn.Linear(dim, dim, **factory)
        self.attn_drop = 0.0

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        p = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class LayerScale(nn.Module):
    """Per-channel residual scale ``x * gamma`` (Touvron et al., CaiT, arXiv:2103.17239)."""

    def __init__(self, dim: int, init_values: float = 1.0, **factory) -> None:
        super().__init__()
        self.init_values = float(init_values)
        self.gamma = nn.Parameter(torch.empty(dim, **factory))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` (exact GELU, as ``nn.GELU()``)."""

    def __init__(self, dim: int, hidden: int, **factory) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, **factory)
        self.fc2 = nn.Linear(hidden, dim, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """``w3(SiLU(x1) * x2)`` with ``(x1, x2) = chunk(w12(x), 2)`` (DINOv2 giant)."""

    def __init__(self, dim: int, hidden: int, **factory) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden, **factory)
        self.w3 = nn.Linear(hidden, dim, **factory)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, ``x + ls2(ffn(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_hidden: int,
        ffn: str = "mlp",
        init_values: float | None = 1.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        **factory,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **factory)
        self.attn = Attention(dim, num_heads, qkv_bias, **factory)
        self.ls1 = LayerScale(dim, init_values, **factory) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **factory)
        cls = SwiGLUFFN if ffn == "swiglu" else Mlp
        self.mlp = cls(dim, ffn_hidden, **factory)
        self.ls2 = LayerScale(dim, init_values, **factory) if init_values else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self._residual(x, self.attn(self.norm1(x)), self.ls1)
        return self._residual(x, self.mlp(self.norm2(x)), self.ls2)

    @staticmethod
    def _residual(x: Tensor, y: Tensor, ls: nn.Module) -> Tensor:
        # x + gamma * y in one pass (addcmul) instead of a multiply and an add
        if type(ls) is LayerScale:
            return torch.addcmul(x, y, ls.gamma)
        return x + ls(y)


# A hook sees the patch-token grid (B, C, H', W') and the prefix tokens (B, 1 + R, C)
# (CLS then registers) and returns None (no change), a new grid, or (grid, prefix).
BlockHook = Callable[[Tensor, Tensor], "Tensor | tuple[Tensor, Tensor] | None"]


class VisionTransformer(nn.Module):
    """DINOv2-architecture ViT with dense outputs, replaceable parts and block hooks.

    Tokens are ``[CLS, registers (R), patches (H'*W')]``; blocks are pre-norm with
    LayerScale; attention uses :func:`torch.nn.functional.scaled_dot_product_attention`;
    the feed-forward is an MLP (GELU) or SwiGLU (giant). Parameter names follow the
    official code, so its state dicts load directly.

    Inputs are floating images ``(B, in_chans, H, W)`` in the model's dtype, already
    normalised with :func:`imagenet_normalize` (RGB in ``[0, 1]`` -> ImageNet mean/std),
    with ``H, W`` multiples of the patch size (more generally ``(H - patch) % stride == 0``).
    Nothing is cast silently: ``uint8`` images (convert with ``x.float() / 255``) and a
    dtype other than the model's (e.g. float64 images into a float32 model) raise
    ``ValueError`` (inside :func:`torch.autocast` the dtype check is skipped).

    Args:
        embed_dim: token width ``C``.
        depth: number of blocks.
        num_heads: attention heads (DINOv2: ``embed_dim // 64``).
        patch_size: patch size (14 for DINOv2; any positive int).
        img_size: native image size; the learned position table has
            ``(img_size // patch_size) ** 2`` patch entries (518 -> 37 x 37 for DINOv2).
        num_register_tokens: 0 or more register tokens (DINOv2 "reg" models: 4).
        ffn: ``"mlp"`` or ``"swiglu"``.
        ffn_hidden: feed-forward width; default ``4 * embed_dim`` for the MLP and
            ``(int(4 * embed_dim * 2 / 3) + 7) // 8 * 8`` for SwiGLU (as the official code).
        init_values: LayerScale initial value; ``None``/0 = no LayerScale.
        qkv_bias: bias in the qkv projection.
        norm_eps: LayerNorm epsilon.
        in_chans: image channels.
        patch_stride: default patch stride (``None`` = ``patch_size``; smaller values
            give overlapping patches, e.g. 7 for tracking).
        interpolate: ``"official"`` (facebookresearch/dinov2: scale factor with a 0.1
            offset for models without registers, output size + antialias with registers) or
            ``"hf"`` (transformers: output size, antialias only for the registers model).
        interpolate_offset, interpolate_antialias: override the ``"official"`` values.
        patch_embed: replaces the patch embedding; a module mapping
            ``(B, in_chans, H, W) -> (B, C, H', W')`` (it may accept a ``stride=`` keyword).
        pos_encoding: ``"learned"`` (absolute table ``pos_embed``, interpolated), ``None``
            (no position encoding) or a callable ``grid (B, C, H', W') -> (B, C, H', W')``
            whose output is *added* to the patch tokens (e.g. a depth-wise convolution).
        device, dtype: where to create the parameters (``device="meta"`` builds without
            memory, e.g. to count parameters).
        generator: source of the random initialisation.

    Raises:
        ValueError: for non-positive sizes, ``embed_dim`` not divisible by ``num_heads``,
            unknown ``ffn``/``interpolate``/``pos_encoding``; in the forward methods, for
            images of a wrong shape or dtype (non-floating, or not the model's dtype), and
            for a ``patch_embed`` or ``pos_encoding`` output of the wrong shape (naming
            the part, the expected and the actual shape).

    Example:
        >>> vit = VisionTransformer(embed_dim=64, depth=2, num_heads=2, img_size=28)
        >>> out = vit.forward_features(torch.rand(1, 3, 42, 28))
        >>> out["cls"].shape, out["patch_tokens"].shape, out["registers"].shape
        (torch.Size([1, 64]), torch.Size([1, 64, 3, 2]), torch.Size([1, 0, 64]))

    References:
        Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision",
        arXiv:2304.07193; Darcet et al., "Vision Transformers Need Registers",
        arXiv:2309.16588; code: facebookresearch/dinov2 ``dinov2/models/vision_transformer.py``.
    """

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        patch_size: int = 14,
        img_size: int = 518,
        num_register_tokens: int = 0,
        ffn: Literal["mlp", "swiglu"] = "mlp",
        ffn_hidden: int | None = None,
        init_values: float | None = 1.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        in_chans: int = 3,
        patch_stride: int | None = None,
        interpolate: Literal["official", "hf"] = "official",
        interpolate_offset: float | None = None,
        interpolate_antialias: bool | None = None,
        patch_embed: nn.Module | None = None,
        pos_encoding: str | Callable[[Tensor], Tensor] | None = "learned",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        for name, val, lo in (
            ("embed_dim", embed_dim, 1),
            ("depth", depth, 0),
            ("num_heads", num_heads, 1),
            ("patch_size", patch_size, 1),
            ("img_size", img_size, 1),
            ("num_register_tokens", num_register_tokens, 0),
            ("in_chans", in_chans, 1),
        ):
            if not isinstance(val, int) or isinstance(val, bool) or val < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {val!r}")
        if img_size < patch_size:
            raise ValueError(f"img_size: expected >= patch_size={patch_size}, got {img_size}")
        if embed_dim % num_heads:
            raise ValueError(
                f"num_heads: expected a divisor of embed_dim={embed_dim}, got {num_heads}"
            )
        if ffn not in ("mlp", "swiglu"):
            raise ValueError(f"ffn: expected 'mlp' or 'swiglu', got {ffn!r}")
        if interpolate not in ("official", "hf"):
            raise ValueError(f"interpolate: expected 'official' or 'hf', got {interpolate!r}")
        if patch_stride is not None and (
            not isinstance(patch_stride, int) or isinstance(patch_stride, bool) or patch_stride < 1
        ):
            raise ValueError(f"patch_stride: expected a positive int or None, got {patch_stride!r}")
        if not (pos_encoding in ("learned", None) or callable(pos_encoding)):
            raise ValueError(
                f"pos_encoding: expected 'learned', None or a callable, got {pos_encoding!r}"
            )
        if ffn_hidden is None:
            ffn_hidden = 4 * embed_dim
            if ffn == "swiglu":
                ffn_hidden = (int(ffn_hidden * 2 / 3) + 7) // 8 * 8
        self.embed_dim = self.num_features = embed_dim
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.img_size = img_size
        self.num_register_tokens = num_register_tokens
        self.ffn = ffn
        self.interpolate = interpolate
        reg = num_register_tokens > 0
        self.interpolate_offset = (
            (0.0 if reg else 0.1) if interpolate_offset is None else float(interpolate_offset)
        )
        self.interpolate_antialias = (
            reg if interpolate_antialias is None else bool(interpolate_antialias)
        )
        self.init_values = init_values

        # Own parameters are created without memory, then materialised and initialised
        # once, from `generator` (no draw from the global RNG).
        target = torch.device(device) if device is not None else torch.empty(0).device
        f = {"device": "meta", "dtype": dtype}
        m = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_stride, **f)
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim, **f))
        self.pos_embed = (
            nn.Parameter(torch.empty(1, 1 + m * m, embed_dim, **f))
            if pos_encoding == "learned"
            else None
        )
        self.register_tokens = (
            nn.Parameter(torch.empty(1, num_register_tokens, embed_dim, **f)) if reg else None
        )
        self.mask_token = nn.Parameter(torch.empty(1, embed_dim, **f))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, ffn_hidden, ffn, init_values, qkv_bias, norm_eps, **f)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps, **f)
        self.to_empty(device=target)
        self.init_weights(generator)
        if patch_embed is not None:
            self.patch_embed = patch_embed
        self.pos_encoding = pos_encoding if callable(pos_encoding) else None
        self._hooks: dict[tuple[str, int], dict[int, BlockHook]] = {}
        self._next_hook_id = 0

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """DINOv2's initialisation: truncated normal (std 0.02) for linear weights and
        ``pos_embed``, zero biases, ``N(0, 1e-6)`` CLS/register tokens, zero mask token,
        LayerScale at ``init_values``; PyTorch's default for the patch convolution."""
        if self.cls_token.is_meta:
            return
        g = generator
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.trunc_normal_(mod.weight, std=0.02, generator=g)
                if mod.bias is not None:
                    mod.bias.zero_()
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.fill_(1.0)
                mod.bias.zero_()
            elif isinstance(mod, LayerScale):
                mod.gamma.fill_(mod.init_values)
        if isinstance(self.patch_embed, PatchEmbed):
            conv = self.patch_embed.proj
            nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5), generator=g)
            bound = 1.0 / math.sqrt(conv.weight[0].numel())
            conv.bias.uniform_(-bound, bound, generator=g)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02, generator=g)
        self.cls_token.normal_(0.0, 1e-6, generator=g)
        if self.register_tokens is not None:
            self.register_tokens.normal_(0.0, 1e-6, generator=g)
        self.mask_token.zero_()

    # ----------------------------------------------------------------- hooks
    def register_block_hook(
        self, index: int, hook: BlockHook, when: Literal["before", "after"] = "after"
    ) -> _Handle:
        """Run ``hook(grid, prefix)`` before or after block ``index`` (negative = from the end).

        ``grid`` is the patch-token grid ``(B, C, H', W')`` and ``prefix`` the CLS and
        register tokens ``(B, 1 + R, C)``. The hook returns ``None`` (no change), a new grid
        of the same shape, or a tuple ``(grid, prefix)``. ``index == depth`` with
        ``when="before"`` runs before the final norm.

        Returns:
            a handle whose ``remove()`` unregisters the hook.

        Raises:
            ValueError: for an index outside the blocks or an unknown ``when``.

        Example:
            >>> vit = VisionTransformer(embed_dim=64, depth=2, num_heads=2, img_size=28)
            >>> h = vit.register_block_hook(0, lambda grid, prefix: 2 * grid, when="after")
            >>> h.remove()
        """
        depth = len(self.blocks)
        if when not in ("before", "after"):
            raise ValueError(f"when: expected 'before' or 'after', got {when!r}")
        if not callable(hook):
            raise ValueError(f"hook: expected a callable, got {type(hook).__name__}")
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(f"index: expected an int, got {index!r}")
        i = index + depth if index < 0 else index
        hi = depth if when == "before" else depth - 1
        if not 0 <= i <= hi:
            raise ValueError(f"index: expected in [{-depth}, {hi}], got {index}")
        key = ("before", i) if when == "before" else ("before", i + 1)
        store = self._hooks.setdefault(key, {})
        hid = self._next_hook_id
        self._next_hook_id += 1
        store[hid] = hook
        return _Handle(store, hid)

    def _run_hooks(self, i: int, x: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        hooks = self._hooks.get(("before", i))
        if not hooks:
            return x
        b, _, c = x.shape
        p = 1 + self.num_register_tokens
        h, w = grid_hw
        for hook in list(hooks.values()):
            prefix = x[:, :p]
            grid = x[:, p:].transpose(1, 2).reshape(b, c, h, w)
            out = hook(grid, prefix)
            if out is None:
                continue
            if isinstance(out, tuple):
                grid, prefix = out
            else:
                grid = out
            if grid.shape != (b, c, h, w):
                raise ValueError(
                    f"hook: expected a grid of shape {(b, c, h, w)}, got {tuple(grid.shape)}"
                )
            if prefix.shape != (b, p, c):
                raise ValueError(
                    f"hook: expected a prefix of shape {(b, p, c)}, got {tuple(prefix.shape)}"
                )
            x = torch.cat((prefix, grid.flatten(2).transpose(1, 2)), dim=1)
        return x

    # --------------------------------------------------------------- forward
    def _check_images(self, images: Tensor, stride: int) -> None:
        if not isinstance(images, Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images: expected shape (B, C, H, W), got {shape}")
        if not images.is_floating_point():
            raise ValueError(
                f"images: expected floating-point images (RGB in [0, 1] normalised with "
                f"imagenet_normalize; convert 0..255 integers with images.float() / 255), "
                f"got dtype {images.dtype}"
            )
        want = self.cls_token.dtype
        if images.dtype != want and not torch.is_autocast_enabled(images.device.type):
            raise ValueError(
                f"images: expected dtype {want} (the model's; convert with "
                f"images.to({want}) or the model with .to(dtype)), got {images.dtype}"
            )
        in_chans = (
            self.patch_embed.proj.in_channels
            if isinstance(self.patch_embed, PatchEmbed)
            else images.shape[1]
        )
        if images.shape[1] != in_chans:
            raise ValueError(
                f"images: expected {in_chans} channels at dim 1, got shape {tuple(images.shape)}"
            )
        if not isinstance(self.patch_embed, PatchEmbed):
            return
        p = self.patch_size
        for name, size in (("height", images.shape[2]), ("width", images.shape[3])):
            if size < p or (size - p) % stride:
                raise ValueError(
                    f"images: expected {name} >= {p} with ({name} - {p}) divisible by the "
                    f"patch stride {stride}, got shape {tuple(images.shape)}"
                )

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """The learned table resized to ``grid`` per ``self.interpolate``: ``(1, 1+H'W', C)``."""
        if self.pos_embed is None:
            raise ValueError("pos_encoding: this model has no learned position table")
        if self.interpolate == "hf":
            return interpolate_pos_embed(self.pos_embed, grid, 0.0, self.num_register_tokens > 0)
        return interpolate_pos_embed(
            self.pos_embed, grid, self.interpolate_offset, self.interpolate_antialias
        )

    def prepare_tokens(
        self, images: Tensor, masks: Tensor | None = None, patch_stride: int | None = None
    ) -> tuple[Tensor, tuple[int, int]]:
        """Embed patches, apply masks and position encoding, insert CLS and registers.

        Args:
            images: ``(B, in_chans, H, W)`` normalised images.
            masks: optional ``(B, H'*W')`` bool, True = replace the patch by ``mask_token``.
            patch_stride: overrides the patch stride for this call.

        Returns:
            tokens ``(B, 1 + R + H'*W', C)`` and the grid ``(H', W')``.
        """
        if patch_stride is not None and (
            not isinstance(patch_stride, int) or isinstance(patch_stride, bool) or patch_stride < 1
        ):
            raise ValueError(f"patch_stride: expected a positive int or None, got {patch_stride!r}")
        if isinstance(self.patch_embed, PatchEmbed):
            stride = self.patch_embed.stride if patch_stride is None else patch_stride
            self._check_images(images, stride)
            grid = self.patch_embed(images, stride=stride)
        else:
            self._check_images(images, 1)
            grid = (
                self.patch_embed(images)
                if patch_stride is None
                else self.patch_embed(images, stride=patch_stride)
            )
        b = images.shape[0]
        if (
            not isinstance(grid, Tensor)
            or grid.ndim != 4
            or grid.shape[:2] != (b, self.embed_dim)
            or grid.shape[2] < 1
            or grid.shape[3] < 1
        ):
            got = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
            raise ValueError(
                f"patch_embed: expected an output of shape (B={b}, C={self.embed_dim}, H', W'), "
                f"got {got}"
            )
        if grid.dtype != self.cls_token.dtype and not torch.is_autocast_enabled(grid.device.type):
            raise ValueError(
                f"patch_embed: expected an output of dtype {self.cls_token.dtype}, got {grid.dtype}"
            )
        b, c, h, w = grid.shape
        x = grid.flatten(2).transpose(1, 2)
        if masks is not None:
            if masks.shape != (b, h * w) or masks.dtype != torch.bool:
                raise ValueError(
                    f"masks: expected a bool tensor of shape {(b, h * w)}, got "
                    f"{tuple(masks.shape)} {masks.dtype}"
                )
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        cls = self.cls_token
        if self.pos_embed is not None:
            pos = self.position_embedding((h, w))
            cls = cls + pos[:, :1]
            x = x + pos[:, 1:]
        elif self.pos_encoding is not None:
            pe = self.pos_encoding(x.transpose(1, 2).reshape(b, c, h, w))
            if not isinstance(pe, Tensor) or pe.shape != (b, c, h, w):
                got = tuple(pe.shape) if isinstance(pe, Tensor) else type(pe).__name__
                raise ValueError(
                    f"pos_encoding: expected an output of shape {(b, c, h, w)} (the patch grid), "
                    f"got {got}"
                )
            x = x + pe.flatten(2).transpose(1, 2)
        parts = [cls.expand(b, -1, -1)]
        if self.register_tokens is not None:
            parts.append(self.register_tokens.expand(b, -1, -1))
        parts.append(x)
        return torch.cat(parts, dim=1), (h, w)

    def _blocks(
        self, x: Tensor, grid_hw: tuple[int, int], take: Sequence[int] = ()
    ) -> tuple[Tensor, list[Tensor]]:
        # hooks "after block i" are stored as "before block i + 1"; a taken output
        # includes the hooks that run after its block
        taken = []
        x = self._run_hooks(0, x, grid_hw)
        for i, blk in enumerate(self.blocks):
            x = self._run_hooks(i + 1, blk(x), grid_hw)
            if i in take:
                taken.append(x)
        return x, taken

    def _split(self, x: Tensor, grid_hw: tuple[int, int]) -> dict[str, Tensor]:
        b, _, c = x.shape
        p = 1 + self.num_register_tokens
        return {
            "cls": x[:, 0],
            "registers": x[:, 1:p],
            "patch_tokens": x[:, p:].transpose(1, 2).reshape(b, c, *grid_hw),
        }

    def forward_features(
        self,
        images: Tensor,
        masks: Tensor | None = None,
        patch_stride: int | None = None,
    ) -> dict[str, Tensor]:
        """Dense features after the final LayerNorm.

        Args:
            images: ``(B, in_chans, H, W)`` normalised (:func:`imagenet_normalize`).
            masks: optional ``(B, H'*W')`` bool (True = masked patch).
            patch_stride: overrides the patch stride for this call (overlapping patches).

        Returns:
            dict with ``cls (B, C)``, ``patch_tokens (B, C, H', W')``, ``registers
            (B, R, C)`` (normalised) and ``prenorm (B, 1 + R + H'W', C)`` (before the norm).

        Raises:
            ValueError: for a wrong image shape, a size not matching patch and stride, a
                non-floating dtype or one other than the model's, or a ``patch_embed`` /
                ``pos_encoding`` output of the wrong shape.
        """
        x, hw = self.prepare_tokens(images, masks, patch_stride)
        x, _ = self._blocks(x, hw)
        out = self._split(self.norm(x), hw)
        out["prenorm"] = x
        return out

    def get_intermediate_layers(
        self,
        images: Tensor,
        n: int | Sequence[int] = 1,
        norm: bool = True,
        patch_stride: int | None = None,
    ) -> list[dict[str, Tensor]]:
        """Outputs of the last ``n`` blocks (or of the block indices ``n``), each split as
        :meth:`forward_features` (``cls``, ``registers``, ``patch_tokens (B, C, H', W')``),
        optionally through the final norm; the list follows block order.

        Raises:
            ValueError: for ``n`` outside ``1..depth``, or indices that are not distinct
                ints (bools rejected) in ``[-depth, depth)``; for bad images as
                :meth:`forward_features`.
        """
        depth = len(self.blocks)
        if isinstance(n, bool):
            raise ValueError(f"n: expected an int in 1..{depth} or block indices, got {n!r}")
        if isinstance(n, int):
            if not 1 <= n <= depth:
                raise ValueError(f"n: expected 1..{depth}, got {n}")
            take = list(range(depth - n, depth))
        else:
            idx = list(n) if hasattr(n, "__iter__") and not isinstance(n, str) else None
            if (
                not idx
                or any(not isinstance(i, int) or isinstance(i, bool) for i in idx)
                or any(not -depth <= i < depth for i in idx)
            ):
                raise ValueError(
                    f"n: expected an int in 1..{depth} or block indices (ints, not bools) in "
                    f"[{-depth}, {depth - 1}], got {n!r}"
                )
            take = [i % depth for i in idx]
            if len(set(take)) != len(take):
                raise ValueError(f"n: expected distinct block indices, got {n!r}")
        x, hw = self.prepare_tokens(images, None, patch_stride)
        _, taken = self._blocks(x, hw, take)
        return [self._split(self.norm(t) if norm else t, hw) for t in taken]

    def forward(self, images: Tensor) -> Tensor:
        """Normalised CLS token ``(B, C)`` (the official model's output with an identity head)."""
        return self.forward_features(images)["cls"]

    normalize = staticmethod(imagenet_normalize)


class _Handle:
    """Removes one hook from its store (like :class:`torch.utils.hooks.RemovableHandle`)."""

    def __init__(self, store: dict, hid: int) -> None:
        self._store, self._id = store, hid

    def remove(self) -> None:
        self._store.pop(self._id, None)

    def __enter__(self) -> _Handle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _make(size: str, patch_size: int, **kwargs) -> VisionTransformer:
    dim, depth, heads, ffn = VIT_SIZES[size]
    kwargs.setdefault("ffn", ffn)
    return VisionTransformer(
        embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch_size, **kwargs
    )


def vit_small(patch_size: int = 14, **kwargs) -> VisionTransformer:
    """DINOv2 ViT-S (384 wide, 12 blocks, 6 heads); ``kwargs`` go to :class:`VisionTransformer`.

    Example:
        >>> vit_small(device="meta").embed_dim
        384
    """
    return _make("small", patch_size, **kwargs)


def vit_base(patch_size: int = 14, **kwargs) -> VisionTransformer:
    """DINOv2 ViT-B (768 wide, 12 blocks, 12 heads).

    Example:
        >>> vit_base(device="meta").num_heads
        12
    """
    return _make("base", patch_size, **kwargs)


def vit_large(patch_size: int = 14, **kwargs) -> VisionTransformer:
    """DINOv2 ViT-L (1024 wide, 24 blocks, 16 heads).

    Example:
        >>> len(vit_large(device="meta").blocks)
        24
    """
    return _make("large", patch_size, **kwargs)


def vit_giant2(patch_size: int = 14, **kwargs) -> VisionTransformer:
    """DINOv2 ViT-g (1536 wide, 40 blocks, 24 heads, SwiGLU with hidden width 4096).

    Example:
        >>> vit_giant2(device="meta").blocks[0].mlp.w12.out_features
        8192
    """
    return _make("giant2", patch_size, **kwargs)
