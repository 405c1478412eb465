"""Oracle inputs for the matching pipeline: fractured objects with ground truth and
descriptors derived from it (the upper bound of :func:`assemble_from_outputs`).

The oracle descriptor of a point is a random Fourier feature embedding of its position in
the *assembled* object, ``z(x) = sqrt(2/C) cos(W x + b)`` with ``W ~ N(0, σ⁻² I)`` and
``b ~ U[0, 2π)`` (Rahimi & Recht, "Random Features for Large-Scale Kernel Machines",
NIPS 2007): ``<z(x), z(y)> ≈ exp(-|x - y|² / 2σ²)``, so cosine similarity ranks points by
their distance in the assembled object, and touching points of two pieces get the same
descriptor whatever each piece's input pose (exactly invariant). The oracle fracture score
is the ground-truth label (a point lies within ``tol`` of another piece's surface).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["fractured_object", "fracture_labels", "oracle_outputs", "random_poses"]


def fracture_labels(pieces: list[Any], points: list[Tensor], tol: float,
                    dense: int = 20000, seed: int = 0) -> list[Tensor]:
    """Whether each sampled point lies on a cut face: its distance to a dense sample
    (``dense`` points) of any other piece's surface is below ``tol``.

    Args:
        pieces: the pieces' meshes (``trimesh.Trimesh``, in place).
        points: per piece, sampled points in place, shape :math:`(N_i, 3)` float64.
        tol: distance threshold (mesh units).

    Returns:
        Per piece a bool tensor :math:`(N_i,)`.
    """
    from geo3d.datasets import sample_surface

    from geo3d.ops import knn

    g = torch.Generator().manual_seed(seed)
    dense_pts = []
    for m in pieces:
        v = torch.as_tensor(m.vertices, dtype=torch.float64)
        f = torch.as_tensor(m.faces, dtype=torch.long)
        dense_pts.append(sample_surface(v, f, dense, generator=g)[0])
    out = []
    for i, x in enumerate(points):
        others = torch.cat([d for j, d in enumerate(dense_pts) if j != i])
        d2 = knn(x[None], others[None], 1).dists[0, :, 0]
        out.append(d2.sqrt() < tol)
    return out


def fractured_object(
    n_parts: int,
    num_points: int = 512,
    *,
    category: str = "Sphere",
    seed: int = 0,
    noise: float = 0.02,
    tol_rel: float = 0.02,
) -> dict[str, Tensor]:
    """A procedural shape fractured into ``n_parts`` pieces, sampled, with ground truth.

    Args:
        n_parts: number of pieces.
        num_points: points per piece.
        category: :func:`geo3d.datasets.shapes.make_shape` category.
        seed: seed of the shape, the fracture and the sampling.
        noise: roughness of the fracture surfaces (see
            :func:`geo3d.datasets.fracture.fracture_mesh`).
        tol_rel: fracture-label threshold relative to the object's bounding-box diagonal.

    Returns:
        dict (float64): ``assembled (P, N, 3)`` points in place, ``normals (P, N, 3)``
        outward face normals, ``fracture (P, N)`` bool labels, ``diag`` () the object's
        bounding-box diagonal.
    """
    from geo3d.datasets import sample_surface
    from geo3d.datasets.fracture import fracture_mesh
    from geo3d.datasets.shapes import make_shape

    mesh = make_shape(category, seed=seed)
    pieces = fracture_mesh(mesh, n_parts, seed=seed, noise=noise)
    g = torch.Generator().manual_seed(seed)
    pts, nrm = [], []
    for m in pieces:
        v = torch.as_tensor(m.vertices, dtype=torch.float64)
        f = torch.as_tensor(m.faces, dtype=torch.long)
        p, n, _ = sample_surface(v, f, num_points, generator=g)
        pts.append(p)
        nrm.append(n)
    diag = float(torch.as_tensor(mesh.bounds[1] - mesh.bounds[0]).norm())
    labels = fracture_labels(pieces, pts, tol_rel * diag, seed=seed)
    return {"assembled": torch.stack(pts), "normals": torch.stack(nrm),
            "fracture": torch.stack(labels), "diag": torch.tensor(diag, dtype=torch.float64)}


def random_poses(P: int, generator: torch.Generator, dtype: torch.dtype = torch.float64,
                 shift: float = 1.0) -> Tensor:
    """``P`` random rigid transforms (Haar rotations, Gaussian translations of std
    ``shift``), shape :math:`(P, 4, 4)`."""
    from geo3d.rotations import random_rotation_matrix

    T = torch.eye(4, dtype=dtype).repeat(P, 1, 1)
    T[:, :3, :3] = random_rotation_matrix(P, generator=generator, dtype=dtype)
    T[:, :3, 3] = shift * torch.randn(P, 3, generator=generator, dtype=dtype)
    return T


def oracle_outputs(
    assembled: Tensor,
    fracture: Tensor | None = None,
    *,
    dim: int = 256,
    bandwidth: float = 0.05,
    generator: torch.Generator | None = None,
    logit: float = 8.0,
    desc_noise: float = 0.0,
    label_flip: float = 0.0,
) -> dict[str, Tensor]:
    """Oracle ``desc``/``frac_score`` for :func:`assemble_from_outputs`.

    Args:
        assembled: points in the assembled frame, shape :math:`(*, N, 3)`.
        fracture: ground-truth fracture labels, shape :math:`(*, N)` bool (``None``: all).
        dim: descriptor size ``C``.
        bandwidth: kernel width ``σ`` (units of the points).
        generator: optional :class:`torch.Generator` for ``W``, ``b``.
        logit: ``frac_score`` is ``+logit`` on fracture points, ``-logit`` elsewhere.
        desc_noise: Gaussian noise added to every descriptor entry, relative to the RMS
            entry ``sqrt(1/C)`` (1.0: as much noise as signal), to emulate a learned head.
        label_flip: fraction of fracture labels flipped at random.

    Returns:
        ``{"desc": (*, N, C), "frac_score": (*, N)}`` in the dtype of ``assembled``.

    Example:
        >>> x = torch.tensor([[0.0, 0, 0], [0.001, 0, 0], [1.0, 0, 0]], dtype=torch.float64)
        >>> d = oracle_outputs(x, generator=torch.Generator().manual_seed(0))["desc"]
        >>> d = torch.nn.functional.normalize(d, dim=-1)
        >>> bool(d[0] @ d[1] > 0.99), bool(abs(d[0] @ d[2]) < 0.3)
        (True, True)
    """
    dt = assembled.dtype
    W = torch.randn(3, dim, generator=generator, dtype=torch.float64) / bandwidth
    b = torch.rand(dim, generator=generator, dtype=torch.float64) * (2 * math.pi)
    z = math.sqrt(2.0 / dim) * torch.cos(assembled.to(torch.float64) @ W + b)
    if desc_noise > 0:
        z = z + desc_noise * math.sqrt(1.0 / dim) * torch.randn(
            z.shape, generator=generator, dtype=torch.float64)
    if fracture is None:
        fracture = torch.ones(assembled.shape[:-1], dtype=torch.bool)
    if label_flip > 0:
        flip = torch.rand(fracture.shape, generator=generator, dtype=torch.float64) < label_flip
        fracture = fracture ^ flip
    score = torch.where(fracture, logit, -logit).to(torch.float64)
    return {"desc": z.to(dt), "frac_score": score.to(dt)}
