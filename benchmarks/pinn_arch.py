r"""Fourier features + gated MLP: the Laplacian and a training step against torch.func, JAX and folx.

``python -m benchmarks.pinn_arch [--quick] [--out DIR]``. The network is the
one physics-informed training uses most with this library's issue-12 layers,

.. math::
    u = \mathrm{GatedMLP}(2F, w, \text{depth}, 1)\circ\mathrm{FourierFeatures}(d, F),

``FourierFeatures`` :math:`x \mapsto [\sin 2\pi xB, \cos 2\pi xB]` (:math:`B`
trained too) followed by the gated ("modified") MLP
:math:`H_{l+1} = (1 - Z_l)\odot U + Z_l\odot V`, :math:`Z_l = \tanh(H_l W_l + b_l)`
(default :math:`F = 32`, :math:`w = 64`, depth 4, tanh), at
:math:`d \in \{2, 3, 16, 64\}`, :math:`n = 1024`, float64 and float32, one
thread. Two tasks are timed:

``laplacian``
    evaluation (W3-style): value and :math:`\Delta u` at the n points.
    Peers: ``ours-numpy`` and ``ours-torch`` (``net(x, laplacian=True)``,
    ``mode="auto"``), ``torch.func`` (``vmap(hessian)``, trace), ``jax``
    (``jit(vmap(jax.hessian))``, trace) and ``jax+folx``
    (``jit(vmap(folx.forward_laplacian))``);
``step``
    one training step: :math:`L = \frac1n\sum_k(\Delta u(x_k) + f_k)^2` and
    its gradient with respect to every weight (:math:`B` included). Peers:
    ``ours-torch`` (autograd through ``net(x, laplacian=True)`` after
    :func:`hessquik_core.training.torch_parameters`), ``torch.func``
    (``vmap(hessian)`` then autograd) and ``jax+folx``
    (``jit(value_and_grad(loss))`` over folx's ``forward_laplacian``), JAX
    compiled ahead of time; ``--step-jax-hessian`` adds ``jax``, the same
    over ``vmap(jax.hessian)`` (slow to compile and to run: off by default
    to keep the full run within ~6 minutes). These are W6's step peers
    (:mod:`benchmarks.training_step`, its Laplacian loss), and the evaluation
    peers are W3's (:mod:`benchmarks.peers`: JAX closes over the weights as
    constants), each handed this network as a :class:`benchmarks.nets.Model`.

The torch and JAX versions of the network are written here from the layer
definitions (:mod:`hessquik_core.layers.fourier`, :mod:`hessquik_core.layers.gated`)
and get this library's weights, so every peer evaluates the same function.
Before timing, every peer's output (value and Laplacian, or loss and weight
gradient) is compared with this library's float64 result: relative
deviation at most ``1e-8`` in float64 (``5e-3`` in float32, checked against
float64); a peer that disagrees is reported and not timed. Timings are the
best of up to ``--repeat`` interleaved rounds (each round calls every peer of
the point once); where a peer is faster than this library, this library's
call is profiled (``cProfile``, the functions with the largest own time) and
the profile is written with the results.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/pinn_arch.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import numpy as np

from . import harness, nets
from .harness import Peer, Runner, Skip

TASKS = ("laplacian", "step")
OURS = ("ours-numpy", "ours-torch")
_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class Point:
    task: str
    d: int
    n: int
    dtype: str
    F: int = 32
    width: int = 64
    depth: int = 4

    @property
    def itemsize(self) -> int:
        return 8 if self.dtype == "float64" else 4


# --------------------------------------------------------------------------
# the network and the problem, shared by every peer
# --------------------------------------------------------------------------


def build(pt: Point):
    """The network (NumPy float64 weights from fixed seeds); every call builds the same one."""
    import hessquik_core as hq

    return hq.NN(
        hq.FourierFeatures(pt.d, pt.F, trainable=True, seed=10 + pt.d),
        hq.GatedMLP(2 * pt.F, pt.width, pt.depth, 1, act="tanh", seed=20 + pt.d),
    )


def weights(net) -> list[np.ndarray]:
    """The parameters in ``net.named_parameters()`` order (float64 NumPy):
    ``B``, ``S.K``, ``S.b``, ``g<l>.W``, ``g<l>.b`` (each gated step), ``out.K``, ``out.b``."""
    names = [k for k, _ in net.named_parameters()]
    depth = sum(1 for k in names if k.endswith(".W"))
    want = ["0.B", "1.S.K", "1.S.b"]
    for i in range(depth):
        want += [f"1.g{i}.W", f"1.g{i}.b"]
    want += ["1.out.K", "1.out.b"]
    if names != want:  # the peers' functions below assume this layout
        raise AssertionError(f"unexpected parameter layout {names}, expected {want}")
    return [np.array(v, dtype=np.float64) for _, v in net.named_parameters()]


def problem(pt: Point, net) -> dict:
    """Collocation points in :math:`[-1, 1]^d` and a source ``f`` of the size of :math:`\\Delta u`."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-1.0, 1.0, (pt.n, pt.d))
    lap = np.asarray(net(x, laplacian=True).laplacian)
    scale = float(np.sqrt(np.mean(lap**2))) or 1.0
    return {"x": x, "f": scale * rng.standard_normal((pt.n, 1))}


def param_function(lib_name: str):
    """Per-example ``f(ps, x: (d,)) -> (1,)`` in ``"torch"`` or ``"jax"`` (``ps`` in
    :func:`weights` order), from the layer definitions."""
    if lib_name == "torch":
        import torch as lib

        cat = lib.cat
    else:
        import jax.numpy as lib

        cat = lib.concatenate

    def f(ps, xi):
        B, SK, Sb = ps[0], ps[1], ps[2]
        w = Sb.shape[0] // 3
        z = xi @ (_TWO_PI * B)
        s = lib.tanh(cat([lib.sin(z), lib.cos(z)], -1) @ SK + Sb)
        U, V, H = s[:w], s[w : 2 * w], s[2 * w :]
        for i in range(3, len(ps) - 2, 2):
            Z = lib.tanh(H @ ps[i] + ps[i + 1])
            H = (1 - Z) * U + Z * V
        return H @ ps[-2] + ps[-1]

    return f


def model(pt: Point, W: list) -> nets.Model:
    """This network in every peer's form (the peers of W3 and W6 take it as it is)."""
    return nets.Model(lambda: build(pt), W, param_function)


# --------------------------------------------------------------------------
# peers: W3's evaluation peers and W6's step peers, handed this network
# --------------------------------------------------------------------------


def _eval(peer: str):
    """W3's peer ``peer`` (:mod:`benchmarks.peers`: value and Laplacian) on this network."""

    def build_eval(pt: Point, m: nets.Model, prob) -> Runner:
        from .peers import PEERS

        return PEERS[peer].build(pt, m.build(), m, prob["x"])  # a fresh network: its cache is the peer's

    return build_eval


def _step(w6_peer: str):
    """W6's step peer ``w6_peer`` (its Laplacian loss, mean((Δu + f)²)) on this network."""

    def build_step(pt: Point, m: nets.Model, prob) -> Runner:
        from . import training_step as ts

        return ts.REGISTRY[w6_peer].build(
            ts.StepPoint(pt.d, pt.width, pt.n, pt.dtype, "laplacian", pt.depth), m, prob
        )

    return build_step


def _peer(name: str, requires: tuple[str, ...] = (), **by_task) -> Peer:
    """A peer whose builder depends on the point's task (``laplacian=...``, ``step=...``)."""

    def build(pt: Point, m: nets.Model, prob) -> Runner:
        return by_task[pt.task](pt, m, prob)

    family = "ours" if name.startswith("ours") else name
    return Peer(
        name, build, requires=requires, family=family, tasks=tuple(by_task), backend=name.split("-")[-1]
    )


REGISTRY = harness.Registry(
    _peer("ours-numpy", laplacian=_eval("ours-numpy")),
    _peer("ours-torch", ("torch",), laplacian=_eval("ours-torch"), step=_step("ours-auto")),
    _peer("torch.func", ("torch",), laplacian=_eval("torch.func"), step=_step("torch.func")),
    _peer("jax", ("jax",), laplacian=_eval("jax"), step=_step("jax")),
    _peer("jax+folx", ("jax", "folx"), laplacian=_eval("folx"), step=_step("jax+folx")),
)
ALL_PEERS = REGISTRY.names


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------


def grid(args) -> list[Point]:
    return [
        Point(task, d, args.n, dtype, F=args.F, width=args.width, depth=args.depth)
        for task in args.tasks
        for dtype in args.dtypes
        for d in args.d
    ]


def run_point(pt: Point, args, log) -> tuple[list[dict], dict | None]:
    """Every peer at one point: build, check against the float64 reference, time interleaved."""
    net = build(pt)
    W = weights(net)
    prob = problem(pt, net)
    m = model(pt, W)
    base = dict(asdict(pt), n_params=int(sum(a.size for a in W)))
    ref_name = "ours-numpy" if pt.task == "laplacian" else "ours-torch"
    try:
        ref_pt = Point(pt.task, pt.d, pt.n, "float64", pt.F, pt.width, pt.depth)
        rr = REGISTRY[ref_name].build(ref_pt, m, prob)
        ref = rr.to_numpy(rr.call())
    except Exception as e:  # no reference: nothing can be checked, every peer says why
        why = f"reference ({ref_name}, float64) failed: {type(e).__name__}: {e}".replace("\n", " ")[:300]
        log(f"  {why}")
        return [dict(base, peer=p, status="error", note=why) for p in args.peers], None

    def rule(p: Peer) -> Skip | None:
        if (pt.task, p.name) == ("step", "jax") and not args.step_jax_hessian:
            return Skip("not-run", "not asked for (--step-jax-hessian)")
        return None

    cands = harness.candidates(REGISTRY.select(args.peers), pt, m, prob, task=pt.task, rule=rule)
    if pt.dtype == "float64" and ref_name in cands and not isinstance(cands[ref_name], Skip):
        cands[ref_name] = lambda: rr  # the reference is this peer at this point: reuse its build
    policy = harness.Policy(
        rounds=args.repeat,
        min_round_s=0.01 if args.quick else 0.05,
        budget_s=args.budget_s,
        once_s=args.max_call_s,
    )
    rows, live = harness.check_then_time(cands, ref, dtype=pt.dtype, policy=policy, base=base, log=log)
    harness.ratios(rows, OURS)
    # profile the faster of this library's calls (numpy or torch) against the peers that beat it
    best = {r["peer"]: r["min_s"] for r in rows if r["status"] in harness.TIMED}
    ours = min((o for o in OURS if o in live), key=best.get, default=None)
    prof = None
    if args.profile_s > 0 and ours is not None:
        faster = sorted(p for p, t in best.items() if p not in OURS and t < best[ours])
        if faster:
            prof = {"point": asdict(pt), "ours": ours, "faster_peers": faster}
            prof.update(harness.profile(live[ours].call, args.profile_s, per=best[ours]))
    live.clear()
    return rows, prof


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.pinn_arch", description=__doc__.split("\n\n")[0])
    harness.add_common_args(p, threads=1)
    p.add_argument("--d", type=harness.int_list, default=None, help="input dimensions (default 2,3,16,64)")
    p.add_argument("--n", type=int, default=None, help="collocation points (default 1024)")
    p.add_argument("--dtypes", default=None, help="default float64,float32")
    p.add_argument("--tasks", default=None, help=f"subset of {','.join(TASKS)}")
    p.add_argument("--F", type=int, default=None, help="Fourier features (2F embedding outputs; default 32)")
    p.add_argument("--width", type=int, default=None, help="gated MLP width (default 64)")
    p.add_argument("--depth", type=int, default=None, help="gated steps (default 4)")
    p.add_argument("--peers", default=None, help=f"subset of {','.join(ALL_PEERS)}")
    p.add_argument("--repeat", type=int, default=None, help="interleaved rounds (default 7; quick 3)")
    p.add_argument("--budget-s", type=float, default=None, help="timing seconds per peer and point")
    p.add_argument("--max-call-s", type=float, default=10.0, help="a peer slower than this is timed once")
    p.add_argument(
        "--profile-s",
        type=float,
        default=None,
        help="seconds of cProfile of this library where a peer is faster (0: none; default 1, quick 0)",
    )
    p.add_argument(
        "--step-jax-hessian",
        action="store_true",
        help="also time the step with jax.hessian (slow to compile and run; default: jax+folx only)",
    )
    p.add_argument("--prefix", default="pinn_arch", help="output file stem (default pinn_arch)")
    args = p.parse_args(argv)
    if args.smoke:
        args.quick = True
    small, quick = args.smoke, args.quick
    if args.d is None:
        args.d = [2] if small else ([2, 16] if quick else [2, 3, 16, 64])
    if args.n is None:
        args.n = 32 if small else (256 if quick else 1024)
    args.dtypes = (args.dtypes or ("float64" if quick else "float64,float32")).split(",")
    args.tasks = (args.tasks or ",".join(TASKS)).split(",")
    args.F = args.F or (8 if small else 32)
    args.width = args.width or (16 if small else 64)
    args.depth = args.depth or (2 if small else 4)
    if args.repeat is None:
        args.repeat = 3 if quick else 7
    if args.budget_s is None:
        args.budget_s = 0.3 if quick else 1.5
    if args.profile_s is None:
        args.profile_s = 0.0 if quick else 1.0
    try:
        args.peers = [q.name for q in REGISTRY.select(args.peers)]
    except ValueError as e:
        p.error(str(e))
    for what, got, allowed in (("tasks", args.tasks, TASKS), ("dtypes", args.dtypes, ("float64", "float32"))):
        bad = sorted(set(got) - set(allowed))
        if bad:
            p.error(f"unknown {what} {bad}; expected some of {list(allowed)}")
    return args


_CONFIG = "d n dtypes tasks F width depth peers repeat budget_s max_call_s profile_s step_jax_hessian".split()


def run(args, desc: dict) -> dict:
    import torch  # noqa: F401  (loaded before timing: its import is not a result)

    t_start = time.perf_counter()
    pts = grid(args)
    rows, profiles = [], []
    for i, pt in enumerate(pts):
        t0 = time.perf_counter()
        r, prof = run_point(pt, args, harness.log)
        rows += r
        if prof is not None:
            profiles.append(prof)
        harness.log(
            f"[{i + 1}/{len(pts)}] {pt.task} d={pt.d} {pt.dtype}: {time.perf_counter() - t0:.1f} s "
            f"(total {time.perf_counter() - t_start:.0f} s)"
        )
    return {
        "title": "Fourier features + gated MLP: Laplacian and training step",
        "quick": args.quick,
        "argv": sys.argv[1:] if args.argv is None else args.argv,
        "config": {k: getattr(args, k) for k in _CONFIG},
        "rows": rows,
        "profiles": profiles,
    }


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


_TASK_TITLE = {
    "laplacian": "Laplacian (evaluation: value and Δu)",
    "step": "training step (mean((Δu + f)²) and its gradient w.r.t. all weights)",
}


def markdown(data: dict) -> str:
    rows, cfg = data["rows"], data["config"]
    lines = [f"# {data['title']}", ""]
    if data.get("label"):
        lines += [f"**{data['label']}**", ""]
    lines += [
        f"Network: `NN(FourierFeatures(d, {cfg['F']}, trainable=True), GatedMLP({2 * cfg['F']}, "
        f"{cfg['width']}, {cfg['depth']}, 1, act='tanh'))`, n = {cfg['n']} points in [-1, 1]^d. "
        "Tasks: `laplacian` — value and Laplacian (this library: `net(x, laplacian=True)`, "
        "`mode='auto'`, NumPy and torch; `torch.func`: `vmap(hessian)` and its trace; `jax`: "
        "`jit(vmap(jax.hessian))` and its trace; `jax+folx`: `jit(vmap(folx.forward_laplacian))`); "
        "`step` — the loss mean((Δu + f)²) and its gradient w.r.t. every weight (B of the Fourier "
        "features included) (this library: torch autograd through `net(x, laplacian=True)`; "
        "`torch.func`: `vmap(hessian)` then autograd; `jax+folx`: `jit(value_and_grad(loss))` "
        "over folx's `forward_laplacian`; `jax`, only with `--step-jax-hessian`: the same over "
        "`vmap(jax.hessian)`). JAX is compiled ahead of time (compile "
        "times below, not in the timings). The torch and JAX networks are written in "
        "`benchmarks/pinn_arch.py` from the layer definitions and get this library's weights.",
        "",
        "Every peer ran in this process on the same weights; its output (value and Laplacian, or loss "
        "and weight gradient) was checked against this library's float64 result before timing "
        f"(relative tolerance {harness.tolerance('float64'):.0e} in float64, "
        f"{harness.tolerance('float32'):.0e} in float32). Times: best of up to {cfg['repeat']} "
        "interleaved rounds (the order rotating each round). Produced by "
        f"`python -m benchmarks.pinn_arch {' '.join(data.get('argv', []))}` in {data['wall_s']:.0f} s.",
        "",
        "**Ratio = ours / peer: below 1 this library is faster.** A peer whose checked call took "
        f"more than {cfg['max_call_s']:g} s is timed by that one call only (`(1 call)`, ratio marked `*`).",
        "",
    ]
    lines += harness.machine_md(data["machine"])
    for task in cfg["tasks"]:
        for dtype in cfg["dtypes"]:
            sub = [r for r in rows if (r["task"], r["dtype"]) == (task, dtype)]
            if sub:
                lines += [f"## {_TASK_TITLE[task]}, {dtype}", ""]
                lines += harness.series_tables(sub, "d", cfg["peers"], OURS)
    comp = [r for r in rows if r.get("compile_s") is not None and r["status"] in harness.TIMED]
    if comp:
        lines += ["## JAX compile time (not in the timings)", ""]
        lines += harness.md_table(
            ["task", "dtype", "d", "peer", "compile", "call after it"],
            (
                [
                    r["task"],
                    r["dtype"],
                    r["d"],
                    r["peer"],
                    f"{r['compile_s']:.2f} s",
                    harness.fmt_time(r["min_s"]),
                ]
                for r in comp
            ),
        ) + [""]
    lines += harness.notes_md(rows, lambda r: f"{r['task']} d={r['d']} {r['dtype']}")
    lines += harness.agreement_md(rows, ("task", "peer", "dtype"), "the outputs, over d")
    if data.get("profiles"):
        lines += [
            "## Profiles where a peer is faster",
            "",
            "`cProfile` of this library's call at the points where a peer's time is below ours: the "
            "functions with the largest own time, as a share of the profiled time (cProfile's overhead "
            "inflates the many small Python calls; the share is what to read, not the absolute time).",
            "",
        ]
        for pr in data["profiles"]:
            pt = pr["point"]
            lines += [
                f"**{pt['task']}, d = {pt['d']}, {pt['dtype']}** — {pr['ours']} vs faster "
                f"{', '.join(pr['faster_peers'])} ({pr['calls']} calls profiled):",
                "",
            ]
            lines += harness.profile_md(pr) + [""]
    return "\n".join(lines)


_STYLE = {
    "ours-numpy": dict(color="C0", marker="o", lw=2.2),
    "ours-torch": dict(color="C1", marker="s", lw=2.2),
    "torch.func": dict(color="C3", marker="v"),
    "jax": dict(color="C4", marker="D"),
    "jax+folx": dict(color="C5", marker="P"),
}


def plot(out: Path, data: dict, prefix: str = "pinn_arch") -> Path | None:
    """Time against d, one line per peer; one panel per (task, dtype)."""
    cfg = data["config"]
    panels = [
        (
            f"{'Laplacian' if task == 'laplacian' else 'training step'}, {dt}",
            lambda r, k=(task, dt): (r["task"], r["dtype"]) == k,
        )
        for task in cfg["tasks"]
        for dt in cfg["dtypes"]
        if any((r["task"], r["dtype"], r["status"]) == (task, dt, "ok") for r in data["rows"])
    ]
    head = (
        f"FourierFeatures(d, {cfg['F']}) → GatedMLP({2 * cfg['F']}, {cfg['width']}, {cfg['depth']}, 1), "
        f"n = {cfg['n']}" + (f". {data['label']}" if data.get("label") else "")
    )
    ncols = max(1, len({title.rsplit(", ", 1)[1] for title, _ in panels}))
    return harness.plot_series(
        out / f"{prefix}.png",
        data["rows"],
        panels,
        x="d",
        peers=cfg["peers"],
        style=_STYLE,
        ylabel="time per call (s)",
        title=head,
        ncols=ncols,
    )


CSV_FIELDS = (
    "task d n dtype F width depth n_params peer status min_s median_s rounds number compile_s first_s "
    "first_cpu_s setup_s peak_bytes rel_err ours_numpy_over_peer ours_torch_over_peer note"
).split()


def _csv_row(r: dict) -> dict:
    ratios = r.get("ratios", {})
    return dict(
        r, ours_numpy_over_peer=ratios.get("ours-numpy"), ours_torch_over_peer=ratios.get("ours-torch")
    )


def write_all(out: Path, data: dict, prefix: str = "pinn_arch", plots: bool = True) -> None:
    harness.write_outputs(
        out,
        prefix,
        data,
        markdown=markdown,
        csv_fields=CSV_FIELDS,
        csv_row=_csv_row,
        plot=lambda o, dd: plot(o, dd, prefix),
        plots=plots,
    )


def main(argv=None, *, configure_threads: bool = True) -> int:
    args = parse_args(argv)
    args.argv = None if argv is None else list(argv)
    return harness.main(
        args,
        args.prefix,
        run,
        lambda out, data, plots: write_all(out, data, args.prefix, plots),
        configure_threads=configure_threads,
    )


if __name__ == "__main__":
    sys.exit(main())
