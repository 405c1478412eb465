"""Smoke test of the `make demo` job at toy size (generation + two fits + open3d baseline)."""

from __future__ import annotations

import json

from geo3d.cli import main as geo3d_main


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    gen = ('{"num_objects": 6, "min_parts": 2, "max_parts": 3, "seed": 0, '
           '"fractures_per_object": 1, "val_fraction": 0.4, "progress": false}')
    args = ["assembly", "demo", "--out", str(out), "--max-epochs", "1",
            "--data.generate", gen, "--data.num_points", "32", "--data.max_parts", "3",
            "--model.feat_dim", "8", "--model.hidden", "[4, 4, 8]", "--model.k", "5",
            "--model.d_model", "16", "--trainer.enable_progress_bar", "false"]
    assert geo3d_main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["runs"]) == {"equivariant", "global"}
    for run in res["runs"].values():
        assert {"absolute", "anchor"} <= set(run["metrics"])
        assert run["train_parts_per_s"] > 0
    assert "PA %" in res["table"]
    assert list(out.rglob("pictures_test/*.png")) and list(out.rglob("pictures_test/*.ply"))


def test_previous_results_only_from_the_same_config_set(tmp_path):
    from geo3d.apps.assembly._demo import _previous_results

    p = tmp_path / "results.json"
    assert _previous_results(p, "demo") == {}  # missing
    p.write_text("{not json")
    assert _previous_results(p, "demo") == {}  # unreadable
    p.write_text(json.dumps({"config_set": "long", "runs": {"global": {}}}))
    assert _previous_results(p, "demo") == {}
    assert _previous_results(p, "long")["runs"] == {"global": {}}
