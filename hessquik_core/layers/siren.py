r"""The SIREN layer :math:`f(u) = \sin(\omega_0 (uK + b))` (Sitzmann et al., 2020).

The layer is the affine rule :math:`\sigma(uM + b')` of
:mod:`hessquik_core.rules.affine` with :math:`\sigma = \sin`,
:math:`M = \omega_0 K` and :math:`b' = \omega_0 b`: every input derivative
(both modes, the Laplacian and diagonal shortcuts) is that rule's, and the
parameter passes are the rule's passes for :math:`(M, b')` chained through
:math:`\partial M/\partial K = \omega_0`, :math:`\partial b'/\partial b = \omega_0`.

This file is the whole layer: its maths, parameter passes, config schema
(``hq.save`` / ``hq.load``) and torch twin (``to_torch`` / ``from_torch``);
nothing else in the package names it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ..activations import Sin
from ..carry import Adjoints, Request, Tangents
from ..rules import affine, streams
from ..rules.directions import weight_gradient
from .affine_structure import AffineStructure
from .base import Layer, check_int, lazy_torch_class, register_layer, rng_of

_SIN = Sin()


class SirenCache(NamedTuple):
    """What the derivative steps of :math:`\\sin(uM + b')` keep from the evaluation."""

    dsigma: Any  # (n, q): cos(z), None for order 0
    d2sigma: Any  # (n, q): -sin(z), None below order 2
    M: Any  # (p, q): ω0 K in the call's namespace


@register_layer
class SirenLayer(Layer):
    r"""SIREN layer :math:`f(u) = \sin(\omega_0 (u K + b))`.

    Parameters
    ----------
    in_features, out_features : int
        :math:`p` and :math:`q`.
    w0 : float, default 30.0
        The frequency :math:`\omega_0 > 0`.
    is_first : bool, default False
        Whether the layer is the network's first: only the initialisation
        depends on it (SIREN's scheme below).
    bias : bool, default True
        Whether :math:`b` exists.
    dtype : NumPy dtype, default float64
        Storage dtype of the parameters (calls compute in the input's dtype).
    seed : int or numpy.random.Generator, optional
        Seed of the initialisation: :math:`K \sim U(-1/p, 1/p)` for the first
        layer, :math:`K \sim U(-\sqrt{6/p}/\omega_0, \sqrt{6/p}/\omega_0)` for the
        others (so that :math:`\omega_0 uK` has unit-order spread, SIREN's
        Sec. 3.2), and :math:`b \sim U(\pm 1/\sqrt{p})` (``nn.Linear``'s bias, as in
        the reference implementation).

    Attributes
    ----------
    K : (p, q)
    b : (q,) or None

    Notes
    -----
    With :math:`z = uM + b'`, :math:`M = \omega_0 K`, :math:`b' = \omega_0 b`:
    :math:`\partial f = \cos z \odot (\partial u\, M)`,
    :math:`\partial^2 f = -\sin z \odot (\partial u M)(\partial u M)^\top + \cos z \odot (\partial^2 u\, M)`,
    backward :math:`dl_u = M(\cos z \odot dl)` and
    :math:`Dl_u = M[\mathrm{diag}(\cos z)\,Dl\,\mathrm{diag}(\cos z) - \mathrm{diag}(\sin z \odot dl)]M^\top`.
    Parameter gradients: :math:`\partial C/\partial K = \omega_0 \sum_n u_n \otimes \delta_n`,
    :math:`\partial C/\partial b = \omega_0 \sum_n \delta_n`,
    :math:`\delta = \cos z \odot dl`.
    """

    in_features: int
    out_features: int

    config_schema = {
        "in_features": "int",
        "out_features": "int",
        "w0": "float",
        "is_first": "bool",
        "bias": "bool",
    }
    torch_twin = "SirenBlock"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        w0: float = 30.0,
        is_first: bool = False,
        bias: bool = True,
        *,
        dtype=np.float64,
        seed=None,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.out_features = check_int("out_features", out_features)
        if isinstance(w0, bool) or not isinstance(w0, (int, float, np.integer, np.floating)):
            raise TypeError(f"w0 must be a positive finite number, got {w0!r}")
        if not (math.isfinite(w0) and w0 > 0):
            raise ValueError(f"w0 must be a positive finite number, got {w0!r}")
        if not isinstance(is_first, (bool, np.bool_)):
            raise TypeError(f"is_first must be True or False, got {is_first!r}")
        self.w0 = float(w0)
        self.is_first = bool(is_first)
        self.bias = bool(bias)
        p, q = self.in_features, self.out_features
        rng = rng_of(seed)
        bound = 1.0 / p if self.is_first else math.sqrt(6.0 / p) / self.w0
        bias_bound = 1.0 / math.sqrt(p)
        self._register("K", rng.uniform(-bound, bound, (p, q)).astype(dtype), (p, q))
        self._register("b", rng.uniform(-bias_bound, bias_bound, (q,)).astype(dtype) if bias else None, (q,))

    def config(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "w0": self.w0,
            "is_first": self.is_first,
            "bias": self.bias,
        }

    @classmethod
    def parameter_shapes(cls, config: dict) -> dict[str, tuple[int, ...]]:
        p, q = config["in_features"], config["out_features"]
        return {"K": (p, q), **({"b": (q,)} if config["bias"] else {})}

    def __repr__(self) -> str:
        first = ", is_first=True" if self.is_first else ""
        return f"SirenLayer({self.in_features}, {self.out_features}, w0={self.w0}{first}, bias={self.bias})"

    def _Mb(self, params) -> tuple[Any, Any]:
        """``(M, b') = (ω0 K, ω0 b)`` in the call's namespace (``b'`` None without a bias)."""
        w0 = self.w0
        return w0 * params["K"], (None if params["b"] is None else w0 * params["b"])

    def affine_structure(self, params=None) -> AffineStructure:
        r""":math:`\sin(uM + b')` with :math:`M = \omega_0 K`, :math:`b' = \omega_0 b`; the
        pullback is :math:`\partial C/\partial K = \omega_0\,\partial C/\partial M`,
        :math:`\partial C/\partial b = \omega_0\,\partial C/\partial b'`
        (:mod:`~hessquik_core.layers.affine_structure`): the analytic training step and the
        high-dimensional routes take this layer."""
        if params is None:
            return AffineStructure(_SIN)
        M, b = self._Mb(params)
        w0 = self.w0

        def pullback(gM, gb) -> dict[str, Any]:
            return {"K": w0 * gM} if gb is None else {"K": w0 * gM, "b": w0 * gb}

        return AffineStructure(_SIN, M, b, pullback=pullback)

    # -- input derivatives: the affine rule with M = ω0 K, b' = ω0 b -----------------
    def evaluate(self, u, params: dict, order: int, ops) -> tuple[Any, SirenCache]:
        M, b = self._Mb(params)
        s0, s1, s2 = affine.evaluate(u, M, b, _SIN, order, ops.xp)
        return s0, SirenCache(s1, s2, M)

    def forward_step(self, cache, params: dict, tangents: Tangents, request: Request, ops) -> Tangents:
        M = cache.M
        return affine.forward_step(
            cache.dsigma, cache.d2sigma, ops.mm(tangents.jacobian, M), tangents, M, request, ops
        )

    def backward_step(self, cache, params: dict, adjoints: Adjoints, second: bool, ops) -> Adjoints:
        return affine.backward_step(cache.dsigma, cache.d2sigma, cache.M, adjoints, second, ops)

    def backward_first(self, cache, params: dict, adjoints: Adjoints, what: str, ops):
        return affine.backward_first(cache.dsigma, cache.d2sigma, cache.M, adjoints, what, ops)

    # -- derivatives with respect to K and b (hessquik_core.curvature) -----------------
    def param_vjp(self, cache, params: dict, u, dl, per_example: bool, ops) -> tuple[Any, dict[str, Any]]:
        r""":math:`\partial C/\partial u = \delta M^\top`, :math:`\partial C/\partial K = \omega_0\sum_n u_n\otimes\delta_n`,
        :math:`\partial C/\partial b = \omega_0\sum_n \delta_n` (per example: the summands)."""
        delta, dlu = affine.param_vjp(cache.dsigma, cache.M, dl, ops)
        delta = self.w0 * delta  # ∂C/∂(uM + b') times ∂M/∂K = ∂b'/∂b = ω0: one (n, q) scaling
        g = {"K": weight_gradient(u, delta, per_example, ops)}
        if params["b"] is not None:
            g["b"] = delta if per_example else ops.xp.sum(delta, axis=0)
        return dlu, g

    def param_rop_forward(self, cache, params: dict, u, Ru, V: dict, ops) -> tuple[Any, Any]:
        r"""Forward R-pass along :math:`(V_K, V_b)`: :math:`Rz = (Ru)M + \omega_0 (u V_K + V_b)`,
        :math:`Rf = \cos z \odot Rz`. Returns ``(Rf, Rz)``, both ``(n, k, q)``."""
        w0 = self.w0
        Vb = V.get("b")
        return affine.param_rop_forward(
            cache.dsigma, cache.M, w0 * V["K"], u, Ru, None if Vb is None else w0 * Vb, ops
        )

    def param_rop_backward(
        self, cache, rcache, params: dict, u, Ru, V: dict, dl, Rdl, ops, need_dlu=True, need_Rdlu=True
    ) -> tuple[Any, Any, dict[str, Any]]:
        r"""Backward R-pass: the affine rule's for :math:`(M, b')` with :math:`RM = \omega_0 V_K`,
        its :math:`R\,\partial C/\partial M` and :math:`R\,\partial C/\partial b'` times :math:`\omega_0`."""
        w0 = self.w0
        r = affine.param_rop_backward(
            cache.dsigma,
            cache.d2sigma,
            cache.M,
            w0 * V["K"],
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
        g = {"K": w0 * r.RgM}
        if r.Rgb is not None:
            g["b"] = w0 * r.Rgb
        return r.dl_u, r.Rdl_u, g

    # -- streams: per-point parameter Jacobians (hessquik_core.pinn) ----------------
    # Y' = Φ_sin(Y M + b') with M = ω0 K, b' = ω0 b: the dense layer's streams, the
    # blocks of (M, b') times ω0. Not Kronecker-factored (KFAC takes dense layers only).
    def stream_activations(self) -> tuple:
        return (_SIN,)

    def stream_forward(self, Y, params, spec, ops):
        r"""Streams :math:`Y' = \Phi_{\sin}(YM + b')` (``hessquik_core.rules.streams``)."""
        M, b = self._Mb(params)
        Yo, phi = streams.phi_forward(streams.affine_streams(Y, M, b, ops), _SIN, spec, ops)
        return Yo, (Y, phi, M)

    def stream_vjp(self, cache, params, Ybar, mode, need_input, ops):
        r""":math:`\bar Z = \Phi_{\sin}^\top(\bar Y)`; per point :math:`\partial_K = \omega_0\sum_s Y_s^\top \bar Z_s`,
        :math:`\partial_b = \omega_0\bar z`; input adjoint :math:`\bar Z M^\top`."""
        if mode not in ("point", "sum"):
            raise ValueError(f"SirenLayer has no Kronecker-factored curvature (mode {mode!r})")
        Y, phi, M = cache
        Zbar = streams.phi_vjp(phi, Ybar, ops)
        out = streams.affine_params(Y, Zbar, params["b"] is not None, mode, ops)
        Yin = streams.affine_input_adjoint(Zbar, M, ops) if need_input else None
        w0 = self.w0
        return Yin, (
            {"K": w0 * out.weight} if out.bias is None else {"K": w0 * out.weight, "b": w0 * out.bias}
        )

    def stream_rop(self, cache, params, RY, V, ops):
        r""":math:`R Y' = \Phi_{\sin}'(Z)[RY\,M + \omega_0 (Y V_K + V_b)]`."""
        Y, phi, M = cache
        RM, Rb = self._Mb({"K": V["K"], "b": V.get("b")})
        return streams.phi_rop(phi, streams.affine_rop(Y, RY, M, RM, Rb, ops), ops)

    # -- torch twin -----------------------------------------------------------------
    @classmethod
    def torch_twin_class(cls) -> type:
        """``SirenBlock(in_features, out_features, w0, is_first, bias)``:
        ``sin(w0 * linear(u))`` with ``linear.weight = Kᵀ``."""
        return _siren_block()

    def to_torch(self, kit) -> list:
        blk = self.torch_twin_class()(
            self.in_features,
            self.out_features,
            self.w0,
            self.is_first,
            self.bias,
            dtype=kit.dtype_of(self),
            device=kit.device,
        )
        kit.assign(blk.linear.weight, kit.tensor(self.K).T)
        if self.bias:
            kit.assign(blk.linear.bias, kit.tensor(self.b))
        return [blk]

    @classmethod
    def from_torch(cls, module, kit) -> tuple[SirenLayer, dict[str, Any]]:
        lin = module.linear
        bias = lin.bias is not None
        layer = cls(lin.in_features, lin.out_features, w0=module.w0, is_first=module.is_first, bias=bias)
        state = {"K": np.ascontiguousarray(kit.numpy(lin.weight).T)}
        if bias:
            state["b"] = kit.numpy(lin.bias)
        return layer, state


@lazy_torch_class
def _siren_block() -> type:
    import torch
    from torch import nn

    class SirenBlock(nn.Module):
        r"""The torch twin of :class:`SirenLayer`: :math:`\sin(\omega_0\,\mathrm{linear}(u))`."""

        def __init__(
            self, in_features, out_features, w0=30.0, is_first=False, bias=True, *, dtype=None, device=None
        ):
            super().__init__()
            self.w0, self.is_first = float(w0), bool(is_first)
            self.linear = nn.Linear(in_features, out_features, bias=bias, dtype=dtype, device=device)

        def forward(self, u):
            return torch.sin(self.w0 * self.linear(u))

        def extra_repr(self) -> str:
            return f"w0={self.w0}, is_first={self.is_first}"

    return SirenBlock


__all__ = ["SirenCache", "SirenLayer"]
