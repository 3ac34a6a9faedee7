r"""The analytic training step: a recorded forward-mode call as one custom-gradient function.

When autograd records a forward-mode call of value, gradient, divergence
and/or Laplacian through a chain of layers that all declare affine structure
(:meth:`~hessquik_core.layers.Layer.affine_structure`:
:math:`f(u) = [u +]\, h\,\sigma(uM + b)`: dense layers, residual layers, SIREN-
style layers), the backend runs the whole sweep as one operation whose
backward pass is the adjoint of the forward recurrences
(:meth:`~hessquik_core.backends.Backend.stacked_affine_sweep`; torch's
is ``hessquik_core.backends._torch_step``): three GEMMs per layer over the
stacked carries ``[u; ∂u; Δu]`` and no per-operation tape.

Where it applies (:func:`applies`), from declared capabilities only:

* the request: forward mode, no Hessian or Hessian diagonal, and a gradient,
  divergence or Laplacian;
* the layers: every leaf declares affine structure, and every activation
  supplies σ‴ (``act.max_order >= 3``: the adjoint of the Laplacian row needs it);
* the backend: it has the stacked sweep (``stacked_sweep``), its autograd is
  recording, and no tracing transformation is active (``torch.compile``,
  ``torch.func``: they trace the generic sweep);
* the switch :func:`hessquik_core.training.analytic_weight_gradient`.

The planner asks :func:`training_kind` once per call and keeps the answer
(``ctx.training``); :func:`run` follows it and does not decide again.
"""

from __future__ import annotations

from itertools import chain

from ...backends.base import SWITCHES, SweepLayer
from ..result import Result

#: the answers of :func:`training_kind`
ANALYTIC = "analytic"
TAPED = "taped"


def declared(leaves) -> bool:
    """Does every leaf declare affine structure with an activation that supplies σ‴?"""
    if not leaves:
        return False
    for leaf in leaves:
        st = leaf.affine_structure()
        if st is None or getattr(st.act, "max_order", 2) < 3:
            return False
    return True


def applies(leaves, ctx, mode: str | None = None) -> bool:
    """May this call (in ``mode``, default its own) run as the analytic step, should
    autograd record it? Exactly the case it is exact and faster for."""
    ops = ctx.be
    if (ctx.mode if mode is None else mode) != "forward":
        return False
    if ctx.hessian or ctx.hessian_diagonal or not (ctx.laplacian or ctx.gradient or ctx.divergence):
        return False
    if not SWITCHES.analytic_step or not ops.stacked_sweep:
        return False
    if not ops.autograd_enabled() or ops.is_tracing():
        return False
    return declared(leaves)


def route_kind(leaves, ctx) -> str | None:
    """How the forward route of this call would run if autograd recorded it:
    ``"analytic"`` or ``"taped"`` (autograd over the generic sweep); ``None`` when
    the backend's library has no autograd (``net.cost(..., training=True)``)."""
    if not ctx.be.autograd:
        return None
    if ctx.biharmonic or ctx.taylor_order:  # routes/higher.py: their own custom-gradient functions
        from .higher import trains_analytically

        return ANALYTIC if trains_analytically(leaves, ctx) else TAPED
    return ANALYTIC if applies(leaves, ctx, mode="forward") else TAPED


def training_kind(leaves, ctx) -> str | None:
    """``None`` unless autograd records the call (``x`` or a parameter is recorded);
    then :func:`route_kind`. The cost model prices a training step's backward
    pass by this answer."""
    arrays = chain((ctx.x,), (p for leaf in leaves for p in leaf.parameters()))
    if not ctx.be.records_autograd(arrays):
        return None
    return route_kind(leaves, ctx)


def run(leaves, params, ctx) -> Result | None:
    """Value, Jacobian ``(n, k, m)`` and Laplacian of a call the planner settled as
    ``"analytic"`` in forward mode; ``None`` where none of the converted arrays is
    recorded after all (the generic sweep then runs)."""
    ops = ctx.be
    layers, flat = [], []
    for leaf, P in zip(leaves, params):
        st = leaf.affine_structure(P)
        layers.append(SweepLayer(st.act, st.linear, float(st.scale), bool(st.residual)))
        flat += [st.M, st.b]
    if not ops.records_autograd(chain((ctx.x,), (t for t in flat if t is not None))):
        return None
    seed = ctx.seed_forward()
    Y = ops.stacked_affine_sweep(layers, ctx.laplacian, ctx.x, seed, flat)
    xp = ctx.xp
    k = seed.shape[1]
    lap = Y[k + 1] if ctx.laplacian else None
    return Result(value=Y[0], gradient=xp.permute_dims(Y[1 : k + 1], (1, 0, 2)), laplacian=lap)


__all__ = ["ANALYTIC", "TAPED", "applies", "declared", "route_kind", "run", "training_kind"]
