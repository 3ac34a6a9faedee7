r"""The bi-Laplacian route: ``net(x, biharmonic=True)``.

One forward sweep carries, per feature, the value, :math:`\nabla u` (``d``), the
packed Hessian (``d(d+1)/2``), :math:`\nabla\Delta u` (``d``), :math:`\Delta u` and
:math:`\Delta^2 u` (``hessquik_core.engine.higher_steps``,
:mod:`hessquik_core.rules.taylor`): :math:`d(d+1)/2 + 2d + 3` streams through each
weight matrix against the forward Laplacian's ``d + 2``. The gradient and the
Laplacian come from the same sweep when asked (``gradient=True``,
``laplacian=True``). The same sweep as :func:`~hessquik_core.higher.biharmonic`.
"""

from __future__ import annotations

from ..cost import FLOPS_PER_BYTE, RouteCost
from ..higher_steps import biharmonic_rule, biharmonic_streams, biharmonic_width, sweep
from ..result import Result

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
        xp, x, d = ctx.xp, ctx.x, ctx.d
        dev = ctx.device
        seed = (xp.eye(d, dtype=x.dtype, device=dev)[None, :, :], None, None, None, None)
        rule = biharmonic_rule(d, xp, x.dtype, dev)
        u, (g, _, _, L, B) = sweep(leaves, params, x, seed, rule, 4, ctx.be)
        n, m = u.shape

        def full(a, shape):
            # a field that stayed identically zero (a linear network) is None in the carry
            if a is None:
                return xp.zeros(shape, dtype=u.dtype, device=dev)
            return a if tuple(a.shape) == shape else xp.broadcast_to(a, shape)

        return Result(
            value=u,
            gradient=full(g, (n, d, m)) if ctx.gradient else None,
            laplacian=full(L, (n, m)) if ctx.laplacian else None,
            biharmonic=full(B, (n, m)),
        )


#: the one instance
BIHARMONIC = BiharmonicRoute()

__all__ = ["BIHARMONIC", "BiharmonicRoute"]
