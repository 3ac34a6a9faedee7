"""Chunked collections (Dask arrays) as data sources: recognised here, served by a plugin.

The network call and the curvature data loop ask :func:`chunked_plugin`
whether an argument is a chunked collection. Only then is the plugin that
serves it imported (:mod:`hessquik_core.dask`, and with it Dask); it is
named in :data:`PLUGINS` and imported by that name, as the backends are, so
this module imports nothing of the package and the package's lower layers
(``networks``, ``curvature.sources``) never import the plugin above them.
A plugin module provides

* ``call(net, x, **call_arguments)``: ``net(x, ...)`` for a chunked ``x``;
* ``curvature_source(net, x, y, loss, *, batch_size, backend, cache_forward, params)``:
  the data source of a curvature computation (see ``hessquik_core/curvature/sources.py``);
* ``residual_points(points, data) -> (points, data, xp)`` and ``PinnProblem``:
  a ``hq.pinn.Residual`` on chunked points and the ``hq.pinn.Problem`` subclass
  that sums over them (``hessquik_core/pinn/problem.py``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

#: the top-level package of a chunked collection's class -> the plugin module serving it
PLUGINS: dict[str, str] = {"dask": "hessquik_core.dask"}


def is_dask(a: Any) -> bool:
    """Is ``a`` a Dask collection (by its class's module; Dask is not imported)?"""
    return type(a).__module__.split(".")[0] == "dask"


def chunked_plugin(*arrays: Any) -> ModuleType | None:
    """The plugin serving the first chunked collection among ``arrays`` (``None``: all in memory)."""
    for a in arrays:
        lib = type(a).__module__.split(".")[0]
        if lib in PLUGINS:
            return importlib.import_module(PLUGINS[lib])
    return None
