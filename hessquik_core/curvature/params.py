r"""Derivatives of a training loss with respect to the network parameters, without AD.

For data :math:`(x_n, y_n)_{n=1}^N` and a :class:`~hessquik_core.curvature.losses.Loss`
the training loss is :math:`C(\theta) = w\sum_n \ell(f(x_n;\theta), y_n)` with
:math:`w = 1/N` (``reduction="mean"``) or 1 (``"sum"``). This module gives

* the gradient :math:`\nabla C` and the per-example gradients
  :math:`\nabla_\theta \ell_n` (rows of an ``(N, P)`` array, *without* the
  factor :math:`w`),
* products with the exact Hessian :math:`H = \nabla^2 C` (Pearlmutter's
  R-operator, worked out per layer), with the generalised Gauss–Newton
  matrix :math:`G_{GN} = w \sum_n J_n^\top \nabla_f^2\ell_n\, J_n`
  (:math:`J_n = \partial f_n/\partial\theta`), and with the empirical Fisher
  / outer-product matrix :math:`G = \frac1N \sum_n \nabla\ell_n \nabla\ell_n^\top`
  (always :math:`1/N`, whatever the reduction; :math:`G \ne \nabla C\,\nabla C^\top`),
* those matrices as operators (matvec, dense assembly in column blocks of
  products under a memory budget, mini-batch accumulation).

``net`` may also be a torch ``nn.Sequential`` (or a single supported torch
module): it is converted once with :func:`hessquik_core.from_torch` (weights
copied) and the parameter vector is that of the converted network, whose
``K`` of a ``Linear`` layer is torch's ``weight`` transposed, see
:class:`ParameterLayout`.

Every layer owns its parameter derivatives (``param_vjp``, ``param_rop_forward``,
``param_rop_backward`` in :mod:`hessquik_core.layers`); this module only composes
them. Parameter order is ``net.state_dict()`` order; each parameter is
flattened row-major (C order), see :class:`ParameterLayout`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import array_api_compat as aac
import numpy as np

from .._array import _dtype_name, as_plain_array, check_max_memory, namespace_of, resolve_input
from .._dask_hook import dask_dispatch
from .._progress import progress_bar
from ..backends import backend_for
from ..rules.directions import fill_rows
from .losses import Loss, get_loss

__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "LinearOperatorBase",
    "ParameterLayout",
    "aslinearoperator",
    "empirical_fisher",
    "empirical_fisher_operator",
    "empirical_fisher_vp",
    "flatten_parameters",
    "ggn",
    "ggn_operator",
    "ggn_vp",
    "gradient",
    "hessian",
    "hessian_operator",
    "hvp",
    "parameter_layout",
    "per_example_gradients",
    "value_and_gradient",
]

DEFAULT_MEMORY_BUDGET = 2**28  # bytes of work arrays per block of Hessian-vector products


# --------------------------------------------------------------------------
# parameter layout: per-layer parameters <-> one vector of length P
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterLayout:
    """Where each parameter lives in the flat vector :math:`\\theta \\in \\mathbb{R}^P`.

    ``theta = concat([ravel(p) for p in state_dict().values()])``: parameters
    in ``state_dict`` order (``'0.K', '0.b', '1.K', ...``; switched-off ones
    absent), each flattened row-major. Flat arrays carry the parameter axis
    last, so per-example gradients ``(N, P)`` unflatten to ``(N, *shape)``.

    **torch's order.** A ``Linear`` layer's weight ``K`` is stored
    ``(in, out)``, the transpose of torch's ``weight`` ``(out, in)`` (so a
    layer computes ``u @ K + b``). To read an eigenvector (or any flat
    vector) in the order of a torch model converted by
    :func:`hessquik_core.from_torch`, unflatten it and transpose the
    ``K`` blocks: ``layout.unflatten(v)["0.K"].T`` is the direction of
    torch's ``0.weight``, ``layout.unflatten(v)["0.b"]`` that of ``0.bias``.

    Attributes
    ----------
    keys : tuple of str
        Parameter keys in ``state_dict`` order.
    shapes : tuple of tuple of int
        Shape of each parameter.
    offsets : tuple of int
        Start of each parameter in ``theta``.
    sizes : tuple of int
        Number of entries of each parameter.
    """

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]

    @property
    def size(self) -> int:
        """:math:`P`, the number of scalar parameters."""
        return int(sum(self.sizes))

    def __len__(self) -> int:
        return self.size

    def slice(self, key: str) -> slice:
        """Slice of ``theta`` holding parameter ``key`` (``KeyError`` for an unknown key).

        Parameters
        ----------
        key : str
            A ``state_dict`` key, e.g. ``"0.K"``.

        Returns
        -------
        slice
            ``theta[layout.slice(key)]`` is the flattened parameter.
        """
        i = self._index(key)
        return slice(self.offsets[i], self.offsets[i] + self.sizes[i])

    def _index(self, key):
        try:
            return self.keys.index(key)
        except ValueError:
            raise KeyError(f"unknown parameter {key!r}; known: {list(self.keys)}") from None

    def flatten(self, params: Mapping[str, Any]) -> Any:
        """Concatenate a mapping of parameters into flat vectors.

        Parameters
        ----------
        params : mapping of str to array
            Every key of the layout, each ``(*lead, *shape)`` (same leading
            shape, one array library).

        Returns
        -------
        array of shape (*lead, P)
        """
        if not hasattr(params, "items"):
            raise TypeError(
                f"params must be a mapping of parameter keys to arrays, got {type(params).__name__}"
            )
        missing = [k for k in self.keys if k not in params]
        extra = sorted(set(params) - set(self.keys))
        if missing or extra:
            raise ValueError(f"parameter keys mismatch: missing {missing}, unexpected {extra}")
        first = params[self.keys[0]]
        xp = namespace_of(first, f"params[{self.keys[0]!r}]")
        lead = tuple(first.shape[: first.ndim - len(self.shapes[0])])
        parts = []
        for key, shape, size in zip(self.keys, self.shapes, self.sizes):
            a = params[key]
            if tuple(a.shape) != (*lead, *shape):
                raise ValueError(f"params[{key!r}] must have shape {(*lead, *shape)}, got {tuple(a.shape)}")
            parts.append(xp.reshape(a, (*lead, size)))
        return xp.concat(parts, axis=-1)

    def unflatten(self, theta: Any) -> dict[str, Any]:
        """Split flat vectors into parameters (the inverse of :meth:`flatten`).

        Parameters
        ----------
        theta : array of shape (..., P)

        Returns
        -------
        dict of str to array
            ``key -> (*lead, *shape)`` views of ``theta``; with no leading
            axes, ``net.load_state_dict`` accepts it.
        """
        xp = namespace_of(theta, "theta")
        if theta.ndim < 1 or theta.shape[-1] != self.size:
            raise ValueError(f"theta must have shape (..., {self.size}), got {tuple(theta.shape)}")
        lead = tuple(theta.shape[:-1])
        return {
            k: xp.reshape(theta[..., o : o + s], (*lead, *shape))
            for k, shape, o, s in zip(self.keys, self.shapes, self.offsets, self.sizes)
        }


def _is_torch_module(obj) -> bool:
    return any(c.__name__ == "Module" and c.__module__.startswith("torch.nn") for c in type(obj).__mro__)


def _network(net):
    """``net`` itself, or the hessquik-core network equal to a torch module (``from_torch``)."""
    if hasattr(net, "named_parameters") and hasattr(net, "_leaves"):
        return net
    if _is_torch_module(net):
        from ..interop import from_torch

        try:
            return from_torch(net)
        except ValueError as err:
            raise ValueError(
                f"net is a torch module: curvature functions convert it with hessquik_core.from_torch, "
                f"which refused it: {err}"
            ) from err
    raise TypeError(
        "net must be a hessquik_core network or layer, or a torch nn.Sequential "
        f"(converted with hessquik_core.from_torch), got {type(net).__name__}"
    )


def parameter_layout(net: Any) -> ParameterLayout:
    """The :class:`ParameterLayout` of a network or layer (``state_dict`` order, row-major).

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        A torch model is described as converted by :func:`hessquik_core.from_torch`.

    Returns
    -------
    ParameterLayout
    """
    net = _network(net)
    keys, shapes, offsets, sizes = [], [], [], []
    off = 0
    for k, a in net.named_parameters():
        shape = tuple(int(s) for s in a.shape)
        size = int(np.prod(shape, dtype=np.int64))
        keys.append(k)
        shapes.append(shape)
        offsets.append(off)
        sizes.append(size)
        off += size
    if not keys:
        raise ValueError("the network has no parameters")
    return ParameterLayout(tuple(keys), tuple(shapes), tuple(offsets), tuple(sizes))


def flatten_parameters(net: Any, like: Any = None) -> Any:
    """:math:`\\theta` as one vector ``(P,)``.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
    like : array, optional
        Without it the vector is in the library of the stored parameters;
        with it, in ``like``'s library, dtype and device.

    Returns
    -------
    array of shape (P,)
        Parameters in :class:`ParameterLayout` order.
    """
    net = _network(net)
    layout = parameter_layout(net)
    state = dict(net.named_parameters())
    if like is not None:
        xp = namespace_of(like, "like")
        be = backend_for(xp)
        state = {k: be.convert(a, xp=xp, dtype=like.dtype, device=aac.device(like)) for k, a in state.items()}
    return layout.flatten(state)


# --------------------------------------------------------------------------
# a network bound to one call's namespace / dtype / device
# --------------------------------------------------------------------------


def _convert(a, be, xp, device):
    """``a`` into namespace ``xp`` of backend ``be``, keeping its dtype by name."""
    dt = getattr(xp, str(a.dtype).split(".")[-1])
    return be.convert(a, xp=xp, dtype=dt, device=device)


def _detached(a):
    """Curvature is computed without autodiff: drop a torch tensor's graph (``requires_grad``)."""
    return a.detach() if getattr(a, "requires_grad", False) else a


class _Bound:
    """Network leaves and their parameters in the call's namespace, dtype and device."""

    def __init__(self, net, x, backend):
        self.layout = parameter_layout(net)
        # the one call-resolution path, shared with network calls
        inp = resolve_input(net, x, backend)
        if x.shape[0] < 1:
            raise ValueError("x must hold at least one example")
        self.user_xp, self.user_device = inp.user_be.xp, aac.device(x)
        self.user_be = inp.user_be
        self.converted = inp.converted
        be, xp, x = inp.be, inp.xp, inp.x
        self.be, self.xp, self.x = be, xp, x
        self.dtype, self.device = x.dtype, aac.device(x)
        key = inp.cache_key
        self.leaves = list(net._leaves())
        self.params = [
            {k: _detached(v) for k, v in leaf._eval_params(key, be, xp, self.dtype, self.device).items()}
            for leaf in self.leaves
        ]
        self.x = x = _detached(x)
        # per leaf: (local parameter name, index in the layout)
        self.slots = []
        j = 0
        for leaf in self.leaves:
            slots = []
            for k, _ in leaf.named_parameters():
                if j >= len(self.layout.keys) or not self.layout.keys[j].endswith(k):
                    raise RuntimeError("leaf parameters do not follow state_dict order")  # pragma: no cover
                slots.append((leaf.local_param_name(k), j))
                j += 1
            self.slots.append(slots)
        if j != len(self.layout.keys):  # pragma: no cover - structural invariant
            raise RuntimeError("leaf parameters do not cover state_dict")
        for leaf in self.leaves:
            if not hasattr(leaf, "param_vjp"):
                raise TypeError(f"layer {leaf!r} has no parameter derivatives")

    # -- conversions between the user's library and the call's ---------------
    def to_call(self, a):
        if not self.converted:
            return a
        return _convert(a, self.be, self.xp, self.device)

    def to_user(self, a):
        if not self.converted:
            return a
        return _convert(a, self.user_be, self.user_xp, self.user_device)

    # -- passes -----------------------------------------------------------------
    def forward(self, x, order):
        inputs, caches = [], []
        u = x
        for leaf, P in zip(self.leaves, self.params):
            inputs.append(u)
            u, cache = leaf.evaluate(u, P, order, self.be)
            caches.append(cache)
        return u, inputs, caches

    def split(self, V):
        """``V : (k, P)`` to one dict per leaf ``local name -> (k, *shape)``."""
        lay, xp = self.layout, self.xp
        k = V.shape[0]
        return [
            {
                name: xp.reshape(V[:, lay.offsets[j] : lay.offsets[j] + lay.sizes[j]], (k, *lay.shapes[j]))
                for name, j in slots
            }
            for slots in self.slots
        ]

    def join(self, grads, lead):
        """Per-leaf dicts of ``(*lead, *shape)`` to ``(*lead, P)`` in layout order."""
        parts = [None] * len(self.layout.keys)
        for slots, g in zip(self.slots, grads):
            for name, j in slots:
                parts[j] = self.xp.reshape(g[name], (*lead, self.layout.sizes[j]))
        return self.xp.concat(parts, axis=-1)

    def grad_pass(self, x, T, loss, w, per_example):
        """Loss values ``(n,)`` and ``∇θ`` of ``w Σ ℓ_n``: ``(P,)``, or per example ``(n, P)``."""
        xp, be = self.xp, self.be
        F, inputs, caches = self.forward(x, 1)
        dl = w * loss._d1(F, T, xp)
        grads = [None] * len(self.leaves)
        for i in range(len(self.leaves) - 1, -1, -1):
            dl, grads[i] = self.leaves[i].param_vjp(caches[i], self.params[i], inputs[i], dl, per_example, be)
        if not per_example:
            return loss._value(F, T, xp), self.join(grads, ())
        lay = self.layout
        parts = [
            (lay.offsets[j], lay.sizes[j], g[name])
            for slots, g in zip(self.slots, grads)
            for name, j in slots
        ]
        A = fill_rows(parts, x.shape[0], lay.size, self.dtype, self.device, be)
        return loss._value(F, T, xp), A

    def prepare(self, x, T, loss, w, kind):
        """Everything of a product pass that does not depend on the directions.

        The forward pass (order 2 for the exact Hessian) and, for the exact
        Hessian, the first-order adjoints ``dls[i] = ∂C/∂(output of leaf i)``.
        """
        xp, be = self.xp, self.be
        F, inputs, caches = self.forward(x, 2 if kind == "hessian" else 1)
        dls = None
        if kind == "hessian":
            dls = [None] * len(self.leaves)
            dl = w * loss._d1(F, T, xp)
            for i in range(len(self.leaves) - 1, -1, -1):
                dls[i] = dl
                if i:
                    dl, _ = self.leaves[i].param_vjp(caches[i], self.params[i], inputs[i], dl, False, be)
        return F, inputs, caches, dls

    def rop_pass(self, x, T, loss, w, V, kind, prep=None):
        """Curvature-matrix products for the directions ``V : (k, P)``; returns ``(k, P)``.

        ``kind``: ``"hessian"`` (exact, with every layer's curvature terms),
        ``"ggn"`` (output curvature :math:`w\\nabla_f^2\\ell` only) or
        ``"fisher"`` (output curvature :math:`w\\nabla_f\\ell\\nabla_f\\ell^\\top`).
        ``prep``: the result of :meth:`prepare` (independent of ``V``).
        """
        xp, be = self.xp, self.be
        F, inputs, caches, dls = self.prepare(x, T, loss, w, kind) if prep is None else prep
        Vs = self.split(V)
        Ru, Rins, rcaches = None, [], []
        for leaf, P, u, cache, Vl in zip(self.leaves, self.params, inputs, caches, Vs):
            Rins.append(Ru)
            Ru, rc = leaf.param_rop_forward(cache, P, u, Ru, Vl, be)
            rcaches.append(rc)
        # Ru : (n, k, m) = J_n v, the output tangent of every direction
        if kind == "fisher":
            g1 = loss._d1(F, T, xp)
            Rdl = w * xp.sum(g1[:, None, :] * Ru, axis=-1)[:, :, None] * g1[:, None, :]
        else:
            Rdl = w * loss._hvp(F, T, Ru, xp)
        out = [None] * len(self.leaves)
        for i in range(len(self.leaves) - 1, -1, -1):
            _, Rdl, out[i] = self.leaves[i].param_rop_backward(
                caches[i],
                rcaches[i],
                self.params[i],
                inputs[i],
                Rins[i],
                Vs[i],
                None if dls is None else dls[i],
                Rdl,
                be,
                need_dlu=False,
                need_Rdlu=i > 0,
            )
        return self.join(out, (V.shape[0],))


def _check_batch_size(batch_size, n):
    if batch_size is None:
        return n
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    return int(batch_size)


def _same_library(xp_a, xp_b) -> bool:
    # array_namespace gives one namespace object per library (array_api_compat.numpy,
    # array_api_compat.torch, array_api_strict, jax.numpy, ...)
    return getattr(xp_a, "__name__", xp_a) == getattr(xp_b, "__name__", xp_b)


def _lib_name(xp) -> str:
    return str(backend_for(xp).library or getattr(xp, "__name__", xp))


def _user_targets(y, B):
    """Targets ``y`` in the library of ``x`` (``B.user_xp``).

    A NumPy ``y`` with ``x`` of another library (e.g. NumPy labels for torch
    data) is converted to that library, keeping its dtype (integer labels
    stay integers) and moving it to ``x``'s device; any other mismatch is a
    ``TypeError``.
    """
    y = as_plain_array(y, "y")
    xpy = namespace_of(y, "y")
    if _same_library(xpy, B.user_xp):
        return y
    if backend_for(xpy).interchange and not backend_for(B.user_xp).interchange:
        if y.dtype.kind not in "biuf":
            raise TypeError(
                f"y must hold integer class labels or floating targets, got a NumPy array of dtype {y.dtype}"
            )
        return _convert(y, B.user_be, B.user_xp, B.user_device)
    raise TypeError(
        f"y must be an array of the same library as x ({_lib_name(B.user_xp)}) "
        f"or a NumPy array, got {type(y).__module__}.{type(y).__name__}"
    )


class _Problem:
    """Network, data, loss and mini-batches of one curvature computation."""

    def __init__(self, net, x, y, loss, batch_size=None, backend=None, cache_forward=None):
        net = _network(net)
        self.loss: Loss = get_loss(loss)
        self.B = B = _Bound(net, x, backend)
        y = _user_targets(y, B)
        N = x.shape[0]
        if y.ndim < 1 or y.shape[0] != N:
            raise ValueError(f"y must have {N} rows (one per example), got shape {tuple(y.shape)}")
        self.N = N
        self.m = net.out_features
        self.w = self.loss.weight(N)
        bs = _check_batch_size(batch_size, N)
        yc = B.to_call(y)
        self.chunks = []
        for i in range(0, N, bs):
            xb = B.x[i : min(i + bs, N), ...]
            Tb = self.loss._targets(xb.shape[0], self.m, B.dtype, yc[i : min(i + bs, N), ...], B.xp)
            self.chunks.append((xb, Tb))
        self.batch_size = bs
        # the forward pass does not depend on the directions: keep it between
        # products (like autograd's retained graph) unless mini-batches ask to save memory
        self.cache_forward = len(self.chunks) == 1 if cache_forward is None else bool(cache_forward)
        self._fwd = {}

    @property
    def size(self) -> int:
        return self.B.layout.size

    def per_example(self, chunk):
        """``(n_b, P)`` rows :math:`\\nabla_\\theta\\ell_n` of one mini-batch, call namespace."""
        xb, Tb = self.chunks[chunk]
        return self.B.grad_pass(xb, Tb, self.loss, 1.0, True)[1]

    def apply(self, Vt, kind):
        """Sum over mini-batches of the products with ``Vt : (k, P)`` (call namespace)."""
        w = 1.0 / self.N if kind == "fisher" else self.w
        out = None
        for c, (xb, Tb) in enumerate(self.chunks):
            prep = self._fwd.get((c, kind))
            if prep is None and self.cache_forward:
                prep = self._fwd[(c, kind)] = self.B.prepare(xb, Tb, self.loss, w, kind)
            r = self.B.rop_pass(xb, Tb, self.loss, w, Vt, kind, prep)
            out = r if out is None else out + r
        return out


# --------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------


class LinearOperatorBase:
    """A symmetric linear operator on :math:`\\mathbb{R}^P`, applied to arrays of one library.

    Subclasses implement ``_matmat(V : (P, k)) -> (P, k)`` on arrays of the
    operator's library. ``A @ V``, :meth:`matvec` and :meth:`matmat` accept
    those arrays, and NumPy arrays too: an operator of another library
    (torch, CuPy, ...) converts a NumPy argument in and returns a NumPy
    result. So SciPy works with every operator, e.g.
    ``scipy.sparse.linalg.eigsh(op, k)`` or
    ``scipy.sparse.linalg.LinearOperator(op.shape, matvec=op.matvec, dtype=op.dtype)``
    (:meth:`to_scipy` builds that).

    Parameters
    ----------
    size : int
        ``P``.
    xp : module
        Array-API namespace of the arrays the operator works on.
    dtype : dtype
        Their dtype, given in ``xp``'s or NumPy's spelling (``torch.float64``
        or ``numpy.float64``).
    device : device
        Their device.

    Attributes
    ----------
    xp : module
        The operator's array namespace.
    array_dtype : dtype
        The dtype of the arrays it accepts and returns, in ``xp``'s
        spelling (``torch.float64`` for a torch operator).
    device : device
        The device of those arrays.
    """

    def __init__(self, size: int, xp: Any, dtype: Any, device: Any) -> None:
        self.size = int(size)
        self.xp, self.device = xp, device
        self._be = backend_for(xp)
        if isinstance(dtype, np.dtype):
            dtype = self._be.dtype(dtype.name)  # the library's own dtype object, by name
            if isinstance(dtype, type) and issubclass(dtype, np.generic):
                dtype = np.dtype(dtype)
        self.array_dtype = dtype

    @property
    def dtype(self) -> np.dtype:
        """The entries' dtype as a :class:`numpy.dtype` (what SciPy expects); see ``array_dtype``."""
        try:
            return np.dtype(self.array_dtype)
        except TypeError:  # torch.float64 & co.: by name
            return np.dtype(_dtype_name(self.array_dtype))

    @property
    def shape(self) -> tuple[int, int]:
        """``(P, P)``."""
        return (self.size, self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(P={self.size}, dtype={self.array_dtype})"

    # -- application -------------------------------------------------------
    def _operand(self, v, what: str = "v") -> tuple[Any, bool]:
        """``v`` as an array this operator takes, and whether it came from the host.

        Arrays of the operator's library must have its dtype and device (no silent
        conversion: a float64 ``v`` on a float32 operator would return float64, a float32 one
        on a float64 torch operator fail inside torch). A NumPy array given to an operator of
        another library (SciPy's eigensolvers do this) is converted in, after the same dtype
        check, and the result goes back to NumPy (``host`` is True).
        """
        v = as_plain_array(v, what)
        lib = _lib_name(self.xp)
        alt = "" if self._be.interchange else " or a NumPy array"
        if isinstance(v, (list, tuple)) or not hasattr(v, "shape") or not hasattr(v, "ndim"):
            raise TypeError(
                f"{what} must be an array of the operator's library ({lib}, dtype {self.array_dtype})"
                f"{alt}, got {type(v).__name__}"
            )
        # NumPy (the interchange format) given to an operator of another library
        host = isinstance(v, np.ndarray) and not self._be.interchange
        if host:
            if v.dtype != self.dtype:
                raise TypeError(
                    f"{what} must have the operator's dtype {self.dtype}, got {v.dtype}; convert it "
                    f"first (the operator follows the dtype of x)"
                )
            return self.asarray(v), True
        if not _same_library(namespace_of(v, what), self.xp):
            raise TypeError(
                f"{what} must be an array of the operator's library ({lib}){alt}, got "
                f"{type(v).__module__}.{type(v).__name__}"
            )
        if v.dtype != self.array_dtype:
            raise TypeError(
                f"{what} must have the operator's dtype {self.array_dtype}, got {v.dtype}; convert it "
                f"first (the operator follows the dtype of x)"
            )
        if str(aac.device(v)) != str(self.device):
            raise ValueError(f"{what} is on device {aac.device(v)}, the operator on {self.device}")
        return v, False

    def matmat(self, V: Any) -> Any:
        """``A @ V``.

        Parameters
        ----------
        V : array of shape (P, k)
            In the operator's library, dtype and device, or NumPy (then the result is NumPy);
            ``k = 0`` gives an empty ``(P, 0)`` result.

        Returns
        -------
        array of shape (P, k)
        """
        V, host = self._operand(V, "V")
        if V.ndim != 2 or V.shape[0] != self.size:
            raise ValueError(f"V must have shape ({self.size}, k), got {tuple(V.shape)}")
        if V.shape[1] == 0:
            out = self.xp.zeros((self.size, 0), dtype=self.array_dtype, device=self.device)
        else:
            out = self._matmat(V)
        return self.to_numpy(out) if host else out

    def matvec(self, v: Any) -> Any:
        """``A @ v``.

        Parameters
        ----------
        v : array of shape (P,)
            In the operator's library, or NumPy (then the result is NumPy).
            SciPy's ``(P, 1)`` column vectors are accepted too.

        Returns
        -------
        array of shape (P,) (or (P, 1) for a column)
        """
        v, host = self._operand(v)
        if v.ndim == 2 and tuple(v.shape) == (self.size, 1):
            out = self._matmat(v)
        elif v.ndim != 1 or v.shape[0] != self.size:
            raise ValueError(f"v must have shape ({self.size},), got {tuple(v.shape)}")
        else:
            out = self._matmat(v[:, None])[:, 0]
        return self.to_numpy(out) if host else out

    # SciPy's LinearOperator protocol: the operator is symmetric
    rmatvec = matvec
    rmatmat = matmat

    def __matmul__(self, V: Any) -> Any:
        if not hasattr(V, "ndim"):
            self._operand(V)  # raises the TypeError that says what is expected
        return self.matvec(V) if V.ndim == 1 else self.matmat(V)

    def quadratic_form(self, v: Any) -> Any:
        r""":math:`v^\top A v`.

        Parameters
        ----------
        v : array of shape (P,) or (P, k)
            In the operator's library, dtype and device.

        Returns
        -------
        array
            0-d for ``(P,)``; ``(k,)``, one form per column, for ``(P, k)``.
        """
        v, host = self._operand(v)
        one = v.ndim == 1
        V = v[:, None] if one else v
        out = self.xp.sum(V * self.matmat(V), axis=0)
        out = out[0] if one else out
        return self.to_numpy(out) if host else out

    def _matmat(self, V):  # pragma: no cover - abstract
        raise NotImplementedError

    def _default_block(self) -> int:
        return min(self.size, 64)

    def to_dense(self, *, block_size: int | None = None, progress: bool | None = None) -> Any:
        """The ``(P, P)`` matrix, assembled from products with blocks of unit vectors.

        Parameters
        ----------
        block_size : int, optional
            Columns per product (default: the operator's own block size).
        progress : bool, optional
            Progress bar over the blocks (tqdm); default: only when
            interactive, see :func:`hessian`.

        Returns
        -------
        array of shape (P, P)
            In the operator's library.
        """
        xp, P = self.xp, self.size
        bs = self._default_block() if block_size is None else _check_batch_size(block_size, P)
        cols = []
        with progress_bar(progress, total=-(-P // bs), desc="dense matrix", unit="block") as bar:
            for j in range(0, P, bs):
                k = min(bs, P - j)
                E = xp.eye(P, k, k=-j, dtype=self.array_dtype, device=self.device)
                cols.append(self._matmat(E))
                bar.update()
        return cols[0] if len(cols) == 1 else xp.concat(cols, axis=1)

    # -- host helpers (spectra) --------------------------------------------
    def asarray(self, a: Any) -> Any:
        """A NumPy array (or nested list) as an array the operator accepts.

        Parameters
        ----------
        a : array_like
            Host data.

        Returns
        -------
        array
            Same shape, in the operator's library, dtype and device.
        """
        return self._be.convert(np.asarray(a), xp=self.xp, dtype=self.array_dtype, device=self.device)

    def to_numpy(self, a: Any) -> np.ndarray:
        """An array of the operator's library as a NumPy array.

        Parameters
        ----------
        a : array
            In the operator's library.

        Returns
        -------
        numpy.ndarray
            Same shape (a host copy for device arrays).
        """
        return np.asarray(self._be.to_numpy(a))

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` acting on NumPy arrays (host round trips).

        Returns
        -------
        scipy.sparse.linalg.LinearOperator
            Shape ``(P, P)``, :attr:`dtype`; symmetric, so ``rmatvec`` is ``matvec``.
        """
        from scipy.sparse.linalg import LinearOperator

        def mm(V):
            V = np.asarray(V)
            one = V.ndim == 1
            out = self.to_numpy(self._matmat(self.asarray(V[:, None] if one else V)))
            return out[:, 0] if one else out

        return LinearOperator(
            self.shape,
            matvec=mm,
            matmat=mm,
            rmatvec=mm,
            rmatmat=mm,
            dtype=self.dtype,
        )


class DenseOperator(LinearOperatorBase):
    """A dense symmetric matrix as an operator.

    Parameters
    ----------
    A : array of shape (P, P)
        Symmetric (not checked), any array library.
    """

    def __init__(self, A: Any) -> None:
        A = as_plain_array(A, "A")
        xp = namespace_of(A, "A")
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}")
        super().__init__(A.shape[0], xp, A.dtype, aac.device(A))
        self.A = A

    def _matmat(self, V):
        return self.A @ V

    def to_dense(self, *, block_size: int | None = None, progress: bool | None = None) -> Any:
        return self.A


def aslinearoperator(A: Any) -> LinearOperatorBase:
    """An operator from an operator (returned as is) or a dense symmetric matrix.

    Parameters
    ----------
    A : LinearOperatorBase or array of shape (P, P)

    Returns
    -------
    LinearOperatorBase
        ``A`` itself, or a :class:`DenseOperator` wrapping the matrix.
    """
    if isinstance(A, LinearOperatorBase):
        return A
    return DenseOperator(A)


class CurvatureOperator(LinearOperatorBase):
    """Exact Hessian, Gauss–Newton or empirical Fisher of a training loss, as an operator.

    Built by :func:`hessian_operator`, :func:`ggn_operator`,
    :func:`empirical_fisher_operator` (not by hand). Products are exact (no
    sampling): mini-batches only bound memory, the sum over them is the
    full-data matrix. ``block_size`` directions are pushed through the
    network per pass (default from ``memory_budget`` bytes, see
    :func:`hessian`). Accepts and returns arrays of ``x``'s library (or
    NumPy, see :class:`LinearOperatorBase`).

    Parameters
    ----------
    problem : object
        Network, data, loss and mini-batches (private; built by the functions above).
    kind : {"hessian", "ggn", "fisher"}
    block_size : int, optional
    memory_budget : float, optional

    Attributes
    ----------
    kind : str
        ``"hessian"``, ``"ggn"`` or ``"fisher"``.
    block_size : int
        Directions per pass.
    """

    def __init__(self, problem: _Problem, kind: str, block_size=None, memory_budget=None) -> None:
        B = problem.B
        super().__init__(problem.size, B.user_xp, _user_dtype(B), B.user_device)
        self.problem, self.kind = problem, kind
        self.block_size = _block_size(problem, block_size, memory_budget)

    def __repr__(self) -> str:
        return (
            f"CurvatureOperator(kind={self.kind!r}, P={self.size}, N={self.problem.N}, "
            f"batch_size={self.problem.batch_size}, block_size={self.block_size})"
        )

    def _default_block(self) -> int:
        return self.block_size

    def _matmat(self, V):
        B, xp = self.problem.B, self.problem.B.xp
        Vt = xp.matrix_transpose(B.to_call(V))  # (k, P)
        outs = []
        for j in range(0, Vt.shape[0], self.block_size):
            outs.append(self.problem.apply(Vt[j : min(j + self.block_size, Vt.shape[0]), :], self.kind))
        out = outs[0] if len(outs) == 1 else xp.concat(outs, axis=0)
        return B.to_user(xp.matrix_transpose(out))


def _user_dtype(B):
    if not B.converted:
        return B.dtype
    return getattr(B.user_xp, str(B.dtype).split(".")[-1])


def _block_size(problem: _Problem, block_size, memory_budget) -> int:
    r"""Directions per pass: ``block_size``, or the most that fit ``memory_budget`` bytes.

    Estimate per direction: the R-images of every layer's input, output and
    pre-activation for every example of a mini-batch (4 arrays per layer
    width, counted generously) plus four ``P``-vectors.
    """
    P = problem.size
    if block_size is not None:
        return min(_check_batch_size(block_size, P), P)
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    budget = check_max_memory(budget, "memory_budget")  # any real number; NaN, bool refused
    itemsize = np.dtype(str(problem.B.dtype).split(".")[-1]).itemsize
    feat = sum(leaf.in_features + 2 * leaf.out_features for leaf in problem.B.leaves)
    per_dir = itemsize * (4 * problem.batch_size * feat + 4 * P)
    return int(max(1, min(P, budget // per_dir)))


# --------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------


@dask_dispatch
def value_and_gradient(
    net: Any, x: Any, y: Any, loss: Any, *, batch_size: int | None = None, backend: str | None = None
) -> tuple[Any, Any]:
    r"""Training loss :math:`C` (0-d) and its gradient :math:`\nabla_\theta C` ``(P,)``.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.

    Returns
    -------
    value : 0-d array
        :math:`C`.
    gradient : array of shape (P,)
        :math:`\\nabla_\\theta C` in :class:`ParameterLayout` order.
    """
    pb = _Problem(net, x, y, loss, batch_size, backend)
    B, xp = pb.B, pb.B.xp
    val = grad = None
    for xb, Tb in pb.chunks:
        v, g = B.grad_pass(xb, Tb, pb.loss, pb.w, False)
        v = xp.sum(v)
        val, grad = (v, g) if val is None else (val + v, grad + g)
    return B.to_user(pb.w * val), B.to_user(grad)


@dask_dispatch
def gradient(
    net: Any, x: Any, y: Any, loss: Any, *, batch_size: int | None = None, backend: str | None = None
) -> Any:
    r""":math:`\nabla_\theta C`, the gradient of the training loss.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.

    Returns
    -------
    array of shape (P,)
        The second output of :func:`value_and_gradient`.
    """
    return value_and_gradient(net, x, y, loss, batch_size=batch_size, backend=backend)[1]


@dask_dispatch
def per_example_gradients(net: Any, x: Any, y: Any, loss: Any, *, backend: str | None = None) -> Any:
    r"""Per-example gradients :math:`g_n = \nabla_\theta \ell(f(x_n;\theta), y_n)`, shape ``(N, P)``.

    One batched pass (no loop over examples). Rows are gradients of the
    *unreduced* per-example loss: :math:`\nabla C = w \sum_n g_n` (the mean of
    the rows for ``reduction="mean"``, their sum for ``"sum"``).

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.

    Returns
    -------
    array of shape (N, P)
        Row ``n`` is :math:`g_n` in :class:`ParameterLayout` order.
    """
    pb = _Problem(net, x, y, loss, None, backend)
    return pb.B.to_user(pb.per_example(0))


@dask_dispatch
def hessian_operator(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    cache_forward: bool | None = None,
) -> CurvatureOperator:
    r"""The exact Hessian :math:`H = \nabla_\theta^2 C` as an operator (Hessian-vector products).

    Each product is one forward R-pass and one backward R-pass over the
    data, for ``block_size`` directions at a time, after one forward pass.
    ``cache_forward`` (default: True without mini-batches, False with
    them) keeps each mini-batch's forward pass between products.
    The operator is a snapshot: it holds the parameters and data of its
    construction.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.
    cache_forward : bool, optional
        Keep each mini-batch's forward pass between products (default:
        True without mini-batches, False with them).

    Returns
    -------
    CurvatureOperator
        ``(P, P)``; ``op @ v`` for ``v : (P,)`` or ``(P, k)``.
    """
    return CurvatureOperator(
        _Problem(net, x, y, loss, batch_size, backend, cache_forward), "hessian", block_size, memory_budget
    )


@dask_dispatch
def ggn_operator(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    cache_forward: bool | None = None,
) -> CurvatureOperator:
    r"""The generalised Gauss–Newton matrix :math:`w \sum_n J_n^\top \nabla_f^2 \ell_n J_n` as an operator.

    For softmax cross-entropy this is the Fisher information of the model's
    predictive distribution (the "true" Fisher); for half-MSE it is
    :math:`w\sum_n J_n^\top J_n`.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.
    cache_forward : bool, optional
        Keep each mini-batch's forward pass between products (default:
        True without mini-batches, False with them).

    Returns
    -------
    CurvatureOperator
        ``(P, P)``; ``op @ v`` for ``v : (P,)`` or ``(P, k)``.
    """
    return CurvatureOperator(
        _Problem(net, x, y, loss, batch_size, backend, cache_forward), "ggn", block_size, memory_budget
    )


@dask_dispatch
def empirical_fisher_operator(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    cache_forward: bool | None = None,
) -> CurvatureOperator:
    r"""The outer-product (empirical Fisher) matrix :math:`G = \frac1N \sum_n g_n g_n^\top`.

    Applied without forming ``(N, P)``: :math:`Gv = \frac1N\sum_n (g_n\cdot v)\, g_n`
    where :math:`g_n\cdot v = \nabla_f\ell_n \cdot J_n v` comes from a forward
    R-pass and the weighted sum of gradients from one backward pass.
    Always :math:`1/N`, whatever the loss's reduction.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.
    cache_forward : bool, optional
        Keep each mini-batch's forward pass between products (default:
        True without mini-batches, False with them).

    Returns
    -------
    CurvatureOperator
        ``(P, P)``; ``op @ v`` for ``v : (P,)`` or ``(P, k)``.
    """
    return CurvatureOperator(
        _Problem(net, x, y, loss, batch_size, backend, cache_forward), "fisher", block_size, memory_budget
    )


@dask_dispatch
def hvp(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    v: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
) -> Any:
    r""":math:`Hv`, products with the exact Hessian of the training loss.

    Builds :func:`hessian_operator` and applies it once; keep the operator
    for repeated products.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    v : array of shape (P,) or (P, k)
        Directions, in ``x``'s library (or NumPy).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.

    Returns
    -------
    array of shape (P,) or (P, k)
        Like ``v``.
    """
    return (
        hessian_operator(
            net,
            x,
            y,
            loss,
            batch_size=batch_size,
            block_size=block_size,
            memory_budget=memory_budget,
            backend=backend,
        )
        @ v
    )


@dask_dispatch
def ggn_vp(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    v: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
) -> Any:
    r"""Products with the generalised Gauss–Newton matrix (see :func:`ggn_operator`).

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    v : array of shape (P,) or (P, k)
        Directions, in ``x``'s library (or NumPy).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.

    Returns
    -------
    array of shape (P,) or (P, k)
        Like ``v``.
    """
    return (
        ggn_operator(
            net,
            x,
            y,
            loss,
            batch_size=batch_size,
            block_size=block_size,
            memory_budget=memory_budget,
            backend=backend,
        )
        @ v
    )


@dask_dispatch
def empirical_fisher_vp(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    v: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
) -> Any:
    r""":math:`Gv` with :math:`G = \frac1N\sum_n g_n g_n^\top` (see :func:`empirical_fisher_operator`).

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    v : array of shape (P,) or (P, k)
        Directions, in ``x``'s library (or NumPy).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.

    Returns
    -------
    array of shape (P,) or (P, k)
        Like ``v``.
    """
    return (
        empirical_fisher_operator(
            net,
            x,
            y,
            loss,
            batch_size=batch_size,
            block_size=block_size,
            memory_budget=memory_budget,
            backend=backend,
        )
        @ v
    )


@dask_dispatch
def hessian(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    progress: bool | None = None,
) -> Any:
    r"""The dense ``(P, P)`` Hessian of the training loss, from blocks of exact Hessian-vector products.

    Columns are computed ``block_size`` at a time (default: as many as fit
    ``memory_budget`` bytes of work arrays, 256 MiB unless given, by the
    estimate ``itemsize·(4·batch·Σ_layers(p + 2q) + 4P)`` per column), and
    the data in mini-batches of ``batch_size`` examples whose contributions
    are summed (with the global factor :math:`w`, so the result is the
    Hessian of the full-data loss). Not symmetrised: it is symmetric to
    rounding because every column is exact.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.
    progress : bool, optional
        Progress bar over the column blocks (tqdm): ``None`` (default)
        shows one only when tqdm is installed and the session is
        interactive, ``True`` always, ``False`` never.

    Returns
    -------
    array of shape (P, P)
        In ``x``'s library, :class:`ParameterLayout` order.
    """
    return hessian_operator(
        net,
        x,
        y,
        loss,
        batch_size=batch_size,
        block_size=block_size,
        memory_budget=memory_budget,
        backend=backend,
    ).to_dense(progress=progress)


@dask_dispatch
def ggn(
    net: Any,
    x: Any,
    y: Any,
    loss: Any,
    *,
    batch_size: int | None = None,
    block_size: int | None = None,
    memory_budget: float | None = None,
    backend: str | None = None,
    progress: bool | None = None,
) -> Any:
    """The dense generalised Gauss–Newton matrix, assembled like :func:`hessian`.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    batch_size : int, optional
        Examples per pass (bounds memory; the result is the full-data one).
    block_size : int, optional
        Directions pushed through the network per pass.
    memory_budget : float, optional
        Bytes of work arrays per pass that choose ``block_size`` when it is
        not given (256 MiB by default; see :func:`hessian`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.
    progress : bool, optional
        Progress bar over the column blocks (tqdm): ``None`` (default)
        shows one only when tqdm is installed and the session is
        interactive, ``True`` always, ``False`` never.

    Returns
    -------
    array of shape (P, P)
        In ``x``'s library, :class:`ParameterLayout` order.
    """
    return ggn_operator(
        net,
        x,
        y,
        loss,
        batch_size=batch_size,
        block_size=block_size,
        memory_budget=memory_budget,
        backend=backend,
    ).to_dense(progress=progress)


@dask_dispatch
def empirical_fisher(net: Any, x: Any, y: Any, loss: Any, *, backend: str | None = None) -> Any:
    r"""Dense :math:`G = \frac1N \sum_n g_n g_n^\top = \frac1N A^\top A`, ``A`` the per-example gradients.

    Forms ``A : (N, P)`` in one pass; for large ``N·P`` use
    :func:`empirical_fisher_operator` or
    :func:`~hessquik_core.curvature.empirical_fisher_eigenpairs`.

    Parameters
    ----------
    net : NN or Layer or torch.nn.Sequential
        The network; a torch model is converted with
        :func:`hessquik_core.from_torch` (weights copied).
    x : array of shape (N, d)
        Inputs, floating (NumPy, torch, CuPy or any Array-API array); the
        computation runs in its library, dtype and device.
    y : array
        Targets: ``(N, m)`` floating for MSE; integer labels ``(N,)`` or
        probabilities ``(N, m)`` for cross-entropy.
    loss : Loss or str or torch loss
        ``"mse"``, ``"cross_entropy"``, a :class:`Loss`, or a
        ``torch.nn.MSELoss`` / ``torch.nn.CrossEntropyLoss`` (its
        ``reduction`` kept, see :func:`get_loss`).
    backend : str, optional
        Force a backend (``"numpy"``, ``"torch"``, ``"cupy"``, ``"generic"``);
        results return in ``x``'s library.

    Returns
    -------
    array of shape (P, P)
        In ``x``'s library, :class:`ParameterLayout` order.
    """
    pb = _Problem(net, x, y, loss, None, backend)
    A = pb.per_example(0)
    xp = pb.B.xp
    return pb.B.to_user((xp.matrix_transpose(A) @ A) / pb.N)
