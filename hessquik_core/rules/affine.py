r"""The rule of :math:`f(u) = \sigma(uM + b)`, shared by the dense, residual and
input-convex layers: forward and backward steps of the input derivatives,
the first-layer trace / diagonal shortcut, and the parameter passes.

Shapes: ``u : (n, p)``, ``M : (p, q)``, ``dsigma = σ'(z)`` and
``d2sigma = σ''(z)`` of ``z = uM + b``, both ``(n, q)``; the carries as in
:mod:`hessquik_core.carry`. With :math:`J = M\,\mathrm{diag}(\sigma')` (``p × q``):

* forward  :math:`\partial f = \sigma' \odot (\partial u\,M)`,
  :math:`\partial^2 f = \sigma'' \odot (\partial u M)_i (\partial u M)_j + \sigma' \odot (\partial^2 u\,M)`,
* backward :math:`dl_u = J\,dl`,
  :math:`Dl_u = M\,[\mathrm{diag}(\sigma')\,Dl\,\mathrm{diag}(\sigma') + \mathrm{diag}(\sigma'' \odot dl)]\,M^\top`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..carry import Adjoints, Request, Tangents
from .contractions import device, lift, outer, sandwich, swap
from .directions import lin_dirs, lin_dirs_t, outer_sum, outer_sum_r


def evaluate(u, M, b, act, order, xp):
    """``(σ(z), σ'(z), σ''(z))`` of ``z = uM + b`` (entries beyond ``order`` are ``None``)."""
    z = u @ M
    if b is not None:
        z = z + b
    return act(z, order, xp=xp)


# --------------------------------------------------------------------------
# input derivatives
# --------------------------------------------------------------------------


def forward_step(dsigma, d2sigma, GM, tangents: Tangents, M, request: Request, ops) -> Tangents:
    r"""Forward-mode recurrences, given ``GM = ∂u M : (n|1, k, q)``.

    * gradient  :math:`\sigma' \odot GM`
    * Hessian   :math:`\sigma'' \odot (GM)_i (GM)_j + \sigma' \odot (H M)`
    * diagonal  :math:`\sigma'' \odot (GM)_i^2 + \sigma' \odot (D M)`
    * Laplacian :math:`\sigma'' \odot \sum_i (GM)_i^2 + \sigma' \odot (L M)`
    """
    xp = ops.xp
    s1, s2 = dsigma, d2sigma
    H, D, L = tangents.hessian, tangents.diagonal, tangents.laplacian
    Gf = s1[:, None, :] * GM
    Hf = Df = Lf = None
    if request.hessian:
        if request.packing is None:
            Hf = (s2[:, None, :] * GM)[:, :, None, :] * GM[:, None, :, :]
        else:
            # symmetric: only the k(k+1)/2 pairs i <= j, which halves the GEMM below
            pk = request.packing
            Hf = xp.take(s2[:, None, :] * GM, pk.rows, axis=1) * xp.take(GM, pk.cols, axis=1)
        if H is not None:
            Hf = ops.addcmul(Hf, lift(s1, H.ndim, xp), ops.mm(H, M))
    if request.diagonal:
        Df = s2[:, None, :] * (GM * GM)
        if D is not None:
            Df = ops.addcmul(Df, s1[:, None, :], ops.mm(D, M))
    if request.laplacian:
        # Σ_i (GM)_i² by the backend's vecdot (NumPy's stores no (n, k, q) square)
        Lf = s2 * ops.sum_squares(GM, axis=1)
        if L is not None:
            Lf = Lf + s1 * (L @ M)
    return Tangents(Gf, Hf, Df, Lf)


def backward_step(dsigma, d2sigma, M, adjoints: Adjoints, second: bool, ops) -> Adjoints:
    r""":math:`dl_u = M(\sigma' \odot dl)`,
    :math:`Dl_u = M\,[\mathrm{diag}(\sigma')\, Dl\, \mathrm{diag}(\sigma') + \mathrm{diag}(\sigma'' \odot dl)]\,M^\top`."""
    xp = ops.xp
    dl, Dl = adjoints.gradient, adjoints.hessian
    dlu = ops.mm(dsigma[:, None, :] * dl, xp.matrix_transpose(M))
    if not second:
        return Adjoints(dlu)
    W = None if Dl is None else Dl * outer(dsigma)
    return Adjoints(dlu, sandwich(M, W, d2sigma[:, None, :] * dl, ops))


def backward_first(dsigma, d2sigma, M, adjoints: Adjoints, what: str, ops):
    r"""Trace (``what="trace"``, ``(n, m)``) or diagonal (``"diagonal"``, ``(n, m, p)``)
    of :math:`Dl_u` without forming it.

    Trace: :math:`\mathrm{tr}(M W M^\top) = \langle W, M^\top M\rangle` costs
    ``n·m·q²`` instead of ``n·m·p²``. Diagonal: :math:`\sum_j (M W)_{aj} M_{aj}`."""
    xp = ops.xp
    dl, Dl = adjoints.gradient, adjoints.hessian
    c = d2sigma[:, None, :] * dl
    W = None if Dl is None else Dl * outer(dsigma)
    if what == "trace":
        MtM = xp.matrix_transpose(M) @ M
        eye = xp.eye(MtM.shape[0], dtype=MtM.dtype, device=device(MtM))
        out = c @ xp.sum(MtM * eye, axis=-1)
        if W is not None:
            out = out + xp.sum(xp.sum(W * MtM, axis=-1), axis=-1)
        return out
    out = ops.mm(c, xp.matrix_transpose(M * M))
    if W is not None:
        MW = swap(ops.mm(W, xp.matrix_transpose(M)), xp)  # (n, m, p, q)
        out = out + xp.sum(MW * M, axis=-1)
    return out


# --------------------------------------------------------------------------
# parameter derivatives (hessquik_core.curvature)
# --------------------------------------------------------------------------


def param_vjp(dsigma, M, dl, ops):
    r"""Adjoint ``dl = ∂C/∂f : (n, q)`` to :math:`\delta = \sigma' \odot dl` and
    :math:`\partial C/\partial u = \delta M^\top`; the weight gradient is
    :math:`\sum_n u_n \otimes \delta_n`, the bias gradient :math:`\sum_n \delta_n`."""
    delta = dsigma * dl
    return delta, ops.mm(delta, ops.xp.matrix_transpose(M))


def param_rop_forward(dsigma, M, RM, u, Ru, Vb, ops):
    r"""Forward R-pass: :math:`Rz = (Ru) M + u\,RM + V_b`, :math:`R\sigma = \sigma' \odot Rz`.

    ``RM : (k, p, q)`` the directions of ``M``, ``Vb : (k, q)`` of ``b`` (or
    ``None``), ``Ru : (n, k, p)`` or ``None`` (input independent of the
    parameters). Returns ``(Rσ, Rz)``, both ``(n, k, q)``.
    """
    Rz = lin_dirs(u, RM, ops)
    if Vb is not None:
        Rz = Rz + Vb[None, :, :]
    if Ru is not None:
        Rz = Rz + ops.mm(Ru, M)
    return dsigma[:, None, :] * Rz, Rz


class AffineRop(NamedTuple):
    """What :func:`param_rop_backward` returns (``None`` where skipped)."""

    dl_u: Any  # (n, p): ∂C/∂u
    Rdl_u: Any  # (n, k, p): R(∂C/∂u)
    RgM: Any  # (k, p, q): R(∂C/∂M)
    Rgb: Any  # (k, q): R(∂C/∂b)
    delta: Any  # (n, q): σ' ⊙ dl


def param_rop_backward(
    dsigma, d2sigma, M, RM, u, Ru, Rz, dl, Rdl, ops, *, bias: bool, need_dlu: bool, need_Rdlu: bool
) -> AffineRop:
    r"""Backward R-pass (Pearlmutter) of :func:`param_vjp`.

    :math:`R\delta = \sigma' \odot R dl + [\sigma'' \odot dl \odot Rz]`,
    :math:`R(\partial_u C) = R\delta\, M^\top + [\delta\, RM^\top]`,
    :math:`R(\partial_M C) = \sum_n u_n \otimes R\delta_n + [Ru_n \otimes \delta_n]`,
    :math:`R(\partial_b C) = \sum_n R\delta_n`. Bracketed terms carry the
    layer's own curvature; ``dl=None`` drops them (Gauss–Newton).
    """
    xp = ops.xp
    Mt = xp.matrix_transpose(M)
    Rdelta = dsigma[:, None, :] * Rdl
    dlu = delta = None
    if dl is not None:
        delta = dsigma * dl
        Rdelta = Rdelta + (d2sigma * dl)[:, None, :] * Rz
        if need_dlu:
            dlu = ops.mm(delta, Mt)
    Rdlu = ops.mm(Rdelta, Mt) if need_Rdlu else None
    RgM = outer_sum(u, Rdelta, ops)
    if delta is not None:
        if need_Rdlu:
            Rdlu = Rdlu + lin_dirs_t(delta, RM, ops)
        if Ru is not None:
            RgM = RgM + outer_sum_r(Ru, delta, ops)
    Rgb = xp.sum(Rdelta, axis=0) if bias else None
    return AffineRop(dlu, Rdlu, RgM, Rgb, delta)
