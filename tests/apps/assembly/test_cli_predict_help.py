"""`geo3d assembly predict`: --help shows the piece-assembly options (plus the LightningCLI
form); warnings from assemble() print as one line each, once."""

from __future__ import annotations

import warnings

import torch
from geo3d.apps.assembly import cli


def test_predict_help_shows_piece_options(capsys):
    assert cli.main(["predict", "--help"]) == 0
    out = capsys.readouterr().out
    for opt in ("--checkpoint", "--pieces", "--num-points", "--method", "--no-refine",
                "--out"):
        assert opt in out, opt
    # the LightningCLI form is named, not hidden
    assert "--config CFG --ckpt_path CKPT" in " ".join(out.split())
    assert cli.main(["predict", "-h"]) == 0
    assert "--pieces" in capsys.readouterr().out


def test_predict_warnings_are_one_line_once(capsys, monkeypatch, tmp_path):
    import geo3d.apps.assembly._api as api

    def fake_assemble(pieces, checkpoint, **kw):
        for _ in range(2):
            warnings.warn("assemble: the checkpoint has no correspondence head (desc_dim=0);\n"
                          "method='matching' falls back", UserWarning, stacklevel=2)
        return torch.eye(4, dtype=torch.float64).repeat(len(pieces), 1, 1)

    monkeypatch.setattr(api, "assemble", fake_assemble)
    out = tmp_path / "poses.json"
    assert cli.main(["predict", "--checkpoint", "c.ckpt", "--pieces", "a.obj", "b.obj",
                     "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err == ("geo3d assembly predict: warning: assemble: the checkpoint has no "
                   "correspondence head (desc_dim=0); method='matching' falls back\n")
    assert out.is_file()
