"""Safe reading of SMPL-family model files: a restricted unpickler and a pickle-free npz reader.

``pickle.load`` runs arbitrary code named by the file. The official SMPL v1.0/v1.1 ``.pkl``
files were written by Python 2 and hold ``chumpy`` objects (``chumpy.ch.Ch``), and upstream
chumpy does not import on numpy >= 1.24 / Python 3.11. :class:`RestrictedUnpickler` resolves
only an allow-list of globals:

- numpy arrays, dtypes and scalars (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
  ``numpy.dtype``, ``scalar``, ``_frombuffer``; also under numpy 2's ``numpy._core``);
- scipy sparse matrices/arrays (any ``scipy.sparse`` module path, class name checked;
  csr, csc and coo are kept, after their index arrays are checked against their shape and
  data: scipy's compiled ``toarray`` trusts them, so a crafted ``indptr`` reads outside
  memory; a declared shape above :data:`MAX_SPARSE_DENSE` entries is refused, since the
  model is made dense);
- chumpy arrays: ``chumpy.ch.Ch`` (its pickled ``__dict__`` holds the value in ``x``; see
  ``chumpy/ch.py``, ``Ch.__getstate__`` drops only the caches) and ``chumpy.reshape.Reshape``
  (``a`` reshaped to ``newshape``). They come back as plain ``numpy.ndarray``;
- the few builtins numpy's and scipy's pickles use (``object`` as the base class of
  ``copyreg._reconstructor``, ``_codecs.encode`` for protocol-2 ``bytes``, ``bytes()`` without
  arguments for protocol-0/1 empty data, ``set``/``frozenset``)
  and ``copyreg._reconstructor`` restricted to the classes above.

Anything else raises :class:`UnsafePickleError` naming ``module.name`` *before* the object is
created, so a ``__reduce__`` payload such as ``os.system`` never runs. Calls are checked too,
so that no allow-listed global can allocate more than the file holds: the classes
(``numpy.ndarray``, sparse matrices, chumpy arrays) may only be created empty (REDUCE, NEWOBJ,
INST/OBJ with arguments are refused), ``_reconstruct`` only with an empty/one-element shape,
and an ndarray's pickled state must match its shape (numpy 2.x crashes on an object array
whose list is shorter than its shape). ``bytearray``/``complex`` and ``bytes`` with arguments are not callable
(``bytearray(300000000)`` would allocate 300 MB). Files above :data:`MAX_PICKLE_BYTES` are
refused before reading. Files that are not pickles raise :class:`UnsafePickleError` (a
``ValueError``) naming the file.
"""

from __future__ import annotations

import codecs
import copyreg
import io
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from geo3d._atomic import atomic_path

__all__ = [
    "UnsafePickleError",
    "RestrictedUnpickler",
    "safe_load_pickle",
    "safe_load_npz",
    "read_model_file",
    "atomic_save_npz",
]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle names a global outside the allow-list (also a :class:`ValueError`)."""


class _ChumpyArray:
    """Stand-in for chumpy's ``Ch``: keeps the pickled ``__dict__``; replaced by its ``x``."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ChumpyReshape(_ChumpyArray):
    """Stand-in for ``chumpy.reshape.Reshape``: ``a`` reshaped to ``newshape``."""


_NUMPY_MODULES = {"numpy.core.multiarray", "numpy._core.multiarray"}
_NUMPY_NUMERIC = {"numpy.core.numeric", "numpy._core.numeric"}
_SPARSE_NAMES = {
    "csc_matrix", "csr_matrix", "coo_matrix", "bsr_matrix", "dia_matrix", "dok_matrix",
    "lil_matrix", "csc_array", "csr_array", "coo_array", "bsr_array", "dia_array",
}  # fmt: skip


def _empty_bytes(*args: Any) -> bytes:
    # Protocol 0/1 pickle b"" (an empty array's data) as a call of bytes() without arguments.
    if args:
        raise UnsafePickleError(
            f"pickle: refusing builtins.bytes with arguments {_short(args)} (only bytes() is used)"
        )
    return b""


_BUILTINS: dict[str, Any] = {
    "set": set, "frozenset": frozenset, "object": object, "bytes": _empty_bytes,
}  # fmt: skip
MAX_PICKLE_BYTES = 4 << 30
"""Largest pickle file :func:`safe_load_pickle` reads (4 GiB; SMPL-X files are ~100-300 MB)."""


def _allowed_classes() -> set[type]:
    import scipy.sparse as sp

    return {np.ndarray, np.dtype, _ChumpyArray, _ChumpyReshape} | {
        getattr(sp, n) for n in _SPARSE_NAMES if hasattr(sp, n)
    }


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # copyreg._reconstructor(cls, object, None) is how protocol 0/1 pickles create instances
    # of new-style classes; only allow-listed classes may be created this way.
    if not isinstance(cls, type) or cls not in _allowed_classes() or base is not object:
        raise UnsafePickleError(f"pickle: refusing copyreg._reconstructor for {cls!r}")
    return copyreg._reconstructor(cls, base, state)


def _safe_np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    # numpy pickles call _reconstruct(ndarray, (0,), b"b") and fill the array in BUILD.
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"pickle: refusing numpy _reconstruct of {subtype!r}")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UnsafePickleError(f"pickle: numpy _reconstruct shape {shape!r} is not a shape")
    if math.prod(shape) > 1:
        raise UnsafePickleError(
            f"pickle: refusing numpy _reconstruct with shape {shape} (numpy pickles use (0,))"
        )
    return _np_multiarray()._reconstruct(subtype, shape, dtype)


def _check_ndarray_state(state: Any) -> None:
    """Refuse an ndarray ``__setstate__`` argument whose data do not match its shape."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise UnsafePickleError(f"pickle: malformed numpy array state of type {type(state)}")
    shape, dtype, _, raw = state[-4:]
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UnsafePickleError(f"pickle: numpy array state shape {shape!r} is not a shape")
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"pickle: numpy array state dtype {dtype!r} is not a dtype")
    n = math.prod(shape)
    if dtype.hasobject:
        if not isinstance(raw, list) or len(raw) != n:
            got = len(raw) if isinstance(raw, list) else type(raw).__name__
            raise UnsafePickleError(
                f"pickle: object array of shape {shape} needs a list of {n} items, got {got}"
            )
    elif not isinstance(raw, (bytes, bytearray, str)) or len(raw) != n * dtype.itemsize:
        got = len(raw) if isinstance(raw, (bytes, bytearray, str)) else type(raw).__name__
        raise UnsafePickleError(
            f"pickle: array of shape {shape} and dtype {dtype} needs {n * dtype.itemsize} "
            f"bytes, got {got}"
        )


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """An unpickler that resolves only the allow-listed globals (see module docs).

    The pure-Python unpickler, so that calls (REDUCE, NEWOBJ, INST/OBJ) and ndarray states
    (BUILD) can be checked before they run: allow-listed classes are only created empty.

    Raises:
        UnsafePickleError: from :meth:`find_class` for any other global, naming it, or for a
            call/state that could allocate more than the file holds.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def _refuse_class_call(self, cls: Any, args: Any, how: str) -> None:
        if isinstance(cls, type) and (args or issubclass(cls, np.ndarray)):
            raise UnsafePickleError(
                f"pickle: refusing {how} of {cls.__module__}.{cls.__qualname__} with arguments "
                f"{_short(args)} (allow-listed classes are only created empty)"
            )

    def load_reduce(self) -> None:  # noqa: D102
        func = self.stack[-2]
        if isinstance(func, type) and func not in _BUILTINS.values():
            if not issubclass(func, np.dtype):
                raise UnsafePickleError(
                    f"pickle: refusing a call of {func.__module__}.{func.__qualname__} with "
                    f"arguments {_short(self.stack[-1])} (allow-listed classes are only "
                    "created empty)"
                )
        super().load_reduce()

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:  # noqa: D102
        self._refuse_class_call(self.stack[-2], self.stack[-1], "NEWOBJ")
        super().load_newobj()

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:  # noqa: D102
        self._refuse_class_call(self.stack[-3], self.stack[-2] or self.stack[-1], "NEWOBJ_EX")
        super().load_newobj_ex()

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass: Any, args: Any) -> None:
        if not isinstance(klass, type) or args:
            raise UnsafePickleError(
                f"pickle: refusing INST/OBJ call of {klass!r} with arguments {_short(args)}"
            )
        self._refuse_class_call(klass, args, "INST/OBJ")
        super()._instantiate(klass, args)

    def load_build(self) -> None:  # noqa: D102
        if isinstance(self.stack[-2], np.ndarray):
            _check_ndarray_state(self.stack[-1])
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        if module in _NUMPY_MODULES and name == "_reconstruct":
            return _safe_np_reconstruct
        if module in _NUMPY_MODULES and name == "scalar":
            return _np_multiarray().scalar
        if module in _NUMPY_NUMERIC and name == "_frombuffer":
            return _np_numeric()._frombuffer
        if module == "numpy" and name in {"ndarray", "dtype"}:
            return getattr(np, name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            import numpy.dtypes as npd

            cls = getattr(npd, name, None)
            if isinstance(cls, type) and issubclass(cls, np.dtype):
                return cls
        if module.startswith("scipy.sparse") and name in _SPARSE_NAMES:
            import scipy.sparse as sp

            if hasattr(sp, name):
                return getattr(sp, name)
        if module.split(".")[0] == "chumpy":
            if name == "Ch":
                return _ChumpyArray
            if name == "Reshape":
                return _ChumpyReshape
            raise UnsafePickleError(
                f"pickle: refusing chumpy class {module}.{name} (only chumpy.ch.Ch and "
                "chumpy.reshape.Reshape arrays are converted to numpy)"
            )
        if module in {"builtins", "__builtin__"} and name in _BUILTINS:
            return _BUILTINS[name]
        if module == "_codecs" and name == "encode":
            return codecs.encode
        if module in {"copyreg", "copy_reg"} and name == "_reconstructor":
            return _safe_reconstructor
        raise UnsafePickleError(
            f"pickle: refusing to load global {module}.{name}: only numpy arrays/dtypes, scipy "
            "sparse matrices and chumpy arrays are allowed in a body model file"
        )


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def _np_multiarray() -> Any:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


def _np_numeric() -> Any:
    try:
        from numpy._core import numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import numeric  # type: ignore[no-redef]
    return numeric


MAX_SPARSE_DENSE = 1 << 28
"""Most entries (rows x columns) a sparse matrix in a model file may declare: it is made
dense when the model is built (SMPL-X's ``J_regressor`` has 55 x 10475 = 576k)."""


def _index_array(name: str, x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iu" or x.ndim != 1:
        got = f"{x.dtype} of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise UnsafePickleError(f"pickle: sparse matrix {name}: expected a 1-d integer array, "
                                f"got {got}")
    return x


def _check_sparse(m: Any) -> Any:
    """A sparse matrix from a pickle, checked before anything reads it: scipy's compiled
    routines (``toarray``) trust the index arrays, so a crafted ``indptr`` or ``indices``
    reads outside memory (a crash) or silently changes the values, and a declared shape of
    200000 x 200000 would be made dense as 298 GiB."""
    shape = m.__dict__.get("_shape")
    if not (isinstance(shape, tuple) and len(shape) == 2
            and all(isinstance(n, (int, np.integer)) and n >= 0 for n in shape)):
        raise UnsafePickleError(f"pickle: sparse matrix shape {_short(shape)} is not a 2-d shape")
    if math.prod(int(n) for n in shape) > MAX_SPARSE_DENSE:
        raise UnsafePickleError(f"pickle: sparse matrix of shape {tuple(map(int, shape))}: more "
                                f"than {MAX_SPARSE_DENSE} entries would be made dense")
    fmt = type(m).__name__[:3]
    if fmt not in ("csr", "csc", "coo"):
        raise UnsafePickleError(f"pickle: refusing a {fmt} sparse matrix (csr, csc and coo "
                                f"are read)")
    data = m.__dict__.get("data")
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "biuf" or data.ndim != 1:
        raise UnsafePickleError(f"pickle: sparse matrix data: expected a 1-d numeric array, got "
                                f"{getattr(data, 'dtype', type(data).__name__)}")
    try:
        if fmt in ("csr", "csc"):
            indptr = _index_array("indptr", m.__dict__.get("indptr"))
            indices = _index_array("indices", m.__dict__.get("indices"))
            major, minor = (shape[0], shape[1]) if fmt == "csr" else (shape[1], shape[0])
            ok = (len(indptr) == major + 1 and indptr[0] == 0 and indptr[-1] == len(indices)
                  == len(data) and bool(np.all(np.diff(indptr) >= 0))
                  and bool(np.all((indices >= 0) & (indices < minor))))
        else:  # coo
            coords = m.__dict__.get("coords")
            if not isinstance(coords, tuple) or len(coords) != 2:
                raise UnsafePickleError("pickle: coo sparse matrix without its (row, col) coords")
            row, col = (_index_array(n, c) for n, c in zip(("row", "col"), coords, strict=True))
            ok = (len(row) == len(col) == len(data) and bool(np.all((row >= 0) & (row < shape[0])))
                  and bool(np.all((col >= 0) & (col < shape[1]))))
    except UnsafePickleError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure is a malformed matrix
        raise UnsafePickleError(f"pickle: malformed {fmt} sparse matrix ({err})") from err
    if not ok:
        raise UnsafePickleError(f"pickle: malformed {fmt} sparse matrix: its index arrays do not "
                                f"fit its shape {tuple(map(int, shape))} and data")
    return m


def _to_plain(obj: Any, depth: int = 0) -> Any:
    """Replace chumpy stand-ins by ndarrays, recursively through dicts/lists/tuples; check
    sparse matrices (:func:`_check_sparse`)."""
    if depth > 100:
        raise UnsafePickleError("pickle: nesting deeper than 100 levels")
    if type(obj) in _allowed_classes() and type(obj).__name__[:3] in {
            n[:3] for n in _SPARSE_NAMES}:
        return _check_sparse(obj)
    if isinstance(obj, _ChumpyReshape):
        st = obj.state if isinstance(getattr(obj, "state", None), dict) else {}
        if "a" not in st or "newshape" not in st:
            raise UnsafePickleError("pickle: chumpy Reshape without 'a'/'newshape' in its state")
        return np.reshape(np.asarray(_to_plain(st["a"], depth + 1)), st["newshape"])
    if isinstance(obj, _ChumpyArray):
        st = obj.state if isinstance(getattr(obj, "state", None), dict) else {}
        if "x" not in st:
            raise UnsafePickleError("pickle: chumpy Ch without its value 'x' in its state")
        return np.asarray(_to_plain(st["x"], depth + 1))
    if isinstance(obj, dict):
        return {k: _to_plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_plain(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_plain(v, depth + 1) for v in obj)
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        out = np.empty(obj.shape, dtype=object)
        for i, v in np.ndenumerate(obj):
            out[i] = _to_plain(v, depth + 1)
        return out
    return obj


def safe_load_pickle(file: str | os.PathLike | io.IOBase | bytes) -> Any:
    """Load a pickle through :class:`RestrictedUnpickler`, chumpy arrays turned into ndarrays.

    Python 2 pickles (the official SMPL files) are read with ``encoding="latin1"``.

    Args:
        file: a path, an open binary file or the pickle's bytes.

    Returns:
        The unpickled object (for a model file, a dict of arrays).

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list, makes a call
            that could allocate more than it holds, or is not a pickle (all name the file).
        ValueError: the file is larger than :data:`MAX_PICKLE_BYTES`.
        FileNotFoundError: the path does not exist.

    Example:
        >>> import pickle, numpy as np
        >>> safe_load_pickle(pickle.dumps({"a": np.arange(3)}))["a"].tolist()
        [0, 1, 2]
    """
    name = "pickle"
    if isinstance(file, (bytes, bytearray)):
        f: Any = io.BytesIO(file)
    elif isinstance(file, (str, os.PathLike)):
        name = str(file)
        size = os.path.getsize(file)
        if size > MAX_PICKLE_BYTES:
            raise ValueError(
                f"file: expected a pickle of at most {MAX_PICKLE_BYTES} bytes, got {size} bytes "
                f"in {name}"
            )
        f = open(file, "rb")  # noqa: SIM115
    else:
        f = file
        name = str(getattr(file, "name", "pickle"))
    try:
        obj = RestrictedUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as err:
        if name == "pickle":
            raise
        raise UnsafePickleError(f"{name}: {err}") from err
    except (
        pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
        AttributeError, UnicodeDecodeError, struct.error, OverflowError,
    ) as err:  # fmt: skip
        raise UnsafePickleError(
            f"{name}: not a readable pickle ({type(err).__name__}: {_short(str(err))})"
        ) from err
    finally:
        if f is not file:
            f.close()
    try:
        return _to_plain(obj)
    except UnsafePickleError as err:
        if name == "pickle":
            raise
        raise UnsafePickleError(f"{name}: {err}") from err


def safe_load_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Read every array of an ``.npz`` without ``allow_pickle``; object arrays go through
    :class:`RestrictedUnpickler` instead of :func:`pickle.load`.

    Args:
        path: the ``.npz`` file.

    Returns:
        ``{key: array}`` (object arrays of 0 dims are unwrapped to their Python object).

    Raises:
        UnsafePickleError: an object array names a global outside the allow-list.
        ValueError: the file is not an npz archive.

    Example:
        >>> import tempfile, os, numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "a.npz"); np.savez(p, x=np.eye(2))
        >>> safe_load_npz(p)["x"].shape
        (2, 2)
    """
    out: dict[str, Any] = {}
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"path: expected an .npz archive, got {path} ({err})") from None
    with zf:
        for member in zf.namelist():
            if not member.endswith(".npy"):
                continue
            key = member[: -len(".npy")]
            size = zf.getinfo(member).file_size
            if size > MAX_PICKLE_BYTES:
                raise ValueError(
                    f"path: expected members of at most {MAX_PICKLE_BYTES} bytes, got {size} "
                    f"bytes for {member} in {path}"
                )
            with zf.open(member) as fh:
                data = io.BytesIO(fh.read())
            version = np.lib.format.read_magic(data)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(data)
            else:
                _, _, dtype = np.lib.format.read_array_header_2_0(data)
            data.seek(0)
            if dtype.hasobject:
                # Skip the header, then the pickled object array.
                np.lib.format.read_magic(data)
                if version == (1, 0):
                    np.lib.format.read_array_header_1_0(data)
                else:
                    np.lib.format.read_array_header_2_0(data)
                arr = safe_load_pickle(data)
                if isinstance(arr, np.ndarray) and arr.dtype == object and arr.ndim == 0:
                    arr = arr.item()
            else:
                arr = np.lib.format.read_array(data, allow_pickle=False)
            out[key] = arr
    return out


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a SMPL-family model file (``.pkl`` or ``.npz``) safely into a dict.

    Args:
        path: the model file.

    Returns:
        ``{key: value}`` with ndarrays (chumpy arrays converted), scipy sparse matrices and
        whatever plain Python values the file holds.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafePickleError: the file names a global outside the allow-list.
        ValueError: unknown extension or the pickle does not hold a dict.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    ext = p.suffix.lower()  # SMPL_MALE.PKL from a case-insensitive file system
    if ext == ".npz":
        return safe_load_npz(p)
    if ext == ".pkl":
        obj = safe_load_pickle(p)
        if not isinstance(obj, dict):
            raise ValueError(
                f"path: expected a pickled dict of arrays, got {type(obj).__name__} in {p}"
            )
        return obj
    raise ValueError(f"path: expected a .pkl or .npz model file, got {p}")


def atomic_save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write an uncompressed ``.npz`` atomically (temp file in the same folder, then rename).

    Args:
        path: destination (its name is kept as given; no ``.npz`` is appended).
        arrays: ``{key: array}``; object arrays are refused.

    Returns:
        The destination path.

    Raises:
        ValueError: an array has ``dtype=object``.
        IsADirectoryError: ``path`` is an existing folder.
    """
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"path: expected a file name, got the existing folder {p}")
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise ValueError(
                f"arrays: expected plain (non-object) arrays, got dtype=object for {k!r}"
            )
    with atomic_path(p) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})
    return p
