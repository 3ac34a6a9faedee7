r"""Input embeddings: random Fourier features and the exact periodic embedding.

Both are a fixed-structure linear map followed by a *per-column* pointwise
function, :math:`f_j(u) = \phi_j(z_j)`, :math:`z = uK` (no bias)
(:mod:`hessquik_core.rules.fourier`). The Jacobian is therefore
:math:`K\,\mathrm{diag}(\phi'(z))`, the form of the affine rule
:math:`\sigma(uM + b)` with :math:`M = K` and the activation derivatives
taken per column, so both modes, the Laplacian/diagonal shortcuts and the
parameter R-passes are those of :mod:`hessquik_core.rules.affine` (no
recurrence is written twice).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np

from ..carry import Adjoints, Request, Tangents
from ..rules import affine, streams
from ..rules import fourier as rules
from ..rules.directions import weight_gradient
from .base import Layer, check_int, register_layer

_TWO_PI = 2.0 * math.pi


class PointwiseLinearCache(NamedTuple):
    """What the steps of :math:`\\phi(uK)` keep: the per-column derivatives and ``K``."""

    dsigma: Any  # (n, q): φ'(z), None for order 0
    d2sigma: Any  # (n, q): φ''(z), None below order 2
    K: Any  # (p, q) in the call's namespace


class _PointwiseLinear(Layer):
    """Shared steps of :math:`\\phi(uK)` with per-column :math:`\\phi` (the affine rule with ``M = K``)."""

    def forward_step(self, cache, params, tangents: Tangents, request: Request, ops) -> Tangents:
        K = cache.K
        return affine.forward_step(
            cache.dsigma, cache.d2sigma, ops.mm(tangents.jacobian, K), tangents, K, request, ops
        )

    def backward_step(self, cache, params, adjoints: Adjoints, second: bool, ops) -> Adjoints:
        return affine.backward_step(cache.dsigma, cache.d2sigma, cache.K, adjoints, second, ops)

    def backward_first(self, cache, params, adjoints: Adjoints, what: str, ops):
        return affine.backward_first(cache.dsigma, cache.d2sigma, cache.K, adjoints, what, ops)

    # -- parameter passes of a layer whose K is fixed (nothing to train) ----------
    def _frozen_vjp(self, cache, ops):
        r"""``dl -> (dl_u, {})``: :math:`\partial C/\partial u = (\phi' \odot dl) K^\top`."""
        return lambda dl: (affine.param_vjp(cache.dsigma, cache.K, dl, ops)[1], {})

    def _frozen_rop_forward(self, cache, Ru, ops):
        r""":math:`Rf = \phi' \odot (Ru\,K)` (``K`` fixed); ``(None, None)`` when ``Ru`` is."""
        if Ru is None:
            return None, None
        Rz = ops.mm(Ru, cache.K)
        return cache.dsigma[:, None, :] * Rz, Rz

    def _frozen_rop_backward(self, cache, rcache, dl, Rdl, ops, need_dlu, need_Rdlu):
        r"""Backward R-pass with ``K`` fixed: :math:`R\delta = \phi'\odot Rdl + [\phi''\odot dl\odot Rz]`."""
        xp = ops.xp
        Kt = xp.matrix_transpose(cache.K)
        dlu = None
        Rdelta = None if Rdl is None else cache.dsigma[:, None, :] * Rdl
        if dl is not None:
            if need_dlu:
                dlu = ops.mm(cache.dsigma * dl, Kt)
            if rcache is not None:  # the layer's own curvature: φ'' ⊙ dl ⊙ Rz
                own = (cache.d2sigma * dl)[:, None, :] * rcache
                Rdelta = own if Rdelta is None else Rdelta + own
        Rdlu = None if (not need_Rdlu or Rdelta is None) else ops.mm(Rdelta, Kt)
        return dlu, Rdlu, {}

    # -- streams: per-point parameter Jacobians (hessquik_core.pinn) ----------------
    # Y' = Φ_φ(Y K) with the per-column φ of the subclass (_stream_derivatives);
    # a frozen K has no parameter blocks, a trainable one folds ∂K (_stream_fold).
    def stream_forward(self, Y, params, spec, ops):
        r"""Streams :math:`Y' = \Phi_\phi(YK)`, ``K`` as :meth:`evaluate` builds it."""
        K = self.evaluate(Y[0, ...], params, 0, ops)[1].K
        Z = ops.mm(Y, K)
        Yo, phi = streams.phi_from_derivatives(Z, self._stream_derivatives(Z[0, ...], ops), spec, ops)
        return Yo, (Y, phi, K)

    def stream_vjp(self, cache, params, Ybar, mode, need_input, ops):
        r""":math:`\bar Z = \Phi_\phi^\top(\bar Y')`, :math:`\bar Y = \bar Z K^\top`; the
        parameters' block is the fold of :math:`\sum_s Y_s^\top \bar Z_s` (trainable ``K`` only)."""
        Y, phi, K = cache
        if mode == "kfac":
            raise ValueError(
                f"{type(self).__name__} has no Kronecker-factored curvature (not an affine layer)"
            )
        Zbar = streams.phi_vjp(phi, Ybar, ops)
        Yin = streams.affine_input_adjoint(Zbar, K, ops) if need_input else None
        if not self.trainable:
            return Yin, {}
        return Yin, self._stream_fold(streams.affine_params(Y, Zbar, False, mode, ops).weight, ops)

    def stream_rop(self, cache, params, RY, V, ops):
        r""":math:`RY' = \Phi_\phi'(Z)[RY\,K + Y\,RK]` (``None`` while nothing depends on the parameters)."""
        Y, phi, K = cache
        if not self.trainable:
            return None if RY is None else streams.phi_rop(phi, ops.mm(RY, K), ops)
        RK = self._stream_RK({k: v[None, ...] for k, v in V.items()}, Y, ops)[0, ...]
        return streams.phi_rop(phi, streams.affine_rop(Y, RY, K, RK, None, ops), ops)


@functools.cache
def _torch_twins() -> dict[str, type]:
    """The torch twins of the two embeddings (built once, on first use: torch is optional)."""
    import torch
    from torch import nn

    class FourierFeatures(nn.Module):
        r"""torch twin of :class:`hessquik_core.FourierFeatures`:
        :math:`x \mapsto [\sin(2\pi xB), \cos(2\pi xB)]`; ``B`` is a parameter
        when trainable, a buffer otherwise."""

        def __init__(self, in_features, num_features, scale=1.0, trainable=False, *, dtype=None, device=None):
            super().__init__()
            self.in_features, self.num_features = in_features, num_features
            self.scale, self.trainable = float(scale), bool(trainable)
            B = torch.empty((in_features, num_features), dtype=dtype, device=device)
            if self.trainable:
                self.B = nn.Parameter(B)
            else:  # frozen: a buffer (in state_dict, not in parameters())
                self.register_buffer("B", B)

        def forward(self, x):
            z = x @ (_TWO_PI * self.B)  # the same order of operations as the rule
            return torch.cat([torch.sin(z), torch.cos(z)], dim=-1)

        def extra_repr(self) -> str:
            return f"{self.in_features}, {self.num_features}, scale={self.scale}, trainable={self.trainable}"

    class PeriodicEmbedding(nn.Module):
        r"""torch twin of :class:`hessquik_core.PeriodicEmbedding`:
        :math:`x \mapsto [\cos(\omega_S x_S), \sin(\omega_S x_S), x_R]`; with
        ``trainable=True`` the frequencies :math:`\omega` are a parameter."""

        def __init__(self, in_features, periods, axes=None, trainable=False, *, dtype=None, device=None):
            super().__init__()
            self.in_features = in_features
            self.periods, self.axes = tuple(float(p) for p in periods), axes
            self.trainable = bool(trainable)
            dtype = dtype or torch.float64
            K = rules.periodic_embedding_matrix(in_features, self.periods, axes)
            if self.trainable:  # K = [S ω, S ω, R] rebuilt from ω on every call
                s = len(self.periods)
                self.register_buffer("S", torch.tensor(K[:, :s] != 0, dtype=dtype, device=device))
                self.register_buffer("R", torch.tensor(K[:, 2 * s :], dtype=dtype, device=device))
                omega = torch.tensor([_TWO_PI / p for p in self.periods], dtype=dtype, device=device)
                self.omega = nn.Parameter(omega)
            else:
                self.register_buffer("K", torch.tensor(K, dtype=dtype, device=device))

        def forward(self, x):
            s = len(self.periods)
            if self.trainable:
                Ks = self.S * self.omega
                K = torch.cat([Ks, Ks, self.R], dim=1)
            else:
                K = self.K
            z = x @ K
            return torch.cat([torch.cos(z[..., :s]), torch.sin(z[..., s : 2 * s]), z[..., 2 * s :]], dim=-1)

        def extra_repr(self) -> str:
            return f"{self.in_features}, periods={self.periods}, axes={self.axes}, trainable={self.trainable}"

    return {"FourierFeatures": FourierFeatures, "PeriodicEmbedding": PeriodicEmbedding}


@register_layer
class FourierFeatures(_PointwiseLinear):
    r"""Random Fourier features :math:`f(u) = [\sin(2\pi uB), \cos(2\pi uB)]`.

    Parameters
    ----------
    in_features : int
        :math:`d`.
    num_features : int
        :math:`F`; the layer has :math:`2F` outputs (sines first).
    scale : float, default 1.0
        Standard deviation of the entries of :math:`B \sim N(0, \text{scale}^2)`.
    trainable : bool, default False
        Whether :math:`B` is trained. With ``False`` it is a frozen
        parameter (a buffer): in ``state_dict()`` (so ``hq.save``/``hq.load``
        keep it) and used by every call, but not in ``parameters()``, so
        neither an optimizer nor :mod:`hessquik_core.curvature` sees it;
        the torch twin holds it as a buffer. With ``True`` it is an ordinary
        parameter (the twin's ``nn.Parameter``).
    dtype : NumPy dtype, default float64
    seed : int or numpy.random.Generator, optional
        Seed of :math:`B`.

    Attributes
    ----------
    B : (d, F)

    Notes
    -----
    With :math:`K = 2\pi[B, B]` and :math:`z = uK`, :math:`f = \phi(z)` with
    :math:`\phi = \sin` on the first :math:`F` columns and :math:`\cos` on the
    last :math:`F`: the affine rule with per-column :math:`\phi', \phi''`. The
    gradient with respect to :math:`B` is :math:`2\pi` times the sum of the
    two column blocks of the gradient with respect to :math:`K`.
    """

    config_schema = {"in_features": "int", "num_features": "int", "scale": "float", "trainable": "bool"}
    torch_twin = "FourierFeatures"

    def __init__(
        self,
        in_features: int,
        num_features: int,
        scale: float = 1.0,
        trainable: bool = False,
        *,
        dtype=np.float64,
        seed=None,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.num_features = check_int("num_features", num_features)
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
            raise TypeError(f"scale must be a positive finite number, got {scale!r}")
        self.scale = float(scale)
        if not isinstance(trainable, (bool, np.bool_)):
            raise TypeError(f"trainable must be True or False, got {trainable!r}")
        self.trainable = bool(trainable)
        self.out_features = 2 * self.num_features
        B = rules.fourier_features_matrix(self.in_features, self.num_features, self.scale, seed)
        self._register("B", B.astype(dtype), (self.in_features, self.num_features), trainable=self.trainable)

    def config(self) -> dict:
        return {
            "in_features": self.in_features,
            "num_features": self.num_features,
            "scale": self.scale,
            "trainable": self.trainable,
        }

    @classmethod
    def parameter_shapes(cls, config: dict) -> dict:
        return {"B": (config["in_features"], config["num_features"])}

    def __repr__(self) -> str:
        return (
            f"FourierFeatures({self.in_features}, {self.num_features}, scale={self.scale}, "
            f"trainable={self.trainable})"
        )

    # -- input derivatives ----------------------------------------------------------
    def evaluate(self, u, params, order, ops):
        y, s1, s2, K = rules.fourier_features_eval(u, params["B"], order, xp=ops.xp)
        return y, PointwiseLinearCache(s1, s2, K)

    # -- derivatives with respect to B (hessquik_core.curvature) ------------------------
    def _fold(self, g, ops):
        """:math:`2\\pi(g_{:, :F} + g_{:, F:})`: a gradient with respect to ``K`` → ``B``."""
        F = self.num_features
        return _TWO_PI * (g[..., :F] + g[..., F:])

    def _RK(self, V, ops):
        """Directions of ``K = 2π[B, B]`` from those of ``B`` ``(k, d, F)``."""
        VB = V["B"]
        return _TWO_PI * ops.xp.concat([VB, VB], axis=-1)

    def param_vjp(self, cache, params, u, dl, per_example, ops):
        r""":math:`\delta = \phi' \odot dl`, :math:`\partial C/\partial u = \delta K^\top`,
        :math:`\partial C/\partial B = \sum_n u_n \otimes 2\pi(\delta_{n,:F} + \delta_{n,F:})`
        (no gradient for a frozen ``B``)."""
        if not self.trainable:
            return self._frozen_vjp(cache, ops)(dl)
        delta, dlu = affine.param_vjp(cache.dsigma, cache.K, dl, ops)
        return dlu, {"B": weight_gradient(u, self._fold(delta, ops), per_example, ops)}

    def param_rop_forward(self, cache, params, u, Ru, V, ops):
        """Forward R-pass: the affine rule's with ``RM = 2π[V_B, V_B]``, no bias."""
        if not self.trainable:
            return self._frozen_rop_forward(cache, Ru, ops)
        return affine.param_rop_forward(cache.dsigma, cache.K, self._RK(V, ops), u, Ru, None, ops)

    def param_rop_backward(
        self, cache, rcache, params, u, Ru, V, dl, Rdl, ops, need_dlu=True, need_Rdlu=True
    ):
        """Backward R-pass: the affine rule's, the ``K`` block folded to ``B``."""
        if not self.trainable:
            return self._frozen_rop_backward(cache, rcache, dl, Rdl, ops, need_dlu, need_Rdlu)
        r = affine.param_rop_backward(
            cache.dsigma,
            cache.d2sigma,
            cache.K,
            self._RK(V, ops),
            u,
            Ru,
            rcache,
            dl,
            Rdl,
            ops,
            bias=False,
            need_dlu=need_dlu,
            need_Rdlu=need_Rdlu,
        )
        return r.dl_u, r.Rdl_u, {"B": self._fold(r.RgM, ops)}

    # -- streams: per-point parameter Jacobians (hessquik_core.pinn) ----------------
    def _stream_derivatives(self, z, ops) -> tuple:
        """``(φ, φ', φ'', φ''')`` per column: sin on the first ``F``, cos on the last
        (for both, φ'' = −φ and φ''' = −φ')."""
        xp, F = ops.xp, self.num_features
        a, b = z[..., :F], z[..., F:]
        s0 = xp.concat([xp.sin(a), xp.cos(b)], axis=-1)
        s1 = xp.concat([xp.cos(a), -xp.sin(b)], axis=-1)
        return s0, s1, -s0, -s1

    def _stream_fold(self, W, ops) -> dict:
        return {"B": self._fold(W, ops)}

    def _stream_RK(self, V, Y, ops):
        return self._RK(V, ops)

    # -- torch twin -----------------------------------------------------------------
    @classmethod
    def torch_twin_class(cls):
        """The twin module class (:meth:`from_torch` recognises it)."""
        return _torch_twins()["FourierFeatures"]

    def to_torch(self, kit) -> list:
        """The twin module (this file), ``B`` copied."""
        mod = self.torch_twin_class()(
            self.in_features,
            self.num_features,
            self.scale,
            self.trainable,
            dtype=kit.dtype or kit.tensor(self.B).dtype,
            device=kit.device,
        )
        kit.assign(mod.B, kit.tensor(self.B))
        return [mod]

    @classmethod
    def from_torch(cls, module, kit):
        layer = cls(module.in_features, module.num_features, module.scale, module.trainable)
        return layer, {"B": kit.numpy(module.B)}


@register_layer
class PeriodicEmbedding(_PointwiseLinear):
    r"""Exact periodic embedding of selected coordinates.

    :math:`f(u) = [\cos(\omega_S \odot u_S), \sin(\omega_S \odot u_S), u_R]`,
    :math:`\omega_i = 2\pi / P_i`: the coordinates :math:`S` (``axes``) are
    embedded, the others (:math:`R`) passed through in their order. Every
    output is exactly :math:`P_i`-periodic in :math:`u_i`, which imposes
    periodic boundary conditions on any network that follows.

    Parameters
    ----------
    in_features : int
        :math:`d`.
    periods : sequence of float
        :math:`P_i > 0`, one per embedded coordinate.
    axes : sequence of int, optional
        The embedded coordinates (default: the first ``len(periods)``).
    trainable : bool, default False
        Whether the frequencies :math:`\omega_i` are trained: then the layer
        has the parameter ``omega`` ``(|S|,)``, initialised to
        :math:`2\pi/P_i` (``periods`` keeps the initial periods; the
        current ones are :math:`2\pi/\omega_i`). Otherwise it has no
        parameters.
    dtype : NumPy dtype, default float64
        Of ``omega`` (when trainable).
    seed : optional
        Accepted for the common layer signature; unused (the initialisation is deterministic).

    Notes
    -----
    :math:`K` has columns :math:`\omega_i e_i` (twice) and :math:`e_j`; the
    per-column functions are :math:`\cos`, :math:`\sin` and the identity, so
    the derivatives are the affine rule's with per-column
    :math:`\phi', \phi''`. The output has :math:`d + |S|` features. With
    trainable frequencies :math:`K = [S\,\mathrm{diag}(\omega), S\,\mathrm{diag}(\omega), R]`
    (:math:`S`, :math:`R` the 0/1 selections of the embedded and passed
    coordinates), so :math:`\partial C/\partial\omega_i` is the sum of the
    affine rule's :math:`\partial C/\partial K` at the two entries
    :math:`(a_i, i)` and :math:`(a_i, |S| + i)`.
    """

    config_schema = {"in_features": "int", "periods": "floats", "axes": "ints?", "trainable": "bool"}
    torch_twin = "PeriodicEmbedding"

    def __init__(
        self, in_features: int, periods, axes=None, trainable: bool = False, *, dtype=np.float64, seed=None
    ) -> None:
        # seed: accepted for the common constructor signature (deterministic initialisation)
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        if not isinstance(trainable, (bool, np.bool_)):
            raise TypeError(f"trainable must be True or False, got {trainable!r}")
        self.trainable = bool(trainable)
        if isinstance(periods, (int, float)) and not isinstance(periods, bool):
            periods = [periods]
        K = rules.periodic_embedding_matrix(self.in_features, periods, axes)  # validates
        self.periods = tuple(float(p) for p in periods)
        self.axes = None if axes is None else tuple(int(a) for a in axes)
        self._K = K
        s = len(self.periods)
        self._S = (K[:, :s] != 0).astype(np.float64)  # (d, s): e_{a_i} in column i
        self.out_features = int(K.shape[1])
        if self.trainable:
            omega = np.array([_TWO_PI / p for p in self.periods], dtype=dtype)
            self._register("omega", omega, (s,))

    def config(self) -> dict:
        return {
            "in_features": self.in_features,
            "periods": list(self.periods),
            "axes": None if self.axes is None else list(self.axes),
            "trainable": self.trainable,
        }

    @classmethod
    def parameter_shapes(cls, config: dict) -> dict:
        if not config.get("trainable", False):
            return {}
        periods = config["periods"]
        return {"omega": (1 if isinstance(periods, (int, float)) else len(periods),)}

    @property
    def cost_shapes(self) -> tuple[tuple[int, int], ...]:
        return ((self.in_features, self.out_features),)

    def __repr__(self) -> str:
        tr = ", trainable=True" if self.trainable else ""
        return f"PeriodicEmbedding({self.in_features}, periods={self.periods}, axes={self.axes}{tr})"

    def _sel(self, like, ops):
        """:math:`S` ``(d, |S|)`` in ``like``'s namespace, dtype and device."""
        from array_api_compat import device

        return ops.xp.asarray(self._S, dtype=like.dtype, device=device(like))

    def evaluate(self, u, params, order, ops):
        xp = ops.xp
        from array_api_compat import device

        if self.trainable:  # K = [S diag(ω), S diag(ω), R]
            s = len(self.periods)
            R = xp.asarray(self._K[:, 2 * s :], dtype=u.dtype, device=device(u))
            Ks = self._sel(u, ops) * params["omega"]
            K = xp.concat([Ks, Ks, R], axis=1)
        else:
            K = xp.asarray(self._K, dtype=u.dtype, device=device(u))
        y, s1, s2, _ = rules.periodic_embedding_eval(u, K, len(self.periods), order, xp=xp)
        return y, PointwiseLinearCache(s1, s2, K)

    # -- derivatives with respect to ω (hessquik_core.curvature) -----------------------
    def _fold(self, g, S, ops):
        """``g : (..., d, q)`` (a gradient with respect to ``K``) -> ``(..., |S|)``:
        entries ``(a_i, i) + (a_i, |S| + i)``."""
        s = len(self.periods)
        return ops.xp.sum(S * (g[..., :s] + g[..., s : 2 * s]), axis=-2)

    def _RK(self, V, S, ops):
        """Directions of ``K`` ``(k, d, q)`` from those of ``ω`` ``(k, |S|)``."""
        xp = ops.xp
        k, d = V["omega"].shape[0], self.in_features
        RKs = S[None, :, :] * V["omega"][:, None, :]  # (k, d, s)
        zero = xp.zeros((k, d, d - len(self.periods)), dtype=RKs.dtype, device=_device(RKs))
        return xp.concat([RKs, RKs, zero], axis=-1)

    def param_vjp(self, cache, params, u, dl, per_example, ops):
        r""":math:`\delta = \phi'\odot dl`, :math:`\partial C/\partial u = \delta K^\top`,
        :math:`\partial C/\partial\omega_i = \sum_n u_{n,a_i}(\delta_{n,i} + \delta_{n,|S|+i})`."""
        if not self.trainable:
            return self._frozen_vjp(cache, ops)(dl)
        delta, dlu = affine.param_vjp(cache.dsigma, cache.K, dl, ops)
        s = len(self.periods)
        g = ops.mm(u, self._sel(u, ops)) * (delta[:, :s] + delta[:, s : 2 * s])  # (n, s)
        return dlu, {"omega": g if per_example else ops.xp.sum(g, axis=0)}

    def param_rop_forward(self, cache, params, u, Ru, V, ops):
        """Forward R-pass: the affine rule's with ``RM`` the directions of ``K(ω)``."""
        if not self.trainable:
            return self._frozen_rop_forward(cache, Ru, ops)
        RK = self._RK(V, self._sel(u, ops), ops)
        return affine.param_rop_forward(cache.dsigma, cache.K, RK, u, Ru, None, ops)

    def param_rop_backward(
        self, cache, rcache, params, u, Ru, V, dl, Rdl, ops, need_dlu=True, need_Rdlu=True
    ):
        r"""Backward R-pass: the affine rule's, :math:`R(\partial C/\partial K)` folded to ``ω``."""
        if not self.trainable:
            return self._frozen_rop_backward(cache, rcache, dl, Rdl, ops, need_dlu, need_Rdlu)
        S = self._sel(u, ops)
        r = affine.param_rop_backward(
            cache.dsigma,
            cache.d2sigma,
            cache.K,
            self._RK(V, S, ops),
            u,
            Ru,
            rcache,
            dl,
            Rdl,
            ops,
            bias=False,
            need_dlu=need_dlu,
            need_Rdlu=need_Rdlu,
        )
        return r.dl_u, r.Rdl_u, {"omega": self._fold(r.RgM, S, ops)}

    # -- streams: per-point parameter Jacobians (hessquik_core.pinn) ----------------
    def _stream_derivatives(self, z, ops) -> tuple:
        """``(φ, φ', φ'', φ''')`` per column: cos, sin on the embedded blocks, the identity on the rest."""
        xp, s = ops.xp, len(self.periods)
        c, si, r = z[..., :s], z[..., s : 2 * s], z[..., 2 * s :]
        zero, one = xp.zeros_like(r), xp.ones_like(r)
        s0 = xp.concat([xp.cos(c), xp.sin(si), r], axis=-1)
        s1 = xp.concat([-xp.sin(c), xp.cos(si), one], axis=-1)
        s2 = xp.concat([-xp.cos(c), -xp.sin(si), zero], axis=-1)
        s3 = xp.concat([xp.sin(c), -xp.cos(si), zero], axis=-1)
        return s0, s1, s2, s3

    def _stream_fold(self, W, ops) -> dict:
        return {"omega": self._fold(W, self._sel(W, ops), ops)}

    def _stream_RK(self, V, Y, ops):
        return self._RK(V, self._sel(Y, ops), ops)

    # -- torch twin -----------------------------------------------------------------
    @classmethod
    def torch_twin_class(cls):
        """The twin module class (:meth:`from_torch` recognises it)."""
        return _torch_twins()["PeriodicEmbedding"]

    def to_torch(self, kit) -> list:
        """The twin module (this file), ``K`` as a buffer."""
        dtype = kit.dtype or (kit.tensor(self.omega).dtype if self.trainable else None)
        mod = self.torch_twin_class()(
            self.in_features, self.periods, self.axes, self.trainable, dtype=dtype, device=kit.device
        )
        if self.trainable:
            kit.assign(mod.omega, kit.tensor(self.omega))
        return [mod]

    @classmethod
    def from_torch(cls, module, kit):
        trainable = bool(getattr(module, "trainable", False))
        layer = cls(module.in_features, module.periods, module.axes, trainable)
        return layer, ({"omega": kit.numpy(module.omega)} if trainable else {})


def _device(a):
    from array_api_compat import device

    return device(a)


__all__ = ["FourierFeatures", "PeriodicEmbedding", "PointwiseLinearCache"]
