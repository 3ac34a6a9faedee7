"""The benchmark runner runs end to end on a tiny configuration and writes its table.

Only that it executes is checked here — never timings (benchmarks are not
timed unit tests).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

# the benchmarks package lives beside the library, at the repository root
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

run = pytest.importorskip("benchmarks.run", reason="benchmarks package not importable")

PEERS = "ours-numpy,ours-torch,hessQuik-0.0.6,torch.func"


def test_smoke_run_writes_table(tmp_path):
    rc = run.main(
        ["--smoke", "--out", str(tmp_path), "--peers", PEERS, "--no-plots", "--no-progress"],
        configure_threads=False,
    )
    assert rc == 0
    md = (tmp_path / "results.md").read_text()
    assert "## Targets" in md and "| n | d |" in md and "ours-numpy" in md
    data = json.loads((tmp_path / "results.json").read_text())
    rows = [r for r in data["rows"] if r["peer"] == "ours-numpy"]
    assert [r["d"] for r in rows] == [1, 4]
    # every peer that ran agreed with this library before it was timed
    for r in data["rows"]:
        assert r["status"] in ("ok", "skip-time"), r
        if r["status"] == "ok":
            assert r["rel_err"] <= 1e-8 and r["min_s"] > 0 and r["flops"] > 0
    assert (tmp_path / "results.csv").exists() and (tmp_path / "machine.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_smoke_plots(tmp_path):
    rc = run.main(
        ["--smoke", "--out", str(tmp_path), "--peers", "ours-numpy", "--no-progress"], configure_threads=False
    )
    assert rc == 0
    assert (tmp_path / "w1_time_vs_d.png").stat().st_size > 0
