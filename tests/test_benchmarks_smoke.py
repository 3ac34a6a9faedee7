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


@pytest.mark.parametrize(
    "module",
    [
        "benchmarks.run",
        "benchmarks.training_step",
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


def test_retired_results_name_the_commit_that_holds_their_script():
    """A result whose script was retired says so in its first lines, and benchmarks/retired.md names
    that script with the commit it is recovered from; no retired script is left in the tree."""
    root = Path(_ROOT) / "benchmarks"
    retired = (root / "retired.md").read_text()
    readme = (root / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `") and "retired" in line]
    assert len(rows) >= 9
    for line in rows:
        for name in line.split(" | ")[0].strip("| ").split(", "):
            f = root / "results" / name.strip("`")
            assert f.is_file() and f"`{f.name}`" in retired, f.name
            if f.suffix == ".md":
                head = "\n".join(f.read_text().splitlines()[:3])
                assert "retired in session 7" in head or "retired study" in line, f.name
    for script in ("out_buffer", "second_order", "dask_bench", "highdim", "curvature", "pinn_arch"):
        assert f"`benchmarks/{script}.py`" in retired and not (root / f"{script}.py").exists()
    assert "6d911f3" in retired and not (root / "studies").exists()


def test_benchmarks_stay_under_five_thousand_lines():
    """Issue 21: the benchmark code (every .py and .sh under benchmarks/) stays under 5,000 lines;
    retired workloads and studies live in git history (benchmarks/retired.md), not in the tree."""
    files = [f for f in (Path(_ROOT) / "benchmarks").rglob("*") if f.suffix in (".py", ".sh")]
    lines = sum(len(f.read_text().splitlines()) for f in files)
    assert 0 < lines < 5000, f"benchmarks/ holds {lines} lines of .py/.sh"


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
