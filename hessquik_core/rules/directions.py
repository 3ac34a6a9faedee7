r"""Batched contractions of the parameter-space passes (``hessquik_core.curvature``).

All of them are one GEMM (``ops.mm``) plus reshapes, in any Array-API
namespace. Shapes: ``n`` examples, ``k`` parameter-space directions,
``p``/``q`` feature widths. A direction of a ``(p, q)`` weight is stacked as
``V : (k, p, q)``; the R-images of features as ``R : (n, k, q)``.
"""

from __future__ import annotations

from array_api_compat import device


def _dirs(a, V, perm, ops):
    """``a : (n, i)`` times each direction ``V[k]`` with its axes ``perm``-uted to
    ``(i, k, o)``: one GEMM against the ``(i, k·o)`` matrix, result ``(n, k, o)``."""
    xp = ops.xp
    W = xp.permute_dims(V, perm)
    i, k, o = W.shape
    return xp.reshape(ops.mm(a, xp.reshape(W, (i, k * o))), (a.shape[0], k, o))


def lin_dirs(u, V, ops):
    r""":math:`(u V_k)_{n} : (n, k, q)` for ``u : (n, p)``, ``V : (k, p, q)``."""
    return _dirs(u, V, (1, 0, 2), ops)


def lin_dirs_t(d, V, ops):
    r""":math:`(d V_k^\top)_n : (n, k, p)` for ``d : (n, q)``, ``V : (k, p, q)``."""
    return _dirs(d, V, (2, 0, 1), ops)


def outer_sum(u, R, ops):
    r""":math:`\sum_n u_n \otimes R_{nk} : (k, p, q)` for ``u : (n, p)``, ``R : (n, k, q)``."""
    xp = ops.xp
    n, k, q = R.shape
    out = ops.mm(xp.matrix_transpose(u), xp.reshape(R, (n, k * q)))  # (p, k q)
    return xp.permute_dims(xp.reshape(out, (u.shape[1], k, q)), (1, 0, 2))


def outer_sum_r(R, d, ops):
    r""":math:`\sum_n R_{nk} \otimes d_n : (k, p, q)` for ``R : (n, k, p)``, ``d : (n, q)``."""
    xp = ops.xp
    n, k, p = R.shape
    out = ops.mm(xp.matrix_transpose(xp.reshape(R, (n, k * p))), d)  # (k p, q)
    return xp.reshape(out, (k, p, d.shape[1]))


def pad_front(a, s, xp):
    """Prepend ``s`` zero columns on the last axis of ``a``."""
    if s == 0:
        return a
    z = xp.zeros((*a.shape[:-1], s), dtype=a.dtype, device=device(a))
    return xp.concat([z, a], axis=-1)


def add_tail(a, t, s, xp):
    """``a`` with ``t`` added to its columns ``s:`` (last axis)."""
    if s == 0:
        return a + t
    return xp.concat([a[..., :s], a[..., s:] + t], axis=-1)


class Outer:
    r"""Per-example outer products :math:`u_n \otimes d_n` (times a fixed ``scale : (p, q)``), shape
    ``(n, p, q)``, kept as factors until written into the ``(n, P)`` output."""

    __slots__ = ("u", "d", "scale")

    def __init__(self, u, d, scale=None):
        self.u, self.d, self.scale = u, d, scale

    @property
    def shape(self):
        return (self.u.shape[0], self.u.shape[1], self.d.shape[1])

    def materialize(self):
        out = self.u[:, :, None] * self.d[:, None, :]
        return out if self.scale is None else out * self.scale


def weight_gradient(u, delta, per_example, ops):
    r""":math:`\sum_n u_n \otimes \delta_n : (p, q)`, or per example the factors
    :class:`Outer` ``(n, p, q)``, for ``u : (n, p)``, ``delta : (n, q)``."""
    if per_example:
        return Outer(u, delta)
    return ops.mm(ops.xp.matrix_transpose(u), delta)


def fill_rows(parts, n, P, dtype, dev, ops):
    """Assemble per-example gradients ``(n, P)`` from ``(offset, size, part)`` with parts arrays
    ``(n, *shape)`` or :class:`Outer` factors.

    Mutable libraries get every part written straight into one preallocated
    array (outer products formed in place), so the peak memory is the
    output plus small factors; immutable ones concatenate.
    """
    xp = ops.xp
    if ops.mutable:
        out = xp.empty((n, P), dtype=dtype, device=dev)
        for off, size, g in parts:
            view = out[:, off : off + size]
            if isinstance(g, Outer):
                v3 = ops.view(view, g.shape)
                if v3 is None:  # pragma: no cover - a reshape that copied
                    view[...] = xp.reshape(g.materialize(), (n, size))
                    continue
                ops.multiply(g.u[:, :, None], g.d[:, None, :], out=v3)
                if g.scale is not None:
                    ops.multiply(v3, g.scale, out=v3)
            else:
                view[...] = xp.reshape(g, (n, size))
        return out
    mats = [xp.reshape(g.materialize() if isinstance(g, Outer) else g, (n, size)) for _, size, g in parts]
    return xp.concat(mats, axis=-1)
