"""The canonical pose of an assembled object, by registration to its nearest training objects.

The pieces' fracture surfaces fix their poses relative to each other
(:mod:`~geo3d.apps.assembly._fracture_registration`), but not the pose of the whole
object. Breaking Bad's absolute protocol compares poses in the dataset's own frame, so an
assembler has to guess that frame. A single fragment says little about it (the network's
per-piece poses are right for 19% of the long config's held-out pieces); the assembled
object says much more. :class:`TemplateBank` keeps the training objects, assembled, in the
dataset's frame (a few hundred points each) and registers an assembled object to them:

1. Both clouds are reduced to ``num_points`` points by farthest point sampling (nearly
   uniform density whatever the pieces' sample counts) and put in their principal frames.
2. Coarse search: for every template, the 24 rotations that map one principal frame onto
   the other (signed axis permutations: eigenvalue order and axis signs are not trusted),
   plus optional candidate rotations (e.g. the network's), scored by the symmetric
   Chamfer distance (mean of nearest-neighbour distances, not squared) on the first
   ``coarse_points`` points of the samples.
3. The ``top`` best (template, rotation) pairs are refined by point-to-point ICP on all
   samples; the lowest Chamfer distance wins.

Every step uses the object's own centroid and principal frame, and candidates that move
with it, so the estimate rotates with the input: the assembled object lands in the same
place whatever the pose it was given in (up to floating-point ties). It is a
nearest-neighbour prior: it can only place objects that resemble some training object.

Reference: nearest-template pose estimation by ICP (P. J. Besl and N. D. McKay, "A method
for registration of 3-D shapes", IEEE TPAMI 1992, doi:10.1109/34.121791); the absolute
protocol: S. Sellán et al., "Breaking Bad: A Dataset for Geometric Fracture and
Reassembly", NeurIPS 2022 Datasets and Benchmarks, arXiv:2210.11463.
"""

from __future__ import annotations

import itertools
import numbers
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["TemplateBank", "OCTAHEDRAL_ROTATIONS"]


def _octahedral() -> Tensor:
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = torch.zeros(3, 3, dtype=torch.float64)
            for r, (c, s) in enumerate(zip(perm, signs, strict=True)):
                m[r, c] = s
            if torch.linalg.det(m) > 0:
                mats.append(m)
    return torch.stack(mats)


#: the 24 rotations that map the coordinate axes onto themselves, (24, 3, 3) float64
OCTAHEDRAL_ROTATIONS = _octahedral()
# what the coarse search tries between principal frames (a list, so tests can swap it)
_PRINCIPAL_CANDIDATES = [OCTAHEDRAL_ROTATIONS]


def _shape(x: object) -> object:
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


#: largest coordinate magnitude accepted (squared distances must not overflow float64)
MAX_COORD = 1e100


def _array(name: str, x: Any) -> Tensor:
    try:
        return torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x,
                                          dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected an array of numbers, got {_shape(x)}") from err


def _cloud(name: str, x: Any) -> Tensor:
    t = _array(name, x)
    if t.dim() != 2 or t.shape[1] != 3 or t.shape[0] < 4:
        raise ValueError(f"{name}: expected shape (n, 3) with n >= 4, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    if float(t.abs().max()) > MAX_COORD:
        raise ValueError(f"{name}: expected coordinates of magnitude at most {MAX_COORD:g}, "
                         f"got {float(t.abs().max()):.3g}")
    return t


def _rotations(name: str, x: Any) -> Tensor:
    R = _array(name, x)
    if R.dim() != 3 or R.shape[1:] != (3, 3) or not bool(torch.isfinite(R).all()):
        raise ValueError(f"{name}: expected finite rotations of shape (C, 3, 3), got "
                         f"{_shape(x)}")
    if R.shape[0]:
        err = (R @ R.transpose(1, 2) - torch.eye(3, dtype=R.dtype)).abs().amax((1, 2))
        det = torch.linalg.det(R)
        bad = ((err > 1e-4) | (det < 0)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"{name}: expected rotations (orthonormal, det +1), got "
                             f"{len(bad)} that are not (first: index {bad[0]}, "
                             f"|R Rᵀ - I| = {float(err[bad[0]]):.3g}, det = "
                             f"{float(det[bad[0]]):.3g})")
    return R


def _sample(x: Tensor, m: int) -> Tensor:
    """``m`` points of ``x`` by farthest point sampling from its point farthest from the
    centroid (an order that moves with the cloud); repeated when ``x`` has fewer."""
    d = (x - x.mean(0)).square().sum(1)
    start = int(d.argmax())
    x = torch.cat([x[start:start + 1], x[:start], x[start + 1:]])
    from geo3d.ops import farthest_point_sampling

    idx = farthest_point_sampling(x, min(m, x.shape[0]))
    out = x[idx]
    if out.shape[0] < m:
        out = out[torch.arange(m) % out.shape[0]]
    return out


def _frame(x: Tensor) -> tuple[Tensor, Tensor]:
    """Centroid and principal axes (columns, descending variance, det +1)."""
    c = x.mean(0)
    _, E = torch.linalg.eigh((x - c).T @ (x - c) / x.shape[0])
    E = E.flip(1)
    if torch.linalg.det(E) < 0:
        E = E * torch.tensor([1.0, 1.0, -1.0], dtype=E.dtype)
    return c, E


def _chamfer(a: Tensor, b: Tensor) -> Tensor:
    """Symmetric Chamfer distance (mean nearest-neighbour distance, both ways) of the
    clouds ``a (..., n, 3)`` and ``b (..., m, 3)``."""
    d = torch.cdist(a, b)
    return d.min(-1).values.mean(-1) + d.min(-2).values.mean(-1)


class TemplateBank:
    """Assembled training objects in the dataset's frame, and the canonical pose of a new
    assembled object by registration to the nearest of them.

    Args:
        templates: the objects, shape :math:`(K, M, 3)` (each already reduced by
            :meth:`from_objects`; lengths in the dataset's units), K >= 1, M >= 8.
        coarse_points: points per cloud in the coarse search (the first ones of the
            farthest-point samples), 8 <= coarse_points <= M; default ``min(128, M)``.
        top: (template, rotation) pairs refined by ICP (int >= 1).
        icp_iterations: most point-to-point ICP iterations per refined pair (int >= 0;
            it stops early once the nearest-neighbour correspondences repeat).

    Raises:
        ValueError: bad shapes, NaN/inf, or arguments out of range.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> obj = torch.randn(300, 3, generator=g, dtype=torch.float64) * torch.tensor(
        ...     [3.0, 1.0, 0.3], dtype=torch.float64)
        >>> obj[:40, 0] += 4.0  # a lump at one end: no symmetry
        >>> bank = TemplateBank.from_objects([obj], num_points=128)
        >>> from geo3d.rotations import random_rotation_matrix
        >>> R = random_rotation_matrix(generator=g, dtype=torch.float64)
        >>> T, dist = bank.pose(obj @ R.T + 5.0)
        >>> bool(torch.allclose(T[:3, :3] @ R, torch.eye(3, dtype=torch.float64), atol=1e-6))
        True

    Source: nearest-template registration (ICP: Besl & McKay, IEEE TPAMI 1992,
    doi:10.1109/34.121791) for Breaking Bad's absolute protocol (arXiv:2210.11463); see
    the module docstring.
    """

    def __init__(self, templates: Any, *, coarse_points: int | None = None, top: int = 16,
                 icp_iterations: int = 50) -> None:
        t = _array("templates", templates)
        if t.dim() != 3 or t.shape[0] < 1 or t.shape[1] < 8 or t.shape[2] != 3:
            raise ValueError(f"templates: expected shape (K, M, 3) with K >= 1 and M >= 8, "
                             f"got {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError("templates: expected finite values, got NaN or inf")
        if float(t.abs().max()) > MAX_COORD:
            raise ValueError(f"templates: expected coordinates of magnitude at most "
                             f"{MAX_COORD:g}, got {float(t.abs().max()):.3g}")
        if coarse_points is None:
            coarse_points = min(128, int(t.shape[1]))
        for name, v, lo in (("coarse_points", coarse_points, 8), ("top", top, 1),
                            ("icp_iterations", icp_iterations, 0)):
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        if coarse_points > t.shape[1]:
            raise ValueError(f"coarse_points: expected at most M = {t.shape[1]}, got "
                             f"{coarse_points}")
        self.templates = t
        self.coarse_points, self.top = int(coarse_points), int(top)
        self.icp_iterations = int(icp_iterations)
        frames = [_frame(x) for x in t]
        self._c = torch.stack([c for c, _ in frames])  # (K, 3)
        self._E = torch.stack([E for _, E in frames])  # (K, 3, 3)
        # templates in their principal frames, (K, M, 3)
        self._W = torch.einsum("kmi,kij->kmj", t - self._c[:, None], self._E)

    @property
    def num_points(self) -> int:
        """Points per template (M)."""
        return int(self.templates.shape[1])

    def __len__(self) -> int:
        return int(self.templates.shape[0])

    @classmethod
    def from_objects(cls, objects: Iterable[Any], num_points: int = 512,
                     **kwargs: Any) -> TemplateBank:
        """A bank from assembled objects, each an :math:`(n_i, 3)` array in the dataset's
        frame (e.g. the union of a training object's pieces at their true poses),
        reduced to ``num_points`` points by farthest point sampling.

        Raises:
            ValueError: no objects, a bad object (shape, fewer than 4 points, NaN/inf),
                ``num_points`` not an int >= 8, or bad ``kwargs`` (see the class).
        """
        if not isinstance(num_points, numbers.Integral) or isinstance(num_points, bool) or \
                num_points < 8:
            raise ValueError(f"num_points: expected an int >= 8, got {num_points!r}")
        if isinstance(objects, (np.ndarray, Tensor)) and objects.ndim == 2:
            raise ValueError(f"objects: expected a sequence of (n_i, 3) arrays (one per "
                             f"object), got one array of shape {tuple(objects.shape)}; wrap "
                             f"it in a list")
        clouds = [_sample(_cloud(f"objects[{i}]", x), int(num_points))
                  for i, x in enumerate(objects)]
        if not clouds:
            raise ValueError("objects: expected at least one object, got none")
        return cls(torch.stack(clouds), **kwargs)

    def pose(self, points: Any, candidates: Any | None = None) -> tuple[Tensor, float]:
        """The rigid transform that puts an assembled object in the dataset's frame.

        Args:
            points: the assembled object, :math:`(n, 3)` (any frame; same units as the
                templates), n >= 4.
            candidates: optional extra rotations :math:`(C, 3, 3)` from the input frame to
                the dataset's frame (e.g. the network's per-piece poses composed with the
                assembly) tried next to the principal-frame ones.

        Returns:
            ``(T, distance)``: ``T`` :math:`(4, 4)` float64 with ``T @ [p, 1]`` the
            point ``p`` in the dataset's frame, and the Chamfer distance (mean
            nearest-neighbour distance both ways, in the templates' units) to the chosen
            template after registration.

        Warns:
            RuntimeWarning: ``points`` are (nearly) coincident or collinear: their pose
                is not determined.

        Raises:
            ValueError: bad ``points`` (shape, NaN/inf, magnitude above 1e100) or
                ``candidates`` (shape, NaN/inf, not orthonormal with det +1 to 1e-4).
        """
        y = _sample(_cloud("points", points), self.num_points)
        Rc = None if candidates is None else _rotations("candidates", candidates)
        c, E = _frame(y)
        ev = torch.linalg.eigvalsh((y - c).T @ (y - c) / y.shape[0])
        if not float(ev[1]) > 1e-12 * max(float(ev[2]), 1e-300):
            warnings.warn("TemplateBank.pose: the points are coincident or collinear; their "
                          "pose in the dataset's frame is not determined", RuntimeWarning,
                          stacklevel=2)
        z = (y - c) @ E  # the query in its principal frame
        K, m = len(self), self.coarse_points
        # candidate rotations in principal coordinates: z @ O.T is compared with W_t
        O = _PRINCIPAL_CANDIDATES[0]  # (24, 3, 3)
        zo = torch.einsum("mi,oji->omj", z[:m], O)  # (24, m, 3)
        score = torch.empty(len(O), K, dtype=torch.float64)
        Wc = self._W[:, :m]
        for k0 in range(0, K, 64):
            k1 = min(K, k0 + 64)
            score[:, k0:k1] = _chamfer(zo[:, None], Wc[None, k0:k1])
        cand = []  # (score, template, rotation input frame -> dataset frame)
        flat = score.flatten()
        for i in torch.argsort(flat)[: self.top].tolist():
            o, k = divmod(i, K)
            cand.append((float(flat[i]), k, self._E[k] @ O[o] @ E.T))
        if Rc is not None:
            for i in range(Rc.shape[0]):
                # the query rotated by candidate i, in each template's principal frame
                qi = (y[:m] - c) @ Rc[i].T
                sc = torch.cat([_chamfer(qi @ self._E[k0:k0 + 64], Wc[k0:k0 + 64])
                                for k0 in range(0, K, 64)])  # (K,)
                k = int(sc.argmin())
                cand.append((float(sc[k]), k, Rc[i]))
        best_d, best_T = float("inf"), None
        for _, k, R in cand:
            T = torch.eye(4, dtype=torch.float64)
            T[:3, :3], T[:3, 3] = R, self._c[k] - R @ c
            T, d = self._icp(y, self.templates[k], T)
            if d < best_d:
                best_d, best_T = d, T
        assert best_T is not None
        return best_T, best_d

    def _icp(self, y: Tensor, target: Tensor, T: Tensor) -> tuple[Tensor, float]:
        prev = None
        for _ in range(self.icp_iterations):
            x = y @ T[:3, :3].T + T[:3, 3]
            j = torch.cdist(x, target).argmin(1)
            if prev is not None and torch.equal(j, prev):
                break  # same correspondences: the next step would be the identity
            prev = j
            q = target[j]
            mx, mq = x.mean(0), q.mean(0)
            U, _, Vh = torch.linalg.svd((x - mx).T @ (q - mq))
            D = torch.ones(3, dtype=torch.float64)
            if torch.linalg.det(Vh.T @ U.T) < 0:  # a reflection; never sign() = 0 (singular)
                D[2] = -1.0
            dR = Vh.T @ torch.diag(D) @ U.T
            step = torch.eye(4, dtype=torch.float64)
            step[:3, :3], step[:3, 3] = dR, mq - dR @ mx
            T = step @ T
        x = y @ T[:3, :3].T + T[:3, 3]
        return T, float(_chamfer(x, target))

    def state(self) -> Tensor:
        """The templates as a float32 tensor :math:`(K, M, 3)` (what a checkpoint stores;
        ``TemplateBank(state)`` rebuilds the bank)."""
        return self.templates.to(torch.float32)


def assembled_clouds(points: Sequence[Tensor], valid: Tensor, rot: Tensor,
                     trans: Tensor) -> list[Tensor]:
    """Each object's pieces at their poses, concatenated: ``rot @ x + trans`` over the
    valid pieces; ``points`` :math:`(B, P, N, 3)`, ``valid`` :math:`(B, P)`, ``rot``
    :math:`(B, P, 3, 3)`, ``trans`` :math:`(B, P, 3)` → a list of :math:`(n_b, 3)`
    float64 tensors."""
    out = []
    for b in range(len(points)):
        v = valid[b].bool()
        x = points[b].double() @ rot[b].double().transpose(-1, -2) + trans[b].double()[:, None]
        out.append(x[v].reshape(-1, 3))
    return out
