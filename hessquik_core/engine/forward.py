"""The forward sweep: tangents pushed from the input through every layer."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..carry import Packing, Request, Tangents
from .result import Result


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
    """Evaluate and push :class:`~hessquik_core.carry.Tangents` through every layer."""
    xp, ops = ctx.xp, ctx.be
    k = ctx.k
    fused = ops.fused_forward(leaves, params, ctx, u)
    if fused is not None:
        return Result(value=fused[0], gradient=fused[1], laplacian=fused[2])
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
