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

from .backends import get_backend, owner_of, to_numpy


def _as_home(value, shape: tuple[int, ...], key: str):
    """Validate a parameter value and return the array to store."""
    # host data (NumPy, the interchange format, or Python numbers) is stored as a read-only copy
    if isinstance(value, (list, tuple, float, int)) or owner_of(value).interchange:
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
        # names of frozen parameters ("buffers"): saved in state_dict and used by
        # every call, but not trained (absent from parameters() and curvature)
        object.__setattr__(self, "_frozen", set())

    # -- parameter access --------------------------------------------------
    def _register(self, name: str, value, shape: tuple[int, ...] | None, *, trainable: bool = True) -> None:
        """Register parameter ``name`` (``value=None``: switched off). ``trainable=False``
        makes it a frozen parameter (a buffer): in :meth:`state_dict` (saved,
        loaded) and in every call's ``params``, but not in :meth:`parameters`
        (so neither optimizers nor :mod:`hessquik_core.curvature` see it)."""
        self._shapes[name] = None if shape is None else tuple(shape)
        if value is not None and shape is None:
            raise TypeError(f"parameter {name!r} is switched off (no shape) and takes no value")
        self._params[name] = None if value is None or shape is None else _as_home(value, shape, name)
        if trainable:
            self._frozen.discard(name)
        else:
            self._frozen.add(name)

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
        """Yield ``(dotted_key, home_array)`` of the trainable parameters in a stable
        order (``state_dict`` order without the frozen ones)."""
        for key, mod, name in self._slots(prefix):
            if name not in mod._frozen:
                yield key, mod._params[name]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """Yield ``(dotted_key, home_array)`` of the frozen parameters (``trainable=False``)."""
        for key, mod, name in self._slots(prefix):
            if name in mod._frozen:
                yield key, mod._params[name]

    def parameters(self) -> list:
        """Home arrays of all parameters (torch tensors after ``to("torch")``)."""
        return [p for _, p in self.named_parameters()]

    def state_dict(self, *, copy: bool = False) -> dict:
        """Parameters by hessQuik key, e.g. ``{'0.K': ..., '0.b': ...}``, frozen ones included.

        The arrays are the module's own (no copy). NumPy parameters are stored
        read-only: the module converts each parameter once per (backend,
        device, dtype) and caches the result, and a write into the stored array
        would silently leave those converted copies stale. Change parameters
        with :meth:`load_state_dict` (or train them as torch tensors,
        ``net.to("torch", requires_grad=True)``). ``copy=True`` returns writable
        copies instead (e.g. for ``torch.from_numpy``, which warns on read-only
        arrays); writing into them does not change the module.
        """
        if not isinstance(copy, bool):
            raise TypeError(f"copy must be True or False, got {copy!r}")
        own = {key: mod._params[name] for key, mod, name in self._slots()}
        if not copy:
            return own
        return {key: _writable_copy(a) for key, a in own.items()}

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
    def to(self, backend: Any = None, dtype: Any = None, *, device=None, requires_grad: bool | None = None):
        """Move the stored parameters (in place) to a backend, device and/or dtype.

        Accepts hessquik-core's spelling and torch's:

        * ``to("numpy")``, ``to("torch")``, ``to("cupy")``, ``to("generic")``:
          a backend by name (``device=`` / ``dtype=`` optional).
        * ``to("cpu")``, ``to("cuda")``, ``to("cuda:0")``, ``to("mps")``,
          ``to(torch.device(...))``, ``to(device="cuda")``: torch tensors on
          that device (device strings name torch devices).
        * ``to(torch.float32)``, ``to(np.float32)``, ``to("float32")``,
          ``to(dtype=...)``: convert the dtype, keeping each parameter's
          library (and device): NumPy parameters become NumPy arrays of the
          matching NumPy dtype, torch tensors torch tensors.
        * ``to("cuda", torch.float32)``, ``to("torch", torch.float64)``:
          both at once.
        * ``to()`` with nothing: NumPy (hessquik-core's home library).

        ``requires_grad=True`` (torch only) makes the parameters leaf
        tensors that a torch optimizer can train; ``False`` detaches them;
        ``None`` (default) keeps each tensor's flag when the parameters stay
        torch tensors. The parameters are new tensors afterwards (as after
        ``torch.nn.Module.to`` across devices): build the optimizer after
        moving. Returns ``self``.

        Raises
        ------
        ValueError
            For an unknown backend or device name, or a device the backend
            cannot hold parameters on.
        TypeError
            For a non-floating dtype or an argument that is neither a
            backend, a device nor a dtype.
        """
        name, device, dtype = _to_request(backend, dtype, device)
        # ``dtype`` may be given as a name, a NumPy dtype or a torch/CuPy dtype: map it
        # by name to the target library so that e.g. ``to("torch", dtype=np.float32)`` works
        want = None if dtype is None else _dtype_name_checked(dtype)
        staged = []  # convert everything first: a failure leaves the module untouched
        for mod in self.modules():
            for pname, p in mod._params.items():
                if p is None:
                    continue
                # a dtype-only request keeps each parameter's own library
                be = get_backend(name) if name is not None else _home_backend(p)
                if requires_grad and not be.autograd:
                    raise ValueError(
                        f"requires_grad=True needs backend='torch', got backend {be.name!r} "
                        f"(parameter {pname!r} is a {type(p).__module__}.{type(p).__name__})"
                    )
                if be.host_storage and device is not None and str(device) != "cpu":
                    raise ValueError(
                        f"backend {be.name!r} keeps parameters on the CPU, got device={device!r}"
                    )
                if be.host_storage:
                    host = to_numpy(p)
                    arr = np.array(host, dtype=np.dtype(want) if want else host.dtype)
                    arr.setflags(write=False)
                else:
                    dt = be.dtype(str(p.dtype).split(".")[-1] if want is None else want)
                    grad = (
                        owner_of(p).requires_grad(p) if requires_grad is None else requires_grad
                    ) and pname not in mod._frozen
                    dev = device if device is not None or name is not None else getattr(p, "device", None)
                    try:
                        arr = be.home(be.convert(p, dtype=dt, device=dev), grad)
                    except (AssertionError, RuntimeError) as err:
                        # torch without CUDA raises a bare AssertionError ("Torch not compiled
                        # with CUDA enabled"); a missing device index a RuntimeError
                        raise ValueError(
                            f"cannot move the parameters to device {str(dev)!r} with backend "
                            f"{be.name!r}: the device is not available here ({type(err).__name__}: "
                            f"{err}); check e.g. torch.cuda.is_available(), or keep device='cpu'"
                        ) from err
                staged.append((mod, pname, arr))
        for mod, pname, arr in staged:
            mod._params[pname] = arr
        for mod in self.modules():
            mod._cache.clear()
        return self

    def _converted(self, key, be, xp, dtype, device) -> dict:
        """This module's own parameters in the call's backend/device/dtype."""
        entry = self._cache.get(key)
        out: dict[str, Any] = {}
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
            # tensors that carry an autograd graph (or tracers of jax.jit) must be
            # converted anew each call: the backend says which may be kept
            if be.cacheable(conv):
                fresh[name] = (p, version, conv)
        self._cache[key] = fresh
        return out


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


_FLOAT_NAMES = ("float16", "float32", "float64")


def _is_dtype(obj) -> bool:
    if isinstance(obj, str):
        return obj.split(".")[-1] in _FLOAT_NAMES or obj.split(".")[-1] in ("int32", "int64", "bool")
    if isinstance(obj, np.dtype) or (isinstance(obj, type) and issubclass(obj, np.generic)):
        return True
    return type(obj).__name__ == "dtype"  # torch.dtype, cupy/jax dtypes (NumPy's)


def _device(obj):
    """``(backend name, device)`` if ``obj`` is or names a device (``"cuda:0"``,
    ``torch.device(...)``), else ``None``."""
    from .backends import device_backend

    found = device_backend(obj)
    return None if found is None else (found[0].name, found[1])


def _to_request(target, dtype, device):
    """Sort ``Module.to``'s arguments into ``(backend name or None, device, dtype)``.

    A backend name of ``None`` means "keep each parameter's library" (a
    dtype-only request); nothing at all means NumPy.
    """
    from .backends import BACKEND_NAMES

    name = None
    if target is not None:
        if isinstance(target, str) and target in BACKEND_NAMES:
            name = target
        elif _is_dtype(target):
            if dtype is not None:
                raise TypeError(f"dtype given twice: {target!r} and dtype={dtype!r}")
            dtype = target
        else:
            dev = _device(target)
            if dev is None and not isinstance(target, str):
                raise TypeError(
                    f"to() takes a backend name, a device or a dtype, got {type(target).__name__} {target!r}"
                )
            if dev is None:
                raise ValueError(
                    f"unknown backend or device {target!r}: expected a backend "
                    f"({', '.join(map(repr, BACKEND_NAMES))}), a torch device ('cpu', 'cuda', "
                    f"'cuda:0', 'mps', torch.device(...)) or a floating dtype"
                )
            if device is not None:
                raise TypeError(f"device given twice: {target!r} and device={device!r}")
            name, device = dev
    if name is None and device is not None:
        dev = _device(device)
        if dev is None:
            raise ValueError(
                f"device={device!r} without a backend must name a torch device ('cpu', 'cuda', "
                f"'cuda:0', 'mps' or a torch.device); for another library pass its backend, "
                f"e.g. to('cupy', device=...)"
            )
        name, device = dev
    if name is None and dtype is None:
        name = "numpy"
    return name, device, dtype


def _home_backend(p):
    """The backend a parameter's own library belongs to (host storage for others)."""
    from .backends import home_backend, owner_of

    be = owner_of(p)
    return home_backend() if be.library is None else be


def _writable_copy(a):
    """A writable copy of a parameter in its own library (torch: a detached clone)."""
    if isinstance(a, np.ndarray):
        return np.array(a, copy=True)  # a fresh array owns its data: writable
    if callable(getattr(a, "detach", None)):
        return a.detach().clone()
    import array_api_compat as aac

    return aac.array_namespace(a).asarray(a, copy=True)
