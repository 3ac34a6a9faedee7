r"""Scalar quadratic output layers :math:`f(u) = u\,c + \tfrac12 |y A^\top|^2 + \mu`."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ..activations import Quadratic
from ..carry import Adjoints, Request, Tangents
from ..rules import streams
from ..rules.contractions import device, lift
from ..rules.directions import Outer, lin_dirs, lin_dirs_t, outer_sum, outer_sum_r, pad_front
from .base import NONNEG, Layer, check_int, register_layer, rng_of

#: σ(z) = z²/2, whose stream map is the quadratic part of the layer
_HALF_SQUARE = Quadratic()


class QuadraticCache(NamedTuple):
    gradient: Any  # (n, p): g = ∇_u f = c + [0, (y Aᵀ) A]
    A: Any  # (r, p - s)


class _QuadraticBase(Layer):
    r"""Scalar quadratic :math:`f(u) = u\,c + \tfrac12 |y A^\top|^2 + \mu` where
    :math:`y = u_{[s:]}` is the trailing block of the input.

    With :math:`g = \nabla_u f = c + [0,\ (yA^\top)A]` and
    :math:`Q = \mathrm{blockdiag}(0, A^\top A)`: forward
    :math:`\partial f = \partial u\, g`,
    :math:`\partial^2 f = (\partial y A^\top)(\partial y A^\top)^\top + \partial^2 u\cdot g`;
    backward :math:`dl_u = dl\, g`, :math:`Dl_u = Dl\, g g^\top + dl\, Q`.
    """

    out_features = 1
    _start = 0

    def _lin(self, params, xp):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- input derivatives ----------------------------------------------------------
    def evaluate(self, u, params, order, ops):
        xp = ops.xp
        c = self._lin(params, xp)
        A = params["A"]
        ya = u[:, self._start :] @ xp.matrix_transpose(A)
        f = u @ c + 0.5 * xp.sum(ya * ya, axis=-1) + params["mu"]
        if order == 0:
            return f[:, None], None
        gy = c[self._start :] + ya @ A
        g = (
            gy
            if self._start == 0
            else xp.concat([xp.broadcast_to(c[None, : self._start], (u.shape[0], self._start)), gy], axis=-1)
        )
        return f[:, None], QuadraticCache(g, A)

    def forward_step(self, cache, params, tangents: Tangents, request: Request, ops) -> Tangents:
        xp = ops.xp
        g, A = cache
        G, H, D, L = tangents.jacobian, tangents.hessian, tangents.diagonal, tangents.laplacian
        n = g.shape[0]
        Gf = xp.sum(G * g[:, None, :], axis=-1)[..., None]
        GA = ops.mm(G[..., self._start :], xp.matrix_transpose(A))
        Hf = Df = Lf = None
        if request.hessian:
            if request.packing is None:
                Hf = GA @ xp.matrix_transpose(GA)
            else:
                pk = request.packing
                Hf = xp.sum(xp.take(GA, pk.rows, axis=1) * xp.take(GA, pk.cols, axis=1), axis=-1)
            Hf = (
                xp.broadcast_to(Hf, (n, *Hf.shape[1:]))
                if H is None
                else Hf + xp.sum(H * lift(g, H.ndim, xp), axis=-1)
            )
            Hf = Hf[..., None]
        if request.diagonal or request.laplacian:
            GA2 = xp.sum(GA * GA, axis=-1)  # (1|n, k)
            if request.diagonal:
                Df = (
                    xp.broadcast_to(GA2, (n, GA2.shape[1]))
                    if D is None
                    else GA2 + xp.sum(D * g[:, None, :], axis=-1)
                )
                Df = Df[..., None]
            if request.laplacian:
                Lf = xp.broadcast_to(xp.sum(GA2, axis=-1), (n,))
                if L is not None:
                    Lf = Lf + xp.sum(L * g, axis=-1)
                Lf = Lf[:, None]
        return Tangents(Gf, Hf, Df, Lf)

    def backward_step(self, cache, params, adjoints: Adjoints, second: bool, ops) -> Adjoints:
        xp = ops.xp
        g, A = cache
        dl, Dl = adjoints.gradient, adjoints.hessian
        dlu = dl * g[:, None, :]  # (n, m, p): dl is (1|n, m, 1)
        if not second:
            return Adjoints(dlu)
        AtA = xp.matrix_transpose(A) @ A
        s, p = self._start, self.in_features
        if s:
            z = xp.zeros((s, p - s), dtype=A.dtype, device=device(A))
            Q = xp.concat(
                [
                    xp.concat([xp.zeros((s, s), dtype=A.dtype, device=device(A)), z], axis=1),
                    xp.concat([xp.matrix_transpose(z), AtA], axis=1),
                ],
                axis=0,
            )
        else:
            Q = AtA
        out = dl[..., None] * Q  # (1|n, m, p, p)
        if Dl is not None:
            out = out + Dl * (g[:, :, None] * g[:, None, :])[:, None, :, :]
        else:
            out = xp.broadcast_to(out, (g.shape[0], *out.shape[1:]))
        return Adjoints(dlu, out)

    # -- derivatives with respect to the parameters (hessquik_core.curvature) --------
    # f = u·c + ½|a|² + μ with y = u[s:], a = y Aᵀ and c = v (QuadraticLayer)
    # or c = [softplus(w), v] (QuadraticICNNLayer). ∂f/∂c = u,
    # ∂f/∂A = a ⊗ y, ∂f/∂μ = 1, and ∂f/∂u = g = c + [0, aA] (in the cache).
    def _split_c(self, gc, params, Vw, gc_sum, xp):
        """Map a derivative w.r.t. ``c`` (last axis) to ``v`` and, when present, ``w``.

        ``Vw``/``gc_sum`` add the R-term of the softplus chain (exact Hessian only)."""
        s = self._start
        out = {"v": gc[..., s:]}
        if params.get("w") is not None:
            _, sp1, sp2 = NONNEG(params["w"], 2, xp=xp)
            gw = gc[..., :s] * sp1
            if Vw is not None:
                gw = gw + (gc_sum[:s] * sp2)[None, :] * Vw
            out["w"] = gw
        return out

    def param_vjp(self, cache, params, u, dl, per_example, ops):
        r"""Adjoint ``dl : (n, 1)``: :math:`\partial C/\partial u = dl\, g`,
        :math:`\partial C/\partial c = \sum_n dl_n u_n`,
        :math:`\partial C/\partial A = \sum_n dl_n\, a_n \otimes y_n`,
        :math:`\partial C/\partial \mu = \sum_n dl_n`."""
        xp = ops.xp
        g, A = cache
        y = u[:, self._start :]
        a = y @ xp.matrix_transpose(A)
        dlu = dl * g
        if per_example:
            gc, gA, gmu = dl * u, Outer(dl * a, y), dl
        else:
            dlt = xp.matrix_transpose(dl)  # (1, n)
            gc = ops.mm(dlt, u)[0, :]
            gA = ops.mm(xp.matrix_transpose(dl * a), y)
            gmu = xp.sum(dl, axis=0)
        out = {"A": gA, "mu": gmu}
        out.update(self._split_c(gc, params, None, None, xp))
        return dlu, out

    def _rc(self, params, V, xp):
        if params.get("w") is None:
            return V["v"]
        return xp.concat([NONNEG(params["w"], 1, xp=xp)[1] * V["w"], V["v"]], axis=-1)

    def param_rop_forward(self, cache, params, u, Ru, V, ops):
        r""":math:`Ra = (Ry) A^\top + y V_A^\top`,
        :math:`Rf = (Ru)\cdot c + u \cdot Rc + a \cdot Ra + V_\mu`."""
        xp = ops.xp
        g, A = cache
        s = self._start
        y = u[:, s:]
        a = y @ xp.matrix_transpose(A)
        Rc = self._rc(params, V, xp)  # (k, p)
        Ra = lin_dirs_t(y, V["A"], ops)  # (n, k, r)
        Rf = ops.mm(u, xp.matrix_transpose(Rc)) + V["mu"][None, :, 0]
        if Ru is not None:
            Ra = Ra + ops.mm(Ru[..., s:], xp.matrix_transpose(A))
            Rf = Rf + ops.mm(Ru, self._lin(params, xp)[:, None])[..., 0]
        Rf = Rf + xp.sum(a[:, None, :] * Ra, axis=-1)
        return Rf[..., None], (a, Ra, Rc)

    def param_rop_backward(
        self, cache, rcache, params, u, Ru, V, dl, Rdl, ops, need_dlu=True, need_Rdlu=True
    ):
        r"""Backward R-pass with ``Rdl : (n, k, 1)``:
        :math:`R(\partial_u C) = R dl\, g + [dl\,(Rc + [0,\ Ra A + a V_A])]`,
        :math:`R(\partial_c C) = \sum_n R dl_n u_n + [dl_n Ru_n]`,
        :math:`R(\partial_A C) = \sum_n R dl_n\, a_n \otimes y_n
        + [dl_n (Ra_n \otimes y_n + a_n \otimes Ry_n)]`,
        :math:`R(\partial_\mu C) = \sum_n R dl_n`; ``dl=None`` drops the bracketed terms."""
        xp = ops.xp
        g, A = cache
        a, Ra, Rc = rcache
        s = self._start
        y = u[:, s:]
        Rd = Rdl[..., 0]  # (n, k)
        Rdlu = Rd[..., None] * g[:, None, :] if need_Rdlu else None
        Rgc = ops.mm(xp.matrix_transpose(Rd), u)  # (k, p)
        RgA = outer_sum_r(Rd[..., None] * a[:, None, :], y, ops)  # (k, r, dy)
        Rgmu = xp.sum(Rd, axis=0)[:, None]
        dlu = gc = None
        if dl is not None:
            dlu = dl * g if need_dlu else None
            if need_Rdlu:
                Rg = pad_front(ops.mm(Ra, A) + lin_dirs(a, V["A"], ops), s, xp)
                Rdlu = Rdlu + dl[:, :, None] * (Rg + Rc[None, :, :])
            gc = ops.mm(xp.matrix_transpose(dl), u)[0, :]
            RgA = RgA + outer_sum_r(dl[:, :, None] * Ra, y, ops)
            if Ru is not None:
                Rgc = Rgc + outer_sum_r(Ru, dl, ops)[..., 0]
                RgA = RgA + outer_sum(dl * a, Ru[..., s:], ops)
        out = {"A": RgA, "mu": Rgmu}
        out.update(self._split_c(Rgc, params, None if dl is None else V.get("w"), gc, xp))
        return dlu, Rdlu, out

    # -- streams: per-point parameter Jacobians (hessquik_core.pinn) ----------------
    # f = u c + Σ_j ½ a_j² + μ with a = y Aᵀ: every stream maps linearly through c,
    # and the quadratic part is the stream map of σ(z) = z²/2 on Y_y Aᵀ summed over
    # its r columns (σ' = z, σ'' = 1, σ''' = 0).
    def stream_forward(self, Y, params, spec, ops):
        r"""Streams :math:`Y' = Y c + \sum_j \Phi_{z^2/2}(Y_y A^\top)_j` (+ ``μ`` on the value row)."""
        xp = ops.xp
        c = self._lin(params, xp)
        lin = streams.affine_streams(Y, c[:, None], params["mu"], ops)
        Za = ops.mm(Y[..., self._start :], xp.matrix_transpose(params["A"]))
        Ya, phi = streams.phi_forward(Za, _HALF_SQUARE, spec, ops)
        return lin + xp.sum(Ya, axis=-1, keepdims=True), (Y, phi, c)

    def stream_vjp(self, cache, params, Ybar, mode, need_input, ops):
        r"""``Ybar : (c, S', N, 1)``: per point :math:`\partial_c = \sum_s Y_s \bar Y'_s`,
        :math:`\partial_\mu = \bar y'_0`, :math:`\partial_A = (\sum_s Y_{y,s}^\top \bar Z_{a,s})^\top`
        with :math:`\bar Z_a = \Phi^\top(\bar Y' \mathbf 1^\top)`; input adjoint
        :math:`\bar Y' c^\top + [0, \bar Z_a A]`."""
        xp = ops.xp
        Y, phi, c = cache
        s = self._start
        if mode == "kfac":
            raise ValueError(
                f"{type(self).__name__} has no Kronecker-factored curvature (not an affine layer)"
            )
        A = params["A"]
        Zbar = streams.phi_vjp(phi, xp.broadcast_to(Ybar, (*Ybar.shape[:-1], A.shape[0])), ops)
        lin = streams.affine_params(Y, Ybar, True, mode, ops)
        quad = streams.affine_params(Y[..., s:], Zbar, False, mode, ops)
        gc = lin.weight[..., 0]  # (N, c, p) or (p,)
        out = {"A": xp.matrix_transpose(quad.weight), "mu": lin.bias}
        out.update(self._split_c(gc, params, None, None, xp))
        Yin = None
        if need_input:
            Yin = Ybar * c + pad_front(ops.mm(Zbar, A), s, xp)
        return Yin, out

    def stream_rop(self, cache, params, RY, V, ops):
        r""":math:`RY' = RY\,c + Y\,Rc + V_\mu + \sum_j \Phi'(Z_a)[RY_y A^\top + Y_y V_A^\top]_j`."""
        xp = ops.xp
        Y, phi, c = cache
        s = self._start
        A = params["A"]
        Rc = self._rc(params, {k: v[None, ...] for k, v in V.items()}, xp)[0, ...]
        out = streams.affine_rop(Y, RY, c[:, None], Rc[:, None], V["mu"], ops)
        RZa = ops.mm(Y[..., s:], xp.matrix_transpose(V["A"]))
        if RY is not None:
            RZa = RZa + ops.mm(RY[..., s:], xp.matrix_transpose(A))
        return out + xp.sum(streams.phi_rop(phi, RZa, ops), axis=-1, keepdims=True)

    # -- torch twin -----------------------------------------------------------------
    def to_torch(self, kit) -> list:
        blk = self._torch_block(kit)
        kit.copy_state(self, blk)
        return [blk]


@register_layer
class QuadraticLayer(_QuadraticBase):
    r"""Quadratic output layer :math:`f(u) = u v + \tfrac12 u A^\top A u^\top + \mu` (scalar).

    Attributes
    ----------
    v : (in_features,)
    A : (rank, in_features)
    mu : (1,)
    """

    config_schema = {"in_features": "int", "rank": "int"}
    torch_twin = "QuadraticBlock"
    hessquik_name = "quadraticLayer"

    def __init__(self, in_features: int, rank: int, *, dtype=np.float64, seed=None) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.rank = check_int("rank", rank)
        rng = rng_of(seed)
        p, r = self.in_features, self.rank
        bound = 1.0 / math.sqrt(p)
        self._register("v", rng.uniform(-bound, bound, (p,)).astype(dtype), (p,))
        self._register("mu", rng.uniform(0.0, 1.0, (1,)).astype(dtype), (1,))
        self._register("A", rng.uniform(-bound, bound, (r, p)).astype(dtype), (r, p))

    def config(self) -> dict:
        return {"in_features": self.in_features, "rank": self.rank}

    @classmethod
    def parameter_shapes(cls, config: dict) -> dict:
        p, r = config["in_features"], config["rank"]
        return {"v": (p,), "mu": (1,), "A": (r, p)}

    def __repr__(self) -> str:
        return f"QuadraticLayer({self.in_features}, {self.rank})"

    def _lin(self, params, xp):
        return params["v"]

    def _torch_block(self, kit):
        return kit.twins["QuadraticBlock"](
            self.in_features, self.rank, dtype=kit.dtype_of(self), device=kit.device
        )

    @classmethod
    def from_hessquik(cls, module, kit):
        return cls(module.in_features, module.rank, dtype=kit.dtype)

    @classmethod
    def from_torch(cls, module, kit):
        layer = cls(module.v.shape[0], module.A.shape[0])
        return layer, {k: kit.numpy(getattr(module, k)) for k in ("v", "mu", "A")}


@register_layer
class QuadraticICNNLayer(_QuadraticBase):
    r"""Input-convex quadratic output layer (hessQuik's ``quadraticICNNLayer``).

    .. math::
        f([u, x]) = u\,w^+ + x v + \tfrac12 x A^\top A x^\top + \mu,\qquad w^+ = \mathrm{softplus}(w).

    The last layer of an input-convex network: with :math:`w^+ \ge 0` and a
    convex ``u`` (from :class:`ICNNLayer` s) the output is convex in ``x``.

    Parameters
    ----------
    input_dim : int
        :math:`d`, the network input's width (``x`` is the last ``input_dim``
        features the layer sees).
    in_features : int or None
        The width of ``u`` from the previous ICNN layer; ``None`` when the layer
        sees only ``x`` (a one-layer quadratic network).
    rank : int
        Rows of ``A``: the quadratic term :math:`\tfrac12\|xA^\top\|^2` has rank
        at most ``rank``.
    dtype : NumPy dtype, default float64
        Storage dtype of the parameters.
    seed : int or numpy.random.Generator, optional
        Seed of the initialisation (``None``: drawn from torch's or NumPy's global
        generator, as for every layer).

    Examples
    --------
    >>> import numpy as np, hessquik_core as hq
    >>> net = hq.NN(hq.ICNNLayer(2, None, 8, seed=0), hq.QuadraticICNNLayer(2, 8, rank=2, seed=1))
    >>> net(np.zeros((3, 2)), hessian=True).hessian.shape
    (3, 2, 2, 1)

    Attributes
    ----------
    w : (in_features,) or None when the layer sees only ``x``
    v : (input_dim,)
    A : (rank, input_dim)
    mu : (1,)
    """

    config_schema = {"input_dim": "int", "in_features": "int?", "rank": "int"}
    torch_twin = "QuadraticICNNBlock"
    hessquik_name = "quadraticICNNLayer"

    def __init__(
        self, input_dim: int, in_features: int | None, rank: int, *, dtype=np.float64, seed=None
    ) -> None:
        super().__init__()
        self.input_dim = check_int("input_dim", input_dim)
        self.n_in = 0 if in_features is None else check_int("in_features", in_features)
        self.rank = check_int("rank", rank)
        self._start = self.n_in
        rng = rng_of(seed)
        d, r = self.input_dim, self.rank
        if in_features is not None:
            bound = 1.0 / math.sqrt(self.n_in)
            self._register("w", rng.uniform(-bound, bound, (self.n_in,)).astype(dtype), (self.n_in,))
        else:
            bound = 1.0 / math.sqrt(d)
            self._register("w", None, None)
        self._register("v", rng.uniform(-bound, bound, (d,)).astype(dtype), (d,))
        self._register("mu", rng.uniform(0.0, 1.0, (1,)).astype(dtype), (1,))
        b2 = 1.0 / math.sqrt(d)
        self._register("A", rng.uniform(-b2, b2, (r, d)).astype(dtype), (r, d))

    @property
    def in_features(self) -> int:
        return self.n_in + self.input_dim

    def config(self) -> dict:
        return {"input_dim": self.input_dim, "in_features": self.n_in or None, "rank": self.rank}

    @classmethod
    def parameter_shapes(cls, config: dict) -> dict:
        d, n, r = config["input_dim"], config["in_features"], config["rank"]
        shapes = {} if n is None else {"w": (n,)}
        shapes.update({"v": (d,), "mu": (1,), "A": (r, d)})
        return shapes

    def __repr__(self) -> str:
        return f"QuadraticICNNLayer({self.input_dim}, {self.n_in or None}, {self.rank})"

    def _lin(self, params, xp):
        if params["w"] is None:
            return params["v"]
        wp, _, _ = NONNEG(params["w"], 0, xp=xp)
        return xp.concat([wp, params["v"]], axis=0)

    def _torch_block(self, kit):
        return kit.twins["QuadraticICNNBlock"](
            self.input_dim, self.n_in or None, self.rank, dtype=kit.dtype_of(self), device=kit.device
        )

    @classmethod
    def from_hessquik(cls, module, kit):
        kit.check_nonneg(module)
        return cls(module.input_dim, module.in_features, module.rank, dtype=kit.dtype)

    @classmethod
    def from_torch(cls, module, kit):
        layer = cls(module.v.shape[0], None if module.w is None else module.w.shape[0], module.A.shape[0])
        keys = ("w", "v", "mu", "A")
        return layer, {k: kit.numpy(getattr(module, k)) for k in keys if getattr(module, k) is not None}


__all__ = ["QuadraticCache", "QuadraticICNNLayer", "QuadraticLayer"]
