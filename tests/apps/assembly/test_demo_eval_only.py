"""`geo3d assembly demo --eval-only`: re-evaluates the checkpoint an earlier demo run
recorded, without training, with the model arguments of that run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from geo3d.cli import main as geo3d_main

GEN = ('{"num_objects": 6, "min_parts": 2, "max_parts": 3, "seed": 0, '
       '"fractures_per_object": 1, "val_fraction": 0.4, "progress": false}')
TINY = ["--data.generate", GEN, "--data.num_points", "32", "--data.max_parts", "3",
        "--model.feat_dim", "8", "--model.hidden", "[4, 4, 8]", "--model.k", "5",
        "--model.d_model", "16", "--model.num_layers", "1", "--model.num_heads", "2",
        "--model.num_pictures", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false"]
PROTOCOLS = ("absolute", "anchor")


def _scores(run: dict) -> dict:
    """Every method's metrics of both protocols (timings left out: wall clock)."""
    return {m: {p: r[p] for p in PROTOCOLS} for m, r in run["metrics"]["methods"].items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval_only") / "demo"
    assert geo3d_main(["assembly", "demo", "--out", str(out), "--max-epochs", "1",
                       "--models", "equivariant", "--no-registration", *TINY]) == 0
    return out


def _eval_only(out: Path, monkeypatch) -> dict:
    import lightning.pytorch as pl

    def no_fit(*args, **kwargs):
        raise AssertionError("--eval-only must not train")

    with monkeypatch.context() as m:
        m.setattr(pl.Trainer, "fit", no_fit)
        assert geo3d_main(["assembly", "demo", "--out", str(out), "--eval-only",
                           "--models", "equivariant"]) == 0
    return json.loads((out / "results.json").read_text())


def test_eval_only_reevaluates_the_recorded_checkpoint(trained, monkeypatch):
    before = json.loads((trained / "results.json").read_text())
    run = before["runs"]["equivariant"]
    ckpt = Path(run["checkpoint"])
    data = ckpt.read_bytes()
    assert run["global_step"] == 1  # one training step at toy size
    after = _eval_only(trained, monkeypatch)
    new = after["runs"]["equivariant"]
    assert ckpt.read_bytes() == data  # no training wrote over it
    assert new["evaluated_checkpoint"] == str(ckpt)
    assert new["global_step"] == run["global_step"]  # a fresh model would report step 0
    # the weights tested after training are last.ckpt's: identical scores, every method
    assert _scores(new) == _scores(run)
    # the training records stay; the new test run has its own log dir and pictures
    assert new["fit_seconds"] == run["fit_seconds"] and new["command"] == run["command"]
    assert new["log_dir"] != run["log_dir"]
    assert list(Path(new["pictures"]).glob("*.png"))
    assert after["eval_only"]["command"].endswith("--eval-only --models equivariant")
    assert after["table"] and after["parts_table"] and after["timing_table"]

    # the checkpoint's weights are what is evaluated: perturbed weights, other scores
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(0)
    for k, v in ck["state_dict"].items():
        if v.is_floating_point() and "running" not in k:
            ck["state_dict"][k] = v + 0.5 * torch.randn(v.shape, generator=g, dtype=v.dtype)
    torch.save(ck, ckpt)
    perturbed = _eval_only(trained, monkeypatch)["runs"]["equivariant"]
    assert _scores(perturbed)["network"] != _scores(run)["network"]


def test_eval_only_needs_a_recorded_checkpoint(tmp_path, capsys):
    out = tmp_path / "none"
    with pytest.raises(SystemExit):
        geo3d_main(["assembly", "demo", "--out", str(out), "--eval-only"])
    assert "--eval-only: expected" in capsys.readouterr().err
    out.mkdir()
    (out / "results.json").write_text(json.dumps({
        "config_set": "demo", "runs": {"equivariant": {"checkpoint": str(out / "gone.ckpt")}}}))
    with pytest.raises(SystemExit):
        geo3d_main(["assembly", "demo", "--out", str(out), "--eval-only"])
    assert "gone.ckpt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        geo3d_main(["assembly", "demo", "--out", str(out), "--eval-only", "--max-epochs", "2"])
    assert "--max-epochs" in capsys.readouterr().err
