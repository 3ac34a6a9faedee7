r"""Curvature of a loss over a dataset held as Dask arrays: tree reductions over chunks.

The training loss :math:`C = w\sum_n \ell_n` is a sum over examples, so
every quantity of :mod:`hessquik_core.curvature` is a sum of one term per
batch chunk :math:`c`: with the per-chunk *sums* :math:`S_c` (the in-memory
function on the chunk with ``reduction="sum"``),
:math:`\nabla C = w \sum_c S_c` and :math:`Hv = w \sum_c (H_c^{\rm sum} v)`,
where :math:`w = 1/N` (``"mean"``, :math:`N` the *whole* dataset) or 1.
The empirical Fisher is always :math:`\frac1N\sum_n g_n g_n^\top`: a chunk
of :math:`n_c` examples returns its own mean, weighted back by :math:`n_c`.
Each chunk's term is computed by one task with the in-memory function on
the chunk's own arrays; the terms are added in a tree (fan-in 8) and the
factor applied once at the root.
"""

from __future__ import annotations

import copy
from typing import Any

import array_api_compat as aac
import numpy as np

from .._progress import progress_bar
from ..backends import owner_of
from ..curvature import params as _p
from ..curvature.losses import get_loss
from ..curvature.params import LinearOperatorBase, parameter_layout
from ._graph import (
    Shared,
    check_chunk,
    check_chunked,
    da,
    graph,
    meta_like,
    snapshot,
    to_library,
    to_numpy,
    token,
    tree_sum,
)

_XP = aac.array_namespace(np.empty(0))


class _Data:
    """Validated dask ``x, y`` plus the network snapshot and the loss split into its sum."""

    def __init__(self, net, x, y, loss, options: dict) -> None:
        from .._dask_hook import is_dask

        if not (is_dask(x) and is_dask(y)):
            raise TypeError(
                "x and y must both be dask arrays (chunked alike along axis 0) or both in-memory arrays; "
                f"got x: {type(x).__module__}.{type(x).__name__}, y: {type(y).__module__}.{type(y).__name__}"
                "; wrap the other with dask.array.from_array(a, chunks=(x.chunks[0], ...))"
            )
        self.loss = get_loss(loss)
        d = net.in_features
        if x.ndim != 2 or x.shape[1] != d:
            raise ValueError(f"x must have shape (N, {d}), got shape {tuple(x.shape)}")
        lib = check_chunked(x, "x")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"x must have a real floating dtype (float32 or float64), got {x.dtype}")
        N = int(x.shape[0])
        if N < 1:
            raise ValueError("x must hold at least one example")
        if y.ndim < 1 or y.shape[0] != N:
            raise ValueError(f"y must have {N} rows (one per example), got shape {tuple(y.shape)}")
        ylib = check_chunked(y, "y", batch_chunks=x.chunks[0])
        if ylib != lib:
            raise TypeError(f"x and y must have chunks of one library, got {lib} and {ylib}")
        self.x, self.y, self.N, self.lib = x, y, N, lib
        self.nchunks = len(x.chunks[0])
        self.sizes = tuple(int(c) for c in x.chunks[0])
        self.net = snapshot(net)
        self.layout = parameter_layout(self.net)
        self.w = self.loss.weight(N)
        loss_sum = copy.copy(self.loss)
        loss_sum.reduction = "sum"
        self.dtype = np.dtype(x.dtype)
        self.shared = Shared(
            self.net,
            lib,
            str(self.dtype),
            {"loss": self.loss, "loss_sum": loss_sum, "ydtype": str(np.dtype(y.dtype)), "options": options},
        )
        # one example on the client runs the in-memory checks (targets, loss,
        # options): bad input fails here, before anything is computed
        x0 = np.zeros((1, d), dtype=self.dtype)
        y0 = np.zeros((1, *y.shape[1:]), dtype=y.dtype)
        _p.value_and_gradient(self.net, x0, y0, self.loss, **_pick(options, ("batch_size", "backend")))

    def tasks(self, fn, name: str, *args) -> tuple[dict, list]:
        """One task per chunk: ``fn(xb, yb, shared, index, *args)``; the layer and its keys."""
        skey = name + "-net"
        layer: dict[Any, Any] = {skey: self.shared}  # graph keys: names and (name, chunk) pairs
        keys = []
        for i in range(self.nchunks):
            k = (name + "-chunk", i)
            layer[k] = (
                fn,
                (self.x.name, i, 0),
                (self.y.name, i, *((0,) * (self.y.ndim - 1))),
                skey,
                i,
                *args,
            )
            keys.append(k)
        return layer, keys

    def reduce(self, fn, name, *args, scale, ndim, extra_deps=()):
        """Lazy dask array (one chunk) ``scale · Σ_c fn(chunk c)`` for an ``ndim``-d result."""
        layer, keys = self.tasks(fn, name, *args)
        root = tree_sum(layer, keys, name)
        out = f"{name}-total"
        key = (out, *((0,) * ndim))
        layer[key] = (_scaled, root, scale)
        return layer, key, out, [self.x, self.y, *extra_deps]


def _pick(options, names):
    return {k: v for k, v in options.items() if k in names and v is not None}


def _scaled(a, s):
    if isinstance(a, tuple):
        return tuple(s * u for u in a)
    return s * a


def _open(xb, yb, shared, index):
    check_chunk(xb, shared.lib, shared.dtype, "x", index)
    check_chunk(yb, shared.lib, shared.extra["ydtype"], "y", index)


def _chunk_value_grad(xb, yb, shared, index):
    _open(xb, yb, shared, index)
    o = shared.extra["options"]
    v, g = _p.value_and_gradient(
        shared.net, xb, yb, shared.extra["loss_sum"], **_pick(o, ("batch_size", "backend"))
    )
    return to_numpy(v), to_numpy(g)


_PRODUCT_OPTS = ("batch_size", "block_size", "memory_budget", "backend")


def _chunk_product(xb, yb, shared, index, kind, V):
    _open(xb, yb, shared, index)
    o = _pick(shared.extra["options"], _PRODUCT_OPTS)
    Vc = to_library(V, shared.lib)
    if kind == "fisher":
        # the chunk's own 1/n_c mean, weighted back to its sum
        r = _p.empirical_fisher_vp(shared.net, xb, yb, shared.extra["loss"], Vc, **o) * xb.shape[0]
    else:
        fn = _p.hvp if kind == "hessian" else _p.ggn_vp
        r = fn(shared.net, xb, yb, shared.extra["loss_sum"], Vc, **o)
    return to_numpy(r)


def _chunk_dense(xb, yb, shared, index, kind):
    _open(xb, yb, shared, index)
    o = shared.extra["options"]
    if kind == "fisher":
        r = _p.empirical_fisher(shared.net, xb, yb, shared.extra["loss"], **_pick(o, ("backend",)))
        return to_numpy(r) * xb.shape[0]
    fn = _p.hessian if kind == "hessian" else _p.ggn
    return to_numpy(fn(shared.net, xb, yb, shared.extra["loss_sum"], **_pick(o, _PRODUCT_OPTS)))


def _chunk_per_example(xb, yb, shared, index):
    _open(xb, yb, shared, index)
    o = _pick(shared.extra["options"], ("backend",))
    return _p.per_example_gradients(shared.net, xb, yb, shared.extra["loss"], **o)


# --------------------------------------------------------------------------
# public functions (same names and arguments as hessquik_core.curvature)
# --------------------------------------------------------------------------


def value_and_gradient(net, x, y, loss, *, batch_size=None, backend=None):
    """Lazy ``(C, ∇C)``: a 0-d and a ``(P,)`` dask array (NumPy), one tree reduction."""
    D = _Data(net, x, y, loss, {"batch_size": batch_size, "backend": backend})
    name = token("value-grad")
    layer, root, _, deps = D.reduce(_chunk_value_grad, name, scale=D.w, ndim=0)
    # both outputs read the one root: computed together, the data is passed once
    vname, gname = name + "-value", name + "-gradient"
    shared_layers = {name: (layer, {x.name, y.name})}
    hv = graph(vname, {(vname,): (_item, root, 0)}, deps, extra_layers=shared_layers)
    hg = graph(gname, {(gname, 0): (_item, root, 1)}, deps, extra_layers=shared_layers)
    P = D.layout.size
    value = da.Array(hv, vname, chunks=(), meta=np.empty((), dtype=D.dtype))
    grad = da.Array(hg, gname, chunks=((P,),), meta=np.empty((0,), dtype=D.dtype))
    return value, grad


def _item(t, j):
    return t[j]


def gradient(net, x, y, loss, *, batch_size=None, backend=None):
    """Lazy ``∇C`` ``(P,)``; see :func:`value_and_gradient`."""
    return value_and_gradient(net, x, y, loss, batch_size=batch_size, backend=backend)[1]


def per_example_gradients(net, x, y, loss, *, backend=None):
    """Lazy ``(N, P)`` per-example gradients, chunked like ``x`` along axis 0 (chunk library)."""
    D = _Data(net, x, y, loss, {"backend": backend})
    name = token("per-example")
    layer, keys = D.tasks(_chunk_per_example, name)
    out = name + "-rows"
    P = D.layout.size
    own = {(out, i, 0): k for i, k in enumerate(keys)}
    hlg = graph(out, own, [x, y], extra_layers={name: (layer, {x.name, y.name})})
    return da.Array(hlg, out, chunks=(x.chunks[0], (P,)), meta=meta_like(D.lib, 2, D.dtype))


class DaskCurvatureOperator(LinearOperatorBase):
    """Hessian, Gauss–Newton or empirical Fisher of a loss over dask data, as an operator.

    ``op @ V`` for a NumPy ``V`` is one distributed computation (a task per
    chunk, a tree sum) whose ``(P,)`` / ``(P, k)`` result comes back to the
    client as NumPy; the spectral routines (:func:`~hessquik_core.curvature.top_eigenpairs`,
    :func:`~hessquik_core.curvature.hutchinson_trace`, ...) do their small
    dense work there. ``op @ V`` for a dask ``V`` and :meth:`lazy_matmat`
    return lazy dask arrays instead. The data are re-read from their
    source at every product: persist them first (``x, y = dask.persist(x, y)``)
    when they are expensive to produce.
    """

    def __init__(self, data: _Data, kind: str) -> None:
        super().__init__(data.layout.size, _XP, data.dtype, "cpu")
        self.data, self.kind = data, kind

    def __repr__(self) -> str:
        d = self.data
        return f"DaskCurvatureOperator(kind={self.kind!r}, P={self.size}, N={d.N}, chunks={d.nchunks})"

    def lazy_matmat(self, V):
        """``A @ V`` for ``V : (P, k)`` (NumPy or dask) as a lazy ``(P, k)`` dask array."""
        from .._dask_hook import is_dask

        D = self.data
        if V.ndim != 2 or V.shape[0] != self.size:
            raise ValueError(f"V must have shape ({self.size}, k), got {tuple(V.shape)}")
        name = token(f"{self.kind}-product")
        deps = []
        if is_dask(V):
            V = V.rechunk(-1)
            deps.append(V)
            vref = (V.name, 0, 0)
        else:
            if not owner_of(V).dask_chunks:
                raise TypeError(
                    f"V must be a NumPy or dask array, got {type(V).__module__}.{type(V).__name__}"
                )
            vref = np.asarray(to_numpy(V), dtype=D.dtype)
        scale = 1.0 / D.N if self.kind == "fisher" else D.w
        layer, key, out, alldeps = D.reduce(
            _chunk_product, name, self.kind, vref, scale=scale, ndim=2, extra_deps=deps
        )
        hlg = graph(
            out, {key: layer.pop(key)}, alldeps, extra_layers={name: (layer, {c.name for c in alldeps})}
        )
        return da.Array(
            hlg, out, chunks=((self.size,), (int(V.shape[1]),)), meta=np.empty((0, 0), dtype=D.dtype)
        )

    def _matmat(self, V):
        from .._dask_hook import is_dask

        out = self.lazy_matmat(V)
        return out if is_dask(V) else out.compute()

    def lazy_dense(self):
        """The ``(P, P)`` matrix as a lazy dask array: each chunk's dense term, summed in a tree."""
        D = self.data
        name = token(f"{self.kind}-dense")
        scale = 1.0 / D.N if self.kind == "fisher" else D.w
        layer, key, out, deps = D.reduce(_chunk_dense, name, self.kind, scale=scale, ndim=2)
        hlg = graph(out, {key: layer.pop(key)}, deps, extra_layers={name: (layer, {x.name for x in deps})})
        return da.Array(hlg, out, chunks=((self.size,), (self.size,)), meta=np.empty((0, 0), dtype=D.dtype))

    def to_dense(self, *, block_size=None):
        """The ``(P, P)`` matrix as NumPy (one distributed reduction of per-chunk dense terms)."""
        return self.lazy_dense().compute()


def _operator(kind, net, x, y, loss, batch_size, block_size, memory_budget, backend):
    opts = {
        "batch_size": batch_size,
        "block_size": block_size,
        "memory_budget": memory_budget,
        "backend": backend,
    }
    return DaskCurvatureOperator(_Data(net, x, y, loss, opts), kind)


def hessian_operator(
    net, x, y, loss, *, batch_size=None, block_size=None, memory_budget=None, backend=None, cache_forward=None
):
    """Exact Hessian over dask data as a :class:`DaskCurvatureOperator`.

    ``cache_forward`` is accepted for signature compatibility and ignored:
    every product re-runs each chunk's forward pass on its worker.
    """
    return _operator("hessian", net, x, y, loss, batch_size, block_size, memory_budget, backend)


def ggn_operator(
    net, x, y, loss, *, batch_size=None, block_size=None, memory_budget=None, backend=None, cache_forward=None
):
    """Generalised Gauss–Newton over dask data as a :class:`DaskCurvatureOperator`."""
    return _operator("ggn", net, x, y, loss, batch_size, block_size, memory_budget, backend)


def empirical_fisher_operator(
    net, x, y, loss, *, batch_size=None, block_size=None, memory_budget=None, backend=None, cache_forward=None
):
    """Empirical Fisher ``(1/N) Σ g_n g_nᵀ`` over dask data as a :class:`DaskCurvatureOperator`."""
    return _operator("fisher", net, x, y, loss, batch_size, block_size, memory_budget, backend)


def _lazy_product(op, v):
    if v.ndim == 1:
        return op.lazy_matmat(v[:, None])[:, 0]
    return op.lazy_matmat(v)


def hvp(net, x, y, loss, v, *, batch_size=None, block_size=None, memory_budget=None, backend=None):
    """Lazy :math:`Hv` (dask array) for ``v : (P,)`` or ``(P, k)``, NumPy or dask."""
    return _lazy_product(
        _operator("hessian", net, x, y, loss, batch_size, block_size, memory_budget, backend), v
    )


def ggn_vp(net, x, y, loss, v, *, batch_size=None, block_size=None, memory_budget=None, backend=None):
    """Lazy Gauss–Newton product (dask array) for ``v : (P,)`` or ``(P, k)``."""
    return _lazy_product(_operator("ggn", net, x, y, loss, batch_size, block_size, memory_budget, backend), v)


def empirical_fisher_vp(
    net, x, y, loss, v, *, batch_size=None, block_size=None, memory_budget=None, backend=None
):
    """Lazy empirical-Fisher product (dask array) for ``v : (P,)`` or ``(P, k)``."""
    return _lazy_product(
        _operator("fisher", net, x, y, loss, batch_size, block_size, memory_budget, backend), v
    )


def hessian(
    net, x, y, loss, *, batch_size=None, block_size=None, memory_budget=None, backend=None, progress=None
):
    """Lazy dense ``(P, P)`` Hessian: each chunk's dense Hessian, summed in a tree.

    ``progress`` is accepted for the in-memory signature; a lazy result has no work to
    report until it is computed (use Dask's own progress bars or dashboard then)."""
    return _operator("hessian", net, x, y, loss, batch_size, block_size, memory_budget, backend).lazy_dense()


def ggn(
    net, x, y, loss, *, batch_size=None, block_size=None, memory_budget=None, backend=None, progress=None
):
    """Lazy dense ``(P, P)`` Gauss–Newton matrix; see :func:`hessian`."""
    return _operator("ggn", net, x, y, loss, batch_size, block_size, memory_budget, backend).lazy_dense()


def empirical_fisher(net, x, y, loss, *, backend=None):
    """Lazy dense empirical Fisher ``(P, P)``."""
    return _operator("fisher", net, x, y, loss, None, None, None, backend).lazy_dense()


def empirical_fisher_eigenpairs(
    net,
    x,
    y,
    loss,
    k,
    *,
    method="approx_randomized",
    batch_size=None,
    oversample=10,
    n_iter=2,
    seed=0,
    warn_rtol=1e-3,
    backend=None,
    progress=None,
):
    """Top-``k`` eigenpairs of the empirical Fisher over dask data (``method="approx_randomized"``
    only, old name ``"randomized"``: subspace iteration on distributed :math:`G`-products, the
    Rayleigh–Ritz step on the client). Approximate, like the in-memory route of that name: an
    :class:`~hessquik_core.curvature.ApproximationWarning` when the largest Ritz residual exceeds
    ``warn_rtol`` times the smallest eigenvalue returned."""
    from ..curvature import spectra
    from ..curvature.fisher_spectrum import _warn_if_inexact

    if method not in ("approx_randomized", "randomized"):
        raise ValueError(
            f"for dask data empirical_fisher_eigenpairs supports method='approx_randomized' (distributed "
            f"G-products; old name 'randomized'), got method={method!r}; 'incremental' and the exact "
            f"routes need the per-example gradients in one process"
        )
    oversample = spectra._check_int("oversample", oversample, 0)
    r = spectra._check_int("k", k, 1) + oversample
    n_iter = spectra._check_int("n_iter", n_iter, 0)
    op = _operator("fisher", net, x, y, loss, batch_size, None, None, backend)
    if k >= op.size:
        raise ValueError(f"k must be below P = {op.size}, got {k}")
    with progress_bar(progress, total=n_iter + 2, desc="empirical Fisher", unit="pass") as bar:
        vals, vecs, info = spectra._randomized(op, k, min(r, op.size), n_iter, seed, bar)
    _warn_if_inexact(vals, info, float(warn_rtol), "approx_randomized")
    info["method"] = "approx_randomized"
    return vals, vecs, info
