"""Restricted unpickling of SMPL-style model files, conversion, and safe npz reading."""

from __future__ import annotations

import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from geo3d.body import (
    UnsafePickleError,
    convert_model,
    load_body_model,
    pose_body,
    read_model_file,
    safe_load_npz,
    safe_load_pickle,
    tiny_body_dict,
)


@pytest.fixture
def fake_chumpy(monkeypatch):
    """A stand-in ``chumpy.ch.Ch`` (pickles like chumpy: ``__dict__`` minus caches, value in x)."""
    pkg = types.ModuleType("chumpy")
    mod = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x, dtype=np.float64)
            self._dirty_vars = {"x"}
            self._itr = None
            self._depends_on_deps = {}
            self._make_dense = False
            self._make_sparse = False
            self._parents = "unpicklable weakref stand-in"
            self._cache = {"r": None}

        def __getstate__(self):
            d = dict(self.__dict__)
            del d["_parents"], d["_cache"]
            return d

    class SomethingElse(Ch):
        pass

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    SomethingElse.__module__ = "chumpy.ch_ops"
    SomethingElse.__qualname__ = "SomethingElse"
    mod.Ch = Ch
    ops = types.ModuleType("chumpy.ch_ops")
    ops.SomethingElse = SomethingElse
    pkg.ch = mod
    monkeypatch.setitem(sys.modules, "chumpy", pkg)
    monkeypatch.setitem(sys.modules, "chumpy.ch", mod)
    monkeypatch.setitem(sys.modules, "chumpy.ch_ops", ops)
    return types.SimpleNamespace(Ch=Ch, SomethingElse=SomethingElse)


def _official_like(Ch) -> dict:
    """A tiny-body model dict in the v1.0 pickle style: chumpy arrays, sparse J_regressor,
    strings and a dict of training info."""
    d = tiny_body_dict()
    return {
        "v_template": Ch(d["v_template"]),
        "shapedirs": Ch(d["shapedirs"]),
        "posedirs": d["posedirs"],
        "J_regressor": sp.csc_matrix(d["J_regressor"]),
        "weights": Ch(d["weights"]),
        "kintree_table": d["kintree_table"].astype(np.int64),
        "f": d["f"].astype(np.uint32),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "pose_training_info": {"num_meshes": 1786},
    }


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_chumpy_pickle_becomes_plain_arrays(fake_chumpy, tmp_path, protocol):
    d = tiny_body_dict()
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_official_like(fake_chumpy.Ch), protocol=protocol))
    out = read_model_file(path)
    assert type(out["v_template"]) is np.ndarray
    np.testing.assert_array_equal(out["v_template"], d["v_template"])
    np.testing.assert_array_equal(out["shapedirs"], d["shapedirs"])
    np.testing.assert_array_equal(out["weights"], d["weights"])
    assert sp.issparse(out["J_regressor"])
    np.testing.assert_array_equal(out["J_regressor"].toarray(), d["J_regressor"])
    assert out["bs_style"] == "lbs" and out["pose_training_info"] == {"num_meshes": 1786}


def test_convert_then_load_through_smplx(fake_chumpy, tmp_path):
    src = tmp_path / "SMPL_NEUTRAL.pkl"
    src.write_bytes(pickle.dumps(_official_like(fake_chumpy.Ch), protocol=2))
    dst = convert_model(src, tmp_path / "out.npz")
    plain = np.load(dst, allow_pickle=False)  # raises if anything pickled slipped in
    assert plain["J_regressor"].shape == (24, 768)
    assert "pose_training_info" not in plain.files
    assert str(plain["bs_style"]) == "lbs"
    # Both files give the same smplx model output.
    pose = torch.randn(2, 72, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3
    betas = torch.randn(2, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = pose_body(load_body_model(src, dtype=torch.float64), pose, betas)
    b = pose_body(load_body_model(dst, dtype=torch.float64), pose, betas)
    torch.testing.assert_close(a.vertices, b.vertices, atol=0, rtol=0)
    # ... and the same as the arrays themselves through smplx.lbs (independent path)
    from smplx.lbs import lbs

    d = tiny_body_dict()
    f64 = torch.float64
    ref, _ = lbs(
        betas, pose, torch.as_tensor(d["v_template"]), torch.as_tensor(d["shapedirs"]),
        torch.zeros(207, 768 * 3, dtype=f64), torch.as_tensor(d["J_regressor"]),
        torch.tensor(d["kintree_table"][0]).clamp(min=-1), torch.as_tensor(d["weights"]),
    )  # fmt: skip
    # smplx rounds model arrays through float32 (smplx.utils.to_np) even for dtype=float64
    torch.testing.assert_close(b.vertices, ref, atol=2e-7, rtol=0)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_reduce_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"v_template": np.zeros((3, 3)), "evil": Payload(marker)}, protocol=2)
    (tmp_path / "evil.pkl").write_bytes(blob)
    with pytest.raises(UnsafePickleError, match=r"(posix|os|nt)\.system"):
        read_model_file(tmp_path / "evil.pkl")
    assert not marker.exists()
    # sanity: the payload does run under plain pickle, so the test can fail
    pickle.loads(blob)
    assert marker.exists()


def test_other_globals_refused_by_name(fake_chumpy):
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_load_pickle(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(UnsafePickleError, match="chumpy.ch_ops.SomethingElse"):
        safe_load_pickle(pickle.dumps(fake_chumpy.SomethingElse(np.zeros(2)), protocol=2))
    with pytest.raises(UnsafePickleError, match="collections.OrderedDict"):
        import collections

        safe_load_pickle(pickle.dumps(collections.OrderedDict(a=1)))


def test_npz_object_arrays_go_through_the_restricted_unpickler(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "m.npz"
    obj = np.empty((), dtype=object)
    obj[()] = Payload(marker)
    np.savez(p, v_template=np.zeros((3, 3)), evil=obj)
    with pytest.raises(UnsafePickleError, match="system"):
        safe_load_npz(p)
    assert not marker.exists()
    ok = np.empty((), dtype=object)
    ok[()] = {"pelvis": 0}
    np.savez(p, v_template=np.ones((3, 3)), joint2num=ok)
    out = safe_load_npz(p)
    assert out["joint2num"] == {"pelvis": 0}
    np.testing.assert_array_equal(out["v_template"], np.ones((3, 3)))


def test_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError) as exc:
        load_body_model(tmp_path, model_type="smpl")
    msg = str(exc.value)
    assert "SMPL_NEUTRAL.pkl" in msg and "smpl.is.tue.mpg.de" in msg
    assert "MODELS/smpl/SMPL_{NEUTRAL,FEMALE,MALE}.pkl" in msg and "make-model" in msg


def test_folder_layout_lookup(tmp_path):
    from geo3d.body import write_tiny_body

    write_tiny_body(tmp_path / "smpl" / "SMPL_FEMALE.npz")
    m = load_body_model(tmp_path, gender="female")
    assert m.v_template.shape == (768, 3)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("shapedirs", np.zeros((768, 3)), "shapedirs"),
        ("posedirs", np.zeros((768, 3, 200)), "posedirs"),
        ("J_regressor", np.zeros((24, 767)), "J_regressor"),
        ("weights", np.zeros((768, 23)), "weights"),
        ("kintree_table", np.zeros((3, 24)), "kintree_table"),
        ("f", np.full((10, 3), 768), "'f'"),
        ("v_template", np.full((768, 3), np.nan), "v_template"),
    ],
)
def test_bad_layout_names_the_key(tmp_path, key, value, match):
    d = tiny_body_dict()
    d[key] = value
    np.savez(tmp_path / "bad.npz", **d)
    with pytest.raises(ValueError, match=match):
        load_body_model(tmp_path / "bad.npz")


def test_missing_key(tmp_path):
    d = tiny_body_dict()
    del d["weights"]
    np.savez(tmp_path / "bad.npz", **d)
    with pytest.raises(ValueError, match="missing weights"):
        load_body_model(tmp_path / "bad.npz")


def test_pose_body_errors(tmp_path):
    from geo3d.body import write_tiny_body

    m = load_body_model(write_tiny_body(tmp_path / "t.npz"))
    with pytest.raises(ValueError, match="pose"):
        pose_body(m, torch.zeros(2, 69))
    with pytest.raises(ValueError, match="betas"):
        pose_body(m, torch.zeros(2, 72), betas=torch.zeros(3, 10))
    with pytest.raises(ValueError, match="betas"):
        pose_body(m, torch.zeros(2, 72), betas=torch.zeros(2, 11))
    with pytest.raises(ValueError, match="trans"):
        pose_body(m, torch.zeros(2, 72), trans=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="pose"):
        pose_body(m, torch.full((2, 72), float("inf")))
    out = pose_body(m, torch.eye(3).expand(1, 24, 3, 3), trans=torch.ones(1, 3))
    torch.testing.assert_close(out.vertices[0], m.v_template + 1)


def test_face_keypoints_guessed_without_stored_ids(tmp_path):
    d = tiny_body_dict()
    stored = dict(zip(d["vertex_id_names"].tolist(), d["vertex_id_values"].tolist(), strict=True))
    del d["vertex_id_names"], d["vertex_id_values"]
    np.savez(tmp_path / "m.npz", **d)
    m = load_body_model(tmp_path / "m.npz", dtype=torch.float64)
    out = pose_body(m, torch.zeros(1, 72, dtype=torch.float64))
    v = torch.as_tensor(d["v_template"])
    extra = out.joints[0, 24:]  # smplx order: nose, reye, leye, rear, lear
    assert extra.shape == (5, 3)
    # nose in front of the head, ears on each side, eyes in front on the right side each
    head = v[torch.as_tensor(d["weights"]).argmax(1) == 15]
    # (smplx rounds the template through float32)
    torch.testing.assert_close(extra[0, 2], head[:, 2].max(), atol=1e-7, rtol=0)
    torch.testing.assert_close(extra[3, 0], head[:, 0].min(), atol=1e-7, rtol=0)
    torch.testing.assert_close(extra[4, 0], head[:, 0].max(), atol=1e-7, rtol=0)
    assert extra[1, 0] < 0 < extra[2, 0]
    # with the stored ids, smplx uses exactly those vertices
    d2 = tiny_body_dict()
    np.savez(tmp_path / "s.npz", **d2)
    j2 = pose_body(
        load_body_model(tmp_path / "s.npz", dtype=torch.float64),
        torch.zeros(1, 72, dtype=torch.float64),
    ).joints[0, 24:]
    order = ["nose", "reye", "leye", "rear", "lear"]
    torch.testing.assert_close(j2, v[[stored[k] for k in order]], atol=1e-7, rtol=0)


def test_atomic_save_npz_mode_and_no_leftovers(tmp_path):
    import stat

    from geo3d.body._safe_io import atomic_save_npz

    umask = os.umask(0o022)
    try:
        p = atomic_save_npz(tmp_path / "a.npz", {"x": np.arange(3)})
    finally:
        os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert [q.name for q in tmp_path.iterdir()] == ["a.npz"]
    with pytest.raises(ValueError, match="arrays"):
        atomic_save_npz(tmp_path / "b.npz", {"x": np.array([{}], dtype=object)})
    assert [q.name for q in tmp_path.iterdir()] == ["a.npz"]


@pytest.mark.parametrize(
    ("payload", "name"),
    [
        (b"cbuiltins\nbytearray\n(I300000000\ntR.", "builtins.bytearray"),
        (b"cbuiltins\nbytes\n(I300000000\ntR.", "builtins.bytes with arguments"),
        (b"c__builtin__\ncomplex\n(I1\ntR.", "__builtin__.complex"),
        (b"cnumpy\nndarray\n(I300000000\ntR.", "numpy.ndarray"),
        # NEWOBJ of ndarray with a shape, and _reconstruct with a large shape
        (b"\x80\x02cnumpy\nndarray\nJ\x00\xa3\xe1\x11\x85\x81.", "numpy.ndarray"),
        (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I300000000\ntS'b'\ntR.",
         "_reconstruct"),
    ],
)  # fmt: skip
def test_allocating_payloads_refused_before_allocating(payload, name, tmp_path):
    """Bug caught: an allow-listed builtin/class called with a size allocates (300 MB) first."""
    import time
    import tracemalloc

    tracemalloc.start()
    t = time.perf_counter()
    with pytest.raises(UnsafePickleError, match=name.replace(".", r"\.")):
        safe_load_pickle(payload)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10_000_000 and time.perf_counter() - t < 1.0
    # From a file, the message also names the file.
    p = tmp_path / "evil.pkl"
    p.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        read_model_file(p)


def test_object_array_state_shorter_than_shape_refused():
    """Bug caught: numpy 2 segfaults on an object array whose list is shorter than its shape."""
    good = pickle.dumps(np.array([1, "x"], dtype=object), protocol=2)
    bad = good.replace(b"K\x02\x85", b"J\x00\xe1\xf5\x05\x85")  # shape (2,) -> (10**8,)
    assert bad != good
    with pytest.raises(UnsafePickleError, match="object array of shape"):
        safe_load_pickle(bad)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_numpy_and_sparse_pickles_still_load(protocol):
    """Bug caught: the call checks refuse what numpy/scipy pickles legitimately contain."""
    d = {
        "a": np.arange(6.0).reshape(2, 3), "f": np.asfortranarray(np.ones((2, 3), np.float32)),
        "o": np.array([1, "x"], dtype=object), "s": sp.csc_matrix(np.eye(3)),
        "sc": np.float64(2.5), "set": {1, 2}, "e": np.zeros((0, 4)),
    }  # fmt: skip
    r = safe_load_pickle(pickle.dumps(d, protocol=protocol))
    np.testing.assert_array_equal(r["a"], d["a"])
    np.testing.assert_array_equal(r["f"], d["f"])
    assert r["o"].tolist() == [1, "x"] and r["sc"] == 2.5 and r["set"] == {1, 2}
    assert (r["s"] != d["s"]).nnz == 0 and r["e"].shape == (0, 4)


def test_non_pickle_file_names_the_file(tmp_path):
    """Bug caught: a text file named .pkl gave a bare UnpicklingError traceback."""
    p = tmp_path / "text.pkl"
    p.write_text("hello world\nnot a pickle\n")
    with pytest.raises(ValueError, match="text.pkl") as info:
        read_model_file(p)
    assert info.value.__cause__ is not None
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="text.pkl"):
        read_model_file(p)


def test_atomic_save_npz_refuses_a_folder(tmp_path):
    """Bug caught: saving onto an existing folder raised IsADirectoryError naming the temp file."""
    from geo3d.body._safe_io import atomic_save_npz

    d = tmp_path / "out"
    d.mkdir()
    with pytest.raises(IsADirectoryError, match=str(d)) as info:
        atomic_save_npz(d, {"a": np.zeros(2)})
    assert ".tmp" not in str(info.value)
    assert list(d.iterdir()) == []


def _with_regressor(tmp_path, J, protocol=2):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({**tiny_body_dict(), "J_regressor": J}, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_crafted_sparse_index_arrays_are_refused_before_use(tmp_path, protocol):
    """Bug caught: a J_regressor whose indptr claims 1e8 entries crashed the process
    (segfault in scipy's compiled toarray, `geo3d body convert` exit 139); an out-of-range
    index read other memory; a declared 200000 x 200000 shape was made dense (298 GiB).
    Each is refused by name, before anything reads the matrix; valid csr/csc/coo load."""
    d = tiny_body_dict()
    ref = d["J_regressor"]
    for kind in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.csr_array, sp.csc_array,
                 sp.coo_array):
        out = read_model_file(_with_regressor(tmp_path, kind(ref), protocol))["J_regressor"]
        np.testing.assert_array_equal(out.toarray(), ref)
    bad = []
    J = sp.csr_matrix(ref)
    J.indptr = J.indptr.copy()
    J.indptr[-1] = 10**8
    bad.append(J)
    for k, v in ((0, 24), (3, -1)):  # csc rows: 24 is one past the last
        J = sp.csc_matrix(ref)
        J.indices = J.indices.copy()
        J.indices[k] = v
        bad.append(J)
    J = sp.csr_matrix(ref)
    J.indptr = J.indptr[::-1].copy()  # decreasing
    bad.append(J)
    J = sp.coo_matrix(ref)
    J.coords = (J.coords[0], J.coords[1] + ref.shape[1])
    bad.append(J)
    for J in bad:
        with pytest.raises(UnsafePickleError, match="model.pkl: pickle: malformed .* sparse"):
            read_model_file(_with_regressor(tmp_path, J, protocol))
    with pytest.raises(UnsafePickleError, match=r"shape \(200000, 200000\): more than"):
        read_model_file(_with_regressor(tmp_path, sp.csr_matrix((200000, 200000)), protocol))
    with pytest.raises(UnsafePickleError, match="refusing a dia sparse matrix"):
        read_model_file(_with_regressor(tmp_path, sp.dia_matrix(ref), protocol))


def test_upper_case_extensions_are_read(tmp_path):
    """Bug caught: SMPL_MALE.PKL / model.NPZ (copied from a case-insensitive file system)
    were refused as 'expected a .pkl or .npz model file'."""
    d = tiny_body_dict()
    (tmp_path / "M.PKL").write_bytes(pickle.dumps(d, protocol=2))
    np.savez(tmp_path / "m.npz", **d)
    (tmp_path / "m.npz").rename(tmp_path / "M.NPZ")
    for name in ("M.PKL", "M.NPZ"):
        np.testing.assert_array_equal(read_model_file(tmp_path / name)["v_template"],
                                      d["v_template"])
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ValueError, match="expected a .pkl or .npz model file"):
        read_model_file(tmp_path / "m.txt")
