r"""Pointwise activation functions with their first two derivatives.

Every activation is a small immutable object whose call

.. code-block:: python

    sigma, dsigma, d2sigma = act(z, order=2, xp=xp)

returns :math:`\sigma(z)`, :math:`\sigma'(z)` and :math:`\sigma''(z)` (``None``
beyond ``order``), all of ``z``'s shape, dtype and device. The formulas are
chosen so that no intermediate overflows for :math:`|z|` up to
:math:`10^4` in float32 or float64: exponentials are only ever taken of
:math:`-|z|`.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """Base class: subclasses implement ``_eval``."""

    #: JSON-able name used by ``save``/``load`` and ``repr``.
    name: str = "activation"

    def __call__(self, z, order: int = 2, *, xp=None):
        """Return ``(sigma, dsigma, d2sigma)``; entries beyond ``order`` are ``None``."""
        if order not in (0, 1, 2):
            raise ValueError(f"order must be 0, 1 or 2, got {order!r}")
        if xp is None:
            xp = array_namespace(z)
        return self._eval(z, order, xp)

    def _eval(self, z, order, xp):  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict:
        """Constructor arguments, for serialisation."""
        return {}


def _sigmoid_parts(z, xp):
    r"""Return :math:`s=\mathrm{sigmoid}(z)` and :math:`1-s`, both to full
    relative precision, using :math:`e = \exp(-|z|) \le 1`."""
    e = xp.exp(-xp.abs(z))
    inv = 1.0 / (1.0 + e)
    small = e * inv
    pos = z >= 0
    return xp.where(pos, inv, small), xp.where(pos, small, inv)


@dataclass(frozen=True)
class AntiTanh(Activation):
    r"""Antiderivative of tanh, as defined by hessQuik.

    .. math::
        \sigma(z) = |z| + \log(1 + e^{-2|z|}) = \log(2\cosh z),\quad
        \sigma'(z) = \tanh z,\quad \sigma''(z) = 1 - \tanh^2 z.
    """

    name = "antitanh"

    def _eval(self, z, order, xp):
        a = xp.abs(z)
        s = a + xp.log1p(xp.exp(-2.0 * a))
        if order == 0:
            return s, None, None
        t = xp.tanh(z)
        return s, t, (1.0 - t * t) if order == 2 else None


@dataclass(frozen=True)
class Identity(Activation):
    r""":math:`\sigma(z) = z,\ \sigma' = 1,\ \sigma'' = 0`."""

    name = "identity"

    def _eval(self, z, order, xp):
        if order == 0:
            return z, None, None
        one = xp.ones_like(z)
        return z, one, xp.zeros_like(z) if order == 2 else None


@dataclass(frozen=True)
class Quadratic(Activation):
    r""":math:`\sigma(z) = z^2/2,\ \sigma' = z,\ \sigma'' = 1`."""

    name = "quadratic"

    def _eval(self, z, order, xp):
        s = 0.5 * z * z
        if order == 0:
            return s, None, None
        return s, z, xp.ones_like(z) if order == 2 else None


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

    def _eval(self, z, order, xp):
        s, sc = _sigmoid_parts(z, xp)
        if order == 0:
            return s, None, None
        ds = s * sc
        return s, ds, (ds * (sc - s)) if order == 2 else None


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


@dataclass(frozen=True)
class Tanh(Activation):
    r""":math:`\sigma = \tanh z,\ \sigma' = 1 - \sigma^2,\ \sigma'' = -2\sigma\sigma'`."""

    name = "tanh"

    def _eval(self, z, order, xp):
        t = xp.tanh(z)
        if order == 0:
            return t, None, None
        dt = 1.0 - t * t
        return t, dt, (-2.0 * t * dt) if order == 2 else None


@dataclass(frozen=True)
class Sin(Activation):
    r""":math:`\sigma = \sin z,\ \sigma' = \cos z,\ \sigma'' = -\sin z`."""

    name = "sin"

    def _eval(self, z, order, xp):
        s = xp.sin(z)
        if order == 0:
            return s, None, None
        return s, xp.cos(z), (-s) if order == 2 else None


@dataclass(frozen=True)
class SiLU(Activation):
    r"""Sigmoid-weighted linear unit :math:`\sigma(z) = z\,s(z)`, :math:`s` the sigmoid.

    .. math::
        \sigma' = s\,(1 + z(1-s)),\qquad \sigma'' = s(1-s)\,(2 + z(1 - 2s)).
    """

    name = "silu"

    def _eval(self, z, order, xp):
        s, sc = _sigmoid_parts(z, xp)
        val = z * s
        if order == 0:
            return val, None, None
        ds = s * (1.0 + z * sc)
        return val, ds, (s * sc * (2.0 + z * (sc - s))) if order == 2 else None


_REGISTRY = {cls.name: cls for cls in (AntiTanh, Identity, Quadratic, Sigmoid, Softplus, Tanh, Sin, SiLU)}


def get_activation(spec) -> Activation:
    """Return an :class:`Activation` from an instance, a class, or a name
    (``"tanh"``, ``"softplus"``, ...)."""
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, type) and issubclass(spec, Activation):
        return spec()
    if isinstance(spec, str):
        key = spec.lower().replace("_", "").replace("activation", "")
        if key in _REGISTRY:
            return _REGISTRY[key]()
        raise ValueError(f"unknown activation {spec!r}: expected one of {sorted(_REGISTRY)}")
    raise TypeError(f"act must be an Activation instance, class or name, got {type(spec).__name__}")
