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

    Orders 3 and 4. Exact form: :math:`\varphi'' = (z^2 - 1)\varphi`, so

    .. math::
        \sigma''' = z\varphi\,(z^2 - 4),\qquad \sigma'''' = -\varphi\,(z^4 - 7z^2 + 4),

    formed from :math:`z\varphi, z^2\varphi, \dots` (each a product with the
    already decayed :math:`\varphi`: no :math:`z^4` alone, no :math:`\infty\cdot 0`).
    Tanh form: with :math:`S(z) = s(g)`, :math:`g = 2u`, :math:`q = s\bar s`,
    :math:`h = \bar s - s`, Faà di Bruno gives

    .. math::
        S' &= q g',\qquad S'' = q\,(h g'^2 + g''),\qquad
        S''' = q\,\bigl((h^2 - 2q) g'^3 + 3h g' g'' + g'''\bigr),\\
        S'''' &= q\,\bigl(h(h^2 - 8q) g'^4 + 6(h^2 - 2q) g'^2 g'' + h(3g''^2 + 4 g' g''')\bigr),

    (:math:`g''' = 12\sqrt{2/\pi}\,c`, :math:`g'''' = 0`) and
    :math:`\sigma^{(k)} = z S^{(k)} + k S^{(k-1)}`. :math:`q` underflows to an
    exact 0 long before :math:`|z| = 10^3`, the clamp, below which
    :math:`|z| g'^4 < 10^{25}` stays finite in float32.
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

    max_order = 4

    def _eval_high(self, z, order, xp, value):
        low = self._eval(z, 2, xp)
        if self.approximate == "tanh":
            return (*low, *self._high_tanh(z, order, xp))
        pdf = _RSQRT2PI * xp.exp(-0.5 * (z * z))
        zp = z * pdf
        z2p = zp * z
        z3p = z2p * z
        d3 = z3p - 4.0 * zp
        if order == 3:
            return (*low, d3)
        return (*low, d3, 7.0 * z2p - z3p * z - 4.0 * pdf)

    def _high_tanh(self, z, order, xp):
        """``(σ‴,)`` or ``(σ‴, σ⁗)`` of the tanh form (see the class docstring)."""
        zc = xp.where(xp.abs(z) > 1e3, 1e3 * xp.sign(z), z)
        z2 = zc * zc
        g = (2.0 * _SQRT2_PI) * (zc + _GELU_C * (z2 * zc))
        s, sc = _sigmoid_parts(g, xp)
        q = s * sc
        h = sc - s
        h2 = h * h
        g1 = (2.0 * _SQRT2_PI) * (1.0 + 3.0 * _GELU_C * z2)
        g2 = (12.0 * _SQRT2_PI * _GELU_C) * zc
        g3 = 12.0 * _SQRT2_PI * _GELU_C
        g1sq = g1 * g1
        b2 = h * g1sq + g2  # S'' / q
        b3 = (h2 - 2.0 * q) * (g1sq * g1) + 3.0 * h * (g1 * g2) + g3  # S''' / q
        d3 = q * (3.0 * b2 + zc * b3)
        if order == 3:
            return (d3,)
        b4 = (  # S'''' / q
            h * (h2 - 8.0 * q) * (g1sq * g1sq)
            + 6.0 * (h2 - 2.0 * q) * (g1sq * g2)
            + h * (3.0 * (g2 * g2) + 4.0 * (g1 * g3))
        )
        return d3, q * (4.0 * b3 + zc * b4)


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

    Orders 3 and 4: with :math:`p = 1 - t^2`, :math:`\bar s = 1 - s` and
    :math:`h = \bar s - s`, every derivative of :math:`t` is :math:`t^{(n)} = ps\,Q_n(t, s)`
    with :math:`Q_1 = 1`, :math:`Q_2 = \bar s - 2ts` and
    :math:`Q_{n+1} = Q_2 Q_n + ps\,\partial_t Q_n + s\bar s\,\partial_s Q_n`
    (from :math:`t' = ps`, :math:`s' = s\bar s`):

    .. math::
        Q_3 &= Q_2^2 - 2ps^2 - s\bar s\,(1 + 2t),\\
        Q_4 &= Q_2 Q_3 + ps\,(4ts^2 - 4sQ_2 - 2s\bar s)
              - s\bar s\,\bigl((1 + 2t)(2Q_2 + h) + 4ps\bigr),

    and :math:`\sigma^{(n)} = ps\,(zQ_n + nQ_{n-1})` for :math:`n \ge 2`. The
    :math:`Q_n` stay bounded and tend to non-zero limits in both tails
    (:math:`Q_n \to (-2)^{n-1}` as :math:`z \to \infty`, :math:`\to 1` as
    :math:`z \to -\infty`), so the decay is all in :math:`ps` (formed from
    :math:`1 - t` and :math:`s`, both exact) and no tail cancels.
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

    max_order = 4

    def _eval_high(self, z, order, xp, value):
        low = self._eval(z, 2, xp)
        e = xp.exp(-xp.abs(z))
        e2 = e * e
        pos = z >= 0
        one_m_t = xp.where(pos, 2.0 * e2 / (1.0 + 2.0 * e + 2.0 * e2), 2.0 / (e2 + 2.0 * e + 2.0))
        t = xp.where(pos, (1.0 + 2.0 * e) / (1.0 + 2.0 * e + 2.0 * e2), (e2 + 2.0 * e) / (e2 + 2.0 * e + 2.0))
        s, sc = _sigmoid_parts(z, xp)
        ps = one_m_t * (2.0 - one_m_t) * s  # (1 - t²) s
        ssc = s * sc
        q2 = sc - 2.0 * (t * s)
        q3 = q2 * q2 - 2.0 * (ps * s) - ssc * (1.0 + 2.0 * t)
        d3 = ps * (z * q3 + 3.0 * q2)
        if order == 3:
            return (*low, d3)
        q4 = (
            q2 * q3
            + ps * (4.0 * (t * s * s) - 4.0 * (s * q2) - 2.0 * ssc)
            - ssc * ((1.0 + 2.0 * t) * (2.0 * q2 + (sc - s)) + 4.0 * ps)
        )
        return (*low, d3, ps * (z * q4 + 4.0 * q3))


@register_activation
@dataclass(frozen=True)
class Gaussian(Activation):
    r"""Gaussian bump :math:`\sigma(z) = e^{-z^2}`.

    .. math::
        \sigma' = -2z\sigma,\qquad \sigma'' = (4z^2 - 2)\sigma = 4z(z\sigma) - 2\sigma

    (the last form keeps :math:`\infty \cdot 0` out for huge :math:`|z|`). Orders 3 and
    4 are :math:`(-1)^k H_k(z)\,\sigma` with the Hermite polynomials :math:`H_k`:

    .. math::
        \sigma''' = (12z - 8z^3)\,\sigma,\qquad \sigma'''' = (16z^4 - 48z^2 + 12)\,\sigma,

    formed from :math:`z\sigma, z^2\sigma, \dots` (each power times the decayed :math:`\sigma`).
    """

    name = "gaussian"
    torch_twin = "Gaussian"  # hessquik_core.activations.torch_modules.Gaussian

    def _eval(self, z, order, xp):
        s = xp.exp(-(z * z))
        if order == 0:
            return s, None, None
        zs = z * s
        return s, -2.0 * zs, (4.0 * (z * zs) - 2.0 * s) if order == 2 else None

    max_order = 4

    def _eval_high(self, z, order, xp, value):
        s, d1, d2 = self._eval(z, 2, xp)
        zs = z * s
        z2s = z * zs
        z3s = z * z2s
        d3 = 12.0 * zs - 8.0 * z3s
        if order == 3:
            return s, d1, d2, d3
        return s, d1, d2, d3, 16.0 * (z * z3s) - 48.0 * z2s + 12.0 * s


@register_activation
@dataclass(frozen=True)
class LogSigmoid(Activation):
    r""":math:`\sigma(z) = \log s(z) = -\operatorname{softplus}(-z)`, as ``torch.nn.LogSigmoid``.

    With :math:`s = \mathrm{sigmoid}(z)`, :math:`\bar s = 1 - s` (both from
    :math:`e^{-|z|}`), :math:`q = s\bar s` and :math:`h = \bar s - s`,

    .. math::
        \sigma = \min(z, 0) - \log(1 + e^{-|z|}),\quad \sigma' = \bar s,\quad
        \sigma'' = -q,\quad \sigma''' = -qh,\quad \sigma'''' = -q\,(h^2 - 2q)

    (:math:`\sigma' = s(-z)`, so the higher derivatives are minus the sigmoid's).
    Nothing overflows and :math:`\sigma' = \bar s` keeps full relative precision
    in the upper tail.
    """

    name = "logsigmoid"
    torch_twin = "LogSigmoid"
    max_order = 4

    def _eval(self, z, order, xp):
        return (*self._eval_high(z, order, xp, None), None, None)[:3]

    def _eval_high(self, z, order, xp, value):
        val = xp.minimum(z, xp.zeros_like(z)) - xp.log1p(xp.exp(-xp.abs(z)))
        if order == 0:
            return (val,)
        s, sc = _sigmoid_parts(z, xp)
        q = s * sc
        h = sc - s
        out = (val, sc, -q, -(q * h), -(q * (h * h - 2.0 * q)))
        return out[: order + 1]
