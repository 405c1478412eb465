"""Rendering throughput of geo3d.render: views/s at 224² and 512² on a 100k-triangle mesh.

The mesh is a UV-textured torus of exactly 100,000 triangles (400 x 125 quads, 1024²
texture), normalised like the multiview datasets (unit extent, cameras at distance 2 on
the 42 icosphere-level-1 viewpoints, fx = 560 at 512² and the same field of view at 224²).
Timed: ``Renderer.render`` of all 42 views in one batch call (scene built once, outside the
timing), i.e. rays, Embree casting, barycentric points / depth / normals, bilinear texture
lookups, shading and output tensors. The peer, measured in the same run, is open3d's
``RaycastingScene.cast_rays`` alone on the same full-image rays (the floor: no outputs
beyond hit distance / ids / barycentrics); the ratio is geo3d's time over the peer's.
The goal of issue 14 is >= 10 views/s at 512² on 2 cores.

The machine may be shared (other processes running): the load average is recorded, and
every number is the smallest of several interleaved rounds (interference only adds time).

Usage::

    python benchmarks/render.py                # writes benchmarks/results/render_cpu.json
    python benchmarks/render.py --no-save --rounds 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, env_info, write_json_atomic  # noqa: E402


def textured_torus(n_major: int = 400, n_minor: int = 125, tex: int = 1024):
    """A torus of 2 * n_major * n_minor triangles with seam-duplicated UVs and a texture."""
    import trimesh
    from PIL import Image

    i = np.arange(n_major + 1)
    j = np.arange(n_minor + 1)
    a = 2 * np.pi * i / n_major
    b = 2 * np.pi * j / n_minor
    A, B = np.meshgrid(a, b, indexing="ij")
    R, r = 0.35, 0.15
    verts = np.stack([(R + r * np.cos(B)) * np.cos(A), (R + r * np.cos(B)) * np.sin(A), r * np.sin(B)], -1).reshape(-1, 3)
    uv = np.stack(np.meshgrid(i / n_major, j / n_minor, indexing="ij"), -1).reshape(-1, 2)
    idx = np.arange((n_major + 1) * (n_minor + 1)).reshape(n_major + 1, n_minor + 1)
    q00, q10, q01, q11 = idx[:-1, :-1], idx[1:, :-1], idx[:-1, 1:], idx[1:, 1:]
    faces = np.concatenate([np.stack([q00, q10, q11], -1).reshape(-1, 3), np.stack([q00, q11, q01], -1).reshape(-1, 3)])
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(tex, tex, 3), dtype=np.uint8))
    m = trimesh.Trimesh(verts, faces, process=False)
    m.visual = trimesh.visual.TextureVisuals(uv=uv, image=image)
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    ap.add_argument("--views", type=int, default=42)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "render_cpu.json")
    args = ap.parse_args(argv)

    import open3d as o3d

    from geo3d.render import Renderer, icosphere_viewpoints, intrinsics_matrix, look_at

    mesh = textured_torus()
    ext = float((mesh.bounds[1] - mesh.bounds[0]).max())
    mesh.apply_scale(1.0 / ext)
    t0 = time.perf_counter()
    renderer = Renderer(mesh)
    build_s = time.perf_counter() - t0
    poses = look_at(icosphere_viewpoints(1, 2.0))[: args.views].float()  # float32 outputs
    results = []
    for S in args.sizes:
        K = intrinsics_matrix(560.0 * S / 512, cx=S / 2, cy=S / 2, dtype=torch.float32)
        rays = np.concatenate([Renderer._rays(K.numpy(), T.numpy(), (0, S - 1, 0, S - 1)) for T in poses])
        rays_t = o3d.core.Tensor(rays)
        scene = renderer._scene
        out = renderer.render(K, poses, (S, S))  # warm-up
        coverage = float(out["mask"].float().mean())
        t_geo, t_peer, cpu_geo, cpu_peer = [], [], [], []
        for _ in range(args.rounds):  # interleaved rounds
            t, c = time.perf_counter(), time.process_time()
            renderer.render(K, poses, (S, S))
            t_geo.append(time.perf_counter() - t)
            cpu_geo.append(time.process_time() - c)
            t, c = time.perf_counter(), time.process_time()
            scene.cast_rays(rays_t)
            t_peer.append(time.perf_counter() - t)
            cpu_peer.append(time.process_time() - c)
        geo, peer = min(t_geo), min(t_peer)
        row = {
            "size": S,
            "views": len(poses),
            "triangles": int(len(mesh.faces)),
            "foreground_fraction": round(coverage, 4),
            "geo3d_views_per_s": round(len(poses) / geo, 3),
            "geo3d_s_per_view": round(geo / len(poses), 5),
            "peer_cast_rays_views_per_s": round(len(poses) / peer, 3),
            "ratio_geo3d_over_cast_rays": round(geo / peer, 3),
            # CPU seconds (all threads) per view: what the work costs, independent of how
            # many of the cores other processes held during the run
            "geo3d_cpu_s_per_view": round(min(cpu_geo) / len(poses), 5),
            "peer_cpu_s_per_view": round(min(cpu_peer) / len(poses), 5),
            "round_times_s": {"geo3d": [round(x, 4) for x in t_geo], "cast_rays": [round(x, 4) for x in t_peer]},
        }
        results.append(row)
        print(
            f"{S}x{S}: geo3d.render {row['geo3d_views_per_s']:.2f} views/s "
            f"(cast_rays alone {row['peer_cast_rays_views_per_s']:.2f} views/s, ratio {row['ratio_geo3d_over_cast_rays']:.2f}); "
            f"CPU s/view {row['geo3d_cpu_s_per_view']:.4f} (peer {row['peer_cpu_s_per_view']:.4f}); foreground {coverage:.1%}"
        )
    payload = {
        "benchmark": "geo3d.render views/s, 100k-triangle UV-textured torus, 42 icosphere views",
        "env": env_info("cpu"),
        "open3d": o3d.__version__,
        "scene_build_s": round(build_s, 4),
        "note": (
            "measured on a machine shared with other processes (see env.loadavg_1min); "
            "smallest of interleaved rounds; the rays outside the projected bounding box "
            "of the mesh are not cast by geo3d (the peer casts every pixel)"
        ),
        "results": results,
    }
    if not args.no_save:
        path = write_json_atomic(args.out, payload)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
