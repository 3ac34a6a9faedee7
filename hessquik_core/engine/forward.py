"""The forward sweep: tangents pushed from the input through every layer."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..carry import Packing, Request, Tangents
from .result import Result
from .routes import analytic_step


def _packs(k: int) -> bool:
    """Carry the forward Hessian as its upper triangle? Halves the dominant
    GEMM; below a few directions the gathers cost more than they save."""
    return k >= 4


@lru_cache(maxsize=64)
def _triangle(k: int):
    """Pairs ``i <= j`` of the packed layout, and for each full ``(i, j)`` the
    packed position that holds it (and the positions of the diagonal)."""
    iu, ju = np.triu_indices(k)
    pos = np.empty((k, k), dtype=np.int64)
    pos[iu, ju] = np.arange(iu.size)
    pos[ju, iu] = np.arange(iu.size)
    diag = pos[np.arange(k), np.arange(k)]
    return iu.astype(np.int64), ju.astype(np.int64), pos.reshape(-1), diag


def run_forward(leaves, params, ctx, u, order) -> Result:
    """Evaluate and push :class:`~hessquik_core.carry.Tangents` through every layer, or,
    where the planner settled the call as an analytic training step (``ctx.training``),
    run it as :mod:`~hessquik_core.engine.routes.analytic_step`."""
    xp, ops = ctx.xp, ctx.be
    k = ctx.k
    if ctx.training == analytic_step.ANALYTIC:
        # the planner settled a recorded step of a declared affine chain: the stacked kernel
        res = analytic_step.run(leaves, params, ctx)
        if res is not None:
            return res
    packing = None
    if ctx.hessian and _packs(k):
        iu, ju, pos, diag = _triangle(k)
        packing = Packing(xp.asarray(iu, device=ctx.device), xp.asarray(ju, device=ctx.device))
    request = Request(
        hessian=ctx.hessian,
        diagonal=ctx.hessian_diagonal,
        laplacian=ctx.laplacian and not ctx.hessian,
        packing=packing,
    )
    tangents = Tangents(ctx.seed_forward())  # (1, k, d): identity or Vᵀ, shared by the batch
    for leaf, P in zip(leaves, params):
        u, cache = leaf.evaluate(u, P, order, ops)
        tangents = leaf.forward_step(cache, P, tangents, request, ops)
    H, L = tangents.hessian, tangents.laplacian
    if ctx.hessian:
        n, m = u.shape
        if packing is not None:
            if ctx.laplacian:
                L = xp.sum(xp.take(H, xp.asarray(diag, device=ctx.device), axis=1), axis=1)
            H = xp.reshape(xp.take(H, xp.asarray(pos, device=ctx.device), axis=1), (n, k, k, m))
        elif ctx.laplacian:
            eye = xp.eye(k, dtype=H.dtype, device=ctx.device)
            L = xp.sum(xp.sum(H * eye[None, :, :, None], axis=1), axis=1)
    return Result(
        value=u, gradient=tangents.jacobian, hessian=H, laplacian=L, hessian_diagonal=tangents.diagonal
    )
