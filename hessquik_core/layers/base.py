r"""The layer contract, the layer registry and helpers shared by the layer files.

Notation (one example; the batch axis ``n`` is always first). A layer maps
features :math:`u \in \mathbb{R}^{p}` to :math:`f(u) \in \mathbb{R}^{q}`; the
network input is :math:`x \in \mathbb{R}^d`. Arrays are row-vector
convention, as in hessQuik: ``u @ K``.

Forward mode carries a :class:`~hessquik_core.carry.Tangents` (the
derivatives of ``u`` with respect to ``x`` along ``k`` directions) and each
layer maps it to the same object for ``f`` by the chain rule
:math:`\partial^2 f = \partial u^\top \nabla^2 f\, \partial u + \nabla f \cdot \partial^2 u`.
Backward mode first evaluates the network, then carries an
:class:`~hessquik_core.carry.Adjoints` (derivatives of ``m`` output
combinations ``g`` with respect to ``f``) back to ``u``:
:math:`\partial g/\partial u = J\,dl`,
:math:`\partial^2 g/\partial u^2 = J\,Dl\,J^\top + \sum_j dl_j \nabla^2 f_j`,
with :math:`J = \partial f/\partial u` (``p × q``). The page "Adding a layer"
of the documentation states every method's shapes.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from .._module import Module
from ..activations import Softplus
from ..carry import Adjoints, Request, Tangents
from ..rules import jacobian
from ..rules.contractions import diagonal
from ..rules.cost import CostRequest, LayerCost, gemm_cost
from .affine_structure import AffineStructure

#: hessQuik's map to nonnegative ICNN weights: softplus(L)
NONNEG = Softplus()

#: file-format name -> layer class; filled by :func:`register_layer`
LAYERS: dict[str, type[Layer]] = {}
#: further file-format names -> layer class (names older files use, e.g. ``"compat.singleLayer"``);
#: filled by :func:`register_layer_alias`. ``save`` writes only :data:`LAYERS`' names.
LAYER_ALIASES: dict[str, type[Layer]] = {}

#: ``call(layer, x, **kwargs)``: the network engine, which sits above the
#: layers and registers itself here when :mod:`hessquik_core.networks` loads
_ENGINE: list = []


def register_layer(cls: type) -> type:
    """Class decorator: make a layer known by its class name.

    ``save``/``load`` then write and read it (:attr:`Layer.config_schema`,
    :meth:`Layer.parameter_shapes`), ``to_torch``/``from_torch`` convert it
    (:meth:`Layer.torch_twin_class`, :meth:`Layer.to_torch`,
    :meth:`Layer.from_torch`), and ``hessquik_core.<ClassName>`` exports it.
    """
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise TypeError(f"register_layer expects a Layer subclass, got {cls!r}")
    name = cls.__name__
    if LAYERS.get(name, cls) is not cls:
        raise ValueError(f"a layer named {name!r} is already registered: {LAYERS[name]}")
    LAYERS[name] = cls
    return cls


def register_layer_alias(name: str, cls: type[Layer]) -> None:
    """Let files that name a layer ``name`` (e.g. written by an older version under
    another class's name) load as the registered layer ``cls``."""
    if cls not in LAYERS.values():
        raise ValueError(f"{cls!r} is not a registered layer")
    LAYER_ALIASES[name] = cls


def lazy_torch_class(factory: Callable[[], type]) -> Callable[[], type]:
    """Decorator for a function that builds a torch twin class (importing torch).

    The class is built once, on first use (importing hessquik-core never
    imports torch), and named ``hessquik_core.interop.<ClassName>``: that
    module resolves twin names through the registries, so ``torch.save``
    / ``pickle`` of a module holding a twin finds the class (and files
    pickled by earlier versions, whose twins lived there, still load).
    """

    @functools.cache
    def build() -> type:
        return name_torch_class(factory())

    functools.update_wrapper(build, factory)
    return build


def name_torch_class(cls: type) -> type:
    """Name a torch twin class ``hessquik_core.interop.<ClassName>`` (see ``lazy_torch_class``)."""
    cls.__module__ = "hessquik_core.interop"
    cls.__qualname__ = cls.__name__
    return cls


def set_engine(call) -> None:
    """Install the function that evaluates a layer called directly (``layer(x, ...)``)."""
    _ENGINE[:] = [call]


class Layer(Module):
    """Base class of the building blocks (the contract every layer fulfils).

    A subclass implements, for the input derivatives (``params`` maps local
    parameter names to arrays in the call's namespace; ``ops`` is the bound
    backend, ``ops.xp`` the namespace):

    * ``evaluate(u, params, order, ops) -> (f, cache)``
    * ``forward_step(cache, params, tangents, request, ops) -> Tangents``
    * ``backward_step(cache, params, adjoints, second, ops) -> Adjoints``
    * ``backward_first(cache, params, adjoints, what, ops) -> array`` (optional;
      the default forms the full input Hessian and reduces it)

    and, for :mod:`hessquik_core.curvature`, ``param_vjp``,
    ``param_rop_forward`` and ``param_rop_backward``. Its class states its
    file-format ``config_schema`` and :meth:`parameter_shapes`; the cost model
    reads :attr:`cost_shapes`; :mod:`hessquik_core.interop` asks
    :meth:`to_torch` and :meth:`from_torch`.
    """

    if TYPE_CHECKING:  # read-only here; a layer may store them (``in_features: int``) or compute them

        @property
        def in_features(self) -> int: ...

        @property
        def out_features(self) -> int: ...

    #: ``config()`` key -> ``"int"``, ``"int?"`` (int or None), ``"bool"`` or ``"float"``
    config_schema: ClassVar[dict[str, str]] = {}
    #: whether the file format stores an activation for this layer
    has_activation: ClassVar[bool] = False
    #: constructor arguments holding a network (a layer or ``NN``) that the file
    #: format stores as a nested node, its tensors under ``"<name>.<key>"``
    nested: ClassVar[tuple[str, ...]] = ()

    def _leaves(self):
        yield self

    def _eval_params(self, key, be, xp, dtype, device) -> dict:
        """The ``params`` the passes receive: this layer's parameters and, for a
        block with children, theirs under dotted names (``"U.K"``), all in the
        call's namespace, dtype and device (converted once, cached)."""
        out = self._converted(key, be, xp, dtype, device)
        if not self._children:
            return out
        for cname, child in self._children.items():
            for name, value in child._eval_params(key, be, xp, dtype, device).items():
                out[f"{cname}.{name}"] = value
        return out

    def local_param_name(self, key: str) -> str:
        """The ``params`` name of the parameter with ``state_dict`` key ``key``
        (relative to this layer); the parameter passes return gradients under it."""
        return key

    # -- structure --------------------------------------------------------------
    @classmethod
    def parameter_shapes(cls, config: dict) -> dict[str, tuple[int, ...]]:
        """``state_dict`` key -> shape of a layer built from ``config`` (switched-off
        parameters absent), computed without building it (``load`` checks a
        file's tensors against it before allocating anything)."""
        raise NotImplementedError  # pragma: no cover - abstract

    @property
    def cost_shapes(self) -> tuple[tuple[int, int], ...]:
        """``((p, q), ...)``: the GEMMs of the layer in evaluation order, for the
        cost model (one for a plain layer; a block lists its internal ones)."""
        return ((self.in_features, self.out_features),)

    def cost(self, n: int, k: int, request: CostRequest) -> LayerCost:
        """The work of this layer for ``n`` examples and ``k`` tangents (forward) or
        output directions (backward), for the cost model
        (:mod:`hessquik_core.rules.cost`). Default: one GEMM-shaped affine step per
        entry of :attr:`cost_shapes` (``request.first`` applies to the first). A layer
        whose work is no GEMM (a normalisation, a spline) overrides it."""
        total = LayerCost()
        for j, (p, q) in enumerate(self.cost_shapes):
            total = total + gemm_cost(p, q, n, k, request if j == 0 else replace(request, first=False))
        return total

    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def affine_structure(self, params: Mapping[str, Any] | None = None) -> AffineStructure | None:
        r"""This layer as :math:`f(u) = [u +]\, h\,\sigma(uM + b)`, or ``None`` (the default:
        no such form). With ``params`` (the call's, as the passes receive them) ``M``,
        ``b`` and ``pullback`` are filled in; without, only the form is declared
        (what the planner asks). A layer that declares it gets the analytic training
        step and the high-dimensional routes
        (:mod:`hessquik_core.layers.affine_structure`)."""
        return None

    # -- input derivatives --------------------------------------------------------
    def evaluate(self, u, params: dict, order: int, ops) -> tuple[Any, Any]:
        """``u : (n, p)`` -> ``f : (n, q)`` and what the derivative steps need
        (``order`` 0, 1 or 2: the highest derivative that will be asked)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward_step(self, cache, params: dict, tangents: Tangents, request: Request, ops) -> Tangents:
        """Tangents of ``u`` -> tangents of ``f`` (the entries ``request`` asks for).

        Default: the generic rule (:mod:`hessquik_core.rules.jacobian`) for a
        layer whose ``evaluate`` returns its per-example
        :class:`~hessquik_core.rules.jacobian.LocalDerivatives` as the cache."""
        return jacobian.forward_step(cache, tangents, request, ops)

    def backward_step(self, cache, params: dict, adjoints: Adjoints, second: bool, ops) -> Adjoints:
        """Adjoints of ``f`` -> adjoints of ``u`` (the Hessian only if ``second``).

        Default: the generic rule, as :meth:`forward_step`."""
        return jacobian.backward_step(cache, adjoints, second, ops)

    def backward_first(self, cache, params: dict, adjoints: Adjoints, what: str, ops):
        """At the first layer, only the trace (``what="trace"``, ``(n, m)``) or the
        diagonal (``"diagonal"``, ``(n, m, p)``) of the input Hessian."""
        full = self.backward_step(cache, params, adjoints, True, ops).hessian
        diag = diagonal(full, ops.xp)
        return ops.xp.sum(diag, axis=-1) if what == "trace" else diag

    # -- streams: per-point parameter Jacobians (hessquik_core.pinn) -----------------
    # A layer that supports hessquik_core.pinn.jacobian maps the Taylor streams
    # Y = [u; ∂u_1..k; L] : (S, N, p) of its input (rules.streams) and their
    # adjoints; these defaults refuse, naming the layer.
    def _streams_unsupported(self):
        return ValueError(
            f"{type(self).__name__} is not supported for per-point Jacobians yet "
            "(hessquik_core.pinn.jacobian): it has no stream_forward / stream_vjp / stream_rop"
        )

    #: whether :meth:`stream_vjp` supports ``mode="kfac"`` (an affine layer)
    stream_kfac: ClassVar[bool] = False

    def stream_activations(self) -> tuple:
        """The activations the stream passes differentiate (the caller checks their orders)."""
        return ()

    def stream_forward(self, Y, params: dict, spec, ops):
        """Streams ``Y : (S, N, p)`` -> ``(Y_out : (S, N, q), cache)`` (``spec``: a
        ``StreamSpec`` of ``hessquik_core.rules.streams``)."""
        raise self._streams_unsupported()

    def stream_vjp(self, cache, params: dict, Ybar, mode: str, need_input: bool, ops):
        """Adjoints ``Ybar : (c, S', N, q)`` -> ``(Ybar_in : (c, S', N, p) or None, out)``;
        ``out``: local parameter name -> per-point Jacobian ``(N, c, *shape)``
        (``mode="point"``) or its sum over points and directions (``"sum"``), or a
        list of Kronecker factor pairs ``(A, B)`` (``"kfac"``)."""
        raise self._streams_unsupported()

    def stream_rop(self, cache, params: dict, RY, V: dict, ops):
        """R-pass: the derivative ``(S, N, q)`` of the output streams along the parameter
        direction ``V`` (local name -> ``shape``), given that of the input ``RY`` (or ``None``)."""
        raise self._streams_unsupported()

    # -- calling a layer ----------------------------------------------------------
    def __call__(self, x, **kwargs):
        return _ENGINE[0](self, x, **kwargs)

    # -- torch twin ---------------------------------------------------------------
    #: class name of the torch module computing this layer (its *twin*): a class of
    #: ``torch.nn`` (``"LayerNorm"``) or one the layer's own file defines
    #: (``torch_twin_class()``); ``None``: no twin (``from_torch`` does not convert it)
    torch_twin: ClassVar[str | None] = None
    #: whether the twin may be followed by an activation module that belongs to the
    #: layer (``nn.Linear`` then ``nn.Tanh`` is one ``SingleLayer``): ``from_torch``
    #: then hands the converted activation to :meth:`from_torch` as ``kit.activation``
    torch_twin_takes_activation: ClassVar[bool] = False

    @classmethod
    def torch_twin_class(cls) -> type | None:
        """The twin module class, which :meth:`from_torch` converts (imports torch).

        Default: ``torch.nn.<torch_twin>``. A layer with a twin of its own overrides
        this and builds the class in its own file on first use (decorate the
        builder with ``lazy_torch_class``)."""
        if cls.torch_twin is None:
            return None
        from torch import nn

        return getattr(nn, cls.torch_twin)

    def to_torch(self, kit) -> list:
        """``nn.Module`` s computing this layer, with copies of its parameters.

        ``kit`` (built by :func:`hessquik_core.to_torch`): ``kit.nn`` is
        ``torch.nn``; ``kit.tensor(p)`` a torch copy of a parameter and
        ``kit.assign(param, tensor)`` copies into a twin's parameter;
        ``kit.dtype_of(self)``, ``kit.device`` the target dtype and device;
        ``kit.act(a)`` the torch module of an activation (``None`` for the
        identity); ``kit.copy_state(self, module)`` copies every parameter to the
        module attribute of the same name; ``kit.convert(net)`` converts a nested
        network or layer (to an ``nn.Sequential``) with the same options."""
        raise TypeError(f"to_torch cannot convert {type(self).__qualname__}: not a hessquik-core layer")

    #: class name of the hessQuik 0.0.6 layer that :meth:`from_hessquik` converts, or ``None``
    hessquik_name: ClassVar[str | None] = None

    @classmethod
    def from_hessquik(cls, module, kit):
        """Build the layer equal to the hessQuik layer ``module`` (weights are loaded
        by the caller). ``kit.act(a, suffix)`` converts an activation, ``kit.dtype``
        is the module's dtype, ``kit.unsupported(m, suffix)`` the error to raise,
        ``kit.check_nonneg(m)`` refuses a nonneg map other than softplus."""
        raise NotImplementedError  # pragma: no cover - abstract

    @classmethod
    def from_torch(cls, module, kit):
        """Build the layer equal to its torch twin ``module``: ``kit.numpy(t)``
        copies a torch parameter to NumPy, ``kit.act(m, suffix)`` converts an
        activation module, ``kit.activation`` is the activation module that
        followed the twin (converted; ``None`` if none, only for
        ``torch_twin_takes_activation``), ``kit.convert(m)`` converts a nested
        ``nn.Module`` to a network. Returns ``(layer, state)``; the caller loads ``state``."""
        raise NotImplementedError  # pragma: no cover - abstract


@runtime_checkable
class LayerProtocol(Protocol):
    """What the engine, :mod:`hessquik_core.curvature`, ``io`` and ``interop`` ask of a layer.

    :class:`Layer` implements it (the input-derivative steps by the generic
    rule, the torch twin as "none"); a layer file overrides what it computes
    differently. Shapes as in the module docstring: ``u : (n, p)``,
    ``f : (n, q)``, carries :class:`~hessquik_core.carry.Tangents` /
    :class:`~hessquik_core.carry.Adjoints`, ``ops`` the bound backend.
    """

    @property
    def in_features(self) -> int: ...

    @property
    def out_features(self) -> int: ...

    def evaluate(self, u: Any, params: dict, order: int, ops: Any) -> tuple[Any, Any]: ...

    def forward_step(
        self, cache: Any, params: dict, tangents: Tangents, request: Request, ops: Any
    ) -> Tangents: ...

    def backward_step(
        self, cache: Any, params: dict, adjoints: Adjoints, second: bool, ops: Any
    ) -> Adjoints: ...

    def backward_first(self, cache: Any, params: dict, adjoints: Adjoints, what: str, ops: Any) -> Any: ...

    def affine_structure(self, params: Mapping[str, Any] | None = None) -> AffineStructure | None: ...

    def config(self) -> dict: ...

    @classmethod
    def parameter_shapes(cls, config: dict) -> dict[str, tuple[int, ...]]: ...

    @classmethod
    def torch_twin_class(cls) -> type | None: ...

    def to_torch(self, kit: Any) -> list: ...

    @classmethod
    def from_torch(cls, module: Any, kit: Any) -> tuple[Any, dict[str, Any]]: ...


def rng_of(seed) -> np.random.Generator:
    """The generator of a layer's initialisation.

    ``seed`` is an int or a ``numpy.random.Generator`` (used as is). ``None``
    draws the seed from a global generator, so that the usual global seeding
    makes the initial weights reproducible: **torch's** (``torch.manual_seed``)
    when torch has been imported, otherwise **NumPy's** legacy global RNG
    (``np.random.seed``). Either draw advances that generator, as constructing
    a torch module does.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        torch = sys.modules.get("torch")
        if torch is not None and hasattr(torch, "randint"):
            seed = int(torch.randint(0, 2**62, (1,)).item())
        else:
            seed = int(np.random.randint(0, 2**62, dtype=np.int64))  # noqa: NPY002 - the global RNG is the point
    return np.random.default_rng(seed)


def check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


__all__ = [
    "LAYERS",
    "LAYER_ALIASES",
    "NONNEG",
    "Layer",
    "LayerProtocol",
    "check_int",
    "lazy_torch_class",
    "register_layer",
    "register_layer_alias",
    "rng_of",
    "set_engine",
]
