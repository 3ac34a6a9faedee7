r"""The methods being compared ("peers"), each behind one small interface.

A peer turns a benchmark point into a :class:`Runner`: a zero-argument
``call()`` that computes the requested derivatives for the whole batch and
returns when the result is really there (device work synchronised, JAX's
asynchronous dispatch waited for), plus ``to_numpy(out)`` that brings the
result back in hessQuik's layout for the agreement check (not timed).

Tasks
-----
``"hessian"``
    value ``(n, m)``, gradient ``(n, d, m)`` and Hessian ``(n, d, d, m)``
    of every output, for every example.
``"laplacian"``
    value ``(n, m)`` and Laplacian :math:`\sum_i \partial_i^2 f` ``(n, m)``.

A peer that is not installed reports *why* through :meth:`Peer.available`
and is skipped; nothing is ever substituted for it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import nets
from .harness import Peer, Registry, Runner, jax_aot, jax_setup

__all__ = ["PEERS", "TASKS"]

TASKS = ("hessian", "laplacian")


def _np_dtype(name: str):
    return {"float32": np.float32, "float64": np.float64}[name]


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


def _t2n(a) -> np.ndarray:
    return a.detach().cpu().numpy()


def _torch_sync(device: str) -> Callable[[], None]:
    if device == "cuda":
        import torch

        return torch.cuda.synchronize
    return lambda: None


# --------------------------------------------------------------------------
# this library
# --------------------------------------------------------------------------


def _make_ours(array_kind: str, mode: str = "auto"):
    """This library called the way a user would: ``net(x, gradient=True, hessian=True)``."""

    def make(point, net, model, x_np):
        dt = point.dtype
        if array_kind == "numpy":
            x = np.ascontiguousarray(x_np, dtype=_np_dtype(dt))
            conv, sync = np.asarray, (lambda: None)
        elif array_kind in ("torch", "torch-cuda"):
            import torch

            dev = "cuda" if array_kind == "torch-cuda" else "cpu"
            x = torch.tensor(x_np, dtype=_torch_dtype(dt), device=dev)
            conv, sync = _t2n, _torch_sync(dev)
        elif array_kind == "cupy":
            import cupy

            x = cupy.asarray(x_np, dtype=_np_dtype(dt))
            conv = cupy.asnumpy

            def sync():
                cupy.cuda.Device().synchronize()
        else:
            raise AssertionError(array_kind)

        if point.task == "hessian":

            def call():
                r = net(x, gradient=True, hessian=True, mode=mode)
                sync()
                return r

            def to_numpy(r):
                return {"value": conv(r.value), "gradient": conv(r.gradient), "hessian": conv(r.hessian)}
        else:

            def call():
                r = net(x, laplacian=True, mode=mode)
                sync()
                return r

            def to_numpy(r):
                return {"value": conv(r.value), "laplacian": conv(r.laplacian)}

        return Runner(call, to_numpy)

    return make


# --------------------------------------------------------------------------
# hessQuik 0.0.6
# --------------------------------------------------------------------------


def _make_hessquik(device: str):
    def make(point, net, model, x_np):
        import torch

        dt = _torch_dtype(point.dtype)
        hnet = nets.hessquik_net(model.records, dt, device=device)
        x = torch.tensor(x_np, dtype=dt, device=device)
        sync = _torch_sync(device)
        n, m = x.shape[0], point.spec.m

        if point.task == "hessian":

            def call():
                with torch.no_grad():
                    out = hnet(x, do_gradient=True, do_Hessian=True)
                sync()
                return out

            def to_numpy(out):
                f, df, d2f = out
                return {"value": _t2n(f), "gradient": _t2n(df), "hessian": _t2n(d2f)}
        else:
            # hessQuik's forward-mode Laplacian needs the gradient recurrence too
            def call():
                with torch.no_grad():
                    out = hnet(x, do_gradient=True, do_Laplacian=True)
                sync()
                return out

            def to_numpy(out):
                f, _, lap = out
                return {"value": _t2n(f), "laplacian": _t2n(lap).reshape(n, m)}

        return Runner(call, to_numpy)

    return make


# --------------------------------------------------------------------------
# torch.func
# --------------------------------------------------------------------------


def _make_torch_func(device: str):
    r"""``vmap`` over examples of ``jacfwd(jacrev(f))`` (= ``torch.func.hessian``),
    with ``has_aux`` so that the value and gradient come out of the same sweep;
    the Laplacian is the trace of that Hessian."""

    def make(point, net, model, x_np):
        import torch
        from torch.func import hessian, jacfwd, jacrev, vmap

        dt = _torch_dtype(point.dtype)
        f = nets.torch_function(model, dt, device=device)
        x = torch.tensor(x_np, dtype=dt, device=device)
        sync = _torch_sync(device)

        if point.task == "hessian":

            def f_aux(xi):
                y = f(xi)
                return y, y

            def grad_aux(xi):
                J, y = jacrev(f_aux, has_aux=True)(xi)
                return J, (J, y)

            fn = vmap(jacfwd(grad_aux, has_aux=True))

            def call():
                out = fn(x)
                sync()
                return out

            def to_numpy(out):
                H, (J, y) = out  # (n, m, d, d), (n, m, d), (n, m)
                return {
                    "value": _t2n(y),
                    "gradient": _t2n(J).transpose(0, 2, 1),
                    "hessian": _t2n(H).transpose(0, 2, 3, 1),
                }
        else:
            hess = vmap(hessian(f))
            val = vmap(f)

            def call():
                H = hess(x)  # (n, m, d, d)
                lap = torch.diagonal(H, dim1=-2, dim2=-1).sum(-1)
                y = val(x)
                sync()
                return y, lap

            def to_numpy(out):
                return {"value": _t2n(out[0]), "laplacian": _t2n(out[1])}

        return Runner(call, to_numpy)

    return make


# --------------------------------------------------------------------------
# JAX and folx
# --------------------------------------------------------------------------


def _make_jax(device: str):
    r"""``jit(vmap(jacfwd(jacrev(f))))`` (= ``jit(vmap(hessian(f)))``) with ``has_aux``
    for the value and gradient; the Laplacian is the trace of the Hessian."""

    def make(point, net, model, x_np):
        jax = jax_setup()
        import jax.numpy as jnp

        dev = jax.devices("gpu" if device == "cuda" else "cpu")[0]
        dt = getattr(jnp, point.dtype)
        f = nets.jax_function(model, dt, device=dev)
        x = jax.device_put(jnp.asarray(x_np, dtype=dt), dev)

        if point.task == "hessian":

            def f_aux(xi):
                y = f(xi)
                return y, y

            def grad_aux(xi):
                J, y = jax.jacrev(f_aux, has_aux=True)(xi)
                return J, (J, y)

            fn, cs = jax_aot(jax.jit(jax.vmap(jax.jacfwd(grad_aux, has_aux=True))), x)

            def to_numpy(out):
                H, (J, y) = out
                return {
                    "value": np.asarray(y),
                    "gradient": np.asarray(J).transpose(0, 2, 1),
                    "hessian": np.asarray(H).transpose(0, 2, 3, 1),
                }
        else:

            def one(xi):
                H = jax.hessian(f)(xi)  # (m, d, d)
                return f(xi), jnp.trace(H, axis1=-2, axis2=-1)

            fn, cs = jax_aot(jax.jit(jax.vmap(one)), x)

            def to_numpy(out):
                return {"value": np.asarray(out[0]), "laplacian": np.asarray(out[1])}

        def call():
            return jax.block_until_ready(fn(x))

        return Runner(call, to_numpy, compile_s=cs)

    return make


def _make_ours_jax_jit(device: str):
    r"""This library's chain rule on JAX arrays (the generic Array-API backend),
    traced once by ``jax.jit``: the same engine, compiled by XLA."""

    def make(point, net, model, x_np):
        jax = jax_setup()
        import jax.numpy as jnp

        dev = jax.devices("gpu" if device == "cuda" else "cpu")[0]
        x = jax.device_put(jnp.asarray(x_np, dtype=getattr(jnp, point.dtype)), dev)
        if point.task == "hessian":

            def f(xx):
                r = net(xx, gradient=True, hessian=True)
                return r.value, r.gradient, r.hessian

            def to_numpy(out):
                return {
                    "value": np.asarray(out[0]),
                    "gradient": np.asarray(out[1]),
                    "hessian": np.asarray(out[2]),
                }
        else:

            def f(xx):
                r = net(xx, laplacian=True)
                return r.value, r.laplacian

            def to_numpy(out):
                return {"value": np.asarray(out[0]), "laplacian": np.asarray(out[1])}

        # one eager call first, so that the network's parameter-conversion cache holds
        # concrete JAX arrays: converted during tracing it would keep the trace's
        # tracers, which a later trace of the same network would then reuse (an
        # engine limitation reported with the results)
        f(x[:1])
        fn, cs = jax_aot(jax.jit(f), x)

        def call():
            return jax.block_until_ready(fn(x))

        return Runner(call, to_numpy, compile_s=cs)

    return make


def _make_folx(device: str):
    r"""``jit(vmap(folx.forward_laplacian(f)))``: value, Jacobian and Laplacian in one
    forward sweep (dense, ``sparsity_threshold=0``)."""

    def make(point, net, model, x_np):
        jax = jax_setup()
        import jax.numpy as jnp
        from folx import forward_laplacian

        dev = jax.devices("gpu" if device == "cuda" else "cpu")[0]
        dt = getattr(jnp, point.dtype)
        f = nets.jax_function(model, dt, device=dev)
        x = jax.device_put(jnp.asarray(x_np, dtype=dt), dev)
        fl = forward_laplacian(f, sparsity_threshold=0)

        def one(xi):
            r = fl(xi)
            return r.x, r.laplacian

        fn, cs = jax_aot(jax.jit(jax.vmap(one)), x)

        def call():
            return jax.block_until_ready(fn(x))

        def to_numpy(out):
            return {"value": np.asarray(out[0]), "laplacian": np.asarray(out[1])}

        return Runner(call, to_numpy, compile_s=cs)

    return make


# --------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------

_BOTH = ("hessian", "laplacian")


def _peer(name, family, backend, device, tasks, build, requires=(), note="") -> Peer:
    return Peer(name, build, requires, family, tasks, backend, device, note)


PEERS = Registry(
    _peer("ours-numpy", "ours", "numpy", "cpu", _BOTH, _make_ours("numpy")),
    _peer("ours-torch", "ours", "torch", "cpu", _BOTH, _make_ours("torch"), ("torch",)),
    _peer(
        "ours-jax-jit",
        "ours",
        "jax",
        "cpu",
        _BOTH,
        _make_ours_jax_jit("cpu"),
        ("jax",),
        "this library on JAX arrays (generic Array-API backend) inside jax.jit",
    ),
    _peer(
        "ours-numpy-bwd",
        "ours",
        "numpy",
        "cpu",
        ("laplacian",),
        _make_ours("numpy", "backward"),
        note="Laplacian forced through the backward sweep (mode='backward')",
    ),
    _peer(
        "ours-torch-bwd",
        "ours",
        "torch",
        "cpu",
        ("laplacian",),
        _make_ours("torch", "backward"),
        ("torch",),
        "Laplacian by the backward sweep (mode='backward')",
    ),
    _peer("ours-cupy", "ours", "cupy", "cuda", _BOTH, _make_ours("cupy"), ("cupy",)),
    _peer("ours-torch-cuda", "ours", "torch-cuda", "cuda", _BOTH, _make_ours("torch-cuda"), ("torch",)),
    _peer("hessQuik-0.0.6", "hessquik", "torch", "cpu", _BOTH, _make_hessquik("cpu"), ("hessQuik", "torch")),
    _peer("torch.func", "torch.func", "torch", "cpu", _BOTH, _make_torch_func("cpu"), ("torch",)),
    _peer("jax", "jax", "jax", "cpu", _BOTH, _make_jax("cpu"), ("jax",)),
    _peer("folx", "folx", "jax", "cpu", ("laplacian",), _make_folx("cpu"), ("jax", "folx")),
    _peer(
        "hessQuik-0.0.6-cuda",
        "hessquik",
        "torch-cuda",
        "cuda",
        _BOTH,
        _make_hessquik("cuda"),
        ("hessQuik", "torch"),
    ),
    _peer("jax-cuda", "jax", "jax-cuda", "cuda", _BOTH, _make_jax("cuda"), ("jax",), "JAX on the GPU"),
    _peer(
        "folx-cuda",
        "folx",
        "jax-cuda",
        "cuda",
        ("laplacian",),
        _make_folx("cuda"),
        ("jax", "folx"),
        "folx on the GPU",
    ),
    _peer("torch.func-cuda", "torch.func", "torch-cuda", "cuda", _BOTH, _make_torch_func("cuda"), ("torch",)),
)
