"""Call resolution: validate inputs, pick the backend, mode and namespace.

This is the only place that looks at which library the caller uses; the
engine below it sees one Array-API namespace ``xp`` and one bound backend
(``ctx.be``, handed to the layers as ``ops``). Network calls
(:func:`resolve_call`) and curvature calls (:func:`resolve_input`) take the
same path.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass, replace
from typing import Any

from .backends import BACKEND_NAMES, Backend, backend_for, get_backend, owner_of

_MODES = ("auto", "forward", "backward")


def namespace_of(x, what: str = "x"):
    """``array_namespace(x)`` with an error that says what was expected."""
    if isinstance(x, (list, tuple, int, float)) or not hasattr(x, "shape"):
        raise TypeError(
            f"{what} must be a NumPy, CuPy or torch array (or any Array-API array), got {type(x).__name__}"
        )
    try:
        return owner_of(x).namespace(x)
    except TypeError as err:
        raise TypeError(
            f"{what} must be a NumPy, CuPy or torch array (or any Array-API array), "
            f"got {type(x).__module__}.{type(x).__name__}"
        ) from err


def as_plain_array(a, what: str = "x"):
    """The door check for NumPy's special arrays, applied to every array argument once.

    * ``numpy.ma.MaskedArray`` is refused (``TypeError``): the computation
      would silently drop the mask.
    * ``numpy.matrix`` becomes the ``ndarray`` with the same data
      (``numpy.asarray``, no copy): its ``*`` and ``@`` differ from an
      ndarray's, so it must not reach the engine; results are ndarrays.
    * Non-native byte order (e.g. ``dtype('>f8')`` on a little-endian
      machine) is converted once to the native dtype of the same kind (a
      copy; the caller's array is not modified). Other libraries cannot
      take such arrays and the engine compares dtypes by name; results
      come back in native byte order.

    Anything else (other libraries' arrays, lists) is returned unchanged.
    """
    np = sys.modules.get("numpy")
    if np is None or not isinstance(a, np.ndarray):
        return a
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(
            f"{what} is a numpy.ma.MaskedArray, which is not supported: the computation would "
            f"silently ignore its mask. Pass {what}.filled(value) or drop the masked rows"
        )
    if isinstance(a, np.matrix):
        a = np.asarray(a)
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def as_batch(x, d: int):
    """A single point ``x : (d,)`` as a batch of one, ``(1, d)`` (a view)."""
    x = as_plain_array(x, "x")
    xp = namespace_of(x)
    if x.shape[0] != d:
        raise ValueError(
            f"x must have shape (n, {d}), got shape {tuple(x.shape)} (ndim 1): a single point has shape ({d},)"
        )
    return xp.expand_dims(x, axis=0)


def check_max_memory(max_memory, name: str = "max_memory") -> float | None:
    """``max_memory`` as a float number of bytes (``None`` stays ``None``).

    Any real number is accepted (``int``, ``float``, ``numbers.Real``, NumPy
    integer and floating scalars, ``inf`` for no limit); ``bool``, NaN, zero
    and negative values raise ``ValueError``, other types ``TypeError``.
    """
    if max_memory is None:
        return None
    np = sys.modules.get("numpy")
    is_bool = isinstance(max_memory, bool) or (np is not None and isinstance(max_memory, np.bool_))
    if is_bool or not isinstance(max_memory, numbers.Real):
        raise TypeError(
            f"{name} must be a positive number of bytes (int, float or a NumPy scalar) or None, "
            f"got {type(max_memory).__name__} {max_memory!r}"
        )
    value = float(max_memory)
    if math.isnan(value) or not value > 0:
        raise ValueError(f"{name} must be a positive number of bytes or None, got {max_memory!r}")
    return value


def _dtype_name(dt) -> str:
    return str(dt).split(".")[-1]


#: ``str(dtype)`` by dtype: a NumPy dtype's ``__str__`` takes ~11 µs, and every
#: call's parameter-cache key spells its dtype (only a handful of dtypes exist)
_DTYPE_STR: dict = {}


def _dtype_str(dt) -> str:
    """``str(dt)``, memoised per dtype object (keyed with its type: dtypes of two
    libraries may hash alike, and array-api-strict warns when compared with NumPy's)."""
    key = (type(dt), dt)
    try:
        return _DTYPE_STR[key]
    except KeyError:
        s = _DTYPE_STR[key] = str(dt)
        return s
    except TypeError:  # pragma: no cover - an unhashable dtype object
        return str(dt)


def _bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _move_to(be: Backend, x, like_device=None):
    """Convert ``x`` to backend ``be``'s library (keeping dtype by name)."""
    return be.convert(x, dtype=be.dtype(_dtype_name(x.dtype)), device=like_device)


def cache_key(backend: str, xp, device, dtype) -> tuple:
    """The key of a parameter conversion: ``(backend, namespace, device, dtype)`` as
    strings (one spelling for network calls and curvature calls)."""
    return (backend, getattr(xp, "__name__", str(xp)), str(device), _dtype_str(dtype))


@dataclass(frozen=True)
class CallContext:
    """Everything the engine needs about one call: the resolved request (immutable;
    the planner settles ``mode``, ``route`` and ``training`` in a new one,
    :func:`hessquik_core.engine.plan.plan`)."""

    xp: Any
    be: Any
    x: Any
    d: int
    m: int
    mode: str
    gradient: bool
    hessian: bool
    laplacian: bool
    hessian_diagonal: bool
    divergence: bool = False
    V: Any = None
    #: :math:`\Delta^2 u` (the bi-Laplacian route, :mod:`hessquik_core.engine.routes.higher`)
    biharmonic: bool = False
    #: :math:`\partial^3 u[v,v,v]` / :math:`\partial^4 u[v,v,v,v]` along ``V`` (the Taylor route, same module)
    third_derivative: bool = False
    fourth_derivative: bool = False
    backend: str = "numpy"
    orig_x: Any = None
    #: the caller's backend when the call runs in another library, else ``None``
    native: Any = None
    #: a specialised sweep the planner chose (``hessquik_core.engine.highdim``), or ``""``
    route: str = ""
    #: how a recorded training step runs (``"analytic"`` / ``"taped"``) or ``None`` (an
    #: evaluation): :func:`~hessquik_core.engine.routes.analytic_step.training_kind`,
    #: set once by the planner, and followed by the sweep
    training: str | None = None

    @property
    def dtype(self):
        return self.x.dtype

    @property
    def device(self):
        return self.be.device_of(self.x)

    @property
    def itemsize(self) -> int:
        """Bytes per entry (float32 or float64), for the cost model."""
        size = getattr(self.dtype, "itemsize", None)  # NumPy, torch, CuPy, JAX dtypes
        if size is None:
            return 4 if "32" in _dtype_str(self.dtype) else 8
        return 4 if size == 4 else 8

    @property
    def cache_key(self):
        # a plain property (a few str() calls), not functools.cached_property:
        # its RLock is a graph break under torch.compile(fullgraph=True)
        return self.cache_parts()[0]

    def cache_parts(self):
        """``(cache_key, dtype, device)``, asking the array for its device once."""
        device = self.be.device_of(self.x)
        return cache_key(self.backend, self.xp, device, self.dtype), self.dtype, device

    @property
    def second_order(self) -> bool:
        return self.hessian or self.laplacian or self.hessian_diagonal

    @property
    def derivatives(self) -> bool:
        return (
            self.gradient
            or self.divergence
            or self.second_order
            or self.biharmonic
            or bool(self.taylor_order)
        )

    @property
    def taylor_order(self) -> int:
        """4 with ``fourth_derivative``, 3 with ``third_derivative`` only, else 0."""
        return 4 if self.fourth_derivative else (3 if self.third_derivative else 0)

    @property
    def k(self) -> int:
        """Number of tangent (forward) or output (backward) directions."""
        if self.V is not None:
            return self.V.shape[1]
        return self.d if self.mode == "forward" else self.m

    def batch(self, start: int, stop: int) -> CallContext:
        """The same call on ``x[start:stop]`` (for chunking)."""
        return replace(self, x=self.x[start:stop, ...])

    def seed_forward(self):
        """(1, k, d): identity (k = d) or Vᵀ."""
        xp = self.xp
        if self.V is None:
            return self.be.eye(self.d, dtype=self.dtype, device=self.device)[None, :, :]
        return xp.matrix_transpose(self.V)[None, :, :]

    def seed_backward(self):
        """(1, k, m): identity (k = m) or Vᵀ."""
        xp = self.xp
        if self.V is None:
            return self.be.eye(self.m, dtype=self.dtype, device=self.device)[None, :, :]
        return xp.matrix_transpose(self.V)[None, :, :]

    def finish(self, res):
        res.mode = self.mode
        if self.native is not None:
            # the call ran in another library: results go back to the caller's
            dev = self.native.device_of(self.orig_x)
            from .engine.result import FIELDS  # the engine package imports this module

            for name in FIELDS:
                a = getattr(res, name)
                if a is not None:
                    setattr(res, name, _move_to(self.native, a, dev))
        return res


@dataclass
class InputContext:
    """The resolved input of a call: ``x`` in the library the call runs in."""

    x: Any
    xp: Any
    be: Backend  # bound to ``xp``
    backend: str
    orig_x: Any
    user_be: Backend  # the caller's library, bound to its namespace
    converted: bool  # ``x`` was moved to another library

    @property
    def cache_key(self):
        return cache_key(self.backend, self.xp, self.be.device_of(self.x), self.x.dtype)


def resolve_input(net, x, backend, convert: bool = True) -> InputContext:
    """Validate ``x : (n, d)`` for ``net`` and move it to the backend that runs the call.

    ``backend=None`` keeps ``x``'s library; a backend that owns another
    library converts ``x`` to it (results are converted back by the caller);
    the generic backend runs on ``x``'s own namespace. ``convert=False``: ``InputContext.x``
    is a stand-in (a broadcast zero) of the converted ``x``'s shape, dtype and device."""
    if backend is not None and backend not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {backend!r}: expected one of {BACKEND_NAMES} or None")
    x = as_plain_array(x, "x")
    xp0 = namespace_of(x)
    d = net.in_features
    if x.ndim != 2:
        hint = ""
        if x.ndim == 1 and x.shape[0] == d:
            # a single point where a batch is needed (the network call itself takes one)
            hint = f": for a single point pass x[None], shape (1, {d})"
        raise ValueError(f"x must have shape (n, {d}), got shape {tuple(x.shape)} (ndim {x.ndim}){hint}")
    if x.shape[1] != d:
        raise ValueError(f"x must have shape (n, {d}): {d} features per row, got shape {tuple(x.shape)}")
    if not xp0.isdtype(x.dtype, "real floating"):
        raise TypeError(f"x must have a real floating dtype (float32 or float64), got {x.dtype}")
    native = backend_for(xp0)
    chosen = native if backend is None else get_backend(backend)
    # a backend that owns a library other than x's runs on a converted copy;
    # one that owns none (generic) runs on x's namespace
    converted = chosen.library is not None and chosen.library != native.library
    if converted:
        be = chosen
        zero = be.xp.zeros((), dtype=be.dtype(_dtype_name(x.dtype)))
        xc = _move_to(be, x) if convert else be.xp.broadcast_to(zero, (x.shape[0], d))
    else:
        xc, be = x, chosen.bind(xp0)
    return InputContext(xc, be.xp, be, chosen.name, x, native, converted)


def resolve_call(
    net,
    x,
    *,
    directions,
    mode,
    backend,
    gradient,
    hessian,
    laplacian,
    hessian_diagonal,
    divergence=False,
    biharmonic=False,
    third_derivative=False,
    fourth_derivative=False,
    admit=None,
) -> CallContext:
    """Validate a network call and build its :class:`CallContext`.

    ``mode="auto"`` is left for the caller to settle by the cost model,
    except when ``directions`` decide it (their first axis is ``d`` or ``m``).
    ``admit(ctx)`` refuses on a stand-in of ``x`` before ``x`` is converted to another library
    (:func:`~hessquik_core._inputs.admission`): a refused call never materialises ``x``."""
    divergence = _bool("divergence", divergence)
    biharmonic = _bool("biharmonic", biharmonic)
    third_derivative = _bool("third_derivative", third_derivative)
    fourth_derivative = _bool("fourth_derivative", fourth_derivative)
    gradient = _bool("gradient", gradient)
    hessian = _bool("hessian", hessian)
    laplacian = _bool("laplacian", laplacian)
    hessian_diagonal = _bool("hessian_diagonal", hessian_diagonal)
    x = as_plain_array(x, "x")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if biharmonic:
        from .engine.higher_steps import check_biharmonic_call, check_leaf  # the engine imports this module

        check_biharmonic_call(mode, directions, hessian, hessian_diagonal, divergence)

        for leaf in net._leaves():  # with hq.biharmonic's messages
            check_leaf(leaf, 4, "biharmonic")
    if third_derivative or fourth_derivative:
        from .engine.higher_steps import check_taylor_call  # the engine package imports this module

        others = (gradient, hessian, laplacian, hessian_diagonal, divergence, biharmonic)
        check_taylor_call(net, mode, directions, third_derivative, fourth_derivative, others)

    inp = resolve_input(net, x, backend, convert=admit is None)
    d, m = net.in_features, net.out_features
    xp, xc, be = inp.xp, inp.x, inp.be
    native = inp.user_be

    V = None
    if directions is not None:
        if isinstance(directions, (list, tuple)):
            V = xp.asarray(directions, dtype=xc.dtype, device=be.device_of(xc))
        else:
            directions = as_plain_array(directions, "directions")
            xpv = namespace_of(directions, "directions")
            if not xpv.isdtype(directions.dtype, "real floating"):
                raise TypeError(f"directions must have a real floating dtype, got {directions.dtype}")
            if _dtype_name(directions.dtype) != _dtype_name(x.dtype):
                raise TypeError(f"directions dtype {directions.dtype} differs from x dtype {x.dtype}")
            owner = backend_for(xpv)
            same = owner is native
            if not same and not owner.interchange:
                raise TypeError(
                    f"directions must be the same kind of array as x ({type(x).__module__}) or a "
                    f"NumPy array, got {type(directions).__module__}.{type(directions).__name__}"
                )
            if same and not inp.converted:
                V = directions
            else:
                V = be.convert(directions, dtype=xc.dtype, device=be.device_of(xc))
        if V.ndim != 2:
            raise ValueError(f"directions must be a matrix (d, k) or (m, k), got shape {tuple(V.shape)}")

    if divergence and d != m:
        raise ValueError(f"divergence needs as many outputs as inputs (d == m), got d={d}, m={m}")
    # with directions, their first axis picks the side they fit
    if mode == "auto" and V is not None:
        if V.shape[0] == d:
            mode = "forward"
        elif V.shape[0] == m:
            mode = "backward"
        else:
            raise ValueError(
                f"directions must have shape ({d}, k) (forward) or ({m}, k) (backward), got {tuple(V.shape)}"
            )
    if V is not None and divergence:
        raise ValueError(
            "divergence is the trace of the full Jacobian: it cannot be combined with directions"
        )
    if V is not None:
        need = d if mode == "forward" else m
        if V.shape[0] != need:
            raise ValueError(
                f"directions for mode={mode!r} must have shape ({need}, k), got {tuple(V.shape)}"
            )
    ctx = CallContext(
        xp=xp,
        be=be,
        x=xc,
        d=d,
        m=m,
        mode=mode,
        gradient=gradient,
        hessian=hessian,
        laplacian=laplacian,
        hessian_diagonal=hessian_diagonal,
        divergence=divergence,
        V=V,
        biharmonic=biharmonic,
        third_derivative=third_derivative,
        fourth_derivative=fourth_derivative,
        backend=inp.backend,
        orig_x=x,
        native=native if inp.converted else None,
    )
    if admit is not None and inp.converted:
        admit(ctx)  # refuses on shapes, before x is converted (else call() plans on x itself)
        ctx = replace(ctx, x=_move_to(be, x))
    return ctx
