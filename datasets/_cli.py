"""``geo3d data …`` subcommands: synthetic fracture datasets in the Breaking Bad layout.

``geo3d data fracture OUT`` generates a dataset, ``geo3d data info ROOT`` counts one.
Heavy imports (trimesh, manifold3d) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``data`` with its ``fracture`` and ``info`` sub-subcommands."""
    data = subparsers.add_parser(
        "data",
        help="generate / inspect datasets",
        description="Dataset tools (Breaking Bad layout).",
    )
    data.set_defaults(func=lambda args: (data.print_help(), 0)[1])
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")

    fr = sub.add_parser(
        "fracture",
        help="fracture procedural shapes or meshes into a Breaking Bad style dataset",
        description=(
            "Fracture watertight meshes (procedural bottles, bowls, mugs, boxes, spheres, "
            "tori, ... or --mesh files) into 2-N pieces with Voronoi / noisy fracture "
            "surfaces and write OUT/data_split/<subset>.{train,val}.txt and "
            "OUT/<subset>/<Category>/<object>/fractured_k/piece_i.obj. Deterministic for "
            "--seed regardless of --workers; re-running resumes."
        ),
    )
    fr.add_argument("out", type=Path, help="dataset root to write")
    fr.add_argument(
        "--num-objects",
        type=int,
        default=100,
        help="procedural objects (ignored with --mesh) [100]",
    )
    fr.add_argument("--min-parts", type=int, default=2, help="fewest pieces per fracture [2]")
    fr.add_argument("--max-parts", type=int, default=6, help="most pieces per fracture [6]")
    fr.add_argument(
        "--fractures-per-object", type=int, default=3, help="fractured_k folders per object [3]"
    )
    fr.add_argument("--num-modes", type=int, default=0, help="extra mode_k folders per object [0]")
    fr.add_argument("--seed", type=int, default=0, help="master seed [0]")
    fr.add_argument(
        "--subset",
        default="everyday",
        choices=("everyday", "artifact", "other"),
        help="subset folder [everyday]",
    )
    fr.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="fraction of each category's objects in val [0.2]",
    )
    fr.add_argument(
        "--noise",
        type=float,
        default=0.02,
        help="fracture-surface roughness (RMS / bbox diagonal); 0 = planar Voronoi cuts [0.02]",
    )
    fr.add_argument(
        "--categories",
        nargs="+",
        default=None,
        metavar="CAT",
        help="procedural categories to use [all]",
    )
    fr.add_argument(
        "--mesh",
        nargs="+",
        default=None,
        metavar="PATH",
        help="watertight mesh files to fracture instead of procedural shapes",
    )
    fr.add_argument(
        "--mesh-category", default="Custom", help="category folder for --mesh objects [Custom]"
    )
    fr.add_argument("--workers", type=int, default=1, help="worker processes [1]")
    fr.add_argument(
        "--max-attempts",
        type=int,
        default=40,
        help="seed re-draws per fracture before using fewer parts [40]",
    )
    fr.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    fr.set_defaults(func=_run_fracture)

    info = sub.add_parser("info", help="count objects / fractures / pieces of a dataset root")
    info.add_argument("root", type=Path, help="dataset root (contains data_split/)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_run_info)

    from geo3d.datasets._render_cli import add_render_parser  # `data render` (multiview, issue 14)

    add_render_parser(sub)


def _run_fracture(args: argparse.Namespace) -> int:
    from geo3d.datasets.fracture import generate_dataset

    try:
        summary = generate_dataset(
            args.out,
            args.num_objects,
            min_parts=args.min_parts,
            max_parts=args.max_parts,
            seed=args.seed,
            subset=args.subset,
            val_fraction=args.val_fraction,
            fractures_per_object=args.fractures_per_object,
            num_modes=args.num_modes,
            noise=args.noise,
            categories=args.categories,
            meshes=args.mesh,
            mesh_category=args.mesh_category,
            workers=args.workers,
            max_attempts=args.max_attempts,
            progress=not args.no_progress,
        )
    except ValueError as err:
        print(f"geo3d data fracture: error: {err}", file=sys.stderr)
        return 2
    print(
        f"{summary['root']}: {summary['objects']} objects ({summary['generated']} generated, "
        f"{summary['skipped']} already there, {len(summary['failed'])} failed); "
        f"{summary['subset']} train={summary['train']} val={summary['val']}"
    )
    for msg in summary["failed"]:
        print(f"  failed: {msg}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def dataset_info(root: Path) -> dict:
    """Counts of a Breaking Bad style root: per subset and split, objects / fractures / pieces.

    Args:
        root: dataset root containing ``data_split/``.

    Returns:
        ``{subset: {split: {"objects", "fractures", "pieces", "categories": {cat: n}}}}``
        for every non-empty split file.
    """
    root = Path(root)
    split_dir = root / "data_split"
    if not split_dir.is_dir():
        raise ValueError(f"root must contain a data_split/ folder: {str(root)!r}")
    out: dict = {}
    for f in sorted(split_dir.glob("*.txt")):
        subset, _, split = f.stem.rpartition(".")
        objs = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
        if not objs:
            continue
        stats = {"objects": len(objs), "fractures": 0, "pieces": 0, "categories": {}}
        for obj in objs:
            parts = obj.split("/")
            cat = parts[1] if len(parts) > 2 else parts[0]
            stats["categories"][cat] = stats["categories"].get(cat, 0) + 1
            obj_dir = root / obj
            if not obj_dir.is_dir():
                continue
            for frac in obj_dir.iterdir():
                if frac.is_dir() and ("fractured" in frac.name or "mode" in frac.name):
                    stats["fractures"] += 1
                    stats["pieces"] += sum(1 for p in frac.iterdir() if p.suffix == ".obj")
        out.setdefault(subset, {})[split] = stats
    return out


def _run_info(args: argparse.Namespace) -> int:
    try:
        info = dataset_info(args.root)
    except ValueError as err:
        print(f"geo3d data info: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for subset, splits in info.items():
        for split, s in splits.items():
            cats = ", ".join(f"{k}={v}" for k, v in sorted(s["categories"].items()))
            print(
                f"{subset}.{split}: {s['objects']} objects, {s['fractures']} fractures, "
                f"{s['pieces']} pieces ({cats})"
            )
    return 0
