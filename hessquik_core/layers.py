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
    #: ``(iu, ju)`` index arrays of the upper triangle when the Hessian is
    #: carried packed, ``H : (n, k(k+1)/2, p)``; ``None`` for ``(n, k, k, p)``
    pairs: tuple | None = None

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
        diag = diagonal(full, xp)
        return xp.sum(diag, axis=-1) if what == "trace" else diag

    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x, **kwargs):
        from .networks import NN

        return NN(self)(x, **kwargs)


def diagonal(a, xp):
    """Diagonal over the last two (square) axes: ``(..., p, p) -> (..., p)``
    (the standard has ``linalg.diagonal`` only in an optional extension)."""
    eye = xp.eye(a.shape[-1], dtype=a.dtype, device=_dev(a))
    return xp.sum(a * eye, axis=-1)


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
        if want.pairs is None:
            Hf = (s2[:, None, :] * GM)[:, :, None, :] * GM[:, None, :, :]
        else:
            # symmetric: only the k(k+1)/2 pairs i <= j, which halves the GEMM below
            iu, ju = want.pairs
            Hf = xp.take(s2[:, None, :] * GM, iu, axis=1) * xp.take(GM, ju, axis=1)
        if H is not None:
            Hf = be.addcmul(Hf, _lift(s1, H.ndim, xp), be.mm(H, M, xp=xp), xp=xp)
    if want.diagonal:
        Df = s2[:, None, :] * (GM * GM)
        if D is not None:
            Df = be.addcmul(Df, s1[:, None, :], be.mm(D, M, xp=xp), xp=xp)
    if want.laplacian:
        # Σ_i (GM)_i² by the backend's vecdot (NumPy's stores no (n, k, q) square)
        Lf = s2 * be.sum_squares(GM, axis=1, xp=xp)
        if L is not None:
            Lf = Lf + s1 * (L @ M)
    return Gf, Hf, Df, Lf


def _lift(a, ndim, xp):
    """``a : (n, q)`` -> ``(n, 1, ..., 1, q)`` with ``ndim`` axes, to scale a
    packed ``(n, T, q)`` or full ``(n, k, k, q)`` Hessian alike."""
    return xp.reshape(a, (a.shape[0], *([1] * (ndim - 2)), a.shape[-1]))


def _outer(s):
    """``s : (n, q)`` -> ``(n, 1, q, q)``, the per-example ``s sᵀ`` that scales a
    symmetric ``(n, m, q, q)`` block on both sides in one pass."""
    return s[:, None, :, None] * s[:, None, None, :]


def _sandwich(M, W, c, be, xp):
    r""":math:`M\,(W + \mathrm{diag}(c))\,M^\top` for symmetric ``W : (n, m, q, q)``
    (or ``None``) and ``c : (n, m, q)``; result ``(n, m, p, p)``.

    Uses :math:`(W M^\top)^\top = M W`, so the only intermediate is
    ``(n, m, p, q)``: never larger than the output when ``q <= p``.
    """
    Mt = xp.matrix_transpose(M)
    left = M * c[:, :, None, :]
    if W is not None:
        left += _swap(be.mm(W, Mt, xp=xp), xp)  # in place: ``left`` is ours
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
        W = None if Dl is None else Dl * _outer(s1)
        return dlu, _sandwich(K, W, s2[:, None, :] * dl, be, xp)

    def _bwd_first(self, cache, P, dl, Dl, what, be, xp):
        r"""Trace: :math:`\mathrm{tr}(K W K^\top) = \langle W, K^\top K\rangle` costs
        ``n·m·q²`` instead of ``n·m·d²``. Diagonal: :math:`\sum_j (K W)_{aj} K_{aj}`."""
        s1, s2 = cache
        K = P["K"]
        c = s2[:, None, :] * dl
        W = None if Dl is None else Dl * _outer(s1)
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

    # -- derivatives with respect to the parameters (hessquik_core.curvature) --
    def _param_grad(self, cache, P, u, dl, per_example, be, xp):
        r"""Adjoint ``dl = ∂C/∂f : (n, q)`` to ``∂C/∂u`` and to the parameters.

        With :math:`\delta = \sigma'(z) \odot dl`: :math:`\partial C/\partial u = \delta K^\top`,
        :math:`\partial C/\partial K = \sum_n u_n \otimes \delta_n`,
        :math:`\partial C/\partial b = \sum_n \delta_n`
        (per example: the summands, shapes ``(n, p, q)`` and ``(n, q)``).
        """
        from .curvature import _ops

        delta = cache[0] * dl
        dlu = be.mm(delta, xp.matrix_transpose(P["K"]), xp=xp)
        if per_example:
            g = {"K": _ops.Outer(u, delta)}
            if P["b"] is not None:
                g["b"] = delta
        else:
            g = {"K": be.mm(xp.matrix_transpose(u), delta, xp=xp)}
            if P["b"] is not None:
                g["b"] = xp.sum(delta, axis=0)
        return dlu, g

    def _param_rfwd(self, cache, P, u, Ru, V, be, xp):
        r"""Forward R-pass: :math:`R z = (Ru) K + u V_K + V_b`, :math:`R f = \sigma' \odot Rz`.

        ``Ru : (n, k, p)`` or ``None`` (input independent of the parameters),
        ``V['K'] : (k, p, q)``, ``V['b'] : (k, q)``. Returns ``(Rf, Rz)``.
        """
        from .curvature import _ops

        Rz = _ops.lin_dirs(u, V["K"], be, xp)
        if "b" in V:
            Rz = Rz + V["b"][None, :, :]
        if Ru is not None:
            Rz = Rz + be.mm(Ru, P["K"], xp=xp)
        return cache[0][:, None, :] * Rz, Rz

    def _param_rbwd(self, cache, rcache, P, u, Ru, V, dl, Rdl, be, xp, need_dlu=True, need_Rdlu=True):
        r"""Backward R-pass (Pearlmutter) of :meth:`_param_grad`.

        :math:`R\delta = \sigma' \odot R dl + [\sigma'' \odot dl \odot Rz]`,
        :math:`R(\partial_u C) = R\delta\, K^\top + [\delta V_K^\top]`,
        :math:`R(\partial_K C) = \sum_n u_n \otimes R\delta_n + [Ru_n \otimes \delta_n]`,
        :math:`R(\partial_b C) = \sum_n R\delta_n`. Bracketed terms carry the
        layer's own curvature; ``dl=None`` drops them (Gauss–Newton).
        Returns ``(dl_u, Rdl_u, {name: (k, *shape)})``; ``need_dlu=False`` /
        ``need_Rdlu=False`` skip the input adjoints (``None``), e.g. at the first layer.
        """
        from .curvature import _ops

        s1, s2 = cache
        Kt = xp.matrix_transpose(P["K"])
        Rdelta = s1[:, None, :] * Rdl
        dlu = delta = None
        if dl is not None:
            delta = s1 * dl
            Rdelta = Rdelta + (s2 * dl)[:, None, :] * rcache
            if need_dlu:
                dlu = be.mm(delta, Kt, xp=xp)
        Rdlu = be.mm(Rdelta, Kt, xp=xp) if need_Rdlu else None
        RK = _ops.outer_sum(u, Rdelta, be, xp)
        if delta is not None:
            if need_Rdlu:
                Rdlu = Rdlu + _ops.lin_dirs_t(delta, V["K"], be, xp)
            if Ru is not None:
                RK = RK + _ops.outer_sum_r(Ru, delta, be, xp)
        g = {"K": RK}
        if P["b"] is not None:
            g["b"] = xp.sum(Rdelta, axis=0)
        return dlu, Rdlu, g


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

    def __init__(
        self, width: int, h: float = 1.0, act="identity", bias: bool = True, *, dtype=np.float64, seed=None
    ) -> None:
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
        # the derivatives of h σ(uK + b) are those of σ with σ', σ'' scaled by
        # h: scaling the (n, w) factors spares a pass over every carried array
        s1, s2 = cache
        h = self.h
        K = P["K"]
        s2 = None if s2 is None else h * s2  # None: first order only
        Gs, Hs, Ds, Ls = _act_fwd(h * s1, s2, be.mm(G, K, xp=xp), H, D, L, K, want, be, xp)
        # the identity path, added in place into the fresh arrays just made
        Gs += G
        if H is not None:
            Hs += H
        if D is not None:
            Ds += D
        if L is not None:
            Ls += L
        return Gs, Hs, Ds, Ls

    def _bwd(self, cache, P, dl, Dl, second, be, xp):
        s1, s2 = cache
        K = P["K"]
        # h folded into the small (w, w) factor once, instead of a pass over
        # every (n, m, w, w) block
        hKt = self.h * xp.matrix_transpose(K)
        dlu = be.addmm(dl, s1[:, None, :] * dl, hKt, xp=xp)
        if not second:
            return dlu, None
        c = (s2[:, None, :] * dl)[:, :, None, :]
        if Dl is None:
            return dlu, be.mm(K * c, hKt, xp=xp)
        # A = Dl Jᵀ; Dl symmetric, so Aᵀ = J Dl, and
        # J Dl Jᵀ + h K diag(c) Kᵀ = Aᵀ + (Aᵀ diag(σ') + K diag(c)) h Kᵀ.
        # Four (n, m, w, w) arrays are made; the sums go into the GEMM
        # outputs or are fused (torch: addmm / addcmul_).
        s1b = s1[:, None, None, :]
        R = _swap(be.addmm(Dl, Dl * s1b, hKt, xp=xp), xp)
        # K diag(c) is the accumulator: a fresh row-major array, so the GEMM
        # below needs no copy (R * σ' would inherit R's transposed layout)
        U = be.addcmul(K * c, R, s1b, xp=xp)
        return dlu, be.addmm(R, U, hKt, xp=xp)

    # -- derivatives with respect to the parameters (hessquik_core.curvature) --
    # f = u + h s(u) with s the inner single layer: the inner layer sees the
    # adjoint h dl; the identity path adds dl to the input adjoint.
    def _param_grad(self, cache, P, u, dl, per_example, be, xp):
        r""":math:`\partial C/\partial u = dl + h\,\delta K^\top`; parameter gradients are
        ``h`` times the inner layer's. Keys ``'K'``, ``'b'`` (state keys ``layer.K``, ``layer.b``)."""
        dlu, g = self.layer._param_grad(cache, P, u, self.h * dl, per_example, be, xp)
        return dl + dlu, g

    def _param_rfwd(self, cache, P, u, Ru, V, be, xp):
        r""":math:`Rf = Ru + h\,\sigma' \odot Rz`."""
        Rs, Rz = self.layer._param_rfwd(cache, P, u, Ru, V, be, xp)
        return (self.h * Rs if Ru is None else Ru + self.h * Rs), Rz

    def _param_rbwd(self, cache, rcache, P, u, Ru, V, dl, Rdl, be, xp, need_dlu=True, need_Rdlu=True):
        r"""Inner layer's R-backward with adjoints ``h dl``, ``h Rdl``, plus the identity path."""
        h = self.h
        dlu, Rdlu, g = self.layer._param_rbwd(
            cache, rcache, P, u, Ru, V, None if dl is None else h * dl, h * Rdl, be, xp, need_dlu, need_Rdlu
        )
        return (None if dlu is None else dl + dlu), (None if Rdlu is None else Rdl + Rdlu), g


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
        return {
            "input_dim": self.input_dim,
            "in_features": self.n_in or None,
            "out_features": self.out_width,
            "bias": self.bias,
        }

    def __repr__(self) -> str:
        return f"ICNNLayer({self.input_dim}, {self.n_in or None}, {self.out_width}, act={self.act!r})"

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
        return xp.concat([s0, u[:, self.n_in :]], axis=-1), (s1, s2, M)

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
        Hf = None if Hs is None else xp.concat([Hs, passthrough(H, (*Hs.shape[:-1], d))], axis=-1)
        Df = None if Ds is None else xp.concat([Ds, passthrough(D, (n, k, d))], axis=-1)
        Lf = None if Ls is None else xp.concat([Ls, passthrough(L, (n, d))], axis=-1)
        return Gf, Hf, Df, Lf

    def _jacobian(self, s1, M, xp):
        n, p, d = s1.shape[0], self.in_features, self.input_dim
        sel = xp.concat(
            [
                xp.zeros((self.n_in, d), dtype=s1.dtype, device=_dev(s1)),
                xp.eye(d, dtype=s1.dtype, device=_dev(s1)),
            ],
            axis=0,
        )
        return xp.concat(
            [M[None, :, :] * s1[:, None, :], xp.broadcast_to(sel[None, :, :], (n, p, d))], axis=-1
        )

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

    # -- derivatives with respect to the parameters (hessquik_core.curvature) --
    # With w = [u, x] the layer input, M = [L⁺; K], z = wM + b, f = [σ(z), x]
    # and dl = [dl_s, dl_x]: δ = σ' ⊙ dl_s, ∂C/∂w = δMᵀ + [0, dl_x],
    # ∂C/∂M = Σ_n w_n ⊗ δ_n, and the chain rule through L⁺ = softplus(L)
    # multiplies the L-block by softplus'(L) = sigmoid(L).
    def _param_grad(self, cache, P, u, dl, per_example, be, xp):
        r"""Adjoint ``dl : (n, q + d)`` to ``∂C/∂[u, x]`` and to ``K``, ``L``, ``b``:
        :math:`\partial C/\partial K = \sum_n x_n \otimes \delta_n`,
        :math:`\partial C/\partial L = (\sum_n u_n \otimes \delta_n) \odot \mathrm{softplus}'(L)`,
        :math:`\partial C/\partial b = \sum_n \delta_n`."""
        from .curvature import _ops

        s1, _, M = cache
        q, s = self.out_width, self.n_in
        delta = s1 * dl[:, :q]
        dlu = _ops.add_tail(be.mm(delta, xp.matrix_transpose(M), xp=xp), dl[:, q:], s, xp)
        if per_example:  # factors u_n ⊗ δ_n, formed in the (N, P) output
            g = {"K": _ops.Outer(u[:, s:], delta)}
            if P["b"] is not None:
                g["b"] = delta
            if P["L"] is not None:
                g["L"] = _ops.Outer(u[:, :s], delta, _NONNEG(P["L"], 1, xp=xp)[1])
            return dlu, g
        gM = be.mm(xp.matrix_transpose(u), delta, xp=xp)
        g = {"K": gM[s:, :]}
        if P["b"] is not None:
            g["b"] = xp.sum(delta, axis=0)
        if P["L"] is not None:
            g["L"] = gM[:s, :] * _NONNEG(P["L"], 1, xp=xp)[1]
        return dlu, g

    def _param_rfwd(self, cache, P, u, Ru, V, be, xp):
        r""":math:`RM = [\mathrm{softplus}'(L) \odot V_L;\ V_K]`,
        :math:`Rz = (Rw) M + w\,RM + V_b`, :math:`Rf = [\sigma' \odot Rz,\ Rx]`."""
        from .curvature import _ops

        s1, _, M = cache
        s, d = self.n_in, self.input_dim
        RM = V["K"]
        if P["L"] is not None:
            RM = xp.concat([_NONNEG(P["L"], 1, xp=xp)[1] * V["L"], RM], axis=1)
        Rz = _ops.lin_dirs(u, RM, be, xp)
        if "b" in V:
            Rz = Rz + V["b"][None, :, :]
        if Ru is not None:
            Rz = Rz + be.mm(Ru, M, xp=xp)
            Rx = Ru[..., s:]
        else:
            Rx = xp.zeros((u.shape[0], RM.shape[0], d), dtype=u.dtype, device=_dev(u))
        return xp.concat([s1[:, None, :] * Rz, Rx], axis=-1), (Rz, RM)

    def _param_rbwd(self, cache, rcache, P, u, Ru, V, dl, Rdl, be, xp, need_dlu=True, need_Rdlu=True):
        r"""Backward R-pass: :math:`R\delta = \sigma' \odot R dl_s + [\sigma'' \odot dl_s \odot Rz]`,
        :math:`R(\partial_w C) = R\delta M^\top + [\delta\, RM^\top] + [0, R dl_x]`,
        :math:`R(\partial_M C) = \sum_n w_n \otimes R\delta_n + [Rw_n \otimes \delta_n]`, and for ``L``
        :math:`R(\partial_L C) = R(\partial_{M_L} C) \odot \mathrm{softplus}'(L) + [\partial_{M_L} C \odot
        \mathrm{softplus}''(L) \odot V_L]`. ``dl=None`` drops the bracketed (curvature) terms."""
        from .curvature import _ops

        s1, s2, M = cache
        Rz, RM = rcache
        q, s = self.out_width, self.n_in
        Mt = xp.matrix_transpose(M)
        Rdelta = s1[:, None, :] * Rdl[..., :q]
        dlu = delta = None
        if dl is not None:
            delta = s1 * dl[:, :q]
            Rdelta = Rdelta + (s2 * dl[:, :q])[:, None, :] * Rz
            if need_dlu:
                dlu = _ops.add_tail(be.mm(delta, Mt, xp=xp), dl[:, q:], s, xp)
        Rdlu = _ops.add_tail(be.mm(Rdelta, Mt, xp=xp), Rdl[..., q:], s, xp) if need_Rdlu else None
        RgM = _ops.outer_sum(u, Rdelta, be, xp)
        if delta is not None:
            if need_Rdlu:
                Rdlu = Rdlu + _ops.lin_dirs_t(delta, RM, be, xp)
            if Ru is not None:
                RgM = RgM + _ops.outer_sum_r(Ru, delta, be, xp)
        g = {"K": RgM[:, s:, :]}
        if P["b"] is not None:
            g["b"] = xp.sum(Rdelta, axis=0)
        if P["L"] is not None:
            _, sp1, sp2 = _NONNEG(P["L"], 2, xp=xp)
            RL = RgM[:, :s, :] * sp1
            if delta is not None:
                gML = be.mm(xp.matrix_transpose(u[:, :s]), delta, xp=xp)
                RL = RL + (gML * sp2)[None, :, :] * V["L"]
            g["L"] = RL
        return dlu, Rdlu, g


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
        ya = u[:, self._start :] @ xp.matrix_transpose(A)
        f = u @ c + 0.5 * xp.sum(ya * ya, axis=-1) + P["mu"]
        if order == 0:
            return f[:, None], None
        gy = c[self._start :] + ya @ A
        g = (
            gy
            if self._start == 0
            else xp.concat([xp.broadcast_to(c[None, : self._start], (u.shape[0], self._start)), gy], axis=-1)
        )
        return f[:, None], (g, A)

    def _fwd(self, cache, P, G, H, D, L, want, be, xp):
        g, A = cache
        n = g.shape[0]
        Gf = xp.sum(G * g[:, None, :], axis=-1)[..., None]
        GA = be.mm(G[..., self._start :], xp.matrix_transpose(A), xp=xp)
        Hf = Df = Lf = None
        if want.hessian:
            if want.pairs is None:
                Hf = GA @ xp.matrix_transpose(GA)
            else:
                iu, ju = want.pairs
                Hf = xp.sum(xp.take(GA, iu, axis=1) * xp.take(GA, ju, axis=1), axis=-1)
            Hf = (
                xp.broadcast_to(Hf, (n, *Hf.shape[1:]))
                if H is None
                else Hf + xp.sum(H * _lift(g, H.ndim, xp), axis=-1)
            )
            Hf = Hf[..., None]
        if want.diagonal or want.laplacian:
            GA2 = xp.sum(GA * GA, axis=-1)  # (1|n, k)
            if want.diagonal:
                Df = (
                    xp.broadcast_to(GA2, (n, GA2.shape[1]))
                    if D is None
                    else GA2 + xp.sum(D * g[:, None, :], axis=-1)
                )
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
            Q = xp.concat(
                [
                    xp.concat([xp.zeros((s, s), dtype=A.dtype, device=_dev(A)), z], axis=1),
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
        return dlu, out

    # -- derivatives with respect to the parameters (hessquik_core.curvature) --
    # f = u·c + ½|a|² + μ with y = u[s:], a = y Aᵀ and c = v (QuadraticLayer)
    # or c = [softplus(w), v] (QuadraticICNNLayer). ∂f/∂c = u,
    # ∂f/∂A = a ⊗ y, ∂f/∂μ = 1, and ∂f/∂u = g = c + [0, aA] (in the cache).
    def _split_c(self, gc, P, Vw, gc_sum, xp):
        """Map a derivative w.r.t. ``c`` (last axis) to ``v`` and, when present, ``w``.

        ``Vw``/``gc_sum`` add the R-term of the softplus chain (exact Hessian only)."""
        s = self._start
        out = {"v": gc[..., s:]}
        if P.get("w") is not None:
            _, sp1, sp2 = _NONNEG(P["w"], 2, xp=xp)
            gw = gc[..., :s] * sp1
            if Vw is not None:
                gw = gw + (gc_sum[:s] * sp2)[None, :] * Vw
            out["w"] = gw
        return out

    def _param_grad(self, cache, P, u, dl, per_example, be, xp):
        r"""Adjoint ``dl : (n, 1)``: :math:`\partial C/\partial u = dl\, g`,
        :math:`\partial C/\partial c = \sum_n dl_n u_n`,
        :math:`\partial C/\partial A = \sum_n dl_n\, a_n \otimes y_n`,
        :math:`\partial C/\partial \mu = \sum_n dl_n`."""
        from .curvature import _ops

        g, A = cache
        y = u[:, self._start :]
        a = y @ xp.matrix_transpose(A)
        dlu = dl * g
        if per_example:
            gc, gA, gmu = dl * u, _ops.Outer(dl * a, y), dl
        else:
            dlt = xp.matrix_transpose(dl)  # (1, n)
            gc = be.mm(dlt, u, xp=xp)[0, :]
            gA = be.mm(xp.matrix_transpose(dl * a), y, xp=xp)
            gmu = xp.sum(dl, axis=0)
        out = {"A": gA, "mu": gmu}
        out.update(self._split_c(gc, P, None, None, xp))
        return dlu, out

    def _rc(self, P, V, xp):
        if P.get("w") is None:
            return V["v"]
        return xp.concat([_NONNEG(P["w"], 1, xp=xp)[1] * V["w"], V["v"]], axis=-1)

    def _param_rfwd(self, cache, P, u, Ru, V, be, xp):
        r""":math:`Ra = (Ry) A^\top + y V_A^\top`,
        :math:`Rf = (Ru)\cdot c + u \cdot Rc + a \cdot Ra + V_\mu`."""
        from .curvature import _ops

        g, A = cache
        s = self._start
        y = u[:, s:]
        a = y @ xp.matrix_transpose(A)
        Rc = self._rc(P, V, xp)  # (k, p)
        Ra = _ops.lin_dirs_t(y, V["A"], be, xp)  # (n, k, r)
        Rf = be.mm(u, xp.matrix_transpose(Rc), xp=xp) + V["mu"][None, :, 0]
        if Ru is not None:
            Ra = Ra + be.mm(Ru[..., s:], xp.matrix_transpose(A), xp=xp)
            Rf = Rf + be.mm(Ru, self._lin(P, xp)[:, None], xp=xp)[..., 0]
        Rf = Rf + xp.sum(a[:, None, :] * Ra, axis=-1)
        return Rf[..., None], (a, Ra, Rc)

    def _param_rbwd(self, cache, rcache, P, u, Ru, V, dl, Rdl, be, xp, need_dlu=True, need_Rdlu=True):
        r"""Backward R-pass with ``Rdl : (n, k, 1)``:
        :math:`R(\partial_u C) = R dl\, g + [dl\,(Rc + [0,\ Ra A + a V_A])]`,
        :math:`R(\partial_c C) = \sum_n R dl_n u_n + [dl_n Ru_n]`,
        :math:`R(\partial_A C) = \sum_n R dl_n\, a_n \otimes y_n
        + [dl_n (Ra_n \otimes y_n + a_n \otimes Ry_n)]`,
        :math:`R(\partial_\mu C) = \sum_n R dl_n`; ``dl=None`` drops the bracketed terms."""
        from .curvature import _ops

        g, A = cache
        a, Ra, Rc = rcache
        s = self._start
        y = u[:, s:]
        Rd = Rdl[..., 0]  # (n, k)
        Rdlu = Rd[..., None] * g[:, None, :] if need_Rdlu else None
        Rgc = be.mm(xp.matrix_transpose(Rd), u, xp=xp)  # (k, p)
        RgA = _ops.outer_sum_r(Rd[..., None] * a[:, None, :], y, be, xp)  # (k, r, dy)
        Rgmu = xp.sum(Rd, axis=0)[:, None]
        dlu = gc = None
        if dl is not None:
            dlu = dl * g if need_dlu else None
            if need_Rdlu:
                Rg = _ops.pad_front(be.mm(Ra, A, xp=xp) + _ops.lin_dirs(a, V["A"], be, xp), s, xp)
                Rdlu = Rdlu + dl[:, :, None] * (Rg + Rc[None, :, :])
            gc = be.mm(xp.matrix_transpose(dl), u, xp=xp)[0, :]
            RgA = RgA + _ops.outer_sum_r(dl[:, :, None] * Ra, y, be, xp)
            if Ru is not None:
                Rgc = Rgc + _ops.outer_sum_r(Ru, dl, be, xp)[..., 0]
                RgA = RgA + _ops.outer_sum(dl * a, Ru[..., s:], be, xp)
        out = {"A": RgA, "mu": Rgmu}
        out.update(self._split_c(Rgc, P, None if dl is None else V.get("w"), gc, xp))
        return dlu, Rdlu, out


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

    def __init__(
        self, input_dim: int, in_features: int | None, rank: int, *, dtype=np.float64, seed=None
    ) -> None:
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
