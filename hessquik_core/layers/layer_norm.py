r"""Layer normalisation :math:`f(u) = \gamma \odot \hat x(u) + \beta`, as ``torch.nn.LayerNorm``.

The normalisation couples all features, so the Jacobian is not
diagonal-times-matrix, but it is :math:`r` times the identity minus a
rank-two term: the input derivatives use the structured steps of
:mod:`hessquik_core.rules.layer_norm` (:math:`O(w)` per tangent or pair in
forward mode, :math:`O(k w^2)` per example in backward mode, never the
dense :math:`(w, w, w)` second derivative); the parameter derivatives
(:math:`\gamma`, :math:`\beta`) are written here.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ..carry import Adjoints, Request, Tangents
from ..rules import layer_norm as rules
from ..rules import streams
from .base import Layer, check_int, register_layer


class LayerNormCache(NamedTuple):
    """What the steps keep: the normalised features and the inverse standard deviation."""

    xhat: Any  # (n, w)
    inv_std: Any  # (n, 1)


@register_layer
class LayerNorm(Layer):
    r"""Layer normalisation over the features, matching ``torch.nn.LayerNorm(features)``.

    :math:`\mu = \bar u`, :math:`v = \overline{(u - \mu)^2}` (biased),
    :math:`\hat x = (u - \mu)/\sqrt{v + \varepsilon}`,
    :math:`f = \gamma \odot \hat x + \beta`.

    Parameters
    ----------
    features : int
        :math:`w` (input and output width).
    eps : float, default 1e-5
        :math:`\varepsilon`, added to the variance.
    elementwise_affine : bool, default True
        Whether :math:`\gamma` (initialised to 1) and :math:`\beta` (to 0) exist.
    dtype : NumPy dtype, default float64
    seed : optional
        Accepted for the common layer signature (the initialisation is deterministic).

    Attributes
    ----------
    gamma, beta : (w,) or None

    Notes
    -----
    With :math:`r = (v + \varepsilon)^{-1/2}`,
    :math:`\partial \hat x/\partial u = r(I - \tfrac1w \mathbf 1\mathbf 1^\top - \tfrac1w \hat x\hat x^\top)`
    (symmetric) and
    :math:`D^2\hat x[s, t] = -r(a_s Jt + a_t Js + \tfrac1w (Js\cdot t)\hat x)`,
    :math:`a_s = \hat x\cdot s/w` (docs/derivations.md). The input derivatives
    apply them as a rank-two update of a diagonal: :math:`O(w)` per tangent
    or pair of tangents in forward mode, :math:`O(k w^2)` per example in
    backward mode (the size of the carried Hessian); the Laplacian and the
    Hessian diagonal have their own shortcuts in both modes.
    """

    config_schema = {"features": "int", "eps": "float", "elementwise_affine": "bool"}
    torch_twin = "LayerNorm"  # torch.nn.LayerNorm

    def __init__(
        self,
        features: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        *,
        dtype=np.float64,
        seed=None,
    ) -> None:
        super().__init__()
        self.features = check_int("features", features)
        self.in_features = self.out_features = self.features
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
            raise TypeError(f"eps must be a positive finite number, got {eps!r}")
        if not (math.isfinite(float(eps)) and eps > 0):
            raise ValueError(f"eps must be a positive finite number, got {eps!r}")
        self.eps = float(eps)
        if not isinstance(elementwise_affine, (bool, np.bool_)):
            raise TypeError(f"elementwise_affine must be True or False, got {elementwise_affine!r}")
        self.elementwise_affine = bool(elementwise_affine)
        w = self.features
        on = self.elementwise_affine
        self._register("gamma", np.ones(w, dtype=dtype) if on else None, (w,))
        self._register("beta", np.zeros(w, dtype=dtype) if on else None, (w,))

    def config(self) -> dict:
        return {"features": self.features, "eps": self.eps, "elementwise_affine": self.elementwise_affine}

    @classmethod
    def parameter_shapes(cls, config: dict) -> dict:
        w = config["features"]
        return {"gamma": (w,), "beta": (w,)} if config["elementwise_affine"] else {}

    def __repr__(self) -> str:
        return f"LayerNorm({self.features}, eps={self.eps}, elementwise_affine={self.elementwise_affine})"

    # -- input derivatives ----------------------------------------------------------
    @property
    def cost_shapes(self) -> tuple[tuple[int, int], ...]:
        """``((1, w),)``: the cost model prices a ``(p, q)`` GEMM; the structured
        steps cost what a ``1 → w`` layer does, :math:`O(w)` per tangent (or
        pair) forward and :math:`O(k w^2)` backward (the ``q²`` terms)."""
        return ((1, self.features),)

    def evaluate(self, u, params, order, ops):
        y, xhat, inv_std = rules.layer_norm_forward(
            u, self.eps, params.get("gamma"), params.get("beta"), xp=ops.xp
        )
        return y, LayerNormCache(xhat, inv_std)

    def forward_step(self, cache, params, tangents: Tangents, request: Request, ops) -> Tangents:
        return rules.forward_step(cache.xhat, cache.inv_std, params.get("gamma"), tangents, request, ops)

    def backward_step(self, cache, params, adjoints: Adjoints, second: bool, ops) -> Adjoints:
        return rules.backward_step(cache.xhat, cache.inv_std, params.get("gamma"), adjoints, second, ops)

    def backward_first(self, cache, params, adjoints: Adjoints, what: str, ops):
        return rules.backward_first(cache.xhat, cache.inv_std, params.get("gamma"), adjoints, what, ops)

    # -- derivatives with respect to γ, β (hessquik_core.curvature) -------------------
    def _Jt(self, t, cache):
        """:math:`J^0 t` (symmetric :math:`J^0 = \\partial \\hat x/\\partial u`) on the last axis."""
        return rules.layer_norm_jacobian_apply(t, cache.xhat, cache.inv_std)

    def param_vjp(self, cache, params, u, dl, per_example, ops):
        r""":math:`\partial C/\partial u = J^0(\gamma \odot dl)`,
        :math:`\partial C/\partial \gamma = \sum_n dl_n \odot \hat x_n`,
        :math:`\partial C/\partial \beta = \sum_n dl_n`."""
        xp = ops.xp
        gamma = params.get("gamma")
        dlu = self._Jt(dl if gamma is None else gamma * dl, cache)
        if gamma is None:
            return dlu, {}
        gg, gb = dl * cache.xhat, dl
        if not per_example:
            gg, gb = xp.sum(gg, axis=0), xp.sum(gb, axis=0)
        return dlu, {"gamma": gg, "beta": gb}

    def param_rop_forward(self, cache, params, u, Ru, V, ops):
        r""":math:`R\hat x = J^0\,Ru`, :math:`Rf = \gamma \odot R\hat x + V_\gamma \odot \hat x + V_\beta`.
        Returns ``(Rf, Rx̂)`` (``Rx̂`` is ``None`` when ``Ru`` is)."""
        gamma = params.get("gamma")
        Rxh = None if Ru is None else self._Jt(Ru, cache)  # (n, k, w)
        Rf = None
        if Rxh is not None:
            Rf = Rxh if gamma is None else gamma * Rxh
        if gamma is not None:
            own = V["gamma"][None, :, :] * cache.xhat[:, None, :] + V["beta"][None, :, :]
            Rf = own if Rf is None else Rf + own
        return Rf, Rxh

    def param_rop_backward(
        self, cache, rcache, params, u, Ru, V, dl, Rdl, ops, need_dlu=True, need_Rdlu=True
    ):
        r"""Backward R-pass of :meth:`param_vjp`.

        With :math:`c = \gamma \odot dl`:
        :math:`R(\partial_u C) = J^0(\gamma \odot Rdl) + [J^0(V_\gamma \odot dl) + D^2\hat x[\cdot, Ru]\cdot c]`,
        :math:`R(\partial_\gamma C) = \sum_n Rdl_n \odot \hat x_n + [dl_n \odot R\hat x_n]`,
        :math:`R(\partial_\beta C) = \sum_n Rdl_n`; bracketed terms (the
        layer's own curvature) vanish with ``dl=None`` (Gauss–Newton). The
        second-order term, from :math:`D^2\hat x[e_a, t]\cdot c`, is
        :math:`-r(\hat x_a (Jt\cdot c)/w + a_t (Jc)_a + (Jt)_a (\hat x\cdot c)/w)`.
        """
        xp = ops.xp
        gamma = params.get("gamma")
        xhat, r, w = cache.xhat, cache.inv_std, self.features
        dlu = Rdlu = None
        if dl is not None and need_dlu:
            dlu = self._Jt(dl if gamma is None else gamma * dl, cache)
        if need_Rdlu:
            Rdlu = self._Jt(Rdl if gamma is None else gamma * Rdl, cache)
            if dl is not None:
                c = dl if gamma is None else gamma * dl  # (n, w)
                if gamma is not None:
                    Rdlu = Rdlu + self._Jt(V["gamma"][None, :, :] * dl[:, None, :], cache)
                if Ru is not None:
                    Jt = rcache  # (n, k, w) = J⁰ Ru
                    Jc = self._Jt(c, cache)  # (n, w)
                    a_t = xp.sum(Ru * xhat[:, None, :], axis=-1) / w  # (n, k)
                    Jtc = xp.sum(Jt * c[:, None, :], axis=-1)  # (n, k)
                    xc = xp.sum(xhat * c, axis=-1)  # (n,)
                    second = (
                        xhat[:, None, :] * (Jtc / w)[:, :, None]
                        + a_t[:, :, None] * Jc[:, None, :]
                        + Jt * (xc / w)[:, None, None]
                    )
                    Rdlu = Rdlu - r[:, :, None] * second
        if gamma is None:
            return dlu, Rdlu, {}
        Rg = xp.sum(Rdl * xhat[:, None, :], axis=0)
        if dl is not None and rcache is not None:
            Rg = Rg + xp.sum(dl[:, None, :] * rcache, axis=0)
        return dlu, Rdlu, {"gamma": Rg, "beta": xp.sum(Rdl, axis=0)}

    # -- streams: per-point parameter Jacobians (hessquik_core.pinn) ----------------
    # x̂ = c ⋆ ρ(v) with c = u − mean(u), v = mean(c ⋆ c), ρ(t) = (t + ε)^(-1/2),
    # ⋆ the product of streams (rules.streams.star); f = γ x̂ + β.
    def _rho_derivatives(self, t):
        e = t + self.eps
        r = e**-0.5
        r3 = r / e
        return r, -0.5 * r3, 0.75 * r3 / e, -1.875 * r3 / (e * e)

    def stream_forward(self, Y, params, spec, ops):
        r"""Streams of :math:`\gamma \odot \hat x + \beta`, :math:`\hat x = c \star \rho(\overline{c \star c})`."""
        xp = ops.xp
        C = Y - xp.mean(Y, axis=-1, keepdims=True)
        V = xp.mean(streams.star(C, C, spec, ops), axis=-1, keepdims=True)  # (S, N, 1)
        R, phi = streams.phi_from_derivatives(V, self._rho_derivatives(V[0, ...]), spec, ops)
        X = streams.star(C, R, spec, ops)
        gamma = params.get("gamma")
        if gamma is None:
            return X, (C, R, phi, X)
        Yo = gamma * X
        Yo = xp.concat([(Yo[0, ...] + params["beta"])[None, ...], Yo[1:, ...]], axis=0)
        return Yo, (C, R, phi, X)

    def stream_vjp(self, cache, params, Ybar, mode, need_input, ops):
        r"""Per point :math:`\partial_\gamma = \sum_s \hat X_s \odot \bar Y'_s`,
        :math:`\partial_\beta = \bar y'_0`; the input adjoint back through ⋆, ρ and the centring."""
        xp = ops.xp
        C, R, phi, X = cache
        if mode == "kfac":
            raise ValueError("LayerNorm has no Kronecker-factored curvature (not an affine layer)")
        gamma = params.get("gamma")
        out = {}
        if gamma is not None:
            r = Ybar.shape[1]
            gg = xp.sum(X[:r, ...] * Ybar, axis=1)  # (c, N, w)
            gb = Ybar[:, 0, ...]
            if mode == "point":
                out = {"gamma": xp.permute_dims(gg, (1, 0, 2)), "beta": xp.permute_dims(gb, (1, 0, 2))}
            else:
                out = {"gamma": xp.sum(gg, axis=(0, 1)), "beta": xp.sum(gb, axis=(0, 1))}
        if not need_input:
            return None, out
        spec = phi.spec
        Xbar = Ybar if gamma is None else gamma * Ybar
        Cbar = streams.star_vjp(Xbar, R, spec, ops)
        Rbar = xp.sum(streams.star_vjp(Xbar, C, spec, ops), axis=-1, keepdims=True)
        Vbar = streams.phi_vjp(phi, Rbar, ops) / self.features  # the mean's 1/w
        Cbar = Cbar + 2.0 * streams.star_vjp(xp.broadcast_to(Vbar, Cbar.shape), C, spec, ops)
        return Cbar - xp.mean(Cbar, axis=-1, keepdims=True), out

    def stream_rop(self, cache, params, RY, V, ops):
        r""":math:`RY' = \gamma \odot R\hat X + V_\gamma \odot \hat X + V_\beta`, with
        :math:`R\hat X = Rc \star \rho + c \star \rho'[2\,\overline{c \star Rc}]`."""
        xp = ops.xp
        C, R, phi, X = cache
        spec = phi.spec
        gamma = params.get("gamma")
        RX = None
        if RY is not None:
            RC = RY - xp.mean(RY, axis=-1, keepdims=True)
            RV = 2.0 * xp.mean(streams.star(C, RC, spec, ops), axis=-1, keepdims=True)
            RX = streams.star(RC, R, spec, ops) + streams.star(C, streams.phi_rop(phi, RV, ops), spec, ops)
        if gamma is None:
            return RX
        own = V["gamma"] * X
        own = xp.concat([(own[0, ...] + V["beta"])[None, ...], own[1:, ...]], axis=0)
        return own if RX is None else gamma * RX + own

    # -- torch twin -----------------------------------------------------------------
    def to_torch(self, kit) -> list:
        """``nn.LayerNorm(features, eps, elementwise_affine)``, ``weight = γ``, ``bias = β``."""
        dtype = kit.dtype or (kit.tensor(self.gamma).dtype if self.elementwise_affine else None)
        mod = kit.nn.LayerNorm(
            self.features,
            eps=self.eps,
            elementwise_affine=self.elementwise_affine,
            dtype=dtype,
            device=kit.device,
        )
        if self.elementwise_affine:
            kit.assign(mod.weight, kit.tensor(self.gamma))
            kit.assign(mod.bias, kit.tensor(self.beta))
        return [mod]

    @classmethod
    def from_torch(cls, module, kit):
        shape = tuple(module.normalized_shape)
        if len(shape) != 1:
            raise ValueError(
                f"LayerNorm over the last axis only: normalized_shape must have one entry, got {shape}"
            )
        affine = module.weight is not None
        if affine and module.bias is None:
            raise ValueError(
                "LayerNorm(bias=False) is not supported: hessquik-core's LayerNorm has both γ and β"
            )
        layer = cls(shape[0], eps=float(module.eps), elementwise_affine=affine)
        state = {"gamma": kit.numpy(module.weight), "beta": kit.numpy(module.bias)} if affine else {}
        return layer, state


__all__ = ["LayerNorm", "LayerNormCache"]
