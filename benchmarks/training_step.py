r"""W6 — the training step: a loss on input derivatives and its gradient w.r.t. every weight.

``python -m benchmarks.training_step [--quick] [--out DIR]`` (also
``python -m benchmarks --workloads W6``). What physics-informed, Sobolev and
Hermite-style training runs thousands of times is not an evaluation but a
*step*: the derivatives of the network at n collocation points, a loss on
them, and the gradient of that loss with respect to all weights. The timed
call is exactly that, for three losses on a tanh MLP ``u: R^d -> R``:

``laplacian``
    :math:`\frac1n\sum_k (\Delta u(x_k) + f_k)^2` (a Poisson residual);
``gradient``
    :math:`\frac1n\sum_k \|\nabla u(x_k) - g_k\|^2` (Sobolev / Hermite);
``hessian_diagonal``
    :math:`\frac1n\sum_k \|\operatorname{diag}\nabla^2 u(x_k) - h_k\|^2`.

Peers, all in this process and with the same weights (built once by
:mod:`benchmarks.nets`):

* ``ours-auto`` / ``ours-fwd`` / ``ours-bwd`` — torch autograd through
  ``net(x, laplacian=True, mode=...)`` after ``net.to("torch", requires_grad=True)``
  (:func:`hessquik_core.training.torch_parameters`), eager (forward mode through
  the MLP's dense layers takes the analytic weight gradient);
* ``ours-taped`` — forward mode with that switched off
  (:func:`hessquik_core.training.analytic_weight_gradient`), autograd over the
  generic sweep: the step before the lever;
* ``ours-compiled`` — the same loss under ``torch.compile`` (compile time,
  the first call's, reported separately; only at the ``--compile-d`` points,
  because one compile costs tens of seconds);
* ``torch.func`` — ``vmap(hessian(f))`` (Laplacian, diagonal) or
  ``vmap(jacrev(f))`` (gradient), then ``torch.autograd.grad``;
* ``jax`` — ``jax.jit(jax.value_and_grad(loss))`` with ``vmap(jax.hessian)``
  or ``vmap(jax.grad)`` inside; ``jax+folx`` — the same with folx's
  ``forward_laplacian`` (Laplacian loss only); compiled ahead of time;
* ``hessQuik-0.0.6`` — autograd through hessQuik's own Laplacian / gradient /
  Hessian outputs (what its users train with).

Before any timing every peer's loss and weight gradient are compared with
this library's float64 result (eager torch, ``mode="auto"``); a peer that
disagrees is reported as a mismatch and not timed. Timings are the best of
``--repeat`` *interleaved* rounds (each round calls every peer of the point
once, so a burst of load from other processes hits all of them alike).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/training_step.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import numpy as np

LOSSES = ("laplacian", "gradient", "hessian_diagonal")
#: where every peer runs ("cpu" or "cuda"; set from --device)
DEVICE = "cpu"
#: let torch.compile use Inductor's on-disk caches (--warm-compile)
WARM_COMPILE = False
ALL_PEERS = (
    "ours-auto",
    "ours-fwd",
    "ours-bwd",
    "ours-taped",
    "ours-compiled",
    "torch.func",
    "jax",
    "jax+folx",
    "hessQuik-0.0.6",
)
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
    def spec(self):
        from .nets import NetSpec

        return NetSpec("mlp", self.d, 1, width=self.width, depth=self.depth)

    @property
    def itemsize(self) -> int:
        return 8 if self.dtype == "float64" else 4


@dataclass
class StepRunner:
    """``call()`` runs one step (loss and weight gradient) and returns when it is done;
    ``to_numpy(out)`` gives ``(loss, [grad per parameter in record order])``."""

    call: Any
    to_numpy: Any
    compile_s: float | None = None


# --------------------------------------------------------------------------
# the problem: inputs and targets, shared by every peer
# --------------------------------------------------------------------------


def problem(pt: StepPoint) -> dict:
    """Inputs and loss targets (float64 NumPy, fixed seeds)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((pt.n, pt.d))
    # targets of the size of the network's derivatives, so that the loss is
    # neither dominated by the target nor ~0
    return {
        "x": x,
        "f": 0.1 * rng.standard_normal((pt.n, 1)),
        "g": 0.1 * rng.standard_normal((pt.n, pt.d)),
        "h": 0.01 * rng.standard_normal((pt.n, pt.d)),
    }


def _flat_records(records) -> list:
    """The weights in ``net.named_parameters()`` order: K, b of each layer."""
    out = []
    for r in records:
        out.append(r.K)
        if r.b is not None:
            out.append(r.b)
    return out


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


def _torch_loss_terms(loss: str, prob: dict, dt):
    import torch

    key = {"laplacian": "f", "gradient": "g", "hessian_diagonal": "h"}[loss]
    return (
        torch.tensor(prob["x"], dtype=dt, device=DEVICE),
        torch.tensor(prob[key], dtype=dt, device=DEVICE),
    )


def _sync() -> None:
    if DEVICE == "cuda":
        import torch

        torch.cuda.synchronize()


def _torch_loss(loss: str, q, t, n: int):
    """Loss of the derivative ``q`` ((n, 1) Laplacian or (n, d) gradient/diagonal) against ``t``."""
    if loss == "laplacian":
        return ((q + t) ** 2).mean()
    return ((q - t) ** 2).sum() / n


# --------------------------------------------------------------------------
# this library
# --------------------------------------------------------------------------


def _make_ours(mode: str, compiled: bool = False, taped: bool = False):
    """``taped=True``: autograd over the generic forward sweep (the analytic weight
    gradient of :func:`hessquik_core.training.analytic_weight_gradient` off), the
    step before that lever, for the before/after column."""

    def make(pt: StepPoint, records, prob) -> StepRunner:
        import torch

        from hessquik_core.training import analytic_weight_gradient, torch_parameters

        from . import nets

        dt = _torch_dtype(pt.dtype)
        net = nets.build(pt.spec)  # a fresh copy: .to("torch") changes the network
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

        def call():
            before = analytic_weight_gradient(False) if taped else None
            try:
                val = fn()
                grads = torch.autograd.grad(val, params, materialize_grads=True)
            finally:
                if before is not None:
                    analytic_weight_gradient(before)
            _sync()
            return val.detach(), grads

        def to_numpy(out):
            return float(out[0]), [g.detach().cpu().numpy() for g in out[1]]

        return StepRunner(call, to_numpy)

    return make


# --------------------------------------------------------------------------
# torch.func
# --------------------------------------------------------------------------


def _torch_mlp(records, dt):
    """Leaf tensors (record order) and a per-example ``f(params, x: (d,)) -> scalar``."""
    import torch

    from .nets import _torch_act

    params = [torch.tensor(a, dtype=dt, device=DEVICE, requires_grad=True) for a in _flat_records(records)]
    layout = []
    i = 0
    for r in records:
        has_b = r.b is not None
        layout.append((i, i + 1 if has_b else None, _torch_act(r.act), r.residual, r.h))
        i += 2 if has_b else 1

    def f(ps, xi):
        u = xi
        for iK, ib, act, res, h in layout:
            z = u @ ps[iK]
            if ib is not None:
                z = z + ps[ib]
            u = u + h * act(z) if res else act(z)
        return u[0]

    return params, f


def _make_torch_func(pt: StepPoint, records, prob) -> StepRunner:
    import torch
    from torch.func import hessian, jacrev, vmap

    dt = _torch_dtype(pt.dtype)
    params, f = _torch_mlp(records, dt)
    x, t = _torch_loss_terms(pt.loss, prob, dt)
    n, loss = pt.n, pt.loss
    if loss == "gradient":
        inner = vmap(jacrev(f, argnums=1), in_dims=(None, 0))  # (n, d)
    else:
        hess = vmap(hessian(f, argnums=1), in_dims=(None, 0))  # (n, d, d)

        def inner(ps, xx):
            D = torch.diagonal(hess(ps, xx), dim1=-2, dim2=-1)
            return D.sum(-1, keepdim=True) if loss == "laplacian" else D

    def call():
        val = _torch_loss(loss, inner(params, x), t, n)
        grads = torch.autograd.grad(val, params, materialize_grads=True)
        _sync()
        return val.detach(), grads

    def to_numpy(out):
        return float(out[0]), [g.detach().cpu().numpy() for g in out[1]]

    return StepRunner(call, to_numpy)


# --------------------------------------------------------------------------
# hessQuik 0.0.6
# --------------------------------------------------------------------------


def _make_hessquik(pt: StepPoint, records, prob) -> StepRunner:
    import torch

    from .nets import hessquik_net

    dt = _torch_dtype(pt.dtype)
    hnet = hessquik_net(records, dt, device=DEVICE)
    params = list(hnet.parameters())
    for p in params:
        p.requires_grad_(True)
    x, t = _torch_loss_terms(pt.loss, prob, dt)
    n, loss = pt.n, pt.loss

    def call():
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
        val = _torch_loss(loss, q, t, n)
        grads = torch.autograd.grad(val, params, materialize_grads=True)
        _sync()
        return val.detach(), grads

    def to_numpy(out):
        return float(out[0]), [g.detach().cpu().numpy() for g in out[1]]

    return StepRunner(call, to_numpy)


# --------------------------------------------------------------------------
# JAX (and folx)
# --------------------------------------------------------------------------


def _make_jax(use_folx: bool):
    def make(pt: StepPoint, records, prob) -> StepRunner:
        from .peers import _jax_setup

        jax = _jax_setup()
        import jax.numpy as jnp

        from .nets import _jax_act

        dt = getattr(jnp, pt.dtype)
        dev = jax.devices("gpu" if DEVICE == "cuda" else "cpu")[0]
        params = [jax.device_put(jnp.asarray(a, dtype=dt), dev) for a in _flat_records(records)]
        layout = []
        i = 0
        for r in records:
            has_b = r.b is not None
            layout.append((i, i + 1 if has_b else None, _jax_act(r.act), r.residual, r.h))
            i += 2 if has_b else 1

        def f(ps, xi):
            u = xi
            for iK, ib, act, res, h in layout:
                z = u @ ps[iK]
                if ib is not None:
                    z = z + ps[ib]
                u = u + h * act(z) if res else act(z)
            return u[0]

        key = {"laplacian": "f", "gradient": "g", "hessian_diagonal": "h"}[pt.loss]
        x = jax.device_put(jnp.asarray(prob["x"], dtype=dt), dev)
        t = jax.device_put(jnp.asarray(prob[key], dtype=dt), dev)
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

        def loss_fn(ps, xx, tt):
            q = deriv(ps, xx)
            if loss == "laplacian":
                return jnp.mean((q + tt) ** 2)
            return jnp.sum((q - tt) ** 2) / n

        t0 = time.perf_counter()
        step = jax.jit(jax.value_and_grad(loss_fn)).lower(params, x, t).compile()
        cs = time.perf_counter() - t0

        def call():
            return jax.block_until_ready(step(params, x, t))

        def to_numpy(out):
            return float(out[0]), [np.asarray(g) for g in out[1]]

        return StepRunner(call, to_numpy, compile_s=cs)

    return make


MAKERS = {
    "ours-auto": (_make_ours("auto"), ("torch",)),
    "ours-fwd": (_make_ours("forward"), ("torch",)),
    "ours-bwd": (_make_ours("backward"), ("torch",)),
    "ours-taped": (_make_ours("forward", taped=True), ("torch",)),
    "ours-compiled": (_make_ours("auto", compiled=True), ("torch",)),
    "torch.func": (_make_torch_func, ("torch",)),
    "jax": (_make_jax(False), ("jax",)),
    "jax+folx": (_make_jax(True), ("jax", "folx")),
    "hessQuik-0.0.6": (_make_hessquik, ("hessQuik", "torch")),
}


def _available(name: str) -> tuple[bool, str]:
    import importlib.util

    for mod in MAKERS[name][1]:
        if importlib.util.find_spec(mod) is None:
            return False, f"{mod} is not installed"
    return True, ""


# --------------------------------------------------------------------------
# agreement
# --------------------------------------------------------------------------


def tolerance(dtype: str) -> float:
    # float32 is checked against the float64 reference: its tolerance is its
    # precision, grown by the depth of the derivative recurrences
    return 1e-8 if dtype == "float64" else 5e-3


def compare(got, ref) -> tuple[float, str]:
    """Largest relative deviation of ``(loss, grads)`` from ``ref``.

    The loss is compared relative to itself; every weight gradient relative
    to the largest entry of the whole reference gradient (small blocks, e.g.
    a bias whose gradient is almost zero, are not held to more digits than
    the gradient as a whole has)."""
    loss, grads = got
    rloss, rgrads = ref
    worst, where = abs(loss - rloss) / max(abs(rloss), 1e-300), "loss"
    if not math.isfinite(worst):
        return math.inf, "loss not finite"
    if len(grads) != len(rgrads):
        return math.inf, f"{len(grads)} gradients, expected {len(rgrads)}"
    scale = max(float(np.max(np.abs(g))) for g in rgrads) or 1e-300
    for i, (g, r) in enumerate(zip(grads, rgrads)):
        g = np.asarray(g, dtype=np.float64).reshape(r.shape) if np.size(g) == r.size else None
        if g is None:
            return math.inf, f"gradient {i} has the wrong size"
        e = float(np.max(np.abs(g - r))) / scale
        if not math.isfinite(e):
            return math.inf, f"gradient {i} not finite"
        if e > worst:
            worst, where = e, f"gradient {i}"
    return worst, where


# --------------------------------------------------------------------------
# the grid
# --------------------------------------------------------------------------


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
            for dtype in dtypes:
                for d in args.d:
                    pts.append(StepPoint(d, width, args.n, dtype, loss, depth=args.depth))
    return pts


def _float_list(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.training_step", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="a small grid, well under a minute")
    p.add_argument("--smoke", action="store_true", help="a tiny grid for the test suite")
    p.add_argument(
        "--out", type=Path, default=None, help="folder (default benchmarks/results; quick: build/bench-quick)"
    )
    p.add_argument("--d", type=_float_list, default=None, help="input dimensions, e.g. 1,2,3,8")
    p.add_argument("--widths", type=_float_list, default=None)
    p.add_argument("--dtypes", default=None, help="float64,float32")
    p.add_argument("--losses", default=None, help="laplacian,gradient,hessian_diagonal")
    p.add_argument("--n", type=int, default=None, help="collocation points (default 1024)")
    p.add_argument(
        "--full-grid",
        action="store_true",
        help="every loss at every width and dtype (default: gradient/diagonal losses at the first "
        "width and dtype only)",
    )
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--peers", default=None, help=f"subset of {','.join(ALL_PEERS)}")
    p.add_argument(
        "--compile-d",
        type=_float_list,
        default=None,
        help="d at which ours-compiled runs (width/dtype/loss as in --compile-at); default 2,16",
    )
    p.add_argument(
        "--compile-losses", default="laplacian", help="losses at which ours-compiled runs (default laplacian)"
    )
    p.add_argument("--compile-widths", type=_float_list, default=None, help="default: the smallest width")
    p.add_argument("--compile-dtypes", default="float64", help="default float64")
    p.add_argument("--repeat", type=int, default=None, help="interleaved rounds (default 7; quick 3)")
    p.add_argument(
        "--max-call-s", type=float, default=None, help="skip a peer whose predicted step exceeds this"
    )
    p.add_argument("--label", default="", help="a line printed at the top of w6.md (e.g. 'loaded machine')")
    p.add_argument("--prefix", default="w6", help="output file stem (default w6)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where every peer runs")
    p.add_argument(
        "--warm-compile",
        action="store_true",
        help="let torch.compile reuse Inductor's on-disk caches (default: cold compiles)",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--replot", type=Path, default=None, help="rebuild w6.md and plot from DIR/w6.json")
    args = p.parse_args(argv)
    if args.smoke:
        args.quick = True
    small = args.smoke
    quick = args.quick
    if args.d is None:
        args.d = [2] if small else ([2, 16] if quick else [1, 2, 3, 8, 16, 64, 256, 1024])
    args.trim = not (args.full_grid or quick or args.widths is not None or args.dtypes is not None)
    if args.widths is None:
        args.widths = [8] if small else ([64] if quick else [64, 256])
    args.dtypes = (args.dtypes or ("float64" if quick else "float64,float32")).split(",")
    args.losses = (args.losses or ",".join(LOSSES)).split(",")
    if args.n is None:
        args.n = 32 if small else (128 if quick else 1024)
    if args.compile_d is None:
        # one compile costs ~40 s on a 2-core machine: none in the quick run
        args.compile_d = [] if quick else [2, 16]
    args.compile_losses = args.compile_losses.split(",")
    args.compile_dtypes = args.compile_dtypes.split(",")
    if args.compile_widths is None:
        args.compile_widths = [min(args.widths)]
    if args.repeat is None:
        args.repeat = 3 if quick else 7
    if args.max_call_s is None:
        args.max_call_s = 1.0 if quick else 8.0
    args.peers = list(ALL_PEERS) if args.peers is None else args.peers.split(",")
    bad = sorted(set(args.peers) - set(ALL_PEERS))
    if bad:
        p.error(f"unknown peers {bad}; expected some of {list(ALL_PEERS)}")
    bad = sorted(set(args.losses) - set(LOSSES))
    if bad:
        p.error(f"unknown losses {bad}; expected some of {list(LOSSES)}")
    return args


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------


def _predict(seen: dict, peer: str, pt: StepPoint):
    """Time of ``peer``'s step at ``pt`` predicted from its largest measured smaller d
    (growth ∝ d for peers carrying first derivatives, ∝ d² for Hessian-forming ones)."""
    rows = seen.get((peer, pt.loss, pt.width, pt.dtype, pt.n))
    if not rows:
        return None, None
    d0, t0, m0 = max(rows)
    w = pt.width

    def units(d):
        # per-example work of the first-derivative methods ~ d·w² (d tangents through
        # the w x w layers) + w² (the value); the Hessian-forming ones add d²·w
        return d * w * w + w * w + (d * d * w if (peer, pt.loss) in _D2 else 0)

    s = max(1.0, units(pt.d) / units(d0)) * 1.25
    return t0 * s, (None if m0 is None else m0 * s)


def _time_round(runners: dict, numbers: dict, samples: dict) -> None:
    for name, r in runners.items():
        t0 = time.perf_counter()
        for _ in range(numbers[name]):
            out = r.call()
            del out
        samples[name].append((time.perf_counter() - t0) / numbers[name])


def run_point(pt: StepPoint, args, seen: dict, mem_budget: float, log) -> list[dict]:
    """Every peer at one point: build, check against the reference, then time interleaved."""
    from . import nets
    from .measure import peak_memory

    net = nets.build(pt.spec)
    records = nets.spec_of(net)
    prob = problem(pt)
    # the reference: this library, float64, eager, mode="auto"
    ref_pt = StepPoint(pt.d, pt.width, pt.n, "float64", pt.loss, pt.depth)
    base = dict(asdict(pt), n_params=int(sum(np.size(a) for a in _flat_records(records))))
    try:
        ref_runner = _make_ours("auto")(ref_pt, records, prob)
        ref = ref_runner.to_numpy(ref_runner.call())
        del ref_runner
    except Exception as e:  # no reference, nothing can be checked: every peer says why
        why = f"reference (ours, float64) failed: {type(e).__name__}: {e}".replace("\n", " ")[:300]
        log(f"  {why}")
        return [dict(base, peer=name, status="error", note=why) for name in args.peers]
    rows, runners = [], {}
    for name in args.peers:
        rec = dict(base, peer=name, status="ok", note="")
        rows.append(rec)
        ok, why = _available(name)
        if not ok:
            rec.update(status="unavailable", note=why)
            continue
        if name == "ours-compiled" and not (
            pt.d in args.compile_d
            and pt.loss in args.compile_losses
            and pt.width in args.compile_widths
            and pt.dtype in args.compile_dtypes
        ):
            rec.update(status="not-run", note="torch.compile only at the --compile-d points")
            continue
        if args.trim and name in ("ours-fwd", "ours-bwd", "ours-taped") and pt.width != args.widths[0]:
            rec.update(status="not-run", note="forced modes only at the first width in the trimmed grid")
            continue
        if name == "jax+folx" and pt.loss != "laplacian":
            rec.update(status="not-run", note="folx computes Laplacians only")
            continue
        t_pred, m_pred = _predict(seen, name, pt)
        if (name, pt.loss) in _D2:
            hbytes = pt.n * pt.d * pt.d * pt.width * pt.itemsize
            if hbytes > mem_budget:
                rec.update(
                    status="skip-memory",
                    note=f"its per-layer Hessians alone are {hbytes / 2**30:.0f} GiB > budget "
                    f"{mem_budget / 2**30:.0f} GiB",
                )
                continue
        if m_pred is not None and m_pred > mem_budget:
            rec.update(status="skip-memory", note=f"predicted peak {m_pred / 2**30:.1f} GiB > budget")
            continue
        if t_pred is not None and t_pred > args.max_call_s and not name.startswith("ours"):
            rec.update(
                status="skip-time", note=f"predicted {t_pred:.1f} s per step > cap {args.max_call_s:g} s"
            )
            continue
        if t_pred is not None and t_pred > 4 * args.max_call_s and name != "ours-auto":
            rec.update(status="skip-time", note=f"predicted {t_pred:.1f} s per step > 4x cap")
            continue
        try:
            with warnings.catch_warnings():
                for cat in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning):
                    warnings.simplefilter("ignore", cat)
                t0 = time.perf_counter()
                runner = MAKERS[name][0](pt, records, prob)
                setup_s = time.perf_counter() - t0
                out, first_s, peak = peak_memory(runner.call, device=DEVICE, kind="torch", collect=False)
            got = runner.to_numpy(out)
            del out
        except Exception as e:  # a peer that breaks is reported, never hidden
            rec.update(status="error", note=f"{type(e).__name__}: {e}".replace("\n", " ")[:300])
            log(f"  {name}: {rec['note']}")
            continue
        # torch.compile compiles on the first call: that call is the compile time
        rec["compile_s"] = (
            runner.compile_s
            if runner.compile_s is not None
            else (first_s if name == "ours-compiled" else None)
        )
        rec["setup_s"] = setup_s
        rec["first_s"] = first_s
        rec["peak_bytes"] = peak.get("gpu", peak.get("rss"))
        err, where = compare(got, ref)
        rec["rel_err"] = err
        if not err <= tolerance(pt.dtype):
            rec.update(
                status="mismatch", note=f"disagrees with hessquik_core: rel. error {err:.2e} in {where}"
            )
            log(f"  {name}: {rec['note']}")
            continue
        if first_s > 4 * args.max_call_s and name != "ours-compiled":
            # too slow to repeat: the checked call is its only timing (an upper bound)
            rec.update(status="once", min_s=first_s, median_s=first_s, rounds=1, number=1)
            rec["note"] = f"one call only: it took {first_s:.1f} s > 4x the cap (includes first-call setup)"
            seen.setdefault((name, pt.loss, pt.width, pt.dtype, pt.n), []).append(
                (pt.d, first_s, rec["peak_bytes"])
            )
            continue
        runners[name] = (runner, rec)

    # warm-up and calibration: `number` calls per round so a round lasts >= min_round_s
    min_round_s = 0.01 if args.quick else 0.05
    numbers, samples, live = {}, {}, {}
    per = {}
    for name, (runner, _rec) in runners.items():
        t0 = time.perf_counter()
        out = runner.call()
        del out
        per[name] = time.perf_counter() - t0
        numbers[name] = max(1, int(min_round_s / max(per[name], 1e-7)))
        samples[name] = []
        live[name] = runner
    # slow steps get fewer rounds (at least 2): about 2 s (quick: 0.5 s) of timing per peer
    budget = 0.5 if args.quick else 2.0
    rounds = {n: max(2, min(args.repeat, int(budget / max(per[n] * numbers[n], 1e-9)))) for n in live}
    for i in range(max(rounds.values(), default=0)):
        names = [n for n in live if i < rounds[n]]
        # rotate the order each round: the peer timed first after the switch from
        # the previous point's or round's last one finds caches cold (measured
        # 1.2-2x on 0.2-1 ms evaluations here), and it was always ours-auto
        j = i % max(len(names), 1)
        _time_round({n: live[n] for n in names[j:] + names[:j]}, numbers, samples)
    for name, (_runner, rec) in runners.items():
        s = samples[name]
        rec.update(min_s=min(s), median_s=float(np.median(s)), rounds=len(s), number=numbers[name], samples=s)
        seen.setdefault((name, pt.loss, pt.width, pt.dtype, pt.n), []).append(
            (pt.d, rec["min_s"], rec["peak_bytes"])
        )
    runners.clear()
    live.clear()
    ours = next((r["min_s"] for r in rows if r["peer"] == "ours-auto" and r["status"] == "ok"), None)
    for r in rows:
        if r["status"] in ("ok", "once") and ours is not None:
            r["ours_over_peer"] = ours / r["min_s"]
    return rows


def run(args) -> dict:
    from . import machine

    t_start = time.perf_counter()
    import torch  # noqa: F401  (loaded before timing: its import is not a result)

    desc = machine.describe(args.threads_used)
    desc["threads"] = args.thread_report
    desc["load_average_start"] = machine.load_average()
    desc["hessquik_core_sources_sha256"] = machine.source_fingerprint()
    avail = machine.mem_available() or 8 * 2**30
    mem_budget = 0.5 * avail
    pts = grid(args)
    seen: dict = {}
    rows = []

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    for i, pt in enumerate(pts):
        t0 = time.perf_counter()
        rows += run_point(pt, args, seen, mem_budget, log)
        log(
            f"[{i + 1}/{len(pts)}] {pt.loss} d={pt.d} w={pt.width} {pt.dtype}: "
            f"{time.perf_counter() - t0:.1f} s (total {time.perf_counter() - t_start:.0f} s)"
        )
    desc["load_average_end"] = machine.load_average()
    return {
        "workload": "W6",
        "title": "W6: training step (loss on input derivatives + gradient w.r.t. all weights)",
        "label": args.label,
        "quick": args.quick,
        "argv": sys.argv[1:],
        "config": {
            "d": args.d,
            "widths": args.widths,
            "dtypes": args.dtypes,
            "losses": args.losses,
            "n": args.n,
            "depth": args.depth,
            "repeat": args.repeat,
            "max_call_s": args.max_call_s,
            "compile_d": args.compile_d,
            "compile_losses": args.compile_losses,
            "compile_widths": args.compile_widths,
            "compile_dtypes": args.compile_dtypes,
            "trimmed_grid": args.trim,
            "peers": args.peers,
            "device": args.device,
            "warm_compile": args.warm_compile,
        },
        "machine": desc,
        "memory_budget_bytes": mem_budget,
        "rows": rows,
        "wall_s": time.perf_counter() - t_start,
    }


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def _fmt_t(s) -> str:
    if s is None:
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def _cell(r) -> str:
    if r is None:
        return ""
    st = r["status"]
    if st == "ok":
        return _fmt_t(r["min_s"])
    if st == "once":
        return f"≤{_fmt_t(r['min_s'])} (1 call)"
    return {"not-run": "", "unavailable": "n/a"}.get(st, st)


def markdown(data: dict) -> str:
    rows = data["rows"]
    m = data["machine"]
    cfg = data["config"]
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
        f"(tolerance {tolerance('float64'):.0e} in float64, {tolerance('float32'):.0e} in float32, relative). "
        f"Times are the best of up to {cfg['repeat']} interleaved rounds. Produced by "
        f"`python -m benchmarks.training_step {' '.join(data.get('argv', []))}` in {data['wall_s']:.0f} s.",
        "",
        "Peers: `ours-auto`/`-fwd`/`-bwd` — torch autograd through `net(x, laplacian=True, mode=...)` "
        "(eager; forward mode through dense layers with the analytic weight gradient); `ours-taped` — "
        "forward mode with autograd over the generic sweep (`analytic_weight_gradient(False)`, the step "
        "before that lever); `ours-compiled` — `torch.compile` of the same loss (compile time in its own table); "
        "`torch.func` — `vmap(hessian)` / `vmap(jacrev)` then autograd; `jax` — "
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
            "float32 only and without the forced `ours-fwd`/`ours-bwd` modes; `torch.compile` (~40 s per compile "
            f"on 2 cores) at d = {cfg['compile_d']}, {cfg['compile_losses']} loss, width "
            f"{cfg['compile_widths']}, {cfg['compile_dtypes']}. `--full-grid` runs everything.",
            "",
        ]
    lines += [
        "## Machine",
        "",
        f"- CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs), threads used {m['threads_used']} "
        f"({m.get('threads')})",
        f"- environment: {m.get('env')}",
        f"- load average (1/5/15 min) at start {m.get('load_average_start')}, at end "
        f"{m.get('load_average_end')}",
        f"- hessquik_core source fingerprint `{m.get('hessquik_core_sources_sha256')}`",
        f"- torch {m.get('torch')}, jax {m.get('jax')}, folx {m.get('folx')}, hessQuik {m.get('hessQuik')}, "
        f"numpy {m['numpy']}, Python {m['python']}",
        "",
    ]
    series = []
    for r in rows:
        k = (r["loss"], r["width"], r["dtype"])
        if k not in series:
            series.append(k)
    for loss, width, dtype in series:
        sub = [r for r in rows if (r["loss"], r["width"], r["dtype"]) == (loss, width, dtype)]
        ds = sorted({r["d"] for r in sub})
        idx = {(r["d"], r["peer"]): r for r in sub}
        cols = [
            p for p in peers if any(idx.get((d, p), {}).get("status") not in (None, "not-run") for d in ds)
        ]
        lines += [f"## `{loss}` loss, width {width}, {dtype}", ""]
        lines.append("| d | " + " | ".join(cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for d in ds:
            lines.append(f"| {d} | " + " | ".join(_cell(idx.get((d, p))) for p in cols) + " |")
        rcols = [p for p in cols if p != "ours-auto"]
        if rcols:
            lines += ["", "Ratio ours-auto / peer:", ""]
            lines.append("| d | " + " | ".join(rcols) + " |")
            lines.append("|---" * (len(rcols) + 1) + "|")
            for d in ds:
                cells = []
                for p in rcols:
                    r = idx.get((d, p))
                    c = f"{r['ours_over_peer']:.2f}" if r and "ours_over_peer" in r else ""
                    cells.append(c + ("*" if c and r["status"] == "once" else ""))
                lines.append(f"| {d} | " + " | ".join(cells) + " |")
        lines.append("")
    comp = [r for r in rows if r.get("compile_s") is not None and r["status"] == "ok"]
    if comp:
        lines += [
            "## Compile time (not in the step times)",
            "",
            "`ours-compiled`: the first call of the `torch.compile`d loss and its backward (dynamo "
            "trace and Inductor code generation for both graphs); `jax`, `jax+folx`: "
            "`jit(...).lower(...).compile()`.",
            "",
            "| loss | d | width | dtype | peer | compile | step after it |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in comp:
            lines.append(
                f"| {r['loss']} | {r['d']} | {r['width']} | {r['dtype']} | {r['peer']} | "
                f"{r['compile_s']:.2f} s | {_fmt_t(r['min_s'])} |"
            )
        lines.append("")
    notes = [r for r in rows if r["status"] != "not-run" and (r["status"] != "ok" or r.get("note"))]
    if notes:
        lines += ["## Skipped, failed or disagreeing", ""]
        for r in notes:
            lines.append(
                f"- {r['peer']} at {r['loss']} d={r['d']} w={r['width']} {r['dtype']}: {r['status']} — {r['note']}"
            )
        lines.append("")
    worst: dict = {}
    for r in rows:
        if r.get("rel_err") is not None:
            k = (r["peer"], r["dtype"])
            worst[k] = max(worst.get(k, 0.0), r["rel_err"])
    if worst:
        lines += [
            "## Agreement with this library (largest relative deviation of loss and weight gradient)",
            "",
        ]
        lines += ["| peer | dtype | deviation |", "|---|---|---|"]
        for (p, dt), e in sorted(worst.items()):
            lines.append(f"| {p} | {dt} | {e:.1e} |")
        lines.append("")
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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in data["rows"] if r["status"] in ("ok", "once")]
    if not rows:
        return None
    losses = [x for x in LOSSES if any(r["loss"] == x for r in rows)]
    cols = sorted({(r["width"], r["dtype"]) for r in rows}, key=lambda k: (k[0], k[1] != "float64"))
    fig, axes = plt.subplots(
        len(losses), len(cols), figsize=(max(6.4, 4.6 * len(cols)), 3.6 * len(losses) + 0.6), squeeze=False
    )
    for i, loss in enumerate(losses):
        for j, (w, dt) in enumerate(cols):
            ax = axes[i][j]
            for p in data["config"]["peers"]:
                pts = sorted(
                    (r["d"], r["min_s"])
                    for r in rows
                    if (r["peer"], r["loss"], r["width"], r["dtype"]) == (p, loss, w, dt)
                )
                if pts:
                    ax.plot(*zip(*pts), label=p, **_STYLE.get(p, {}))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("input dimension d")
            ax.set_ylabel("step time (s)")
            ax.set_title(f"{loss}, width {w}, {dt}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    import textwrap

    width = int(16 * max(6.4, 4.6 * len(cols)))  # characters that fit the figure's width
    title = "\n".join(
        textwrap.wrap(data["title"] + (f". {data['label']}" if data.get("label") else ""), width)
    )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = out / f"{prefix}_step_time.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_CSV = (
    "loss d width dtype n depth peer status min_s median_s rounds number compile_s first_s "
    "peak_bytes rel_err ours_over_peer note"
).split()


def write_all(out: Path, data: dict, prefix: str = "w6", plots: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{prefix}.json").write_text(json.dumps(data, indent=1, default=str))
    with open(out / f"{prefix}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_CSV, extrasaction="ignore")
        w.writeheader()
        for r in data["rows"]:
            w.writerow(r)
    md = markdown(data)
    if plots:
        p = plot(out, data, prefix)
        if p is not None:
            md += f"\n![W6 step time]({p.name})\n"
    (out / f"{prefix}.md").write_text(md)


def main(argv=None, *, configure_threads: bool = True) -> int:
    args = parse_args(argv)
    global DEVICE, WARM_COMPILE
    DEVICE, WARM_COMPILE = args.device, args.warm_compile
    if args.replot is not None:
        data = json.loads((args.replot / f"{args.prefix}.json").read_text())
        write_all(args.replot, data, args.prefix, plots=not args.no_plots)
        print(f"rebuilt {args.replot / (args.prefix + '.md')}")
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
    write_all(out, data, args.prefix, plots=not args.no_plots)
    print(f"wrote {out / (args.prefix + '.md')} ({data['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
