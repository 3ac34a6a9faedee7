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

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import nets

__all__ = ["PEERS", "Peer", "Runner", "gpu_available", "peers_for"]

TASKS = ("hessian", "laplacian")


@dataclass
class Runner:
    """A prepared computation: ``call()`` runs it, ``to_numpy(out)`` converts its result."""

    call: Callable[[], Any]
    to_numpy: Callable[[Any], dict]
    compile_s: float = 0.0  # ahead-of-time compilation (JAX/folx), not in the timings
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Peer:
    """One method on one backend/device.

    Attributes
    ----------
    name : str
        Column label (``"ours-numpy"``, ``"torch.func"``, ...).
    family : str
        ``"ours"``, ``"hessquik"``, ``"torch.func"``, ``"jax"`` or ``"folx"``.
    rate_backend : str
        Whose measured GEMM rate and copy bandwidth bound this peer
        (``"numpy"``, ``"torch"``, ``"jax"``, ``"cupy"``, ``"torch-cuda"``).
    device : str
        ``"cpu"`` or ``"cuda"``.
    tasks : tuple
        Which of :data:`TASKS` it can do.
    make : callable
        ``make(point, net, records, x_np) -> Runner``.
    requires : tuple
        Import names that must be present.
    """

    name: str
    family: str
    rate_backend: str
    device: str
    tasks: tuple
    make: Callable
    requires: tuple = ()
    note: str = ""

    def available(self) -> tuple[bool, str]:
        """``(True, "")`` or ``(False, reason)``."""
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                return False, f"{mod} is not installed"
        if self.device == "cuda" and not gpu_available(self.rate_backend):
            return False, "no CUDA GPU on this machine"
        return True, ""


def gpu_available(kind: str) -> bool:
    """Whether ``kind`` (``"cupy"``, ``"torch-cuda"``, ``"jax"``) sees a CUDA GPU."""
    try:
        if kind == "cupy":
            if importlib.util.find_spec("cupy") is None:
                return False
            import cupy

            return cupy.cuda.runtime.getDeviceCount() > 0
        if kind in ("torch-cuda", "torch"):
            if importlib.util.find_spec("torch") is None:
                return False
            import torch

            return torch.cuda.is_available()
        if kind == "jax-cuda":
            if importlib.util.find_spec("jax") is None:
                return False
            import jax

            return any(dev.platform == "gpu" for dev in jax.devices())
    except Exception:
        return False
    return False


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


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

    def make(point, net, records, x_np):
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

        runner = Runner(call, to_numpy)
        # the first call converts and caches the parameters: do it before timing
        return runner

    return make


# --------------------------------------------------------------------------
# hessQuik 0.0.6
# --------------------------------------------------------------------------


def _make_hessquik(device: str):
    def make(point, net, records, x_np):
        import torch

        dt = _torch_dtype(point.dtype)
        hnet = nets.hessquik_net(records, dt, device=device)
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

    def make(point, net, records, x_np):
        import torch
        from torch.func import hessian, jacfwd, jacrev, vmap

        dt = _torch_dtype(point.dtype)
        f = nets.torch_function(records, dt, device=device)
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


def _jax_setup():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def _aot(jitted, x):
    """Compile ahead of time so that compilation never lands in a timing."""
    t0 = time.perf_counter()
    compiled = jitted.lower(x).compile()
    return compiled, time.perf_counter() - t0


def _make_jax(device: str):
    r"""``jit(vmap(jacfwd(jacrev(f))))`` (= ``jit(vmap(hessian(f)))``) with ``has_aux``
    for the value and gradient; the Laplacian is the trace of the Hessian."""

    def make(point, net, records, x_np):
        jax = _jax_setup()
        import jax.numpy as jnp

        dev = jax.devices("gpu" if device == "cuda" else "cpu")[0]
        dt = getattr(jnp, point.dtype)
        f = nets.jax_function(records, dt, device=dev)
        x = jax.device_put(jnp.asarray(x_np, dtype=dt), dev)

        if point.task == "hessian":

            def f_aux(xi):
                y = f(xi)
                return y, y

            def grad_aux(xi):
                J, y = jax.jacrev(f_aux, has_aux=True)(xi)
                return J, (J, y)

            fn, cs = _aot(jax.jit(jax.vmap(jax.jacfwd(grad_aux, has_aux=True))), x)

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

            fn, cs = _aot(jax.jit(jax.vmap(one)), x)

            def to_numpy(out):
                return {"value": np.asarray(out[0]), "laplacian": np.asarray(out[1])}

        def call():
            return jax.block_until_ready(fn(x))

        return Runner(call, to_numpy, compile_s=cs)

    return make


def _make_ours_jax_jit(device: str):
    r"""This library's chain rule on JAX arrays (the generic Array-API backend),
    traced once by ``jax.jit``: the same engine, compiled by XLA."""

    def make(point, net, records, x_np):
        jax = _jax_setup()
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
        fn, cs = _aot(jax.jit(f), x)

        def call():
            return jax.block_until_ready(fn(x))

        return Runner(call, to_numpy, compile_s=cs)

    return make


def _make_folx(device: str):
    r"""``jit(vmap(folx.forward_laplacian(f)))``: value, Jacobian and Laplacian in one
    forward sweep (dense, ``sparsity_threshold=0``)."""

    def make(point, net, records, x_np):
        jax = _jax_setup()
        import jax.numpy as jnp
        from folx import forward_laplacian

        dev = jax.devices("gpu" if device == "cuda" else "cpu")[0]
        dt = getattr(jnp, point.dtype)
        f = nets.jax_function(records, dt, device=dev)
        x = jax.device_put(jnp.asarray(x_np, dtype=dt), dev)
        fl = forward_laplacian(f, sparsity_threshold=0)

        def one(xi):
            r = fl(xi)
            return r.x, r.laplacian

        fn, cs = _aot(jax.jit(jax.vmap(one)), x)

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

PEERS: list[Peer] = [
    Peer("ours-numpy", "ours", "numpy", "cpu", _BOTH, _make_ours("numpy")),
    Peer("ours-torch", "ours", "torch", "cpu", _BOTH, _make_ours("torch"), requires=("torch",)),
    Peer(
        "ours-jax-jit",
        "ours",
        "jax",
        "cpu",
        _BOTH,
        _make_ours_jax_jit("cpu"),
        requires=("jax",),
        note="this library on JAX arrays (generic Array-API backend) inside jax.jit",
    ),
    Peer(
        "ours-numpy-bwd",
        "ours",
        "numpy",
        "cpu",
        ("laplacian",),
        _make_ours("numpy", "backward"),
        note="Laplacian forced through the backward sweep (mode='backward')",
    ),
    Peer(
        "ours-torch-bwd",
        "ours",
        "torch",
        "cpu",
        ("laplacian",),
        _make_ours("torch", "backward"),
        requires=("torch",),
        note="Laplacian by the backward sweep (mode='backward')",
    ),
    Peer("ours-cupy", "ours", "cupy", "cuda", _BOTH, _make_ours("cupy"), requires=("cupy",)),
    Peer(
        "ours-torch-cuda", "ours", "torch-cuda", "cuda", _BOTH, _make_ours("torch-cuda"), requires=("torch",)
    ),
    Peer(
        "hessQuik-0.0.6",
        "hessquik",
        "torch",
        "cpu",
        _BOTH,
        _make_hessquik("cpu"),
        requires=("hessQuik", "torch"),
    ),
    Peer("torch.func", "torch.func", "torch", "cpu", _BOTH, _make_torch_func("cpu"), requires=("torch",)),
    Peer("jax", "jax", "jax", "cpu", _BOTH, _make_jax("cpu"), requires=("jax",)),
    Peer("folx", "folx", "jax", "cpu", ("laplacian",), _make_folx("cpu"), requires=("jax", "folx")),
    Peer(
        "hessQuik-0.0.6-cuda",
        "hessquik",
        "torch-cuda",
        "cuda",
        _BOTH,
        _make_hessquik("cuda"),
        requires=("hessQuik", "torch"),
    ),
    Peer(
        "jax-cuda",
        "jax",
        "jax-cuda",
        "cuda",
        _BOTH,
        _make_jax("cuda"),
        requires=("jax",),
        note="JAX on the GPU",
    ),
    Peer(
        "folx-cuda",
        "folx",
        "jax-cuda",
        "cuda",
        ("laplacian",),
        _make_folx("cuda"),
        requires=("jax", "folx"),
        note="folx on the GPU",
    ),
    Peer(
        "torch.func-cuda",
        "torch.func",
        "torch-cuda",
        "cuda",
        _BOTH,
        _make_torch_func("cuda"),
        requires=("torch",),
    ),
]


def peers_for(task: str, names: list[str] | None = None) -> list[Peer]:
    """The registered peers that can do ``task`` (optionally only ``names``)."""
    out = [p for p in PEERS if task in p.tasks]
    if names is not None:
        out = [p for p in out if p.name in names or p.family in names]
    return out
