r"""W6 — the training step: a loss on input derivatives and its gradient w.r.t. every weight.

``python -m benchmarks.training_step [--quick] [--out DIR]`` (also ``python -m benchmarks
--workloads W6``). What physics-informed, Sobolev and Hermite-style training runs thousands of times
is a *step*: the derivatives of the network at n collocation points, a loss on them, and its
gradient with respect to all weights. The timed call is exactly that, for three losses on a tanh
MLP ``u: R^d -> R``: ``laplacian`` :math:`\frac1n\sum_k (\Delta u(x_k) + f_k)^2` (a Poisson
residual), ``gradient`` :math:`\frac1n\sum_k \|\nabla u(x_k) - g_k\|^2` (Sobolev / Hermite) and
``hessian_diagonal`` :math:`\frac1n\sum_k \|\operatorname{diag}\nabla^2 u(x_k) - h_k\|^2`.

The peers (:data:`REGISTRY`; :func:`markdown` says what each runs) get the same weights; each
one's loss and weight gradient are checked against this library's float64 result (eager torch,
``mode="auto"``) before it is timed (:func:`benchmarks.harness.check_then_time`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import harness, nets
from .harness import Peer, Runner, Skip

LOSSES = ("laplacian", "gradient", "hessian_diagonal")
#: where every peer runs ("cpu" or "cuda"; set from --device)
DEVICE = "cpu"
#: let torch.compile use Inductor's on-disk caches (--warm-compile)
WARM_COMPILE = False
#: how a peer's step time grows with d at fixed n and width (for the skip rule):
#: the Hessian-forming peers carry n·d² entries per layer, the others n·d
_D2 = {("torch.func", "laplacian"), ("torch.func", "hessian_diagonal"), ("jax", "laplacian")}
_D2 |= {("jax", "hessian_diagonal"), ("hessQuik-0.0.6", "hessian_diagonal")}


@dataclass(frozen=True)
class StepPoint:
    d: int
    width: int
    n: int
    dtype: str
    loss: str
    depth: int = 4

    @property
    def spec(self) -> nets.NetSpec:
        return nets.NetSpec("mlp", self.d, 1, width=self.width, depth=self.depth)

    @property
    def itemsize(self) -> int:
        return 8 if self.dtype == "float64" else 4


def _scalar(model: nets.Model, lib: str):
    """The per-example function of a scalar-output network: ``f(ps, x) -> ()``."""
    f = model.function(lib)
    return lambda ps, xi: f(ps, xi)[0]


# --- the problem: inputs and targets, shared by every peer ---


def problem(pt: StepPoint) -> dict:
    """Inputs and loss targets (float64 NumPy, fixed seeds)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((pt.n, pt.d))
    # targets of the size of the network's derivatives: the loss is neither dominated by the target nor ~0
    f, g = 0.1 * rng.standard_normal((pt.n, 1)), 0.1 * rng.standard_normal((pt.n, pt.d))
    return {"x": x, "f": f, "g": g, "h": 0.01 * rng.standard_normal((pt.n, pt.d))}


#: the target of each loss in :func:`problem`
_TARGET = {"laplacian": "f", "gradient": "g", "hessian_diagonal": "h"}


def _torch_loss_terms(loss: str, prob: dict, dt):
    import torch

    return tuple(torch.tensor(prob[k], dtype=dt, device=DEVICE) for k in ("x", _TARGET[loss]))


def _sync() -> None:
    if DEVICE == "cuda":
        import torch

        torch.cuda.synchronize()


def _torch_runner(loss_fn, params, compile_s: float | None = None, around=None) -> Runner:
    """A torch step: ``loss_fn()`` and its gradient w.r.t. ``params`` (``around``: a context
    manager factory entered for the call)."""
    import torch

    def call():
        with around() if around is not None else contextlib.nullcontext():
            val = loss_fn()
            grads = torch.autograd.grad(val, params, materialize_grads=True)
        _sync()
        return val.detach(), grads

    return Runner(call, lambda out: (float(out[0]), [g.detach().cpu().numpy() for g in out[1]]), compile_s)


def _torch_loss(loss: str, q, t, n: int):
    """Loss of the derivative ``q`` ((n, 1) Laplacian or (n, d) gradient/diagonal) against ``t``
    (torch or JAX arrays)."""
    if loss == "laplacian":
        return ((q + t) ** 2).mean()
    return ((q - t) ** 2).sum() / n


# --- this library ---


def _make_ours(mode: str, compiled: bool = False, taped: bool = False):
    """``taped=True``: autograd over the generic forward sweep (the analytic weight
    gradient of :func:`hessquik_core.training.analytic_weight_gradient` off), the
    step before that lever, for the before/after column."""

    def make(pt: StepPoint, model: nets.Model, prob) -> Runner:
        import torch

        from hessquik_core.training import analytic_weight_gradient, torch_parameters

        dt = nets.torch_dtype(pt.dtype)
        net = model.build()  # a fresh copy: .to("torch") changes the network
        params = torch_parameters(net, dtype=dt, device=DEVICE)
        x, t = _torch_loss_terms(pt.loss, prob, dt)
        n, loss = pt.n, pt.loss

        def loss_fn():
            if loss == "laplacian":
                q = net(x, laplacian=True, mode=mode).laplacian
            elif loss == "gradient":
                q = net(x, gradient=True, mode=mode).gradient[..., 0]
            else:
                q = net(x, hessian_diagonal=True, mode=mode).hessian_diagonal[..., 0]
            return _torch_loss(loss, q, t, n)

        fn = loss_fn
        if compiled:
            import torch._inductor.config as inductor_config

            torch._dynamo.reset()  # a fresh cache: no recompile limit reached across points
            # a cold compile, what a user's first run pays: Inductor's on-disk caches
            # (kept across processes) would otherwise make every later run look cheap
            inductor_config.force_disable_caches = not WARM_COMPILE
            fn = torch.compile(loss_fn)

        @contextlib.contextmanager
        def untaped():
            before = analytic_weight_gradient(False)
            try:
                yield
            finally:
                analytic_weight_gradient(before)

        runner = _torch_runner(fn, params, around=untaped if taped else None)
        if compiled:
            # torch.compile compiles on the first call, and dynamo recompiles on the second
            # (here, loaded: 84 s, then 54 s, then milliseconds): calls until one is under half the
            # call before it are the compile time, reported apart from the step
            cs, prev = 0.0, math.inf
            for _ in range(4):
                t0 = time.perf_counter()
                runner.call()
                dt = time.perf_counter() - t0
                cs += dt
                if dt < 0.5 * prev and prev < math.inf:
                    break
                prev = dt
            runner.compile_s = cs
        return runner

    return make


# --- torch.func ---


def _make_torch_func(pt: StepPoint, model: nets.Model, prob) -> Runner:
    import torch
    from torch.func import hessian, jacrev, vmap

    dt = nets.torch_dtype(pt.dtype)
    params = [torch.tensor(a, dtype=dt, device=DEVICE, requires_grad=True) for a in model.weights]
    f = _scalar(model, "torch")
    x, t = _torch_loss_terms(pt.loss, prob, dt)
    n, loss = pt.n, pt.loss
    if loss == "gradient":
        inner = vmap(jacrev(f, argnums=1), in_dims=(None, 0))  # (n, d)
    else:
        hess = vmap(hessian(f, argnums=1), in_dims=(None, 0))  # (n, d, d)

        def inner(ps, xx):
            D = torch.diagonal(hess(ps, xx), dim1=-2, dim2=-1)
            return D.sum(-1, keepdim=True) if loss == "laplacian" else D

    def loss_fn():
        return _torch_loss(loss, inner(params, x), t, n)

    return _torch_runner(loss_fn, params)


# --- hessQuik 0.0.6 ---


def _make_hessquik(pt: StepPoint, model: nets.Model, prob) -> Runner:
    import torch

    from .nets import hessquik_net

    dt = nets.torch_dtype(pt.dtype)
    hnet = hessquik_net(model.records, dt, device=DEVICE)
    params = list(hnet.parameters())
    for p in params:
        p.requires_grad_(True)
    x, t = _torch_loss_terms(pt.loss, prob, dt)
    n, loss = pt.n, pt.loss

    def loss_fn():
        if loss == "laplacian":
            # hessQuik's Laplacian runs in forward mode with the gradient recurrence
            _, _, q = hnet(x, do_gradient=True, do_Laplacian=True)
            q = q.reshape(n, 1)
        elif loss == "gradient":
            _, q, _ = hnet(x, do_gradient=True)
            q = q[..., 0]
        else:
            _, _, H = hnet(x, do_gradient=True, do_Hessian=True)
            q = torch.diagonal(H[..., 0], dim1=-2, dim2=-1)
        return _torch_loss(loss, q, t, n)

    return _torch_runner(loss_fn, params)


# --- JAX (and folx) ---


def _make_jax(use_folx: bool):
    def make(pt: StepPoint, model: nets.Model, prob) -> Runner:
        jax = harness.jax_setup()
        import jax.numpy as jnp

        dt = getattr(jnp, pt.dtype)
        dev = jax.devices("gpu" if DEVICE == "cuda" else "cpu")[0]
        params = [jax.device_put(jnp.asarray(a, dtype=dt), dev) for a in model.weights]
        f = _scalar(model, "jax")

        x, t = (jax.device_put(jnp.asarray(prob[k], dtype=dt), dev) for k in ("x", _TARGET[pt.loss]))
        n, loss = pt.n, pt.loss

        if use_folx:
            from folx import forward_laplacian

            def deriv(ps, xx):
                fl = forward_laplacian(lambda xi: f(ps, xi), sparsity_threshold=0)
                return jax.vmap(lambda xi: fl(xi).laplacian)(xx)[:, None]
        elif loss == "gradient":

            def deriv(ps, xx):
                return jax.vmap(jax.grad(f, argnums=1), in_axes=(None, 0))(ps, xx)
        else:

            def deriv(ps, xx):
                H = jax.vmap(jax.hessian(f, argnums=1), in_axes=(None, 0))(ps, xx)
                D = jnp.diagonal(H, axis1=-2, axis2=-1)
                return D.sum(-1, keepdims=True) if loss == "laplacian" else D

        return harness.jax_step(lambda ps, xx, tt: _torch_loss(loss, deriv(ps, xx), tt, n), params, x, t)

    return make


def _peer(name, build, *requires):
    family = "ours" if name.startswith("ours") else name
    return Peer(name, build, requires=requires, family=family, backend="torch")


REGISTRY = harness.Registry(
    _peer("ours-auto", _make_ours("auto"), "torch"),
    _peer("ours-fwd", _make_ours("forward"), "torch"),
    _peer("ours-bwd", _make_ours("backward"), "torch"),
    _peer("ours-taped", _make_ours("forward", taped=True), "torch"),
    _peer("ours-compiled", _make_ours("auto", compiled=True), "torch"),
    _peer("torch.func", _make_torch_func, "torch"),
    _peer("jax", _make_jax(False), "jax"),
    _peer("jax+folx", _make_jax(True), "jax", "folx"),
    _peer("hessQuik-0.0.6", _make_hessquik, "hessQuik", "torch"),
)
ALL_PEERS = REGISTRY.names


# --- the grid ---


def grid(args) -> list[StepPoint]:
    """Points in increasing d within each (loss, width, dtype) series."""
    pts = []
    for loss in args.losses:
        # the default full run trims the grid to fit ~12 minutes: the gradient and
        # diagonal losses at the first width and dtype only (the Laplacian loss, the
        # one most training runs use, gets the whole width x dtype cross product)
        trim = args.trim and loss != "laplacian"
        for width in args.widths[:1] if trim else args.widths:
            dtypes = args.dtypes[:1] if trim else args.dtypes
            if args.trim and width != args.widths[0]:
                # the wider network in one precision only: float32, the usual training precision
                dtypes = ["float32"] if "float32" in dtypes else dtypes[:1]
            pts += [StepPoint(d, width, args.n, dt, loss, depth=args.depth) for dt in dtypes for d in args.d]
    return pts


def parse_args(argv=None):
    doc = (__doc__ or "").split("\n\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.training_step", description=doc)
    harness.add_common_args(p)
    add, ints = p.add_argument, harness.int_list
    add("--d", type=ints, help="input dimensions, e.g. 1,2,3,8")
    add("--widths", type=ints)
    add("--dtypes", help="float64,float32")
    add("--losses", help="laplacian,gradient,hessian_diagonal")
    add("--n", type=int, help="collocation points (default 1024)")
    add("--full-grid", action="store_true", help="every loss at every width and dtype (default: trimmed)")
    add("--depth", type=int, default=4)
    add("--peers", help=f"subset of {','.join(ALL_PEERS)}")
    add("--compile-d", type=ints, help="d at which ours-compiled runs (default 2,16; none with --quick)")
    add("--compile-losses", default="laplacian", help="losses at which ours-compiled runs")
    add("--compile-widths", type=ints, help="default: the smallest width")
    add("--compile-dtypes", default="float64", help="default float64")
    add("--repeat", type=int, help="interleaved rounds (default 7; quick 3)")
    add("--max-call-s", type=float, help="skip a peer whose predicted step exceeds this")
    add("--prefix", default="w6", help="output file stem (default w6)")
    add("--device", choices=("cpu", "cuda"), default="cpu", help="where every peer runs")
    add("--warm-compile", action="store_true", help="let torch.compile reuse Inductor's on-disk caches")
    args = p.parse_args(argv)
    args.quick = quick = args.quick or args.smoke
    size = 0 if args.smoke else 1 if quick else 2  # smoke, quick, full: the defaults below

    def pick(*by_size):
        return by_size[size]

    args.trim = not (args.full_grid or quick or args.widths is not None or args.dtypes is not None)
    defaults = dict(d=pick([2], [2, 16], [1, 2, 3, 8, 16, 64, 256, 1024]), widths=pick([8], [64], [64, 256]))
    # one compile costs ~40 s on a 2-core machine: none in the quick run
    defaults.update(n=pick(32, 128, 1024), compile_d=pick([], [], [2, 16]), repeat=pick(3, 3, 7))
    defaults.update(max_call_s=pick(1.0, 1.0, 8.0))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.dtypes = (args.dtypes or ("float64" if quick else "float64,float32")).split(",")
    args.losses = (args.losses or ",".join(LOSSES)).split(",")
    args.compile_losses = args.compile_losses.split(",")
    args.compile_dtypes = args.compile_dtypes.split(",")
    if args.compile_widths is None:
        args.compile_widths = [min(args.widths)]
    try:
        args.peers = [q.name for q in REGISTRY.select(args.peers)]
    except ValueError as e:
        p.error(str(e))
    bad = sorted(set(args.losses) - set(LOSSES))
    if bad:
        p.error(f"unknown losses {bad}; expected some of {list(LOSSES)}")
    return args


# --- the run ---


def _units(peer: str, pt: StepPoint) -> float:
    """How a peer's step grows with d at fixed n and width: per example ~ d·w² (d tangents
    through the w x w layers) + w² (the value); the Hessian-forming peers add d²·w."""
    d, w = pt.d, pt.width
    return d * w * w + w * w + (d * d * w if (peer, pt.loss) in _D2 else 0)


def _rule(pt: StepPoint, args, pred: harness.Predictor, mem_budget: float):
    """Why a peer does not run at ``pt`` (``None``: it runs)."""

    def rule(peer: Peer) -> Skip | None:
        name = peer.name
        allowed = (args.compile_d, args.compile_losses, args.compile_widths, args.compile_dtypes)
        at = zip((pt.d, pt.loss, pt.width, pt.dtype), allowed)
        if name == "ours-compiled" and not all(v in ok for v, ok in at):
            return Skip("not-run", "torch.compile only at the --compile-d points")
        if args.trim and name in ("ours-fwd", "ours-bwd", "ours-taped") and pt.width != args.widths[0]:
            return Skip("not-run", "forced modes only at the first width in the trimmed grid")
        if name == "jax+folx" and pt.loss != "laplacian":
            return Skip("not-run", "folx computes Laplacians only")
        hbytes = pt.n * pt.d * pt.d * pt.width * pt.itemsize
        if (name, pt.loss) in _D2 and hbytes > mem_budget:
            why = f"its per-layer Hessians alone are {hbytes / 2**30:.0f} GiB > budget {mem_budget / 2**30:.0f} GiB"
            return Skip("skip-memory", why)
        # this library's default step is never skipped on a prediction; its forced modes at 4x the cap
        cap = math.inf if name == "ours-auto" else args.max_call_s * (4 if name.startswith("ours") else 1)
        t_pred, m_pred = pred.predict(name, pt)
        return harness.predicted_skip(t_pred, m_pred, max_call_s=cap, mem_budget=mem_budget, what="step")

    return rule


def run_point(pt: StepPoint, args, pred: harness.Predictor, mem_budget: float, log) -> list[dict]:
    """Every peer at one point: build, check against the reference, then time interleaved."""

    model = nets.records_model(nets.spec_of(nets.build(pt.spec)), pt.spec)
    prob = problem(pt)
    base = dict(asdict(pt), n_params=int(sum(np.size(a) for a in model.weights)))
    try:  # the reference: this library, float64, eager, mode="auto"
        rr = _make_ours("auto")(StepPoint(pt.d, pt.width, pt.n, "float64", pt.loss, pt.depth), model, prob)
        ref = rr.to_numpy(rr.call())
        del rr
    except Exception as e:  # no reference, nothing can be checked: every peer says why
        why = f"reference (ours, float64) failed: {type(e).__name__}: {e}".replace("\n", " ")[:300]
        log(f"  {why}")
        return [dict(base, peer=name, status="error", note=why) for name in args.peers]
    rule = _rule(pt, args, pred, mem_budget)
    cands = harness.candidates(REGISTRY.select(args.peers), pt, model, prob, rule=rule)
    # once_s: too slow to repeat, the checked call is its only timing
    quick = dict(min_round_s=0.01, budget_s=0.5) if args.quick else dict(min_round_s=0.05, budget_s=2.0)
    policy = harness.Policy(rounds=args.repeat, once_s=4 * args.max_call_s, warm_s=math.inf, **quick)
    kw = dict(dtype=pt.dtype, policy=policy, base=base, device=DEVICE, log=log)
    rows, live = harness.check_then_time(cands, ref, **kw)
    live.clear()
    pred.add_rows(rows, pt)
    harness.ratios(rows, ("ours-auto",))
    for r in rows:
        if "ours-auto" in r.get("ratios", {}):
            r["ours_over_peer"] = r["ratios"]["ours-auto"]
    return rows


_CONFIG = (
    "d widths dtypes losses n depth repeat max_call_s compile_d compile_losses compile_widths "
    "compile_dtypes peers"
).split()


def run(args, desc: dict) -> dict:
    import torch  # noqa: F401  (loaded before timing: its import is not a result)

    t_start = time.perf_counter()
    mem_budget = harness.mem_budget(0.5)
    pts = grid(args)
    pred = harness.Predictor(lambda pt: (pt.loss, pt.width, pt.dtype, pt.n), _units)
    rows = []
    for i, pt in enumerate(pts):
        t0 = time.perf_counter()
        rows += run_point(pt, args, pred, mem_budget, harness.log)
        took, total = time.perf_counter() - t0, time.perf_counter() - t_start
        at = f"{pt.loss} d={pt.d} w={pt.width} {pt.dtype}"
        harness.log(f"[{i + 1}/{len(pts)}] {at}: {took:.1f} s (total {total:.0f} s)")
    cfg = {k: getattr(args, k) for k in _CONFIG}
    title = "W6: training step (loss on input derivatives + gradient w.r.t. all weights)"
    argv = sys.argv[1:] if args.argv is None else args.argv
    cfg.update(trimmed_grid=args.trim, device=args.device, warm_compile=args.warm_compile)
    data = dict(workload="W6", title=title, quick=args.quick, argv=argv, config=cfg)
    return dict(data, memory_budget_bytes=mem_budget, rows=rows)


# --- report ---


def markdown(data: dict) -> str:
    rows, cfg = data["rows"], data["config"]
    for r in rows:  # results written before the harness carry the ratio alone
        if "ours_over_peer" in r and "ratios" not in r:
            r["ratios"] = {"ours-auto": r["ours_over_peer"]}
    peers = [p for p in cfg["peers"] if any(r["peer"] == p and r["status"] != "not-run" for r in rows)]
    lines = [f"# {data['title']}", ""]
    if data.get("label"):
        lines += [f"**{data['label']}**", ""]
    lines += [
        "Timed: one training step = the loss on input derivatives of a tanh MLP "
        f"(depth {cfg['depth']}, scalar output, n = {cfg['n']} collocation points) **and** its gradient "
        "with respect to every weight. Losses: `laplacian` = mean((Δu + f)²), `gradient` = mean ‖∇u − g‖², "
        "`hessian_diagonal` = mean ‖diag ∇²u − h‖². Every peer runs in this process with the same weights; "
        "its loss and weight gradient were checked against this library's float64 result before timing "
        f"(tolerance {harness.tolerance('float64'):.0e} in float64, {harness.tolerance('float32'):.0e} in "
        f"float32, relative). Times are the best of up to {cfg['repeat']} interleaved rounds (the order "
        "rotating each round). Produced by "
        f"`python -m benchmarks.training_step {' '.join(data.get('argv', []))}` in {data['wall_s']:.0f} s.",
        "",
        "Peers: `ours-auto`/`-fwd`/`-bwd` — torch autograd through `net(x, laplacian=True, mode=...)` "
        "(eager; forward mode through dense layers with the analytic weight gradient); `ours-taped` — "
        "forward mode with autograd over the generic sweep (`analytic_weight_gradient(False)`, the step "
        "before that lever); `ours-compiled` — `torch.compile` of the same loss (compile time in its own "
        "table); `torch.func` — `vmap(hessian)` / `vmap(jacrev)` then autograd; `jax` — "
        "`jit(value_and_grad(loss))` over `vmap(jax.hessian)` / `vmap(jax.grad)`; `jax+folx` — the same "
        "over folx's `forward_laplacian`; `hessQuik-0.0.6` — autograd through its own derivative outputs.",
        "",
        "**Ratio = ours-auto / peer: below 1 this library's step is faster.** A peer whose first call "
        "took more than 4x the per-call cap is timed by that one call only (`(1 call)`, ratio marked `*`).",
        "",
    ]
    if cfg.get("trimmed_grid"):
        lines += [
            f"Grid trimmed to fit the run into ~12 minutes: the `gradient` and `hessian_diagonal` losses "
            f"at width {cfg['widths'][0]} and {cfg['dtypes'][0]} only; widths above {cfg['widths'][0]} in "
            "float32 only and without the forced `ours-fwd`/`ours-bwd` modes; `torch.compile` (~40 s per "
            f"compile on 2 cores) at d = {cfg['compile_d']}, {cfg['compile_losses']} loss, width "
            f"{cfg['compile_widths']}, {cfg['compile_dtypes']}. `--full-grid` runs everything.",
            "",
        ]
    lines += harness.machine_md(data["machine"])
    for key in dict.fromkeys((r["loss"], r["width"], r["dtype"]) for r in rows):
        sub = [r for r in rows if (r["loss"], r["width"], r["dtype"]) == key]
        lines += [f"## `{key[0]}` loss, width {key[1]}, {key[2]}", ""]
        lines += harness.series_tables(sub, "d", peers, ("ours-auto",))
    comp = [r for r in rows if r.get("compile_s") is not None and r["status"] == "ok"]
    if comp:
        lines += [
            "## Compile time (not in the step times)",
            "",
            "`ours-compiled`: the first call of the `torch.compile`d loss and its backward (dynamo "
            "trace and Inductor code generation for both graphs); `jax`, `jax+folx`: "
            "`jit(...).lower(...).compile()`.",
            "",
        ]
        head = ["loss", "d", "width", "dtype", "peer", "compile", "step after it"]
        cells = [
            [*(r[k] for k in head[:5]), f"{r['compile_s']:.2f} s", harness.fmt_time(r["min_s"])] for r in comp
        ]
        lines += harness.md_table(head, cells) + [""]
    lines += harness.notes_md(rows, lambda r: f"{r['loss']} d={r['d']} w={r['width']} {r['dtype']}")
    lines += harness.agreement_md(rows, ("peer", "dtype"), "loss and weight gradient")
    return "\n".join(lines)


_STYLE = {
    "ours-auto": dict(color="C1", marker="s", lw=2.2),
    "ours-fwd": dict(color="C1", marker="s", ls=":"),
    "ours-bwd": dict(color="C1", marker="s", ls="--"),
    "ours-taped": dict(color="C7", marker="s", ls="-."),
    "ours-compiled": dict(color="C6", marker="*", ms=10, ls="none"),
    "torch.func": dict(color="C3", marker="v"),
    "jax": dict(color="C4", marker="D"),
    "jax+folx": dict(color="C5", marker="P"),
    "hessQuik-0.0.6": dict(color="C2", marker="^"),
}


def plot(out: Path, data: dict, prefix: str = "w6") -> Path | None:
    """Step time against d, one panel per (loss, width, dtype)."""
    rows = data["rows"]
    cols = sorted({(r["width"], r["dtype"]) for r in rows}, key=lambda k: (k[0], k[1] != "float64"))
    losses = [loss for loss in LOSSES if any(r["loss"] == loss for r in rows)]
    sel = lambda k: lambda r: (r["loss"], r["width"], r["dtype"]) == k  # noqa: E731
    panels = [(f"{loss}, width {w}, {dt}", sel((loss, w, dt))) for loss in losses for w, dt in cols]
    title = data["title"] + (f". {data['label']}" if data.get("label") else "")
    peers, ncols = data["config"]["peers"], max(1, len(cols))
    path = out / f"{prefix}_step_time.png"
    kw = dict(x="d", peers=peers, style=_STYLE, ylabel="step time (s)", title=title, ncols=ncols)
    return harness.plot_series(path, rows, panels, **kw)


CSV_FIELDS = (
    "loss d width dtype n depth peer status min_s median_s rounds number compile_s first_s "
    "peak_bytes rel_err ours_over_peer note"
).split()


def write_all(out: Path, data: dict, prefix: str = "w6", plots: bool = True) -> None:
    plot_ = lambda o, dd: plot(o, dd, prefix)  # noqa: E731
    kw = dict(csv_fields=CSV_FIELDS, plot=plot_, plots=plots, image_alt="W6 step time")
    harness.write_outputs(out, prefix, data, markdown=markdown, **kw)


def main(argv=None, *, configure_threads: bool = True) -> int:
    args = parse_args(argv)
    args.argv = None if argv is None else list(argv)
    global DEVICE, WARM_COMPILE
    DEVICE, WARM_COMPILE = args.device, args.warm_compile
    write = lambda out, data, plots: write_all(out, data, args.prefix, plots)  # noqa: E731
    return harness.main(args, args.prefix, run, write, configure_threads=configure_threads)


if __name__ == "__main__":
    sys.exit(main())
