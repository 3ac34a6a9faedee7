"""NumPy backend (CPU): BLAS GEMMs and einsum with cached contraction paths."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ._generic import to_numpy

name = "numpy"


def mm(a, b, *, xp=None):
    """``a[..., p] @ b[p, q] -> [..., q]`` as one GEMM (NumPy's stacked matmul
    would call BLAS once per leading index)."""
    lead = a.shape[:-1]
    out = np.reshape(a, (-1, a.shape[-1])) @ b
    return np.reshape(out, (*lead, b.shape[-1]))


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


__all__ = ["convert", "einsum", "mm", "name", "synchronize", "to_numpy"]
