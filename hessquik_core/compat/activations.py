"""hessQuik's activation names: ``act.softplusActivation()`` etc.

Each class is the hessquik-core activation of the same function, so it can
be given to any hessquik-core layer, and it is also callable the hessQuik
way: ``sigma, dsigma, d2sigma = act_func(x, do_gradient=True, do_Hessian=True)``
(derivatives not requested are ``None``).
"""

from __future__ import annotations

from .. import activations as _A
from ..activations import Activation

__all__ = [
    "antiTanhActivation",
    "hessQuikActivationFunction",
    "identityActivation",
    "quadraticActivation",
    "sigmoidActivation",
    "softplusActivation",
    "tanhActivation",
]

#: hessQuik's base class name for activations.
hessQuikActivationFunction = Activation


class _HessQuikActivation:
    """``act(x, do_gradient=False, do_Hessian=False, forward_mode=True)`` on top of
    hessquik-core's ``act(z, order, xp=xp)``."""

    def __call__(self, z, *args, order=None, xp=None, do_gradient=False, do_Hessian=False, forward_mode=True):
        if order is not None or (args and not isinstance(args[0], bool)):
            # hessquik-core's own call: act(z, order, xp=xp)
            return Activation.__call__(
                self, z, *args, **({"order": order} if order is not None else {}), xp=xp
            )
        if args:  # hessQuik positional: (do_gradient, do_Hessian, forward_mode)
            names = ("do_gradient", "do_Hessian", "forward_mode")
            if len(args) > 3:
                raise TypeError(f"expected at most 3 positional flags {names}, got {len(args)}")
            vals = dict(zip(names, args))
            do_gradient = vals.get("do_gradient", do_gradient)
            do_Hessian = vals.get("do_Hessian", do_Hessian)
            forward_mode = vals.get("forward_mode", forward_mode)
        for name, val in (("do_gradient", do_gradient), ("do_Hessian", do_Hessian)):
            if not isinstance(val, bool):
                raise TypeError(f"{name} must be True or False, got {val!r}")
        if forward_mode is None:
            raise ValueError("forward_mode=None (hessQuik's deferred derivatives) is not supported")
        order = 2 if do_Hessian else 1 if do_gradient else 0
        return Activation.__call__(self, z, order, xp=xp)


class antiTanhActivation(_HessQuikActivation, _A.AntiTanh):
    r"""hessQuik's ``antiTanhActivation``: :math:`\log(2\cosh z)`."""


class identityActivation(_HessQuikActivation, _A.Identity):
    r"""hessQuik's ``identityActivation``: :math:`z`."""


class quadraticActivation(_HessQuikActivation, _A.Quadratic):
    r"""hessQuik's ``quadraticActivation``: :math:`z^2/2`."""


class sigmoidActivation(_HessQuikActivation, _A.Sigmoid):
    r"""hessQuik's ``sigmoidActivation``: :math:`1/(1+e^{-z})`."""


class softplusActivation(_HessQuikActivation, _A.Softplus):
    r"""hessQuik's ``softplusActivation(beta=1.0, threshold=20.0)``."""


class tanhActivation(_HessQuikActivation, _A.Tanh):
    r"""hessQuik's ``tanhActivation``: :math:`\tanh z`."""


#: hessquik-core class -> its hessQuik-named class here (which saves and converts as it)
_COMPAT: dict[type, type] = {}
for _cls in (
    antiTanhActivation,
    identityActivation,
    quadraticActivation,
    sigmoidActivation,
    softplusActivation,
    tanhActivation,
):
    _cls.call_convention_only = True
    _COMPAT[_cls.__mro__[2]] = _cls
del _cls


def as_compat(act, default: str) -> Activation:
    """The compat class for an activation given in any form (``None`` -> ``default``);
    activations without a hessQuik name (Sin, SiLU, ...) stay as they are."""
    a = _A.get_activation(default if act is None else act)
    if isinstance(a, _HessQuikActivation):
        return a
    cls = _COMPAT.get(type(a))
    return cls(**a.config()) if cls is not None else a
