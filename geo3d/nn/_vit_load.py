"""Load DINOv2 weights from local disk: official ``.pth`` state dicts and Hugging Face folders.

Nothing is downloaded. Official files load with ``torch.load(weights_only=True)``; Hugging
Face folders (``config.json`` + ``model.safetensors``, a sharded
``model.safetensors.index.json``, or ``pytorch_model.bin``) are converted to the official
key layout, which :class:`~geo3d.nn.VisionTransformer` uses.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from geo3d._validation import error_summary

from ._vit import VisionTransformer

__all__ = ["load_vit", "vit_from_state_dict", "hf_to_official_state_dict"]

_HF_MODEL_TYPES = ("dinov2", "dinov2_with_registers")
# HF key (after "encoder.layer.N.") -> official key (after "blocks.N."); q/k/v and the
# SwiGLU gate/up pairs are concatenated separately.
_HF_LAYER_RENAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.o_proj": "attn.proj",  # transformers >= 5
    "attention.output.dense": "attn.proj",  # older transformers
    "layer_scale1": "ls1.gamma",
    "layer_scale2": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.down_proj": "mlp.w3",  # transformers >= 5 SwiGLU
    "mlp.weights_out": "mlp.w3",  # older SwiGLU
    "mlp.weights_in": "mlp.w12",  # older SwiGLU (already [gate; up])
}
_HF_QKV = {
    "attention.q_proj": 0,
    "attention.k_proj": 1,
    "attention.v_proj": 2,
    "attention.attention.query": 0,
    "attention.attention.key": 1,
    "attention.attention.value": 2,
}
_HF_GATE_UP = {"mlp.gate_proj": 0, "mlp.up_proj": 1}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def _unreadable(path: Path, what: str, err: BaseException) -> ValueError:
    return ValueError(
        f"path: expected {what}, got a file that cannot be read: {str(path)!r} "
        f"({type(err).__name__}: {error_summary(err)})"
    )


def _read(path: Path, what: str, reader):
    """``reader(path)``; a corrupt file (truncated, garbage, wrong format) becomes a
    ValueError naming ``path`` (chained); missing files and other OS errors pass through."""
    try:
        return reader(path)
    except (OSError, MemoryError):
        raise
    except Exception as err:  # torch/pickle/json/safetensors each raise their own kinds
        raise _unreadable(path, what, err) from err


def _read_json(path: Path) -> dict:
    obj = _read(path, "a JSON file", lambda f: json.loads(f.read_text(encoding="utf-8")))
    if not isinstance(obj, dict):
        raise ValueError(f"path: expected a JSON object in {str(path)!r}, got {type(obj).__name__}")
    return obj


def _torch_load(path: Path):
    return _read(
        path,
        "a torch checkpoint (torch.load, weights_only=True)",
        lambda f: torch.load(f, map_location="cpu", weights_only=True),
    )


def _check_tensor_dict(obj, path: Path) -> None:
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(
            f"path: expected a state dict of tensors, got {type(obj).__name__} in {str(path)!r}"
        )


def _fmt(keys, limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def hf_to_official_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Convert a transformers ``Dinov2Model``/``Dinov2WithRegistersModel`` state dict to
    the official DINOv2 layout (the one :class:`~geo3d.nn.VisionTransformer` uses).

    Accepts both the transformers >= 5 names (``attention.{q,k,v,o}_proj``,
    ``mlp.{gate,up,down}_proj``) and the older ones (``attention.attention.{query,key,value}``,
    ``attention.output.dense``, ``mlp.weights_in/weights_out``); an optional ``dinov2.``
    prefix (task models) is stripped. q/k/v are concatenated into ``attn.qkv`` and
    gate/up into ``mlp.w12``.

    Args:
        state_dict: name -> tensor.

    Returns:
        official-layout state dict.

    Raises:
        ValueError: naming keys that are not part of a DINOv2 backbone, or incomplete
            q/k/v or gate/up groups.

    Example:
        >>> sd = {"embeddings.cls_token": torch.zeros(1, 1, 8), "layernorm.weight": torch.ones(8)}
        >>> sorted(hf_to_official_state_dict(sd))
        ['cls_token', 'norm.weight']
    """
    if all(k.startswith("dinov2.") for k in state_dict):
        state_dict = {k[len("dinov2.") :]: v for k, v in state_dict.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[int, Tensor]] = {}
    gate_up: dict[tuple[int, str], dict[int, Tensor]] = {}
    unexpected = []
    for key, val in state_dict.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = val
            continue
        m = _LAYER_RE.match(key)
        if m is None:
            unexpected.append(key)
            continue
        i, name, leaf = int(m.group(1)), m.group(2), m.group(3)
        if name in _HF_QKV and leaf != "lambda1":
            qkv.setdefault((i, leaf), {})[_HF_QKV[name]] = val
        elif name in _HF_GATE_UP and leaf != "lambda1":
            gate_up.setdefault((i, leaf), {})[_HF_GATE_UP[name]] = val
        elif name in _HF_LAYER_RENAMES:
            new = _HF_LAYER_RENAMES[name]
            tail = "" if leaf == "lambda1" else "." + leaf
            out[f"blocks.{i}.{new}{tail}"] = val
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(
            f"state_dict: expected DINOv2 (transformers) backbone keys, got unexpected keys: "
            f"{_fmt(unexpected)}"
        )
    for groups, n, name in ((qkv, 3, "attn.qkv"), (gate_up, 2, "mlp.w12")):
        for (i, leaf), parts in sorted(groups.items()):
            if len(parts) != n:
                raise ValueError(
                    f"state_dict: expected {n} parts for blocks.{i}.{name}.{leaf}, got {len(parts)}"
                )
            shapes = [tuple(parts[j].shape) for j in range(n)]
            if len(set(shapes)) != 1 or not shapes[0]:
                raise ValueError(
                    f"state_dict: expected {n} equal-shape parts for blocks.{i}.{name}.{leaf}, "
                    f"got shapes {shapes}"
                )
            out[f"blocks.{i}.{name}.{leaf}"] = torch.cat([parts[j] for j in range(n)], 0)
    return out


def _strip_official(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in ("module.", "backbone.", "teacher.backbone.", "student.backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    # training checkpoints with block_chunks > 0 name blocks "blocks.<chunk>.<index>."
    chunked = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
    if any(chunked.match(k) for k in sd):
        sd = {
            (f"blocks.{m.group(2)}.{m.group(3)}" if (m := chunked.match(k)) else k): v
            for k, v in sd.items()
        }
    return sd


def vit_from_state_dict(
    state_dict: dict[str, Tensor],
    num_heads: int | None = None,
    interpolate: Literal["official", "hf"] = "official",
    norm_eps: float = 1e-6,
    strict: bool = True,
    **kwargs,
) -> VisionTransformer:
    """Build a :class:`~geo3d.nn.VisionTransformer` whose size is read from official-layout
    weights, and load them.

    Width, depth, patch size, native size (``pos_embed``), registers, LayerScale, MLP vs
    SwiGLU and the feed-forward width come from the tensors; the head count does not (it
    is not stored): DINOv2 uses 64-dim heads, so ``num_heads`` defaults to
    ``embed_dim // 64``.

    Args:
        state_dict: official DINOv2 keys (prefixes ``module.``/``backbone.`` and chunked
            ``blocks.C.N.`` names are accepted).
        num_heads: attention heads (default ``embed_dim // 64``).
        interpolate: ``"official"`` or ``"hf"`` position-embedding resizing.
        norm_eps: LayerNorm epsilon.
        strict: raise on missing or unexpected keys (else they are ignored).
        **kwargs: further :class:`~geo3d.nn.VisionTransformer` arguments.

    Returns:
        the model in eval mode, in the weights' dtype.

    Raises:
        ValueError: if a required key is absent, naming a tensor whose shape does not fit
            the size read from the weights (key, expected and actual shape), or
            (``strict``) naming missing or unexpected keys.

    Example:
        >>> vit = VisionTransformer(embed_dim=64, depth=1, num_heads=1, img_size=28)
        >>> vit_from_state_dict(vit.state_dict()).num_heads
        1
    """
    sd = _strip_official(dict(state_dict))
    for need in ("cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        if need not in sd:
            raise ValueError(f"state_dict: expected DINOv2 key {need!r}, got keys {_fmt(sd)}")
    for key, ndim in (
        ("cls_token", 3),
        ("patch_embed.proj.weight", 4),
        ("pos_embed", 3),
        ("register_tokens", 3),
        ("blocks.0.mlp.fc1.weight", 2),
        ("blocks.0.mlp.w12.weight", 2),
    ):
        if key in sd and (not isinstance(sd[key], Tensor) or sd[key].ndim != ndim):
            got = tuple(sd[key].shape) if isinstance(sd[key], Tensor) else type(sd[key]).__name__
            raise ValueError(f"{key}: expected a {ndim}-d tensor, got shape {got}")
    dim = sd["cls_token"].shape[-1]
    pw = sd["patch_embed.proj.weight"]
    if pw.shape[-1] != pw.shape[-2]:
        raise ValueError(
            f"patch_embed.proj.weight: expected a square kernel, got {tuple(pw.shape)}"
        )
    patch, in_chans = int(pw.shape[-1]), int(pw.shape[1])
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k)))
    heads = num_heads if num_heads is not None else max(dim // 64, 1)
    swiglu = "blocks.0.mlp.w12.weight" in sd
    if swiglu:
        hidden = sd["blocks.0.mlp.w12.weight"].shape[0] // 2
    elif "blocks.0.mlp.fc1.weight" in sd:
        hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    else:
        raise ValueError(
            "state_dict: expected 'blocks.0.mlp.fc1.weight' or 'blocks.0.mlp.w12.weight', "
            f"got keys {_fmt(k for k in sd if k.startswith('blocks.0.'))}"
        )
    pos_kw: dict = {}
    if "pos_embed" in sd:
        n = sd["pos_embed"].shape[1] - 1
        m = int(round(n**0.5))
        if m * m != n:
            raise ValueError(f"pos_embed: expected 1 + M*M positions, got {n + 1}")
        img_size = m * patch
    else:
        img_size = patch
        pos_kw["pos_encoding"] = kwargs.pop("pos_encoding", None)
    regs = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    layerscale = "blocks.0.ls1.gamma" in sd
    dtype = sd["cls_token"].dtype
    model = VisionTransformer(
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        patch_size=patch,
        img_size=img_size,
        num_register_tokens=regs,
        ffn="swiglu" if swiglu else "mlp",
        ffn_hidden=hidden,
        init_values=1.0 if layerscale else None,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        norm_eps=norm_eps,
        in_chans=in_chans,
        interpolate=interpolate,
        device="meta",
        dtype=dtype,
        **pos_kw,
        **kwargs,
    )
    expected = model.state_dict()
    for key, val in sd.items():
        want = expected.get(key)
        if want is not None and (not isinstance(val, Tensor) or val.shape != want.shape):
            got = tuple(val.shape) if isinstance(val, Tensor) else type(val).__name__
            raise ValueError(
                f"{key}: expected shape {tuple(want.shape)} (from the model size read from "
                f"the weights), got {got}"
            )
    missing_all, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing_all if k != "mask_token"]  # unused at inference
    if strict and (missing or unexpected):
        parts = []
        if unexpected:
            parts.append(f"unexpected keys: {_fmt(unexpected)}")
        if missing:
            parts.append(f"missing keys: {_fmt(missing)}")
        raise ValueError(f"state_dict: expected DINOv2 keys only, got {'; '.join(parts)}")
    params = dict(model.named_parameters())
    for name in missing_all:
        p = params.get(name)
        if p is not None and p.is_meta:  # not in the file (mask_token, or strict=False)
            mod, _, leaf = name.rpartition(".")
            owner = model.get_submodule(mod) if mod else model
            setattr(owner, leaf, torch.nn.Parameter(torch.zeros(p.shape, dtype=p.dtype)))
    return model.eval()


def _load_hf_folder(folder: Path) -> tuple[dict[str, Tensor], dict]:
    config = _read_json(folder / "config.json")
    mt = config.get("model_type")
    if mt not in _HF_MODEL_TYPES:
        raise ValueError(
            f"path: expected a config.json with model_type in {_HF_MODEL_TYPES}, got {mt!r} "
            f"in {str(folder / 'config.json')!r}"
        )
    act = config.get("hidden_act", "gelu")
    if not config.get("use_swiglu_ffn", False) and act != "gelu":
        raise ValueError(
            f"hidden_act: expected 'gelu' (as DINOv2), got {act!r} in "
            f"{str(folder / 'config.json')!r}"
        )
    st, idx, binf = (
        folder / n
        for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    )
    if st.exists() or idx.exists():
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors comes with transformers
            raise ImportError(
                "load_vit: reading model.safetensors needs safetensors; "
                "install it with `pip install 'geo3d[hf]'` (or `pip install safetensors`)"
            ) from e

        if st.exists():
            files = [st]
        else:
            wmap = _read_json(idx).get("weight_map")
            if not isinstance(wmap, dict) or not all(isinstance(f, str) for f in wmap.values()):
                raise ValueError(
                    f"path: expected a 'weight_map' of file names in {str(idx)!r}, "
                    f"got {type(wmap).__name__}"
                )
            files = sorted({folder / f for f in wmap.values()})
        sd: dict[str, Tensor] = {}
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(
                    f"path: expected the shard {f.name!r} listed in {str(idx)!r}, got no such file"
                )
            sd.update(_read(f, "a safetensors file", lambda x: load_file(str(x))))
    elif binf.exists():
        sd = _torch_load(binf)
        _check_tensor_dict(sd, binf)
    else:
        raise ValueError(
            f"path: expected model.safetensors or pytorch_model.bin in {folder}, got "
            f"{sorted(p.name for p in folder.iterdir())}"
        )
    return sd, config


def load_vit(
    path: str | os.PathLike,
    interpolate: Literal["official", "hf"] = "official",
    num_heads: int | None = None,
    strict: bool = True,
    **kwargs,
) -> VisionTransformer:
    """Load a DINOv2 ViT from local disk (official ``.pth`` or Hugging Face folder).

    Formats:

    - an official state-dict file (``dinov2_vits14_pretrain.pth``,
      ``dinov2_vitb14_reg4_pretrain.pth``, ...), read with ``torch.load(weights_only=True)``;
      a dict wrapping it under ``"model"``, ``"state_dict"`` or ``"teacher"`` also works;
    - a transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` folder (``config.json``
      + ``model.safetensors``, sharded safetensors, or ``pytorch_model.bin``), with either
      the transformers >= 5 or the older key names (see :func:`hf_to_official_state_dict`).

    Size, registers, LayerScale and MLP/SwiGLU are inferred from the weights; the head
    count comes from ``config.json`` for HF folders and defaults to ``embed_dim // 64``
    (DINOv2's head width) for official files. Register models interpolate position
    embeddings as the official code (size + antialias); ``interpolate="hf"`` reproduces
    transformers for models without registers (no 0.1 offset, ~5e-2 different features
    at non-native sizes). For HF folders, ``interpolate`` still defaults to ``"official"``.

    Args:
        path: a ``.pth``/``.pt`` file or a folder.
        interpolate: ``"official"`` or ``"hf"``.
        num_heads: overrides the head count.
        strict: raise on missing/unexpected keys.
        **kwargs: further :class:`~geo3d.nn.VisionTransformer` arguments (e.g.
            ``patch_stride``).

    Returns:
        the model in eval mode, on CPU, in the weights' dtype.

    Raises:
        FileNotFoundError: if ``path`` (or a shard named in a safetensors index) does not
            exist.
        ValueError: naming the file, for an unknown format, a file that cannot be read
            (truncated or corrupt ``.pth``/``.bin``/``.safetensors``, invalid
            ``config.json``; the reader's error is chained as ``__cause__``), unexpected or
            missing keys, or a tensor whose shape does not fit the model size (naming the
            key, the expected and the actual shape).

    Example:
        >>> import tempfile, os
        >>> vit = VisionTransformer(embed_dim=64, depth=1, num_heads=1, img_size=28)
        >>> f = os.path.join(tempfile.mkdtemp(), "w.pth"); torch.save(vit.state_dict(), f)
        >>> load_vit(f).embed_dim
        64
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: expected an existing file or folder, got {str(path)!r}")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(
                f"path: expected a Hugging Face folder with config.json, got {str(path)!r}"
            )
        sd, config = _load_hf_folder(path)
        if num_heads is None:
            num_heads = config.get("num_attention_heads")
        kwargs.setdefault("norm_eps", config.get("layer_norm_eps", 1e-6))
        try:
            return vit_from_state_dict(
                hf_to_official_state_dict(sd), num_heads, interpolate, strict=strict, **kwargs
            )
        except ValueError as err:
            raise ValueError(f"path {str(path)!r}: {err}") from err
    obj = _torch_load(path)
    if isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        for key in ("model", "state_dict", "teacher"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    _check_tensor_dict(obj, path)
    try:
        if any(k.startswith(("embeddings.", "encoder.layer.", "dinov2.")) for k in obj):
            obj = hf_to_official_state_dict(obj)
        return vit_from_state_dict(obj, num_heads, interpolate, strict=strict, **kwargs)
    except ValueError as err:
        raise ValueError(f"path {str(path)!r}: {err}") from err
