r"""Networks: compositions of layers, and the chain-rule engine.

``net(x, gradient=True, hessian=True)`` evaluates the network and, without
automatic differentiation, its input derivatives. See :meth:`NN.__call__`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import array_api_compat as aac
import numpy as np

from ._array import CallContext, resolve_call
from ._cost import available_memory, estimate
from ._dask_hook import dask_call, is_dask
from ._module import Module
from .layers import ICNNLayer, Layer, ResnetLayer, SingleLayer, Want, _check_int, diagonal

__all__ = ["ICNN", "NN", "FullyConnectedNN", "MemoryBudgetError", "ResnetNN", "Result", "MODES"]

MODES = ("auto", "forward", "backward")

#: an array of any supported library (NumPy, torch, CuPy, Array-API)
Array = Any


@dataclass
class Result:
    """What a network call returns; entries not requested are ``None``.

    Arrays are of ``x``'s library (NumPy, torch, CuPy, ...), in its dtype
    and on its device.

    Attributes
    ----------
    value : array
        ``(n, m)``, the network's output.
    gradient : array or None
        ``(n, d, m)``. With ``directions`` ``V``: ``(n, k, m)`` in forward
        mode (``V : (d, k)``), ``(n, d, k)`` in backward mode (``V : (m, k)``).
    hessian : array or None
        ``(n, d, d, m)``. With ``V``: ``(n, k, k, m)``, that is ``VᵀHV``, in
        forward mode; ``(n, d, d, k)`` in backward mode.
    laplacian : array or None
        ``(n, m)``.
    hessian_diagonal : array or None
        ``(n, d, m)``; with ``V`` in forward mode ``(n, k, m)``, the
        diagonal of ``VᵀHV``.
    divergence : array or None
        ``(n,)``, the trace of the Jacobian (networks with d = m).
    mode : {"forward", "backward"} or None
        The route actually taken.
    """

    # arrays of the caller's library: no common static type across NumPy,
    # torch, CuPy and the Array-API libraries, hence the alias of Any
    value: Array
    gradient: Array = None
    hessian: Array = None
    laplacian: Array = None
    hessian_diagonal: Array = None
    divergence: Array = None
    mode: Literal["forward", "backward"] | None = None

    def __iter__(self):
        # hessQuik-style unpacking: f, df, d2f = net(x, ...)
        return iter((self.value, self.gradient, self.hessian))


class NN(Module):
    """Composition of layers (and of other ``NN`` blocks): ``NN(layer1, layer2, ...)``.

    Blocks are applied in order; the output width of each must equal the
    input width of the next.
    """

    def __init__(self, *blocks) -> None:
        super().__init__()
        if not blocks:
            raise ValueError("NN needs at least one layer")
        for i, blk in enumerate(blocks):
            if not isinstance(blk, (Layer, NN)):
                raise TypeError(f"block {i} must be a Layer or NN, got {type(blk).__name__}")
        for i in range(len(blocks) - 1):
            a, b = blocks[i], blocks[i + 1]
            if a.out_features != b.in_features:
                raise ValueError(
                    f"dimension mismatch between block {i} ({a!r}, {a.out_features} outputs) and "
                    f"block {i + 1} ({b!r}, {b.in_features} inputs)"
                )
        for i, blk in enumerate(blocks):
            self._children[str(i)] = blk

    # -- structure --------------------------------------------------------
    @property
    def blocks(self) -> list:
        return list(self._children.values())

    def __len__(self) -> int:
        return len(self._children)

    def __getitem__(self, i: int):
        return self.blocks[i]

    def __iter__(self):
        return iter(self.blocks)

    @property
    def in_features(self) -> int:
        return self.blocks[0].in_features

    @property
    def out_features(self) -> int:
        return self.blocks[-1].out_features

    def _leaves(self):
        for blk in self.blocks:
            yield from blk._leaves()

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(b).replace("\n", "\n  ") for b in self.blocks)
        return f"{type(self).__name__}(\n  {inner}\n)"

    # -- evaluation -------------------------------------------------------
    def __call__(
        self,
        x,
        gradient: bool = False,
        hessian: bool = False,
        laplacian: bool = False,
        directions=None,
        mode: str = "auto",
        backend: str | None = None,
        *,
        hessian_diagonal: bool = False,
        divergence: bool = False,
        max_memory: float | None = None,
    ) -> Result:
        r"""Evaluate the network and the requested input derivatives.

        Parameters
        ----------
        x : array of shape (n, d)
            NumPy, CuPy, torch or any Array-API array, floating dtype. The
            computation runs in ``x``'s dtype and on its device; parameters
            are converted (and cached) to match.
        gradient, hessian, laplacian, hessian_diagonal : bool
            What to compute besides the value. The Laplacian and the
            diagonal alone never form the full Hessian.
        directions : array, optional
            ``V``. Forward mode: shape (d, k), derivatives along the columns
            (gradient ``Vᵀ∇f``, Hessian ``VᵀHV``, diagonal of ``VᵀHV``,
            Laplacian ``tr(VᵀHV) = tr(VVᵀH)``). Backward mode: shape (m, k),
            the outputs are contracted with ``V``. Same library as ``x`` (a
            NumPy array or nested list is also accepted and converted);
            another library raises ``TypeError``.
        mode : {"auto", "forward", "backward"}
            ``"auto"`` takes the route the cost model (:meth:`cost`) finds
            cheaper; with ``directions`` their first axis decides.
        backend : {None, "numpy", "torch", "cupy", "generic"}
            ``None`` infers the backend from ``x``. Forcing another library
            converts ``x`` to it and the results back (torch autograd does not
            cross such a conversion); ``"generic"`` keeps ``x``'s library but
            uses only Array-API standard functions.
        divergence : bool
            Trace of the Jacobian, shape (n,), for networks with d = m.
        max_memory : float, optional
            Byte budget for the call's working memory. Default: half the
            memory available on ``x``'s device. A call whose estimated peak
            exceeds it runs in batch chunks (results are identical); if one
            example alone exceeds it, :class:`MemoryBudgetError` is raised
            before anything is allocated.

        Returns
        -------
        Result
            ``value (n, m)``, ``gradient (n, d, m)``, ``hessian (n, d, d, m)``,
            ``laplacian (n, m)``, ``hessian_diagonal (n, d, m)``,
            ``divergence (n,)``; ``None`` where not requested.
        """
        if is_dask(x):  # one task per batch chunk, lazy results: hessquik_core/dask/_network.py
            return dask_call(**locals())
        ctx = resolve_call(
            self,
            x,
            directions=directions,
            mode=mode,
            backend=backend,
            gradient=gradient,
            hessian=hessian,
            laplacian=laplacian,
            hessian_diagonal=hessian_diagonal,
            divergence=divergence,
        )
        leaves = list(self._leaves())
        n = ctx.x.shape[0]
        # one estimate serves both the mode choice and the memory plan ("auto"
        # never has directions: they fix the mode in resolve_call)
        auto = ctx.mode == "auto"
        report = self._cost(ctx, leaves, n, modes=("forward", "backward") if auto else (ctx.mode,))
        if auto:
            ctx.mode = report.chosen if ctx.derivatives else "forward"
        route = report.routes[ctx.mode]
        chunk = n
        # small calls need not ask the OS how much memory is free
        if max_memory is not None or route.peak_bytes >= _SMALL_CALL:
            budget = _budget(max_memory, ctx)
            if route.peak_bytes > budget and not (n <= 1 and route.per_example_bytes <= budget):
                if route.per_example_bytes > budget:
                    raise MemoryBudgetError(
                        f"one example needs an estimated {_fmt_bytes(route.per_example_bytes)} in "
                        f"{ctx.mode} mode, more than the memory budget of {_fmt_bytes(budget)} "
                        f"(max_memory); request less (e.g. laplacian or hessian_diagonal instead of "
                        f"hessian), use directions, or raise max_memory"
                    )
                chunk = max(1, int(budget // route.per_example_bytes))
        chunk = min(chunk, _cache_block(ctx, leaves, route, n))
        if chunk >= n:
            return ctx.finish(_run(leaves, ctx))
        return ctx.finish(_chunked(leaves, ctx, n, chunk))

    def cost(
        self,
        n: int,
        *,
        gradient: bool = True,
        hessian: bool = False,
        laplacian: bool = False,
        hessian_diagonal: bool = False,
        num_directions: int | None = None,
        itemsize: int = 8,
        fused: bool = False,
    ):
        """Estimated flops and peak memory of forward and backward mode.

        ``mode="auto"`` takes the route with the smaller estimate; printing
        the returned :class:`~hessquik_core._cost.CostReport` shows why.
        ``fused=True`` scores the routes as for JAX arrays, whose element-wise
        chains XLA fuses (memory traffic weighs less, which favours forward
        mode for the full Hessian).

        >>> import hessquik_core as hq
        >>> print(hq.FullyConnectedNN([64, 32, 1], act="tanh", seed=0).cost(100, hessian=True).chosen)
        backward
        """
        return _estimate_routes(
            list(self._leaves()),
            int(n),
            d=self.in_features,
            m=self.out_features,
            hessian=hessian,
            laplacian=laplacian,
            hessian_diagonal=hessian_diagonal,
            k_fwd=num_directions,
            k_bwd=num_directions,
            itemsize=itemsize,
            fused=bool(fused),
        )

    def _cost(self, ctx, leaves, n, modes=("forward", "backward")):
        kf = ctx.V.shape[1] if ctx.V is not None and ctx.mode == "forward" else None
        kb = ctx.V.shape[1] if ctx.V is not None and ctx.mode == "backward" else None
        return _estimate_routes(
            leaves,
            n,
            d=ctx.d,
            m=ctx.m,
            hessian=ctx.hessian,
            laplacian=ctx.laplacian,
            hessian_diagonal=ctx.hessian_diagonal,
            k_fwd=kf,
            k_bwd=kb,
            itemsize=ctx.itemsize,
            modes=modes,
            fused=aac.is_jax_namespace(ctx.xp),
        )


def _estimate_routes(leaves, n, *, d, k_fwd, **request):
    """The cost model as the engine runs it: the forward route carries the
    packed triangle exactly when :func:`_packs` says so, for ``net.cost`` and
    for ``mode="auto"`` alike."""
    return estimate(leaves, n, d=d, k_fwd=k_fwd, packed=_packs(k_fwd if k_fwd is not None else d), **request)


#: calls estimated below this many bytes skip the free-memory query
_SMALL_CALL = 64 * 2**20

#: cache blocking (eager CPU backends): a call whose working set exceeds
#: ``_BLOCK_ABOVE`` and whose element-wise traffic is at least
#: ``_BLOCK_TRAFFIC`` times its output runs in batch blocks of about
#: ``_BLOCK_BYTES`` working set, at least ``_BLOCK_MIN`` examples each
_BLOCK_ABOVE = 64 * 2**20
_BLOCK_BYTES = 8 * 2**20
_BLOCK_MIN = 16
_BLOCK_TRAFFIC = 4.0


def _cache_block(ctx: CallContext, leaves, route, n: int) -> int:
    """Batch block size for cache blocking, or ``n`` for none.

    Without kernel fusion every element-wise pass of the chain rule streams
    its ``(n, ...)`` operands through memory, and every large temporary is
    fresh memory whose pages fault on first touch (on the benchmark
    machine 3.5 GB/s against 12.7 GB/s into touched memory). Blocks of a
    few MiB keep the temporaries in cache and let the allocator reuse
    them; results are written into preallocated arrays, so the answer is
    the same (blocks are whole examples). Not for GPUs (kernels want big
    batches), traced/immutable libraries (XLA fuses; concatenation would
    copy), or torch calls that autograd records. The output itself is
    written once either way, so calls dominated by their output (the full
    Hessian at large ``d`` in backward mode) are left alone.
    """
    if ctx.backend not in ("numpy", "torch") or n < 2 * _BLOCK_MIN or route.peak_bytes < _BLOCK_ABOVE:
        return n
    if ctx.backend == "torch" and (ctx.x.device.type != "cpu" or _records_autograd(ctx, leaves)):
        return n
    if route.bytes_moved < _BLOCK_TRAFFIC * _output_bytes(ctx, n):
        return n
    block = max(_BLOCK_MIN, int(_BLOCK_BYTES // max(route.per_example_bytes, 1.0)))
    return block if 2 * block <= n else n


def _records_autograd(ctx: CallContext, leaves) -> bool:
    import torch

    if not torch.is_grad_enabled():
        return False
    if ctx.x.requires_grad or (ctx.V is not None and ctx.V.requires_grad):
        return True
    return any(getattr(p, "requires_grad", False) for leaf in leaves for p in leaf.parameters())


def _output_bytes(ctx: CallContext, n: int) -> float:
    # derivatives along k tangents (forward) or of k output combinations (backward)
    d, m = (ctx.k, ctx.m) if ctx.mode == "forward" else (ctx.d, ctx.k)
    entries = ctx.m + (d * m if ctx.gradient or ctx.divergence else 0)
    entries += d * d * m if ctx.hessian else 0
    entries += d * m if ctx.hessian_diagonal else 0
    entries += m if ctx.laplacian else 0
    return float(n * entries * ctx.itemsize)


class MemoryBudgetError(MemoryError, ValueError):
    """A call cannot fit its memory budget even one example at a time."""


def _budget(max_memory, ctx) -> float:
    if max_memory is None:
        return 0.5 * available_memory(ctx.xp, ctx.device)
    from ._array import check_max_memory  # any real number type (numpy scalars included)

    return check_max_memory(max_memory)


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.1f} {unit}"
        b /= 1024
    raise AssertionError


_FIELDS = ("value", "gradient", "hessian", "laplacian", "hessian_diagonal", "divergence")


def _chunked(leaves, ctx: CallContext, n: int, chunk: int) -> Result:
    """Run the call on batch slices of ``chunk`` examples.

    Mutable libraries (NumPy, torch, CuPy) get each slice written into
    preallocated results, so the peak is the output plus one chunk's work;
    immutable ones (JAX, generic) concatenate at the end.
    """
    xp = ctx.xp
    first = _run(leaves, ctx.batch(0, chunk))
    if ctx.backend == "generic":
        parts = [first] + [_run(leaves, ctx.batch(i, min(i + chunk, n))) for i in range(chunk, n, chunk)]
        out = Result(value=None, mode=first.mode)
        for name in _FIELDS:
            if getattr(first, name) is not None:
                setattr(out, name, xp.concat([getattr(r, name) for r in parts], axis=0))
        return out
    out = Result(value=None, mode=first.mode)
    for name in _FIELDS:
        a = getattr(first, name)
        if a is not None:
            full = _empty_like_layout(a, n, xp, ctx.device)
            full[:chunk, ...] = a
            setattr(out, name, full)
    del first
    for i in range(chunk, n, chunk):
        part = _run(leaves, ctx.batch(i, min(i + chunk, n)))
        for name in _FIELDS:
            a = getattr(part, name)
            if a is not None:
                getattr(out, name)[i : i + a.shape[0], ...] = a
    return out


def _empty_like_layout(a, n: int, xp, device):
    """Uninitialised ``(n, *a.shape[1:])`` array laid out in memory like ``a``
    (a permuted view where ``a`` is one, e.g. the backward Hessian), so that
    writing each block is a straight copy and the result has the same
    strides as an unblocked call's."""
    strides = a.stride() if callable(getattr(a, "stride", None)) else getattr(a, "strides", None)
    shape = (n, *a.shape[1:])
    if strides is None or a.ndim < 2:
        return xp.empty(shape, dtype=a.dtype, device=device)
    # axis 0 outermost, the others by decreasing stride (ties: original order)
    order = [0] + sorted(range(1, a.ndim), key=lambda i: (-strides[i], i))
    buf = xp.empty(tuple(shape[i] for i in order), dtype=a.dtype, device=device)
    return xp.permute_dims(buf, tuple(order.index(i) for i in range(a.ndim)))


def _packs(k: int) -> bool:
    """Carry the forward Hessian as its upper triangle? Halves the dominant
    GEMM; below a few directions the gathers cost more than they save."""
    return k >= 4


@lru_cache(maxsize=64)
def _triangle(k: int):
    """Pairs ``i <= j`` of the packed layout, and for each full ``(i, j)`` the
    packed position that holds it (and the positions of the diagonal)."""
    iu, ju = np.triu_indices(k)
    pos = np.empty((k, k), dtype=np.int64)
    pos[iu, ju] = np.arange(iu.size)
    pos[ju, iu] = np.arange(iu.size)
    diag = pos[np.arange(k), np.arange(k)]
    return iu.astype(np.int64), ju.astype(np.int64), pos.reshape(-1), diag


def _run(leaves: list, ctx: CallContext) -> Result:
    xp, be = ctx.xp, ctx.be
    params = [leaf._eval_params(ctx.cache_key, be, xp, ctx.dtype, ctx.device) for leaf in leaves]
    u = ctx.x
    if not ctx.derivatives:
        for leaf, P in zip(leaves, params):
            u, _ = leaf._forward(u, P, 0, be, xp)
        return Result(value=u)
    order = 2 if ctx.second_order else 1
    if ctx.mode == "forward":
        res = _run_forward(leaves, params, ctx, u, order)
    else:
        res = _run_backward(leaves, params, ctx, u, order)
    if ctx.divergence:
        res.divergence = xp.sum(diagonal(res.gradient, xp), axis=-1)
    if not ctx.gradient:
        res.gradient = None
    return res


def _run_forward(leaves, params, ctx, u, order) -> Result:
    xp, be = ctx.xp, ctx.be
    k = ctx.k
    pairs = None
    if ctx.hessian and _packs(k):
        iu, ju, pos, diag = _triangle(k)
        pairs = (xp.asarray(iu, device=ctx.device), xp.asarray(ju, device=ctx.device))
    want = Want(
        hessian=ctx.hessian,
        diagonal=ctx.hessian_diagonal,
        laplacian=ctx.laplacian and not ctx.hessian,
        pairs=pairs,
    )
    G = ctx.seed_forward()  # (1, k, d): identity or Vᵀ, shared by the batch
    H = D = L = None
    for leaf, P in zip(leaves, params):
        u, cache = leaf._forward(u, P, order, be, xp)
        G, H, D, L = leaf._fwd(cache, P, G, H, D, L, want, be, xp)
    if ctx.hessian:
        n, m = u.shape
        if pairs is not None:
            if ctx.laplacian:
                L = xp.sum(xp.take(H, xp.asarray(diag, device=ctx.device), axis=1), axis=1)
            H = xp.reshape(xp.take(H, xp.asarray(pos, device=ctx.device), axis=1), (n, k, k, m))
        elif ctx.laplacian:
            eye = xp.eye(k, dtype=H.dtype, device=ctx.device)
            L = xp.sum(xp.sum(H * eye[None, :, :, None], axis=1), axis=1)
    return Result(value=u, gradient=G, hessian=H, laplacian=L, hessian_diagonal=D)


def _run_backward(leaves, params, ctx, u, order) -> Result:
    """Evaluate keeping each layer's local derivatives, then sweep back."""
    xp, be = ctx.xp, ctx.be
    caches = []
    for leaf, P in zip(leaves, params):
        u, cache = leaf._forward(u, P, order, be, xp)
        caches.append(cache)
    dl = ctx.seed_backward()  # (1, k, m): identity or Vᵀ
    Dl = None
    lap = diag = None
    for i in range(len(leaves) - 1, -1, -1):
        leaf, P, cache = leaves[i], params[i], caches[i]
        if i == 0 and ctx.second_order and not ctx.hessian:
            # only the trace / diagonal of the input Hessian is wanted:
            # never form the (n, k, d, d) array
            if ctx.laplacian:
                lap = leaf._bwd_first(cache, P, dl, Dl, "trace", be, xp)
            if ctx.hessian_diagonal:
                diag = xp.permute_dims(leaf._bwd_first(cache, P, dl, Dl, "diag", be, xp), (0, 2, 1))
            dl, _ = leaf._bwd(cache, P, dl, None, False, be, xp)
            Dl = None
            break
        dl, Dl = leaf._bwd(cache, P, dl, Dl, ctx.second_order, be, xp)
    n = ctx.x.shape[0]
    if dl.shape[0] != n:  # a network that ignores its input (all-linear quadratic layer, n = 0)
        dl = xp.broadcast_to(dl, (n, *dl.shape[1:]))
    grad = xp.permute_dims(dl, (0, 2, 1))
    hess = None
    if ctx.hessian:
        hess = xp.permute_dims(Dl, (0, 2, 3, 1))
        if ctx.laplacian or ctx.hessian_diagonal:
            dg = diagonal(Dl, xp)  # (n, k, d)
            lap = xp.sum(dg, axis=-1) if ctx.laplacian else None
            diag = xp.permute_dims(dg, (0, 2, 1)) if ctx.hessian_diagonal else None
    return Result(value=u, gradient=grad, hessian=hess, laplacian=lap, hessian_diagonal=diag)


class FullyConnectedNN(NN):
    """Stack of :class:`SingleLayer` s: ``widths = [d, w1, ..., m]``, one activation.

    Examples
    --------
    >>> import numpy as np, hessquik_core as hq
    >>> net = hq.FullyConnectedNN([3, 8, 2], act="tanh", seed=0)
    >>> net(np.zeros((5, 3)), gradient=True).gradient.shape
    (5, 3, 2)
    """

    def __init__(self, widths: Sequence[int], act="softplus", *, dtype=np.float64, seed=None) -> None:
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs at least two entries (input and output), got {widths}")
        rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
        super().__init__(
            *(
                SingleLayer(widths[i], widths[i + 1], act=act, dtype=dtype, seed=rng)
                for i in range(len(widths) - 1)
            )
        )


class ResnetNN(NN):
    """``depth`` residual layers :math:`u + h\\sigma(uK+b)` of constant ``width``."""

    def __init__(
        self, width: int, depth: int, h: float = 1.0, act="softplus", *, dtype=np.float64, seed=None
    ) -> None:
        depth = _check_int("depth", depth)
        rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
        super().__init__(*(ResnetLayer(width, h=h, act=act, dtype=dtype, seed=rng) for _ in range(depth)))


class ICNN(NN):
    """Input-convex network: ``widths = [None, w1, w2, ...]`` as in hessQuik.

    Layer ``i`` is ``ICNNLayer(input_dim, widths[i], widths[i+1])``; the
    output width is ``widths[-1] + input_dim``. Convexity in ``x`` holds
    for convex non-decreasing activations (softplus, quadratic on z ≥ 0, ...).
    """

    def __init__(
        self, input_dim: int, widths: Sequence, act="softplus", *, dtype=np.float64, seed=None
    ) -> None:
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError(f"widths needs at least two entries, e.g. [None, 16], got {widths}")
        rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
        super().__init__(
            *(
                ICNNLayer(input_dim, widths[i], widths[i + 1], act=act, dtype=dtype, seed=rng)
                for i in range(len(widths) - 1)
            )
        )
