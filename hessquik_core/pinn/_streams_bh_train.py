r"""The analytic weight gradient of ``net(x, biharmonic=True)`` on torch.

A loss :math:`\ell(u, \nabla u, \Delta u, \Delta^2 u)` of the outputs of a recorded
bi-Laplacian call has the weight gradient

.. math::
    \nabla_\theta \ell = \sum_i \sum_{q} J_{q,i}^\top \bar q_i,\qquad
    \bar q_i = \partial\ell/\partial q_i,

with :math:`J_{q,i} = \partial q(x_i;\theta)/\partial\theta` the per-point parameter
Jacobians of :mod:`hessquik_core.pinn._streams_bh`. Their matrix-free product
:math:`J^\top\bar q` (one forward sweep over the bi-Laplacian's streams and one
backward sweep of their hand-written adjoint, summed over the points as it goes:
:func:`hessquik_core.pinn.vjp` with ``{"biharmonic": w4, "laplacian": w2, ...}``)
is the backward pass of one ``torch.autograd.Function`` around the route's sweep,
instead of autograd through every operation of that sweep.

Where it applies (:func:`applies`): a recorded call whose parameters require
gradients and whose ``x`` does not (the ``x``-gradient of :math:`\Delta^2 u` is a
fifth-order input derivative the streams do not carry: such a call takes the
taped path), eager torch (no ``torch.compile`` / ``torch.func`` tracing: they trace
the generic sweep), the switch :func:`hessquik_core.training.analytic_weight_gradient`
on, and a network of layers declaring affine structure (dense, residual, SIREN,
Fourier features) whose activations supply :math:`\sigma^{(5)}` (tanh, sin, antiTanh,
sigmoid, identity, quadratic). Anything
else runs the taped sweep, unchanged.

The forward pass is the route's own sweep (the values are those of an untaped
call, bit for bit); the backward pass recomputes the streams' forward sweep
(nothing of it is saved between the passes). A second backward pass
(``create_graph=True``) re-runs the route's sweep as recorded operations and
differentiates it, so it is exact too, at the cost of the taped path.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ..backends.base import SWITCHES
from ..engine.routes.higher import TrainingRule, register_training
from . import _streams_bh_call as call
from ._streams_bh import supported

__all__ = ["applies", "run"]


def applies(leaves, ctx) -> bool:
    """Does a recorded bi-Laplacian call run with the analytic weight gradient?"""
    ops = ctx.be
    # torch: the only library with autograd here; the order-3/4 gradient is an opt-in
    if not (SWITCHES.analytic_step and SWITCHES.analytic_higher_order and ops.autograd):
        return False
    if not ops.autograd_enabled() or ops.is_tracing() or ops.records_autograd([ctx.x]):
        return False
    return supported(leaves, 5)


def _bound(leaves, params, x, ctx) -> Any:
    """What the stream sweeps of :mod:`._streams_bh_call` read of a bound network."""
    return SimpleNamespace(
        leaves=leaves,
        params=params,
        x=x,
        xp=ctx.xp,
        be=ctx.be,
        dtype=x.dtype,
        device=ctx.device,
        net=SimpleNamespace(in_features=ctx.d, out_features=ctx.m),
    )


def run(leaves, params, ctx, evaluate) -> tuple:
    """``(u, ∇u, Δu, Δ²u)`` recorded as one function with the analytic backward."""
    import torch

    keys = [list(P) for P in params]
    flat = [P[k] for P, ks in zip(params, keys) for k in ks]

    def unflatten(ts):
        it = iter(ts)
        return [{k: next(it) for k in ks} for ks in keys]

    class _Biharmonic(torch.autograd.Function):
        @staticmethod
        def forward(fctx, x, *flat):
            outs = evaluate(unflatten(flat), x)
            fctx.save_for_backward(x, *flat)
            # an output the loss does not use gets None, not zeros: it seeds nothing, and a
            # parameter reached through no used output keeps a None gradient (as on the taped path)
            fctx.set_materialize_grads(False)
            # fresh, contiguous outputs (a field may be a broadcast view of the carry)
            return tuple(o.contiguous() if o._base is not None or not o.is_contiguous() else o for o in outs)

        @staticmethod
        def backward(fctx, gu, gg, gL, gB):
            x, *saved = fctx.saved_tensors
            need = fctx.needs_input_grad[1:]
            used = [i for i, g in enumerate((gu, gg, gL, gB)) if g is not None]
            if not used:
                return (None, *(None for _ in need))
            if torch.is_grad_enabled():  # create_graph=True: a differentiable backward, taped
                wrt = [t for t, n in zip(saved, need) if n]
                outs = evaluate(unflatten(saved), x)
                cot = (gu, gg, gL, gB)
                got = iter(
                    torch.autograd.grad(
                        [outs[i] for i in used],
                        wrt,
                        [cot[i] for i in used],
                        create_graph=True,
                        allow_unused=True,
                    )
                )
                return (None, *(next(got) if n else None for n in need))
            plain = unflatten([None if t is None else t.detach() for t in saved])
            B = _bound(leaves, plain, x.detach(), ctx)
            named = {"value": gu, "gradient": gg, "laplacian": gL, "biharmonic": gB}
            ws = {k: g for k, g in named.items() if g is not None}
            _, caches = call.forward(B)
            grads = call.backward(B, caches, call.seed(B, ws), "sum")
            got = [g.get(k) for g, ks in zip(grads, keys) for k in ks]
            # a block no used output reaches (the read-out bias of a loss without the value) is
            # exactly zero: None says the same to autograd and matches the taped path's "unused"
            return (
                None,
                *(g if n and g is not None and bool(torch.any(g != 0)) else None for g, n in zip(got, need)),
            )

    return _Biharmonic.apply(ctx.x, *flat)


register_training(TrainingRule(applies, run))
