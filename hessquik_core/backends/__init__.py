"""Array-library backends: one object per library, declaring its capabilities.

The chain-rule engine is written once against the Python Array API standard.
What the standard lacks is supplied by a :class:`~hessquik_core.backends.base.Backend`
object, one small module per library, all with the same methods (the
opt_einsum / einops pattern):

``mm(a, b)``
    Contract the last axis of ``a`` with the first axis of the matrix ``b``,
    as one GEMM over all leading axes.
``addmm(c, a, b)``
    ``c + mm(a, b)``; torch fuses the sum into the GEMM (``beta = 1``).
``addcmul(acc, a, b)``
    ``acc + a * b``; mutable libraries write into ``acc``, which must be a
    temporary the engine owns (never a caller's array or a parameter).
``sum_squares(a, *, axis)``
    ``Σ a²`` over one axis, without storing the squares where the library
    can (NumPy and torch ``vecdot``).
``einsum(subscripts, a, b)``
    Two-operand Einstein summation (NumPy: cached contraction path).
``convert(a, *, dtype, device)``
    Move an array of *any* supported library into this backend.
``to_numpy(a)``
    Host copy as a NumPy array (for persistence and conversions).
``synchronize(device)``
    Block until queued device work is done (for timing).

and the capabilities the engine asks instead of names: ``mutable``,
``fuses``, ``cache_blocking(x, arrays)``, ``available_memory(device)``,
``records_autograd(arrays)``, ``requires_grad(a)``, ``autograd_enabled()``,
``is_tracing()`` (a compiler or functional transform traces the call),
``allocator_failure(err)``, and ``stacked_affine_sweep(...)`` (a custom-gradient
function for chains of affine layers: torch's analytic training step, which
receives plain arrays, activation objects and
:class:`~hessquik_core.backends.base.SweepLayer` flags, never layers).
Backends import nothing above :mod:`hessquik_core.carry` (``tests/test_import_graph.py``).

Modules are imported lazily: asking for the ``"torch"`` backend imports
torch, nothing else ever does. A new backend is one module ``_<name>.py``
here that defines ``BACKEND``, a :class:`~hessquik_core.backends.base.Backend`
owning the arrays of the library called ``<name>``; it is found by its file
name, without being imported until a call needs it. A module
``_<name>_<what>.py`` is a helper of backend ``<name>`` (torch's
``_torch_step.py`` and ``_torch_workspace.py``), not a backend.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from .base import Backend


def _discover() -> tuple[str, ...]:
    """Backend names from the module files ``_<name>.py`` of this package, found
    without importing them (importing a backend imports its library)."""
    found = {m.name[1:] for m in pkgutil.iter_modules(__path__) if m.name[:1] == "_" and m.name[:2] != "__"}
    # ``_<backend>_<what>.py`` is a helper module of backend ``<backend>`` (its kernels), no backend
    found = {f for f in found if not any(f.startswith(other + "_") for other in found)}
    known = ("numpy", "torch", "cupy")
    return (*[n for n in known if n in found], *sorted(found - {*known, "generic"}), "generic")


#: every backend: one module ``_<name>.py`` each, defining ``BACKEND``
BACKEND_NAMES = _discover()

_MODULES = {name: f"{__name__}._{name}" for name in BACKEND_NAMES}

#: backends already imported, by name (every call asks for its backend)
_LOADED: dict[str, Backend] = {}

#: the library whose arrays each backend owns (top-level module name): by
#: convention the backend's own name; the generic backend owns none
_LIBRARIES = {name: name for name in BACKEND_NAMES if name != "generic"}


def get_backend(name: str) -> Backend:
    """Return the backend called ``name`` (bound to its library's namespace;
    the generic one is bound to a call's namespace with :meth:`Backend.bind`).

    Raises
    ------
    ValueError
        If ``name`` is not one of ``"numpy"``, ``"torch"``, ``"cupy"``,
        ``"generic"``.
    """
    be = _LOADED.get(name) if isinstance(name, str) else None
    if be is not None:
        return be
    if not isinstance(name, str) or name not in _MODULES:
        raise ValueError(
            f"unknown backend {name!r}: expected one of {', '.join(map(repr, BACKEND_NAMES))} or None"
        )
    be = _LOADED[name] = _import(name).BACKEND
    return be


def _import(name: str):
    # import statements, not importlib.import_module: torch.compile traces an
    # import statement (even of a module not yet loaded) but graph-breaks on
    # importlib, which it never traces
    if name == "numpy":
        from . import _numpy

        return _numpy
    if name == "torch":
        from . import _torch

        return _torch
    if name == "cupy":
        from . import _cupy

        return _cupy
    if name == "generic":
        from . import _generic

        return _generic
    return importlib.import_module(_MODULES[name])  # a backend module added since (found by _discover)


def _imported(lib: str) -> bool:
    """Whether ``lib`` has been imported. ``sys.modules[lib] = None`` is Python's way of
    blocking an import (``import lib`` then raises ImportError): that is *not* imported."""
    return sys.modules.get(lib) is not None


def backend_for(xp) -> Backend:
    """The native backend of namespace ``xp``: the library's own where it has
    one (only libraries already imported can own ``xp``), else the generic
    backend bound to ``xp``."""
    for name, lib in _LIBRARIES.items():
        if _imported(lib):
            be = get_backend(name)
            if be.owns_namespace(xp):
                return be
    return get_backend("generic").bind(xp)


def owner_of(a) -> Backend:
    """The backend whose library ``a`` belongs to (generic for any other array)."""
    lib = type(a).__module__.split(".")[0]
    for name, owned in _LIBRARIES.items():
        if owned == lib:
            return get_backend(name)
    return get_backend("generic")


#: the home library of stored parameters and the host interchange format
_HOME = "numpy"


def home_backend() -> Backend:
    """The backend of the home library (NumPy): where parameters are stored, and what a
    request without arrays (``net.cost()``) is priced on."""
    return get_backend(_HOME)


def loaded() -> tuple[Backend, ...]:
    """The backends imported so far (asking never imports a library)."""
    return tuple(_LOADED.values())


def autograd_backend() -> Backend:
    """The first backend whose library records gradients (``autograd``), in the order
    of :data:`BACKEND_NAMES` (torch); for ``net.cost(..., training=True)``.

    Raises
    ------
    ValueError
        If no installed library has autograd.
    """
    for name in BACKEND_NAMES:
        try:
            be = get_backend(name)
        except ImportError:
            continue
        if be.autograd:
            return be
    raise ValueError("training=True prices an autograd training step; no installed backend has autograd")


def model_backend(obj) -> Backend | None:
    """The backend of the library whose model ``obj`` is (a ``torch.nn.Module``:
    the torch backend), ``None`` for anything else; only imported libraries are asked."""
    for name, lib in _LIBRARIES.items():
        if _imported(lib) and get_backend(name).is_model(obj):
            return get_backend(name)
    return None


#: device names that ``Module.to`` reads as a backend's devices: torch's spelling
_DEVICE_NAMES = {"cpu": "torch", "cuda": "torch", "mps": "torch", "xpu": "torch", "meta": "torch"}


def device_backend(obj) -> tuple[Backend, object] | None:
    """``(backend, device)`` when ``obj`` is a device object of an imported library
    or a device name (``"cuda:0"``: torch's), else ``None``.

    Raises
    ------
    ValueError
        For a device name whose library is not installed or that the library refuses.
    """
    if isinstance(obj, str):
        name = _DEVICE_NAMES.get(obj.split(":")[0])
        if name is None:
            return None
        try:
            be = get_backend(name)
        except ImportError:
            raise ValueError(f"device {obj!r} names a {name} device, but {name} is not installed") from None
        return be, be.as_device(obj)
    be = owner_of(obj)
    dev = None if be.library is None else be.as_device(obj)
    return None if dev is None else (be, dev)


def to_numpy(a):
    """Host copy of an array of any supported library, as a NumPy array."""
    if type(a).__module__.split(".")[0] == "numpy":
        import numpy as np

        if isinstance(a, np.ndarray):
            return a
    return owner_of(a).to_numpy(a)


__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "autograd_backend",
    "backend_for",
    "device_backend",
    "get_backend",
    "home_backend",
    "loaded",
    "model_backend",
    "owner_of",
    "to_numpy",
]
