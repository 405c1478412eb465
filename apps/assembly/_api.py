"""Python API: ``assemble(pieces, checkpoint)`` -> one 4x4 pose per piece."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from geo3d.apps.assembly._checkpoint import load_checkpoint
from torch import Tensor

from geo3d._app import resolve_device  # shared by the apps (re-exported here)

__all__ = ["assemble", "load_model", "load_piece", "resolve_device", "PieceError",
           "PIECE_EXTENSIONS"]

_MESH_EXT = (".obj", ".stl", ".off", ".glb", ".gltf")
#: File extensions :func:`load_piece` (and ``assemble``/``geo3d assembly predict``) read.
PIECE_EXTENSIONS: tuple[str, ...] = (*_MESH_EXT, ".ply", ".pcd", ".xyz", ".txt", ".npy")
#: methods of :func:`assemble` (``"auto"``, the default, picks one of the others)
ASSEMBLE_METHODS = ("auto", "matching", "network", "fracture_registration")
#: surface points per mesh piece of ``method="fracture_registration"`` (its classifier was
#: trained at this density)
FRACTURE_POINTS = 1000


class PieceError(ValueError):
    """A piece given to :func:`assemble` cannot be used; ``index`` and ``path`` name it
    (``path`` is ``None`` for in-memory arrays)."""

    def __init__(self, index: int | None, path: str | os.PathLike | None, reason: str) -> None:
        self.index, self.path, self.reason = index, None if path is None else str(path), reason
        where = "pieces" if index is None else f"pieces[{index}]"
        if path is not None:
            where += f" ({str(path)!r})"
        super().__init__(f"{where}: {reason}")


def load_model(checkpoint: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Rebuild an :class:`AssemblyModule` from a Lightning checkpoint (``weights_only=True``).

    The returned module has ``trained_max_parts`` set to the data module's ``max_parts``
    of the training run when the checkpoint records it (``None`` otherwise).

    Raises:
        ValueError: ``map_location`` names a device that is not a device or not
            available here (see :func:`resolve_device`).
        FileNotFoundError: no such file.
        CheckpointError: (a ``RuntimeError``) a truncated/corrupt checkpoint, one
            without ``state_dict``, another app's checkpoint, or weights that do not fit
            the settings.
    """
    from geo3d.apps.assembly._module import AssemblyModule

    if isinstance(map_location, (str, torch.device)):
        map_location = resolve_device(map_location, "map_location")
    ckpt = load_checkpoint(checkpoint, map_location=map_location)
    if "state_dict" not in ckpt:
        from geo3d.apps.assembly._checkpoint import CheckpointError

        raise CheckpointError(checkpoint, f"checkpoint {str(checkpoint)!r}: no 'state_dict' "
                                          "entry")
    hp = dict(ckpt.get("hyper_parameters", {}))
    hp = {k: v for k, v in hp.items() if not k.startswith("_")}
    from geo3d.apps.assembly._checkpoint import CheckpointError

    try:
        model = AssemblyModule(**hp)
    except TypeError as err:  # settings AssemblyModule does not take: another app's file
        raise CheckpointError(checkpoint, f"checkpoint {str(checkpoint)!r}: its model settings "
                                          f"are not `geo3d assembly`'s (a checkpoint of "
                                          f"another geo3d app?): {err}") from err
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = " ".join(str(err).split())[:200]
        raise CheckpointError(checkpoint, f"checkpoint {str(checkpoint)!r}: its weights do "
                                          f"not fit its settings ({first})") from err
    model.on_load_checkpoint(ckpt)  # the template bank, when the checkpoint has one
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    mp = dm.get("max_parts") if isinstance(dm, dict) else None
    model.trained_max_parts = int(mp) if isinstance(mp, int) else None
    return model.eval()


def _ply_has_faces(path: Path) -> bool:
    """Whether a PLY header declares a non-empty ``face`` element (unreadable header:
    True, so that the mesh reader reports the parse error)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        return True
    for line in head[:end].decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "element" and parts[1] == "face":
            return parts[2] != "0"
    return False


def _read_piece_file(path: Path, num_points: int, generator: torch.Generator | None) -> Tensor:
    """float64 points of one piece file (surface samples for meshes, vertices for clouds)."""
    from geo3d.datasets import (
        MeshReadError,
        PointCloudReadError,
        load_mesh,
        load_point_cloud,
        sample_surface,
    )

    ext = path.suffix.lower()
    if ext not in PIECE_EXTENSIONS:
        raise PieceError(None, path, f"unsupported extension {ext!r}; expected one of "
                                     f"{PIECE_EXTENSIONS}")
    if ext in _MESH_EXT or (ext == ".ply" and _ply_has_faces(path)):
        mesh = load_mesh(path)  # MeshReadError: empty, garbage, no faces, NaN vertices
        v = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float64)
        f = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long)
        try:
            pts, _, _ = sample_surface(v, f, num_points, generator=generator)
        except ValueError as err:
            raise MeshReadError(path, str(err)) from err
        return pts
    if ext in (".npy", ".txt"):
        if path.stat().st_size == 0:
            raise PointCloudReadError(path, "file is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = np.load(path, allow_pickle=False) if ext == ".npy" else \
                    np.loadtxt(path, ndmin=2, dtype=np.float64)
            arr = np.asarray(arr, dtype=np.float64)
        except Exception as err:  # garbage / truncated files
            raise PointCloudReadError(path, f"parse error: {type(err).__name__}: {err}") \
                from err
        if arr.ndim != 2 or arr.shape[1] < 3:
            raise PointCloudReadError(path, f"expected an (M, 3) array (or more columns), "
                                            f"got shape {arr.shape}")
        return torch.as_tensor(arr[:, :3].copy(), dtype=torch.float64)
    return load_point_cloud(path, dtype=torch.float64)[0]  # .ply without faces, .pcd, .xyz


def _dense_mesh_piece(piece: Any, generator: torch.Generator | None
                      ) -> tuple[Tensor, Tensor] | None:
    """``(points, face normals)`` float64, :data:`FRACTURE_POINTS` surface samples of a mesh
    file (``None`` for clouds and arrays)."""
    if not _is_mesh_file(piece):
        return None
    path = Path(piece)
    from geo3d.apps.assembly._fracture_registration import outward_faces
    from geo3d.datasets import load_mesh, sample_surface

    mesh = outward_faces(load_mesh(path))  # inverted winding would flip every normal test
    v = torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long)
    pts, nrm, _ = sample_surface(v, f, FRACTURE_POINTS, generator=generator)
    return pts.double(), nrm.double()


def load_piece(
    piece: Any,
    num_points: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """One piece as ``(num_points, 3)`` points.

    ``piece`` is an array/tensor ``(M, 3)`` (resampled to ``num_points``), or a path: mesh
    files (``.obj/.stl/.off/.glb/.gltf``, and ``.ply`` whose header declares faces) are
    surface-sampled (area-weighted, through ``generator``); ``.ply`` without faces,
    ``.pcd``, ``.xyz``, ``.txt`` and ``.npy`` are read as point clouds (the readers of
    :mod:`geo3d.datasets`). Files are read in float64 and cast to ``dtype`` at the end.
    The result never shares memory with ``piece``.

    Args:
        piece: ``(M, 3)`` array/tensor, or a file path.
        num_points: number of points returned (clouds are subsampled without, or padded
            by drawing with, replacement).
        generator: optional :class:`torch.Generator` for every random draw.
        dtype: dtype of the result.

    Returns:
        Points, shape :math:`(num\\_points, 3)`.

    Raises:
        FileNotFoundError: the path does not exist.
        geo3d.datasets.MeshReadError, geo3d.datasets.PointCloudReadError: the file is
            empty, does not parse, or holds no points or non-finite values (the message
            names the file).
        PieceError: an unsupported extension, a wrong shape or non-finite values in an
            array, or values that overflow ``dtype`` (checked after the cast).

    Example:
        >>> import torch
        >>> load_piece(torch.rand(100, 3), 16, torch.Generator().manual_seed(0)).shape
        torch.Size([16, 3])
    """
    path, base = None, None
    if isinstance(piece, (str, os.PathLike)):
        path = Path(piece)
        if not path.is_file():
            raise FileNotFoundError(f"pieces: no such file {str(path)!r}")
        x = _read_piece_file(path, num_points, generator)
    else:
        try:
            arr = piece.detach().cpu() if isinstance(piece, Tensor) else np.asarray(piece)
            base = torch.as_tensor(arr)  # may share memory with `piece`
            x = base.to(torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise PieceError(None, None, f"expected a point cloud of shape (M, 3), got "
                                         f"{type(piece).__name__} ({err})") from err
    if x.dim() != 2 or x.shape[-1] != 3 or x.shape[0] == 0:
        raise PieceError(None, path, f"expected a point cloud of shape (M, 3) with M >= 1, "
                                     f"got {tuple(x.shape)}")
    bad = ~torch.isfinite(x).all(-1)
    if bool(bad.any()):
        raise PieceError(None, path, f"{int(bad.sum())} point(s) with non-finite "
                                     f"coordinates (first: row {int(bad.float().argmax())})")
    if x.shape[0] != num_points:
        if x.shape[0] < num_points:
            idx = torch.randint(0, x.shape[0], (num_points,), generator=generator)
        else:
            idx = torch.randperm(x.shape[0], generator=generator)[:num_points]
        x = x[idx]
    out = x.to(dtype)
    bad = ~torch.isfinite(out).all(-1)
    if bool(bad.any()):  # finite in float64 but beyond the range of ``dtype``
        raise PieceError(None, path, f"{int(bad.sum())} point(s) with coordinates beyond "
                                     f"the range of {dtype} (first: row "
                                     f"{int(bad.float().argmax())})")
    if base is not None and out.untyped_storage().data_ptr() == \
            base.untyped_storage().data_ptr():
        out = out.clone()  # never hand back the caller's memory
    return out


def _model_k(model: Any) -> int | None:
    hp = getattr(model, "hparams", None)
    k = hp.get("k") if hasattr(hp, "get") else None
    return int(k) if isinstance(k, int) else None


def assemble(
    pieces: Sequence[Any],
    checkpoint: str | os.PathLike | Any,
    num_points: int = 512,
    scale: float = 1.0,
    device: str | torch.device | None = None,
    generator: torch.Generator | None = None,
    method: str = "auto",
    refine: bool = True,
) -> Tensor:
    """Assemble fractured pieces.

    By default (``method="auto"``) pieces given as mesh files (and with open3d installed)
    are assembled by ``"fracture_registration"``: fracture points from local geometric
    features and a small classifier, then greedy merging of the pieces by multistart ICP
    of their fracture patches
    (:func:`geo3d.apps.assembly._fracture_registration.fracture_assembly`); the assembled
    object is put in the training data's frame by registration to the checkpoint's bank of
    training objects (:class:`geo3d.apps.assembly._canonical.TemplateBank`; checkpoints
    without one: the network's pose of the anchor, the largest piece, fixes it); on the demo's
    held-out objects it places far more pieces correctly than the network
    (``benchmarks/results/assembly_fracture_registration.json``). Other inputs (point
    clouds, arrays) use ``"matching"``: the network's per-point descriptors and
    fracture-surface scores are matched between every pair of pieces, relative poses come
    from RANSAC + weighted Kabsch, a spanning tree from the anchor (largest piece) joins
    them, with the network's own poses as the fallback for pieces without a reliable
    match, and a short joint refinement follows
    (:func:`geo3d.apps.assembly._pipeline.assemble_from_outputs`). ``method="network"``
    returns the network's poses as they are (the only choice for a checkpoint without a
    correspondence head: then ``"matching"`` warns and falls back to it).

    Each piece is read in float64 and centred at its own centroid in float64 before it
    is cast to float32 for the network, so coordinates far from the origin (e.g. 1e5 in
    mm) lose nothing: shifting every input by the same vector moves the assembled
    placement by exactly that much. Matching, RANSAC and refinement run on the centred
    float64 points (only the network sees float32). Returned poses are float64 for the
    same reason.

    Args:
        pieces: at least 2 pieces: point clouds (arrays/tensors of shape
            :math:`(M_i, 3)`) or file paths (see :func:`load_piece` for the formats:
            meshes are surface-sampled, ``.ply``/``.pcd``/``.xyz``/``.txt``/``.npy``
            clouds are read), each in its own arbitrary frame.
        checkpoint: path of a checkpoint written by ``geo3d assembly fit`` (loaded with
            ``weights_only=True``), or an already loaded ``AssemblyModule``.
        num_points: points per piece fed to the network (resampled); at least the
            model's ``k`` (kNN neighbours).
        scale: coordinates are multiplied by ``scale`` before the network (use it to bring
            metric data to the training scale); returned translations are in input units.
        device: where to run (default: CPU).
        generator: optional :class:`torch.Generator` for the sampling/resampling and the
            pipeline's RANSAC samples.
        method: ``"auto"`` (default, see above), ``"matching"``, ``"network"`` or
            ``"fracture_registration"`` (see above); for it mesh pieces are sampled
            densely (:data:`FRACTURE_POINTS` points with face normals), clouds are used
            as read (``num_points``, estimated normals; a warning says that this is
            unreliable).
        refine: run the matching pipeline's joint refinement (a bool).

    Returns:
        Poses of shape :math:`(P, 4, 4)` (float64, CPU): ``T[i] @ [x, 1]`` places point
        ``x`` of piece ``i`` (in its input coordinates) into the common assembled frame.

    Raises:
        ValueError: fewer than 2 pieces, ``num_points`` or ``scale`` out of range, an
            unknown ``method``, or a ``device`` that is not a device name or not available here (see
            :func:`resolve_device`).
        FileNotFoundError: a piece file does not exist (the message names its index).
        PieceError: a piece cannot be used: an unreadable, empty or non-finite file, a
            cloud with fewer distinct points than the model's ``k``, a wrong shape,
            NaN values, or values that overflow float32 after centring and ``scale``
            (the message names the piece's index and path).

    Warns:
        UserWarning: more pieces than the checkpoint's training data had (its
            ``data.max_parts``): the model runs, but was never trained on such objects;
            scaled pieces far from the training size (~1 unit across; see ``scale``);
            ``"fracture_registration"`` on point-cloud pieces (unreliable) or with a
            checkpoint without a template bank (the object's frame then comes from the
            network's pose of the largest piece); ``"matching"`` without a
            correspondence head. The absolute frame from the bank is a
            nearest-neighbour guess among the training objects: it is not checked, and
            objects unlike every training object get an arbitrary one.
        RuntimeWarning: ``"fracture_registration"`` could not register some pieces to
            the anchor (they keep the network's pose relative to it).

    Example:
        >>> from geo3d.apps.assembly import assemble  # doctest: +SKIP
        >>> T = assemble(["a.obj", "b.ply"], "last.ckpt")  # doctest: +SKIP
    """
    if isinstance(pieces, (str, os.PathLike)) or not hasattr(pieces, "__len__"):
        raise ValueError(f"pieces: expected a list of point clouds or file paths, got "
                         f"{type(pieces).__name__}")
    if len(pieces) < 2:
        raise ValueError(f"pieces: expected at least 2 pieces to assemble, got {len(pieces)}")
    if not isinstance(num_points, int) or isinstance(num_points, bool) or num_points < 1:
        raise ValueError(f"num_points: expected an int >= 1, got {num_points!r}")
    if not (isinstance(scale, (int, float)) and np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a finite number > 0, got {scale!r}")
    if method not in ASSEMBLE_METHODS:
        raise ValueError(f"method: expected one of {ASSEMBLE_METHODS}, got {method!r}")
    if not isinstance(refine, bool):
        raise ValueError(f"refine: expected True or False, got {refine!r}")
    dev = resolve_device(device)
    model = checkpoint if isinstance(checkpoint, torch.nn.Module) else load_model(checkpoint)
    k = _model_k(model)
    if k is not None and num_points < k:
        raise ValueError(f"num_points: expected at least the model's k={k}, got {num_points}")
    max_parts = getattr(model, "trained_max_parts", None)
    if max_parts is not None and len(pieces) > max_parts:
        warnings.warn(f"assemble: {len(pieces)} pieces, but the checkpoint was trained on "
                      f"objects of at most {max_parts} parts; the result may be poor",
                      UserWarning, stacklevel=2)
    method = resolve_method(pieces, method)
    model = model.eval().to(dev)
    pts64 = []
    for i, p in enumerate(pieces):
        path = p if isinstance(p, (str, os.PathLike)) else None
        try:
            x = load_piece(p, num_points, generator, dtype=torch.float64)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"pieces[{i}]: no such file {str(path)!r}") from err
        except PieceError as err:
            raise PieceError(i, path, err.reason) from err
        except ValueError as err:  # MeshReadError / PointCloudReadError name the file
            raise PieceError(i, path, str(err)) from err
        distinct = torch.unique(x, dim=0).shape[0]
        if k is not None and distinct < k:
            raise PieceError(i, path, f"expected at least k={k} distinct points (the "
                                      f"model's kNN size), got {distinct}")
        pts64.append(x)
    x64 = torch.stack(pts64)  # (P, N, 3) float64, input coordinates
    c = x64.mean(dim=1)  # (P, 3) float64 centroids
    x64c = (x64 - c[:, None]) * float(scale)  # centred (and scaled) float64
    xin = x64c.to(torch.float32)
    bad = ~torch.isfinite(xin).flatten(1).all(1)  # checked after the cast: float32 overflow
    if bool(bad.any()):
        i = int(bad.float().argmax())
        path = pieces[i] if isinstance(pieces[i], (str, os.PathLike)) else None
        raise PieceError(i, path, f"centred coordinates times scale={scale!r} overflow "
                                  f"float32 (the network's dtype); pass a smaller scale")
    # The networks are trained on objects about one unit across (Breaking Bad's normalised
    # meshes): far outside that the float32 network overflows inside (1e30: an error about
    # "6D vectors") or returns poses 1e28 units away (1e-30), so say it in terms of scale.
    size = float(x64c.square().sum(-1).mean(-1).sqrt().max())
    if not 1e-6 <= size <= 1e6:
        raise ValueError(f"scale: the largest scaled piece has an RMS radius of {size:.3g} "
                         f"units, expected about 1 (the training data's size); got "
                         f"scale={scale!r}")
    if not 1e-2 <= size <= 1e2:
        warnings.warn(f"assemble: the largest scaled piece has an RMS radius of {size:.3g} "
                      "units, far from the training data's ~1; check scale",
                      UserWarning, stacklevel=2)
    xin = xin.to(dev)
    valid = torch.ones(1, xin.shape[0], dtype=torch.bool, device=xin.device)
    from geo3d.apps.assembly._pipeline import assemble_from_outputs

    with torch.no_grad():
        out = model(xin[None], valid)
        if method == "matching" and "desc" not in out:
            warnings.warn("assemble: the checkpoint has no correspondence head (desc_dim=0); "
                          "method='matching' falls back to the network's poses",
                          UserWarning, stacklevel=2)
        # the network runs in float32; matching, RANSAC and refinement run on the same
        # centred points in float64, so the result does not depend on the input pose
        # through float32 rounding
        if method == "fracture_registration":
            bank = getattr(model, "template_bank", None) \
                if getattr(model, "hparams", {}).get("templates", False) else None
            if bank is None:
                warnings.warn("assemble: the checkpoint has no template bank (trained before "
                              "it existed, or templates=False): the assembled object's pose "
                              "is the network's pose of the largest piece, often a flipped "
                              "one; the pieces' relative poses are unaffected. To add a "
                              "bank: model = load_model(ckpt); model.ensure_templates("
                              "training dataset); assemble(pieces, model)", UserWarning,
                              stacklevel=2)
            Tn = _fracture_poses(pieces, x64c, c, float(scale), out, generator,
                                 bank).to(dev)
        else:
            Tn = assemble_from_outputs(x64c.to(dev)[None], valid, out, method=method,
                                       refine=refine, generator=generator)[0]
    rot = Tn[:, :3, :3].detach().cpu().to(torch.float64)
    trans = Tn[:, :3, 3].detach().cpu().to(torch.float64) / float(scale)
    # y = R (x - c) + t  =>  T = [R, t - R c]
    T = torch.eye(4, dtype=torch.float64).repeat(x64.shape[0], 1, 1)
    T[:, :3, :3] = rot
    T[:, :3, 3] = trans - (rot @ c[..., None])[..., 0]
    return T


def _is_mesh_file(piece: Any) -> bool:
    if not isinstance(piece, (str, os.PathLike)):
        return False
    path = Path(piece)
    ext = path.suffix.lower()
    return ext in _MESH_EXT or (ext == ".ply" and path.is_file() and _ply_has_faces(path))


def _all_meshes(pieces: Sequence[Any]) -> bool:
    """Every piece is a mesh file (what ``method="auto"`` needs for fracture registration)."""
    return all(_is_mesh_file(p) for p in pieces)


def resolve_method(pieces: Sequence[Any], method: str = "auto") -> str:
    """The method :func:`assemble` runs for ``pieces``: ``"auto"`` becomes
    ``"fracture_registration"`` when every piece is a mesh file and open3d is installed,
    else ``"matching"``; any other name is returned as given."""
    if method != "auto":
        return method
    return "fracture_registration" if _all_meshes(pieces) and _has_open3d() else "matching"


def _has_open3d() -> bool:
    import importlib.util

    return importlib.util.find_spec("open3d") is not None


def _fracture_poses(pieces: Sequence[Any], x64c: Tensor, c: Tensor, scale: float,
                    out: dict[str, Any], generator: torch.Generator | None,
                    templates: Any = None) -> Tensor:
    """``(P, 4, 4)`` poses of method ``"fracture_registration"`` acting on the centred,
    scaled input frame (like the network's): dense mesh samples where a piece is a mesh.
    The object's pose: ``templates``' registration (the checkpoint's bank of training
    objects) when given, else the network's pose of the anchor."""
    from geo3d.apps.assembly._fracture_registration import MIN_POINTS, _o3d, fracture_assembly
    from geo3d.apps.assembly._pipeline import network_poses
    from geo3d.apps.assembly._refine import estimate_normals

    from geo3d.eval import anchor_parts

    _o3d()  # a missing open3d is reported before any work
    P = x64c.shape[0]
    dense = [_dense_mesh_piece(p, generator) for p in pieces]
    clouds = [i for i, d in enumerate(dense) if d is None]
    if clouds and x64c.shape[1] < MIN_POINTS:
        raise ValueError(f"num_points: expected at least {MIN_POINTS} for point-cloud pieces "
                         f"with method='fracture_registration', got {x64c.shape[1]}")
    if clouds:
        warnings.warn(f"assemble: pieces {clouds} are point clouds; method "
                      "'fracture_registration' was trained on dense mesh samples with face "
                      "normals, and on clouds (estimated normals) its placements are unreliable "
                      "and can change with a piece's pose; pass meshes", UserWarning,
                      stacklevel=3)
    pts, nrm = [], []
    for i, d in enumerate(dense):
        if d is None:
            pts.append(x64c[i])
            nrm.append(estimate_normals(x64c[i]))
        else:
            pts.append((d[0] - c[i]) * scale)
            nrm.append(d[1])
    valid = torch.ones(1, P, dtype=torch.bool)
    a = int(anchor_parts(x64c[None].cpu(), valid)[0])
    Tnet = network_poses(out, 1, P, torch.float64, torch.device("cpu"))
    G, _ = fracture_assembly(pts, nrm, a, initial=None if Tnet is None else Tnet[0])
    if templates is not None:
        from geo3d.apps.assembly._pipeline import object_pose

        return object_pose(templates, [p.double() for p in pts], G,
                           None if Tnet is None else Tnet[0])[None] @ G
    Ta = torch.eye(4, dtype=torch.float64) if Tnet is None else Tnet[0, a]
    return Ta[None] @ G
