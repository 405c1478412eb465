"""Pixel and view-pair sampling for multiview-equivariance finetuning.

Pixels: ``num_pixels`` foreground pixels are drawn per view (uniformly without replacement
when the view has at least that many, with replacement otherwise, as the reference's
``ObjaverseCorrDataset.get_item``). Two pixels of the two views are *positives* when their
3D points (object frame, from depth and pose) are closer than ``pos_radius`` and
*negatives* when farther than ``neg_radius``; pairs in between are ignored by the loss.
The reference's radii (5e-3 and 0.1) are in object units for objects normalised to unit
extent (``geo3d data render`` / :mod:`geo3d.datasets.multiview_render` scales the largest
bounding-box side to 1, as the reference's BlenderProc script does), i.e. 0.5 % and 10 %
of the object size.

View pairs: two views of one object are used when their cameras are at most ``max_deg``
(reference: 120°) apart. Two definitions of "apart" (``kind``):

* ``"rotation"`` (default, the reference's ``AugmentedDataset``): the angle of the
  relative rotation ``R_a R_bᵀ`` of the two ``world_to_cam`` rotations,
  ``arccos((tr(R_a R_bᵀ) - 1) / 2)``; it includes a roll about the optical axis.
* ``"direction"``: the angle between the two viewing directions (optical axes, camera
  +z expressed in the object frame: the third row of ``R``), ``atan2(|a×b|, a·b)``; it
  ignores roll. For look-at cameras with a common up vector on a sphere around the object
  the two agree only approximately.

A pair is accepted when the angle is ``<= max_deg`` (the reference rejects ``> 120``);
a 1e-6° margin makes exact ties (frequent with icosphere views) independent of rounding.

Reference: You et al., "Multiview Equivariance Improves 3D Correspondence Understanding
with Minimal Feature Finetuning", ICLR 2025, arXiv:2411.19458; qq456cvb/3DCorrEnhance
``data_utils/dataset.py`` (``ObjaverseCorrDataset``, ``AugmentedDataset``) and
``finetune.py`` (``thresh3d_pos = 5e-3``, ``thres3d_neg = 0.1``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "view_points",
    "foreground_mask",
    "sample_foreground_pixels",
    "sample_pixel_pairs",
    "pair_angle",
    "pair_angle_ok",
    "valid_view_pairs",
    "sample_view_pair",
]

_TIE = 1e-6  # degrees


def _check_view(name: str, view: Any) -> None:
    if not isinstance(view, Mapping):
        raise ValueError(f"{name}: expected a view dict, got {type(view).__name__}")
    if "mask" not in view:
        raise ValueError(f"{name}: expected a 'mask' (H, W) bool entry, got keys {sorted(view)}")
    if "points" not in view and not {"depth", "K", "world_to_cam"} <= set(view):
        raise ValueError(
            f"{name}: expected 'points' (H, W, 3) or 'depth', 'K' and 'world_to_cam', got "
            f"keys {sorted(view)}"
        )


def view_points(view: Mapping[str, Any], name: str = "view") -> Tensor:
    """Object-frame 3D point of every pixel of a view: ``points (H, W, 3)``.

    ``view["points"]`` when present, else back-projected from ``depth (H, W)``, ``K (3, 3)``
    and ``world_to_cam (4, 4)`` with :func:`geo3d.render.depth_to_points` (pixel centres at
    integer coordinates, OpenCV camera).

    Raises:
        ValueError: naming ``name``, for a missing entry or a shape that is not
            ``(H, W, 3)`` matching the mask.

    Example:
        >>> v = {"mask": torch.ones(2, 3, dtype=torch.bool), "points": torch.zeros(2, 3, 3)}
        >>> view_points(v).shape
        torch.Size([2, 3, 3])
    """
    _check_view(name, view)
    mask = torch.as_tensor(view["mask"])
    if "points" in view:
        pts = torch.as_tensor(view["points"])
    else:
        from geo3d.render import depth_to_points

        depth = torch.as_tensor(view["depth"])
        pts = depth_to_points(
            depth.double(), torch.as_tensor(view["K"]).double(), view["world_to_cam"]
        ).to(depth.dtype if depth.is_floating_point() else torch.float32)
    if pts.ndim != 3 or pts.shape[-1] != 3 or pts.shape[:2] != mask.shape:
        raise ValueError(
            f"{name}: expected points of shape (H, W, 3) with (H, W) = {tuple(mask.shape)} "
            f"(the mask), got {tuple(pts.shape)}"
        )
    return pts


def foreground_mask(view: Mapping[str, Any], name: str = "view") -> Tensor:
    """Pixels that can be sampled: ``mask & (depth > 0 if depth is given) & finite points``.

    Returns:
        ``(H, W)`` bool.

    Raises:
        ValueError: naming ``name``, for a mask that is not 2D bool or a depth of another
            size.

    Example:
        >>> v = {"mask": torch.tensor([[True, False]]), "points": torch.zeros(1, 2, 3)}
        >>> foreground_mask(v).tolist()
        [[True, False]]
    """
    _check_view(name, view)
    mask = torch.as_tensor(view["mask"])
    if mask.ndim != 2 or mask.dtype != torch.bool:
        raise ValueError(
            f"{name}: expected mask of shape (H, W) and dtype bool, got "
            f"{tuple(mask.shape)} {mask.dtype}"
        )
    fg = mask.clone()
    if "depth" in view:
        depth = torch.as_tensor(view["depth"])
        if depth.shape != mask.shape:
            raise ValueError(
                f"{name}: expected depth of shape {tuple(mask.shape)} (the mask), got "
                f"{tuple(depth.shape)}"
            )
        fg &= depth.to(fg.device) > 0
    fg &= torch.isfinite(view_points(view, name)).all(-1).to(fg.device)
    return fg


def sample_foreground_pixels(
    mask: Tensor, num_pixels: int = 3000, generator: torch.Generator | None = None
) -> Tensor:
    """Draw foreground pixels uniformly: without replacement when ``mask`` has at least
    ``num_pixels`` True entries, with replacement otherwise (the reference's rule).

    Args:
        mask: ``(H, W)`` bool.
        num_pixels: pixels to draw (>= 1).
        generator: source of the draw (CPU generator; the draw is made on CPU).

    Returns:
        ``(num_pixels, 2)`` long pixel coordinates ``(u, v)`` = (column, row);
        ``(0, 2)`` when the mask is empty.

    Raises:
        ValueError: for a mask that is not 2D bool, or ``num_pixels`` not an int >= 1.

    Example:
        >>> m = torch.zeros(3, 4, dtype=torch.bool); m[2, 1] = True
        >>> sample_foreground_pixels(m, 2).tolist()
        [[1, 2], [1, 2]]
    """
    if not isinstance(mask, Tensor) or mask.ndim != 2 or mask.dtype != torch.bool:
        got = (
            f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        )
        raise ValueError(f"mask: expected a bool tensor of shape (H, W), got {got}")
    if not isinstance(num_pixels, int) or isinstance(num_pixels, bool) or num_pixels < 1:
        raise ValueError(f"num_pixels: expected an int >= 1, got {num_pixels!r}")
    vv, uu = torch.nonzero(mask.cpu(), as_tuple=True)
    n = vv.numel()
    if n == 0:
        return torch.zeros((0, 2), dtype=torch.long, device=mask.device)
    if n >= num_pixels:
        idx = torch.randperm(n, generator=generator)[:num_pixels]
    else:
        idx = torch.randint(0, n, (num_pixels,), generator=generator)
    return torch.stack([uu[idx], vv[idx]], dim=1).to(mask.device)


def _check_radius(pos_radius: float, neg_radius: float) -> None:
    for name, r in (("pos_radius", pos_radius), ("neg_radius", neg_radius)):
        if (
            isinstance(r, bool)
            or not isinstance(r, (int, float))
            or not (math.isfinite(r) and r > 0)
        ):
            raise ValueError(f"{name}: expected a finite float > 0, got {r!r}")
    if neg_radius < pos_radius:
        raise ValueError(
            f"neg_radius: expected >= pos_radius={pos_radius} (else a pair could be both), "
            f"got {neg_radius}"
        )


def sample_pixel_pairs(
    view_a: Mapping[str, Any],
    view_b: Mapping[str, Any],
    num_pixels: int = 3000,
    pos_radius: float = 5e-3,
    neg_radius: float = 0.1,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Foreground pixels of two views and their positive / negative masks from 3D distance.

    Args:
        view_a, view_b: view dicts with ``mask (H, W)`` bool and either ``points
            (H, W, 3)`` (object frame) or ``depth (H, W)`` + ``K (3, 3)`` +
            ``world_to_cam (4, 4)``; an optional ``depth`` also restricts the foreground to
            ``depth > 0`` (the layout of :mod:`geo3d.apps.multiview_corr._data`).
        num_pixels: foreground pixels drawn per view (reference: 3000).
        pos_radius: positives where the 3D points are closer than this (strict ``<``),
            object units (reference: 5e-3 at unit object extent).
        neg_radius: negatives where farther than this (strict ``>``; reference: 0.1).
        generator: source of both draws (view A first).

    Returns:
        dict with ``pixels_a (N, 2)``, ``pixels_b (M, 2)`` long ``(u, v)`` =
        (column, row); ``points_a (N, 3)``, ``points_b (M, 3)`` their 3D points (dtype
        of the views' points); ``pos_mask (N, M)``, ``neg_mask (N, M)`` bool; ``N = M =
        num_pixels``, or 0 for a view with an empty foreground. Distances are computed
        in float64 without the matrix-product shortcut of :func:`torch.cdist`, so pairs
        are classified exactly as a direct ``||p - q||`` would.

    Raises:
        ValueError: naming ``view_a``/``view_b`` for a missing entry or bad shapes;
            ``num_pixels`` not an int >= 1; radii not finite and > 0, or
            ``neg_radius < pos_radius``.

    Example:
        >>> m = torch.ones(2, 2, dtype=torch.bool)
        >>> p = torch.tensor([[[0.0, 0, 0], [1, 0, 0]], [[0, 1, 0], [0, 0, 1]]])
        >>> s = sample_pixel_pairs({"mask": m, "points": p}, {"mask": m, "points": p}, 4,
        ...                        generator=torch.Generator().manual_seed(0))
        >>> int(s["pos_mask"].sum()), int(s["neg_mask"].sum())
        (4, 12)

    Source: qq456cvb/3DCorrEnhance ``data_utils/dataset.py`` and ``finetune.py``.
    """
    _check_radius(pos_radius, neg_radius)
    if not isinstance(num_pixels, int) or isinstance(num_pixels, bool) or num_pixels < 1:
        raise ValueError(f"num_pixels: expected an int >= 1, got {num_pixels!r}")
    out: dict[str, Tensor] = {}
    pts = {}
    for key, name, view in (("a", "view_a", view_a), ("b", "view_b", view_b)):
        fg = foreground_mask(view, name)
        pix = sample_foreground_pixels(fg, num_pixels, generator)
        p = view_points(view, name)
        out[f"pixels_{key}"] = pix
        out[f"points_{key}"] = p[pix[:, 1].to(p.device), pix[:, 0].to(p.device)]
        pts[key] = out[f"points_{key}"]
    pa, pb = pts["a"].double(), pts["b"].to(pts["a"].device).double()
    if pa.shape[0] == 0 or pb.shape[0] == 0:
        d = torch.zeros(pa.shape[0], pb.shape[0], dtype=torch.float64, device=pa.device)
        empty = torch.zeros_like(d, dtype=torch.bool)
        out["pos_mask"], out["neg_mask"] = empty, empty.clone()
        return out
    d = torch.cdist(pa, pb, compute_mode="donot_use_mm_for_euclid_dist")
    out["pos_mask"] = d < pos_radius
    out["neg_mask"] = d > neg_radius
    return out


def pair_angle(
    world_to_cam_a: Any,
    world_to_cam_b: Any,
    kind: Literal["rotation", "direction"] = "rotation",
) -> Tensor:
    """Angle in degrees between two cameras (module docstring: the two definitions).

    Args:
        world_to_cam_a, world_to_cam_b: poses ``(..., 4, 4)`` (broadcast), OpenCV camera.
        kind: ``"rotation"`` (relative rotation, the reference) or ``"direction"``
            (optical axes).

    Returns:
        ``(...)`` float64 degrees in ``[0, 180]``.

    Raises:
        ValueError: for invalid poses (not rigid ``(..., 4, 4)``; see
            ``geo3d.render._camera.check_pose``) or an unknown ``kind``.

    Example:
        >>> from geo3d.render import look_at
        >>> a = look_at([2.0, 0.0, 0.0]); b = look_at([0.0, 2.0, 0.0])
        >>> round(float(pair_angle(a, b)), 6), round(float(pair_angle(a, b, "direction")), 6)
        (90.0, 90.0)
    """
    from geo3d.render._camera import check_pose

    if kind not in ("rotation", "direction"):
        raise ValueError(f"kind: expected 'rotation' or 'direction', got {kind!r}")
    Ra = check_pose(world_to_cam_a, "world_to_cam_a")[..., :3, :3].double()
    Rb = check_pose(world_to_cam_b, "world_to_cam_b")[..., :3, :3].double()
    return _angle(Ra, Rb, kind)


def _angle(Ra: Tensor, Rb: Tensor, kind: str) -> Tensor:
    # Ra, Rb: checked float64 rotations (..., 3, 3), broadcast against each other
    if kind == "rotation":
        # tr(Ra Rbᵀ) = sum of the elementwise product (no batched matmul needed)
        c = ((Ra * Rb).sum((-1, -2)) - 1.0) / 2.0
        return torch.rad2deg(torch.arccos(c.clamp(-1.0, 1.0)))
    za, zb = torch.broadcast_tensors(Ra[..., 2, :], Rb[..., 2, :])
    cross = torch.linalg.vector_norm(torch.linalg.cross(za, zb), dim=-1)
    return torch.rad2deg(torch.atan2(cross, (za * zb).sum(-1)))


def pair_angle_ok(
    world_to_cam_a: Any,
    world_to_cam_b: Any,
    max_deg: float = 120.0,
    kind: Literal["rotation", "direction"] = "rotation",
) -> bool:
    """Whether two cameras are at most ``max_deg`` degrees apart (:func:`pair_angle`,
    inclusive with a 1e-6° margin; the reference rejects pairs more than 120° apart).

    Args:
        world_to_cam_a, world_to_cam_b: single poses ``(4, 4)``.
        max_deg: largest accepted angle, degrees.
        kind: ``"rotation"`` or ``"direction"``.

    Raises:
        ValueError: for poses that are not single valid ``(4, 4)`` poses, a non-finite
            ``max_deg``, or an unknown ``kind``.

    Example:
        >>> from geo3d.render import look_at
        >>> pair_angle_ok(look_at([2.0, 0, 0]), look_at([-2.0, 0, 0]))
        False
    """
    if (
        isinstance(max_deg, bool)
        or not isinstance(max_deg, (int, float))
        or not math.isfinite(max_deg)
    ):
        raise ValueError(f"max_deg: expected a finite angle in degrees, got {max_deg!r}")
    ang = pair_angle(world_to_cam_a, world_to_cam_b, kind)
    if ang.ndim != 0:
        raise ValueError(
            f"world_to_cam_a: expected single (4, 4) poses, got a batch of shape {tuple(ang.shape)}"
        )
    return bool(ang <= max_deg + _TIE)


def valid_view_pairs(
    world_to_cam: Any,
    max_deg: float = 120.0,
    kind: Literal["rotation", "direction"] = "rotation",
    exclude: Any = (),
) -> Tensor:
    """All ordered pairs ``(i, j)``, ``i != j``, of views at most ``max_deg`` apart
    (:func:`pair_angle_ok` for every pair at once, in one batched computation).

    Args:
        world_to_cam: ``(V, 4, 4)`` poses of one object's views.
        max_deg, kind: as :func:`pair_angle_ok`.
        exclude: view indices never used (e.g. empty renders).

    Returns:
        ``(P, 2)`` long, row-major order (``i`` ascending, then ``j``).

    Raises:
        ValueError: for poses not ``(V, 4, 4)`` or invalid, a non-finite ``max_deg``, an
            unknown ``kind``, or an ``exclude`` index outside ``[0, V)``.

    Example:
        >>> from geo3d.render import look_at
        >>> T = look_at(torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [-2.0, 0, 0]]))
        >>> valid_view_pairs(T).tolist()
        [[0, 1], [1, 0], [1, 2], [2, 1]]
    """
    T = torch.as_tensor(world_to_cam)
    if T.ndim != 3 or T.shape[-2:] != (4, 4):
        raise ValueError(f"world_to_cam: expected shape (V, 4, 4), got {tuple(T.shape)}")
    if (
        isinstance(max_deg, bool)
        or not isinstance(max_deg, (int, float))
        or not math.isfinite(max_deg)
    ):
        raise ValueError(f"max_deg: expected a finite angle in degrees, got {max_deg!r}")
    if kind not in ("rotation", "direction"):
        raise ValueError(f"kind: expected 'rotation' or 'direction', got {kind!r}")
    from geo3d.render._camera import check_pose

    v = T.shape[0]
    R = check_pose(T)[..., :3, :3].double()  # checked once, not once per pair
    ang = _angle(R[:, None], R[None, :], kind)
    ok = (ang <= max_deg + _TIE) & ~torch.eye(v, dtype=torch.bool, device=ang.device)
    bad = [int(e) for e in exclude]
    if any(not 0 <= e < v for e in bad):
        raise ValueError(f"exclude: expected view indices in [0, {v}), got {bad}")
    if bad:
        idx = torch.tensor(bad, dtype=torch.long, device=ok.device)
        ok[idx] = False
        ok[:, idx] = False
    return torch.nonzero(ok.cpu())


def sample_view_pair(
    world_to_cam: Any,
    max_deg: float = 120.0,
    kind: Literal["rotation", "direction"] = "rotation",
    exclude: Any = (),
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Draw an ordered pair ``(i, j)``, ``i != j``, of views at most ``max_deg`` apart,
    uniformly among all such pairs (:func:`valid_view_pairs`; the reference instead draws
    two views and moves on to another object when they are too far apart; conditioned on
    acceptance both are uniform over the accepted pairs).

    Args:
        world_to_cam: ``(V, 4, 4)`` poses of one object's views.
        max_deg, kind: as :func:`pair_angle_ok`.
        exclude: view indices never used (e.g. empty renders).
        generator: source of the draw.

    Returns:
        ``(i, j)`` view indices.

    Raises:
        ValueError: as :func:`valid_view_pairs`, and when no pair qualifies (naming
            ``max_deg``).

    Example:
        >>> from geo3d.render import look_at
        >>> T = look_at(torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [-2.0, 0, 0]]))
        >>> sorted(sample_view_pair(T, generator=torch.Generator().manual_seed(0))) in ([0, 1], [1, 2])
        True
    """
    pairs = valid_view_pairs(world_to_cam, max_deg, kind, exclude)
    if pairs.shape[0] == 0:
        raise ValueError(
            f"max_deg: expected at least one pair of distinct views within {max_deg} degrees "
            f"({kind}), got none among {torch.as_tensor(world_to_cam).shape[0]} views"
        )
    k = int(torch.randint(0, pairs.shape[0], (1,), generator=generator))
    return int(pairs[k, 0]), int(pairs[k, 1])
