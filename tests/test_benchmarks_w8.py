"""W8 smoke tests: tiny networks, every peer checked against this library, files written.

No timing claims: the smoke policy times two tiny rounds only. The jet peer is exercised
where an interpreter with jet-for-pytorch is found (``$HQ_JET_PYTHON`` or
``/work/venv312/bin/python``); elsewhere it must be reported as unavailable, with the reason.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from benchmarks import harness, w8  # noqa: E402

JET_PY = os.environ.get("HQ_JET_PYTHON", w8.DEFAULT_JET_PYTHON)


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "w8.json").read_text())["rows"]


def test_smoke_without_jet_agrees_and_writes(tmp_path):
    rc = w8.main(
        ["--smoke", "--no-paper", "--jet-python", "none", "--out", str(tmp_path), "--no-plots"],
        configure_threads=False,
    )
    assert rc == 0
    for ext in ("md", "csv", "json"):
        assert (tmp_path / f"w8.{ext}").is_file()
    rows = _rows(tmp_path)
    # every operator and task, one d: ours and nested AD timed after agreeing, jet reported
    assert {(r["op"], r["task"]) for r in rows} == {(o, t) for o in w8.OPS for t in w8.TASKS}
    for r in rows:
        if r["peer"] == "jet":
            assert r["status"] == "unavailable" and "--jet-python none" in r["note"]
        else:
            assert r["status"] in harness.TIMED, r
            assert r["rel_err"] <= 1e-10
    md = (tmp_path / "w8.md").read_text()
    assert "## Targets" in md and "torch.func" in md and "jet disabled" in md
    with open(tmp_path / "w8.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)


def test_nested_ad_matches_ours_on_one_point():
    """The nested-AD peer computes the same three quantities (and gradients) as this library."""
    pt = w8.Point("w5", "biharmonic", "step", 2, 4, "float64", (5, 5))
    net = w8.build_net(pt.d, pt.widths)
    weights, x = w8.weights_of(net), w8.inputs(pt)
    for op in w8.OPS:
        for task in w8.TASKS:
            p = w8.Point("w5", op, task, 2, 4, "float64", (5, 5))
            a, b = w8._ours(p, weights, x), w8._torch_func(p, weights, x)
            err, where = harness.compare(b.to_numpy(b.call()), a.to_numpy(a.call()))
            assert err <= 1e-12, (op, task, where, err)


def test_bad_operator_is_refused():
    with pytest.raises(ValueError, match="unknown W8 operators"):
        w8.main(
            ["--smoke", "--ops", "laplace", "--jet-python", "none", "--out", "/nonexistent"],
            configure_threads=False,
        )


def test_replot_rebuilds_from_json(tmp_path):
    data = {
        "title": "W8",
        "argv": [],
        "machine": {},
        "rows": [
            dict(
                net="w64",
                op="laplacian",
                task="eval",
                d=2,
                n=8,
                dtype="float64",
                widths=[64],
                device="cpu",
                peer=p,
                status="ok",
                note="",
                min_s=t,
                median_s=t,
                peak_bytes=1000.0,
                rel_err=0.0,
            )
            for p, t in (("ours", 1.0), ("jet", 2.0), ("torch.func", 2.0))
        ],
    }
    (tmp_path / "w8.json").write_text(json.dumps(data))
    assert w8.main(["--replot", str(tmp_path), "--no-plots"], configure_threads=False) == 0
    md = (tmp_path / "w8.md").read_text()
    assert "2.00×" in md and "**no**" in md  # 2× vs nested AD misses the 3× target


@pytest.mark.skipif(not Path(JET_PY).exists(), reason=f"no jet interpreter at {JET_PY}")
def test_jet_child_agrees_on_one_point():
    """jet in its own interpreter, same weights through a .npz, checked against this library."""
    pt = w8.Point("w5", "biharmonic", "step", 2, 4, "float64", (5, 5))
    net = w8.build_net(pt.d, pt.widths)
    weights, x = w8.weights_of(net), w8.inputs(pt)
    r = w8._ours(pt, weights, x)
    ref = r.to_numpy(r.call())
    pol = harness.Policy(rounds=2, min_round_s=0.001, budget_s=0.05)
    rec = w8.jet_child(pt, weights, x, ref, pol, JET_PY, 1, 600)
    if rec["status"] == "error" and "No module named" in rec["note"]:
        pytest.skip(rec["note"])
    assert rec["status"] in harness.TIMED, rec
    assert rec["rel_err"] <= 1e-10 and np.isfinite(rec["min_s"])


def test_gpu_check_w8_stage_parses():
    """gpu_check.sh's W8 stage names options benchmarks.w8 accepts."""
    script = (Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh").read_text()
    line = script.split("-m benchmarks.w8", 1)[1].split("\n\n", 1)[0]
    argv = [a.strip('"') for a in line.replace("\\\n", " ").split()]
    assert "--device" in argv and "cuda" in argv
    args = w8.parser().parse_args([a for a in argv if a != "--out" and not a.startswith("$RES")])
    assert args.device == "cuda" and args.dtypes == "float32,float64"
