"""The shape of a network call's ``x``: a batch ``(n, d)``, one point ``(d,)`` or a batch with
extra leading axes ``(n1, ..., nk, d)`` (a grid), and the planner's refusal before ``x`` is
converted to another library (issue 24 items 10 and 13).

:meth:`~hessquik_core.networks.NN.__call__` flattens ``x`` to ``(N, d)`` here
(:func:`batch_input`), hands the batch to :func:`~hessquik_core._array.resolve_call`
with :func:`admission` (the memory plan on shapes) and gives the results their
leading shape back (:func:`unbatch`).
"""

from __future__ import annotations

import math

from ._array import as_plain_array, namespace_of
from .engine.plan import MemoryBudgetError, plan
from .engine.result import FIELDS


def as_input_array(x, what: str = "x"):
    """A (nested) list or tuple of numbers as a NumPy ``float64`` array (results are then
    NumPy arrays); anything else unchanged. Ragged lists: ``ValueError``, others ``TypeError``."""
    if not isinstance(x, (list, tuple)):
        return x
    import numpy as np

    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        kind = ValueError if "inhomogeneous" in str(err) or "sequence" in str(err) else TypeError
        msg = f"{what} given as a {type(x).__name__} must be a rectangular nested list of real numbers"
        raise kind(f"{msg} (it becomes a NumPy float64 array): {err}") from err


def flatten_batch(x, d: int):
    """``x : (..., d)`` as a batch ``(N, d)`` and the leading shape to restore.

    ``()`` for one point ``(d,)`` (a batch of one, a view); ``None`` for
    ``(n, d)`` (unchanged); ``(n1, ..., nk)`` for ``(n1, ..., nk, d)``,
    flattened to ``N = n1 ⋯ nk`` by ``reshape`` (a view whenever the strides
    allow, e.g. a contiguous grid or a broadcast view; never a change to the
    caller's array).
    """
    x = as_plain_array(x, "x")
    xp = namespace_of(x)
    if x.ndim == 0 or x.shape[-1] != d:
        raise ValueError(
            f"x must have shape (n, {d}) (or (..., {d}) with extra leading batch axes), got shape "
            f"{tuple(x.shape)} (ndim {x.ndim}): a single point has shape ({d},)"
        )
    if x.ndim == 1:
        return xp.expand_dims(x, axis=0), ()
    if x.ndim == 2:
        return x, None
    lead = tuple(int(s) for s in x.shape[:-1])
    return xp.reshape(x, (math.prod(lead), d)), lead


def batch_input(x, d: int, out_what: str | None = None):
    """``(batch, lead)``: ``x`` (an array or a nested list, :func:`as_input_array`)
    as a batch ``(N, d)`` and its leading shape (:func:`flatten_batch`; ``None`` for ``(n, d)``).

    ``out_what`` names an ``out=`` use (``"out="``, ``"empty_result"``): those
    refuse extra leading axes (``ValueError``), since a reshape of the caller's
    buffers to ``(N, ...)`` could silently copy them instead of writing in place.
    """
    x = as_input_array(x, "x")  # directions lists: resolve_call, in x's library and dtype
    if getattr(x, "ndim", 2) == 2:
        return x, None  # the usual batch: checked by resolve_input
    x, lead = flatten_batch(x, d)
    if lead and out_what is not None:
        raise ValueError(
            f"{out_what} does not take x with extra leading batch axes (x has shape "
            f"{tuple(lead) + (d,)}): pass x.reshape(-1, {d}) and reshape the results "
            f"(a reshape of out= buffers could silently copy them)"
        )
    return x, lead


def unbatch(res, lead=()):
    """The batch result ``res`` (every entry ``(N, ...)``) with ``x``'s leading shape back:
    ``()`` drops the batch axis of one point; ``(n1, ..., nk)`` splits it into
    ``(n1, ..., nk, ...)`` (splitting one axis is a view, never a copy)."""
    for name in FIELDS:
        a = getattr(res, name)
        if a is not None:
            if not lead:
                setattr(res, name, a[0, ...])
            else:
                xp = namespace_of(a, f"result.{name}")
                setattr(res, name, xp.reshape(a, tuple(lead) + tuple(a.shape[1:])))
    return res


def admission(leaves: list, max_memory, into: bool):
    """The ``admit`` check of :func:`~hessquik_core._array.resolve_call`: the planner's
    memory plan of the resolved call (on a stand-in of the converted ``x``), raising
    :class:`~hessquik_core.engine.plan.MemoryBudgetError` where it refuses, so a
    refused call never converts (materialises) ``x``. ``into``: ``out=`` is given."""

    def admit(ctx) -> None:
        p = plan(leaves, ctx, max_memory, into)
        if p.refusal is not None:
            raise MemoryBudgetError(p.refusal)

    return admit
