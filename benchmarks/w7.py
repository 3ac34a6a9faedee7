r"""W7 — PINN curvature: building the residual Jacobian, and time to accuracy of the optimizers.

Two parts (issue 22, *Speed and accuracy*), each one table, CSV, JSON and figure:

* ``--part jacobian`` (``w7_jacobian.*``): the per-point parameter Jacobian of the
  Laplacian, :math:`J_{i\theta} = \partial\,\Delta u(x_i;\theta)/\partial\theta`, shape
  ``(n, P)``, of the tanh MLP ``d -> w -> w -> 1`` (identity read-out) at
  :math:`n \in \{1024, 4096\}`, :math:`d \in \{2, 5, 10, 100\}`, :math:`w \in \{64, 256\}`,
  float64 and float32, every peer in this process on the same weights and points:

  - ``ours-numpy`` / ``ours-torch``: ``hq.pinn.jacobian(net, x, "laplacian")`` (AD-free);
  - ``torch.func``: ``vmap`` over the points of ``jacrev`` over the parameters of the
    nested-AD Laplacian ``trace(torch.func.hessian(u))``, blocks concatenated to ``(n, P)``;
  - ``jax+folx``: ``jit(vmap(jacrev))`` over the parameters of folx's forward Laplacian,
    compiled ahead of time (compilation reported apart); skipped cleanly without jax/folx
    (``pip install -e ".[bench]"`` installs them).

  Every peer's first call is checked against ``ours-numpy`` in float64 before it is timed
  (:func:`benchmarks.harness.check_then_time`), with its peak memory; a point a peer is
  predicted (from its own smaller points) to run past ``--max-call-s`` or over half the free
  memory is skipped with the reason. Targets: ours ≥ 10× faster than torch.func and ≥ 5×
  faster than JAX (ratio *t(ours) / t(peer)* ≤ 0.1 and ≤ 0.2; "ours" is the faster of
  the two backends at the point).

* ``--part accuracy`` (``w7_accuracy.*``): time to accuracy of the PINN optimizers,
  :mod:`benchmarks.w7_accuracy`.

Run (quiet machine, about 2 h for ``--part all``)::

    python -m benchmarks.w7 --part all   # writes benchmarks/results/w7_*
    python -m benchmarks.w7 --quick --out "$(mktemp -d)"           # a few minutes, both parts
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import harness, nets
from .harness import Peer, Runner, Skip

STEM = "w7_jacobian"
OURS = ("ours-numpy", "ours-torch")
TARGETS = {"torch.func": 10.0, "jax+folx": 5.0}  # ours at least this many times faster


@dataclass(frozen=True)
class Point:
    """One measurement: ``n`` points in ``d`` dimensions, hidden width ``width``, ``dtype``."""

    n: int
    d: int
    width: int
    dtype: str = "float64"

    @property
    def spec(self) -> nets.NetSpec:
        return nets.NetSpec("mlp", self.d, 1, self.width, 2, seed=22)

    @property
    def P(self) -> int:
        w = self.width
        return (self.d + 1) * w + (w + 1) * w + w + 1


def _flat(blocks, n: int):
    """Per-parameter blocks ``(n, *shape)`` -> ``(n, P)`` (ParameterLayout order: row-major, K then b)."""
    return [b.reshape(n, -1) for b in blocks]


def _ours(lib: str):
    def make(pt: Point, model: nets.Model, x_np: np.ndarray) -> Runner:
        import hessquik_core as hq

        net = model.build()
        if lib == "torch":
            import torch

            dt = getattr(torch, pt.dtype)
            net.to("torch", dtype=dt)
            x = torch.tensor(x_np, dtype=dt)
            return Runner(lambda: hq.pinn.jacobian(net, x, "laplacian"), lambda J: {"J": J[:, 0].numpy()})
        net.to("numpy", dtype=np.dtype(pt.dtype))
        x = x_np.astype(pt.dtype)
        return Runner(lambda: hq.pinn.jacobian(net, x, "laplacian"), lambda J: {"J": J[:, 0]})

    return make


def _torch_func(pt: Point, model: nets.Model, x_np: np.ndarray) -> Runner:
    import torch
    from torch.func import hessian, jacrev, vmap

    dt = getattr(torch, pt.dtype)
    f = model.function("torch")
    ps = [torch.tensor(a, dtype=dt) for a in model.weights]
    x = torch.tensor(x_np, dtype=dt)

    def lap(ps, xi):  # Δu = tr ∇²u by nested AD (hessian = jacfwd(jacrev))
        return torch.diagonal(hessian(lambda z: f(ps, z)[0])(xi)).sum()

    jac = vmap(jacrev(lap), in_dims=(None, 0))
    return Runner(lambda: torch.cat(_flat(jac(ps, x), pt.n), dim=1), lambda J: {"J": J.detach().numpy()})


def _jax_folx(pt: Point, model: nets.Model, x_np: np.ndarray) -> Runner:
    jax = harness.jax_setup()
    import jax.numpy as jnp
    from folx import forward_laplacian

    dt = getattr(jnp, pt.dtype)
    f = model.function("jax")
    ps = [jnp.asarray(a, dtype=dt) for a in model.weights]
    x = jnp.asarray(x_np, dtype=dt)

    def lap(ps, xi):
        return forward_laplacian(lambda z: f(ps, z)[0], sparsity_threshold=0)(xi).laplacian

    def build(ps, x):
        return jnp.concatenate(_flat(jax.vmap(jax.jacrev(lap), in_axes=(None, 0))(ps, x), pt.n), axis=1)

    fn, cs = harness.jax_aot(jax.jit(build), ps, x)
    return Runner(lambda: jax.block_until_ready(fn(ps, x)), lambda J: {"J": np.asarray(J)}, compile_s=cs)


PEERS = harness.Registry(
    Peer("ours-numpy", _ours("numpy"), family="ours"),
    Peer("ours-torch", _ours("torch"), requires=("torch",), family="ours", backend="torch"),
    Peer("torch.func", _torch_func, requires=("torch",), backend="torch"),
    Peer("jax+folx", _jax_folx, requires=("jax", "folx"), backend="jax"),
)


def points(args) -> list[Point]:
    """The grid, smallest first within each (dtype, width) series (the predictor needs that)."""
    if args.smoke:
        ns, ds, ws, dts = [16], [2, 3], [8], ["float64"]
    elif args.quick:
        ns, ds, ws, dts = [256], [2, 5], [32], ["float64"]
    else:
        ns, ds, ws = args.n, args.d, args.widths
        dts = args.dtypes
    return [Point(n, d, w, dt) for dt in dts for w in ws for n in ns for d in ds]


def run(args, machine: dict) -> dict:
    peers = PEERS.select(args.peers)
    pred = harness.Predictor(lambda pt: (pt.dtype, pt.width), lambda _p, pt: pt.n * pt.d * pt.P)
    budget = harness.mem_budget(0.5)
    policy = harness.Policy(
        rounds=args.repeat, budget_s=0.3 if args.quick else 3.0, once_s=args.max_call_s / 2, collect=True
    )
    rows: list[dict] = []
    for pt in points(args):
        harness.log(f"J of the Laplacian: n={pt.n} d={pt.d} width={pt.width} P={pt.P} {pt.dtype}")
        model = nets.records_model(nets.spec_of(nets.build(pt.spec)), pt.spec)
        x = np.random.default_rng(pt.d).uniform(-1.0, 1.0, (pt.n, pt.d))
        try:  # the reference: this library's float64 J on NumPy
            ref_run = _ours("numpy")(Point(pt.n, pt.d, pt.width, "float64"), model, x)
            ref = ref_run.to_numpy(ref_run.call())
        except Exception as e:  # e.g. MemoryBudgetError: no peer can be checked at this point
            why = f"no float64 reference: {type(e).__name__}: {e}"[:300]
            rows += [dict(asdict(pt), P=pt.P, peer=p.name, status="not-checked", note=why) for p in peers]
            continue

        def rule(p: Peer, pt: Point = pt) -> Skip | None:
            t, m = pred.predict(p.name, pt)
            return harness.predicted_skip(t, m, max_call_s=args.max_call_s, mem_budget=budget)

        cands = harness.candidates(peers, pt, model, x, rule=rule)
        recs, live = harness.check_then_time(
            cands, ref, dtype=pt.dtype, policy=policy, base=dict(asdict(pt), P=pt.P)
        )
        live.clear()
        del ref
        harness.ratios(recs, OURS)
        pred.add_rows(recs, pt)
        rows += recs
    return {
        "title": "W7 (a): per-point parameter Jacobian of the Laplacian",
        "argv": sys.argv[1:],
        "rows": rows,
    }


def _speedup(idx: dict, key: tuple, peer: str) -> float | None:
    """t(peer) / t(faster of ours) at one point, or None."""
    t = [idx[(*key, o)]["min_s"] for o in OURS if idx.get((*key, o), {}).get("status") in harness.TIMED]
    r = idx.get((*key, peer))
    if not t or not r or r["status"] not in harness.TIMED:
        return None
    return r["min_s"] / min(t)


def markdown(data: dict) -> str:
    rows = data["rows"]
    names = [p for p in PEERS.names if any(r["peer"] == p and r["status"] != "not-run" for r in rows)]
    keys = sorted({(r["dtype"], r["width"], r["n"], r["d"], r["P"]) for r in rows})
    idx = {(r["dtype"], r["width"], r["n"], r["d"], r["P"], r["peer"]): r for r in rows}
    out = [f"# {data['title']}", ""] + ([f"*{data['label']}*", ""] if data.get("label") else [])
    out += harness.machine_md(data["machine"])
    out += [
        "Time to build `J` (`(n, P)`, best of interleaved rounds; `≤t (1 call)`: one checked call),",
        "peak memory of the checked call in brackets. Speed-up: t(peer) / t(faster of ours);",
        f"targets: ≥ {TARGETS['torch.func']:g}× over torch.func, ≥ {TARGETS['jax+folx']:g}× over jax+folx.",
        "",
    ]

    def c(r):
        if r is None:
            return ""
        m = f" ({harness.fmt_bytes(r.get('peak_bytes'))})" if r["status"] in harness.TIMED else ""
        return harness.cell(r) + m

    body = []
    for k in keys:
        sp = [_speedup(idx, k, p) for p in TARGETS]
        body.append(
            [*k, *(c(idx.get((*k, p))) for p in names)]
            + [
                "" if s is None else f"{s:.1f}× {'met' if s >= TARGETS[p] else 'missed'}"
                for s, p in zip(sp, TARGETS)
            ]
        )
    out += harness.md_table(
        ["dtype", "width", "n", "d", "P", *names, *(f"speed-up vs {p}" for p in TARGETS)], body
    )
    out += [""] + harness.notes_md(rows, lambda r: f"n={r['n']} d={r['d']} w={r['width']} {r['dtype']}")
    return "\n".join(out + harness.agreement_md(rows, ("peer", "dtype"), "J"))


def plot(out: Path, data: dict) -> Path | None:
    rows = data["rows"]
    panels = [
        (
            f"width {w}, n = {n}, {dt}",
            lambda r, w=w, n=n, dt=dt: (r["width"], r["n"], r["dtype"]) == (w, n, dt),
        )
        for dt, w, n in sorted({(r["dtype"], r["width"], r["n"]) for r in rows})
    ]
    style = {"ours-numpy": {"marker": "o"}, "ours-torch": {"marker": "s"}, "torch.func": {"ls": "--"}}
    return harness.plot_series(
        out / f"{STEM}.png",
        rows,
        panels,
        x="d",
        peers=PEERS.names,
        style=style,
        ylabel="time to build J [s]",
        title=data["title"],
        ncols=min(2, len(panels)),
    )


CSV = [
    "n",
    "d",
    "width",
    "P",
    "dtype",
    "peer",
    "status",
    "min_s",
    "median_s",
    "first_s",
    "compile_s",
    "peak_bytes",
    "rel_err",
    "note",
]


def write(out: Path, data: dict, plots: bool) -> None:
    harness.write_outputs(
        out,
        STEM,
        data,
        markdown=markdown,
        csv_fields=CSV,
        plot=plot,
        plots=plots,
        image_alt="time to build J against d",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.w7", description=__doc__.splitlines()[0])
    harness.add_common_args(p)
    p.add_argument("--part", choices=("jacobian", "accuracy", "all"), default="all")
    g = p.add_argument_group("part jacobian")
    g.add_argument("--n", type=harness.int_list, default=[1024, 4096], help="points (default 1024,4096)")
    g.add_argument("--d", type=harness.int_list, default=[2, 5, 10, 100], help="input dimensions")
    g.add_argument("--widths", type=harness.int_list, default=[64, 256], help="hidden widths")
    g.add_argument("--dtypes", type=lambda s: s.split(","), default=["float64", "float32"])
    g.add_argument("--peers", default=None, help=f"comma-separated, of {', '.join(PEERS.names)}")
    g.add_argument("--repeat", type=int, default=5, help="interleaved timing rounds at most")
    g.add_argument("--max-call-s", type=float, default=60.0, help="skip a point predicted to take longer")
    from . import w7_accuracy

    w7_accuracy.add_args(p.add_argument_group("part accuracy"))
    return p


def main(argv=None, *, configure_threads: bool = True) -> int:
    args = parser().parse_args(argv)
    args.quick = args.quick or args.smoke
    from . import w7_accuracy

    parts = {
        "jacobian": (STEM, run, write),
        "accuracy": (w7_accuracy.STEM, w7_accuracy.run, w7_accuracy.write),
    }
    for name in ("jacobian", "accuracy") if args.part == "all" else (args.part,):
        stem, run_, write_ = parts[name]
        if args.replot is not None and not (args.replot / f"{stem}.json").exists():
            continue
        harness.main(args, stem, run_, write_, configure_threads=configure_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
