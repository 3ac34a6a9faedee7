"""Graph plumbing shared by the Dask entry points (network calls, curvature)."""

from __future__ import annotations

import copy
import math
import operator
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends import get_backend, owner_of
from ..backends import to_numpy as to_numpy

try:
    import dask
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
except ImportError as exc:  # pragma: no cover - exercised only without dask
    raise ImportError(
        "hessquik_core.dask needs Dask: pip install 'hessquik-core[dask]' (dask[array] and distributed)"
    ) from exc

#: fan-in of the tree reductions
SPLIT_EVERY = 8


def library(a) -> str:
    return type(a).__module__.split(".")[0]


def token(prefix: str) -> str:
    # a fresh key per call: the graph holds a snapshot of the parameters, so two
    # calls with the same inputs but trained-in-between weights must not collide
    return f"hessquik-{prefix}-{uuid.uuid4().hex}"


@dataclass
class Shared:
    """What every task of one computation needs besides its chunk: one graph key.

    Holding the network (a parameter snapshot) and the call's small arrays
    under a single key means the scheduler ships them to each worker once,
    however many chunk tasks reference them.
    """

    net: Any
    lib: str
    dtype: str
    extra: dict = field(default_factory=dict)


def snapshot(net):
    """A copy of ``net`` with NumPy home parameters and empty conversion caches.

    Taken when the graph is built, so the lazy result belongs to the
    parameters of the call (training them afterwards does not change it),
    and free of device arrays that could not travel to another process.
    """
    memo = {id(mod._cache): {} for mod in net.modules()}
    snap = copy.deepcopy(net, memo)
    if not all(owner_of(p).interchange for p in snap.state_dict().values()):  # frozen ones too
        snap.to("numpy")
    return snap


def check_chunked(a, name: str, *, batch_chunks=None) -> str:
    """Validate a Dask array chunked along axis 0 only; return its chunk library."""
    if not hasattr(a, "chunks") or not hasattr(a, "_meta"):
        raise TypeError(f"{name} must be a dask.array.Array, got {type(a).__module__}.{type(a).__name__}")
    if any(math.isnan(c) for cs in a.chunks for c in cs):
        raise ValueError(
            f"{name} has unknown chunk sizes {a.chunks}; call {name} = {name}.compute_chunk_sizes() first"
        )
    for ax in range(1, a.ndim):
        if len(a.chunks[ax]) != 1:
            rechunk = "{" + ", ".join(f"{i}: -1" for i in range(1, a.ndim)) + "}"
            raise ValueError(
                f"{name} is chunked along axis {ax} (chunks {a.chunks[ax]}); only the batch axis 0 may "
                f"be split, every example must lie whole in one chunk: {name} = {name}.rechunk({rechunk})"
            )
    if batch_chunks is not None and tuple(a.chunks[0]) != tuple(batch_chunks):
        raise ValueError(
            f"{name} must be chunked like x along axis 0 (x: {tuple(batch_chunks)}, {name}: "
            f"{tuple(a.chunks[0])}); {name} = {name}.rechunk({{0: x.chunks[0]}})"
        )
    lib = library(a._meta)
    if not owner_of(a._meta).dask_chunks:  # NumPy and CuPy: chunk libraries a task runs natively
        raise TypeError(f"{name} has chunks of type {type(a._meta).__name__} ({lib}); expected NumPy or CuPy")
    return lib


def check_chunk(a, lib: str, dtype: str, name: str, index: int) -> None:
    """Inside a task: the chunk is of the declared library and dtype (a dask array
    built from pieces, e.g. by ``da.from_delayed``, may hold others)."""
    if library(a) != lib:
        raise TypeError(
            f"chunk {index} of {name} is a {type(a).__module__}.{type(a).__name__}, but the dask array "
            f"declares {lib} chunks; all chunks must be one array type"
        )
    if str(a.dtype) != dtype:
        raise TypeError(
            f"chunk {index} of {name} has dtype {a.dtype}, but the dask array declares {dtype}; "
            f"all chunks must have one dtype (e.g. {name} = {name}.map_blocks(lambda b: b.astype("
            f"'{dtype}')))"
        )


def to_library(a, lib: str):
    """A host array in the chunk library (CuPy chunks get device copies)."""
    be = get_backend(lib)
    if a is None or be.interchange:
        return a
    return be.convert(a, dtype=be.dtype(np.dtype(a.dtype).name))


def meta_like(lib: str, ndim: int, dtype):
    be = get_backend(lib)
    if be.interchange:
        return np.empty((0,) * ndim, dtype=dtype)
    return be.xp.empty((0,) * ndim, dtype=be.dtype(np.dtype(dtype).name))


def graph(name: str, layer: dict, deps: list, extra_layers: dict | None = None) -> HighLevelGraph:
    """A HighLevelGraph of ``layer`` (named ``name``) on top of the collections ``deps``.

    ``extra_layers`` maps further layer names to ``(layer dict, names they
    depend on)`` (e.g. the chunk tasks every output of a call shares).
    """
    layers: dict[str, Any] = {}
    dependencies: dict[str, Any] = {}
    for c in deps:
        hlg = c.__dask_graph__()
        if not isinstance(hlg, HighLevelGraph):  # pragma: no cover - dask always gives HLGs for arrays
            hlg = HighLevelGraph.from_collections(c.name, hlg)
        layers.update(hlg.layers)
        dependencies.update(hlg.dependencies)
    own = set()
    for lname, (ldict, ldeps) in (extra_layers or {}).items():
        layers[lname] = MaterializedLayer(ldict)
        dependencies[lname] = set(ldeps)
        own.add(lname)
    layers[name] = MaterializedLayer(layer)
    dependencies[name] = {c.name for c in deps} | own
    return HighLevelGraph(layers, dependencies)


def add_all(parts):
    out = parts[0]
    for p in parts[1:]:
        out = _add(out, p)
    return out


def _add(a, b):
    if isinstance(a, tuple):
        return tuple(_add(u, v) for u, v in zip(a, b))
    return a + b


def tree_sum(layer: dict, keys: list, name: str, combine: Any = None) -> Any:
    """Add tasks to ``layer`` summing the values of ``keys`` (arrays or tuples of
    arrays) in a tree of fan-in :data:`SPLIT_EVERY`; return the root key.

    ``combine`` (default :func:`add_all`) takes the list of up to :data:`SPLIT_EVERY`
    values of one node; any associative reduction works (e.g. stacking QR R-factors)."""
    combine = add_all if combine is None else combine
    level = 0
    while len(keys) > 1:
        nxt = []
        for j in range(0, len(keys), SPLIT_EVERY):
            k = (f"{name}-sum{level}", j // SPLIT_EVERY)
            layer[k] = (combine, list(keys[j : j + SPLIT_EVERY]))
            nxt.append(k)
        keys, level = nxt, level + 1
    return keys[0]


getitem = operator.getitem
__all__ = ["dask", "da"]
