"""Re-time the points the committed full run missed: ``python -m benchmarks.eval_misses``.

Issue 13 asks for the committed evaluation misses (``benchmarks/analysis.md``
§2, §5, §6) to be measured again with the current engine: W1 at d = 16
(n = 10 and 1000) and W2 at (d, m) = (16, 1..8), (32, 8), (32, 16),
n = 1000, against JAX-jit, hessQuik 0.0.6 and ``torch.func``; W3 (the
Laplacian of a tanh MLP) at width 64, d = 16 and 64, n = 256, against folx.

Everything but the point list and the interleaving is the full runner's: the
networks and inputs of :mod:`benchmarks.run` (``nets.build``, the same
random inputs), the peers of :mod:`benchmarks.peers` (this library as
``ours-numpy``, ``ours-torch`` and ``ours-jax-jit`` — the same engine traced
by ``jax.jit``, our fused path), each peer's result checked against this
library's float64 NumPy result before it is timed (:func:`benchmarks.run._compare`,
the same tolerances), :mod:`benchmarks.measure` for the timing and
:mod:`benchmarks.machine` for the machine facts. Unlike the full runner, the
peers of one point are timed in *interleaved* rounds (every peer once per
round, best of ``--repeat`` rounds), so that load from other processes on a
shared machine lands on all of them alike.

The ratio is **ours / peer: below 1 this library is faster**; "ours" is the
fastest of this library's CPU routes at that point (and, separately, the
faster of the eager NumPy/torch ones). The same ratio is computed from the
committed ``results.json`` (the full run that recorded the misses), so the
tables read before → now. ``--quick`` times two of the points with short
rounds (a smoke run for the test suite; it writes ``build/bench-quick/``
unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/eval_misses.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

__all__ = ["main", "points", "target"]

#: the peers timed, in table order (a point gets those that can do its task)
PEER_NAMES = ("ours-numpy", "ours-torch", "ours-jax-jit", "hessQuik-0.0.6", "torch.func", "jax", "folx")
OURS = ("ours-numpy", "ours-torch", "ours-jax-jit")
EAGER = ("ours-numpy", "ours-torch")
#: the peers each task is compared with (the issue's targets name these)
FOREIGN = {"hessian": ("hessQuik-0.0.6", "torch.func", "jax"), "laplacian": ("torch.func", "jax", "folx")}

_BEFORE = Path(__file__).parent / "results" / "results.json"


def points(quick: bool):
    """The miss points (the quick run: W1 d = 16, n = 10 and W3 width 64, d = 16 at n = 16)."""
    from .workloads import Point, _mlp, _resnet

    w1_small = Point("W1", _resnet(16, 1), 10, "float64", "hessian")
    if quick:
        # W1 n = 10 is a committed point (it has a "before"); W3 at a tiny batch has none
        return [w1_small, Point("W3", _mlp(16, 64), 16, "float64", "laplacian")]
    pts = [w1_small, Point("W1/W2", _resnet(16, 1), 1000, "float64", "hessian")]
    pts += [
        Point("W2", _resnet(d, m), 1000, "float64", "hessian")
        for d, m in ((16, 2), (16, 4), (16, 8), (32, 8), (32, 16))
    ]
    pts += [Point("W3", _mlp(d, 64), 256, "float64", "laplacian") for d in (16, 64)]
    return pts


def target(pt, peer: str) -> float | None:
    """The largest ours / peer ratio that meets the issue's target at ``pt`` (``None``: no target).

    The same targets as :func:`benchmarks.report.evaluate_targets`, inverted to the
    ours / peer direction: ≥ 3x faster than hessQuik 0.0.6 and ``torch.func`` and not
    slower than JAX-jit at n = 1000; within 1.5x of JAX-jit at n = 10; not slower
    than folx on the W3 Laplacians.
    """
    if pt.task == "hessian":
        if peer in ("hessQuik-0.0.6", "torch.func") and pt.n == 1000:
            return 1 / 3
        if peer == "jax":
            return 1.5 if pt.n == 10 else 1.0
        return None
    return 1.0 if peer == "folx" else None


def label(pt) -> str:
    s = pt.spec
    shape = f"d={s.d} m={s.m}" if s.kind == "resnet" else f"d={s.d} w={s.width}"
    return f"{pt.workload} {shape} n={pt.n}"


def _key(kind, d, m, width, n, dtype, task) -> tuple:
    return (kind, d, m, width, n, dtype, task)


def _pt_key(pt) -> tuple:
    s = pt.spec
    return _key(s.kind, s.d, s.m, s.width, pt.n, pt.dtype, pt.task)


# --------------------------------------------------------------------------
# before: the committed full run
# --------------------------------------------------------------------------


def load_before(path: Path) -> dict:
    """``{"meta": ..., "times": {point key: {peer: min_s}}}`` from a full run's ``results.json``
    (empty when the file is missing: the "before" cells then say "—")."""
    if not path.is_file():
        return {"meta": {"file": str(path), "missing": True}, "times": {}}
    data = json.loads(path.read_text())
    times: dict = {}
    for r in data.get("rows", []):
        if r.get("status") != "ok":
            continue
        k = _key(r["kind"], r["d"], r["m"], r["width"], r["n"], r["dtype"], r["task"])
        # a computation shared by two workloads (W1 n = 1000 d = 16 is W2's m = 1) was
        # run once and recorded under each: the first record is the measurement
        times.setdefault(k, {}).setdefault(r["peer"], r["min_s"])
    m = data.get("machine", {})
    meta = {
        "file": str(path),
        "date": data.get("date"),
        "hessquik_core_sources_sha256": m.get("hessquik_core_sources_sha256"),
        "load_average_start": m.get("load_average_start"),
        "load_average_end": m.get("load_average_end"),
        "threads": m.get("threads"),
        "timing": data.get("timing"),
    }
    return {"meta": meta, "times": times}


def ratios(times: dict, ours: tuple, foreign: tuple) -> dict:
    """``{peer: {"ratio": ours_min / peer_min, "ours": fastest ours}}`` (peers with both times)."""
    mine = {p: times[p] for p in ours if times.get(p) is not None}
    if not mine:
        return {}
    best = min(mine, key=mine.get)
    return {p: {"ratio": mine[best] / times[p], "ours": best} for p in foreign if times.get(p) is not None}


# --------------------------------------------------------------------------
# one point
# --------------------------------------------------------------------------


def run_point(pt, peer_list, args, log) -> dict:
    """Build the network, check every peer against this library's float64 result, time interleaved."""
    import numpy as np

    from . import machine, nets
    from .measure import peak_memory, time_interleaved
    from .run import _compare, _tolerance
    from .workloads import Point

    net = nets.build(pt.spec)
    records = nets.spec_of(net)
    x_np = np.random.default_rng(1).standard_normal((pt.n, pt.spec.d))  # the full runner's inputs
    # the reference: this library, NumPy float64, mode="auto", on the first k rows
    k = min(pt.n, 8)
    by_name = {p.name: p for p in peer_list}
    ref_peer = by_name.get("ours-numpy") or next(p for p in _peers() if p.name == "ours-numpy")
    ref_run = ref_peer.make(Point(pt.workload, pt.spec, k, "float64", pt.task), net, records, x_np[:k])
    ref = ref_run.to_numpy(ref_run.call())
    del ref_run

    res: dict = {}
    live: dict = {}
    for peer in peer_list:
        rec: dict = {"status": "ok", "note": ""}
        res[peer.name] = rec
        try:
            with warnings.catch_warnings():
                # peers' own deprecation notices (hessQuik uses torch.jit.script) are not results
                for cat in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                    warnings.simplefilter("ignore", cat)
                runner = peer.make(pt, net, records, x_np)
                out, first_s, peak = peak_memory(
                    runner.call, device=peer.device, kind=peer.rate_backend, collect=False
                )
                got = runner.to_numpy(out)
                del out
        except Exception as e:  # a peer that breaks is reported, never hidden
            rec.update(status="error", note=f"{type(e).__name__}: {e}".replace("\n", " ")[:300])
            log(f"  {peer.name}: {rec['note']}")
            continue
        rec.update(compile_s=runner.compile_s, first_s=first_s, peak_bytes=peak.get("gpu", peak.get("rss")))
        err, where = _compare(got, ref, k)
        rec["rel_err"] = err
        if not err <= _tolerance(pt.dtype):
            rec.update(
                status="mismatch", note=f"disagrees with hessquik_core: rel. error {err:.2e} in {where}"
            )
            log(f"  {peer.name}: {rec['note']}")
            continue
        live[peer.name] = runner

    load0 = machine.load_average()
    with warnings.catch_warnings():
        for cat in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", cat)
        timings = time_interleaved(
            {name: r.call for name, r in live.items()},
            rounds=args.repeat,
            min_round_s=args.min_round_s,
            max_total_s=args.max_peer_s,
        )
    live.clear()
    for name, tm in timings.items():
        res[name].update(
            min_s=tm.min_s, median_s=tm.median_s, rounds=tm.repeat, number=tm.number, samples=tm.samples
        )
    s = pt.spec
    return {
        "label": label(pt),
        "workload": pt.workload,
        "kind": s.kind,
        "d": s.d,
        "m": s.m,
        "width": s.width,
        "depth": s.depth,
        "n": pt.n,
        "dtype": pt.dtype,
        "task": pt.task,
        "load_average": [load0, machine.load_average()],
        "peers": res,
    }


def _peers():
    from . import peers

    return peers.PEERS


def _compare_with_before(row: dict, pt, before: dict) -> None:
    """Add the ratios now and before (same ours routes, same peers) and the target to ``row``."""
    now = {p: r["min_s"] for p, r in row["peers"].items() if r["status"] == "ok"}
    then_all = before["times"].get(_pt_key(pt), {})
    # the same ours routes on both sides: a route not timed now is left out of "before" too
    then = {p: t for p, t in then_all.items() if p in row["peers"]}
    row["before_times"] = then
    foreign = tuple(p for p in FOREIGN[pt.task] if p in row["peers"])
    out: dict = {}
    for kind, ours in (("best", OURS), ("eager", EAGER)):
        rn, rb = ratios(now, ours, foreign), ratios(then, ours, foreign)
        for p in foreign:
            e = out.setdefault(p, {"target": target(pt, p)})
            e[f"{kind}_now"] = rn.get(p, {}).get("ratio")
            e[f"{kind}_before"] = rb.get(p, {}).get("ratio")
            e[f"{kind}_ours_now"] = rn.get(p, {}).get("ours")
            e[f"{kind}_ours_before"] = rb.get(p, {}).get("ours")
    # every route of this library against every peer (the JSON keeps them all)
    row["each_ours"] = {
        o: {
            p: {
                "now": now[o] / now[p] if o in now and p in now else None,
                "before": then[o] / then[p] if o in then and p in then else None,
            }
            for p in foreign
        }
        for o in OURS
        if o in row["peers"]
    }
    row["ratios"] = out


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------


def run(args) -> dict:
    from . import machine

    t_start = time.perf_counter()
    desc = machine.describe(args.threads_used)
    desc["threads"] = args.thread_report
    desc["env_openblas"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith("OPENBLAS_")}
    desc["load_average_start"] = machine.load_average()
    desc["hessquik_core_sources_sha256"] = machine.source_fingerprint()
    before = load_before(args.before)
    wanted = PEER_NAMES if args.peers is None else tuple(args.peers.split(","))
    notes: list[str] = []
    avail = []
    for peer in _peers():
        if peer.name not in wanted:
            continue
        ok, why = peer.available()
        if ok:
            avail.append(peer)
        else:
            notes.append(f"`{peer.name}` skipped: {why}.")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    rows = []
    pts = points(args.quick)
    for i, pt in enumerate(pts):
        t0 = time.perf_counter()
        # hessQuik 0.0.6 is compared on the Hessian points (W1/W2), folx on the Laplacians (W3)
        plist = [
            p
            for p in avail
            if pt.task in p.tasks and not (p.name == "hessQuik-0.0.6" and pt.task != "hessian")
        ]
        row = run_point(pt, plist, args, log)
        _compare_with_before(row, pt, before)
        rows.append(row)
        log(f"[{i + 1}/{len(pts)}] {row['label']}: {time.perf_counter() - t0:.1f} s")
    desc["load_average_end"] = machine.load_average()
    return {
        "title": "Evaluation misses re-timed (issue 13): before → now",
        "quick": args.quick,
        "argv": list(args.argv),
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "config": {
            "repeat": args.repeat,
            "min_round_s": args.min_round_s,
            "max_peer_s": args.max_peer_s,
            "peers": [p.name for p in avail],
            "ours": list(OURS),
            "eager": list(EAGER),
        },
        "machine": desc,
        "before": before["meta"],
        "notes": notes,
        "rows": rows,
        "wall_s": time.perf_counter() - t_start,
    }


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def _r(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def _verdict(x, t) -> str:
    if x is None or t is None:
        return ""
    return "met" if x <= t else "missed"


def markdown(data: dict) -> str:
    from .report import _fmt_t, _table

    m, b, cfg = data["machine"], data["before"], data["config"]
    rows = data["rows"]
    lines = [f"# {data['title']}", ""]
    if data["quick"]:
        lines += [
            f"**Quick run ({len(rows)} points, short rounds, W3 at a tiny batch): a smoke test of the "
            "driver, not the evaluation. `python -m benchmarks.eval_misses` (the 9 miss points) on a "
            "quiet machine replaces it.**",
            "",
        ]
    lines += [
        "The points the committed full run (`results.md`, analysis §2, §5, §6) missed, timed again with "
        "the current engine. Every peer runs in this process on the full runner's networks and inputs; "
        "its result was checked against this library's float64 result before it was timed. The peers of "
        f"a point are timed in interleaved rounds: best of up to {cfg['repeat']} rounds, each peer "
        f"≥ {cfg['min_round_s'] * 1e3:g} ms per round. Produced by "
        f"`python -m benchmarks.eval_misses {' '.join(data['argv'])}` in {data['wall_s']:.0f} s "
        f"on {data['date']}.",
        "",
        "**Ratio = ours / peer: below 1 this library is faster.** *best* = the fastest of "
        f"{', '.join(f'`{o}`' for o in cfg['ours'])} at that point (`ours-jax-jit`: the same engine on JAX "
        "arrays inside `jax.jit`); *eager* = the faster of "
        f"{', '.join(f'`{o}`' for o in cfg['eager'])}. *Before* is the same ratio (same routes, same "
        f"peers) from the committed full run `{Path(b['file']).name}`"
        + (
            " — not found, so no before values."
            if b.get("missing")
            else f" of {b.get('date')} (engine `{b.get('hessquik_core_sources_sha256')}`, "
            f"load average {b.get('load_average_start')} at start; timeit-style, not interleaved)."
        )
        + " *Target* is the issue's: ours / hessQuik and ours / torch.func ≤ 0.33 and ours / JAX ≤ 1 at "
        "n = 1000, ours / JAX ≤ 1.5 at n = 10, ours / folx ≤ 1.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs), threads used {m['threads_used']} "
        f"({m.get('threads')})",
        f"- environment: {m.get('env')}; OPENBLAS_*: {m.get('env_openblas') or 'none set'}",
        f"- load average (1/5/15 min) at start {m.get('load_average_start')}, at end {m.get('load_average_end')}",
        f"- hessquik_core source fingerprint `{m.get('hessquik_core_sources_sha256')}` "
        f"(before: `{b.get('hessquik_core_sources_sha256')}`)",
        f"- torch {m.get('torch')}, jax {m.get('jax')}, folx {m.get('folx')}, hessQuik {m.get('hessQuik')}, "
        f"numpy {m['numpy']} ({m.get('numpy_blas')}), Python {m['python']}",
        "",
    ]
    for note in data["notes"]:
        lines.append(f"- {note}")
    if data["notes"]:
        lines.append("")

    # ---- ratios -----------------------------------------------------------------
    body = []
    for r in rows:
        for p, e in r["ratios"].items():
            t = e["target"]
            body.append(
                [
                    r["label"],
                    p,
                    "" if t is None else f"≤ {t:.2f}",
                    f"{_r(e['best_before'])} → {_r(e['best_now'])}",
                    _verdict(e["best_now"], t),
                    e["best_ours_now"] or "",
                    f"{_r(e['eager_before'])} → {_r(e['eager_now'])}",
                    _verdict(e["eager_now"], t),
                ]
            )
    lines += [
        "## Ratio ours / peer, before → now",
        "",
        _table(
            [
                "point",
                "peer",
                "target",
                "best: before → now",
                "target now (best)",
                "fastest ours now",
                "eager: before → now",
                "target now (eager)",
            ],
            body,
        ),
        "",
    ]

    # ---- times -----------------------------------------------------------------
    cols = [p for p in PEER_NAMES if any(p in r["peers"] for r in rows)]

    def cell(r, p):
        rec = r["peers"].get(p)
        if rec is None:
            return ""
        then = r["before_times"].get(p)
        was = f" ({_fmt_t(then)})" if then is not None else ""
        if rec["status"] != "ok":
            return rec["status"].upper() + was
        return _fmt_t(rec["min_s"]) + was

    lines += [
        "## Times now (before)",
        "",
        "Best per-call time of the interleaved rounds; in parentheses the committed full run's time.",
        "",
        _table(
            ["point", *cols, "load avg (1 min) start/end"],
            [
                [r["label"], *(cell(r, p) for p in cols), "/".join(_load1(x) for x in r["load_average"])]
                for r in rows
            ],
        ),
        "",
    ]

    # ---- every route (hessian and Laplacian points have different peers: a table each) ----
    for task in ("hessian", "laplacian"):
        sub = [r for r in rows if r["task"] == task]
        fs = [p for p in FOREIGN[task] if any(p in per for r in sub for per in r["each_ours"].values())]
        tb = [
            [r["label"], o, *(_pair(per.get(p)) for p in fs)]
            for r in sub
            for o, per in r["each_ours"].items()
        ]
        if tb and fs:
            what = "value + gradient + Hessian" if task == "hessian" else "Laplacian"
            lines += [f"## Each route of this library / peer, before → now ({what})", ""]
            lines += [_table(["point", "route", *fs], tb), ""]

    # ---- agreement and failures --------------------------------------------------------
    worst: dict = {}
    for r in rows:
        for p, rec in r["peers"].items():
            if rec.get("rel_err") is not None:
                worst[p] = max(worst.get(p, 0.0), rec["rel_err"])
    if worst:
        lines += ["## Agreement with this library before timing (largest relative deviation)", ""]
        lines += [_table(["peer", "deviation"], [[p, f"{e:.1e}"] for p, e in worst.items()]), ""]
    bad = [(r["label"], p, rec) for r in rows for p, rec in r["peers"].items() if rec["status"] != "ok"]
    if bad:
        lines += ["## Failed or disagreeing", ""]
        lines += [f"- {lab}, {p}: {rec['status']} — {rec['note']}" for lab, p, rec in bad]
        lines.append("")
    return "\n".join(lines)


def _pair(v) -> str:
    return "" if v is None else f"{_r(v['before'])} → {_r(v['now'])}"


def _load1(x) -> str:
    return "—" if not x else f"{x[0]:.2f}"


def write_all(out: Path, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_misses.json").write_text(json.dumps(data, indent=1, default=str))
    (out / "eval_misses.md").write_text(markdown(data))


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.eval_misses", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="two points, short rounds (a smoke run, seconds)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default benchmarks/results; --quick: build/bench-quick)",
    )
    p.add_argument(
        "--repeat", type=int, default=None, help="interleaved rounds per point (default 7; quick 3)"
    )
    p.add_argument("--peers", default=None, help=f"comma-separated subset of {','.join(PEER_NAMES)}")
    p.add_argument("--threads", type=int, default=None, help="threads for every library (default: all cores)")
    p.add_argument(
        "--before", type=Path, default=_BEFORE, help="the committed full run to compare with (results.json)"
    )
    p.add_argument("--replot", type=Path, default=None, help="only rebuild DIR/eval_misses.md from its JSON")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.repeat is None:
        args.repeat = 3 if args.quick else 7
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    # each peer's share of a round, and the timing budget per peer and point
    args.min_round_s, args.max_peer_s = (0.005, 0.3) if args.quick else (0.05, 3.0)
    return args


def main(argv=None, *, configure_threads: bool = True) -> int:
    """Command-line entry point; ``configure_threads=False`` leaves the process's thread
    settings alone (for calling from a test)."""
    args = parse_args(argv)
    if args.replot is not None:
        data = json.loads((args.replot / "eval_misses.json").read_text())
        write_all(args.replot, data)
        print(f"rebuilt {args.replot / 'eval_misses.md'}")
        return 0
    from . import machine

    args.threads_used = args.threads or machine.threads()
    if configure_threads:
        from .run import _set_threads

        args.thread_report = _set_threads(args.threads_used)
    else:
        args.thread_report = {}
    out = args.out or (Path("build/bench-quick") if args.quick else Path(__file__).parent / "results")
    data = run(args)
    write_all(out, data)
    print(f"wrote {out / 'eval_misses.md'} ({data['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
