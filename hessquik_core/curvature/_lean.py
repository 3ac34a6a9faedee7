r"""The gradient of a torch model's training loss on its common call, with no per-call set-up.

``value_and_gradient(model, x, y, loss)`` with a torch model whose weights the
conversion cache reads through views (``hessquik_core/curvature/_torch_cache.py``:
every ``nn.Linear`` model), torch ``x`` and ``y`` of the model's dtype and device,
one mini-batch (``batch_size`` ``None`` or at least ``N``), no ``params=`` and no
``backend=``, is one ``_fused.fused_pass`` over the
model's own tensors with a loss head straight from the raw targets
(:meth:`~hessquik_core.curvature.Loss._direct`: torch's cross-entropy kernels for
integer labels, one subtraction and a dot product for the squared error). What a
call needs from the model's structure alone (layout, slots, the trainable
selection, the dtype check) is kept in the cache entry's memo, which lives exactly
as long as that structure (the entry is replaced when it changes); nothing is kept
of ``x`` or ``y``, so a new mini-batch every call costs the same as the same one.

Every call still checks what the cache cannot prove: the model's structure key
(:func:`~hessquik_core.curvature._torch_cache.converted`), ``x``'s library, shape,
dtype and device, ``y``'s library, device and rows, and the loss's own conditions.
Anything else (:func:`lean_value_and_gradient` returns ``None``) takes the general
route, :class:`~hessquik_core.curvature.sources._Problem`, which also raises every
error with its message: the lean route raises none of its own (a loss that
:func:`~hessquik_core.curvature.get_loss` refuses is refused as there).
"""

from __future__ import annotations

from typing import Any

from ..backends import model_backend, owner_of
from ._fused import fused_pass
from ._torch_cache import converted
from .layout import ParameterLayout, _check_torch_dtype
from .losses import get_loss
from .problem import _plan
from .selection import resolve_params

__all__ = ["lean_value_and_gradient"]


def _lean_plan(module, e, x, dtype, device, be):
    """``(layout, slots, fused, d, m, index)`` for calls on ``module`` (cache entry ``e``) in
    ``dtype`` on ``device``, or ``False`` where the lean route does not serve them: a
    weight view of another dtype or device (the general route converts or refuses), a
    dtype other than float32/float64, a leaf without the fused gradient steps.
    ``index``: the trainable entries of θ (``params=None``) in the call's namespace, or
    ``None`` when every parameter is trainable."""
    if dtype not in (be.dtype("float32"), be.dtype("float64")) or not be.mutable:
        return False
    for d in e.views:
        for v in d.values():
            if v is not None and (v.dtype != dtype or be.device_of(v) != device):
                return False
    memo = e.memo
    try:  # the model's floating parameters all of x's dtype, as torch requires
        _check_torch_dtype(module, x, memo)
    except TypeError:
        return False
    try:  # the general route raises what these refuse, in its own order
        plan = memo.get("plan")
        if plan is None:
            plan = memo["plan"] = _plan(e.net)
        layout, _, slots, fused = plan
        if "selection" not in memo:
            memo["selection"] = resolve_params(module, layout, None)
    except (TypeError, ValueError):
        return False
    if not all(fused):
        return False
    index = memo["selection"][1]
    if index is not None:
        index = be.convert(index, xp=be.xp, dtype=be.xp.int64, device=device)
    return layout, slots, fused, e.net.in_features, e.net.out_features, index


def lean_value_and_gradient(net: Any, x: Any, y: Any, loss: Any, batch_size, backend, params):
    """``(C, ∇C)`` of :func:`~hessquik_core.curvature.value_and_gradient` on the lean
    route (see the module docstring), or ``None`` where it does not apply."""
    if params is not None or backend is not None or hasattr(net, "_leaves"):
        return None
    be = model_backend(net)
    if be is None or owner_of(x).library != be.library or owner_of(y).library != be.library:
        return None
    e = converted(net, ParameterLayout, fresh=False, be=be)
    if e.views is None:
        return None
    dtype, device = x.dtype, be.device_of(x)
    key = ("lean", dtype, device)
    plan = e.memo.get(key)
    if plan is None:
        plan = e.memo[key] = _lean_plan(net, e, x, dtype, device, be)
    if plan is False:
        return None
    layout, slots, fused, d, m, index = plan
    if x.ndim != 2 or x.shape[1] != d or x.shape[0] < 1:
        return None
    N = x.shape[0]
    if batch_size is not None and (type(batch_size) is not int or batch_size < N):
        return None  # mini-batches (or a batch size the general route refuses)
    if y.ndim < 1 or y.shape[0] != N or be.device_of(y) != device:
        return None
    head = get_loss(loss)._direct(y, N, m, dtype, be)
    if head is None:
        return None
    leaves = list(e.net._leaves())  # the current conversion's (its structure: the views' values)
    out = fused_pass(leaves, e.views, fused, slots, layout, be, be.detached(x), device, head, None)
    if out is None:
        return None
    value, g = out
    return value, (g if index is None else be.xp.take(g, index, axis=0))
