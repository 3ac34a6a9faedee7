r"""The analytic weight gradient of :func:`hessquik_core.taylor_derivatives` (and
:func:`~hessquik_core.pure_partials`, and of the call flags ``third_derivative`` /
``fourth_derivative``: :func:`route_applies`, :func:`route_run`, registered with
``hessquik_core.engine.routes.higher``) on torch.

A loss :math:`\ell(D_1, \dots, D_k)` of the directional derivatives
:math:`D_j = \partial^j u[v, \dots, v]` ``(n, K, m)`` has the weight gradient
:math:`\sum_j J_j^\top \bar D_j`, :math:`J_j` the per-point parameter Jacobian of
:math:`D_j` (:mod:`hessquik_core.pinn._streams_taylor`). The Taylor streams
:math:`(a_0, \dots, a_k)` of the output carry every :math:`D_j` (row ``j``), so one
backward sweep of the streams' adjoint, seeded with :math:`\bar D_j` in row ``j`` and
summed over the points, gives it: the backward pass of one ``torch.autograd.Function``
around the function's sweep, instead of autograd through every operation.

Where it applies (:func:`run` returns ``None`` otherwise, and the caller runs the taped
sweep): a batch ``x (n, d)`` of torch that does not require gradients while some
parameter does, grad mode on, no ``torch.compile`` / ``torch.func`` tracing, the switch
:func:`hessquik_core.training.analytic_weight_gradient` on, no ``backend=`` other than
the points' own, and layers declaring affine structure (dense, residual, SIREN, Fourier
features) whose activations supply
:math:`\sigma^{(k+1)}` (:func:`~hessquik_core.pinn._streams_taylor.check_supported`).
The forward pass is the function's own sweep (the same values as untaped); the
backward recomputes the streams. A second backward pass (``create_graph=True``)
re-runs the sweep as recorded operations and differentiates it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..backends.base import SWITCHES
from . import _streams_taylor as tay
from ._streams import Bound

__all__ = ["route_applies", "route_run", "run"]


def _eligible(net, x, backend, order: int) -> bool:
    from ..backends import owner_of

    if backend is not None or getattr(x, "ndim", None) != 2:
        return False
    if not (SWITCHES.analytic_step and SWITCHES.analytic_higher_order):
        return False
    be = owner_of(x)
    if not be.autograd or not be.autograd_enabled() or be.is_tracing() or be.records_autograd([x]):
        return False
    leaves = list(net._leaves())
    if not be.records_autograd(p for leaf in leaves for _, p in leaf.named_parameters()):
        return False
    try:
        tay.check_supported(leaves, order, "taylor_derivatives")
    except ValueError:
        return False
    return True


def run(net, x, directions, order: int, backend, compute: Callable[[], tuple]) -> tuple | None:
    """``compute()``'s ``order`` arrays ``(n, K, m)``, recorded as one function with the
    analytic backward; ``None`` where it does not apply (module docstring)."""
    if not _eligible(net, x, backend, order):
        return None
    import torch

    from .._array import resolve_input

    inp = resolve_input(net, x, None)
    leaves = list(net._leaves())
    dev = x.device
    params = [leaf._eval_params(inp.cache_key, inp.be, inp.xp, x.dtype, dev) for leaf in leaves]
    keys = [list(P) for P in params]
    flat = [P[k] for P, ks in zip(params, keys) for k in ks]

    class _Taylor(torch.autograd.Function):
        @staticmethod
        def forward(fctx, *flat):
            fctx.save_for_backward(*flat)
            fctx.set_materialize_grads(False)  # an unused order seeds nothing
            return tuple(a.contiguous() for a in compute())

        @staticmethod
        def backward(fctx, *cots):
            need = fctx.needs_input_grad
            used = [j for j, c in enumerate(cots) if c is not None]
            if not used:
                return tuple(None for _ in need)
            saved = fctx.saved_tensors
            if torch.is_grad_enabled():  # create_graph=True: differentiate the recorded sweep
                wrt = [t for t, n in zip(saved, need) if n]
                with torch.enable_grad():
                    outs = compute()
                got = iter(
                    torch.autograd.grad(
                        [outs[j] for j in used],
                        wrt,
                        [cots[j] for j in used],
                        create_graph=True,
                        allow_unused=True,
                    )
                )
                return tuple(next(got) if n else None for n in need)
            return _analytic(net, x, directions, order, cots, keys, need)

    return _Taylor.apply(*flat)


def _analytic(net, x, directions, order: int, cots, keys, need) -> tuple:
    import array_api_compat as aac
    import torch

    from ..backends import owner_of, to_numpy

    B = Bound(net, x, None)
    xp = B.xp
    # directions of x's library or NumPy (the host interchange format every asarray accepts)
    same = aac.array_namespace(directions) is xp or owner_of(directions).interchange
    V = xp.asarray(directions if same else to_numpy(directions), dtype=B.dtype, device=B.device)
    n, m, K = B.x.shape[0], B.net.out_features, V.shape[1]
    N = n * K
    zero = xp.zeros((N, m), dtype=B.dtype, device=B.device)
    rows: list[Any] = [zero] + [zero if c is None else xp.reshape(c, (N, m)) for c in cots]
    _, caches = tay._forward(B, V, order)
    grads = tay._backward(B, caches, xp.stack(rows, axis=0)[None, ...], "sum")
    got = [g.get(k) for g, ks in zip(grads, keys) for k in ks]
    # a block no used output reaches is exactly zero: None says the same to autograd
    return tuple(g if nd and g is not None and bool(torch.any(g != 0)) else None for g, nd in zip(got, need))


# --------------------------------------------------------------------------
# the call flags third_derivative / fourth_derivative (route "forward/taylor")
# --------------------------------------------------------------------------


def route_applies(leaves, ctx) -> bool:
    """Does a recorded ``third_derivative`` / ``fourth_derivative`` call run with the analytic
    weight gradient? (The same conditions as the functions'.)"""
    ops = ctx.be
    # torch: the only library with autograd here; the order-3/4 gradient is an opt-in
    if not (SWITCHES.analytic_step and SWITCHES.analytic_higher_order and ops.autograd):
        return False
    if not ops.autograd_enabled() or ops.is_tracing() or ops.records_autograd([ctx.x]):
        return False
    try:
        tay.check_supported(
            leaves, ctx.taylor_order, "fourth_derivative" if ctx.fourth_derivative else "third_derivative"
        )
    except ValueError:
        return False
    return bool(leaves)


def route_run(leaves, params, ctx, evaluate) -> tuple:
    """``(u, D_1, …, D_K)`` recorded as one function whose backward seeds row ``j`` of the
    output's Taylor streams with the cotangent of ``D_j`` (row 0, the value, in the first
    direction's group) and runs their adjoint once."""
    import torch

    from ._streams_bh_train import _bound

    keys = [list(P) for P in params]
    flat = [P[k] for P, ks in zip(params, keys) for k in ks]
    K = ctx.taylor_order

    def unflatten(ts):
        it = iter(ts)
        return [{k: next(it) for k in ks} for ks in keys]

    class _TaylorRoute(torch.autograd.Function):
        @staticmethod
        def forward(fctx, x, *flat):
            fctx.save_for_backward(x, *flat)
            fctx.set_materialize_grads(False)
            return tuple(a.contiguous() for a in evaluate(unflatten(flat), x))

        @staticmethod
        def backward(fctx, *cots):
            x, *saved = fctx.saved_tensors
            need = fctx.needs_input_grad[1:]
            used = [j for j, c in enumerate(cots) if c is not None]
            if not used:
                return (None, *(None for _ in need))
            if torch.is_grad_enabled():  # create_graph=True: differentiate the recorded sweep
                wrt = [t for t, n in zip(saved, need) if n]
                outs = evaluate(unflatten(saved), x)
                got = iter(
                    torch.autograd.grad(
                        [outs[j] for j in used],
                        wrt,
                        [cots[j] for j in used],
                        create_graph=True,
                        allow_unused=True,
                    )
                )
                return (None, *(next(got) if n else None for n in need))
            B = _bound(leaves, unflatten([None if t is None else t.detach() for t in saved]), x.detach(), ctx)
            xp = ctx.xp
            n, k, m = x.shape[0], ctx.k, ctx.m
            zero = xp.zeros((n, k, m), dtype=x.dtype, device=ctx.device)
            gu = cots[0]
            row0 = zero if gu is None else xp.concat([gu[:, None, :], zero[:, 1:, :]], axis=1)
            rows = [row0] + [zero if c is None else c for c in cots[1:]]
            Ybar = xp.stack([xp.reshape(r, (n * k, m)) for r in rows], axis=0)[None, ...]
            _, caches = tay._forward(B, ctx.V, K)
            grads = tay._backward(B, caches, Ybar, "sum")
            got = [g.get(kk) for g, ks in zip(grads, keys) for kk in ks]
            return (
                None,
                *(
                    g if nd and g is not None and bool(torch.any(g != 0)) else None
                    for g, nd in zip(got, need)
                ),
            )

    return _TaylorRoute.apply(ctx.x, *flat)


def _register() -> None:
    from ..engine.routes.higher import TrainingRule, register_training

    register_training(TrainingRule(route_applies, route_run), "taylor")


_register()
