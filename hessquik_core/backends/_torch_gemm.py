r"""Who computes the GEMMs of torch's stacked sweep on the CPU: torch, or NumPy through
zero-copy views (the GEMM-provider capability of issue 21's Speed section).

torch's float64 CPU GEMM can be much slower than NumPy's BLAS on the step's shapes
(MKL on an AMD CPU against OpenBLAS: (4096, 64)·(64, 64) 1.11 ms against 0.59 ms
on the benchmark machine). A route that computes its own backward may take its
products from whichever provider is faster for the device and dtype. The choice
is made once per process and (dtype, device) by measurement, and only where
:data:`~hessquik_core.backends.base.SWITCHES` ``.gemm_provider`` asks for it:

``"library"`` (default)
    torch's own ``mm`` (the numbers of before, bit for bit).
``"auto"``
    measured once: NumPy where it is faster for CPU float64 / float32 tensors.
``"host"``
    NumPy for every CPU tensor (for tests).

A product through NumPy is the same mathematical product rounded by another BLAS:
the results agree to rounding (``tests/test_torch_step.py``), not bit for bit.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .base import SWITCHES

#: (dtype, "auto") -> use NumPy?
_DECIDED: dict = {}


def _host_faster(dtype) -> bool:
    """Time both providers on one of the step's shapes, best of five, interleaved."""
    a = torch.rand(4096, 64, dtype=dtype)
    b = torch.rand(64, 64, dtype=dtype)
    out = torch.empty(4096, 64, dtype=dtype)
    an, bn, on = a.numpy(), b.numpy(), out.numpy()
    best = [float("inf"), float("inf")]
    for _ in range(5):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        t1 = time.perf_counter()
        np.matmul(an, bn, out=on)
        t2 = time.perf_counter()
        best = [min(best[0], t1 - t0), min(best[1], t2 - t1)]
    return best[1] < 0.9 * best[0]


def use_host(t: torch.Tensor) -> bool:
    """Should products of ``t`` (and its partner) go through NumPy?"""
    mode = SWITCHES.gemm_provider
    if mode == "library" or t.device.type != "cpu" or t.dtype not in (torch.float64, torch.float32):
        return False
    if mode == "host":
        return True
    key = t.dtype
    if key not in _DECIDED:
        _DECIDED[key] = _host_faster(t.dtype)
    return _DECIDED[key]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` (2-D), into ``out`` where given."""
    if not use_host(a):
        return torch.mm(a, b) if out is None else torch.mm(a, b, out=out)
    if out is None:
        return torch.from_numpy(np.matmul(_np(a), _np(b)))
    np.matmul(_np(a), _np(b), out=_np(out))
    return out


def addmm(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``c + a @ b`` (``c`` broadcast to the result), fresh."""
    if not use_host(a):
        return torch.addmm(c, a, b)
    out = mm(a, b)
    out += c
    return out


def addmm_(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``c += a @ b`` in place (``c`` 2-D, contiguous)."""
    if not use_host(a):
        return c.addmm_(a, b)
    cn = _np(c)
    cn += np.matmul(_np(a), _np(b))
    return c
