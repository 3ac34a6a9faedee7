"""The activation base class, the registry and the lookups by name (see the package docstring)."""

from __future__ import annotations

from typing import Any, ClassVar

from array_api_compat import array_namespace


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
    #: (``"Tanh"``) or in ``hessquik_core.activations.torch_modules`` (``"AntiTanh"``);
    #: ``None``: exported as an ``ActivationModule`` evaluating the activation itself
    torch_twin: ClassVar[str | None] = None
    #: the hessQuik 0.0.6 class computing the same function (``"tanhActivation"``)
    hessquik_name: ClassVar[str | None] = None
    #: whether :func:`~hessquik_core.activations.get_activation` accepts the name (False: the class is
    #: registered for files and conversions only, like the non-smooth ReLU)
    by_name: ClassVar[bool] = True
    #: whether its second derivative exists everywhere; ``from_torch`` refuses
    #: a non-smooth twin unless asked (``allow_relu=True``)
    smooth: ClassVar[bool] = True
    #: whether it is smooth but for a kink at 0 with a documented value there (ELU, CELU,
    #: SELU, Softsign): ``from_torch`` converts its twin only with ``allow_kinks=True``
    kinks: ClassVar[bool] = False
    #: True on a class that only changes how the activation is *called*
    #: (:mod:`hessquik_core.compat`'s hessQuik-named classes): it saves and
    #: converts as its registered base class. Read from the class itself, not inherited.
    call_convention_only: ClassVar[bool] = False

    #: the highest derivative :meth:`~hessquik_core.activations.Activation.derivatives` supplies (2: σ, σ′, σ″ only).
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

    def vjp(self, z, value, dl, ops):
        r""":math:`\sigma'(z) \odot dl` (same shape as ``z``), the backward step of a
        gradient pass that kept only ``z`` and ``value`` :math:`= \sigma(z)` from the
        forward pass (``hessquik_core.curvature``'s fused gradient).

        Default: ``σ′(z) * dl`` with ``σ′`` from ``_eval``, the same numbers as
        the unfused pass. An activation whose derivative is a polynomial of its value
        overrides it to skip re-evaluating ``σ′`` (tanh: :math:`(1 - t^2)\,dl`, one
        fused kernel where the backend has one, see ``Backend.tanh_vjp``).
        """
        return self._eval(z, 1, ops.xp)[1] * dl

    def _eval(self, z, order, xp):  # pragma: no cover - abstract
        raise NotImplementedError

    def _eval_high(self, z, order, xp, value) -> tuple:
        """``(σ, …, σ⁽ᵒʳᵈᵉʳ⁾)`` for ``order`` 3 or 4 (up to :attr:`max_order`); ``value``
        is σ(z) or ``None``. Subclasses with ``max_order > 2`` implement it."""
        raise NotImplementedError  # pragma: no cover - guarded by max_order

    def config(self) -> dict:
        """Constructor arguments, for serialisation."""
        return {}

    def kink_note(self) -> str:
        """How the activation fails to be smooth and which value it returns at the kink
        (empty for a smooth one); for error messages."""
        return ""

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

    @classmethod
    def torch_twin_class(cls) -> type | None:
        """The torch module class computing this activation: ``torch.nn.<torch_twin>``, or
        the class of that name in ``hessquik_core.activations.torch_modules``; ``None``
        without a ``torch_twin`` (imports torch)."""
        if cls.torch_twin is None:
            return None
        from .torch_modules import torch_classes

        own = torch_classes().get(cls.torch_twin)
        if own is not None:
            return own
        from torch import nn

        return getattr(nn, cls.torch_twin, None)

    def to_torch(self, nn: Any = None, twins: Any = None) -> Any:
        """A torch module computing this activation (``None`` for the identity: no module).

        The registered class's twin (:meth:`torch_twin_class`) built from :meth:`config`;
        for an activation without one (a :func:`~hessquik_core.activations.custom`
        activation, an unregistered subclass) a
        ``hessquik_core.activations.torch_modules.ActivationModule`` evaluating
        this activation's own function through torch's namespace. ``nn`` and ``twins``
        are accepted for the former signature and unused.
        """
        cls = registered_class(self)
        twin = None if cls is None else cls.torch_twin_class()
        if twin is None:
            from .torch_modules import torch_classes

            return torch_classes()["ActivationModule"](self)
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
        raise ValueError(
            f"unknown activation {spec!r}: expected one of {names}, or your own from "
            f"hq.activations.custom(f, df, d2f, name=...) (or a registered Activation subclass)"
        )
    raise TypeError(f"act must be an Activation instance, class or name, got {type(spec).__name__}")


def _named_activations(obj, path: str) -> list[tuple[str, Activation]]:
    """``(where, activation)`` for every activation held by ``obj`` and its children."""
    if isinstance(obj, Activation):
        return [(path, obj)]
    if isinstance(obj, (list, tuple)):
        return [
            p for i, a in enumerate(obj) for p in _named_activations(a, f"{path}[{i}]" if path else f"[{i}]")
        ]
    out = []
    d = getattr(obj, "__dict__", {})
    for key, value in d.items():
        if isinstance(value, Activation):
            out.append((f"{path}.{key}" if path else key, value))
    for name, child in d.get("_children", {}).items():
        out += _named_activations(child, f"{path}.{name}" if path else str(name))
    return out


def require_order(acts: Any, order: int, *, what: str = "this request") -> None:
    r"""Refuse, up front, a request needing derivatives of order ``order`` of activations
    that supply fewer.

    Parameters
    ----------
    acts : Activation, sequence of Activation, or a network / layer
        For a network or layer, every activation it holds (its layers' ``act``,
        nested blocks included) is checked.
    order : int
        The highest derivative :math:`\sigma^{(k)}` the request needs (3 for the
        analytic training step, 4 for the bi-Laplacian and fourth derivatives).
    what : str
        The request, for the message (``"the biharmonic"``).

    Raises
    ------
    ValueError
        Naming the first activation whose ``max_order`` is below ``order``, where it
        sits, and the order; with the way to supply it.
    """
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise ValueError(f"order must be a non-negative integer, got {order!r}")
    for where, act in _named_activations(acts, ""):
        if act.max_order < order:
            at = f" (at {where!r})" if where else ""
            raise ValueError(
                f"{what} needs derivatives up to order {order} of every activation, but {act!r}{at} "
                f"supplies them up to order {act.max_order} only. Every built-in activation supplies "
                f"order 4; for your own, pass d3f=/d4f= to hq.activations.custom or implement _eval_high "
                f"and raise max_order in your Activation subclass"
            )


def _backend_of(xp):
    """The backend bound to namespace ``xp``, for its ``erf``/``erfc`` (torch and CuPy
    have native kernels, JAX its own ``lax.erf``; NumPy and other libraries use the
    standard-only series of ``hessquik_core._special``)."""
    from ..backends import backend_for

    return backend_for(xp)
