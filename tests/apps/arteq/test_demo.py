"""``geo3d arteq demo`` end to end on the tiny body (slow: trains two models)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from geo3d.cli import main as geo3d_main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import TINY_YAML  # noqa: E402


@pytest.mark.slow
def test_demo_trains_both_models_and_writes_the_table(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML.format(root=tmp_path))
    out = tmp_path / "demo"
    assert geo3d_main(["arteq", "demo", "--out", str(out), "--config", str(cfg)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["runs"]) == {"equivariant", "baseline"}
    for name, run in res["runs"].items():
        assert set(run["metrics"]) == {"in_dist", "ood", "rotated", "partial"}, name
        assert Path(run["checkpoint"]).is_file()
        assert list(Path(run["pictures"]).glob("*.png"))
    assert "equivariant" in res["table"] and "partial" in res["table"]


def test_format_table_lists_every_model_and_condition():
    from geo3d.apps.arteq._demo import format_table

    t = format_table({"equivariant": {"in_dist": {"v2v_cm": 1.234, "mpjpe_cm": 2.0,
                                                  "part_acc": 0.5}},
                      "baseline": {"ood": {"v2v_cm": 3.0}}})
    lines = t.splitlines()
    assert lines[2].split() == ["equivariant", "in_dist", "1.23", "2.00", "50.00"]
    assert lines[3].split() == ["baseline", "ood", "3.00", "-", "-"]


def test_demo_layers_a_repeated_config_on_the_first(tmp_path, monkeypatch):
    # argparse kept only the last --config, so `--config demo --config more.yaml` trained on
    # more.yaml alone (module and data defaults for the rest); now the first is the base and
    # the others reach LightningCLI in order, as further --config files
    from geo3d.apps.arteq import _demo
    from geo3d.apps.arteq.cli import config_path

    seen = []

    def fake(name, config, out, extra):
        seen.append((name, config, list(extra)))
        raise SystemExit(0)

    monkeypatch.setattr(_demo, "train_and_test", fake)
    more = tmp_path / "more.yaml"
    more.write_text("model:\n  w_seg: 3.0\n")
    with pytest.raises(SystemExit):
        _demo.demo_main(["--out", str(tmp_path / "o"), "--config", "demo", "--config",
                         str(more), "--models", "equivariant", "--model.lr", "0.1"])
    name, config, extra = seen[0]
    assert config == config_path("demo")
    assert extra[:4] == ["--config", str(more), "--model.lr", "0.1"]
    seen.clear()
    with pytest.raises(SystemExit):  # default: the demo config alone
        _demo.demo_main(["--out", str(tmp_path / "o"), "--models", "equivariant"])
    assert seen[0][1] == config_path("demo") and "--config" not in seen[0][2]


def test_demo_honours_a_given_data_root(tmp_path, monkeypatch):
    # the demo appended its own --data.root after the user's, so the user's was ignored
    from geo3d.apps.arteq import _demo

    seen = []

    def fake(name, config, out, extra):
        seen.append(list(extra))
        raise SystemExit(0)

    monkeypatch.setattr(_demo, "train_and_test", fake)
    for given in (["--data.root", str(tmp_path / "d")], [f"--data.root={tmp_path / 'd'}"]):
        with pytest.raises(SystemExit):
            _demo.demo_main(["--out", str(tmp_path / "o"), "--models", "equivariant", *given])
        assert seen[-1] == given
    with pytest.raises(SystemExit):
        _demo.demo_main(["--out", str(tmp_path / "o"), "--models", "equivariant"])
    assert seen[-1] == ["--data.root", str(tmp_path / "o" / "data")]
