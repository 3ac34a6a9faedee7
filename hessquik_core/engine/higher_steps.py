r"""One step of the higher-order sweeps (:mod:`hessquik_core.higher`) per layer:
``step(leaf, params, u, carry, rule, order, ops) -> (f, carry_f)``.

Below the engine in the import order: the biharmonic route
(:mod:`hessquik_core.engine.routes.higher`) and the public functions of
:mod:`hessquik_core.higher` both sweep with it.

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
from dataclasses import dataclass
from typing import Any

import array_api_compat as aac

from ..rules import taylor as T


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


#: the layers with a rule of their own, by exact class (module and qualified name: a
#: subclass may change the maths, so it is refused until registered; names, not
#: imports, so that the engine does not import the layer modules, some of which
#: import the package above the engine) -> (step, whether it calls ``leaf.act``)
_STEPS: dict[str, tuple[Callable, bool]] = {
    "layers.dense.SingleLayer": (_dense, True),
    "layers.resnet.ResnetLayer": (_resnet, True),
    "layers.icnn.ICNNLayer": (_icnn, True),
    "layers.quadratic.QuadraticLayer": (_quadratic, False),
    "layers.quadratic.QuadraticICNNLayer": (_quadratic, False),
    "layers.fourier.FourierFeatures": (_pointwise_trig, False),
    "layers.fourier.PeriodicEmbedding": (_pointwise_trig, False),
    "layers.gated._GatedStep": (_gated_step, True),
    "layers.gated._Readout": (_readout, False),
    "layers.gated_residual.GatedResidual": (_gated_residual, False),
    "layers.layer_norm.LayerNorm": (_layer_norm, False),
}
_PKG = __name__.rsplit(".", 2)[0] + "."


def _key(cls: type) -> str:
    mod = cls.__module__
    return (mod[len(_PKG) :] if mod.startswith(_PKG) else "?" + mod) + "." + cls.__qualname__


def steps() -> dict[str, tuple[Callable, bool]]:
    """Layer class (``"layers.<module>.<class>"``) -> (step, whether it calls ``leaf.act``)."""
    return _STEPS


def _step_of(leaf) -> tuple[Callable, bool] | None:
    return _STEPS.get(_key(type(leaf)))


def check_leaf(leaf, order: int, what: str) -> None:
    """Refuse a layer without a rule (``TypeError``) or an activation that cannot
    supply ``order`` derivatives (``ValueError``), naming them; recurses into
    the block of a gated residual."""
    st = declared(leaf)
    entry = _step_of(leaf)
    if st is not None:
        act = st.act
    elif entry is not None:
        act = getattr(leaf, "act", None) if entry[1] else None
    else:
        # the gated MLP's private leaves are named by their block
        classes = {k.rsplit(".", 1)[-1] for k in _STEPS}
        names = ", ".join(sorted({"GatedMLP" if c[0] == "_" else c for c in classes}))
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
    entry = _step_of(leaf)
    assert entry is not None, "check_leaf refuses layers without a rule"
    return entry[0](leaf, P, u, c, rule, order, ops)


@dataclass(frozen=True)
class Rule:
    """The nonlinear rules of one carry: ``act(carry_z, (σ', …))`` and
    ``mul(a, carry_a, b, carry_b)``."""

    act: Callable
    mul: Callable


def biharmonic_width(d: int) -> int:
    """Numbers per feature the bi-Laplacian sweep holds at once (the carried
    :math:`d(d+1)/2 + 2d + 3`, value included, and one unpacked ``(d, d)`` Hessian):
    the working-memory measure of the row blocks and of the route's estimate."""
    return d * d + d * (d + 1) // 2 + 2 * d + 3


def biharmonic_streams(d: int) -> int:
    r"""Numbers per feature the bi-Laplacian sweep pushes through each weight matrix:
    value, :math:`\nabla u` (``d``), the packed Hessian (``d(d+1)/2``),
    :math:`\nabla\Delta u` (``d``), :math:`\Delta u`, :math:`\Delta^2 u`."""
    return d * (d + 1) // 2 + 2 * d + 3


def biharmonic_rule(d: int, xp, dtype, device) -> Rule:
    """The bi-Laplacian carry's rules (:mod:`hessquik_core.rules.taylor`)."""
    tri = T.triangle(d, xp, dtype, device)
    return Rule(
        lambda c, s: T.biharmonic_act(c, s, tri, xp),
        lambda a, ca, b, cb: T.biharmonic_mul(a, ca, b, cb, tri, xp),
    )


def sweep(leaves, params, u, carry, rule: Rule, order: int, ops):
    """Push ``(u, carry)`` through every leaf (after :func:`check_leaf` of each):
    ``(f, carry_f)`` of the output."""
    for leaf, P in zip(leaves, params):
        u, carry = run(leaf, P, u, carry, rule, order, ops)
    return u, carry


__all__ = [
    "Rule",
    "biharmonic_rule",
    "biharmonic_streams",
    "biharmonic_width",
    "check_biharmonic_call",
    "check_leaf",
    "check_taylor_call",
    "check_taylor_request",
    "declared",
    "run",
    "steps",
    "sweep",
]


def check_biharmonic_call(mode, directions, hessian, hessian_diagonal, divergence) -> None:
    """The combinations ``biharmonic=True`` takes: the bi-Laplacian sweep runs forward
    over all ``d`` coordinates and carries the value, gradient and Laplacian besides
    (``gradient=True``, ``laplacian=True`` come from it); nothing else."""
    if mode == "backward":
        raise ValueError(
            "biharmonic=True runs one forward sweep: mode must be 'auto' or 'forward', got 'backward'"
        )
    if directions is not None:
        raise ValueError(
            "biharmonic=True is the sum over all coordinates (Δ²u = Σᵢⱼ ∂ᵢ²∂ⱼ²u): it cannot be "
            "combined with directions (along directions: third_derivative=, fourth_derivative= or hq.taylor_derivatives)"
        )
    extra = [
        k
        for k, v in (("hessian", hessian), ("hessian_diagonal", hessian_diagonal), ("divergence", divergence))
        if v
    ]
    if extra:
        raise ValueError(
            f"biharmonic=True combines with gradient=True and laplacian=True (from the same sweep), "
            f"not with {', '.join(extra)}: make a separate call for "
            f"{'it' if len(extra) == 1 else 'them'}"
        )


def check_taylor_call(net, mode, directions, third: bool, fourth: bool, others: tuple) -> None:
    """The combinations ``third_derivative`` / ``fourth_derivative`` take (the call flags of
    the route ``"forward/taylor"``): one forward Taylor sweep along the columns of
    ``directions`` (required), nothing else; every leaf with an order-3/4 rule and
    activations supplying it (:func:`check_leaf`, named)."""
    shape = None
    if directions is not None:
        shape = tuple(getattr(directions, "shape", None) or (len(directions),))
    check_taylor_request(list(net._leaves()), net.in_features, mode, shape, third, fourth, others)


def check_taylor_request(leaves, d: int, mode, shape, third: bool, fourth: bool, others: tuple) -> None:
    """:func:`check_taylor_call` on the leaves, ``d`` and the shape of ``directions``
    (``None``: not given), as ``net.cost`` prices a call."""
    what = " and ".join(k for k, v in (("third_derivative", third), ("fourth_derivative", fourth)) if v)
    if shape is None:
        raise ValueError(
            f"{what}=True needs directions=V of shape (d, k): the derivatives are taken along its columns "
            "(for the pure partial ∂ᵏu/∂x_iᵏ use the unit vector e_i, or hq.pure_partials)"
        )
    if shape[0] != d:  # the first axis (d, k): input directions only
        raise ValueError(
            f"third_derivative / fourth_derivative take directions of shape ({d}, k) (one input direction "
            f"per column), got shape {shape}"
        )
    if mode == "backward":
        raise ValueError(
            f"{what}=True runs one forward sweep: mode must be 'auto' or 'forward', got 'backward'"
        )
    names = ("gradient", "hessian", "laplacian", "hessian_diagonal", "divergence", "biharmonic")
    extra = [k for k, v in zip(names, others) if v]
    if extra:
        raise ValueError(
            f"{what}=True combines only with third_derivative / fourth_derivative (one Taylor sweep), "
            f"not with {', '.join(extra)}: make a separate call (hq.taylor_derivatives gives every order "
            "up to 4 at once)"
        )
    for leaf in leaves:  # with hq.taylor_derivatives' messages
        check_leaf(leaf, 4 if fourth else 3, "fourth_derivative" if fourth else "third_derivative")
