r"""GELU (exact and tanh-approximated), Mish and the Gaussian bump."""

from __future__ import annotations

from dataclasses import dataclass

from ._base import Activation, _backend_of, _sigmoid_parts, register_activation

#: 1/sqrt(2), 1/sqrt(2 pi), sqrt(2/pi)
_RSQRT2 = 0.7071067811865476
_RSQRT2PI = 0.3989422804014327
_SQRT2_PI = 0.7978845608028654
#: the cubic coefficient of the tanh approximation of GELU (Hendrycks & Gimpel)
_GELU_C = 0.044715


@register_activation
@dataclass(frozen=True)
class GELU(Activation):
    r"""Gaussian error linear unit, as ``torch.nn.GELU(approximate=...)``.

    ``approximate="none"`` (exact): with :math:`\Phi` the standard normal
    CDF and :math:`\varphi = \Phi'` its density,

    .. math::
        \sigma = z\,\Phi(z),\quad \sigma' = \Phi + z\varphi,\quad
        \sigma'' = \varphi\,(2 - z^2)

    (:math:`\varphi' = -z\varphi`). :math:`\Phi(z) = \tfrac12\operatorname{erfc}(-z/\sqrt2)`
    keeps full relative precision in the lower tail, where
    :math:`1 + \operatorname{erf}` would cancel; :math:`\varphi(2 - z^2)` is
    formed as :math:`2\varphi - (z\varphi)z`, so no :math:`\infty \cdot 0` arises.

    ``approximate="tanh"``: :math:`\sigma = \tfrac12 z(1 + \tanh u)`,
    :math:`u = \sqrt{2/\pi}(z + c z^3)`, :math:`c = 0.044715`. With
    :math:`s = \tfrac12(1 + \tanh u) = \mathrm{sigmoid}(2u)` and
    :math:`\bar s = 1 - s` (both from :math:`e^{-2|u|}`),
    :math:`\tfrac12(1 - \tanh^2 u) = 2 s \bar s`, and

    .. math::
        \sigma' = s + 2 z s\bar s\, u',\qquad
        \sigma'' = 2 s\bar s\,\bigl(2u' + z\,(u'' - 2(s - \bar s)\,u'^2)\bigr),

    :math:`u' = \sqrt{2/\pi}(1 + 3cz^2)`, :math:`u'' = 6\sqrt{2/\pi}\,c z`.
    For :math:`|z|` beyond a few tens :math:`s\bar s` underflows to an exact
    0; the cubic is evaluated at :math:`z` clamped to :math:`[-10^3, 10^3]`,
    which changes no result and keeps :math:`z^3` and :math:`u'^2` finite for
    every finite :math:`z`.
    """

    approximate: str = "none"
    name = "gelu"
    torch_twin = "GELU"

    def __post_init__(self):
        if self.approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {self.approximate!r}")

    def config(self) -> dict:
        return {"approximate": self.approximate}

    def _eval(self, z, order, xp):
        if self.approximate == "tanh":
            return self._eval_tanh(z, order, xp)
        cdf = 0.5 * _backend_of(xp).erfc(-_RSQRT2 * z, xp=xp)
        val = z * cdf
        if order == 0:
            return val, None, None
        pdf = _RSQRT2PI * xp.exp(-0.5 * (z * z))
        zpdf = z * pdf
        ds = cdf + zpdf
        return val, ds, (2.0 * pdf - zpdf * z) if order == 2 else None

    def _eval_tanh(self, z, order, xp):
        # beyond |z| = 1e3, s sc = e^{-2|u|}/(1+e^{-2|u|})² is an exact 0 in every
        # float type, so the cubic may be evaluated at the clamped zc (no z³ or
        # u'² overflow) without changing any result
        zc = xp.where(xp.abs(z) > 1e3, 1e3 * xp.sign(z), z)
        z2 = zc * zc
        u = _SQRT2_PI * (zc + _GELU_C * (z2 * zc))
        s, sc = _sigmoid_parts(2.0 * u, xp)
        val = z * s
        if order == 0:
            return val, None, None
        q = 2.0 * (s * sc)  # (1 - tanh² u) / 2
        du = _SQRT2_PI * (1.0 + 3.0 * _GELU_C * z2)
        ds = s + zc * (q * du)
        if order == 1:
            return val, ds, None
        d2u = (6.0 * _SQRT2_PI * _GELU_C) * zc
        return val, ds, q * (2.0 * du + zc * (d2u - 2.0 * (s - sc) * (du * du)))


@register_activation
@dataclass(frozen=True)
class Mish(Activation):
    r"""Mish, :math:`\sigma(z) = z \tanh(\operatorname{softplus} z)`, as ``torch.nn.Mish``.

    With :math:`t = \tanh(\operatorname{softplus} z)`, :math:`s = \mathrm{sigmoid}(z)`
    and :math:`t' = (1 - t^2)s`,

    .. math::
        \sigma' = t + z(1 - t^2)s,\qquad
        \sigma'' = (1 - t^2)\,s\,\bigl(2 + z(1 - s - 2ts)\bigr).

    :math:`t = w/(w + 2)` with :math:`w = e^z(e^z + 2)`, so
    :math:`1 - t = 2/(w + 2)`; in terms of :math:`e = e^{-|z|} \le 1` this is
    :math:`1 - t = 2e^2/(1 + 2e + 2e^2)` for :math:`z \ge 0` and
    :math:`2/(e^2 + 2e + 2)` for :math:`z < 0`. Both :math:`t` and
    :math:`1 - t^2 = (1 - t)(2 - (1 - t))` keep full relative precision in
    both tails, and nothing overflows.
    """

    name = "mish"
    torch_twin = "Mish"

    def _eval(self, z, order, xp):
        e = xp.exp(-xp.abs(z))
        e2 = e * e
        pos = z >= 0
        one_m_t = xp.where(pos, 2.0 * e2 / (1.0 + 2.0 * e + 2.0 * e2), 2.0 / (e2 + 2.0 * e + 2.0))
        t = xp.where(pos, (1.0 + 2.0 * e) / (1.0 + 2.0 * e + 2.0 * e2), (e2 + 2.0 * e) / (e2 + 2.0 * e + 2.0))
        val = z * t
        if order == 0:
            return val, None, None
        s, sc = _sigmoid_parts(z, xp)
        dt = one_m_t * (2.0 - one_m_t) * s  # (1 - t²) s
        zdt = z * dt  # 0 wherever dt underflows, so no inf * 0 below
        ds = t + zdt
        return val, ds, (2.0 * dt + zdt * (sc - 2.0 * t * s)) if order == 2 else None


@register_activation
@dataclass(frozen=True)
class Gaussian(Activation):
    r"""Gaussian bump :math:`\sigma(z) = e^{-z^2}`.

    .. math::
        \sigma' = -2z\sigma,\qquad \sigma'' = (4z^2 - 2)\sigma = 4z(z\sigma) - 2\sigma

    (the last form keeps :math:`\infty \cdot 0` out for huge :math:`|z|`).
    """

    name = "gaussian"

    def _eval(self, z, order, xp):
        s = xp.exp(-(z * z))
        if order == 0:
            return s, None, None
        zs = z * s
        return s, -2.0 * zs, (4.0 * (z * zs) - 2.0 * s) if order == 2 else None
