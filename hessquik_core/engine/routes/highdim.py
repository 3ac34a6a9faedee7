r"""The high-dimensional routes of :mod:`hessquik_core.engine.highdim` as route objects:
the Gram-root Laplacian and the cyclic-trace divergence, whose cost beyond the first
(and last) layer is independent of ``d``."""

from __future__ import annotations

from .. import highdim


class GramLaplacianRoute:
    """A Laplacian alone, ``mode="auto"``, no directions, a plain affine first layer
    narrower than ``d``; taken where its estimate is below the classic routes'."""

    name = "forward/" + highdim.LAPLACIAN
    sweep = highdim.LAPLACIAN
    preferred = False

    def applies(self, ctx, leaves) -> bool:
        if ctx.biharmonic or not highdim.first_narrows(ctx, leaves):
            return False
        return ctx.laplacian and not (ctx.gradient or ctx.hessian or ctx.hessian_diagonal or ctx.divergence)

    def cost(self, ctx, leaves, n, report, training):
        return highdim.laplacian_cost(ctx, leaves, n, training)

    def mode(self, ctx) -> str:
        return "forward"

    def run(self, leaves, params, ctx):
        return highdim.run_laplacian(leaves, params, ctx)


class DivergenceRoute:
    """A divergence alone, ``mode="auto"``, no directions, plain affine first and last
    layers, the first narrower than ``d``: preferred wherever it applies (it never
    forms the ``(n, d, d)`` Jacobian the classic routes take the trace of)."""

    name = "forward/" + highdim.DIVERGENCE
    sweep = highdim.DIVERGENCE
    preferred = True

    def applies(self, ctx, leaves) -> bool:
        if ctx.biharmonic or not highdim.first_narrows(ctx, leaves):
            return False
        if not ctx.divergence or ctx.gradient or ctx.second_order:
            return False
        return len(leaves) >= 2 and highdim.plain_affine(leaves[-1])

    def cost(self, ctx, leaves, n, report, training):
        return highdim.divergence_cost(ctx, leaves, n)

    def mode(self, ctx) -> str:
        return "forward"

    def run(self, leaves, params, ctx):
        return highdim.run_divergence(leaves, params, ctx)


GRAM_LAPLACIAN = GramLaplacianRoute()
DIVERGENCE = DivergenceRoute()

__all__ = ["DIVERGENCE", "GRAM_LAPLACIAN", "DivergenceRoute", "GramLaplacianRoute"]
