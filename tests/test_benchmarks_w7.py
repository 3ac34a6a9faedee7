"""Smoke tests of W7 (benchmarks/w7.py): the tiniest configuration of both parts, no timing claims.

They check that every peer agrees with this library before it is timed (the agreement
column), that the runs are recorded with their statuses, and that the Markdown, CSV,
JSON and PNG files are written.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("torch")

from benchmarks import w7, w7_accuracy  # noqa: E402


def _files(out, stem):
    for ext in ("md", "csv", "json", "png"):
        assert (out / f"{stem}.{ext}").stat().st_size > 0, f"{stem}.{ext} not written"
    data = json.loads((out / f"{stem}.json").read_text())
    with open(out / f"{stem}.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(data["rows"])
    return data, (out / f"{stem}.md").read_text()


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        w7.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--part", "--quick", "--out", "--budgets", "--optimizers", "--peers"):
        assert opt in out


def test_jacobian_part_smoke(tmp_path):
    peers = "ours-numpy,ours-torch,torch.func"
    w7.main(
        ["--part", "jacobian", "--smoke", "--out", str(tmp_path), "--peers", peers, "--repeat", "2"],
        configure_threads=False,
    )
    data, md = _files(tmp_path, w7.STEM)
    rows = data["rows"]
    assert {r["peer"] for r in rows} == set(peers.split(","))
    assert {(r["n"], r["d"], r["width"]) for r in rows} == {(16, 2, 8), (16, 3, 8)}
    for r in rows:
        assert r["status"] in ("ok", "once"), r
        assert r["rel_err"] <= 1e-12, r  # float64 against this library's NumPy J
        assert r["min_s"] > 0 and r["peak_bytes"] is not None
        assert r["ratios"]["ours-numpy"] > 0
    assert "speed-up vs torch.func" in md and "Agreement with this library" in md
    assert "| torch.func | float64 |" in md


@pytest.mark.skipif(
    importlib.util.find_spec("jax") is None or importlib.util.find_spec("folx") is None,
    reason="jax and folx not installed (PYTHONPATH=/work/benchlib provides them)",
)
def test_jacobian_part_jax_peer(tmp_path):
    w7.main(
        [
            "--part",
            "jacobian",
            "--smoke",
            "--out",
            str(tmp_path),
            "--peers",
            "ours-numpy,jax+folx",
            "--d",
            "2",
            "--repeat",
            "2",
            "--no-plots",
        ],
        configure_threads=False,
    )
    rows = json.loads((tmp_path / f"{w7.STEM}.json").read_text())["rows"]
    jx = [r for r in rows if r["peer"] == "jax+folx"]
    assert jx and all(r["status"] == "ok" and r["rel_err"] <= 1e-12 for r in jx)
    assert all(r["compile_s"] is not None for r in jx)


def test_jax_peer_unavailable_is_a_result(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "folx" else real(m, *a))
    w7.main(
        [
            "--part",
            "jacobian",
            "--smoke",
            "--out",
            str(tmp_path),
            "--peers",
            "ours-numpy,jax+folx",
            "--repeat",
            "2",
            "--no-plots",
        ],
        configure_threads=False,
    )
    rows = json.loads((tmp_path / f"{w7.STEM}.json").read_text())["rows"]
    jx = [r for r in rows if r["peer"] == "jax+folx"]
    assert jx and all(r["status"] == "unavailable" and "not installed" in r["note"] for r in jx)


def test_a_point_without_reference_is_recorded_not_measured(tmp_path, monkeypatch):
    def refuse(lib):
        def make(*a):
            raise MemoryError("reference J does not fit")

        return make

    monkeypatch.setattr(w7, "_ours", refuse)  # the float64 reference is built through w7._ours
    w7.main(
        ["--part", "jacobian", "--smoke", "--out", str(tmp_path), "--peers", "torch.func", "--no-plots"],
        configure_threads=False,
    )
    data, md = (
        json.loads((tmp_path / f"{w7.STEM}.json").read_text()),
        (tmp_path / f"{w7.STEM}.md").read_text(),
    )
    assert {r["status"] for r in data["rows"]} == {"not-checked"}
    assert all("reference J does not fit" in r["note"] for r in data["rows"]) and "not-checked" in md


def test_accuracy_part_smoke(tmp_path):
    w7.main(
        ["--part", "accuracy", "--smoke", "--out", str(tmp_path), "--budgets", "0.2"],
        configure_threads=False,
    )
    data, md = _files(tmp_path, w7_accuracy.STEM)
    rows = data["rows"]
    assert [r["optimizer"] for r in rows] == list(w7_accuracy.OPTIMIZERS)
    assert len({r["loss0"] for r in rows}) == 1  # the same initial weights and points for all
    for r in rows:
        assert r["status"] == "ok", r
        assert r["steps"] >= 1 and math.isfinite(r["final_error"])
        assert r["curve"][0][:2] == [0.0, 0] and r["curve"][-1][1] == r["steps"]
    tf = next(r for r in rows if r["optimizer"] == w7_accuracy.TF_GN)
    assert tf["rel_err"] <= 1e-12  # the peer's J agrees with this library's before it runs
    gn = next(r for r in rows if r["optimizer"] == w7_accuracy.OURS_GN)
    assert gn["loss"] <= gn["loss0"]  # Gauss-Newton accepts only steps that lower the loss
    assert "## Targets (issue 22)" in md and "rel. L2 ≤ 1e-10 within 10 s" in md
    assert any("≥ 5× faster than" in t["target"] for t in data["targets"])
    # --replot rebuilds the table from the JSON without measuring
    (tmp_path / f"{w7_accuracy.STEM}.md").unlink()
    w7.main(["--part", "accuracy", "--replot", str(tmp_path), "--no-plots"], configure_threads=False)
    assert (tmp_path / f"{w7_accuracy.STEM}.md").read_text().startswith("# W7 (b)")


def test_accuracy_part_other_problems_and_kernel_solver(tmp_path):
    # heat 1-D (gradient and Hessian diagonal) and the 10-D problem (P > N: kernel solver)
    w7.main(
        [
            "--part",
            "accuracy",
            "--smoke",
            "--out",
            str(tmp_path),
            "--budgets",
            "0.1",
            "--problems",
            "heat1d,poisson10d",
            "--optimizers",
            "GN,GN (torch.func J)",
            "--no-plots",
        ],
        configure_threads=False,
    )
    rows = json.loads((tmp_path / f"{w7_accuracy.STEM}.json").read_text())["rows"]
    assert [(r["problem"], r["status"]) for r in rows] == [
        ("heat1d", "ok"),
        ("heat1d", "ok"),
        ("poisson10d", "ok"),
        ("poisson10d", "ok"),
    ]
    assert all(r["rel_err"] <= 1e-12 for r in rows if r["optimizer"] == w7_accuracy.TF_GN)
    ten = [r for r in rows if r["problem"] == "poisson10d"]
    assert all(r["P"] > r["N"] and r["solver"] == "kernel" for r in ten)


def test_unknown_optimizer_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown optimizers"):
        w7.main(
            ["--part", "accuracy", "--smoke", "--out", str(tmp_path), "--optimizers", "SGD"],
            configure_threads=False,
        )
