r"""ELU, CELU, SELU and Softsign: activations smooth on each side of :math:`z = 0` with a
jump in some derivative there.

At exactly :math:`z = 0` each returns the **left-sided** value of every derivative (the
:math:`z \le 0` piece): ELU :math:`\sigma^{(k)}(0) = \alpha`, CELU :math:`\alpha^{1-k}`,
SELU :math:`\lambda\alpha`, Softsign :math:`\sigma''(0) = 2`, :math:`\sigma''''(0) = 24`
(its :math:`\sigma'` and :math:`\sigma'''` are continuous). torch's autograd of the
``torch.nn`` twins agrees on :math:`\sigma'` (torch takes the :math:`z \le 0` branch
there) but not beyond: its nested backward passes give :math:`\sigma''(0) = 0` for
``nn.ELU`` (the right-sided value) and :math:`\sigma''(0) = \sigma'''(0) = 0` for
``nn.Softsign`` (whose :math:`\sigma'''` is 6 on both sides), so at exactly 0 the two
libraries' second derivatives differ by design.

None of them is twice continuously differentiable, so their Hessians and Laplacians are
those of the pieces: exact away from the kink, with the stated value on it (a set of
measure zero for inputs in general position, but not for a grid through 0).
``from_torch`` converts their twins only with ``allow_kinks=True``; built directly
(``SingleLayer(5, 3, act="elu")``) they need no opt-in.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._base import Activation, register_activation

#: SELU's constants (Klambauer et al. 2017), as torch.nn.SELU
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _exp_branch(z, order, xp, scale: float, rate: float, pos_slope: float):
    r"""``(σ, …, σ⁽ᵒʳᵈᵉʳ⁾)`` of :math:`\sigma(z) = c\,z` (:math:`z > 0`),
    :math:`\sigma(z) = a\,(e^{rz} - 1)` (:math:`z \le 0`) with :math:`a =` ``scale``,
    :math:`r =` ``rate``, :math:`c =` ``pos_slope``:
    :math:`\sigma^{(k)} = a r^k e^{rz}` on the left, :math:`c, 0, 0, \dots` on the right.
    The exponential is taken of :math:`\min(rz, 0) \le 0` only (``expm1`` for σ itself,
    which keeps relative precision near 0)."""
    zero = xp.zeros_like(z)
    pos = z > 0
    rz = xp.minimum(rate * z, zero)
    s = xp.where(pos, pos_slope * z, scale * xp.expm1(rz))
    out = [s]
    if order >= 1:
        e = xp.exp(rz)
        c = xp.full_like(z, pos_slope)
        for k in range(1, order + 1):
            out.append(xp.where(pos, c if k == 1 else zero, (scale * rate**k) * e))
    return out


class _Kinked(Activation):
    """Shared by the activations of this module: refused by ``from_torch`` unless
    ``allow_kinks=True``, and four derivatives on each side."""

    smooth = False
    kinks = True
    max_order = 4

    def _eval(self, z, order, xp):
        out = self._series(z, order, xp)
        return (*out, *([None] * (2 - order)))

    def _eval_high(self, z, order, xp, value):
        return tuple(self._series(z, order, xp))

    def _series(self, z, order, xp) -> list:  # pragma: no cover - abstract
        raise NotImplementedError


@register_activation
@dataclass(frozen=True)
class ELU(_Kinked):
    r"""Exponential linear unit, as ``torch.nn.ELU(alpha)``.

    .. math::
        \sigma(z) = \begin{cases} z & z > 0\\ \alpha(e^z - 1) & z \le 0\end{cases},\qquad
        \sigma^{(k)}(z) = \begin{cases} 1, 0, 0, 0 & z > 0\\ \alpha e^z & z \le 0\end{cases}
        \ (k = 1, \dots, 4).

    :math:`C^1` for :math:`\alpha = 1` (σ″ jumps from 1 to 0 at 0), only continuous
    otherwise (σ′ jumps from :math:`\alpha` to 1). At :math:`z = 0` every derivative is
    the left-sided :math:`\alpha`.
    """

    alpha: float = 1.0
    name = "elu"
    torch_twin = "ELU"

    def __post_init__(self):
        if not self.alpha > 0:
            raise ValueError(f"ELU alpha must be positive, got {self.alpha!r}")

    def config(self) -> dict:
        return {"alpha": float(self.alpha)}

    def kink_note(self) -> str:
        a = float(self.alpha)
        if a == 1.0:
            return "C¹ with a jump in σ″ at 0 (from 1 to 0); at exactly 0 hessquik-core uses the left-sided σ″(0) = 1"
        return (
            f"not C¹: σ′ jumps at 0 (from alpha = {a:g} to 1) and σ″ (from {a:g} to 0); at exactly 0 "
            f"hessquik-core uses the left-sided values σ′(0) = σ″(0) = {a:g}"
        )

    def _series(self, z, order, xp):
        return _exp_branch(z, order, xp, float(self.alpha), 1.0, 1.0)


@register_activation
@dataclass(frozen=True)
class CELU(_Kinked):
    r"""Continuously differentiable ELU, as ``torch.nn.CELU(alpha)``.

    .. math::
        \sigma(z) = \begin{cases} z & z > 0\\ \alpha(e^{z/\alpha} - 1) & z \le 0\end{cases},\qquad
        \sigma^{(k)}(z) = \alpha^{1-k} e^{z/\alpha}\ (z \le 0).

    :math:`C^1` for every :math:`\alpha > 0`; σ″ jumps from :math:`1/\alpha` to 0 at 0.
    At :math:`z = 0` every derivative is the left-sided one (σ″(0) = 1/α).
    """

    alpha: float = 1.0
    name = "celu"
    torch_twin = "CELU"

    def __post_init__(self):
        if not self.alpha > 0:
            raise ValueError(f"CELU alpha must be positive, got {self.alpha!r}")

    def config(self) -> dict:
        return {"alpha": float(self.alpha)}

    def kink_note(self) -> str:
        return (
            f"C¹ with a jump in σ″ at 0 (from 1/alpha = {1.0 / self.alpha:g} to 0); at exactly 0 "
            f"hessquik-core uses the left-sided σ″(0) = {1.0 / self.alpha:g}"
        )

    def _series(self, z, order, xp):
        a = float(self.alpha)
        return _exp_branch(z, order, xp, a, 1.0 / a, 1.0)


@register_activation
@dataclass(frozen=True)
class SELU(_Kinked):
    r"""Scaled ELU, as ``torch.nn.SELU``: :math:`\lambda\,\mathrm{ELU}_\alpha(z)` with
    :math:`\alpha \approx 1.6733`, :math:`\lambda \approx 1.0507`.

    .. math::
        \sigma^{(k)}(z) = \begin{cases} \lambda, 0, 0, 0 & z > 0\\ \lambda\alpha e^z & z \le 0\end{cases}.

    Not :math:`C^1`: σ′ jumps from :math:`\lambda\alpha \approx 1.7581` to
    :math:`\lambda` at 0. At :math:`z = 0` every derivative is the left-sided
    :math:`\lambda\alpha`.
    """

    name = "selu"
    torch_twin = "SELU"

    def kink_note(self) -> str:
        la = _SELU_SCALE * _SELU_ALPHA
        return (
            f"not C¹: σ′ jumps at 0 (from {la:.6g} to {_SELU_SCALE:.6g}) and σ″ (from {la:.6g} to 0); "
            f"at exactly 0 hessquik-core uses the left-sided values σ′(0) = σ″(0) = {la:.6g}"
        )

    def _series(self, z, order, xp):
        return _exp_branch(z, order, xp, _SELU_SCALE * _SELU_ALPHA, 1.0, _SELU_SCALE)


@register_activation
@dataclass(frozen=True)
class Softsign(_Kinked):
    r"""Softsign, as ``torch.nn.Softsign``: :math:`\sigma(z) = z / (1 + |z|)`.

    With :math:`r = 1/(1 + |z|)` and :math:`\varsigma = \operatorname{sign} z`,

    .. math::
        \sigma' = r^2,\quad \sigma'' = -2\varsigma r^3,\quad
        \sigma''' = 6 r^4,\quad \sigma'''' = -24\varsigma r^5.

    :math:`C^1` (and σ‴ continuous); σ″ jumps from 2 to −2 and σ⁗ from 24 to −24 at 0,
    where the left-sided values 2 and 24 are returned (:math:`\varsigma(0) = -1`). Powers
    of :math:`r \le 1` cannot overflow; σ is formed as :math:`z / (1 + |z|)`.
    """

    name = "softsign"
    torch_twin = "Softsign"

    def kink_note(self) -> str:
        return (
            "C¹ with jumps in σ″ at 0 (from 2 to -2) and σ⁗ (from 24 to -24); at exactly 0 "
            "hessquik-core uses the left-sided values σ″(0) = 2, σ⁗(0) = 24"
        )

    def _series(self, z, order, xp):
        a = xp.abs(z)
        out = [z / (1.0 + a)]
        if order >= 1:
            r = 1.0 / (1.0 + a)
            r2 = r * r
            out.append(r2)
            if order >= 2:
                # the sign, with the left-sided -1 at 0
                sg = xp.where(z > 0, xp.ones_like(z), -xp.ones_like(z))
                r3 = r2 * r
                out.append(-2.0 * (sg * r3))
                if order >= 3:
                    out.append(6.0 * (r2 * r2))
                if order >= 4:
                    out.append(-24.0 * (sg * (r3 * r2)))
        return out


#: every class of this module (for the docs and tests)
KINKED = (ELU, CELU, SELU, Softsign)
