"""``net(x_dask, ...)``: one task per batch chunk, lazy results."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._dask_hook import is_dask
from ..backends import owner_of, to_numpy
from ._graph import (
    Shared,
    check_chunk,
    check_chunked,
    da,
    graph,
    library,
    meta_like,
    snapshot,
    to_library,
    token,
)

_FIELDS = ("value", "gradient", "hessian", "laplacian", "hessian_diagonal", "divergence")


def _eval_chunk(xb, shared: Shared, index: int):
    """The network call on one chunk, in the chunk's own library; a tuple of the requested fields."""
    check_chunk(xb, shared.lib, shared.dtype, "x", index)
    kw = dict(shared.extra["kwargs"])
    kw["directions"] = to_library(shared.extra["directions"], shared.lib)
    res = shared.net(xb, **kw)
    return tuple(getattr(res, f) for f in shared.extra["fields"])


def call(
    net,
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
    progress: bool | None = None,
):
    """``net(x, ...)`` for a Dask array ``x`` of shape (n, d) chunked along the batch axis.

    Each chunk is evaluated by one task with the ordinary call on the
    chunk's own array (NumPy or CuPy), so each task runs the full
    chain-rule engine on its examples; the results are lazy Dask arrays
    chunked like ``x`` along axis 0 (one chunk along every other axis).
    Every output of one call comes from the same chunk tasks: compute them
    together (``dask.compute(res.value, res.laplacian)``) and each chunk is
    evaluated once. Arguments as for :meth:`hessquik_core.NN.__call__`;
    ``directions`` must be a NumPy (or CuPy) array, it travels to every
    worker whole. ``max_memory`` applies to each chunk's call; ``progress=True``
    is refused (a lazy result has nothing to report until computed).
    """
    from ..networks import Result

    if progress:
        raise ValueError(
            "progress=True: a lazy dask result does no work until it is computed; watch it with "
            "dask.diagnostics.ProgressBar() or the distributed dashboard instead"
        )
    d = net.in_features
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape (n, {d}), got shape {tuple(x.shape)}")
    lib = check_chunked(x, "x")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must have a real floating dtype (float32 or float64), got {x.dtype}")
    if x.shape[0] < 1:
        raise ValueError("x must hold at least one example")
    if directions is not None:
        if is_dask(directions):
            raise TypeError(
                "directions must be a NumPy or CuPy array (sent whole to every worker), got a dask array; "
                "pass directions.compute()"
            )
        host = isinstance(directions, (list, tuple)) or owner_of(directions).interchange
        if not host and library(directions) != lib:
            raise TypeError(
                f"directions must be a NumPy array (or of x's chunk library, {lib}), got "
                f"{type(directions).__module__}.{type(directions).__name__}"
            )
        directions = np.array(directions if host else to_numpy(directions), dtype=x.dtype)
    kwargs = dict(
        gradient=gradient,
        hessian=hessian,
        laplacian=laplacian,
        mode=mode,
        backend=backend,
        hessian_diagonal=hessian_diagonal,
        divergence=divergence,
        max_memory=max_memory,
    )
    snap = snapshot(net)
    derivs = gradient or hessian or laplacian or hessian_diagonal or divergence
    if mode == "auto" and directions is None and derivs:
        # one route for every chunk (the planner's choice for the largest), so that
        # Result.mode describes the whole result
        report = snap.cost(
            max(x.chunks[0]),
            gradient=gradient,
            hessian=hessian,
            laplacian=laplacian,
            hessian_diagonal=hessian_diagonal,
            divergence=divergence,
            itemsize=np.dtype(x.dtype).itemsize,
        )
        # a high-dimensional route ("forward/gram-laplacian", "forward/divergence")
        # is taken only in auto mode; it is chosen by the shapes, so every chunk's
        # auto call takes it again (and its Result.mode is "forward" throughout)
        kwargs["mode"] = "auto" if "/" in report.route else report.chosen
    # a one-example NumPy call on the client checks the arguments (errors are
    # raised here, before anything is computed) and gives the output layout
    probe_kw = dict(kwargs, max_memory=None)
    probe = snap(np.zeros((1, d), dtype=x.dtype), directions=directions, **probe_kw)
    fields = [f for f in _FIELDS if getattr(probe, f) is not None]
    shared = Shared(
        snap, lib, str(np.dtype(x.dtype)), {"kwargs": kwargs, "directions": directions, "fields": fields}
    )
    base = token("call")
    shared_key = base + "-net"
    tasks: dict[Any, Any] = {shared_key: shared}  # graph keys: names and (name, chunk) pairs
    for i in range(len(x.chunks[0])):
        tasks[(base, i)] = (_eval_chunk, (x.name, i, 0), shared_key, i)
    out = {}
    for j, f in enumerate(fields):
        a = getattr(probe, f)
        trail = tuple(int(s) for s in a.shape[1:])
        name = f"{base}-{f}"
        zeros = (0,) * len(trail)
        layer = {(name, i, *zeros): (_pick, (base, i), j) for i in range(len(x.chunks[0]))}
        hlg = graph(name, layer, [x], extra_layers={base: (tasks, {x.name})})
        out[f] = da.Array(
            hlg,
            name,
            chunks=(x.chunks[0], *((s,) for s in trail)),
            meta=meta_like(lib, a.ndim, a.dtype),
        )
    return Result(mode=probe.mode, **{f: out.get(f) for f in _FIELDS})


def _pick(parts, j):
    return parts[j]
