"""CuPy backend (NVIDIA GPUs). Imported only when CuPy is used."""

from __future__ import annotations

import array_api_compat as aac
import cupy as cp
import numpy as np

from . import to_numpy
from .base import Backend, InPlaceUpdates, strided_span


class CuPyBackend(InPlaceUpdates, Backend):
    """CuPy arrays: mutable, on a CUDA device."""

    name = "cupy"
    library = "cupy"
    mutable = True
    dask_chunks = True

    def __init__(self, xp=None) -> None:
        super().__init__(aac.array_namespace(cp.empty(0)) if xp is None else xp)

    @classmethod
    def owns_namespace(cls, xp) -> bool:
        return aac.is_cupy_namespace(xp)

    def available_memory(self, device) -> int:
        try:
            return int(cp.cuda.runtime.memGetInfo()[0])
        except Exception:  # pragma: no cover - driver quirks: fall back to host RAM
            return super().available_memory(device)

    def memory_span(self, a):
        try:
            start = a.__cuda_array_interface__["data"][0]
        except (AttributeError, TypeError, KeyError):
            return None
        return strided_span(start, a.itemsize, a.shape, a.strides)

    def host_resident(self, device) -> bool:
        return False  # CUDA device memory

    def mm(self, a, b, *, xp=None):
        """``a[..., p] @ b[p, q]`` as one cuBLAS GEMM."""
        lead = a.shape[:-1]
        out = cp.reshape(a, (-1, a.shape[-1])) @ b
        return cp.reshape(out, (*lead, b.shape[-1]))

    def sum_squares(self, a, *, axis, xp=None):
        return cp.sum(a * a, axis=axis)

    def einsum(self, subscripts, a, b, *, xp=None):
        return cp.einsum(subscripts, a, b)

    def erf(self, a, *, xp=None):
        import cupyx.scipy.special as cs  # CuPy's own kernel

        return cs.erf(a)

    def erfc(self, a, *, xp=None):
        import cupyx.scipy.special as cs

        return cs.erfc(a)

    def convert(self, a, *, xp=None, dtype, device=None):
        """Any supported array -> CuPy array of ``dtype`` on ``device``: arrays
        already on a GPU cross by DLPack, anything else through the host."""
        if isinstance(a, cp.ndarray):
            with _device(device):
                return cp.asarray(a, dtype=dtype)
        dev = getattr(a, "__dlpack_device__", None)
        if dev is not None and dev()[0] != 1:
            with _device(device):
                return cp.asarray(cp.from_dlpack(a), dtype=dtype)
        with _device(device):
            return cp.asarray(np.asarray(to_numpy(a)), dtype=dtype)

    def dtype(self, name: str):
        return cp.dtype(name)

    def to_numpy(self, a):
        return a.get()

    def view(self, a, shape):
        v = a.reshape(shape)
        return v if cp.may_share_memory(v, a) else None

    def multiply(self, a, b, *, out):
        cp.multiply(a, b, out=out)

    def synchronize(self, device=None) -> None:
        cp.cuda.Device(device.id if device is not None else None).synchronize()


def _device(device):
    return device if device is not None else cp.cuda.Device()


BACKEND = CuPyBackend()
