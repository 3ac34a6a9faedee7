r"""High-dimensional inputs: exact derivatives at d = 10⁴ … 10⁶ against a plain forward pass.

``python -m benchmarks.highdim [--quick] [--out DIR]`` writes ``highdim.md``,
``highdim.json``, ``highdim.csv`` and ``highdim_time_vs_d.png``.

At large d the backward-mode Laplacian, Hessian diagonal and gradient cost
one ``n·d·width`` product at the first layer plus work independent of d, so
their floor is a small multiple of the forward pass itself. Measured here,
for a tanh MLP (width 64, depth 4) with ``n·d ≈ --nd`` inputs (so that x
fits):

* ``numpy-forward`` / ``torch-forward`` — the forward pass written out in
  NumPy / torch with the same weights (the floor);
* ``value`` — this library's value-only call ``net(x)``;
* ``laplacian``, ``hessian_diagonal``, ``gradient`` — this library, exact
  (``mode="auto"``), and ``divergence`` on a network ``R^d -> R^d`` of the
  same hidden layers (its own forward pass is ``numpy-forward-vec``);
* ``hutchinson-eq`` — :func:`hessquik_core.laplacian_estimate` with as many
  Rademacher probes as fit in the exact Laplacian's time, and its relative
  RMS error against the exact Laplacian (``hutchinson-2``: two probes);
* ``folx-laplacian`` (``jit(vmap(forward_laplacian))``) and ``jax-gradient``
  (``jit(vmap(grad))``) where they fit in memory.

Every measurement runs in its own subprocess with a time limit, so a call
that refuses (``MemoryBudgetError``), crashes, runs out of memory or runs too
long is recorded as such — with its message — and the run goes on. Results
of the first rows are checked against each other (value against the plain
forward pass, Laplacian against folx and against the sum of the Hessian
diagonal, gradient against JAX).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/highdim.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import numpy as np

from . import harness

SCALAR = ("numpy-forward", "torch-forward", "value", "laplacian", "hessian_diagonal", "gradient")
EXTERNAL = ("folx-laplacian", "jax-gradient")
VECTOR = ("numpy-forward-vec", "divergence")
METHODS = SCALAR + ("hutchinson-2", "hutchinson-eq") + EXTERNAL + VECTOR
K_ROWS = 2  # rows kept for the cross-checks


def _spec(d: int, width: int, depth: int, m: int = 1):
    from .nets import NetSpec

    return NetSpec("mlp", d, m, width=width, depth=depth)


def _inputs(n: int, d: int, dtype) -> np.ndarray:
    # drawn in float32 blocks: at n·d = 2.5e7 a float64 normal draw is a noticeable
    # part of a child's setup; the values are the same for every method
    return np.random.default_rng(1).standard_normal((n, d), dtype=np.float32).astype(dtype)


def _plain_numpy(records, x):
    u = x
    for r in records:
        z = u @ r.K
        if r.b is not None:
            z = z + r.b
        u = np.tanh(z) if r.act == "tanh" else z
    return u


# --------------------------------------------------------------------------
# child: one method at one point
# --------------------------------------------------------------------------


def _child(cfg: dict) -> dict:
    """Build the network, run ``cfg['method']``: warm-up, then best of ``repeat``."""
    from . import nets

    method, d, n = cfg["method"], cfg["d"], cfg["n"]
    dtype = np.dtype(cfg["dtype"])
    m = d if method in VECTOR else 1
    net = nets.build(_spec(d, cfg["width"], cfg["depth"], m))
    if dtype != np.float64:
        net.to("numpy", dtype=dtype)
    records = nets.spec_of(net)
    x = _inputs(n, d, dtype)
    keep: dict = {}

    if method in ("numpy-forward", "numpy-forward-vec"):
        recs = [
            type(r)(r.K.astype(dtype), None if r.b is None else r.b.astype(dtype), r.act) for r in records
        ]

        def call():
            return _plain_numpy(recs, x)

        def rows(out):
            return {"value": out[:K_ROWS]}
    elif method == "torch-forward":
        import torch

        torch.set_num_threads(cfg["threads"])
        f = nets.torch_function(records, getattr(torch, dtype.name))
        xt = torch.from_numpy(x)

        def call():
            with torch.no_grad():
                return f(xt)

        def rows(out):
            return {"value": out[:K_ROWS].numpy()}
    elif method in ("value", "laplacian", "hessian_diagonal", "gradient", "divergence"):
        kw = {} if method == "value" else {method: True}

        def call():
            return net(x, **kw)

        def rows(r):
            out = {"value": np.asarray(r.value)[:K_ROWS]}
            if method != "value":
                out[method] = np.asarray(getattr(r, method))[:K_ROWS]
            return out
    elif method.startswith("hutchinson"):
        import hessquik_core as hq

        k = int(cfg["k"])

        def call():
            return hq.laplacian_estimate(net, x, k, seed=0)

        def rows(est):
            return {"laplacian": np.asarray(est.value)[:K_ROWS]}

        keep["k"] = k
    elif method in EXTERNAL:
        jax = harness.jax_setup()
        import jax.numpy as jnp

        f = nets.jax_function(records, getattr(jnp, dtype.name))
        xj = jnp.asarray(x)
        if method == "folx-laplacian":
            from folx import forward_laplacian

            fl = forward_laplacian(f, sparsity_threshold=0)
            fn = jax.jit(jax.vmap(lambda xi: fl(xi).laplacian))
        else:
            fn = jax.jit(jax.vmap(jax.grad(lambda xi: f(xi)[0])))
        t0 = time.perf_counter()
        fn = fn.lower(xj).compile()
        keep["compile_s"] = time.perf_counter() - t0

        def call():
            return jax.block_until_ready(fn(xj))

        def rows(out):
            a = np.asarray(out)[:K_ROWS]
            if method == "folx-laplacian":
                return {"laplacian": a.reshape(K_ROWS, 1)}
            return {"gradient": a[..., None]}
    else:
        raise ValueError(f"unknown method {method!r}")

    t0 = time.perf_counter()
    out = call()
    first = time.perf_counter() - t0
    got = rows(out)
    if method.startswith("hutchinson") and cfg.get("exact"):
        exact = np.load(cfg["exact"])
        est = np.asarray(out.value, dtype=np.float64)
        keep["rel_rms_error"] = float(np.sqrt(np.mean((est - exact) ** 2) / np.mean(exact**2)))
        keep["stderr_mean"] = float(np.mean(np.asarray(out.stderr)))
    if method == "laplacian" and cfg.get("save_exact"):
        np.save(cfg["save_exact"], np.asarray(out.laplacian, dtype=np.float64))
    del out
    times = []
    budget = cfg["budget_s"]
    t_all = time.perf_counter()
    for _ in range(cfg["repeat"]):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
        del out
        if time.perf_counter() - t_all > budget:
            break
    np.savez(cfg["rows_path"], **got)
    try:
        with open("/proc/self/status") as fh:
            hwm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        hwm = None
    return dict(keep, status="ok", first_s=first, min_s=min(times), repeats=len(times), peak_rss_bytes=hwm)


def _child_main(cfg_json: str) -> int:
    cfg = json.loads(cfg_json)
    harness.set_threads(cfg["threads"])
    try:
        res = _child(cfg)
    except Exception as e:  # recorded, never hidden: a refusal is a result
        res = {"status": "error", "error_type": type(e).__name__, "note": str(e).replace("\n", " ")[:400]}
    print("HIGHDIM-RESULT " + json.dumps(res), flush=True)
    return 0


# --------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------


def _spawn(cfg: dict, timeout_s: float) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [sys.executable, "-m", "benchmarks.highdim", "--child", json.dumps(cfg)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            cwd=root,
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "note": f"no result within {timeout_s:.0f} s (killed)"}
    wall = time.perf_counter() - t0
    for line in p.stdout.splitlines():
        if line.startswith("HIGHDIM-RESULT "):
            return dict(json.loads(line[len("HIGHDIM-RESULT ") :]), wall_s=wall)
    tail = (p.stderr or "").strip().splitlines()[-3:]
    why = "killed (out of memory?)" if p.returncode in (-9, 137) else f"exit code {p.returncode}"
    return {"status": "crash", "note": f"{why}: {' | '.join(tail)}"[:400], "wall_s": wall}


def in_process(cfg: dict) -> dict:
    """The child's work in this process (no time limit: for the smoke test)."""
    try:
        return _child(cfg)
    except Exception as e:
        return {"status": "error", "error_type": type(e).__name__, "note": str(e).replace("\n", " ")[:400]}


def _rel(a, b) -> float:
    return harness.compare({"a": a}, {"a": np.asarray(b, dtype=np.float64)})[0]


def _checks(rows_of: dict) -> dict:
    """Cross-checks of the first rows: name -> relative deviation."""
    out = {}
    ref = rows_of.get("numpy-forward")
    for mth in ("value", "laplacian", "hessian_diagonal", "gradient", "torch-forward"):
        got = rows_of.get(mth)
        if ref is not None and got is not None and "value" in got:
            out[f"{mth}: value vs numpy-forward"] = _rel(got["value"], ref["value"])
    lap = rows_of.get("laplacian")
    if lap is not None:
        diag = rows_of.get("hessian_diagonal")
        if diag is not None:
            out["laplacian vs sum(hessian_diagonal)"] = _rel(
                diag["hessian_diagonal"].sum(axis=1), lap["laplacian"]
            )
        fx = rows_of.get("folx-laplacian")
        if fx is not None:
            out["laplacian vs folx"] = _rel(fx["laplacian"], lap["laplacian"])
    g, jg = rows_of.get("gradient"), rows_of.get("jax-gradient")
    if g is not None and jg is not None:
        out["gradient vs jax"] = _rel(jg["gradient"], g["gradient"])
    v, div = rows_of.get("numpy-forward-vec"), rows_of.get("divergence")
    if v is not None and div is not None:
        out["divergence: value vs numpy-forward-vec"] = _rel(div["value"], v["value"])
    return out


def run(args, desc: dict) -> dict:
    from . import machine

    t_start = time.perf_counter()
    avail = machine.mem_available() or 8 * 2**30
    rows, checks = [], {}
    tmp = Path(tempfile.mkdtemp(prefix="highdim-"))
    itemsize = np.dtype(args.dtype).itemsize
    failed: dict = {}  # method -> (d, status) of its first failure: larger d is not tried
    for d in args.d:
        n = max(1, int(args.nd // d))
        rows_of: dict = {}
        exact_path = tmp / f"lap_{d}.npy"
        t_of: dict = {}
        for method in args.methods:
            rec = {"d": d, "n": n, "width": args.width, "depth": args.depth, "dtype": args.dtype}
            rec["method"] = method
            rec["x_bytes"] = n * d * itemsize
            cfg = dict(
                rec,
                threads=args.threads,
                repeat=args.repeat,
                budget_s=args.budget_s,
                rows_path=str(tmp / f"{method}_{d}.npz"),
            )
            if method in failed:
                d0, st0 = failed[method]
                rec.update(status="not-run", note=f"{st0} at d = {d0:,} (n·d fixed: larger d costs more)")
                rows.append(rec)
                continue
            if time.perf_counter() - t_start > args.max_total_s:
                rec.update(
                    status="not-run", note=f"the run's time budget ({args.max_total_s:.0f} s) is used up"
                )
                rows.append(rec)
                continue
            if method in EXTERNAL:
                # folx (sparsity_threshold=0) starts from the dense d x d identity Jacobian of
                # x and carries a (d, width) one per layer; vmap(grad) keeps (n, d, width)
                # cotangents. Where the full batch does not fit, the largest n that does is
                # run instead, and said so (its time is for that n, not extrapolated)
                per_ex = (d * d + 4 * d * args.width) * itemsize if method == "folx-laplacian" else 0
                per_ex = per_ex or 4 * d * args.width * itemsize
                n_fit = int(0.4 * avail // per_ex)
                if n_fit < 1:
                    rec.update(
                        status="skip-memory",
                        note=f"one example needs ~{per_ex / 2**30:.0f} GiB > 40% of the available "
                        f"{avail / 2**30:.0f} GiB",
                    )
                    rows.append(rec)
                    continue
                if n_fit < n:
                    rec["n"] = cfg["n"] = n_fit
                    rec["note"] = f"run at n = {n_fit} (n = {n} needs ~{n * per_ex / 2**30:.0f} GiB)"
            if method == "laplacian":
                cfg["save_exact"] = str(exact_path)
            if method.startswith("hutchinson"):
                if method == "hutchinson-2":
                    cfg["k"] = 2
                else:
                    t2, tl = t_of.get("hutchinson-2"), t_of.get("laplacian")
                    if t2 is None or tl is None:
                        rec.update(
                            status="not-run", note="needs the exact Laplacian's and hutchinson-2's times"
                        )
                        rows.append(rec)
                        continue
                    # probes cost about linearly: as many as fit in the exact Laplacian's time
                    cfg["k"] = max(2, int(2 * tl / t2))
                if exact_path.exists():
                    cfg["exact"] = str(exact_path)
            res = in_process(cfg) if args.in_process else _spawn(cfg, args.timeout_s)
            rec.update(res)
            if rec["status"] in ("timeout", "crash"):
                failed[method] = (d, rec["status"])
            if rec["status"] == "ok":
                t_of[method] = rec["min_s"]
                p = Path(cfg["rows_path"])
                if p.exists():
                    with np.load(p) as z:
                        rows_of[method] = {k: z[k] for k in z.files}
            print(
                f"d={d} n={n} {method}: {rec['status']} "
                + (f"{rec['min_s'] * 1e3:.1f} ms" if rec["status"] == "ok" else rec.get("note", "")),
                file=sys.stderr,
                flush=True,
            )
            rows.append(rec)
        checks[str(d)] = _checks(rows_of)
        base = {"numpy-forward": None, "numpy-forward-vec": None}
        for r in rows:
            if r["d"] == d and r["method"] in base and r["status"] == "ok":
                base[r["method"]] = r["min_s"]
        for r in rows:
            if r["d"] == d and r.get("status") == "ok":
                b = base["numpy-forward-vec" if r["method"] in VECTOR else "numpy-forward"]
                if b and r["n"] == n:  # a method run at a smaller n has no ratio
                    r["over_forward"] = r["min_s"] / b
    return {
        "title": "High-dimensional inputs: exact derivatives against a plain forward pass",
        "argv": sys.argv[1:],
        "config": {
            "d": args.d,
            "nd": args.nd,
            "width": args.width,
            "depth": args.depth,
            "dtype": args.dtype,
            "methods": args.methods,
            "timeout_s": args.timeout_s,
            "repeat": args.repeat,
        },
        "rows": rows,
        "checks": checks,
    }


def markdown(data: dict) -> str:
    cfg, m = data["config"], data["machine"]
    lines = [f"# {data['title']}", ""]
    if data.get("label"):
        lines += [f"**{data['label']}**", ""]
    lines += [
        f"tanh MLP, width {cfg['width']}, depth {cfg['depth']}, scalar output (divergence: output "
        f'dimension d); n = {cfg["nd"]:.3g} / d examples; {cfg["dtype"]}, NumPy backend, `mode="auto"`. '
        f"Best of up to {cfg['repeat']} calls after a warm-up, each method in its own process "
        f"(limit {cfg['timeout_s']:.0f} s). Produced by `python -m benchmarks.highdim "
        f"{' '.join(data.get('argv', []))}` in {data['wall_s']:.0f} s.",
        "",
        *harness.machine_md(m),
        "Time per call, and in brackets its ratio to the plain NumPy forward pass of the same network "
        "(the issue's target: ≤ 2.5× for the exact Laplacian, diagonal, divergence and gradient). "
        "The batch-independent weight products of the high-dimensional routes (the Gram matrix "
        "M₁ᵀM₁ and its root, M_L M₁; docs/performance.md) are remembered for NumPy weights, so "
        "the timed calls after the warm-up reuse them; `first_s` in highdim.json is the first call, "
        "which computes them.",
        "",
    ]
    ds = cfg["d"]
    idx = {(r["d"], r["method"]): r for r in data["rows"]}
    lines.append(
        "| method | "
        + " | ".join(f"d = {d:,} (n = {idx.get((d, 'value'), {}).get('n', '')})" for d in ds)
        + " |"
    )
    lines.append("|---" * (len(ds) + 1) + "|")
    for mth in cfg["methods"]:
        cells = []
        for d in ds:
            r = idx.get((d, mth))
            if r is None:
                cells.append("")
            elif r["status"] == "ok":
                c = harness.fmt_time(r["min_s"])
                if r.get("over_forward") is not None:
                    c += f" ({r['over_forward']:.1f}×)"
                elif r["n"] != idx.get((d, "numpy-forward"), r)["n"]:
                    c += f" at n = {r['n']}"
                if r.get("k") is not None:
                    c += f", k = {r['k']}"
                    if r.get("rel_rms_error") is not None:
                        c += f", rel. RMS error {r['rel_rms_error']:.2g}"
                cells.append(c)
            else:
                cells.append(f"**{r['status']}**")
        lines.append(f"| `{mth}` | " + " | ".join(cells) + " |")
    lines.append("")
    bad = [r for r in data["rows"] if r["status"] != "ok" or r.get("note")]
    if bad:
        lines += ["## Failures, refusals and skips (with their messages)", ""]
        for r in bad:
            et = f"{r['error_type']}: " if r.get("error_type") else ""
            lines.append(
                f"- `{r['method']}` at d = {r['d']:,}, n = {r['n']}: {r['status']} — {et}{r.get('note', '')}"
            )
        lines.append("")
    lines += ["## Cross-checks (first rows; max abs deviation / max abs entry)", ""]
    for d, chk in data["checks"].items():
        if chk:
            lines.append(f"- d = {int(d):,}: " + "; ".join(f"{k} {v:.1e}" for k, v in chk.items()))
    lines.append("")
    return "\n".join(lines)


def plot(out: Path, data: dict) -> Path | None:
    plt = harness.pyplot()
    if plt is None:
        return None
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    if not ok:
        return None
    import textwrap

    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    colors = plt.get_cmap("tab20").colors
    for i, mth in enumerate(data["config"]["methods"]):
        # a method run at a reduced n (folx where the batch does not fit) is not on this plot
        pts = sorted((r["d"], r["min_s"]) for r in ok if r["method"] == mth and "over_forward" in r)
        if pts:
            ls = "--" if "forward" in mth else ("-." if mth.startswith(("hutch", "folx", "jax")) else "-")
            ax.plot(*zip(*pts), ls, marker="o", color=colors[(2 * i) % 20 + (i >= 10)], label=mth)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("input dimension d (n·d fixed)")
    ax.set_ylabel("time per call (s)")
    title = data["title"] + (f". {data['label']}" if data.get("label") else "")
    ax.set_title("\n".join(textwrap.wrap(title, 100)), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "highdim_time_vs_d.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


CSV_FIELDS = (
    "d n width depth dtype method status min_s first_s repeats over_forward k rel_rms_error "
    "peak_rss_bytes error_type note"
).split()


def write_all(out: Path, data: dict, plots: bool = True) -> None:
    harness.write_outputs(
        out, "highdim", data, markdown=markdown, csv_fields=CSV_FIELDS, plot=plot, plots=plots
    )


def _ints(s: str) -> list[int]:
    return [int(float(v)) for v in s.split(",") if v]


def main(argv=None, *, configure_threads: bool = True) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.highdim", description=__doc__.split("\n\n")[0])
    harness.add_common_args(p)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--d", type=_ints, default=None, help="e.g. 1e4,1e5,1e6")
    p.add_argument("--nd", type=float, default=None, help="n·d (default 2.5e7)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--dtype", default="float64")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=10.0, help="timing time per method (after warm-up)")
    p.add_argument("--timeout-s", type=float, default=None, help="limit per method (default 120 s)")
    p.add_argument(
        "--max-total-s", type=float, default=1800.0, help="methods not started by then are not run"
    )
    p.add_argument(
        "--in-process", action="store_true", help="no subprocesses (and no time limit): for the test suite"
    )
    args = p.parse_args(argv)
    if args.child is not None:
        return _child_main(args.child)
    from . import machine

    # the children inherit the thread settings through the environment harness.main sets
    args.threads = args.threads or machine.threads()
    if args.smoke:
        args.quick = True
    if args.d is None:
        args.d = (
            [100, 400] if args.smoke else ([1000, 10_000] if args.quick else [10_000, 100_000, 1_000_000])
        )
    if args.nd is None:
        args.nd = 2e4 if args.smoke else (2.5e5 if args.quick else 2.5e7)
    if args.timeout_s is None:
        args.timeout_s = 60.0 if args.quick else 120.0
    if args.quick:
        args.repeat, args.budget_s = min(args.repeat, 3), min(args.budget_s, 1.0)
    args.methods = args.methods.split(",")
    bad = sorted(set(args.methods) - set(METHODS))
    if bad:
        p.error(f"unknown methods {bad}; expected some of {list(METHODS)}")
    return harness.main(args, "highdim", run, write_all, configure_threads=configure_threads)


if __name__ == "__main__":
    sys.exit(main())
