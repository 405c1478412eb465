"""Pictures of fits: PNG (input points coloured by predicted part | fitted mesh | ground
truth) and PLY files (coloured points, fitted mesh, ground-truth mesh), written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from geo3d._atomic import atomic_path

__all__ = ["save_pictures", "save_fit_png", "save_fit_ply"]


def _colors(labels: np.ndarray) -> np.ndarray:
    from geo3d.body import part_colors

    return part_colors(24)[np.clip(labels, 0, 23)]


def _mesh_panel(ax: Any, V: np.ndarray, F: np.ndarray, color: tuple[float, float, float],
                lim: tuple[np.ndarray, float]) -> None:
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    P = V[:, [0, 2, 1]]  # matplotlib's vertical axis = the body's y (up)
    tri = P[F]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    light = np.array([0.3, 1.0, 0.4])
    light /= np.linalg.norm(light)
    shade = 0.35 + 0.65 * np.abs(n @ light)
    order = np.argsort(tri[:, :, 1].mean(1))
    ax.add_collection3d(Poly3DCollection(tri[order], facecolors=np.asarray(color)[None] *
                                         shade[order, None], edgecolors="none"))
    _limits(ax, *lim)


def _limits(ax: Any, c: np.ndarray, r: float) -> None:
    ax.set_xlim(c[0] - r, c[0] + r)
    ax.set_ylim(c[1] - r, c[1] + r)
    ax.set_zlim(c[2] - r, c[2] + r)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=10, azim=-70)
    ax.set_axis_off()


def save_fit_png(path: str | Path, points: Tensor, labels: Tensor, fit_vertices: Tensor,
                 gt_vertices: Tensor, faces: Tensor, title: str = "", dpi: int = 90) -> Path:
    """Three panels: ``points (N, 3)`` coloured by ``labels (N,)``, the fitted mesh and the
    ground-truth mesh (``(V, 3)`` each, ``faces (F, 3)``), same view and scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = points.detach().cpu().double().numpy()
    Vf = fit_vertices.detach().cpu().double().numpy()
    Vg = gt_vertices.detach().cpu().double().numpy()
    Fc = faces.detach().cpu().long().numpy()
    allp = np.concatenate([pts, Vf, Vg])[:, [0, 2, 1]]
    c = 0.5 * (allp.max(0) + allp.min(0))
    r = 0.55 * float((allp.max(0) - allp.min(0)).max())
    fig = plt.figure(figsize=(9.0, 3.6))
    ax = fig.add_subplot(1, 3, 1, projection="3d")
    P = pts[:, [0, 2, 1]]
    ax.scatter(*P.T, c=_colors(labels.detach().cpu().numpy()), s=1.5, depthshade=False)
    _limits(ax, c, r)
    ax.set_title("input, predicted parts", fontsize=9)
    ax = fig.add_subplot(1, 3, 2, projection="3d")
    _mesh_panel(ax, Vf, Fc, (0.35, 0.55, 0.9), (c, r))
    ax.set_title("fitted", fontsize=9)
    ax = fig.add_subplot(1, 3, 3, projection="3d")
    _mesh_panel(ax, Vg, Fc, (0.85, 0.55, 0.35), (c, r))
    ax.set_title("ground truth", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return out


def save_fit_ply(folder: str | Path, stem: str, points: Tensor, labels: Tensor,
                 fit_vertices: Tensor, faces: Tensor, gt_vertices: Tensor | None = None
                 ) -> list[Path]:
    """``{stem}_points.ply`` (coloured by ``labels``), ``{stem}_fit.ply`` and, if given,
    ``{stem}_gt.ply`` (trimesh, atomic writes)."""
    import trimesh

    folder = Path(folder)
    cols = (_colors(labels.detach().cpu().numpy()) * 255).astype(np.uint8)
    items: list[tuple[str, Any]] = [
        ("points", trimesh.PointCloud(points.detach().cpu().double().numpy(), colors=cols)),
        ("fit", trimesh.Trimesh(fit_vertices.detach().cpu().double().numpy(),
                                faces.detach().cpu().long().numpy(), process=False)),
    ]
    if gt_vertices is not None:
        items.append(("gt", trimesh.Trimesh(gt_vertices.detach().cpu().double().numpy(),
                                            faces.detach().cpu().long().numpy(),
                                            process=False)))
    paths = []
    for name, obj in items:
        p = folder / f"{stem}_{name}.ply"
        with atomic_path(p) as tmp:
            obj.export(tmp, file_type="ply")
        paths.append(p)
    return paths


def save_pictures(pictures: list[dict[str, Any]], faces: Tensor, folder: str | Path) -> Path:
    """Write a PNG and PLYs for every picture dict the module collected (keys
    ``condition, index, points, pred_labels, fit_vertices, gt_vertices, v2v_cm``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for pic in pictures:
        stem = f"{pic['condition']}_{pic['index']:04d}"
        save_fit_png(folder / f"{stem}.png", pic["points"], pic["pred_labels"],
                     pic["fit_vertices"], pic["gt_vertices"], faces,
                     title=f"{pic['condition']} #{pic['index']}: V2V {pic['v2v_cm']:.1f} cm")
        save_fit_ply(folder, stem, pic["points"], pic["pred_labels"], pic["fit_vertices"],
                     faces, pic["gt_vertices"])
    return folder
