r"""Per-point parameter Jacobians of directional derivatives of order 1–4 (the pure
partials :math:`\partial^k u/\partial x_i^k` among them), without AD.

Along one direction :math:`v` the streams of a feature are its Taylor derivatives
:math:`z_j = \partial^j z[v, \dots, v]`, ``j = 0 … k`` (``k + 1`` rows); the
directions are independent *groups* folded into the point axis (``N = n·K``,
point-major), as :mod:`hessquik_core.pinn._streams` does for the gradient.
Through :math:`a = \sigma(z)` (Faà di Bruno, ``σⱼ = σ⁽ʲ⁾(z_0)``):

.. math::
    a_1 &= \sigma_1 z_1,\qquad a_2 = \sigma_1 z_2 + \sigma_2 z_1^2,\qquad
    a_3 = \sigma_1 z_3 + 3\sigma_2 z_1 z_2 + \sigma_3 z_1^3,\\
    a_4 &= \sigma_1 z_4 + \sigma_2 (4 z_1 z_3 + 3 z_2^2) + 6 \sigma_3 z_1^2 z_2 + \sigma_4 z_1^4 .

The map's derivative is the lower-triangular matrix :math:`C_{ji} = \partial a_j/\partial z_i`;
the R-pass applies :math:`C`, the adjoint :math:`C^\top` — one matrix for both, so the two
are each other's transposes by construction. Its ``z_0`` column differentiates
:math:`\sigma_k(z_0)`: order ``k`` needs :math:`\sigma^{(k+1)}` (:math:`\sigma''''` for
``u_xxx``, every activation with ``max_order >= 4``; :math:`\sigma^{(5)}` for ``u_xxxx``,
:func:`~hessquik_core.pinn._streams_bh.sigma5`).
"""

from __future__ import annotations

from typing import Any

from ..rules.streams import StreamSpec
from ._streams import Bound, Sweep, assemble, check_memory
from ._streams_bh import check_leaves, layer_forward, layer_rop, layer_vjp, sigma5

#: the quantities of this module
TAYLOR = ("directional", "pure_partial")


class TaylorPhi:
    """The Taylor stream map of :math:`\\sigma` on ``Z : (k+1, N, q)`` and its derivative ``C``."""

    def __init__(self, Z, act, k: int, xp):
        self.k, self.xp = k, xp
        z = [Z[j, ...] for j in range(k + 1)]
        s = list(act.derivatives(z[0], min(k + 1, 4), xp=xp))
        if k + 1 == 5:
            s.append(sigma5(act, z[0], xp))
        self.s, self.z = s, z
        z1: Any = z[1] if k else None
        s1 = s[1]
        # C[j][i] = ∂a_j/∂z_i (None: zero), and the value rows of a
        C: list = [[None] * (k + 1) for _ in range(k + 1)]
        a = [s[0]]
        C[0][0] = s1
        if k >= 1:
            a.append(s1 * z1)
            C[1][0], C[1][1] = s[2] * z1, s1
        if k >= 2:
            z2 = z[2]
            a.append(s1 * z2 + s[2] * z1 * z1)
            C[2][0], C[2][1], C[2][2] = s[2] * z2 + s[3] * z1 * z1, 2.0 * s[2] * z1, s1
        if k >= 3:
            z3 = z[3]
            a.append(s1 * z3 + 3.0 * s[2] * z1 * z2 + s[3] * z1 * z1 * z1)
            C[3][0] = s[2] * z3 + 3.0 * s[3] * z1 * z2 + s[4] * z1 * z1 * z1
            C[3][1] = 3.0 * s[2] * z2 + 3.0 * s[3] * z1 * z1
            C[3][2], C[3][3] = 3.0 * s[2] * z1, s1
        if k >= 4:
            z4 = z[4]
            z12 = z1 * z1
            a.append(
                s1 * z4 + s[2] * (4.0 * z1 * z3 + 3.0 * z2 * z2) + 6.0 * s[3] * z12 * z2 + s[4] * z12 * z12
            )
            C[4][0] = (
                s[2] * z4 + s[3] * (4.0 * z1 * z3 + 3.0 * z2 * z2) + 6.0 * s[4] * z12 * z2 + s[5] * z12 * z12
            )
            C[4][1] = 4.0 * s[2] * z3 + 12.0 * s[3] * z1 * z2 + 4.0 * s[4] * z12 * z1
            C[4][2] = 6.0 * s[2] * z2 + 6.0 * s[3] * z12
            C[4][3], C[4][4] = 4.0 * s[2] * z1, s1
        self.a, self.C = a, C

    def forward(self):
        return self.xp.stack(self.a, axis=0)

    def rop(self, dZ):
        xp, C, k = self.xp, self.C, self.k
        return xp.stack([sum(C[j][i] * dZ[i, ...] for i in range(j + 1)) for j in range(k + 1)], axis=0)

    def vjp(self, Abar):
        """``Abar : (c, k+1, N, q)`` -> ``(c, k+1, N, q)``."""
        xp, C, k = self.xp, self.C, self.k
        return xp.stack(
            [sum(C[j][i] * Abar[:, j, ...] for j in range(i, k + 1)) for i in range(k + 1)], axis=1
        )


def check_supported(leaves, order: int, what: str) -> None:
    """Refuse a layer without declared affine structure (named), or an activation without
    :math:`\\sigma^{(order+1)}` (:func:`~hessquik_core.pinn._streams_bh.check_leaves`)."""
    check_leaves(
        leaves, order + 1, f"quantity {what!r} of order {order}", "third- and fourth-order derivatives"
    )


def directions_of(B: Bound, quantity: str, directions, coords, order):
    """``(V : (d, K), order)`` in the call's library from ``directions`` or ``coords``."""
    d = B.net.in_features
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 4:
        raise ValueError(f"quantity {quantity!r} needs order = 1, 2, 3 or 4, got {order!r}")
    if quantity == "pure_partial":
        if directions is not None:
            raise ValueError("'pure_partial' takes coords=, not directions= (use quantity='directional')")
        if coords is None:
            raise ValueError(f"quantity 'pure_partial' needs coords, a sequence of coordinates in 0..{d - 1}")
        cs = [coords] if isinstance(coords, int) and not isinstance(coords, bool) else list(coords)
        if not cs or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < d for c in cs):
            raise ValueError(f"coords must be a non-empty sequence of integers in 0..{d - 1}, got {coords!r}")
        eye = B.xp.eye(d, dtype=B.dtype, device=B.device)
        return B.xp.stack([eye[:, c] for c in cs], axis=1)
    if coords is not None:
        raise ValueError("'directional' takes directions=, not coords= (use quantity='pure_partial')")
    if directions is None:
        raise ValueError(f"quantity 'directional' needs directions = V of shape ({d}, K)")
    V = B.to_call(directions, "directions")
    if V.ndim != 2 or V.shape[0] != d or V.shape[1] < 1:
        raise ValueError(f"directions must have shape ({d}, K) with K >= 1, got {tuple(V.shape)}")
    return V


def _input(B: Bound, V, order: int):
    xp, x = B.xp, B.x
    n, d = x.shape
    K = V.shape[1]
    N = n * K
    rows = [
        xp.reshape(xp.broadcast_to(x[:, None, :], (n, K, d)), (1, N, d)),
        xp.reshape(xp.broadcast_to(xp.matrix_transpose(V)[None, ...], (n, K, d)), (1, N, d)),
    ]
    if order > 1:
        rows.append(xp.zeros((order - 1, N, d), dtype=x.dtype, device=B.device))
    return xp.concat(rows, axis=0)


def prepare(net, x, quantity, weights, backend, directions, coords, order, max_memory, c: int = 1):
    B = Bound(net, x, backend)
    if weights is not None:
        raise ValueError(f"weights (S of the weighted Laplacian) are not used by {quantity!r}")
    V = directions_of(B, quantity, directions, coords, order)
    check_supported(B.leaves, order, quantity)
    check_memory(B, Sweep(V.shape[1], StreamSpec(order - 1, True), order), c * V.shape[1], max_memory)
    return B, V


def _forward(B: Bound, V, order: int):
    Y = _input(B, V, order)
    caches = []
    d = B.net.in_features
    for leaf, P in zip(B.leaves, B.params):
        Y, cache = layer_forward(leaf, Y, P, d, B.be, lambda Z, act: TaylorPhi(Z, act, order, B.xp))
        caches.append(cache)
    return Y, caches


def _backward(B: Bound, caches, Ybar, mode: str) -> list:
    outs: list = [None] * len(B.leaves)
    for i in range(len(B.leaves) - 1, -1, -1):
        Ybar, outs[i] = layer_vjp(B.leaves[i], caches[i], B.params[i], Ybar, mode, i > 0, B.be)
    return outs


def jacobian(B: Bound, V, order: int):
    """``(n, K, m, P)`` and the output streams ``(order + 1, n, K, m)`` (row ``j``: the
    ``j``-th derivatives)."""
    xp = B.xp
    n, m, K = B.x.shape[0], B.net.out_features, V.shape[1]
    N = n * K
    Y, caches = _forward(B, V, order)
    eye = xp.eye(m, dtype=B.dtype, device=B.device)
    hot = xp.broadcast_to(eye[:, None, None, :], (m, 1, N, m))
    Ybar = xp.concat([xp.zeros((m, order, N, m), dtype=B.dtype, device=B.device), hot], axis=1)
    J = assemble(B, _backward(B, caches, Ybar, "point"), N, m)
    return xp.reshape(J, (n, K, m, J.shape[-1])), xp.reshape(Y, (order + 1, n, K, m))


def jvp(B: Bound, V, order: int, Vs):
    xp = B.xp
    d = B.net.in_features
    Y = _input(B, V, order)
    RY: Any = None  # the input streams do not depend on the parameters
    for leaf, P, Vl in zip(B.leaves, B.params, Vs):
        Y, cache = layer_forward(leaf, Y, P, d, B.be, lambda Z, act: TaylorPhi(Z, act, order, xp))
        RY = layer_rop(leaf, cache, P, RY, Vl, B.be)
    return xp.reshape(RY[order, ...], (B.x.shape[0], V.shape[1], B.net.out_features))


def vjp(B: Bound, V, order: int, w):
    """``w : (n, K, m)`` already checked and in the call's library."""
    xp = B.xp
    n, m, K = B.x.shape[0], B.net.out_features, V.shape[1]
    N = n * K
    _, caches = _forward(B, V, order)
    zero = xp.zeros((1, order, N, m), dtype=B.dtype, device=B.device)
    Ybar = xp.concat([zero, xp.reshape(w, (1, 1, N, m))], axis=1)
    outs = _backward(B, caches, Ybar, "sum")
    parts: list = [None] * len(B.layout.keys)
    for slots, g in zip(B.slots, outs):
        for name, j in slots:
            parts[j] = xp.reshape(g[name], (B.layout.sizes[j],))
    return xp.concat(parts, axis=0)


# --------------------------------------------------------------------------
# the public functions' bodies (hessquik_core.pinn.jacobian dispatches here)
# --------------------------------------------------------------------------


def no_taylor_keywords(quantity, directions, coords, order) -> None:
    if directions is not None or coords is not None or order is not None:
        raise ValueError(
            f"directions, coords and order are only used by {TAYLOR}, not {quantity!r} "
            "(several quantities together are not available for them)"
        )


def checked_w(B, w, shape, quantity: str):
    if w is None:
        raise ValueError(f"vjp needs w, of the shape of the quantity {quantity!r}, {shape}")
    w = B.to_call(w, "w")
    if tuple(w.shape) != shape:
        raise ValueError(f"w must have the shape of the quantity {quantity!r}, {shape}, got {tuple(w.shape)}")
    return w


def run(what, net, x, quantity, arg, weights, backend, directions, coords, order, max_memory=float("inf")):
    """``jacobian`` (``(n, K, m, P)``), ``jvp`` (``arg = v``) or ``vjp`` (``arg = w``) of a
    directional derivative / pure partial, in ``x``'s library."""
    from ._streams_bh_call import param_direction

    B, V = prepare(net, x, quantity, weights, backend, directions, coords, order, max_memory)
    if what == "jacobian":
        return B.to_user(jacobian(B, V, order)[0])
    if what == "jvp":
        return B.to_user(jvp(B, V, order, param_direction(B, arg)))
    w = checked_w(B, arg, (B.x.shape[0], V.shape[1], B.net.out_features), quantity)
    return B.to_user(vjp(B, V, order, w))


def run_quantities(
    net, x, needs, weights, backend, max_memory, directions, coords, order, rest_of, Quantities
):
    """:func:`~hessquik_core.pinn.quantities_and_jacobians` with ``"directional"`` or
    ``"pure_partial"`` among ``needs``: its own sweep, the other quantities by ``rest_of``
    (the function itself, called on the rest)."""
    taylor = [q for q in dict.fromkeys(needs) if q in TAYLOR]
    if len(taylor) > 1:
        raise ValueError(f"needs may hold one of {TAYLOR} per call (one set of directions), got {taylor}")
    q = taylor[0]
    rest = tuple(r for r in needs if r != q)
    B, V = prepare(net, x, q, None, backend, directions, coords, order, max_memory)
    J, Y = jacobian(B, V, order)
    if rest:
        Q, Js = rest_of(net, x, rest, weights=weights, backend=backend, max_memory=max_memory)
    else:
        if weights is not None:
            raise ValueError(f"weights (S of the weighted Laplacian) are not used by {q!r}")
        Q, Js = Quantities(value=B.to_user(Y[0, :, 0, :])), {}
    setattr(Q, q, B.to_user(Y[order, ...]))
    Js[q] = B.to_user(J)
    return Q, {k: Js[k] for k in dict.fromkeys(needs)}
