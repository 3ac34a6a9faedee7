"""W1–W5 runner: ``python -m benchmarks [--quick] [--out DIR]`` (``--workloads W6``/``W7`` hand over
to :mod:`benchmarks.training_step` / :mod:`benchmarks.w7`).

The points (:mod:`benchmarks.workloads`), peers (:mod:`benchmarks.peers`) and tables
(:mod:`benchmarks.report`) of W1–W5, measured by :func:`benchmarks.harness.check_then_time` in this
one process; each time is related to this library's best CPU time and to the machine limit
(:mod:`benchmarks.machine`). ``benchmarks/README.md`` describes the procedure and its skip rules.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from . import harness
from .harness import Skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    harness.add_common_args(p)
    add = p.add_argument
    add("--workloads", default="W1,W2,W3,W4,W5", help="comma-separated subset, e.g. W1,W3 (W6, W7 too)")
    add("--peers", help="comma-separated peer names or families (default: every available one)")
    add("--max-call-s", type=float, help="skip a peer whose predicted single call exceeds this (s)")
    add("--mem-fraction", type=float, default=0.7, help="memory budget: share of the RAM free at start")
    add("--no-progress", action="store_true", help="no progress bar")
    add("--single-pass", action="store_true", help="accepted for old command lines (no second pass any more)")
    args = p.parse_args(argv)
    from .peers import PEERS

    try:
        PEERS.select(args.peers)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None, *, configure_threads: bool = True) -> int:
    """Command-line entry point; ``configure_threads=False`` leaves the process's
    thread settings alone (for calling from a test)."""
    args = parse_args(argv)
    if args.smoke:
        args.quick = True
    for name, module in (("W6", "training_step"), ("W7", "w7")):
        if name not in args.workloads.split(","):
            continue
        # the training step (W6) and PINN Jacobians and optimizers (W7) have their own runners
        sub = importlib.import_module(f".{module}", __package__)
        size = ("--quick", args.quick and not args.smoke), ("--smoke", args.smoke)
        argv_sub = [f for f, on in size if on]
        argv_sub += ["--no-plots"] * args.no_plots + (["--out", str(args.out)] if args.out else [])
        argv_sub += [f"--threads={args.threads}"] if args.threads else []
        rc = sub.main(argv_sub, configure_threads=configure_threads)
        args.workloads = ",".join(w for w in args.workloads.split(",") if w != name)
        if rc or not args.workloads:
            return rc
    from . import report

    write = lambda out, data, plots: report.write_all(out, data, plots=plots)  # noqa: E731
    return harness.main(args, "results", run, write, configure_threads=configure_threads)


# --- the run ---


def _series(pt) -> tuple:
    """Within a series (task, dtype, network kind, width, n) time and memory grow with
    :attr:`Point.size_units`: the Hessian output and the first layer's ``n·d²·width`` work."""
    return (pt.task, pt.dtype, pt.spec.kind, pt.spec.width, pt.n)


def _reference(net, x, task: str) -> dict:
    """This library, NumPy float64, on the rows ``x``."""
    hess = task == "hessian"
    r = net(x, gradient=True, hessian=True) if hess else net(x, laplacian=True)
    return {k: getattr(r, k) for k in (("value", "gradient", "hessian") if hess else ("value", "laplacian"))}


def _flops(net, pt) -> int:
    """GEMM work of this library's chain rule at ``pt`` (the least over its modes)."""
    import numpy as np

    from . import machine

    d = pt.spec.d
    if pt.task == "hessian":
        return machine.flops_at(net, d, pt.n, np.float64, gradient=True, hessian=True)
    modes = ("forward", "backward")
    return min(machine.flops_at(net, d, pt.n, np.float64, laplacian=True, mode=md) for md in modes)


def _candidate(w, pt, peer, predicted, mem_budget, max_call_s, shared):
    """The builder of ``peer`` at ``pt``, or why it is skipped (run budget, memory, prediction)."""
    cap, out = w.max_out_bytes, pt.out_bytes
    if cap is not None and out > cap:
        why = f"output {out / 1e9:.1f} GB is above this workload's {cap / 1e9:.1f} GB cap for the full run's wall time"
        return Skip("skip-budget", why)
    if out > mem_budget:
        why = f"output alone is {out / 2**30:.1f} GiB > budget {mem_budget / 2**30:.1f} GiB"
        return Skip("skip-memory", why)

    def build():
        r = peer.build(pt, *shared)
        r.extra.update(device=peer.device, kind=peer.backend)
        return r

    if peer.family == "ours":
        # this library bounds its own memory (it splits the batch to fit) and has
        # to run every point whose output fits: never skipped on a prediction
        return build
    t_pred, m_pred = predicted
    if peer.device != "cpu":
        m_pred = None  # the budget is the host's memory
    return harness.predicted_skip(t_pred, m_pred, max_call_s=max_call_s, mem_budget=mem_budget) or build


def run(args, desc: dict) -> dict:
    import numpy as np

    from . import machine, nets, peers, workloads

    quick = args.quick
    max_call_s = args.max_call_s or (2.0 if quick else 40.0)
    policy_cfg = dict(rounds=3, min_round_s=0.005, budget_s=0.5)
    if not quick:
        policy_cfg = dict(rounds=7, min_round_s=0.1, budget_s=5.0)
    mem_budget = harness.mem_budget(args.mem_fraction)
    wls = [w for w in workloads.workloads(quick, smoke=args.smoke) if w.name in args.workloads.split(",")]

    # peers and notes
    avail = [(peer, *peer.available()) for peer in peers.PEERS.select(args.peers)]
    notes = [f"`{peer.name}` skipped: {why}." for peer, ok, why in avail if not ok]
    active = [peer for peer, ok, _ in avail if ok]
    needed = {p.task for w in wls for p in w.points}
    active = [p for p in active if set(p.tasks) & needed]

    # machine limits
    rates: dict = {}
    for rb in sorted({p.backend for p in active}):
        for dt in sorted({p.dtype for w in wls for p in w.points}):
            rates[f"{rb}/{dt}"] = machine.measure_gemm(rb, dt, quick=quick, tiny=args.smoke)
    copy = {"cpu": machine.measure_copy(quick=quick, tiny=args.smoke)}
    if any(p.device == "cuda" for p in active):
        copy["cuda"] = machine.measure_copy(quick=quick, device="cuda", tiny=args.smoke)

    # the loop: one check_then_time per point
    todo = [(w, pt) for w in wls for pt in w.points]
    bar = _progress(len(todo), args.no_progress)  # tqdm, or one that does nothing
    done: dict = {}  # point key -> its records (W4's float64 points are W1's: run once)
    rows: list[dict] = []
    pred = harness.Predictor(_series, lambda peer, pt: pt.size_units)
    built: dict = {}
    for w, pt in todo:
        bar.set_description(f"{w.name} {pt.spec.kind} d={pt.spec.d} m={pt.spec.m} n={pt.n} {pt.dtype[-2:]}")
        if pt.key not in done:
            if pt.spec not in built:
                built.clear()  # keep one network at a time
                net = nets.build(pt.spec)
                built[pt.spec] = (net, nets.records_model(nets.spec_of(net), pt.spec))
            net, model = built[pt.spec]
            x_np = np.random.default_rng(1).standard_normal((pt.n, pt.spec.d))
            k = min(pt.n, 8)
            ref = _reference(net, np.ascontiguousarray(x_np[:k]), pt.task)
            flops = _flops(net, pt)
            mine = [p for p in active if pt.task in p.tasks]
            # from each peer's own smaller points of the series, before this one is measured
            predicted = {p.name: pred.predict(p.name, pt) for p in mine}
            lim = (mem_budget, max_call_s, (net, model, x_np))  # budgets, then what every peer shares
            cands = {p.name: _candidate(w, pt, p, predicted[p.name], *lim) for p in mine}
            big = pt.out_bytes > 64 * 2**20  # a full collection costs ~0.2 s: only around large points
            s = pt.spec
            base = dict(kind=s.kind, d=s.d, m=s.m, width=s.width, depth=s.depth, n=pt.n, dtype=pt.dtype)
            base.update(task=pt.task, out_bytes=pt.out_bytes, flops=flops)
            policy = harness.Policy(tol_float32=2e-3, rows=k, collect=big, warm_s=0.5, **policy_cfg)
            recs, live = harness.check_then_time(cands, ref, dtype=pt.dtype, policy=policy, base=base)
            live.clear()
            del x_np, ref
            if big:
                gc.collect()
            pred.add_rows(recs, pt)
            for rec, p in zip(recs, mine):
                rate = rates[f"{p.backend}/{pt.dtype}"]["flops_per_s"]
                bw = copy["cuda" if p.device == "cuda" else "cpu"]
                rec.update(family=p.family, device=p.device, rate_backend=p.backend)
                rec.update(limit_s=max(flops / rate, pt.out_bytes / bw["touched_Bps"]))
                rec.update(limit_fresh_s=max(flops / rate, pt.out_bytes / bw["fresh_Bps"]))
                rec["predicted_s"], rec["predicted_peak"] = predicted[p.name]
                if rec["status"] == "ok":
                    rec["repeat"] = rec["rounds"]
            done[pt.key] = recs
        # a computation shared by two workloads was run once; each gets its own copy
        rows += [dict(r, workload=w.name) for r in done[pt.key]]
        bar.update(1)
    bar.close()
    for r in rows:
        if r.get("status") == "ok":
            r.update(frac=r["limit_s"] / r["min_s"], frac_fresh=r["limit_fresh_s"] / r["min_s"])

    # ratios to this library's best CPU time
    from .report import point_key as key

    best: dict = {}
    for r in rows:
        own = (r["family"], r["device"], r.get("status")) == ("ours", "cpu", "ok")
        if own and not r["peer"].endswith("-bwd"):
            best[key(r)] = min(best.get(key(r), float("inf")), r["min_s"])
    for r in rows:
        if r.get("status") == "ok" and key(r) in best:
            r.update(ours_best_s=best[key(r)], ratio=r["min_s"] / best[key(r)])
    data = dict(quick=quick, gemm=rates, copy=copy, memory_budget_bytes=mem_budget, max_call_s=max_call_s)
    data.update(timing=dict(policy_cfg, interleaved=True), notes=notes)
    data["peers"] = [dict(name=p.name, family=p.family, device=p.device, note=p.note) for p in active]
    wl = lambda w: dict(name=w.name, title=w.title, task=w.task, points=list(map(asdict, w.points)))  # noqa: E731
    data["workloads"] = [wl(w) for w in wls]
    return dict(data, rows=rows)


class _NoBar:
    def set_description(self, _: str) -> None: ...
    def update(self, _: int) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, off: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    mininterval = 0.1 if sys.stderr.isatty() else 15.0
    return tqdm(total=total, disable=off, unit="point", dynamic_ncols=True, mininterval=mininterval)


if __name__ == "__main__":
    sys.exit(main())
