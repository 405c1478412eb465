"""On-disk cache of arrays keyed by file content and options, written atomically.

Used by the dataset loaders to store the points sampled from each mesh, so that a
second epoch reads a small ``.npz`` instead of parsing and sampling the mesh again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from geo3d.datasets._io import atomic_write_bytes

__all__ = ["ArrayCache", "file_digest"]

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class ArrayCache:
    """A folder of ``.npz`` files, one per (file content, options) key.

    The key of an entry is the SHA-256 of the source file's bytes together with a
    canonical JSON of ``options`` (e.g. number of points, sampler version, seed): editing
    the file or changing an option gives a new key, so stale entries are never returned.
    Entries are written to a temporary file in the cache folder and renamed into place
    (:func:`os.replace`), so concurrent workers never read a partial entry; a corrupt
    entry (e.g. truncated by a full disk) is treated as a miss and rewritten.

    Args:
        root: the cache folder (created on first write).
        hash_mode: ``"content"`` (default): the key holds the SHA-256 of the file bytes.
            Like git's index, the digest is remembered in this process per
            (path, size, mtime_ns, inode), so a file is hashed again only after it changed
            on disk; a new process (or a new ``ArrayCache``) hashes every file once.
            ``"stat"``: the key holds path + size + mtime instead of the digest (no
            reading at all, blind to an edit that keeps size and mtime).

    Attributes:
        hits, misses: counters of :meth:`get` outcomes in this process.
    """

    def __init__(self, root: str | os.PathLike, hash_mode: str = "content") -> None:
        if hash_mode not in ("content", "stat"):
            raise ValueError(f"hash_mode: expected 'content' or 'stat', got {hash_mode!r}")
        self.root = Path(root)
        self.hash_mode = hash_mode
        self.hits = 0
        self.misses = 0
        #: number of files hashed by this object (digests are memoised by stat)
        self.hashed = 0
        self._digests: dict[tuple[str, int, int, int], str] = {}

    def source_id(self, path: str | os.PathLike) -> str:
        """The part of the key that identifies the source file."""
        st = os.stat(path)
        if self.hash_mode == "stat":
            return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
        memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
        digest = self._digests.get(memo)
        if digest is None:
            digest = file_digest(path)
            self.hashed += 1
            self._digests[memo] = digest
        return digest

    def key(self, path: str | os.PathLike, options: dict[str, Any]) -> str:
        """Cache key (hex) for a source file and a JSON-serialisable dict of options."""
        opts = json.dumps(options, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(f"{self.source_id(path)}\n{opts}".encode()).hexdigest()

    def entry_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``, or ``None`` on a miss (or unreadable entry)."""
        path = self.entry_path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                out = {k: data[k] for k in data.files}
        except Exception:  # missing, or corrupt (BadZipFile, truncated, ...): a miss
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Store ``arrays`` under ``key`` atomically (temp file + rename)."""
        buf = io.BytesIO()
        np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
        atomic_write_bytes(self.entry_path(key), buf.getvalue())
