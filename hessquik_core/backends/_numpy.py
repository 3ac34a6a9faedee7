"""NumPy backend (CPU): BLAS GEMMs and einsum with cached contraction paths."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ._generic import to_numpy

name = "numpy"


def _blas_inner(a) -> bool:
    """Is every trailing matrix of ``a`` a plain row- or column-major block?"""
    it = a.itemsize
    s2, s1 = a.strides[-2], a.strides[-1]
    return (s1 == it and s2 >= a.shape[-1] * it) or (s2 == it and s1 >= a.shape[-2] * it)


def mm(a, b, *, xp=None):
    """``a[..., p] @ b[p, q] -> [..., q]`` as one GEMM (NumPy's stacked matmul
    would call BLAS once per leading index).

    A non-contiguous ``a`` whose trailing matrices are still row- or
    column-major (the engine's ``matrix_transpose`` views) goes to the
    stacked matmul, which hands the strides to BLAS: flattening it would
    first copy all of ``a`` (10x slower for the ``(n, m, w, w)`` blocks of a
    residual layer's backward sweep).
    """
    if a.ndim > 2 and not a.flags.c_contiguous and _blas_inner(a):
        return np.matmul(a, b)
    lead = a.shape[:-1]
    out = np.reshape(a, (-1, a.shape[-1])) @ b
    return np.reshape(out, (*lead, b.shape[-1]))


def addmm(c, a, b, *, xp=None):
    """``c + a @ b`` (``c`` has the result's shape); the sum is taken in place
    in the GEMM's fresh output, so no third array is allocated."""
    out = mm(a, b)
    out += c
    return out


def addcmul(acc, a, b, *, xp=None):
    """``acc + a * b``, written into ``acc`` (a temporary the engine owns)."""
    acc += a * b
    return acc


def sum_squares(a, *, axis, xp=None):
    """``Σ a²`` over ``axis`` with ``np.vecdot``: no squared array is stored."""
    return np.vecdot(a, a, axis=axis)


@lru_cache(maxsize=512)
def _path(subscripts: str, *shapes):
    ops = [np.empty(s, dtype=np.float64) for s in shapes]  # planning only looks at shapes
    return np.einsum_path(subscripts, *ops, optimize="optimal")[0]


def einsum(subscripts, a, b, *, xp=None):
    """Two-operand einsum; the contraction path is planned once per shape."""
    return np.einsum(subscripts, a, b, optimize=_path(subscripts, a.shape, b.shape))


def convert(a, *, xp=None, dtype, device=None):
    """Any supported array -> NumPy array of ``dtype``."""
    return np.asarray(to_numpy(a), dtype=dtype)


def synchronize(device=None) -> None:
    """NumPy is synchronous."""


__all__ = ["addcmul", "addmm", "sum_squares", "convert", "einsum", "mm", "name", "synchronize", "to_numpy"]


def erf(a, *, xp=None):
    """``erf`` elementwise (NumPy has none, SciPy is never imported):
    standard functions only, a few ulps in float64."""
    from .._special import erf as _erf

    return _erf(a, xp=np)


def erfc(a, *, xp=None):
    """``erfc`` elementwise, full relative precision in the upper tail."""
    from .._special import erfc as _erfc

    return _erfc(a, xp=np)
