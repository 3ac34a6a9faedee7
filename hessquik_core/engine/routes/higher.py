r"""The bi-Laplacian route: ``net(x, biharmonic=True)``.

One forward sweep carries, per feature, the value, :math:`\nabla u` (``d``), the
packed Hessian (``d(d+1)/2``), :math:`\nabla\Delta u` (``d``), :math:`\Delta u` and
:math:`\Delta^2 u` (``hessquik_core.engine.higher_steps``,
:mod:`hessquik_core.rules.taylor`): :math:`d(d+1)/2 + 2d + 3` streams through each
weight matrix against the forward Laplacian's ``d + 2``. The gradient and the
Laplacian come from the same sweep when asked (``gradient=True``,
``laplacian=True``). The same sweep as :func:`~hessquik_core.higher.biharmonic`.

**Training.** When autograd records the call through the *parameters* (not
through ``x``), the sweep can run as one custom-gradient function whose backward
pass is the AD-free :math:`J^\top w` of the per-point parameter Jacobians
(``hessquik_core.pinn._streams_bh_train``). That machinery lives in the
application tier, which the engine may not import; it registers itself here
(:func:`register_training`) when the package is imported, and the planner asks
:func:`trains_analytically` for the call's training answer (``ctx.training``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ...rules import taylor as T
from ..cost import FLOPS_PER_BYTE, RouteCost
from ..higher_steps import Rule, biharmonic_rule, biharmonic_streams, biharmonic_width, sweep
from ..result import Result


class TrainingRule(NamedTuple):
    """The analytic weight gradient of a recorded call of one of this module's routes.

    ``applies(leaves, ctx) -> bool``: may this call run as the custom-gradient function?
    ``run(leaves, params, ctx, evaluate) -> tuple``: the route's outputs, recorded by the
    function; ``evaluate(params, x)`` is the route's sweep (the bi-Laplacian's
    ``(u, ∇u, Δu, Δ²u)``, the Taylor route's ``(u, D_1, …, D_K)``, full shapes), for the
    forward pass and for a differentiable (double) backward pass.
    """

    applies: Callable[[Any, Any], bool]
    run: Callable[..., tuple]


#: route sweep ("biharmonic", "taylor") -> its training rule
_TRAINING: dict[str, TrainingRule] = {}


def register_training(rule: TrainingRule, sweep: str = "biharmonic") -> None:
    """Install the analytic weight gradient of the route ``sweep`` (a second one replaces it)."""
    _TRAINING[sweep] = rule


def _rule_of(ctx) -> TrainingRule | None:
    return _TRAINING.get("taylor" if ctx.taylor_order else "biharmonic")


def trains_analytically(leaves, ctx) -> bool:
    """Would a recorded call of this module's routes run with the analytic weight gradient?"""
    rule = _rule_of(ctx)
    return rule is not None and rule.applies(leaves, ctx)


#: array operations per leaf of the bi-Laplacian step (the rule's element-wise
#: terms: products, sums, the triangle gathers), for the per-operation overhead
_OPS_PER_LEAF = 40


class BiharmonicRoute:
    """Applies to every call with ``biharmonic=True`` (forward mode, no directions:
    the call resolution refuses other combinations) and to no other; it is the only
    route that computes :math:`\\Delta^2 u`, hence preferred."""

    name = "forward/biharmonic"
    sweep = "biharmonic"
    preferred = True

    def applies(self, ctx, leaves) -> bool:
        return bool(ctx.biharmonic)

    def cost(self, ctx, leaves, n, report, training):
        """GEMM flops ``2 n p q S`` per weight matrix ``(p, q)`` of every leaf's
        ``cost_shapes`` with ``S = d(d+1)/2 + 2d + 3`` streams; element-wise traffic
        about ten passes over each layer's ``(n, S, q)`` carry; working memory four
        ``(n, W, q_max)`` carries (``W = d² + S``: one layer's unpacked Hessian),
        the estimate the public functions' row blocks use."""
        d, size = ctx.d, ctx.itemsize
        S, W = biharmonic_streams(d), biharmonic_width(d)
        shapes = [s for leaf in leaves for s in leaf.cost_shapes]
        flops = sum(2.0 * n * p * q * S for p, q in shapes)
        moved = sum(10.0 * n * S * q * size for _, q in shapes)
        q_max = max([d, ctx.m, *(w for s in shapes for w in s)])
        per_example = 4.0 * W * q_max * size
        return RouteCost(
            mode="forward",
            flops=flops,
            peak_bytes=per_example * n,
            per_example_bytes=per_example,
            ops=_OPS_PER_LEAF * len(leaves),
            bytes_moved=moved,
            flops_per_byte=FLOPS_PER_BYTE,
        )

    def mode(self, ctx) -> str:
        return "forward"

    def run(self, leaves, params, ctx) -> Result:
        def evaluate(params, x):
            return _evaluate(leaves, params, x, ctx)

        rule = _rule_of(ctx)
        if ctx.training == "analytic" and rule is not None:
            u, g, L, B = rule.run(leaves, params, ctx, evaluate)
        else:
            u, g, L, B = evaluate(params, ctx.x)
        return Result(
            value=u,
            gradient=g if ctx.gradient else None,
            laplacian=L if ctx.laplacian else None,
            biharmonic=B,
        )


def _evaluate(leaves, params, x, ctx) -> tuple:
    """``(u (n, m), ∇u (n, d, m), Δu (n, m), Δ²u (n, m))`` by one sweep."""
    xp, d, dev = ctx.xp, ctx.d, ctx.device
    seed = (xp.eye(d, dtype=x.dtype, device=dev)[None, :, :], None, None, None, None)
    rule = biharmonic_rule(d, xp, x.dtype, dev)
    u, (g, _, _, L, B) = sweep(leaves, params, x, seed, rule, 4, ctx.be)
    n, m = u.shape

    def full(a, shape):
        # a field that stayed identically zero (a linear network) is None in the carry
        if a is None:
            return xp.zeros(shape, dtype=u.dtype, device=dev)
        return a if tuple(a.shape) == shape else xp.broadcast_to(a, shape)

    return u, full(g, (n, d, m)), full(L, (n, m)), full(B, (n, m))


#: the one instance
BIHARMONIC = BiharmonicRoute()


class TaylorRoute:
    r"""``net(x, third_derivative=True, fourth_derivative=True, directions=V)``: one forward
    Taylor sweep carrying :math:`z_j = \partial^j z[v, \dots, v]`, ``j = 1 … K``
    (``K = 4`` with ``fourth_derivative``, else 3), along the ``k`` columns of ``V``, mapped
    through :math:`\sigma` by Faà di Bruno (:func:`~hessquik_core.rules.taylor.taylor_act`):
    the sweep of :func:`~hessquik_core.higher.taylor_derivatives`. Applies to every call with
    either flag (the call resolution refuses other combinations) and to no other; the only
    route computing them, hence preferred."""

    name = "forward/taylor"
    sweep = "taylor"
    preferred = True

    def applies(self, ctx, leaves) -> bool:
        return ctx.taylor_order > 0

    def cost(self, ctx, leaves, n, report, training):
        """GEMM flops ``2 n p q (K k + 1)`` per weight matrix ``(p, q)``, element-wise
        traffic about ``2K`` passes over each layer's ``(n, K k + 1, q)`` carry, working
        memory four such carries."""
        S = ctx.taylor_order * ctx.k + 1
        size = ctx.itemsize
        shapes = [s for leaf in leaves for s in leaf.cost_shapes]
        q_max = max([ctx.d, ctx.m, *(w for s in shapes for w in s)])
        per_example = 4.0 * S * q_max * size
        return RouteCost(
            mode="forward",
            flops=sum(2.0 * n * p * q * S for p, q in shapes),
            peak_bytes=per_example * n,
            per_example_bytes=per_example,
            ops=_OPS_PER_LEAF * len(leaves),
            bytes_moved=sum(2.0 * ctx.taylor_order * n * S * q * size for _, q in shapes),
            flops_per_byte=FLOPS_PER_BYTE,
        )

    def mode(self, ctx) -> str:
        return "forward"

    def run(self, leaves, params, ctx) -> Result:
        def evaluate(params, x):
            return _taylor(leaves, params, x, ctx)

        rule = _rule_of(ctx)
        if ctx.training == "analytic" and rule is not None:
            u, *D = rule.run(leaves, params, ctx, evaluate)
        else:
            u, *D = evaluate(params, ctx.x)
        return Result(
            value=u,
            third_derivative=D[2] if ctx.third_derivative else None,
            fourth_derivative=D[3] if ctx.fourth_derivative else None,
        )


def _taylor(leaves, params, x, ctx) -> tuple:
    """``(u (n, m), D_1, …, D_K)``, ``D_j = ∂ʲu[v,…,v] (n, k, m)``, by one Taylor sweep."""
    xp, K = ctx.xp, ctx.taylor_order
    u, c = sweep(leaves, params, x, T.taylor_seed(ctx.V, K), Rule(T.taylor_act, T.taylor_mul), K, ctx.be)
    n, m = u.shape
    shape = (n, ctx.k, m)

    def full(a):
        if a is None:  # identically zero (a network of low polynomial degree)
            return xp.zeros(shape, dtype=u.dtype, device=ctx.device)
        return a if tuple(a.shape) == shape else xp.broadcast_to(a, shape)

    return (u, *(full(a) for a in c))


#: the one instance
TAYLOR = TaylorRoute()

__all__ = ["BIHARMONIC", "TAYLOR", "BiharmonicRoute", "TaylorRoute", "TrainingRule", "register_training"]
__all__ += ["trains_analytically"]
