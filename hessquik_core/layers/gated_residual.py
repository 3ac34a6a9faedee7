r"""The gated residual block :math:`x \mapsto \alpha\,g(x) + (1 - \alpha)\,x`.

``GatedResidual(block)`` wraps any square block :math:`g` (a layer or an
``NN`` mapping :math:`\mathbb{R}^p \to \mathbb{R}^p`) with a trainable scalar
:math:`\alpha`, initialised at 0: the block starts as the identity, so a
network of such blocks starts shallow and grows deeper as training moves
:math:`\alpha` (the adaptive residual architectures of PINN code bases).

**Input derivatives.** The local Jacobian and Hessian are those of ``g``
(pushed forward through ``g``'s leaves with the identity seed, when a step
first needs them), combined as :math:`J = \alpha J_g + (1 - \alpha) I`,
:math:`T = \alpha T_g`; the engine applies the generic rule
(:mod:`hessquik_core.rules.jacobian`).

**Parameter derivatives** (:mod:`hessquik_core.curvature`). With
:math:`y = g(u; \theta_g)` and :math:`r = y - u`, the first-order adjoint
``dl`` of :math:`f` gives

.. math::
    \partial C/\partial\alpha = \textstyle\sum_n dl_n\cdot r_n, \qquad
    dl_y = \alpha\,dl, \qquad
    \partial C/\partial u = J_g\,dl_y + (1 - \alpha)\,dl,

with :math:`J_g dl_y` and :math:`\partial C/\partial\theta_g` from ``g``'s
own leaves (their ``param_vjp`` in reverse order). Pearlmutter's
R-operator along the directions :math:`(\Delta\alpha, \Delta\theta_g)`:
forward, :math:`Ry` from ``g``'s leaves' ``param_rop_forward`` and

.. math::
    Rf = \alpha\,Ry + \Delta\alpha\,r + (1 - \alpha)\,Ru;

backward, for the R-adjoint ``Rdl`` of :math:`f`,

.. math::
    R\,dl_y &= \alpha\,R dl + [\Delta\alpha\,dl], \\
    R\,\partial C/\partial\alpha &= \textstyle\sum_n R dl_n\cdot r_n + [dl_n\cdot(Ry_n - Ru_n)], \\
    R\,\partial C/\partial u &= R(J_g dl_y) + (1 - \alpha)\,R dl - [\Delta\alpha\,dl],

with :math:`R(J_g dl_y)` and :math:`R\,\partial C/\partial\theta_g` from
``g``'s leaves' ``param_rop_backward`` (fed the first-order adjoints
:math:`dl_y` on the way down). Bracketed terms carry ``dl``, the block's
own second derivatives; the Gauss–Newton product (``dl=None``) drops them
(also inside ``g``).

**File format.** The block is saved as a layer node with an empty config
and the node of ``g`` under ``"block"``; its tensors are ``alpha`` and
``block.<key of g>``.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np
from array_api_compat import device as _device

from ..carry import Request, Tangents
from ..rules import jacobian
from ..rules.jacobian import LocalDerivatives
from .base import Layer, register_layer


class _ResidualCache:
    """What the block keeps from its evaluation: ``u``, ``y = g(u)``, the input and
    cache of every leaf of ``g``, and the local derivatives once a step asked for them."""

    __slots__ = ("caches", "inputs", "local", "order", "u", "y")

    def __init__(self, u, y, inputs, caches, order) -> None:
        self.u, self.y, self.inputs, self.caches, self.order = u, y, inputs, caches, order
        self.local: LocalDerivatives | None = None


@register_layer
class GatedResidual(Layer):
    r"""Gated residual block :math:`x \mapsto \alpha\,g(x) + (1 - \alpha)\,x`.

    Parameters
    ----------
    block : Layer or NN
        :math:`g`, with ``in_features == out_features``.
    alpha : float, default 0.0
        Initial value of the trainable scalar :math:`\alpha` (parameter
        ``alpha`` of shape ``(1,)``). At 0 the block is the identity: a
        network of such blocks starts shallow and grows deeper as training
        moves :math:`\alpha`.
    dtype : NumPy dtype, default float64
        The dtype of ``alpha``.
    seed : ignored
        Accepted for the constructor signature shared by the layers (``alpha``
        has a fixed initial value).

    Notes
    -----
    :math:`J = \alpha J_g + (1 - \alpha) I` and
    :math:`\nabla^2 f = \alpha \nabla^2 g`; the block evaluates ``g``'s
    per-example Jacobian and Hessian (forward mode through ``g``'s leaves,
    :math:`O(p^3)` per example) and the engine applies the generic rule.
    :mod:`hessquik_core.curvature` gives gradients, per-example gradients and
    the Hessian, Gauss–Newton and empirical-Fisher products with respect to
    ``alpha`` and every parameter of ``g`` (the recurrences are in
    :mod:`hessquik_core.layers.gated_residual`). ``hq.save`` / ``hq.load``
    store the block with ``g`` nested (``state_dict`` keys ``alpha``,
    ``block.<key>``); the torch twin is ``GatedResidualBlock``.
    """

    config_schema: ClassVar[dict[str, str]] = {}
    #: constructor arguments that are networks, saved as nested nodes (hessquik_core.io)
    nested: ClassVar[tuple[str, ...]] = ("block",)
    torch_twin = "GatedResidualBlock"

    def __init__(self, block=None, alpha: float = 0.0, *, dtype=np.float64, seed=None) -> None:
        super().__init__()
        from ..networks import NN

        if not isinstance(block, (Layer, NN)):
            raise TypeError(
                f"GatedResidual needs a hessquik-core layer or NN as block, got {type(block).__name__}"
            )
        if block.in_features != block.out_features:
            raise ValueError(
                f"GatedResidual's block must map R^p to R^p, got in_features={block.in_features}, "
                f"out_features={block.out_features}"
            )
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
            raise ValueError(f"alpha must be a finite real number, got {alpha!r}")
        self._register("alpha", np.array([alpha], dtype=dtype), (1,))
        self._children["block"] = block

    @property
    def in_features(self) -> int:
        return self.block.in_features

    @property
    def out_features(self) -> int:
        return self.block.out_features

    @property
    def cost_shapes(self):
        p = self.in_features
        inner = tuple(s for leaf in self.block._leaves() for s in leaf.cost_shapes)
        # the local Jacobian/Hessian cost the inner chain with p tangents, then the generic rule
        return (*inner, (p, p))

    def config(self) -> dict:
        return {}  # alpha is a parameter; the block is a nested node (``nested``)

    @classmethod
    def parameter_shapes(cls, config: dict) -> dict:
        return {"alpha": (1,)}  # the block's own shapes come from its node

    def __repr__(self) -> str:
        return f"GatedResidual({self.block!r})"

    # -- the inner chain: params "i/<name>" belong to leaf i of the block --------------
    def _eval_params(self, key, be, xp, dtype, device) -> dict:
        out = dict(self._converted(key, be, xp, dtype, device))
        for i, leaf in enumerate(self.block._leaves()):
            for name, value in leaf._eval_params(key, be, xp, dtype, device).items():
                out[f"{i}/{name}"] = value
        return out

    def local_param_name(self, key: str) -> str:
        if key == "alpha":
            return key
        keys = [k for k, _ in self.block.named_parameters("block.")]
        names = [
            f"{i}/{leaf.local_param_name(k)}"
            for i, leaf in enumerate(self.block._leaves())
            for k, _ in leaf.named_parameters()
        ]
        return dict(zip(keys, names))[key]

    def _split(self, d: dict, leaves) -> list[dict]:
        """``{"i/name": v}`` -> one ``{name: v}`` per leaf of the block."""
        per: list[dict] = [{} for _ in leaves]
        for k, v in d.items():
            i, sep, name = k.partition("/")
            if sep:
                per[int(i)][name] = v
        return per

    def evaluate(self, u, params, order, ops):
        leaves = list(self.block._leaves())
        per = self._split(params, leaves)
        a = params["alpha"]
        y, inputs, caches = u, [], []
        for leaf, p in zip(leaves, per):
            inputs.append(y)
            y, c = leaf.evaluate(y, p, order, ops)
            caches.append(c)
        f = a * y + (1.0 - a) * u
        if order == 0:
            return f, None
        return f, _ResidualCache(u, y, inputs, caches, order)

    def _local(self, cache: _ResidualCache, params, ops) -> LocalDerivatives:
        r""":math:`J = \alpha J_g + (1 - \alpha) I`, :math:`T = \alpha T_g`, per example,
        made once per evaluation (the parameter passes never need them)."""
        if cache.local is not None:
            return cache.local
        xp, u = ops.xp, cache.u
        leaves = list(self.block._leaves())
        per = self._split(params, leaves)
        a = params["alpha"]
        n, dim = u.shape
        eye = xp.eye(dim, dtype=u.dtype, device=_device(u))
        t = Tangents(xp.reshape(eye, (1, dim, dim)))
        req = Request(hessian=cache.order >= 2)
        for leaf, p, c in zip(leaves, per, cache.caches):
            t = leaf.forward_step(c, p, t, req, ops)
        Jg = t.jacobian
        if Jg.shape[0] != n:
            Jg = xp.broadcast_to(Jg, (n, dim, dim))
        T = None
        if cache.order >= 2:
            if t.hessian is not None:
                T = a * t.hessian
            else:
                T = xp.zeros((n, dim, dim, dim), dtype=u.dtype, device=_device(u))
        cache.local = LocalDerivatives(a * Jg + (1.0 - a) * eye, T)
        return cache.local

    def forward_step(self, cache, params, tangents, request, ops):
        return jacobian.forward_step(self._local(cache, params, ops), tangents, request, ops)

    def backward_step(self, cache, params, adjoints, second, ops):
        return jacobian.backward_step(self._local(cache, params, ops), adjoints, second, ops)

    # -- derivatives with respect to alpha and g's parameters (see the module docstring) --
    def param_vjp(self, cache, params, u, dl, per_example, ops):
        r""":math:`\partial C/\partial\alpha = \sum_n dl_n\cdot(y_n - u_n)`; ``g``'s leaves
        get the adjoint :math:`\alpha\,dl`; :math:`\partial C/\partial u = J_g\alpha dl + (1 - \alpha)dl`."""
        xp = ops.xp
        leaves = list(self.block._leaves())
        per = self._split(params, leaves)
        a = params["alpha"]
        grads: dict[str, Any] = {}
        d = a * dl
        for i in range(len(leaves) - 1, -1, -1):
            d, g = leaves[i].param_vjp(cache.caches[i], per[i], cache.inputs[i], d, per_example, ops)
            grads.update({f"{i}/{k}": v for k, v in g.items()})
        ga = xp.sum(dl * (cache.y - u), axis=-1, keepdims=True)  # (n, 1)
        grads["alpha"] = ga if per_example else xp.sum(ga, axis=0)
        return d + (1.0 - a) * dl, grads

    def param_rop_forward(self, cache, params, u, Ru, V, ops):
        r""":math:`Rf = \alpha\,Ry + \Delta\alpha\,(y - u) + (1 - \alpha)\,Ru`; ``rcache``
        holds every leaf's R-input and R-cache and :math:`Ry`."""
        leaves = list(self.block._leaves())
        per, Vs = self._split(params, leaves), self._split(V, leaves)
        a, Va = params["alpha"], V["alpha"]  # Va : (k, 1)
        R, Rins, rcaches = Ru, [], []
        for leaf, p, c, ui, Vl in zip(leaves, per, cache.caches, cache.inputs, Vs):
            Rins.append(R)
            R, rc = leaf.param_rop_forward(c, p, ui, R, Vl, ops)
            rcaches.append(rc)
        Rf = Va[None, :, :] * (cache.y - u)[:, None, :]
        if R is not None:
            Rf = Rf + a * R
        if Ru is not None:
            Rf = Rf + (1.0 - a) * Ru
        return Rf, (Rins, rcaches, R)

    def param_rop_backward(
        self, cache, rcache, params, u, Ru, V, dl, Rdl, ops, need_dlu=True, need_Rdlu=True
    ):
        r"""Backward R-pass (see the module docstring); ``dl=None`` drops the block's own
        curvature terms and those of ``g``."""
        xp = ops.xp
        leaves = list(self.block._leaves())
        per, Vs = self._split(params, leaves), self._split(V, leaves)
        a, Va = params["alpha"], V["alpha"]
        Rins, rcaches, Ry = rcache
        k = Rdl.shape[1]
        Rga = xp.sum(Rdl * (cache.y - u)[:, None, :], axis=(0, 2))  # (k,)
        d, Rd = None, a * Rdl
        if dl is not None:
            if Ry is not None:
                Rga = Rga + xp.sum(dl[:, None, :] * Ry, axis=(0, 2))
            if Ru is not None:
                Rga = Rga - xp.sum(dl[:, None, :] * Ru, axis=(0, 2))
            d = a * dl
            Rd = Rd + Va[None, :, :] * dl[:, None, :]
        out = {"alpha": xp.reshape(Rga, (k, 1))}
        for i in range(len(leaves) - 1, -1, -1):
            # inner adjoints are needed below the first leaf; there only if the caller asks
            d, Rd, g = leaves[i].param_rop_backward(
                cache.caches[i],
                rcaches[i],
                per[i],
                cache.inputs[i],
                Rins[i],
                Vs[i],
                d,
                Rd,
                ops,
                need_dlu=dl is not None and (i > 0 or need_dlu),
                need_Rdlu=i > 0 or need_Rdlu,
            )
            out.update({f"{i}/{name}": v for name, v in g.items()})
        dlu = d + (1.0 - a) * dl if need_dlu and dl is not None else None
        Rdlu = None
        if need_Rdlu:
            Rdlu = (1.0 - a) * Rdl if Rd is None else Rd + (1.0 - a) * Rdl
            if dl is not None:
                Rdlu = Rdlu - Va[None, :, :] * dl[:, None, :]
        return dlu, Rdlu, out

    # -- streams: per-point parameter Jacobians (hessquik_core.pinn) ----------------
    # Y' = α Y_g + (1 − α) Y with Y_g the streams through g's leaves: the leaves see
    # the adjoint α Ȳ', the identity path adds (1 − α) Ȳ', and ∂α = Σ_s (Y_g − Y)_s · Ȳ'_s.
    def stream_activations(self) -> tuple:
        acts: list = []
        for leaf in self.block._leaves():
            if type(leaf).stream_forward is Layer.stream_forward:
                raise leaf._streams_unsupported()
            acts.extend(leaf.stream_activations())
        return tuple(acts)

    def stream_forward(self, Y, params, spec, ops):
        r"""Streams :math:`\alpha Y_g + (1 - \alpha) Y` (``Y_g`` through ``g``'s leaves)."""
        leaves = list(self.block._leaves())
        a = params["alpha"]
        Yg, caches = Y, []
        for leaf, p in zip(leaves, self._split(params, leaves)):
            Yg, c = leaf.stream_forward(Yg, p, spec, ops)
            caches.append(c)
        return a * Yg + (1.0 - a) * Y, (Y, Yg, caches)

    def stream_vjp(self, cache, params, Ybar, mode, need_input, ops):
        r"""Per point :math:`\partial_\alpha = \sum_s (Y_g - Y)_s \cdot \bar Y'_s`; ``g``'s
        leaves get :math:`\alpha\bar Y'`; input :math:`\bar Y_g + (1 - \alpha)\bar Y'`."""
        xp = ops.xp
        if mode == "kfac":
            raise ValueError(
                "GatedResidual has no Kronecker-factored curvature (alpha is not an affine block)"
            )
        Y, Yg, caches = cache
        leaves = list(self.block._leaves())
        per = self._split(params, leaves)
        a = params["alpha"]
        r = Ybar.shape[1]
        ga = xp.sum((Yg - Y)[:r, ...] * Ybar, axis=(1, 3))  # (c, N)
        out: dict[str, Any] = {
            "alpha": xp.matrix_transpose(ga)[..., None] if mode == "point" else xp.reshape(xp.sum(ga), (1,))
        }
        d = a * Ybar
        for i in range(len(leaves) - 1, -1, -1):
            d, g = leaves[i].stream_vjp(caches[i], per[i], d, mode, True, ops)
            out.update({f"{i}/{k}": v for k, v in g.items()})
        return (d + (1.0 - a) * Ybar if need_input else None), out

    def stream_rop(self, cache, params, RY, V, ops):
        r""":math:`RY' = \alpha\,RY_g + V_\alpha (Y_g - Y) + (1 - \alpha) RY`."""
        Y, Yg, caches = cache
        leaves = list(self.block._leaves())
        per, Vs = self._split(params, leaves), self._split(V, leaves)
        a = params["alpha"]
        R = RY
        for leaf, p, c, Vl in zip(leaves, per, caches, Vs):
            R = leaf.stream_rop(c, p, R, Vl, ops)
        out = V["alpha"] * (Yg - Y)
        if R is not None:
            out = out + a * R
        return out if RY is None else out + (1.0 - a) * RY

    # -- torch twin -----------------------------------------------------------------
    @classmethod
    def torch_twin_class(cls):
        """The twin module class (:meth:`from_torch` recognises it)."""
        return _torch_twin()

    def to_torch(self, kit) -> list:
        from ..interop import to_torch

        inner = to_torch(self.block, dtype=kit.dtype, device=kit.device)
        blk = self.torch_twin_class()(inner, dtype=kit.dtype_of(self), device=kit.device)
        kit.assign(blk.alpha, kit.tensor(self.alpha))
        return [blk]

    @classmethod
    def from_torch(cls, module, kit):
        from ..interop import from_torch

        inner = from_torch(module.block, dtype=kit.dtype)
        state = {f"block.{k}": np.array(v) for k, v in inner.state_dict().items()}
        return cls(inner), {"alpha": kit.numpy(module.alpha), **state}


@functools.cache
def _torch_twin() -> type:
    """The torch twin, made on first use (hessquik-core never imports torch eagerly)."""
    import torch
    from torch import nn

    class GatedResidualBlock(nn.Module):
        r"""The torch twin of :class:`GatedResidual`: ``alpha * block(x) + (1 - alpha) * x``."""

        def __init__(self, block, dtype=None, device=None):
            super().__init__()
            self.block = block
            self.alpha = nn.Parameter(torch.zeros(1, dtype=dtype, device=device))

        def forward(self, x):
            """:math:`\\alpha g(x) + (1 - \\alpha) x`."""
            return self.alpha * self.block(x) + (1 - self.alpha) * x

    GatedResidualBlock.__module__ = __name__
    return GatedResidualBlock


def __getattr__(name: str) -> Any:
    if name == "GatedResidualBlock":
        return _torch_twin()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GatedResidual"]
