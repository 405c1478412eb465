"""ArrayCache: content keys, atomic entries, corrupt entries (issue: datasets §2 cache)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from geo3d.datasets import ArrayCache, file_digest


def test_key_follows_content_and_options(tmp_path):
    src = tmp_path / "a.obj"
    src.write_text("v 0 0 0\n")
    cache = ArrayCache(tmp_path / "c")
    k1 = cache.key(src, {"n": 10})
    assert cache.key(src, {"n": 10}) == k1 and cache.key(src, {"n": 11}) != k1
    other = tmp_path / "b.obj"
    other.write_text("v 0 0 0\n")
    assert cache.key(other, {"n": 10}) == k1  # same bytes, same key (content addressed)
    src.write_text("v 1 0 0\n")  # same size, new content
    os.utime(src, ns=(1, 1))  # even with an old mtime the stat memo misses (mtime changed)
    assert cache.key(src, {"n": 10}) != k1
    assert file_digest(src) != file_digest(other)


def test_digest_memoised_until_the_file_changes(tmp_path):
    src = tmp_path / "a.obj"
    src.write_text("v 0 0 0\n")
    cache = ArrayCache(tmp_path / "c")
    cache.key(src, {})
    cache.key(src, {})
    assert cache.hashed == 1
    src.write_text("v 0 0 0\nv 1 1 1\n")
    cache.key(src, {})
    assert cache.hashed == 2


def test_put_get_atomic_and_corrupt(tmp_path):
    cache = ArrayCache(tmp_path / "c")
    assert cache.get("ab" * 32) is None and cache.misses == 1
    arrays = {"points": np.arange(12.0).reshape(4, 3), "normals": np.ones((4, 3))}
    cache.put("ab" * 32, arrays)
    got = cache.get("ab" * 32)
    assert cache.hits == 1 and set(got) == {"points", "normals"}
    np.testing.assert_array_equal(got["points"], arrays["points"])
    files = [p.name for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert files == ["ab" * 32 + ".npz"]  # no temp file left behind
    cache.entry_path("ab" * 32).write_bytes(b"PK\x03\x04 truncated")
    assert cache.get("ab" * 32) is None  # corrupt entry = miss


def test_stat_mode_and_bad_mode(tmp_path):
    src = tmp_path / "a.obj"
    src.write_text("v 0 0 0\n")
    cache = ArrayCache(tmp_path / "c", hash_mode="stat")
    k = cache.key(src, {})
    assert cache.hashed == 0
    os.utime(src, ns=(10**18, 10**18))
    assert cache.key(src, {}) != k
    with pytest.raises(ValueError, match="hash_mode"):
        ArrayCache(tmp_path, hash_mode="mtime")
