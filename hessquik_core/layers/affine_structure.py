r"""The declared affine structure of a layer: :math:`f(u) = [u +]\, h\,\sigma(uM + b)`.

A layer that computes

.. math::
    f(u) = \rho\, u + h\,\sigma(u M + b),\qquad
    M \in \mathbb{R}^{p\times q},\ b \in \mathbb{R}^{q},\ \rho \in \{0, 1\},

with a pointwise activation :math:`\sigma` says so through
:meth:`~hessquik_core.layers.Layer.affine_structure`, and the engine's
routes that are written for that form use it without knowing the class:

* the analytic training step (:mod:`hessquik_core.engine.routes.analytic_step`:
  every leaf declares the structure and every activation supplies σ‴,
  ``act.max_order >= 3``), residual layers included;
* the high-dimensional Laplacian and divergence sweeps
  (``hessquik_core.engine.highdim``: a plain first layer, ``h = 1`` and no
  identity path, and for the divergence a plain last layer).

``M`` and ``b`` are *functions of the layer's own parameters*, written with
the namespace's operations (SIREN: :math:`M = \omega_0 K`, :math:`b = \omega_0 b_0`;
Fourier features: :math:`M = 2\pi[B, B]`), so on an autodiff backend the
gradient with respect to ``M`` and ``b`` flows back to the parameters by
itself. Where a caller computes that gradient by hand,
:attr:`AffineStructure.pullback` maps it to the parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..activations import Activation

__all__ = ["AffineStructure", "SinCos"]


@dataclass(frozen=True)
class AffineStructure:
    r"""The form :math:`f(u) = [u +]\, h\,\sigma(uM + b)` of one layer.

    Attributes
    ----------
    act : Activation
        :math:`\sigma`, elementwise (the same function in every column).
    M : array (p, q) or None
        In the call's namespace, dtype and device; ``None`` when the structure
        was asked without parameters (``layer.affine_structure()``: the
        declaration of the form alone, as the planner asks it).
    b : array (q,) or None
        ``None``: no bias (or asked without parameters).
    scale : float
        :math:`h` (1 for a plain layer).
    residual : bool
        The identity path :math:`u +` (needs ``p == q``).
    pullback : callable or None
        ``pullback(gM, gb) -> {param name: gradient}``: the gradient with respect
        to the layer's own ``params`` names from the gradient with respect to
        ``M`` ``(..., p, q)`` and ``b`` ``(..., q)`` or ``None`` (leading axes,
        e.g. per example, are kept). ``None`` when asked without parameters.
    """

    act: Any
    M: Any = None
    b: Any = None
    scale: float = 1.0
    residual: bool = False
    pullback: Callable[[Any, Any], Mapping[str, Any]] | None = None

    @property
    def plain(self) -> bool:
        r""":math:`f(u) = \sigma(uM + b)` itself: ``h = 1`` and no identity path."""
        return self.scale == 1.0 and not self.residual

    @property
    def linear(self) -> bool:
        r""":math:`\sigma` is the identity."""
        return getattr(self.act, "name", None) == "identity"


@dataclass(frozen=True)
class SinCos(Activation):
    r"""The column-block activation of Fourier features:
    :math:`\sigma(z) = [\sin z_{:, :F},\ \cos z_{:, F:}]`, ``z : (..., 2F)``.

    Elementwise within each block, so the stacked sweep and the affine rule use it
    like any activation; :math:`\sigma^{(j)}` of each block is that block's own
    (:math:`\sin^{(j)} z = \sin(z + j\pi/2)`, formed exactly as ``±sin``/``±cos``).
    Not registered: it exists for :meth:`FourierFeatures.affine_structure
    <hessquik_core.layers.Layer.affine_structure>` and is never saved."""

    #: ``F``: the first ``F`` columns are sines, the rest cosines
    features: int

    name = "sin|cos"
    #: derivatives up to the fourth of each block (the analytic step needs the third)
    max_order = 4

    def _blocks(self, z, xp):
        F = self.features
        zs, zc = z[..., :F], z[..., F:]
        return xp.sin(zs), xp.cos(zs), xp.sin(zc), xp.cos(zc)

    def _eval(self, z, order, xp):
        out = self._derivs(z, order, xp)
        return out + (None,) * (2 - order)

    def _eval_high(self, z, order, xp, value):
        return self._derivs(z, order, xp)

    def _derivs(self, z, order, xp) -> tuple:
        """``(σ, …, σ⁽ᵒʳᵈᵉʳ⁾)``: sin, cos, -sin, -cos, sin on the first block and
        cos, -sin, -cos, sin, cos on the second."""
        ss, cs, sc, cc = self._blocks(z, xp)
        first = (ss, cs, -ss, -cs, ss)
        second = (cc, -sc, -cc, sc, cc)
        return tuple(xp.concat([first[j], second[j]], axis=-1) for j in range(order + 1))
