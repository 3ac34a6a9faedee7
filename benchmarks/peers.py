r"""The W1–W5 peers: each turns a point into a :class:`~benchmarks.harness.Runner`.

Tasks: ``"hessian"`` — value ``(n, m)``, gradient ``(n, d, m)`` and Hessian ``(n, d, d, m)`` of
every output for every example; ``"laplacian"`` — value ``(n, m)`` and Laplacian
:math:`\sum_i \partial_i^2 f` ``(n, m)``. A ``call()`` returns when its result is really there
(device synchronised, JAX's dispatch waited for); ``to_numpy`` gives hessQuik's layout for the
check (not timed). A peer that is not installed says why; nothing is substituted for it.
"""

from __future__ import annotations

import numpy as np

from . import nets
from .harness import Peer, Registry, Runner, jax_aot, jax_setup

TASKS = ("hessian", "laplacian")
_NAMES = {"hessian": ("value", "gradient", "hessian"), "laplacian": ("value", "laplacian")}
_BOTH = TASKS


def _t2n(a) -> np.ndarray:
    return a.detach().cpu().numpy()


def _torch_sync(device: str):
    if device == "cuda":
        import torch

        return torch.cuda.synchronize
    return lambda: None


def _synced(fn, sync):
    """``fn()`` and then ``sync()``: the call returns when the device is done."""

    def call():
        out = fn()
        sync()
        return out

    return call


def _tuple_out(task: str, conv):
    """``to_numpy`` of a call returning the task's arrays in :data:`_NAMES` order."""
    return lambda out: {k: conv(a) for k, a in zip(_NAMES[task], out)}


def _aux_out(conv):
    """``to_numpy`` of ``(H, (J, y))`` from :func:`_hessian_aux`: ``(n, m, d, d)``, ``(n, m, d)``, ``(n, m)``."""
    return lambda out: {
        "value": conv(out[1][1]),
        "gradient": conv(out[1][0]).transpose(0, 2, 1),
        "hessian": conv(out[0]).transpose(0, 2, 3, 1),
    }


def _hessian_aux(jacrev, jacfwd, f):
    """``jacfwd(jacrev(f))`` (= ``hessian(f)``) with ``has_aux``: the value and the gradient come
    out of the same sweep, as ``(H, (J, y))``."""

    def f_aux(xi):
        y = f(xi)
        return y, y

    def grad_aux(xi):
        J, y = jacrev(f_aux, has_aux=True)(xi)
        return J, (J, y)

    return jacfwd(grad_aux, has_aux=True)


# --- this library ---


def _make_ours(array_kind: str, mode: str = "auto"):
    """This library called the way a user would: ``net(x, gradient=True, hessian=True)``."""

    def make(point, net, model, x_np):
        dt = point.dtype
        if array_kind == "numpy":
            x = np.ascontiguousarray(x_np, dtype=dt)
            conv, sync = np.asarray, (lambda: None)
        elif array_kind in ("torch", "torch-cuda"):
            import torch

            dev = "cuda" if array_kind == "torch-cuda" else "cpu"
            x = torch.tensor(x_np, dtype=nets.torch_dtype(dt), device=dev)
            conv, sync = _t2n, _torch_sync(dev)
        elif array_kind == "cupy":
            import cupy

            x = cupy.asarray(x_np, dtype=dt)
            conv, sync = cupy.asnumpy, (lambda: cupy.cuda.Device().synchronize())
        else:
            raise AssertionError(array_kind)
        if point.task == "hessian":
            call = _synced(lambda: net(x, gradient=True, hessian=True, mode=mode), sync)
        else:
            call = _synced(lambda: net(x, laplacian=True, mode=mode), sync)
        return Runner(call, lambda r: {k: conv(getattr(r, k)) for k in _NAMES[point.task]})

    return make


def _make_ours_jax_jit(device: str):
    r"""This library's chain rule on JAX arrays (the generic Array-API backend),
    traced once by ``jax.jit``: the same engine, compiled by XLA."""

    def make(point, net, model, x_np):
        jax = jax_setup()
        import jax.numpy as jnp

        dev = jax.devices("gpu" if device == "cuda" else "cpu")[0]
        x = jax.device_put(jnp.asarray(x_np, dtype=getattr(jnp, point.dtype)), dev)
        names = _NAMES[point.task]
        flags = {"gradient": True, "hessian": True} if point.task == "hessian" else {"laplacian": True}

        def f(xx):
            r = net(xx, **flags)
            return tuple(getattr(r, k) for k in names)

        # one eager call first, so that the network's parameter-conversion cache holds
        # concrete JAX arrays: converted during tracing it would keep the trace's
        # tracers, which a later trace of the same network would then reuse (an
        # engine limitation reported with the results)
        f(x[:1])
        fn, cs = jax_aot(jax.jit(f), x)
        return Runner(lambda: jax.block_until_ready(fn(x)), _tuple_out(point.task, np.asarray), compile_s=cs)

    return make


# --- hessQuik 0.0.6, torch.func, JAX, folx ---


def _make_hessquik(device: str):
    def make(point, net, model, x_np):
        import torch

        dt = nets.torch_dtype(point.dtype)
        hnet = nets.hessquik_net(model.records, dt, device=device)
        x = torch.tensor(x_np, dtype=dt, device=device)
        n, m = x.shape[0], point.spec.m
        hess = point.task == "hessian"

        def fn():
            with torch.no_grad():
                # hessQuik's forward-mode Laplacian needs the gradient recurrence too
                return hnet(x, do_gradient=True, do_Hessian=hess, do_Laplacian=not hess)

        if hess:
            to_numpy = _tuple_out("hessian", _t2n)
        else:
            to_numpy = lambda out: {"value": _t2n(out[0]), "laplacian": _t2n(out[2]).reshape(n, m)}  # noqa: E731
        return Runner(_synced(fn, _torch_sync(device)), to_numpy)

    return make


def _make_torch_func(device: str):
    r"""``vmap`` over examples of ``jacfwd(jacrev(f))`` (= ``torch.func.hessian``),
    with ``has_aux`` so that the value and gradient come out of the same sweep;
    the Laplacian is the trace of that Hessian."""

    def make(point, net, model, x_np):
        import torch
        from torch.func import hessian, jacfwd, jacrev, vmap

        dt = nets.torch_dtype(point.dtype)
        f = nets.torch_function(model, dt, device=device)
        x = torch.tensor(x_np, dtype=dt, device=device)
        sync = _torch_sync(device)
        if point.task == "hessian":
            fn = vmap(_hessian_aux(jacrev, jacfwd, f))
            return Runner(_synced(lambda: fn(x), sync), _aux_out(_t2n))
        hess, val = vmap(hessian(f)), vmap(f)

        def lap():
            H = hess(x)  # (n, m, d, d)
            return val(x), torch.diagonal(H, dim1=-2, dim2=-1).sum(-1)

        return Runner(_synced(lap, sync), _tuple_out("laplacian", _t2n))

    return make


def _make_jax(device: str, folx: bool = False):
    r"""``jit(vmap(jacfwd(jacrev(f))))`` (= ``jit(vmap(hessian(f)))``) with ``has_aux``
    for the value and gradient; the Laplacian is the trace of the Hessian. ``folx``:
    ``jit(vmap(folx.forward_laplacian(f)))``, value, Jacobian and Laplacian in one forward
    sweep (dense, ``sparsity_threshold=0``)."""

    def make(point, net, model, x_np):
        jax = jax_setup()
        import jax.numpy as jnp

        dev = jax.devices("gpu" if device == "cuda" else "cpu")[0]
        dt = getattr(jnp, point.dtype)
        f = nets.jax_function(model, dt, device=dev)
        x = jax.device_put(jnp.asarray(x_np, dtype=dt), dev)
        to_numpy = _tuple_out(point.task, np.asarray)
        if folx:
            from folx import forward_laplacian

            fl = forward_laplacian(f, sparsity_threshold=0)

            def one(xi):
                r = fl(xi)
                return r.x, r.laplacian
        elif point.task == "hessian":
            one, to_numpy = _hessian_aux(jax.jacrev, jax.jacfwd, f), _aux_out(np.asarray)
        else:

            def one(xi):
                H = jax.hessian(f)(xi)  # (m, d, d)
                return f(xi), jnp.trace(H, axis1=-2, axis2=-1)

        fn, cs = jax_aot(jax.jit(jax.vmap(one)), x)
        return Runner(lambda: jax.block_until_ready(fn(x)), to_numpy, compile_s=cs)

    return make


# --- registry: name, family, backend, device, tasks, builder, requires, note ---


def _peer(name, family, backend, device, tasks, build, requires=(), note="") -> Peer:
    return Peer(name, build, requires, family, tasks, backend, device, note)


_LAP, _T, _JF, _HQ = ("laplacian",), ("torch",), ("jax", "folx"), ("hessQuik", "torch")
_JIT = "this library on JAX arrays (generic Array-API backend) inside jax.jit"
_BWD = "Laplacian by the backward sweep (mode='backward')"
_NBWD = "Laplacian forced through the backward sweep (mode='backward')"
PEERS = Registry(
    _peer("ours-numpy", "ours", "numpy", "cpu", _BOTH, _make_ours("numpy")),
    _peer("ours-torch", "ours", "torch", "cpu", _BOTH, _make_ours("torch"), _T),
    _peer("ours-jax-jit", "ours", "jax", "cpu", _BOTH, _make_ours_jax_jit("cpu"), ("jax",), _JIT),
    _peer("ours-numpy-bwd", "ours", "numpy", "cpu", _LAP, _make_ours("numpy", "backward"), note=_NBWD),
    _peer("ours-torch-bwd", "ours", "torch", "cpu", _LAP, _make_ours("torch", "backward"), _T, _BWD),
    _peer("ours-cupy", "ours", "cupy", "cuda", _BOTH, _make_ours("cupy"), ("cupy",)),
    _peer("ours-torch-cuda", "ours", "torch-cuda", "cuda", _BOTH, _make_ours("torch-cuda"), _T),
    _peer("hessQuik-0.0.6", "hessquik", "torch", "cpu", _BOTH, _make_hessquik("cpu"), _HQ),
    _peer("torch.func", "torch.func", "torch", "cpu", _BOTH, _make_torch_func("cpu"), _T),
    _peer("jax", "jax", "jax", "cpu", _BOTH, _make_jax("cpu"), ("jax",)),
    _peer("folx", "folx", "jax", "cpu", _LAP, _make_jax("cpu", folx=True), _JF),
    _peer("hessQuik-0.0.6-cuda", "hessquik", "torch-cuda", "cuda", _BOTH, _make_hessquik("cuda"), _HQ),
    _peer("jax-cuda", "jax", "jax-cuda", "cuda", _BOTH, _make_jax("cuda"), ("jax",), "JAX on the GPU"),
    _peer("folx-cuda", "folx", "jax-cuda", "cuda", _LAP, _make_jax("cuda", True), _JF, "folx on the GPU"),
    _peer("torch.func-cuda", "torch.func", "torch-cuda", "cuda", _BOTH, _make_torch_func("cuda"), _T),
)
