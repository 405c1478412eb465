from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

from geo3d.body import tiny_body_dict


@pytest.fixture
def fake_chumpy_pickle(tmp_path, monkeypatch):
    """An official-style SMPL pickle of the tiny body holding stand-in chumpy arrays."""
    mod = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x, dtype=np.float64)
            self._dirty_vars = {"x"}

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    mod.Ch = Ch
    monkeypatch.setitem(sys.modules, "chumpy", types.ModuleType("chumpy"))
    monkeypatch.setitem(sys.modules, "chumpy.ch", mod)
    d = tiny_body_dict()
    data = {k: Ch(v) if k in ("v_template", "shapedirs", "weights") else v for k, v in d.items()}
    data["J_regressor"] = sp.csc_matrix(d["J_regressor"])
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    return path
