"""Benchmark runner: ``python -m benchmarks [--quick] [--out DIR]``.

For every point of every workload (see :mod:`benchmarks.workloads`) and
every available peer (see :mod:`benchmarks.peers`), in this one process:

1. build the network once (NumPy float64 weights) and hand the same weights
   to every peer, in the point's dtype;
2. run the peer once, measuring its peak memory, and check its result
   against this library's float64 NumPy result on the first rows of the
   batch — a peer that disagrees gets no timing;
3. time it timeit-style (min and median over repeats);
4. relate the time to this library's best CPU time (ratio) and to the
   machine limit (:mod:`benchmarks.machine`).

A point is skipped, with the reason written down, when its output alone
would not fit in the memory budget, or when the peer's own measured growth
over smaller points of the same series predicts that it would not fit, or
would take longer than the per-call time cap. Nothing is ever estimated in
place of a measurement: a skipped cell says "skipped" and why.

Writes ``results.md`` (tables, targets, notes), ``results.json`` and
``results.csv`` (every field), ``machine.json``/``machine.txt`` and the PNG
plots into the output folder.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"


def _set_threads(n: int) -> dict:
    """Use ``n`` threads everywhere: CPU affinity, BLAS pools, torch, XLA (before JAX loads)."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["OPENBLAS_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        os.environ["XLA_FLAGS"] = (
            flags + f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={n}"
        ).strip()
    got = {}
    try:
        cores = sorted(os.sched_getaffinity(0))
        if n < len(cores):
            os.sched_setaffinity(0, cores[:n])
        got["affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    got["numpy_blas"] = _openblas_threads(n)
    try:
        import torch

        torch.set_num_threads(n)
        got["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    got["xla"] = n
    return got


def _openblas_threads(n: int):
    """Set and read NumPy's OpenBLAS thread count (``None`` if not OpenBLAS)."""
    try:
        with open("/proc/self/maps") as fh:
            libs = {line.split()[-1] for line in fh if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in libs:
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", ""):
                try:
                    set_ = getattr(lib, f"{prefix}set_num_threads{suffix}")
                    get_ = getattr(lib, f"{prefix}get_num_threads{suffix}")
                except AttributeError:
                    continue
                set_(ctypes.c_int(n))
                return int(get_())
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CI-sized smoke run (well under two minutes)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: benchmarks/results, or build/bench-quick with --quick)",
    )
    p.add_argument(
        "--workloads",
        default="W1,W2,W3,W4,W5",
        help="comma-separated subset, e.g. W1,W3 (W6, the training step: benchmarks/training_step.py)",
    )
    p.add_argument(
        "--peers", default=None, help="comma-separated peer names or families (default: every available one)"
    )
    p.add_argument("--threads", type=int, default=None, help="threads for every library (default: all cores)")
    p.add_argument(
        "--max-call-s",
        type=float,
        default=None,
        help="skip a peer at a point whose predicted single call exceeds this (s)",
    )
    p.add_argument(
        "--mem-fraction",
        type=float,
        default=0.7,
        help="memory budget as a fraction of the RAM available at start (default 0.7)",
    )
    p.add_argument("--no-plots", action="store_true", help="write tables only")
    p.add_argument(
        "--replot",
        type=Path,
        default=None,
        help="only rebuild results.md and the plots from DIR/results.json",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--single-pass", action="store_true", help="skip the second timing pass of fast calls")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny configuration (two W1 points, tiny rate measurements) for the test suite",
    )
    return p.parse_args(argv)


def main(argv=None, *, configure_threads: bool = True) -> int:
    """Command-line entry point; ``configure_threads=False`` leaves the process's
    thread settings alone (for calling from a test)."""
    args = parse_args(argv)
    if args.smoke:
        args.quick = True
    if "W6" in args.workloads.split(","):
        # the training-step workload has its own runner (benchmarks/training_step.py)
        from . import training_step

        w6 = [f for f, on in (("--quick", args.quick and not args.smoke), ("--smoke", args.smoke)) if on]
        w6 += ["--no-plots"] * args.no_plots + (["--out", str(args.out)] if args.out else [])
        w6 += [f"--threads={args.threads}"] if args.threads else []
        rc = training_step.main(w6, configure_threads=configure_threads)
        args.workloads = ",".join(w for w in args.workloads.split(",") if w != "W6")
        if rc or not args.workloads:
            return rc
    from . import machine

    n_threads = args.threads or machine.threads()
    thread_report = _set_threads(n_threads) if configure_threads else {}

    from . import report

    if args.replot is not None:
        data = json.loads((args.replot / "results.json").read_text())
        report.write_all(args.replot, data, plots=not args.no_plots)
        print(f"rebuilt {args.replot / 'results.md'}")
        return 0

    out = args.out or (Path("build/bench-quick") if args.quick else Path(__file__).parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    data = run(args, n_threads, thread_report)
    report.write_all(out, data, plots=not args.no_plots)
    print(f"wrote {out / 'results.md'} ({data['wall_s']:.0f} s)")
    return 0


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------


def _tolerance(dtype: str) -> float:
    # relative to the largest entry of each reference array; float32 is
    # compared with the float64 reference, so its tolerance is its precision
    return 1e-8 if dtype == "float64" else 2e-3


def _compare(got: dict, ref: dict, k: int) -> tuple[float, str]:
    """Largest relative deviation over the arrays of ``ref`` (first ``k`` rows)."""
    import numpy as np

    worst, where = 0.0, ""
    for name, r in ref.items():
        if name not in got:
            return float("inf"), f"{name} missing"
        g = np.asarray(got[name])[:k]
        if g.shape != r.shape:
            return float("inf"), f"{name} shape {g.shape} != {r.shape}"
        scale = max(float(np.max(np.abs(r))), 1e-300)
        err = float(np.max(np.abs(g.astype(np.float64) - r))) / scale
        if not np.isfinite(err):
            return float("inf"), f"{name} not finite"
        if err > worst:
            worst, where = err, name
    return worst, where


def _collect(pt) -> None:
    # a full collection costs ~0.2 s with torch and JAX loaded; arrays are freed by
    # reference counting anyway, so collect cycles only around large points
    if pt.out_bytes > 64 * 2**20:
        gc.collect()


class Predictor:
    """Predicts a peer's time and memory at a point from its measured smaller points.

    Within one series (peer, workload-independent task, dtype, network kind,
    width) both are taken to grow at most in proportion to
    :attr:`Point.size_units` beyond the largest point measured so far (times
    a safety factor), which holds for every method here: the Hessian output
    and the first layer's ``n·d²·width`` work dominate at large sizes.
    """

    def __init__(self, safety: float = 1.25):
        self.safety = safety
        self.seen: dict = {}

    @staticmethod
    def _series(peer, point):
        s = point.spec
        return (peer, point.task, point.dtype, s.kind, s.width, point.n)

    def add(self, peer, point, seconds: float, peak: float | None):
        self.seen.setdefault(self._series(peer, point), []).append((point.size_units, seconds, peak))

    def predict(self, peer, point):
        rows = self.seen.get(self._series(peer, point))
        if not rows:
            return None, None
        u, t, mem = max(rows, key=lambda r: r[0])
        scale = max(1.0, point.size_units / u) * self.safety
        return t * scale, (None if mem is None else mem * scale)


def _measure(rec, pt, peer, net, records, x_np, ref, k, timing_cfg, pred):
    """Run ``peer`` at ``pt`` once (peak memory, agreement check), then time it; fill ``rec``.

    Returns the runner when it was timed (for the second timing pass), else ``None``."""
    from .measure import peak_memory, time_call

    runner = peer.make(pt, net, records, x_np)
    rec["compile_s"] = runner.compile_s
    out_, first_s, peak = peak_memory(
        runner.call,
        device=peer.device,
        kind=peer.rate_backend,
        use_tracemalloc=False,
        collect=pt.out_bytes > 64 * 2**20,
    )
    rec["first_s"] = first_s
    rec["peak_bytes"] = peak.get("gpu", peak.get("rss"))
    rec["peak_method"] = peak.get("method")
    got = runner.to_numpy(out_)
    del out_
    err, where = _compare(got, ref, k)
    del got
    rec["rel_err"] = err
    if not err <= _tolerance(pt.dtype):
        rec.update(status="mismatch", note=f"disagrees with hessquik_core: rel. error {err:.2e} in {where}")
        return None
    _collect(pt)
    tm = time_call(runner.call, first_s=first_s, **timing_cfg)
    rec.update(
        min_s=tm.min_s,
        median_s=tm.median_s,
        number=tm.number,
        repeat=tm.repeat,
        status="ok",
        samples=tm.samples,
    )
    pred.add(peer.name, pt, tm.min_s, rec["peak_bytes"])
    return runner


def _second_pass(keep, timing_cfg, args) -> None:
    from .measure import time_call

    cfg2 = dict(timing_cfg, min_repeat_s=timing_cfg["min_repeat_s"] / 2, repeat=3)
    it = keep
    try:
        from tqdm import tqdm

        it = tqdm(
            keep,
            disable=args.no_progress,
            desc="second timing pass",
            unit="run",
            mininterval=0.1 if sys.stderr.isatty() else 15.0,
        )
    except ImportError:  # pragma: no cover
        pass
    with warnings.catch_warnings():
        for cat in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", cat)
        for rec, runner in it:
            try:
                tm = time_call(runner.call, first_s=rec["min_s"], **cfg2)
            except Exception as e:  # pragma: no cover - it ran before
                rec["note"] = f"second timing pass failed: {type(e).__name__}"
                continue
            rec["min_s_pass1"] = rec["min_s"]
            rec["samples"] = rec["samples"] + tm.samples
            rec["min_s"] = min(rec["samples"])
            rec["median_s"] = statistics.median(rec["samples"])
            rec["repeat"] += tm.repeat


def run(args, n_threads: int, thread_report: dict) -> dict:
    import numpy as np

    from . import machine, nets, peers, workloads

    t_start = time.perf_counter()
    quick = args.quick
    max_call_s = args.max_call_s or (2.0 if quick else 40.0)
    timing_cfg = (
        dict(min_repeat_s=0.005, repeat=3, max_total_s=0.5)
        if quick
        else dict(min_repeat_s=0.1, repeat=5, max_total_s=5.0)
    )
    avail0 = machine.mem_available() or 8 * 2**30
    mem_budget = args.mem_fraction * avail0

    wls = [w for w in workloads.workloads(quick, smoke=args.smoke) if w.name in args.workloads.split(",")]
    names = None if args.peers is None else args.peers.split(",")

    # ---- peers and notes ------------------------------------------------
    notes: list[str] = []
    active = []
    for peer in peers.PEERS:
        if names is not None and peer.name not in names and peer.family not in names:
            continue
        ok, why = peer.available()
        if ok:
            active.append(peer)
        else:
            notes.append(f"`{peer.name}` skipped: {why}.")
    needed_tasks = {w.task for w in wls} | {p.task for w in wls for p in w.points}
    active = [p for p in active if set(p.tasks) & needed_tasks]

    # ---- machine limits ---------------------------------------------------
    desc = machine.describe(n_threads)
    desc["threads"] = thread_report
    desc["load_average_start"] = machine.load_average()
    desc["hessquik_core_sources_sha256"] = machine.source_fingerprint()
    rates: dict = {}
    dtypes = sorted({p.dtype for w in wls for p in w.points})
    for rb in sorted({p.rate_backend for p in active}):
        for dt in dtypes:
            rates[f"{rb}/{dt}"] = machine.measure_gemm(rb, dt, quick=quick, tiny=args.smoke)
    copy = {"cpu": machine.measure_copy(quick=quick, tiny=args.smoke)}
    if any(p.device == "cuda" for p in active):
        copy["cuda"] = machine.measure_copy(quick=quick, device="cuda", tiny=args.smoke)

    # ---- the loop -----------------------------------------------------------
    pairs = [(w, pt, peer) for w in wls for pt in w.points for peer in active if pt.task in peer.tasks]
    try:
        from tqdm import tqdm

        bar = tqdm(
            total=len(pairs),
            disable=args.no_progress,
            unit="run",
            dynamic_ncols=True,
            mininterval=0.1 if sys.stderr.isatty() else 15.0,
        )
    except ImportError:  # pragma: no cover
        bar = None

    refs: dict = {}
    flops: dict = {}
    keep: list = []  # (record, runner) of fast calls, timed a second time at the end
    retime_below_s = 0.05 if quick else 0.5
    done: dict = {}  # (point.key, peer) -> record
    order: list = []  # (workload, (point key, peer)) in run order; rows are built at the end
    pred = Predictor()
    built: dict = {}

    for w, pt, peer in pairs:
        if bar is not None:
            bar.set_description(
                f"{w.name} {pt.spec.kind} d={pt.spec.d} m={pt.spec.m} n={pt.n} {pt.dtype[-2:]} {peer.name}",
                refresh=sys.stderr.isatty(),
            )
        key = (pt.key, peer.name)
        if key in done:
            order.append((w.name, key))
            if bar is not None:
                bar.update(1)
            continue

        if pt.spec not in built:
            built.clear()  # keep one network at a time
            net = nets.build(pt.spec)
            built[pt.spec] = (net, nets.spec_of(net))
        net, records = built[pt.spec]
        x_np = np.random.default_rng(1).standard_normal((pt.n, pt.spec.d))

        rec = {
            "workload": w.name,
            "kind": pt.spec.kind,
            "d": pt.spec.d,
            "m": pt.spec.m,
            "width": pt.spec.width,
            "depth": pt.spec.depth,
            "n": pt.n,
            "dtype": pt.dtype,
            "task": pt.task,
            "peer": peer.name,
            "family": peer.family,
            "device": peer.device,
            "rate_backend": peer.rate_backend,
            "out_bytes": pt.out_bytes,
        }

        # reference: this library, NumPy float64, first k rows
        k = min(pt.n, 8)
        rkey = (pt.spec, pt.n, pt.task)
        if rkey not in refs:
            xr = np.ascontiguousarray(x_np[:k])
            if pt.task == "hessian":
                r = net(xr, gradient=True, hessian=True)
                ref = {"value": r.value, "gradient": r.gradient, "hessian": r.hessian}
            else:
                r = net(xr, laplacian=True)
                ref = {"value": r.value, "laplacian": r.laplacian}
            refs.clear()
            refs[rkey] = ref
        ref = refs[rkey]

        # GEMM work of this library's chain rule (the least over its modes)
        fkey = (pt.spec, pt.n, pt.task)
        if fkey not in flops:
            if pt.task == "hessian":
                flops[fkey] = machine.flops_at(net, pt.spec.d, pt.n, np.float64, gradient=True, hessian=True)
            else:
                flops[fkey] = min(
                    machine.flops_at(net, pt.spec.d, pt.n, np.float64, laplacian=True, mode=md)
                    for md in ("forward", "backward")
                )
        rec["flops"] = flops[fkey]
        rate = rates[f"{peer.rate_backend}/{pt.dtype}"]["flops_per_s"]
        bw = copy["cuda" if peer.device == "cuda" else "cpu"]
        rec["limit_s"] = max(rec["flops"] / rate, pt.out_bytes / bw["touched_Bps"])
        rec["limit_fresh_s"] = max(rec["flops"] / rate, pt.out_bytes / bw["fresh_Bps"])

        # ---- skip rules -----------------------------------------------------
        t_pred, m_pred = pred.predict(peer.name, pt)
        status, note = "ok", ""
        if w.max_out_bytes is not None and pt.out_bytes > w.max_out_bytes:
            status, note = (
                "skip-budget",
                (
                    f"output {pt.out_bytes / 1e9:.1f} GB is above this workload's "
                    f"{w.max_out_bytes / 1e9:.1f} GB cap for the full run's wall time"
                ),
            )
        elif pt.out_bytes > mem_budget:
            status, note = (
                "skip-memory",
                (f"output alone is {pt.out_bytes / 2**30:.1f} GiB > budget {mem_budget / 2**30:.1f} GiB"),
            )
        elif peer.family == "ours":
            # this library bounds its own memory (it splits the batch to fit) and has
            # to run every point whose output fits: never skipped on a prediction
            pass
        elif peer.device == "cpu" and m_pred is not None and m_pred > mem_budget:
            status, note = (
                "skip-memory",
                (
                    f"predicted peak {m_pred / 2**30:.1f} GiB (from its measured "
                    f"growth) > budget {mem_budget / 2**30:.1f} GiB"
                ),
            )
        elif t_pred is not None and t_pred > max_call_s:
            status, note = "skip-time", f"predicted {t_pred:.0f} s per call > cap {max_call_s:.0f} s"
        rec["predicted_s"] = t_pred
        rec["predicted_peak"] = m_pred
        if status != "ok":
            rec.update(status=status, note=note)
            done[key] = rec
            order.append((w.name, key))
            if bar is not None:
                bar.update(1)
            continue

        # ---- measure ---------------------------------------------------------
        try:
            with warnings.catch_warnings():
                # peers' own deprecation notices (hessQuik uses torch.jit.script) are not results
                for cat in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                    warnings.simplefilter("ignore", cat)
                runner = _measure(rec, pt, peer, net, records, x_np, ref, k, timing_cfg, pred)
            if runner is not None and rec["min_s"] < retime_below_s:
                keep.append((rec, runner))  # cheap: time it again at the end
            del runner
        except MemoryError as e:
            rec.update(status="error-memory", note=f"MemoryError: {e}"[:200])
        except Exception as e:  # a peer that breaks is reported, never hidden
            msg = f"{type(e).__name__}: {e}".replace("\n", " ")[:200]
            rec.update(
                status="error-memory" if "alloc" in msg.lower() or "memory" in msg.lower() else "error",
                note=msg,
            )
        _collect(pt)
        done[key] = rec
        order.append((w.name, key))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    # ---- second timing pass ------------------------------------------------------
    # Other processes on a shared machine can slow down every repeat of one point
    # (they run back to back); timing the fast calls once more, minutes later,
    # and keeping the best of both passes removes most such outliers.
    if keep and not args.single_pass:
        _second_pass(keep, timing_cfg, args)
    keep.clear()
    # a computation shared by two workloads (W4's float64 points are W1's) was run
    # once; each workload gets its own copy of the record
    rows = [dict(done[key], workload=wname) for wname, key in order]
    for r in rows:
        if r.get("status") == "ok":
            r["frac"] = r["limit_s"] / r["min_s"]
            r["frac_fresh"] = r["limit_fresh_s"] / r["min_s"]

    # ---- ratios to this library's best CPU time ------------------------------
    best: dict = {}
    for r in rows:
        if (
            r["family"] == "ours"
            and r["device"] == "cpu"
            and r.get("status") == "ok"
            and not r["peer"].endswith("-bwd")
        ):
            kk = (r["workload"], r["kind"], r["d"], r["m"], r["width"], r["n"], r["dtype"], r["task"])
            best[kk] = min(best.get(kk, float("inf")), r["min_s"])
    for r in rows:
        kk = (r["workload"], r["kind"], r["d"], r["m"], r["width"], r["n"], r["dtype"], r["task"])
        if r.get("status") == "ok" and kk in best:
            r["ours_best_s"] = best[kk]
            r["ratio"] = r["min_s"] / best[kk]

    desc["load_average_end"] = machine.load_average()
    return {
        "quick": quick,
        "machine": desc,
        "gemm": rates,
        "copy": copy,
        "memory_budget_bytes": mem_budget,
        "max_call_s": max_call_s,
        "timing": timing_cfg,
        "notes": notes,
        "peers": [{"name": p.name, "family": p.family, "device": p.device, "note": p.note} for p in active],
        "workloads": [
            {"name": w.name, "title": w.title, "task": w.task, "points": [asdict(p) for p in w.points]}
            for w in wls
        ],
        "rows": rows,
        "wall_s": time.perf_counter() - t_start,
    }


if __name__ == "__main__":
    sys.exit(main())
