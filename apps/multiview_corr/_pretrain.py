"""Starting weights when no DINOv2 checkpoint is on disk: a ViT pretrained on synthetic renders.

The paper finetunes DINOv2; here no checkpoint can be downloaded. :func:`pretrain_vit`
is an attempt to give the default runs a backbone whose features describe local surface
geometry, with a cheap, fully supervised objective on renders of procedurally textured
objects (:mod:`geo3d.datasets.multiview_render`, the ``geo3d data render`` layout).

**Measured result: at the default budget it does NOT give better starting features than
random initialisation** (``benchmarks/mv_core_pretrain.py``, results in
``benchmarks/results/mv_core_pretrain.json``: plain ViT-S/14 at 224², no adapters, 6
held-out procedural objects, 24 view pairs <= 120° apart, 300 points each,
:func:`geo3d.eval.dense_correspondence_metrics`; APE in pixels / PCDP(bbox) at 0.1):
random init 32.5 / 0.33; these defaults 41.7 / 0.20; with ``rgb_weight=1`` 38.8 / 0.24;
with ``rgb_weight=5, lr=3e-4`` 37.4 / 0.26; the RGB image itself as a 3-channel feature
19.8 / 0.41. A random ViT's tokens are close to
a random projection of the patch pixels, which NN matching already exploits; 200 steps of
this objective trade that for smooth mask/depth information. Use random initialisation
(stated as such) or a real DINOv2 file unless a longer run is shown to help.

**Objective: dense geometry from one view.** A linear head on every patch token predicts,
for each of the ``p x p`` pixels of its patch (a pixel-shuffle decoder as in MAE's linear
head), five numbers: the foreground logit, the object-frame 3D point of the pixel (the
coordinate at which the solid procedural texture is evaluated, "texture coordinates"; in
``[-0.5, 0.5]^3`` for objects normalised to unit extent) and its camera z-depth relative
to the camera distance. Loss = BCE(mask) + mean L1(3D point) + mean L1(depth) over
foreground pixels. Why this one:

* the targets come free with every render (mask, depth, pose);
* a surface point has the same object coordinate in every view, so features that predict
  it are a step towards view-consistent descriptors, while the objective stays a
  *single-view* regression: the cross-view ranking loss of the finetuning is not used, so
  the finetuning still has something to add;
* it costs one forward/backward of the ViT per image and a linear layer (no decoder, no
  second view, no EMA teacher), so a few hundred CPU steps are affordable.

Rendered pretraining data must not contain the objects used for evaluation: by default
(``data_root=None``) its own procedural objects are rendered with ``render_seed=1000``
into the cache (the finetuning datasets of this app use other seeds); pass the
*training* objects' folder as ``data_root`` to reuse a rendered dataset.

Training runs at ``train_size`` pixels (default 112: 8 x 8 tokens for patch 14, ~5x cheaper
than 224) while the position table is kept at ``img_size`` (224: 16 x 16) and interpolated
as the ViT always does, so the checkpoint is a ViT-S/14 at 224 like a DINOv2 file at 518.

Output: an official-layout DINOv2 state dict (``patch_embed.proj.weight``, ``blocks.N...``),
read by :func:`geo3d.nn.load_vit`; the head is not saved. A JSON sidecar
(``<file>.json``) records the objective, settings, loss curve and time. Results are
cached under ``$GEO3D_CACHE_DIR/multiview_corr/pretrain`` (default
``~/.cache/geo3d/multiview_corr/pretrain``) by a SHA-256 content key of every setting and
of the bytes of the data files, so a second call with the same inputs copies the cached
file instead of training.

Measured time at the defaults (ViT-S/14, 4 objects x 42 views, batch 4 at 112², 200 steps,
1 thread, on a shared 2-core CPU with ~8 other jobs): 813 s wall (4.06 s/step) for the
run cached by the app, 451 s wall (2.26 s/step) for the ``rgb_weight=1`` run; CPU time of
the process 0.67 s/step (133.5 CPU-s for the 200 ``rgb_weight=1`` steps; 0.67 s/step on a
6-step run at the defaults), i.e. about 2.5 min on one free core. Rendering the 4 objects at 224² takes ~10 s each here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geo3d._atomic import atomic_path

__all__ = ["pretrain_vit", "PRETRAIN_VERSION", "pretrain_cache_dir"]

#: Bumped whenever the objective or the training loop changes (part of the cache key).
PRETRAIN_VERSION = 1

_SIZES = {"small": (384, 12, 6), "base": (768, 12, 12), "tiny": (192, 12, 3)}


def pretrain_cache_dir() -> Path:
    """``$GEO3D_CACHE_DIR/multiview_corr/pretrain`` (default ``~/.cache/geo3d/...``)."""
    root = os.environ.get("GEO3D_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "geo3d"
    return base / "multiview_corr" / "pretrain"


def _digest_files(root: Path, objects: list[str]) -> str:
    h = hashlib.sha256()
    cfg = root / "render_config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for name in objects:
        d = root / name
        for f in sorted(p for p in d.iterdir() if p.is_file()):
            h.update(f"{name}/{f.name}".encode())
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()


def _load_views(root: Path, objects: list[str], max_views: int | None) -> dict[str, Tensor]:
    from geo3d.datasets.multiview import MultiviewPairs, load_view

    from geo3d.render import depth_to_points

    reader = MultiviewPairs(root, objects, num_points=1)
    rgb, mask, depth, pts = [], [], [], []
    for name in objects:
        poses, K = reader.object_cameras(name)
        meta = root / name / "meta.json"
        empty = (
            set(json.loads(meta.read_text()).get("empty_views", [])) if meta.is_file() else set()
        )
        idx = [i for i in range(len(poses)) if i not in empty]
        if max_views is not None:
            idx = idx[:max_views]
        for i in idx:
            v = load_view(root / name, i)
            d = torch.from_numpy(v["depth"])
            m = torch.from_numpy(v["mask"])
            p = depth_to_points(d, torch.from_numpy(K), torch.from_numpy(poses[i]))
            cam_dist = float(np.linalg.norm(poses[i][:3, 3]))  # object centre distance
            rgb.append(torch.from_numpy(v["rgb"]).permute(2, 0, 1))
            mask.append(m)
            depth.append(torch.where(m, d - cam_dist, torch.zeros_like(d)).float())
            pts.append(torch.where(m[..., None], p, torch.zeros_like(p)).float())
    if not rgb:
        raise ValueError(f"data_root: expected non-empty views in {str(root)!r}, got none")
    shapes = {tuple(x.shape) for x in rgb}
    if len(shapes) != 1:
        raise ValueError(f"data_root: expected views of one size, got sizes {sorted(shapes)}")
    return {
        "rgb": torch.stack(rgb),  # (V, 3, H, W) uint8
        "mask": torch.stack(mask),  # (V, H, W) bool
        "depth": torch.stack(depth),  # (V, H, W) float32, relative to the camera distance
        "points": torch.stack(pts).permute(0, 3, 1, 2),  # (V, 3, H, W) float32
    }


def _batch(
    data: dict[str, Tensor], idx: Tensor, size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from geo3d.nn import imagenet_normalize

    rgb = data["rgb"][idx].float() / 255.0
    tgt = torch.cat(
        [data["mask"][idx, None].float(), data["points"][idx], data["depth"][idx, None]], 1
    )  # (B, 5, H, W)
    if rgb.shape[-1] != size or rgb.shape[-2] != size:
        rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", antialias=True)
        tgt = F.interpolate(tgt, size=(size, size), mode="nearest-exact")
    return imagenet_normalize(rgb), tgt[:, :1] > 0.5, tgt[:, 1:], rgb


class _DenseHead(nn.Module):
    """Linear ``C -> p*p*K`` per token, pixel-shuffled to ``(B, K, H, W)``."""

    def __init__(
        self, dim: int, patch: int, generator: torch.Generator | None, channels: int = 5
    ) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(dim, patch * patch * channels)
        with torch.no_grad():
            nn.init.trunc_normal_(self.proj.weight, std=0.02, generator=generator)
            self.proj.bias.zero_()

    def forward(self, tokens: Tensor) -> Tensor:  # (B, C, h, w)
        y = self.proj(tokens.permute(0, 2, 3, 1))  # (B, h, w, K p p)
        y = y.permute(0, 3, 1, 2)  # (B, K p p, h, w), channel = k * p * p + (dy * p + dx)
        return F.pixel_shuffle(y, self.patch)  # (B, K, h p, w p)


def _loss(
    pred: Tensor,
    mask: Tensor,
    target: Tensor,
    rgb: Tensor | None = None,
    rgb_weight: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    fg = mask.float()
    n = fg.sum().clamp_min(1.0)
    l_mask = F.binary_cross_entropy_with_logits(pred[:, :1], fg)
    l_pts = ((pred[:, 1:4] - target[:, :3]).abs().sum(1, keepdim=True) * fg).sum() / (3 * n)
    l_depth = ((pred[:, 4:5] - target[:, 3:4]).abs() * fg).sum() / n
    total = l_mask + l_pts + l_depth
    parts = {"mask": l_mask, "points": l_pts, "depth": l_depth}
    if rgb_weight:
        parts["rgb"] = (pred[:, 5:8] - rgb).abs().mean()
        total = total + rgb_weight * parts["rgb"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


def _check_pos_int(name: str, v: Any, lo: int = 1) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")


def pretrain_vit(
    out: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    steps: int = 200,
    *,
    arch: str | tuple[int, int, int] = "small",
    patch_size: int = 14,
    img_size: int = 224,
    train_size: int = 112,
    batch_size: int = 4,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup: int = 20,
    num_objects: int = 4,
    render_seed: int = 1000,
    max_views: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    use_cache: bool = True,
    rgb_weight: float = 0.0,
) -> Path:
    """Pretrain a DINOv2-architecture ViT on synthetic renders (module docstring: the
    objective) and write its weights in the official DINOv2 ``.pth`` key layout.

    Args:
        out: file to write (atomically). ``None``: only the cache file is written and its
            path returned.
        data_root: a folder in the ``geo3d data render`` layout (training objects only);
            ``None``: ``num_objects`` procedural objects are rendered at ``img_size`` pixels
            (fx = fy = 560 * img_size / 512, 42 icosphere views, ``render_seed``) into the
            cache, once.
        steps: optimisation steps (>= 1).
        arch: ``"small"`` (ViT-S, default), ``"base"``, ``"tiny"`` (192 wide, 12 blocks)
            or ``(embed_dim, depth, num_heads)``.
        patch_size: ViT patch size.
        img_size: native size of the position table (pixels; a multiple of the patch).
        train_size: pixels per side the views are resized to for training (multiple of
            the patch).
        batch_size: views per step (drawn uniformly, with replacement across steps).
        lr, weight_decay, warmup: AdamW with linear warm-up over ``warmup`` steps, then
            cosine decay to 0.
        num_objects, render_seed: the procedural data when ``data_root`` is None.
        max_views: use at most this many views per object (``None``: all non-empty).
        seed: initialisation and batch order.
        device: where to train (``"cuda"`` when lent one).
        threads: ``torch.set_num_threads`` during training (restored afterwards).
        cache_dir: cache folder (default :func:`pretrain_cache_dir`).
        progress: tqdm progress bar.
        use_cache: reuse a cached result with the same key (else train and overwrite it).
        rgb_weight: weight of an extra target, the pixel colours of the input (L1 on RGB in
            [0, 1], all pixels; 0 = off, the key of the cache then stays that of version 1).

    Returns:
        the path written (``out``, or the cache file).

    Raises:
        ValueError: for non-positive sizes/steps, a size that is not a multiple of the
            patch, an unknown ``arch``, or a ``data_root`` without rendered objects.

    Example:
        >>> import tempfile, os  # doctest: +SKIP
        >>> path = pretrain_vit(os.path.join(tempfile.mkdtemp(), "vit.pth"), steps=3,
        ...                     num_objects=1, max_views=2)  # doctest: +SKIP
        >>> from geo3d.nn import load_vit; load_vit(path).embed_dim  # doctest: +SKIP
        384

    Source: own objective (module docstring); architecture and key layout of
    facebookresearch/dinov2 ``dinov2/models/vision_transformer.py``.
    """
    from geo3d.nn import VisionTransformer

    for name, v in (
        ("steps", steps),
        ("patch_size", patch_size),
        ("img_size", img_size),
        ("train_size", train_size),
        ("batch_size", batch_size),
        ("num_objects", num_objects),
    ):
        _check_pos_int(name, v)
    _check_pos_int("warmup", warmup, 0)
    from geo3d._app import resolve_device

    device = resolve_device(device)  # an absent CUDA: one ValueError now, not after loading
    if max_views is not None:
        _check_pos_int("max_views", max_views)
    for name, v in (("img_size", img_size), ("train_size", train_size)):
        if v % patch_size:
            raise ValueError(f"{name}: expected a multiple of patch_size={patch_size}, got {v}")
    if isinstance(arch, str):
        if arch not in _SIZES:
            raise ValueError(
                f"arch: expected one of {sorted(_SIZES)} or (dim, depth, heads), got {arch!r}"
            )
        sizes = list(_SIZES[arch])
    else:
        sizes = list(arch) if isinstance(arch, (tuple, list)) else []
        if len(sizes) != 3 or any(
            not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in sizes
        ):
            raise ValueError(
                f"arch: expected one of {sorted(_SIZES)} or (dim, depth, heads), got {arch!r}"
            )
        if sizes[0] % sizes[2]:
            raise ValueError(f"arch: expected num_heads dividing embed_dim, got {arch!r}")
    for name, v in (("lr", lr), ("weight_decay", weight_decay), ("rgb_weight", rgb_weight)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: expected a finite float >= 0, got {v!r}")

    cache = Path(cache_dir) if cache_dir is not None else pretrain_cache_dir()
    settings = {
        "version": PRETRAIN_VERSION,
        "objective": "mask+object-coordinates+depth, linear pixel-shuffle head",
        "arch": sizes,
        "patch_size": patch_size,
        "img_size": img_size,
        "train_size": train_size,
        "steps": steps,
        "batch_size": batch_size,
        "lr": float(lr),
        "weight_decay": float(weight_decay),
        "warmup": warmup,
        "max_views": max_views,
        "seed": seed,
    }
    if rgb_weight:
        settings["rgb_weight"] = float(rgb_weight)
        settings["objective"] += " + input RGB"
    if data_root is None:
        from geo3d.datasets.multiview_render import RenderSettings, render_dataset

        rs = RenderSettings(size=img_size, focal=560.0 * img_size / 512.0)
        data_key = hashlib.sha256(
            json.dumps(
                {"settings": rs.__dict__, "n": num_objects, "seed": render_seed}, sort_keys=True
            ).encode()
        ).hexdigest()[:16]
        root = cache / "renders" / data_key
        render_dataset(
            root, num_synthetic=num_objects, settings=rs, seed=render_seed, progress=progress
        )
    else:
        root = Path(data_root)
    from geo3d.datasets.multiview import find_objects

    if not root.is_dir():
        raise ValueError(f"data_root: expected a rendered dataset folder, got {str(root)!r}")
    objects = find_objects(root)
    if not objects:
        raise ValueError(f"data_root: expected rendered objects in {str(root)!r}, found none")
    settings["data"] = _digest_files(root, objects)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    tag = arch if isinstance(arch, str) else f"{sizes[0]}x{sizes[1]}"
    cached = cache / f"vit_{tag}{patch_size}_{img_size}_{key}.pth"

    if not (use_cache and cached.is_file()):
        _train(cached, root, objects, settings, VisionTransformer, device, threads, progress)
    target = cached if out is None else Path(out)
    if target != cached:
        if target.is_dir():
            raise ValueError(f"out: expected a file name, got the directory {str(target)!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(cached, tmp)
        side = cached.with_suffix(".json")
        if side.is_file():
            with atomic_path(target.with_suffix(".json")) as tmp:
                shutil.copyfile(side, tmp)
    return target


def _train(
    path: Path,
    root: Path,
    objects: list[str],
    settings: dict[str, Any],
    VisionTransformer: type,
    device: str | torch.device,
    threads: int | None,
    progress: bool,
) -> None:
    from tqdm.auto import tqdm

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        t0 = time.perf_counter()
        data = _load_views(root, objects, settings["max_views"])
        load_s = time.perf_counter() - t0
        dev = torch.device(device)
        g = torch.Generator().manual_seed(int(settings["seed"]))
        dim, depth, heads = settings["arch"]
        vit = VisionTransformer(
            embed_dim=dim,
            depth=depth,
            num_heads=heads,
            patch_size=settings["patch_size"],
            img_size=settings["img_size"],
            generator=g,
        ).to(dev)
        w_rgb = float(settings.get("rgb_weight", 0.0))
        head = _DenseHead(dim, settings["patch_size"], g, 8 if w_rgb else 5).to(dev)
        params = [p for p in list(vit.parameters()) + list(head.parameters()) if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": settings["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=settings["lr"],
        )
        steps, warm = settings["steps"], settings["warmup"]

        def lr_at(k: int) -> float:
            if k < warm:
                return (k + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * (k - warm) / max(1, steps - warm)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        n_views = data["rgb"].shape[0]
        curve: list[dict[str, float]] = []
        vit.train()
        t1 = time.perf_counter()
        c1 = time.process_time()
        bar = tqdm(range(steps), desc="pretrain ViT", disable=not progress, leave=False)
        for _k in bar:
            idx = torch.randint(0, n_views, (settings["batch_size"],), generator=g)
            x, mask, tgt, rgb = _batch(data, idx, settings["train_size"])
            x, mask, tgt, rgb = x.to(dev), mask.to(dev), tgt.to(dev), rgb.to(dev)
            pred = head(vit.forward_features(x)["patch_tokens"])
            loss, parts = _loss(pred, mask, tgt, rgb, w_rgb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            parts["total"] = float(loss.detach())
            curve.append(parts)
            bar.set_postfix(loss=f"{parts['total']:.3f}")
        train_s = time.perf_counter() - t1
        train_cpu = time.process_time() - c1  # CPU time of this process (all its threads)
        vit.eval()
        sd = {k: v.detach().cpu().contiguous() for k, v in vit.state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(sd, tmp)
        k = max(1, min(10, steps // 5))
        meta = {
            **settings,
            "objects": objects,
            "num_views": n_views,
            "data_root": str(root),
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "load_seconds": round(load_s, 3),
            "train_seconds": round(train_s, 3),
            "seconds_per_step": round(train_s / steps, 4),
            "train_cpu_seconds": round(train_cpu, 3),
            "cpu_seconds_per_step": round(train_cpu / steps, 4),
            "loss_first": {n: float(np.mean([c[n] for c in curve[:k]])) for n in curve[0]},
            "loss_last": {n: float(np.mean([c[n] for c in curve[-k:]])) for n in curve[0]},
            "loss_curve": [round(c["total"], 5) for c in curve],
        }
        with atomic_path(path.with_suffix(".json")) as tmp:
            Path(tmp).write_text(json.dumps(meta, indent=1))
    finally:
        torch.set_num_threads(old_threads)
