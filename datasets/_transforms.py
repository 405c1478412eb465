"""Composable, seeded transforms for point clouds and sets of parts.

A transform is called as ``t(sample, generator=None)`` where ``sample`` is a dict with

- ``"points"``: :math:`(*, N, 3)` (leading dims free: one cloud, a batch, or the parts of
  one object; random draws are made independently per leading index),
- ``"normals"`` (optional): :math:`(*, N, 3)`, transformed consistently,
- ``"mask"`` (optional): :math:`(*, N)` bool, True = valid point (used by centring).

A bare tensor is accepted and wrapped as ``{"points": tensor}``. The transform returns
the (shallow-copied) dict and records what it did, so that targets can be computed:

- ``"transform"``: :math:`(*, 4, 4)` homogeneous matrix of the cumulative affine map,
  ``points_now = T[..., :3, :3] @ points_original + T[..., :3, 3]`` (exact for every
  transform except :class:`Jitter`, which adds the recorded noise on top). It is float64
  for float64 *and* float32/16 points: affine maps are evaluated in float64 and the
  points rounded once, so centring or normalising float32 coordinates far from the
  origin (e.g. 1e5) loses nothing to cancellation and ``T`` holds the exact offsets;
- ``"indices"``: :math:`(*, M)` long, cumulative indices of the kept points into the
  original ones (set by the subsampling transforms; ``normals``/``mask`` follow);
- ``"applied"``: list of ``(name, params)`` in order, ``params`` holding the drawn values
  (e.g. the rotation matrices, the noise, the indices).

Randomness only comes from ``generator``. :func:`sample_generator` derives a generator
from ``(seed, epoch, index)`` so that a sample is reproducible whatever the number of
DataLoader workers.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

import torch

__all__ = [
    "sample_generator",
    "haar_rotation",
    "Transform",
    "Compose",
    "RandomRotation",
    "RandomZRotation",
    "RandomSE3",
    "RandomScale",
    "Jitter",
    "RandomSubsample",
    "FarthestPointSubsample",
    "Center",
    "Normalize",
]

Sample = dict[str, Any]


def sample_generator(
    seed: int, epoch: int = 0, index: int = 0, device: torch.device | str = "cpu"
) -> torch.Generator:
    """A :class:`torch.Generator` seeded by a hash of ``(seed, epoch, index)``.

    Independent of process, worker id and call order: the same triple always gives the
    same stream, and neighbouring triples give unrelated streams (SHA-256 mixing).
    """
    for name, v in (("seed", seed), ("epoch", epoch), ("index", index)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{name}: expected an int, got {v!r}")
    digest = hashlib.sha256(f"geo3d:{seed}:{epoch}:{index}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def haar_rotation(
    *shape: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Haar-uniform random rotation matrices of shape :math:`(*shape, 3, 3)`.

    Normalised Gaussian quaternions (uniform on :math:`S^3`) mapped to matrices.
    """
    dtype = dtype or torch.get_default_dtype()
    device = torch.device(device) if device is not None else torch.device("cpu")
    q = torch.randn(*shape, 4, generator=generator, dtype=dtype,
                    device=_draw_device(generator, device)).to(device)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).reshape(*shape, 3, 3)


# ------------------------------------------------------------------------- helpers


def _as_sample(sample: Sample | torch.Tensor) -> Sample:
    if isinstance(sample, torch.Tensor):
        sample = {"points": sample}
    elif not isinstance(sample, dict) or "points" not in sample:
        raise ValueError("sample: expected a tensor (*, N, 3) or a dict with key 'points'")
    pts = sample["points"]
    if not isinstance(pts, torch.Tensor) or pts.ndim < 2 or pts.shape[-1] != 3:
        shape = tuple(pts.shape) if isinstance(pts, torch.Tensor) else type(pts).__name__
        raise ValueError(f"points: expected shape (*, N, 3), got {shape}")
    for key in ("normals",):
        if key in sample and sample[key] is not None and sample[key].shape != pts.shape:
            raise ValueError(f"{key}: expected shape {tuple(pts.shape)}, "
                             f"got {tuple(sample[key].shape)}")
    if "mask" in sample and sample["mask"] is not None \
            and sample["mask"].shape != pts.shape[:-1]:
        raise ValueError(f"mask: expected shape {tuple(pts.shape[:-1])}, "
                         f"got {tuple(sample['mask'].shape)}")
    out = dict(sample)
    out["applied"] = list(sample.get("applied", []))
    return out


def _batch(sample: Sample) -> torch.Size:
    return sample["points"].shape[:-2]


def _record_affine(sample: Sample, A: torch.Tensor, b: torch.Tensor) -> None:
    """Apply x -> A x + b to points (and normals), compose into sample['transform'].

    The map is evaluated in float64 and rounded once to the points' dtype, so float32
    clouds far from the origin (e.g. centring coordinates of 1e5) lose nothing to
    cancellation."""
    pts = sample["points"]
    wide = torch.float64 if pts.dtype in (torch.float16, torch.bfloat16, torch.float32) \
        else pts.dtype
    out = pts.to(wide) @ A.to(wide).transpose(-1, -2) + b.to(wide)[..., None, :]
    sample["points"] = out.to(pts.dtype)
    if sample.get("normals") is not None:
        # normals transform by the inverse transpose (= A for rotations), then renormalise
        nrm = sample["normals"]
        n = (nrm.to(wide) @ torch.linalg.inv(A.to(wide))).to(nrm.dtype)
        sample["normals"] = n / n.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(n.dtype).tiny)
    T = torch.zeros(*A.shape[:-2], 4, 4, dtype=wide, device=pts.device)
    T[..., :3, :3] = A.to(wide)
    T[..., :3, 3] = b.to(wide)
    T[..., 3, 3] = 1
    prev = sample.get("transform")
    sample["transform"] = T if prev is None else T @ prev.to(wide)


def _select(sample: Sample, idx: torch.Tensor) -> None:
    """Keep points idx (*, M) along the point axis; compose into sample['indices']."""
    gather3 = idx[..., None].expand(*idx.shape, 3)
    sample["points"] = torch.gather(sample["points"], -2, gather3)
    if sample.get("normals") is not None:
        sample["normals"] = torch.gather(sample["normals"], -2, gather3)
    if sample.get("mask") is not None:
        sample["mask"] = torch.gather(sample["mask"], -1, idx)
    prev = sample.get("indices")
    sample["indices"] = idx if prev is None else torch.gather(prev, -1, idx)


def _storages(obj: Any, out: set[int]) -> set[int]:
    """Data pointers of the storages of every tensor in a (nested) sample."""
    if isinstance(obj, torch.Tensor):
        out.add(obj.untyped_storage().data_ptr())
    elif isinstance(obj, dict):
        for v in obj.values():
            _storages(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _storages(v, out)
    return out


def _unshare(obj: Any, inputs: set[int]) -> Any:
    """Copy of a (nested) sample where every tensor sharing storage with ``inputs`` is
    cloned (containers are rebuilt), so no output aliases the caller's tensors."""
    if isinstance(obj, torch.Tensor):
        return obj.clone() if obj.untyped_storage().data_ptr() in inputs else obj
    if isinstance(obj, dict):
        return {k: _unshare(v, inputs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unshare(v, inputs) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_unshare(v, inputs) for v in obj)
    return obj


class Transform:
    """Base class: subclasses implement :meth:`apply` on a validated, copied sample.

    Calling a transform never returns a tensor that shares memory with the input sample
    (unchanged entries such as ``normals`` under :class:`Jitter`, ``mask``, or earlier
    ``applied`` records are copied), so editing the output in place never changes the
    input."""

    def __call__(self, sample: Sample | torch.Tensor,
                 generator: torch.Generator | None = None) -> Sample:
        inputs = _storages(sample, set())
        return _unshare(self.apply(_as_sample(sample), generator), inputs)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Callable[..., Sample]]) -> None:
        self.transforms = list(transforms)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        for t in self.transforms:
            sample = t(sample, generator)
        return sample


class RandomRotation(Transform):
    """Haar-random rotation in SO(3) about the origin, one per leading index.

    Records ``("RandomRotation", {"rotation": R (*, 3, 3)})``; ``points ← R points``.
    """

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        pts = sample["points"]
        R = haar_rotation(*_batch(sample), generator=generator, dtype=pts.dtype,
                          device=pts.device)
        _record_affine(sample, R, torch.zeros_like(R[..., 0]))
        sample["applied"].append((type(self).__name__, {"rotation": R}))
        return sample


class RandomZRotation(Transform):
    """Uniform random rotation about the z axis (Haar measure of SO(2) ⊂ SO(3)).

    Records ``("RandomZRotation", {"angle": (*), "rotation": (*, 3, 3)})``.
    """

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        pts = sample["points"]
        theta = torch.rand(*_batch(sample), generator=generator, dtype=pts.dtype,
                           device=_draw_device(generator, pts.device)).to(pts.device)
        theta = theta * (2 * torch.pi)
        c, s = torch.cos(theta), torch.sin(theta)
        o, z = torch.ones_like(c), torch.zeros_like(c)
        R = torch.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(*c.shape, 3, 3)
        _record_affine(sample, R, torch.zeros_like(R[..., 0]))
        sample["applied"].append((type(self).__name__, {"angle": theta, "rotation": R}))
        return sample


class RandomSE3(Transform):
    """Haar-random rotation followed by a Gaussian translation ``t ~ N(0, std² I)``.

    ``points ← R points + t``. Records ``("RandomSE3", {"rotation", "translation"})``.
    """

    def __init__(self, translation_std: float = 1.0) -> None:
        if not translation_std >= 0:
            raise ValueError(f"translation_std: expected >= 0, got {translation_std!r}")
        self.translation_std = float(translation_std)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        pts = sample["points"]
        R = haar_rotation(*_batch(sample), generator=generator, dtype=pts.dtype,
                          device=pts.device)
        t = torch.randn(*_batch(sample), 3, generator=generator, dtype=pts.dtype,
                        device=_draw_device(generator, pts.device)).to(pts.device)
        t = t * self.translation_std
        _record_affine(sample, R, t)
        sample["applied"].append((type(self).__name__, {"rotation": R, "translation": t}))
        return sample


class RandomScale(Transform):
    """Scale by a factor uniform in ``[low, high]`` (per axis if ``anisotropic``)."""

    def __init__(self, low: float = 0.8, high: float = 1.25, anisotropic: bool = False) -> None:
        if not 0 < low <= high:
            raise ValueError(f"low, high: expected 0 < low <= high, got {low!r}, {high!r}")
        self.low, self.high, self.anisotropic = float(low), float(high), bool(anisotropic)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        pts = sample["points"]
        k = 3 if self.anisotropic else 1
        u = torch.rand(*_batch(sample), k, generator=generator, dtype=pts.dtype,
                       device=_draw_device(generator, pts.device)).to(pts.device)
        s = (self.low + (self.high - self.low) * u).expand(*_batch(sample), 3)
        _record_affine(sample, torch.diag_embed(s), torch.zeros_like(s))
        sample["applied"].append((type(self).__name__, {"scale": s}))
        return sample


class Jitter(Transform):
    """Add clipped Gaussian noise ``clip(N(0, sigma²), -clip, clip)`` to each point.

    Not affine: ``transform`` is unchanged; the noise :math:`(*, N, 3)` is recorded.
    """

    def __init__(self, sigma: float = 0.01, clip: float | None = 0.05) -> None:
        if not sigma >= 0:
            raise ValueError(f"sigma: expected >= 0, got {sigma!r}")
        if clip is not None and not clip > 0:
            raise ValueError(f"clip: expected > 0 or None, got {clip!r}")
        self.sigma, self.clip = float(sigma), clip

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        pts = sample["points"]
        noise = torch.randn(pts.shape, generator=generator, dtype=pts.dtype,
                            device=_draw_device(generator, pts.device)).to(pts.device)
        noise = noise * self.sigma
        if self.clip is not None:
            noise = noise.clamp(-self.clip, self.clip)
        sample["points"] = pts + noise
        sample["applied"].append((type(self).__name__, {"noise": noise}))
        return sample


class RandomSubsample(Transform):
    """Keep ``num_points`` points chosen uniformly (without replacement unless ``replace``
    or the cloud has fewer points)."""

    def __init__(self, num_points: int, replace: bool = False) -> None:
        if not isinstance(num_points, int) or num_points < 1:
            raise ValueError(f"num_points: expected an int >= 1, got {num_points!r}")
        self.num_points, self.replace = num_points, bool(replace)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        pts = sample["points"]
        n = pts.shape[-2]
        dev = _draw_device(generator, pts.device)
        batch = _batch(sample)
        if self.replace or n < self.num_points:
            if n == 0:
                raise ValueError("points: cannot subsample an empty cloud")
            idx = torch.randint(n, (*batch, self.num_points), generator=generator, device=dev)
        else:
            keys = torch.rand(*batch, n, generator=generator, device=dev)
            idx = keys.argsort(dim=-1)[..., : self.num_points]
        idx = idx.to(pts.device)
        _select(sample, idx)
        sample["applied"].append((type(self).__name__, {"indices": idx}))
        return sample


def _farthest_point_indices(pts: torch.Tensor, m: int, start: torch.Tensor) -> torch.Tensor:
    """Greedy FPS on (B, N, 3) from start (B,) -> (B, m)."""
    B, N, _ = pts.shape
    idx = torch.empty(B, m, dtype=torch.long, device=pts.device)
    dist = torch.full((B, N), float("inf"), dtype=pts.dtype, device=pts.device)
    cur = start
    ar = torch.arange(B, device=pts.device)
    for i in range(m):
        idx[:, i] = cur
        d = ((pts - pts[ar, cur][:, None, :]) ** 2).sum(-1)
        dist = torch.minimum(dist, d)
        cur = dist.argmax(-1)
    return idx


class FarthestPointSubsample(Transform):
    """Keep ``num_points`` points by farthest point sampling (first point random if
    ``random_start``, else index 0)."""

    def __init__(self, num_points: int, random_start: bool = True) -> None:
        if not isinstance(num_points, int) or num_points < 1:
            raise ValueError(f"num_points: expected an int >= 1, got {num_points!r}")
        self.num_points, self.random_start = num_points, bool(random_start)

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        pts = sample["points"]
        n = pts.shape[-2]
        if n < self.num_points:
            raise ValueError(f"points: FPS needs at least num_points={self.num_points} "
                             f"points, got N={n}")
        batch = _batch(sample)
        flat = pts.reshape(-1, n, 3)
        if self.random_start:
            start = torch.randint(n, (flat.shape[0],), generator=generator,
                                  device=_draw_device(generator, pts.device)).to(pts.device)
        else:
            start = torch.zeros(flat.shape[0], dtype=torch.long, device=pts.device)
        idx = _farthest_point_indices(flat.detach(), self.num_points, start)
        idx = idx.reshape(*batch, self.num_points)
        _select(sample, idx)
        sample["applied"].append((type(self).__name__, {"indices": idx}))
        return sample


def _masked_centroid(sample: Sample) -> torch.Tensor:
    """Centroid over valid points, accumulated in float64; an all-masked cloud gives 0."""
    pts = sample["points"]
    wide = pts.to(torch.float64) if pts.dtype != torch.float64 else pts
    mask = sample.get("mask")
    if mask is None:
        return wide.mean(-2) if pts.shape[-2] else wide.sum(-2)
    m = mask.to(torch.float64)[..., None]
    wide = torch.where(mask[..., None], wide, torch.zeros((), dtype=wide.dtype))
    return (wide * m).sum(-2) / m.sum(-2).clamp_min(1)


class Center(Transform):
    """Translate each cloud so that its centroid (over valid points) is at the origin.

    Records ``("Center", {"center": (*, 3)})`` (float64, accumulated in float64 whatever
    the points' dtype); ``points ← points − center``.
    """

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        c64 = _masked_centroid(sample)
        eye = torch.eye(3, dtype=c64.dtype, device=c64.device).expand(*c64.shape[:-1], 3, 3)
        _record_affine(sample, eye, -c64)
        sample["applied"].append((type(self).__name__, {"center": c64}))
        return sample


class Normalize(Transform):
    """Centre and scale to unit size (see :func:`geo3d.datasets.normalize_points`).

    Records ``("Normalize", {"center": (*, 3), "scale": (*)})`` (float64, computed in
    float64 whatever the points' dtype); ``points ← (points − center) / scale``.
    """

    def __init__(self, mode: str = "sphere") -> None:
        if mode not in ("sphere", "box"):
            raise ValueError(f"mode: expected 'sphere' or 'box', got {mode!r}")
        self.mode = mode

    def apply(self, sample: Sample, generator: torch.Generator | None) -> Sample:
        from geo3d.datasets._io import normalize_points

        pts = sample["points"]
        wide = pts.to(torch.float64) if pts.dtype != torch.float64 else pts
        _, center, scale = normalize_points(wide, sample.get("mask"), mode=self.mode)
        inv = (1 / scale)[..., None].expand(*scale.shape, 3)
        _record_affine(sample, torch.diag_embed(inv), -center * inv)
        sample["applied"].append((type(self).__name__, {"center": center, "scale": scale}))
        return sample
