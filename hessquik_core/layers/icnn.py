r"""The input-convex layer :math:`f([u, x]) = [\sigma(u\,\mathrm{softplus}(L) + xK + b),\ x]`."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ..activations import get_activation
from ..carry import Adjoints, Request, Tangents
from ..rules import affine, streams
from ..rules.contractions import device, sandwich
from ..rules.directions import Outer, add_tail
from .base import NONNEG, Layer, check_int, register_layer, rng_of


class ICNNCache(NamedTuple):
    dsigma: Any  # (n, q): σ'(z)
    d2sigma: Any  # (n, q): σ''(z)
    M: Any  # (p, q): [softplus(L); K], the weight of the whole input [u, x]


@register_layer
class ICNNLayer(Layer):
    r"""Input-convex layer (hessQuik's ``ICNNLayer``).

    The layer sees :math:`[u, x]` (``in_features`` features then the
    ``input_dim`` network inputs; the first layer sees only :math:`x`) and returns

    .. math::
        f([u, x]) = \big[\,\sigma(u\,L^+ + x K + b),\ x\,\big],\qquad L^+ = \mathrm{softplus}(L),

    of width ``out_features + input_dim``. With :math:`M = [L^+; K]` the
    σ-part is the rule of :mod:`hessquik_core.rules.affine`; the
    pass-through copies the last ``input_dim`` columns. Backward uses the
    explicit per-example Jacobian :math:`J = [M\,\mathrm{diag}(\sigma'),\ S]`
    (``S`` selects ``x``).

    Attributes
    ----------
    K : (input_dim, out_features)
    L : (in_features, out_features) or None for the first layer
    b : (out_features,) or None
    """

    config_schema = {"input_dim": "int", "in_features": "int?", "out_features": "int", "bias": "bool"}
    has_activation = True
    torch_twin = "ICNNBlock"
    hessquik_name = "ICNNLayer"

    def __init__(
        self,
        input_dim: int,
        in_features: int | None,
        out_features: int,
        act="softplus",
        bias: bool = True,
        *,
        dtype=np.float64,
        seed=None,
    ) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.n_in = 0 if in_features is None else check_int("in_features", in_features)
        self.out_width = check_int("out_features", out_features)
        self.act = get_activation(act)
        self.bias = bool(bias)
        rng = rng_of(seed)
        d, q = self.input_dim, self.out_width
        gain = math.sqrt(2.0 / (1.0 + d))
        bk = gain * math.sqrt(3.0 / q)
        self._register("K", rng.uniform(-bk, bk, (d, q)).astype(dtype), (d, q))
        if in_features is not None:
            bl = math.sqrt(2.0 / (1.0 + self.n_in)) * math.sqrt(3.0 / q)
            self._register("L", rng.uniform(-bl, bl, (self.n_in, q)).astype(dtype), (self.n_in, q))
        else:
            self._register("L", None, None)
        bb = 1.0 / math.sqrt(q)
        self._register("b", rng.uniform(-bb, bb, (q,)).astype(dtype) if bias else None, (q,))

    @property
    def in_features(self) -> int:
        return self.n_in + self.input_dim

    @property
    def out_features(self) -> int:
        return self.out_width + self.input_dim

    def config(self) -> dict:
        return {
            "input_dim": self.input_dim,
            "in_features": self.n_in or None,
            "out_features": self.out_width,
            "bias": self.bias,
        }

    @classmethod
    def parameter_shapes(cls, config: dict) -> dict:
        d, n, q = config["input_dim"], config["in_features"], config["out_features"]
        shapes = {"K": (d, q)}
        if n is not None:
            shapes["L"] = (n, q)
        if config["bias"]:
            shapes["b"] = (q,)
        return shapes

    def __repr__(self) -> str:
        return f"ICNNLayer({self.input_dim}, {self.n_in or None}, {self.out_width}, act={self.act!r})"

    def _M(self, params, xp):
        if params["L"] is None:
            return params["K"]
        Lp, _, _ = NONNEG(params["L"], 0, xp=xp)
        return xp.concat([Lp, params["K"]], axis=0)

    # -- input derivatives ----------------------------------------------------------
    def evaluate(self, u, params, order, ops):
        xp = ops.xp
        M = self._M(params, xp)
        s0, s1, s2 = affine.evaluate(u, M, params["b"], self.act, order, xp)
        return xp.concat([s0, u[:, self.n_in :]], axis=-1), ICNNCache(s1, s2, M)

    def forward_step(self, cache, params, tangents: Tangents, request: Request, ops) -> Tangents:
        xp = ops.xp
        s1, M = cache.dsigma, cache.M
        G = tangents.jacobian
        n, k, s = s1.shape[0], G.shape[1], self.n_in
        inner = affine.forward_step(s1, cache.d2sigma, ops.mm(G, M), tangents, M, request, ops)

        def passthrough(T, shape):
            # the x-columns of the input pass through unchanged (zero at the network input)
            if T is None:
                return xp.zeros(shape, dtype=s1.dtype, device=device(s1))
            return xp.broadcast_to(T[..., s:], shape)

        d = self.input_dim
        Hs, Ds, Ls = inner.hessian, inner.diagonal, inner.laplacian
        return Tangents(
            xp.concat([inner.jacobian, passthrough(G, (n, k, d))], axis=-1),
            None
            if Hs is None
            else xp.concat([Hs, passthrough(tangents.hessian, (*Hs.shape[:-1], d))], axis=-1),
            None if Ds is None else xp.concat([Ds, passthrough(tangents.diagonal, (n, k, d))], axis=-1),
            None if Ls is None else xp.concat([Ls, passthrough(tangents.laplacian, (n, d))], axis=-1),
        )

    def _jacobian(self, s1, M, xp):
        n, p, d = s1.shape[0], self.in_features, self.input_dim
        sel = xp.concat(
            [
                xp.zeros((self.n_in, d), dtype=s1.dtype, device=device(s1)),
                xp.eye(d, dtype=s1.dtype, device=device(s1)),
            ],
            axis=0,
        )
        return xp.concat(
            [M[None, :, :] * s1[:, None, :], xp.broadcast_to(sel[None, :, :], (n, p, d))], axis=-1
        )

    def backward_step(self, cache, params, adjoints: Adjoints, second: bool, ops) -> Adjoints:
        xp = ops.xp
        s1, M = cache.dsigma, cache.M
        dl, Dl = adjoints.gradient, adjoints.hessian
        q = self.out_width
        J = self._jacobian(s1, M, xp)  # (n, p, q + d)
        dlu = ops.einsum("npa,nma->nmp", J, xp.broadcast_to(dl, (s1.shape[0], *dl.shape[1:])))
        if not second:
            return Adjoints(dlu)
        out = sandwich(M, None, cache.d2sigma[:, None, :] * dl[..., :q], ops)
        if Dl is not None:
            T = ops.einsum("npa,nmab->nmpb", J, Dl)
            out = out + ops.einsum("nmpb,nrb->nmpr", T, J)
        return Adjoints(dlu, out)

    # -- derivatives with respect to the parameters (hessquik_core.curvature) --------
    # With w = [u, x] the layer input, M = [L⁺; K], z = wM + b, f = [σ(z), x]
    # and dl = [dl_s, dl_x]: the σ-part is the affine rule in M, the
    # pass-through adds dl_x to the x-columns of ∂C/∂w, and the chain rule
    # through L⁺ = softplus(L) multiplies the L-block by softplus'(L).
    def param_vjp(self, cache, params, u, dl, per_example, ops):
        r"""Adjoint ``dl : (n, q + d)`` to ``∂C/∂[u, x]`` and to ``K``, ``L``, ``b``:
        :math:`\partial C/\partial K = \sum_n x_n \otimes \delta_n`,
        :math:`\partial C/\partial L = (\sum_n u_n \otimes \delta_n) \odot \mathrm{softplus}'(L)`,
        :math:`\partial C/\partial b = \sum_n \delta_n`."""
        xp = ops.xp
        q, s = self.out_width, self.n_in
        delta, dlu_s = affine.param_vjp(cache.dsigma, cache.M, dl[:, :q], ops)
        dlu = add_tail(dlu_s, dl[:, q:], s, xp)
        if per_example:  # factors u_n ⊗ δ_n, formed in the (N, P) output
            g = {"K": Outer(u[:, s:], delta)}
            if params["b"] is not None:
                g["b"] = delta
            if params["L"] is not None:
                g["L"] = Outer(u[:, :s], delta, NONNEG(params["L"], 1, xp=xp)[1])
            return dlu, g
        gM = ops.mm(xp.matrix_transpose(u), delta)
        g = {"K": gM[s:, :]}
        if params["b"] is not None:
            g["b"] = xp.sum(delta, axis=0)
        if params["L"] is not None:
            g["L"] = gM[:s, :] * NONNEG(params["L"], 1, xp=xp)[1]
        return dlu, g

    def param_rop_forward(self, cache, params, u, Ru, V, ops):
        r""":math:`RM = [\mathrm{softplus}'(L) \odot V_L;\ V_K]`,
        :math:`Rz = (Rw) M + w\,RM + V_b`, :math:`Rf = [\sigma' \odot Rz,\ Rx]`."""
        xp = ops.xp
        s, d = self.n_in, self.input_dim
        RM = V["K"]
        if params["L"] is not None:
            RM = xp.concat([NONNEG(params["L"], 1, xp=xp)[1] * V["L"], RM], axis=1)
        Rs, Rz = affine.param_rop_forward(cache.dsigma, cache.M, RM, u, Ru, V.get("b"), ops)
        if Ru is not None:
            Rx = Ru[..., s:]
        else:
            Rx = xp.zeros((u.shape[0], RM.shape[0], d), dtype=u.dtype, device=device(u))
        return xp.concat([Rs, Rx], axis=-1), (Rz, RM)

    def param_rop_backward(
        self, cache, rcache, params, u, Ru, V, dl, Rdl, ops, need_dlu=True, need_Rdlu=True
    ):
        r"""Backward R-pass: the affine rule in :math:`M` on ``dl_s``, ``Rdl_s``, plus
        :math:`[0, R dl_x]` on the input adjoint, and for ``L``
        :math:`R(\partial_L C) = R(\partial_{M_L} C) \odot \mathrm{softplus}'(L) + [\partial_{M_L} C \odot
        \mathrm{softplus}''(L) \odot V_L]`. ``dl=None`` drops the bracketed (curvature) terms."""
        xp = ops.xp
        Rz, RM = rcache
        q, s = self.out_width, self.n_in
        r = affine.param_rop_backward(
            cache.dsigma,
            cache.d2sigma,
            cache.M,
            RM,
            u,
            Ru,
            Rz,
            None if dl is None else dl[:, :q],
            Rdl[..., :q],
            ops,
            bias=params["b"] is not None,
            need_dlu=need_dlu,
            need_Rdlu=need_Rdlu,
        )
        dlu = None if r.dl_u is None else add_tail(r.dl_u, dl[:, q:], s, xp)
        Rdlu = None if r.Rdl_u is None else add_tail(r.Rdl_u, Rdl[..., q:], s, xp)
        RgM = r.RgM
        g = {"K": RgM[:, s:, :]}
        if r.Rgb is not None:
            g["b"] = r.Rgb
        if params["L"] is not None:
            _, sp1, sp2 = NONNEG(params["L"], 2, xp=xp)
            RL = RgM[:, :s, :] * sp1
            if r.delta is not None:
                gML = ops.mm(xp.matrix_transpose(u[:, :s]), r.delta)
                RL = RL + (gML * sp2)[None, :, :] * V["L"]
            g["L"] = RL
        return dlu, Rdlu, g

    # -- streams: per-point parameter Jacobians (hessquik_core.pinn) ----------------
    # With w = [u, x] and M = [L⁺; K]: Y' = [Φ_σ(Y M + b), Y_x] (the x-columns pass
    # through); the L-block of ∂M is multiplied by softplus'(L) (elementwise chain).
    stream_kfac = True

    def stream_activations(self) -> tuple:
        return (self.act,)

    def stream_forward(self, Y, params, spec, ops):
        r"""Streams :math:`Y' = [\Phi_\sigma(YM + b),\ Y_{[s:]}]`, :math:`M = [L^+; K]`."""
        M = self._M(params, ops.xp)
        Z = streams.affine_streams(Y, M, params["b"], ops)
        Yi, phi = streams.phi_forward(Z, self.act, spec, ops)
        return ops.xp.concat([Yi, Y[..., self.n_in :]], axis=-1), (Y, phi, M)

    def stream_vjp(self, cache, params, Ybar, mode, need_input, ops):
        r""":math:`\bar Z = \Phi_\sigma^\top(\bar Y'_{[:q]})`; :math:`\partial_M` as the dense layer's,
        split into ``K`` and ``L`` (times :math:`\mathrm{softplus}'(L)`); input adjoint
        :math:`\bar Z M^\top + [0, \bar Y'_{[q:]}]`. Kronecker factors are those of ``M``."""
        xp = ops.xp
        Y, phi, M = cache
        q, s = self.out_width, self.n_in
        Zbar = streams.phi_vjp(phi, Ybar[..., :q], ops)
        out = streams.affine_params(Y, Zbar, params["b"] is not None, mode, ops)
        Yin = None
        if need_input:
            Yin = add_tail(streams.affine_input_adjoint(Zbar, M, ops), Ybar[..., q:], s, xp)
        if mode == "kfac":
            return Yin, [out.weight]
        W = out.weight
        g = {"K": W[..., s:, :]}
        if params["L"] is not None:
            g["L"] = W[..., :s, :] * NONNEG(params["L"], 1, xp=xp)[1]
        if out.bias is not None:
            g["b"] = out.bias
        return Yin, g

    def stream_rop(self, cache, params, RY, V, ops):
        r""":math:`RY' = [\Phi_\sigma'(Z)[RY\,M + Y\,RM + V_b],\ RY_{[s:]}]`,
        :math:`RM = [\mathrm{softplus}'(L) \odot V_L;\ V_K]`."""
        xp = ops.xp
        Y, phi, M = cache
        s = self.n_in
        RM = V["K"]
        if params["L"] is not None:
            RM = xp.concat([NONNEG(params["L"], 1, xp=xp)[1] * V["L"], RM], axis=0)
        RZ = streams.affine_rop(Y, RY, M, RM, V.get("b"), ops)
        Ri = streams.phi_rop(phi, RZ, ops)
        if RY is None:
            Rx = xp.zeros((*Y.shape[:-1], self.input_dim), dtype=Y.dtype, device=device(Y))
        else:
            Rx = RY[..., s:]
        return xp.concat([Ri, Rx], axis=-1)

    @classmethod
    def from_hessquik(cls, module, kit):
        kit.check_nonneg(module)
        act = kit.act(module.act, ".act")
        return cls(
            module.input_dim,
            module.in_features,
            module.out_features,
            act=act,
            bias=module.b is not None,
            dtype=kit.dtype,
        )

    # -- torch twin -----------------------------------------------------------------
    def to_torch(self, kit) -> list:
        act = kit.act(self.act) or kit.nn.Identity()
        blk = kit.twins["ICNNBlock"](
            self.input_dim,
            self.n_in or None,
            self.out_width,
            act,
            self.b is not None,
            dtype=kit.dtype_of(self),
            device=kit.device,
        )
        kit.copy_state(self, blk)
        return [blk]

    @classmethod
    def from_torch(cls, module, kit):
        act = kit.act(module.act, ".act")
        layer = cls(
            module.input_dim, module.in_features, module.out_features, act=act, bias=module.b is not None
        )
        state = {
            k: kit.numpy(p) for k, p in (("K", module.K), ("L", module.L), ("b", module.b)) if p is not None
        }
        return layer, state


__all__ = ["ICNNCache", "ICNNLayer"]
