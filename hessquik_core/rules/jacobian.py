r"""The generic rule of any layer, from its per-example local derivatives.

A layer whose Jacobian has no cheaper structure (LayerNorm, a softmax, a
block with internal state) can state, per example,

* ``J : (n, p, q)`` — :math:`J_{aj} = \partial f_j/\partial u_a`,
* ``T : (n, p, p, q)`` — :math:`T_{abj} = \partial^2 f_j/\partial u_a \partial u_b`
  (``None`` where ``f`` is linear in ``u`` or only first order was asked),

and get both modes from the chain rule:

* forward  :math:`\partial f = \partial u\,J`,
  :math:`\partial^2 f_{ij} = (\partial u)_i\,T\,(\partial u)_j + \partial^2 u_{ij}\,J`,
* backward :math:`dl_u = J\,dl`,
  :math:`Dl_u = J\,Dl\,J^\top + \sum_j dl_j\,T_{\cdot\cdot j}`.

Every contraction is one two-operand ``ops.einsum``; the cost is that of
the dense ``(p, q)`` and ``(p, p, q)`` blocks, so layers with structure
(diagonal-times-matrix, as :mod:`.affine`) should use their own rule.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..carry import Adjoints, Request, Tangents


class LocalDerivatives(NamedTuple):
    """A layer's cache for the generic rule (see the module docstring)."""

    jacobian: Any  # (n, p, q)
    hessian: Any = None  # (n, p, p, q) or None


def _rows(a, n, xp):
    """``a : (1|n, ...)`` broadcast to ``n`` rows (the seed is shared by the batch)."""
    return a if a.shape[0] == n else xp.broadcast_to(a, (n, *a.shape[1:]))


def _apply(Y, J, ops):
    """``Y : (n, ..., p)`` times ``J : (n, p, q)`` per example -> ``(n, ..., q)``."""
    xp = ops.xp
    n, p = Y.shape[0], Y.shape[-1]
    mid = tuple(Y.shape[1:-1])
    flat = xp.reshape(Y, (n, -1, p)) if len(mid) != 1 else Y
    out = ops.einsum("nxp,npq->nxq", flat, J)
    return xp.reshape(out, (n, *mid, J.shape[-1])) if len(mid) != 1 else out


def forward_step(local: LocalDerivatives, tangents: Tangents, request: Request, ops) -> Tangents:
    """Tangents of ``u`` -> tangents of ``f`` (the entries ``request`` asks for)."""
    xp = ops.xp
    J, T = local.jacobian, local.hessian
    n = J.shape[0]
    G = _rows(tangents.jacobian, n, xp)  # (n, k, p)
    Gf = _apply(G, J, ops)
    Hf = Df = Lf = None
    GT = None
    if T is not None and request.any:
        GT = ops.einsum("nka,nabq->nkbq", G, T)  # (n, k, p, q): (∂u)_i T
    if request.hessian:
        if request.packing is None:
            Hf = None if GT is None else ops.einsum("nkbq,nlb->nklq", GT, G)
        elif GT is not None:
            pk = request.packing
            Hf = xp.sum(xp.take(GT, pk.rows, axis=1) * xp.take(G, pk.cols, axis=1)[..., None], axis=2)
        if tangents.hessian is not None:
            HJ = _apply(tangents.hessian, J, ops)
            Hf = HJ if Hf is None else Hf + HJ
        if Hf is None:
            k = G.shape[1]
            shape = (n, k, k) if request.packing is None else (n, k * (k + 1) // 2)
            Hf = xp.zeros((*shape, J.shape[-1]), dtype=J.dtype, device=_device(J))
    if request.diagonal or request.laplacian:
        quad = None if GT is None else xp.sum(GT * G[..., None], axis=2)  # (n, k, q): (∂u)_i T (∂u)_i
        if request.diagonal:
            Df = _sum(
                quad,
                None if tangents.diagonal is None else _apply(tangents.diagonal, J, ops),
                (n, G.shape[1], J.shape[-1]),
                J,
                xp,
            )
        if request.laplacian:
            lap = None if tangents.laplacian is None else ops.einsum("np,npq->nq", tangents.laplacian, J)
            Lf = _sum(None if quad is None else xp.sum(quad, axis=1), lap, (n, J.shape[-1]), J, xp)
    return Tangents(Gf, Hf, Df, Lf)


def _sum(a, b, shape, like, xp):
    if a is None and b is None:
        return xp.zeros(shape, dtype=like.dtype, device=_device(like))
    if a is None:
        return b
    return a if b is None else a + b


def _device(a):
    from array_api_compat import device

    return device(a)


def backward_step(local: LocalDerivatives, adjoints: Adjoints, second: bool, ops) -> Adjoints:
    """Adjoints of ``f`` -> adjoints of ``u`` (the Hessian only if ``second``)."""
    xp = ops.xp
    J, T = local.jacobian, local.hessian
    n = J.shape[0]
    dl = _rows(adjoints.gradient, n, xp)  # (n, m, q)
    dlu = ops.einsum("npq,nmq->nmp", J, dl)
    if not second:
        return Adjoints(dlu)
    out = None
    if adjoints.hessian is not None:
        JDl = ops.einsum("npq,nmqr->nmpr", J, adjoints.hessian)  # (n, m, p, q)
        out = ops.einsum("nmpr,nsr->nmps", JDl, J)
    if T is not None:
        curv = ops.einsum("nmq,npsq->nmps", dl, T)
        out = curv if out is None else out + curv
    if out is None:
        p = J.shape[1]
        out = xp.zeros((n, dl.shape[1], p, p), dtype=J.dtype, device=_device(J))
    return Adjoints(dlu, out)


__all__ = ["LocalDerivatives", "backward_step", "forward_step"]
