r"""Exact loss-Hessian products of a PINN: the forward-over-adjoint (R-operator) of the stream sweep.

For one residual term of a :class:`~hessquik_core.pinn.Problem` the gradient is
the vector–Jacobian product :math:`g = J(\theta)^\top w` of the stream sweep of
:func:`hessquik_core.pinn.vjp`, seeded with :math:`w_q = s^2 r \odot c_q`
(:math:`c_q = \partial f/\partial q`, :math:`s^2 = w_t/N_t`). Its directional
derivative along a parameter direction :math:`v` (Pearlmutter's
:math:`R\{\cdot\} = \frac{d}{d\epsilon}(\cdot)(\theta + \epsilon v)|_0`) is the
loss-Hessian product :math:`\nabla^2 L\, v = R\{J^\top w\}
= J^\top R\{w\} + R\{J^\top\}\, w`, computed here in one sweep without
automatic differentiation:

**Forward** (as :func:`~hessquik_core.pinn.jvp`): every layer's streams
:math:`Y` (value, tangents, second-order row; ``hessquik_core.rules.streams``)
and their tangents :math:`RY`; for an affine layer :math:`Z = YK + b`,
:math:`Y' = \Phi_\sigma(Z)` (dense) or :math:`Y' = Y + h\Phi_\sigma(Z)` (residual),

.. math::
    RZ = RY\,K + Y\,V_K + V_b\,[\text{value row}],\qquad
    RY' = \Phi_\sigma'(Z)[RZ]\quad(\text{resp. } RY + h\,\Phi_\sigma'(Z)[RZ]).

At the output :math:`RY_L` holds :math:`Jv` of every quantity, from which the
caller forms the seed tangent :math:`R\bar Y_L = R\{w\}` (the Gauss–Newton and
residual-curvature parts, :mod:`hessquik_core.pinn._second_order_fn`).

**Backward** (the adjoint :math:`\bar Z = \Phi_\sigma(Z)^\top[\bar Y']`,
:math:`\bar Y = \bar Z K^\top`, :math:`\partial_K = \sum_s Y_s^\top\bar Z_s`,
:math:`\partial_b = \sum \bar z`) and its R-image:

.. math::
    R\bar Z = \Phi_\sigma(Z)^\top[R\bar Y'] + \big(D_Z\Phi_\sigma^\top[RZ]\big)[\bar Y'],\quad
    R\bar Y = R\bar Z K^\top + \bar Z V_K^\top,\quad
    R\partial_K = \sum_s RY_s^\top \bar Z_s + Y_s^\top R\bar Z_s,\quad
    R\partial_b = \sum R\bar z

(the residual layer adds :math:`R\bar Y'` to :math:`R\bar Y` and sees
:math:`h\bar Y', hR\bar Y'`). With the rows :math:`z, A_i, B` of :math:`Z`,
the adjoints :math:`\bar u, \bar G_i, \bar L` of the output rows,
:math:`\sigma^{(j)} = \sigma^{(j)}(z)`, :math:`a = \sum_i A_i^2` and
:math:`t = \sum_i \bar G_i A_i + \bar L B`, the adjoint map is
:math:`\bar z = \sigma'\bar u + \sigma'' t + \sigma'''\bar L a`,
:math:`\bar A_i = \sigma'\bar G_i + 2\sigma''\bar L A_i`,
:math:`\bar B = \sigma'\bar L`, and its derivative along
:math:`RZ = (Rz, RA_i, RB)` with :math:`\bar Y'` fixed is

.. math::
    D\bar z &= \sigma''Rz\,\bar u + \sigma'''Rz\,t
        + \sigma''\big(\textstyle\sum_i \bar G_i RA_i + \bar L\,RB\big)
        + \sigma''''Rz\,\bar L a + 2\sigma'''\bar L \textstyle\sum_i A_i RA_i,\\
    D\bar A_i &= \sigma''Rz\,\bar G_i + 2\sigma'''Rz\,\bar L A_i + 2\sigma''\bar L\,RA_i,\qquad
    D\bar B = \sigma''Rz\,\bar L

(rows absent from a prefix adjoint drop out). So a value-only sweep reads
:math:`\sigma''`, tangents :math:`\sigma'''`, a second-order row
:math:`\sigma''''` (one order above the Jacobian's). Cost: the forward sweep
once (``TermSweep`` keeps it, with :math:`\sigma^{(j)}` of every layer), then
per product the tangent pass, the backward pass and its R-image — about one
:func:`~hessquik_core.pinn.jvp` and two :func:`~hessquik_core.pinn.vjp`; memory
the forward streams and one direction's tangents.

Layers with these rules: :class:`~hessquik_core.SingleLayer` and
:class:`~hessquik_core.ResnetLayer` (``unsupported`` names any other).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..layers.dense import SingleLayer
from ..layers.resnet import ResnetLayer
from ..rules.streams import (
    PhiCache,
    affine_input_adjoint,
    affine_params,
    affine_rop,
    affine_streams,
    phi_from_derivatives,
    phi_rop,
    phi_vjp,
)
from ._streams import QUANTITIES, Bound, Sweep, combined_seed, combined_values, input_streams, prepare_many
from ._streams_bh_call import param_direction

__all__ = ["TermSweep", "unsupported"]

#: layer types with exact second-order stream rules (the type itself, not subclasses,
#: which may change the forward map)
EXACT_LAYERS = (SingleLayer, ResnetLayer)


def unsupported(net: Any, needs: tuple[str, ...], weights: Any = None) -> str | None:
    """Why the exact Hessian product is unavailable for ``net`` and a term's ``needs``, or ``None``."""
    from ..curvature.layout import _network

    net = _network(net)
    other = [q for q in needs if q not in QUANTITIES]
    if other:  # e.g. the bi-Laplacian or directional derivatives: sweeps without an R-adjoint yet
        return f"the quantities {other} have no exact second-order stream rule (only {QUANTITIES})"
    for i, leaf in enumerate(net._leaves()):
        if type(leaf) not in EXACT_LAYERS:
            return (
                f"layer {i} ({type(leaf).__name__}) has no exact second-order stream rule "
                f"(only {', '.join(t.__name__ for t in EXACT_LAYERS)})"
            )
    order = 4 if any(q != "value" and q != "gradient" for q in needs) else (3 if "gradient" in needs else 2)
    for i, leaf in enumerate(net._leaves()):
        act = leaf.act
        if act.name != "identity" and getattr(act, "max_order", 2) < order:
            return (
                f"layer {i} ({type(leaf).__name__}) uses {act!r}, which supplies derivatives up to order "
                f"{act.max_order}; the exact Hessian of a loss on {needs} needs order {order}"
            )
    return None


def _d_phi_vjp(cache: PhiCache, s4: Any, RZ: Any, Ybar: Any, ops: Any) -> Any:
    r""":math:`(D_Z\Phi_\sigma^\top[RZ])[\bar Y]`: ``RZ : (S, N, q)``, ``Ybar : (c, S', N, q)`` -> ``(c, S', N, q)``."""
    xp = ops.xp
    spec, Z, s2, s3 = cache.spec, cache.Z, cache.s2, cache.s3
    k = spec.k
    rows = Ybar.shape[1]
    has_g = rows > 1
    has_l = spec.second and rows == spec.rows
    Rz = RZ[0, ...]
    s2r = s2 * Rz  # σ'' Rz: (N, q)
    Rzb = s2r * Ybar[:, 0, ...]
    out: list[Any] = [None]
    if has_g:
        A, RA = Z[1 : 1 + k, ...], RZ[1 : 1 + k, ...]
        Gb = Ybar[:, 1 : 1 + k, ...]  # (c, k, N, q)
        t = xp.sum(Gb * A, axis=1)
        u = xp.sum(Gb * RA, axis=1)
        RAb = s2r * Gb
        if has_l:
            Lb = Ybar[:, 1 + k, ...]
            t = t + Lb * Z[1 + k, ...]
            u = u + Lb * RZ[1 + k, ...]
            ara = xp.sum(A * RA, axis=0)
            Rzb = Rzb + (s4 * Rz) * (Lb * cache.asq) + (2.0 * s3) * (Lb * ara)
            RAb = RAb + (2.0 * s3 * Rz) * (Lb[:, None, ...] * A) + (2.0 * s2) * (Lb[:, None, ...] * RA)
            out += [RAb, (s2r * Lb)[:, None, ...]]
        else:
            out.append(RAb)
        Rzb = Rzb + (s3 * Rz) * t + s2 * u
    out[0] = Rzb[:, None, ...]
    return out[0] if len(out) == 1 else xp.concat(out, axis=1)


def _primal(B: Bound, sw: Sweep, S: Any) -> list:
    """The streams through every layer (what the products share); per layer ``(Y, phi, s4)``."""
    spec, ops = sw.spec, B.be
    Y = input_streams(B, sw, S)
    caches = []
    for leaf, Pm in zip(B.leaves, B.params):
        Z = affine_streams(Y, Pm["K"], Pm.get("b"), ops)
        act = leaf.act
        if act.name == "identity":
            Yi, phi, s4 = Z, PhiCache(Z, None, None, None, None, spec, True), None
        else:
            ds = act.derivatives(Z[0, ...], spec.order + 1, xp=ops.xp)
            Yi, phi = phi_from_derivatives(Z, ds, spec, ops)
            # the adjoint's derivative reads one order more than the adjoint itself
            phi = phi._replace(s2=ds[2], s3=ds[3] if len(ds) > 3 else None)
            s4 = ds[4] if len(ds) > 4 else None
        caches.append((Y, phi, s4))
        Y = Y + leaf.h * Yi if isinstance(leaf, ResnetLayer) else Yi
    return caches


def _tangents(B: Bound, primal: list, Vs: list) -> tuple[Any, list]:
    """The streams' tangents :math:`RY` along one direction; the output's and per layer ``(RY, RZ)``."""
    ops = B.be
    RY: Any = None  # the input streams do not depend on the parameters
    out = []
    for leaf, Pm, V, (Y, phi, _) in zip(B.leaves, B.params, Vs, primal):
        RZ = affine_rop(Y, RY, Pm["K"], V["K"], V.get("b"), ops)
        Ri = phi_rop(phi, RZ, ops)
        out.append((RY, RZ))
        if isinstance(leaf, ResnetLayer):
            RY = leaf.h * Ri if RY is None else RY + leaf.h * Ri
        else:
            RY = Ri
    return RY, out


def _backward(B: Bound, primal: list, tang: list, Vs: list, Ybar: Any, RYbar: Any) -> tuple[list, list]:
    """Adjoints and their R-images back through every layer; per-leaf ``{name: g}``, ``{name: Rg}``."""
    ops, xp = B.be, B.xp
    gs: list = [None] * len(B.leaves)
    Rgs: list = [None] * len(B.leaves)
    for i in range(len(B.leaves) - 1, -1, -1):
        leaf, Pm, V = B.leaves[i], B.params[i], Vs[i]
        (Y, phi, s4), (RY, RZ) = primal[i], tang[i]
        res = isinstance(leaf, ResnetLayer)
        hb, hRb = (leaf.h * Ybar, leaf.h * RYbar) if res else (Ybar, RYbar)
        Zbar = phi_vjp(phi, hb, ops)
        RZbar = phi_vjp(phi, hRb, ops)
        if not phi.linear:
            RZbar = RZbar + _d_phi_vjp(phi, s4, RZ, hb, ops)
        bias = Pm.get("b") is not None
        g = affine_params(Y, Zbar, bias, "sum", ops)
        Rg = affine_params(Y, RZbar, bias, "sum", ops)
        RgK = Rg.weight if RY is None else Rg.weight + affine_params(RY, Zbar, False, "sum", ops).weight
        gs[i] = {"K": g.weight} if not bias else {"K": g.weight, "b": g.bias}
        Rgs[i] = {"K": RgK} if not bias else {"K": RgK, "b": Rg.bias}
        if i > 0:
            K = Pm["K"]
            Yin = affine_input_adjoint(Zbar, K, ops)
            RYin = affine_input_adjoint(RZbar, K, ops) + affine_input_adjoint(Zbar, V["K"], ops)
            Ybar, RYbar = (Ybar + Yin, RYbar + RYin) if res else (Yin, RYin)
    del xp
    return gs, Rgs


def _flat(B: Bound, per_leaf: list) -> Any:
    parts: list[Any] = [None] * len(B.layout.keys)
    for slots, g in zip(B.slots, per_leaf):
        for name, j in slots:
            parts[j] = B.xp.reshape(g[name], (B.layout.sizes[j],))
    return B.xp.concat(parts, axis=0)


class TermSweep:
    r"""One term's stream sweep at fixed parameters, for repeated Hessian products.

    The forward streams (and :math:`\sigma^{(j)}` at every layer) are computed once;
    each :meth:`product` runs the tangent pass, the backward pass and its R-image.

    Parameters
    ----------
    net : NN or Layer
        Of :class:`~hessquik_core.SingleLayer` / :class:`~hessquik_core.ResnetLayer` leaves
        (anything else: ``ValueError``, naming it, before any work).
    x : array of shape (n, d)
    needs : tuple of str
        The quantities swept together (as :func:`hessquik_core.pinn.vjp`'s mapping keys).
    weights : array of shape (d, r), optional
        ``S`` of ``"weighted_laplacian"``.
    backend : str, optional
    """

    def __init__(self, net: Any, x: Any, needs: tuple[str, ...], *, weights: Any = None, backend: Any = None):
        why = unsupported(net, tuple(needs))
        if why is not None:
            raise ValueError(f"exact loss-Hessian product unavailable: {why}")
        self.B, S, self.sw, self.names = prepare_many(net, x, needs, weights, backend)
        self.primal = _primal(self.B, self.sw, S)

    def product(self, v: Any, seeds: Callable[[dict], tuple[dict, dict]]) -> tuple[Any, Any]:
        r""":math:`g = J^\top w` and its directional derivative :math:`R\{g\} = J^\top R\{w\} + R\{J^\top\} w`.

        Parameters
        ----------
        v : array of shape (P,)
            The parameter direction (:class:`~hessquik_core.curvature.ParameterLayout` order).
        seeds : callable
            ``seeds(jv) -> (w, Rw)``: given :math:`Jv` of every quantity (``name -> (n, m)`` or
            ``(n, d, m)``, ``x``'s library), the seed :math:`w` and its tangent :math:`R\{w\}`
            (``name -> array`` of the quantity's shape; a name left out of ``Rw`` has tangent 0).

        Returns
        -------
        g, Rg : arrays of shape (P,)
            In ``x``'s library.
        """
        B, sw = self.B, self.sw
        Vs = param_direction(B, v)
        RY, tang = _tangents(B, self.primal, Vs)
        jv = {k: B.to_user(a) for k, a in combined_values(B, sw, RY, self.names).items()}
        w, Rw = seeds(jv)
        Ybar = combined_seed(B, sw, w, "w")
        RYbar = combined_seed(B, sw, Rw, "Rw") if Rw else B.xp.zeros_like(Ybar)
        gs, Rgs = _backward(B, self.primal, tang, Vs, Ybar, RYbar)
        return B.to_user(_flat(B, gs)), B.to_user(_flat(B, Rgs))
