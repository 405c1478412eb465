"""AssemblyModule._pipeline timings: when the batch call raises and objects are re-run one
by one, only successful calls are counted (a failed attempt's partial timings are dropped)
and ``total`` sums over every object. Regression: the failed batch and the failed object
timed into the same dict, so stages were counted twice."""

from __future__ import annotations

import types

import geo3d.apps.assembly._pipeline as pipeline_mod
import torch
from geo3d.apps.assembly._module import AssemblyModule


def test_timings_count_successful_calls_once(monkeypatch):
    calls = []

    def fake(points, valid, out, method="matching", refine=True, generator=None,
             timings=None, **kw):
        B = points.shape[0]
        ids = [int(points[b, 0, 0, 0]) for b in range(B)]
        calls.append((method, ids))
        timings["objects"] = timings.get("objects", 0) + B
        if method == "network":
            timings["total"] = timings.get("total", 0.0) + 0.5 * B
            return torch.eye(4).repeat(B, points.shape[1], 1, 1)
        timings["match"] = timings.get("match", 0.0) + 1.0 * B  # timed before the failure
        if 1 in ids:
            raise RuntimeError("singular")
        timings["total"] = timings.get("total", 0.0) + 10.0 * B
        return torch.eye(4).repeat(B, points.shape[1], 1, 1) * (1 + torch.tensor(ids))[
            :, None, None, None]

    monkeypatch.setattr(pipeline_mod, "assemble_from_outputs", fake)
    points = torch.arange(3.0)[:, None, None, None].expand(3, 2, 4, 3).clone()
    valid = torch.ones(3, 2, dtype=torch.bool)
    pred = {"desc": torch.zeros(3, 2, 4, 5)}
    host = types.SimpleNamespace(hparams=types.SimpleNamespace(refine=True), _eval_gen=None,
                                 _uses_templates=lambda method: False)
    tim: dict[str, float] = {}
    T, errors = AssemblyModule._pipeline(host, points, valid, pred, "matching", tim)
    assert errors == 1
    assert calls == [("matching", [0, 1, 2]), ("matching", [0]), ("matching", [1]),
                     ("network", [1]), ("matching", [2])]
    # objects 0 and 2 matched (1 s each), object 1 by the network (0.5 s): counted once each
    assert tim == {"objects": 3, "match": 2.0, "total": 20.5}
    assert T[:, 0, 0, 0].tolist() == [1.0, 1.0, 3.0]  # object 1 got the network's poses
