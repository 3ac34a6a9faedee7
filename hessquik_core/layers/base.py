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

import sys
from typing import Any, ClassVar

import numpy as np

from .._module import Module
from ..activations import Softplus
from ..carry import Adjoints, Request, Tangents
from ..rules import jacobian
from ..rules.contractions import diagonal

#: hessQuik's map to nonnegative ICNN weights: softplus(L)
NONNEG = Softplus()

#: file-format name -> layer class; filled by :func:`register_layer`
LAYERS: dict[str, type] = {}

#: ``call(layer, x, **kwargs)``: the network engine, which sits above the
#: layers and registers itself here when :mod:`hessquik_core.networks` loads
_ENGINE: list = []


def register_layer(cls):
    """Class decorator: make a layer known to ``save``/``load`` (by its class name)."""
    LAYERS[cls.__name__] = cls
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

    in_features: int
    out_features: int

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

    def config(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

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
    def to_torch(self, kit) -> list:
        """``nn.Module`` s computing this layer, with copies of its parameters
        (``kit``: torch, the twin classes and copy helpers of :mod:`hessquik_core.interop`)."""
        raise TypeError(f"to_torch cannot convert {type(self).__qualname__}: not a hessquik-core layer")

    #: class name of the torch twin (in :mod:`hessquik_core.interop`) that
    #: :meth:`from_torch` converts back, or ``None``
    torch_twin: ClassVar[str | None] = None

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
        activation module. Returns ``(layer, state)``; the caller loads ``state``."""
        raise NotImplementedError  # pragma: no cover - abstract


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


__all__ = ["LAYERS", "NONNEG", "Layer", "check_int", "register_layer", "rng_of", "set_engine"]
