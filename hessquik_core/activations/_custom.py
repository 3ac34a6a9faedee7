r"""User-defined activations from their value and derivatives (:func:`custom`)."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any

from ._base import ACTIVATIONS, Activation, register_activation

_KEYS = ("f", "df", "d2f", "d3f", "d4f")


def _convention(fn) -> str:
    """How ``fn`` takes the namespace: ``"kw"`` (a parameter named ``xp``), ``"pos"``
    (a second positional parameter without default, ``f(z, xp)``), or ``"none"`` (``f(z)``)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins and ufuncs without a signature
        return "none"
    if any(p.name == "xp" for p in params):
        return "kw"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2 and positional[1].default is inspect.Parameter.empty:
        return "pos"
    return "none"


def _hint(name: str, what: str) -> str:
    return (
        f"custom activation {name!r}: {what}(z) is called without the array namespace, so it must "
        f"handle the input's array type itself; write it against the namespace it is handed, e.g. "
        f"def {what}(z, xp): return xp.sin(z), and it runs on every backend (NumPy, torch, CuPy, JAX, ...)"
    )


@dataclass(frozen=True)
class CustomActivation(Activation):
    r"""An activation from user functions :math:`\sigma, \sigma', \sigma''` and optionally
    :math:`\sigma''', \sigma''''`.

    Made by :func:`custom`; see there. Compares equal when the same functions and
    name are used. ``max_order`` is 2, 3 or 4 by the derivatives given.
    """

    f: object
    df: object
    d2f: object
    name: str = "custom"
    d3f: object = None
    d4f: object = None
    #: per function, how it takes the namespace (set from the signatures once)
    _conv: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        for key in _KEYS:
            fn = getattr(self, key)
            if not callable(fn) and not (key in ("d3f", "d4f") and fn is None):
                raise TypeError(f"custom activation: {key} must be callable, got {type(fn).__name__}")
        if self.d4f is not None and self.d3f is None:
            raise ValueError("custom activation: d4f (the fourth derivative) needs d3f (the third) as well")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"custom activation: name must be a non-empty string, got {self.name!r}")
        # inspect the signatures once, not on every call
        object.__setattr__(self, "_conv", tuple(_convention(getattr(self, k)) for k in _KEYS))
        # an instance attribute: how many derivatives this activation's functions supply
        object.__setattr__(self, "max_order", 2 + (self.d3f is not None) + (self.d4f is not None))

    def __repr__(self) -> str:
        return f"custom(name={self.name!r})"

    def _apply(self, k: int, z, xp):
        fn, conv, what = getattr(self, _KEYS[k]), self._conv[k], _KEYS[k]
        if conv == "kw":
            out = fn(z, xp=xp)
        elif conv == "pos":
            out = fn(z, xp)
        else:
            try:
                out = fn(z)
            except (TypeError, RuntimeError, AttributeError, ValueError) as err:
                # e.g. numpy.ndarray * Tensor, or NumPy converting a tensor that requires grad:
                # say how to write it instead (the original error is in the message and chained)
                raise TypeError(
                    f"{_hint(self.name, what)} (calling it on a {type(z).__name__} raised: {err})"
                ) from err
        if not hasattr(out, "shape"):  # a constant, e.g. d2f = lambda z: 0.0
            return xp.full_like(z, float(out))
        if conv == "none" and type(out) is not type(z):  # e.g. a NumPy array for a torch input
            raise TypeError(
                f"{_hint(self.name, what)} (given a {type(z).__name__}, it returned a {type(out).__name__})"
            )
        if tuple(out.shape) != tuple(z.shape):
            raise ValueError(
                f"custom activation {self.name!r}: {what} returned shape {tuple(out.shape)}, "
                f"expected the input's shape {tuple(z.shape)}"
            )
        return out

    def _eval(self, z, order, xp):
        s = self._apply(0, z, xp)
        ds = self._apply(1, z, xp) if order >= 1 else None
        d2s = self._apply(2, z, xp) if order == 2 else None
        return s, ds, d2s

    def _eval_high(self, z, order, xp, value):
        s = self._apply(0, z, xp) if value is None else value
        return (s, *(self._apply(k, z, xp) for k in range(1, order + 1)))


def custom(
    f, df, d2f, d3f=None, d4f=None, *, name: str = "custom", register: bool = False
) -> CustomActivation:
    r"""An activation from its value and derivatives.

    Parameters
    ----------
    f, df, d2f : callable
        :math:`\sigma`, :math:`\sigma'`, :math:`\sigma''`, elementwise.
    d3f, d4f : callable, optional
        :math:`\sigma'''` and :math:`\sigma''''`: with them the activation's
        ``max_order`` is 3 or 4, and requests that need them (the analytic
        training step, the bi-Laplacian and fourth derivatives) accept it.
        ``d4f`` needs ``d3f``.
    name : str
        Shown in ``repr`` and error messages; with ``register=True`` also the name
        files and :func:`~hessquik_core.activations.get_activation` know it by.
    register : bool, default False
        Register the activation as a class under ``name`` (see Notes), so that
        networks using it can be saved and loaded.

    Returns
    -------
    CustomActivation

    Raises
    ------
    TypeError
        A non-callable function.
    ValueError
        An empty name, ``d4f`` without ``d3f``; with ``register=True`` a name that is
        not lower-case letters and digits or that a built-in (or any non-custom)
        activation already has.

    Notes
    -----
    *Calling.* Each function is called as ``fn(z, xp=xp)`` if it has a parameter named
    ``xp``, as ``fn(z, xp)`` if it has a second positional parameter, else as
    ``fn(z)``. ``xp`` is the array namespace of ``z`` (write ``xp.tanh(z)``
    and the activation runs on every backend, torch's autograd included); a
    one-argument function must handle ``z``'s array type itself (NumPy only,
    or plain arithmetic ``0.5 * z * z``), and one that fails on, or returns
    something other than, a non-NumPy ``z`` is refused with a TypeError
    saying to accept ``xp``. Each must return an array of ``z``'s shape (a
    Python number is broadcast, for constants).

    Verify the functions agree with :func:`hessquik_core.checks.check_activation`
    (Taylor rates of every order given).

    *Saving.* A file written by :func:`hessquik_core.save` holds data, never
    code: with ``register=True`` the activation becomes a registered class
    (:data:`~hessquik_core.activations.ACTIVATIONS`) named ``name`` whose
    instances call these functions, and a file stores only that name.
    :func:`hessquik_core.load` finds it only in a process that registered it
    again, by running the same ``custom(..., name=..., register=True)`` first;
    elsewhere the load is refused as naming an unknown activation. Nothing is
    ever unpickled or evaluated from a file. Registering a name again (a
    notebook cell run twice) replaces the earlier custom registration; built-in
    names cannot be taken. The other way is to subclass
    :class:`~hessquik_core.activations.Activation` in a module of your own and
    decorate it with :func:`~hessquik_core.activations.register_activation`.

    *Exporting.* :func:`hessquik_core.to_torch` places an
    ``hessquik_core.activations.torch_modules.ActivationModule``, a torch
    module whose ``forward`` evaluates ``f`` through torch's namespace (and
    ``from_torch`` gives the activation back).

    Examples
    --------
    >>> import numpy as np, hessquik_core as hq
    >>> act = hq.activations.custom(
    ...     lambda z, xp: xp.sin(z) + z,
    ...     lambda z, xp: xp.cos(z) + 1.0,
    ...     lambda z, xp: -xp.sin(z),
    ...     lambda z, xp: -xp.cos(z),
    ...     lambda z, xp: xp.sin(z),
    ...     name="sin_plus_z",
    ... )
    >>> act.max_order
    4
    >>> bool(hq.checks.check_activation(act))
    True
    >>> net = hq.FullyConnectedNN([2, 8, 1], act=act, seed=0)
    >>> net(np.ones((3, 2)), laplacian=True).laplacian.shape
    (3, 1)
    """
    act = CustomActivation(f, df, d2f, name, d3f, d4f)
    return _register(act) if register else act


def _register(act: CustomActivation) -> CustomActivation:
    """A registered class named ``act.name`` whose instances are ``act``'s functions."""
    name = act.name
    if not re.fullmatch(r"[a-z][a-z0-9]*", name) or "activation" in name:
        raise ValueError(
            f"custom activation: a registered name must be lower-case letters and digits "
            f"(the form get_activation and files use), without 'activation'; got {name!r}"
        )
    old = ACTIVATIONS.get(name)
    if old is not None and not getattr(old, "_custom_registration", False):
        raise ValueError(
            f"custom activation: the name {name!r} is taken by {old.__qualname__}; choose another"
        )
    fns = tuple(getattr(act, k) for k in _KEYS)

    def __init__(self) -> None:
        CustomActivation.__init__(self, fns[0], fns[1], fns[2], name, fns[3], fns[4])

    attrs: dict[str, Any] = {
        "__init__": __init__,
        "__doc__": f"The custom activation {name!r}, registered by hq.activations.custom(..., register=True).",
        "__module__": __name__,
        "name": name,
        "max_order": act.max_order,
        "_custom_registration": True,
    }
    cls = type(f"Custom_{name}", (CustomActivation,), attrs)
    if old is not None:
        del ACTIVATIONS[name]
    register_activation(cls)
    return cls()
