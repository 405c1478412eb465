"""``geo3d data render``: multiview datasets in the 3DCorrEnhance layout (issue 14).

Registered under ``geo3d data`` by :mod:`geo3d.datasets._cli`. Import-light: the renderer,
trimesh and open3d are imported inside :func:`_run_render`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# plain constants, no heavy imports (kept equal to geo3d.datasets.multiview_render's; a test checks)
SIZE_RANGE = (8, 8192)
LEVEL_RANGE = (0, 6)
MAX_VIEWS = 100_000


def _int_in(lo: int, hi: int | None = None):
    """An argparse ``type``: an int in ``[lo, hi]`` (argparse reports a bad value as a
    one-line usage error, exit status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            want = f"an int >= {lo}" if hi is None else f"an int in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"expected {want}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def add_render_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``render`` on the ``geo3d data`` sub-parsers."""
    p = sub.add_parser(
        "render",
        help="render meshes (or procedural textured objects) into a multiview dataset",
        description=(
            "Render every mesh under MESH_DIR (OBJ/PLY/GLB/GLTF with textures or vertex "
            "colours) and/or --synthetic N procedural textured objects into OUT in the "
            "3DCorrEnhance layout: OUT/<object>/color_000000.png, depth_000000.png (uint16 mm), "
            "mask_000000.png, ..., poses.npy (world_to_cam, OpenCV), intrinsics.npy. Objects are "
            "normalised to unit extent; cameras at --distance on an icosphere (level 1 = 42 "
            "views) look at the origin. Deterministic for --seed regardless of --workers; "
            "re-running the same command skips finished objects (resume); re-running into an OUT "
            "rendered with other settings is refused unless --overwrite."
        ),
    )
    p.add_argument("mesh_dir", nargs="?", type=Path, default=None, metavar="MESH_DIR",
                   help="folder of meshes (optional with --synthetic)")
    p.add_argument("out", type=Path, metavar="OUT", help="the output root (a folder)")
    p.add_argument("--synthetic", type=_int_in(0), default=0, metavar="N",
                   help="also render N procedural textured objects [0]")
    p.add_argument("--categories", nargs="+", default=None, metavar="CAT",
                   help="procedural categories for --synthetic [all]")
    p.add_argument("--size", type=_int_in(*SIZE_RANGE), default=512,
                   help=f"image height = width, {SIZE_RANGE[0]}..{SIZE_RANGE[1]} [512]")
    p.add_argument("--focal", type=float, default=560.0, help="fx = fy in pixels [560]")
    p.add_argument("--principal", type=float, default=None, help="cx = cy in pixels [size/2]")
    p.add_argument("--distance", type=float, default=2.0, help="camera distance [2]")
    p.add_argument("--views", choices=("icosphere", "random"), default="icosphere",
                   help="viewpoints [icosphere]")
    p.add_argument("--level", type=_int_in(*LEVEL_RANGE), default=1,
                   help=f"icosphere level {LEVEL_RANGE[0]}..{LEVEL_RANGE[1]} (0 = 12, 1 = 42 views) [1]")
    p.add_argument("--num-views", type=_int_in(1, MAX_VIEWS), default=42, help="views per object with --views random [42]")
    p.add_argument("--up", choices=("z", "y"), default="z", help="world axis shown up [z]")
    p.add_argument("--seed", type=int, default=0, help="master seed [0]")
    p.add_argument("--workers", type=_int_in(1), default=1, help="worker processes (>= 1) [1]")
    p.add_argument("--overwrite", action="store_true",
                   help="render every object again, also into an OUT rendered with other settings")
    p.add_argument("--preview", type=Path, default=None, metavar="PNG",
                   help="write a figure (RGB, depth, mask, correspondences) of the first object")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_render)


def _run_render(args: argparse.Namespace) -> int:
    try:
        return _render(args)
    except KeyboardInterrupt:  # Ctrl-C: finished objects stay, unfinished ones are removed
        print("\ngeo3d data render: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


def _render(args: argparse.Namespace) -> int:
    from geo3d.datasets.multiview_render import RenderSettings, render_dataset

    prog = "geo3d data render"
    mesh_dir, out = args.mesh_dir, args.out
    if mesh_dir is None and args.synthetic <= 0:
        print(f"{prog}: error: MESH_DIR: expected a folder of meshes or --synthetic N", file=sys.stderr)
        return 2
    settings = RenderSettings(
        size=args.size, focal=args.focal, principal=args.principal, distance=args.distance,
        views=args.views, level=args.level, num_views=args.num_views, up=args.up,
    )
    try:
        summary = render_dataset(
            out, mesh_dir=mesh_dir, num_synthetic=args.synthetic, categories=args.categories,
            settings=settings, seed=args.seed, workers=args.workers, progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except ValueError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(
        f"{summary['root']}: {summary['objects']} objects ({summary['rendered']} rendered, "
        f"{summary['skipped']} already there, {len(summary['failed'])} failed)"
    )
    for msg in summary["failed"]:
        print(f"  failed: {msg}", file=sys.stderr)
    if args.preview is not None and summary["objects"]:
        from geo3d.datasets.multiview import MultiviewPairs, plot_pair

        ds = MultiviewPairs(out, num_points=2000, pairs_per_object=1,
                            threshold=max(0.01, 2.0 * args.distance / args.focal))
        path = plot_pair(ds[0], args.preview)
        print(f"preview: {path}")
    return 1 if summary["failed"] else 0
