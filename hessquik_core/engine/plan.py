"""The planner: mode choice, memory budget, chunking and cache blocking of one call."""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import chain

from .._array import CallContext, check_max_memory
from .._progress import progress_bar
from . import forward
from .backward import run_backward
from .cost import CostReport, RouteCost, estimate
from .forward import run_forward
from .out import check_out
from .out import empty_result as _empty_result
from .result import FIELDS, Result
from .routes import analytic_step
from .routes.base import Route
from .routes.classic import ClassicRoute
from .routes.highdim import DIVERGENCE, GRAM_LAPLACIAN
from .routes.higher import BIHARMONIC, TAYLOR
from .routes.value import VALUE as VALUE_ROUTE


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
#: blocks of a call writing into ``out=`` buffers: below glibc's largest
#: mmap threshold (32 MiB), so each block's arrays come from reused heap
_OUT_BLOCK_BYTES = 24 * 2**20


#: the name of the plain forward pass of a value-only call (nothing carried)
VALUE = "value"

#: "not given: ask" (``None`` is an answer: an evaluation, not a training step)
_ASK = object()


def route_name(ctx: CallContext) -> str:
    """The name of the route a settled call runs: ``"value"`` (value only),
    ``"forward"`` / ``"backward"`` (the classic sweeps), or the mode and a sweep
    of :mod:`~hessquik_core.engine.highdim` (``"forward/gram-laplacian"``,
    ``"forward/divergence"``). One source of truth for ``net.cost()``'s report."""
    if not ctx.derivatives:
        return VALUE
    return f"{ctx.mode}/{ctx.route}" if ctx.route else ctx.mode


@dataclass(frozen=True)
class Plan:
    """What the planner decided for one call, before any layer runs (immutable: the
    one place a call is decided; nothing downstream decides again)."""

    #: :func:`route_name` of the settled call
    route: str
    #: the estimate of that route (whole batch)
    cost: RouteCost
    #: the classic routes' report the mode was settled by
    report: CostReport
    n: int
    #: examples per chunk (``>= n``: one unchunked call)
    chunk: int
    #: bytes of the result (0 with ``out=``: already allocated)
    result_bytes: float
    #: the settled call: the resolved call with its mode, route and training answer fixed
    call: CallContext
    #: the training-step answer (``None``: an evaluation; ``"analytic"`` / ``"taped"``)
    training: str | None = None
    #: free memory and working-memory budget, where the planner asked (large or budgeted calls)
    available: float | None = None
    budget: float | None = None
    #: the chunk is a cache block (not the memory budget's)
    blocked: bool = False
    #: the :class:`MemoryBudgetError` message of a refused call
    refusal: str | None = None


def plan(leaves: list, ctx: CallContext, max_memory, into: bool = False, training=_ASK) -> Plan:
    """Settle the route of ``ctx`` and plan its memory, raising nothing: a call
    the planner refuses has :attr:`Plan.refusal` set. ``into``: results go into
    ``out=`` buffers (the result is not allocated; cache blocks fit the heap).
    ``training``: the training-step answer
    (:func:`~hessquik_core.engine.routes.analytic_step.training_kind`) where the
    caller prices one (``net.cost(..., training=True)``); asked here otherwise."""
    n = ctx.x.shape[0]
    report, route, ctx = _settle(leaves, ctx, n, training)
    # with out= the result is already allocated: only the working memory is planned
    result = _result_bytes(ctx, n) if not into else 0.0
    fixed = dict(route=route_name(ctx), cost=route, report=report, n=n, result_bytes=result)
    fixed.update(training=ctx.training, call=ctx)
    chunk = n
    available = budget = None
    # small calls need not ask the OS how much memory is free
    if max_memory is not None or route.peak_bytes >= _SMALL_CALL or result >= _SMALL_CALL:
        available = float(ctx.be.available_memory(ctx.device))
        # any real number type (numpy scalars included); NaN, bool and negatives refused
        checked = None if max_memory is None else check_max_memory(max_memory)
        budget = 0.5 * available if checked is None else checked
        if result >= _SMALL_CALL and result + min(route.per_example_bytes, route.peak_bytes) > available:
            # the result is allocated whole whatever the chunking: refuse now
            # rather than after the work (or with a raw allocator error)
            refusal = (
                f"the result ({_result_fields(ctx)}) needs {_fmt_bytes(result)}, more than the "
                f"{_fmt_bytes(available)} of memory available on {ctx.device} (the memory budget "
                f"of the working memory is {_fmt_bytes(budget)}); request less: hessian_diagonal "
                f"or laplacian instead of hessian, directions (k columns instead of d), a "
                f"smaller batch (n = {n}), or out= buffers you allocate yourself (e.g. "
                f"numpy.lib.format.open_memmap on disk; the call then writes them chunk by chunk)"
            )
            return Plan(**fixed, chunk=n, available=available, budget=budget, refusal=refusal)
        if route.peak_bytes > budget and not (n <= 1 and route.per_example_bytes <= budget):
            if route.per_example_bytes > budget:
                refusal = (
                    f"one example needs an estimated {_fmt_bytes(route.per_example_bytes)} in "
                    f"{ctx.mode} mode, more than the memory budget of {_fmt_bytes(budget)} "
                    f"(max_memory); request less (e.g. laplacian or hessian_diagonal instead of "
                    f"hessian), use directions, or raise max_memory"
                )
                return Plan(**fixed, chunk=n, available=available, budget=budget, refusal=refusal)
            chunk = max(1, int(budget // route.per_example_bytes))
    # a value-only call is one pass with nothing carried: never blocked; nor are
    # the high-dimensional sweeps (GEMM-bound, with batch-independent products
    # that blocks would repeat)
    blocked = False
    if ctx.derivatives and not ctx.route:
        block = _cache_block(ctx, leaves, route, n, into)
        blocked = block < chunk
        chunk = min(chunk, block)
    return Plan(**fixed, chunk=chunk, available=available, budget=budget, blocked=blocked)


def call(
    leaves: list, ctx: CallContext, max_memory, progress: bool | None = None, out=None, single: bool = False
) -> Result:
    """Run a resolved call: settle the mode, plan the memory, run (in chunks).

    Everything that can refuse the call does so here, before any layer runs:
    a result that cannot be allocated at all, one example whose working
    memory exceeds the budget (:func:`plan`), ``out`` buffers that do not fit
    the request (:func:`~hessquik_core.engine.out.check_out`). ``progress``
    shows one bar over the chunks (:func:`~hessquik_core._progress.progress_bar`).
    With ``out`` (for a single point ``(d,)``: ``single``) every chunk is
    written into the caller's arrays and ``out`` itself is returned."""
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    n = ctx.x.shape[0]
    p = plan(leaves, ctx, max_memory, out is not None)
    ctx = p.call  # the settled call: every step below reads it, none changes it
    # out= is checked against the settled route before any memory refusal
    into = None if out is None else check_out(out, ctx, single, _parameters(leaves))
    if p.refusal is not None:
        raise MemoryBudgetError(p.refusal)
    chunk = p.chunk
    if into is not None:
        _chunked(leaves, ctx, n, min(chunk, n), progress, into)
        out.mode = ctx.mode
        return out
    if chunk >= n:
        return ctx.finish(_guarded(leaves, ctx))
    return ctx.finish(_chunked(leaves, ctx, n, chunk, progress))


def _sweep_forward(*args):
    # looked up at call time: the sweep functions are this module's names
    return run_forward(*args)


def _sweep_backward(*args):
    return run_backward(*args)


#: every route the planner considers, in the order ties are broken (the first wins)
ROUTES: tuple[Route, ...] = (
    VALUE_ROUTE,
    ClassicRoute("forward", _sweep_forward),
    ClassicRoute("backward", _sweep_backward),
    GRAM_LAPLACIAN,
    DIVERGENCE,
    BIHARMONIC,
    TAYLOR,
)
_BY_NAME = {r.name: r for r in ROUTES}


def route_of(ctx: CallContext) -> Route:
    """The route a settled call runs (its :func:`route_name`)."""
    return _BY_NAME[route_name(ctx)]


def _settle(leaves: list, ctx: CallContext, n: int, training=_ASK):
    """Choose the route of the resolved call ``ctx``: ``(report, cost, settled)``, the
    classic routes' report, the estimate of the chosen route and the settled call
    (a new :class:`CallContext` with ``mode``, ``route`` and ``training`` fixed).

    Every route of :data:`ROUTES` that applies is priced; a preferred one wins,
    else the lowest score (ties: the first listed). One estimate of the classic
    routes serves the choice and the memory plan ("auto" never has directions:
    they fix the mode in resolve_call); a value-only call is priced as the plain
    forward pass it is."""
    # is the call a recorded training step? asked once: every route is priced by it,
    # and the forward sweep follows it
    if training is _ASK:
        training = analytic_step.training_kind(leaves, ctx)
    modes = ("forward", "backward") if ctx.mode == "auto" else (ctx.mode,)
    report = estimate_call(ctx, leaves, n, modes=modes, training=training)
    best: tuple[Route, RouteCost] | None = None
    for r in ROUTES:
        if not r.applies(ctx, leaves):
            continue
        c = r.cost(ctx, leaves, n, report, training)
        if c is None:
            continue
        if r.preferred:
            best = (r, c)
            break
        if best is None or c.score < best[1].score:
            best = (r, c)
    assert best is not None, "the classic routes apply to every request"
    route, cost = best
    settled = replace(ctx, mode=route.mode(ctx), route=route.sweep, training=training)
    return report, cost, settled


def empty_result(leaves: list, ctx: CallContext, single: bool = False) -> Result:
    """Buffers for ``out=`` of the resolved call ``ctx``, in the layout of the
    route the call will take (:func:`~hessquik_core.engine.out.empty_result`)."""
    return _empty_result(_settle(leaves, ctx, ctx.x.shape[0])[2], single)


def _parameters(leaves):
    """Every array the leaves compute with, frozen ones (``state_dict``) included."""
    return [p for leaf in leaves for p in leaf.state_dict().values()]


def estimate_routes(leaves, n, *, d, k_fwd, **request):
    """The cost model as the engine runs it: the forward route carries the
    packed triangle exactly when the forward sweep does, for ``net.cost``
    and for ``mode="auto"`` alike."""
    return estimate(
        leaves, n, d=d, k_fwd=k_fwd, packed=forward._packs(k_fwd if k_fwd is not None else d), **request
    )


def estimate_call(ctx: CallContext, leaves, n, modes=("forward", "backward"), training=_ASK):
    """Cost report of the routes ``modes`` for a resolved call (``training``: the
    answer of :func:`~hessquik_core.engine.routes.analytic_step.training_kind`,
    asked here when not given)."""
    if training is _ASK:
        training = analytic_step.training_kind(leaves, ctx)
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
        training=training,
    )


def _cache_block(ctx: CallContext, leaves, route, n: int, into: bool = False) -> int:
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
    (the full Hessian at large ``d`` in backward mode) are left alone —
    unless the output goes ``into`` the caller's ``out=`` buffers: then it is
    memory already touched, and blocks of ``_OUT_BLOCK_BYTES`` keep each
    block's fresh result in reused allocator memory instead of faulting in
    a whole new result (benchmarks/results/out_buffer.md).
    """
    if n < 2 * _BLOCK_MIN or route.peak_bytes < (2 * _OUT_BLOCK_BYTES if into else _BLOCK_ABOVE):
        return n
    others = chain((ctx.V,), _parameters(leaves))
    if not ctx.be.mutable or not ctx.be.cache_blocking(ctx.x, others):
        return n
    if into:
        block = max(_BLOCK_MIN, int(_OUT_BLOCK_BYTES // max(route.per_example_bytes, 1.0)))
        return block if 2 * block <= n else n
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
    entries += ctx.m if ctx.biharmonic else 0
    entries += ctx.k * ctx.m * (int(ctx.third_derivative) + int(ctx.fourth_derivative))
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
        "biharmonic": (n, ctx.m),
        "third_derivative": (n, ctx.k, ctx.m),
        "fourth_derivative": (n, ctx.k, ctx.m),
    }
    parts = [f"value {(n, ctx.m)}"]
    parts += [f"{name} {shape}" for name, shape in shapes.items() if getattr(ctx, name)]
    return ", ".join(parts)


def _guarded(leaves: list, ctx: CallContext) -> Result:
    """:func:`_run`, with the allocator's failures (the backend's
    :meth:`~hessquik_core.backends.base.Backend.allocator_failure`: ``MemoryError``,
    torch's out-of-memory errors) reported as :class:`MemoryBudgetError`: the
    estimate was too low for this machine's allocator, and the remedy is the same."""
    try:
        return _run(leaves, ctx)
    except MemoryBudgetError:
        raise
    except Exception as err:
        if not ctx.be.allocator_failure(err):
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


def _chunked(leaves, ctx: CallContext, n: int, chunk: int, progress: bool | None = None, into=None):
    """Run the call on batch slices of ``chunk`` examples, each written into
    its rows of the result: never a concatenation of all chunks, so the peak
    is the result plus one chunk's work on every backend.

    The result is ``into`` (the caller's ``out=`` buffers, in the caller's
    library: a call run in another library converts each chunk on the way)
    or arrays allocated here after the first chunk, in its layout. Mutable
    libraries (NumPy, torch, CuPy, array-api-strict) are written in place;
    JAX arrays through :meth:`~hessquik_core.backends.base.Backend.set_rows`
    (a donated ``dynamic_update_slice``: XLA reuses the buffer).
    """
    xp = ctx.xp
    res = into
    with progress_bar(progress, total=-(-n // chunk), desc="hessquik chunks", unit="chunk") as bar:
        for i in range(0, n, chunk):
            sub = ctx.batch(i, min(i + chunk, n))
            part = _guarded(leaves, sub)
            if into is not None and ctx.native is not None:
                part = sub.finish(part)  # the call runs in another library: to the caller's
            if res is None:
                res = Result(value=None)
                for name in FIELDS:
                    a = getattr(part, name)
                    if a is not None:
                        setattr(res, name, _empty_like_layout(a, n, xp, ctx.device))
            for name in FIELDS:
                a = getattr(part, name)
                if a is not None:
                    if into is not None:
                        getattr(res, name)[i : i + a.shape[0], ...] = a  # the caller's writable array
                    else:
                        setattr(res, name, ctx.be.set_rows(getattr(res, name), i, a))
            del part
            bar.update()
    return res


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
    """One unchunked call of the settled ``ctx``: parameters in the call's library,
    then its route."""
    # the cache key, dtype and device once per call, not once per layer (a few str() calls each)
    key, dtype, device = ctx.cache_parts()
    params = [leaf._eval_params(key, ctx.be, ctx.xp, dtype, device) for leaf in leaves]
    return route_of(ctx).run(leaves, params, ctx)
