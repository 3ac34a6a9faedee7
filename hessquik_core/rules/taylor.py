r"""Recurrences of third- and fourth-order input derivatives through
:math:`f = \sigma(z)`, :math:`z = uM + b` (pure functions of arrays).

A *carry* is a tuple of arrays (or ``None`` where a field is identically zero)
whose **last axis is the feature axis** and whose every field is linear in the
features: a linear map ``u -> uM``, a sum of two carries, a scaling, a
concatenation or a column slice acts field by field (:func:`~hessquik_core.rules.taylor.linear`,
:func:`~hessquik_core.rules.taylor.add`, :func:`~hessquik_core.rules.taylor.scale`,
:func:`~hessquik_core.rules.taylor.concat`, :func:`~hessquik_core.rules.taylor.columns`,
:func:`~hessquik_core.rules.taylor.sum_features`). Only the pointwise nonlinearity
mixes fields; its rule is :func:`~hessquik_core.rules.taylor.biharmonic_act` for
the bi-Laplacian carry and :func:`~hessquik_core.rules.taylor.taylor_act` for
directional Taylor carries. ``s = (σ', σ'', σ''', σ'''')``, each ``(n, q)`` or
``None`` where that derivative is zero (the quadratic head), already scaled by
a residual step ``h``.

**Bi-Laplacian carry** ``(g, H, gL, L, B)`` of every feature ``u`` of a layer,
with respect to the network input :math:`x \in \mathbb{R}^d`:
``g = ∇u : (n|1, d, p)``, ``H = ∇²u`` packed as its upper triangle
``(n, d(d+1)/2, p)``, ``gL = ∇Δu : (n, d, p)``, ``L = Δu : (n, p)``,
``B = Δ²u : (n, p)``. For :math:`f = \sigma(z)`,

.. math::
    \nabla f &= \sigma' \nabla z, \qquad
    \nabla^2 f = \sigma'' \nabla z \nabla z^\top + \sigma' \nabla^2 z, \qquad
    \Delta f = \sigma'' |\nabla z|^2 + \sigma' \Delta z, \\
    \nabla \Delta f &= \sigma''' |\nabla z|^2 \nabla z + 2\sigma'' \nabla^2 z\,\nabla z
        + \sigma'' \Delta z\, \nabla z + \sigma' \nabla\Delta z, \\
    \Delta^2 f &= \sigma'''' |\nabla z|^4 + 2\sigma''' \Delta z\, |\nabla z|^2
        + 4 \sigma''' \nabla z^\top \nabla^2 z\, \nabla z
        + \sigma'' \big(2 \|\nabla^2 z\|_F^2 + 4 \nabla z \cdot \nabla \Delta z + (\Delta z)^2\big)
        + \sigma' \Delta^2 z

(``docs/derivations.md``, section "Beyond second order"). Nothing of size
:math:`d^3` or :math:`d^4` is formed: the per-feature state is
:math:`d(d+1)/2 + 2d + 2` numbers.

**Taylor carry** ``(c_1, …, c_K)``, ``c_j : (n|1, k, p)``: the directional
derivatives :math:`c_j = \partial^j u[v, …, v] = \frac{d^j}{dt^j} u(x + t v)|_{t=0}`
along ``k`` directions ``v``. Faà di Bruno (complete Bell polynomials, in
derivatives, not Taylor coefficients :math:`c_j / j!`):

.. math::
    f_1 &= \sigma' z_1, \quad f_2 = \sigma' z_2 + \sigma'' z_1^2, \quad
    f_3 = \sigma' z_3 + 3\sigma'' z_1 z_2 + \sigma''' z_1^3, \\
    f_4 &= \sigma' z_4 + \sigma''(4 z_1 z_3 + 3 z_2^2) + 6 \sigma''' z_1^2 z_2 + \sigma'''' z_1^4.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import comb
from typing import Any

import numpy as np

Carry = tuple  # of arrays or None, feature axis last


# --------------------------------------------------------------------------
# field-wise (linear) operations, shared by both carries
# --------------------------------------------------------------------------


def linear(c: Carry, M) -> Carry:
    """``u -> uM`` on every field (``M : (p, q)``; a bias changes no derivative)."""
    return tuple(None if a is None else a @ M for a in c)


def add(a: Carry, b: Carry) -> Carry:
    """Field-wise sum (``None`` is zero)."""
    return tuple(y if x is None else x if y is None else x + y for x, y in zip(a, b))


def scale(c: Carry, h) -> Carry:
    """``h`` times every field (a residual step's scalar)."""
    return tuple(None if a is None else h * a for a in c)


def columns(c: Carry, start: int, stop: int | None = None) -> Carry:
    """Features ``start:stop`` of every field."""
    return tuple(None if a is None else a[..., start:stop] for a in c)


def sum_features(c: Carry, xp) -> Carry:
    """The sum over features, kept as one feature (``(..., 1)``)."""
    return tuple(None if a is None else xp.sum(a, axis=-1, keepdims=True) for a in c)


def concat(a: Carry, b: Carry, xp) -> Carry:
    """Features of ``a`` then those of ``b``; a zero field next to a nonzero
    one is materialised, and a shared (leading ``1``) field broadcast."""
    out: list = []
    for x, y in zip(a, b):
        if x is None and y is None:
            out.append(None)
            continue
        ref = x if y is None else y
        if x is None:
            x = xp.zeros((*ref.shape[:-1], a_width(a)), dtype=ref.dtype, device=_dev(ref))
        if y is None:
            y = xp.zeros((*ref.shape[:-1], a_width(b)), dtype=ref.dtype, device=_dev(ref))
        if x.shape[0] != y.shape[0]:
            n = max(x.shape[0], y.shape[0])
            x = xp.broadcast_to(x, (n, *x.shape[1:]))
            y = xp.broadcast_to(y, (n, *y.shape[1:]))
        out.append(xp.concat([x, y], axis=-1))
    return tuple(out)


def a_width(c: Carry) -> int:
    """Number of features of a carry (its first field is never ``None``)."""
    return int(c[0].shape[-1])


def _dev(a):
    from array_api_compat import device

    return device(a)


# --------------------------------------------------------------------------
# the bi-Laplacian carry
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Triangle:
    """Index arrays of the upper triangle ``i <= j`` of a ``(d, d)`` block, in
    the call's namespace: ``rows``, ``cols`` ``(T,)``; ``full`` ``(d·d,)`` maps
    each ``(i, j)`` to its packed position; ``weight`` ``(T,)`` is 1 on the
    diagonal and 2 off it (so :math:`\\sum_{ij} a_{ij} b_{ij} = \\sum_t w_t a_t b_t`
    for symmetric ``a``, ``b``)."""

    d: int
    rows: Any
    cols: Any
    full: Any
    weight: Any


@lru_cache(maxsize=32)
def _triangle_np(d: int):
    iu, ju = np.triu_indices(d)
    pos = np.empty((d, d), dtype=np.int64)
    pos[iu, ju] = np.arange(iu.size)
    pos[ju, iu] = np.arange(iu.size)
    return iu.astype(np.int64), ju.astype(np.int64), pos.reshape(-1), np.where(iu == ju, 1.0, 2.0)


def triangle(d: int, xp, dtype, device) -> Triangle:
    """The :class:`Triangle` of a ``(d, d)`` block in namespace ``xp`` (weights in ``dtype``)."""
    iu, ju, pos, w = _triangle_np(d)
    return Triangle(
        d,
        xp.asarray(iu, device=device),
        xp.asarray(ju, device=device),
        xp.asarray(pos, device=device),
        xp.asarray(w, dtype=dtype, device=device),
    )


def biharmonic_seed(d: int, xp, dtype, device) -> Carry:
    """The network input: ``∇x = I`` (shared by the batch), all higher fields zero."""
    return (xp.eye(d, dtype=dtype, device=device)[None, :, :], None, None, None, None)


def biharmonic_act(c: Carry, s, tri: Triangle, xp) -> Carry:
    r"""``(g, H, gL, L, B)`` of ``z`` to those of :math:`\sigma(z)` (module docstring).

    ``c`` : carry of ``z`` (``q`` features); ``s = (σ', σ'', σ''', σ'''')`` at ``z``.
    The packed Hessian gives :math:`\nabla z^\top \nabla^2 z \nabla z = \sum_t w_t H_t g_{r_t} g_{c_t}`
    and :math:`\|\nabla^2 z\|_F^2 = \sum_t w_t H_t^2` directly; only the vector
    :math:`\nabla^2 z\,\nabla z` unpacks it, to ``(n, d, d, q)``.
    """
    g, H, gL, L, B = c
    s1, s2, s3, s4 = s
    gg = xp.sum(g * g, axis=-2)  # |∇z|², (n|1, q)
    pair = xp.take(g, tri.rows, axis=-2) * xp.take(g, tri.cols, axis=-2)  # (∇z ∇zᵀ)_t
    gf = s1[:, None, :] * g
    Lf = s2 * gg if s2 is not None else None
    Hf = s2[:, None, :] * pair if s2 is not None else None
    gLf = s3[:, None, :] * (gg[:, None, :] * g) if s3 is not None else None
    Bf = None
    if s4 is not None:
        Bf = s4 * (gg * gg)
    if s3 is not None and L is not None:
        Bf = _acc(Bf, 2.0 * s3 * (L * gg))
    if s2 is not None and gL is not None:
        Bf = _acc(Bf, 4.0 * s2 * xp.sum(g * gL, axis=-2))
    if s2 is not None and L is not None:
        gLf = _acc(gLf, s2[:, None, :] * (L[:, None, :] * g))
        Bf = _acc(Bf, s2 * (L * L))
    if H is not None:
        w = tri.weight[None, :, None]
        Hf = _acc(Hf, s1[:, None, :] * H)
        if s3 is not None:
            Bf = _acc(Bf, 4.0 * s3 * xp.sum(w * H * pair, axis=-2))
        if s2 is not None:
            Bf = _acc(Bf, 2.0 * s2 * xp.sum(w * H * H, axis=-2))
            n, _, q = H.shape
            Hfull = xp.reshape(xp.take(H, tri.full, axis=-2), (n, tri.d, tri.d, q))
            Hg = xp.sum(Hfull * g[:, None, :, :], axis=-2)  # ∇²z ∇z, (n, d, q)
            gLf = _acc(gLf, 2.0 * s2[:, None, :] * Hg)
    if L is not None:
        Lf = _acc(Lf, s1 * L)
    if gL is not None:
        gLf = _acc(gLf, s1[:, None, :] * gL)
    if B is not None:
        Bf = _acc(Bf, s1 * B)
    return (gf, Hf, gLf, Lf, Bf)


def _acc(acc, term):
    return term if acc is None else acc + term


def _m(*factors):
    """The product of the factors, ``None`` (zero) if any is ``None``."""
    out = factors[0]
    for f in factors[1:]:
        if out is None or f is None:
            return None
        out = out * f
    return out


def _total(*terms):
    out = None
    for t in terms:
        if t is not None:
            out = t if out is None else out + t
    return out


def biharmonic_mul(a, ca: Carry, b, cb: Carry, tri: Triangle, xp) -> Carry:
    r"""The carry of the product :math:`f = ab` of two features with values
    ``a``, ``b`` ``(n, q)`` and carries ``ca``, ``cb`` (Leibniz):

    .. math::
        \nabla f &= a\nabla b + b\nabla a, \qquad
        \nabla^2 f = a\nabla^2 b + b\nabla^2 a + \nabla a\nabla b^\top + \nabla b\nabla a^\top, \\
        \Delta f &= a\Delta b + b\Delta a + 2\nabla a\cdot\nabla b, \\
        \nabla\Delta f &= a\nabla\Delta b + b\nabla\Delta a + \Delta b\,\nabla a + \Delta a\,\nabla b
            + 2(\nabla^2 a\,\nabla b + \nabla^2 b\,\nabla a), \\
        \Delta^2 f &= a\Delta^2 b + b\Delta^2 a + 2\Delta a\,\Delta b + 4\nabla a\cdot\nabla\Delta b
            + 4\nabla b\cdot\nabla\Delta a + 4\langle\nabla^2 a, \nabla^2 b\rangle_F .
    """
    ga, Ha, gLa, La, Ba = ca
    gb, Hb, gLb, Lb, Bb = cb
    A, Bv = a[:, None, :], b[:, None, :]
    w = tri.weight[None, :, None]

    def dot(x, y):  # Σ_i x_i y_i over the d axis
        return None if x is None or y is None else xp.sum(x * y, axis=-2)

    def hvec(H, g):  # ∇²· ∇·, (n, d, q), from the packed Hessian
        if H is None:
            return None
        n, _, q = H.shape
        full = xp.reshape(xp.take(H, tri.full, axis=-2), (n, tri.d, tri.d, q))
        return xp.sum(full * g[:, None, :, :], axis=-2)

    cross = xp.take(ga, tri.rows, axis=-2) * xp.take(gb, tri.cols, axis=-2)
    cross = cross + xp.take(gb, tri.rows, axis=-2) * xp.take(ga, tri.cols, axis=-2)
    g = A * gb + Bv * ga
    H = _total(_m(A, Hb), _m(Bv, Ha), cross)
    L = _total(_m(a, Lb), _m(b, La), 2.0 * dot(ga, gb))
    hg = _total(hvec(Ha, gb), hvec(Hb, ga))
    gL = _total(
        _m(A, gLb),
        _m(Bv, gLa),
        None if Lb is None else Lb[:, None, :] * ga,
        None if La is None else La[:, None, :] * gb,
        None if hg is None else 2.0 * hg,
    )
    HH = None if Ha is None or Hb is None else xp.sum(w * Ha * Hb, axis=-2)
    B = _total(
        _m(a, Bb),
        _m(b, Ba),
        _m(2.0 * La if La is not None else None, Lb),
        _m(4.0, dot(ga, gLb)),
        _m(4.0, dot(gb, gLa)),
        _m(4.0, HH),
    )
    return (g, H, gL, L, B)


def taylor_mul(a, ca: Carry, b, cb: Carry) -> Carry:
    r"""Directional derivatives of :math:`f = ab` (Leibniz):
    :math:`f_j = \sum_{i=0}^{j} \binom{j}{i} a_i b_{j-i}` with :math:`a_0 = a`,
    :math:`b_0 = b` the values ``(n, q)``."""
    A = (a[:, None, :], *ca)
    Bv = (b[:, None, :], *cb)
    out = []
    for j in range(1, len(ca) + 1):
        out.append(_total(*(_m(float(comb(j, i)), A[i], Bv[j - i]) for i in range(j + 1))))
    return tuple(out)


# --------------------------------------------------------------------------
# directional Taylor carries
# --------------------------------------------------------------------------


def taylor_seed(V, order: int) -> Carry:
    """The network input along the columns of ``V : (d, k)``: ``c_1 = Vᵀ`` (shared), higher zero."""
    import array_api_compat as aac

    xp = aac.array_namespace(V)
    return (xp.matrix_transpose(V)[None, :, :], *([None] * (order - 1)))


def taylor_act(c: Carry, s) -> Carry:
    r"""``(z_1, …, z_K)`` to ``(f_1, …, f_K)``, ``K <= 4`` (module docstring).

    ``s = (σ', …, σ⁽ᴷ⁾)`` (entries ``None`` where zero), each ``(n, q)``, broadcast
    over the direction axis."""
    K = len(c)
    z1 = c[0]
    z2 = c[1] if K > 1 else None
    z3 = c[2] if K > 2 else None
    z4 = c[3] if K > 3 else None
    d = [None if a is None else a[:, None, :] for a in s]

    def term(coef, deriv, prod):
        if deriv is None or prod is None:
            return None
        return deriv * prod if coef == 1 else coef * deriv * prod

    def mul(*a):
        if any(x is None for x in a):
            return None
        out = a[0]
        for x in a[1:]:
            out = out * x
        return out

    out = [term(1, d[0], z1)]
    if K > 1:
        out.append(_total(term(1, d[0], z2), term(1, d[1], z1 * z1)))
    if K > 2:
        out.append(_total(term(1, d[0], z3), term(3, d[1], mul(z1, z2)), term(1, d[2], z1 * z1 * z1)))
    if K > 3:
        z11 = z1 * z1
        out.append(
            _total(
                term(1, d[0], z4),
                term(4, d[1], mul(z1, z3)),
                term(3, d[1], mul(z2, z2)),
                term(6, d[2], mul(z11, z2)),
                term(1, d[3], z11 * z11),
            )
        )
    return tuple(out)


__all__ = [
    "Triangle",
    "add",
    "biharmonic_act",
    "biharmonic_mul",
    "biharmonic_seed",
    "columns",
    "concat",
    "linear",
    "scale",
    "sum_features",
    "taylor_act",
    "taylor_mul",
    "taylor_seed",
    "triangle",
]
