r"""Taylor streams through :math:`\sigma(uM + b)`: forward, adjoint and R-pass, for
per-point parameter Jacobians of derivative quantities (:mod:`hessquik_core.pinn`).

A forward Taylor sweep carries, for every point, the *streams* of the current
features ``u : (N, p)``:

.. math::
    Y = [\,u;\ \partial u_1; \dots; \partial u_k;\ L\,] \in \mathbb{R}^{S \times N \times p},

the value, ``k`` tangents (the input derivatives along the seed directions)
and, when a second-order quantity is wanted, one second-order row
(:math:`L = \sum_i \partial^2_{v_i v_i} u`, the Laplacian for the seeds
:math:`v_i = e_i`), ``S = 1 + k + [second]``. For an affine layer the GEMM
``Z = Y M`` (plus ``b`` on the value row) pushes every stream at once, and the
activation maps the rows :math:`z, A, B` of ``Z`` by

.. math::
    u' = \sigma(z),\qquad G'_i = \sigma'(z) \odot A_i,\qquad
    L' = \sigma''(z) \odot \textstyle\sum_i A_i^2 + \sigma'(z) \odot B .

Its adjoint (one backward sweep per output direction, ``c`` of them, never
summed over the points) is, with the output adjoints
:math:`\bar u', \bar G', \bar L'`,

.. math::
    \bar z = \sigma' \bar u' + \sigma''\big(\textstyle\sum_i \bar G'_i A_i + \bar L' B\big)
             + \sigma''' \bar L' \textstyle\sum_i A_i^2,\qquad
    \bar A_i = \sigma' \bar G'_i + 2\sigma'' \bar L' A_i,\qquad \bar B = \sigma' \bar L',

and the per-point Jacobian of the quantity with respect to ``M`` is
:math:`\sum_s Y_s[n]^\top \bar Z_s[n]` (``p × q``), that of ``b`` is
:math:`\bar z[n]`. The map is triangular (``u'`` reads only ``u``, ``G'`` only
``u`` and ``G``): an adjoint that is zero on the trailing rows stays zero
there, so a backward sweep may carry only a *prefix* of the streams
(``S' ≤ S`` rows: the value alone, value and tangents, or all).

Shapes: streams ``Y : (S, N, p)``; adjoints ``Ybar : (c, S', N, q)``; one
parameter direction's R-image ``RY : (S, N, p)``. Batch-shared arrays are
never assumed: ``N`` counts every (point, group) pair of the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass(frozen=True)
class StreamSpec:
    """What the streams of a sweep hold: ``k`` tangent rows and, if ``second``,
    one second-order row after them (``S = 1 + k + second`` rows)."""

    k: int
    second: bool

    @property
    def rows(self) -> int:
        return 1 + self.k + int(self.second)

    @property
    def order(self) -> int:
        """The highest derivative of σ the forward *and* adjoint passes read:
        1 (values: σ'), 2 (tangents: σ''), 3 (a second-order row: σ''')."""
        return 3 if self.second else (2 if self.k else 1)


class PhiCache(NamedTuple):
    """What the adjoint and R-pass of the stream nonlinearity keep from the forward."""

    Z: Any  # (S, N, q): the pre-activation streams z, A, B
    s1: Any  # (N, q): σ'(z), None for the identity
    s2: Any  # (N, q) or None
    s3: Any  # (N, q) or None
    asq: Any  # (N, q): Σ_i A_i², None without a second-order row
    spec: StreamSpec
    linear: bool  # identity activation: Φ is the identity


def check_order(act, spec: StreamSpec, where: str) -> None:
    """Refuse (``ValueError``) an activation that lacks the derivative order the sweep needs."""
    need = spec.order
    if getattr(act, "max_order", 2) < need:
        raise ValueError(
            f"per-point Jacobians of second-order quantities need σ''' of every activation; "
            f"{where} uses {act!r}, which supplies derivatives up to order {act.max_order} "
            f"(max_order), {need} needed"
        )


def phi_forward(Z, act, spec: StreamSpec, ops) -> tuple[Any, PhiCache]:
    r"""The stream map :math:`Y' = \Phi_\sigma(Z)` (module docstring): ``Z : (S, N, q)``."""
    if act.name == "identity":
        return Z, PhiCache(Z, None, None, None, None, spec, True)
    return phi_from_derivatives(Z, act.derivatives(Z[0, ...], spec.order, xp=ops.xp), spec, ops)


def phi_from_derivatives(Z, ds, spec: StreamSpec, ops) -> tuple[Any, PhiCache]:
    r""":func:`phi_forward` given ``ds = (σ, σ', …)`` at ``z = Z[0]`` (at least
    ``spec.order + 1`` arrays ``(N, q)``), for functions that differ per column."""
    xp = ops.xp
    k = spec.k
    s0, s1 = ds[0], ds[1]
    s2 = ds[2] if spec.order >= 2 else None
    s3 = ds[3] if spec.order >= 3 else None
    rows = [s0[None, ...]]
    asq = None
    if k:
        A = Z[1 : 1 + k, ...]
        rows.append(s1[None, ...] * A)
    if spec.second:
        asq = xp.sum(A * A, axis=0)
        rows.append((s2 * asq + s1 * Z[1 + k, ...])[None, ...])
    Y = rows[0] if len(rows) == 1 else xp.concat(rows, axis=0)
    return Y, PhiCache(Z, s1, s2, s3, asq, spec, False)


def phi_vjp(cache: PhiCache, Ybar, ops):
    r"""Adjoint of :func:`phi_forward`: ``Ybar : (c, S', N, q)`` (a prefix of the
    streams) to :math:`\bar Z` of the same shape."""
    if cache.linear:
        return Ybar
    xp = ops.xp
    spec, Z, s1, s2, s3 = cache.spec, cache.Z, cache.s1, cache.s2, cache.s3
    k = spec.k
    rows = Ybar.shape[1]
    has_g = rows > 1
    has_l = spec.second and rows == spec.rows
    zb = s1 * Ybar[:, 0, ...]  # (c, N, q)
    out = [None]
    if has_g:
        A = Z[1 : 1 + k, ...]  # (k, N, q)
        Gb = Ybar[:, 1 : 1 + k, ...]  # (c, k, N, q)
        s1b = xp.sum(Gb * A, axis=1)  # Σ_i Ḡ'_i A_i: (c, N, q)
        Ab = s1 * Gb
        if has_l:
            Lb = Ybar[:, 1 + k, ...]  # (c, N, q)
            s1b = s1b + Lb * Z[1 + k, ...]
            zb = zb + s3 * (Lb * cache.asq)
            Ab = Ab + (2.0 * s2) * (Lb[:, None, ...] * A)
            out.append(Ab)
            out.append((s1 * Lb)[:, None, ...])
        else:
            out.append(Ab)
        zb = zb + s2 * s1b
    out[0] = zb[:, None, ...]
    return out[0] if len(out) == 1 else xp.concat(out, axis=1)


def phi_rop(cache: PhiCache, RZ, ops):
    r"""Directional derivative of :func:`phi_forward` along ``RZ : (S, N, q)``
    (one parameter direction):

    .. math::
        R u' = \sigma' Rz,\quad R G'_i = \sigma'' Rz\, A_i + \sigma' RA_i,\quad
        R L' = \sigma''' Rz \textstyle\sum_i A_i^2 + 2\sigma'' \sum_i A_i RA_i
               + \sigma'' Rz\, B + \sigma' RB.
    """
    if cache.linear:
        return RZ
    xp = ops.xp
    spec, Z, s1, s2, s3 = cache.spec, cache.Z, cache.s1, cache.s2, cache.s3
    k = spec.k
    Rz = RZ[0, ...]
    rows = [(s1 * Rz)[None, ...]]
    if k:
        A, RA = Z[1 : 1 + k, ...], RZ[1 : 1 + k, ...]
        rows.append((s2 * Rz)[None, ...] * A + s1 * RA)
    if spec.second:
        RL = s3 * Rz * cache.asq + 2.0 * s2 * xp.sum(A * RA, axis=0)
        RL = RL + s2 * Rz * Z[1 + k, ...] + s1 * RZ[1 + k, ...]
        rows.append(RL[None, ...])
    return rows[0] if len(rows) == 1 else xp.concat(rows, axis=0)


# --------------------------------------------------------------------------
# the affine part: Z = Y M (+ b on the value row)
# --------------------------------------------------------------------------


def affine_streams(Y, M, b, ops):
    """``Z = Y M`` with ``b`` added to the value row: ``Y : (S, N, p)`` -> ``(S, N, q)``."""
    xp = ops.xp
    Z = ops.mm(Y, M)
    if b is None:
        return Z
    if Z.shape[0] == 1:
        return Z + b
    return xp.concat([(Z[0, ...] + b)[None, ...], Z[1:, ...]], axis=0)


def affine_rop(Y, RY, M, RM, Rb, ops):
    r""":math:`RZ = RY\,M + Y\,RM` (+ ``Rb`` on the value row); ``RY`` may be ``None``
    (streams independent of the parameters, the network input)."""
    RZ = affine_streams(Y, RM, Rb, ops)
    return RZ if RY is None else RZ + ops.mm(RY, M)


class ParamOut(NamedTuple):
    """A parameter block of the backward sweep, in the form the driver asked for."""

    weight: Any  # "point": (N, c, p, q); "sum": (p, q); "kfac": (A, B); "stacks": (Y, Zbar)
    bias: Any  # "point": (N, c, q); "sum": (q,); "kfac": None


def affine_params(Y, Zbar, bias: bool, mode: str, ops) -> ParamOut:
    r"""The parameter Jacobian of ``Z = Y M + b`` from the streams ``Y : (S, N, p)``
    and the adjoints ``Zbar : (c, S', N, q)`` (only the first ``S'`` streams count).

    * ``mode="point"``: per point and direction, :math:`\sum_s Y_s[n]^\top \bar Z_{cs}[n]`
      ``(N, c, p, q)`` and :math:`\bar z_c[n]` ``(N, c, q)``, one batched GEMM of
      inner size ``S'`` (no temporary beyond the block itself);
    * ``"sum"``: summed over points and directions, ``(p, q)`` and ``(q,)``;
    * ``"kfac"`` (``c = 1``): the Gram matrices of the two stacks,
      :math:`A = \tilde Y^\top \tilde Y` (``(p+1, p+1)`` with the bias column
      :math:`\tilde Y_s = [Y_s, \delta_{s0}]`, else ``(p, p)``) and
      :math:`B = \bar Z^\top \bar Z` ``(q, q)``, unnormalised sums over the ``S'·N`` rows;
    * ``"stacks"``: ``(Y[:S'], Zbar)`` unreduced, for drivers that form their own
      products (per-example projections of EKFAC).
    """
    xp = ops.xp
    r = Zbar.shape[1]
    Ys = Y[:r, ...]
    if mode == "point":
        Yp = xp.permute_dims(Ys, (1, 2, 0))[:, None, ...]  # (N, 1, p, S')
        Zp = xp.permute_dims(Zbar, (2, 0, 1, 3))  # (N, c, S', q)
        W = xp.matmul(Yp, Zp)
        bb = xp.permute_dims(Zbar[:, 0, ...], (1, 0, 2)) if bias else None
        return ParamOut(W, bb)
    if mode == "stacks":  # the two stacks themselves (hessquik_core.curvature.kfac: KFAC of output losses)
        return ParamOut((Ys, Zbar), None)
    S, N, p = Ys.shape
    q = Zbar.shape[-1]
    if mode == "sum":
        Zs = xp.sum(Zbar, axis=0)  # (S', N, q)
        W = ops.mm(xp.matrix_transpose(xp.reshape(Ys, (S * N, p))), xp.reshape(Zs, (S * N, q)))
        return ParamOut(W, xp.sum(Zs[0, ...], axis=0) if bias else None)
    if mode == "kfac":
        if Zbar.shape[0] != 1:  # pragma: no cover - the driver seeds one direction
            raise ValueError("kfac factors need one output direction")
        a = xp.reshape(Ys, (S * N, p))
        if bias:
            one = xp.ones((1, N, 1), dtype=Y.dtype, device=_device(Y))
            col = (
                one if S == 1 else xp.concat([one, xp.zeros((S - 1, N, 1), dtype=Y.dtype, device=_device(Y))])
            )
            a = xp.concat([a, xp.reshape(col, (S * N, 1))], axis=1)
        g = xp.reshape(Zbar[0, ...], (S * N, q))
        return ParamOut((xp.matrix_transpose(a) @ a, xp.matrix_transpose(g) @ g), None)
    raise ValueError(f"mode must be 'point', 'sum', 'kfac' or 'stacks', got {mode!r}")  # pragma: no cover


def affine_input_adjoint(Zbar, M, ops):
    r""":math:`\bar Y = \bar Z M^\top`: ``(c, S', N, q)`` -> ``(c, S', N, p)``."""
    return ops.mm(Zbar, ops.xp.matrix_transpose(M))


# --------------------------------------------------------------------------
# products of streams (layers that are not σ(uM + b): layer normalisation)
# --------------------------------------------------------------------------


def star(a, b, spec: StreamSpec, ops):
    r"""The streams of a pointwise product :math:`p = a\,b` from those of ``a`` and ``b``
    (``(S, N, ·)``, broadcasting on the last axis):

    .. math::
        p_0 = a_0 b_0,\quad p_i = a_i b_0 + a_0 b_i,\quad
        p_L = a_L b_0 + 2\textstyle\sum_i a_i b_i + a_0 b_L .
    """
    xp = ops.xp
    k = spec.k
    rows = [(a[0, ...] * b[0, ...])[None, ...]]
    if k:
        rows.append(a[1 : 1 + k, ...] * b[0:1, ...] + a[0:1, ...] * b[1 : 1 + k, ...])
    if spec.second:
        mixed = xp.sum(a[1 : 1 + k, ...] * b[1 : 1 + k, ...], axis=0)
        rows.append((a[1 + k, ...] * b[0, ...] + 2.0 * mixed + a[0, ...] * b[1 + k, ...])[None, ...])
    return rows[0] if len(rows) == 1 else xp.concat(rows, axis=0)


def star_vjp(pbar, b, spec: StreamSpec, ops):
    r"""Adjoint of :func:`star` with respect to ``a``: ``pbar : (c, S', N, ·)`` (a prefix)
    to :math:`\bar a` of the same shape (broadcast against ``b``; a caller whose ``a``
    was narrower sums the last axis):

    .. math::
        \bar a_0 = \bar p_0 b_0 + \textstyle\sum_i \bar p_i b_i + \bar p_L b_L,\quad
        \bar a_i = \bar p_i b_0 + 2\bar p_L b_i,\quad \bar a_L = \bar p_L b_0 .
    """
    xp = ops.xp
    k = spec.k
    rows = pbar.shape[1]
    has_g = rows > 1
    has_l = spec.second and rows == spec.rows
    b0 = b[0, ...]
    a0 = pbar[:, 0, ...] * b0
    out = [None]
    if has_g:
        Pg = pbar[:, 1 : 1 + k, ...]
        bg = b[1 : 1 + k, ...]
        a0 = a0 + xp.sum(Pg * bg, axis=1)
        ag = Pg * b0
        if has_l:
            pl = pbar[:, 1 + k, ...]
            a0 = a0 + pl * b[1 + k, ...]
            ag = ag + 2.0 * (pl[:, None, ...] * bg)
            out += [ag, (pl * b0)[:, None, ...]]
        else:
            out.append(ag)
    out[0] = a0[:, None, ...]
    return out[0] if len(out) == 1 else xp.concat(out, axis=1)


def _device(a):
    from array_api_compat import device

    return device(a)


__all__ = [
    "ParamOut",
    "PhiCache",
    "StreamSpec",
    "affine_input_adjoint",
    "affine_params",
    "affine_rop",
    "affine_streams",
    "check_order",
    "phi_forward",
    "phi_from_derivatives",
    "phi_rop",
    "phi_vjp",
    "star",
    "star_vjp",
]
