"""Does pretraining on synthetic renders give better starting features than random init?

Evaluates the plain ViT-S/14 (no adapters) at 224² on held-out procedurally textured
objects with :func:`geo3d.eval.dense_correspondence_metrics` (APE, PCDP; nearest-feature
matches between two views at most 120° apart), for

* ``rgb``: the image itself as a 3-channel feature (a floor: colour matching),
* ``random``: a randomly initialised ViT-S/14 (the seed :func:`pretrain_vit` starts from),
* ``pretrained``: :func:`geo3d.apps.multiview_corr._pretrain.pretrain_vit` with its
  defaults (cached; its sidecar JSON gives the measured pretraining time).

Held-out data: ``--data`` folders in the ``geo3d data render`` layout (the last
``--num-val`` objects of each in ``objects.txt`` order). Default: ``runs/mv_core_eval/a``
and ``.../b``, rendered on first use at 224² (fx = fy = 245, 42 icosphere views) with seed 7:
Bottle, Bowl, Mug (the categories pretraining saw, other instances) and Vase, Chair, Hammer
(categories it did not see). Pretraining renders its own objects with seed 1000.

The recorded results were produced by
``nice -n 5 .venv/bin/python benchmarks/mv_core_pretrain.py --pairs 4 --max-points 300
--extra pretrained_rgb1=<pretrain_vit(rgb_weight=1.0) file>
pretrained_rgb5_lr3e-4=<pretrain_vit(rgb_weight=5.0, lr=3e-4) file>`` (the data then lived
in /tmp with the same recipe).

Run: ``nice -n 5 .venv/bin/python benchmarks/mv_core_pretrain.py`` (1 thread; the machine
is shared with other jobs: timings are indicative). Writes
``benchmarks/results/mv_core_pretrain.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from geo3d._atomic import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", default=["runs/mv_core_eval/a", "runs/mv_core_eval/b"])
    ap.add_argument("--num-val", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=6, help="view pairs per object")
    ap.add_argument("--max-points", type=int, default=300)
    ap.add_argument("--vit", default=None, help="pretrained file (default: pretrain_vit())")
    ap.add_argument(
        "--extra", nargs="*", default=[], help="more pretrained files to compare, LABEL=PATH"
    )
    ap.add_argument("--out", default="benchmarks/results/mv_core_pretrain.json")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from geo3d.apps.multiview_corr._data import load_view_dict
    from geo3d.apps.multiview_corr._pretrain import pretrain_vit
    from geo3d.apps.multiview_corr._sampling import sample_view_pair
    from geo3d.datasets.multiview import MultiviewPairs, find_objects

    from geo3d.eval import dense_correspondence_metrics
    from geo3d.nn import VisionTransformer, imagenet_normalize, load_vit

    recipe = {
        "runs/mv_core_eval/a": None,
        "runs/mv_core_eval/b": ["Vase", "Chair", "Hammer"],
    }
    for d in args.data:
        if d in recipe and not Path(d).is_dir():
            from geo3d.datasets.multiview_render import RenderSettings, render_dataset

            render_dataset(
                d,
                num_synthetic=3,
                categories=recipe[d],
                settings=RenderSettings(size=224, focal=245.0),
                seed=7,
            )
    g = torch.Generator().manual_seed(0)
    pairs, used = [], []
    for root in map(Path, args.data):
        objects = find_objects(root)[-args.num_val :]
        reader = MultiviewPairs(root, objects, num_points=1)
        for name in objects:
            used.append(f"{root}/{name}")
            poses, K = reader.object_cameras(name)
            for _ in range(args.pairs):
                i, j = sample_view_pair(torch.from_numpy(poses), 120.0, generator=g)
                pairs.append(
                    (
                        load_view_dict(root, name, i, poses, K),
                        load_view_dict(root, name, j, poses, K),
                    )
                )

    t = time.perf_counter()
    path = Path(args.vit) if args.vit else pretrain_vit(progress=True)
    pre_wall = time.perf_counter() - t
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text()) if side.is_file() else {}
    pretrained = load_vit(path)
    random_vit = VisionTransformer(
        embed_dim=pretrained.embed_dim,
        depth=len(pretrained.blocks),
        num_heads=pretrained.num_heads,
        patch_size=pretrained.patch_size,
        img_size=pretrained.img_size,
        generator=torch.Generator().manual_seed(0),
    ).eval()

    def vit_extractor(vit):
        @torch.no_grad()
        def f(images):
            return vit.forward_features(imagenet_normalize(images))["patch_tokens"]

        return f

    extractors = {
        "rgb": lambda images: images,
        "random": vit_extractor(random_vit),
        "pretrained": vit_extractor(pretrained),
    }
    extra_meta = {}
    for spec in args.extra:
        label, _, file = spec.partition("=")
        extractors[label] = vit_extractor(load_vit(file))
        side_x = Path(file).with_suffix(".json")
        if side_x.is_file():
            mx = json.loads(side_x.read_text())
            extra_meta[label] = {
                k: mx.get(k)
                for k in (
                    "objective",
                    "steps",
                    "lr",
                    "rgb_weight",
                    "train_seconds",
                    "seconds_per_step",
                    "train_cpu_seconds",
                    "cpu_seconds_per_step",
                    "loss_first",
                    "loss_last",
                )
            }
    keys = ("ape_px", "ape_bbox", "pcdp_bbox@0.05", "pcdp_bbox@0.1", "pcdp_bbox@0.2")
    results = {}
    for name, f in extractors.items():
        acc = {k: 0.0 for k in keys}
        for k, (va, vb) in enumerate(pairs):
            m = dense_correspondence_metrics(
                f, va, vb, max_points=args.max_points, generator=torch.Generator().manual_seed(k)
            )
            for key in keys:
                acc[key] += float(m[key]) / len(pairs)
        results[name] = {k: round(v, 4) for k, v in acc.items()}
        print(name, results[name], flush=True)
    out = {
        "what": "plain ViT-S/14 features at 224^2 before any finetuning, held-out objects",
        "objects": used,
        "pairs": len(pairs),
        "max_points": args.max_points,
        "results": results,
        "pretrain": {
            k: meta.get(k)
            for k in (
                "steps",
                "batch_size",
                "train_size",
                "img_size",
                "objects",
                "num_views",
                "load_seconds",
                "train_seconds",
                "seconds_per_step",
                "train_cpu_seconds",
                "cpu_seconds_per_step",
                "threads",
                "device",
                "loss_first",
                "loss_last",
            )
        },
        "pretrain_file": str(path),
        "extra_pretrained": extra_meta,
        "pretrain_call_wall_seconds_this_run": round(pre_wall, 2),
        "machine": f"{platform.processor() or platform.machine()}, shared 2-core CPU with other "
        "jobs running (timings indicative), torch threads 1",
    }
    atomic_write_text(args.out, json.dumps(out, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
