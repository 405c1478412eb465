"""3D-equivariance metrics of dense image features: APE, PCDP and keypoint-transfer PCK.

A *feature extractor* is any callable ``f(images (B, 3, H, W) float in [0, 1]) -> (B, C, h, w)``
(``h, w`` may be smaller than ``H, W``). Features are compared at image pixels: the map is
upsampled bilinearly to the image size (``F.interpolate(mode="bilinear",
align_corners=False)`` semantics, evaluated only at the pixels needed through
``F.grid_sample(padding_mode="border", align_corners=False)``, which gives the same values)
and matched by cosine similarity.

A *view* is a dict describing one rendered image with ground truth:

* ``"rgb"``: image ``(H, W, 3)`` (as :meth:`geo3d.render.Renderer.render` returns) or
  ``(3, H, W)`` (as :class:`geo3d.datasets.multiview.MultiviewPairs` returns), float in
  [0, 1] or uint8; ``"image"`` is accepted as a synonym;
* ``"depth"``: z-depth ``(H, W)``, 0 where empty (mesh units);
* ``"mask"``: optional foreground ``(H, W)`` bool (default ``depth > 0``; it is always
  intersected with ``depth > 0``);
* ``"K"``: intrinsics ``(3, 3)``; ``"world_to_cam"`` (or ``"pose"``): ``(4, 4)``, OpenCV
  convention (:mod:`geo3d.render._camera`);
* ``"points"``: optional object-frame points ``(H, W, 3)`` (default: back-projected depth).

:func:`views_from_pair` turns a :class:`~geo3d.datasets.multiview.MultiviewPairs` item into
two such dicts.

Ground truth (:func:`dense_correspondence_metrics`). Every foreground pixel ``p`` of view A
is lifted to its 3D point ``X`` and projected into B: ``(u, v), z = π_B(X)``. The *true
corresponding pixel* is the nearest pixel ``q = round(u, v)``. ``p`` counts as **visible
in B** when ``q`` lies inside B, ``q`` is foreground in B and the depths agree:
``|depth_B[q] - z| <= depth_tolerance · z`` (relative tolerance, default 2 % of the
depth). A point hidden in B projects onto a nearer surface and fails the depth test; a
point behind B's silhouette falls on background. Only visible points are evaluated.

Errors and normalisations. The prediction for ``p`` is the foreground pixel ``q̂`` of B
whose feature has the largest cosine similarity with ``p``'s (ties: the first in row-major
order). Its error is the Euclidean pixel distance ``e = ||q̂ - q||₂``.

* ``ape_px``: mean of ``e`` over the evaluated points (pixels).
* ``ape_img``: mean of ``e / max(H_B, W_B)`` (the longer image side of B).
* ``ape_bbox``: mean of ``e / max(w_B, h_B)``, the longer side of the tight bounding box of
  B's foreground mask, measured in pixels covered: ``w_B = u_max - u_min + 1``,
  ``h_B = v_max - v_min + 1``.
* ``pcdp_img@α`` / ``pcdp_bbox@α``: fraction of the evaluated points with
  ``e <= α · max(H_B, W_B)`` / ``e <= α · max(w_B, h_B)``.

The paper (which gives these metrics in prose only) averages over view pairs; so should a
caller: one call evaluates one ordered pair ``A → B``.

Reference: Y. You, Y. Li, C. Deng, Y. Wang, L. Guibas, "Multiview Equivariance Improves 3D
Correspondence Understanding with Minimal Feature Finetuning", ICLR 2025,
arXiv:2411.19458 (APE, PCDP, keypoint transfer); PCK with ``α · max(h, w)`` as in the
PF-PASCAL protocol (Ham et al., "Proposal Flow: Semantic Correspondences from Object
Proposals", TPAMI 2018, doi:10.1109/TPAMI.2017.2724510).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from geo3d._validation import check_finite
from geo3d.render import depth_to_points, project_points

__all__ = [
    "Extractor",
    "views_from_pair",
    "extract_features",
    "sample_features",
    "nearest_pixels",
    "dense_cosine_similarity",
    "mask_bbox_size",
    "dense_correspondence_metrics",
    "keypoints_from_points",
    "transfer_keypoints",
    "keypoint_pck",
]

#: A feature extractor: images (B, 3, H, W) in [0, 1] -> feature maps (B, C, h, w).
Extractor = Callable[[Tensor], Tensor]


# ----------------------------------------------------------------------------- inputs
def _image_chw(name: str, img: Any) -> Tensor:
    x = torch.as_tensor(img)
    if x.ndim != 3 or (x.shape[0] != 3 and x.shape[-1] != 3):
        raise ValueError(f"{name}: expected an image (H, W, 3) or (3, H, W), got {tuple(x.shape)}")
    if x.shape[-1] == 3:  # (H, W, 3); an ambiguous (3, n, 3) is read this way too
        x = x.permute(2, 0, 1)
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():  # uint16 etc. went to the extractor as 0..65535
        raise ValueError(f"{name}: expected a float image in [0, 1] or uint8, got {x.dtype}")
    x = x.float()
    if x.numel() and bool(torch.isfinite(x).all()) and (float(x.min()) < -1e-3
                                                          or float(x.max()) > 1.0 + 1e-3):
        raise ValueError(f"{name}: expected a float image in [0, 1] (or uint8), got values in "
                         f"[{float(x.min()):.4g}, {float(x.max()):.4g}] (a 0-255 image? "
                         f"divide by 255)")
    check_finite(name, x)
    return x


def _parse_view(name: str, view: Any) -> dict[str, Tensor]:
    if not isinstance(view, dict):
        raise ValueError(f"{name}: expected a view dict (rgb, depth, K, world_to_cam), got {type(view).__name__}")
    img = view.get("rgb", view.get("image"))
    missing = [k for k, v in (("rgb", img), ("depth", view.get("depth")), ("K", view.get("K"))) if v is None]
    T = view.get("world_to_cam", view.get("pose"))
    if T is None:
        missing.append("world_to_cam")
    if missing:
        raise ValueError(f"{name}: expected keys rgb, depth, K, world_to_cam, got missing {missing}")
    image = _image_chw(f"{name}['rgb']", img)
    depth = torch.as_tensor(view["depth"]).double()
    H, W = image.shape[-2:]
    if depth.shape != (H, W):
        raise ValueError(f"{name}['depth']: expected shape {(H, W)} (the image's), got {tuple(depth.shape)}")
    mask = view.get("mask")
    fg = depth > 0
    if mask is not None:
        mask = torch.as_tensor(mask)
        if mask.shape != (H, W):
            raise ValueError(f"{name}['mask']: expected shape {(H, W)}, got {tuple(mask.shape)}")
        fg = fg & mask.bool()
    K = torch.as_tensor(view["K"]).double()
    T = torch.as_tensor(T).double()
    if K.shape != (3, 3):
        raise ValueError(f"{name}['K']: expected shape (3, 3), got {tuple(K.shape)}")
    if T.shape != (4, 4):
        raise ValueError(f"{name}['world_to_cam']: expected shape (4, 4), got {tuple(T.shape)}")
    pts = view.get("points")
    if pts is not None:
        pts = torch.as_tensor(pts).double()
        if pts.shape != (H, W, 3):
            raise ValueError(f"{name}['points']: expected shape {(H, W, 3)}, got {tuple(pts.shape)}")
    else:
        pts = depth_to_points(depth, K, T)
    return {"image": image, "depth": depth, "mask": fg, "K": K, "T": T, "points": pts}


def views_from_pair(item: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The two view dicts of a :class:`geo3d.datasets.multiview.MultiviewPairs` item.

    Args:
        item: a pair item (keys ``image1/2 (3, H, W)``, ``depth1/2``, ``mask1/2``, ``K``,
            ``pose1/2``).

    Returns:
        ``(view_a, view_b)`` with keys ``rgb (3, H, W)``, ``depth``, ``mask``, ``K``,
        ``world_to_cam``.

    Raises:
        ValueError: a key is missing.

    Example:
        >>> item = {"image1": torch.zeros(3, 4, 4), "image2": torch.zeros(3, 4, 4),
        ...         "depth1": torch.ones(4, 4), "depth2": torch.ones(4, 4),
        ...         "mask1": torch.ones(4, 4, dtype=torch.bool), "mask2": torch.ones(4, 4, dtype=torch.bool),
        ...         "K": torch.eye(3), "pose1": torch.eye(4), "pose2": torch.eye(4)}
        >>> a, b = views_from_pair(item)
        >>> sorted(a)
        ['K', 'depth', 'mask', 'rgb', 'world_to_cam']
    """
    need = ("image1", "image2", "depth1", "depth2", "mask1", "mask2", "K", "pose1", "pose2")
    missing = [k for k in need if k not in item]
    if missing:
        raise ValueError(f"item: expected a MultiviewPairs item with keys {list(need)}, got missing {missing}")
    return tuple(  # type: ignore[return-value]
        {
            "rgb": item[f"image{s}"],
            "depth": item[f"depth{s}"],
            "mask": item[f"mask{s}"],
            "K": item["K"],
            "world_to_cam": item[f"pose{s}"],
        }
        for s in ("1", "2")
    )


# ----------------------------------------------------------------------------- features
def extract_features(extractor: Extractor, images: Tensor, *, device: Any = None) -> Tensor:
    """Run ``extractor`` on ``images`` without gradients and check its output.

    The extractor's train/eval mode is left as it is (call ``.eval()`` first for models
    with dropout or batch norm).

    Args:
        extractor: callable ``(B, 3, H, W) -> (B, C, h, w)``.
        images: :math:`(B, 3, H, W)` float in [0, 1].
        device: where the extractor runs (the images are moved there); default: where
            ``images`` are.

    Returns:
        feature maps :math:`(B, C, h, w)` float32 on the extractor's output device (not
        upsampled; see :func:`sample_features`).

    Raises:
        ValueError: ``images`` is not ``(B, 3, H, W)`` or the output is not ``(B, C, h, w)``.

    Example:
        >>> extract_features(lambda x: x[:, :2, ::2, ::2], torch.rand(1, 3, 8, 8)).shape
        torch.Size([1, 2, 4, 4])
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected shape (B, 3, H, W), got {tuple(getattr(images, 'shape', ()))}")
    if device is not None:
        images = images.to(device)
    with torch.no_grad():
        out = extractor(images)
    if not isinstance(out, Tensor) or out.ndim != 4 or out.shape[0] != images.shape[0]:
        raise ValueError(
            f"extractor: expected a feature map (B={images.shape[0]}, C, h, w), got "
            f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
        )
    return out.float()


def sample_features(fmap: Tensor, pixels: Tensor, image_size: Sequence[int]) -> Tensor:
    """Features at image pixels of a (coarser) feature map, bilinearly upsampled.

    Equals ``F.interpolate(fmap, image_size, mode="bilinear", align_corners=False)`` read at
    the pixels (sub-pixel positions are interpolated further), computed only where needed.

    Args:
        fmap: :math:`(C, h, w)` feature map.
        pixels: :math:`(M, 2)` pixel positions ``(u, v)`` = (column, row) of the image,
            pixel centres at integer coordinates.
        image_size: ``(H, W)`` of the image the map was computed from.

    Returns:
        :math:`(M, C)` features (dtype of ``fmap``).

    Raises:
        ValueError: wrong shapes.

    Example:
        >>> f = torch.arange(4.0).reshape(1, 2, 2)
        >>> sample_features(f, torch.tensor([[0, 0], [3, 3]]), (4, 4)).flatten().tolist()
        [0.0, 3.0]
    """
    if fmap.ndim != 3:
        raise ValueError(f"fmap: expected shape (C, h, w), got {tuple(fmap.shape)}")
    if pixels.ndim != 2 or pixels.shape[1] != 2:
        raise ValueError(f"pixels: expected shape (M, 2), got {tuple(pixels.shape)}")
    H, W = (int(s) for s in image_size)
    p = pixels.to(device=fmap.device, dtype=fmap.dtype if fmap.is_floating_point() else torch.float32)
    grid = torch.stack([(2 * p[:, 0] + 1) / W - 1, (2 * p[:, 1] + 1) / H - 1], dim=-1)
    out = F.grid_sample(fmap[None], grid[None, None].to(fmap.dtype), mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out[0, :, 0].T


def nearest_pixels(feat_query: Tensor, feat_target: Tensor, *, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """Cosine nearest neighbours: for every query feature, the most similar target feature.

    Args:
        feat_query: :math:`(M, C)`.
        feat_target: :math:`(N, C)`, ``N >= 1``.
        chunk: query rows per similarity block (memory ``chunk · N``).

    Returns:
        ``(index (M,) long, similarity (M,))`` on the features' device; ties go to the
        lowest index.

    Raises:
        ValueError: shapes, empty target, NaN/inf features (value checks on).

    Example:
        >>> idx, sim = nearest_pixels(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0], [2.0, 0.1]]))
        >>> idx.tolist()
        [1]
    """
    if feat_query.ndim != 2 or feat_target.ndim != 2 or feat_query.shape[1] != feat_target.shape[1]:
        raise ValueError(
            f"feat_target: expected (M, C) and (N, C) with the same C, got {tuple(feat_query.shape)} and {tuple(feat_target.shape)}"
        )
    if feat_target.shape[0] == 0:
        raise ValueError("feat_target: expected at least one target feature, got 0")
    check_finite("feat_query", feat_query)  # NaN rows matched candidate 0 silently
    check_finite("feat_target", feat_target)
    q = F.normalize(feat_query, dim=1)
    t = F.normalize(feat_target.to(q.device), dim=1)
    return _nearest_normalized(q, t, chunk)


def _nearest_normalized(q: Tensor, t: Tensor, chunk: int = 512) -> tuple[Tensor, Tensor]:
    """:func:`nearest_pixels` on rows already normalised to unit length."""
    idx, sim = [], []
    for s in range(0, q.shape[0], chunk):
        m = q[s : s + chunk] @ t.T
        v, i = m.max(dim=1)
        # torch.max does not promise the first index on ties; argmax of (m == max) does
        i = (m == v[:, None]).to(torch.uint8).argmax(dim=1)
        idx.append(i)
        sim.append(v)
    if not idx:
        return torch.zeros(0, dtype=torch.long, device=q.device), q.new_zeros(0)
    return torch.cat(idx), torch.cat(sim)


def _interp_index(n_in: int, n_out: int, device: Any) -> tuple[Tensor, Tensor]:
    """Source index and weight of the upper neighbour for bilinear, align_corners=False."""
    src = ((torch.arange(n_out, dtype=torch.float64, device=device) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    return i0, src - i0


def dense_cosine_similarity(
    feat_query: Tensor, fmap: Tensor, image_size: Sequence[int], pixels: Tensor | None = None
) -> Tensor:
    """Cosine similarity of query features with the pixels of a bilinearly upsampled map.

    Equals ``cos(q, F.interpolate(fmap, image_size, mode="bilinear", align_corners=False)[:, v, u])``.
    For the whole image the upsampled ``(C, H, W)`` map is never built: the dot products
    commute with the (linear) interpolation, so they are taken on the coarse map and
    interpolated, and the squared norm of an interpolated feature is the weighted quadratic
    form of the Gram entries of its (at most four) coarse neighbours: cost
    ``O(M·C·h·w + M·H·W)`` instead of ``O(M·C·H·W)``. For a pixel subset the features are
    interpolated at those pixels (:func:`sample_features`) and compared by one matrix
    product.

    Args:
        feat_query: :math:`(M, C)` query features.
        fmap: :math:`(C, h, w)` feature map.
        image_size: ``(H, W)``.
        pixels: optional :math:`(P, 2)` integer pixels ``(u, v)``; default every pixel.

    Returns:
        :math:`(M, H, W)` (or :math:`(M, P)` with ``pixels``) cosine similarities, 0 where
        a feature is zero.

    Raises:
        ValueError: shapes, NaN/inf features (value checks on).

    Example:
        >>> f = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
        >>> up = F.interpolate(f[None], (6, 10), mode="bilinear", align_corners=False)[0]
        >>> s = dense_cosine_similarity(up[:, 2, 7][None], f, (6, 10))
        >>> s.shape, round(float(s[0, 2, 7]), 5)
        (torch.Size([1, 6, 10]), 1.0)
    """
    if fmap.ndim != 3:
        raise ValueError(f"fmap: expected shape (C, h, w), got {tuple(fmap.shape)}")
    if feat_query.ndim != 2 or feat_query.shape[1] != fmap.shape[0]:
        raise ValueError(f"feat_query: expected shape (M, {fmap.shape[0]}), got {tuple(feat_query.shape)}")
    if pixels is not None and (pixels.ndim != 2 or pixels.shape[1] != 2):
        raise ValueError(f"pixels: expected shape (P, 2), got {tuple(pixels.shape)}")
    # a NaN feature makes every similarity of its row NaN, and the matching then silently
    # picks candidate 0 for every query
    check_finite("feat_query", feat_query)
    check_finite("fmap", fmap)
    C, h, w = fmap.shape
    H, W = (int(s) for s in image_size)
    dev = fmap.device
    q = F.normalize(feat_query.to(device=dev, dtype=fmap.dtype), dim=1)
    if pixels is not None:  # few pixels: interpolate the features there, one matmul (BLAS)
        return q @ F.normalize(sample_features(fmap, pixels, (H, W)), dim=1).T
    dots = q @ fmap.reshape(C, h * w)  # (M, h*w)
    num = F.interpolate(dots.reshape(1, -1, h, w), (H, W), mode="bilinear", align_corners=False)[0]
    # Gram entries of every coarse 2x2 block (the last row / column replicated, as the
    # interpolation clamps its source indices)
    fp = F.pad(fmap[None], (0, 1, 0, 1), mode="replicate")[0]
    A, B = fp[:, :-1, :-1], fp[:, :-1, 1:]
    Cc, D = fp[:, 1:, :-1], fp[:, 1:, 1:]
    g = torch.stack([(A * A).sum(0), (B * B).sum(0), (Cc * Cc).sum(0), (D * D).sum(0), (A * B).sum(0),
                     (A * Cc).sum(0), (A * D).sum(0), (B * Cc).sum(0), (B * D).sum(0), (Cc * D).sum(0)])
    y0, wy = _interp_index(h, H, dev)
    x0, wx = _interp_index(w, W, dev)
    gp = g[:, y0][:, :, x0]  # (10, H, W)
    wy, wx = wy.to(fmap.dtype)[:, None], wx.to(fmap.dtype)[None, :]
    a, b, c, d = (1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx
    den2 = a * a * gp[0] + b * b * gp[1] + c * c * gp[2] + d * d * gp[3] + 2 * (
        a * b * gp[4] + a * c * gp[5] + a * d * gp[6] + b * c * gp[7] + b * d * gp[8] + c * d * gp[9])
    return num / den2.clamp_min(0.0).sqrt().clamp_min(1e-12)


def _nearest_dense(
    feat_query: Tensor, fmap: Tensor, image_size: Sequence[int], pixels: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Cosine-nearest pixel of each query (index into ``pixels``, or a flat row-major index
    into the image) via :func:`dense_cosine_similarity`, chunked to ~2^25 values. Ties go
    to the first candidate. Returns CPU ``(index (M,), similarity (M,))``."""
    H, W = (int(s) for s in image_size)
    P = H * W if pixels is None else max(1, len(pixels))
    chunk = max(1, (1 << 25) // P)
    idx, sim = [], []
    for s in range(0, feat_query.shape[0], chunk):
        m = dense_cosine_similarity(feat_query[s : s + chunk], fmap, (H, W), pixels).flatten(1)
        v = m.max(dim=1).values
        idx.append((m == v[:, None]).to(torch.uint8).argmax(dim=1).cpu())
        sim.append(v.cpu())
    if not idx:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.cat(idx), torch.cat(sim)


def mask_bbox_size(mask: Tensor) -> float:
    """Longer side (pixels covered) of the tight bounding box of a mask.

    ``max(u_max - u_min + 1, v_max - v_min + 1)`` over the ``True`` pixels.

    Args:
        mask: :math:`(H, W)` bool.

    Returns:
        the size in pixels.

    Raises:
        ValueError: wrong shape or an empty mask.

    Example:
        >>> m = torch.zeros(5, 6, dtype=torch.bool); m[1:3, 2:6] = True
        >>> mask_bbox_size(m)
        4.0
    """
    mask = torch.as_tensor(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected shape (H, W), got {tuple(mask.shape)}")
    vv, uu = torch.nonzero(mask.bool(), as_tuple=True)
    if len(vv) == 0:
        raise ValueError("mask: expected at least one foreground pixel, got an empty mask")
    return float(max(int(uu.max() - uu.min()) + 1, int(vv.max() - vv.min()) + 1))


# ----------------------------------------------------------------------------- ground truth
def _project_visible(
    X: Tensor, view: dict[str, Tensor], depth_tolerance: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Project world points ``X (M, 3)`` into a parsed view: ``(uv float, q long, visible)``."""
    uv, z = project_points(X, view["K"], view["T"])
    H, W = view["depth"].shape
    q = torch.round(torch.nan_to_num(uv, nan=-1.0)).long()
    inside = (z > 0) & (q[:, 0] >= 0) & (q[:, 0] < W) & (q[:, 1] >= 0) & (q[:, 1] < H)
    qc = torch.where(inside[:, None], q, torch.zeros_like(q))
    d = view["depth"][qc[:, 1], qc[:, 0]]
    fg = view["mask"][qc[:, 1], qc[:, 0]]
    visible = inside & fg & ((d - z).abs() <= depth_tolerance * z)
    return uv, q, visible


def _check_thresholds(name: str, thresholds: Sequence[float]) -> tuple[float, ...]:
    ts = tuple(float(t) for t in thresholds)
    if not ts or not all(t > 0 for t in ts):
        raise ValueError(f"{name}: expected positive thresholds, got {list(thresholds)}")
    return ts


def dense_correspondence_metrics(
    extractor: Extractor,
    view_a: dict[str, Any],
    view_b: dict[str, Any],
    *,
    thresholds: Sequence[float] = (0.05, 0.1, 0.2),
    max_points: int | None = 1000,
    depth_tolerance: float = 0.02,
    generator: torch.Generator | None = None,
    features: tuple[Tensor, Tensor] | None = None,
    return_details: bool = False,
    device: Any = None,
) -> dict[str, Any]:
    """APE and PCDP of an extractor's nearest-feature matches from view A to view B.

    See the module docstring for the ground truth, the visibility test and the exact
    normalisations. Up to ``max_points`` foreground pixels of A that are visible in B are
    drawn without replacement (through ``generator``); each is matched to the
    cosine-nearest foreground pixel of B.

    Args:
        extractor: callable ``(B, 3, H, W) -> (B, C, h, w)``; unused when ``features`` is given.
        view_a, view_b: view dicts (module docstring); images may differ in size.
        thresholds: PCDP thresholds ``α`` (fractions of the normalising length).
        max_points: evaluated points (``None``: every visible pixel).
        depth_tolerance: relative depth agreement of the visibility test (fraction of z).
        generator: random source of the point subset.
        features: optional precomputed maps ``(fmap_a (C, h, w), fmap_b (C, h', w'))``.
        return_details: also return per-point tensors ``pixels_a (M, 2)``, ``gt_b (M, 2)``,
            ``pred_b (M, 2)`` (long, ``(u, v)``), ``errors_px (M,)`` and ``similarity (M,)``.
        device: where the extractor and the matching run (e.g. ``"cuda"``).

    Returns:
        dict of floats ``ape_px``, ``ape_img``, ``ape_bbox``, ``pcdp_img@α`` and
        ``pcdp_bbox@α`` for every ``α`` (key ``f"{α:g}"``, e.g. ``pcdp_img@0.05``),
        ``img_size`` (= ``max(H_B, W_B)``), ``bbox_size`` (B's mask box side), and ints
        ``num_points`` (evaluated) and ``num_visible`` (A's foreground pixels visible in
        B). Without any visible point the float metrics are NaN and ``num_points`` is 0.

    Raises:
        ValueError: malformed views (names the key), empty foreground in B, bad
            ``thresholds`` / ``max_points`` / ``depth_tolerance``, extractor output shape.

    Example:
        >>> import trimesh
        >>> from geo3d.render import Renderer, intrinsics_matrix, look_at
        >>> r = Renderer(trimesh.creation.box(extents=(1, 1, 1)))
        >>> K = intrinsics_matrix(40.0, cx=15.5, cy=15.5)
        >>> va, vb = (dict(r.render(K, look_at(e), (32, 32)), K=K, world_to_cam=look_at(e))
        ...           for e in ([2.0, 0.5, 1.5], [2.0, -0.5, 1.5]))
        >>> m = dense_correspondence_metrics(lambda x: x, va, vb, max_points=50,
        ...                                  generator=torch.Generator().manual_seed(0))
        >>> m["num_points"]
        50
    """
    ts = _check_thresholds("thresholds", thresholds)
    if max_points is not None and (not isinstance(max_points, int) or max_points < 1):
        raise ValueError(f"max_points: expected a positive int or None, got {max_points!r}")
    if not (depth_tolerance > 0):
        raise ValueError(f"depth_tolerance: expected a positive fraction, got {depth_tolerance}")
    va = _parse_view("view_a", view_a)
    vb = _parse_view("view_b", view_b)
    Hb, Wb = vb["depth"].shape
    if not bool(vb["mask"].any()):
        raise ValueError("view_b: expected foreground pixels in view B, got an empty mask")
    img_size = float(max(Hb, Wb))
    box = mask_bbox_size(vb["mask"])

    vv, uu = torch.nonzero(va["mask"], as_tuple=True)
    pix_a = torch.stack([uu, vv], dim=1)
    X = va["points"][vv, uu]
    _, q, vis = _project_visible(X, vb, depth_tolerance)
    pix_a, q = pix_a[vis], q[vis]
    num_visible = int(len(pix_a))
    if max_points is not None and num_visible > max_points:
        sel = torch.randperm(num_visible, generator=generator)[:max_points]
        sel = sel.sort().values
        pix_a, q = pix_a[sel], q[sel]
    out: dict[str, Any] = {"img_size": img_size, "bbox_size": box, "num_visible": num_visible,
                           "num_points": int(len(pix_a))}
    if len(pix_a) == 0:
        nan = float("nan")
        out.update(ape_px=nan, ape_img=nan, ape_bbox=nan)
        for t in ts:
            out[f"pcdp_img@{t:g}"] = nan
            out[f"pcdp_bbox@{t:g}"] = nan
        return out

    if features is None:
        Ha, Wa = va["image"].shape[-2:]
        if (Ha, Wa) == (Hb, Wb):
            fm = extract_features(extractor, torch.stack([va["image"], vb["image"]]), device=device)
            fa, fb = fm[0], fm[1]
        else:
            fa = extract_features(extractor, va["image"][None], device=device)[0]
            fb = extract_features(extractor, vb["image"][None], device=device)[0]
    else:
        fa, fb = (f.float() if device is None else f.float().to(device) for f in features)
    vb_v, vb_u = torch.nonzero(vb["mask"], as_tuple=True)
    pix_b = torch.stack([vb_u, vb_v], dim=1)
    feat_a = sample_features(fa, pix_a, va["image"].shape[-2:])
    idx, sim = _nearest_dense(feat_a, fb, (Hb, Wb), pix_b)
    pred = pix_b[idx]
    err = (pred - q).double().norm(dim=1)
    out["ape_px"] = float(err.mean())
    out["ape_img"] = float((err / img_size).mean())
    out["ape_bbox"] = float((err / box).mean())
    for t in ts:
        out[f"pcdp_img@{t:g}"] = float((err <= t * img_size).double().mean())
        out[f"pcdp_bbox@{t:g}"] = float((err <= t * box).double().mean())
    if return_details:
        out.update(pixels_a=pix_a, gt_b=q, pred_b=pred, errors_px=err, similarity=sim.cpu())
    return out


# ----------------------------------------------------------------------------- keypoints
def keypoints_from_points(
    points: Any, view: dict[str, Any], *, depth_tolerance: float = 0.02
) -> tuple[Tensor, Tensor]:
    """Ground-truth 2D keypoints of 3D (object-frame) points in a view, with visibility.

    A point is visible when its nearest pixel is inside the image, in the foreground and
    its depth agrees with the rendered depth within ``depth_tolerance · z`` (the test of
    :func:`dense_correspondence_metrics`).

    Args:
        points: :math:`(K, 3)` object-frame points (mesh units).
        view: a view dict (module docstring).
        depth_tolerance: relative depth tolerance.

    Returns:
        ``(uv (K, 2) float64 continuous pixel positions (u, v), visible (K,) bool)``.

    Raises:
        ValueError: shapes, malformed view.

    Example:
        >>> from geo3d.render import intrinsics_matrix, look_at
        >>> K = intrinsics_matrix(8.0, cx=2.0, cy=2.0); T = look_at([0.0, 0.0, -2.0], up=[0.0, -1.0, 0.0])
        >>> v = {"rgb": torch.zeros(5, 5, 3), "depth": torch.full((5, 5), 2.0), "K": K, "world_to_cam": T}
        >>> uv, vis = keypoints_from_points(torch.zeros(1, 3), v)
        >>> uv.tolist(), vis.tolist()
        ([[2.0, 2.0]], [True])
    """
    X = torch.as_tensor(points).double()
    if X.ndim != 2 or X.shape[1] != 3:
        raise ValueError(f"points: expected shape (K, 3), got {tuple(X.shape)}")
    if not (depth_tolerance > 0):
        raise ValueError(f"depth_tolerance: expected a positive fraction, got {depth_tolerance}")
    v = _parse_view("view", view)
    uv, _, vis = _project_visible(X, v, depth_tolerance)
    return uv, vis


def transfer_keypoints(
    extractor: Extractor,
    image_a: Tensor,
    image_b: Tensor,
    keypoints_a: Tensor,
    *,
    mask_b: Tensor | None = None,
    features: tuple[Tensor, Tensor] | None = None,
    device: Any = None,
) -> Tensor:
    """Transfer keypoints from image A to image B by cosine-nearest features.

    Args:
        extractor: callable ``(B, 3, H, W) -> (B, C, h, w)`` (unused with ``features``).
        image_a, image_b: :math:`(3, H, W)` or :math:`(H, W, 3)` images in [0, 1].
        keypoints_a: :math:`(K, 2)` positions ``(u, v)`` in A (pixels; sub-pixel allowed,
            features interpolated bilinearly).
        mask_b: optional :math:`(H_B, W_B)` bool: candidates in B (default every pixel).
        features: optional precomputed maps ``(fmap_a (C, h, w), fmap_b (C, h', w'))``.
        device: where the extractor and the matching run.

    Returns:
        :math:`(K, 2)` long pixels ``(u, v)`` of B.

    Raises:
        ValueError: shapes, an empty ``mask_b``, keypoints outside image A or not finite,
            images that are not uint8 or float in [0, 1], NaN/inf features.

    Example:
        >>> img = torch.rand(3, 8, 8)
        >>> transfer_keypoints(lambda x: x, img, img, torch.tensor([[3.0, 5.0]])).tolist()
        [[3, 5]]
    """
    ia = _image_chw("image_a", image_a)
    ib = _image_chw("image_b", image_b)
    kp = torch.as_tensor(keypoints_a)
    if kp.ndim != 2 or kp.shape[1] != 2:
        raise ValueError(f"keypoints_a: expected shape (K, 2), got {tuple(kp.shape)}")
    Ha, Wa = ia.shape[-2:]
    kf = kp.double()
    inside = torch.isfinite(kf).all(1) & (kf[:, 0] >= -0.5) & (kf[:, 0] <= Wa - 0.5) & (
        kf[:, 1] >= -0.5) & (kf[:, 1] <= Ha - 0.5)
    if not bool(inside.all()):  # they read the border feature (or NaN) and matched (0, 0)
        bad = int((~inside).nonzero()[0, 0])
        raise ValueError(f"keypoints_a: expected finite (u, v) inside image A (u in [-0.5, "
                         f"{Wa - 0.5}], v in [-0.5, {Ha - 0.5}]), got {kp[bad].tolist()} at "
                         f"row {bad}")
    Hb, Wb = ib.shape[-2:]
    cand = torch.ones(Hb, Wb, dtype=torch.bool) if mask_b is None else torch.as_tensor(mask_b).bool()
    if cand.shape != (Hb, Wb):
        raise ValueError(f"mask_b: expected shape {(Hb, Wb)}, got {tuple(cand.shape)}")
    if not bool(cand.any()):
        raise ValueError("mask_b: expected at least one candidate pixel, got an empty mask")
    if features is None:
        if ia.shape == ib.shape:
            fm = extract_features(extractor, torch.stack([ia, ib]), device=device)
            fa, fb = fm[0], fm[1]
        else:
            fa = extract_features(extractor, ia[None], device=device)[0]
            fb = extract_features(extractor, ib[None], device=device)[0]
    else:
        fa, fb = (f.float() for f in features)
    vv, uu = torch.nonzero(cand, as_tuple=True)
    pix_b = torch.stack([uu, vv], dim=1)
    idx, _ = _nearest_dense(sample_features(fa, kp.float(), ia.shape[-2:]), fb, (Hb, Wb), pix_b)
    return pix_b[idx]


def keypoint_pck(
    pred: Any,
    target: Any,
    norm: Any,
    *,
    visible: Any = None,
    alphas: Sequence[float] = (0.05, 0.1, 0.2),
) -> dict[str, float]:
    """Percentage of correct keypoints: ``||pred - target||₂ <= α · norm``.

    Pooled over every visible keypoint of every pair (each keypoint counts once).
    ``norm`` is the normalising length of each pair in pixels: ``max(h, w)`` of the object
    bounding box in the target image (:func:`mask_bbox_size`; PF-PASCAL's convention) or
    ``max(H, W)`` of the image, as the caller chooses and states.

    Args:
        pred: :math:`(..., K, 2)` predicted pixels ``(u, v)`` in the target image.
        target: :math:`(..., K, 2)` ground-truth pixels.
        norm: normalising length, a float or a tensor of shape :math:`(...)` (one per pair).
        visible: optional :math:`(..., K)` bool: keypoints to evaluate (visible in both
            views); default all.
        alphas: thresholds ``α``.

    Returns:
        ``{"pck@α": fraction, ..., "num_keypoints": count}`` (key ``f"{α:g}"``); NaN
        fractions when no keypoint is visible.

    Raises:
        ValueError: shapes, non-positive ``norm`` or ``alphas``.

    Example:
        >>> keypoint_pck(torch.tensor([[0.0, 0.0], [10.0, 0.0]]), torch.zeros(2, 2), 100.0, alphas=(0.05, 0.2))
        {'pck@0.05': 0.5, 'pck@0.2': 1.0, 'num_keypoints': 2}
    """
    p = torch.as_tensor(pred).double()
    t = torch.as_tensor(target).double()
    if p.shape != t.shape or p.ndim < 2 or p.shape[-1] != 2:
        raise ValueError(f"target: expected pred and target of the same shape (..., K, 2), got {tuple(p.shape)} and {tuple(t.shape)}")
    a = _check_thresholds("alphas", alphas)
    n = torch.as_tensor(norm, dtype=torch.float64)
    if n.ndim > 0:
        if tuple(n.shape) != tuple(p.shape[:-2]):
            raise ValueError(f"norm: expected a float or shape {tuple(p.shape[:-2])}, got {tuple(n.shape)}")
        n = n[..., None]
    if not bool((n > 0).all()):
        raise ValueError(f"norm: expected positive lengths, got {n.flatten()[:4].tolist()}")
    vis = torch.ones(p.shape[:-1], dtype=torch.bool) if visible is None else torch.as_tensor(visible).bool()
    if vis.shape != p.shape[:-1]:
        raise ValueError(f"visible: expected shape {tuple(p.shape[:-1])}, got {tuple(vis.shape)}")
    err = (p - t).norm(dim=-1)
    count = int(vis.sum())
    out: dict[str, float] = {}
    for al in a:
        ok = (err <= al * n) & vis
        out[f"pck@{al:g}"] = float(ok.sum()) / count if count else float("nan")
    out["num_keypoints"] = count
    return out
