r"""The residual layer :math:`f(u) = u + h\,\sigma(uK + b)`."""

from __future__ import annotations

import math

import numpy as np

from ..activations import Activation
from ..carry import Adjoints, Request, Tangents
from ..rules import affine, streams
from ..rules.contractions import swap
from .base import Layer, check_int, register_layer
from .dense import SingleLayer


@register_layer
class ResnetLayer(Layer):
    r"""Residual layer :math:`f(u) = u + h\,\sigma(uK + b)` of constant width.

    The inner single layer is the child ``layer`` (keys ``'layer.K'``,
    ``'layer.b'`` as in hessQuik).

    Notes
    -----
    Forward: :math:`\partial f = \partial u + h\,\sigma' \odot (\partial u K)` and likewise
    for the second-order objects. Backward, with
    :math:`J = I + h K \mathrm{diag}(\sigma')`:
    :math:`dl_u = dl + hK(\sigma' \odot dl)` and
    :math:`Dl_u = J\,Dl\,J^\top + h K \mathrm{diag}(\sigma'' \odot dl) K^\top`,
    formed as :math:`R + h\,(R\,\mathrm{diag}(\sigma') + K\mathrm{diag}(\sigma''\odot dl)) K^\top`
    with :math:`R = (Dl\,J^\top)^\top`.
    """

    config_schema = {"width": "int", "h": "float", "bias": "bool"}
    has_activation = True
    torch_twin = "ResidualBlock"
    hessquik_name = "resnetLayer"

    def __init__(
        self, width: int, h: float = 1.0, act="identity", bias: bool = True, *, dtype=np.float64, seed=None
    ) -> None:
        super().__init__()
        self.width = check_int("width", width)
        if not isinstance(h, (int, float)) or isinstance(h, bool) or not math.isfinite(h):
            raise ValueError(f"h must be a finite real number, got {h!r}")
        self.h = float(h)
        self._children["layer"] = SingleLayer(width, width, act=act, bias=bias, dtype=dtype, seed=seed)

    @property
    def in_features(self) -> int:
        return self.width

    @property
    def out_features(self) -> int:
        return self.width

    @property
    def act(self) -> Activation:
        return self.layer.act

    def config(self) -> dict:
        return {"width": self.width, "h": self.h, "bias": self.layer.bias}

    @classmethod
    def parameter_shapes(cls, config: dict) -> dict:
        w = config["width"]
        return {"layer.K": (w, w), **({"layer.b": (w,)} if config["bias"] else {})}

    def __repr__(self) -> str:
        return f"ResnetLayer({self.width}, h={self.h}, act={self.act!r})"

    def _eval_params(self, key, be, xp, dtype, device) -> dict:
        # the inner layer's K and b under their own names: the passes are its rule
        return self.layer._converted(key, be, xp, dtype, device)

    def local_param_name(self, key: str) -> str:
        return key.removeprefix("layer.")

    # -- input derivatives ----------------------------------------------------------
    def evaluate(self, u, params, order, ops):
        s, cache = self.layer.evaluate(u, params, order, ops)
        return u + self.h * s, cache

    def forward_step(self, cache, params, tangents: Tangents, request: Request, ops) -> Tangents:
        # the derivatives of h σ(uK + b) are those of σ with σ', σ'' scaled by
        # h: scaling the (n, w) factors spares a pass over every carried array
        h = self.h
        K = params["K"]
        s2 = None if cache.d2sigma is None else h * cache.d2sigma  # None: first order only
        G = tangents.jacobian
        out = affine.forward_step(h * cache.dsigma, s2, ops.mm(G, K), tangents, K, request, ops)
        # the identity path, added in place into the fresh arrays just made
        out.jacobian += G
        if tangents.hessian is not None:
            out.hessian += tangents.hessian
        if tangents.diagonal is not None:
            out.diagonal += tangents.diagonal
        if tangents.laplacian is not None:
            out.laplacian += tangents.laplacian
        return out

    def backward_step(self, cache, params, adjoints: Adjoints, second: bool, ops) -> Adjoints:
        xp = ops.xp
        s1, s2 = cache.dsigma, cache.d2sigma
        dl, Dl = adjoints.gradient, adjoints.hessian
        K = params["K"]
        # h folded into the small (w, w) factor once, instead of a pass over
        # every (n, m, w, w) block
        hKt = self.h * xp.matrix_transpose(K)
        dlu = ops.addmm(dl, s1[:, None, :] * dl, hKt)
        if not second:
            return Adjoints(dlu)
        c = (s2[:, None, :] * dl)[:, :, None, :]
        if Dl is None:
            return Adjoints(dlu, ops.mm(K * c, hKt))
        # A = Dl Jᵀ; Dl symmetric, so Aᵀ = J Dl, and
        # J Dl Jᵀ + h K diag(c) Kᵀ = Aᵀ + (Aᵀ diag(σ') + K diag(c)) h Kᵀ.
        # Four (n, m, w, w) arrays are made; the sums go into the GEMM
        # outputs or are fused (torch: addmm / addcmul_).
        s1b = s1[:, None, None, :]
        R = swap(ops.addmm(Dl, Dl * s1b, hKt), xp)
        # K diag(c) is the accumulator: a fresh row-major array, so the GEMM
        # below needs no copy (R * σ' would inherit R's transposed layout)
        U = ops.addcmul(K * c, R, s1b)
        return Adjoints(dlu, ops.addmm(R, U, hKt))

    # -- derivatives with respect to the parameters (hessquik_core.curvature) --------
    # f = u + h s(u) with s the inner single layer: the inner layer sees the
    # adjoint h dl; the identity path adds dl to the input adjoint.
    def param_vjp(self, cache, params, u, dl, per_example, ops):
        r""":math:`\partial C/\partial u = dl + h\,\delta K^\top`; parameter gradients are
        ``h`` times the inner layer's. Keys ``'K'``, ``'b'`` (state keys ``layer.K``, ``layer.b``)."""
        dlu, g = self.layer.param_vjp(cache, params, u, self.h * dl, per_example, ops)
        return dl + dlu, g

    def param_rop_forward(self, cache, params, u, Ru, V, ops):
        r""":math:`Rf = Ru + h\,\sigma' \odot Rz`."""
        Rs, Rz = self.layer.param_rop_forward(cache, params, u, Ru, V, ops)
        return (self.h * Rs if Ru is None else Ru + self.h * Rs), Rz

    def param_rop_backward(
        self, cache, rcache, params, u, Ru, V, dl, Rdl, ops, need_dlu=True, need_Rdlu=True
    ):
        r"""Inner layer's R-backward with adjoints ``h dl``, ``h Rdl``, plus the identity path."""
        h = self.h
        dlu, Rdlu, g = self.layer.param_rop_backward(
            cache, rcache, params, u, Ru, V, None if dl is None else h * dl, h * Rdl, ops, need_dlu, need_Rdlu
        )
        return (None if dlu is None else dl + dlu), (None if Rdlu is None else Rdl + Rdlu), g

    # -- streams: per-point parameter Jacobians (hessquik_core.pinn) ----------------
    # Y' = Y + h Φ_σ(YK + b): the inner map's adjoint sees h Ȳ', the identity path adds Ȳ'.
    stream_kfac = True

    def stream_activations(self) -> tuple:
        return (self.act,)

    def stream_forward(self, Y, params, spec, ops):
        r"""Streams :math:`Y' = Y + h\,\Phi_\sigma(YK + b)`."""
        Z = streams.affine_streams(Y, params["K"], params["b"], ops)
        Yi, phi = streams.phi_forward(Z, self.act, spec, ops)
        return Y + self.h * Yi, (Y, phi)

    def stream_vjp(self, cache, params, Ybar, mode, need_input, ops):
        r""":math:`\bar Z = \Phi_\sigma^\top(h\bar Y')`, parameters as the dense layer's,
        :math:`\bar Y = \bar Y' + \bar Z K^\top`."""
        Y, phi = cache
        Zbar = streams.phi_vjp(phi, self.h * Ybar, ops)
        out = streams.affine_params(Y, Zbar, params["b"] is not None, mode, ops)
        Yin = Ybar + streams.affine_input_adjoint(Zbar, params["K"], ops) if need_input else None
        if mode == "kfac":
            return Yin, [out.weight]
        return Yin, ({"K": out.weight} if out.bias is None else {"K": out.weight, "b": out.bias})

    def stream_rop(self, cache, params, RY, V, ops):
        r""":math:`RY' = RY + h\,\Phi_\sigma'(Z)[RY\,K + Y V_K + V_b]`."""
        Y, phi = cache
        RZ = streams.affine_rop(Y, RY, params["K"], V["K"], V.get("b"), ops)
        Ri = self.h * streams.phi_rop(phi, RZ, ops)
        return Ri if RY is None else RY + Ri

    @classmethod
    def from_hessquik(cls, module, kit):
        inner = module.layer
        if type(inner).__name__ != SingleLayer.hessquik_name or not kit.is_hessquik_layer(inner):
            raise kit.unsupported(inner, ".layer")
        act = kit.act(inner.act, ".layer.act")
        return cls(module.width, h=float(module.h), act=act, bias=inner.b is not None, dtype=kit.dtype)

    # -- torch twin -----------------------------------------------------------------
    def to_torch(self, kit) -> list:
        act = kit.act(self.act) or kit.nn.Identity()
        inner = self.layer
        blk = kit.twins["ResidualBlock"](
            self.width, self.h, act, inner.b is not None, dtype=kit.dtype_of(self), device=kit.device
        )
        kit.assign(blk.linear.weight, kit.tensor(inner.K).T)
        if inner.b is not None:
            kit.assign(blk.linear.bias, kit.tensor(inner.b))
        return [blk]

    @classmethod
    def from_torch(cls, module, kit):
        lin = module.linear
        act = kit.act(module.act, ".act")
        layer = cls(lin.in_features, h=module.h, act=act, bias=lin.bias is not None)
        state = {"layer.K": kit.numpy(lin.weight).T.copy()}
        if lin.bias is not None:
            state["layer.b"] = kit.numpy(lin.bias)
        return layer, state


__all__ = ["ResnetLayer"]
