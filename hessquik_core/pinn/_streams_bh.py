r"""Per-point parameter Jacobians of the bi-Laplacian :math:`\Delta^2 u`, without AD.

The forward sweep carries, per point and per feature, the *bi-Laplacian streams*
of a layer's input :math:`a`: the value :math:`a`, the gradient :math:`\nabla a`
(``d`` rows), the full Hessian :math:`\nabla^2 a` (``d²`` rows, row ``i·d + j``),
:math:`\nabla\Delta a` (``d`` rows), :math:`\Delta a` and :math:`\Delta^2 a`:
``S = 3 + 2d + d²`` rows, stored ``(S, N, width)`` like
:mod:`hessquik_core.rules.streams` (so its affine helpers apply unchanged: the
affine map :math:`z = aM + b` acts row by row, the bias on the value row only).

Through :math:`a = \sigma(z)` (``σₖ = σ⁽ᵏ⁾(z_0)``, :math:`g = \nabla z`,
:math:`H = \nabla^2 z`, :math:`c = \nabla\Delta z`, :math:`L = \Delta z`,
:math:`B = \Delta^2 z`, :math:`q = |g|^2`):

.. math::
    \nabla a &= \sigma_1 g,\qquad
    \nabla^2 a = \sigma_1 H + \sigma_2\, g g^\top,\qquad
    \Delta a = \sigma_1 L + \sigma_2 q,\\
    \nabla\Delta a &= \sigma_1 c + \sigma_2 (L g + 2 H g) + \sigma_3\, q\, g,\\
    \Delta^2 a &= \sigma_1 B + \sigma_2 (4 g\cdot c + L^2 + 2\|H\|_F^2)
        + \sigma_3 (2 q L + 4 g^\top H g) + \sigma_4 q^2 .

The per-point Jacobian of the output's :math:`\Delta^2 u` with respect to a
layer's :math:`M` is :math:`\sum_s Y_s^\top \bar Z_s` (and :math:`\bar z_0` for
:math:`b`), :math:`\bar Z` the adjoints of the ``z`` streams from one backward
sweep per output component. The adjoint of the map above differentiates
:math:`\sigma_4(z_0)` with respect to :math:`z_0`, so it needs
:math:`\sigma^{(5)}` — unavoidably: :math:`\partial_\theta \Delta^2 u` is a
fifth-order total derivative, and forward mode over the parameters (the
R-pass, used by :func:`~hessquik_core.pinn.jvp`) needs it just the same. The
fifth derivatives are supplied here (:func:`sigma5`) for the activations where
they are closed forms: tanh, sin, antiTanh, sigmoid, identity, quadratic, and the
sine/cosine blocks of Fourier features; another activation is refused by name.

The layers: every layer that declares its affine structure
(:meth:`~hessquik_core.layers.Layer.affine_structure`,
:math:`f(u) = \rho\,u + h\,\sigma(uM + b)`: dense, residual, SIREN and
Fourier-feature layers, and any layer of a user that declares it) is swept by
that structure alone, without knowing its class: :math:`Z = YM + b` row by row,
:math:`A = Y [+] h\,\Phi(Z)`, the blocks of :math:`M` and :math:`b` mapped to the
layer's own parameters by the structure's ``pullback`` (SIREN:
:math:`\partial K = \omega_0\,\partial M`; Fourier features:
:math:`\partial B = 2\pi(\partial M_{:, :F} + \partial M_{:, F:})`), and the R-pass
reads the tangent of :math:`(M, b)` along a parameter direction :math:`V` as the
structure at :math:`V` (:func:`tangent`) — :math:`M` and :math:`b` are *linear* in
the parameters for every built-in layer, which that relies on. Another layer is
refused by name.

Cost per layer: the streams are ``S = 3 + 2d + d²`` rows, and the per-point block
one batched GEMM of inner size ``S``. The Hessian is kept full (``d²`` rows, each
entry an independent coordinate of the map above, so its adjoint needs no
symmetrisation); packing it to ``d(d+1)/2`` rows, as :func:`hessquik_core.biharmonic`
does, would save ``d(d-1)/2`` rows — not done yet.
"""

from __future__ import annotations

from ..activations import Activation, AntiTanh, Identity, Quadratic, Sigmoid, Sin, Tanh
from ..layers.affine_structure import AffineStructure, SinCos
from ..rules import streams as st

#: what the refusals name: the layers that have the per-point Jacobians of orders 3-4
DECLARED = (
    "layers declaring affine structure (Layer.affine_structure): dense, residual, SIREN and "
    "Fourier-feature layers"
)

#: activations with a closed-form fifth derivative (:func:`sigma5`); ``SinCos`` is the
#: column-block activation of Fourier features' declared structure
FIFTH = (Tanh, Sin, AntiTanh, Sigmoid, Identity, Quadratic, SinCos)

#: their names, as the refusals list them
FIFTH_NAMES = "tanh, sin, antiTanh, sigmoid, identity, quadratic (and Fourier features' sin/cos)"


def rows(d: int) -> int:
    """Number of bi-Laplacian stream rows for ``d`` inputs."""
    return 3 + 2 * d + d * d


def sigma5(act: Activation, z, xp):
    r""":math:`\sigma^{(5)}(z)` for the activations of :data:`FIFTH`.

    tanh: :math:`8(1-t^2)(15t^4 - 15t^2 + 2)`; antiTanh: tanh's
    :math:`\sigma''''= 8t(1-t^2)(2-3t^2)`; sigmoid: :math:`s(1-s)(120s^4 - 240s^3 +
    150s^2 - 30s + 1)`; sin: :math:`\cos z`; the sine/cosine blocks of Fourier
    features: :math:`\cos z` on the first ``F`` columns, :math:`-\sin z` on the rest;
    identity, quadratic: 0.
    """
    if isinstance(act, SinCos):
        F = act.features
        return xp.concat([xp.cos(z[..., :F]), -xp.sin(z[..., F:])], axis=-1)
    if isinstance(act, Sin):
        return xp.cos(z)
    if isinstance(act, (Tanh, AntiTanh)):
        t = xp.tanh(z)
        t2 = t * t
        s1 = 1.0 - t2
        if isinstance(act, Tanh):
            return 8.0 * s1 * ((15.0 * t2 - 15.0) * t2 + 2.0)
        return 8.0 * t * s1 * (2.0 - 3.0 * t2)
    if isinstance(act, Sigmoid):
        s = act.derivatives(z, 0, xp=xp)[0]
        return s * (1.0 - s) * ((((120.0 * s - 240.0) * s + 150.0) * s - 30.0) * s + 1.0)
    return xp.zeros_like(z)  # identity, quadratic


def declared(leaf) -> AffineStructure | None:
    """The leaf's declared affine structure without parameters (its activation and
    form), or ``None`` where it declares none."""
    fn = getattr(leaf, "affine_structure", None)
    return fn() if callable(fn) else None


def has_order(act, order: int) -> bool:
    """Does ``act`` supply :math:`\\sigma^{(order)}` (the fifth from :func:`sigma5`)?"""
    if order == 5:
        return isinstance(act, FIFTH)
    return getattr(act, "name", None) == "identity" or getattr(act, "max_order", 2) >= order


def check_leaves(leaves, order: int, what: str, detail: str) -> None:
    """Refuse, before any work, a layer that declares no affine structure or an
    activation without :math:`\\sigma^{(order)}`, naming the layer (``what``: the
    quantity, ``detail``: what its Jacobian is of)."""
    for i, leaf in enumerate(leaves):
        form = declared(leaf)
        if form is None:
            raise ValueError(
                f"{what}: layer {i} ({type(leaf).__name__}) is not supported for per-point Jacobians of "
                f"{detail} yet (supported: {DECLARED})"
            )
        act = form.act
        if not has_order(act, order):
            need = (
                f"σ up to the fifth derivative, available for: {FIFTH_NAMES}"
                if order == 5
                else f"σ up to order {order} (max_order {order})"
            )
            raise ValueError(
                f"{what}: layer {i} ({type(leaf).__name__}) uses {act!r}; its per-point Jacobian of "
                f"{detail} needs {need}"
            )


def supported(leaves, order: int) -> bool:
    """:func:`check_leaves` as a yes/no (the training routes' test)."""
    try:
        check_leaves(leaves, order, "", "")
    except ValueError:
        return False
    return bool(leaves)


def check_supported(leaves) -> None:
    """Refuse, before any work, a layer without declared affine structure or an activation
    without a closed-form fifth derivative (the bi-Laplacian's Jacobian needs it)."""
    check_leaves(leaves, 5, "quantity 'biharmonic'", "the bi-Laplacian")


# --------------------------------------------------------------------------
# the streams of one activation
# --------------------------------------------------------------------------


def _split(Z, d: int, xp):
    """``(z0, g, H, c, L, B)`` from ``(..., S, N, q)`` (``g, c : (..., d, N, q)``,
    ``H : (..., d, d, N, q)``)."""
    lead = tuple(Z.shape[:-3])
    tail = tuple(Z.shape[-2:])
    z0 = Z[..., 0, :, :]
    g = Z[..., 1 : 1 + d, :, :]
    H = xp.reshape(Z[..., 1 + d : 1 + d + d * d, :, :], lead + (d, d) + tail)
    o = 1 + d + d * d
    c = Z[..., o : o + d, :, :]
    return z0, g, H, c, Z[..., o + d, :, :], Z[..., o + d + 1, :, :]


def _join(z0, g, H, c, L, B, xp):
    lead = tuple(H.shape[:-4])
    d = H.shape[-3]
    tail = tuple(H.shape[-2:])
    Hr = xp.reshape(H, lead + (d * d,) + tail)
    ax = len(lead)
    return xp.concat(
        [xp.expand_dims(z0, axis=ax), g, Hr, c, xp.expand_dims(L, axis=ax), xp.expand_dims(B, axis=ax)],
        axis=ax,
    )


class Phi:
    """What the backward and R-passes keep of :math:`a = \\sigma(z)` on the streams."""

    def __init__(self, Z, act: Activation, d: int, xp):
        self.d, self.xp, self.act = d, xp, act
        z0, g, H, c, L, B = _split(Z, d, xp)
        self.parts = (z0, g, H, c, L, B)
        self.s = act.derivatives(z0, 4, xp=xp)
        self._s5 = None
        self.q = xp.sum(g * g, axis=-3)
        self.Hg = xp.sum(H * g[..., None, :, :, :], axis=-3)  # (Hg)_i = Σ_j H_ij g_j
        self.gHg = xp.sum(g * self.Hg, axis=-3)
        self.HH = xp.sum(xp.sum(H * H, axis=-3), axis=-3)
        self.gc = xp.sum(g * c, axis=-3)

    @property
    def s5(self):
        if self._s5 is None:
            self._s5 = sigma5(self.act, self.parts[0], self.xp)
        return self._s5

    def forward(self):
        xp = self.xp
        z0, g, H, c, L, B = self.parts
        s0, s1, s2, s3, s4 = self.s
        q, Hg = self.q, self.Hg
        ga = s1 * g
        Ha = s1 * H + s2 * (g[:, None, ...] * g[None, ...])
        ca = s1 * c + s2 * (L * g + 2.0 * Hg) + (s3 * q) * g
        La = s1 * L + s2 * q
        Ba = (
            s1 * B
            + s2 * (4.0 * self.gc + L * L + 2.0 * self.HH)
            + s3 * (2.0 * q * L + 4.0 * self.gHg)
            + s4 * q * q
        )
        return _join(s0, ga, Ha, ca, La, Ba, xp)

    def rop(self, dZ):
        r"""Tangent :math:`\Phi'(Z)[dZ]` (``dZ : (S, N, q)``)."""
        xp = self.xp
        z0, g, H, c, L, B = self.parts
        s0, s1, s2, s3, s4 = self.s
        s5 = self.s5
        q, Hg = self.q, self.Hg
        e0, eg, eH, ec, eL, eB = _split(dZ, self.d, xp)
        dq = 2.0 * xp.sum(g * eg, axis=-3)
        dHg = xp.sum(eH * g[None, ...], axis=1) + xp.sum(H * eg[None, ...], axis=1)
        dgHg = xp.sum(eg * Hg, axis=0) + xp.sum(g * dHg, axis=0)
        dgc = xp.sum(eg * c + g * ec, axis=0)
        dHH = 2.0 * xp.sum(xp.sum(H * eH, axis=0), axis=0)
        da0 = s1 * e0
        dga = s1 * eg + (s2 * e0) * g
        gg = g[:, None, ...] * g[None, ...]
        dHa = (
            s1 * eH
            + s2 * (eg[:, None, ...] * g[None, ...] + g[:, None, ...] * eg[None, ...])
            + e0 * (s2 * H + s3 * gg)
        )
        dca = (
            s1 * ec
            + s2 * (eL * g + L * eg + 2.0 * dHg)
            + s3 * (dq * g + q * eg)
            + e0 * (s2 * c + s3 * (L * g + 2.0 * Hg) + (s4 * q) * g)
        )
        dLa = s1 * eL + s2 * dq + e0 * (s2 * L + s3 * q)
        dBa = (
            s1 * eB
            + s2 * (4.0 * dgc + 2.0 * L * eL + 2.0 * dHH)
            + s3 * (2.0 * dq * L + 2.0 * q * eL + 4.0 * dgHg)
            + 2.0 * s4 * q * dq
            + e0
            * (
                s2 * B
                + s3 * (4.0 * self.gc + L * L + 2.0 * self.HH)
                + s4 * (2.0 * q * L + 4.0 * self.gHg)
                + s5 * q * q
            )
        )
        return _join(da0, dga, dHa, dca, dLa, dBa, xp)

    def vjp(self, Abar):
        r"""Adjoint :math:`\Phi'(Z)^\top[\bar A]` (``Abar : (c, S, N, q)``), the transpose of :meth:`rop`."""
        xp = self.xp
        z0, g, H, c, L, B = self.parts
        s0, s1, s2, s3, s4 = self.s
        s5 = self.s5
        q, Hg = self.q, self.Hg
        a0, ag, aH, ac, aL, beta = _split(Abar, self.d, xp)
        # per output direction (leading axis); the forward quantities broadcast
        gH = xp.sum(aH * g[None, None, ...], axis=2)  # (H̄ g)_i = Σ_j H̄_ij g_j, (c, d, N, q)
        gHt = xp.sum(aH * g[None, :, None, ...], axis=1)  # (H̄ᵀ g)_j
        gHag = xp.sum(g[None, ...] * gH, axis=1)  # gᵀ H̄ g
        HaH = xp.sum(xp.sum(aH * H[None, ...], axis=1), axis=1)  # ⟨H̄, H⟩
        gca = xp.sum(g[None, ...] * ac, axis=1)  # g·c̄
        Hca = xp.sum(H[None, ...] * ac[:, :, None, ...], axis=1)  # (Hᵀ c̄)_j
        cca = xp.sum(c[None, ...] * ac, axis=1)
        Hgca = xp.sum(Hg[None, ...] * ac, axis=1)
        z0b = (
            s1 * a0
            + s2 * xp.sum(g[None, ...] * ag, axis=1)
            + s2 * HaH
            + s3 * gHag
            + aL * (s2 * L + s3 * q)
            + s2 * cca
            + s3 * (L * gca + 2.0 * Hgca)
            + (s4 * q) * gca
            + beta
            * (
                s2 * B
                + s3 * (4.0 * self.gc + L * L + 2.0 * self.HH)
                + s4 * (2.0 * q * L + 4.0 * self.gHg)
                + s5 * q * q
            )
        )
        b = beta[:, None, ...]
        gb = (
            s1 * ag
            + s2 * (gH + gHt)
            + (2.0 * s2) * aL[:, None, ...] * g[None, ...]
            + s2 * (L * ac + 2.0 * Hca)
            + s3 * (q * ac + 2.0 * gca[:, None, ...] * g[None, ...])
            + b * (4.0 * s2 * c + 4.0 * s3 * L * g + 8.0 * s3 * Hg + (4.0 * s4 * q) * g)[None, ...]
        )
        gg = g[:, None, ...] * g[None, ...]
        Hb = (
            s1 * aH
            + (2.0 * s2) * ac[:, :, None, ...] * g[None, None, ...]
            + beta[:, None, None, ...] * (4.0 * s2 * H + 4.0 * s3 * gg)[None, ...]
        )
        cb = s1 * ac + (4.0 * s2) * b * g[None, ...]
        Lb = s1 * aL + s2 * gca + beta * (2.0 * s2 * L + 2.0 * s3 * q)
        Bb = s1 * beta
        return _join(z0b, gb, Hb, cb, Lb, Bb, xp)


# --------------------------------------------------------------------------
# the layers, by their declared affine structure f(u) = [u +] h σ(uM + b)
# --------------------------------------------------------------------------


def layer_forward(leaf, Y, P, d, ops, phi_of=None):
    """Streams out of one layer declaring affine structure, and its cache ``(Y, Phi, structure)``;
    ``phi_of(Z, act)`` builds the activation's stream map (default: the bi-Laplacian's :class:`Phi`)."""
    form = leaf.affine_structure(P)
    Z = st.affine_streams(Y, form.M, form.b, ops)
    phi = Phi(Z, form.act, d, ops.xp) if phi_of is None else phi_of(Z, form.act)
    A = phi.forward()
    if form.scale != 1.0:
        A = form.scale * A
    if form.residual:
        A = Y + A
    return A, (Y, phi, form)


def _trainable(leaf) -> bool:
    """Has the layer trainable parameters (frozen Fourier features have none: no blocks)?"""
    return next(iter(leaf.named_parameters()), None) is not None


def layer_vjp(leaf, cache, P, Ybar, mode, need_input, ops):
    """Parameter blocks (``mode`` as :func:`~hessquik_core.rules.streams.affine_params`; the
    blocks of ``M`` and ``b`` mapped to the layer's parameter names by the structure's
    ``pullback``) and the input adjoint of one layer."""
    Y, phi, form = cache
    Zbar = phi.vjp(Ybar if form.scale == 1.0 else form.scale * Ybar)
    blocks: dict = {}
    if _trainable(leaf):
        if form.pullback is None:  # the contract: a structure built with parameters maps back to them
            raise TypeError(f"{type(leaf).__name__}.affine_structure(params) returned no pullback")
        out = st.affine_params(Y, Zbar, form.b is not None, mode, ops)
        blocks = dict(form.pullback(out.weight, out.bias))
    Yin = None
    if need_input:
        Yin = st.affine_input_adjoint(Zbar, form.M, ops)
        if form.residual:
            Yin = Ybar + Yin
    return Yin, blocks


def tangent(leaf, P, V, xp) -> AffineStructure | None:
    r"""The tangent :math:`(\dot M, \dot b)` of the layer's structure along the parameter
    direction ``V`` (local names; a parameter without a direction, a frozen one, has
    none): the structure evaluated at the direction, exact because :math:`M` and
    :math:`b` are linear in the parameters; ``None`` when nothing moves."""
    if not V:
        return None
    at = {k: V[k] if k in V else (None if a is None else xp.zeros_like(a)) for k, a in P.items()}
    return leaf.affine_structure(at)


def layer_rop(leaf, cache, P, RY, V, ops):
    """R-pass of one layer: :math:`RY' = [RY +]\\,h\\,\\Phi'(Z)[RY\\,M + Y \\dot M + \\dot b]`
    (``None`` while nothing depends on the parameters)."""
    Y, phi, form = cache
    dot = tangent(leaf, P, V, ops.xp)
    if dot is None:
        RZ = None if RY is None else ops.mm(RY, form.M)
    else:
        RZ = st.affine_rop(Y, RY, form.M, dot.M, dot.b, ops)
    RA = None if RZ is None else phi.rop(RZ)
    if RA is not None and form.scale != 1.0:
        RA = form.scale * RA
    if form.residual and RY is not None:
        RA = RY if RA is None else RY + RA
    return RA


def input_streams(x, xp, device):
    """``(S, n, d)``: the points, ``∇x = I`` and zero higher rows."""
    n, d = x.shape
    eye = xp.eye(d, dtype=x.dtype, device=device)
    g = xp.broadcast_to(eye[:, None, :], (d, n, d))
    zeros = xp.zeros((d * d + d + 2, n, d), dtype=x.dtype, device=device)
    return xp.concat([x[None, ...], g, zeros], axis=0)
