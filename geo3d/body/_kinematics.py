"""SMPL's kinematic tree, forward kinematics and global <-> local joint rotations.

The tree is given by ``parents``: ``parents[j]`` is the parent joint of ``j`` and ``-1`` marks
the root (SMPL's ``kintree_table[0]`` with its first entry set to -1). Any tree works: the
joints are visited in a topological order computed from ``parents``, so a child may come
before its parent in the numbering.

Reference: M. Loper et al., "SMPL: A Skinned Multi-Person Linear Model", ACM TOG 34(6), 2015,
DOI 10.1145/2816795.2818013 (eqs. 2-4); the batched formulation follows
``smplx/lbs.py::batch_rigid_transform`` (github.com/vchoutas/smplx), against which the tests
check these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = [
    "SMPL_JOINT_NAMES",
    "SMPL_PARENTS",
    "joint_index",
    "check_parents",
    "local_to_global",
    "global_to_local",
    "forward_kinematics",
    "FKOutput",
]

#: SMPL's 24 joints, in the order of the official model files and smplx.
SMPL_JOINT_NAMES: tuple[str, ...] = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hand",
    "right_hand",
)

#: SMPL's kinematic tree (``kintree_table[0]`` with -1 for the root pelvis).
SMPL_PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21,
)  # fmt: skip


def joint_index(name: str | int, names: Sequence[str] = SMPL_JOINT_NAMES) -> int:
    """Index of a joint given its name (or an index, checked against the range).

    Args:
        name: a joint name from ``names`` (e.g. ``"left_knee"``) or an integer index.
        names: the joint names of the tree (default: :data:`SMPL_JOINT_NAMES`).

    Returns:
        The joint's index.

    Raises:
        ValueError: unknown name or index out of range.

    Example:
        >>> joint_index("left_knee")
        4
    """
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise ValueError(f"joint: expected a joint name or index, got {type(name).__name__}")
    if isinstance(name, int):
        if not 0 <= name < len(names):
            raise ValueError(f"joint: expected an index in [0, {len(names)}), got {name}")
        return name
    try:
        return list(names).index(name)
    except ValueError:
        raise ValueError(f"joint: expected one of {', '.join(names)}, got {name!r}") from None


def check_parents(
    parents: Sequence[int] | torch.Tensor, num_joints: int | None = None
) -> list[int]:
    """Validate a kinematic tree and return it as a list of ints.

    Args:
        parents: parent index per joint, ``-1`` for the (single) root, length ``J``.
        num_joints: expected ``J`` (optional).

    Returns:
        ``parents`` as a Python list.

    Raises:
        ValueError: wrong length, not exactly one root, an index out of range, or a cycle.
    """
    if isinstance(parents, torch.Tensor):
        if parents.dim() != 1 or parents.is_floating_point():
            raise ValueError(
                f"parents: expected a 1-D integer tensor, got shape {tuple(parents.shape)} "
                f"dtype {parents.dtype}"
            )
        p = [int(x) for x in parents.tolist()]
    else:
        p = [int(x) for x in parents]
    J = len(p)
    if num_joints is not None and J != num_joints:
        raise ValueError(f"parents: expected {num_joints} entries, got {J}")
    if J == 0:
        raise ValueError("parents: expected at least one joint, got 0")
    roots = [j for j, q in enumerate(p) if q < 0]
    if len(roots) != 1 or any(q < -1 for q in p):
        raise ValueError(f"parents: expected exactly one root marked -1, got {p}")
    for j, q in enumerate(p):
        if q >= J or q == j:
            raise ValueError(
                f"parents: expected parent indices in [-1, {J}) other than self, got {q} at {j}"
            )
    _topological_order(p)  # raises on cycles
    return p


def _topological_order(parents: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for j, q in enumerate(parents):
        children.setdefault(q, []).append(j)
    order: list[int] = []
    stack = list(children.get(-1, []))
    while stack:
        j = stack.pop()
        order.append(j)
        stack.extend(children.get(j, []))
    if len(order) != len(parents):
        raise ValueError(f"parents: expected a tree, got a cycle in {parents}")
    return order


def _check_rotations(name: str, R: torch.Tensor, J: int | None = None) -> None:
    if not isinstance(R, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(R).__name__}")
    if R.dim() < 3 or R.shape[-2:] != (3, 3) or (J is not None and R.shape[-3] != J):
        want = f"(..., {J if J is not None else 'J'}, 3, 3)"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(R.shape)}")
    if not R.is_floating_point():
        raise ValueError(f"{name}: expected a floating tensor, got {R.dtype}")
    from geo3d.rotations._checks import values_enabled

    if values_enabled() and not torch.isfinite(R).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")


def check_rotation_values(name: str, R: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` unless every ``R (..., 3, 3)`` is a rotation:
    ``max|RᵀR - I| <= max(1e-5, 1000 eps)`` of its dtype and ``det R > 0``.

    Skipped while tracing (``torch.compile``, ``torch.func``) or with the value checks of
    :mod:`geo3d.rotations` off, as the rotation functions do.
    """
    from geo3d.rotations._checks import values_enabled

    if not values_enabled() or R.numel() == 0:
        return
    Rd = R.detach()
    tol = max(1e-5, 1000 * torch.finfo(R.dtype).eps)
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    err = (Rd.transpose(-1, -2) @ Rd - eye).abs().amax(dim=(-1, -2))
    det = torch.linalg.det(Rd)
    bad = (err > tol) | ~(det > 0)
    if bool(bad.any()):
        raise ValueError(
            f"{name}: expected rotation matrices (RᵀR = I to {tol:.0e}, det > 0), got "
            f"{int(bad.sum())} that are not (max |RᵀR - I| = {float(err.max()):.3g}, "
            f"min det = {float(det.min()):.3g})"
        )


def local_to_global(
    local_rotations: torch.Tensor, parents: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Compose local (parent-relative) joint rotations into global ones along a tree.

    ``G_root = L_root`` and ``G_j = G_parent(j) L_j``.

    Args:
        local_rotations: shape :math:`(*, J, 3, 3)`.
        parents: parent per joint, ``-1`` for the root, length ``J``.

    Returns:
        Global rotations, shape :math:`(*, J, 3, 3)`.

    Raises:
        ValueError: bad shapes, non-finite values, matrices that are not rotations
            (see :func:`check_rotation_values`) or an invalid tree.

    Example:
        >>> R = torch.eye(3).expand(24, 3, 3)
        >>> local_to_global(R, SMPL_PARENTS).shape
        torch.Size([24, 3, 3])
    """
    p = check_parents(parents)
    _check_rotations("local_rotations", local_rotations, len(p))
    check_rotation_values("local_rotations", local_rotations)
    out: list[torch.Tensor | None] = [None] * len(p)
    for j in _topological_order(p):
        q = p[j]
        out[j] = local_rotations[..., j, :, :] if q < 0 else out[q] @ local_rotations[..., j, :, :]
    return torch.stack(out, dim=-3)  # type: ignore[arg-type]


def global_to_local(
    global_rotations: torch.Tensor, parents: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """Inverse of :func:`local_to_global`: ``L_j = G_parent(j)ᵀ G_j``, ``L_root = G_root``.

    Args:
        global_rotations: shape :math:`(*, J, 3, 3)` (rotation matrices).
        parents: parent per joint, ``-1`` for the root, length ``J``.

    Returns:
        Local rotations, shape :math:`(*, J, 3, 3)`.

    Raises:
        ValueError: bad shapes, non-finite values, matrices that are not rotations
            (see :func:`check_rotation_values`) or an invalid tree.

    Example:
        >>> G = torch.eye(3).expand(24, 3, 3)
        >>> bool((global_to_local(G, SMPL_PARENTS) == torch.eye(3)).all())
        True
    """
    p = check_parents(parents)
    _check_rotations("global_rotations", global_rotations, len(p))
    check_rotation_values("global_rotations", global_rotations)
    idx = torch.tensor([max(q, 0) for q in p], device=global_rotations.device)
    parent_R = global_rotations.index_select(-3, idx)
    local = parent_R.transpose(-1, -2) @ global_rotations
    is_root = torch.tensor([q < 0 for q in p], device=global_rotations.device)
    return torch.where(is_root[:, None, None], global_rotations, local)


class FKOutput(NamedTuple):
    """Result of :func:`forward_kinematics`.

    Attributes:
        global_rotations: :math:`(*, J, 3, 3)` rotation of each joint's frame in the world.
        joints: :math:`(*, J, 3)` posed joint locations.
        transforms: :math:`(*, J, 4, 4)` skinning transforms ``A_j`` mapping a rest-pose point
            rigidly attached to joint ``j`` to its posed location (``x' = A_j x``): smplx's
            ``rel_transforms``.
    """

    global_rotations: torch.Tensor
    joints: torch.Tensor
    transforms: torch.Tensor


def forward_kinematics(
    local_rotations: torch.Tensor,
    rest_joints: torch.Tensor,
    parents: Sequence[int] | torch.Tensor,
) -> FKOutput:
    """Pose a skeleton: global joint rotations, posed joints and skinning transforms.

    With rest joints ``t_j`` and local rotations ``L_j``:
    ``G_j = G_p L_j``, ``x_j = G_p (t_j - t_p) + x_p`` (root: ``x_root = t_root``), and the
    skinning transform ``A_j = [G_j | x_j - G_j t_j]``. Batched over leading dims, works in
    float32/float64, differentiable.

    Args:
        local_rotations: parent-relative rotations, shape :math:`(*, J, 3, 3)`.
        rest_joints: joint locations in the rest pose, shape :math:`(*, J, 3)`; leading dims
            broadcast against ``local_rotations``'.
        parents: parent per joint, ``-1`` for the root, length ``J``.

    Returns:
        :class:`FKOutput` ``(global_rotations, joints, transforms)``.

    Raises:
        ValueError: bad shapes, non-finite values, matrices that are not rotations
            (see :func:`check_rotation_values`) or an invalid tree.

    Reference: SMPL (Loper et al. 2015, DOI 10.1145/2816795.2818013) eq. 4;
    ``smplx.lbs.batch_rigid_transform``.

    Example:
        >>> R = torch.eye(3).expand(2, 24, 3, 3)
        >>> t = torch.randn(24, 3)
        >>> out = forward_kinematics(R, t, SMPL_PARENTS)
        >>> torch.allclose(out.joints, t.expand(2, 24, 3))
        True
    """
    p = check_parents(parents)
    J = len(p)
    _check_rotations("local_rotations", local_rotations, J)
    check_rotation_values("local_rotations", local_rotations)
    if not isinstance(rest_joints, torch.Tensor):
        raise ValueError(f"rest_joints: expected a tensor, got {type(rest_joints).__name__}")
    if rest_joints.dim() < 2 or rest_joints.shape[-2:] != (J, 3):
        raise ValueError(
            f"rest_joints: expected shape (..., {J}, 3), got {tuple(rest_joints.shape)}"
        )
    if rest_joints.dtype != local_rotations.dtype:
        raise ValueError(
            f"rest_joints: expected dtype {local_rotations.dtype} (that of local_rotations), "
            f"got {rest_joints.dtype}"
        )
    if not torch.isfinite(rest_joints).all():
        raise ValueError("rest_joints: expected finite values, got NaN or inf")
    batch = torch.broadcast_shapes(local_rotations.shape[:-3], rest_joints.shape[:-2])
    L = local_rotations.expand(*batch, J, 3, 3)
    t = rest_joints.expand(*batch, J, 3)
    G: list[torch.Tensor | None] = [None] * J
    X: list[torch.Tensor | None] = [None] * J
    for j in _topological_order(p):
        q = p[j]
        if q < 0:
            G[j] = L[..., j, :, :]
            X[j] = t[..., j, :]
        else:
            G[j] = G[q] @ L[..., j, :, :]
            X[j] = X[q] + (G[q] @ (t[..., j, :] - t[..., q, :]).unsqueeze(-1)).squeeze(-1)
    Rg = torch.stack(G, dim=-3)  # type: ignore[arg-type]
    x = torch.stack(X, dim=-2)  # type: ignore[arg-type]
    trans = x - (Rg @ t.unsqueeze(-1)).squeeze(-1)
    top = torch.cat((Rg, trans.unsqueeze(-1)), dim=-1)
    bottom = torch.zeros(*batch, J, 1, 4, dtype=Rg.dtype, device=Rg.device)
    bottom[..., 0, 3] = 1
    return FKOutput(Rg, x, torch.cat((top, bottom), dim=-2))
