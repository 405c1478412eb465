"""``geo3d report`` / ``geo3d demo``: the equivariance report command."""

from __future__ import annotations

import re

import pytest

import geo3d._demo as demo
from geo3d.cli import main


def test_report_passes_and_is_readable(capsys):
    code = main(["report"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[-1].startswith("PASS: all ") and "were caught" in lines[-1]
    assert "How to read it" in out
    for section in ("1. Group axioms", "2. Representations are homomorphisms", "3. Example"):
        assert section in out
    for name in (
        "SO2()",
        "O2()",
        "CyclicGroup(4)",
        "DihedralGroup(3)",
        "OcticGroup()",
        "SO3()",
        "O3()",
        "IcosahedralGroup()",
        "SE3()",
        "O(1,3)",
        "SO+(1,3)",
    ):
        assert name in out, name
    # the non-equivariant examples are shown as caught, with their explanation
    assert out.count("caught ✓") == 5
    assert "pseudovector" in out
    cross_o3 = next(line for line in lines if "a × b as a vector" in line and " O3() " in line)
    err = float(cross_o3.split()[-4])
    assert err > 1e-2  # a real violation, not rounding
    # every axiom / homomorphism row is ok, and their numbers are at rounding level
    rows = [line for line in lines if re.search(r"\d\.\de[-+]\d\d\s+ok$", line)]
    assert len(rows) >= 10 + 20
    assert "FAIL" not in out


def test_report_float32(capsys):
    assert main(["report", "--samples", "4", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "float32" in out and out.strip().splitlines()[-1].startswith("PASS")


def test_report_fails_with_nonzero_exit(capsys, monkeypatch):
    real = demo._examples

    def wrong_expectations(off):
        # claim the O(3) cross product is a vector: the checker catches it -> mismatch
        return [ex[:5] + (True,) + ex[6:] for ex in real(off)]

    monkeypatch.setattr(demo, "_examples", wrong_expectations)
    assert main(["report", "--samples", "4"]) == 1
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("FAIL: 5 of ") and "a × b as a vector O3()" in last


def test_bad_arguments():
    with pytest.raises(SystemExit) as info:
        main(["report", "--samples", "0"])
    assert info.value.code == 2


class TestCliErrors:
    """User errors print one line (exit 2); --debug / GEO3D_DEBUG=1 show the traceback;
    other exceptions (bugs) always propagate."""

    def _patched(self, monkeypatch, exc):
        def boom(ns):
            raise exc

        real = demo.add_parser

        def add_parser(sub):
            real(sub)
            sub.choices["report"].set_defaults(func=boom)

        monkeypatch.setattr(demo, "add_parser", add_parser)

    @pytest.mark.parametrize("exc", [ValueError("points: expected shape (N, 3), got (4, 2)"),
                                     FileNotFoundError("no such file 'a.obj'")])
    def test_user_error_is_one_line_exit_2(self, monkeypatch, capsys, exc):
        self._patched(monkeypatch, exc)
        monkeypatch.delenv("GEO3D_DEBUG", raising=False)
        assert main(["report"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith("geo3d: error: ") and str(exc) in err and "--debug" in err
        # --debug / GEO3D_DEBUG=1: the traceback, and still exit code 2 (a user error)
        assert main(["--debug", "report"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("Traceback") and err.rstrip().endswith(
            f"{type(exc).__name__}: {exc}")
        monkeypatch.setenv("GEO3D_DEBUG", "1")
        assert main(["report"]) == 2
        assert "Traceback" in capsys.readouterr().err

    def test_geo3d_error_classes_count_as_user_errors(self, monkeypatch, capsys):
        from geo3d.apps.assembly import CheckpointError

        self._patched(monkeypatch, CheckpointError("x.ckpt", "checkpoint 'x.ckpt' is truncated"))
        monkeypatch.delenv("GEO3D_DEBUG", raising=False)
        assert main(["report"]) == 2
        assert "x.ckpt" in capsys.readouterr().err

    def test_bugs_propagate(self, monkeypatch):
        self._patched(monkeypatch, RuntimeError("an internal bug"))
        monkeypatch.delenv("GEO3D_DEBUG", raising=False)
        with pytest.raises(RuntimeError, match="internal bug"):
            main(["report"])
