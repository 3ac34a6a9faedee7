"""Batched contractions shared by the layers' recurrences.

Every function takes the bound backend ``ops`` (``ops.xp`` is the Array-API
namespace); shapes are stated per function (batch axis ``n`` first).
"""

from __future__ import annotations

from array_api_compat import device


def diagonal(a, xp):
    """Diagonal over the last two (square) axes: ``(..., p, p) -> (..., p)``
    (the standard has ``linalg.diagonal`` only in an optional extension)."""
    eye = xp.eye(a.shape[-1], dtype=a.dtype, device=device(a))
    return xp.sum(a * eye, axis=-1)


def lift(a, ndim, xp):
    """``a : (n, q)`` -> ``(n, 1, ..., 1, q)`` with ``ndim`` axes, to scale a
    packed ``(n, T, q)`` or full ``(n, k, k, q)`` Hessian alike."""
    return xp.reshape(a, (a.shape[0], *([1] * (ndim - 2)), a.shape[-1]))


def outer(s):
    """``s : (n, q)`` -> ``(n, 1, q, q)``, the per-example ``s sᵀ`` that scales a
    symmetric ``(n, m, q, q)`` block on both sides in one pass."""
    return s[:, None, :, None] * s[:, None, None, :]


def swap(a, xp):
    """Transpose of the last two axes (a view where the library has views)."""
    return xp.matrix_transpose(a)


def sandwich(M, W, c, ops):
    r""":math:`M\,(W + \mathrm{diag}(c))\,M^\top` for symmetric ``W : (n, m, q, q)``
    (or ``None``) and ``c : (n, m, q)``; result ``(n, m, p, p)``.

    Uses :math:`(W M^\top)^\top = M W`, so the only intermediate is
    ``(n, m, p, q)``: never larger than the output when ``q <= p``.
    """
    xp = ops.xp
    Mt = xp.matrix_transpose(M)
    left = M * c[:, :, None, :]
    if W is not None:
        left += swap(ops.mm(W, Mt), xp)  # in place: ``left`` is ours
    return ops.mm(left, Mt)


__all__ = ["device", "diagonal", "lift", "outer", "sandwich", "swap"]
