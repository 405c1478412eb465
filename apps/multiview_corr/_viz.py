"""The 3D-equivariance picture: colour-coded feature correspondences between two views.

Every foreground pixel of view A is coloured by its object-frame 3D position (x, y, z of
the unit-extent object mapped to R, G, B). Column "ground truth" colours view B the same
way. For each feature extractor, every foreground pixel of B takes the colour of the pixel
of A whose feature is most similar (cosine); a perfectly 3D-equivariant feature reproduces
the ground-truth colouring wherever the surface is visible in both views. The title gives
the mean 3D distance between each B pixel's surface point and that of its match (object
units; the object is 1 across).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo3d._atomic import atomic_path

__all__ = ["correspondence_picture", "match_colours"]


def _xyz_colour(points: torch.Tensor) -> torch.Tensor:
    return (points.double() + 0.5).clamp(0.0, 1.0)


def match_colours(extractor: Callable[[torch.Tensor], torch.Tensor], view_a: dict[str, Any],
                  view_b: dict[str, Any], stride: int = 2) -> tuple[np.ndarray, float]:
    """``(image (H_B, W_B, 3) float in [0, 1], mean 3D error)``: view B's foreground pixels
    (on a grid of ``stride``, each filling its ``stride x stride`` block) coloured by the
    3D position of their nearest-feature match in A's foreground; background black."""
    from geo3d.eval._correspondence import extract_features, nearest_pixels, sample_features

    fm = extract_features(extractor, torch.stack([view_a["rgb"], view_b["rgb"]]))
    sizes = [tuple(v["rgb"].shape[-2:]) for v in (view_a, view_b)]
    grids = []
    for v in (view_a, view_b):
        m = v["mask"].clone()
        keep = torch.zeros_like(m)
        keep[::stride, ::stride] = True
        vv, uu = torch.nonzero(m & keep, as_tuple=True)
        grids.append(torch.stack([uu, vv], dim=1))
    pa, pb = grids
    Hb, Wb = sizes[1]
    img = np.zeros((Hb, Wb, 3))
    if len(pa) == 0 or len(pb) == 0:
        return img, float("nan")
    fa = sample_features(fm[0], pa, sizes[0])
    fb = sample_features(fm[1], pb, sizes[1])
    idx, _ = nearest_pixels(fb, fa)
    Xa = view_a["points"][pa[idx, 1], pa[idx, 0]].double()
    Xb = view_b["points"][pb[:, 1], pb[:, 0]].double()
    col = _xyz_colour(Xa).numpy()
    for dv in range(stride):
        for du in range(stride):
            v = (pb[:, 1] + dv).clamp(max=Hb - 1).numpy()
            u = (pb[:, 0] + du).clamp(max=Wb - 1).numpy()
            img[v, u] = col
    img *= view_b["mask"].numpy()[..., None]
    return img, float((Xa - Xb).norm(dim=1).mean())


def correspondence_picture(extractors: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                           pairs: Sequence[dict[str, Any]], path: str | os.PathLike,
                           stride: int = 2) -> Path:
    """Draw the picture (one row per pair) and write it atomically as PNG.

    Args:
        extractors: name -> feature extractor (e.g. ``{"before": ..., "after": ...}``).
        pairs: pair dicts with ``view_a``/``view_b`` (and optionally ``object``).
        path: PNG file.
        stride: pixel grid of the matches (1 = every pixel; memory/time grow as 1/stride⁴).

    Returns:
        the path written.

    Raises:
        ValueError: no pairs or no extractors.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not pairs or not extractors:
        raise ValueError(f"pairs: expected at least one pair and one extractor, got "
                         f"{len(pairs)} pairs and {len(extractors)} extractors")
    names = list(extractors)
    cols = 3 + len(names)
    fig, axes = plt.subplots(len(pairs), cols, figsize=(2.6 * cols, 2.8 * len(pairs)),
                             squeeze=False)
    for r, pair in enumerate(pairs):
        va, vb = pair["view_a"], pair["view_b"]
        ax = axes[r]
        ax[0].imshow(torch.cat([va["rgb"], vb["rgb"]], dim=2).permute(1, 2, 0).numpy())
        ax[0].set_title(f"{pair.get('object', '')}: views A | B", fontsize=7)
        gt_a = _xyz_colour(va["points"]).numpy() * va["mask"].numpy()[..., None]
        gt_b = _xyz_colour(vb["points"]).numpy() * vb["mask"].numpy()[..., None]
        ax[1].imshow(gt_a)
        ax[1].set_title("A: 3D position colours", fontsize=8)
        ax[2].imshow(gt_b)
        ax[2].set_title("B: ground truth", fontsize=8)
        for c, name in enumerate(names):
            img, err = match_colours(extractors[name], va, vb, stride=stride)
            ax[3 + c].imshow(img)
            ax[3 + c].set_title(f"B: {name} (3D err {err:.3f})", fontsize=8)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle("Feature matches B -> A coloured by A's 3D position "
                 "(equivariant features reproduce the ground truth)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path
