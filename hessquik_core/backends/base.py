"""The backend contract: one object per array library, with its capabilities.

The chain-rule engine is written once against the Python Array API
standard; what the standard lacks is supplied by a :class:`Backend`, and
every decision that depends on the library (may results be written in
place? does a compiler fuse element-wise work? how much memory is free?)
is asked of the backend's *capabilities*, never of its name.

A backend object is *bound* to one Array-API namespace (``backend.xp``):
NumPy, torch and CuPy each have one; the generic backend is bound to the
namespace of the call (array-api-strict, ``jax.numpy``, ...) by
:meth:`Backend.bind`. The engine hands the bound object to the layers as
``ops``: ``ops.xp`` is the namespace, ``ops.mm(a, b)`` the contraction.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Protocol

# re-exported: the switches' historic home (routes and backends import them from here)
from .switches import SWITCHES as SWITCHES
from .switches import Switches as Switches


class SweepLayer(NamedTuple):
    r"""One layer :math:`f(u) = [u +]\, h\,\sigma(uM + b)` of a stacked affine sweep,
    as plain data (:meth:`~hessquik_core.backends.Backend.stacked_affine_sweep`)."""

    #: the activation: ``act(z, 2, xp=None) -> (σ, σ', σ'')`` and
    #: ``act.derivatives(z, 3, value=σ(z)) -> (σ, σ', σ'', σ''')``
    act: Any
    #: ``σ`` is the identity (its derivatives need not be formed)
    linear: bool
    #: ``h``
    scale: float = 1.0
    #: the identity path ``u +`` (a residual layer, ``p == q``)
    residual: bool = False


class Backend:
    """Operations the Array API standard lacks, and what the library can do.

    Capabilities (class attributes)
    -------------------------------
    name : str
        The ``backend=`` keyword that selects it.
    library : str or None
        Top-level module of the arrays it owns (``"numpy"``); ``None`` for
        the generic backend, which owns no library.
    mutable : bool
        Arrays may be written in place: engine-owned temporaries are
        updated in place (``addcmul``) and chunked results are written into
        preallocated arrays. Immutable libraries get fresh arrays.
    interchange : bool
        Its arrays are the host interchange format that every call accepts
        besides its own library's (NumPy: ``directions`` may be NumPy for a
        torch ``x``).
    host_storage : bool
        ``Module.to(name)`` keeps parameters as read-only NumPy home arrays
        (converted per call) rather than as this library's arrays.
    autograd : bool
        The library records gradients: ``Module.to(name, requires_grad=True)``
        makes trainable leaves.
    dask_chunks : bool
        Its arrays can be the chunks of a Dask array that :mod:`hessquik_core.dask`
        evaluates natively, task by task.
    """

    name: str = "backend"
    library: str | None = None
    mutable: bool = False
    interchange: bool = False
    host_storage: bool = False
    autograd: bool = False
    dask_chunks: bool = False

    def __init__(self, xp: Any = None) -> None:
        self.xp = xp
        self._bound: dict = {}

    def __repr__(self) -> str:
        return f"<{self.name} backend on {getattr(self.xp, '__name__', self.xp)}>"

    # -- binding -------------------------------------------------------------
    def bind(self, xp) -> Backend:
        """This backend bound to namespace ``xp`` (cached)."""
        if xp is self.xp:
            return self
        key = id(xp)
        out = self._bound.get(key)
        if out is None or out.xp is not xp:
            out = self._bound[key] = type(self)(xp)
        return out

    @classmethod
    def owns_namespace(cls, xp) -> bool:
        """Is ``xp`` this library's own namespace (so ``backend=None`` picks it)?"""
        return False

    # -- arrays of this library ------------------------------------------------
    def namespace(self, a) -> Any:
        """The Array-API namespace of ``a``, one of this library's arrays (``TypeError``
        if there is none). Default: array-api-compat's; a library it does not know
        overrides this in its own backend file."""
        import array_api_compat as aac

        return aac.array_namespace(a)

    def device_of(self, a) -> Any:
        """The device ``a`` lives on (array-api-compat's ``device``, by default)."""
        import array_api_compat as aac

        return aac.device(a)

    # -- capabilities that depend on the call ---------------------------------
    @property
    def fuses(self) -> bool:
        """Does a compiler fuse chains of element-wise operations (XLA)?
        The cost model then charges memory traffic less."""
        return False

    def cache_blocking(self, x, arrays) -> bool:
        """May a large call on ``x`` run in batch blocks that stay in cache?

        True for eager CPU libraries; ``arrays`` are the call's other
        inputs and parameters (a library that records a graph over them
        may refuse)."""
        return False

    def available_memory(self, device) -> int:
        """Free memory (bytes) on ``device``: host RAM unless overridden."""
        return host_memory()

    def host_resident(self, device) -> bool:
        """Do arrays on ``device`` live in host memory, so that a host round trip
        (SciPy's ARPACK on every Lanczos step) costs no bus transfer?"""
        return True

    def writable(self, a) -> bool:
        """May the engine write results into ``a`` (an array it allocated) in place?"""
        return bool(self.mutable)

    def memory_span(self, a) -> tuple[int, int] | None:
        """``(start, stop)``: the byte addresses ``a`` may touch, for ``out=``'s aliasing
        check; ``None`` where the library does not say (no check)."""
        return None

    def records_autograd(self, arrays) -> bool:
        """Would a call on ``arrays`` be recorded by this library's autograd (so that
        its results must be fresh graph nodes, not ``out=`` buffers)?"""
        return False

    def cacheable(self, a) -> bool:
        """May a converted parameter ``a`` be kept between calls? Not while it carries
        an autograd graph (freed by ``.backward()``) or is a tracer of a compiling
        transformation (``jax.jit``), which must not outlive its trace."""
        return not getattr(a, "requires_grad", False) and not any(
            c.__name__.endswith("Tracer") for c in type(a).__mro__
        )

    def as_device(self, obj):
        """``obj`` as one of this library's device objects (a device object or, for
        the library that owns device names, a name such as ``"cuda:0"``), else ``None``."""
        return None

    def is_model(self, obj) -> bool:
        """Is ``obj`` a model of this library that :mod:`hessquik_core.interop`
        converts (a ``torch.nn.Module``)? Asked of imported libraries only."""
        return False

    def requires_grad(self, a) -> bool:
        """Is ``a`` marked for differentiation by this library's autograd (a trainable
        leaf or a node of a recorded graph), whether or not recording is on now? (The
        generic backend may hold another library's arrays: asked of the array.)"""
        return bool(getattr(a, "requires_grad", False))

    def detached(self, a):
        """``a`` without its autograd graph (itself where it has none)."""
        return a.detach() if self.requires_grad(a) else a

    def autograd_enabled(self) -> bool:
        """Does this library's autograd record operations now (torch: grad mode)?"""
        return False

    def is_tracing(self) -> bool:
        """Is a tracing transformation of this library active (``torch.compile``,
        ``torch.func``'s vmap/grad)? Routes with a custom-gradient function step
        aside then: the transformation traces the generic sweep."""
        return False

    def allocator_failure(self, err: BaseException) -> bool:
        """Is ``err`` a report that an allocation failed (the planner reports it as a
        :class:`~hessquik_core.engine.plan.MemoryBudgetError`)? ``MemoryError``, and the
        ``RuntimeError`` by which eager libraries' allocators say so (torch's CPU
        allocator: "not enough memory"; CUDA: "out of memory"): any library's, since a
        call may convert between libraries."""
        if isinstance(err, MemoryError):
            return True
        if not isinstance(err, RuntimeError):
            return False
        text = str(err).lower()
        return "out of memory" in text or "not enough memory" in text

    #: :meth:`stacked_affine_sweep` is implemented (a custom-gradient function with an
    #: analytic backward: the route :mod:`hessquik_core.engine.routes.analytic_step`)
    stacked_sweep: bool = False

    def stacked_affine_sweep(self, layers, laplacian: bool, x, seed, weights):
        r"""The forward sweep of a chain of affine layers as one recorded operation
        whose backward pass is the adjoint of the forward recurrences.

        Parameters
        ----------
        layers : sequence of hessquik_core.backends.base.SweepLayer
            Per layer :math:`f(u) = [u +]\, h\,\sigma(u M + b)`, as plain data (the
            activation object, whether it is linear, ``h``, the identity path).
        laplacian : bool
            Whether the Laplacian row is carried.
        x : array (n, d)
        seed : array (1, k, d)
            The input tangents (identity, or the directions transposed).
        weights : sequence of arrays
            ``M_1, b_1, M_2, b_2, ...`` (``b_i`` may be ``None``).

        Returns
        -------
        array (1 + k [+ 1], n, m)
            The stack ``[u; ∂u; Δu]`` of the output.
        """
        raise NotImplementedError(f"backend {self.name!r} has no stacked affine sweep")

    def workspace_bytes(self) -> int:
        """Bytes held between calls by this backend's step workspace (0: none)."""
        return 0

    def release_workspace(self) -> None:
        """Drop the buffers of the step workspace (buffers in use keep their memory)."""

    # -- the operations -------------------------------------------------------
    def mm(self, a, b, *, xp=None):
        """Contract the last axis of ``a`` with the first of the matrix ``b``, one GEMM."""
        raise NotImplementedError

    def addmm(self, c, a, b, *, xp=None):
        """``c + mm(a, b)``."""
        return c + self.mm(a, b, xp=xp)

    def linear(self, u, K, b, *, xp=None):
        """``u @ K + b`` for ``u : (n, p)``, ``K : (p, q)``, ``b : (q,)`` or ``None``
        (a layer's pre-activation; torch: one ``addmm``, as ``nn.Linear``)."""
        z = self.mm(u, K, xp=xp)
        return z if b is None else z + b

    def log_softmax(self, F):
        """``log softmax`` over the last axis of ``F : (n, m)``: ``(F - max) - log Σ exp(F - max)``
        (torch: one kernel)."""
        xp = self.xp
        Fs = F - xp.max(F, axis=-1, keepdims=True)
        return Fs - xp.log(xp.sum(xp.exp(Fs), axis=-1, keepdims=True))

    def cross_entropy_labels(self, F, y, weight, ignore_index: int, reduction: str):
        r"""Cross-entropy of logits ``F : (n, m)``, integer labels ``y : (n,)``, by the library's kernels:
        ``(C, ∂C/∂F, D)``, :math:`C = \frac1D\sum_n a_n\omega_{y_n}(\mathrm{lse}(f_n) - f_{ny_n})`,
        :math:`a_n = 0` where :math:`y_n` is ``ignore_index`` (else 1), class weights :math:`\omega` (host
        ``weight`` (m,) or ``None``), :math:`D = \sum_n a_n\omega_{y_n}` (``"mean"``; 1 for ``"sum"``).
        ``None`` without such kernels (the default), or for a label outside ``[0, m)`` that is not
        ``ignore_index`` (the caller's general route names it). torch: ``nll_loss`` & co."""
        return None

    def tanh_vjp(self, t, dl, *, xp=None):
        """``(1 - t²) * dl``: tanh's backward step from its value ``t`` (torch: one fused kernel)."""
        return (1.0 - t * t) * dl

    def mm_into(self, a, b, out):
        """``out[...] = a @ b`` for 2-D ``a``, ``b`` (mutable libraries; NumPy and torch
        write the GEMM's result there directly, no temporary)."""
        out[...] = self.mm(a, b)

    def sum_into(self, a, out):
        """``out[...] = Σ_n a[n]`` (the sum over axis 0; mutable libraries)."""
        out[...] = self.xp.sum(a, axis=0)

    def addcmul(self, acc, a, b, *, xp=None):
        """``acc + a * b``; a mutable library writes into ``acc``, which must be
        a temporary the engine owns (never a caller's array or a parameter)."""
        return acc + a * b

    def sum_squares(self, a, *, axis, xp=None):
        """``Σ a²`` over ``axis``, without storing the squares where the library can."""
        xp = self.xp if xp is None else xp
        return xp.sum(a * a, axis=axis)

    def einsum(self, subscripts, a, b, *, xp=None):
        """Two-operand Einstein summation."""
        raise NotImplementedError

    def erf(self, a, *, xp=None):
        """``erf`` elementwise. The standard has none (nor has NumPy, and SciPy is
        never imported): standard functions only, a few ulps in float64
        (``hessquik_core._special``); libraries with a native kernel override it."""
        from .._special import erf

        return erf(a, xp=self.xp if xp is None else xp)

    def erfc(self, a, *, xp=None):
        """``erfc`` elementwise, full relative precision in the upper tail."""
        from .._special import erfc

        return erfc(a, xp=self.xp if xp is None else xp)

    def convert(self, a, *, xp=None, dtype, device=None):
        """An array of *any* supported library as this backend's array."""
        raise NotImplementedError

    def dtype(self, name: str):
        """The library's floating dtype called ``name`` (``"float32"``)."""
        return getattr(self.xp, name)

    def to_numpy(self, a):
        """Host copy of one of this library's arrays, as a NumPy array."""
        import numpy as np

        return np.asarray(a)

    def home(self, a, requires_grad: bool = False):
        """A converted parameter as a home array of this library (``Module.to``)."""
        return a

    def view(self, a, shape):
        """A view of ``a`` with ``shape`` that writes through to ``a``, or ``None``."""
        return None

    def multiply(self, a, b, *, out):
        """``out[...] = a * b`` without a temporary (mutable libraries)."""
        raise NotImplementedError

    def eye(self, k: int, *, dtype, device):
        """The ``(k, k)`` identity (the tangent seed of a call without directions)."""
        return self.xp.eye(k, dtype=dtype, device=device)

    def set_rows(self, buf, start: int, a):
        """``buf`` with rows ``start:start + len(a)`` replaced by ``a``, written in
        place (chunked results are assembled so, never concatenated); returns
        the array to use from then on (``buf`` itself where it is mutable)."""
        buf[start : start + a.shape[0], ...] = a
        return buf

    def synchronize(self, device=None) -> None:
        """Block until queued device work is done (for timing)."""


class Ops(Protocol):
    """What rules, layers and routes may ask of ``ops``, the backend bound to a call's
    namespace (:class:`Backend` satisfies it; checked by mypy below). Layer and rule
    code uses the namespace ``xp`` for everything the Array API standard has and these
    operations for what it lacks; routes also ask the capabilities."""

    #: the Array-API namespace of the call
    xp: Any
    name: str
    #: engine-owned temporaries may be written in place
    mutable: bool
    #: a custom-gradient stacked affine sweep exists (:meth:`Backend.stacked_affine_sweep`)
    stacked_sweep: bool

    def mm(self, a: Any, b: Any, *, xp: Any = None) -> Any: ...
    def addmm(self, c: Any, a: Any, b: Any, *, xp: Any = None) -> Any: ...
    def addcmul(self, acc: Any, a: Any, b: Any, *, xp: Any = None) -> Any: ...
    def linear(self, u: Any, K: Any, b: Any, *, xp: Any = None) -> Any: ...
    def tanh_vjp(self, t: Any, dl: Any, *, xp: Any = None) -> Any: ...
    def log_softmax(self, F: Any) -> Any: ...
    def cross_entropy_labels(self, F: Any, y: Any, weight: Any, ignore_index: int, reduction: str) -> Any: ...
    def mm_into(self, a: Any, b: Any, out: Any) -> None: ...
    def sum_into(self, a: Any, out: Any) -> None: ...
    def sum_squares(self, a: Any, *, axis: int, xp: Any = None) -> Any: ...
    def einsum(self, subscripts: str, a: Any, b: Any, *, xp: Any = None) -> Any: ...
    def view(self, a: Any, shape: Any) -> Any: ...
    def multiply(self, a: Any, b: Any, *, out: Any) -> Any: ...
    def eye(self, k: int, *, dtype: Any, device: Any) -> Any: ...
    def records_autograd(self, arrays: Any) -> bool: ...
    def requires_grad(self, a: Any) -> bool: ...
    def autograd_enabled(self) -> bool: ...
    def is_tracing(self) -> bool: ...
    def stacked_affine_sweep(self, layers: Any, laplacian: bool, x: Any, seed: Any, weights: Any) -> Any: ...


def _backend_is_ops(be: Backend) -> Ops:
    """Static check (mypy): every backend provides :class:`Ops`."""
    return be


def strided_span(start: int, itemsize: int, shape, strides) -> tuple[int, int] | None:
    """``(start, stop)`` byte range of a strided array (``strides`` in bytes)."""
    if any(s == 0 for s in shape):
        return None
    lo = hi = 0  # byte offsets of the lowest and highest element
    for extent, stride in zip(shape, strides):
        step = (extent - 1) * stride
        lo, hi = (lo + step, hi) if step < 0 else (lo, hi + step)
    return start + lo, start + hi + itemsize


class InPlaceUpdates:
    """``addmm`` / ``addcmul`` for mutable libraries whose arrays update in place
    with the ``+=`` operator (NumPy, CuPy): mix in before :class:`Backend`."""

    def addmm(self, c, a, b, *, xp=None):
        """``c + a @ b`` (``c`` has the result's shape); the sum is taken in place
        in the GEMM's fresh output, so no third array is allocated."""
        out = self.mm(a, b)
        out += c
        return out

    def addcmul(self, acc, a, b, *, xp=None):
        """``acc + a * b``, written into ``acc`` (a temporary the engine owns)."""
        acc += a * b
        return acc


def host_memory() -> int:
    """Available host RAM in bytes."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - non-Linux
        pass
    try:  # pragma: no cover - non-Linux
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 8 * 2**30
