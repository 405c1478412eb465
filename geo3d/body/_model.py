"""SMPL-family body models through smplx, loaded safely from local files.

The official layout (SMPL, SMPL+H, SMPL-X and the SMPL-layout models geo3d builds):

==============  ====================  ============================================
key             shape                 meaning
==============  ====================  ============================================
v_template      (V, 3)                rest-pose template vertices (m)
shapedirs       (V, 3, B)             shape blend shapes (betas)
posedirs        (V, 3, 9 (J - 1))     pose-corrective blend shapes
J_regressor     (J, V)                joints from vertices (dense or scipy sparse)
weights         (V, J)                skinning weights (rows sum to 1)
kintree_table   (2, J)                row 0: parent of each joint (root: any < 0)
f               (F, 3)                triangles (vertex indices)
==============  ====================  ============================================

``J`` = 24 (SMPL), 52 (SMPL+H), 55 (SMPL-X). Files are read with the restricted unpickler of
:mod:`geo3d.body._safe_io` (never ``pickle.load``), then handed to ``smplx`` as a ``Struct``.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geo3d._validation import values_enabled
from geo3d.body._kinematics import check_parents, check_rotation_values
from geo3d.body._safe_io import atomic_save_npz, read_model_file

__all__ = [
    "REQUIRED_KEYS",
    "MODEL_TYPES",
    "validate_model_dict",
    "convert_model",
    "find_model_file",
    "load_body_model",
    "pose_body",
    "BodyPose",
]

REQUIRED_KEYS = (
    "v_template",
    "shapedirs",
    "posedirs",
    "J_regressor",
    "weights",
    "kintree_table",
    "f",
)
#: model type -> number of joints (including the root)
MODEL_TYPES = {"smpl": 24, "smplh": 52, "smplx": 55}
_PREFIX = {"smpl": "SMPL", "smplh": "SMPLH", "smplx": "SMPLX"}
_WHERE = {
    "smpl": "https://smpl.is.tue.mpg.de (register, download 'SMPL for Python', e.g. "
    "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl, rename to SMPL_NEUTRAL.pkl)",
    "smplh": "https://mano.is.tue.mpg.de ('Extended SMPL+H model', SMPLH_{FEMALE,MALE}.pkl) or "
    "the AMASS page (https://amass.is.tue.mpg.de, 'Extended SMPL+H model', model.npz)",
    "smplx": "https://smpl-x.is.tue.mpg.de (SMPLX_{NEUTRAL,FEMALE,MALE}.npz)",
}


def _sparse_to_dense(x: Any) -> Any:
    import scipy.sparse as sp

    return np.asarray(x.toarray()) if sp.issparse(x) else x


def validate_model_dict(data: dict[str, Any], source: str = "model") -> dict[str, np.ndarray]:
    """Check a model dict against the SMPL layout; return the required arrays as numpy.

    Args:
        data: ``{key: array}`` as read from a model file.
        source: a name for messages (the file path).

    Returns:
        The seven required arrays (``J_regressor`` dense, ``f`` int64, floats as stored).

    Raises:
        ValueError: a key is missing, a shape does not fit the layout, values are not finite
            or not real numbers, indices are out of range, there is no triangle, the
            weights are not skinning weights (rows >= 0 summing to 1, to 1e-3) or the
            kinematic tree is invalid. The message names the
            key and the expected and actual shapes.

    Example:
        >>> from geo3d.body import tiny_body_dict
        >>> sorted(validate_model_dict(tiny_body_dict()))[:2]
        ['J_regressor', 'f']
    """
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(
            f"{source}: expected keys {', '.join(REQUIRED_KEYS)}, missing {', '.join(missing)}"
        )
    out: dict[str, np.ndarray] = {}
    for k in REQUIRED_KEYS:
        v = _sparse_to_dense(data[k])
        try:
            arr = np.asarray(v)
        except Exception as err:  # noqa: BLE001
            raise ValueError(
                f"{source}: key '{k}': expected an array, got {type(v).__name__}"
            ) from err
        if arr.dtype.kind not in "iuf":  # complex lost its imaginary part, bools are not data
            raise ValueError(
                f"{source}: key '{k}': expected a real numeric array, got dtype {arr.dtype}"
            )
        out[k] = arr
    V = out["v_template"].shape[0] if out["v_template"].ndim == 2 else -1

    def bad(key: str, want: str) -> ValueError:
        return ValueError(f"{source}: key '{key}': expected shape {want}, got {out[key].shape}")

    if out["v_template"].ndim != 2 or out["v_template"].shape[1] != 3 or V < 1:
        raise bad("v_template", "(V, 3)")
    kt = out["kintree_table"]
    if kt.ndim != 2 or kt.shape[0] != 2 or kt.shape[1] < 1:
        raise bad("kintree_table", "(2, J)")
    J = kt.shape[1]
    if out["shapedirs"].ndim != 3 or out["shapedirs"].shape[:2] != (V, 3):
        raise bad("shapedirs", f"({V}, 3, B)")
    pd = out["posedirs"]
    if pd.ndim != 3 or pd.shape != (V, 3, 9 * (J - 1)):
        raise bad("posedirs", f"({V}, 3, {9 * (J - 1)})")
    if out["J_regressor"].shape != (J, V):
        raise bad("J_regressor", f"({J}, {V})")
    if out["weights"].shape != (V, J):
        raise bad("weights", f"({V}, {J})")
    f = out["f"]
    if (
        f.ndim != 2
        or f.shape[1] != 3
        or not np.issubdtype(f.dtype, np.integer)
        and not np.all(f == np.round(f))
    ):
        raise bad("f", "(F, 3) integer")
    for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        if not np.issubdtype(out[k].dtype, np.floating):
            out[k] = out[k].astype(np.float64)  # float32/64 stay as they are (SMPL-X is big)
        if not np.isfinite(out[k]).all():
            raise ValueError(f"{source}: key '{k}': expected finite values, got NaN or inf")
    out["f"] = f.astype(np.int64)
    if out["f"].shape[0] == 0:
        raise ValueError(f"{source}: key 'f': expected at least one triangle, got shape "
                         f"{out['f'].shape}")
    w = out["weights"]
    row_err, low = float(np.abs(w.sum(1) - 1).max()), float(w.min())
    if row_err > 1e-3 or low < -1e-6:  # what every scan and the skinning assume
        raise ValueError(f"{source}: key 'weights': expected skinning weights (rows >= 0 summing "
                         f"to 1), got max |row sum - 1| = {row_err:.3g}, min = {low:.3g}")
    if out["f"].min() < 0 or out["f"].max() >= V:
        raise ValueError(
            f"{source}: key 'f': expected vertex indices in [0, {V}), got range "
            f"[{out['f'].min()}, {out['f'].max()}]"
        )
    parents = [int(x) for x in kt[0]]
    parents[0] = -1
    parents = [-1 if q < 0 or q > 2**31 else q for q in parents]
    try:
        check_parents(parents)
    except ValueError as err:
        raise ValueError(f"{source}: key 'kintree_table': {err}") from None
    out["kintree_table"] = np.stack([np.asarray(parents, dtype=np.int64), np.arange(J)])
    return out


def convert_model(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """``geo3d body convert``: read a model file safely and write a plain, pickle-free npz.

    Sparse ``J_regressor`` becomes dense; chumpy arrays become ndarrays; extra keys that are
    arrays (or strings) are kept, other Python objects (dicts, lists) are dropped. The result
    loads with ``numpy.load(allow_pickle=False)`` and with :func:`load_body_model`.

    Args:
        src: official ``.pkl`` or ``.npz`` model file.
        dst: output ``.npz`` (written atomically).

    Returns:
        ``dst`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError, UnsafePickleError, ValueError: see :func:`read_model_file` and
        :func:`validate_model_dict`; also ``ValueError`` for a ``dst`` that does not end in
        ``.npz`` or that is ``src`` itself (it would overwrite the source, checked first).
    """
    if Path(dst).suffix.lower() != ".npz":
        raise ValueError(f"dst: expected an output file name ending in .npz, got {str(dst)!r}")
    if Path(dst).exists() and Path(src).exists() and Path(dst).resolve() == Path(src).resolve():
        raise ValueError(f"dst: expected a file other than the source, got {str(dst)!r} (it "
                         f"would overwrite the model being converted)")
    data = read_model_file(src)
    req = validate_model_dict(data, str(src))
    out: dict[str, np.ndarray] = {}
    for k, v in data.items():
        v = _sparse_to_dense(v)
        if isinstance(v, (str, bytes)):
            out[k] = np.asarray(v)
            continue
        if isinstance(v, np.ndarray) and v.dtype != object:
            out[k] = v
        elif isinstance(v, (int, float, np.number)):
            out[k] = np.asarray(v)
    for k in REQUIRED_KEYS:
        out[k] = req[k] if k in ("f", "kintree_table", "J_regressor") else np.asarray(out[k])
    return atomic_save_npz(dst, out)


def _missing_message(path: Path, model_type: str | None, gender: str, tried: list[Path]) -> str:
    types = [model_type] if model_type else list(_PREFIX)
    where = "\n".join(f"  {t}: {_WHERE[t]}" for t in types)
    return (
        f"body model not found: {path}\n"
        f"looked for: {', '.join(str(t) for t in tried) or path}\n"
        f"The SMPL-family files are licensed and cannot be downloaded automatically. Obtain:\n"
        f"{where}\n"
        "and arrange them in the folder layout smplx expects:\n"
        "  MODELS/smpl/SMPL_{NEUTRAL,FEMALE,MALE}.pkl (or .npz)\n"
        "  MODELS/smplh/SMPLH_{FEMALE,MALE}.pkl (or .npz)\n"
        "  MODELS/smplx/SMPLX_{NEUTRAL,FEMALE,MALE}.npz\n"
        "then pass MODELS (or the file). `geo3d body convert IN.pkl OUT.npz` writes a plain npz once;\n"
        f"`geo3d body make-model OUT.npz` builds a license-free SMPL-layout body from Anny "
        f"(gender={gender!r} requested)."
    )


def find_model_file(
    path: str | os.PathLike, model_type: str | None = None, gender: str = "neutral"
) -> Path:
    """Resolve a model file from a file path or a folder in smplx's layout.

    Args:
        path: a ``.pkl``/``.npz`` file, or a folder holding ``{TYPE}_{GENDER}.{pkl,npz}`` or
            ``{type}/{TYPE}_{GENDER}.{pkl,npz}``.
        model_type: ``"smpl"``, ``"smplh"`` or ``"smplx"`` (folders only; default: try all).
        gender: ``"neutral"``, ``"female"`` or ``"male"``.

    Returns:
        The model file.

    Raises:
        FileNotFoundError: nothing found; the message says which files are expected, where
            users obtain them and the folder layout.
        ValueError: unknown ``model_type`` or ``gender``.
    """
    if model_type is not None and model_type not in _PREFIX:
        raise ValueError(f"model_type: expected one of {', '.join(_PREFIX)}, got {model_type!r}")
    if gender not in ("neutral", "female", "male"):
        raise ValueError(f"gender: expected 'neutral', 'female' or 'male', got {gender!r}")
    p = Path(path)
    if p.is_file():
        return p
    tried: list[Path] = []
    if p.is_dir():
        for t in [model_type] if model_type else list(_PREFIX):
            for sub in (p, p / t):
                for ext in ("npz", "pkl"):
                    c = sub / f"{_PREFIX[t]}_{gender.upper()}.{ext}"
                    tried.append(c)
                    if c.is_file():
                        return c
    raise FileNotFoundError(_missing_message(p, model_type, gender, tried))


def _default_vertex_ids(data: dict[str, Any], req: dict[str, np.ndarray]) -> dict[str, int] | None:
    """smplx picks extra keypoints (nose, eyes, ears, toes, finger tips) by vertex index; for
    SMPL/SMPL-X topologies its own tables apply. Other topologies store theirs in the file as
    ``vertex_id_names``/``vertex_id_values``; without them, the face keypoints are guessed on
    the head part (joint 15): nose = most forward (+z) vertex, ears = outermost in x, eyes =
    most forward vertex on each side; toes and finger tips are skipped."""
    V = req["v_template"].shape[0]
    if V in (6890, 10475):
        return None
    if "vertex_id_names" in data and "vertex_id_values" in data:
        names = [str(n) for n in np.asarray(data["vertex_id_names"]).tolist()]
        vals = [int(v) for v in np.asarray(data["vertex_id_values"]).tolist()]
        out = dict(zip(names, vals, strict=True))
        if all(k in out for k in ("nose", "reye", "leye", "rear", "lear")):
            return out
    v, w = req["v_template"], req["weights"]
    head = np.nonzero(w.argmax(1) == min(15, w.shape[1] - 1))[0]
    if head.size == 0:
        head = np.arange(V)
    hv = v[head]
    left, right = hv[:, 0] >= hv[:, 0].mean(), hv[:, 0] < hv[:, 0].mean()
    z_left = np.where(left, hv[:, 2], -np.inf)
    z_right = np.where(right, hv[:, 2], -np.inf)
    return {
        "nose": int(head[hv[:, 2].argmax()]),
        "leye": int(head[z_left.argmax()]),
        "reye": int(head[z_right.argmax()]),
        "lear": int(head[hv[:, 0].argmax()]),
        "rear": int(head[hv[:, 0].argmin()]),
    }


def load_body_model(
    path: str | os.PathLike,
    *,
    model_type: str | None = None,
    gender: str = "neutral",
    num_betas: int | None = None,
    batch_size: int = 1,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> torch.nn.Module:
    """Load an SMPL / SMPL+H / SMPL-X model (an ``smplx`` module) from a local file or folder.

    The file is read safely (restricted unpickler, pickle-free npz) and checked against the
    layout (see module docs); ``smplx`` then builds the model from the arrays. The model type
    follows from the number of joints (24, 52, 55) unless given.

    Args:
        path: a ``.pkl``/``.npz`` file or a folder in smplx's layout.
        model_type: ``"smpl"``, ``"smplh"`` or ``"smplx"`` (default: inferred).
        gender: ``"neutral"``, ``"female"`` or ``"male"`` (folder lookup and smplx's label).
        num_betas: shape components used; ``None`` (default): 10, or all of the file's if
            it has fewer. Asking for more than the file holds raises ``ValueError`` (it used
            to give the file's number silently).
        batch_size: smplx's default batch size for its own parameters.
        dtype: float dtype of the model buffers.
        **kwargs: passed to the smplx constructor. For SMPL+H and SMPL-X the defaults here
            are ``use_pca=False, flat_hand_mean=True`` (full absolute hand poses, as in AMASS).

    Returns:
        ``smplx.SMPL``, ``smplx.SMPLH`` or ``smplx.SMPLX``.

    Raises:
        FileNotFoundError: the file is missing (message: expected files, where to get them,
            folder layout).
        UnsafePickleError: the file holds a global outside the allow-list.
        ValueError: keys or shapes do not fit the layout, or a bad argument (``num_betas``
            above the file's shape components, a non-floating ``dtype`` included).

    Example:
        >>> import tempfile, os
        >>> from geo3d.body import write_tiny_body
        >>> p = write_tiny_body(os.path.join(tempfile.mkdtemp(), "tiny.npz"))
        >>> m = load_body_model(p)
        >>> m.v_template.shape[1], m.J_regressor.shape[0]
        (3, 24)
    """
    import smplx
    from smplx.utils import Struct

    if num_betas is not None and (
        not isinstance(num_betas, int) or isinstance(num_betas, bool) or num_betas < 1
    ):
        raise ValueError(f"num_betas: expected a positive int or None, got {num_betas!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating torch dtype (torch.float32, torch.float64), "
                         f"got {dtype!r}")
    file = find_model_file(path, model_type, gender)
    data = read_model_file(file)
    req = validate_model_dict(data, str(file))
    J = req["kintree_table"].shape[1]
    inferred = {v: k for k, v in MODEL_TYPES.items()}.get(J)
    mtype = model_type or inferred
    if mtype is None or MODEL_TYPES[mtype] != J:
        raise ValueError(
            f"{file}: key 'kintree_table': expected {MODEL_TYPES.get(mtype or '', '24, 52 or 55')} "
            f"joints for model_type {mtype or '(inferred)'}, got {J}"
        )
    B = req["shapedirs"].shape[2]
    if num_betas is not None and num_betas > B:
        raise ValueError(
            f"num_betas: expected at most the {B} shape components of {file}, got {num_betas}"
        )
    nb = min(10, B) if num_betas is None else num_betas
    merged = {k: v for k, v in data.items()}
    merged.update(req)
    common = dict(gender=gender, num_betas=nb, batch_size=batch_size, dtype=dtype)
    quiet = contextlib.redirect_stdout(io.StringIO())  # smplx prints a warning for B < 300
    if mtype in ("smpl", "smplh"):
        vids = _default_vertex_ids(data, req)
        extra: dict[str, Any] = {}
        if vids is not None:
            extra = {"vertex_ids": vids, "use_feet_keypoints": False, "use_hands": False}
        with quiet:
            if mtype == "smpl":
                return smplx.SMPL(
                    str(file), data_struct=Struct(**merged), **common, **extra, **kwargs
                )
            # AMASS stores absolute hand poses (no PCA, no mean hand added)
            kwargs.setdefault("use_pca", False)
            kwargs.setdefault("flat_hand_mean", True)
            return smplx.SMPLH(str(file), data_struct=Struct(**merged), **common, **extra, **kwargs)
    # SMPL-X: smplx reads the file itself with np.load(allow_pickle=True); hand it a sanitised
    # copy holding only plain arrays.
    with tempfile.TemporaryDirectory() as tmp:
        plain = {k: v for k, v in merged.items() if isinstance(v, np.ndarray) and v.dtype != object}
        clean = atomic_save_npz(Path(tmp) / f"SMPLX_{gender.upper()}.npz", plain)
        with quiet:
            kwargs.setdefault("use_pca", False)
            kwargs.setdefault("flat_hand_mean", True)
            return smplx.SMPLX(str(clean), ext="npz", **common, **kwargs)


@dataclass
class BodyPose:
    """Validated body parameters (see :func:`pose_body`)."""

    betas: torch.Tensor
    global_orient: torch.Tensor
    body_pose: torch.Tensor
    transl: torch.Tensor


def _check(
    name: str, x: Any, shape: tuple[int | None, ...], dtype: torch.dtype, device: torch.device,
    want: str | None = None,
) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(x).__name__}")
    if x.dim() != len(shape) or any(
        s is not None and s != d for s, d in zip(shape, x.shape, strict=True)
    ):
        want = want or "(" + ", ".join("B" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating tensor, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return x.to(dtype=dtype, device=device)


def pose_body(
    model: torch.nn.Module,
    pose: torch.Tensor,
    betas: torch.Tensor | None = None,
    trans: torch.Tensor | None = None,
) -> Any:
    """Run an smplx SMPL/SMPL+H model with checked inputs.

    Args:
        model: from :func:`load_body_model`.
        pose: axis-angle, shape :math:`(B, 3 J)` (root first, as AMASS ``poses``), or rotation
            matrices :math:`(B, J, 3, 3)`; ``J`` = the model's joints (24 SMPL, 52 SMPL+H,
            55 SMPL-X: body, jaw, eyes, hands in smplx's order; expression zero).
        betas: :math:`(B, K)` with ``K <=`` the model's betas (zero-padded), :math:`(1, K)`
            (one shape for every pose), or ``None``.
        trans: :math:`(B, 3)` translation in metres, or ``None``.

    Returns:
        smplx's output (``vertices (B, V, 3)``, ``joints``, ...).

    Raises:
        ValueError: a ``model`` that is not an smplx SMPL-family model; a wrong shape or
            non-finite value, naming ``pose``/``betas``/``trans``; an empty batch (``B = 0``);
            axis-angles so large that the posed mesh is not finite; rotation matrices that are not rotations
            (``|RᵀR - I| > tol`` or ``det <= 0``; skipped while tracing or with the value
            checks of :mod:`geo3d.rotations` off).

    Example:
        >>> import tempfile, os
        >>> from geo3d.body import write_tiny_body
        >>> m = load_body_model(write_tiny_body(os.path.join(tempfile.mkdtemp(), "t.npz")))
        >>> pose_body(m, torch.zeros(2, 72)).vertices.shape[0]
        2
    """
    if not all(isinstance(getattr(model, k, None), torch.Tensor)
               for k in ("J_regressor", "v_template")) or not hasattr(model, "num_betas"):
        raise ValueError(f"model: expected an smplx SMPL-family model (load_body_model), got "
                         f"{type(model).__name__}")
    J = model.J_regressor.shape[0]
    dt, dev = model.v_template.dtype, model.v_template.device
    if not isinstance(pose, torch.Tensor):
        raise ValueError(f"pose: expected a tensor, got {type(pose).__name__}")
    if pose.dim() == 4:
        pose = _check("pose", pose, (None, J, 3, 3), dt, dev)
        check_rotation_values("pose", pose)
        rotmat = True
    else:
        pose = _check("pose", pose, (None, 3 * J), dt, dev)
        rotmat = False
    B = pose.shape[0]
    if B == 0:
        raise ValueError(
            f"pose: expected a batch of at least one pose, got shape {tuple(pose.shape)}"
        )
    nb = model.num_betas
    if betas is None:
        betas = torch.zeros(B, nb, dtype=dt, device=dev)
    else:
        if isinstance(betas, torch.Tensor) and betas.dim() == 2 and betas.shape[0] == 1:
            betas = betas.expand(B, -1)  # one shape for every pose
        betas = _check("betas", betas, (B, None), dt, dev,
                       want=f"(B, K) with B = {B} poses (or 1) and K <= {nb}")
        if betas.shape[1] > nb:
            raise ValueError(f"betas: expected at most {nb} components, got {betas.shape[1]}")
        betas = torch.nn.functional.pad(betas, (0, nb - betas.shape[1]))
    trans = (
        torch.zeros(B, 3, dtype=dt, device=dev)
        if trans is None
        else _check("trans", trans, (B, 3), dt, dev, want=f"(B, 3) with B = {B} poses")
    )
    if rotmat and hasattr(model, "pose_mean"):
        # smplx's SMPL+H adds its mean pose to an axis-angle vector: hand it axis-angles
        from geo3d.rotations import matrix_to_axis_angle

        pose, rotmat = matrix_to_axis_angle(pose).reshape(B, 3 * J), False
    elif not rotmat and not hasattr(model, "pose_mean"):
        # SMPL: rotation matrices from geo3d's Rodrigues, exact to float64 rounding
        # (smplx's adds 1e-8 to every angle: a root rotation was 1e-9 to 4e-8 m off)
        from geo3d.rotations import axis_angle_to_matrix

        pose, rotmat = axis_angle_to_matrix(pose.reshape(B, J, 3)), True
    if rotmat:
        go, bp = pose[:, :1], pose[:, 1:]
    else:
        go, bp = pose[:, :3], pose[:, 3:]
    kw: dict[str, Any] = {}
    if hasattr(model, "left_hand_pose") or model.NUM_JOINTS > 23:
        nbody = 3 * model.NUM_BODY_JOINTS if not rotmat else model.NUM_BODY_JOINTS
        hands = bp[:, nbody:]
        bp = bp[:, :nbody]
        if hasattr(model, "jaw_pose") or hasattr(model, "expr_dirs"):  # SMPL-X: jaw, eyes first
            kw = {"jaw_pose": hands[:, 0:3], "leye_pose": hands[:, 3:6], "reye_pose": hands[:, 6:9]}
            kw["expression"] = torch.zeros(B, model.num_expression_coeffs, dtype=dt, device=dev)
            hands = hands[:, 9:]
        half = hands.shape[1] // 2
        kw.update(left_hand_pose=hands[:, :half], right_hand_pose=hands[:, half:])
    out = model(
        betas=betas, global_orient=go, body_pose=bp, transl=trans, pose2rot=not rotmat, **kw
    )
    if values_enabled() and not torch.isfinite(out.vertices).all():
        # finite inputs, non-finite mesh: axis-angles so large (1e30 rad) that smplx's
        # Rodrigues formula overflows
        raise ValueError(f"pose: expected axis-angles of a usable size, got values up to "
                         f"{float(pose.abs().max()):.3g} (the posed mesh is not finite)")
    return out
