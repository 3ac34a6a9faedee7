r"""Tanh, the sigmoid, softplus, SiLU, sin, the identity, the quadratic, antiTanh and ReLU:
σ and its derivatives with overflow-safe formulas (exponentials of :math:`-|z|` only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._base import Activation, _sigmoid_parts, register_activation


@register_activation
@dataclass(frozen=True)
class AntiTanh(Activation):
    r"""Antiderivative of tanh, as defined by hessQuik.

    .. math::
        \sigma(z) = |z| + \log(1 + e^{-2|z|}) = \log(2\cosh z),\quad
        \sigma'(z) = \tanh z,\quad \sigma''(z) = 1 - \tanh^2 z.
    """

    name = "antitanh"
    torch_twin = "AntiTanh"
    hessquik_name = "antiTanhActivation"

    def _eval(self, z, order, xp):
        a = xp.abs(z)
        s = a + xp.log1p(xp.exp(-2.0 * a))
        if order == 0:
            return s, None, None
        t = xp.tanh(z)
        return s, t, (1.0 - t * t) if order == 2 else None

    max_order = 4

    def _eval_high(self, z, order, xp, value):
        # σ' = tanh: σ‴, σ⁗ are tanh's σ'', σ‴
        s = self._eval(z, 0, xp)[0] if value is None else value
        t = xp.tanh(z)
        t2 = t * t
        s2 = 1.0 - t2
        out = (s, t, s2, -2.0 * t * s2)
        return out if order == 3 else (*out, s2 * (6.0 * t2 - 2.0))


@register_activation
@dataclass(frozen=True)
class Identity(Activation):
    r""":math:`\sigma(z) = z,\ \sigma' = 1,\ \sigma'' = 0`."""

    name = "identity"
    torch_twin = "Identity"
    hessquik_name = "identityActivation"

    def to_torch(self, nn: Any = None, twins: Any = None) -> Any:
        """``None``: no module (a ``Linear`` alone; blocks place ``nn.Identity``)."""
        return None

    def vjp(self, z, value, dl, ops):
        """``σ′ = 1``: ``dl`` itself (``1 * dl`` is exact, so no multiply)."""
        return dl

    def _eval(self, z, order, xp):
        if order == 0:
            return z, None, None
        one = xp.ones_like(z)
        return z, one, xp.zeros_like(z) if order == 2 else None

    max_order = 4

    def _eval_high(self, z, order, xp, value):
        zero = xp.zeros_like(z)
        return (z, xp.ones_like(z), *([zero] * (order - 1)))


@register_activation
@dataclass(frozen=True)
class Quadratic(Activation):
    r""":math:`\sigma(z) = z^2/2,\ \sigma' = z,\ \sigma'' = 1`."""

    name = "quadratic"
    torch_twin = "Quadratic"
    hessquik_name = "quadraticActivation"

    def _eval(self, z, order, xp):
        s = 0.5 * z * z
        if order == 0:
            return s, None, None
        return s, z, xp.ones_like(z) if order == 2 else None

    max_order = 4

    def _eval_high(self, z, order, xp, value):
        s = 0.5 * z * z if value is None else value
        zero = xp.zeros_like(z)
        return (s, z, xp.ones_like(z), *([zero] * (order - 2)))


@register_activation
@dataclass(frozen=True)
class Sigmoid(Activation):
    r"""Logistic sigmoid.

    .. math::
        \sigma = \frac{1}{1+e^{-z}},\quad \sigma' = \sigma(1-\sigma),\quad
        \sigma'' = \sigma'(1 - 2\sigma) = -\sigma' \tanh(z/2).

    :math:`\sigma` and :math:`1-\sigma` are both formed from
    :math:`e^{-|z|}`, so :math:`\sigma'` keeps full relative precision in the
    tails instead of cancelling to zero.
    """

    name = "sigmoid"
    torch_twin = "Sigmoid"
    hessquik_name = "sigmoidActivation"

    def _eval(self, z, order, xp):
        s, sc = _sigmoid_parts(z, xp)
        if order == 0:
            return s, None, None
        ds = s * sc
        return s, ds, (ds * (sc - s)) if order == 2 else None

    max_order = 4

    def _eval_high(self, z, order, xp, value):
        # with h = 1 - 2σ (formed as (1 - σ) - σ, exact in the tails): σ'' = σ'h,
        # σ‴ = σ'(h² - 2σ'), σ⁗ = σ'h(h² - 8σ')
        s, sc = _sigmoid_parts(z, xp)
        ds = s * sc
        h = sc - s
        h2 = h * h
        out = (s if value is None else value, ds, ds * h, ds * (h2 - 2.0 * ds))
        return out if order == 3 else (*out, ds * h * (h2 - 8.0 * ds))


@register_activation
@dataclass(frozen=True)
class Softplus(Activation):
    r"""Softplus with PyTorch's ``beta`` and ``threshold``.

    .. math::
        \sigma(z) = \begin{cases}\tfrac{1}{\beta}\log(1 + e^{\beta z}) & \beta z \le \text{threshold}\\
        z & \beta z > \text{threshold}\end{cases}

    with the exact derivatives of that piecewise function. Below the threshold,
    with :math:`s = \mathrm{sigmoid}(\beta z)`, :math:`\bar s = 1 - s` (both
    from :math:`e^{-|\beta z|}`), :math:`q = s\bar s` and :math:`h = \bar s - s`,

    .. math::
        \sigma' = s,\quad \sigma'' = \beta q,\quad
        \sigma''' = \beta^2 q h,\quad
        \sigma'''' = \beta^3 q\,(h^2 - 2q)

    (the sigmoid's derivatives at :math:`\beta z` times :math:`\beta^{k-1}`; :math:`q`
    underflows to an exact 0 in the tails); above it :math:`1, 0, 0, 0`. The
    logarithm is evaluated as :math:`\max(\beta z, 0) + \log(1 + e^{-|\beta z|})`.
    """

    beta: float = 1.0
    threshold: float = 20.0
    name = "softplus"
    torch_twin = "Softplus"
    hessquik_name = "softplusActivation"

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"Softplus beta must be positive, got {self.beta!r}")

    def config(self) -> dict:
        return {"beta": float(self.beta), "threshold": float(self.threshold)}

    def _eval(self, z, order, xp):
        bz = self.beta * z
        lin = bz > self.threshold
        smooth = (xp.maximum(bz, xp.zeros_like(bz)) + xp.log1p(xp.exp(-xp.abs(bz)))) / self.beta
        s = xp.where(lin, z, smooth)
        if order == 0:
            return s, None, None
        sg, sgc = _sigmoid_parts(bz, xp)
        one = xp.ones_like(z)
        ds = xp.where(lin, one, sg)
        if order == 1:
            return s, ds, None
        return s, ds, xp.where(lin, xp.zeros_like(z), self.beta * sg * sgc)

    max_order = 4

    def _eval_high(self, z, order, xp, value):
        s, ds, d2s = self._eval(z, 2, xp)
        bz = self.beta * z
        sg, sgc = _sigmoid_parts(bz, xp)
        q = sg * sgc
        h = sgc - sg
        zero = xp.zeros_like(z)
        lin = bz > self.threshold
        d3s = xp.where(lin, zero, (self.beta * self.beta) * (q * h))
        if order == 3:
            return s, ds, d2s, d3s
        return s, ds, d2s, d3s, xp.where(lin, zero, self.beta**3 * (q * (h * h - 2.0 * q)))


@register_activation
@dataclass(frozen=True)
class Tanh(Activation):
    r""":math:`\sigma = \tanh z,\ \sigma' = 1 - \sigma^2,\ \sigma'' = -2\sigma\sigma'`."""

    name = "tanh"
    torch_twin = "Tanh"
    hessquik_name = "tanhActivation"

    max_order = 4

    def vjp(self, z, value, dl, ops):
        r""":math:`(1 - t^2)\,dl` from the value ``t = tanh z`` (``Backend.tanh_vjp``)."""
        return ops.tanh_vjp(value, dl)

    def _eval(self, z, order, xp):
        t = xp.tanh(z)
        if order == 0:
            return t, None, None
        dt = 1.0 - t * t
        return t, dt, (-2.0 * t * dt) if order == 2 else None

    def _eval_high(self, z, order, xp, value):
        # polynomials of t = tanh z: σ‴ = σ'(6t² - 2), σ⁗ = 8tσ'(2 - 3t²)
        t = xp.tanh(z) if value is None else value
        t2 = t * t
        s1 = 1.0 - t2
        out = (t, s1, -2.0 * t * s1, s1 * (6.0 * t2 - 2.0))
        return out if order == 3 else (*out, 8.0 * t * s1 * (2.0 - 3.0 * t2))


@register_activation
@dataclass(frozen=True)
class Sin(Activation):
    r""":math:`\sigma = \sin z,\ \sigma' = \cos z,\ \sigma'' = -\sin z`."""

    name = "sin"
    torch_twin = "Sin"

    max_order = 4

    def _eval(self, z, order, xp):
        s = xp.sin(z)
        if order == 0:
            return s, None, None
        return s, xp.cos(z), (-s) if order == 2 else None

    def _eval_high(self, z, order, xp, value):
        s = xp.sin(z) if value is None else value
        c = xp.cos(z)
        out = (s, c, -s, -c)
        return out if order == 3 else (*out, s)


@register_activation
@dataclass(frozen=True)
class SiLU(Activation):
    r"""Sigmoid-weighted linear unit :math:`\sigma(z) = z\,s(z)`, :math:`s` the sigmoid.

    .. math::
        \sigma' = s\,(1 + z(1-s)),\qquad \sigma'' = s(1-s)\,(2 + z(1 - 2s)).

    Higher orders by Leibniz, :math:`\sigma^{(k)} = z s^{(k)} + k s^{(k-1)}`, with the
    sigmoid's derivatives :math:`s' = q = s\bar s`, :math:`s'' = qh`,
    :math:`s''' = q(h^2 - 2q)`, :math:`s'''' = qh(h^2 - 8q)` (:math:`\bar s = 1 - s`,
    :math:`h = \bar s - s`, both from :math:`e^{-|z|}`):

    .. math::
        \sigma''' = q\,\bigl(3h + z(h^2 - 2q)\bigr),\qquad
        \sigma'''' = q\,\bigl(4(h^2 - 2q) + z h (h^2 - 8q)\bigr).

    :math:`q \le e^{-|z|}` carries the whole decay and underflows to an exact 0 in
    the tails, where the brackets are at most :math:`5|z|`: no overflow, no
    :math:`\infty \cdot 0`.
    """

    name = "silu"
    torch_twin = "SiLU"

    def _eval(self, z, order, xp):
        s, sc = _sigmoid_parts(z, xp)
        val = z * s
        if order == 0:
            return val, None, None
        ds = s * (1.0 + z * sc)
        return val, ds, (s * sc * (2.0 + z * (sc - s))) if order == 2 else None

    max_order = 4

    def _eval_high(self, z, order, xp, value):
        val, ds, d2s = self._eval(z, 2, xp)
        s, sc = _sigmoid_parts(z, xp)
        q = s * sc
        h = sc - s
        h2 = h * h
        out = (val, ds, d2s, q * (3.0 * h + z * (h2 - 2.0 * q)))
        return out if order == 3 else (*out, q * (4.0 * (h2 - 2.0 * q) + z * (h * (h2 - 8.0 * q))))


@register_activation
@dataclass(frozen=True)
class ReLU(Activation):
    r""":math:`\sigma = \max(z, 0)`, :math:`\sigma' = [z > 0]`, :math:`\sigma'' = 0`.

    Only created by ``from_torch(..., allow_relu=True)`` (also
    ``hessquik_core.interop.ReLU``; :func:`~hessquik_core.activations.get_activation` does not accept the
    name). The second derivative is zero wherever it exists, so Hessians and
    Laplacians of a ReLU network only contain the contributions of other
    (smooth) parts: derivative-based losses (PINNs, score matching, ...)
    silently lose their second-order terms.
    """

    name = "relu"
    torch_twin = "ReLU"
    by_name = False
    smooth = False

    def _eval(self, z, order, xp):
        zero = xp.zeros_like(z)
        s = xp.maximum(z, zero)
        if order == 0:
            return s, None, None
        ds = xp.where(z > 0, xp.ones_like(z), zero)
        return s, ds, zero if order == 2 else None

    max_order = 4

    def _eval_high(self, z, order, xp, value):
        # every derivative beyond the first is 0 wherever it exists
        return (*self._eval(z, 2, xp), *([xp.zeros_like(z)] * (order - 2)))
