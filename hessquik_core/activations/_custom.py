r"""User-defined activations from their value and derivatives (:func:`custom`)."""

from __future__ import annotations

from dataclasses import dataclass

from ._base import Activation


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
