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

import weakref
from typing import Any, NamedTuple

import numpy as np

from ..carry import Adjoints, Request, Tangents
from .contractions import device, lift, outer, sandwich
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


#: working-set target (bytes) of one row block of the Hessian-diagonal and
#: divergence contractions: large enough for long GEMMs, small enough to stay
#: in cache and to keep the temporaries O(block), never O(n·p·q)
BLOCK_BYTES = 4 * 2**20

#: ``(tag, id(A), ...) -> (weakrefs, value)``: batch-independent products of
#: read-only NumPy weights (the converted parameters a call receives), so that
#: repeated calls and the chunks of one call compute them once
_MEMO: dict = {}


def _memoisable(a) -> bool:
    # only arrays that cannot change under us: the read-only NumPy arrays the
    # parameter store hands out (torch / CuPy weights can be edited in place,
    # traced or autograd arrays must not outlive their call)
    return type(a) is np.ndarray and not a.flags.writeable


def memo(arrays, tag: str, compute):
    """``compute()``, remembered while every array of ``arrays`` (one array or a
    tuple) lives, if all are read-only NumPy arrays; else computed each time."""
    arrs = arrays if isinstance(arrays, tuple) else (arrays,)
    if not all(_memoisable(a) for a in arrs):
        return compute()
    key = (tag, *(id(a) for a in arrs))
    hit = _MEMO.get(key)
    if hit is not None and all(r() is a for r, a in zip(hit[0], arrs)):
        return hit[1]
    value = compute()
    if isinstance(value, np.ndarray):
        value.setflags(write=False)

    def forget(_ref, key=key) -> None:  # an array died: its entry goes with it
        _MEMO.pop(key, None)

    _MEMO[key] = (tuple(weakref.ref(a, forget) for a in arrs), value)
    return value


def gram(M, ops):
    r""":math:`M^\top M` (``q × q``) of a weight ``M : (p, q)``, ``2·p·q²`` flops
    (NumPy's ``Mᵀ @ M`` is one symmetric rank-k update, half that), memoised
    (:func:`memo`)."""
    return memo(M, "gram", lambda: ops.xp.matrix_transpose(M) @ M)


def row_blocks(p: int, width: int, itemsize: int = 8):
    """``(start, stop)`` ranges over ``p`` rows, each about :data:`BLOCK_BYTES`
    for ``width`` entries per row."""
    step = max(1, BLOCK_BYTES // max(1, width * itemsize))
    return [(a, min(a + step, p)) for a in range(0, p, step)]


def backward_first(dsigma, d2sigma, M, adjoints: Adjoints, what: str, ops):
    r"""Trace (``what="trace"``, ``(n, m)``) or diagonal (``"diagonal"``, ``(n, m, p)``)
    of :math:`Dl_u = M K M^\top` without forming it, with
    :math:`K = W + \mathrm{diag}(c)`, :math:`W = \mathrm{diag}(\sigma')\,Dl\,\mathrm{diag}(\sigma')`,
    :math:`c = \sigma'' \odot dl` (all ``(q, q)`` per example and output).

    Trace: :math:`\mathrm{tr}(M K M^\top) = \langle K, M^\top M\rangle` with the
    batch-independent Gram matrix :math:`M^\top M` (:func:`gram`): ``2·p·q²`` once,
    then ``n·m·q²``; nothing of size ``p`` per example.

    Diagonal: :math:`(M K M^\top)_{aa} = \langle (M K)_{a,:}, M_{a,:}\rangle`, by
    GEMMs over row blocks of ``M`` (``_diag_sandwich``, ``2·n·m·p·q²``
    flops) or, for many examples, of the packed triangle of ``K``
    (``_diag_packed``, half that): about ``q/2`` to ``q`` times the first
    layer's forward product, and no ``(n, m, p, q)`` temporary."""
    xp = ops.xp
    dl, Dl = adjoints.gradient, adjoints.hessian
    c = d2sigma[:, None, :] * dl  # (n, m, q)
    W = None if Dl is None else Dl * outer(dsigma)
    if what == "trace":
        G = gram(M, ops)
        q = G.shape[0]
        eye = xp.eye(q, dtype=G.dtype, device=device(G))
        out = c @ xp.sum(G * eye, axis=-1)  # Σ_j c_j (MᵀM)_jj: column sums of M ⊙ M
        if W is not None:
            n, m = W.shape[0], W.shape[1]
            # ⟨W, MᵀM⟩ as one GEMV over the q² entries
            out = out + ops.mm(xp.reshape(W, (n, m, q * q)), xp.reshape(G, (q * q, 1)))[..., 0]
        return out
    if W is None:
        return ops.mm(c, xp.matrix_transpose(M * M))
    if W.shape[0] * W.shape[1] == 0 or M.shape[0] == 0:  # an empty batch: no blocks
        return xp.zeros((W.shape[0], W.shape[1], M.shape[0]), dtype=W.dtype, device=device(M))
    if W.shape[0] * W.shape[1] >= PACKED_FROM:
        return _diag_packed(M, W, c, ops)
    return _diag_sandwich(M, W, c, ops)


#: from this many examples × outputs on, the Hessian diagonal contracts the
#: packed triangle of K (half the flops, GEMMs ``(B, T) @ (T, n·m)`` that need
#: a long ``n·m`` side to run at speed); below, ``_diag_sandwich``
PACKED_FROM = 64


def _diag_packed(M, W, c, ops):
    r"""As ``_diag_sandwich``, by the upper triangle of the symmetric ``K``:
    :math:`(M K M^\top)_{aa} = \sum_{j \le l} (2 - \delta_{jl}) K_{jl} M_{aj} M_{al}`,
    one GEMM of the row-wise products of ``M``'s columns (built per row block,
    ``(B, T)``, ``T = q(q+1)/2``) with the packed ``K`` (``(T, n·m)``):
    ``n·m·p·q(q+1)`` flops."""
    xp = ops.xp
    n, m, q = c.shape
    p = M.shape[0]
    dev = device(M)
    iu_np, ju_np = np.triu_indices(q)
    T = iu_np.size
    iu = xp.asarray(iu_np.astype(np.int64), device=dev)
    ju = xp.asarray(ju_np.astype(np.int64), device=dev)
    flat = xp.asarray((iu_np * q + ju_np).astype(np.int64), device=dev)
    scale = xp.asarray(np.where(iu_np == ju_np, 1.0, 2.0), dtype=W.dtype, device=dev)
    eye = xp.eye(q, dtype=W.dtype, device=dev)
    K = xp.reshape(W + c[:, :, :, None] * eye, (n * m, q * q))
    Kt = xp.matrix_transpose(xp.take(K, flat, axis=1) * scale)  # (T, n·m)
    itemsize = 4 if "32" in str(W.dtype) else 8
    parts = []
    for a0, a1 in row_blocks(p, T, itemsize):
        Mb = M[a0:a1, :]
        R = xp.take(Mb, iu, axis=1) * xp.take(Mb, ju, axis=1)  # (B, T)
        parts.append(R @ Kt)  # (B, n·m)
    out = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)  # (p, n·m)
    return xp.reshape(xp.matrix_transpose(out), (n, m, p))


def _diag_sandwich(M, W, c, ops):
    r"""``(n, m, p)``: the diagonals of :math:`M K M^\top`, :math:`K = W + \mathrm{diag}(c)`
    for symmetric ``W : (n, m, q, q)``.

    :math:`(M K M^\top)_{aa} = \langle (M K)_{a,:}, M_{a,:}\rangle`: for a block of
    ``r`` examples (and outputs) the ``K`` are laid side by side, ``(q, r·q)``,
    so that one GEMM of a row block of ``M`` gives every ``M_b K_i``, then a
    row-wise dot with ``M_b``. ``2·n·m·p·q²`` flops in GEMMs of inner size
    ``q`` and ``r·q ≈`` :data:`BLOCK_BYTES` columns, temporaries of
    :data:`BLOCK_BYTES`: never an ``(n, m, p, q)`` array."""
    xp = ops.xp
    n, m, q = c.shape
    p = M.shape[0]
    r = n * m
    itemsize = 4 if "32" in str(W.dtype) else 8
    eye = xp.eye(q, dtype=W.dtype, device=device(M))
    K = xp.reshape(W + c[:, :, :, None] * eye, (r, q, q))
    # examples per block: long enough GEMM rows (>= 256 rows of M per block)
    nb = max(1, min(r, BLOCK_BYTES // (256 * q * itemsize)))
    cols = []
    for e0 in range(0, r, nb):
        e1 = min(e0 + nb, r)
        Kcat = xp.reshape(xp.permute_dims(K[e0:e1, ...], (1, 0, 2)), (q, (e1 - e0) * q))
        rows = []
        for a0, a1 in row_blocks(p, (e1 - e0) * q, itemsize):
            Mb = M[a0:a1, :]
            Y = xp.reshape(Mb @ Kcat, (a1 - a0, e1 - e0, q))  # (B, r_b, q): rows of M_b K_i
            rows.append(xp.vecdot(Y, Mb[:, None, :]))  # (B, r_b)
        cols.append(rows[0] if len(rows) == 1 else xp.concat(rows, axis=0))
    out = cols[0] if len(cols) == 1 else xp.concat(cols, axis=1)  # (p, n·m)
    return xp.reshape(xp.matrix_transpose(out), (n, m, p))


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
