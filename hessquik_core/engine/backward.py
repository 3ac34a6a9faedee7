"""The backward sweep: evaluate keeping each layer's cache, then adjoints from the output back."""

from __future__ import annotations

from ..carry import Adjoints
from ..rules.contractions import diagonal
from .result import Result


def run_backward(leaves, params, ctx, u, order) -> Result:
    """Evaluate, then pull :class:`~hessquik_core.carry.Adjoints` back through every layer."""
    xp, ops = ctx.xp, ctx.be
    caches = []
    for leaf, P in zip(leaves, params):
        u, cache = leaf.evaluate(u, P, order, ops)
        caches.append(cache)
    adjoints = Adjoints(ctx.seed_backward())  # (1, k, m): identity or Vᵀ
    lap = diag = None
    for i in range(len(leaves) - 1, -1, -1):
        leaf, P, cache = leaves[i], params[i], caches[i]
        if i == 0 and ctx.second_order and not ctx.hessian:
            # only the trace / diagonal of the input Hessian is wanted:
            # never form the (n, k, d, d) array
            if ctx.laplacian:
                lap = leaf.backward_first(cache, P, adjoints, "trace", ops)
            if ctx.hessian_diagonal:
                diag = xp.permute_dims(leaf.backward_first(cache, P, adjoints, "diagonal", ops), (0, 2, 1))
            if not (ctx.gradient or ctx.divergence):
                # the input gradient costs another n·d·q product at the first layer:
                # only when asked for
                return Result(value=u, laplacian=lap, hessian_diagonal=diag)
            adjoints = leaf.backward_step(cache, P, Adjoints(adjoints.gradient), False, ops)
            break
        adjoints = leaf.backward_step(cache, P, adjoints, ctx.second_order, ops)
    dl, Dl = adjoints.gradient, adjoints.hessian
    n = ctx.x.shape[0]
    if dl.shape[0] != n:  # a network that ignores its input (all-linear quadratic layer, n = 0)
        dl = xp.broadcast_to(dl, (n, *dl.shape[1:]))
    grad = xp.permute_dims(dl, (0, 2, 1))
    hess = None
    if ctx.hessian:
        hess = xp.permute_dims(Dl, (0, 2, 3, 1))
        if ctx.laplacian or ctx.hessian_diagonal:
            dg = diagonal(Dl, xp)  # (n, k, d)
            lap = xp.sum(dg, axis=-1) if ctx.laplacian else None
            diag = xp.permute_dims(dg, (0, 2, 1)) if ctx.hessian_diagonal else None
    return Result(value=u, gradient=grad, hessian=hess, laplacian=lap, hessian_diagonal=diag)
