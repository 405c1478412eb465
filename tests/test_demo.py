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
