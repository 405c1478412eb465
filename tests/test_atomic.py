"""geo3d._atomic: the one atomic-write implementation every writer uses."""

import os
import stat

import pytest

from geo3d._atomic import atomic_path, atomic_write_bytes, atomic_write_text


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    out = tmp_path / "x.json"
    atomic_write_text(out, "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_writer_that_writes_nothing_is_an_error_not_an_empty_file(tmp_path):
    out = tmp_path / "y.png"
    with pytest.raises(OSError, match="y.png"), atomic_path(out) as tmp:
        os.unlink(tmp)
    assert not out.exists()


def test_temp_name_keeps_the_extension_and_folders_are_created(tmp_path):
    out = tmp_path / "a" / "b" / "c.pcd"
    with atomic_path(out) as tmp:
        assert tmp.suffix == ".pcd" and tmp.parent == out.parent and tmp != out
        tmp.write_bytes(b"1")
    assert out.read_bytes() == b"1"


def test_mode_follows_the_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "m.bin", b"x", fsync=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.bin").stat().st_mode) == 0o644
