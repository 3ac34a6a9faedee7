r"""W8 — beyond second order: ``python -m benchmarks.w8 [--quick] [--out DIR]``.

Laplacian :math:`\Delta u`, bi-Laplacian :math:`\Delta^2 u = \sum_{ij}\partial_i^2\partial_j^2 u`,
:math:`u_{xxx} = \partial^3 u/\partial x_0^3`, and a training step through each
(loss :math:`\mathrm{mean}(q^2)`, its gradient with respect to every weight), on

* the collapsed-Taylor paper's network, tanh MLP ``D → 768 → 768 → 512 → 512 → 1``
  (``D = 50`` for the Laplacian, ``D = 5`` for :math:`\Delta^2` and :math:`u_{xxx}`), and
* width-64 tanh MLPs ``d → 64×4 → 1`` at ``d ∈ {1, 2, 3, 5, 16}``,

``n = 1024`` points, float64 (``--dtypes float64,float32`` adds float32). Peers, all on the
same weights and points:

* ``ours`` — :mod:`hessquik_core` on torch: ``net(x, laplacian=True)``, ``hq.biharmonic``,
  ``hq.pure_partials(net, x, [0], 3)``; the step through torch autograd;
* ``jet`` — jet-for-pytorch's collapsed, graph-simplified Taylor mode, as its own benchmark
  runs it (:mod:`benchmarks.w8_jet`). jet needs Python ≥ 3.12: where this interpreter
  lacks it, it runs in a child process of ``--jet-python`` with the same weights passed
  through a ``.npz`` file and is timed there by the same timing function and policy — the
  one peer *not* timed interleaved with the others (said in the table);
* ``torch.func`` — nested AD: ``trace(vmap(hessian(f)))``; :math:`\Delta^2` as the trace of
  the Hessian of that Laplacian; :math:`u_{xxx}` as ``jacfwd∘jacfwd∘jacfwd`` of
  :math:`t \mapsto f(x + t e_0)`.

Every peer is checked against this library in float64 first (harness), then timed; peak
memory is each checked call's. Targets (printed with the table): ours ≥ 1.5× faster than
jet and ≥ 3× faster than nested AD for every operator and step, at no more peak memory
than jet.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import harness
from .harness import Peer, Runner, Skip

STEM = "w8"
OPS = ("laplacian", "biharmonic", "uxxx")
TASKS = ("eval", "step")
TARGET_JET = 1.5
TARGET_AD = 3.0
DEFAULT_JET_PYTHON = ".venv312/bin/python"
PAPER_WIDTHS = (768, 768, 512, 512)


@dataclass(frozen=True)
class Point:
    """One W8 measurement: network ``net`` (``paper`` or ``w64``) with ``widths`` hidden
    layers, operator ``op``, ``task`` (``eval`` or ``step``), input dimension ``d``."""

    net: str
    op: str
    task: str
    d: int
    n: int
    dtype: str
    widths: tuple[int, ...]
    device: str = "cpu"

    @property
    def series(self) -> str:
        return f"{self.net} {self.op} {self.task} {self.dtype}"


# --------------------------------------------------------------------------
# the shared network and points
# --------------------------------------------------------------------------


def build_net(d: int, widths: tuple[int, ...], seed: int = 2025):
    """``d → widths… → 1``, tanh hidden layers, identity output (NumPy float64 weights)."""
    import hessquik_core as hq

    rng = np.random.default_rng(seed + d)
    return hq.NN(
        hq.FullyConnectedNN([d, *widths], act="tanh", seed=rng),
        hq.SingleLayer(widths[-1], 1, act="identity", seed=rng),
    )


def weights_of(net) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(K, b), …]`` per layer, float64, in ``net.named_parameters()`` order."""
    vals = [np.array(v, dtype=np.float64) for _, v in net.named_parameters()]
    return [(vals[i], vals[i + 1].reshape(-1)) for i in range(0, len(vals), 2)]


def inputs(pt: Point) -> np.ndarray:
    return np.random.default_rng(7 + pt.d).uniform(-1.0, 1.0, (pt.n, pt.d))


def _tdt(name: str):
    import torch

    return getattr(torch, name)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# --------------------------------------------------------------------------
# peers
# --------------------------------------------------------------------------


def _ours(pt: Point, weights: list, x: np.ndarray) -> Runner:
    import torch

    import hessquik_core as hq
    from hessquik_core.training import torch_parameters

    dt = _tdt(pt.dtype)
    net = build_net(pt.d, pt.widths)  # a fresh copy with the shared weights (same seed)
    for (K, b), (Kw, bw) in zip(weights_of(net), weights):
        assert np.array_equal(K, Kw) and np.array_equal(b, bw), "W8: weights differ"
    xt = torch.as_tensor(x, dtype=dt, device=pt.device)

    def q():
        if pt.op == "laplacian":
            return net(xt, laplacian=True).laplacian.reshape(-1)
        if pt.op == "biharmonic":
            return hq.biharmonic(net, xt).reshape(-1)
        return hq.pure_partials(net, xt, [0], 3).reshape(-1)

    if pt.task == "eval":
        net.to("torch", dtype=dt, device=pt.device)

        def call():
            with torch.no_grad():
                out = q()
            _sync(pt.device)
            return out

        return Runner(call, lambda out: {pt.op: out.cpu().numpy()})
    params = torch_parameters(net, dtype=dt, device=pt.device)

    def step():
        loss = (q() ** 2).mean()
        grads = torch.autograd.grad(loss, params, materialize_grads=True)
        _sync(pt.device)
        return loss.detach(), grads

    return Runner(step, lambda out: (float(out[0]), [g.cpu().numpy() for g in out[1]]))


def nested_ad(op: str, f):
    """Per-example ``x: (d,) -> scalar`` of ``op`` by nested ``torch.func`` transforms of ``f``."""
    import torch
    from torch.func import hessian, jacfwd

    def lap(x):
        return torch.diagonal(hessian(f)(x)).sum()

    if op == "laplacian":
        return lap
    if op == "biharmonic":
        return lambda x: torch.diagonal(hessian(lap)(x)).sum()  # Σ_ij ∂_i²∂_j² u

    def uxxx(x):
        e0 = torch.zeros_like(x)
        e0[0] = 1.0
        g = lambda t: f(x + t * e0)  # noqa: E731 - u along the line x + t e0
        return jacfwd(jacfwd(jacfwd(g)))(torch.zeros((), dtype=x.dtype, device=x.device))

    return uxxx


def _torch_func(pt: Point, weights: list, x: np.ndarray) -> Runner:
    import torch
    from torch.func import functional_call, vmap

    from .w8_jet import sequential

    dt = _tdt(pt.dtype)
    seq = sequential(weights, dt, pt.device)
    names = [k for k, _ in seq.named_parameters()]
    params = [p.detach().requires_grad_(pt.task == "step") for _, p in seq.named_parameters()]
    xt = torch.as_tensor(x, dtype=dt, device=pt.device)

    def f_of(ps):
        return lambda xx: functional_call(seq, dict(zip(names, ps)), (xx,)).reshape(())

    def q(ps):
        return vmap(lambda xx: nested_ad(pt.op, f_of(ps))(xx))(xt).reshape(-1)

    if pt.task == "eval":

        def call():
            out = q(params)
            _sync(pt.device)
            return out

        return Runner(call, lambda out: {pt.op: out.detach().cpu().numpy()})

    def step():
        loss = (q(params) ** 2).mean()
        grads = torch.autograd.grad(loss, params, materialize_grads=True)
        _sync(pt.device)
        return loss.detach(), grads

    def to_numpy(out):  # Linear's weight is Kᵀ
        gs = [g.detach().cpu().numpy() for g in out[1]]
        return float(out[0]), [g.T if g.ndim == 2 else g for g in gs]

    return Runner(step, to_numpy)


def _jet_in_process(pt: Point, weights: list, x: np.ndarray) -> Runner:
    from .w8_jet import build

    call, to_numpy = build(pt.op, pt.task, weights, x, pt.dtype, pt.device)
    return Runner(call, to_numpy)


PEERS = harness.Registry(
    Peer("ours", _ours, requires=("torch",), family="ours", backend="torch"),
    Peer(
        "jet",
        _jet_in_process,
        requires=("torch", "jet"),
        backend="torch",
        note="jet-for-pytorch, collapsed and simplified",
    ),
    Peer("torch.func", _torch_func, requires=("torch",), family="nested-ad", backend="torch"),
)


# --------------------------------------------------------------------------
# jet in a child process (another interpreter)
# --------------------------------------------------------------------------


def jet_mode(args) -> tuple[str, str]:
    """``("in-process", "")``, ``("child", python)`` or ``("none", why)``."""
    import importlib.util

    if args.jet_python == "none":
        return "none", "jet disabled (--jet-python none)"
    if importlib.util.find_spec("jet") is not None:
        return "in-process", ""
    py = args.jet_python or os.environ.get("HQ_JET_PYTHON") or DEFAULT_JET_PYTHON
    if not Path(py).exists():
        return "none", f"jet is not installed here and its interpreter {py} is missing (see --jet-python)"
    probe = subprocess.run(
        [py, "-c", "import jet, torch, numpy"], capture_output=True, text=True, timeout=300
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return "none", f"{py} cannot import jet, torch and numpy: {last[:200]}"
    return "child", py


def jet_child(
    pt: Point,
    weights: list,
    x: np.ndarray,
    ref: Any,
    policy: harness.Policy,
    python: str,
    threads: int | None,
    timeout_s: float,
) -> dict:
    """The jet record of ``pt``, measured in a child of ``python`` (see :mod:`benchmarks.w8_jet`)."""
    from . import w8_jet

    rec: dict = dict(asdict(pt), peer="jet", status="ok", note="")
    rec["widths"] = list(pt.widths)
    with tempfile.TemporaryDirectory(prefix="w8_jet_") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        cfg = dict(
            op=pt.op,
            task=pt.task,
            dtype=pt.dtype,
            device=pt.device,
            threads=threads,
            rounds=policy.rounds,
            min_round_s=policy.min_round_s,
            budget_s=policy.budget_s,
            once_s=policy.once_s if math.isfinite(policy.once_s) else 1e300,
            warm_s=policy.warm_s,
        )
        w8_jet.save_input(src, weights, x, cfg)
        script = Path(w8_jet.__file__).resolve()
        try:
            p = subprocess.run(
                [python, str(script), str(src), str(dst)], capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            return dict(rec, status="skip-time", note=f"jet child passed {timeout_s:g} s")
        if p.returncode != 0 or not dst.exists():
            last = (p.stderr.strip().splitlines() or ["?"])[-1]
            return dict(rec, status="error", note=f"jet child exited {p.returncode}: {last[:300]}")
        meta, got = w8_jet.load_result(dst)
    for k in (
        "setup_s",
        "first_s",
        "first_cpu_s",
        "peak_bytes",
        "peak_method",
        "min_s",
        "median_s",
        "rounds",
        "number",
        "jet",
        "python",
        "torch",
    ):
        if k in meta:
            rec[k if k not in ("jet", "python", "torch") else f"child_{k}"] = meta[k]
    rec["note"] = "timed alone in a child process (Python " + str(meta.get("python")) + ")"
    if meta["status"] not in harness.TIMED:
        return dict(rec, status=meta["status"], note=meta.get("note", ""))
    err, where = harness.compare(got, ref, policy.rows)
    rec["rel_err"] = err
    if not err <= harness.tolerance(pt.dtype, policy.tol_float32):
        for k in ("min_s", "median_s", "rounds", "number"):
            rec.pop(k, None)
        return dict(
            rec, status="mismatch", note=f"disagrees with hessquik_core: rel. error {err:.2e} in {where}"
        )
    rec["status"] = meta["status"]
    return rec


# --------------------------------------------------------------------------
# the grid and the run
# --------------------------------------------------------------------------


def points(args) -> list[Point]:
    dtypes = args.dtypes.split(",")
    ops = [o for o in args.ops.split(",") if o]
    tasks = [t for t in args.tasks.split(",") if t]
    bad = [o for o in ops if o not in OPS] + [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown W8 operators or tasks {bad}; expected {OPS} and {TASKS}")
    if args.smoke:
        n, ds, width, paper = 8, [2], 6, (8, 8, 6, 6)
    elif args.quick:
        n, ds, width, paper = 128, [2, 5], 64, PAPER_WIDTHS
    else:
        n, ds, width, paper = 1024, harness.int_list(args.d), args.width, PAPER_WIDTHS
    if args.paper_widths:
        paper = tuple(harness.int_list(args.paper_widths))
    n_given = args.n is not None
    n = args.n if n_given else n
    out: list[Point] = []
    for dt in dtypes:
        if not args.no_paper:
            for op in ops:
                D = args.paper_d_laplacian if op == "laplacian" else args.paper_d_high
                if args.smoke:
                    D = 3
                pn = min(n, 8) if args.quick and not n_given else n  # nested 4th-order AD at width 768
                out += [Point("paper", op, t, D, pn, dt, paper, args.device) for t in tasks]
        for op in ops:
            for d in ds:
                out += [
                    Point(f"w{width}", op, t, d, n, dt, (width,) * args.depth, args.device) for t in tasks
                ]
    return out


def _ad_rule(args, pred: harness.Predictor, pt: Point):
    """Skip nested AD (and jet) where its own smaller points predict it past the limits."""

    def rule(peer: Peer) -> Skip | None:
        if peer.name == "ours":
            return None
        t, m = pred.predict(peer.name, pt)
        return harness.predicted_skip(t, m, max_call_s=args.skip_s, mem_budget=harness.mem_budget(0.5))

    return rule


def run(args, machine: dict) -> dict:
    smoke = dict(rounds=2, min_round_s=0.001, budget_s=0.05) if args.smoke else {}
    policy = harness.Policy(
        rounds=smoke.get("rounds", args.repeat),
        min_round_s=smoke.get("min_round_s", 0.05),
        budget_s=smoke.get("budget_s", 1.0 if args.quick else 3.0),
        once_s=args.max_call_s,
        tol_float32=args.tol_float32,
    )
    mode, how = jet_mode(args) if "jet" in [p.name for p in PEERS.select(args.peers)] else ("none", "")
    machine["jet_mode"] = mode if mode != "none" else f"none: {how}"
    rows: list[dict] = []
    pred = harness.Predictor(
        series=lambda p: (p.net, p.op, p.task, p.dtype, p.widths, p.n),
        units=lambda peer, p: p.d ** {"laplacian": 2, "biharmonic": 4, "uxxx": 1}[p.op],
    )
    selected = PEERS.select(args.peers)
    for pt in points(args):
        harness.log(f"W8 {pt.series} d={pt.d} n={pt.n}")
        net = build_net(pt.d, pt.widths)
        weights = weights_of(net)
        x = inputs(pt)
        ref_pt = Point(pt.net, pt.op, pt.task, pt.d, pt.n, "float64", pt.widths, "cpu")
        r = _ours(ref_pt, weights, x)
        ref = r.to_numpy(r.call())
        del r
        in_harness = [p for p in selected if not (p.name == "jet" and mode != "in-process")]
        cands = harness.candidates(in_harness, pt, weights, x, rule=_ad_rule(args, pred, pt))
        base = dict(asdict(pt), widths=list(pt.widths))
        recs, live = harness.check_then_time(
            cands, ref, dtype=pt.dtype, base=base, policy=policy, device=pt.device
        )
        live.clear()
        if any(p.name == "jet" for p in selected) and mode != "in-process":
            if mode == "none":
                jrec = dict(base, peer="jet", status="unavailable", note=how)
            else:
                t, m = pred.predict("jet", pt)
                skip = harness.predicted_skip(
                    t, m, max_call_s=args.skip_s, mem_budget=harness.mem_budget(0.5)
                )
                jrec = (
                    dict(base, peer="jet", status=skip.status, note=skip.note)
                    if skip
                    else jet_child(pt, weights, x, ref, policy, how, args.threads, args.jet_timeout_s)
                )
            recs.insert(1, jrec)
        harness.ratios(recs, ("ours",))
        pred.add_rows(recs, pt)
        rows += recs
    return {
        "title": "W8: Laplacian, bi-Laplacian, u_xxx and their training steps "
        "(hessquik_core vs jet-for-pytorch vs torch.func nested AD)",
        "argv": sys.argv[1:],
        "targets": {"jet": TARGET_JET, "torch.func": TARGET_AD},
        "rows": rows,
    }


# --------------------------------------------------------------------------
# tables, targets, plot
# --------------------------------------------------------------------------


def targets(rows: list[dict]) -> list[dict]:
    """Per point and peer: the speed-up of ours, its target, met or missed (and memory vs jet)."""
    out = []
    idx = {(r["net"], r["op"], r["task"], r["d"], r["dtype"], r["peer"]): r for r in rows}
    for r in rows:
        if r["peer"] == "ours" or r["status"] not in harness.TIMED:
            continue
        o = idx.get((r["net"], r["op"], r["task"], r["d"], r["dtype"], "ours"))
        if not o or o["status"] not in harness.TIMED:
            continue
        want = TARGET_JET if r["peer"] == "jet" else TARGET_AD
        speed = r["min_s"] / o["min_s"]
        t = dict(
            net=r["net"],
            op=r["op"],
            task=r["task"],
            d=r["d"],
            dtype=r["dtype"],
            peer=r["peer"],
            speedup=speed,
            target=want,
            met=speed >= want,
        )
        if r["peer"] == "jet" and r.get("peak_bytes") is not None and o.get("peak_bytes") is not None:
            t["memory_met"] = o["peak_bytes"] <= r["peak_bytes"]
        out.append(t)
    return out


def markdown(data: dict) -> str:
    rows = data["rows"]
    m = data.get("machine", {})
    lines = [f"# {data['title']}", ""]
    if data.get("label"):
        lines += [f"*{data['label']}*", ""]
    lines += [
        f"Command: `python -m benchmarks.w8 {' '.join(data.get('argv', []))}`",
        "",
        f"jet: {m.get('jet_mode', '?')}. "
        + (
            "jet ran in a child process (another Python, through a .npz with the same weights and points) "
            "and was timed there, alone, by the same timing function and policy: not interleaved with "
            "the other peers."
            if m.get("jet_mode") == "child"
            else "Every peer ran in this process, timed in interleaved rounds."
        ),
        "",
        "Targets: ours ≥ 1.5× faster than jet and ≥ 3× faster than torch.func nested AD for every "
        "operator and step, at no more peak memory than jet.",
        "",
    ]
    lines += harness.machine_md(m)
    for key in sorted({(r["net"], r["op"], r["task"], r["dtype"]) for r in rows}):
        sel = [r for r in rows if (r["net"], r["op"], r["task"], r["dtype"]) == key]
        lines += [f"## {key[0]}: {key[1]} {key[2]} ({key[3]}, n = {sel[0]['n']})", ""]
        lines += harness.series_tables(sel, "d", PEERS.names, ("ours",))
        mem = {(r["d"], r["peer"]): harness.fmt_bytes(r.get("peak_bytes")) for r in sel if "peak_bytes" in r}
        if mem:
            ds = sorted({r["d"] for r in sel})
            lines += ["Peak memory of the checked call:", ""]
            lines += harness.md_table(
                ["d", *PEERS.names], ([d, *(mem.get((d, p), "") for p in PEERS.names)] for d in ds)
            )
            lines += [""]
    tg = targets(rows)
    if tg:
        lines += ["## Targets", ""]
        lines += harness.md_table(
            ["network", "operator", "task", "d", "dtype", "vs", "speed-up", "target", "met", "memory ≤ jet"],
            (
                [
                    t["net"],
                    t["op"],
                    t["task"],
                    t["d"],
                    t["dtype"],
                    t["peer"],
                    f"{t['speedup']:.2f}×",
                    f"{t['target']:g}×",
                    "yes" if t["met"] else "**no**",
                    {True: "yes", False: "**no**"}.get(t.get("memory_met"), ""),
                ]
                for t in tg
            ),
        )
        lines += [""]
    lines += harness.notes_md(rows, lambda r: f"{r['net']} {r['op']} {r['task']} d={r['d']} {r['dtype']}")
    lines += harness.agreement_md(rows, ("peer", "dtype"), "the quantity or loss and gradients")
    return "\n".join(lines)


CSV = [
    "net",
    "op",
    "task",
    "d",
    "n",
    "dtype",
    "device",
    "peer",
    "status",
    "min_s",
    "median_s",
    "peak_bytes",
    "rel_err",
    "note",
]


def plot(out: Path, data: dict) -> Path | None:
    rows = data["rows"]
    panels = []
    for key in sorted({(r["net"], r["op"], r["task"], r["dtype"]) for r in rows if r["net"] != "paper"}):
        panels.append((" ".join(key), lambda r, k=key: (r["net"], r["op"], r["task"], r["dtype"]) == k))
    style = {"ours": dict(marker="o"), "jet": dict(marker="s"), "torch.func": dict(marker="^")}
    return harness.plot_series(
        out / f"{STEM}.png",
        rows,
        panels,
        x="d",
        peers=PEERS.names,
        style=style,
        ylabel="seconds per call",
        title=data["title"],
        ncols=3,
    )


def write(out: Path, data: dict, plots: bool = True) -> None:
    harness.write_outputs(out, STEM, data, markdown=markdown, csv_fields=CSV, plot=plot, plots=plots)


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.w8``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.w8", description=__doc__.split("\n\n")[0])
    harness.add_common_args(p)
    p.add_argument("--peers", default=None, help=f"some of {', '.join(PEERS.names)} (default all)")
    p.add_argument("--ops", default=",".join(OPS), help="laplacian,biharmonic,uxxx")
    p.add_argument("--tasks", default=",".join(TASKS), help="eval,step")
    p.add_argument("--d", default="1,2,3,5,16", help="input dimensions of the width-64 MLPs")
    p.add_argument("--n", type=int, default=None, help="points per batch (default 1024; quick 128)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--dtypes", default="float64", help="float64 and/or float32")
    p.add_argument("--paper-widths", default="", help="hidden widths of the paper network (768,768,512,512)")
    p.add_argument("--paper-d-laplacian", type=int, default=50)
    p.add_argument("--paper-d-high", type=int, default=5, help="D of the paper network for Δ² and u_xxx")
    p.add_argument("--no-paper", action="store_true", help="only the width-64 MLPs")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--repeat", type=int, default=7, help="interleaved rounds at most")
    p.add_argument("--max-call-s", type=float, default=30.0, help="a slower call is timed once")
    p.add_argument(
        "--skip-s",
        type=float,
        default=120.0,
        help="skip a peer whose smaller points predict a call longer than this",
    )
    p.add_argument("--tol-float32", type=float, default=5e-3)
    p.add_argument(
        "--jet-python",
        default=None,
        help=f"interpreter with jet-for-pytorch (default $HQ_JET_PYTHON or {DEFAULT_JET_PYTHON}; 'none': skip)",
    )
    p.add_argument("--jet-timeout-s", type=float, default=600.0)
    return p


def main(argv=None, *, configure_threads: bool = True) -> int:
    args = parser().parse_args(argv)
    if args.smoke:
        args.quick = True
    t0 = time.perf_counter()
    rc = harness.main(args, STEM, run, write, configure_threads=configure_threads)
    harness.log(f"W8 done in {time.perf_counter() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
