"""Figures of geo3d.render: the OpenCV camera axes, and a rendered view pair.

Writes ``benchmarks/results/figures/render_camera_axes.png`` (a camera from
:func:`geo3d.render.look_at` drawn with its x (right), y (down), z (forward) axes, its image
plane with pixel axes u, v from the top-left corner, and the view it renders) and
``render_pair_example.png`` (RGB / depth / mask of two views of a procedural textured
object at the reference settings 512², f = 560, and correspondence lines through 3D).

Usage::

    python benchmarks/render_figures.py [--size 512]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "results" / "figures"


def camera_axes_figure(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import trimesh

    from geo3d.render import camera_centers, intrinsics_matrix, look_at, render

    eye = torch.tensor([1.6, -1.6, 1.1], dtype=torch.float64)
    T = look_at(eye)  # up = world +z
    R = T[:3, :3].numpy()
    C = camera_centers(T).numpy()
    W = H = 96
    K = intrinsics_matrix(110.0, cx=W / 2, cy=H / 2)
    box = trimesh.creation.box(extents=(0.5, 0.3, 0.2))
    box.apply_translation((0.0, 0.0, 0.1))
    # faces coloured by their normal's axis: x red, y green, z blue (darker for -)
    n = box.face_normals
    axis = np.abs(n).argmax(axis=1)
    cols = np.zeros((len(n), 4), dtype=np.uint8)
    cols[:, 3] = 255
    cols[np.arange(len(n)), axis] = np.where(n[np.arange(len(n)), axis] > 0, 230, 120)
    box.visual.face_colors = cols
    out = render(box, K, T, (H, W))

    fig = plt.figure(figsize=(11, 5))
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    for i, (name, col) in enumerate((("x (right)", "r"), ("y (down)", "g"), ("z (forward)", "b"))):
        d = R[i] * 0.8  # row i of R = camera axis i in world coordinates
        ax.quiver(*C, *d, color=col, arrow_length_ratio=0.15, lw=2)
        ax.text(*(C + d * 1.15), name, color=col)
    # image plane at depth 0.4: corners of pixel (0, 0), (W, 0), (W, H), (0, H)
    Kinv = np.linalg.inv(K.numpy())
    corners = []
    for u, v in ((0, 0), (W, 0), (W, H), (0, H)):
        ray = Kinv @ np.array([u, v, 1.0]) * 0.7
        corners.append(C + R.T @ ray)
    corners = np.array(corners)
    ax.plot(*np.vstack([corners, corners[:1]]).T, "k-", lw=1)
    for c in corners:
        ax.plot(*np.stack([C, c]).T, "k:", lw=0.7)
    ax.text(*corners[0], "pixel (0,0)", fontsize=8)
    ax.quiver(*corners[0], *(corners[1] - corners[0]) * 0.4, color="m", arrow_length_ratio=0.2)
    ax.text(*(corners[0] + (corners[1] - corners[0]) * 0.45), "u", color="m")
    ax.quiver(*corners[0], *(corners[3] - corners[0]) * 0.4, color="c", arrow_length_ratio=0.2)
    ax.text(*(corners[0] + (corners[3] - corners[0]) * 0.45), "v", color="c")
    ax.add_collection3d(
        __import__("mpl_toolkits.mplot3d.art3d", fromlist=["Poly3DCollection"]).Poly3DCollection(
            box.vertices[box.faces], facecolors=box.visual.face_colors[:, :3] / 255, alpha=0.8
        )
    )
    for i, (name, col) in enumerate((("world x", "r"), ("world y", "g"), ("world z (up)", "b"))):
        e = np.eye(3)[i] * 0.4
        ax.quiver(0, 0, 0, *e, color=col, alpha=0.4, lw=1)
        ax.text(*(e * 1.1), name, color=col, alpha=0.6, fontsize=8)
    ax.view_init(elev=28, azim=-75)
    ax.set_xlim(-0.5, 1.8)
    ax.set_ylim(-1.8, 0.5)
    ax.set_zlim(-0.5, 1.6)
    ax.set_title("world_to_cam = look_at(eye, target=0, up=+z)\nOpenCV camera: x right, y down, z forward")
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.imshow(out["rgb"].numpy())
    ax2.set_title("the rendered view: u = column (right), v = row (down)\nworld +z appears up; faces: +x red, +y green, +z blue")
    ax2.set_xlabel("u")
    ax2.set_ylabel("v")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def pair_figure(path: Path, size: int) -> None:
    from geo3d.datasets.multiview import MultiviewPairs, plot_pair
    from geo3d.datasets.multiview_render import RenderSettings, render_dataset

    with tempfile.TemporaryDirectory() as tmp:
        s = RenderSettings(size=size, focal=560.0 * size / 512)
        render_dataset(tmp, num_synthetic=1, categories=["Mug"], settings=s, seed=1, progress=False)
        ds = MultiviewPairs(tmp, num_points=3000, pairs_per_object=20, threshold=0.01 * 512 / size)
        # the first pair less than 75 degrees apart (clearer lines than the 120-degree limit)
        item = next(it for it in (ds[k] for k in range(len(ds))) if it["angle"] < 75)
        plot_pair(item, path)


def _save(fig, path: Path) -> None:
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args(argv)
    camera_axes_figure(OUT / "render_camera_axes.png")
    pair_figure(OUT / "render_pair_example.png", args.size)
    print(f"wrote {OUT / 'render_camera_axes.png'} and {OUT / 'render_pair_example.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
