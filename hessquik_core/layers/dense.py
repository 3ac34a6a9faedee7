r"""The dense layer :math:`f(u) = \sigma(uK + b)`."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ..activations import Activation, get_activation
from ..carry import Adjoints, Request, Tangents
from ..rules import affine, streams
from ..rules.directions import weight_gradient
from .affine_structure import AffineStructure
from .base import Layer, check_int, register_layer, rng_of


class AffineCache(NamedTuple):
    """What the derivative steps of :math:`\\sigma(uM + b)` keep from the evaluation."""

    dsigma: Any  # (n, q): σ'(z), None for order 0
    d2sigma: Any  # (n, q): σ''(z), None below order 2


@register_layer
class SingleLayer(Layer):
    r"""Single layer :math:`f(u) = \sigma(u K + b)`.

    Parameters
    ----------
    in_features, out_features : int
        :math:`p` and :math:`q`.
    act : Activation or str, default ``Identity()``
        Pointwise activation :math:`\sigma`.
    bias : bool, default True
        Whether :math:`b` exists.
    dtype : NumPy dtype, default float64
        Storage dtype of the parameters (calls compute in the input's dtype).
    seed : int or numpy.random.Generator, optional
        Seed of the initialisation (hessQuik's distribution:
        :math:`K, b \sim U(\pm 1/\sqrt{q})`).

    Attributes
    ----------
    K : (p, q)
    b : (q,) or None

    Notes
    -----
    With :math:`z = uK + b`, :math:`J = K\,\mathrm{diag}(\sigma'(z))` and

    .. math::
        \partial f = \sigma'(z) \odot (\partial u\, K),\qquad
        \partial^2 f = \sigma''(z) \odot (\partial u K)(\partial u K)^\top + \sigma'(z) \odot (\partial^2 u\, K)

    forward, and backward
    :math:`dl_u = K(\sigma' \odot dl)`,
    :math:`Dl_u = K\,[\mathrm{diag}(\sigma')\, Dl\, \mathrm{diag}(\sigma') + \mathrm{diag}(\sigma'' \odot dl)]\,K^\top`
    (:mod:`hessquik_core.rules.affine`).
    """

    in_features: int
    out_features: int

    config_schema = {"in_features": "int", "out_features": "int", "bias": "bool"}
    has_activation = True
    torch_twin = "Linear"  # nn.Linear, then the activation module (none for the identity)
    torch_twin_takes_activation = True
    hessquik_name = "singleLayer"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        act="identity",
        bias: bool = True,
        *,
        dtype=np.float64,
        seed=None,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.out_features = check_int("out_features", out_features)
        self.act: Activation = get_activation(act)
        self.bias = bool(bias)
        rng = rng_of(seed)
        bound = 1.0 / math.sqrt(self.out_features)
        p, q = self.in_features, self.out_features
        self._register("K", rng.uniform(-bound, bound, (p, q)).astype(dtype), (p, q))
        self._register("b", rng.uniform(-bound, bound, (q,)).astype(dtype) if bias else None, (q,))

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias}

    @classmethod
    def parameter_shapes(cls, config: dict) -> dict:
        p, q = config["in_features"], config["out_features"]
        return {"K": (p, q), **({"b": (q,)} if config["bias"] else {})}

    def __repr__(self) -> str:
        return f"SingleLayer({self.in_features}, {self.out_features}, act={self.act!r}, bias={self.bias})"

    # -- input derivatives ----------------------------------------------------------
    def evaluate(self, u, params, order, ops):
        s0, s1, s2 = affine.evaluate(u, params["K"], params["b"], self.act, order, ops.xp)
        return s0, AffineCache(s1, s2)

    def forward_step(self, cache, params, tangents: Tangents, request: Request, ops) -> Tangents:
        K = params["K"]
        return affine.forward_step(
            cache.dsigma, cache.d2sigma, ops.mm(tangents.jacobian, K), tangents, K, request, ops
        )

    def backward_step(self, cache, params, adjoints: Adjoints, second: bool, ops) -> Adjoints:
        return affine.backward_step(cache.dsigma, cache.d2sigma, params["K"], adjoints, second, ops)

    def backward_first(self, cache, params, adjoints: Adjoints, what: str, ops):
        return affine.backward_first(cache.dsigma, cache.d2sigma, params["K"], adjoints, what, ops)

    def affine_structure(self, params=None) -> AffineStructure:
        r""":math:`\sigma(uK + b)`: ``M = K``, ``b = b`` (:mod:`~hessquik_core.layers.affine_structure`)."""
        if params is None:
            return AffineStructure(self.act)
        return AffineStructure(self.act, params["K"], params["b"], pullback=_dense_pullback)

    # -- derivatives with respect to the parameters (hessquik_core.curvature) --------
    def param_vjp(self, cache, params, u, dl, per_example, ops):
        r"""Adjoint ``dl = ∂C/∂f : (n, q)`` to ``∂C/∂u`` and to the parameters.

        With :math:`\delta = \sigma'(z) \odot dl`: :math:`\partial C/\partial u = \delta K^\top`,
        :math:`\partial C/\partial K = \sum_n u_n \otimes \delta_n`,
        :math:`\partial C/\partial b = \sum_n \delta_n`
        (per example: the summands, shapes ``(n, p, q)`` and ``(n, q)``).
        """
        delta, dlu = affine.param_vjp(cache.dsigma, params["K"], dl, ops)
        g = {"K": weight_gradient(u, delta, per_example, ops)}
        if params["b"] is not None:
            g["b"] = delta if per_example else ops.xp.sum(delta, axis=0)
        return dlu, g

    # the fused gradient pass (hessquik_core.curvature value_and_gradient): the forward
    # keeps z and σ(z) only, the backward forms δ = σ'(z) ⊙ dl in one step (tanh from its value)
    def param_grad_forward(self, u, params, ops):
        r"""Forward step of the gradient pass: :math:`z = uK + b` (one ``addmm`` where the
        backend has it), returns ``(σ(z), (z, σ(z)))``; no :math:`\sigma'` is formed here."""
        z = ops.linear(u, params["K"], params["b"])
        s = self.act(z, 0, xp=ops.xp)[0]
        return s, (z, s)

    def param_grad_backward(self, cache, params, u, dl, need_dlu, ops, out=None):
        r"""Backward step of the gradient pass: :math:`\delta = \sigma'(z) \odot dl`
        (``Activation.vjp``), :math:`\partial C/\partial K = u^\top \delta`,
        :math:`\partial C/\partial b = \sum_n \delta_n`, and :math:`\delta K^\top`
        only when ``need_dlu`` (not at the first layer). Returns ``(dl_u | None, grads)``;
        with ``out`` (a mutable library's views ``{"K": (p, q), "b": (q,)}`` of the flat
        gradient) the gradients are written there (``grads`` is ``out``)."""
        z, s = cache
        delta = self.act.vjp(z, s, dl, ops)
        xp = ops.xp
        if out is not None:
            ops.mm_into(xp.matrix_transpose(u), delta, out["K"])
            if params["b"] is not None:
                ops.sum_into(delta, out["b"])
            g = out
        else:
            g = {"K": weight_gradient(u, delta, False, ops)}
            if params["b"] is not None:
                g["b"] = xp.sum(delta, axis=0)
        dlu = ops.mm(delta, ops.xp.matrix_transpose(params["K"])) if need_dlu else None
        return dlu, g

    def param_rop_forward(self, cache, params, u, Ru, V, ops):
        r"""Forward R-pass: :math:`R z = (Ru) K + u V_K + V_b`, :math:`R f = \sigma' \odot Rz`.

        ``Ru : (n, k, p)`` or ``None`` (input independent of the parameters),
        ``V['K'] : (k, p, q)``, ``V['b'] : (k, q)``. Returns ``(Rf, Rz)``.
        """
        return affine.param_rop_forward(cache.dsigma, params["K"], V["K"], u, Ru, V.get("b"), ops)

    def param_rop_backward(
        self, cache, rcache, params, u, Ru, V, dl, Rdl, ops, need_dlu=True, need_Rdlu=True
    ):
        r"""Backward R-pass (Pearlmutter) of :meth:`param_vjp` (:func:`~hessquik_core.rules.affine.param_rop_backward`).

        Returns ``(dl_u, Rdl_u, {name: (k, *shape)})``; ``need_dlu=False`` /
        ``need_Rdlu=False`` skip the input adjoints (``None``), e.g. at the first layer.
        """
        r = affine.param_rop_backward(
            cache.dsigma,
            cache.d2sigma,
            params["K"],
            V["K"],
            u,
            Ru,
            rcache,
            dl,
            Rdl,
            ops,
            bias=params["b"] is not None,
            need_dlu=need_dlu,
            need_Rdlu=need_Rdlu,
        )
        g = {"K": r.RgM}
        if r.Rgb is not None:
            g["b"] = r.Rgb
        return r.dl_u, r.Rdl_u, g

    # -- streams: per-point parameter Jacobians (hessquik_core.pinn) ----------------
    stream_kfac = True

    def stream_activations(self) -> tuple:
        return (self.act,)

    def stream_forward(self, Y, params, spec, ops):
        r"""Streams :math:`Y' = \Phi_\sigma(YK + b)` (``hessquik_core.rules.streams``)."""
        Z = streams.affine_streams(Y, params["K"], params["b"], ops)
        Yo, phi = streams.phi_forward(Z, self.act, spec, ops)
        return Yo, (Y, phi)

    def stream_vjp(self, cache, params, Ybar, mode, need_input, ops):
        r""":math:`\bar Z = \Phi_\sigma^\top(\bar Y)`; per point :math:`\partial_K = \sum_s Y_s^\top \bar Z_s`,
        :math:`\partial_b = \bar z`; input adjoint :math:`\bar Z K^\top`."""
        Y, phi = cache
        Zbar = streams.phi_vjp(phi, Ybar, ops)
        out = streams.affine_params(Y, Zbar, params["b"] is not None, mode, ops)
        Yin = streams.affine_input_adjoint(Zbar, params["K"], ops) if need_input else None
        if mode == "kfac":
            return Yin, [out.weight]
        return Yin, ({"K": out.weight} if out.bias is None else {"K": out.weight, "b": out.bias})

    def stream_rop(self, cache, params, RY, V, ops):
        r""":math:`R Y' = \Phi_\sigma'(Z)[RY\,K + Y V_K + V_b]`."""
        Y, phi = cache
        RZ = streams.affine_rop(Y, RY, params["K"], V["K"], V.get("b"), ops)
        return streams.phi_rop(phi, RZ, ops)

    @classmethod
    def from_hessquik(cls, module, kit):
        act = kit.act(module.act, ".act")
        return cls(
            module.in_features, module.out_features, act=act, bias=module.b is not None, dtype=kit.dtype
        )

    # -- torch twin -----------------------------------------------------------------
    def to_torch(self, kit) -> list:
        """``nn.Linear(in, out)`` with ``weight = Kᵀ``, then the activation (none for identity)."""
        lin = kit.nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.b is not None,
            dtype=kit.dtype_of(self),
            device=kit.device,
        )
        kit.assign(lin.weight, kit.tensor(self.K).T)
        if self.b is not None:
            kit.assign(lin.bias, kit.tensor(self.b))
        act = kit.act(self.act)
        return [lin] if act is None else [lin, act]

    @classmethod
    def from_torch(cls, module, kit):
        """``nn.Linear`` (``weight = Kᵀ``) and the activation module after it (``kit.activation``)."""
        layer = cls(
            module.in_features,
            module.out_features,
            act=kit.activation or "identity",
            bias=module.bias is not None,
        )
        state = {"K": np.ascontiguousarray(kit.numpy(module.weight).T)}
        if module.bias is not None:
            state["b"] = kit.numpy(module.bias)
        return layer, state


def _dense_pullback(gM, gb) -> dict:
    """Gradients with respect to ``M = K`` and ``b`` are those of ``K`` and ``b``."""
    return {"K": gM} if gb is None else {"K": gM, "b": gb}


__all__ = ["AffineCache", "SingleLayer"]
