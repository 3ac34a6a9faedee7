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
    to keep the full run within ~6 minutes).

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
import csv
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/pinn_arch.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import numpy as np

TASKS = ("laplacian", "step")
OURS = ("ours-numpy", "ours-torch")
ALL_PEERS = ("ours-numpy", "ours-torch", "torch.func", "jax", "jax+folx")
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


@dataclass
class Runner:
    """``call()`` runs the timed computation and returns when it is done;
    ``to_numpy(out)`` gives ``(first, [arrays])``: ``(value, [laplacian])`` for
    the evaluation, ``(loss, [gradient per parameter])`` for the step."""

    call: Any
    to_numpy: Any
    compile_s: float | None = None


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


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


def torch_function():
    """Per-example ``f(ps, x: (d,)) -> scalar`` in torch (``ps`` in :func:`weights` order)."""
    import torch

    def f(ps, xi):
        B, SK, Sb = ps[0], ps[1], ps[2]
        w = Sb.shape[0] // 3
        z = xi @ (_TWO_PI * B)
        e = torch.cat([torch.sin(z), torch.cos(z)], dim=-1)
        s = torch.tanh(e @ SK + Sb)
        U, V, H = s[:w], s[w : 2 * w], s[2 * w :]
        for i in range(3, len(ps) - 2, 2):
            Z = torch.tanh(H @ ps[i] + ps[i + 1])
            H = (1 - Z) * U + Z * V
        return (H @ ps[-2] + ps[-1])[0]

    return f


def jax_function():
    """The same in ``jax.numpy``."""
    import jax.numpy as jnp

    def f(ps, xi):
        B, SK, Sb = ps[0], ps[1], ps[2]
        w = Sb.shape[0] // 3
        z = xi @ (_TWO_PI * B)
        e = jnp.concatenate([jnp.sin(z), jnp.cos(z)], axis=-1)
        s = jnp.tanh(e @ SK + Sb)
        U, V, H = s[:w], s[w : 2 * w], s[2 * w :]
        for i in range(3, len(ps) - 2, 2):
            Z = jnp.tanh(H @ ps[i] + ps[i + 1])
            H = (1 - Z) * U + Z * V
        return (H @ ps[-2] + ps[-1])[0]

    return f


def _t2n(a) -> np.ndarray:
    return a.detach().cpu().numpy()


# --------------------------------------------------------------------------
# peers: evaluation (value and Laplacian)
# --------------------------------------------------------------------------


def _eval_ours(kind: str):
    def make(pt: Point, W, prob) -> Runner:
        net = build(pt)  # a fresh copy: its parameter cache holds this backend's arrays
        if kind == "numpy":
            x = np.ascontiguousarray(prob["x"], dtype=pt.dtype)
            conv = np.asarray
        else:
            import torch

            x = torch.tensor(prob["x"], dtype=_torch_dtype(pt.dtype))
            conv = _t2n

        def call():
            return net(x, laplacian=True, mode="auto")

        def to_numpy(r):
            return conv(r.value), [conv(r.laplacian)]

        return Runner(call, to_numpy)

    return make


def _eval_torch_func(pt: Point, W, prob) -> Runner:
    import torch
    from torch.func import hessian, vmap

    dt = _torch_dtype(pt.dtype)
    ps = [torch.tensor(a, dtype=dt) for a in W]
    f = torch_function()
    x = torch.tensor(prob["x"], dtype=dt)
    hess = vmap(hessian(f, argnums=1), in_dims=(None, 0))
    val = vmap(f, in_dims=(None, 0))

    def call():
        H = hess(ps, x)  # (n, d, d)
        return val(ps, x), torch.diagonal(H, dim1=-2, dim2=-1).sum(-1)

    def to_numpy(out):
        return _t2n(out[0])[:, None], [_t2n(out[1])[:, None]]

    return Runner(call, to_numpy)


def _jax_setup():
    from .peers import _jax_setup as setup

    return setup()


def _eval_jax(use_folx: bool):
    def make(pt: Point, W, prob) -> Runner:
        jax = _jax_setup()
        import jax.numpy as jnp

        dt = getattr(jnp, pt.dtype)
        ps = [jnp.asarray(a, dtype=dt) for a in W]
        f = jax_function()
        x = jnp.asarray(prob["x"], dtype=dt)
        if use_folx:
            from folx import forward_laplacian

            def one(p, xi):
                r = forward_laplacian(lambda v: f(p, v), sparsity_threshold=0)(xi)
                return r.x, r.laplacian
        else:

            def one(p, xi):
                return f(p, xi), jnp.trace(jax.hessian(f, argnums=1)(p, xi))

        t0 = time.perf_counter()
        fn = jax.jit(jax.vmap(one, in_axes=(None, 0))).lower(ps, x).compile()
        cs = time.perf_counter() - t0

        def call():
            return jax.block_until_ready(fn(ps, x))

        def to_numpy(out):
            return np.asarray(out[0])[:, None], [np.asarray(out[1])[:, None]]

        return Runner(call, to_numpy, compile_s=cs)

    return make


# --------------------------------------------------------------------------
# peers: the training step (loss on the Laplacian + gradient w.r.t. all weights)
# --------------------------------------------------------------------------


def _step_ours(pt: Point, W, prob) -> Runner:
    import torch

    from hessquik_core.training import torch_parameters

    dt = _torch_dtype(pt.dtype)
    net = build(pt)
    params = torch_parameters(net, dtype=dt)
    x = torch.tensor(prob["x"], dtype=dt)
    f = torch.tensor(prob["f"], dtype=dt)

    def call():
        q = net(x, laplacian=True, mode="auto").laplacian
        val = ((q + f) ** 2).mean()
        return val.detach(), torch.autograd.grad(val, params, materialize_grads=True)

    def to_numpy(out):
        return float(out[0]), [_t2n(g) for g in out[1]]

    return Runner(call, to_numpy)


def _step_torch_func(pt: Point, W, prob) -> Runner:
    import torch
    from torch.func import hessian, vmap

    dt = _torch_dtype(pt.dtype)
    ps = [torch.tensor(a, dtype=dt, requires_grad=True) for a in W]
    fn = torch_function()
    x = torch.tensor(prob["x"], dtype=dt)
    f = torch.tensor(prob["f"], dtype=dt)
    hess = vmap(hessian(fn, argnums=1), in_dims=(None, 0))

    def call():
        q = torch.diagonal(hess(ps, x), dim1=-2, dim2=-1).sum(-1, keepdim=True)
        val = ((q + f) ** 2).mean()
        return val.detach(), torch.autograd.grad(val, ps, materialize_grads=True)

    def to_numpy(out):
        return float(out[0]), [_t2n(g) for g in out[1]]

    return Runner(call, to_numpy)


def _step_jax(use_folx: bool):
    def make(pt: Point, W, prob) -> Runner:
        jax = _jax_setup()
        import jax.numpy as jnp

        dt = getattr(jnp, pt.dtype)
        ps = [jnp.asarray(a, dtype=dt) for a in W]
        fn = jax_function()
        x = jnp.asarray(prob["x"], dtype=dt)
        f = jnp.asarray(prob["f"], dtype=dt)
        if use_folx:
            from folx import forward_laplacian

            def lap(p, xx):
                fl = forward_laplacian(lambda v: fn(p, v), sparsity_threshold=0)
                return jax.vmap(lambda v: fl(v).laplacian)(xx)[:, None]
        else:

            def lap(p, xx):
                H = jax.vmap(jax.hessian(fn, argnums=1), in_axes=(None, 0))(p, xx)
                return jnp.trace(H, axis1=-2, axis2=-1)[:, None]

        def loss(p, xx, ff):
            return jnp.mean((lap(p, xx) + ff) ** 2)

        t0 = time.perf_counter()
        step = jax.jit(jax.value_and_grad(loss)).lower(ps, x, f).compile()
        cs = time.perf_counter() - t0

        def call():
            return jax.block_until_ready(step(ps, x, f))

        def to_numpy(out):
            return float(out[0]), [np.asarray(g) for g in out[1]]

        return Runner(call, to_numpy, compile_s=cs)

    return make


MAKERS = {
    ("laplacian", "ours-numpy"): (_eval_ours("numpy"), ()),
    ("laplacian", "ours-torch"): (_eval_ours("torch"), ("torch",)),
    ("laplacian", "torch.func"): (_eval_torch_func, ("torch",)),
    ("laplacian", "jax"): (_eval_jax(False), ("jax",)),
    ("laplacian", "jax+folx"): (_eval_jax(True), ("jax", "folx")),
    ("step", "ours-torch"): (_step_ours, ("torch",)),
    ("step", "torch.func"): (_step_torch_func, ("torch",)),
    ("step", "jax"): (_step_jax(False), ("jax",)),
    ("step", "jax+folx"): (_step_jax(True), ("jax", "folx")),
}


def _available(key) -> tuple[bool, str]:
    import importlib.util

    for mod in MAKERS[key][1]:
        if importlib.util.find_spec(mod) is None:
            return False, f"{mod} is not installed"
    return True, ""


# --------------------------------------------------------------------------
# agreement
# --------------------------------------------------------------------------


def tolerance(dtype: str) -> float:
    # float32 is checked against the float64 reference: its tolerance is its
    # precision grown by the recurrences (the same as W6's)
    return 1e-8 if dtype == "float64" else 5e-3


def compare(got, ref) -> tuple[float, str]:
    """Largest relative deviation of ``(first, [arrays])`` from ``ref``.

    ``first`` (the value array or the loss) is compared relative to its own
    largest entry; the arrays relative to the largest entry among all of them
    (a bias whose gradient is almost zero is not held to more digits than the
    gradient as a whole has)."""
    a, arrs = got
    ra, rarrs = ref
    a, ra = np.asarray(a, dtype=np.float64), np.asarray(ra, dtype=np.float64)
    if a.shape != ra.shape:
        return math.inf, f"{'value' if ra.ndim else 'loss'} has shape {a.shape}, expected {ra.shape}"
    worst = float(np.max(np.abs(a - ra))) / max(float(np.max(np.abs(ra))), 1e-300)
    where = "value" if ra.ndim else "loss"
    if not math.isfinite(worst):
        return math.inf, f"{where} not finite"
    if len(arrs) != len(rarrs):
        return math.inf, f"{len(arrs)} arrays, expected {len(rarrs)}"
    scale = max(float(np.max(np.abs(r))) for r in rarrs) or 1e-300
    for i, (g, r) in enumerate(zip(arrs, rarrs)):
        g = np.asarray(g, dtype=np.float64)
        if g.size != r.size:
            return math.inf, f"array {i} has {g.size} entries, expected {r.size}"
        e = float(np.max(np.abs(g.reshape(r.shape) - r))) / scale
        if not math.isfinite(e):
            return math.inf, f"array {i} not finite"
        if e > worst:
            worst, where = e, ("laplacian" if len(rarrs) == 1 else f"gradient {i}")
    return worst, where


# --------------------------------------------------------------------------
# profile (where a peer is faster)
# --------------------------------------------------------------------------


def _where(file: str, line: int, fn: str) -> str:
    if file == "~":  # a built-in
        return fn
    parts = Path(file).parts
    # this library's files by their package path (layers/gated.py and rules/gated.py differ)
    name = "/".join(parts[parts.index("hessquik_core") :]) if "hessquik_core" in parts else parts[-1]
    return f"{name}:{line}({fn})"


def profile(call, seconds: float, per: float | None = None, top: int = 10) -> dict:
    """``cProfile`` of repeated ``call()`` (already warm; ``per`` seconds a call) for about
    ``seconds``: the ``top`` functions by own time (``tottime``), as fractions of the
    profiled time."""
    import cProfile
    import pstats

    if per is None:
        t0 = time.perf_counter()
        call()
        per = time.perf_counter() - t0
    calls = max(1, min(200, int(seconds / max(per, 1e-6))))
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        out = call()
        del out
    pr.disable()
    st = pstats.Stats(pr)
    total = st.total_tt or 1e-300  # type: ignore[attr-defined]
    rows = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, _where(file, line, fn)))
    rows.sort(reverse=True)
    return {
        "calls": calls,
        "per_call_s": total / calls,
        "top": [
            {"function": w, "own_frac": tt / total, "cum_frac": ct / total, "ncalls_per_call": nc / calls}
            for tt, ct, nc, w in rows[:top]
        ],
    }


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


def _time_round(live: dict, numbers: dict, samples: dict) -> None:
    for name, r in live.items():
        t0 = time.perf_counter()
        for _ in range(numbers[name]):
            out = r.call()
            del out
        samples[name].append((time.perf_counter() - t0) / numbers[name])


def run_point(pt: Point, args, log) -> tuple[list[dict], dict | None]:
    """Every peer at one point: build, check against the float64 reference, time interleaved."""
    from .measure import peak_memory

    net = build(pt)
    W = weights(net)
    prob = problem(pt, net)
    base = dict(asdict(pt), n_params=int(sum(a.size for a in W)))
    ref_pt = Point(pt.task, pt.d, pt.n, "float64", pt.F, pt.width, pt.depth)
    ref_name = "ours-numpy" if pt.task == "laplacian" else "ours-torch"

    def first_call(runner):
        """The checked call: its output, wall and CPU time, and peak memory."""
        with warnings.catch_warnings():
            for cat in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning):
                warnings.simplefilter("ignore", cat)
            c0 = time.process_time()
            out, first_s, peak = peak_memory(runner.call, device="cpu", kind="torch", collect=False)
            cpu_s = time.process_time() - c0
        got = runner.to_numpy(out)
        del out
        return got, first_s, cpu_s, peak

    try:
        t0 = time.perf_counter()
        rr = MAKERS[(pt.task, ref_name)][0](ref_pt, W, prob)
        ref_setup_s = time.perf_counter() - t0
        ref_first = first_call(rr)
        ref = ref_first[0]
    except Exception as e:  # no reference: nothing can be checked, every peer says why
        why = f"reference ({ref_name}, float64) failed: {type(e).__name__}: {e}".replace("\n", " ")[:300]
        log(f"  {why}")
        return [dict(base, peer=p, status="error", note=why) for p in args.peers], None
    rows, runners = [], {}
    for name in args.peers:
        rec = dict(base, peer=name, status="ok", note="")
        rows.append(rec)
        key = (pt.task, name)
        if key not in MAKERS or (key == ("step", "jax") and not args.step_jax_hessian):
            why = "not asked for (--step-jax-hessian)" if key in MAKERS else f"no {name} peer for this task"
            rec.update(status="not-run", note=why)
            continue
        ok, why = _available(key)
        if not ok:
            rec.update(status="unavailable", note=why)
            continue
        try:
            if name == ref_name and pt.dtype == "float64":
                # the reference is this peer at this point: its checked call is the reference's
                runner, rec["setup_s"] = rr, ref_setup_s
                got, first_s, cpu_s, peak = ref_first
            else:
                t0 = time.perf_counter()
                runner = MAKERS[key][0](pt, W, prob)
                rec["setup_s"] = time.perf_counter() - t0
                got, first_s, cpu_s, peak = first_call(runner)
        except Exception as e:  # a peer that breaks is reported, never hidden
            rec.update(status="error", note=f"{type(e).__name__}: {e}".replace("\n", " ")[:300])
            log(f"  {name}: {rec['note']}")
            continue
        rec["first_cpu_s"] = cpu_s
        rec["compile_s"] = runner.compile_s
        rec["first_s"] = first_s
        rec["peak_bytes"] = peak.get("rss")
        err, where = compare(got, ref)
        rec["rel_err"] = err
        if not err <= tolerance(pt.dtype):
            rec.update(
                status="mismatch", note=f"disagrees with hessquik_core: rel. error {err:.2e} in {where}"
            )
            log(f"  {name}: {rec['note']}")
            continue
        if first_s > args.max_call_s:
            # too slow to repeat: the checked call is its only timing (an upper bound)
            rec.update(status="once", min_s=first_s, median_s=first_s, rounds=1, number=1)
            rec["note"] = f"one call only: it took {first_s:.1f} s > {args.max_call_s:g} s"
            continue
        runners[name] = (runner, rec)

    # warm-up and calibration: `number` calls per round so that a round lasts >= min_round_s
    min_round_s = 0.01 if args.quick else 0.05
    numbers, samples, live, per = {}, {}, {}, {}
    for name, (runner, rec) in runners.items():
        if rec["first_s"] >= 0.5:
            # a slow call: the checked call was its warm-up (a second one would only cost time)
            per[name] = rec["first_s"]
        else:
            t0 = time.perf_counter()
            out = runner.call()
            del out
            per[name] = time.perf_counter() - t0
        numbers[name] = max(1, int(min_round_s / max(per[name], 1e-7)))
        samples[name] = []
        live[name] = runner
    # slow calls get fewer rounds (at least 2): about `budget` seconds of timing per peer
    rounds = {n: max(2, min(args.repeat, int(args.budget_s / max(per[n] * numbers[n], 1e-9)))) for n in live}
    for i in range(max(rounds.values(), default=0)):
        _time_round({n: r for n, r in live.items() if i < rounds[n]}, numbers, samples)
    for name, (_runner, rec) in runners.items():
        s = samples[name]
        rec.update(min_s=min(s), median_s=float(np.median(s)), rounds=len(s), number=numbers[name], samples=s)
    # ratios ours / peer (below 1: this library is faster)
    best = {r["peer"]: r["min_s"] for r in rows if r["status"] in ("ok", "once")}
    for r in rows:
        if r["status"] in ("ok", "once"):
            r["ratios"] = {o: best[o] / r["min_s"] for o in OURS if o in best}
    prof = None
    # profile the faster of this library's calls (numpy or torch) against the peers that beat it
    ours_name = min((o for o in OURS if o in best and o in live), key=best.get, default=None)
    if args.profile_s > 0 and ours_name is not None:
        faster = sorted(p for p, t in best.items() if p not in OURS and t < best[ours_name])
        if faster:
            prof = {"point": asdict(pt), "ours": ours_name, "faster_peers": faster}
            prof.update(profile(live[ours_name].call, args.profile_s, per=best[ours_name]))
    runners.clear()
    live.clear()
    del rr, ref_first
    return rows, prof


def _int_list(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.pinn_arch", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small grid, under a minute")
    p.add_argument("--smoke", action="store_true", help="a tiny grid for the test suite")
    p.add_argument(
        "--out", type=Path, default=None, help="folder (default benchmarks/results; quick: build/bench-quick)"
    )
    p.add_argument("--d", type=_int_list, default=None, help="input dimensions (default 2,3,16,64)")
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
    p.add_argument("--threads", type=int, default=1, help="threads for every library (default 1)")
    p.add_argument("--label", default="", help="a line printed at the top of the table")
    p.add_argument("--prefix", default="pinn_arch", help="output file stem (default pinn_arch)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--replot", type=Path, default=None, help="rebuild the table and plot from DIR/<prefix>.json"
    )
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
    args.peers = list(ALL_PEERS) if args.peers is None else args.peers.split(",")
    for what, got, allowed in (
        ("peers", args.peers, ALL_PEERS),
        ("tasks", args.tasks, TASKS),
        ("dtypes", args.dtypes, ("float64", "float32")),
    ):
        bad = sorted(set(got) - set(allowed))
        if bad:
            p.error(f"unknown {what} {bad}; expected some of {list(allowed)}")
    return args


def run(args) -> dict:
    from . import machine

    t_start = time.perf_counter()
    import torch  # noqa: F401  (loaded before timing: its import is not a result)

    desc = machine.describe(args.threads)
    desc["threads"] = args.thread_report
    desc["load_average_start"] = machine.load_average()
    desc["hessquik_core_sources_sha256"] = machine.source_fingerprint()
    pts = grid(args)
    rows, profiles = [], []

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    for i, pt in enumerate(pts):
        t0 = time.perf_counter()
        r, prof = run_point(pt, args, log)
        rows += r
        if prof is not None:
            profiles.append(prof)
        log(
            f"[{i + 1}/{len(pts)}] {pt.task} d={pt.d} {pt.dtype}: {time.perf_counter() - t0:.1f} s "
            f"(total {time.perf_counter() - t_start:.0f} s)"
        )
    desc["load_average_end"] = machine.load_average()
    return {
        "title": "Fourier features + gated MLP: Laplacian and training step",
        "label": args.label,
        "quick": args.quick,
        "argv": sys.argv[1:] if args.argv is None else args.argv,
        "config": {
            "d": args.d,
            "n": args.n,
            "dtypes": args.dtypes,
            "tasks": args.tasks,
            "F": args.F,
            "width": args.width,
            "depth": args.depth,
            "peers": args.peers,
            "repeat": args.repeat,
            "budget_s": args.budget_s,
            "max_call_s": args.max_call_s,
            "profile_s": args.profile_s,
            "step_jax_hessian": args.step_jax_hessian,
        },
        "machine": desc,
        "rows": rows,
        "profiles": profiles,
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


_TASK_TITLE = {
    "laplacian": "Laplacian (evaluation: value and Δu)",
    "step": "training step (mean((Δu + f)²) and its gradient w.r.t. all weights)",
}


def markdown(data: dict) -> str:
    rows, m, cfg = data["rows"], data["machine"], data["config"]
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
        f"(relative tolerance {tolerance('float64'):.0e} in float64, {tolerance('float32'):.0e} in "
        f"float32). Times: best of up to {cfg['repeat']} interleaved rounds. Produced by "
        f"`python -m benchmarks.pinn_arch {' '.join(data.get('argv', []))}` in {data['wall_s']:.0f} s.",
        "",
        "**Ratio = ours / peer: below 1 this library is faster.** A peer whose checked call took "
        f"more than {cfg['max_call_s']:g} s is timed by that one call only (`(1 call)`, ratio marked `*`).",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']} ({m['logical_cpus']} logical CPUs), threads used {m['threads_used']} "
        f"({m.get('threads')})",
        f"- environment: {m.get('env')}",
        f"- load average (1/5/15 min) at start {m.get('load_average_start')}, at end "
        f"{m.get('load_average_end')}",
        f"- hessquik_core source fingerprint `{m.get('hessquik_core_sources_sha256')}`",
        f"- torch {m.get('torch')}, jax {m.get('jax')}, folx {m.get('folx')}, numpy {m['numpy']} "
        f"({m.get('numpy_blas')}), Python {m['python']}",
        "",
    ]
    for task in cfg["tasks"]:
        for dtype in cfg["dtypes"]:
            sub = [r for r in rows if (r["task"], r["dtype"]) == (task, dtype)]
            if not sub:
                continue
            ds = sorted({r["d"] for r in sub})
            idx = {(r["d"], r["peer"]): r for r in sub}
            cols = [
                p
                for p in cfg["peers"]
                if any(idx.get((d, p), {}).get("status") not in (None, "not-run") for d in ds)
            ]
            lines += [f"## {_TASK_TITLE[task]}, {dtype}", ""]
            lines.append("| d | " + " | ".join(cols) + " |")
            lines.append("|---" * (len(cols) + 1) + "|")
            for d in ds:
                lines.append(f"| {d} | " + " | ".join(_cell(idx.get((d, p))) for p in cols) + " |")
            for o in OURS:
                rcols = [p for p in cols if p not in OURS]
                if o not in cols or not rcols:
                    continue
                lines += ["", f"Ratio {o} / peer:", ""]
                lines.append("| d | " + " | ".join(rcols) + " |")
                lines.append("|---" * (len(rcols) + 1) + "|")
                for d in ds:
                    cells = []
                    for p in rcols:
                        r = idx.get((d, p))
                        v = (r or {}).get("ratios", {}).get(o)
                        c = "" if v is None else f"{v:.2f}"
                        cells.append(c + ("*" if c and r["status"] == "once" else ""))
                    lines.append(f"| {d} | " + " | ".join(cells) + " |")
            lines.append("")
    comp = [r for r in rows if r.get("compile_s") is not None and r["status"] in ("ok", "once")]
    if comp:
        lines += [
            "## JAX compile time (not in the timings)",
            "",
            "| task | dtype | d | peer | compile | call after it |",
            "|---|---|---|---|---|---|",
        ]
        for r in comp:
            lines.append(
                f"| {r['task']} | {r['dtype']} | {r['d']} | {r['peer']} | {r['compile_s']:.2f} s | "
                f"{_fmt_t(r['min_s'])} |"
            )
        lines.append("")
    notes = [r for r in rows if r["status"] != "not-run" and (r["status"] != "ok" or r.get("note"))]
    if notes:
        lines += ["## Skipped, failed or disagreeing", ""]
        for r in notes:
            lines.append(f"- {r['peer']} at {r['task']} d={r['d']} {r['dtype']}: {r['status']} — {r['note']}")
        lines.append("")
    worst: dict = {}
    for r in rows:
        if r.get("rel_err") is not None:
            k = (r["task"], r["peer"], r["dtype"])
            worst[k] = max(worst.get(k, 0.0), r["rel_err"])
    if worst:
        lines += [
            "## Agreement with this library (largest relative deviation, over d)",
            "",
            "| task | peer | dtype | deviation |",
            "|---|---|---|---|",
        ]
        for (t, p, dt), e in sorted(worst.items()):
            lines.append(f"| {t} | {p} | {dt} | {e:.1e} |")
        lines.append("")
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
                "| function | own | cumulative | calls per call |",
                "|---|---|---|---|",
            ]
            for t in pr["top"]:
                fn = t["function"].replace("|", "\\|")
                lines.append(
                    f"| `{fn}` | {100 * t['own_frac']:.0f}% | {100 * t['cum_frac']:.0f}% | "
                    f"{t['ncalls_per_call']:.0f} |"
                )
            lines.append("")
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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in data["rows"] if r["status"] in ("ok", "once")]
    if not rows:
        return None
    cfg = data["config"]
    tasks = [t for t in cfg["tasks"] if any(r["task"] == t for r in rows)]
    dtypes = [dt for dt in cfg["dtypes"] if any(r["dtype"] == dt for r in rows)]
    fig, axes = plt.subplots(
        len(tasks), len(dtypes), figsize=(4.8 * len(dtypes) + 0.6, 3.6 * len(tasks) + 0.6), squeeze=False
    )
    for i, task in enumerate(tasks):
        for j, dt in enumerate(dtypes):
            ax = axes[i][j]
            for p in cfg["peers"]:
                pts = sorted(
                    (r["d"], r["min_s"]) for r in rows if (r["peer"], r["task"], r["dtype"]) == (p, task, dt)
                )
                if pts:
                    ax.plot(*zip(*pts), label=p, **_STYLE.get(p, {}))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("input dimension d")
            ax.set_ylabel("time per call (s)")
            ax.set_title(f"{'Laplacian' if task == 'laplacian' else 'training step'}, {dt}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    title = (
        f"FourierFeatures(d, {cfg['F']}) → GatedMLP({2 * cfg['F']}, {cfg['width']}, {cfg['depth']}, 1), "
        f"n = {cfg['n']}" + (f". {data['label']}" if data.get("label") else "")
    )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = out / f"{prefix}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_CSV = (
    "task d n dtype F width depth n_params peer status min_s median_s rounds number compile_s first_s "
    "first_cpu_s setup_s peak_bytes rel_err ours_numpy_over_peer ours_torch_over_peer note"
).split()


def write_all(out: Path, data: dict, prefix: str = "pinn_arch", plots: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{prefix}.json").write_text(json.dumps(data, indent=1, default=str))
    with open(out / f"{prefix}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=_CSV, extrasaction="ignore")
        w.writeheader()
        for r in data["rows"]:
            ratios = r.get("ratios", {})
            w.writerow(
                dict(
                    r,
                    ours_numpy_over_peer=ratios.get("ours-numpy"),
                    ours_torch_over_peer=ratios.get("ours-torch"),
                )
            )
    md = markdown(data)
    if plots:
        p = plot(out, data, prefix)
        if p is not None:
            md += f"\n![time against d]({p.name})\n"
    (out / f"{prefix}.md").write_text(md)


def main(argv=None, *, configure_threads: bool = True) -> int:
    args = parse_args(argv)
    args.argv = None if argv is None else list(argv)
    if args.replot is not None:
        data = json.loads((args.replot / f"{args.prefix}.json").read_text())
        write_all(args.replot, data, args.prefix, plots=not args.no_plots)
        print(f"rebuilt {args.replot / (args.prefix + '.md')}")
        return 0
    if configure_threads:
        from .run import _set_threads

        args.thread_report = _set_threads(args.threads)
    else:
        args.thread_report = {}
    out = args.out or (Path("build/bench-quick") if args.quick else Path(__file__).parent / "results")
    data = run(args)
    write_all(out, data, args.prefix, plots=not args.no_plots)
    print(f"wrote {out / (args.prefix + '.md')} ({data['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
