r"""The data loop of the curvature functions: a *source* of per-chunk partial sums.

Every quantity of :mod:`hessquik_core.curvature` is a sum over examples
(:math:`C = w\sum_n \ell_n`, :math:`Hv = w\sum_n H_n v`,
:math:`G = \frac1N\sum_n g_n g_n^\top`), so the public functions ask a
*source* for it and the source decides how the sum over its data is taken:

* in-memory arrays (NumPy, torch, CuPy, any Array-API array):
  :class:`_Problem`, mini-batches of ``batch_size`` examples summed in a
  loop (one batch by default);
* arrays held in chunks by Dask: :class:`hessquik_core.dask.DaskSource`,
  one task per chunk running :class:`_Problem` with ``partial=True`` on the
  chunk, the chunks' sums added in a tree (fan-in 8) and the factor
  (:math:`w`, :math:`1/N`) applied once at the root.

:func:`curvature_problem` picks the source from the type of ``x`` and ``y``;
both kinds offer :data:`SOURCE_METHODS` with the same arguments, so each
public function is declared once and takes the same arguments for every
source. A source refuses an argument that means nothing for it (a
``ValueError`` naming it) instead of ignoring it.
"""

from __future__ import annotations

import weakref

import numpy as np

from .._array import as_plain_array, namespace_of
from .._dask_hook import chunked_plugin
from ..backends import backend_for
from .layout import _check_torch_dtype, _network, _network_views
from .losses import CrossEntropyLoss, Loss, MSELoss, _TorchMSELoss, get_loss
from .operators import _check_batch_size, _lib_name, _same_library
from .problem import CurvatureOperator, _Bound, _convert
from .selection import resolve_params

__all__ = ["SOURCE_METHODS", "curvature_problem"]


def _user_targets(y, B):
    """Targets ``y`` in the library of ``x`` (``B.user_xp``).

    A NumPy ``y`` with ``x`` of another library (e.g. NumPy labels for torch
    data) is converted to that library, keeping its dtype (integer labels
    stay integers) and moving it to ``x``'s device; any other mismatch is a
    ``TypeError``.
    """
    y = as_plain_array(y, "y")
    xpy = namespace_of(y, "y")
    if _same_library(xpy, B.user_xp):
        return y
    if backend_for(xpy).interchange and not backend_for(B.user_xp).interchange:
        if y.dtype.kind not in "biuf":
            raise TypeError(
                f"y must hold integer class labels or floating targets, got a NumPy array of dtype {y.dtype}"
            )
        return _convert(y, B.user_be, B.user_xp, B.user_device)
    raise TypeError(
        f"y must be an array of the same library as x ({_lib_name(B.user_xp)}) "
        f"or a NumPy array, got {type(y).__module__}.{type(y).__name__}"
    )


def curvature_problem(net, x, y, loss, batch_size=None, backend=None, cache_forward=None, params=None):
    """The data source of one curvature computation, chosen by the type of ``x``, ``y``.

    In-memory arrays give a :class:`_Problem` (mini-batches of ``batch_size``
    examples, summed in a loop); a chunked collection (a Dask array) gives the
    source of the plugin that serves it (``hessquik_core._dask_hook.chunked_plugin``;
    for Dask :class:`hessquik_core.dask.DaskSource`: one task per chunk, each an
    in-memory :class:`_Problem` with ``partial=True``, added in a tree). Both
    offer the methods the public functions call (:data:`SOURCE_METHODS`), with
    the same arguments, so each public function is declared once.
    """
    plugin = chunked_plugin(x, y)
    if plugin is not None:
        return plugin.curvature_source(
            net,
            x,
            y,
            loss,
            batch_size=batch_size,
            backend=backend,
            cache_forward=cache_forward,
            params=params,
        )
    return _Problem(net, x, y, loss, batch_size, backend, cache_forward, params)


# the targets of recent calls, for labels that are passed again unchanged (full-batch
# training passes the same y every step): key -> (weak reference to y, its version, w, targets)
_TARGETS: dict = {}
_TARGETS_KEPT = 4
# losses whose repr states every option (so that it can key the targets)
_DESCRIBED_LOSSES = (MSELoss, CrossEntropyLoss, _TorchMSELoss)


def _targets(loss, y, B, m, bs, partial):
    """``(w, [T_b])``: the loss weight (1 for a chunk's partial sum) and the call-namespace
    targets of each mini-batch of ``bs`` examples.

    Kept (up to :data:`_TARGETS_KEPT` calls) for labels ``y`` with an in-place version
    counter (torch) and a loss fully described by its ``repr``: the same tensor, unchanged
    (same version), with the same loss, width, dtype, device and batch size, gets the same
    targets without recomputing them (the label checks, the one-hot, the counted weights);
    an entry is dropped when its labels are garbage-collected.
    """
    version = getattr(y, "_version", None)
    key = None
    if isinstance(version, int) and type(loss) in _DESCRIBED_LOSSES:
        key = (id(y), repr(loss), m, str(B.dtype), str(B.device), B.be.name, bs, partial)
        hit = _TARGETS.get(key)
        if hit is not None and hit[0]() is y and hit[1] == version:
            return hit[2], hit[3]
    N = y.shape[0]
    w = 1.0 if partial else loss.weight_for(y)
    yc = B.to_call(y)
    Ts = [
        loss._targets(min(i + bs, N) - i, m, B.dtype, yc[i : min(i + bs, N), ...], B.xp)
        for i in range(0, N, bs)
    ]
    if key is not None:
        try:  # the entry goes when y does: the targets are not kept past the labels' lifetime
            ref = weakref.ref(y, lambda _ref, key=key: _TARGETS.pop(key, None))
        except TypeError:  # pragma: no cover - an array type without weak references
            return w, Ts
        while len(_TARGETS) >= _TARGETS_KEPT:
            _TARGETS.pop(next(iter(_TARGETS)))
        _TARGETS[key] = (ref, version, w, Ts)
    return w, Ts


#: what a data source offers the public curvature functions (the in-memory :class:`_Problem`
#: and every chunked source; tests/curvature/test_sources.py checks both have them)
SOURCE_METHODS = (
    "value_and_gradient",
    "per_example_gradients",
    "operator",
    "product",
    "dense",
    "empirical_fisher",
    "fisher_trace",
    "fisher_gram_host",
    "from_host",
    "serves",
    "check_route",
    "size",
    "N",
    "itemsize",
    "passes",
)


class _Problem:
    """Network, data, loss and mini-batches of one curvature computation: the in-memory source.

    ``partial=True`` (a chunk of a larger dataset, see :func:`curvature_problem`):
    every result is the chunk's plain *sum* over its examples (weights
    :math:`w = 1` and 1 instead of :math:`1/N`), the factor being applied once,
    where the chunks' sums meet.
    """

    def __init__(
        self, net, x, y, loss, batch_size=None, backend=None, cache_forward=None, params=None, partial=False
    ):
        original, (net, views, memo) = net, _network_views(net)
        _check_torch_dtype(original, x, memo)
        self.loss: Loss = get_loss(loss)
        self.B = B = _Bound(net, x, backend, views, memo, lambda: _network(original))
        # the differentiated parameters (params=): their layout, and where they sit in the full θ
        # (a torch model's default selection depends on requires_grad, part of its cache key)
        if params is None and memo is not None:
            if "selection" not in memo:
                memo["selection"] = resolve_params(original, B.layout, None)
            self.layout, index = memo["selection"]
        else:
            self.layout, index = resolve_params(original, B.layout, params)
        self.index = self.position = None
        if index is not None:
            P = B.layout.size
            pos = np.full(
                P, index.size, dtype=np.int64
            )  # full θ entry -> selected entry (or the zero column)
            pos[index] = np.arange(index.size, dtype=np.int64)
            self.index = B.be.convert(index, xp=B.xp, dtype=B.xp.int64, device=B.device)
            self.position = B.be.convert(pos, xp=B.xp, dtype=B.xp.int64, device=B.device)
        y = _user_targets(y, B)
        N = x.shape[0]
        if y.ndim < 1 or y.shape[0] != N:
            raise ValueError(f"y must have {N} rows (one per example), got shape {tuple(y.shape)}")
        self.N = N
        self.m = net.out_features
        self.fisher_w = 1.0 if partial else 1.0 / N
        bs = _check_batch_size(batch_size, N)
        # w of the loss (1/N, 1/Σ counted weights or 1) and the targets of each mini-batch
        self.w, Ts = _targets(self.loss, y, B, self.m, bs, partial)
        self.chunks = [(B.x[i : min(i + bs, N), ...], T) for i, T in zip(range(0, N, bs), Ts)]
        self.batch_size = bs
        # the forward pass does not depend on the directions: keep it between
        # products (like autograd's retained graph) unless mini-batches ask to save memory
        self.cache_forward = len(self.chunks) == 1 if cache_forward is None else bool(cache_forward)
        self._fwd = {}

    @property
    def size(self) -> int:
        return self.layout.size

    def select(self, a):
        """The selected parameters' entries of ``a : (..., P_full)`` (call namespace)."""
        return a if self.index is None else self.B.xp.take(a, self.index, axis=a.ndim - 1)

    def embed(self, Vt):
        """Directions ``(k, P_selected)`` as ``(k, P_full)``, zero on the parameters not selected."""
        if self.index is None:
            return Vt
        xp = self.B.xp
        zero = xp.zeros((Vt.shape[0], 1), dtype=Vt.dtype, device=self.B.device)
        return xp.take(xp.concat([Vt, zero], axis=1), self.position, axis=1)

    def per_example(self, chunk):
        """``(n_b, P)`` rows :math:`\\nabla_\\theta\\ell_n` of one mini-batch, call namespace."""
        xb, Tb = self.chunks[chunk]
        return self.select(self.B.grad_pass(xb, Tb, self.loss, 1.0, True)[1])

    def apply(self, Vt, kind, start=0):
        """Sum over mini-batches of the products with ``Vt : (k, P)`` (call namespace);
        ``start``: see :meth:`_Bound.rop_pass`."""
        w = self.fisher_w if kind == "fisher" else self.w
        Vt = self.embed(Vt)
        out = None
        for c, (xb, Tb) in enumerate(self.chunks):
            prep = self._fwd.get((c, kind))
            if prep is None and self.cache_forward:
                prep = self._fwd[(c, kind)] = self.B.prepare(xb, Tb, self.loss, w, kind)
            r = self.B.rop_pass(xb, Tb, self.loss, w, Vt, kind, prep, start)
            out = r if out is None else out + r
        return self.select(out) if start == 0 else out

    # -- what the public functions ask of a source (SOURCE_METHODS) -------------
    def value_and_gradient(self):
        """``(C, ∇C)``: 0-d and ``(P,)`` in the user's library, mini-batch by mini-batch."""
        B, xp = self.B, self.B.xp
        val = grad = None
        for xb, Tb in self.chunks:
            v, g = B.fused_grad_pass(xb, Tb, self.loss, self.w)
            v = xp.sum(v)
            val, grad = (v, g) if val is None else (val + v, grad + g)
        return B.to_user(self.w * val), B.to_user(self.select(grad))

    def _rows(self, bar=None):
        """The per-example gradients ``A : (N, P)`` (call namespace), mini-batch by mini-batch."""
        parts = []
        for c in range(len(self.chunks)):
            parts.append(self.per_example(c))
            if bar is not None:
                bar.update()
        return parts[0] if len(parts) == 1 else self.B.xp.concat(parts, axis=0)

    def per_example_gradients(self):
        """``A : (N, P)`` in the user's library."""
        return self.B.to_user(self._rows())

    def operator(self, kind, block_size=None, memory_budget=None):
        """The :class:`CurvatureOperator` of ``kind`` over these data (a snapshot of the
        weights: a torch model's later in-place updates are not seen)."""
        self.B.snapshot()
        return CurvatureOperator(self, kind, block_size, memory_budget)

    def product(self, kind, v, block_size=None, memory_budget=None):
        """``A v`` for ``v : (P,)`` or ``(P, k)`` (one use of :meth:`operator`)."""
        return self.operator(kind, block_size, memory_budget) @ v

    def dense(self, kind, block_size=None, memory_budget=None, progress=None, symmetric=True):
        """The ``(P, P)`` matrix of ``kind`` (:meth:`CurvatureOperator.to_dense`)."""
        return self.operator(kind, block_size, memory_budget).to_dense(progress=progress, symmetric=symmetric)

    def empirical_fisher(self):
        """Dense :math:`G = \\frac1N A^\\top A` ``(P, P)`` in the user's library."""
        A, xp = self._rows(), self.B.xp
        return self.B.to_user((xp.matrix_transpose(A) @ A) * self.fisher_w)

    def fisher_trace(self):
        """:math:`\\mathrm{tr}\\,G = \\frac1N\\sum_n \\lVert g_n\\rVert^2` (0-d, user's library)."""
        xp = self.B.xp
        total = None
        for c in range(len(self.chunks)):
            A = self.per_example(c)
            t = xp.sum(A * A)
            total = t if total is None else total + t
        return self.B.to_user(total * self.fisher_w)

    @property
    def itemsize(self) -> int:
        """Bytes per number of the computation's dtype."""
        return int(np.dtype(str(self.B.dtype).split(".")[-1]).itemsize)

    @property
    def passes(self) -> int:
        """Passes over the data one sweep takes (progress bars count them)."""
        return len(self.chunks)

    def serves(self, route: str) -> bool:
        """Whether this source computes the empirical-Fisher eigen-route ``route`` (all, in memory)."""
        return True

    def check_route(self, route: str) -> None:
        """Raise ``ValueError`` naming the routes served when :meth:`serves` says no."""

    def from_host(self, a):
        """A host (NumPy) result in the user's library, dtype and device."""
        B = self.B
        return B.to_user(B.be.convert(a, xp=B.xp, dtype=B.dtype, device=B.device))

    def fisher_gram_host(self, bar):
        """:math:`G` as a float64 NumPy ``(P, P)`` (the exact dense eigen-route's input)."""
        xp, be = self.B.xp, self.B.be
        G = None
        for c in range(len(self.chunks)):
            Ab = self.per_example(c)
            Gb = xp.matrix_transpose(Ab) @ Ab
            G = Gb if G is None else G + Gb
            bar.update()
        return be.to_numpy(G).astype(np.float64) * self.fisher_w
