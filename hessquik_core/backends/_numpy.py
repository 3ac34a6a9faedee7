"""NumPy backend (CPU): BLAS GEMMs and einsum with cached contraction paths."""

from __future__ import annotations

from functools import lru_cache

import array_api_compat as aac
import numpy as np

from . import to_numpy
from .base import Backend, InPlaceUpdates, strided_span


def _blas_inner(a) -> bool:
    """Is every trailing matrix of ``a`` a plain row- or column-major block?"""
    it = a.itemsize
    s2, s1 = a.strides[-2], a.strides[-1]
    return (s1 == it and s2 >= a.shape[-1] * it) or (s2 == it and s1 >= a.shape[-2] * it)


@lru_cache(maxsize=512)
def _path(subscripts: str, *shapes):
    ops = [np.empty(s, dtype=np.float64) for s in shapes]  # planning only looks at shapes
    return np.einsum_path(subscripts, *ops, optimize="optimal")[0]


class NumPyBackend(InPlaceUpdates, Backend):
    """NumPy arrays: mutable, eager, on the host."""

    name = "numpy"
    library = "numpy"
    mutable = True
    interchange = True
    host_storage = True
    dask_chunks = True

    def __init__(self, xp=None) -> None:
        super().__init__(aac.array_namespace(np.empty(0)) if xp is None else xp)

    @classmethod
    def owns_namespace(cls, xp) -> bool:
        return aac.is_numpy_namespace(xp)

    def cache_blocking(self, x, arrays) -> bool:
        return True

    def memory_span(self, a):
        try:
            start = a.__array_interface__["data"][0]
        except (AttributeError, TypeError, KeyError):
            return None
        return strided_span(start, a.itemsize, a.shape, a.strides)

    def cacheable(self, a) -> bool:
        return True  # NumPy arrays carry no autograd graph and are never tracers

    def mm(self, a, b, *, xp=None):
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
        # the ndarray methods: the same reshapes as np.reshape without its dispatch wrapper
        out = a.reshape(-1, a.shape[-1]) @ b
        return out.reshape(*lead, b.shape[-1])

    def sum_squares(self, a, *, axis, xp=None):
        """``Σ a²`` over ``axis`` with ``np.vecdot``: no squared array is stored."""
        return np.vecdot(a, a, axis=axis)

    def einsum(self, subscripts, a, b, *, xp=None):
        """Two-operand einsum; the contraction path is planned once per shape."""
        return np.einsum(subscripts, a, b, optimize=_path(subscripts, a.shape, b.shape))

    def convert(self, a, *, xp=None, dtype, device=None):
        """Any supported array -> NumPy array of ``dtype``."""
        return np.asarray(to_numpy(a), dtype=dtype)

    def dtype(self, name: str):
        return np.dtype(name)

    def to_numpy(self, a):
        return np.asarray(a)

    def view(self, a, shape):
        v = a.reshape(shape)
        return v if np.may_share_memory(v, a) else None

    def multiply(self, a, b, *, out):
        np.multiply(a, b, out=out)

    def mm_into(self, a, b, out):
        np.matmul(a, b, out=out)

    def sum_into(self, a, out):
        np.sum(a, axis=0, out=out)

    def eye(self, k: int, *, dtype, device):
        # np.eye itself: array-api-compat's wrapper adds ~4 µs of argument handling
        return np.eye(k, dtype=dtype)


BACKEND = NumPyBackend()
