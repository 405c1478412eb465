"""Point tracking with image features, and the TAP-Vid metrics (AJ, δ_avg, occlusion accuracy).

Tracker (:func:`track_points`): a query's feature is read in its query frame (bilinear, the
convention of :mod:`geo3d.eval._correspondence`); in every other frame the track goes to
the pixel with the most cosine-similar feature (feature maps upsampled bilinearly to the
frame size; no temporal prior). Occlusion is predicted by one of

* ``"cycle"`` (default): cycle consistency — the matched pixel's feature is matched back
  into the query frame; the point is predicted occluded when it lands farther than
  ``cycle_threshold`` pixels (measured at the 256×256 scale, like the TAP-Vid thresholds)
  from the query;
* ``"similarity"``: predicted occluded when the best cosine similarity is below
  ``similarity_threshold``.

The query frame itself is always predicted visible at the query position.

Metrics (:func:`tapvid_metrics`), from the published definitions (Doersch et al., 2022, §4
and the reference ``compute_tapvid_metrics`` in google-deepmind/tapnet,
``tapnet/tapvid/evaluation_datasets.py``). Positions are compared after scaling to a
256×256 image (x by ``256 / W``, y by ``256 / H``). Evaluated frames: with query mode
``"first"`` the frames strictly after each query's frame (all earlier frames are known to
be occluded and the query frame is given), with ``"strided"`` every frame but the query
frame. Per video:

* occlusion accuracy OA = fraction of evaluated (point, frame) pairs whose predicted
  occlusion equals the ground truth;
* ``pts_within_δ`` = among evaluated pairs visible in the ground truth, the fraction
  predicted within ``δ`` pixels (``||p̂ - p||₂ < δ``, strict; the predicted occlusion is
  ignored); δ_avg = their mean over ``δ ∈ {1, 2, 4, 8, 16}``;
* ``jaccard_δ`` = TP / (TP + FP + FN) with TP = visible in ground truth, predicted visible
  and within ``δ``; FP = predicted visible but occluded in ground truth or not within
  ``δ``; FN = visible in ground truth but predicted occluded or not within ``δ``
  (computed as ``TP / (#visible + FP)``); AJ = mean over ``δ``.

Benchmark numbers are the means of these per-video values over videos.

Reference: C. Doersch, A. Gupta, L. Markeeva, A. Recasens, L. Smaira, Y. Aytar, J. Carreira,
A. Zisserman, Y. Yang, "TAP-Vid: A Benchmark for Tracking Any Point in a Video", NeurIPS
2022 Datasets and Benchmarks, arXiv:2211.03726. Tracking with frozen features as in You et
al., ICLR 2025, arXiv:2411.19458.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from geo3d.eval._correspondence import (
    Extractor,
    _nearest_dense,
    extract_features,
    sample_features,
)

__all__ = ["TAPVID_THRESHOLDS", "tapvid_metrics", "track_points", "tracking_metrics"]

#: The TAP-Vid distance thresholds (pixels at 256×256).
TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)


def tapvid_metrics(
    pred_tracks: Any,
    pred_occluded: Any,
    gt_tracks: Any,
    gt_occluded: Any,
    *,
    image_size: Sequence[int],
    query_frames: Any = None,
    query_mode: str = "first",
    thresholds: Sequence[float] = TAPVID_THRESHOLDS,
) -> dict[str, Any]:
    """TAP-Vid metrics: occlusion accuracy, ``pts_within_δ``, δ_avg, ``jaccard_δ``, AJ.

    See the module docstring for the exact definitions.

    Args:
        pred_tracks: :math:`(B, N, T, 2)` or :math:`(N, T, 2)` predicted positions
            ``(x, y)`` = ``(u, v)`` in pixels of the ``image_size`` frames.
        pred_occluded: :math:`(B, N, T)` / :math:`(N, T)` bool.
        gt_tracks: like ``pred_tracks`` (entries at occluded frames are ignored; NaN allowed).
        gt_occluded: like ``pred_occluded``.
        image_size: ``(H, W)`` of the frames (positions are scaled to 256×256).
        query_frames: :math:`(B, N)` / :math:`(N,)` long query frame of each point
            (default 0 for all).
        query_mode: ``"first"`` (evaluate frames after the query frame) or ``"strided"``
            (every frame but the query frame).
        thresholds: distance thresholds at the 256×256 scale.

    Returns:
        dict of floats (means over the ``B`` videos) ``occlusion_accuracy``,
        ``average_pts_within_thresh`` (δ_avg), ``average_jaccard`` (AJ), ``pts_within_δ``
        and ``jaccard_δ`` per threshold (key ``f"{δ:g}"``), plus ``per_video``: a dict of
        ``(B,)`` float64 tensors with the same keys. A video without evaluated visible
        points gives NaN for it (as the reference's 0/0).

    Raises:
        ValueError: shapes, unknown ``query_mode``, query frames out of range.

    Example:
        >>> gt = torch.zeros(1, 3, 2); occ = torch.zeros(1, 3, dtype=torch.bool)
        >>> m = tapvid_metrics(gt + torch.tensor([1.5, 0.0]), occ, gt, occ, image_size=(256, 256))
        >>> m["pts_within_1"], m["pts_within_2"], m["occlusion_accuracy"]
        (0.0, 1.0, 1.0)
    """
    pt = torch.as_tensor(pred_tracks).double()
    gt = torch.as_tensor(gt_tracks).double()
    po = torch.as_tensor(pred_occluded).bool()
    go = torch.as_tensor(gt_occluded).bool()
    if gt.ndim == 3:
        pt, gt, po, go = pt[None], gt[None], po[None], go[None]
        if query_frames is not None:
            query_frames = torch.as_tensor(query_frames)[None]
    if gt.ndim != 4 or gt.shape[-1] != 2:
        raise ValueError(f"gt_tracks: expected shape (B, N, T, 2) or (N, T, 2), got {tuple(torch.as_tensor(gt_tracks).shape)}")
    if pt.shape != gt.shape:
        raise ValueError(f"pred_tracks: expected shape {tuple(gt.shape)}, got {tuple(pt.shape)}")
    for name, o in (("gt_occluded", go), ("pred_occluded", po)):
        if o.shape != gt.shape[:-1]:
            raise ValueError(f"{name}: expected shape {tuple(gt.shape[:-1])}, got {tuple(o.shape)}")
    B, N, T = go.shape
    if query_mode not in ("first", "strided"):
        raise ValueError(f"query_mode: expected 'first' or 'strided', got {query_mode!r}")
    qf = torch.zeros(B, N, dtype=torch.long) if query_frames is None else torch.as_tensor(query_frames).long()
    if qf.shape != (B, N):
        raise ValueError(f"query_frames: expected shape {(B, N)}, got {tuple(qf.shape)}")
    if qf.numel() and (int(qf.min()) < 0 or int(qf.max()) >= T):
        raise ValueError(f"query_frames: expected frames in [0, {T}), got [{int(qf.min())}, {int(qf.max())}]")
    H, W = (float(s) for s in image_size)
    if not (H > 0 and W > 0):
        raise ValueError(f"image_size: expected positive (H, W), got {tuple(image_size)}")
    ths = tuple(float(t) for t in thresholds)
    if not ths or not all(t > 0 for t in ths):
        raise ValueError(f"thresholds: expected positive thresholds, got {list(thresholds)}")

    t_idx = torch.arange(T)
    if query_mode == "first":
        evaluate = t_idx[None, None, :] > qf[..., None]
    else:
        evaluate = t_idx[None, None, :] != qf[..., None]
    scale = torch.tensor([256.0 / W, 256.0 / H], dtype=torch.float64)
    dist2 = (((pt - gt) * scale) ** 2).sum(-1)  # NaN where gt is NaN: never within
    visible = ~go
    pred_visible = ~po

    def per_video(x: Tensor) -> Tensor:
        return x.double().sum(dim=(1, 2))

    per: dict[str, Tensor] = {}
    per["occlusion_accuracy"] = per_video((po == go) & evaluate) / per_video(evaluate)
    n_visible = per_video(visible & evaluate)
    within_all, jac_all = [], []
    for th in ths:
        within = dist2 < th * th
        correct = within & visible
        frac = per_video(correct & evaluate) / n_visible
        tp = per_video(correct & pred_visible & evaluate)
        fp = per_video(((~visible) | (~within)) & pred_visible & evaluate)
        jac = tp / (n_visible + fp)
        per[f"pts_within_{th:g}"] = frac
        per[f"jaccard_{th:g}"] = jac
        within_all.append(frac)
        jac_all.append(jac)
    per["average_pts_within_thresh"] = torch.stack(within_all, 1).mean(1)
    per["average_jaccard"] = torch.stack(jac_all, 1).mean(1)
    out: dict[str, Any] = {k: float(v.mean()) for k, v in per.items()}
    out["per_video"] = per
    return out


def _video_chw(video: Any) -> Tensor:
    v = torch.as_tensor(video)
    if v.ndim != 4 or (v.shape[1] != 3 and v.shape[-1] != 3):
        raise ValueError(f"video: expected frames (T, 3, H, W) or (T, H, W, 3), got {tuple(v.shape)}")
    if v.shape[1] != 3:
        v = v.permute(0, 3, 1, 2)
    if v.dtype == torch.uint8:
        v = v.float() / 255.0
    return v.float()


def track_points(
    extractor: Extractor,
    video: Any,
    query_pixels: Any,
    *,
    query_frame: int = 0,
    occlusion: str = "cycle",
    cycle_threshold: float = 8.0,
    similarity_threshold: float = 0.5,
    batch_size: int = 8,
    device: Any = None,
) -> dict[str, Tensor]:
    """Track points through a video by nearest features (no temporal model).

    Args:
        extractor: callable ``(B, 3, H, W) -> (B, C, h, w)``.
        video: :math:`(T, 3, H, W)` (or :math:`(T, H, W, 3)`) frames in [0, 1] (or uint8).
        query_pixels: :math:`(N, 2)` query positions ``(u, v)`` in frame ``query_frame``
            (sub-pixel allowed).
        query_frame: the frame the queries are given in.
        occlusion: ``"cycle"`` or ``"similarity"`` (module docstring).
        cycle_threshold: back-match distance (pixels at the 256×256 scale) above which a
            point is predicted occluded (``"cycle"``).
        similarity_threshold: cosine similarity below which a point is predicted occluded
            (``"similarity"``).
        batch_size: frames per extractor call.
        device: where the extractor and the matching run.

    Returns:
        dict with ``tracks (N, T, 2)`` float64 ``(u, v)``, ``occluded (N, T)`` bool and
        ``similarity (N, T)`` (best cosine similarity; 1 at the query frame).

    Raises:
        ValueError: shapes, ``query_frame`` out of range, unknown ``occlusion``.

    Example:
        >>> video = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> video[1:] = video[0]  # a still video: every point stays put
        >>> out = track_points(lambda x: x, video, torch.tensor([[4.0, 9.0]]))
        >>> out["tracks"][0, 2].tolist(), out["occluded"].tolist()
        ([4.0, 9.0], [[False, False, False]])
    """
    v = _video_chw(video)
    T, _, H, W = v.shape
    q = torch.as_tensor(query_pixels).double()
    if q.ndim != 2 or q.shape[1] != 2:
        raise ValueError(f"query_pixels: expected shape (N, 2), got {tuple(q.shape)}")
    if not 0 <= query_frame < T:
        raise ValueError(f"query_frame: expected a frame in [0, {T}), got {query_frame}")
    if occlusion not in ("cycle", "similarity"):
        raise ValueError(f"occlusion: expected 'cycle' or 'similarity', got {occlusion!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
    N = q.shape[0]
    vv, uu = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    pix = torch.stack([uu.flatten(), vv.flatten()], dim=1)  # row-major (u, v)
    f_query_map = extract_features(extractor, v[query_frame : query_frame + 1], device=device)[0]
    feat_q = sample_features(f_query_map, q.float(), (H, W))  # (N, C)
    tracks = torch.empty(N, T, 2, dtype=torch.float64)
    occluded = torch.zeros(N, T, dtype=torch.bool)
    similarity = torch.ones(N, T)
    scale = torch.tensor([256.0 / W, 256.0 / H], dtype=torch.float64)
    for s in range(0, T, batch_size):
        maps = extract_features(extractor, v[s : s + batch_size], device=device)
        for j in range(maps.shape[0]):
            t = s + j
            if t == query_frame:
                tracks[:, t] = q
                continue
            idx, sim = _nearest_dense(feat_q, maps[j], (H, W))
            tracks[:, t] = pix[idx].double()
            similarity[:, t] = sim
            if occlusion == "cycle":
                back, _ = _nearest_dense(sample_features(maps[j], pix[idx], (H, W)), f_query_map, (H, W))
                d = ((pix[back].double() - q) * scale).norm(dim=1)
                occluded[:, t] = d > cycle_threshold
            else:
                occluded[:, t] = similarity[:, t] < similarity_threshold
    return {"tracks": tracks, "occluded": occluded, "similarity": similarity}


def tracking_metrics(
    extractor: Extractor,
    track_set: dict[str, Any],
    **tracker_kwargs: Any,
) -> dict[str, Any]:
    """TAP-Vid metrics (query mode ``"first"``) of :func:`track_points` on a rendered set.

    Args:
        extractor: callable ``(B, 3, H, W) -> (B, C, h, w)``.
        track_set: a :func:`geo3d.render.render_tracks` result (keys ``video``,
            ``query_pixels``, ``tracks``, ``occluded``; queries on frame 0).
        **tracker_kwargs: options of :func:`track_points`.

    Returns:
        the :func:`tapvid_metrics` dict plus ``pred`` (the tracker's output).

    Raises:
        ValueError: a missing key.

    Example:
        >>> # see tests/eval/test_tracking.py (rendered moving mesh)
        >>> sorted(tapvid_metrics(torch.zeros(2, 2, 2), torch.zeros(2, 2, dtype=torch.bool),
        ...        torch.zeros(2, 2, 2), torch.zeros(2, 2, dtype=torch.bool), image_size=(8, 8)))[:2]
        ['average_jaccard', 'average_pts_within_thresh']
    """
    missing = [k for k in ("video", "query_pixels", "tracks", "occluded") if k not in track_set]
    if missing:
        raise ValueError(f"track_set: expected a render_tracks result, got missing keys {missing}")
    video = _video_chw(track_set["video"])
    pred = track_points(extractor, video, track_set["query_pixels"], query_frame=0, **tracker_kwargs)
    m = tapvid_metrics(pred["tracks"], pred["occluded"], track_set["tracks"], track_set["occluded"],
                       image_size=video.shape[-2:], query_mode="first")
    m["pred"] = pred
    return m
