"""``geo3d body …``: make-model, convert, motions, scan, show.

``MODEL`` arguments accept a model file/folder, ``tiny`` (the procedural test body) or
``anny`` (the Anny-derived model, built once and cached). Heavy imports happen inside the
command functions so that ``geo3d --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _resolve_model(spec: str):  # noqa: ANN202
    import tempfile

    from geo3d.body import load_body_model, write_tiny_body

    if spec == "tiny":
        tmp = Path(tempfile.mkdtemp(prefix="geo3d_tiny_")) / "tiny.npz"
        return load_body_model(write_tiny_body(tmp))
    if spec == "anny":
        from geo3d.body._anny import anny_smpl_model_path

        return load_body_model(anny_smpl_model_path(verbose=True))
    return load_body_model(spec)


def _check_out_file(out: Path) -> None:
    """OUT must be a file name: an existing folder would only fail after the work is done."""
    if out.is_dir():
        raise IsADirectoryError(f"OUT: expected a file name, got the existing folder {out}")


def _check_int(flag: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{flag}: expected an int >= {low}, got {value}")


def _kinds(value: str) -> list[str]:
    """``--kinds a, b``: the comma-separated names, spaces around them ignored."""
    kinds = [k.strip() for k in value.split(",")]
    if not all(kinds):
        raise ValueError(f"--kinds: expected comma-separated names, got {value!r} (an empty name)")
    return kinds


def _pose_source(args: argparse.Namespace, num: int):  # noqa: ANN202
    import torch

    from geo3d.body import extreme_poses, read_amass, synthetic_motion

    g = torch.Generator().manual_seed(args.seed)
    if getattr(args, "motion", None):
        m = read_amass(args.motion)
        return m.smpl_poses()[:: max(1, m.num_frames // num)][:num], m.trans[
            :: max(1, m.num_frames // num)
        ][:num]
    kinds = _kinds(args.kinds)
    poses, trans = [], []
    for k in kinds[:num] if len(kinds) >= num else (kinds * num)[:num]:
        if k == "rest":
            poses.append(torch.zeros(1, 72, dtype=torch.float64))
        elif k == "extreme":
            p = extreme_poses(1, generator=g).poses
            p[:, :3] = 0
            poses.append(p)
        else:
            m = synthetic_motion(k, 24, generator=g)
            i = int(m.poses[:, 3:].norm(dim=1).argmax())  # the frame furthest from the rest pose
            p = m.poses[i : i + 1].clone()
            p[:, :3] = 0
            poses.append(p)
        trans.append(torch.zeros(1, 3, dtype=torch.float64))
    return torch.cat(poses), torch.cat(trans)


def _make_model(args: argparse.Namespace) -> int:
    import time

    from geo3d.body._anny import anny_smpl_model_path

    _check_out_file(args.out)
    _check_int("--num-betas", args.num_betas, 1)
    t = time.perf_counter()
    out = anny_smpl_model_path(
        args.out, num_betas=args.num_betas, num_samples=args.num_samples, seed=args.seed,
        rebuild=args.rebuild, verbose=True,
    )  # fmt: skip
    print(f"wrote {out} ({time.perf_counter() - t:.1f} s)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from geo3d.body import convert_model

    _check_out_file(args.output)
    if args.output.suffix.lower() != ".npz":
        raise ValueError(f"OUTPUT: expected a file name ending in .npz, got {str(args.output)!r}")
    if args.output.exists() and args.input.exists() and args.output.resolve() == args.input.resolve():
        raise ValueError(f"OUTPUT: expected a file other than INPUT, got {str(args.output)!r} "
                         f"(it would overwrite the model being converted)")
    out = convert_model(args.input, args.output)
    print(f"wrote {out}")
    return 0


def _motions(args: argparse.Namespace) -> int:
    import torch

    from geo3d.body import extreme_poses, synthetic_motions, write_amass

    _check_int("--num-sequences", args.num_sequences, 1)
    _check_int("--frames", args.frames, 1)
    _check_int("--extreme", args.extreme, 0)
    if args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(f"OUT: expected a folder, got the existing file {args.out}")
    g = torch.Generator().manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    kinds = tuple(_kinds(args.kinds)) if args.kinds.strip() else None
    ms = synthetic_motions(
        args.num_sequences, args.frames, generator=g, **({"kinds": kinds} if kinds else {})
    )
    written = []
    for i, m in enumerate(ms):
        written.append(write_amass(args.out / f"{i:04d}_{m.label}_poses.npz", m))
    if args.extreme:
        written.append(
            write_amass(args.out / "extreme_poses.npz", extreme_poses(args.extreme, generator=g))
        )
    print(f"wrote {len(written)} AMASS-style files to {args.out}")
    return 0


def _scan(args: argparse.Namespace) -> int:
    import math

    import numpy as np
    import torch

    from geo3d.body import (
        depth_camera_scan,
        look_at,
        pinhole_intrinsics,
        pose_body,
        sample_surface_scan,
    )
    from geo3d.body._safe_io import atomic_save_npz

    _check_out_file(args.out)
    _check_int("--num", args.num, 1)
    _check_int("--points", args.points, 1)
    _check_int("--width", args.width, 1)
    _check_int("--height", args.height, 1)
    if not 0 < args.fov < 180:
        raise ValueError(f"--fov: expected degrees in (0, 180) exclusive, got {args.fov}")
    if not args.noise >= 0:
        raise ValueError(f"--noise: expected a non-negative number, got {args.noise}")
    if not all(math.isfinite(e) for e in args.eye) or not any(args.eye):
        raise ValueError(f"--eye: expected a finite non-zero offset, got {tuple(args.eye)}")
    model = _resolve_model(args.model)
    poses, trans = _pose_source(args, args.num)
    dt = model.v_template.dtype
    out = pose_body(model, poses.to(dt), trans=trans.to(dt))
    g = torch.Generator().manual_seed(args.seed)
    arrays: dict[str, np.ndarray] = {}
    for i in range(len(poses)):
        V = out.vertices[i].detach()
        if args.partial:
            K = pinhole_intrinsics(args.width, args.height, args.fov)
            c = V.mean(0).double()
            T = look_at(c + torch.tensor(args.eye, dtype=torch.float64), c)
            s = depth_camera_scan(V, model.faces_tensor, model.lbs_weights, K.to(dt), T.to(dt),
                                  args.width, args.height, depth_noise_std=args.noise, generator=g)  # fmt: skip
            if s.points.shape[0] == 0:
                raise ValueError(
                    f"--eye/--fov: the camera sees no point of body {i} (eye offset "
                    f"{tuple(args.eye)}, fov {args.fov}); nothing written to {args.out}"
                )
            arrays[f"depth_{i}"] = s.depth.cpu().numpy()
        else:
            s = sample_surface_scan(V, model.faces_tensor, model.lbs_weights, args.points,
                                    noise_std=args.noise, generator=g)  # fmt: skip
        arrays[f"points_{i}"] = s.points.detach().cpu().numpy()
        arrays[f"labels_{i}"] = s.labels.cpu().numpy()
        arrays[f"weights_{i}"] = s.weights.detach().cpu().numpy()
        if s.arteq_labels is not None:
            arrays[f"arteq_labels_{i}"] = s.arteq_labels.cpu().numpy()
    arrays["poses"] = poses.numpy()
    arrays["trans"] = trans.numpy()  # with --motion, the motion's root translation
    atomic_save_npz(args.out, arrays)
    print(f"wrote {len(poses)} scans to {args.out}")
    return 0


def _show(args: argparse.Namespace) -> int:
    import torch

    from geo3d.body import SMPL_PARENTS, part_labels, pose_body
    from geo3d.body._show import image_format, render_bodies_png

    _check_out_file(args.out)
    image_format(args.out, "OUT")  # before the model is built (anny: minutes the first time)
    _check_int("--num", args.num, 1)
    model = _resolve_model(args.model)
    poses, trans = _pose_source(args, args.num)
    dt = model.v_template.dtype
    with torch.no_grad():
        out = pose_body(model, poses.to(dt), trans=torch.zeros_like(trans).to(dt))
    labels = part_labels(model.lbs_weights)
    titles = _kinds(args.kinds) if not args.motion else [f"frame {i}" for i in range(len(poses))]
    png = render_bodies_png(
        args.out, out.vertices, model.faces_tensor, labels, out.joints[:, :24], SMPL_PARENTS,
        titles=(titles * len(poses))[: len(poses)],
    )  # fmt: skip
    print(f"wrote {png}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``body`` with make-model, convert, motions, scan and show."""
    body = subparsers.add_parser(
        "body",
        help="body models (SMPL via smplx, Anny-derived SMPL layout), motions, scans",
        description="Human body layer: models, motions, scans, pictures.",
    )
    body.set_defaults(func=lambda args: (body.print_help(), 0)[1])
    sub = body.add_subparsers(dest="body_command", metavar="BODY_COMMAND")

    mk = sub.add_parser(
        "make-model", help="build the license-free SMPL-layout body from Anny (cached)"
    )
    mk.add_argument("out", type=Path, help="output .npz (loads with smplx through load_body_model)")
    mk.add_argument("--num-betas", type=int, default=10)
    mk.add_argument("--num-samples", type=int, default=96, help="phenotypes for the shape PCA [96]")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--rebuild", action="store_true", help="ignore the cache")
    mk.set_defaults(func=_make_model)

    cv = sub.add_parser(
        "convert", help="read an official SMPL-family .pkl/.npz safely, write a plain .npz"
    )
    cv.add_argument("input", type=Path)
    cv.add_argument("output", type=Path)
    cv.set_defaults(func=_convert)

    mo = sub.add_parser("motions", help="write seeded synthetic motions as AMASS-style .npz files")
    mo.add_argument("out", type=Path, help="output folder")
    mo.add_argument("--num-sequences", type=int, default=14)
    mo.add_argument("--frames", type=int, default=120)
    mo.add_argument("--kinds", default="",
                    help="comma-separated subset of the motion kinds [all of them]")
    mo.add_argument("--extreme", type=int, default=0, help="also write N extreme poses")
    mo.add_argument("--seed", type=int, default=0)
    mo.set_defaults(func=_motions)

    def pose_args(p: argparse.ArgumentParser, default_kinds: str, num: int) -> None:
        p.add_argument("model", help="model file/folder, 'tiny' or 'anny'")
        p.add_argument("out", type=Path)
        p.add_argument(
            "--kinds", default=default_kinds, help="poses: motion kinds, 'rest', 'extreme'"
        )
        p.add_argument("--motion", type=Path, help="take poses from an AMASS .npz instead")
        p.add_argument("--num", type=int, default=num, help=f"number of poses [{num}]")
        p.add_argument("--seed", type=int, default=0)

    sc = sub.add_parser(
        "scan",
        help="full or partial (depth camera) scans of posed bodies",
        description="Full or partial scans of posed bodies, written to one .npz. A partial "
        "scan in which the camera sees no point of a body is an error (exit 2, nothing "
        "written): check --eye and --fov. The .npz holds, for body i: points_i (N, 3) "
        "metres, labels_i (N,) SMPL parts, weights_i (N, 24) skinning weights, "
        "arteq_labels_i (N,) ArtEq parts, and with --partial depth_i (H, W) metres (inf: no "
        "hit); and poses (B, 72) axis-angle with trans (B, 3) metres, the mean shape "
        "(betas 0): geo3d.body.pose_body(model, poses, trans=trans) gives the scanned bodies.",
    )
    pose_args(sc, "walking,sitting,reaching,extreme", 4)
    sc.add_argument("--points", type=int, default=5000,
                    help="points per full scan [5000]; a --partial scan has one point per "
                    "pixel that sees the body (set by --width/--height)")
    sc.add_argument("--noise", type=float, default=1e-3, help="noise sigma in metres [0.001]")
    sc.add_argument("--partial", action="store_true", help="virtual depth camera (open3d)")
    sc.add_argument("--width", type=int, default=160)
    sc.add_argument("--height", type=int, default=120)
    sc.add_argument(
        "--fov", type=float, default=60.0, help="vertical field of view, degrees in (0, 180) [60]"
    )
    sc.add_argument(
        "--eye",
        type=float,
        nargs=3,
        default=(0.0, 0.3, 3.0),
        help="camera offset from the body centre",
    )
    sc.set_defaults(func=_scan)

    sh = sub.add_parser("show", help="PNG of posed bodies with part colours and joints")
    pose_args(sh, "rest,walking,sitting,reaching,extreme", 5)
    sh.set_defaults(func=_show)


if __name__ == "__main__":  # pragma: no cover
    from geo3d.cli import main

    sys.exit(main(["body", *sys.argv[1:]]))
