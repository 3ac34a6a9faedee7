"""CuPy backend (NVIDIA GPUs). Imported only when CuPy is used."""

from __future__ import annotations

import cupy as cp
import numpy as np

from ._numpy import addcmul  # operators only: the same for CuPy arrays

name = "cupy"


def mm(a, b, *, xp=None):
    """``a[..., p] @ b[p, q]`` as one cuBLAS GEMM."""
    lead = a.shape[:-1]
    out = cp.reshape(a, (-1, a.shape[-1])) @ b
    return cp.reshape(out, (*lead, b.shape[-1]))


def addmm(c, a, b, *, xp=None):
    """``c + a @ b``, the sum taken in place in the GEMM's output."""
    out = mm(a, b)
    out += c
    return out


def sum_squares(a, *, axis, xp=None):
    return cp.sum(a * a, axis=axis)


def einsum(subscripts, a, b, *, xp=None):
    return cp.einsum(subscripts, a, b)


def to_numpy(a):
    if isinstance(a, cp.ndarray):
        return a.get()
    from ._generic import to_numpy as _to_numpy

    return _to_numpy(a)


def convert(a, *, xp=None, dtype, device=None):
    """Any supported array -> CuPy array of ``dtype`` on ``device``."""
    if isinstance(a, cp.ndarray):
        with _device(device):
            return cp.asarray(a, dtype=dtype)
    if type(a).__module__.split(".")[0] == "torch":
        a = a.detach()
        if a.is_cuda:
            with _device(device):
                return cp.asarray(cp.from_dlpack(a), dtype=dtype)
        a = a.numpy()
    with _device(device):
        return cp.asarray(np.asarray(a), dtype=dtype)


def _device(device):
    return device if device is not None else cp.cuda.Device()


def synchronize(device=None) -> None:
    cp.cuda.Device(device.id if device is not None else None).synchronize()


__all__ = ["addcmul", "addmm", "sum_squares", "convert", "einsum", "mm", "name", "synchronize", "to_numpy"]


def erf(a, *, xp=None):
    """``erf`` elementwise (CuPy's own ``cupyx.scipy.special.erf`` kernel)."""
    import cupyx.scipy.special as cs

    return cs.erf(a)


def erfc(a, *, xp=None):
    """``erfc`` elementwise (CuPy's own ``cupyx.scipy.special.erfc`` kernel)."""
    import cupyx.scipy.special as cs

    return cs.erfc(a)
