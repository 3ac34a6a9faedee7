r"""One step of the higher-order sweeps (:mod:`hessquik_core.higher`) per layer:
``step(leaf, params, u, carry, rule, order, ops) -> (f, carry_f)``.

``rule`` supplies the pointwise rule ``rule.act(carry_z, (σ', …))`` and the
product rule ``rule.mul(a, carry_a, b, carry_b)`` of the carry being swept
(:mod:`hessquik_core.rules.taylor`); everything else is linear and field-wise.

A layer is handled, in this order, by

1. its declared affine structure :math:`f(u) = [u +]\,h\,\sigma(uM + b)`
   (``layer.affine_structure(params)``, the engine's contract for affine layers),
2. a rule for its exact class (:func:`steps`): the dense, residual,
   input-convex, quadratic, Fourier, periodic, gated-MLP, gated-residual and
   layer-normalisation layers — every built-in layer,

and refused (:func:`check_leaf`) otherwise, naming its type.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import array_api_compat as aac

from .rules import taylor as T


def _affine(act, M, b, u, c, rule, order, ops, h=None):
    """:math:`h\\,\\sigma(uM + b)` and its carry (``h = None``: no scaling)."""
    z = u @ M
    if b is not None:
        z = z + b
    if act.name == "identity":  # linear: the carry maps through M alone
        return (z, T.linear(c, M)) if h is None else (h * z, T.scale(T.linear(c, M), h))
    s = act.derivatives(z, order, xp=ops.xp)
    if h is not None:
        s = tuple(h * a for a in s)
    return s[0], rule.act(T.linear(c, M), s[1:])


def declared(leaf) -> Any:
    """The layer's declared affine structure (without parameters), or ``None``."""
    fn = getattr(leaf, "affine_structure", None)
    return fn() if callable(fn) else None


def _structured(leaf, P, u, c, rule, order, ops):
    st = leaf.affine_structure(P)
    f, cf = _affine(st.act, st.M, st.b, u, c, rule, order, ops, None if st.scale == 1.0 else st.scale)
    return (u + f, T.add(c, cf)) if st.residual else (f, cf)


def _dense(leaf, P, u, c, rule, order, ops):
    return _affine(leaf.act, P["K"], P.get("b"), u, c, rule, order, ops)


def _resnet(leaf, P, u, c, rule, order, ops):
    # f = u + h σ(uK + b): the identity path adds the incoming carry
    f, cf = _affine(leaf.act, P["K"], P.get("b"), u, c, rule, order, ops, h=leaf.h)
    return u + f, T.add(c, cf)


def _icnn(leaf, P, u, c, rule, order, ops):
    # f = [σ(u M + b), x] with M = [softplus(L); K]; x = u[:, n_in:] passes through
    xp = ops.xp
    f, cf = _affine(leaf.act, leaf._M(P, xp), P.get("b"), u, c, rule, order, ops)
    s = leaf.n_in
    return xp.concat([f, u[:, s:]], axis=-1), T.concat(cf, T.columns(c, s), xp)


def _pointwise_trig(leaf, P, u, c, rule, order, ops):
    # φ(uK) with per-column φ: sin, cos (FourierFeatures) or cos, sin, identity
    # (PeriodicEmbedding). The layer supplies y = φ(z), φ'(z) and K; on the
    # trigonometric columns φ'' = -φ, φ''' = -φ', φ'''' = φ, on the identity
    # columns all three vanish
    xp = ops.xp
    y, cache = leaf.evaluate(u, P, 1, ops)
    s1, K = cache.dsigma, cache.K
    q = y.shape[-1]
    trig = 2 * len(leaf.periods) if hasattr(leaf, "periods") else q
    ym, s1m = y, s1
    if trig < q:
        dev = aac.device(y)
        ones = xp.ones((trig,), dtype=y.dtype, device=dev)
        mask = xp.concat([ones, xp.zeros((q - trig,), dtype=y.dtype, device=dev)])
        ym, s1m = y * mask, s1 * mask
    return y, rule.act(T.linear(c, K), (s1, -ym, -s1m, ym)[:order])


def _quadratic(leaf, P, u, c, rule, order, ops):
    # f = u c + ½|y Aᵀ|² + μ, y = u[:, s:]: a linear part plus Σ_r of the
    # quadratic activation ½t² (σ' = t, σ'' = 1, higher zero) of t = y Aᵀ
    xp = ops.xp
    lin = leaf._lin(P, xp)
    At = xp.matrix_transpose(P["A"])
    s = leaf._start
    t = u[:, s:] @ At
    f = u @ lin + 0.5 * xp.sum(t * t, axis=-1) + P["mu"]
    derivs = (t, xp.ones_like(t), None, None)[:order]
    quad = T.sum_features(rule.act(T.linear(T.columns(c, s), At), derivs), xp)
    return f[:, None], T.add(T.linear(c, lin[:, None]), quad)


def _gated_step(leaf, P, u, c, rule, order, ops):
    # [U, V, H] -> [U, V, U + Z ⊙ (V - U)], Z = σ(HW + b): the gate is the
    # affine rule, the gating a product of two features (Leibniz)
    xp = ops.xp
    w = leaf.width
    U, V, H = u[:, :w], u[:, w : 2 * w], u[:, 2 * w :]
    cU, cV, cH = T.columns(c, 0, w), T.columns(c, w, 2 * w), T.columns(c, 2 * w)
    Z, cZ = _affine(leaf.act, P["W"], P.get("b"), H, cH, rule, order, ops)
    Dv, cD = V - U, T.add(cV, T.scale(cU, -1.0))
    out = U + Z * Dv
    cout = T.add(cU, rule.mul(Z, cZ, Dv, cD))
    return xp.concat([U, V, out], axis=-1), T.concat(T.concat(cU, cV, xp), cout, xp)


def _readout(leaf, P, u, c, rule, order, ops):
    # [U, V, H] -> H K + b
    w = leaf.width
    f = u[:, 2 * w :] @ P["K"]
    if P.get("b") is not None:
        f = f + P["b"]
    return f, T.linear(T.columns(c, 2 * w), P["K"])


def _gated_residual(leaf, P, u, c, rule, order, ops):
    # α g(u) + (1 - α) u: the block g swept leaf by leaf, then the blend
    inner = list(leaf.block._leaves())
    y, cy = u, c
    for sub, p in zip(inner, leaf._split(P, inner)):
        y, cy = run(sub, p, y, cy, rule, order, ops)
    a = P["alpha"]
    return a * y + (1.0 - a) * u, T.add(T.scale(cy, a), T.scale(c, 1.0 - a))


def _layer_norm(leaf, P, u, c, rule, order, ops):
    # γ ⊙ (u - μ) r + β with r = (v + ε)^(-1/2), v = mean((u - μ)²): a linear
    # centring, a sum of squares (Leibniz), a pointwise power of one feature
    # per example, a product (Leibniz again) and a diagonal scaling
    xp = ops.xp
    p = u.shape[-1]
    cu = u - xp.mean(u, axis=-1, keepdims=True)
    cc = T.add(c, T.scale(T.sum_features(c, xp), -1.0 / p))
    v = xp.mean(cu * cu, axis=-1, keepdims=True)
    cv = T.scale(T.sum_features(rule.mul(cu, cc, cu, cc), xp), 1.0 / p)
    sv = v + leaf.eps
    r = 1.0 / xp.sqrt(sv)
    # d^k/ds^k s^(-1/2) = (-1/2)(-3/2)…(1/2 - k) s^(-1/2 - k)
    derivs = (-0.5 * r / sv, 0.75 * r / sv**2, -1.875 * r / sv**3, 6.5625 * r / sv**4)[:order]
    xhat, cx = cu * r, rule.mul(cu, cc, r, rule.act(cv, derivs))
    gamma, beta = P.get("gamma"), P.get("beta")
    f = xhat if gamma is None else gamma * xhat
    if beta is not None:
        f = f + beta
    return f, cx if gamma is None else T.scale(cx, gamma)


@cache
def steps() -> dict[type, tuple[Callable, bool]]:
    """Layer class -> (step, whether it calls ``leaf.act``). Exact classes: a
    subclass may change the maths, so it is refused until registered."""
    from .layers import ICNNLayer, QuadraticICNNLayer, QuadraticLayer, ResnetLayer, SingleLayer
    from .layers.fourier import FourierFeatures, PeriodicEmbedding
    from .layers.gated import _GatedStep, _Readout
    from .layers.gated_residual import GatedResidual
    from .layers.layer_norm import LayerNorm

    return {
        SingleLayer: (_dense, True),
        ResnetLayer: (_resnet, True),
        ICNNLayer: (_icnn, True),
        QuadraticLayer: (_quadratic, False),
        QuadraticICNNLayer: (_quadratic, False),
        FourierFeatures: (_pointwise_trig, False),
        PeriodicEmbedding: (_pointwise_trig, False),
        _GatedStep: (_gated_step, True),
        _Readout: (_readout, False),
        GatedResidual: (_gated_residual, False),
        LayerNorm: (_layer_norm, False),
    }


def check_leaf(leaf, order: int, what: str) -> None:
    """Refuse a layer without a rule (``TypeError``) or an activation that cannot
    supply ``order`` derivatives (``ValueError``), naming them; recurses into
    the block of a gated residual."""
    table = steps()
    st = declared(leaf)
    if st is not None:
        act = st.act
    elif type(leaf) in table:
        act = getattr(leaf, "act", None) if table[type(leaf)][1] else None
    else:
        # the gated MLP's private leaves are named by their block
        names = ", ".join(sorted({"GatedMLP" if c.__name__[0] == "_" else c.__name__ for c in table}))
        raise TypeError(
            f"{what}: no rule of order {order} for layer type {type(leaf).__name__} "
            f"(supported: {names}, and any layer declaring affine_structure)"
        )
    if act is not None and act.name != "identity" and act.max_order < order:
        raise ValueError(
            f"{what} needs derivatives of order {order} of every activation; activation "
            f"{act.name!r} ({type(act).__name__}) of layer {type(leaf).__name__} "
            f"supplies up to order {act.max_order}"
        )
    block = getattr(leaf, "block", None) if st is None else None
    if block is not None:
        for sub in block._leaves():
            check_leaf(sub, order, what)


def run(leaf, P, u, c, rule, order, ops):
    """One layer of a higher-order sweep (after :func:`check_leaf`)."""
    if declared(leaf) is not None:
        return _structured(leaf, P, u, c, rule, order, ops)
    return steps()[type(leaf)][0](leaf, P, u, c, rule, order, ops)


__all__ = ["check_leaf", "declared", "run", "steps"]
