"""The benchmark runner runs end to end on a tiny configuration and writes its table.

Only that it executes is checked here — never timings (benchmarks are not
timed unit tests).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
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


def test_w6_training_step_smoke(tmp_path):
    """W6 (training step) on a tiny grid: every peer's loss and weight gradient agree
    with this library's before they are timed, and the tables are written."""
    pytest.importorskip("torch")  # the step and its peers are torch programs
    ts = pytest.importorskip("benchmarks.training_step")
    peers = "ours-auto,torch.func,hessQuik-0.0.6"
    rc = ts.main(
        [
            "--smoke",
            "--out",
            str(tmp_path),
            "--peers",
            peers,
            "--no-plots",
            "--repeat",
            "2",
            "--max-call-s",
            "1e3",
        ],
        configure_threads=False,
    )
    assert rc == 0
    data = json.loads((tmp_path / "w6.json").read_text())
    losses = {r["loss"] for r in data["rows"]}
    assert losses == {"laplacian", "gradient", "hessian_diagonal"}
    for r in data["rows"]:
        assert r["status"] in ("ok", "unavailable"), r
        if r["status"] == "ok":
            assert r["rel_err"] <= 1e-8 and r["min_s"] > 0 and r["rounds"] >= 2
    md = (tmp_path / "w6.md").read_text()
    assert "Ratio ours-auto / peer" in md and "load average" in md
    assert (tmp_path / "w6.csv").exists()


def test_w6_summary_marks_targets(tmp_path):
    """The W6 summary computes ours / peer from the rows and marks each target."""
    summary = pytest.importorskip("benchmarks.studies.w6_summary")

    def row(peer, loss, d, t):
        return dict(peer=peer, loss=loss, width=64, dtype="float64", d=d, status="ok", min_s=t)

    rows = [
        row("ours-auto", "laplacian", 2, 0.02),
        row("jax+folx", "laplacian", 2, 0.01),  # 2.00: missed
        row("torch.func", "laplacian", 2, 0.1),  # 0.20: met
        row("ours-auto", "gradient", 2, 0.01),
        row("jax", "gradient", 2, 0.02),  # 0.50: met (plain jax is the gradient loss's peer)
        row("torch.func", "gradient", 2, 0.012),  # 0.83: missed
    ]
    (tmp_path / "w6_x.json").write_text(json.dumps({"rows": rows}))
    assert summary.main(["--results", str(tmp_path)]) == 0
    md = (tmp_path / "w6_summary.md").read_text()
    assert "| 2 | 20.0 ms | 2.00 ✗ | 0.20 ✓ |" in md
    assert "| 2 | 10.0 ms | 0.50 ✓ | 0.83 ✗ |" in md
    assert "**2 targets met, 2 missed**" in md


def _pinn_arch_rows(tmp_path, peers, *extra):
    pa = pytest.importorskip("benchmarks.pinn_arch")
    argv = ["--smoke", "--out", str(tmp_path), "--peers", peers, "--repeat", "2", *extra]
    assert pa.main(argv, configure_threads=False) == 0
    data = json.loads((tmp_path / "pinn_arch.json").read_text())
    for r in data["rows"]:
        assert r["status"] in ("ok", "not-run"), r
        if r["status"] == "ok":
            assert r["rel_err"] <= 1e-8 and r["min_s"] > 0 and r["rounds"] >= 2, r
    return data


def test_pinn_arch_smoke(tmp_path):
    """Fourier features + gated MLP: this library's Laplacian and training step agree with
    torch.func's on the same weights before they are timed; the tables are written."""
    pytest.importorskip("torch")  # ours-torch and torch.func rows are asserted below
    data = _pinn_arch_rows(tmp_path, "ours-numpy,ours-torch,torch.func", "--no-plots")
    ok = {(r["task"], r["peer"]) for r in data["rows"] if r["status"] == "ok"}
    assert ok == {
        ("laplacian", "ours-numpy"),
        ("laplacian", "ours-torch"),
        ("laplacian", "torch.func"),
        ("step", "ours-torch"),
        ("step", "torch.func"),
    }
    # the step differentiates every weight: B of the Fourier features included
    step = next(r for r in data["rows"] if (r["task"], r["peer"]) == ("step", "torch.func"))
    assert step["ratios"]["ours-torch"] > 0 and step["n_params"] > 0
    md = (tmp_path / "pinn_arch.md").read_text()
    assert "Ratio ours-numpy / peer" in md and "Ratio ours-torch / peer" in md and "load average" in md
    assert (tmp_path / "pinn_arch.csv").read_text().startswith("task,d,n,dtype")


@pytest.mark.skipif(
    importlib.util.find_spec("jax") is None or importlib.util.find_spec("folx") is None,
    reason="needs jax and folx",
)
def test_pinn_arch_jax_peers_agree(tmp_path):
    """The JAX version of the network (hessian trace, folx Laplacian, folx training step)
    gives this library's results on the same weights; the plot is drawn."""
    data = _pinn_arch_rows(tmp_path, "ours-numpy,ours-torch,jax,jax+folx", "--profile-s", "0.1")
    ok = {(r["task"], r["peer"]) for r in data["rows"] if r["status"] == "ok"}
    assert {("laplacian", "jax"), ("laplacian", "jax+folx"), ("step", "jax+folx")} <= ok
    assert all(
        r["compile_s"] > 0 for r in data["rows"] if r["peer"].startswith("jax") and r["status"] == "ok"
    )
    # where a peer was faster, this library's call was profiled
    for pr in data["profiles"]:
        assert pr["faster_peers"] and pr["top"] and 0 < pr["top"][0]["own_frac"] <= 1
    if data["profiles"]:
        assert "## Profiles where a peer is faster" in (tmp_path / "pinn_arch.md").read_text()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "pinn_arch.png").stat().st_size > 0


def test_highdim_smoke_records_results_and_failures(tmp_path):
    """The high-dimensional harness runs in process on tiny sizes, cross-checks the
    methods against each other, and records a failing call instead of crashing."""
    hd = pytest.importorskip("benchmarks.highdim")
    methods = "numpy-forward,value,laplacian,hessian_diagonal,gradient,hutchinson-2,hutchinson-eq"
    rc = hd.main(
        [
            "--smoke",
            "--in-process",
            "--d",
            "50",
            "--nd",
            "1000",
            "--methods",
            methods,
            "--out",
            str(tmp_path),
            "--no-plots",
        ],
        configure_threads=False,
    )
    assert rc == 0
    data = json.loads((tmp_path / "highdim.json").read_text())
    st = {r["method"]: r for r in data["rows"]}
    assert all(r["status"] == "ok" for r in st.values()), st
    assert st["hutchinson-eq"]["k"] >= 2 and 0 < st["hutchinson-eq"]["rel_rms_error"] < 10
    chk = data["checks"]["50"]
    assert chk["laplacian vs sum(hessian_diagonal)"] < 1e-12
    assert chk["value: value vs numpy-forward"] < 1e-12
    # a refusal is a result: recorded with its message
    bad = hd.in_process(
        {"method": "no-such-method", "d": 3, "n": 2, "dtype": "float64", "width": 4, "depth": 1}
    )
    assert bad["status"] == "error" and "no-such-method" in bad["note"]
    assert "highdim" in (tmp_path / "highdim.md").read_text() or (tmp_path / "highdim.md").exists()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine runs the whole check")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_without_gpu_exits_cleanly(tmp_path):
    script = Path(_ROOT) / "benchmarks" / "gpu_check.sh"
    env = dict(os.environ, GPU_CHECK_RESULTS=str(tmp_path / "gpu"), OUT=str(tmp_path / "out"))
    p = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "no NVIDIA GPU found" in p.stdout
    summary = (tmp_path / "gpu" / "summary.txt").read_text()
    assert "no NVIDIA GPU on this machine" in summary
    assert (tmp_path / "out" / "gpu" / "summary.txt").exists()


def test_time_interleaved_alternates_the_calls():
    measure = pytest.importorskip("benchmarks.measure")
    import time

    calls: list = []

    def fast():
        calls.append("fast")

    def slow():
        calls.append("slow")
        time.sleep(0.002)

    tm = measure.time_interleaved({"fast": fast, "slow": slow}, rounds=3, min_round_s=0.0, max_total_s=10.0)
    # one calibration call each, then three rounds of one call each, in turn
    assert calls == ["fast", "slow"] + ["fast", "slow"] * 3
    assert tm["fast"].repeat == tm["slow"].repeat == 3 and tm["slow"].min_s >= 0.002 > tm["fast"].min_s
    # a call that would pass the time budget gets fewer rounds, but at least two
    tm = measure.time_interleaved({"slow": slow}, rounds=5, min_round_s=0.0, max_total_s=0.001)
    assert tm["slow"].repeat == 2 and len(tm["slow"].samples) == 2
    # rotate: each round starts one call later; a known time replaces the calibration call
    calls.clear()
    measure.time_interleaved(
        {"fast": fast, "slow": slow},
        rounds=3,
        min_round_s=0.0,
        max_total_s=10.0,
        rotate=True,
        known_s={"slow": 0.002},
    )
    assert calls == ["fast"] + ["fast", "slow", "slow", "fast", "fast", "slow"]


# --------------------------------------------------------------------------
# the harness (benchmarks/harness.py): checked on toy peers, no timing claims
# --------------------------------------------------------------------------


def _harness():
    return pytest.importorskip("benchmarks.harness")


def test_harness_compare_names_the_worst_array():
    h = _harness()
    import numpy as np

    ref = {"value": np.ones((4, 1)), "laplacian": np.full((4, 1), 2.0)}
    assert h.compare(dict(ref), ref) == (0.0, "value")
    err, where = h.compare({"value": np.ones((4, 1)), "laplacian": np.full((4, 1), 2.1)}, ref)
    assert err == pytest.approx(0.05) and where == "laplacian"
    assert h.compare({"value": np.ones((4, 1))}, ref)[0] == float("inf")
    assert h.compare({"value": np.ones((3, 1)), "laplacian": ref["laplacian"]}, ref)[1].startswith(
        "value has"
    )
    # only the first rows are compared where asked
    big = {"value": np.ones((10, 1)), "laplacian": np.full((10, 1), 2.0)}
    assert h.compare(big, ref, rows=4)[0] == 0.0
    # a pair (loss, [gradients]): the gradients share one scale
    pref = (1.0, [np.ones((2, 3)), np.zeros(3)])
    assert h.compare((1.0, [np.ones((2, 3)), np.zeros(3)]), pref)[0] == 0.0
    err, where = h.compare((1.0, [np.ones((2, 3)), np.full(3, 0.1)]), pref)
    assert err == pytest.approx(0.1) and where == "gradient 1"
    assert h.compare((1.1, pref[1]), pref)[1] == "loss"
    assert h.compare((np.full((4, 1), 1.5), [np.ones(2)]), (np.ones((4, 1)), [np.ones(2)]))[1] == "value"
    assert h.compare((1.0, [np.ones(3)]), (1.0, [np.ones(3), np.ones(2)]))[0] == float("inf")
    assert h.compare((1.0, [np.array([np.nan, 1.0, 1.0])]), (1.0, [np.ones(3)]))[0] == float("inf")
    assert h.tolerance("float64") < h.tolerance("float32") == 5e-3


def test_harness_registry_and_availability():
    h = _harness()
    build = lambda pt: None  # noqa: E731
    reg = h.Registry(
        h.Peer("ours-a", build, family="ours"),
        h.Peer("peer-b", build, requires=("no_such_module_xyz",), family="b", tasks=("laplacian",)),
    )
    assert reg.names == ("ours-a", "peer-b")
    assert [p.name for p in reg.select("ours")] == ["ours-a"]
    assert [p.name for p in reg.select(None)] == ["ours-a", "peer-b"]
    with pytest.raises(ValueError, match="unknown peers \\['nope'\\]"):
        reg.select("ours-a,nope")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add(h.Peer("ours-a", build))
    assert reg["ours-a"].available() == (True, "")
    assert reg["peer-b"].available() == (False, "no_such_module_xyz is not installed")
    assert reg["peer-b"].serves("laplacian") and not reg["peer-b"].serves("hessian")
    assert reg["ours-a"].serves("anything")


def test_harness_checks_before_it_times():
    """A wrong peer and a failing one are reported and never timed; a skip is recorded with
    its reason; a peer slower than the once-cap is timed by its checked call only; the
    others get interleaved rounds."""
    h = _harness()
    import time

    import numpy as np

    ref = {"value": np.arange(3.0)}
    calls: list = []

    def runner(name, value, sleep=0.0):
        def call():
            calls.append(name)
            if sleep:
                time.sleep(sleep)
            return value

        return lambda: h.Runner(call, lambda out: {"value": out})

    def broken():
        raise RuntimeError("no such thing")

    cands = {
        "good": runner("good", np.arange(3.0)),
        "also": runner("also", np.arange(3.0) + 1e-12),
        "wrong": runner("wrong", np.arange(3.0) * 1.01),
        "broken": broken,
        "slow": runner("slow", np.arange(3.0), sleep=0.03),
        "skipped": h.Skip("skip-time", "predicted 9 s per call > cap 1 s"),
    }
    policy = h.Policy(rounds=3, min_round_s=0.0, budget_s=10.0, once_s=0.02)
    rows, live = h.check_then_time(
        cands, ref, dtype="float64", policy=policy, base={"d": 2}, log=lambda m: None
    )
    st = {r["peer"]: r for r in rows}
    assert [r["peer"] for r in rows] == list(cands) and all(r["d"] == 2 for r in rows)
    assert st["good"]["status"] == st["also"]["status"] == "ok" and set(live) == {"good", "also"}
    assert st["good"]["rounds"] == 3 and st["good"]["min_s"] > 0 and st["good"]["rel_err"] == 0.0
    assert st["wrong"]["status"] == "mismatch" and "min_s" not in st["wrong"]
    assert "rel. error 1.00e-02 in value" in st["wrong"]["note"]
    assert st["broken"]["status"] == "error" and "no such thing" in st["broken"]["note"]
    assert st["slow"]["status"] == "once" and st["slow"]["rounds"] == 1 and st["slow"]["min_s"] >= 0.03
    assert st["skipped"]["status"] == "skip-time" and "cap" in st["skipped"]["note"]
    # checked calls first (each peer once), then calibration, then the rounds, rotating
    assert calls.count("wrong") == 1 and calls.count("slow") == 1
    rounds = calls[-6:]
    assert rounds == ["good", "also", "also", "good", "good", "also"]
    h.ratios(rows, ("good",))
    assert st["good"]["ratios"]["good"] == 1.0 and st["also"]["ratios"]["good"] > 0
    assert "ratios" not in st["wrong"]


def test_harness_predicts_and_skips():
    h = _harness()
    pred = h.Predictor(lambda pt: pt[0], lambda peer, pt: pt[1])
    assert pred.predict("p", ("s", 2)) == (None, None)
    pred.add_rows([{"peer": "p", "status": "ok", "min_s": 1.0, "peak_bytes": 100.0}], ("s", 2))
    t, m = pred.predict("p", ("s", 8))
    assert t == pytest.approx(4 * 1.25) and m == pytest.approx(400 * 1.25)
    assert pred.predict("p", ("other", 8)) == (None, None)
    assert h.predicted_skip(t, m, max_call_s=10, mem_budget=1e9) is None
    assert h.predicted_skip(t, m, max_call_s=1, mem_budget=1e9).status == "skip-time"
    assert h.predicted_skip(t, m, max_call_s=10, mem_budget=100).status == "skip-memory"


def test_harness_environment_records_without_changing_a_test_process(monkeypatch):
    h = _harness()
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    before = dict(os.environ)
    desc = h.environment(1, configure=False)
    assert dict(os.environ) == before
    assert desc["openblas_tuning_found"]["OPENBLAS_CORETYPE"] == "Haswell"
    assert desc["openblas_tuning_unset"] is False and desc["threads"] == {}
    assert desc["load_average_start"] is None or len(desc["load_average_start"]) == 3
    assert len(desc["hessquik_core_sources_sha256"]) == 16 and desc["numpy"]
    md = "\n".join(h.machine_md(h.finish(desc)))
    assert "## Machine" in md and "load average" in md and "Haswell" in md


def test_harness_writers(tmp_path):
    h = _harness()
    rows = [
        {"d": 2, "peer": "ours", "status": "ok", "min_s": 1e-3, "ratios": {"ours": 1.0}, "rel_err": 0.0},
        {"d": 2, "peer": "peer", "status": "ok", "min_s": 2e-3, "ratios": {"ours": 0.5}, "rel_err": 1e-16},
        {"d": 4, "peer": "peer", "status": "once", "min_s": 3.0, "ratios": {"ours": 0.25}, "rel_err": 0.0},
        {"d": 4, "peer": "ours", "status": "mismatch", "note": "disagrees", "rel_err": 1.0},
    ]
    md = "\n".join(h.series_tables(rows, "d", ["ours", "peer"], ["ours"]))
    assert "| 2 | 1 ms | 2 ms |" in md and "| 4 | mismatch | ≤3.00 s (1 call) |" in md
    assert "| 2 | 0.50 |" in md and "| 4 | 0.25* |" in md
    assert "ours at d=4: mismatch — disagrees" in "\n".join(h.notes_md(rows, lambda r: f"d={r['d']}"))
    assert "| ours | 1.0e+00 |" in "\n".join(h.agreement_md(rows, ("peer",), "values"))
    assert h.fmt_time(2.5) == "2.50 s" and h.fmt_time(3e-6) == "3 µs" and h.fmt_bytes(3 * 2**20) == "3 MiB"
    panels = [("all", lambda r: True)]

    def plot(out, data):
        return h.plot_series(
            out / "t.png",
            data["rows"],
            panels,
            x="d",
            peers=["ours", "peer"],
            style={},
            ylabel="s",
            title="t",
        )

    h.write_outputs(
        tmp_path,
        "t",
        {"rows": rows},
        markdown=lambda d: "# t\n",
        csv_fields=["d", "peer", "min_s"],
        plot=plot,
    )
    assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["peer"] == "ours"
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "d,peer,min_s"
    md = (tmp_path / "t.md").read_text()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "t.png").stat().st_size > 0 and "](t.png)" in md


def test_harness_profile_names_the_hot_function():
    h = _harness()

    def hot():
        return sum(i * i for i in range(2000))

    pr = h.profile(hot, 0.02)
    assert pr["calls"] >= 1 and pr["top"] and 0 < pr["top"][0]["own_frac"] <= 1
    assert any("hot" in t["function"] or "genexpr" in t["function"] for t in pr["top"])
    assert h.profile_md(pr)[0] == "| function | own | cumulative | calls per call |"


def test_out_buffer_smoke(tmp_path):
    """The out= study: both variants agree with the fresh result before they are timed."""
    ob = pytest.importorskip("benchmarks.out_buffer")
    assert ob.main(["--smoke", "--out", str(tmp_path), "--libs", "numpy"], configure_threads=False) == 0
    data = json.loads((tmp_path / "out_buffer.json").read_text())
    (row,) = data["rows"]
    assert row["fresh_s"] > 0 and row["out_s"] > 0 and row["max_rel_diff"] <= 1e-12
    assert {r["peer"]: r["status"] for r in row["records"]} == {"fresh": "ok", "out": "ok"}
    assert row["peak_alloc_out"] > 0 and row["peak_alloc_fresh"] > 0  # counted, not compared: tiny sizes
    assert "fresh / out" in (tmp_path / "out_buffer.md").read_text()


def test_second_order_smoke(tmp_path):
    """The cost-model table checks forward against backward mode before timing them."""
    so = pytest.importorskip("benchmarks.second_order")
    assert so.main(["--smoke", "--out", str(tmp_path)], configure_threads=False) == 0
    md = (tmp_path / "second_order.md").read_text()
    assert "## Cost model against measured timings" in md and "picked the faster route in" in md
    assert "## Machine" in md and (tmp_path / "second_order.json").exists()


def test_curvature_cases_agree_in_process():
    """The curvature benchmark's cases (each a subprocess in a run) on the tiny config:
    this library's Hessian-vector products, eigenvalues and per-example gradients agree
    with the torch references the report compares them with."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("scipy")
    cv = pytest.importorskip("benchmarks.curvature")
    cases = [
        "hvp:ours_numpy",
        "hvp:autograd",
        "eig:ours_numpy_lanczos",
        "eig:autograd",
        "pex:ours_numpy",
        "pex:vmap",
    ]
    threads = torch.get_num_threads()  # a case sets one thread, as its worker process does
    try:
        rows = [cv.run_case(c, cv.CONFIGS["smoke"]) for c in cases]
    finally:
        torch.set_num_threads(threads)
    for r in rows:
        assert r["seconds"] >= 0 and r["P"] > 0, r
    agree = cv.agreement(rows)
    assert set(agree) == set(cases)
    assert max(agree[c] for c in cases if not c.startswith("pex")) < 1e-10
    assert agree["pex:ours_numpy"] < 1e-4


def test_dask_bench_baseline_and_report(tmp_path):
    """The Dask benchmark's one-process baseline runs on the tiny config, and its report is
    rebuilt from the committed measurements (the cluster itself is exercised by the Dask
    tests; a whole run takes ~40 s on a loaded 2-core machine)."""
    dk = pytest.importorskip("benchmarks.dask_bench")
    base = dk.baseline(dict(dk.CONFIGS["smoke"]))
    assert base["laplacian_s"] > 0 and base["ggn_s"] > 0
    committed = Path(_ROOT) / "benchmarks" / "results" / "dask.json"
    if committed.is_file():
        shutil.copy(committed, tmp_path / "dask.json")
        assert dk.main(["--replot", str(tmp_path), "--no-plots"]) == 0
        md = (tmp_path / "dask.md").read_text()
        assert "## Weak scaling estimate" in md and "| workers |" in md


@pytest.mark.parametrize(
    "module",
    [
        "benchmarks.run",
        "benchmarks.training_step",
        "benchmarks.pinn_arch",
        "benchmarks.highdim",
        "benchmarks.curvature",
        "benchmarks.dask_bench",
        "benchmarks.second_order",
        "benchmarks.out_buffer",
        "benchmarks.studies.w6_summary",
    ],
)
def test_every_documented_command_parses_its_arguments(module, capsys):
    """Each command of benchmarks/README.md's result table answers --help."""
    mod = pytest.importorskip(module)
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


def test_readme_names_a_command_for_every_committed_result():
    readme = (Path(_ROOT) / "benchmarks" / "README.md").read_text()
    results = Path(_ROOT) / "benchmarks" / "results"
    table = readme[
        readme.index("| result file(s) | command |") : readme.index("Files written before the harness")
    ]
    for f in sorted(results.glob("*")):
        assert f"`{f.name}`" in table or f"`{f.name.split('.')[0]}.*`" in table, f.name


def test_harness_names_a_peer_that_fails_when_repeated():
    """A call that passed its check but raises in the timing rounds is recorded as an
    error with its message; the other peers of the point are still timed."""
    h = _harness()
    import numpy as np

    ref = {"value": np.ones(2)}
    n = {"calls": 0}

    def flaky():
        n["calls"] += 1
        if n["calls"] > 1:
            raise MemoryError("out of memory on the second call")
        return np.ones(2)

    cands = {
        "good": lambda: h.Runner(lambda: np.ones(2), lambda out: {"value": out}),
        "flaky": lambda: h.Runner(flaky, lambda out: {"value": out}),
    }
    policy = h.Policy(rounds=2, min_round_s=0.0, budget_s=10.0)
    rows, live = h.check_then_time(cands, ref, dtype="float64", policy=policy, log=lambda m: None)
    st = {r["peer"]: r for r in rows}
    assert st["good"]["status"] == "ok" and st["good"]["rounds"] == 2 and set(live) == {"good"}
    assert st["flaky"]["status"] == "error-memory" and "second call" in st["flaky"]["note"]
    assert "min_s" not in st["flaky"]


def test_gpu_check_benchmark_command_lines_parse():
    """The two benchmark stages of gpu_check.sh name peers and options the runners accept."""
    script = (Path(_ROOT) / "benchmarks" / "gpu_check.sh").read_text()
    peers = script.split('GPU_PEERS="', 1)[1].split('"', 1)[0]
    run = pytest.importorskip("benchmarks.run")
    assert "--workloads W1,W3" in script and "--single-pass" in script
    args = run.parse_args(
        ["--quick", "--workloads", "W1,W3", "--peers", peers, "--no-progress", "--single-pass"]
    )
    assert args.peers == peers
    ts = pytest.importorskip("benchmarks.training_step")
    w6 = script.split("-m benchmarks.training_step", 1)[1].split("\n\nfinish", 1)[0]
    argv = [a.strip('"') for a in w6.replace("\\\n", " ").split() if a.strip('"') != "$RES"]
    argv = [a if a != '""' else "" for a in argv]
    args = ts.parse_args([a for a in argv if a != "--out"])
    assert args.device == "cuda" and args.compile_d == [] and "jax+folx" in args.peers


def test_harness_candidates_say_why_a_peer_does_not_run():
    h = _harness()
    built = []

    def build(pt, shared):
        built.append((pt, shared))
        return "runner"

    peers = [
        h.Peer("a", build, tasks=("laplacian",)),
        h.Peer("b", build, tasks=("hessian",)),
        h.Peer("c", build, requires=("no_such_module_xyz",)),
        h.Peer("d", build),
    ]
    rule = lambda p: h.Skip("skip-time", "too slow") if p.name == "d" else None  # noqa: E731
    c = h.candidates(peers, "pt", "w", task="laplacian", rule=rule)
    assert list(c) == ["a", "b", "c", "d"]
    assert c["b"].status == "not-run" and c["c"] == h.Skip(
        "unavailable", "no_such_module_xyz is not installed"
    )
    assert c["d"].note == "too slow" and built == []  # nothing is built before the harness asks
    assert c["a"]() == "runner" and built == [("pt", "w")]
