"""Detection of Dask arrays without importing Dask, and the dispatch hooks.

The engine and the curvature entry points call :func:`is_dask` on their
array arguments; only when one is a Dask array is :mod:`hessquik_core.dask`
(and with it Dask) imported.
"""

from __future__ import annotations

import functools


def is_dask(a) -> bool:
    """Is ``a`` a Dask collection (by its class's module; Dask is not imported)?"""
    return type(a).__module__.split(".")[0] == "dask"


def dask_call(self, x, *args, **kwargs):
    """``net(x_dask, ...)``: see :func:`hessquik_core.dask.call`."""
    from .dask import call

    return call(self, x, *args, **kwargs)


def dask_dispatch(fn):
    """Route a curvature entry point ``fn(net, x, y, ...)`` to its Dask version
    (same name in :mod:`hessquik_core.dask`) when ``x`` or ``y`` is a Dask array."""

    @functools.wraps(fn)
    def wrapper(net, x, y, *args, **kwargs):
        if is_dask(x) or is_dask(y):
            from . import dask as _d

            return getattr(_d, fn.__name__)(net, x, y, *args, **kwargs)
        return fn(net, x, y, *args, **kwargs)

    return wrapper
