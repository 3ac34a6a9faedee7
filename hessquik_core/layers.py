r"""Layers: each owns its local first and second derivatives.

Notation (one example; the batch axis ``n`` is always first). A layer maps
features :math:`u \in \mathbb{R}^{p}` to :math:`f(u) \in \mathbb{R}^{q}`; the
network input is :math:`x \in \mathbb{R}^d`, the network output has :math:`m`
entries. Arrays are row-vector convention, as in hessQuik: ``u @ K``.

Forward mode carries, for ``k`` tangent directions (``k = d``, or the number
of columns of ``V``),

* ``G : (n, k, p)`` — :math:`\partial u/\partial x` (its rows are tangents),
* ``H : (n, k, k, p)`` — :math:`\partial^2 u/\partial x^2`,
* ``D : (n, k, p)`` — the diagonal of ``H`` over the two ``k`` axes,
* ``L : (n, p)`` — its trace (the Laplacian of every feature),

and each layer maps them to the same objects for ``f`` by the chain rule
:math:`\partial^2 f = \partial u^\top \nabla^2 f\, \partial u + \nabla f \cdot \partial^2 u`.

Backward mode first evaluates the network, then carries, from the output
back, for ``m`` output directions (``m`` outputs, or the columns of ``V``),

* ``dl : (n, m, q)`` — :math:`\partial g/\partial f` for the rest ``g`` of the network,
* ``Dl : (n, m, q, q)`` — :math:`\partial^2 g/\partial f^2`,

and maps them to :math:`\partial g/\partial u = J\,dl` and
:math:`\partial^2 g/\partial u^2 = J\,Dl\,J^\top + \sum_j dl_j \nabla^2 f_j`,
with :math:`J = \partial f/\partial u` (``p × q``). Every contraction is a
matrix product whose intermediate is never larger than the layer's
output, so the first layer never forms an ``n·d²·width`` array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._module import Module
from .activations import Activation, Softplus, get_activation

__all__ = [
    "ICNNLayer",
    "Layer",
    "QuadraticICNNLayer",
    "QuadraticLayer",
    "ResnetLayer",
    "SingleLayer",
]

_NONNEG = Softplus()  # hessQuik's map to nonnegative ICNN weights: softplus(L)


@dataclass(frozen=True)
class Want:
    """Which second-order objects a forward sweep must produce."""

    hessian: bool = False
    diagonal: bool = False
    laplacian: bool = False

    @property
    def any(self) -> bool:
        return self.hessian or self.diagonal or self.laplacian


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _swap(a, xp):
    return xp.matrix_transpose(a)


class Layer(Module):
    """Base class of the building blocks.

    Subclasses implement

    * ``_forward(u, P, order, be, xp) -> (f, cache)``,
    * ``_fwd(cache, P, G, H, D, L, want, be, xp) -> (G, H, D, L)``,
    * ``_bwd(cache, P, dl, Dl, second, be, xp) -> (dl, Dl)``,

    where ``P`` maps parameter names to arrays already in the call's
    namespace. ``_bwd_first`` may be overridden to produce only the trace or
    diagonal of the input Hessian at the first layer.
    """

    in_features: int
    out_features: int

    def _leaves(self):
        yield self

    def _eval_params(self, key, be, xp, dtype, device) -> dict:
        return self._converted(key, be, xp, dtype, device)

    def _bwd_first(self, cache, P, dl, Dl, what, be, xp):
        """``what`` is ``'trace'`` or ``'diag'`` of :math:`\\partial^2 g/\\partial u^2`."""
        _, full = self._bwd(cache, P, dl, Dl, True, be, xp)
        p = full.shape[-1]
        eye = xp.eye(p, dtype=full.dtype, device=_dev(full))
        diag = xp.sum(full * eye, axis=-1)
        return xp.sum(diag, axis=-1) if what == "trace" else diag

    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x, **kwargs):
        from .networks import NN

        return NN(self)(x, **kwargs)


def _dev(a):
    from array_api_compat import device

    return device(a)


# --------------------------------------------------------------------------
# the σ(u M + b) building block, shared by single, residual and ICNN layers
# --------------------------------------------------------------------------


def _act_fwd(s1, s2, GM, H, D, L, M, want, be, xp):
    r"""Forward-mode recurrences of :math:`\sigma(uM + b)`.

    With :math:`GM = \partial u\, M`:

    * gradient  :math:`\sigma' \odot GM`
    * Hessian   :math:`\sigma'' \odot (GM)_i (GM)_j + \sigma' \odot (H M)`
    * diagonal  :math:`\sigma'' \odot (GM)_i^2 + \sigma' \odot (D M)`
    * Laplacian :math:`\sigma'' \odot \sum_i (GM)_i^2 + \sigma' \odot (L M)`
    """
    Gf = s1[:, None, :] * GM
    Hf = Df = Lf = None
    if want.hessian:
        Hf = (s2[:, None, :] * GM)[:, :, None, :] * GM[:, None, :, :]
        if H is not None:
            Hf = Hf + s1[:, None, None, :] * be.mm(H, M, xp=xp)
    if want.diagonal or want.laplacian:
        GM2 = GM * GM
        if want.diagonal:
            Df = s2[:, None, :] * GM2
            if D is not None:
                Df = Df + s1[:, None, :] * be.mm(D, M, xp=xp)
        if want.laplacian:
            Lf = s2 * xp.sum(GM2, axis=1)
            if L is not None:
                Lf = Lf + s1 * (L @ M)
    return Gf, Hf, Df, Lf


def _sandwich(M, W, c, be, xp):
    r""":math:`M\,(W + \mathrm{diag}(c))\,M^\top` for symmetric ``W : (n, m, q, q)``
    (or ``None``) and ``c : (n, m, q)``; result ``(n, m, p, p)``.

    Uses :math:`(W M^\top)^\top = M W`, so the only intermediate is
    ``(n, m, p, q)``: never larger than the output when ``q <= p``.
    """
    Mt = xp.matrix_transpose(M)
    left = M * c[:, :, None, :]
    if W is not None:
        left = left + _swap(be.mm(W, Mt, xp=xp), xp)
    return be.mm(left, Mt, xp=xp)


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
    :math:`Dl_u = K\,[\mathrm{diag}(\sigma')\, Dl\, \mathrm{diag}(\sigma') + \mathrm{diag}(\sigma'' \odot dl)]\,K^\top`.
    """

    def __init__(self, in_features: int, out_features: int, act="identity", bias: bool = True,
                 *, dtype=np.float64, seed=None) -> None:
        super().__init__()
        self.in_features = _check_int("in_features", in_features)
        self.out_features = _check_int("out_features", out_features)
        self.act: Activation = get_activation(act)
        self.bias = bool(bias)
        rng = _rng(seed)
        bound = 1.0 / math.sqrt(self.out_features)
        p, q = self.in_features, self.out_features
        self._register("K", rng.uniform(-bound, bound, (p, q)).astype(dtype), (p, q))
        self._register("b", rng.uniform(-bound, bound, (q,)).astype(dtype) if bias else None, (q,))

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias}

    def __repr__(self) -> str:
        return f"SingleLayer({self.in_features}, {self.out_features}, act={self.act!r}, bias={self.bias})"

    def _forward(self, u, P, order, be, xp):
        z = u @ P["K"]
        if P["b"] is not None:
            z = z + P["b"]
        s0, s1, s2 = self.act(z, order, xp=xp)
        return s0, (s1, s2)

    def _fwd(self, cache, P, G, H, D, L, want, be, xp):
        s1, s2 = cache
        return _act_fwd(s1, s2, be.mm(G, P["K"], xp=xp), H, D, L, P["K"], want, be, xp)

    def _bwd(self, cache, P, dl, Dl, second, be, xp):
        s1, s2 = cache
        K = P["K"]
        dlu = be.mm(s1[:, None, :] * dl, xp.matrix_transpose(K), xp=xp)
        if not second:
            return dlu, None
        W = None if Dl is None else s1[:, None, :, None] * Dl * s1[:, None, None, :]
        return dlu, _sandwich(K, W, s2[:, None, :] * dl, be, xp)

    def _bwd_first(self, cache, P, dl, Dl, what, be, xp):
        r"""Trace: :math:`\mathrm{tr}(K W K^\top) = \langle W, K^\top K\rangle` costs
        ``n·m·q²`` instead of ``n·m·d²``. Diagonal: :math:`\sum_j (K W)_{aj} K_{aj}`."""
        s1, s2 = cache
        K = P["K"]
        c = s2[:, None, :] * dl
        W = None if Dl is None else s1[:, None, :, None] * Dl * s1[:, None, None, :]
        if what == "trace":
            KtK = xp.matrix_transpose(K) @ K
            eye = xp.eye(KtK.shape[0], dtype=KtK.dtype, device=_dev(KtK))
            out = c @ xp.sum(KtK * eye, axis=-1)
            if W is not None:
                out = out + xp.sum(xp.sum(W * KtK, axis=-1), axis=-1)
            return out
        out = be.mm(c, xp.matrix_transpose(K * K), xp=xp)
        if W is not None:
            KW = _swap(be.mm(W, xp.matrix_transpose(K), xp=xp), xp)  # (n, m, p, q)
            out = out + xp.sum(KW * K, axis=-1)
        return out


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

    def __init__(self, width: int, h: float = 1.0, act="antitanh", bias: bool = True,
                 *, dtype=np.float64, seed=None) -> None:
        super().__init__()
        self.width = _check_int("width", width)
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

    def __repr__(self) -> str:
        return f"ResnetLayer({self.width}, h={self.h}, act={self.act!r})"

    def _eval_params(self, key, be, xp, dtype, device) -> dict:
        return self.layer._converted(key, be, xp, dtype, device)

    def _forward(self, u, P, order, be, xp):
        s, cache = self.layer._forward(u, P, order, be, xp)
        return u + self.h * s, cache

    def _fwd(self, cache, P, G, H, D, L, want, be, xp):
        h = self.h
        Gs, Hs, Ds, Ls = self.layer._fwd(cache, P, G, H, D, L, want, be, xp)
        Gf = G + h * Gs
        Hf = None if Hs is None else (h * Hs if H is None else H + h * Hs)
        Df = None if Ds is None else (h * Ds if D is None else D + h * Ds)
        Lf = None if Ls is None else (h * Ls if L is None else L + h * Ls)
        return Gf, Hf, Df, Lf

    def _bwd(self, cache, P, dl, Dl, second, be, xp):
        s1, s2 = cache
        h = self.h
        K = P["K"]
        Kt = xp.matrix_transpose(K)
        dlu = dl + h * be.mm(s1[:, None, :] * dl, Kt, xp=xp)
        if not second:
            return dlu, None
        inner = K * (s2[:, None, :] * dl)[:, :, None, :]
        if Dl is None:
            return dlu, h * be.mm(inner, Kt, xp=xp)
        R = _swap(Dl + h * be.mm(Dl * s1[:, None, None, :], Kt, xp=xp), xp)
        return dlu, R + h * be.mm(R * s1[:, None, None, :] + inner, Kt, xp=xp)


class ICNNLayer(Layer):
    r"""Input-convex layer (hessQuik's ``ICNNLayer``).

    The layer sees :math:`[u, x]` (``in_features`` features then the
    ``input_dim`` network inputs; the first layer sees only :math:`x`) and returns

    .. math::
        f([u, x]) = \big[\,\sigma(u\,L^+ + x K + b),\ x\,\big],\qquad L^+ = \mathrm{softplus}(L),

    of width ``out_features + input_dim``. With :math:`M = [L^+; K]` the
    σ-part follows :class:`SingleLayer`; the pass-through copies the last
    ``input_dim`` columns. Backward uses the explicit per-example Jacobian
    :math:`J = [M\,\mathrm{diag}(\sigma'),\ P]` (``P`` selects ``x``).

    Attributes
    ----------
    K : (input_dim, out_features)
    L : (in_features, out_features) or None for the first layer
    b : (out_features,) or None
    """

    def __init__(self, input_dim: int, in_features: int | None, out_features: int,
                 act="softplus", bias: bool = True, *, dtype=np.float64, seed=None) -> None:
        super().__init__()
        self.input_dim = _check_int("input_dim", input_dim)
        self.n_in = 0 if in_features is None else _check_int("in_features", in_features)
        self.out_width = _check_int("out_features", out_features)
        self.act = get_activation(act)
        self.bias = bool(bias)
        rng = _rng(seed)
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
        return {"input_dim": self.input_dim, "in_features": self.n_in or None,
                "out_features": self.out_width, "bias": self.bias}

    def __repr__(self) -> str:
        return (f"ICNNLayer({self.input_dim}, {self.n_in or None}, {self.out_width}, "
                f"act={self.act!r})")

    def _M(self, P, xp):
        if P["L"] is None:
            return P["K"]
        Lp, _, _ = _NONNEG(P["L"], 0, xp=xp)
        return xp.concat([Lp, P["K"]], axis=0)

    def _forward(self, u, P, order, be, xp):
        M = self._M(P, xp)
        z = u @ M
        if P["b"] is not None:
            z = z + P["b"]
        s0, s1, s2 = self.act(z, order, xp=xp)
        return xp.concat([s0, u[:, self.n_in:]], axis=-1), (s1, s2, M)

    def _fwd(self, cache, P, G, H, D, L, want, be, xp):
        s1, s2, M = cache
        n, k, s = s1.shape[0], G.shape[1], self.n_in
        Gs, Hs, Ds, Ls = _act_fwd(s1, s2, be.mm(G, M, xp=xp), H, D, L, M, want, be, xp)

        def passthrough(T, shape):
            if T is None:
                return xp.zeros(shape, dtype=s1.dtype, device=_dev(s1))
            return xp.broadcast_to(T[..., s:], shape)

        d = self.input_dim
        Gf = xp.concat([Gs, passthrough(G, (n, k, d))], axis=-1)
        Hf = None if Hs is None else xp.concat([Hs, passthrough(H, (n, k, k, d))], axis=-1)
        Df = None if Ds is None else xp.concat([Ds, passthrough(D, (n, k, d))], axis=-1)
        Lf = None if Ls is None else xp.concat([Ls, passthrough(L, (n, d))], axis=-1)
        return Gf, Hf, Df, Lf

    def _jacobian(self, s1, M, xp):
        n, p, d = s1.shape[0], self.in_features, self.input_dim
        sel = xp.concat([xp.zeros((self.n_in, d), dtype=s1.dtype, device=_dev(s1)),
                         xp.eye(d, dtype=s1.dtype, device=_dev(s1))], axis=0)
        return xp.concat([M[None, :, :] * s1[:, None, :],
                          xp.broadcast_to(sel[None, :, :], (n, p, d))], axis=-1)

    def _bwd(self, cache, P, dl, Dl, second, be, xp):
        s1, s2, M = cache
        q = self.out_width
        J = self._jacobian(s1, M, xp)  # (n, p, q + d)
        dlu = be.einsum("npa,nma->nmp", J, xp.broadcast_to(dl, (s1.shape[0], *dl.shape[1:])), xp=xp)
        if not second:
            return dlu, None
        out = _sandwich(M, None, s2[:, None, :] * dl[..., :q], be, xp)
        if Dl is not None:
            T = be.einsum("npa,nmab->nmpb", J, Dl, xp=xp)
            out = out + be.einsum("nmpb,nrb->nmpr", T, J, xp=xp)
        return dlu, out


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

    def _lin(self, P, xp):  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward(self, u, P, order, be, xp):
        c = self._lin(P, xp)
        A = P["A"]
        ya = u[:, self._start:] @ xp.matrix_transpose(A)
        f = u @ c + 0.5 * xp.sum(ya * ya, axis=-1) + P["mu"]
        if order == 0:
            return f[:, None], None
        gy = c[self._start:] + ya @ A
        g = gy if self._start == 0 else xp.concat(
            [xp.broadcast_to(c[None, :self._start], (u.shape[0], self._start)), gy], axis=-1)
        return f[:, None], (g, A)

    def _fwd(self, cache, P, G, H, D, L, want, be, xp):
        g, A = cache
        n = g.shape[0]
        Gf = xp.sum(G * g[:, None, :], axis=-1)[..., None]
        GA = be.mm(G[..., self._start:], xp.matrix_transpose(A), xp=xp)
        Hf = Df = Lf = None
        if want.hessian:
            Hf = GA @ xp.matrix_transpose(GA)
            Hf = xp.broadcast_to(Hf, (n, *Hf.shape[1:])) if H is None else \
                Hf + xp.sum(H * g[:, None, None, :], axis=-1)
            Hf = Hf[..., None]
        if want.diagonal or want.laplacian:
            GA2 = xp.sum(GA * GA, axis=-1)  # (1|n, k)
            if want.diagonal:
                Df = xp.broadcast_to(GA2, (n, GA2.shape[1])) if D is None else \
                    GA2 + xp.sum(D * g[:, None, :], axis=-1)
                Df = Df[..., None]
            if want.laplacian:
                Lf = xp.broadcast_to(xp.sum(GA2, axis=-1), (n,))
                if L is not None:
                    Lf = Lf + xp.sum(L * g, axis=-1)
                Lf = Lf[:, None]
        return Gf, Hf, Df, Lf

    def _bwd(self, cache, P, dl, Dl, second, be, xp):
        g, A = cache
        dlu = dl * g[:, None, :]  # (n, m, p): dl is (1|n, m, 1)
        if not second:
            return dlu, None
        AtA = xp.matrix_transpose(A) @ A
        s, p = self._start, self.in_features
        if s:
            z = xp.zeros((s, p - s), dtype=A.dtype, device=_dev(A))
            Q = xp.concat([xp.concat([xp.zeros((s, s), dtype=A.dtype, device=_dev(A)), z], axis=1),
                           xp.concat([xp.matrix_transpose(z), AtA], axis=1)], axis=0)
        else:
            Q = AtA
        out = dl[..., None] * Q  # (1|n, m, p, p)
        if Dl is not None:
            out = out + Dl * (g[:, :, None] * g[:, None, :])[:, None, :, :]
        else:
            out = xp.broadcast_to(out, (g.shape[0], *out.shape[1:]))
        return dlu, out


class QuadraticLayer(_QuadraticBase):
    r"""Quadratic output layer :math:`f(u) = u v + \tfrac12 u A^\top A u^\top + \mu` (scalar).

    Attributes
    ----------
    v : (in_features,)
    A : (rank, in_features)
    mu : (1,)
    """

    def __init__(self, in_features: int, rank: int, *, dtype=np.float64, seed=None) -> None:
        super().__init__()
        self.in_features = _check_int("in_features", in_features)
        self.rank = _check_int("rank", rank)
        rng = _rng(seed)
        p, r = self.in_features, self.rank
        bound = 1.0 / math.sqrt(p)
        self._register("v", rng.uniform(-bound, bound, (p,)).astype(dtype), (p,))
        self._register("mu", rng.uniform(0.0, 1.0, (1,)).astype(dtype), (1,))
        self._register("A", rng.uniform(-bound, bound, (r, p)).astype(dtype), (r, p))

    def config(self) -> dict:
        return {"in_features": self.in_features, "rank": self.rank}

    def __repr__(self) -> str:
        return f"QuadraticLayer({self.in_features}, {self.rank})"

    def _lin(self, P, xp):
        return P["v"]


class QuadraticICNNLayer(_QuadraticBase):
    r"""Input-convex quadratic output layer (hessQuik's ``quadraticICNNLayer``).

    .. math::
        f([u, x]) = u\,w^+ + x v + \tfrac12 x A^\top A x^\top + \mu,\qquad w^+ = \mathrm{softplus}(w).

    Attributes
    ----------
    w : (in_features,) or None when the layer sees only ``x``
    v : (input_dim,)
    A : (rank, input_dim)
    mu : (1,)
    """

    def __init__(self, input_dim: int, in_features: int | None, rank: int, *,
                 dtype=np.float64, seed=None) -> None:
        super().__init__()
        self.input_dim = _check_int("input_dim", input_dim)
        self.n_in = 0 if in_features is None else _check_int("in_features", in_features)
        self.rank = _check_int("rank", rank)
        self._start = self.n_in
        rng = _rng(seed)
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

    def __repr__(self) -> str:
        return f"QuadraticICNNLayer({self.input_dim}, {self.n_in or None}, {self.rank})"

    def _lin(self, P, xp):
        if P["w"] is None:
            return P["v"]
        wp, _, _ = _NONNEG(P["w"], 0, xp=xp)
        return xp.concat([wp, P["v"]], axis=0)
