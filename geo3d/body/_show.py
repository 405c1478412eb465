"""Pictures of posed bodies: triangles coloured by part, joints and bones on top (matplotlib)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from geo3d._atomic import atomic_path

__all__ = ["part_colors", "render_bodies_png"]


def part_colors(num_parts: int = 24) -> np.ndarray:
    """``(num_parts, 3)`` distinct RGB colours in [0, 1] (tab20 then tab20b)."""
    import matplotlib

    cmap = [matplotlib.colormaps["tab20"](i)[:3] for i in range(20)]
    cmap += [matplotlib.colormaps["tab20b"](i)[:3] for i in range(0, 20, 2)]
    return np.asarray(cmap[:num_parts])


def image_format(path: str | os.PathLike, name: str = "path") -> str:
    """The image format of ``path``'s extension (``"png"``, ``"jpg"``, ...), one that
    matplotlib writes.

    Raises:
        ValueError: another extension, or none (naming ``name``).
    """
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in kinds:  # was written as PNG data under any name (out.jpg held a PNG)
        raise ValueError(f"{name}: expected an image file name ending in one of "
                         f"{', '.join('.' + k for k in sorted(kinds))}, got {str(path)!r}")
    return ext


def render_bodies_png(
    path: str | os.PathLike,
    vertices: torch.Tensor,
    faces: torch.Tensor,
    labels: torch.Tensor,
    joints: torch.Tensor | None = None,
    parents: Sequence[int] | None = None,
    titles: Sequence[str] | None = None,
    dpi: int = 110,
) -> Path:
    """Render ``B`` posed bodies side by side (front view, SMPL axes: y up, facing +z).

    Args:
        path: output image (written atomically), its format from its extension: ``.png``,
            or any other that matplotlib writes (``.jpg``, ``.pdf``, ``.svg``, ...).
        vertices: :math:`(B, V, 3)` metres.
        faces: :math:`(F, 3)`.
        labels: :math:`(V,)` part label per vertex (a face takes its first vertex's label).
        joints: :math:`(B, J, 3)` joints to draw, optional.
        parents: the tree to draw bones along, optional.
        titles: one title per body.
        dpi: resolution.

    Returns:
        The image path.

    Raises:
        ValueError: mismatched shapes, no body (``B = 0``), or an extension matplotlib
            cannot write (checked before rendering).
        IsADirectoryError: ``path`` is an existing folder.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if Path(path).is_dir():
        raise IsADirectoryError(f"path: expected a file name, got the existing folder {path}")
    ext = image_format(path)
    if vertices.dim() != 3 or vertices.shape[-1] != 3 or vertices.shape[0] < 1:
        raise ValueError(
            f"vertices: expected shape (B, V, 3) with B >= 1, got {tuple(vertices.shape)}"
        )
    if labels.shape != (vertices.shape[1],):
        raise ValueError(
            f"labels: expected shape ({vertices.shape[1]},), got {tuple(labels.shape)}"
        )
    B = vertices.shape[0]
    V = vertices.detach().cpu().double().numpy()
    F = faces.detach().cpu().long().numpy()
    lab = labels.detach().cpu().long().numpy()
    cols = part_colors(int(lab.max()) + 1)[lab[F[:, 0]]]
    fig = plt.figure(figsize=(2.8 * B, 4.2))
    light = np.array([0.3, 0.4, 1.0])
    light /= np.linalg.norm(light)
    for b in range(B):
        ax = fig.add_subplot(1, B, b + 1, projection="3d")
        # plot (x, z, y) so that matplotlib's vertical axis is the body's y (up);
        # the viewer stands in front of the body (on its +z side)
        P = V[b][:, [0, 2, 1]]
        tri = P[F]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
        shade = 0.45 + 0.55 * np.clip(n @ light[[0, 2, 1]], 0, 1)
        # painter's order: far (small body z) first
        order = np.argsort(tri[:, :, 1].mean(1))
        pc = Poly3DCollection(
            tri[order], facecolors=cols[order] * shade[order, None], edgecolors="none"
        )
        ax.add_collection3d(pc)
        if joints is not None:
            Jp = joints[b].detach().cpu().double().numpy()[:, [0, 2, 1]]
            if parents is not None:
                for j, p in enumerate(parents):
                    if p >= 0:
                        ax.plot(*zip(Jp[p], Jp[j], strict=True), color="k", lw=1.2, zorder=10)
            ax.scatter(*Jp.T, color="k", s=8, depthshade=False, zorder=11)
        c = P.mean(0)
        r = 0.42 * (P.max(0) - P.min(0)).max()
        ax.set_xlim(c[0] - r, c[0] + r)
        ax.set_ylim(c[1] - r, c[1] + r)
        ax.set_zlim(c[2] - r, c[2] + r)
        ax.set_box_aspect((1, 1, 1))
        ax.view_init(elev=12, azim=55)  # three-quarter view from the front-left of the body
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[b], fontsize=10)
    fig.tight_layout()
    out = Path(path)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=dpi, format=ext)
    finally:
        plt.close(fig)
    return out
