r"""Conversion to and from PyTorch ``nn.Module`` s.

* :func:`from_torch` turns a ``torch.nn.Sequential`` (nested ones included)
  of ``nn.Linear`` layers and smooth activations into a hessquik-core
  network computing the same function, so its exact input gradients,
  Hessians and Laplacians become available.
* :func:`to_torch` goes the other way: an ``nn.Module`` whose ``forward``
  equals the network's value, e.g. to keep training with PyTorch tools.

Mapping (``nn.Linear`` stores :math:`W` with :math:`y = xW^\top + c`; a
hessquik-core layer stores :math:`K = W^\top`, :math:`b = c`):

=============================================  ==========================================
PyTorch                                        hessquik-core
=============================================  ==========================================
``Linear`` [+ activation]                      ``SingleLayer(in, out, act)``
``Tanh``, ``Sigmoid``, ``SiLU``                ``Tanh``, ``Sigmoid``, ``SiLU``
``Softplus(beta, threshold)``                  ``Softplus(beta, threshold)``
``Identity``, ``Dropout`` in eval mode         nothing (skipped)
``ReLU`` (only with ``allow_relu=True``)       :class:`ReLU`
:class:`ResidualBlock`                         ``ResnetLayer(width, h, act)``
:class:`ICNNBlock`, :class:`QuadraticBlock`,   ``ICNNLayer``, ``QuadraticLayer``,
:class:`QuadraticICNNBlock`                    ``QuadraticICNNLayer``
:class:`AntiTanh`, :class:`Quadratic`,         the activations of the same names
:class:`Sin` (torch modules defined here)
=============================================  ==========================================

Each layer owns its torch twin: its class states the twin's name
(``torch_twin``), builds the twin class on first use in its own file
(``torch_twin_class()``) and converts in both directions (``to_torch``,
``from_torch``); activations state theirs likewise. This module walks the
torch module tree and asks the registered layers and activations: it names
no layer class and keeps no table of them, so a new layer file is converted
without editing this one (:doc:`adding_a_layer`). The twin classes are named
``hessquik_core.interop.<ClassName>`` (``hessquik_core.interop.ResidualBlock``
builds it, importing torch; importing hessquik-core never does), so
``torch.save`` of a module holding them pickles and loads. Any other module
-- in particular a hand-written residual block, whose ``forward`` cannot be
inspected -- raises an error naming it.

This module is over 400 lines because ``from_torch`` and ``to_torch`` are
one mapping read in both directions, with every refusal (hooks,
parametrizations, non-smooth activations, unknown modules) next to the walk
that meets it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .activations import ACTIVATIONS, Activation, ReLU
from .activations.torch_modules import NAMES as _ACT_MODULES
from .activations.torch_modules import torch_classes
from .layers.base import LAYERS, Layer
from .networks import NN

__all__ = ["ReLU", "from_torch", "to_torch"]  # and the twin classes, by name (__getattr__)


# --------------------------------------------------------------------------
# the twins, found through the registered layers and activations
# --------------------------------------------------------------------------


def _twin_class(cls: type[Layer] | type[Activation]) -> type | None:
    """The torch twin class of a registered layer or activation class (imports torch):
    both state it the same way, ``cls.torch_twin_class()``."""
    return cls.torch_twin_class()


def _registered() -> list[type[Layer] | type[Activation]]:
    """Every registered layer and activation class (the registries, read now)."""
    return [*LAYERS.values(), *ACTIVATIONS.values()]


def _defines_own_twin(cls: type[Layer] | type[Activation]) -> bool:
    """Whether a registered class defines its twin itself (rather than naming a
    ``torch.nn`` class): a layer that overrides ``torch_twin_class``, an activation
    whose twin is one of :mod:`hessquik_core.activations.torch_modules`."""
    if issubclass(cls, Layer):
        return cls.torch_twin_class.__func__ is not Layer.torch_twin_class.__func__  # type: ignore[attr-defined]
    return cls.torch_twin in _ACT_MODULES


def _own_twin_names() -> tuple[str, ...]:
    """Names of the twin classes hessquik-core defines (not ``torch.nn``'s)."""
    return tuple(sorted({c.torch_twin for c in _registered() if c.torch_twin and _defines_own_twin(c)}))


def __getattr__(name: str) -> Any:
    """``hessquik_core.interop.<Twin>``: a twin class by name (built on first access)."""
    if name == "_TORCH_NAMES":
        return _own_twin_names()
    if name in _ACT_MODULES:  # the activations' own twins live with the activations
        return torch_classes()[name]
    for cls in LAYERS.values():
        if cls.torch_twin == name and _defines_own_twin(cls):  # decided before torch is imported
            twin = cls.torch_twin_class()
            if twin is not None and twin.__name__ == name:
                return twin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------
# from_torch
# --------------------------------------------------------------------------


def _smooth_hint() -> str:
    """The smooth activations ``from_torch`` converts (from the registry), for error messages."""
    twins = [c.torch_twin for c in ACTIVATIONS.values() if c.smooth and c.torch_twin is not None]
    own = _own_twin_names()
    ours = [t for t in twins if t in own]
    return (
        f"supported activations: {', '.join(t for t in twins if t not in ours)} "
        f"and hessquik_core.activations.torch_modules' (also in hessquik_core.interop) {', '.join(ours)}"
    )


_NONSMOOTH = (
    "LeakyReLU",
    "ReLU6",
    "Hardtanh",
    "Hardswish",
    "Hardsigmoid",
    "ELU",
    "CELU",
    "SELU",
    "PReLU",
    "RReLU",
    "Hardshrink",
    "Softshrink",
    "Threshold",
)


def _torch_twins() -> dict[type, type[Activation]]:
    """torch class -> registered activation class, from each activation's twin; exact types only."""
    out: dict[type, type[Activation]] = {}
    for cls in ACTIVATIONS.values():
        twin = _twin_class(cls)
        if twin is not None:
            out[twin] = cls
    return out


def _layer_twins() -> dict[type, type[Layer]]:
    """torch class -> registered layer class, from each layer's ``torch_twin_class()``."""
    out: dict[type, type[Layer]] = {}
    for cls in LAYERS.values():
        twin = cls.torch_twin_class()
        if twin is not None:
            out[twin] = cls
    return out


class _OptIns(NamedTuple):
    """from_torch's opt-ins for non-smooth activations, carried where ``allow_relu`` was."""

    relu: bool
    kinks: bool


#: how to bring an activation of one's own, for the refusals below
_CUSTOM_HINT = (
    "or define the activation you want with hq.activations.custom(f, df, d2f, name=...) and put "
    "hessquik_core.activations.torch_modules.ActivationModule(that activation) in its place"
)


def _act_from_torch(mod, path: str, allow_relu) -> Activation | None:
    """hessquik-core activation for a torch activation module, ``None`` if ``mod`` is none.
    ``allow_relu``: a bool (ReLU only) or from_torch's :class:`_OptIns`."""
    relu_ok, kinks_ok = allow_relu if isinstance(allow_relu, _OptIns) else (bool(allow_relu), False)
    t = type(mod)
    if t is torch_classes()["ActivationModule"]:  # to_torch's module around any other activation
        return mod.hessquik_activation
    cls = _torch_twins().get(t)
    if cls is not None:
        act = cls.from_twin(mod)
        if cls.kinks and not kinks_ok:
            raise ValueError(
                f"submodule {path!r} is nn.{t.__name__}, which is not twice differentiable at 0: "
                f"{act.kink_note()}. Hessians and Laplacians are then those of its smooth pieces, with that "
                f"value at the kink. Pass allow_kinks=True to convert anyway, use a smooth activation "
                f"(e.g. nn.SiLU, nn.GELU, nn.Softplus(beta=10)), {_CUSTOM_HINT}."
            )
        if not cls.smooth and not cls.kinks and not relu_ok:
            raise ValueError(
                f"submodule {path!r} is nn.{t.__name__}: its second derivative is zero almost everywhere, so "
                f"Hessians and Laplacians (and every loss built on them) would be silently wrong. Use a smooth "
                f"activation (e.g. nn.Softplus(beta=10) or nn.SiLU), pass allow_relu=True to convert anyway, "
                f"{_CUSTOM_HINT}."
            )
        return act
    if t.__name__ in _NONSMOOTH and t.__module__.startswith("torch.nn"):
        raise ValueError(
            f"submodule {path!r} is nn.{t.__name__}, which is not twice differentiable; "
            f"hessquik-core needs smooth activations ({_smooth_hint()}), {_CUSTOM_HINT}"
        )
    return None


def _walk(module, path: str, out: list) -> None:
    """Flatten nested ``nn.Sequential`` s into ``(path, leaf)`` pairs."""
    from torch import nn

    if type(module) is nn.Sequential:
        # the registered children in order, repeats included: named_children() yields a
        # module object once, so Sequential(lin, act, lin2, act) would lose its second act
        for name, child in module._modules.items():
            if child is not None:
                _walk(child, f"{path}.{name}" if path else name, out)
    else:
        out.append((path or "<root>", module))


def _check_not_shared(leaves) -> None:
    """Refuse a module object with parameters that occurs twice (tied weights): a converted
    network holds one parameter set per layer, so it would untie them and its parameter
    curvature would not be the model's."""
    seen: dict[int, str] = {}
    for path, mod in leaves:
        if next(iter(mod.parameters()), None) is None:
            continue  # parameter-free modules (activations) may be reused freely
        if id(mod) in seen:
            raise ValueError(
                f"submodule {path!r} is the same module object as {seen[id(mod)]!r} (shared, tied "
                f"weights); a hessquik-core network holds one parameter set per layer, so the "
                f"conversion would untie them: give each layer its own module (e.g. copy.deepcopy), "
                f"or keep this model in torch"
            )
        seen[id(mod)] = path


def _np(t, dtype) -> np.ndarray:
    if str(t.dtype) == "torch.bfloat16" and dtype is None:
        raise TypeError("bfloat16 parameters have no NumPy dtype: pass dtype=np.float32 (or call .float())")
    arr = t.detach().cpu()
    if str(arr.dtype) == "torch.bfloat16":
        arr = arr.float()
    arr = arr.numpy()
    return np.array(arr, dtype=dtype if dtype is not None else arr.dtype)


class _FromTorchKit:
    """What a layer's ``from_torch`` needs: parameter copies, activation conversion,
    the activation module that followed the twin, and nested conversion."""

    def __init__(self, path, dtype, allow_relu, activation=None):
        self.path, self.dtype, self.allow_relu = path, dtype, allow_relu
        self.activation = activation

    def numpy(self, t) -> np.ndarray:
        return _np(t, self.dtype)

    def act(self, mod, suffix: str):
        return _act_or_identity(mod, self.path + suffix, self.allow_relu)

    def convert(self, module, suffix: str = ""):
        """The network equal to a nested torch module (converted as :func:`from_torch`)."""
        try:
            return from_torch(module, allow_relu=self.allow_relu, dtype=self.dtype)
        except ValueError as err:
            raise ValueError(f"in submodule {self.path + suffix!r}: {err}") from None


def _twin_label(cls: type[Layer]) -> str:
    """``nn.Linear`` or ``hessquik_core.interop.ResidualBlock``: a layer's twin, for messages."""
    where = "hessquik_core.interop." if _defines_own_twin(cls) else "nn."
    return f"{where}{cls.torch_twin}"


def _layer_from_torch(cls, mod, path, dtype, allow_relu, activation=None):
    """The layer of class ``cls`` equal to its twin ``mod`` (weights copied)."""
    layer, state = cls.from_torch(mod, _FromTorchKit(path, dtype, allow_relu, activation))
    try:
        layer.load_state_dict(state)
    except (TypeError, ValueError) as err:  # e.g. a block whose attributes were replaced by hand
        raise ValueError(f"cannot convert submodule {path!r} ({type(mod).__qualname__}): {err}") from None
    return layer


def _act_or_identity(mod, path, allow_relu):
    act = _act_from_torch(mod, path, allow_relu)
    if act is None:
        raise ValueError(
            f"submodule {path!r} ({type(mod).__qualname__}) is not a supported activation ({_smooth_hint()})"
        )
    return act


def _check_no_hooks(module) -> None:
    """Refuse modules whose call differs from their ``forward``: forward hooks and pre-hooks
    (including global ones, and the old ``torch.nn.utils.weight_norm``, which is a pre-hook)
    and parametrizations (``torch.nn.utils.parametrize``) change what the module computes in
    ways the conversion cannot see, so the converted network would compute something else."""
    import torch.nn.modules.module as tmod

    for kind, name, register in (
        ("forward hook", "_global_forward_hooks", "register_module_forward_hook"),
        ("forward pre-hook", "_global_forward_pre_hooks", "register_module_forward_pre_hook"),
    ):
        if getattr(tmod, name, None):
            raise ValueError(
                f"a global {kind} is registered (torch.nn.modules.module.{register}): it changes what "
                f"every module computes, which the converted network would not; remove it first"
            )
    try:
        from torch.nn.utils.parametrize import is_parametrized
    except ImportError:  # pragma: no cover - old torch
        is_parametrized = None  # type: ignore[assignment]
    for path, mod in module.named_modules():
        where = f"submodule {path or '<root>'!r} ({type(mod).__qualname__})"
        if getattr(mod, "_forward_hooks", None):
            raise ValueError(
                f"{where} has a forward hook (register_forward_hook), which can change its output; "
                f"the converted network would compute something else. Remove the hook before converting"
            )
        if getattr(mod, "_forward_pre_hooks", None):
            raise ValueError(
                f"{where} has a forward pre-hook (register_forward_pre_hook, or the old "
                f"torch.nn.utils.weight_norm / spectral_norm), which can change its input or weights; "
                f"the converted network would compute something else. Remove it before converting "
                f"(e.g. torch.nn.utils.remove_weight_norm)"
            )
        if is_parametrized is not None and is_parametrized(mod):
            raise ValueError(
                f"{where} carries a parametrization (torch.nn.utils.parametrize): its weights are "
                f"computed on every call. Convert a copy with the current weights made plain, "
                f"torch.nn.utils.parametrize.remove_parametrizations(mod, name, leave_parametrized=True)"
            )


def from_torch(module, *, allow_relu: bool = False, allow_kinks: bool = False, dtype=None) -> NN:
    r"""Build the hessquik-core network equal to a PyTorch ``nn.Sequential``.

    Parameters
    ----------
    module : torch.nn.Sequential (or a single supported module)
        Made of ``nn.Linear``, each optionally followed by one supported
        activation (``Tanh``, ``Sigmoid``, ``Softplus(beta, threshold)``,
        ``SiLU``; and this module's ``AntiTanh``, ``Quadratic``, ``Sin``),
        ``nn.Identity``, ``nn.Dropout`` in eval mode, this module's
        ``ResidualBlock`` / ``ICNNBlock`` / ``QuadraticBlock`` /
        ``QuadraticICNNBlock``, and nested ``nn.Sequential`` s (flattened).
    allow_relu : bool, default False
        ``nn.ReLU`` is refused unless this is ``True``: the second
        derivative of ReLU is zero almost everywhere, so every Hessian or
        Laplacian of the result misses the kinks and derivative-based
        losses break silently.
    allow_kinks : bool, default False
        ``nn.ELU``, ``nn.CELU``, ``nn.SELU`` and ``nn.Softsign`` (smooth but
        for a jump in a derivative at 0) are refused unless this is ``True``;
        the message says which derivative jumps and the (left-sided) value
        used at exactly 0 (see :mod:`hessquik_core.activations`' ELU, ...).
    dtype : NumPy dtype, optional
        Storage dtype of the copied parameters; default: each parameter's
        own (float32 stays float32, so values are bitwise equal).

    Returns
    -------
    NN
        ``state_dict`` keys ``'0.K'``, ``'0.b'``, ... (one layer per
        Linear/block). Weights are copied: later changes to ``module`` are
        not seen.

    Raises
    ------
    ValueError
        Naming the offending submodule (dotted path) for a module object with
        parameters that occurs twice (tied weights, which a converted network would
        untie), and for anything else:
        non-smooth activations, unknown modules (e.g. a hand-written
        residual block), an activation without a preceding ``nn.Linear``,
        ``Dropout`` in training mode, or mismatched widths; and for any
        (sub)module that carries a forward hook, a forward pre-hook (also
        global ones) or a parametrization (``torch.nn.utils.parametrize``),
        since the converted network would not compute what the module does.
    TypeError
        If ``module`` is not a torch module.

    Examples
    --------
    >>> import torch, numpy as np, hessquik_core as hq
    >>> tm = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> net = hq.from_torch(tm.double())
    >>> x = np.random.default_rng(0).standard_normal((5, 3))
    >>> np.allclose(net(x).value, tm(torch.from_numpy(x)).detach().numpy())
    True
    """
    from torch import nn

    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    _check_no_hooks(module)
    if dtype is not None:
        dtype = np.dtype(dtype)
        if not np.issubdtype(dtype, np.floating):
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    twins = _layer_twins()
    # both opt-ins travel where allow_relu did, down to _act_from_torch
    if not isinstance(allow_relu, _OptIns):  # (a nested conversion passes them on as they are)
        allow_relu = _OptIns(bool(allow_relu), bool(allow_kinks))  # type: ignore[assignment]
    leaves: list = []
    _walk(module, "", leaves)
    _check_not_shared(leaves)
    layers: list[Layer] = []
    # a twin waiting for the activation module that may follow it (nn.Linear, then nn.Tanh)
    pending: tuple[str, Any, type[Layer]] | None = None
    sources: list[str] = []

    def flush(act: Activation | None = None) -> None:
        nonlocal pending
        assert pending is not None
        path, mod, cls = pending
        layers.append(_layer_from_torch(cls, mod, path, dtype, allow_relu, act))
        sources.append(path)
        pending = None

    for path, mod in leaves:
        t = type(mod)
        if t is nn.Identity:
            continue
        if isinstance(mod, nn.Dropout) and t.__module__.startswith("torch.nn"):
            if mod.training and mod.p > 0:
                raise ValueError(
                    f"submodule {path!r} is {t.__name__}(p={mod.p}) in training mode, which is "
                    f"random; call module.eval() first (dropout is then the identity)"
                )
            continue
        cls = twins.get(t)
        if cls is not None:
            if pending is not None:
                flush()
            if cls.torch_twin_takes_activation:
                pending = (path, mod, cls)
            else:
                layers.append(_layer_from_torch(cls, mod, path, dtype, allow_relu))
                sources.append(path)
            continue
        act = _act_from_torch(mod, path, allow_relu)
        if act is not None:
            if pending is None:
                takers = " or ".join(_twin_label(c) for c in twins.values() if c.torch_twin_takes_activation)
                raise ValueError(
                    f"submodule {path!r} ({t.__name__}) is an activation not preceded by an "
                    f"{takers}; hessquik-core layers have the form act(u K + b)"
                )
            flush(act)
            continue
        own = [_twin_label(c) for c in twins.values() if _defines_own_twin(c)]
        raise ValueError(
            f"cannot convert submodule {path!r} ({t.__module__}.{t.__qualname__}): a module whose "
            f"forward hessquik-core cannot recognise. Supported: nn.Sequential, smooth activations "
            f"({_smooth_hint()}), nn.Identity, nn.Dropout (eval), the torch twins of the registered "
            f"layers: {', '.join(_twin_label(c) for c in twins.values())} (write residual connections "
            f"with one of {' / '.join(own)})"
        )
    if pending is not None:
        flush()
    if not layers:
        raise ValueError("the module contains no nn.Linear or block to convert")
    for i in range(len(layers) - 1):
        if layers[i].out_features != layers[i + 1].in_features:
            raise ValueError(
                f"width mismatch: submodule {sources[i]!r} outputs {layers[i].out_features} "
                f"features, {sources[i + 1]!r} takes {layers[i + 1].in_features}"
            )
    return NN(*layers)


# --------------------------------------------------------------------------
# to_torch
# --------------------------------------------------------------------------


def _act_to_torch(act: Activation):
    """The torch module of ``act`` (``None`` for the identity), from its class's ``torch_twin``."""
    from torch import nn

    return act.to_torch(nn)


def to_torch(net, *, dtype=None, device=None):
    r"""An ``nn.Module`` computing ``net(x).value``, with copies of its parameters.

    Parameters
    ----------
    net : NN or Layer
    dtype : torch dtype, optional
        Parameter dtype; default: each parameter's own.
    device : torch device, optional

    Returns
    -------
    torch.nn.Sequential
        ``NN`` becomes ``nn.Sequential`` (nesting kept); each layer becomes
        what its own ``to_torch`` returns: ``SingleLayer`` an
        ``nn.Linear(in, out)`` with ``weight = Kᵀ`` followed by the
        activation (none for ``Identity``); ``ResnetLayer``, ``ICNNLayer``,
        ``QuadraticLayer``, ``QuadraticICNNLayer`` the twins
        :class:`~hessquik_core.interop.ResidualBlock`, :class:`~hessquik_core.interop.ICNNBlock`,
        :class:`~hessquik_core.interop.QuadraticBlock`,
        :class:`~hessquik_core.interop.QuadraticICNNBlock` (and so on for every registered
        layer). ``from_torch(to_torch(net))`` gives back ``net``'s function (nesting flattened).

    Examples
    --------
    >>> import torch, numpy as np, hessquik_core as hq
    >>> net = hq.ResnetNN(width=3, depth=2, h=0.5, act="tanh", seed=0)
    >>> tm = hq.to_torch(net)
    >>> x = np.ones((2, 3))
    >>> np.allclose(tm(torch.from_numpy(x)).detach().numpy(), net(x).value)
    True
    """
    import torch
    from torch import nn

    from .backends._generic import to_numpy

    def tensor(p):
        host = np.array(to_numpy(p))  # writable copy
        t = torch.from_numpy(host)
        return t.to(dtype=dtype or t.dtype, device=device)

    def assign(param, value):
        with torch.no_grad():
            if tuple(param.shape) != tuple(value.shape):  # pragma: no cover - guarded by the layers
                raise AssertionError((param.shape, value.shape))
            param.copy_(value)

    kit = _ToTorchKit(nn, tensor, assign, dtype, device)

    def parts(mod) -> list:
        """Modules that compute ``mod``, to be placed in the parent's Sequential."""
        if isinstance(mod, NN):
            return [nn.Sequential(*[m for blk in mod.blocks for m in parts(blk)])]
        if not isinstance(mod, Layer) or not _is_plain(mod):
            raise TypeError(f"to_torch cannot convert {type(mod).__qualname__}: not a hessquik-core layer")
        return mod.to_torch(kit)

    if not isinstance(net, (NN, Layer)):
        raise TypeError(f"net must be a hessquik-core network or layer, got {type(net).__name__}")
    out = parts(net)
    return out[0] if isinstance(net, NN) else nn.Sequential(*out)


class _ToTorchKit:
    """What a layer's ``to_torch`` needs (see :meth:`Layer.to_torch`): torch,
    parameter copies, activation modules, and nested conversion."""

    def __init__(self, nn, tensor, assign, dtype, device):
        self.nn, self.tensor, self.assign = nn, tensor, assign
        self.dtype, self.device = dtype, device

    def convert(self, net):
        """The ``nn.Module`` of a nested network or layer (as :func:`to_torch`, same options)."""
        return to_torch(net, dtype=self.dtype, device=self.device)

    def dtype_of(self, layer):
        return self.dtype or self.tensor(layer.parameters()[0]).dtype

    def act(self, act):
        return _act_to_torch(act)

    def copy_state(self, layer, module) -> None:
        for key, p in layer.state_dict().items():
            self.assign(getattr(module, key), self.tensor(p))


def _is_plain(mod) -> bool:
    """``mod`` computes exactly what the registered layer class it derives from
    does (its own class only adds call conventions, as hessquik_core.compat's
    layers do)."""
    registered = set(LAYERS.values())
    base = next((c for c in type(mod).__mro__ if c in registered), None)
    if base is None:
        return False
    for name in ("evaluate", "forward_step", "backward_step", "_lin", "_M"):
        if getattr(type(mod), name, None) is not getattr(base, name, None):
            return False
    return True
