"""Caller-provided result buffers: ``net(x, ..., out=...)`` and ``net.empty_result``.

A call with ``out=`` writes every requested quantity into the caller's
arrays, batch chunk by batch chunk, and returns the same :class:`Result`
object, so a loop of calls reuses one allocation (memory already touched:
no page faults on a fresh result, no allocator round trip). This module
checks the buffers against the request before any work and allocates them
(:func:`empty_result`); the planner (:mod:`.plan`) does the writing.
"""

from __future__ import annotations

import array_api_compat as aac

from .._array import CallContext, namespace_of
from ..backends import owner_of
from .result import FIELDS, Result


def result_shapes(ctx: CallContext, n: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the requested quantities of a resolved call on ``n`` examples.

    Derivatives are taken along ``k`` tangents in forward mode (``d`` without
    directions) and of ``k`` output combinations in backward mode (``m``
    without directions); without directions both give the same shapes."""
    d, m = (ctx.k, ctx.m) if ctx.mode == "forward" else (ctx.d, ctx.k)
    shapes = {
        "value": (n, ctx.m),
        "gradient": (n, d, m),
        "hessian": (n, d, d, m),
        "laplacian": (n, m),
        "hessian_diagonal": (n, d, m),
        "divergence": (n,),
    }
    return {name: shape for name, shape in shapes.items() if name == "value" or getattr(ctx, name)}


def _layout(ctx: CallContext, name: str) -> tuple[int, ...] | None:
    """Axis order, outermost first, in which the route produces ``name`` (``None``:
    row-major). The backward sweep carries ``(n, k, d[, d])`` and returns its
    permuted views ``(n, d[, d], k)``; a buffer laid out the same way takes
    each chunk as a straight copy."""
    if ctx.mode != "backward":
        return None
    return {"gradient": (0, 2, 1), "hessian_diagonal": (0, 2, 1), "hessian": (0, 3, 1, 2)}.get(name)


def empty_result(ctx: CallContext, single: bool) -> Result:
    """Uninitialised buffers for the call ``ctx`` (mode settled): the caller's
    library, dtype and device, the route's memory layout, without the batch
    axis for a single point."""
    x = ctx.orig_x
    xp = namespace_of(x)
    n = x.shape[0]
    res = Result(value=None)
    for name, shape in result_shapes(ctx, n).items():
        order = _layout(ctx, name)
        if order is None:
            a = xp.empty(shape, dtype=x.dtype, device=aac.device(x))
        else:
            buf = xp.empty(tuple(shape[i] for i in order), dtype=x.dtype, device=aac.device(x))
            a = xp.permute_dims(buf, tuple(order.index(i) for i in range(len(shape))))
        setattr(res, name, a[0, ...] if single else a)
    return res


def _describe(a) -> str:
    return f"{type(a).__module__}.{type(a).__name__}"


def _writable(a) -> str | None:
    """Why ``a`` cannot be written in place, or ``None``."""
    if not owner_of(a).writable(a):
        return f"{_describe(a)} arrays are immutable"
    flags = getattr(a, "flags", None)
    if flags is not None and hasattr(flags, "writeable") and not flags.writeable:
        return "it is read-only (flags.writeable is False)"
    if owner_of(a).requires_grad(a):
        return "it requires grad (autograd forbids writing into it)"
    return None


def _span(a) -> tuple[int, int] | None:
    """``[start, stop)`` of the memory ``a`` may touch, for the aliasing check
    (the backend's :meth:`~hessquik_core.backends.base.Backend.memory_span`);
    ``None`` where the library does not say."""
    return owner_of(a).memory_span(a)


def _overlap(a, b) -> bool:
    sa, sb = _span(a), _span(b)
    return sa is not None and sb is not None and sa[0] < sb[1] and sb[0] < sa[1]


def check_out(out, ctx: CallContext, single: bool, params=()) -> Result:
    """Check ``out`` against the resolved call ``ctx`` (mode settled) before any work.

    Returns a :class:`Result` of batch views ``(n, ...)`` of ``out``'s arrays
    (a single point's buffers get a batch axis of one), to be written by the
    planner. Raises ``TypeError`` for the wrong kind of object, library or
    dtype and for immutable arrays, ``ValueError`` for missing or extra
    quantities, shapes, devices, read-only arrays, buffers that share
    memory with ``x``, ``directions`` or each other, and calls that torch
    autograd records (``params``: the network's parameters)."""
    if not isinstance(out, Result):
        raise TypeError(
            f"out must be a hessquik_core.Result (from net.empty_result(x, ...) or a previous "
            f"call with the same request), got {type(out).__name__}"
        )
    x = ctx.orig_x
    xp = namespace_of(x)
    n = x.shape[0]
    want = result_shapes(ctx, n)
    asked = ", ".join(f"{k}=True" for k in want if k != "value") or "the value only"
    for name in FIELDS:
        given = getattr(out, name)
        if name in want and given is None:
            raise ValueError(
                f"out.{name} is None, but this call computes {name} ({asked}); pass "
                f"net.empty_result(x, ...) with the same request"
            )
        if name not in want and given is not None:
            raise ValueError(
                f"out holds {name}, which this call does not compute ({asked}); pass a Result "
                f"holding exactly the requested quantities (net.empty_result(x, ...) with the "
                f"same request)"
            )
    views = Result(value=None)
    for name, shape in want.items():
        a = getattr(out, name)
        expect = shape[1:] if single else shape
        try:
            same_library = namespace_of(a, f"out.{name}") is xp
        except TypeError:
            same_library = False
        if not same_library:
            raise TypeError(
                f"out.{name} must be an array of x's library ({_describe(x)}), got {_describe(a)}"
            )
        if not isinstance(a, type(x)) and not isinstance(x, type(a)):
            raise TypeError(f"out.{name} must be a {_describe(x)} like x, got {_describe(a)}")
        if str(a.dtype) != str(x.dtype):
            raise TypeError(f"out.{name} must have x's dtype {x.dtype}, got {a.dtype}")
        if tuple(a.shape) != expect:
            raise ValueError(f"out.{name} must have shape {expect}, got {tuple(a.shape)}")
        if str(aac.device(a)) != str(aac.device(x)):
            raise ValueError(f"out.{name} must be on x's device {aac.device(x)}, got {aac.device(a)}")
        why = _writable(a)
        if why is not None:
            err = TypeError if not owner_of(a).writable(a) else ValueError
            raise err(
                f"out.{name} cannot be written in place: {why}; out= needs writable arrays of a "
                f"mutable library (NumPy, torch, CuPy, array-api-strict); drop out= here"
            )
        setattr(views, name, xp.expand_dims(a, axis=0) if single else a)
    if owner_of(x).records_autograd((x, ctx.V, *params)):
        # the results would be nodes of the graph, overwritten by the next call
        raise ValueError(
            "out= cannot be used while torch autograd records the call (x, directions or "
            "the parameters require grad): the graph needs its own results; drop out= or "
            "evaluate under torch.no_grad()"
        )
    others = [("x", x)] + ([] if ctx.V is None else [("directions", ctx.V)])
    names = list(want)
    for i, name in enumerate(names):
        a = getattr(out, name)
        for label, b in others + [(f"out.{o}", getattr(out, o)) for o in names[:i]]:
            if _overlap(a, b):
                raise ValueError(
                    f"out.{name} shares memory with {label}: the call would overwrite what it "
                    f"reads; pass separate buffers"
                )
    return views
