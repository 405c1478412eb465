"""Before/after evaluation of multiview finetuning on held-out objects (``geo3d multiview eval``).

The same held-out view pairs are scored with two feature extractors: the backbone alone
("before": its normalised patch tokens) and the finetuned model ("after": LoRA + conv).
Metrics (all from :mod:`geo3d.eval`, averaged over pairs):

* dense 3D equivariance: APE (pixels; and normalised by the image side / the object's
  mask box side) and PCDP@{0.05, 0.1, 0.2} for both normalisations
  (:func:`geo3d.eval._correspondence.dense_correspondence_metrics`, direction A -> B);
* keypoint transfer PCK@{0.05, 0.1, 0.2} (normalised by the mask box side of view B):
  ``num_keypoints`` surface points drawn from view A's foreground, visible in both views,
  transferred by nearest features (:func:`geo3d.eval._correspondence.keypoint_pck`);

pooled over every pair;

* pose estimation (:func:`pose_metrics`): per held-out object, ``num_references`` views
  spread over the viewpoints serve as references with known pose and depth, and
  ``num_queries`` other views are queries; 2D-3D matches by nearest features + PnP/RANSAC
  (:func:`geo3d.eval._pose_estimation.pose_estimation_metrics`) give cm-degree accuracy.
  Objects have unit extent and the poses are in object units read as metres
  (``unit_to_cm = 100``): "5 cm" is 5 % of the object's size;
* tracking (:func:`tracking_metrics`): each held-out procedural object is rebuilt from its
  recorded category and seed, moved along a smooth rigid trajectory (60° turn, 0.3 units
  of translation) in front of one of its dataset cameras, and rendered with ground-truth
  tracks and occlusion (:func:`geo3d.render.render_tracks`); the feature-matching tracker
  and the TAP-Vid metrics (AJ, δ_avg, occlusion accuracy; query mode "first") come from
  :mod:`geo3d.eval._tracking`. Objects from mesh files are skipped.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from geo3d._atomic import atomic_write_text

__all__ = ["evaluate_extractors", "eval_adapter_main", "check_eval_args", "format_table",
           "TABLE_KEYS"]

#: rows of the before/after table: (key, label, scale)
TABLE_KEYS = [
    ("ape_px", "APE (px)", 1.0),
    ("ape_img", "APE / image side (%)", 100.0),
    ("ape_bbox", "APE / object box side (%)", 100.0),
    ("pcdp_img@0.05", "PCDP_img@0.05 (%)", 100.0),
    ("pcdp_img@0.1", "PCDP_img@0.1 (%)", 100.0),
    ("pcdp_img@0.2", "PCDP_img@0.2 (%)", 100.0),
    ("pcdp_bbox@0.05", "PCDP_bbox@0.05 (%)", 100.0),
    ("pcdp_bbox@0.1", "PCDP_bbox@0.1 (%)", 100.0),
    ("pcdp_bbox@0.2", "PCDP_bbox@0.2 (%)", 100.0),
    ("pck@0.05", "PCK@0.05 (bbox, %)", 100.0),
    ("pck@0.1", "PCK@0.1 (bbox, %)", 100.0),
    ("pck@0.2", "PCK@0.2 (bbox, %)", 100.0),
    ("pose_5cm5deg", "pose 5cm-5deg (%)", 100.0),
    ("pose_10cm10deg", "pose 10cm-10deg (%)", 100.0),
    ("pose_rot_err_deg", "pose median rot. err (deg)", 1.0),
    ("pose_trans_err_cm", "pose median transl. err (cm)", 1.0),
    ("tracking_aj", "tracking AJ (%)", 100.0),
    ("tracking_delta_avg", "tracking delta_avg (%)", 100.0),
    ("tracking_oa", "tracking occlusion acc. (%)", 100.0),
]

#: cm-degree thresholds of the pose table
POSE_THRESHOLDS = ((5.0, 5.0), (10.0, 10.0))


def _synthetic_mesh(root: str | Path, name: str) -> Any:
    """The normalised, textured render mesh of a procedural object, from its meta.json
    (``source = "synthetic:<Category>:<seed>"``); ``None`` for other objects."""
    from geo3d.datasets.multiview_render import make_textured_shape

    from geo3d.render import RenderMesh, as_render_mesh

    meta_path = Path(root) / name / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    parts = str(meta.get("source", "")).split(":")
    if len(parts) != 3 or parts[0] != "synthetic":
        return None
    mesh, tex = make_textured_shape(parts[1], int(parts[2]))
    rm = as_render_mesh(mesh, color_fn=tex)
    centre = torch.as_tensor(meta.get("centre", [0.0, 0.0, 0.0]), dtype=torch.float64).numpy()
    return RenderMesh((rm.vertices - centre) * float(meta.get("scale", 1.0)), rm.faces, rm.parts)


def tracking_metrics(
    extractors: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    root: str | Path,
    objects: list[str],
    *,
    num_frames: int = 12,
    num_queries: int = 32,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """TAP-Vid AJ, δ_avg and occlusion accuracy of the feature-matching tracker for every
    extractor on rendered moving held-out objects (module docstring), averaged over the
    videos. Returns ``{name: {"tracking_aj", "tracking_delta_avg", "tracking_oa",
    "tracking_videos"}}`` (NaN values and 0 videos when no object is procedural)."""
    from geo3d.datasets.multiview import MultiviewPairs

    from geo3d.eval._tracking import tracking_metrics as _tracking
    from geo3d.render import render_tracks, smooth_rigid_trajectory

    reader = MultiviewPairs(root, objects, num_points=1, pairs_per_object=1)
    vals: dict[str, dict[str, list[float]]] = {n: {} for n in extractors}
    videos = 0
    for o, name in enumerate(objects):
        rm = _synthetic_mesh(root, name)
        if rm is None:
            continue
        poses, K = reader.object_cameras(name)
        size = json.loads((Path(root) / name / "meta.json").read_text()).get("size")
        g = torch.Generator().manual_seed(seed * 1009 + o)
        cam = torch.as_tensor(poses[int(torch.randint(0, len(poses), (1,), generator=g))])
        traj = smooth_rigid_trajectory(num_frames, generator=g)
        ts = render_tracks(rm, torch.as_tensor(K), cam, traj, tuple(size),
                           num_queries=num_queries, generator=g)
        videos += 1
        for ex_name, f in extractors.items():
            m = _tracking(f, ts)
            for key, out_key in (("average_jaccard", "tracking_aj"),
                                 ("average_pts_within_thresh", "tracking_delta_avg"),
                                 ("occlusion_accuracy", "tracking_oa")):
                vals[ex_name].setdefault(out_key, []).append(float(m[key]))
    out = {}
    for ex_name in extractors:
        out[ex_name] = {k: _mean(v) for k, v in vals[ex_name].items()}
        for k in ("tracking_aj", "tracking_delta_avg", "tracking_oa"):
            out[ex_name].setdefault(k, float("nan"))
        out[ex_name]["tracking_videos"] = videos
    return out


def pose_metrics(
    extractors: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    root: str | Path,
    objects: list[str],
    *,
    image_size: int | None = None,
    num_references: int = 8,
    num_queries: int = 4,
    points_per_reference: int = 500,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """cm-degree pose accuracy of every extractor on the held-out ``objects`` (see the
    module docstring); references are views ``round(i * n / num_references)``, queries
    are drawn (seeded) among the other non-empty views. Returns, per extractor,
    ``pose_5cm5deg``, ``pose_10cm10deg`` (pooled over all queries), the medians
    ``pose_rot_err_deg`` / ``pose_trans_err_cm`` and ``pose_num_queries``."""
    from geo3d.apps.multiview_corr._data import load_view_dict
    from geo3d.datasets.multiview import MultiviewPairs

    from geo3d.eval._pose_estimation import pose_accuracy, pose_estimation_metrics

    reader = MultiviewPairs(root, objects, num_points=1, pairs_per_object=1)
    rot: dict[str, list[torch.Tensor]] = {n: [] for n in extractors}
    trans: dict[str, list[torch.Tensor]] = {n: [] for n in extractors}
    for o, name in enumerate(objects):
        poses, K = reader.object_cameras(name)
        n = len(poses)
        views = [load_view_dict(root, name, i, poses, K, image_size) for i in range(n)]
        nonempty = [i for i in range(n) if bool(views[i]["mask"].any())]
        refs = sorted({nonempty[round(i * len(nonempty) / num_references)]
                       for i in range(num_references)})
        rest = [i for i in nonempty if i not in refs]
        g = torch.Generator().manual_seed(seed * 1009 + o)
        queries = [rest[int(i)] for i in torch.randperm(len(rest), generator=g)[:num_queries]]
        for ex_name, f in extractors.items():
            m = pose_estimation_metrics(
                f, [views[i] for i in queries], [views[i] for i in refs],
                thresholds=POSE_THRESHOLDS, points_per_reference=points_per_reference,
                generator=torch.Generator().manual_seed(seed * 7 + o))
            rot[ex_name].append(m["rot_errs_deg"])
            trans[ex_name].append(m["trans_errs_cm"])
    out = {}
    for ex_name in extractors:
        R, T = torch.cat(rot[ex_name]), torch.cat(trans[ex_name])
        acc = pose_accuracy(R, T, POSE_THRESHOLDS)
        out[ex_name] = {f"pose_{k}": float(v) for k, v in acc.items()}
        out[ex_name].update(pose_rot_err_deg=float(R.median()),
                            pose_trans_err_cm=float(T.median()), pose_num_queries=len(R))
    return out


def _mean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


def _pair_keypoints(view_a: dict[str, Any], view_b: dict[str, Any], num: int,
                    g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uv_a (K, 2), uv_b (K, 2))`` of surface points drawn from A's foreground, visible
    in both views (continuous pixel positions)."""
    from geo3d.eval._correspondence import keypoints_from_points

    vv, uu = torch.nonzero(view_a["mask"], as_tuple=True)
    idx = torch.randperm(len(vv), generator=g)[: 4 * num]
    X = view_a["points"][vv[idx], uu[idx]].double()
    uva, vis_a = keypoints_from_points(X, view_a)
    uvb, vis_b = keypoints_from_points(X, view_b)
    keep = torch.nonzero(vis_a & vis_b).flatten()[:num]
    return uva[keep], uvb[keep]


def evaluate_extractors(
    extractors: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    pairs: Any,
    *,
    max_points: int = 1000,
    thresholds: tuple[float, ...] = (0.05, 0.1, 0.2),
    num_keypoints: int = 20,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Score every extractor on the same view pairs.

    Args:
        extractors: name -> callable ``(B, 3, H, W) in [0, 1] -> (B, C, h, w)``.
        pairs: a sequence of pair dicts with ``view_a``/``view_b`` view dicts (e.g. a
            :class:`~geo3d.apps.multiview_corr._data.ViewPairDataset`).
        max_points: points per pair for APE/PCDP.
        thresholds: PCDP/PCK thresholds.
        num_keypoints: keypoints per pair for PCK.
        seed: seed of the point and keypoint draws (the same draws for every extractor).
        progress: print one line per pair.

    Returns:
        ``{name: {metric: mean over pairs, ..., "num_pairs": n, "num_keypoints": k}}``.
    """
    from geo3d.eval._correspondence import (
        dense_correspondence_metrics,
        extract_features,
        keypoint_pck,
        mask_bbox_size,
        transfer_keypoints,
    )

    per: dict[str, dict[str, list[float]]] = {n: {} for n in extractors}
    # PCK pooled over every keypoint of every pair: sums of hits per threshold
    hits: dict[str, dict[str, float]] = {n: {} for n in extractors}
    n_kp = 0
    n_pairs = len(pairs)
    for k in range(n_pairs):
        pair = pairs[k]
        va, vb = pair["view_a"], pair["view_b"]
        uva, uvb = _pair_keypoints(va, vb, num_keypoints,
                                   torch.Generator().manual_seed(seed * 7919 + k))
        n_kp += len(uvb)
        for name, f in extractors.items():
            imgs = torch.stack([va["rgb"], vb["rgb"]])
            fm = extract_features(f, imgs)
            m = dense_correspondence_metrics(
                f, va, vb, thresholds=thresholds, max_points=max_points,
                generator=torch.Generator().manual_seed(seed * 100_003 + k),
                features=(fm[0], fm[1]))
            for key, v in m.items():
                if isinstance(v, float):
                    per[name].setdefault(key, []).append(v)
            if len(uva):
                pred = transfer_keypoints(f, va["rgb"], vb["rgb"], uva, mask_b=vb["mask"],
                                          features=(fm[0], fm[1]))
                pck = keypoint_pck(pred.double(), uvb, mask_bbox_size(vb["mask"]),
                                   alphas=thresholds)
                for key, v in pck.items():
                    if key.startswith("pck@"):
                        hits[name][key] = hits[name].get(key, 0.0) + v * len(uvb)
        if progress:
            print(f"  pair {k + 1}/{n_pairs} ({pair['object']}, views "
                  f"{pair['views'].tolist()}, {pair['angle']:.0f} deg)", flush=True)
    out: dict[str, dict[str, float]] = {}
    for name in extractors:
        res = {k: _mean(v) for k, v in per[name].items()
               if k not in ("img_size", "bbox_size")}
        for a in thresholds:
            key = f"pck@{a:g}"
            res[key] = hits[name].get(key, 0.0) / n_kp if n_kp else float("nan")
        res["num_keypoints"] = n_kp
        res["num_pairs"] = n_pairs
        out[name] = res
    return out


def format_table(results: dict[str, dict[str, float]], keys: list[tuple[str, str, float]] | None = None) -> str:
    """Plain-text before/after table (one row per metric)."""
    keys = keys or TABLE_KEYS
    names = list(results)
    head = f"{'metric':<28}" + "".join(f"{n:>14}" for n in names)
    lines = [head, "-" * len(head)]
    for key, label, scale in keys:
        if not any(key in results[n] for n in names):
            continue
        cells = "".join(
            f"{results[n][key] * scale:>14.2f}" if key in results[n] else f"{'-':>14}"
            for n in names)
        lines.append(f"{label:<28}{cells}")
    return "\n".join(lines)


def check_eval_args(pairs: int, max_points: int, pose_queries: int, track_frames: int) -> None:
    """Validate the evaluation settings before any work (the demo checks them before it
    trains): counts in range, and OpenCV present when pose estimation is asked for.

    Raises:
        ValueError: a count out of range, or ``pose_queries > 0`` without OpenCV (the
            message names the ``corr`` extra and ``--pose-queries 0``).
    """
    for name, v, lo in (("--pairs", pairs, 1), ("--max-points", max_points, 1),
                        ("--pose-queries", pose_queries, 0),
                        ("--track-frames", track_frames, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    if pose_queries > 0:
        try:
            import cv2  # noqa: F401
        except ImportError:
            raise ValueError(
                "--pose-queries: pose estimation needs OpenCV, which is not installed: "
                "pip install 'geo3d[corr]' (or opencv-python-headless), or pass "
                "--pose-queries 0 to skip it") from None


def eval_adapter_main(a: Any) -> int:
    """``geo3d multiview eval`` (arguments from :mod:`geo3d.apps.multiview_corr.cli`)."""
    from geo3d.apps.multiview_corr._data import ViewPairDataset, split_objects
    from geo3d.apps.multiview_corr._module import (
        BackboneExtractor,
        backbone_fingerprint,
        build_backbone,
        load_adapter,
        read_checkpoint,
    )
    from geo3d.datasets.multiview import find_objects

    check_eval_args(a.pairs, a.max_points, a.pose_queries, a.track_frames)
    from geo3d._app import check_output_path

    if a.out is not None:  # checked before the evaluation, not after it
        check_output_path(a.out, "--out")
    if a.picture is not None:
        check_output_path(a.picture, "--picture")
    if a.data is not None and not Path(a.data).is_dir():
        raise ValueError(f"--data: expected the rendered dataset folder, got {str(a.data)!r} "
                         f"({'an existing file' if Path(a.data).exists() else 'no such folder'})")
    t0 = time.perf_counter()
    ckpt = read_checkpoint(a.adapter)
    after = load_adapter(a.adapter, vit=a.vit)
    hp = dict(after.hparams)
    before_vit = build_backbone(hp["vit"], hp.get("vit_config"), hp.get("pretrain"),
                                hp.get("seed", 0)).eval()
    if backbone_fingerprint(before_vit) != after.fingerprint:  # pragma: no cover - same source
        raise ValueError("vit: expected the backbone of the adapter, got another one")
    dm = dict(ckpt.get("datamodule_hyper_parameters") or {})
    root = a.data or dm.get("root")
    if not root:
        raise ValueError("--data: expected the rendered dataset root (the checkpoint does not "
                         "record data.root), got nothing")
    names = list(dm.get("objects") or []) or find_objects(root)
    if not names:
        raise ValueError(f"--data: expected rendered objects in {str(root)!r}, found none")
    _, held = split_objects(names, int(dm.get("num_val_objects", 2)))
    pairs = ViewPairDataset(root, held, pairs_per_object=a.pairs,
                            max_angle=float(dm.get("max_angle", 120.0)),
                            image_size=dm.get("image_size"), seed=a.seed + 12345)
    extractors = {"before": BackboneExtractor(before_vit, hp.get("long_side"),
                                              hp.get("downsample")).eval(),
                  "after": after}
    print(f"{len(held)} held-out objects x {a.pairs} pairs: before vs after finetuning",
          flush=True)
    res = evaluate_extractors(extractors, pairs, max_points=a.max_points, seed=a.seed,
                              progress=True)
    if a.pose_queries > 0:
        print(f"pose estimation: {a.pose_queries} queries per held-out object", flush=True)
        pose = pose_metrics(extractors, root, held, image_size=dm.get("image_size"),
                            num_queries=a.pose_queries, seed=a.seed)
        for name in extractors:
            res[name].update(pose[name])
    if a.track_frames > 0:
        print(f"tracking: {a.track_frames}-frame videos of the held-out objects", flush=True)
        trk = tracking_metrics(extractors, root, held, num_frames=a.track_frames, seed=a.seed)
        for name in extractors:
            res[name].update(trk[name])
    table = format_table(res)
    print(table)
    out = Path(a.out) if a.out else Path(a.adapter).with_name("multiview_eval.json")
    payload = {
        "adapter": str(a.adapter),
        "global_step": int(ckpt.get("global_step", -1)),
        "vit": hp["vit"],
        "data_root": str(root),
        "held_out_objects": held,
        "pairs_per_object": a.pairs,
        "max_points": a.max_points,
        "pose_queries_per_object": a.pose_queries,
        "tracking_frames": a.track_frames,
        "tracking_protocol": "one video per held-out procedural object: smooth rigid motion "
                             "(60 deg, 0.3 units) before a dataset camera, 32 queries on "
                             "frame 0, nearest-feature tracker with cycle-consistency "
                             "occlusion, TAP-Vid metrics (query mode first, 256x256 scale)",
        "pose_protocol": "8 reference views spread over the icosphere, queries drawn among "
                         "the other views; PnP+RANSAC on mutual nearest-feature 2D-3D "
                         "matches; object units read as metres (objects are 1 across)",
        "seed": a.seed,
        "results": res,
        "seconds": time.perf_counter() - t0,
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "table": table,
    }
    atomic_write_text(out, json.dumps(payload, indent=2))
    print(f"wrote {out}")
    if a.picture:
        from geo3d.apps.multiview_corr._viz import correspondence_picture

        correspondence_picture(extractors, [pairs[i * a.pairs] for i in range(min(3, len(held)))],
                               a.picture)
        print(f"wrote {a.picture}")
    return 0
