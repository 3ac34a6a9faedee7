r"""Dask-held data as a curvature data source: per-chunk partial sums, added in a tree.

The training loss :math:`C = w\sum_n \ell_n` is a sum over examples, so
every quantity of :mod:`hessquik_core.curvature` is a sum of one term per
batch chunk :math:`c`: with the per-chunk *sums* :math:`S_c` (the in-memory
source on the chunk with ``partial=True``: :math:`w = 1`),
:math:`\nabla C = w \sum_c S_c` and :math:`Hv = w \sum_c (H_c^{\rm sum} v)`,
where :math:`w = 1/D` (``"mean"``; :math:`D = \sum_c D_c` the *whole*
dataset's normaliser: its number of examples, or for a cross-entropy with
``ignore_index`` hit or class weights the summed weights of its counted
targets, each chunk contributing its own :math:`D_c`) or 1 (``"sum"``).
The empirical Fisher is always :math:`\frac1N\sum_n g_n g_n^\top`: each
chunk returns its plain sum :math:`\sum_{n\in c} g_n g_n^\top`, and
:math:`1/N` is applied at the root. Each chunk's term is computed by one
task with the in-memory source on the chunk's own arrays; the terms are
added in a tree (fan-in 8) and the factor applied once at the root.

:class:`DaskSource` is what ``hessquik_core.curvature.sources.curvature_problem``
returns for dask ``x, y``: it offers the same methods as the in-memory
source, so each public curvature function is declared once.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as aac
import numpy as np

from .._dask_hook import is_dask
from ..backends import owner_of
from ..curvature.layout import _network
from ..curvature.losses import get_loss
from ..curvature.operators import LinearOperatorBase
from ..curvature.sources import _Problem
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

#: the empirical-Fisher eigen-routes a Dask source serves (the N × N Gram route and the
#: one-pass incremental SVD need every row on one process)
_ROUTES = ("exact", "dense", "lanczos", "approx_randomized")


def curvature_source(net, x, y, loss, *, batch_size=None, backend=None, cache_forward=None, params=None):
    """The :class:`DaskSource` of dask ``x, y`` (the plugin entry point, see ``_dask_hook``)."""
    return DaskSource(
        net, x, y, loss, batch_size=batch_size, backend=backend, cache_forward=cache_forward, params=params
    )


class DaskSource:
    """Network, loss and Dask-held data of one curvature computation.

    Every method builds a lazy graph: one task per chunk running the
    in-memory source (:class:`~hessquik_core.curvature.sources._Problem`,
    ``partial=True``) on the chunk with this call's ``batch_size``,
    ``backend`` and ``params``; a tree sum; the factor at the root.
    ``cache_forward=True`` is refused (each product re-runs each chunk's
    forward pass on its worker; there is nothing to keep between products).
    """

    def __init__(self, net, x, y, loss, *, batch_size=None, backend=None, cache_forward=None, params=None):
        if not (is_dask(x) and is_dask(y)):
            raise TypeError(
                "x and y must both be dask arrays (chunked alike along axis 0) or both in-memory arrays; "
                f"got x: {type(x).__module__}.{type(x).__name__}, y: {type(y).__module__}.{type(y).__name__}"
                "; wrap the other with dask.array.from_array(a, chunks=(x.chunks[0], ...))"
            )
        if cache_forward:
            raise ValueError(
                "cache_forward=True has no meaning for dask data: every product re-runs each chunk's "
                "forward pass in its task (the workers keep nothing between products); leave it None"
            )
        self.loss = get_loss(loss)
        d = _network(net).in_features
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
        self.dtype = np.dtype(x.dtype)
        # one example on the client runs the in-memory checks (network, targets, loss,
        # batch_size, backend, params): bad input fails here, before anything is computed
        x0 = np.zeros((1, d), dtype=self.dtype)
        y0 = np.zeros((1, *y.shape[1:]), dtype=y.dtype)
        probe = _Problem(net, x0, y0, self.loss, batch_size, backend, None, params, partial=True)
        probe.value_and_gradient()
        self.probe = probe
        self.layout = probe.layout
        self.size = probe.size
        # the selection as our keys: the worker's network is the converted snapshot
        keys = None if probe.index is None else list(probe.layout.keys)
        self.net = snapshot(_network(net))
        self.shared = Shared(
            self.net,
            lib,
            str(self.dtype),
            {
                "loss": self.loss,
                "ydtype": str(np.dtype(y.dtype)),
                "options": {"batch_size": batch_size, "backend": backend, "params": keys},
            },
        )

    def __repr__(self) -> str:
        return f"DaskSource(P={self.size}, N={self.N}, chunks={self.nchunks})"

    # -- the graph ------------------------------------------------------------------
    def _tasks(self, name: str, method: str, args: tuple) -> tuple[dict, list]:
        """One task per chunk: ``_Problem(chunk, partial=True).<method>(*args)``; the layer and its keys."""
        skey = name + "-net"
        layer: dict[Any, Any] = {skey: self.shared}  # graph keys: names and (name, chunk) pairs
        keys = []
        for i in range(self.nchunks):
            k = (name + "-chunk", i)
            layer[k] = (
                _chunk,
                (self.x.name, i, 0),
                (self.y.name, i, *((0,) * (self.y.ndim - 1))),
                skey,
                i,
                method,
                *args,
            )
            keys.append(k)
        return layer, keys

    def _reduce(self, prefix: str, method: str, args: tuple, weight: str, shape: tuple, deps=()):
        """Lazy ``factor · Σ_c chunk_c.<method>(*args)`` of shape ``shape`` (one chunk).

        ``weight``: ``"loss"`` (:math:`w` of the loss, from the chunks' normalisers)
        or ``"fisher"`` (:math:`1/N`).
        """
        name = token(prefix)
        layer, keys = self._tasks(name, method, args)
        root = tree_sum(layer, keys, name)
        out = f"{name}-total"
        key = (out, *((0,) * len(shape)))
        factor = 1.0 / self.N if weight == "fisher" else None
        own = {key: (_finish, root, self.loss.reduction, factor)}
        alldeps = [self.x, self.y, *deps]
        hlg = graph(out, own, alldeps, extra_layers={name: (layer, {c.name for c in alldeps})})
        return da.Array(
            hlg, out, chunks=tuple((s,) for s in shape), meta=np.empty((0,) * len(shape), self.dtype)
        )

    # -- what the public functions ask of a source (curvature.sources.SOURCE_METHODS) --
    @property
    def itemsize(self) -> int:
        return int(self.dtype.itemsize)

    @property
    def passes(self) -> int:
        return 1  # one distributed computation

    def serves(self, route: str) -> bool:
        return route in _ROUTES

    def check_route(self, route: str) -> None:
        if not self.serves(route):
            raise ValueError(
                f"for dask data empirical_fisher_eigenpairs supports method in {list(_ROUTES)} ('exact' and "
                "'dense': the P × P matrix as a tree reduction; 'lanczos' and 'approx_randomized': "
                f"distributed G-products), got method={route!r}; 'gram' and 'approx_incremental' "
                "need every per-example gradient in one process"
            )

    def from_host(self, a):
        return np.asarray(a, dtype=self.dtype)

    def value_and_gradient(self):
        """Lazy ``(C, ∇C)``: a 0-d and a ``(P,)`` dask array (NumPy), one tree reduction."""
        both = self._reduce("value-grad", "value_and_gradient", (), "loss", (self.size + 1,))
        # both outputs read the one root (value and gradient stacked): computed together, the data pass once
        value = both[0]
        return value, both[1:]

    def per_example_gradients(self):
        """Lazy ``(N, P)`` per-example gradients, chunked like ``x`` along axis 0 (chunk library)."""
        name = token("per-example")
        layer, keys = self._tasks(name, "per_example_gradients", ())
        out = name + "-rows"
        own = {(out, i, 0): k for i, k in enumerate(keys)}
        x, y = self.x, self.y
        hlg = graph(out, own, [x, y], extra_layers={name: (layer, {x.name, y.name})})
        return da.Array(hlg, out, chunks=(x.chunks[0], (self.size,)), meta=meta_like(self.lib, 2, self.dtype))

    def operator(self, kind, block_size=None, memory_budget=None):
        return DaskCurvatureOperator(self, kind, block_size, memory_budget)

    def product(self, kind, v, block_size=None, memory_budget=None):
        """Lazy ``A v`` (dask array) for ``v : (P,)`` or ``(P, k)``, NumPy or dask."""
        op = self.operator(kind, block_size, memory_budget)
        if v.ndim == 1:
            return op.lazy_matmat(v[:, None])[:, 0]
        return op.lazy_matmat(v)

    def dense(self, kind, block_size=None, memory_budget=None, progress=None, symmetric=True):
        """Lazy dense ``(P, P)``: each chunk's dense matrix (``symmetric`` as given), summed in a tree."""
        if progress:
            raise ValueError(
                "progress=True: a lazy dask result does no work until it is computed; watch it with "
                "dask.diagnostics.ProgressBar() or the distributed dashboard instead"
            )
        return self.operator(kind, block_size, memory_budget).lazy_dense(symmetric)

    def empirical_fisher(self):
        """Lazy dense empirical Fisher ``(P, P)``."""
        return self._reduce("fisher-dense", "empirical_fisher", (), "fisher", (self.size, self.size))

    def fisher_trace(self):
        """Lazy 0-d :math:`\\mathrm{tr}\\,G`."""
        return self._reduce("fisher-trace", "fisher_trace", (), "fisher", ())

    def fisher_gram_host(self, bar):
        G = self.empirical_fisher().compute()
        bar.update()
        return np.asarray(G, dtype=np.float64)


def _open(xb, yb, shared, index):
    check_chunk(xb, shared.lib, shared.dtype, "x", index)
    check_chunk(yb, shared.lib, shared.extra["ydtype"], "y", index)


def _chunk(xb, yb, shared, index, method, *args):
    """One chunk's partial sum: ``(result as NumPy, the chunk's normaliser D_c)``."""
    _open(xb, yb, shared, index)
    o = shared.extra["options"]
    loss = shared.extra["loss"]
    pb = _Problem(shared.net, xb, yb, loss, o["batch_size"], o["backend"], None, o["params"], partial=True)
    args = tuple(to_library(a, shared.lib) if isinstance(a, np.ndarray) else a for a in args)
    r = getattr(pb, method)(*args)
    if method == "value_and_gradient":  # (0-d, (P,)) stacked into one (P + 1,) vector
        r = np.concatenate([np.reshape(to_numpy(r[0]), (1,)), to_numpy(r[1])])
    elif method == "per_example_gradients":
        return r  # rows, not summed: in the chunk's own library
    return to_numpy(r), _normaliser(loss, yb)


def _normaliser(loss, yb) -> float:
    """:math:`D_c`: what the chunk adds to the mean's denominator (examples, or counted weights)."""
    if loss.reduction != "mean":
        return 0.0
    try:
        return 1.0 / loss.weight_for(yb)
    except ValueError:  # every target of this chunk ignored: it counts nothing (other chunks may)
        return 0.0


def _finish(total, reduction: str, factor):
    """The root: the summed terms times ``factor`` (``None``: the loss's :math:`w` from :math:`D`)."""
    value, D = total
    if factor is None:
        if reduction != "mean":
            return value
        if D == 0.0:
            raise ValueError(
                "every target is ignored (ignore_index) or has class weight 0: the mean over the "
                "counted targets is undefined (torch returns nan); use reduction='sum' or other targets"
            )
        factor = 1.0 / D
    return factor * value


class DaskCurvatureOperator(LinearOperatorBase):
    """Hessian, Gauss–Newton or empirical Fisher of a loss over dask data, as an operator.

    ``op @ V`` for a NumPy ``V`` is one distributed computation (a task per
    chunk, a tree sum) whose ``(P,)`` / ``(P, k)`` result comes back to the
    client as NumPy; the spectral routines (:func:`~hessquik_core.curvature.top_eigenpairs`,
    :func:`~hessquik_core.curvature.hutchinson_trace`, ...) do their small
    dense work there. ``op @ V`` for a dask ``V`` and :meth:`lazy_matmat`
    return lazy dask arrays instead. The data are re-read from their
    source at every product: persist them first (``x, y = dask.persist(x, y)``)
    when they are expensive to produce. ``block_size`` and ``memory_budget``
    apply to each chunk's in-memory products.
    """

    def __init__(self, source: DaskSource, kind: str, block_size=None, memory_budget=None) -> None:
        super().__init__(source.size, _XP, source.dtype, "cpu")
        self.source, self.kind = source, kind
        self.options = (block_size, memory_budget)
        # the in-memory checks of the options, on the client (one example)
        source.probe.operator(kind, block_size, memory_budget)

    def __repr__(self) -> str:
        s = self.source
        return f"DaskCurvatureOperator(kind={self.kind!r}, P={self.size}, N={s.N}, chunks={s.nchunks})"

    def lazy_matmat(self, V):
        """``A @ V`` for ``V : (P, k)`` (NumPy or dask) as a lazy ``(P, k)`` dask array."""
        if V.ndim != 2 or V.shape[0] != self.size:
            raise ValueError(f"V must have shape ({self.size}, k), got {tuple(V.shape)}")
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
            vref = np.asarray(to_numpy(V), dtype=self.source.dtype)
        weight = "fisher" if self.kind == "fisher" else "loss"
        return self.source._reduce(
            f"{self.kind}-product",
            "product",
            (self.kind, vref, *self.options),
            weight,
            (self.size, int(V.shape[1])),
            deps,
        )

    def _matmat(self, V):
        return self.lazy_matmat(V).compute()

    def __matmul__(self, V: Any) -> Any:
        """``A @ V``: NumPy for a NumPy ``V`` (computed), a lazy dask array for a dask ``V``."""
        if is_dask(V):
            if V.ndim == 1:
                if V.shape[0] != self.size:
                    raise ValueError(f"v must have shape ({self.size},), got {tuple(V.shape)}")
                return self.lazy_matmat(V[:, None])[:, 0]
            return self.lazy_matmat(V)
        return super().__matmul__(V)

    def lazy_dense(self, symmetric: bool = True):
        """The ``(P, P)`` matrix as a lazy dask array: each chunk's dense term, summed in a tree."""
        weight = "fisher" if self.kind == "fisher" else "loss"
        args = (self.kind, *self.options, None, symmetric)
        return self.source._reduce(f"{self.kind}-dense", "dense", args, weight, (self.size, self.size))

    def to_dense(self, *, block_size=None, progress=None, symmetric: bool = True):
        """The ``(P, P)`` matrix as NumPy (one distributed reduction of per-chunk dense terms).

        ``block_size`` is refused (give it to the operator's constructor: it applies to each
        chunk's products), and so is ``progress=True`` (see :meth:`DaskSource.dense`)."""
        if block_size is not None:
            raise ValueError(
                "block_size: for dask data give it when building the operator (it applies to each "
                "chunk's in-memory products), not to to_dense"
            )
        if progress:
            raise ValueError(
                "progress=True: watch the distributed computation with dask.diagnostics.ProgressBar() "
                "or the dashboard"
            )
        return self.lazy_dense(symmetric).compute()
