r"""Batched contractions used by the layers' parameter derivatives.

All of them are one GEMM (``be.mm``) plus reshapes, in any Array-API
namespace. Shapes: ``n`` examples, ``k`` parameter-space directions,
``p``/``q`` feature widths. A direction of a ``(p, q)`` weight is stacked as
``V : (k, p, q)``; the R-images of features as ``R : (n, k, q)``.
"""

from __future__ import annotations


def lin_dirs(u, V, be, xp):
    r""":math:`(u V_k)_{n} : (n, k, q)` for ``u : (n, p)``, ``V : (k, p, q)``."""
    k, p, q = V.shape
    W = xp.reshape(xp.permute_dims(V, (1, 0, 2)), (p, k * q))
    return xp.reshape(be.mm(u, W, xp=xp), (u.shape[0], k, q))


def lin_dirs_t(d, V, be, xp):
    r""":math:`(d V_k^\top)_n : (n, k, p)` for ``d : (n, q)``, ``V : (k, p, q)``."""
    k, p, q = V.shape
    W = xp.reshape(xp.permute_dims(V, (2, 0, 1)), (q, k * p))
    return xp.reshape(be.mm(d, W, xp=xp), (d.shape[0], k, p))


def outer_sum(u, R, be, xp):
    r""":math:`\sum_n u_n \otimes R_{nk} : (k, p, q)` for ``u : (n, p)``, ``R : (n, k, q)``."""
    n, k, q = R.shape
    out = be.mm(xp.matrix_transpose(u), xp.reshape(R, (n, k * q)), xp=xp)  # (p, k q)
    return xp.permute_dims(xp.reshape(out, (u.shape[1], k, q)), (1, 0, 2))


def outer_sum_r(R, d, be, xp):
    r""":math:`\sum_n R_{nk} \otimes d_n : (k, p, q)` for ``R : (n, k, p)``, ``d : (n, q)``."""
    n, k, p = R.shape
    out = be.mm(xp.matrix_transpose(xp.reshape(R, (n, k * p))), d, xp=xp)  # (k p, q)
    return xp.reshape(out, (k, p, d.shape[1]))


def pad_front(a, s, xp):
    """Prepend ``s`` zero columns on the last axis of ``a``."""
    if s == 0:
        return a
    z = xp.zeros((*a.shape[:-1], s), dtype=a.dtype, device=_dev(a))
    return xp.concat([z, a], axis=-1)


def add_tail(a, t, s, xp):
    """``a`` with ``t`` added to its columns ``s:`` (last axis)."""
    if s == 0:
        return a + t
    return xp.concat([a[..., :s], a[..., s:] + t], axis=-1)


def _dev(a):
    from array_api_compat import device

    return device(a)


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


def fill_rows(parts, n, P, dtype, device, be, xp):
    """Assemble per-example gradients ``(n, P)`` from ``(offset, size, part)`` with parts arrays
    ``(n, *shape)`` or :class:`Outer` factors.

    NumPy, torch and CuPy write every part straight into one preallocated
    array (outer products formed in place), so the peak memory is the
    output plus small factors; other libraries concatenate.
    """
    name = getattr(be, "name", "generic")
    if name in ("numpy", "torch", "cupy"):
        out = xp.empty((n, P), dtype=dtype, device=device)
        for off, size, g in parts:
            view = out[:, off : off + size]
            if isinstance(g, Outer):
                mul, shares = _mul(name)
                v3 = view.view(g.shape) if name == "torch" else view.reshape(g.shape)
                if not shares(v3, out):  # pragma: no cover - a reshape that copied
                    view[...] = xp.reshape(g.materialize(), (n, size))
                    continue
                mul(g.u[:, :, None], g.d[:, None, :], out=v3)
                if g.scale is not None:
                    mul(v3, g.scale, out=v3)
            else:
                view[...] = xp.reshape(g, (n, size))
        return out
    mats = [xp.reshape(g.materialize() if isinstance(g, Outer) else g, (n, size)) for _, size, g in parts]
    return xp.concat(mats, axis=-1)


def _mul(name):
    """The library's multiply with ``out=``, and a check that a view aliases the output."""
    if name == "numpy":
        import numpy

        return numpy.multiply, numpy.may_share_memory
    if name == "torch":
        import torch

        return torch.mul, lambda v, o: True  # Tensor.view never copies
    import cupy

    return cupy.multiply, cupy.may_share_memory
