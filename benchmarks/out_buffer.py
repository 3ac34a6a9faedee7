"""What ``out=`` saves: W1 (ResNet width 16, depth 4, n = 1000, value + gradient
+ Hessian, float64) with a fresh result per call against one reused buffer set.

    python -m benchmarks.out_buffer [--d 256,512] [--repeat 5] [--threads 1]

The two variants of a point are two peers of :func:`benchmarks.harness.check_then_time`:
each is checked against this library's fresh NumPy result, then both are timed in
interleaved rounds (fresh, out, out, fresh, ...), best of ``--repeat``, so that a
machine shared with other work penalises both alike; the load average before and
after each point is recorded. NumPy's allocations during one call are counted by
``tracemalloc`` (torch's CPU allocator is invisible to it). Writes ``out_buffer.md``
and ``out_buffer.json`` (default: ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/out_buffer.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from . import harness

KW = dict(gradient=True, hessian=True)


def _variant(use_out: bool):
    """A peer: ``net(x, gradient=True, hessian=True)``, into a fresh result or into ``out=``."""

    def build(lib: str, net, x_np):
        import numpy as np

        x = x_np
        if lib == "torch":
            import torch

            x = torch.from_numpy(x_np)
        out = net.empty_result(x, **KW) if use_out else None
        if out is not None:
            net(x, **KW, out=out)  # touch the buffers once, as a loop of calls does

        def to_numpy(r):
            return {k: np.asarray(getattr(r, k)) for k in ("value", "gradient", "hessian")}

        return harness.Runner(lambda: net(x, **KW, out=out), to_numpy, extra={"out": out, "x": x})

    return build


PEERS = harness.Registry(harness.Peer("fresh", _variant(False)), harness.Peer("out", _variant(True)))


def _alloc(runner) -> int:
    import tracemalloc

    tracemalloc.start()
    res = runner.call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del res
    return peak


def run_point(lib: str, d: int, n: int, args) -> dict:
    import numpy as np

    from .nets import NetSpec, build

    net = build(NetSpec("resnet", d, 1, width=16, depth=4, h=0.5))
    x = np.random.default_rng(0).standard_normal((n, d))
    r = net(x, **KW)
    ref = {k: np.asarray(getattr(r, k)) for k in ("value", "gradient", "hessian")}
    del r
    base = dict(lib=lib, d=d, n=n, result_bytes=n * (d * d + d + 1) * 8)
    load0 = os.getloadavg()
    policy = harness.Policy(rounds=args.repeat, min_round_s=0.0, budget_s=1e9, warm_s=0.0)
    recs, live = harness.check_then_time(
        {p.name: (lambda p=p: p.build(lib, net, x)) for p in PEERS}, ref, dtype="float64", policy=policy
    )
    row = dict(base, load_before=load0, load_after=os.getloadavg(), repeats=args.repeat, records=recs)
    if all(rec["status"] == "ok" for rec in recs):
        t = {rec["peer"]: rec["min_s"] for rec in recs}
        row.update(fresh_s=t["fresh"], out_s=t["out"], speedup=t["fresh"] / t["out"])
        row["max_rel_diff"] = max(rec["rel_err"] for rec in recs)
        if lib == "numpy":
            row.update(peak_alloc_fresh=_alloc(live["fresh"]), peak_alloc_out=_alloc(live["out"]))
    else:
        row["skipped"] = "; ".join(
            f"{rec['peer']}: {rec['status']} {rec['note']}" for rec in recs if rec["note"]
        )
    live.clear()
    return row


def run(args, desc: dict) -> dict:
    rows = []
    for lib in args.libs:
        for d in args.d:
            rows.append(run_point(lib, d, args.n, args))
            harness.log(f"{lib} d={d}: {rows[-1].get('speedup', rows[-1].get('skipped'))}")
    return {"threads": args.threads, "rows": rows, "argv": sys.argv[1:]}


def _mib(b) -> str:
    return "–" if b is None else f"{b / 2**20:.0f} MiB"


def markdown(data: dict) -> str:
    all_rows = data["rows"]
    rows = [r for r in all_rows if "skipped" not in r]
    m = data["machine"]
    loads = [v for r in rows for v in (r["load_before"][0], r["load_after"][0])] or [0.0]
    cores = m.get("logical_cpus") or 1
    lines = [
        "# `out=`: a reused result buffer against a fresh result per call",
        "",
        f"W1 (ResNet width 16, depth 4, scalar output, n = {rows[0]['n'] if rows else '?'}, value + gradient "
        f"+ Hessian, float64), `python -m benchmarks.out_buffer {' '.join(data.get('argv', []))}`: both "
        "variants checked against the fresh NumPy result, then best of "
        f"{rows[0]['repeats'] if rows else '?'} interleaved rounds (the order rotating), "
        f"{data['threads']} thread(s).",
        "",
    ]
    if max(loads) > 0.75 * cores:
        lines += [
            f"**Measured on a loaded machine** (1-minute load average {min(loads):.1f} to {max(loads):.1f} "
            f"on {cores} cores, other jobs running): absolute times are inflated and noisy; the "
            "interleaving penalises both variants alike, but treat ratios within ~20% as noise.",
            "",
        ]
    lines += harness.md_table(
        [
            "library",
            "d",
            "result",
            "fresh result",
            "`out=`",
            "fresh / out",
            "NumPy allocated in the call, fresh → out",
        ],
        (
            [
                r["lib"],
                r["d"],
                _mib(r["result_bytes"]),
                harness.fmt_time(r["fresh_s"]),
                harness.fmt_time(r["out_s"]),
            ]
            + [f"{r['speedup']:.2f}x", f"{_mib(r.get('peak_alloc_fresh'))} → {_mib(r.get('peak_alloc_out'))}"]
            for r in rows
        ),
    )
    lines += [
        "",
        "Load average (1 min) before → after each point: "
        + "; ".join(
            f"{r['lib']} d={r['d']}: {r['load_before'][0]:.1f} → {r['load_after'][0]:.1f}" for r in rows
        )
        + ".",
        "",
        *(f"Not measured: {r['lib']} d={r['d']} ({r['skipped']})." for r in all_rows if "skipped" in r),
        "",
        "With `out=` the call runs in batch blocks of about 24 MiB of working set written into the",
        "caller's (already touched) buffers, so no result-sized array is allocated and faulted in per",
        "call; each block's own arrays come from reused heap memory. Results agree with the fresh",
        "call to rounding (largest relative deviation: "
        + ", ".join(f"{r['max_rel_diff']:.1e}" for r in rows)
        + ").",
        "",
        *harness.machine_md(m),
    ]
    return "\n".join(lines)


def write_all(out: Path, data: dict, plots: bool = True) -> None:
    harness.write_outputs(out, "out_buffer", data, markdown=markdown)


def main(argv=None, *, configure_threads: bool = True) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.out_buffer", description=__doc__.split("\n\n")[0])
    harness.add_common_args(p, threads=1)
    p.add_argument("--d", type=harness.int_list, default=None, help="input dimensions (default 256,512)")
    p.add_argument("--n", type=int, default=None, help="batch (default 1000)")
    p.add_argument("--repeat", type=int, default=None, help="interleaved rounds (default 5)")
    p.add_argument("--libs", default="numpy,torch")
    args = p.parse_args(argv)
    if args.smoke:
        args.quick = True
    args.d = args.d or ([8] if args.smoke else [32, 64] if args.quick else [256, 512])
    args.n = args.n or (16 if args.smoke else 1000)
    args.repeat = args.repeat or (2 if args.quick else 5)
    args.libs = args.libs.split(",")
    return harness.main(args, "out_buffer", run, write_all, configure_threads=configure_threads)


if __name__ == "__main__":
    sys.exit(main())
