r"""KFAC / EKFAC over Dask-held data: the factors are sums over examples, one task per chunk.

:math:`A = \frac1N\sum_n\tilde a_n\tilde a_n^\top` and :math:`B = w\sum_{n,c}g_{nc}g_{nc}^\top`
are sums of per-chunk sums (each chunk runs ``_kfac_sweep.Sweep``
in memory, with the loss factor :math:`w` of the whole data); EKFAC's corrections
need the eigenvectors of the totals, so they take a second pass. The ``"mc"``
draws are made on the client for all ``N`` examples and sliced per chunk, so a
seed gives the numbers of the in-memory call. Results are NumPy (the factors are small).
Imported only when :func:`~hessquik_core._dask_hook.chunked_plugin` meets a Dask array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .kfac_ops import KroneckerEigen


def _rows(a, chunks):
    import dask.array as da

    if not isinstance(a, da.Array):
        a = da.from_array(np.asarray(a), chunks=(chunks, *((-1,) * (np.ndim(a) - 1))))
    return a.rechunk((chunks, *((-1,) * (a.ndim - 1))))


def build_chunked(net, x, y, loss, fisher_type, M, seed, keys, backend, ekfac, info) -> dict[str, Any]:
    """The pieces :func:`~hessquik_core.curvature.kfac._build` returns, from Dask ``x, y``."""
    import dask
    import dask.array as da

    from ._kfac_sweep import Sweep, corrections, grams, noise

    if not isinstance(x, da.Array):
        raise TypeError(f"x must be a dask array when y is one, got {type(x).__module__}.{type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (N, {net.in_features}), got shape {tuple(x.shape)}")
    x = x.rechunk({1: -1})
    N = int(x.shape[0])
    if N < 1:
        raise ValueError("x must hold at least one example")
    if np.ndim(y) < 1 or y.shape[0] != N:
        raise ValueError(f"y must have {N} rows (one per example), got shape {tuple(y.shape)}")
    chunks = x.chunks[0]
    y = _rows(y, chunks)
    yh = np.asarray(y.compute())  # the targets (small): w of the whole data
    w = float(loss.weight_for(yh))
    draws = noise(loss, fisher_type, M, N, net.out_features, seed)
    starts = np.concatenate([[0], np.cumsum(chunks)]).astype(int)
    xs = x.to_delayed().ravel().tolist()
    ys = y.to_delayed().ravel().tolist()

    def part(i, xb, yb, vectors):
        nz = None if draws is None else draws[:, starts[i] : starts[i + 1]]
        sw = Sweep(net, xb, yb, loss, w, fisher_type, nz, keys, backend)
        to = sw.B.be.to_numpy
        if vectors is None:
            return sw.blocks, [(np.asarray(to(a)), np.asarray(to(g))) for a, g in grams(sw)]
        be, xp = sw.B.be, sw.B.xp
        conv = [tuple(be.convert(u, xp=xp, dtype=sw.B.dtype, device=sw.B.device) for u in v) for v in vectors]
        return sw.blocks, [np.asarray(to(c)) for c in corrections(sw, conv)]

    first = dask.compute(*[dask.delayed(part)(i, xb, yb, None) for i, (xb, yb) in enumerate(zip(xs, ys))])
    blocks = first[0][0]
    factors = []
    for j in range(len(blocks)):
        A = sum(r[1][j][0] for r in first)
        G = sum(r[1][j][1] for r in first)
        factors.append((A / N, G))
    out: dict[str, Any] = {"blocks": blocks, "factors": factors, "info": {**info, "N": N}}
    out["x"] = np.zeros((0, x.shape[1]), dtype=x.dtype)  # the operator's library, dtype and device
    if ekfac:
        vectors = [(np.linalg.eigh(A)[1], np.linalg.eigh(G)[1]) for A, G in factors]
        second = dask.compute(
            *[dask.delayed(part)(i, xb, yb, vectors) for i, (xb, yb) in enumerate(zip(xs, ys))]
        )
        lam = [sum(r[1][j] for r in second) for j in range(len(blocks))]
        out["eigen"] = [KroneckerEigen(v, Ua, Ub) for v, (Ua, Ub) in zip(lam, vectors)]
    return out
