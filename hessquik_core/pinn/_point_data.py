"""Per-point data of a residual term (``Residual(..., data=)``): checked, and bound to ``fn``.

A term with data calls ``fn(q, x, data)``; the problem calls every term as
``fn(q, x)``, so the in-memory term binds its data (:func:`bind_data`), while a
term on Dask points keeps ``fn`` and its data apart: each chunk's task binds
the chunk's rows (``hessquik_core.dask``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from .._array import as_plain_array, namespace_of

__all__ = ["bind_data"]


def _with_data(fn: Callable[..., Any], data: Any, q: Any, x: Any) -> Any:
    """``fn(q, x, data)`` as the problem calls a residual, ``fn(q, x)``."""
    return fn(q, x, data)


def bind_data(fn: Callable[..., Any], data: Any, points: Any, xp: Any, chunked: bool) -> tuple[Any, Any]:
    """``(fn of (q, x), data)``: ``data`` checked (one row per point, the points' library) and bound.

    ``chunked``: the points are held in chunks, whose plugin checked ``data``
    already; ``fn`` is returned as it is (the chunks bind their rows).
    """
    if data is None or chunked:
        return fn, data
    data = as_plain_array(data, "data")
    if namespace_of(data, "data").__name__ != xp.__name__:
        raise TypeError(f"data must be an array of the points' library, got {type(data).__module__}")
    if data.ndim < 1 or data.shape[0] != points.shape[0]:
        raise ValueError(
            f"data must have one row per point, shape ({points.shape[0]}, ...), got {tuple(data.shape)}"
        )
    return partial(_with_data, fn, data), data
