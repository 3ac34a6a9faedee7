"""Parameter bookkeeping shared by layers and networks.

A module owns named parameters (``None`` where a parameter is switched off,
e.g. ``bias=False``) and named child modules. Keys of :meth:`state_dict` are
the dotted paths hessQuik uses (``'0.K'``, ``'1.0.layer.b'``), so weights
port one to one.

Parameters are stored once, in a *home* array of whatever library the user
gave (NumPy by default, read-only so that an in-place edit cannot bypass the
conversion cache). Each call converts them to the call's backend, device and
dtype; conversions are cached per ``(backend, device, dtype)`` and a cached
entry is reused only while the home array is the same object and, for
torch, has the same in-place version counter.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .backends import get_backend, to_numpy


def _library(a) -> str:
    return type(a).__module__.split(".")[0]


def _as_home(value, shape: tuple[int, ...], key: str):
    """Validate a parameter value and return the array to store."""
    if _library(value) == "numpy" or isinstance(value, (list, tuple, float, int)):
        arr = np.array(value, copy=True)
        if not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"parameter {key!r} must be a floating array, got dtype {arr.dtype}")
        arr.setflags(write=False)
    else:
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise TypeError(f"parameter {key!r} must be an array, got {type(value).__name__}")
        arr = value
        if "float" not in str(arr.dtype):
            raise TypeError(f"parameter {key!r} must be a floating array, got dtype {arr.dtype}")
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"parameter {key!r} must have shape {tuple(shape)}, got {tuple(arr.shape)}")
    return arr


class Module:
    """Base class: named parameters, children, state dicts, conversion cache."""

    def __init__(self) -> None:
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_shapes", {})
        object.__setattr__(self, "_children", {})
        object.__setattr__(self, "_cache", {})

    # -- parameter access --------------------------------------------------
    def _register(self, name: str, value, shape: tuple[int, ...] | None) -> None:
        self._shapes[name] = None if shape is None else tuple(shape)
        self._params[name] = None if value is None else _as_home(value, shape, name)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        if name in d.get("_params", {}):
            return d["_params"][name]
        if name in d.get("_children", {}):
            return d["_children"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name in self.__dict__.get("_params", {}):
            shape = self._shapes[name]
            if shape is None:
                raise ValueError(f"parameter {name!r} is switched off in this layer")
            self._params[name] = _as_home(value, shape, name)
            self._cache.clear()
        else:
            object.__setattr__(self, name, value)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """Yield ``(dotted_key, home_array)`` in a stable order."""
        for name, p in self._params.items():
            if p is not None:
                yield prefix + name, p
        for cname, child in self._children.items():
            yield from child.named_parameters(prefix + cname + ".")

    def parameters(self) -> list:
        """Home arrays of all parameters (torch tensors after ``to("torch")``)."""
        return [p for _, p in self.named_parameters()]

    def state_dict(self) -> dict:
        """Parameters by hessQuik key, e.g. ``{'0.K': ..., '0.b': ...}``."""
        return dict(self.named_parameters())

    def _slots(self, prefix: str = "") -> Iterator[tuple[str, Module, str]]:
        for name, p in self._params.items():
            if p is not None:
                yield prefix + name, self, name
        for cname, child in self._children.items():
            yield from child._slots(prefix + cname + ".")

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Set parameters from a mapping of hessQuik keys to arrays of any backend.

        Every value is checked (key known, shape equal, floating dtype) before
        anything is changed, so a failed load leaves the module untouched.
        """
        if not hasattr(state, "items"):
            raise TypeError(f"state must be a mapping of keys to arrays, got {type(state).__name__}")
        slots = {k: (mod, name) for k, mod, name in self._slots()}
        unknown = sorted(set(state) - set(slots))
        missing = sorted(set(slots) - set(state))
        if strict and (unknown or missing):
            raise ValueError(f"state_dict mismatch: unexpected keys {unknown}, missing keys {missing}")
        staged = []
        for key, value in state.items():
            if key not in slots:
                continue
            mod, name = slots[key]
            staged.append((mod, name, _as_home(value, mod._shapes[name], key)))
        for mod, name, arr in staged:
            mod._params[name] = arr
            mod._cache.clear()

    def modules(self) -> Iterator[Module]:
        yield self
        for child in self._children.values():
            yield from child.modules()

    # -- conversion ----------------------------------------------------------
    def to(self, backend: str = "numpy", *, device=None, dtype=None, requires_grad: bool = False):
        """Move the stored parameters (in place) to ``backend`` / ``device`` / ``dtype``.

        ``requires_grad=True`` (torch only) makes them leaf tensors that a
        torch optimizer can train. Returns ``self``.
        """
        be = get_backend(backend)
        if requires_grad and not be.autograd:
            raise ValueError("requires_grad=True needs backend='torch'")
        if be.host_storage and device is not None and str(device) != "cpu":
            raise ValueError(f"backend {backend!r} keeps parameters on the CPU, got device={device!r}")
        # ``dtype`` may be given as a name, a NumPy dtype or a torch/CuPy dtype: map it
        # by name to the target library so that e.g. ``to("torch", dtype=np.float32)`` works
        want = None if dtype is None else _dtype_name_checked(dtype)
        staged = []  # convert everything first: a failure leaves the module untouched
        for mod in self.modules():
            for name, p in mod._params.items():
                if p is None:
                    continue
                if be.host_storage:
                    host = to_numpy(p)
                    arr = np.array(host, dtype=np.dtype(want) if want else host.dtype)
                    arr.setflags(write=False)
                else:
                    dt = be.dtype(str(p.dtype).split(".")[-1] if want is None else want)
                    arr = be.home(be.convert(p, dtype=dt, device=device), requires_grad)
                staged.append((mod, name, arr))
        for mod, name, arr in staged:
            mod._params[name] = arr
        for mod in self.modules():
            mod._cache.clear()
        return self

    def _converted(self, key, be, xp, dtype, device) -> dict:
        """This module's own parameters in the call's backend/device/dtype."""
        entry = self._cache.get(key)
        out = {}
        fresh = {}
        for name, p in self._params.items():
            if p is None:
                out[name] = None
                continue
            version = getattr(p, "_version", None)
            if entry is not None and name in entry:
                home, ver, conv = entry[name]
                if home is p and ver == version:
                    out[name] = conv
                    fresh[name] = entry[name]
                    continue
            conv = be.convert(p, xp=xp, dtype=dtype, device=device)
            out[name] = conv
            # tensors that carry an autograd graph must be converted anew each
            # call: a cached conversion would hold a graph freed by .backward();
            # likewise a value converted inside jax.jit/grad is a tracer that
            # must not outlive its trace
            if not getattr(conv, "requires_grad", False) and not _is_tracer(conv):
                fresh[name] = (p, version, conv)
        self._cache[key] = fresh
        return out


def _is_tracer(a) -> bool:
    return any(c.__name__.endswith("Tracer") for c in type(a).__mro__)


def _dtype_name_checked(dtype) -> str:
    """Name (``'float32'``...) of a floating dtype given in any library's spelling."""
    if isinstance(dtype, str):
        name = dtype.split(".")[-1]
    elif isinstance(dtype, type) and issubclass(dtype, np.generic):
        name = np.dtype(dtype).name
    else:
        name = str(dtype).split(".")[-1]
    if name not in ("float16", "float32", "float64"):
        raise TypeError(f"dtype must be a floating dtype (float16, float32 or float64), got {dtype!r}")
    return name
