r"""Pointwise activation functions with their first two derivatives.

Every activation is a small immutable object whose call

.. code-block:: python

    sigma, dsigma, d2sigma = act(z, order=2, xp=xp)

returns :math:`\sigma(z)`, :math:`\sigma'(z)` and :math:`\sigma''(z)` (``None``
beyond ``order``), all of ``z``'s shape, dtype and device. The formulas are
chosen so that no intermediate overflows for :math:`|z|` up to
:math:`10^4` in float32 or float64: exponentials are only ever taken of
:math:`-|z|`.

A new activation is one class here: ``_eval`` (σ, σ′, σ″), its ``name``, its
``torch_twin`` and ``hessquik_name`` (the torch module and the hessQuik class
computing the same function), and ``@register_activation``. Everything else
(:func:`get_activation`, ``hq.save``/``hq.load``, ``to_torch``/``from_torch``,
``from_hessquik``, :mod:`hessquik_core.compat`) finds it in the registry
:data:`ACTIVATIONS`.

This module is over 400 lines because each activation's numerically careful
formulas and their derivation (which intermediate can overflow or cancel)
belong next to each other; the classes share nothing beyond the base class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from array_api_compat import array_namespace

__all__ = [
    "Activation",
    "AntiTanh",
    "Identity",
    "Quadratic",
    "SiLU",
    "Sigmoid",
    "Sin",
    "Softplus",
    "Tanh",
    "get_activation",
]


class Activation:
    """Base class: subclasses implement ``_eval``.

    A registered subclass (:func:`register_activation`) also states, as class
    attributes, its twins in other libraries; :mod:`hessquik_core.interop`,
    ``hessquik_core.interop_hessquik`` and ``hessquik_core.io`` read them
    and never list activation types themselves.
    """

    #: JSON-able name used by ``save``/``load`` and ``repr``.
    name: str = "activation"
    #: the torch module computing the same function: a class name in ``torch.nn``
    #: (``"Tanh"``) or in :mod:`hessquik_core.interop` (``"AntiTanh"``); ``None``: none
    torch_twin: ClassVar[str | None] = None
    #: the hessQuik 0.0.6 class computing the same function (``"tanhActivation"``)
    hessquik_name: ClassVar[str | None] = None
    #: whether :func:`~hessquik_core.activations.get_activation` accepts the name (False: the class is
    #: registered for files and conversions only, like the non-smooth ReLU)
    by_name: ClassVar[bool] = True
    #: whether its second derivative exists everywhere; ``from_torch`` refuses
    #: a non-smooth twin unless asked (``allow_relu=True``)
    smooth: ClassVar[bool] = True
    #: True on a class that only changes how the activation is *called*
    #: (:mod:`hessquik_core.compat`'s hessQuik-named classes): it saves and
    #: converts as its registered base class. Read from the class itself, not inherited.
    call_convention_only: ClassVar[bool] = False

    #: the highest derivative :meth:`derivatives` supplies (2: σ, σ′, σ″ only).
    #: A request that needs more (the analytic training step needs σ‴, fourth-order
    #: quantities σ⁗) is refused up front by name for an activation below it.
    max_order: ClassVar[int] = 2

    def __call__(self, z, order: int = 2, *, xp=None):
        """Return ``(sigma, dsigma, d2sigma)``; entries beyond ``order`` are ``None``."""
        if order not in (0, 1, 2):
            raise ValueError(f"order must be 0, 1 or 2, got {order!r}")
        if xp is None:
            xp = array_namespace(z)
        return self._eval(z, order, xp)

    def derivatives(self, z, order: int, *, xp=None, value=None) -> tuple:
        r"""``(σ, σ′, …, σ⁽ᵒʳᵈᵉʳ⁾)`` at ``z``: a tuple of ``order + 1`` arrays of ``z``'s
        shape, dtype and device, ``order`` from 0 to :attr:`max_order`.

        ``value`` is :math:`\sigma(z)` where the caller already has it (the
        derivatives of tanh and the sigmoid are polynomials of it); it is
        returned as the first entry unchanged.
        """
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise ValueError(f"order must be a non-negative integer, got {order!r}")
        if order > self.max_order:
            raise ValueError(
                f"activation {self!r} supplies derivatives up to order {self.max_order}, "
                f"order {order} was requested"
            )
        if xp is None:
            xp = array_namespace(z)
        if order <= 2:
            out = self._eval(z, order, xp)[: order + 1]
        else:
            out = self._eval_high(z, order, xp, value)
        return out if value is None else (value, *out[1:])

    def _eval(self, z, order, xp):  # pragma: no cover - abstract
        raise NotImplementedError

    def _eval_high(self, z, order, xp, value) -> tuple:
        """``(σ, …, σ⁽ᵒʳᵈᵉʳ⁾)`` for ``order`` 3 or 4 (up to :attr:`max_order`); ``value``
        is σ(z) or ``None``. Subclasses with ``max_order > 2`` implement it."""
        raise NotImplementedError  # pragma: no cover - guarded by max_order

    def config(self) -> dict:
        """Constructor arguments, for serialisation."""
        return {}

    # -- twins in other libraries (read by interop and interop_hessquik) --------
    @classmethod
    def from_twin(cls, module: Any) -> Activation:
        """The activation equal to a torch or hessQuik twin ``module``.

        The twin's attributes of the names of :meth:`config`'s keys (``beta``,
        ``threshold`` of a softplus, ``approximate`` of a GELU) are the
        constructor arguments, converted to the types of the defaults.
        """
        defaults = cls().config()
        return cls(**{k: type(v)(getattr(module, k)) for k, v in defaults.items()})

    def to_torch(self, nn: Any, twins: dict[str, type]) -> Any:
        """A torch module computing this activation, or ``None`` for none (the identity).

        Parameters
        ----------
        nn : module
            ``torch.nn``.
        twins : dict of str to type
            The torch classes of :mod:`hessquik_core.interop` by name.
        """
        if self.torch_twin is None or registered_class(self) is None:
            raise TypeError(f"no torch equivalent for activation {type(self).__qualname__}")
        twin = twins.get(self.torch_twin) or getattr(nn, self.torch_twin)
        return twin(**self.config())


#: the registered activations, by name (:func:`register_activation`)
ACTIVATIONS: dict[str, type[Activation]] = {}
_REGISTRY = ACTIVATIONS  # the registry's former name


def register_activation(cls):
    """Class decorator: make an activation known by its ``name``.

    :func:`get_activation` then accepts the name (unless ``by_name`` is
    False), ``hq.save`` / ``hq.load`` write and read it (its :meth:`~Activation.config`
    must be the constructor's keyword arguments), and the conversions find
    it through ``torch_twin`` / ``hessquik_name``.
    """
    if not (isinstance(cls, type) and issubclass(cls, Activation)) or "name" not in vars(cls):
        raise TypeError("register_activation expects an Activation subclass that sets its own name")
    if cls.name in ACTIVATIONS and ACTIVATIONS[cls.name] is not cls:
        raise ValueError(f"an activation named {cls.name!r} is already registered: {ACTIVATIONS[cls.name]}")
    ACTIVATIONS[cls.name] = cls
    return cls


def registered_class(act: Activation) -> type[Activation] | None:
    """The registered class computing ``act``'s function, ``None`` if there is none.

    ``type(act)`` itself when it is registered; its registered base for a class
    marked ``call_convention_only``; ``None`` for anything else, in particular
    subclasses of registered activations, which may change the math.
    """
    cls = ACTIVATIONS.get(getattr(act, "name", None))  # type: ignore[arg-type]
    if cls is None:
        return None
    t = type(act)
    if t is cls or (vars(t).get("call_convention_only", False) and isinstance(act, cls)):
        return cls
    return None


def _sigmoid_parts(z, xp):
    r"""Return :math:`s=\mathrm{sigmoid}(z)` and :math:`1-s`, both to full
    relative precision, using :math:`e = \exp(-|z|) \le 1`."""
    e = xp.exp(-xp.abs(z))
    inv = 1.0 / (1.0 + e)
    small = e * inv
    pos = z >= 0
    return xp.where(pos, inv, small), xp.where(pos, small, inv)


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

    def to_torch(self, nn: Any, twins: dict[str, type]) -> Any:
        """``None``: no module (a ``Linear`` alone; blocks place ``nn.Identity``)."""
        return None

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

    with the exact derivatives of that piecewise function:
    :math:`\sigma' = \mathrm{sigmoid}(\beta z)`,
    :math:`\sigma'' = \beta\,\sigma'(1-\sigma')` below the threshold and
    :math:`1, 0` above it. The logarithm is evaluated as
    :math:`\max(\beta z, 0) + \log(1 + e^{-|\beta z|})`.
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


@register_activation
@dataclass(frozen=True)
class Tanh(Activation):
    r""":math:`\sigma = \tanh z,\ \sigma' = 1 - \sigma^2,\ \sigma'' = -2\sigma\sigma'`."""

    name = "tanh"
    torch_twin = "Tanh"
    hessquik_name = "tanhActivation"

    max_order = 4

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


def get_activation(spec) -> Activation:
    """Return an :class:`Activation` from an instance, a class, or a name
    (``"tanh"``, ``"softplus"``, ...)."""
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, type) and issubclass(spec, Activation):
        return spec()
    if isinstance(spec, str):
        key = spec.lower().replace("_", "").replace("activation", "")
        names = sorted(k for k, c in ACTIVATIONS.items() if c.by_name)
        if key in names:
            return ACTIVATIONS[key]()
        raise ValueError(f"unknown activation {spec!r}: expected one of {names}")
    raise TypeError(f"act must be an Activation instance, class or name, got {type(spec).__name__}")


# --------------------------------------------------------------------------
# GELU, Mish, Gaussian and user-defined activations
# --------------------------------------------------------------------------


def _backend_of(xp):
    """The backend bound to namespace ``xp``, for its ``erf``/``erfc`` (torch and CuPy
    have native kernels, JAX its own ``lax.erf``; NumPy and other libraries use the
    standard-only series of ``hessquik_core._special``)."""
    from .backends import backend_for

    return backend_for(xp)


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


def _takes_xp(fn) -> bool:
    import inspect

    try:
        return "xp" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


@dataclass(frozen=True)
class CustomActivation(Activation):
    r"""An activation from three user functions :math:`\sigma, \sigma', \sigma''`.

    Made by :func:`custom`; see there. Compares equal when the same three
    functions and name are used. Not saveable with :func:`hessquik_core.save`
    (a file holds data, never code) and without a torch twin for
    :func:`hessquik_core.to_torch`.
    """

    f: object
    df: object
    d2f: object
    name: str = "custom"

    def __post_init__(self):
        for key in ("f", "df", "d2f"):
            if not callable(getattr(self, key)):
                raise TypeError(
                    f"custom activation: {key} must be callable, got {type(getattr(self, key)).__name__}"
                )
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"custom activation: name must be a non-empty string, got {self.name!r}")
        # inspect the signatures once, not on every call
        object.__setattr__(self, "_xp_kw", tuple(_takes_xp(getattr(self, k)) for k in ("f", "df", "d2f")))

    def __repr__(self) -> str:
        return f"custom(name={self.name!r})"

    def _apply(self, fn, z, xp, what):
        out = fn(z, xp=xp) if self._xp_kw[("f", "df", "d2f").index(what)] else fn(z)
        if not hasattr(out, "shape"):  # a constant, e.g. d2f = lambda z: 0.0
            return xp.full_like(z, float(out))
        if tuple(out.shape) != tuple(z.shape):
            raise ValueError(
                f"custom activation {self.name!r}: {what} returned shape {tuple(out.shape)}, "
                f"expected the input's shape {tuple(z.shape)}"
            )
        return out

    def _eval(self, z, order, xp):
        s = self._apply(self.f, z, xp, "f")
        ds = self._apply(self.df, z, xp, "df") if order >= 1 else None
        d2s = self._apply(self.d2f, z, xp, "d2f") if order == 2 else None
        return s, ds, d2s


def custom(f, df, d2f, *, name: str = "custom") -> CustomActivation:
    r"""An activation from its value and first two derivatives.

    Parameters
    ----------
    f, df, d2f : callable
        :math:`\sigma`, :math:`\sigma'`, :math:`\sigma''`, elementwise. Each
        is called as ``fn(z)``, or as ``fn(z, xp=xp)`` if it has a parameter
        named ``xp`` (the array namespace of ``z``: write ``xp.tanh(z)`` and
        the activation runs on every backend). Each must return an array of
        ``z``'s shape (a Python number is broadcast, for constants).
    name : str
        Shown in ``repr`` and error messages.

    Returns
    -------
    CustomActivation

    Notes
    -----
    Verify the three functions agree with
    :func:`hessquik_core.checks.check_activation`. Custom activations
    cannot be saved by :func:`hessquik_core.save` (files hold no code);
    subclass :class:`Activation` for finer control (implement
    ``_eval(self, z, order, xp)`` returning ``(sigma, dsigma or None, d2sigma or None)``).

    Examples
    --------
    >>> import numpy as np, hessquik_core as hq
    >>> act = hq.activations.custom(
    ...     lambda z, xp: xp.sin(z) + z,
    ...     lambda z, xp: xp.cos(z) + 1.0,
    ...     lambda z, xp: -xp.sin(z),
    ...     name="sin_plus_z",
    ... )
    >>> bool(hq.checks.check_activation(act))
    True
    >>> net = hq.FullyConnectedNN([2, 8, 1], act=act, seed=0)
    >>> net(np.ones((3, 2)), laplacian=True).laplacian.shape
    (3, 1)
    """
    return CustomActivation(f, df, d2f, name)


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


__all__ += [
    "ACTIVATIONS",
    "CustomActivation",
    "GELU",
    "Gaussian",
    "Mish",
    "custom",
    "register_activation",
    "registered_class",
]
