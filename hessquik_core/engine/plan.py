"""The planner: mode choice, memory budget, chunking and cache blocking of one call."""

from __future__ import annotations

from itertools import chain

from .._array import CallContext, check_max_memory
from .._progress import progress_bar
from ..rules.contractions import diagonal
from . import forward, highdim
from .backward import run_backward
from .cost import estimate
from .forward import run_forward
from .result import FIELDS, Result


class MemoryBudgetError(MemoryError, ValueError):
    """A call cannot fit its memory budget even one example at a time."""


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


def call(leaves: list, ctx: CallContext, max_memory, progress: bool | None = None) -> Result:
    """Run a resolved call: settle the mode, plan the memory, run (in chunks).

    Everything that can refuse the call does so here, before any layer runs:
    a result that cannot be allocated at all, one example whose working
    memory exceeds the budget. ``progress`` shows one bar over the chunks
    (:func:`~hessquik_core._progress.progress_bar`)."""
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    n = ctx.x.shape[0]
    # one estimate serves both the mode choice and the memory plan ("auto"
    # never has directions: they fix the mode in resolve_call); a value-only
    # call is priced as the plain forward pass it is
    auto = ctx.mode == "auto"
    report = estimate_call(ctx, leaves, n, modes=("forward", "backward") if auto else (ctx.mode,))
    special = None
    if auto and ctx.derivatives:
        # a Laplacian or divergence at d above the first width: the sweeps of
        # engine/highdim.py, whose cost beyond the first layer is independent of d
        best = report.routes[report.chosen].score
        ctx.route, special = highdim.choose(ctx, leaves, n, best, ctx.be.training_step(leaves, ctx))
    if auto:
        ctx.mode = report.chosen if ctx.derivatives and special is None else "forward"
    route = report.routes[ctx.mode] if special is None else special
    result = _result_bytes(ctx, n)
    chunk = n
    # small calls need not ask the OS how much memory is free
    if max_memory is not None or route.peak_bytes >= _SMALL_CALL or result >= _SMALL_CALL:
        available = float(ctx.be.available_memory(ctx.device))
        # any real number type (numpy scalars included); NaN, bool and negatives refused
        checked = None if max_memory is None else check_max_memory(max_memory)
        budget = 0.5 * available if checked is None else checked
        if result >= _SMALL_CALL and result + min(route.per_example_bytes, route.peak_bytes) > available:
            # the result is allocated whole whatever the chunking: refuse now
            # rather than after the work (or with a raw allocator error)
            raise MemoryBudgetError(
                f"the result ({_result_fields(ctx)}) needs {_fmt_bytes(result)}, more than the "
                f"{_fmt_bytes(available)} of memory available on {ctx.device} (the memory budget "
                f"of the working memory is {_fmt_bytes(budget)}); request less: hessian_diagonal "
                f"or laplacian instead of hessian, directions (k columns instead of d), or a "
                f"smaller batch (n = {n})"
            )
        if route.peak_bytes > budget and not (n <= 1 and route.per_example_bytes <= budget):
            if route.per_example_bytes > budget:
                raise MemoryBudgetError(
                    f"one example needs an estimated {_fmt_bytes(route.per_example_bytes)} in "
                    f"{ctx.mode} mode, more than the memory budget of {_fmt_bytes(budget)} "
                    f"(max_memory); request less (e.g. laplacian or hessian_diagonal instead of "
                    f"hessian), use directions, or raise max_memory"
                )
            chunk = max(1, int(budget // route.per_example_bytes))
    # a value-only call is one pass with nothing carried: never blocked; nor are
    # the high-dimensional sweeps (GEMM-bound, with batch-independent products
    # that blocks would repeat)
    if ctx.derivatives and not ctx.route:
        chunk = min(chunk, _cache_block(ctx, leaves, route, n))
    if chunk >= n:
        return ctx.finish(_guarded(leaves, ctx))
    return ctx.finish(_chunked(leaves, ctx, n, chunk, progress))


def estimate_routes(leaves, n, *, d, k_fwd, **request):
    """The cost model as the engine runs it: the forward route carries the
    packed triangle exactly when the forward sweep does, for ``net.cost``
    and for ``mode="auto"`` alike."""
    return estimate(
        leaves, n, d=d, k_fwd=k_fwd, packed=forward._packs(k_fwd if k_fwd is not None else d), **request
    )


def estimate_call(ctx: CallContext, leaves, n, modes=("forward", "backward")):
    """Cost report of the routes ``modes`` for a resolved call."""
    kf = ctx.V.shape[1] if ctx.V is not None and ctx.mode == "forward" else None
    kb = ctx.V.shape[1] if ctx.V is not None and ctx.mode == "backward" else None
    return estimate_routes(
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
        fused=ctx.be.fuses,
        derivatives=ctx.derivatives,
        training=ctx.be.training_step(leaves, ctx),
    )


def _cache_block(ctx: CallContext, leaves, route, n: int) -> int:
    """Batch block size for cache blocking, or ``n`` for none.

    Without kernel fusion every element-wise pass of the chain rule streams
    its ``(n, ...)`` operands through memory, and every large temporary is
    fresh memory whose pages fault on first touch (on the benchmark
    machine 3.5 GB/s against 12.7 GB/s into touched memory). Blocks of a
    few MiB keep the temporaries in cache and let the allocator reuse
    them; results are written into preallocated arrays, so the answer is
    the same (blocks are whole examples). Only where the backend allows it
    (:meth:`~hessquik_core.backends.base.Backend.cache_blocking`: eager CPU
    libraries, not GPUs whose kernels want big batches, not traced or
    immutable libraries, not torch calls that autograd records). The output
    itself is written once either way, so calls dominated by their output
    (the full Hessian at large ``d`` in backward mode) are left alone.
    """
    if n < 2 * _BLOCK_MIN or route.peak_bytes < _BLOCK_ABOVE:
        return n
    others = chain((ctx.V,), (p for leaf in leaves for p in leaf.state_dict().values()))  # frozen too
    if not ctx.be.mutable or not ctx.be.cache_blocking(ctx.x, others):
        return n
    if route.bytes_moved < _BLOCK_TRAFFIC * _output_bytes(ctx, n):
        return n
    block = max(_BLOCK_MIN, int(_BLOCK_BYTES // max(route.per_example_bytes, 1.0)))
    return block if 2 * block <= n else n


def _output_bytes(ctx: CallContext, n: int) -> float:
    # derivatives along k tangents (forward) or of k output combinations (backward)
    d, m = (ctx.k, ctx.m) if ctx.mode == "forward" else (ctx.d, ctx.k)
    entries = ctx.m + (d * m if ctx.gradient or ctx.divergence else 0)
    entries += d * d * m if ctx.hessian else 0
    entries += d * m if ctx.hessian_diagonal else 0
    entries += m if ctx.laplacian else 0
    return float(n * entries * ctx.itemsize)


def _result_bytes(ctx: CallContext, n: int) -> float:
    """Bytes of what the call returns (only what was requested: the Jacobian
    a divergence is taken from is working memory, not result)."""
    d, m = (ctx.k, ctx.m) if ctx.mode == "forward" else (ctx.d, ctx.k)
    entries = ctx.m + (d * m if ctx.gradient else 0) + (1 if ctx.divergence else 0)
    entries += d * d * m if ctx.hessian else 0
    entries += d * m if ctx.hessian_diagonal else 0
    entries += m if ctx.laplacian else 0
    return float(n * entries * ctx.itemsize)


def _result_fields(ctx: CallContext) -> str:
    n = ctx.x.shape[0]
    d, m = (ctx.k, ctx.m) if ctx.mode == "forward" else (ctx.d, ctx.k)
    shapes = {
        "gradient": (n, d, m),
        "hessian": (n, d, d, m),
        "hessian_diagonal": (n, d, m),
        "laplacian": (n, m),
        "divergence": (n,),
    }
    parts = [f"value {(n, ctx.m)}"]
    parts += [f"{name} {shape}" for name, shape in shapes.items() if getattr(ctx, name)]
    return ", ".join(parts)


def _guarded(leaves: list, ctx: CallContext) -> Result:
    """:func:`_run`, with the allocator's failures (NumPy's ``MemoryError``,
    torch's ``OutOfMemoryError`` / "not enough memory" ``RuntimeError``)
    reported as :class:`MemoryBudgetError`: the estimate was too low for
    this machine's allocator, and the remedy is the same."""
    try:
        return _run(leaves, ctx)
    except MemoryBudgetError:
        raise
    except (MemoryError, RuntimeError) as err:
        text = str(err).lower()
        if isinstance(err, RuntimeError) and "out of memory" not in text and "not enough memory" not in text:
            raise
        raise MemoryBudgetError(
            f"the allocator failed on a batch of {ctx.x.shape[0]} examples in {ctx.mode} mode "
            f"({type(err).__name__}: {str(err)[:200]}); pass a smaller max_memory (smaller chunks), "
            f"request less (laplacian or hessian_diagonal instead of hessian, directions), or use "
            f"a smaller batch"
        ) from err


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.1f} {unit}"
        b /= 1024
    raise AssertionError


def _chunked(leaves, ctx: CallContext, n: int, chunk: int, progress: bool | None = None) -> Result:
    """Run the call on batch slices of ``chunk`` examples.

    Every library whose arrays can be written (NumPy, torch, CuPy, and the
    generic backend on those or on array-api-strict) gets each slice
    written into preallocated results, so the peak is the output plus one
    chunk's work. JAX arrays are immutable: their chunks are concatenated
    at the end (the peak holds the output twice; under ``jax.jit`` XLA
    plans that buffer itself).
    """
    xp = ctx.xp
    with progress_bar(progress, total=-(-n // chunk), desc="hessquik chunks", unit="chunk") as bar:
        first = _guarded(leaves, ctx.batch(0, chunk))
        bar.update()
        if not _writable(ctx, first.value):
            parts = [first]
            for i in range(chunk, n, chunk):
                parts.append(_guarded(leaves, ctx.batch(i, min(i + chunk, n))))
                bar.update()
            out = Result(value=None, mode=first.mode)
            for name in FIELDS:
                if getattr(first, name) is not None:
                    setattr(out, name, xp.concat([getattr(r, name) for r in parts], axis=0))
            return out
        out = Result(value=None, mode=first.mode)
        for name in FIELDS:
            a = getattr(first, name)
            if a is not None:
                full = _empty_like_layout(a, n, xp, ctx.device)
                full[:chunk, ...] = a
                setattr(out, name, full)
        del first
        for i in range(chunk, n, chunk):
            part = _guarded(leaves, ctx.batch(i, min(i + chunk, n)))
            for name in FIELDS:
                a = getattr(part, name)
                if a is not None:
                    getattr(out, name)[i : i + a.shape[0], ...] = a
            bar.update()
    return out


def _writable(ctx: CallContext, a) -> bool:
    """Can results be assembled in place? The backend's capability (the generic
    backend: any library but JAX, whose arrays are immutable)."""
    return ctx.be.writable(a)


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


def _run(leaves: list, ctx: CallContext) -> Result:
    """One unchunked call: parameters in the call's library, then the sweep."""
    xp, ops = ctx.xp, ctx.be
    # the cache key, dtype and device once per call, not once per layer (a few str() calls each)
    key, dtype, device = ctx.cache_key, ctx.dtype, ctx.device
    params = [leaf._eval_params(key, ops, xp, dtype, device) for leaf in leaves]
    u = ctx.x
    if not ctx.derivatives:
        for leaf, P in zip(leaves, params):
            u, _ = leaf.evaluate(u, P, 0, ops)
        return Result(value=u)
    if ctx.route:
        return highdim.run(leaves, params, ctx)
    order = 2 if ctx.second_order else 1
    if ctx.mode == "forward":
        res = run_forward(leaves, params, ctx, u, order)
    else:
        res = run_backward(leaves, params, ctx, u, order)
    if ctx.divergence:
        res.divergence = xp.sum(diagonal(res.gradient, xp), axis=-1)
    if not ctx.gradient:
        res.gradient = None
    return res
