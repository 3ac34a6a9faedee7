r"""Rules of the gated ("modified") MLP, as pure array functions: the step's
forward and backward input derivatives and its parameter passes.

The block (Wang, Teng & Perdikaris' modified MLP for PINNs) has two
encoders of the block input :math:`x`,

.. math::
    U = \sigma(xW_u + b_u), \qquad V = \sigma(xW_v + b_v),

a first hidden state (e.g. :math:`H_1 = \sigma(xW_1 + b_1)`) and gated
steps

.. math::
    Z = \sigma(H W + b), \qquad H^{+} = (1 - Z)\odot U + Z \odot V = U + Z \odot D,
    \quad D = V - U .

**One gated step.** With tangents :math:`G_U, G_V, G_H` (``(n, k, w)``, row
:math:`i` along direction :math:`i`) and second tangents
:math:`H_U, H_V, H_H` (``(n, k, k, w)``), the pre-gate has tangents
:math:`T = G_H W` and second tangents :math:`H_H W`, so
:math:`G_Z = \sigma'\odot T`,
:math:`H_{Z,ij} = \sigma''\odot T_i \odot T_j + \sigma'\odot (H_{H,ij} W)`, and
the product rule on :math:`U + Z\odot D` gives

.. math::
    G^{+}_i &= G_{U,i} + G_{Z,i}\odot D + Z\odot G_{D,i},\\
    H^{+}_{ij} &= H_{U,ij} + H_{Z,ij}\odot D + G_{Z,i}\odot G_{D,j} + G_{D,i}\odot G_{Z,j}
    + Z\odot H_{D,ij},

:math:`G_D = G_V - G_U`, :math:`H_D = H_V - H_U`. Traces and diagonals over
:math:`i = j` give the Laplacian and Hessian-diagonal shortcuts
(:math:`\sum_i G_{Z,i}\odot G_{D,i}` appears twice), which never form a
:math:`k \times k` block. The encoders are ordinary dense layers; their
tangents are those of ``SingleLayer`` (see
``hessquik_core.rules.affine.forward_step``; a reference composition of the
whole block, ``gated_mlp_forward``, is in ``tests/rules/_gated_reference.py``).

**Parameter passes** (:mod:`hessquik_core.curvature`). The step is the
affine rule :math:`Z = \sigma(HW + b)` whose output reaches :math:`H^{+}`
weighted by :math:`D`: the first-order adjoint of :math:`Z` is
:math:`dl_Z = D\odot dl_H`, and Pearlmutter's R-operator along the
parameter directions :math:`(\Delta W, \Delta b)` gives, with
:math:`Ra = R_H W + H\Delta W + \Delta b`, :math:`RZ = \sigma'\odot Ra`,

.. math::
    R H^{+} &= R_U + RZ\odot D + Z\odot R_D, \\
    R\delta &= \sigma'\odot\bigl(D\odot R dl_H + [R_D\odot dl_H]\bigr)
    + [\sigma''\odot Ra\odot dl_Z], \\
    R\,\partial_S C &= \bigl[R dl_U + (1 - Z)\odot R dl_H - [RZ\odot dl_H],\
    R dl_V + Z\odot R dl_H + [RZ\odot dl_H],\ R\delta\,W^\top + [\delta\,\Delta W^\top]\bigr], \\
    R\,\partial_W C &= \textstyle\sum_n H_n\otimes R\delta_n + [R_{H,n}\otimes\delta_n],
    \qquad R\,\partial_b C = \textstyle\sum_n R\delta_n,

(:math:`\delta = \sigma'\odot dl_Z`, :math:`R_D = R_V - R_U`); the bracketed
terms are the step's own curvature, dropped by the Gauss–Newton product.
The linear read-out :math:`HK + b` has
:math:`R\,\partial_H C = R dl\,K^\top + [dl\,\Delta K^\top]` and
:math:`R\,\partial_K C = \sum_n H_n\otimes R dl_n + [R_{H,n}\otimes dl_n]`.

Shapes: ``n`` examples, width ``w`` (gate weight ``W`` is ``(w, w)``),
``k`` forward tangents or parameter directions. Nothing here modifies its
arguments.

Why over 400 lines: the step's forward and backward input rules, its packed
Hessian and its four parameter passes (gradient, two R-passes, read-out) are one
set of recurrences over the same state [U, V, H]; split, each half would repeat
the other's notation and derivation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from array_api_compat import array_namespace
from array_api_compat import device as _device

from ..carry import Adjoints, Tangents
from . import affine
from .directions import lin_dirs, lin_dirs_t, outer_sum, outer_sum_r

__all__ = [
    "GateCache",
    "gated_step_param_rop_backward",
    "gated_step_param_rop_forward",
    "gated_step_param_vjp",
    "readout_param_rop_backward",
    "readout_param_rop_forward",
    "gated_step",
    "gated_state_backward_step",
    "gated_state_forward_step",
    "readout_backward_step",
    "readout_forward_step",
]


class GateCache(NamedTuple):
    """What a gated step keeps from its evaluation (all ``(n, w)``)."""

    U: Any
    V: Any
    H: Any
    Z: Any
    dsigma: Any  # σ' at the pre-gate HW + b
    d2sigma: Any  # σ'' there


def gated_step(U, V, H, W, b, act, *, xp=None):
    r"""Value of one gated step and the gate's activation derivatives.

    Parameters
    ----------
    U, V, H : (n, w) encoder outputs and current hidden state.
    W : (w, w), b : (w,) or None, gate weights.
    act : :class:`hessquik_core.activations.Activation` (or name).

    Returns
    -------
    out : (n, w) :math:`U + Z\odot(V - U)`.
    Z : (n, w) :math:`\sigma(HW + b)`.
    s1, s2 : (n, w) :math:`\sigma'`, :math:`\sigma''` at :math:`HW + b`.
    """
    from ..activations import get_activation

    xp = xp if xp is not None else array_namespace(U, V, H, W)
    pre = H @ W
    if b is not None:
        pre = pre + b
    Z, s1, s2 = get_activation(act)(pre, 2, xp=xp)
    return U + Z * (V - U), Z, s1, s2


def _gate_tangents(GH, W, s1):
    T = GH @ W  # (n, k, w) tangents of the pre-gate
    return T, s1[:, None, :] * T


def _forward_pairs(c: GateCache, W, GU, GV, GH, HU, HV, HH):
    r"""Tangents (and second tangents) of one gated step's output.

    Parameters
    ----------
    GU, GV, GH : (n, k, w) tangents of U, V and the hidden state.
    HU, HV, HH : (n, k, k, w) second tangents, or all ``None`` (gradient only).
    c : the step's :class:`GateCache` (``U``, ``V``, ``Z``, σ′, σ″, all (n, w)); W : (w, w).

    Returns
    -------
    G : (n, k, w) and Hs : (n, k, k, w) or None, as in the module docstring.
    """
    U, V, Z, s1, s2 = c.U, c.V, c.Z, c.dsigma, c.d2sigma
    T, GZ = _gate_tangents(GH, W, s1)
    D = V - U
    GD = GV - GU
    G = GU + GZ * D[:, None, :] + Z[:, None, :] * GD
    if HH is None:
        return G, None
    HZ = s2[:, None, None, :] * (T[:, :, None, :] * T[:, None, :, :]) + s1[:, None, None, :] * (HH @ W)
    cross = GZ[:, :, None, :] * GD[:, None, :, :]
    Hs = HU + HZ * D[:, None, None, :] + cross + _swap(cross) + Z[:, None, None, :] * (HV - HU)
    return G, Hs


def _swap(a):
    """Swap the two tangent axes of (n, k, k, w) (the transpose of a pair term)."""
    xp = array_namespace(a)
    return xp.permute_dims(a, (0, 2, 1, 3))


def _forward_laplacian(c: GateCache, W, GU, GV, GH, LU, LV, LH, xp):
    r"""Laplacian shortcut of one gated step.

    ``LU, LV, LH`` : (n, w) Laplacians (traces over the tangents) of U, V, H.
    Returns ``(G (n, k, w), L (n, w))`` with
    :math:`L^{+} = L_U + L_Z\odot D + 2\sum_i G_{Z,i}\odot G_{D,i} + Z\odot(L_V - L_U)`,
    :math:`L_Z = \sigma''\odot\sum_i T_i^2 + \sigma'\odot(L_H W)`.
    """
    U, V, Z, s1, s2 = c.U, c.V, c.Z, c.dsigma, c.d2sigma
    T, GZ = _gate_tangents(GH, W, s1)
    D = V - U
    GD = GV - GU
    G = GU + GZ * D[:, None, :] + Z[:, None, :] * GD
    LZ = s2 * xp.sum(T * T, axis=1) + s1 * (LH @ W)
    L = LU + LZ * D + 2.0 * xp.sum(GZ * GD, axis=1) + Z * (LV - LU)
    return G, L


def _forward_diagonal(c: GateCache, W, GU, GV, GH, DU, DV, DH):
    r"""Hessian-diagonal shortcut of one gated step.

    ``DU, DV, DH`` : (n, k, w) second tangents :math:`H_{ii}` of U, V, H.
    Returns ``(G, Dg)``, both (n, k, w), with
    :math:`D^{+}_i = D_{U,i} + D_{Z,i}\odot D + 2\,G_{Z,i}\odot G_{D,i} + Z\odot(D_{V,i} - D_{U,i})`.
    """
    U, V, Z, s1, s2 = c.U, c.V, c.Z, c.dsigma, c.d2sigma
    T, GZ = _gate_tangents(GH, W, s1)
    D = V - U
    GD = GV - GU
    G = GU + GZ * D[:, None, :] + Z[:, None, :] * GD
    DZ = s2[:, None, :] * (T * T) + s1[:, None, :] * (DH @ W)
    Dg = DU + DZ * D[:, None, :] + 2.0 * (GZ * GD) + Z[:, None, :] * (DV - DU)
    return G, Dg


# --------------------------------------------------------------------------
# the gated step as a layer on the state S = [U, V, H] (both modes)
# --------------------------------------------------------------------------
#
# The block is a chain once U and V travel with H: the state S = [U, V, H]
# (width 3w) is produced by ONE dense layer of the block input,
# S = σ(x [W_u, W_v, W_1] + [b_u, b_v, b_1]) (a SingleLayer), every gated
# step maps S -> [U, V, H⁺], and the read-out is linear in the H block
# (weights [0; 0; W_o]). So forward and backward mode, Laplacian and
# diagonal shortcuts all follow the network's usual recurrences, with the
# step's local derivatives below. In the row convention (rows: inputs
# U, V, H; columns: outputs U, V, H⁺) the step's Jacobian is
#
#     J = [[I, 0, P], [0, I, Q], [0, 0, R]],  P = diag(1 - Z), Q = diag(Z),
#     R = W diag(σ' ⊙ D),  D = V - U,
#
# and the only second derivatives are those of H⁺_j:
#     ∂²H⁺_j/∂H_i∂H_k = σ''_j D_j W_ij W_kj,
#     ∂²H⁺_j/∂H_i∂U_k = -σ'_j W_ij δ_jk,   ∂²H⁺_j/∂H_i∂V_k = +σ'_j W_ij δ_jk.


def _state_forward(c: GateCache, W, G, Hs, xp):
    r"""Forward rule of one gated step on the state ``S = [U, V, H]``.

    Parameters
    ----------
    G : (n, k, 3w) tangents of the state; Hs : (n, k, k, 3w) or None.
    c : the step's :class:`GateCache` (``U``, ``V``, ``Z``, σ′, σ″, all (n, w)); W : (w, w).

    Returns
    -------
    (n, k, 3w) and (n, k, k, 3w) or None: tangents of ``[U, V, H⁺]``
    (the U and V blocks pass through unchanged).
    """
    U = c.U
    w = U.shape[-1]
    GU, GV, GH = G[..., :w], G[..., w : 2 * w], G[..., 2 * w :]
    if Hs is None:
        Gp, _ = _forward_pairs(c, W, GU, GV, GH, None, None, None)
        return xp.concat([GU, GV, Gp], axis=-1), None
    HU, HV, HH = Hs[..., :w], Hs[..., w : 2 * w], Hs[..., 2 * w :]
    Gp, Hp = _forward_pairs(c, W, GU, GV, GH, HU, HV, HH)
    return xp.concat([GU, GV, Gp], axis=-1), xp.concat([HU, HV, Hp], axis=-1)


def _state_backward(c: GateCache, W, A, B, xp):
    r"""Backward rule of one gated step on the state ``S = [U, V, H]``.

    Parameters
    ----------
    A : (n, 3w, m) adjoint :math:`\partial g_c/\partial [U, V, H^{+}]` of the rest of the network.
    B : (n, 3w, 3w, m) or None, its second-order term.
    c : the step's :class:`GateCache` (``U``, ``V``, ``Z``, σ′, σ″, all (n, w)); W : (w, w).

    Returns
    -------
    A_in : (n, 3w, m) :math:`J A`:
        :math:`[A_U + (1 - Z)\odot A_H,\ A_V + Z\odot A_H,\ W(\sigma'\odot D\odot A_H)]`.
    B_in : (n, 3w, 3w, m) or None, :math:`J B_c J^\top + \sum_j A_{H,jc}\,\nabla^2 H^{+}_j`
        with the curvature blocks
        :math:`[HH] = W\,\mathrm{diag}(\sigma''\odot D\odot A_H)\,W^\top`,
        :math:`[HU] = -W\,\mathrm{diag}(\sigma'\odot A_H)`,
        :math:`[HV] = +W\,\mathrm{diag}(\sigma'\odot A_H)` and their transposes.
        The sandwich uses the block structure of :math:`J` (two diagonal blocks
        and one dense :math:`w\times w` block), :math:`O(w^3)` per direction at most.
    """
    U, V, Z, s1, s2 = c.U, c.V, c.Z, c.dsigma, c.d2sigma
    w = U.shape[-1]
    D = V - U
    p, q = 1.0 - Z, Z
    sD = s1 * D  # (n, w)
    R = W * sD[:, None, :]  # (n, w, w): R_ij = W_ij σ'_j D_j
    AU, AV, AH = A[:, :w, :], A[:, w : 2 * w, :], A[:, 2 * w :, :]
    A_in = xp.concat([AU + p[:, :, None] * AH, AV + q[:, :, None] * AH, R @ AH], axis=1)
    if B is None:
        return A_in, None
    C = xp.permute_dims(B, (0, 3, 1, 2))  # (n, m, 3w, 3w)
    # rows: J C
    Cu, Cv, Ch = C[:, :, :w, :], C[:, :, w : 2 * w, :], C[:, :, 2 * w :, :]
    X = xp.concat(
        [Cu + p[:, None, :, None] * Ch, Cv + q[:, None, :, None] * Ch, R[:, None, :, :] @ Ch], axis=2
    )
    # columns: (J C) Jᵀ
    Xu, Xv, Xh = X[..., :w], X[..., w : 2 * w], X[..., 2 * w :]
    Rt = xp.matrix_transpose(R)[:, None, :, :]  # (n, 1, w, w)
    Y = xp.concat([Xu + Xh * p[:, None, None, :], Xv + Xh * q[:, None, None, :], Xh @ Rt], axis=3)
    # curvature of H⁺ weighted by the H block of the adjoint
    ah = xp.permute_dims(AH, (0, 2, 1))  # (n, m, w)
    Wb = W[None, None, :, :]  # (1, 1, w, w)
    KHH = (Wb * (s2 * D)[:, None, :][:, :, None, :] * ah[:, :, None, :]) @ xp.matrix_transpose(W)
    KHV = Wb * (s1[:, None, :] * ah)[:, :, None, :]  # (n, m, w, w): rows H, cols V
    zero = xp.zeros_like(KHH)
    KHVt = xp.matrix_transpose(KHV)
    curv = xp.concat(
        [
            xp.concat([zero, zero, -KHVt], axis=3),  # row block U: [UU, UV, UH]
            xp.concat([zero, zero, KHVt], axis=3),  # row block V
            xp.concat([-KHV, KHV, KHH], axis=3),  # row block H
        ],
        axis=2,
    )
    return A_in, xp.permute_dims(Y + curv, (0, 2, 3, 1))


def _split3(a, w):
    return a[..., :w], a[..., w : 2 * w], a[..., 2 * w :]


def gated_state_forward_step(c, W, tangents, request, ops):
    """The engine's forward step of one gated step on ``S = [U, V, H]`` (``c`` its
    :class:`GateCache`): the
    :class:`~hessquik_core.carry.Tangents` of ``S`` to those of ``[U, V, H⁺]``
    (the entries ``request`` asks for, packed when ``request.packing`` is set)."""
    xp = ops.xp
    U = c.U
    n, w = U.shape
    Gin = tangents.jacobian
    if Gin.shape[0] != n:
        Gin = xp.broadcast_to(Gin, (n, *Gin.shape[1:]))
    # the first tangents of H⁺ come out of whichever second-order rule runs (each
    # needs them), so they are computed once; only a gradient-only step asks for them alone
    Gout = Hout = Dout = Lout = None
    GU, GV, GH = _split3(Gin, w)
    Gp = None
    if request.hessian:
        Hs = tangents.hessian
        if request.packing is None:
            if Hs is None:
                k = Gin.shape[1]
                Hs = xp.zeros((n, k, k, Gin.shape[-1]), dtype=Gin.dtype, device=_device(Gin))
            Gout, Hout = _state_forward(c, W, Gin, Hs, xp)
        else:
            Hout = _packed_hessian(c, W, GU, GV, GH, Hs, request.packing, xp)
    if request.diagonal:
        Dg = tangents.diagonal
        if Dg is None:
            Dg = xp.zeros_like(Gin)
        DU, DV, DH = _split3(Dg, w)
        Gp, Dp = _forward_diagonal(c, W, GU, GV, GH, DU, DV, DH)
        Dout = xp.concat([DU, DV, Dp], axis=-1)
    if request.laplacian:
        L = tangents.laplacian
        if L is None:
            L = xp.zeros((n, Gin.shape[-1]), dtype=Gin.dtype, device=_device(Gin))
        LU, LV, LH = _split3(L, w)
        Gl, Lp = _forward_laplacian(c, W, GU, GV, GH, LU, LV, LH, xp)
        Gp = Gl if Gp is None else Gp
        Lout = xp.concat([LU, LV, Lp], axis=-1)
    if Gout is None:
        if Gp is None:
            Gout, _ = _state_forward(c, W, Gin, None, xp)
        else:
            Gout = xp.concat([GU, GV, Gp], axis=-1)
    return Tangents(Gout, Hout, Dout, Lout)


def _packed_hessian(c: GateCache, W, GU, GV, GH, Hs, packing, xp):
    r"""The second tangents of the module docstring on the packed triangle:
    entry ``t`` is the pair ``(rows[t], cols[t])``, so every
    :math:`X_i \odot Y_j` becomes ``take(X, rows) * take(Y, cols)``."""
    U, V, Z, s1, s2 = c.U, c.V, c.Z, c.dsigma, c.d2sigma
    rows, cols = packing.rows, packing.cols
    T = GH @ W  # tangents of the pre-gate
    GZ = s1[:, None, :] * T
    GD = GV - GU
    D = V - U
    HZ = s2[:, None, :] * (xp.take(T, rows, axis=1) * xp.take(T, cols, axis=1))
    cross = xp.take(GZ, rows, axis=1) * xp.take(GD, cols, axis=1)
    cross = cross + xp.take(GD, rows, axis=1) * xp.take(GZ, cols, axis=1)
    if Hs is None:  # the state's own second tangents are zero
        Hp = HZ * D[:, None, :] + cross
        zero = xp.zeros_like(Hp)
        return xp.concat([zero, zero, Hp], axis=-1)
    HU, HV, HH = _split3(Hs, U.shape[-1])
    HZ = HZ + s1[:, None, :] * (HH @ W)
    Hp = HU + HZ * D[:, None, :] + cross + Z[:, None, :] * (HV - HU)
    return xp.concat([HU, HV, Hp], axis=-1)


def gated_state_backward_step(c, W, adjoints, second, ops):
    """The engine's backward step of one gated step: the
    :class:`~hessquik_core.carry.Adjoints` of ``[U, V, H⁺]`` to those of ``S``
    (``_state_backward`` in the engine's layout)."""
    xp = ops.xp
    U = c.U
    A = xp.permute_dims(adjoints.gradient, (0, 2, 1))  # (n|1, 3w, k): the rule's layout
    B = None
    if second:
        Dl = adjoints.hessian
        if Dl is None:
            n, k, s = U.shape[0], A.shape[-1], A.shape[1]
            B = xp.zeros((n, s, s, k), dtype=A.dtype, device=_device(A))
        else:
            B = xp.permute_dims(Dl, (0, 2, 3, 1))
    A_in, B_in = _state_backward(c, W, A, B, xp)
    grad = xp.permute_dims(A_in, (0, 2, 1))
    if not second:
        return Adjoints(grad)
    return Adjoints(grad, xp.permute_dims(B_in, (0, 3, 1, 2)))


def readout_forward_step(K, n, tangents, request, ops):
    """Forward step of the read-out ``[U, V, H] ↦ H K + b``: linear in the H
    block, so every tangent object is its H block times ``K``."""
    xp = ops.xp
    w, q = K.shape
    s = slice(2 * w, None)

    def lin(a):
        return None if a is None else ops.mm(a[..., s], K)

    Gf = lin(tangents.jacobian)
    Hf = lin(tangents.hessian) if request.hessian else None
    Df = lin(tangents.diagonal) if request.diagonal else None
    Lf = lin(tangents.laplacian) if request.laplacian else None
    # a zero input object still gives a (zero) requested output
    if request.hessian and Hf is None:
        k = Gf.shape[1]
        shape = (n, k * (k + 1) // 2, q) if request.packing is not None else (n, k, k, q)
        Hf = xp.zeros(shape, dtype=Gf.dtype, device=_device(Gf))
    if request.diagonal and Df is None:
        Df = xp.zeros((n, Gf.shape[1], q), dtype=Gf.dtype, device=_device(Gf))
    if request.laplacian and Lf is None:
        Lf = xp.zeros((n, q), dtype=Gf.dtype, device=_device(Gf))
    return Tangents(Gf, Hf, Df, Lf)


def readout_backward_step(K, n, adjoints, second, ops):
    r"""Backward step of the read-out: :math:`dl_S = [0, 0, dl\,K^\top]`,
    :math:`Dl_S` zero except its H block :math:`K\,Dl\,K^\top` (no curvature of its own)."""
    xp = ops.xp
    w = K.shape[0]
    Kt = xp.matrix_transpose(K)
    dl = adjoints.gradient
    dH = ops.mm(dl, Kt)  # (n|1, k, w)
    dev = _device(dH)
    grad = xp.concat([xp.zeros((*dH.shape[:-1], 2 * w), dtype=dH.dtype, device=dev), dH], axis=-1)
    if not second:
        return Adjoints(grad)
    k = dl.shape[1]
    Dl = adjoints.hessian
    if Dl is None:  # linear: no curvature of its own
        return Adjoints(grad, xp.zeros((n, k, 3 * w, 3 * w), dtype=dH.dtype, device=dev))
    X = ops.mm(Dl, Kt)  # (n, k, m, w) = Dl Kᵀ
    Y = ops.mm(xp.permute_dims(X, (0, 1, 3, 2)), Kt)  # K Dl Kᵀ, (n, k, w, w)
    top = xp.zeros((n, k, 2 * w, 3 * w), dtype=Y.dtype, device=dev)
    bottom = xp.concat([xp.zeros((n, k, w, 2 * w), dtype=Y.dtype, device=dev), Y], axis=-1)
    return Adjoints(grad, xp.concat([top, bottom], axis=-2))


# --------------------------------------------------------------------------
# parameter derivatives of the step and the read-out (hessquik_core.curvature)
# --------------------------------------------------------------------------
#
# On the state S = [U, V, H], the step is P = U + Z ⊙ D with Z = σ(a),
# a = H W + b, D = V - U: an affine rule σ(a) in (H; W, b) whose output is
# weighted by D, plus the pass-through of U and V. Its first-order adjoint
# (dl = [dU, dV, dP]) is
#     δ = σ' ⊙ D ⊙ dP,   ∂C/∂S = [dU + (1 - Z) ⊙ dP, dV + Z ⊙ dP, δ Wᵀ],
#     ∂C/∂W = Σ_n H_n ⊗ δ_n,   ∂C/∂b = Σ_n δ_n,
# i.e. the affine rule's param_vjp with the adjoint dl_Z = D ⊙ dP of Z.
# Pearlmutter's R-operator R{·} = d/dt (·)(θ + t v) at t = 0 of the forward
# pass (directions ΔW, Δb of the parameters and RS = [RU, RV, RH] of the state):
#     Ra = RH W + H ΔW + Δb,   RZ = σ' ⊙ Ra,   RD = RV - RU,
#     RP = RU + RZ ⊙ D + Z ⊙ RD,
# and of the backward pass (the R-adjoint Rdl = [RdU, RdV, RdP] comes from above):
#     R dl_Z = D ⊙ RdP + [RD ⊙ dP],
#     Rδ     = σ' ⊙ R dl_Z + [σ'' ⊙ Ra ⊙ dl_Z],
#     R ∂C/∂U = RdU + (1 - Z) ⊙ RdP - [RZ ⊙ dP],
#     R ∂C/∂V = RdV + Z ⊙ RdP + [RZ ⊙ dP],
#     R ∂C/∂H = Rδ Wᵀ + [δ ΔWᵀ],
#     R ∂C/∂W = Σ_n H_n ⊗ Rδ_n + [RH_n ⊗ δ_n],   R ∂C/∂b = Σ_n Rδ_n.
# Bracketed terms carry dl, the step's own second derivatives: the
# Gauss–Newton product (dl = None) drops them and the pass is Jᵀ Rdl.
# Below, ``c`` is the step's GateCache (U, V, H, Z, σ', σ'' at the pre-gate).


def gated_step_param_vjp(c, W, dl):
    r"""First-order adjoint of one step: ``dl : (n, 3w)`` ->
    ``(δ, ∂C/∂S)``, :math:`\delta = \sigma'\odot D\odot dl_H` ``(n, w)`` and
    :math:`[dl_U + (1 - Z)\odot dl_H,\ dl_V + Z\odot dl_H,\ \delta W^\top]` ``(n, 3w)``;
    the weight gradients are :math:`\sum_n H_n\otimes\delta_n` and :math:`\sum_n\delta_n`."""
    xp = array_namespace(dl, W)
    w, Z = W.shape[0], c.Z
    dU, dV, dP = dl[..., :w], dl[..., w : 2 * w], dl[..., 2 * w :]
    delta = c.dsigma * (c.V - c.U) * dP
    return delta, xp.concat([dU + (1.0 - Z) * dP, dV + Z * dP, delta @ xp.matrix_transpose(W)], axis=-1)


def gated_step_param_rop_forward(c, W, RS, VW, Vb, ops):
    r"""Forward R-pass of one step (see the comment above).

    ``RS : (n, k, 3w)`` or ``None`` (the state does not depend on the
    parameters), ``VW : (k, w, w)``, ``Vb : (k, w)`` or ``None``. Returns
    ``(R[U, V, H⁺] : (n, k, 3w), Ra : (n, k, w))``, ``Ra`` the R-image of the pre-gate.
    """
    xp = ops.xp
    w, Z, D = W.shape[0], c.Z, c.V - c.U
    RH = None if RS is None else RS[..., 2 * w :]
    RZ, Ra = affine.param_rop_forward(c.dsigma, W, VW, c.H, RH, Vb, ops)  # σ' ⊙ Ra, Ra
    RP = RZ * D[:, None, :]
    if RS is None:
        zero = xp.zeros((*RP.shape[:-1], 2 * w), dtype=RP.dtype, device=_device(RP))
        return xp.concat([zero, RP], axis=-1), Ra
    RU, RV = RS[..., :w], RS[..., w : 2 * w]
    RP = RP + RU + Z[:, None, :] * (RV - RU)
    return xp.concat([RU, RV, RP], axis=-1), Ra


def gated_step_param_rop_backward(c, W, VW, RS, Ra, dl, Rdl, ops, *, bias, need_dlu, need_Rdlu):
    r"""Backward R-pass of one step (the recurrences in the comment above).

    ``dl : (n, 3w)`` or ``None`` (Gauss–Newton: the bracketed terms dropped),
    ``Rdl : (n, k, 3w)``. Returns ``(∂C/∂S or None, R ∂C/∂S or None, R∂C/∂W (k, w, w),
    R∂C/∂b (k, w) or None)``.
    """
    xp = ops.xp
    w, Z, s1, D = W.shape[0], c.Z, c.dsigma, c.V - c.U
    RdU, RdV, RdP = Rdl[..., :w], Rdl[..., w : 2 * w], Rdl[..., 2 * w :]
    RH = None if RS is None else RS[..., 2 * w :]
    Rdz = D[:, None, :] * RdP  # R of dl_Z = D ⊙ dP
    dlz = dP = None
    if dl is not None:
        dP = dl[..., 2 * w :]
        dlz = D * dP
        if RS is not None:  # RD ⊙ dP
            Rdz = Rdz + (RS[..., w : 2 * w] - RS[..., :w]) * dP[:, None, :]
    r = affine.param_rop_backward(
        s1, c.d2sigma, W, VW, c.H, RH, Ra, dlz, Rdz, ops, bias=bias, need_dlu=need_dlu, need_Rdlu=need_Rdlu
    )
    dlu = Rdlu = None
    if need_dlu and dl is not None:
        dlu = xp.concat([dl[..., :w] + (1.0 - Z) * dP, dl[..., w : 2 * w] + Z * dP, r.dl_u], axis=-1)
    if need_Rdlu:
        RU = RdU + (1.0 - Z)[:, None, :] * RdP
        RV = RdV + Z[:, None, :] * RdP
        if dl is not None:  # the gate's own curvature: RZ ⊙ dP, RZ = σ' ⊙ Ra
            own = (s1[:, None, :] * Ra) * dP[:, None, :]
            RU, RV = RU - own, RV + own
        Rdlu = xp.concat([RU, RV, r.Rdl_u], axis=-1)
    return dlu, Rdlu, r.RgM, r.Rgb


# The read-out f = H K + b is bilinear in (H, K):
#     Rf = RH K + H ΔK + Δb;   R ∂C/∂H = Rdl Kᵀ + [dl ΔKᵀ],
#     R ∂C/∂K = Σ_n H_n ⊗ Rdl_n + [RH_n ⊗ dl_n],   R ∂C/∂b = Σ_n Rdl_n,
# and ∂C/∂S = [0, 0, dl Kᵀ] (the U and V blocks do not reach the output).


def readout_param_rop_forward(K, H, RS, VK, Vb, ops):
    """``Rf : (n, k, m)`` of the read-out for ``RS : (n, k, 3w)`` or ``None``, ``VK : (k, w, m)``."""
    w = K.shape[0]
    Rf = lin_dirs(H, VK, ops)
    if Vb is not None:
        Rf = Rf + Vb[None, :, :]
    if RS is not None:
        Rf = Rf + ops.mm(RS[..., 2 * w :], K)
    return Rf


def readout_param_rop_backward(K, VK, H, RS, dl, Rdl, ops, *, bias, need_dlu, need_Rdlu):
    """Backward R-pass of the read-out: ``(∂C/∂S, R ∂C/∂S, R∂C/∂K, R∂C/∂b)`` (see above)."""
    xp = ops.xp
    w = K.shape[0]
    Kt = xp.matrix_transpose(K)

    def pad(a):  # [0, 0, a]: the U and V blocks get no adjoint
        zero = xp.zeros((*a.shape[:-1], 2 * w), dtype=a.dtype, device=_device(a))
        return xp.concat([zero, a], axis=-1)

    RgK = outer_sum(H, Rdl, ops)
    dlu = Rdlu = None
    if need_Rdlu:
        RdH = ops.mm(Rdl, Kt)
        if dl is not None:
            RdH = RdH + lin_dirs_t(dl, VK, ops)
        Rdlu = pad(RdH)
    if dl is not None:
        if need_dlu:
            dlu = pad(ops.mm(dl, Kt))
        if RS is not None:
            RgK = RgK + outer_sum_r(RS[..., 2 * w :], dl, ops)
    Rgb = xp.sum(Rdl, axis=0) if bias else None
    return dlu, Rdlu, RgK, Rgb
