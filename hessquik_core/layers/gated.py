r"""The gated ("modified") MLP block.

``GatedMLP`` is the modified MLP of Wang, Teng & Perdikaris: encoders
:math:`U = \sigma(xW_u + b_u)`, :math:`V = \sigma(xW_v + b_v)`, a first
hidden state :math:`H_1 = \sigma(xW_1 + b_1)`, gated steps
:math:`Z = \sigma(HW + b)`, :math:`H \leftarrow (1 - Z)\odot U + Z\odot V`
and a linear read-out. To the engine it is a chain on the state
:math:`S = [U, V, H]` (width :math:`3w`): one dense layer of the block input
makes :math:`S`, each gated step maps :math:`S \to [U, V, H^{+}]` and the
read-out is linear in the :math:`H` block. The block therefore yields these
three kinds of leaves (:meth:`GatedMLP._leaves`), and forward mode, backward
mode, the Laplacian and diagonal shortcuts, chunking, the cost model and the
parameter passes of :mod:`hessquik_core.curvature` treat them as any other
chain. The step's derivatives (input and parameter) are the rules of
:mod:`hessquik_core.rules.gated`. The gated residual block lives in
:mod:`hessquik_core.layers.gated_residual`.

(About 420 lines: the block, its two private leaf classes — the step and the
read-out, each a full layer of the contract — and the torch twin. Every
recurrence is in :mod:`hessquik_core.rules.gated`; what is left here is the
contract's glue, which splitting further would only scatter.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from array_api_compat import device as _device

from ..activations import Activation, get_activation
from ..carry import Adjoints, Request, Tangents
from ..rules import gated as G
from ..rules import streams
from ..rules.directions import weight_gradient
from ..rules.gated import GateCache
from .base import Layer, check_int, register_layer, rng_of
from .dense import SingleLayer


class _GatedStep(Layer):
    r"""One gated step on the state :math:`S = [U, V, H]`:
    :math:`S \mapsto [U, V, U + \sigma(HW + b)\odot(V - U)]` (a leaf of :class:`GatedMLP`)."""

    def __init__(self, width: int, act, bias: bool, W, b) -> None:
        super().__init__()
        self.width = width
        self.act: Activation = act
        self._register("W", W, (width, width))
        self._register("b", b if bias else None, (width,))

    @property
    def in_features(self) -> int:
        return 3 * self.width

    @property
    def out_features(self) -> int:
        return 3 * self.width

    @property
    def cost_shapes(self):
        # the carried state is 3w wide; the pass-through blocks cost element-wise
        # work only, so this (3w, 3w) bound over-prices the gate GEMM (w, w)
        return ((3 * self.width, 3 * self.width),)

    def __repr__(self) -> str:
        return f"_GatedStep({self.width}, act={self.act!r})"

    def _split(self, a):
        w = self.width
        return a[..., :w], a[..., w : 2 * w], a[..., 2 * w :]

    def evaluate(self, u, params, order, ops):
        xp = ops.xp
        U, V, H = self._split(u)
        out, Z, s1, s2 = G.gated_step(U, V, H, params["W"], params["b"], self.act, xp=xp)
        return xp.concat([U, V, out], axis=-1), GateCache(U, V, H, Z, s1, s2)

    def forward_step(self, cache, params, tangents: Tangents, request: Request, ops) -> Tangents:
        return G.gated_state_forward_step(cache, params["W"], tangents, request, ops)

    def backward_step(self, cache, params, adjoints: Adjoints, second: bool, ops) -> Adjoints:
        return G.gated_state_backward_step(cache, params["W"], adjoints, second, ops)

    # -- derivatives with respect to W, b (hessquik_core.curvature) -------------------
    # the recurrences are written out in hessquik_core.rules.gated (and docs/derivations.md)
    def param_vjp(self, cache, params, u, dl, per_example, ops):
        r"""With :math:`\delta = \sigma'\odot D\odot dl_H` (:math:`D = V - U`):
        :math:`\partial C/\partial W = \sum_n H_n\otimes\delta_n`,
        :math:`\partial C/\partial b = \sum_n \delta_n` and
        :math:`\partial C/\partial S = [dl_U + (1 - Z)\odot dl_H,\ dl_V + Z\odot dl_H,\ \delta W^\top]`."""
        delta, dlu = G.gated_step_param_vjp(cache, params["W"], dl)
        g = {"W": weight_gradient(cache.H, delta, per_example, ops)}
        if params["b"] is not None:
            g["b"] = delta if per_example else ops.xp.sum(delta, axis=0)
        return dlu, g

    def param_rop_forward(self, cache, params, u, Ru, V, ops):
        r"""Forward R-pass: :math:`Ra = R_H W + H V_W + V_b`,
        :math:`R[U, V, H^+] = [R_U,\ R_V,\ R_U + (\sigma'\odot Ra)\odot D + Z\odot(R_V - R_U)]`.
        Returns ``(R[U, V, H⁺] : (n, k, 3w), Ra)``."""
        return G.gated_step_param_rop_forward(cache, params["W"], Ru, V["W"], V.get("b"), ops)

    def param_rop_backward(
        self, cache, rcache, params, u, Ru, V, dl, Rdl, ops, need_dlu=True, need_Rdlu=True
    ):
        r"""Backward R-pass (Pearlmutter) of :meth:`param_vjp`, with :math:`dl_Z = D\odot dl_H`:
        :math:`R\delta = \sigma'\odot(D\odot R dl_H + [R_D\odot dl_H]) + [\sigma''\odot Ra\odot dl_Z]`,
        :math:`R\,\partial C/\partial S = [R dl_U + (1 - Z)\odot R dl_H - [RZ\odot dl_H],\
        R dl_V + Z\odot R dl_H + [RZ\odot dl_H],\ R\delta\,W^\top + [\delta V_W^\top]]`,
        :math:`R\,\partial C/\partial W = \sum_n H_n\otimes R\delta_n + [R_{H,n}\otimes\delta_n]`,
        :math:`R\,\partial C/\partial b = \sum_n R\delta_n`; ``dl=None`` drops the bracketed terms."""
        bias = params["b"] is not None
        dlu, Rdlu, RgW, Rgb = G.gated_step_param_rop_backward(
            cache,
            params["W"],
            V["W"],
            Ru,
            rcache,
            dl,
            Rdl,
            ops,
            bias=bias,
            need_dlu=need_dlu,
            need_Rdlu=need_Rdlu,
        )
        g = {"W": RgW}
        if Rgb is not None:
            g["b"] = Rgb
        return dlu, Rdlu, g

    # -- streams: per-point parameter Jacobians (hessquik_core.pinn) ----------------
    # [U, V, H] -> [U, V, U + Z ⋆ (V − U)] with Z = Φ_σ(H W + b) (rules.streams: ⋆ the
    # product of streams); W, b are an affine block on the H streams.
    stream_kfac = True

    def stream_activations(self) -> tuple:
        return (self.act,)

    def stream_forward(self, Y, params, spec, ops):
        r"""Streams :math:`[U, V, U + \Phi_\sigma(HW + b) \star (V - U)]`."""
        U, V, H = self._split(Y)
        Zs, phi = streams.phi_forward(
            streams.affine_streams(H, params["W"], params["b"], ops), self.act, spec, ops
        )
        D = V - U
        return ops.xp.concat([U, V, U + streams.star(Zs, D, spec, ops)], axis=-1), (H, phi, Zs, D)

    def stream_vjp(self, cache, params, Ybar, mode, need_input, ops):
        r""":math:`\bar Z = \bar H' \star^\top D`, :math:`\bar D = \bar H' \star^\top Z`,
        :math:`\bar A = \Phi_\sigma^\top(\bar Z)` (the affine block's adjoint: ``W``, ``b``);
        input :math:`[\bar U' + \bar H' - \bar D,\ \bar V' + \bar D,\ \bar A W^\top]`."""
        xp = ops.xp
        H, phi, Zs, D = cache
        spec = phi.spec
        Ub, Vb, Hb = self._split(Ybar)
        Abar = streams.phi_vjp(phi, streams.star_vjp(Hb, D, spec, ops), ops)
        out = streams.affine_params(H, Abar, params["b"] is not None, mode, ops)
        Yin = None
        if need_input:
            Dbar = streams.star_vjp(Hb, Zs, spec, ops)
            Yin = xp.concat(
                [Ub + Hb - Dbar, Vb + Dbar, streams.affine_input_adjoint(Abar, params["W"], ops)], axis=-1
            )
        if mode == "kfac":
            return Yin, [out.weight]
        return Yin, ({"W": out.weight} if out.bias is None else {"W": out.weight, "b": out.bias})

    def stream_rop(self, cache, params, RY, V, ops):
        r""":math:`R[U, V, H'] = [RU, RV, RU + RZ \star D + Z \star (RV - RU)]`,
        :math:`RZ = \Phi_\sigma'(A)[RH\,W + H V_W + V_b]`."""
        xp = ops.xp
        H, phi, Zs, D = cache
        spec = phi.spec
        RU = RV = RH = None
        if RY is not None:
            RU, RV, RH = self._split(RY)
        RZ = streams.phi_rop(phi, streams.affine_rop(H, RH, params["W"], V["W"], V.get("b"), ops), ops)
        RHn = streams.star(RZ, D, spec, ops)
        if RY is None:
            zero = xp.zeros((*RHn.shape[:-1], 2 * self.width), dtype=RHn.dtype, device=_device(RHn))
            return xp.concat([zero, RHn], axis=-1)
        RHn = RHn + RU + streams.star(Zs, RV - RU, spec, ops)
        return xp.concat([RU, RV, RHn], axis=-1)


class _ReadoutCache(NamedTuple):
    n: int
    H: Any


class _Readout(Layer):
    r"""The linear read-out :math:`S = [U, V, H] \mapsto H W_o + b_o` (a leaf of :class:`GatedMLP`)."""

    def __init__(self, width: int, out_features: int, bias: bool, K, b) -> None:
        super().__init__()
        self.width = width
        self.out_features = out_features
        self._register("K", K, (width, out_features))
        self._register("b", b if bias else None, (out_features,))

    @property
    def in_features(self) -> int:
        return 3 * self.width

    @property
    def cost_shapes(self):
        return ((3 * self.width, self.out_features),)

    def __repr__(self) -> str:
        return f"_Readout({self.width}, {self.out_features})"

    def evaluate(self, u, params, order, ops):
        H = u[:, 2 * self.width :]
        f = ops.mm(H, params["K"])
        if params["b"] is not None:
            f = f + params["b"]
        return f, _ReadoutCache(u.shape[0], H)

    def forward_step(self, cache, params, tangents: Tangents, request: Request, ops) -> Tangents:
        return G.readout_forward_step(params["K"], cache.n, tangents, request, ops)

    def backward_step(self, cache, params, adjoints: Adjoints, second: bool, ops) -> Adjoints:
        return G.readout_backward_step(params["K"], cache.n, adjoints, second, ops)

    def param_vjp(self, cache, params, u, dl, per_example, ops):
        r""":math:`\partial C/\partial K = \sum_n H_n\otimes dl_n`, :math:`\partial C/\partial b = \sum_n dl_n`,
        :math:`\partial C/\partial S = [0, 0, dl\,K^\top]`."""
        xp = ops.xp
        dH = dl @ xp.matrix_transpose(params["K"])
        zero = xp.zeros((dH.shape[0], 2 * self.width), dtype=dH.dtype, device=_device(dH))
        g = {"K": weight_gradient(cache.H, dl, per_example, ops)}
        if params["b"] is not None:
            g["b"] = dl if per_example else xp.sum(dl, axis=0)
        return xp.concat([zero, dH], axis=-1), g

    def param_rop_forward(self, cache, params, u, Ru, V, ops):
        r""":math:`Rf = R_H K + H V_K + V_b` (``rcache`` is ``None``)."""
        return G.readout_param_rop_forward(params["K"], cache.H, Ru, V["K"], V.get("b"), ops), None

    def param_rop_backward(
        self, cache, rcache, params, u, Ru, V, dl, Rdl, ops, need_dlu=True, need_Rdlu=True
    ):
        r""":math:`R\,\partial C/\partial S = [0, 0, R dl\,K^\top + [dl\,V_K^\top]]`,
        :math:`R\,\partial C/\partial K = \sum_n H_n\otimes R dl_n + [R_{H,n}\otimes dl_n]`,
        :math:`R\,\partial C/\partial b = \sum_n R dl_n` (brackets: dropped for ``dl=None``)."""
        K, bias = params["K"], params["b"] is not None
        dlu, Rdlu, RgK, Rgb = G.readout_param_rop_backward(
            K, V["K"], cache.H, Ru, dl, Rdl, ops, bias=bias, need_dlu=need_dlu, need_Rdlu=need_Rdlu
        )
        g = {"K": RgK}
        if Rgb is not None:
            g["b"] = Rgb
        return dlu, Rdlu, g

    # -- streams: per-point parameter Jacobians (hessquik_core.pinn) ----------------
    # f = H K + b: an affine block with the identity on the H streams.
    stream_kfac = True

    def stream_forward(self, Y, params, spec, ops):
        r"""Streams :math:`H K` (+ ``b`` on the value row)."""
        H = Y[..., 2 * self.width :]
        return streams.affine_streams(H, params["K"], params["b"], ops), H

    def stream_vjp(self, cache, params, Ybar, mode, need_input, ops):
        r"""Per point :math:`\partial_K = \sum_s H_s^\top \bar Y'_s`, :math:`\partial_b = \bar y'_0`;
        input :math:`[0, 0, \bar Y' K^\top]`."""
        xp = ops.xp
        H = cache
        out = streams.affine_params(H, Ybar, params["b"] is not None, mode, ops)
        Yin = None
        if need_input:
            dH = streams.affine_input_adjoint(Ybar, params["K"], ops)
            zero = xp.zeros((*dH.shape[:-1], 2 * self.width), dtype=dH.dtype, device=_device(dH))
            Yin = xp.concat([zero, dH], axis=-1)
        if mode == "kfac":
            return Yin, [out.weight]
        return Yin, ({"K": out.weight} if out.bias is None else {"K": out.weight, "b": out.bias})

    def stream_rop(self, cache, params, RY, V, ops):
        r""":math:`RY' = RH\,K + H V_K + V_b`."""
        RH = None if RY is None else RY[..., 2 * self.width :]
        return streams.affine_rop(cache, RH, params["K"], V["K"], V.get("b"), ops)


@register_layer
class GatedMLP(Layer):
    r"""The gated ("modified") MLP as one block.

    .. math::
        U = \sigma(xW_u + b_u),\quad V = \sigma(xW_v + b_v),\quad H_1 = \sigma(xW_1 + b_1),\\
        Z_l = \sigma(H_l W_l + b_l),\quad H_{l+1} = (1 - Z_l)\odot U + Z_l\odot V\quad(l = 1..\mathrm{depth}),\\
        f(x) = H_{\mathrm{depth}+1} W_o + b_o .

    Parameters
    ----------
    in_features : int
        :math:`d`.
    width : int
        :math:`w`, the width of :math:`U`, :math:`V` and the hidden states.
    depth : int
        Number of gated steps (``>= 1``).
    out_features : int
        :math:`m` (the read-out is linear).
    act : Activation or str, default ``"tanh"``
        :math:`\sigma` of the encoders, the first hidden layer and the gates.
    bias : bool, default True
        Whether the biases exist.
    dtype : NumPy dtype, default float64
    seed : int or numpy.random.Generator, optional
        Initialisation: Glorot-normal weights (:math:`N(0, 2/(p + q))`), zero biases.

    Notes
    -----
    Parameters (``state_dict`` keys): ``S.K`` ``(d, 3w)`` and ``S.b`` ``(3w,)``,
    the concatenated :math:`[W_u, W_v, W_1]` and :math:`[b_u, b_v, b_1]`;
    ``g<l>.W`` ``(w, w)``, ``g<l>.b`` ``(w,)`` for each gated step; ``out.K``
    ``(w, m)``, ``out.b`` ``(m,)``. The block runs as the chain
    ``S``, ``g0``, ..., ``out`` on the state :math:`[U, V, H]`; see
    :mod:`hessquik_core.rules.gated` for the step's derivatives in both
    modes. :mod:`hessquik_core.curvature` gives gradients, per-example
    gradients and the Hessian, Gauss–Newton and empirical-Fisher products
    with respect to every parameter (the R-passes of
    :mod:`hessquik_core.rules.gated`).
    """

    config_schema = {
        "in_features": "int",
        "width": "int",
        "depth": "int",
        "out_features": "int",
        "bias": "bool",
    }
    has_activation = True
    torch_twin = "GatedMLPBlock"

    def __init__(
        self,
        in_features: int = 1,
        width: int = 1,
        depth: int = 1,
        out_features: int = 1,
        act="tanh",
        bias: bool = True,
        *,
        dtype=np.float64,
        seed=None,
    ) -> None:
        super().__init__()
        d = self.in_features = check_int("in_features", in_features)
        w = self.width = check_int("width", width)
        self.depth = check_int("depth", depth)
        m = self.out_features = check_int("out_features", out_features)
        self.act: Activation = get_activation(act)
        self.bias = bool(bias)
        rng = rng_of(seed)

        def glorot(p, q, cols):
            return (rng.standard_normal((p, cols)) * np.sqrt(2.0 / (p + q))).astype(dtype)

        S = SingleLayer(d, 3 * w, act=self.act, bias=bias, dtype=dtype)
        S.K = glorot(d, w, 3 * w)
        if bias:
            S.b = np.zeros(3 * w, dtype=dtype)
        self._children["S"] = S
        for i in range(self.depth):
            self._children[f"g{i}"] = _GatedStep(w, self.act, bias, glorot(w, w, w), np.zeros(w, dtype=dtype))
        self._children["out"] = _Readout(w, m, bias, glorot(w, m, m), np.zeros(m, dtype=dtype))

    def _leaves(self):
        # the chain on the state [U, V, H]: the engine sees its three kinds of steps
        yield from self._children.values()

    @property
    def cost_shapes(self):
        return tuple(s for leaf in self._leaves() for s in leaf.cost_shapes)

    def config(self) -> dict:
        return {
            "in_features": self.in_features,
            "width": self.width,
            "depth": self.depth,
            "out_features": self.out_features,
            "bias": self.bias,
        }

    @classmethod
    def parameter_shapes(cls, config: dict) -> dict:
        d, w, m, bias = config["in_features"], config["width"], config["out_features"], config["bias"]
        out: dict[str, tuple[int, ...]] = {"S.K": (d, 3 * w)}
        if bias:
            out["S.b"] = (3 * w,)
        for i in range(config["depth"]):
            out[f"g{i}.W"] = (w, w)
            if bias:
                out[f"g{i}.b"] = (w,)
        out["out.K"] = (w, m)
        if bias:
            out["out.b"] = (m,)
        return out

    def __repr__(self) -> str:
        return (
            f"GatedMLP({self.in_features}, {self.width}, {self.depth}, {self.out_features}, "
            f"act={self.act!r}, bias={self.bias})"
        )

    def evaluate(self, u, params, order, ops):
        # called only when the block is evaluated on its own (the network uses _leaves)
        caches = []
        for name, leaf in self._children.items():
            p = {k.removeprefix(name + "."): v for k, v in params.items() if k.startswith(name + ".")}
            u, c = leaf.evaluate(u, p, order, ops)
            caches.append(c)
        return u, caches

    # -- torch twin -----------------------------------------------------------------
    def to_torch(self, kit) -> list:
        act = kit.act(self.act) or kit.nn.Identity()
        blk = _twin_classes()["GatedMLPBlock"](
            self.in_features,
            self.width,
            self.depth,
            self.out_features,
            act,
            self.bias,
            dtype=kit.dtype_of(self),
            device=kit.device,
        )
        w = self.width
        K = kit.tensor(self.S.K)
        for j, lin in enumerate((blk.U, blk.V, blk.first)):
            kit.assign(lin.weight, K[:, j * w : (j + 1) * w].T)
            if self.bias:
                kit.assign(lin.bias, kit.tensor(self.S.b)[j * w : (j + 1) * w])
        for i, lin in enumerate(blk.gates):
            g = self._children[f"g{i}"]
            kit.assign(lin.weight, kit.tensor(g.W).T)
            if self.bias:
                kit.assign(lin.bias, kit.tensor(g.b))
        kit.assign(blk.readout.weight, kit.tensor(self.out.K).T)
        if self.bias:
            kit.assign(blk.readout.bias, kit.tensor(self.out.b))
        return [blk]

    @classmethod
    def from_torch(cls, module, kit):
        act = kit.act(module.act, ".act")
        bias = module.U.bias is not None
        layer = cls(
            module.U.in_features, module.width, len(module.gates), module.readout.out_features, act, bias
        )
        K = [kit.numpy(lin.weight).T for lin in (module.U, module.V, module.first)]
        state = {"S.K": np.ascontiguousarray(np.concatenate(K, axis=1))}
        if bias:
            state["S.b"] = np.concatenate([kit.numpy(lin.bias) for lin in (module.U, module.V, module.first)])
        for i, lin in enumerate(module.gates):
            state[f"g{i}.W"] = np.ascontiguousarray(kit.numpy(lin.weight).T)
            if bias:
                state[f"g{i}.b"] = kit.numpy(lin.bias)
        state["out.K"] = np.ascontiguousarray(kit.numpy(module.readout.weight).T)
        if bias:
            state["out.b"] = kit.numpy(module.readout.bias)
        return layer, state


_twins: dict[str, type] = {}


def _twin_classes() -> dict[str, type]:
    """The torch twin of :class:`GatedMLP`, made on first use (hessquik-core never imports torch
    eagerly) and entered into :mod:`hessquik_core.interop`'s table so that
    ``from_torch`` recognises it."""
    if _twins:
        return _twins
    from torch import nn

    from .. import interop

    class GatedMLPBlock(nn.Module):
        r"""The torch twin of :class:`GatedMLP`: encoders ``U``, ``V``, ``first``, ``gates``, ``readout``."""

        def __init__(self, d, width, depth, m, act, bias=True, dtype=None, device=None):
            super().__init__()
            kw = {"bias": bias, "dtype": dtype, "device": device}
            self.width = width
            self.act = act
            self.U, self.V, self.first = (nn.Linear(d, width, **kw) for _ in range(3))
            self.gates = nn.ModuleList(nn.Linear(width, width, **kw) for _ in range(depth))
            self.readout = nn.Linear(width, m, **kw)

        def forward(self, x):
            """:math:`(1 - Z)\\odot U + Z\\odot V` steps, then the linear read-out."""
            U, V, H = self.act(self.U(x)), self.act(self.V(x)), self.act(self.first(x))
            for lin in self.gates:
                Z = self.act(lin(H))
                H = (1 - Z) * U + Z * V
            return self.readout(H)

    table = interop._make_torch_classes()
    for cls in (GatedMLPBlock,):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        _twins[cls.__name__] = cls
        table[cls.__name__] = cls
    return _twins


def __getattr__(name: str) -> Any:
    if name == "GatedMLPBlock":
        return _twin_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GatedMLP"]
