r"""Shared pieces of the spectral methods: argument checks, host probes, product blocks.

Private to :mod:`hessquik_core.curvature` (the methods live in
:mod:`~hessquik_core.curvature.lanczos`, :mod:`~hessquik_core.curvature.fisher_spectrum`,
:mod:`~hessquik_core.curvature.trace_estimation` and :mod:`~hessquik_core.curvature.density`;
:mod:`~hessquik_core.curvature.spectra` gathers them).
"""

from __future__ import annotations

import math

import numpy as np


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_int(name, v, lo=1, hi=None):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {rng}, got {v!r}")
    return int(v)


def _host_dtype(op):
    return np.dtype(str(op.dtype).split(".")[-1])


def _probes(rng, P, n, distribution):
    if distribution == "rademacher":
        return rng.choice(np.array([-1.0, 1.0]), size=(P, n))
    if distribution == "gaussian":
        return rng.standard_normal((P, n))
    raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")


def _apply_blocks(op, Z, block_size):
    xp = op.xp
    bs = Z.shape[1] if block_size is None else _check_int("block_size", block_size)
    outs = [op.matmat(Z[:, j : min(j + bs, Z.shape[1])]) for j in range(0, Z.shape[1], bs)]
    return outs[0] if len(outs) == 1 else xp.concat(outs, axis=1)


def _mean_se(s):
    s = np.asarray(s, dtype=np.float64)
    n = s.shape[0]
    return float(np.mean(s)), float(np.std(s, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
