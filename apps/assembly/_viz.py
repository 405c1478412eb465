"""Pictures of assemblies: PNG (scattered input | prediction | ground truth) and coloured PLY."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from geo3d.apps.assembly._checkpoint import atomic_write_bytes
from torch import Tensor

__all__ = ["save_pictures", "write_ply", "scatter_layout", "part_colors"]


def part_colors(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 distinct colours (tab10 cycle)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return (np.array([cmap(i % 10)[:3] for i in range(n)]) * 255).astype(np.uint8)


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray) -> None:
    """Write an ASCII PLY point cloud atomically.

    Args:
        points: shape :math:`(M, 3)` float; colors: shape :math:`(M, 3)` uint8.
    """
    points = np.asarray(points, dtype=np.float64)
    colors = np.asarray(colors, dtype=np.uint8)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points: expected shape (M, 3), got {points.shape}")
    if colors.shape != points.shape:
        raise ValueError(f"colors: expected shape {points.shape}, got {colors.shape}")
    head = (
        "ply\nformat ascii 1.0\n"
        f"element vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )
    body = "".join(
        f"{p[0]:.6f} {p[1]:.6f} {p[2]:.6f} {c[0]} {c[1]} {c[2]}\n" for p, c in zip(points, colors, strict=True)
    )
    atomic_write_bytes(path, (head + body).encode("ascii"))


def scatter_layout(points: Tensor, valid: Tensor, spacing: float = 1.5) -> Tensor:
    """Lay centred parts out side by side along x (the "scattered input" view).

    Args:
        points: shape :math:`(P, N, 3)`; valid: shape :math:`(P,)`.

    Returns:
        shape :math:`(P, N, 3)`.
    """
    out = points.clone()
    x = 0.0
    for i in range(points.shape[0]):
        if not bool(valid[i]):
            continue
        p = points[i] - points[i].mean(0)
        r = float(p.norm(dim=-1).max())
        x += r
        out[i] = p + torch.tensor([x, 0.0, 0.0], dtype=p.dtype)
        x += r * spacing
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "object"


def save_pictures(items: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``<name>.png`` and ``<name>_pred.ply`` for each object.

    Each item holds ``name``, ``points (P, N, 3)``, ``valid (P,)``, ``pred_rot (P, 3, 3)``,
    ``pred_trans (P, 3)``, ``gt_rot``, ``gt_trans``.

    Returns:
        The written paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for j, it in enumerate(items):
        pts, valid = it["points"].double(), it["valid"].bool()
        pred = pts @ it["pred_rot"].double().transpose(-1, -2) + it["pred_trans"].double()[:, None]
        gt = pts @ it["gt_rot"].double().transpose(-1, -2) + it["gt_trans"].double()[:, None]
        scat = scatter_layout(pts, valid)
        cols = part_colors(pts.shape[0])
        fig = plt.figure(figsize=(12, 4))
        for a, (title, cloud) in enumerate(
            [("input pieces", scat), ("predicted assembly", pred), ("ground truth", gt)]
        ):
            ax = fig.add_subplot(1, 3, a + 1, projection="3d")
            for i in range(pts.shape[0]):
                if bool(valid[i]):
                    c = cloud[i].numpy()
                    ax.scatter(c[:, 0], c[:, 1], c[:, 2], s=2, color=cols[i] / 255.0)
            ax.set_title(title)
            ax.set_box_aspect((1, 1, 1)) if a else None
            ax.set_axis_off()
        fig.suptitle(it.get("name", ""), fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        stem = f"{j:02d}_{_safe(str(it.get('name', 'object')))}"
        png = out_dir / f"{stem}.png"
        atomic_write_bytes(png, buf.getvalue())
        ply = out_dir / f"{stem}_pred.ply"
        n = pts.shape[1]
        idx = valid.nonzero()[:, 0]
        write_ply(
            ply,
            pred[idx].reshape(-1, 3).numpy(),
            np.repeat(cols[idx.numpy()], n, axis=0),
        )
        written += [png, ply]
    return written
