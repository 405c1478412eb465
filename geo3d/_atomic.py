"""Atomic file writes shared by every layer (private).

Checkpoints, caches, datasets, pictures and results are written to a temporary file in
the destination's folder and renamed onto the destination with :func:`os.replace` (atomic
on POSIX and Windows), so a reader never sees a half-written file and a crash leaves the
previous version intact. One implementation for the whole package: :func:`atomic_path`
for writers that need a file name (PIL, matplotlib, open3d, ``torch.save``),
:func:`atomic_write_bytes` / :func:`atomic_write_text` for data already in memory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "staging_dir"]


def _umask() -> int:
    """The process umask; read from /proc where Linux reports it (``os.umask`` can only be
    read by setting it, which races with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def staging_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A fresh temporary folder inside ``parent`` for building a folder that is renamed into
    place when complete. Unlike :func:`tempfile.mkdtemp` (mode 0700) it gets the mode a
    plain ``mkdir`` would (``0777 & ~umask``), so the renamed folder is not private.

    Example:
        >>> import tempfile, stat
        >>> d = staging_dir(tempfile.mkdtemp(), ".tmp-obj-")
        >>> stat.S_IMODE(d.stat().st_mode) == 0o777 & ~_umask()
        True
    """
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; on normal exit rename it onto ``path``.

    The temporary name ends with ``path``'s extension (``.x.png.<random>.tmp.png``), so
    writers that pick the format from the extension work. Parent folders are created. If
    the block raises (or the writer leaves no file), ``path`` is untouched and the
    temporary file is removed.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_path(out) as tmp:
        ...     _ = tmp.write_text("done")
        >>> out.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
    try:
        yield Path(tmp)
        if not os.path.exists(tmp):
            raise OSError(f"{path}: the writer produced no file")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; with ``fsync`` (default) the data reach the
    disk before the rename (skip it for files inside a folder that is itself renamed into
    place when complete)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))
