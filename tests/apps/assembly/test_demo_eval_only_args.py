"""`geo3d assembly demo --eval-only` with results.json paths from another working
directory and hand-edited results.json files (tester report 10:30, items 3 and 6).
No training: the evaluation itself is replaced by a stub that records its checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import geo3d.apps.assembly._demo as demo
import pytest

from geo3d.cli import main as geo3d_main


class _Evaluated(Exception):
    pass


def _write(out: Path, runs: object, **extra) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"config_set": "demo", "runs": runs,
                                                  **extra}))


def _run(out: Path, *args: str) -> None:
    geo3d_main(["assembly", "demo", "--out", str(out), "--eval-only", *args])


def _record(ckpt: str) -> dict:
    return {"checkpoint": ckpt, "fit_seconds": 1.0, "train_parts_per_s": 1.0,
            "num_parameters": 3, "metrics": {}}


@pytest.mark.parametrize("recorded", ["cwd_relative", "out_relative", "absolute"])
def test_eval_only_finds_the_checkpoint_from_another_cwd(tmp_path, monkeypatch, recorded):
    """Before: results.json stored 'runs/demo/equivariant/.../last.ckpt' relative to the
    training run's cwd, and --eval-only from another cwd could not find it."""
    out = tmp_path / "work" / "runs" / "demo"
    ckpt = out / "equivariant" / "version_0" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    rec = {"cwd_relative": "runs/demo/equivariant/version_0/checkpoints/last.ckpt",
           "out_relative": "equivariant/version_0/checkpoints/last.ckpt",
           "absolute": str(ckpt)}[recorded]
    _write(out, {"equivariant": _record(rec)})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    seen = {}

    def fake_test(name, configs, out_, data_root, extra, checkpoint, old):
        seen.update(path=checkpoint, old=old)
        raise _Evaluated

    monkeypatch.setattr(demo, "_test_checkpoint", fake_test)
    with pytest.raises(_Evaluated):
        _run(out, "--models", "equivariant")
    assert Path(seen["path"]).is_absolute() and os.path.samefile(seen["path"], ckpt)
    assert seen["old"]["checkpoint"] == str(seen["path"])  # rewritten absolute


def test_find_checkpoint_missing_is_none(tmp_path):
    assert demo._find_checkpoint("runs/demo/nothing.ckpt", tmp_path) is None
    assert demo._find_checkpoint(str(tmp_path / "nothing.ckpt"), tmp_path) is None


@pytest.mark.parametrize("runs,extra,match", [
    (None, {}, "'runs'"),
    ("equivariant", {}, "'runs'"),
    ({"equivariant": "last.ckpt"}, {}, "equivariant run"),
    ({"equivariant": {"checkpoint": 3}}, {}, "equivariant checkpoint"),
    ({"equivariant": {"checkpoint": "CKPT"}}, {}, "fit_seconds"),
    ({"equivariant": _record("CKPT"), "global": "x"}, {}, "global run"),
    ({"equivariant": _record("CKPT")}, {"registration": "x"}, "'registration'"),
])
def test_eval_only_rejects_bad_results_json(tmp_path, capsys, runs, extra, match):
    """Before: runs=null -> TypeError, a string run -> AttributeError."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "last.ckpt").write_bytes(b"x")
    runs = json.loads(json.dumps(runs).replace("CKPT", str(out / "last.ckpt")))
    _write(out, runs, **extra)
    with pytest.raises(SystemExit):
        _run(out, "--models", "equivariant")
    err = capsys.readouterr().err
    assert "--eval-only: expected" in err and match in err


@pytest.mark.parametrize("models", ["", ",", " , "])
def test_empty_models_names_the_option(tmp_path, capsys, models):
    with pytest.raises(SystemExit):
        _run(tmp_path / "demo", "--models", models)
    assert "--models: expected equivariant and/or global" in capsys.readouterr().err
